//! Buffers kept for the rank's life: the rows sorted by expert and the activations in that
//! order that the persistent projections read through tensor maps (`device_routed`). A map
//! is encoded and uploaded once for an address that stays, as the stacks' are, so a later
//! forward uploads nothing and can be captured. One buffer per role and size, which every
//! experts step of that size shares: the rank's stream runs them one after the other, and
//! each step writes the rows it reads before it reads them.

use super::Rank;
use cudarc::driver::CudaSlice;
use std::collections::HashMap;

/// What a workspace holds (its role) and its 16-bit elements.
type Key = (&'static str, usize);

#[derive(Default)]
pub(super) struct Workspaces(std::cell::RefCell<HashMap<Key, CudaSlice<u16>>>);

impl Rank<'_> {
    /// The device address of the rank's workspace `role` of `elems` bf16 elements, allocated
    /// on first use (uninitialised: its step writes what it reads).
    pub(super) fn workspace(&self, role: &'static str, elems: usize) -> Result<u64, String> {
        let key = (role, elems);
        if let Some(buf) = self.workspaces.0.borrow().get(&key) {
            return Ok(super::dptr(buf, &self.stream));
        }
        // SAFETY: uninitialised device memory, written by the step before any read.
        let buf = unsafe { self.stream.alloc::<u16>(elems.max(1)) }
            .map_err(|e| format!("a workspace of {elems} bf16 ({role}): {e}"))?;
        let at = super::dptr(&buf, &self.stream);
        self.workspaces.0.borrow_mut().insert(key, buf);
        Ok(at)
    }
}
