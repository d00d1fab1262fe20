//! `ppmoe bench` on a bundle: the forward timed between CUDA events after warm-up, its inputs
//! on the device, and the device-to-host copies and graph nodes counted.

use super::{backend_err, with_rank, CAPTURE_TRIES};
use crate::bundle::Bundle;
use crate::distributed::Dist;
use crate::error::RuntimeError;
use crate::tensor::Tensor;
use cudarc::driver::CudaStream;
use std::sync::Arc;

/// Times of repeated forwards of a bundle's rank (CUDA events on its stream, after warm-up).
pub struct Timing {
    /// Each timed forward, inputs in to outputs out, in ms: on a multi-rank run, the slowest
    /// rank's time of that forward (the ranks wait for each other before each).
    pub forward_ms: Vec<f64>,
    /// Multi-rank: each rank's own time of each forward, by rank.
    pub rank_ms: Vec<Vec<f64>>,
    /// Per rank, its time inside NCCL calls in each forward (empty for one rank).
    pub rank_nccl_ms: Vec<Vec<f64>>,
    /// Per rank, how much of that time its stream waited for (not hidden behind computation).
    pub rank_nccl_exposed_ms: Vec<Vec<f64>>,
    /// With `profile`: per instruction, its time in each timed forward (ms).
    pub instruction_ms: Vec<Vec<f64>>,
    /// The device-to-host copies in one forward (each a synchronisation inside it): the most
    /// of any rank, over the timed forwards.
    pub host_reads: usize,
    /// With `profile`: the named parts of steps (an experts step's routing read, grouping,
    /// gather, projections, activation, combine), each part's time summed over a forward, in
    /// each timed forward (ms).
    pub phase_ms: std::collections::BTreeMap<String, Vec<f64>>,
    /// The nodes of the CUDA graph the timed forwards replayed; 0 where they ran eagerly.
    pub graph_nodes: usize,
}

/// Runs `warmup` forwards, then times `iters` more, the float inputs already on the device and
/// the outputs left there (so the time is the forward's, not the host link's); with
/// `profile`, each instruction is timed too (an event pair around each, which adds a little
/// to the forward's time).
pub fn bench_bundle(
    bundle: &Bundle,
    inputs: &[Tensor],
    dist: Option<&Dist>,
    warmup: usize,
    iters: usize,
    profile: bool,
) -> Result<Timing, RuntimeError> {
    with_rank(bundle, dist, |rank, m| {
        let feed = rank.device_feed(m, inputs)?;
        // Where forwards can be captured, one of the warm-up forwards is (the second, or the
        // third where the first uploads what the next keep): the capture is never timed.
        let warmup = match rank.may_capture() && !profile {
            true => warmup.max(1 + CAPTURE_TRIES),
            false => warmup,
        };
        for _ in 0..warmup {
            rank.forward(m, &feed, None)?;
        }
        let n = rank.program.instructions.len();
        let mut timing = Timing {
            forward_ms: Vec::with_capacity(iters),
            rank_ms: Vec::new(),
            rank_nccl_ms: Vec::new(),
            rank_nccl_exposed_ms: Vec::new(),
            instruction_ms: if profile {
                vec![Vec::new(); n]
            } else {
                Vec::new()
            },
            host_reads: 0,
            phase_ms: Default::default(),
            graph_nodes: 0,
        };
        let (mut nccl_ms, mut exposed_ms) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
        let event = |s: &Arc<CudaStream>| {
            s.record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| backend_err(e.to_string()))
        };
        for _ in 0..iters {
            let mut per = profile.then(|| vec![0.0; n]);
            // Every rank starts each forward together: a barrier, waited for on the host.
            if let Some(c) = rank.comms {
                c.gather_world(&rank.stream, &[0.0]).map_err(backend_err)?;
            }
            rank.time_comms(rank.comms.is_some());
            rank.host_reads.set(0);
            let start = event(&rank.stream)?;
            rank.forward(m, &feed, per.as_mut())?;
            let end = event(&rank.stream)?;
            end.synchronize().map_err(|e| backend_err(e.to_string()))?;
            timing.host_reads = timing.host_reads.max(rank.host_reads.get());
            let comm = rank.take_comm_ms().map_err(backend_err)?;
            nccl_ms.push(comm.busy);
            exposed_ms.push(comm.exposed);
            rank.time_comms(false);
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| backend_err(e.to_string()))?;
            timing.forward_ms.push(ms as f64);
            for (name, ms) in rank.phase_ms.take() {
                timing
                    .phase_ms
                    .entry(name.to_string())
                    .or_default()
                    .push(ms);
            }
            for (acc, t) in timing
                .instruction_ms
                .iter_mut()
                .zip(per.unwrap_or_default())
            {
                acc.push(t);
            }
        }
        timing.graph_nodes = rank.graph.as_ref().map_or(0, |g| g.nodes);
        if let Some(c) = rank.comms {
            let mine: Vec<f32> = timing.forward_ms.iter().map(|&v| v as f32).collect();
            let all = c.gather_world(&rank.stream, &mine).map_err(backend_err)?;
            timing.rank_ms = all
                .chunks(iters.max(1))
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect();
            let by_rank = |v: &[f64]| -> Result<Vec<Vec<f64>>, RuntimeError> {
                let mine: Vec<f32> = v.iter().map(|&v| v as f32).collect();
                let all = c.gather_world(&rank.stream, &mine).map_err(backend_err)?;
                Ok(all
                    .chunks(iters.max(1))
                    .map(|r| r.iter().map(|&v| v as f64).collect())
                    .collect())
            };
            timing.rank_nccl_ms = by_rank(&nccl_ms)?;
            timing.rank_nccl_exposed_ms = by_rank(&exposed_ms)?;
            // A replayed forward's NCCL calls are inside its graph, out of the events' reach:
            // not measured (gathered all the same, so every rank makes the same calls).
            if timing.graph_nodes > 0 {
                timing.rank_nccl_ms.clear();
                timing.rank_nccl_exposed_ms.clear();
            }
            timing.forward_ms = (0..iters)
                .map(|i| timing.rank_ms.iter().map(|r| r[i]).fold(0.0, f64::max))
                .collect();
            let all = c
                .gather_world(&rank.stream, &[timing.host_reads as f32])
                .map_err(backend_err)?;
            timing.host_reads = all.iter().fold(0.0f32, |a, &b| a.max(b)) as usize;
        }
        Ok(timing)
    })
}
