//! `ppmoe compile`: every stage built (down to `pipelined`), then the bundle: a manifest with
//! one program per rank of the grid, and one weights file per rank holding only its shard.

use crate::error::CompileError;
use crate::pipeline::{run_with, Compilation};
use ppmoe_runtime::bundle::{
    write_bundle_with, Grid as BundleGrid, Manifest, Port, SourceModel, FORMAT_VERSION,
};
use std::collections::BTreeMap;
use std::path::Path;

pub struct CompileReport {
    pub ranks: usize,
    /// Instructions of rank 0's program.
    pub instructions: usize,
    pub weights: usize,
    /// Bytes of weights per rank, in rank order.
    pub weight_bytes: Vec<usize>,
    pub moe_layers: usize,
    /// Where the PPMoE rewrite kept the all-to-all form, and why.
    pub kept_all_to_all: Vec<String>,
    /// For the CUDA backend: per rank with any, the instructions its plan runs on the host
    /// (the CPU kernel, operands copied there and results back).
    pub host_steps: Vec<(usize, Vec<usize>)>,
}

/// Compiles through every stage built and writes the bundle.
pub fn compile(c: Compilation, out: &Path) -> Result<CompileReport, CompileError> {
    let model_path = c.options.path.clone();
    let cuda = c.options.target_cuda;
    let mut c = run_with(c, if cuda { "ptx" } else { "pipelined" })?;
    // For the CUDA backend: each rank's per-instruction plan and its PTX file.
    let mut extra = Vec::new();
    if cuda {
        let plans = std::mem::take(&mut c.kernel_plans);
        for (rp, plan) in c.ranks.iter_mut().zip(plans) {
            let r = rp.program.rank;
            let module = format!("rank{r}_kernels");
            let ptx = c
                .ptx
                .iter()
                .find(|(n, _)| *n == module)
                .map(|(_, p)| p.clone())
                .unwrap_or_default();
            rp.program.gpu = plan.lowered;
            rp.program.ptx_file = Some(format!("rank{r}.ptx"));
            extra.push((format!("rank{r}.ptx"), ptx.into_bytes()));
        }
    }
    let core = c.core.as_ref().expect("the core stage ran");
    let source_sha256 =
        ppmoe_runtime::safetensors_io::sha256_file(&model_path).map_err(|cause| {
            CompileError::Io {
                path: model_path.clone(),
                cause,
            }
        })?;
    // The model's ports, from the one-rank program (every rank agrees on them).
    let p = &core.program;
    // Ports describe one microbatch: the runner cuts and joins axis 0.
    let port = |id: usize| Port {
        name: p.buffers[id].name.clone(),
        dtype: p.buffers[id].dtype,
        shape: p.buffers[id].shape.clone(),
    };
    let grid = c.options.grid.unwrap_or(crate::distribute::Grid::ONE);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        producer: format!("ppmoe {}", env!("CARGO_PKG_VERSION")),
        source: SourceModel {
            path: model_path.display().to_string(),
            sha256: source_sha256,
        },
        grid: BundleGrid {
            tp: grid.tp,
            pp: grid.pp,
            dp: grid.dp,
        },
        inputs: p.inputs.iter().map(|&i| port(i)).collect(),
        outputs: p.outputs.iter().map(|&i| port(i)).collect(),
        programs: c.ranks.iter().map(|r| r.program.clone()).collect(),
        files: BTreeMap::new(),
        microbatches: c.options.microbatches.max(1),
    };
    let report = CompileReport {
        ranks: c.ranks.len(),
        instructions: c.ranks.first().map_or(0, |r| r.program.instructions.len()),
        weights: c.ranks.first().map_or(0, |r| r.weights.len()),
        weight_bytes: c
            .ranks
            .iter()
            .map(|r| {
                r.weights
                    .iter()
                    .map(|(_, t)| t.len() * t.dtype.size())
                    .sum()
            })
            .collect(),
        moe_layers: core.moe_layers.len(),
        kept_all_to_all: c.diagnostics.kept_all_to_all.clone(),
        host_steps: c.ranks.iter().filter_map(host_steps).collect(),
    };
    let weights: Vec<Vec<(String, ppmoe_runtime::Tensor)>> =
        c.ranks.into_iter().map(|r| r.weights).collect();
    let total: usize = weights.iter().map(Vec::len).sum();
    let bar = crate::progress::bar(total as u64, "writing weights");
    write_bundle_with(out, manifest, &weights, &extra, &mut |name| {
        bar.set_message(name.to_string());
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    tracing::info!(
        "wrote {} weights of {} rank(s) to {}",
        total,
        weights.len(),
        out.display()
    );
    Ok(report)
}

/// A rank's instructions its GPU plan runs on the host, where it has any.
fn host_steps(rp: &crate::distribute::shard_moe::RankProgram) -> Option<(usize, Vec<usize>)> {
    let host = |(i, g): (usize, &ppmoe_runtime::program::GpuOp)| {
        (*g == ppmoe_runtime::program::GpuOp::Host).then_some(i)
    };
    let steps: Vec<usize> = rp.program.gpu.iter().enumerate().filter_map(host).collect();
    (!steps.is_empty()).then_some((rp.program.rank, steps))
}
