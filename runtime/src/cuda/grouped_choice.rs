//! Which way a projection's per-expert GEMMs run: one grouped cuBLAS call for all experts
//! (`cublasGemmGroupedBatchedEx`, one launch) or one strided GEMM per expert. Neither wins
//! everywhere on an H200: the grouped call wins for many small experts (Qwen3's 128) and loses
//! for a few large ones (Mixtral's 8), where cuBLAS's own GEMM per expert is better tuned. So
//! the first time a shape is seen (element type, group count, din, dout, the rows' power of
//! two), both are run on its real operands and timed with events, and the faster is kept for
//! that shape from then on (warm-up forwards pay for it; each way runs once untimed before it is
//! timed, since cuBLAS's first call of a shape loads its kernels). The per-expert loop runs second, so
//! that forward's result is the loop's; later forwards are the chosen path's, deterministic
//! from then on. `PPMOE_GROUPED_GEMM=0` forces the loop and `=1` the grouped call.

use super::blas::{self, Elem, Grouped};
use super::Rank;
use cudarc::driver::sys::CUevent_flags;

/// The two ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GroupedPath {
    Grouped,
    PerGroup,
}

/// A projection's shape, as far as the choice depends on it.
pub(super) type ShapeKey = (Elem, usize, usize, usize, u32);

impl Rank<'_> {
    /// The products of `g` (inputs of `elem`), by the path chosen for their shape.
    ///
    /// # Safety
    /// Every pointer of `g` addresses a block of the right size, on this rank's stream.
    pub(super) unsafe fn grouped_gemm(&self, elem: Elem, g: &Grouped) -> Result<(), String> {
        let rows: usize = g.groups.iter().map(|x| x.3).sum();
        let key: ShapeKey = (
            elem,
            g.groups.len(),
            g.din,
            g.dout,
            usize::BITS - rows.leading_zeros(),
        );
        let forced = match std::env::var("PPMOE_GROUPED_GEMM").as_deref() {
            Ok("0") => Some(GroupedPath::PerGroup),
            Ok("1") => Some(GroupedPath::Grouped),
            _ => None,
        };
        let path = if blas::has_grouped_gemm(&self.blas) {
            forced.or_else(|| self.gemm_paths.borrow().get(&key).copied())
        } else {
            Some(GroupedPath::PerGroup)
        };
        // SAFETY (all calls below): as the caller promises for `g`.
        match path {
            Some(GroupedPath::PerGroup) => unsafe { blas::gemm_per_group(&self.blas, elem, g) },
            Some(GroupedPath::Grouped) => {
                if unsafe { blas::gemm_grouped(&self.blas, &self.stream, elem, g)? } {
                    return Ok(());
                }
                self.refused(key, g);
                unsafe { blas::gemm_per_group(&self.blas, elem, g) }
            }
            None => unsafe { self.choose(key, elem, g) },
        }
    }

    /// Runs both ways, timed, and keeps the faster for `key`. Each runs once untimed first:
    /// cuBLAS picks and loads its kernels for a shape at its first call, which costs 10 to 100
    /// times the product itself on an H200.
    unsafe fn choose(&self, key: ShapeKey, elem: Elem, g: &Grouped) -> Result<(), String> {
        let event = || {
            self.stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| e.to_string())
        };
        // SAFETY: as the caller promises for `g`.
        if !unsafe { blas::gemm_grouped(&self.blas, &self.stream, elem, g)? } {
            self.refused(key, g);
            return unsafe { blas::gemm_per_group(&self.blas, elem, g) };
        }
        unsafe { blas::gemm_per_group(&self.blas, elem, g)? };
        let start = event()?;
        unsafe { blas::gemm_grouped(&self.blas, &self.stream, elem, g)? };
        let mid = event()?;
        unsafe { blas::gemm_per_group(&self.blas, elem, g)? };
        let end = event()?;
        end.synchronize().map_err(|e| e.to_string())?;
        let grouped = start.elapsed_ms(&mid).map_err(|e| e.to_string())?;
        let looped = mid.elapsed_ms(&end).map_err(|e| e.to_string())?;
        let path = if grouped <= looped {
            GroupedPath::Grouped
        } else {
            GroupedPath::PerGroup
        };
        tracing::info!(
            "expert GEMMs of {} groups, {} x {} ({:?}): grouped {grouped:.3} ms, one per group {looped:.3} ms: {path:?} from now on",
            g.groups.len(),
            g.din,
            g.dout,
            elem
        );
        self.gemm_paths.borrow_mut().insert(key, path);
        Ok(())
    }

    fn refused(&self, key: ShapeKey, g: &Grouped) {
        tracing::info!(
            "cuBLAS does not take a grouped GEMM of {:?} inputs with a {:?} result ({} groups, {} x {}): one GEMM per group instead",
            key.0,
            g.c_elem,
            g.groups.len(),
            g.din,
            g.dout
        );
        self.gemm_paths
            .borrow_mut()
            .insert(key, GroupedPath::PerGroup);
    }
}
