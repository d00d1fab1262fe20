//! Reading and writing `.npy` arrays (the inputs and outputs of `ppmoe run`). Headers are parsed
//! by npyz; the data is read as raw little-endian bytes in the array's own type.

use crate::tensor::{DType, Data, Tensor};
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: cannot read: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{path}: not a valid .npy file ({reason})")]
    Format { path: String, reason: String },
}

fn type_of(descr: &str) -> Option<DType> {
    Some(match descr {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<f2" => DType::F16,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "<i2" => DType::I16,
        "|i1" => DType::I8,
        "|u1" => DType::U8,
        "<u2" => DType::U16,
        "<u4" => DType::U32,
        "<u8" => DType::U64,
        "|b1" => DType::Bool,
        _ => return None,
    })
}

pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let p = path.display().to_string();
    let io = |cause| NpyError::Io {
        path: p.clone(),
        cause,
    };
    let bad = |reason: String| NpyError::Format {
        path: p.clone(),
        reason,
    };
    // A FIFO would block and a device (/dev/zero) never end: only regular files are read.
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_npy(&bytes).map_err(bad)
}

/// A .npy file's bytes as a tensor (what `read_npy` reads; the fuzz target's entry).
pub fn parse_npy(bytes: &[u8]) -> Result<Tensor, String> {
    let data_at = data_offset(bytes)?;
    let file = npyz::NpyFile::new(bytes).map_err(|e| e.to_string())?;
    if file.order() != npyz::Order::C {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let descr = match file.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => return Err(format!("unsupported dtype {other:?}")),
    };
    let dtype = type_of(&descr).ok_or_else(|| format!("unsupported dtype '{descr}'"))?;
    let shape: Vec<usize> = file
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("shape {:?} does not fit this machine", file.shape()))?;
    let n = shape
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("the element count of {shape:?} overflows"))?;
    // Exactly the header's data: a short file or trailing bytes is an error, not a shifted read.
    let data = &bytes[data_at..];
    if data.len() != n {
        return Err(format!(
            "{} data bytes where the header ({descr}, shape {shape:?}) says {n}",
            data.len()
        ));
    }
    Tensor::from_bytes(dtype, shape, data)
        .ok_or_else(|| "the data does not match the header".into())
}

/// Where a .npy file's data starts, from its preamble (magic, version, header length), after
/// checking the header is a plain dictionary: at most 3 brackets deep (numpy writes 2), so no
/// parser spends more than linear time on it.
fn data_offset(bytes: &[u8]) -> Result<usize, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or("the header runs past the end of the file")?;
    let mut depth = 0usize;
    for &c in &bytes[start..end] {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > 3 {
            return Err("the header is nested more than 3 deep: not a .npy header".into());
        }
    }
    Ok(end)
}

/// Writes `t` as .npy; bf16 and f16 are widened to float32 (numpy has no bfloat16).
pub fn write_npy(path: &Path, t: &Tensor) -> std::io::Result<()> {
    let (descr, bytes) = match (&*t.data, t.dtype) {
        (Data::F32(_), DType::F64) => ("<f8", t.to_bytes()),
        (Data::F32(v), _) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (Data::Half(_), _) => (
            "<f4",
            t.to_f32().iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        (Data::Bool(_), _) => ("|b1", t.to_bytes()),
        (Data::I64(_), DType::I32) => ("<i4", t.to_bytes()),
        (Data::I64(v), _) => ("<i8", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    };
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::fs::File::create(path)?;
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(&bytes)?;
    f.sync_all()
}
