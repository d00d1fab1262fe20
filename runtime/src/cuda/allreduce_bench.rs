//! `ppmoe bench --all-reduce`: the runtime's own NCCL all-reduce (the call its all-reduce
//! instructions make: f32 sum, in place, on the world communicator), timed alone at given
//! sizes with CUDA events, so the all-reduce inside a layer can be set against what NCCL gives
//! at its size on the same machine.

use super::comm::Comms;
use super::nccl::NCCL_FLOAT32;
use super::{available, backend_err, dptr};
use crate::distributed::Dist;
use crate::error::RuntimeError;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaContext;

/// Per size (bytes of f32), each timed all-reduce's time in ms, the slowest rank's (the ranks
/// meet before each).
pub fn bench_all_reduce(
    dist: &Dist,
    sizes: &[usize],
    warmup: usize,
    iters: usize,
) -> Result<Vec<Vec<f64>>, RuntimeError> {
    available().map_err(backend_err)?;
    let ctx = CudaContext::new(dist.local_rank)
        .map_err(|e| backend_err(format!("cannot open GPU {}: {e}", dist.local_rank)))?;
    let mut comms = Comms::connect(dist, &[]).map_err(backend_err)?;
    let stream = ctx.default_stream();
    let raw = stream.cu_stream() as *mut std::ffi::c_void;
    let err = |e: cudarc::driver::DriverError| backend_err(e.to_string());
    let mut out = Vec::with_capacity(sizes.len());
    for &bytes in sizes {
        let n = (bytes / 4).max(1);
        let buf = stream.alloc_zeros::<f32>(n).map_err(err)?;
        let p = dptr(&buf, &stream);
        // SAFETY: `buf` holds n floats and lives past the stream's last use of it (the
        // synchronisations below).
        let once = || unsafe {
            comms
                .nccl
                .all_reduce_sum(p, p, n, NCCL_FLOAT32, comms.world, raw)
        };
        for _ in 0..warmup {
            once().map_err(backend_err)?;
        }
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            comms.gather_world(&stream, &[0.0]).map_err(backend_err)?;
            let event = || {
                stream
                    .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(err)
            };
            let start = event()?;
            once().map_err(backend_err)?;
            let end = event()?;
            end.synchronize().map_err(err)?;
            times.push(start.elapsed_ms(&end).map_err(err)?);
        }
        let all = comms.gather_world(&stream, &times).map_err(backend_err)?;
        let ranks: Vec<&[f32]> = all.chunks(iters.max(1)).collect();
        out.push(
            (0..iters)
                .map(|i| ranks.iter().map(|r| r[i] as f64).fold(0.0, f64::max))
                .collect(),
        );
    }
    comms.finish();
    Ok(out)
}
