//! The bundle: a folder with `manifest.json` (format version, source model hash, grid, per-rank
//! programs with their buffer tables, and the sha256 of every other file) and one safetensors
//! file of weights per rank. Written to a temporary folder and renamed into place, so that a
//! bundle is either whole or absent; read back with every checksum verified.

use crate::error::RuntimeError;
use crate::program::{BufferKind, Program};
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The bundle format this runtime reads. 2: the experts steps' gather, activation and combine
/// kernels over bf16 rows of an even width take two columns per thread (`bf16_pairs`), which
/// the runtime launches so: a version 1 bundle's kernels would be launched with half their
/// threads, so it is refused rather than run.
pub const FORMAT_VERSION: u64 = 2;
pub const MANIFEST: &str = "manifest.json";
/// The manifest's own sha256 (`sha256sum`'s line format), so an edited program is refused.
pub const MANIFEST_SHA256: &str = "manifest.sha256";
/// The most microbatches a manifest may ask for (each is a full pass over the program).
pub const MAX_MICROBATCHES: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    pub tp: usize,
    pub pp: usize,
    pub dp: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceModel {
    pub path: String,
    pub sha256: String,
}

/// A named input or output of the whole model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Option<usize>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u64,
    pub producer: String,
    pub source: SourceModel,
    pub grid: Grid,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    pub programs: Vec<Program>,
    /// File name (relative to the bundle) -> sha256, for every file but the manifest.
    pub files: BTreeMap<String, String>,
    /// GPipe microbatches: the programs are compiled for 1/K of the batch (axis 0 of every
    /// input and output); the runner splits the inputs, streams the pieces through the
    /// pipeline stages in order, and concatenates the outputs.
    #[serde(default = "one")]
    pub microbatches: usize,
}

fn one() -> usize {
    1
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |cause| RuntimeError::Io {
        path: path.display().to_string(),
        cause,
    }
}

/// Writes a bundle: `weights[r]` holds rank r's weights by buffer name; `extra` are other files
/// (the PTX of each rank), checksummed like the rest.
pub fn write_bundle(
    dir: &Path,
    manifest: Manifest,
    weights: &[Vec<(String, Tensor)>],
    extra: &[(String, Vec<u8>)],
) -> Result<(), RuntimeError> {
    write_bundle_with(dir, manifest, weights, extra, &mut |_| {})
}

/// As [`write_bundle`], calling `progress` with each weight's name once it is written. Each
/// weights file is written one tensor at a time and hashed while written.
pub fn write_bundle_with(
    dir: &Path,
    mut manifest: Manifest,
    weights: &[Vec<(String, Tensor)>],
    extra: &[(String, Vec<u8>)],
    progress: &mut dyn FnMut(&str),
) -> Result<(), RuntimeError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let tmp: PathBuf = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        manifest.files.clear();
        for (program, rank_weights) in manifest.programs.iter().zip(weights) {
            let p = tmp.join(&program.weights_file);
            let hash = crate::safetensors_io::write_file(&p, rank_weights, &mut *progress)
                .map_err(|reason| RuntimeError::Bundle {
                    path: p.display().to_string(),
                    reason,
                })?;
            manifest.files.insert(program.weights_file.clone(), hash);
        }
        for (name, bytes) in extra {
            let p = tmp.join(name);
            std::fs::write(&p, bytes).map_err(io_err(&p))?;
            manifest.files.insert(name.clone(), sha256_hex(bytes));
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| RuntimeError::Bundle {
            path: MANIFEST.into(),
            reason: e.to_string(),
        })?;
        let p = tmp.join(MANIFEST);
        std::fs::write(&p, &json).map_err(io_err(&p))?;
        let p = tmp.join(MANIFEST_SHA256);
        std::fs::write(&p, format!("{}  {MANIFEST}\n", sha256_hex(&json))).map_err(io_err(&p))?;
        // Replace an earlier bundle only; never a folder that is something else.
        if dir.exists() {
            if !dir.join(MANIFEST).exists() {
                return Err(RuntimeError::Bundle {
                    path: dir.display().to_string(),
                    reason: "exists and is not a ppmoe bundle; refusing to overwrite it".into(),
                });
            }
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Why a manifest's text is refused.
pub enum ManifestError {
    /// A format this ppmoe does not read.
    Version(u64),
    Invalid(String),
}

/// A manifest's text, parsed and checked before anything is read or run: the format version,
/// the microbatch count, and every program against its own tables (`Program::validate`). The
/// fuzz target's entry.
pub fn parse_manifest(text: &[u8]) -> Result<Manifest, ManifestError> {
    let bad = ManifestError::Invalid;
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let found = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("no format_version".into()))?;
    if found != FORMAT_VERSION {
        return Err(ManifestError::Version(found));
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| bad(format!("malformed manifest: {e}")))?;
    if manifest.microbatches == 0 || manifest.microbatches > MAX_MICROBATCHES {
        return Err(bad(format!(
            "microbatches = {}: expected 1 to {MAX_MICROBATCHES}",
            manifest.microbatches
        )));
    }
    for program in &manifest.programs {
        program
            .validate()
            .map_err(|reason| bad(format!("rank {}: {reason}", program.rank)))?;
    }
    Ok(manifest)
}

/// The path of a file a bundle names: a plain name inside the bundle's folder (no absolute
/// path, no `..`, no folder part), and a regular file there (not a link, FIFO or device, which
/// could lead out of the bundle or block a read forever).
pub fn bundle_file(dir: &Path, name: &str) -> Result<PathBuf, RuntimeError> {
    let refuse = |reason: String| RuntimeError::Bundle {
        path: dir.join(name).display().to_string(),
        reason,
    };
    let plain = Path::new(name).components().count() == 1
        && matches!(
            Path::new(name).components().next(),
            Some(std::path::Component::Normal(_))
        );
    if !plain {
        return Err(refuse(format!(
            "the bundle names '{name}': a file must be a plain name inside the bundle's folder"
        )));
    }
    let p = dir.join(name);
    let meta = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
    if !meta.file_type().is_file() {
        return Err(refuse(
            "not a regular file (a link, folder, FIFO or device is refused)".into(),
        ));
    }
    Ok(p)
}

/// A small file of the bundle (the manifest and its checksum), read whole after the checks of
/// `bundle_file` and a size limit.
fn read_small(dir: &Path, name: &str) -> Result<Vec<u8>, RuntimeError> {
    const LIMIT: u64 = 1 << 30;
    let p = bundle_file(dir, name)?;
    let len = std::fs::metadata(&p).map_err(io_err(&p))?.len();
    if len > LIMIT {
        return Err(RuntimeError::Bundle {
            path: p.display().to_string(),
            reason: format!("{len} bytes: larger than any manifest ppmoe writes"),
        });
    }
    std::fs::read(&p).map_err(io_err(&p))
}

/// A bundle read from disk, checksums verified, weights loaded.
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Per rank, weight buffer name -> tensor.
    pub weights: Vec<BTreeMap<String, Tensor>>,
}

pub fn read_bundle(dir: &Path) -> Result<Bundle, RuntimeError> {
    read_bundle_for(dir, None)
}

/// As `read_bundle`; with `Some(rank)` (one process of a multi-process run) only that rank's
/// files are verified and its weights loaded: the other ranks' weights stay empty.
pub fn read_bundle_for(dir: &Path, only: Option<usize>) -> Result<Bundle, RuntimeError> {
    if !dir.is_dir() {
        return Err(RuntimeError::Bundle {
            path: dir.display().to_string(),
            reason: "not a bundle folder (it does not exist or is not a folder)".into(),
        });
    }
    let manifest = read_manifest(dir)?;
    verify_files(dir, &manifest, only)?;
    let weights = manifest
        .programs
        .iter()
        .map(|program| match only {
            Some(r) if r != program.rank => Ok(BTreeMap::new()),
            _ => read_weights(dir, &manifest, program),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bundle {
        dir: dir.to_owned(),
        manifest,
        weights,
    })
}

/// The manifest, its checksum verified first, then its format version and its contents.
fn read_manifest(dir: &Path) -> Result<Manifest, RuntimeError> {
    let mpath = dir.join(MANIFEST);
    let show = |p: &Path| p.display().to_string();
    let text = read_small(dir, MANIFEST)?;
    let sum = read_small(dir, MANIFEST_SHA256)?;
    let expected = String::from_utf8_lossy(&sum)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let actual = sha256_hex(&text);
    if actual != expected {
        return Err(RuntimeError::Checksum {
            path: show(&mpath),
            expected,
            actual,
        });
    }
    parse_manifest(&text).map_err(|e| match e {
        ManifestError::Version(found) => RuntimeError::FormatVersion {
            path: show(&mpath),
            found,
            supported: FORMAT_VERSION,
        },
        ManifestError::Invalid(reason) => RuntimeError::Bundle {
            path: show(&mpath),
            reason,
        },
    })
}

/// Every program's files confined to the bundle, and every listed file's checksum verified
/// (but another rank's weights and PTX, with `only`: that rank's to check).
fn verify_files(dir: &Path, manifest: &Manifest, only: Option<usize>) -> Result<(), RuntimeError> {
    let others: std::collections::BTreeSet<&str> = manifest
        .programs
        .iter()
        .filter(|p| only.is_some_and(|r| r != p.rank))
        .flat_map(|p| std::iter::once(p.weights_file.as_str()).chain(p.ptx_file.as_deref()))
        .collect();
    for program in &manifest.programs {
        for f in std::iter::once(&program.weights_file).chain(program.ptx_file.as_ref()) {
            bundle_file(dir, f)?;
        }
    }
    for (file, expected) in &manifest.files {
        if others.contains(file.as_str()) {
            continue;
        }
        let p = bundle_file(dir, file)?;
        let actual = crate::safetensors_io::sha256_file(&p).map_err(io_err(&p))?;
        if &actual != expected {
            return Err(RuntimeError::Checksum {
                path: p.display().to_string(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// A program's weights, tensor by tensor (the file's bytes are never held whole beside the
/// weights), each of the type the program says.
fn read_weights(
    dir: &Path,
    manifest: &Manifest,
    program: &Program,
) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
    let p = dir.join(&program.weights_file);
    let bad = |reason: String| RuntimeError::Bundle {
        path: p.display().to_string(),
        reason,
    };
    if !manifest.files.contains_key(&program.weights_file) {
        return Err(bad(
            "the weights file has no checksum in the manifest".into()
        ));
    }
    let st = crate::safetensors_io::Reader::open(&p).map_err(bad)?;
    let mut map = BTreeMap::new();
    for b in program
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Weight)
    {
        let t = st.tensor(&b.name).map_err(bad)?;
        if t.dtype != b.dtype {
            return Err(bad(format!(
                "weight '{}' is stored as {}, the program says {}",
                b.name,
                t.dtype.name(),
                b.dtype.name()
            )));
        }
        map.insert(b.name.clone(), t);
    }
    Ok(map)
}
