//! A capacity-limited `moe.route` (GShard's) after its route kernel: the generated
//! `<name>_capacity` kernel (one thread per expert: its assignments past the capacity, in slot
//! order, weigh 0) and `<name>_renorm` (one thread per token: renormalisation and scaling after
//! the drop), both in place on the route's weights.

use super::experts::launch_cfg;
use super::Rank;
use cudarc::driver::{CudaSlice, PushKernelArg};

impl Rank<'_> {
    pub(super) fn route_capacity(
        &self,
        name: &str,
        weights: &CudaSlice<f32>,
        ids: &CudaSlice<f32>,
        experts: usize,
        tokens: usize,
    ) -> Result<(), String> {
        let kernel = |suffix: &str| {
            self.functions
                .get(&format!("{name}{suffix}"))
                .cloned()
                .ok_or_else(|| format!("kernel {name}{suffix} is not in the PTX"))
        };
        let (drop, renorm) = (kernel("_capacity")?, kernel("_renorm")?);
        let (zero, one) = (0i64, 1i64);
        let (lw, li) = (weights.len() as i64, ids.len() as i64);
        let mut l = self.stream.launch_builder(&drop);
        l.arg(weights).arg(weights).arg(&zero).arg(&lw).arg(&one);
        l.arg(ids).arg(ids).arg(&zero).arg(&li).arg(&one);
        // SAFETY: T, k, E and the capacity are baked into the kernel; the buffers are [T, k].
        unsafe { l.launch(launch_cfg(experts)) }.map_err(|e| e.to_string())?;
        let mut l = self.stream.launch_builder(&renorm);
        l.arg(weights).arg(weights).arg(&zero).arg(&lw).arg(&one);
        // SAFETY: as above; one thread per token.
        unsafe { l.launch(launch_cfg(tokens)) }.map_err(|e| e.to_string())?;
        Ok(())
    }
}
