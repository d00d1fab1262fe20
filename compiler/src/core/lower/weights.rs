//! The model's weights and constants as the runtime's tensors: external data memory-mapped
//! where it is aligned (read when used, paged by the kernel), read once otherwise, and shared
//! by every program lowered from the model.

use crate::error::CompileError;
use ppmoe_frontend::{Model, TensorData};
use ppmoe_runtime::tensor::Buf;
use ppmoe_runtime::{DType, Tensor};

pub fn runtime_dtype(d: ppmoe_frontend::DType) -> DType {
    use ppmoe_frontend::DType as F;
    match d {
        F::F32 => DType::F32,
        F::F16 => DType::F16,
        F::BF16 => DType::BF16,
        F::F64 => DType::F64,
        F::I8 => DType::I8,
        F::I16 => DType::I16,
        F::I32 => DType::I32,
        F::I64 => DType::I64,
        F::U8 => DType::U8,
        F::U16 => DType::U16,
        F::U32 => DType::U32,
        F::U64 => DType::U64,
        F::Bool => DType::Bool,
    }
}

/// A constant's or weight's value as a tensor (external data read here, one tensor at a time).
pub fn tensor_of(t: &TensorData) -> Result<Tensor, String> {
    if let (Some(x), true) = (&t.external, cfg!(target_endian = "little")) {
        match t.dtype {
            ppmoe_frontend::DType::F32 => {
                return read_external::<f32>(t, x).map(|(shape, v)| Tensor {
                    dtype: DType::F32,
                    shape,
                    data: std::sync::Arc::new(ppmoe_runtime::tensor::Data::F32(v)),
                })
            }
            // bf16 and f16 stay as their bits: no f32 copy of a half-precision model.
            d @ (ppmoe_frontend::DType::BF16 | ppmoe_frontend::DType::F16) => {
                let (shape, bits) = read_external::<u16>(t, x)?;
                return Ok(Tensor {
                    dtype: runtime_dtype(d),
                    shape,
                    data: std::sync::Arc::new(ppmoe_runtime::tensor::Data::Half(bits)),
                });
            }
            _ => {}
        }
    }
    let bytes = t.load_bytes().map_err(|e| match &t.external {
        Some(x) => format!(
            "cannot read {} bytes at offset {} of {}: {e}",
            x.length,
            x.offset,
            x.file.display()
        ),
        None => e.to_string(),
    })?;
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension in {:?}", t.dims)))
        .collect::<Result<Vec<_>, _>>()?;
    Tensor::from_bytes(runtime_dtype(t.dtype), shape, &bytes).ok_or_else(|| {
        format!(
            "{} bytes do not hold a {:?} tensor of shape {:?}",
            bytes.len(),
            t.dtype,
            t.dims
        )
    })
}

/// An external weight as its tensor's storage: a run of the memory-mapped file where it is
/// aligned (nothing is read until used, and then paged in and out by the kernel), else read
/// straight into an owned buffer (no byte buffer beside it).
fn read_external<T: bytemuck::Pod>(
    t: &TensorData,
    x: &ppmoe_frontend::ExternalData,
) -> Result<(Vec<usize>, Buf<T>), String> {
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension in {:?}", t.dims)))
        .collect::<Result<Vec<_>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("the element count of {shape:?} overflows"))?;
    let bytes = n.checked_mul(std::mem::size_of::<T>());
    if bytes.map(|b| b as u64) != Some(x.length) {
        return Err(format!(
            "{} bytes at offset {} of {} do not hold a tensor of shape {shape:?}",
            x.length,
            x.offset,
            x.file.display()
        ));
    }
    // SAFETY: the model's files are only read, and not changed while it is compiled.
    let mapped = unsafe { ppmoe_runtime::storage::map_path(&x.file) }
        .ok()
        .zip(usize::try_from(x.offset).ok())
        .and_then(|(map, offset)| Buf::mapped(&map, offset, n));
    if let Some(run) = mapped {
        return Ok((shape, run));
    }
    let mut v = vec![T::zeroed(); n];
    x.read_into(bytemuck::cast_slice_mut(&mut v)).map_err(|e| {
        format!(
            "cannot read {} bytes at offset {} of {}: {e}",
            x.length,
            x.offset,
            x.file.display()
        )
    })?;
    Ok((shape, v.into()))
}

/// The model's initializers as tensors, converted once and shared (by reference count) by every
/// program lowered from the model.
pub fn convert_initializers(model: &Model) -> Result<Vec<(String, Tensor)>, CompileError> {
    let bar = crate::progress::bar(model.graph.initializers.len() as u64, "reading weights");
    let mut out = Vec::with_capacity(model.graph.initializers.len());
    for (name, data) in &model.graph.initializers {
        bar.set_message(name.clone());
        let t = tensor_of(data).map_err(|reason| CompileError::Node {
            path: model.path.clone(),
            node: name.clone(),
            op: "initializer".into(),
            reason,
        })?;
        out.push((name.clone(), t));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}
