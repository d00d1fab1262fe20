//! Reading and writing `.npy` arrays (the inputs and outputs of `ppmoe run`). Headers are parsed
//! by npyz; the data is read as raw little-endian bytes in the array's own type.

use crate::tensor::{numel, DType, Data, Tensor};
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
    let bytes = std::fs::read(path).map_err(|cause| NpyError::Io {
        path: p.clone(),
        cause,
    })?;
    let bad = |reason: String| NpyError::Format {
        path: p.clone(),
        reason,
    };
    let file = npyz::NpyFile::new(bytes.as_slice()).map_err(|e| bad(e.to_string()))?;
    if file.order() != npyz::Order::C {
        return Err(bad("Fortran-ordered arrays are not supported".into()));
    }
    let descr = match file.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => return Err(bad(format!("unsupported dtype {other:?}"))),
    };
    let dtype = type_of(&descr).ok_or_else(|| bad(format!("unsupported dtype '{descr}'")))?;
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let n = numel(&shape) * dtype.size();
    if bytes.len() < n {
        return Err(bad(format!(
            "the data is truncated: {} bytes for {n}",
            bytes.len()
        )));
    }
    let data = &bytes[bytes.len() - n..];
    Tensor::from_bytes(dtype, shape, data)
        .ok_or_else(|| bad("the data does not match the header".into()))
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
