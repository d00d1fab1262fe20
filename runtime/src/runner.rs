//! What `ppmoe run` and `ppmoe-run` do: bind inputs, pick a backend, run, write outputs whole.

use crate::bundle::{read_bundle_for, Bundle};
use crate::distributed::Dist;
use crate::error::RuntimeError;
use crate::npy::{read_npy, write_npy};
use crate::tensor::{DType, Tensor};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// CUDA where a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "cpu" => Ok(Backend::Cpu),
            "cuda" => Ok(Backend::Cuda),
            _ => Err(format!(
                "unknown backend '{s}' (expected auto, cpu or cuda)"
            )),
        }
    }
}

/// One `--input`: `FILE` binds the next input in order, `NAME=FILE` binds by name.
#[derive(Clone, Debug)]
pub struct InputArg {
    pub name: Option<String>,
    pub file: PathBuf,
}

impl InputArg {
    pub fn parse(s: &str) -> InputArg {
        match s.split_once('=') {
            Some((n, f)) if !n.is_empty() && !n.contains('/') => InputArg {
                name: Some(n.into()),
                file: f.into(),
            },
            _ => InputArg {
                name: None,
                file: s.into(),
            },
        }
    }
}

pub struct RunReport {
    pub backend: &'static str,
    /// In a multi-process run: this process's rank, and whether it wrote the outputs (only the
    /// lowest rank that computes them does).
    pub rank: Option<(usize, bool)>,
    pub outputs: Vec<(String, PathBuf)>,
    /// The outputs themselves, in the model's output order.
    pub tensors: Vec<Tensor>,
}

impl RunReport {
    /// What a run prints: where each output went, or, on a rank that does not write them, who does.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some((rank, false)) = self.rank {
            lines.push(format!(
                "rank {rank}: done (the outputs are written by the last stage's first rank)"
            ));
        }
        lines.extend(self.outputs.iter().map(|(name, path)| {
            format!("{name} -> {} ({} backend)", path.display(), self.backend)
        }));
        lines
    }
}

/// ‖out − ref‖ / ‖ref‖ over all elements, in f64.
pub fn relative_error(out: &Tensor, reference: &Tensor) -> Result<f64, String> {
    if out.shape != reference.shape {
        return Err(format!(
            "shape {:?} differs from the reference's {:?}",
            out.shape, reference.shape
        ));
    }
    let (o, r) = (out.to_f32(), reference.to_f32());
    let num: f64 = o
        .iter()
        .zip(&r)
        .map(|(a, b)| ((*a as f64) - (*b as f64)).powi(2))
        .sum();
    let den: f64 = r.iter().map(|b| (*b as f64).powi(2)).sum();
    if den == 0.0 {
        return Ok(if num == 0.0 { 0.0 } else { f64::INFINITY });
    }
    Ok((num / den).sqrt())
}

/// Compares outputs with reference .npy files (`FILE` in output order, or `NAME=FILE`).
/// Returns one line per comparison and whether all were within `tolerance`.
pub fn check_outputs(
    bundle_dir: &Path,
    report: &RunReport,
    refs: &[InputArg],
    tolerance: f64,
) -> Result<(Vec<String>, bool), RuntimeError> {
    if let Some((_, false)) = report.rank {
        // Another rank holds the outputs and checks them.
        return Ok((Vec::new(), true));
    }
    let names: Vec<&str> = report.outputs.iter().map(|(n, _)| n.as_str()).collect();
    let mut lines = Vec::new();
    let mut ok = true;
    for (k, r) in refs.iter().enumerate() {
        let idx = match &r.name {
            Some(n) => names
                .iter()
                .position(|x| x == n)
                .ok_or_else(|| RuntimeError::Input {
                    name: n.clone(),
                    reason: format!(
                        "--check names no output of the model (its outputs: {})",
                        names.join(", ")
                    ),
                })?,
            None if k < names.len() => k,
            None => {
                return Err(RuntimeError::Input {
                    name: r.file.display().to_string(),
                    reason: format!(
                        "more --check files than the model's {} outputs",
                        names.len()
                    ),
                })
            }
        };
        let reference = read_npy(&r.file)?;
        let err = relative_error(&report.tensors[idx], &reference).map_err(|reason| {
            RuntimeError::Bundle {
                path: bundle_dir.display().to_string(),
                reason: format!("output '{}': {reason}", names[idx]),
            }
        })?;
        let pass = err <= tolerance;
        ok &= pass;
        lines.push(format!(
            "output '{}': relative error {err:.3e} against {} (tolerance {tolerance:e}): {}",
            names[idx],
            r.file.display(),
            if pass { "ok" } else { "MISMATCH" }
        ));
    }
    Ok((lines, ok))
}

/// Runs a bundle on the given inputs and writes `<output name>.npy` files into `out_dir`.
/// Outputs are written to a temporary folder first and moved into place when all are written.
pub fn run(
    bundle_dir: &Path,
    inputs: &[InputArg],
    out_dir: &Path,
    backend: Backend,
) -> Result<RunReport, RuntimeError> {
    // One process per GPU when launched so (torchrun, srun, --nproc-per-node): CUDA only, and
    // each process reads only its rank's weights.
    let dist = Dist::from_env().map_err(|reason| RuntimeError::Backend {
        backend: "distributed".into(),
        reason,
    })?;
    let bundle = read_bundle_for(bundle_dir, dist.as_ref().map(|d| d.rank))?;
    let use_cuda = uses_cuda(&bundle, backend, dist.as_ref())?;
    let inputs: Vec<Tensor> = bind_inputs(&bundle, inputs)?
        .into_iter()
        .zip(&bundle.manifest.inputs)
        .map(|(t, p)| {
            t.ok_or_else(|| RuntimeError::Input {
                name: p.name.clone(),
                reason: "missing: give it with --input FILE or --input NAME=FILE".into(),
            })
        })
        .collect::<Result<_, _>>()?;
    let outputs = if use_cuda {
        crate::cuda::run_bundle(&bundle, &inputs, dist.as_ref())?
    } else {
        crate::cpu::run_bundle(&bundle, &inputs)?
    };
    // Every rank of the last stage computes the outputs; the lowest one writes them.
    let writer = bundle
        .manifest
        .programs
        .iter()
        .find(|p| !p.outputs.is_empty())
        .map(|p| p.rank);
    let rank = dist.as_ref().map(|d| (d.rank, writer == Some(d.rank)));
    if let Some((_, false)) = rank {
        return Ok(RunReport {
            backend: "cuda",
            rank,
            outputs: Vec::new(),
            tensors: Vec::new(),
        });
    }
    let placed = write_outputs(&bundle, &outputs, out_dir)?;
    Ok(RunReport {
        backend: if use_cuda { "cuda" } else { "cpu" },
        rank,
        outputs: placed,
        tensors: outputs,
    })
}

/// Whether the run is on the GPU: as asked, or (auto) where the bundle carries a GPU plan and
/// a GPU can be used; a launcher's rank process must be.
fn uses_cuda(bundle: &Bundle, backend: Backend, dist: Option<&Dist>) -> Result<bool, RuntimeError> {
    let compiled_for_gpu = bundle.manifest.programs.iter().all(|p| !p.gpu.is_empty());
    let use_cuda = match backend {
        Backend::Cuda => {
            crate::cuda::require()?;
            true
        }
        Backend::Cpu => false,
        Backend::Auto => {
            dist.is_some()
                || (compiled_for_gpu
                    && bundle.manifest.programs.len() == 1
                    && crate::cuda::available().is_ok())
        }
    };
    if let (Some(d), false) = (dist, use_cuda) {
        return Err(RuntimeError::Backend {
            backend: "cpu".into(),
            reason: format!("this is rank {} of {} processes ({} environment), but the CPU backend runs every rank as a thread of one process: run it once, without a launcher", d.rank, d.world, d.source),
        });
    }
    Ok(use_cuda)
}

/// The outputs as `.npy` files in `out_dir`: written to a temporary folder first and moved
/// into place when all are written (nothing partial is left as if whole).
fn write_outputs(
    bundle: &Bundle,
    outputs: &[Tensor],
    out_dir: &Path,
) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |cause| RuntimeError::Io {
            path: p.clone(),
            cause,
        }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let tmp = out_dir.join(format!(".partial-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let mut written = Vec::new();
    let result = (|| -> Result<Vec<(String, PathBuf)>, RuntimeError> {
        for (port, t) in bundle.manifest.outputs.iter().zip(outputs) {
            let file = format!("{}.npy", sanitize(&port.name));
            write_npy(&tmp.join(&file), t).map_err(io(&tmp.join(&file)))?;
            written.push((port.name.clone(), file));
        }
        let mut placed = Vec::new();
        for (name, file) in &written {
            let dst = out_dir.join(file);
            std::fs::rename(tmp.join(file), &dst).map_err(io(&dst))?;
            placed.push((name.clone(), dst));
        }
        Ok(placed)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Output names become file names: path separators and other odd characters are replaced.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The bundle's inputs bound from `--input` arguments (FILE in order, or NAME=FILE): one entry
/// per input of the model, None where none was given.
pub fn bind_inputs(
    bundle: &crate::bundle::Bundle,
    inputs: &[InputArg],
) -> Result<Vec<Option<Tensor>>, RuntimeError> {
    let ports = &bundle.manifest.inputs;
    let mut bound: Vec<Option<Tensor>> = vec![None; ports.len()];
    let mut next = 0;
    for arg in inputs {
        let slot = match &arg.name {
            Some(n) => {
                ports
                    .iter()
                    .position(|p| &p.name == n)
                    .ok_or_else(|| RuntimeError::Input {
                        name: n.clone(),
                        reason: format!(
                            "the model has no input of that name (its inputs: {})",
                            ports
                                .iter()
                                .map(|p| p.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })?
            }
            None => {
                while next < bound.len() && bound[next].is_some() {
                    next += 1;
                }
                if next >= ports.len() {
                    return Err(RuntimeError::Input {
                        name: arg.file.display().to_string(),
                        reason: format!("more inputs given than the model's {}", ports.len()),
                    });
                }
                next
            }
        };
        if bound[slot].is_some() {
            return Err(RuntimeError::Input {
                name: ports[slot].name.clone(),
                reason: "bound twice".into(),
            });
        }
        // numpy has no bfloat16: an f32 array given for a bf16 or f16 input is rounded to it
        // (to nearest even), as outputs of those types are widened to f32 when written.
        let t = read_npy(&arg.file)?;
        bound[slot] = Some(match (t.dtype, ports[slot].dtype) {
            (DType::F32, to @ (DType::BF16 | DType::F16)) => t.stored_as(to),
            _ => t,
        });
    }
    Ok(bound)
}
