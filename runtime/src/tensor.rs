//! The CPU backend's tensor: a shape and one of three storages. Floats compute in f32 whatever
//! their stored type (f16/bf16 widen on load, narrow on store), integers in i64, booleans as bool.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use crate::storage::Buf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl DType {
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// Held on the GPU as f32: floats of every width, and booleans as 0 and 1.
    pub fn on_device_as_f32(self) -> bool {
        self.is_float() || self == DType::Bool
    }

    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The MLIR element type (signless integers; bool is i1).
    pub fn mlir(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I8 | DType::U8 => "i8",
            DType::I16 | DType::U16 => "i16",
            DType::I32 | DType::U32 => "i32",
            DType::I64 | DType::U64 => "i64",
            DType::Bool => "i1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// f32 values, owned or mapped from a model's file (see `Buf`).
    F32(Buf<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    /// f16 or bf16 bits (the tensor's dtype says which): weights as the model stores them,
    /// widened to f32 only where an op computes with them.
    Half(Buf<u16>),
}

/// The f32 values of f16 or bf16 bits.
pub fn widen(bits: &[u16], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => bits
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect(),
        _ => bits
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Shared: a reshape, a clone or a second program holding the same weight copies nothing.
    pub data: Arc<Data>,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor {
            dtype: DType::F32,
            shape,
            data: Arc::new(Data::F32(v.into())),
        }
    }

    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        Tensor {
            dtype: DType::I64,
            shape,
            data: Arc::new(Data::I64(v)),
        }
    }

    pub fn bool(shape: Vec<usize>, v: Vec<bool>) -> Tensor {
        Tensor {
            dtype: DType::Bool,
            shape,
            data: Arc::new(Data::Bool(v)),
        }
    }

    /// A tensor of `dtype` with the storage's values (the dtype only decides how it is stored).
    /// Half-precision bits are widened first when the type changes (they mean nothing else).
    pub fn with_dtype(mut self, dtype: DType) -> Tensor {
        if dtype != self.dtype && matches!(*self.data, Data::Half(_)) {
            self.data = Arc::new(Data::F32(self.to_f32().into()));
        }
        self.dtype = dtype;
        self
    }

    /// The value as a buffer of `dtype` holds it: a bf16/f16 buffer holds bits, so a result
    /// computed in f32 is rounded to nearest even there (as PyTorch's bf16 ops round theirs),
    /// and so are the other half type's bits moved into it (a bf16 table's rows gathered into
    /// an f16 buffer: beyond f16's range they become infinite, below its normal range they
    /// round to its subnormals, as PyTorch's cast from bf16 to f16 does).
    pub fn stored_as(self, dtype: DType) -> Tensor {
        let to_half = matches!(dtype, DType::BF16 | DType::F16);
        match &*self.data {
            Data::F32(v) if to_half => Tensor::half(self.shape.clone(), v, dtype),
            Data::Half(_) if to_half && self.dtype != dtype => {
                Tensor::half(self.shape.clone(), &self.to_f32(), dtype)
            }
            _ => self.with_dtype(dtype),
        }
    }

    /// The same tensor with half-precision bits widened to f32 storage (dtype kept).
    pub fn widened(self) -> Tensor {
        match &*self.data {
            Data::Half(bits) => Tensor {
                data: Arc::new(Data::F32(widen(bits, self.dtype).into())),
                ..self
            },
            _ => self,
        }
    }

    /// f32 values stored as `dtype` (f16/bf16 as their bits, rounded to nearest even).
    pub fn half(shape: Vec<usize>, v: &[f32], dtype: DType) -> Tensor {
        let bits = match dtype {
            DType::F16 => v
                .iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect(),
            _ => v
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect(),
        };
        Tensor {
            dtype,
            shape,
            data: Arc::new(Data::Half(bits)),
        }
    }

    pub fn len(&self) -> usize {
        numel(&self.shape)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &*self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The values as i64 (integers and booleans), for index and shape operands.
    pub fn to_i64(&self) -> Vec<i64> {
        match &*self.data {
            Data::I64(v) => v.clone(),
            Data::Bool(v) => v.iter().map(|&b| b as i64).collect(),
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Half(b) => widen(b, self.dtype).iter().map(|&x| x as i64).collect(),
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match &*self.data {
            Data::F32(v) => v.to_vec(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::Bool(v) => v.iter().map(|&b| b as u8 as f32).collect(),
            Data::Half(b) => widen(b, self.dtype),
        }
    }

    /// Picks elements by flat index into a new tensor of `shape` (the one primitive behind
    /// transpose, slice, gather, expand, tile and concat).
    pub fn pick(&self, shape: Vec<usize>, idx: impl Iterator<Item = usize>) -> Tensor {
        fn take<T: Copy>(v: &[T], n: usize, idx: impl Iterator<Item = usize>) -> Vec<T> {
            let mut out = Vec::with_capacity(n);
            out.extend(idx.map(|i| v[i]));
            out
        }
        let n = numel(&shape);
        let data = match &*self.data {
            Data::F32(v) => Data::F32(take(v, n, idx).into()),
            Data::I64(v) => Data::I64(take(v, n, idx)),
            Data::Bool(v) => Data::Bool(take(v, n, idx)),
            Data::Half(v) => Data::Half(take(v, n, idx).into()),
        };
        Tensor {
            dtype: self.dtype,
            shape,
            data: Arc::new(data),
        }
    }

    /// Axis 0 in `parts` equal blocks, taking the storage over: the later blocks are moved out
    /// one at a time and the first keeps the storage (shrunk in place), so a stack being cut
    /// for tensor-parallel ranks is never held twice. A shared storage is copied from instead.
    /// None unless axis 0 divides evenly.
    pub fn split_rows(self, parts: usize) -> Option<Vec<Tensor>> {
        let rows = *self.shape.first()?;
        if parts == 0 || rows % parts != 0 {
            return None;
        }
        let mut shape = self.shape.clone();
        shape[0] = rows / parts;
        let per = numel(&shape);
        let data: Vec<Data> = match Arc::try_unwrap(self.data) {
            Ok(Data::F32(v)) => v.split(parts, per).into_iter().map(Data::F32).collect(),
            Ok(Data::Half(v)) => v.split(parts, per).into_iter().map(Data::Half).collect(),
            Ok(Data::I64(v)) => Buf::from(v)
                .split(parts, per)
                .into_iter()
                .map(|b| Data::I64(b.into_vec()))
                .collect(),
            Ok(Data::Bool(v)) => {
                let owned = Tensor {
                    dtype: self.dtype,
                    shape: self.shape.clone(),
                    data: Arc::new(Data::Bool(v)),
                };
                return Some(
                    (0..parts)
                        .map(|p| owned.pick_runs(shape.clone(), &[p * per], per))
                        .collect(),
                );
            }
            Err(shared) => {
                let whole = Tensor {
                    dtype: self.dtype,
                    shape: self.shape.clone(),
                    data: shared,
                };
                return Some(
                    (0..parts)
                        .map(|p| whole.pick_runs(shape.clone(), &[p * per], per))
                        .collect(),
                );
            }
        };
        Some(
            data.into_iter()
                .map(|d| Tensor {
                    dtype: self.dtype,
                    shape: shape.clone(),
                    data: Arc::new(d),
                })
                .collect(),
        )
    }

    /// Copies the runs `start .. start + run` in order into a new tensor of `shape` (a gather
    /// of whole rows or matrices: no per-element index is ever built).
    pub fn pick_runs(&self, shape: Vec<usize>, starts: &[usize], run: usize) -> Tensor {
        fn take<T: Copy>(v: &[T], starts: &[usize], run: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(starts.len() * run);
            for &s in starts {
                out.extend_from_slice(&v[s..s + run]);
            }
            out
        }
        let data = match &*self.data {
            Data::F32(v) => Data::F32(take(v, starts, run).into()),
            Data::I64(v) => Data::I64(take(v, starts, run)),
            Data::Bool(v) => Data::Bool(take(v, starts, run)),
            Data::Half(v) => Data::Half(take(v, starts, run).into()),
        };
        Tensor {
            dtype: self.dtype,
            shape,
            data: Arc::new(data),
        }
    }

    /// Elements `range` as f32: borrowed from f32 storage, widened from half bits (one
    /// expert's matrix of a stack, say, without the rest of it).
    pub fn f32_range(&self, range: std::ops::Range<usize>) -> std::borrow::Cow<'_, [f32]> {
        match &*self.data {
            Data::F32(v) => std::borrow::Cow::Borrowed(&v[range]),
            Data::Half(b) => std::borrow::Cow::Owned(widen(&b[range], self.dtype)),
            _ => std::borrow::Cow::Owned(self.to_f32()[range].to_vec()),
        }
    }

    /// The values as f32, borrowed when they are stored so (no copy of a large operand).
    pub fn f32_values(&self) -> std::borrow::Cow<'_, [f32]> {
        match &*self.data {
            Data::F32(v) => std::borrow::Cow::Borrowed(v),
            _ => std::borrow::Cow::Owned(self.to_f32()),
        }
    }

    /// Little-endian bytes in the tensor's dtype, handed to `sink` a chunk at a time (a large
    /// weight is never held twice).
    pub fn write_bytes<E>(&self, mut sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        const CHUNK: usize = 1 << 20;
        let n = self.len();
        let mut start = 0;
        while start < n {
            let end = (start + CHUNK).min(n);
            let piece = Tensor {
                dtype: self.dtype,
                shape: vec![end - start],
                data: Arc::new(match &*self.data {
                    Data::F32(v) => Data::F32(v[start..end].to_vec().into()),
                    Data::I64(v) => Data::I64(v[start..end].to_vec()),
                    Data::Bool(v) => Data::Bool(v[start..end].to_vec()),
                    Data::Half(v) => Data::Half(v[start..end].to_vec().into()),
                }),
            };
            sink(&piece.to_bytes())?;
            start = end;
        }
        Ok(())
    }

    /// Little-endian bytes in the tensor's dtype.
    pub fn to_bytes(&self) -> Vec<u8> {
        match (&*self.data, self.dtype) {
            (Data::F32(v), DType::F32) => {
                let mut out = Vec::with_capacity(v.len() * 4);
                v.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                out
            }
            (Data::F32(v), DType::F16) => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            (Data::F32(v), DType::BF16) => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            (Data::F32(v), DType::F64) => {
                v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect()
            }
            (Data::Bool(v), _) => v.iter().map(|&b| b as u8).collect(),
            (Data::Half(b), DType::F16 | DType::BF16) => {
                let mut out = Vec::with_capacity(b.len() * 2);
                b.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                out
            }
            (Data::Half(_), _) => self.clone().widened().to_bytes(),
            (d, dt) => {
                let ints: Vec<i64> = match d {
                    Data::I64(v) => v.clone(),
                    Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
                    Data::Bool(_) | Data::Half(_) => unreachable!("handled above"),
                };
                match dt.size() {
                    1 => ints.iter().map(|&x| x as u8).collect(),
                    2 => ints
                        .iter()
                        .flat_map(|&x| (x as i16).to_le_bytes())
                        .collect(),
                    4 => ints
                        .iter()
                        .flat_map(|&x| (x as i32).to_le_bytes())
                        .collect(),
                    _ => ints.iter().flat_map(|&x| x.to_le_bytes()).collect(),
                }
            }
        }
    }

    /// The inverse of [`Tensor::to_bytes`]; `None` when the byte count does not match.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, b: &[u8]) -> Option<Tensor> {
        let n = numel(&shape);
        if b.len() != n * dtype.size() {
            return None;
        }
        let c = |i: usize, w: usize| &b[i * w..i * w + w];
        let data = match dtype {
            DType::F32 => Data::F32(
                (0..n)
                    .map(|i| f32::from_le_bytes(c(i, 4).try_into().unwrap()))
                    .collect(),
            ),
            // Kept as bits: a bf16 model's weights take bf16's room, not f32's.
            DType::F16 | DType::BF16 => Data::Half(
                (0..n)
                    .map(|i| u16::from_le_bytes(c(i, 2).try_into().unwrap()))
                    .collect(),
            ),
            DType::F64 => Data::F32(
                (0..n)
                    .map(|i| f64::from_le_bytes(c(i, 8).try_into().unwrap()) as f32)
                    .collect(),
            ),
            DType::Bool => Data::Bool(b.iter().map(|&x| x != 0).collect()),
            DType::I8 => Data::I64(b.iter().map(|&x| x as i8 as i64).collect()),
            DType::U8 => Data::I64(b.iter().map(|&x| x as i64).collect()),
            DType::I16 => Data::I64(
                (0..n)
                    .map(|i| i16::from_le_bytes(c(i, 2).try_into().unwrap()) as i64)
                    .collect(),
            ),
            DType::U16 => Data::I64(
                (0..n)
                    .map(|i| u16::from_le_bytes(c(i, 2).try_into().unwrap()) as i64)
                    .collect(),
            ),
            DType::I32 => Data::I64(
                (0..n)
                    .map(|i| i32::from_le_bytes(c(i, 4).try_into().unwrap()) as i64)
                    .collect(),
            ),
            DType::U32 => Data::I64(
                (0..n)
                    .map(|i| u32::from_le_bytes(c(i, 4).try_into().unwrap()) as i64)
                    .collect(),
            ),
            DType::I64 | DType::U64 => Data::I64(
                (0..n)
                    .map(|i| i64::from_le_bytes(c(i, 8).try_into().unwrap()))
                    .collect(),
            ),
        };
        Some(Tensor {
            dtype,
            shape,
            data: Arc::new(data),
        })
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn bf16_bits_stored_in_an_f16_buffer_are_rounded_to_f16() {
        // In f16's normal range exact; beyond it infinite; below it f16's subnormals (whose
        // step is 2^-24), to nearest even.
        let values = [1.5, -61440.0, 1.0e5, -3.0e38, 1.0e-7, 3.0e-8];
        let bf16 = Tensor::half(vec![6], &values, DType::BF16);
        let stored = bf16.clone().stored_as(DType::F16);
        assert_eq!(stored.dtype, DType::F16);
        let want: Vec<f32> = (bf16.to_f32().iter())
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        assert_eq!(stored.to_f32(), want);
        assert_eq!(want[..4], [1.5, -61440.0, f32::INFINITY, f32::NEG_INFINITY]);
        assert_ne!(
            want[4],
            bf16.to_f32()[4],
            "a subnormal f16 rounds the bf16 value"
        );
        // The other way, f16 bits into bf16, rounds to bf16's 8 bits of precision.
        let f16 = Tensor::half(vec![1], &[1.0009766], DType::F16);
        assert_eq!(f16.stored_as(DType::BF16).to_f32(), [1.0]);
    }

    #[test]
    fn split_rows_gives_each_block_whether_owned_or_shared() {
        let whole = Tensor::half(
            vec![4, 2, 3],
            &(0..24).map(|i| i as f32).collect::<Vec<_>>(),
            DType::BF16,
        );
        let shared = whole.clone();
        let from_shared = whole.clone().split_rows(2).unwrap();
        drop(whole);
        let from_owned = shared.clone().split_rows(2);
        // `shared` still holds the storage, so this one copies too; the owned path follows.
        let owned = Tensor::half(
            vec![4, 2, 3],
            &(0..24).map(|i| i as f32).collect::<Vec<_>>(),
            DType::BF16,
        );
        let moved = owned.split_rows(4).unwrap();
        for (b, blocks) in [(2, from_shared), (2, from_owned.unwrap()), (4, moved)] {
            let per = 24 / b;
            for (p, t) in blocks.iter().enumerate() {
                assert_eq!(t.shape, vec![4 / b, 2, 3]);
                assert_eq!(t.dtype, DType::BF16);
                let want: Vec<f32> = (p * per..(p + 1) * per).map(|i| i as f32).collect();
                assert_eq!(t.to_f32(), want);
            }
        }
        assert!(shared.split_rows(3).is_none());
    }
}
