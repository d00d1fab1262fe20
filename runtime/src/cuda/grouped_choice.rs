//! Which way a projection's per-expert GEMMs run: one grouped cuBLAS call for all experts
//! (`cublasGemmGroupedBatchedEx`, one launch), one strided GEMM per expert, or, where the rows
//! lie in the padded layout (every expert's block the same size, `experts::RowOrder::padded`),
//! one strided-batched GEMM over all experts. None wins everywhere on an H200: the grouped call
//! loses for a few large experts (Mixtral's 8), where cuBLAS's own GEMM per expert is better
//! tuned, and is slow for many small ones (Qwen3's 128), where one batched GEMM over padded
//! blocks is not. So the first time a shape is seen (element type, group count, din, dout, the
//! rows' power of two, whether it is padded), each way is run on its real operands and timed
//! with events, and the fastest is kept for that shape from then on (warm-up forwards pay for
//! it; each way runs once untimed before it is timed, since cuBLAS's first call of a shape
//! loads its kernels). The ways compute the same products; later forwards are the chosen
//! path's, deterministic from then on. `PPMOE_GROUPED_GEMM=0` forces the loop, `=1` the
//! grouped call and `=2` the batch (where the layout is padded).

use super::blas::{self, Elem, Grouped};
use super::Rank;
use cudarc::driver::sys::CUevent_flags;

/// The three ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GroupedPath {
    Grouped,
    PerGroup,
    Batched,
}

/// A projection's shape, as far as the choice depends on it.
pub(super) type ShapeKey = (Elem, usize, usize, usize, u32, bool);

impl Rank<'_> {
    /// The products of `g` (inputs of `elem`), by the path chosen for their shape.
    ///
    /// # Safety
    /// Every pointer of `g` addresses a block of the right size, on this rank's stream.
    pub(super) unsafe fn grouped_gemm(&self, elem: Elem, g: &Grouped) -> Result<(), String> {
        let rows: usize = g.groups.iter().map(|x| x.3).sum();
        let batchable = blas::batchable(elem, g);
        let key: ShapeKey = (
            elem,
            g.groups.len(),
            g.din,
            g.dout,
            usize::BITS - rows.leading_zeros(),
            batchable,
        );
        let forced = match std::env::var("PPMOE_GROUPED_GEMM").as_deref() {
            Ok("0") => Some(GroupedPath::PerGroup),
            Ok("1") => Some(GroupedPath::Grouped),
            Ok("2") if batchable => Some(GroupedPath::Batched),
            _ => None,
        };
        let path = forced.or_else(|| self.gemm_paths.borrow().get(&key).copied());
        match path {
            // SAFETY: as the caller promises for `g`.
            Some(p) => unsafe { self.gemm_by(p, key, elem, g) },
            None => unsafe { self.choose(key, elem, g) },
        }
    }

    /// The products of `g` by `path`; a way cuBLAS refuses here (grouped GEMMs before 12.5,
    /// or for this type combination) falls back to one GEMM per group, from then on.
    ///
    /// # Safety
    /// As `grouped_gemm`.
    unsafe fn gemm_by(
        &self,
        path: GroupedPath,
        key: ShapeKey,
        elem: Elem,
        g: &Grouped,
    ) -> Result<(), String> {
        // SAFETY (all calls below): as the caller promises for `g`.
        let done = match path {
            GroupedPath::PerGroup => {
                unsafe { blas::gemm_per_group(&self.blas, elem, g)? };
                true
            }
            GroupedPath::Grouped => {
                blas::has_grouped_gemm(&self.blas)
                    && unsafe { blas::gemm_grouped(&self.blas, &self.stream, elem, g)? }
            }
            GroupedPath::Batched => unsafe { blas::gemm_batched(&self.blas, elem, g)? },
        };
        if done {
            return Ok(());
        }
        self.refused(key, path, g);
        unsafe { blas::gemm_per_group(&self.blas, elem, g) }
    }

    /// Runs each way that applies, timed, and keeps the fastest for `key`. Each runs once
    /// untimed first: cuBLAS picks and loads its kernels for a shape at its first call, which
    /// costs 10 to 100 times the product itself on an H200.
    ///
    /// # Safety
    /// As `grouped_gemm`.
    unsafe fn choose(&self, key: ShapeKey, elem: Elem, g: &Grouped) -> Result<(), String> {
        let event = || {
            self.stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| e.to_string())
        };
        let mut ways = vec![GroupedPath::PerGroup];
        // SAFETY (all calls below): as the caller promises for `g`.
        if blas::has_grouped_gemm(&self.blas)
            && unsafe { blas::gemm_grouped(&self.blas, &self.stream, elem, g)? }
        {
            ways.push(GroupedPath::Grouped);
        }
        if key.5 {
            ways.push(GroupedPath::Batched);
        }
        for &way in &ways {
            unsafe { self.gemm_by(way, key, elem, g)? };
        }
        let mut times = Vec::with_capacity(ways.len());
        for &way in &ways {
            let start = event()?;
            unsafe { self.gemm_by(way, key, elem, g)? };
            times.push((way, start, event()?));
        }
        let mut best = (GroupedPath::PerGroup, f32::INFINITY);
        let mut said = Vec::new();
        for (way, start, end) in &times {
            end.synchronize().map_err(|e| e.to_string())?;
            let ms = start.elapsed_ms(end).map_err(|e| e.to_string())?;
            said.push(format!("{way:?} {ms:.3} ms"));
            if ms < best.1 {
                best = (*way, ms);
            }
        }
        tracing::info!(
            "expert GEMMs of {} groups, {} x {} ({:?}): {}: {:?} from now on",
            g.groups.len(),
            g.din,
            g.dout,
            elem,
            said.join(", "),
            best.0
        );
        self.gemm_paths.borrow_mut().insert(key, best.0);
        Ok(())
    }

    fn refused(&self, key: ShapeKey, path: GroupedPath, g: &Grouped) {
        tracing::info!(
            "cuBLAS does not take the {path:?} way for {:?} inputs with a {:?} result ({} groups, {} x {}): one GEMM per group instead",
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
