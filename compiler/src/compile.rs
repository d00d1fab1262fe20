//! `ppmoe compile`: the stages down to `core`, then the bundle (manifest, weights per rank).

use crate::error::CompileError;
use crate::pipeline::{run_with, Compilation};
use ppmoe_runtime::bundle::{sha256_hex, write_bundle, Grid, Manifest, Port, SourceModel, FORMAT_VERSION};
use std::collections::BTreeMap;
use std::path::Path;

pub struct CompileReport {
    pub instructions: usize,
    pub weights: usize,
    pub weight_bytes: usize,
    pub moe_layers: usize,
}

/// Compiles through the last stage built (`moe`) and writes the bundle.
pub fn compile(c: Compilation, out: &Path) -> Result<CompileReport, CompileError> {
    let model_path = c.path.clone();
    let model_path = model_path.as_path();
    let c = run_with(c, "moe")?;
    let moe_layers = c.core.as_ref().map_or(0, |p| p.moe_layers.len());
    let core = c.core.expect("the core stage ran");
    let bytes = std::fs::read(model_path).map_err(|cause| CompileError::Io { path: model_path.to_owned(), cause })?;
    let p = &core.program;
    let port = |id: usize| Port { name: p.buffers[id].name.clone(), dtype: p.buffers[id].dtype, shape: p.buffers[id].shape.clone() };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        producer: format!("ppmoe {}", env!("CARGO_PKG_VERSION")),
        source: SourceModel { path: model_path.display().to_string(), sha256: sha256_hex(&bytes) },
        grid: Grid { tp: 1, pp: 1, dp: 1 },
        inputs: p.inputs.iter().map(|&i| port(i)).collect(),
        outputs: p.outputs.iter().map(|&i| port(i)).collect(),
        programs: vec![core.program.clone()],
        files: BTreeMap::new(),
    };
    let report = CompileReport {
        instructions: core.program.instructions.len(),
        weights: core.weights.len(),
        weight_bytes: core.weights.iter().map(|(_, t)| t.len() * t.dtype.size()).sum(),
        moe_layers,
    };
    write_bundle(out, manifest, &[core.weights])?;
    Ok(report)
}
