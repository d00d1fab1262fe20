//! `ppmoe bench BUNDLE`: the whole forward of a CUDA bundle, timed with CUDA events on its stream
//! after warm-up, N times; the median is the figure. A multi-rank bundle runs one process per
//! GPU (as `run`); the ranks meet before each forward, and a forward's time is its slowest
//! rank's. The float inputs are put on the
//! device before the timed forwards and the outputs left there, as a layer's tensors live on
//! the device in a framework: what is timed is the forward, including any host work and
//! device-to-host copies the program does inside it, not the PCIe link. With `profile`, each
//! instruction is timed too (an event pair around it, synchronised: it adds to the forward, so
//! the per-instruction times are for finding where the time goes, not for the total).

use crate::bundle::read_bundle_for;
use crate::distributed::Dist;
use crate::error::RuntimeError;
use crate::program::{BufferKind, Op};
use crate::runner::{bind_inputs, InputArg};
use crate::tensor::{DType, Tensor};
use std::path::Path;

/// One instruction's share of the forward (`--profile`).
pub struct InstructionTime {
    pub index: usize,
    pub op: String,
    pub origin: String,
    pub median_ms: f64,
}

pub struct BenchReport {
    /// Every timed forward, in ms, ascending (multi-rank: the slowest rank's, per forward).
    pub forward_ms: Vec<f64>,
    /// Multi-rank: each rank's median, by rank; empty for one rank.
    pub rank_median_ms: Vec<f64>,
    /// Multi-rank: each rank's median time inside NCCL calls per forward, by rank.
    pub rank_nccl_median_ms: Vec<f64>,
    /// Whether this process reports (rank 0, or the only one).
    /// Per rank, the median time its stream waited for NCCL (not hidden behind computation).
    pub rank_nccl_exposed_median_ms: Vec<f64>,
    pub reporter: bool,
    /// Device-to-host copies inside one forward (each a synchronisation): the most of any
    /// rank in any timed forward.
    pub host_reads: usize,
    /// The nodes of the CUDA graph the timed forwards replayed; 0 where they ran eagerly.
    pub graph_nodes: usize,
    /// With profile: the instructions, the slowest first.
    pub instructions: Vec<InstructionTime>,
    /// With profile: the named parts of steps (an experts step's), each part's median time per
    /// forward (ms), by name.
    pub phases: Vec<(String, f64)>,
}

impl BenchReport {
    pub fn median_ms(&self) -> f64 {
        median(&self.forward_ms)
    }
}

/// The middle value (the mean of the two middle ones for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Times the bundle's forward: inputs from `inputs` where given, else fresh random values
/// (integer inputs in the range of the table they index).
pub fn bench(
    dir: &Path,
    inputs: &[InputArg],
    warmup: usize,
    iters: usize,
    profile: bool,
) -> Result<BenchReport, RuntimeError> {
    let backend_err = |reason: String| RuntimeError::Backend {
        backend: "cuda".into(),
        reason,
    };
    crate::cuda::require()?;
    let dist = Dist::from_env().map_err(backend_err)?;
    let bundle = read_bundle_for(dir, dist.as_ref().map(|d| d.rank))?;
    let programs = &bundle.manifest.programs;
    if programs.len() > 1 && dist.is_none() {
        return Err(backend_err(format!(
            "the bundle has {} ranks: time it with one process per GPU, --nproc-per-node {} (or under torchrun / srun)",
            programs.len(),
            programs.len()
        )));
    }
    if programs.iter().any(|p| p.gpu.is_empty()) {
        return Err(backend_err(
            "the bundle was compiled for the CPU: compile it with --target cuda".into(),
        ));
    }
    let given = bind_inputs(&bundle, inputs)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let inputs: Vec<Tensor> = given
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| random_input(&bundle, i, &mut seed)))
        .collect();
    let timing =
        crate::cuda::bench_bundle(&bundle, &inputs, dist.as_ref(), warmup, iters, profile)?;
    let mut forward_ms = timing.forward_ms;
    forward_ms.sort_by(f64::total_cmp);
    let rank = dist.as_ref().map_or(0, |d| d.rank);
    let program = programs
        .iter()
        .find(|p| p.rank == rank)
        .ok_or_else(|| backend_err(format!("the bundle has no program for rank {rank}")))?;
    let mut instructions: Vec<InstructionTime> = timing
        .instruction_ms
        .iter()
        .enumerate()
        .map(|(index, times)| InstructionTime {
            index,
            op: program.instructions[index].op.name(),
            origin: program.instructions[index].origin.clone(),
            median_ms: median(times),
        })
        .collect();
    instructions.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
    Ok(BenchReport {
        forward_ms,
        rank_median_ms: timing.rank_ms.iter().map(|r| median(r)).collect(),
        rank_nccl_median_ms: timing.rank_nccl_ms.iter().map(|r| median(r)).collect(),
        rank_nccl_exposed_median_ms: timing
            .rank_nccl_exposed_ms
            .iter()
            .map(|r| median(r))
            .collect(),
        reporter: rank == 0,
        instructions,
        host_reads: timing.host_reads,
        graph_nodes: timing.graph_nodes,
        phases: timing
            .phase_ms
            .iter()
            .map(|(name, v)| (name.clone(), median(v)))
            .collect(),
    })
}

/// A random value for input `i`: floats uniform in [-1, 1); integers in [0, n) where n is the
/// leading size of a weight table the program gathers with them (token ids), else 0 or 1.
fn random_input(bundle: &crate::bundle::Bundle, i: usize, seed: &mut u64) -> Tensor {
    let port = &bundle.manifest.inputs[i];
    let shape = batch_shape(bundle, i);
    let n: usize = shape.iter().product();
    let mut next = || {
        // xorshift64*: fresh values every run, no dependency for it.
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11
    };
    if port.dtype.is_float() {
        let v = (0..n)
            .map(|_| (next() as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32)
            .collect();
        return Tensor::f32(shape, v).stored_as(port.dtype);
    }
    let bound = table_rows(bundle, &port.name).unwrap_or(2).max(1) as u64;
    let t = Tensor::i64(shape, (0..n).map(|_| (next() % bound) as i64).collect());
    if port.dtype == DType::I64 {
        t
    } else {
        t.with_dtype(port.dtype)
    }
}

/// The shape of the whole batch of input `i`: the programs' (compiled for one microbatch) with
/// axis 0 times the microbatches, else the port's (an unknown size taken as 1).
fn batch_shape(bundle: &crate::bundle::Bundle, i: usize) -> Vec<usize> {
    let port = &bundle.manifest.inputs[i];
    let compiled = bundle.manifest.programs.iter().find_map(|p| {
        p.inputs
            .iter()
            .map(|&b| &p.buffers[b])
            .find(|b| b.name == port.name)
            .and_then(|b| b.shape.iter().copied().collect::<Option<Vec<usize>>>())
    });
    match compiled {
        Some(mut shape) => {
            if let Some(batch) = shape.first_mut() {
                *batch *= bundle.manifest.microbatches.max(1);
            }
            shape
        }
        None => port.shape.iter().map(|d| d.unwrap_or(1)).collect(),
    }
}

/// The rows of the weight a Gather indexes with the input named `name`.
fn table_rows(bundle: &crate::bundle::Bundle, name: &str) -> Option<usize> {
    let p = &bundle.manifest.programs[0];
    let id = p.buffers.iter().position(|b| b.name == name)?;
    p.instructions.iter().find_map(|ins| {
        let (Op::Gather { .. }, Some(Some(table)), Some(Some(ids))) =
            (&ins.op, ins.inputs.first(), ins.inputs.get(1))
        else {
            return None;
        };
        let b = &p.buffers[*table];
        (*ids == id && b.kind == BufferKind::Weight).then(|| b.shape.first().copied().flatten())?
    })
}
