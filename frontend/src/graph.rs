//! The imported model: ONNX's graph with its protobuf details resolved (external data read,
//! attributes decoded, types made explicit). It is what the `onnx` stage prints as MLIR.

use crate::dtype::DType;
use std::collections::HashMap;
use std::path::PathBuf;

/// One dimension of a tensor type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    /// A named symbolic dimension (`batch`, `s0`).
    Symbol(String),
    /// Not known before run time (a NonZero's count, say).
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(n) => Some(*n),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorType {
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, dims: &[i64]) -> Self {
        TensorType {
            dtype,
            dims: dims.iter().map(|&d| Dim::Known(d)).collect(),
        }
    }

    /// All dimensions known.
    pub fn static_dims(&self) -> Option<Vec<i64>> {
        self.dims.iter().map(Dim::known).collect()
    }

    /// `tensor<1x?x64xf32>`.
    pub fn mlir(&self) -> String {
        let mut s = String::from("tensor<");
        for d in &self.dims {
            match d {
                Dim::Known(n) => s.push_str(&n.to_string()),
                _ => s.push('?'),
            }
            s.push('x');
        }
        s.push_str(self.dtype.mlir());
        s.push('>');
        s
    }
}

/// A tensor's value: little-endian bytes of `dtype`, row-major. Large external data stays in
/// its file (`external`, `bytes` empty) until a later stage reads it, one tensor at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub bytes: Vec<u8>,
    pub external: Option<ExternalData>,
}

/// Bytes `offset .. offset + length` of an external-data file, checked to exist at load time.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalData {
    pub file: std::path::PathBuf,
    pub offset: u64,
    pub length: u64,
}

impl ExternalData {
    /// Reads the range into `dst` (exactly `length` bytes).
    pub fn read_into(&self, dst: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if dst.len() as u64 != self.length {
            return Err(std::io::Error::other(format!(
                "{} bytes asked of a range of {}",
                dst.len(),
                self.length
            )));
        }
        std::fs::File::open(&self.file)?.read_exact_at(dst, self.offset)
    }

    /// Reads the range (one positioned read; nothing else of the file is held).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let len = usize::try_from(self.length)
            .map_err(|_| std::io::Error::other("external data too large for this machine"))?;
        let mut buf = vec![0u8; len];
        self.read_into(&mut buf)?;
        Ok(buf)
    }
}

impl TensorData {
    /// The bytes, read from the external file when they live there.
    pub fn load_bytes(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        match &self.external {
            Some(e) => e.read().map(std::borrow::Cow::Owned),
            None => Ok(std::borrow::Cow::Borrowed(&self.bytes)),
        }
    }

    pub fn len(&self) -> usize {
        self.dims.iter().product::<i64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype, &self.dims)
    }

    /// The bytes held here and the element count, when they agree with the type and dims
    /// (a hostile model may give a tensor fewer bytes than its shape needs).
    fn held_bytes(&self) -> Option<(&[u8], usize)> {
        if self.external.is_some() {
            return None;
        }
        let n = self
            .dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?))?;
        (n.checked_mul(self.dtype.size()) == Some(self.bytes.len())).then_some((&self.bytes, n))
    }

    /// The elements as i64 (integer and bool types), for shape arithmetic.
    pub fn as_i64(&self) -> Option<Vec<i64>> {
        let (b, n) = self.held_bytes()?;
        let v: Vec<i64> = match self.dtype {
            DType::I64 => (0..n)
                .map(|i| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8])))
                .collect(),
            DType::I32 => (0..n)
                .map(|i| {
                    i32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4])) as i64
                })
                .collect(),
            DType::Bool | DType::U8 => b.iter().take(n).map(|&x| x as i64).collect(),
            DType::I8 => b.iter().take(n).map(|&x| x as i8 as i64).collect(),
            _ => return None,
        };
        Some(v)
    }

    /// The elements as f64 (float types), for constant folding of small tensors.
    pub fn as_f64(&self) -> Option<Vec<f64>> {
        let (b, n) = self.held_bytes()?;
        Some(match self.dtype {
            DType::F32 => (0..n)
                .map(|i| {
                    f32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4])) as f64
                })
                .collect(),
            DType::F64 => (0..n)
                .map(|i| f64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8])))
                .collect(),
            _ => {
                return self
                    .as_i64()
                    .map(|v| v.into_iter().map(|x| x as f64).collect())
            }
        })
    }

    /// The same values stored as `dtype` (integers and bool from their i64 values, f32 and f64
    /// from their f64 values; floats go to integers by truncation). None for f16/bf16 targets
    /// and for data that is not numeric.
    pub fn to_dtype(&self, dtype: DType) -> Option<TensorData> {
        let bytes: Vec<u8> = match dtype {
            DType::F32 => self
                .as_f64()?
                .iter()
                .flat_map(|&x| (x as f32).to_le_bytes())
                .collect(),
            DType::F64 => self
                .as_f64()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            _ => {
                let v = self
                    .as_i64()
                    .or_else(|| self.as_f64().map(|f| f.iter().map(|&x| x as i64).collect()))?;
                match dtype {
                    DType::I64 | DType::U64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    DType::I32 | DType::U32 => {
                        v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect()
                    }
                    DType::I16 | DType::U16 => {
                        v.iter().flat_map(|&x| (x as i16).to_le_bytes()).collect()
                    }
                    DType::I8 | DType::U8 | DType::Bool => v.iter().map(|&x| x as u8).collect(),
                    _ => return None,
                }
            }
        };
        Some(TensorData {
            dtype,
            dims: self.dims.clone(),
            bytes,
            external: None,
        })
    }

    pub fn from_i64(dims: Vec<i64>, values: &[i64]) -> Self {
        TensorData {
            dtype: DType::I64,
            dims,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            external: None,
        }
    }

    pub fn from_f32(dims: Vec<i64>, values: &[f32]) -> Self {
        TensorData {
            dtype: DType::F32,
            dims,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            external: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(String),
    Tensor(TensorData),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl AttrValue {
    pub fn kind(&self) -> &'static str {
        match self {
            AttrValue::Float(_) => "float",
            AttrValue::Int(_) => "int",
            AttrValue::String(_) => "string",
            AttrValue::Tensor(_) => "tensor",
            AttrValue::Floats(_) => "floats",
            AttrValue::Ints(_) => "ints",
            AttrValue::Strings(_) => "strings",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    /// "" for the default domain (ai.onnx); `com.microsoft` and others are kept as they are.
    pub domain: String,
    /// Input value names; "" marks an absent optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<(String, AttrValue)>,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// `op_type`, prefixed by the domain when it is not the default one.
    pub fn qualified_op(&self) -> String {
        if self.domain.is_empty() {
            self.op_type.clone()
        } else {
            format!("{}.{}", self.domain, self.op_type)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub ty: TensorType,
}

#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    /// The model's run-time inputs (initializers listed as inputs are weights, not here).
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
    /// Named weights, in the order the file lists them.
    pub initializers: Vec<(String, TensorData)>,
    /// Types of intermediate values where the file gives them.
    pub value_info: HashMap<String, TensorType>,
}

impl Graph {
    pub fn initializer(&self, name: &str) -> Option<&TensorData> {
        self.initializers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }
}

#[derive(Clone, Debug)]
pub struct Model {
    pub path: PathBuf,
    pub ir_version: i64,
    pub producer: String,
    /// (domain, version); the default domain is "".
    pub opsets: Vec<(String, i64)>,
    pub graph: Graph,
}

impl Model {
    pub fn default_opset(&self) -> i64 {
        self.opsets
            .iter()
            .find(|(d, _)| d.is_empty())
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }
}
