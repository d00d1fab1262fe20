//! Reading an ONNX file into a [`Model`]: protobuf decoding, external data, attribute decoding,
//! and the checks that make a later stage able to trust the graph (opsets, defined values,
//! attribute names and kinds).

use crate::dtype::DType;
use crate::error::ImportError;
use crate::graph::{
    AttrValue, Dim, ExternalData, Graph, Model, Node, TensorData, TensorType, ValueInfo,
};
use crate::onnx_proto::{self as pb, attribute_type as at};
use crate::schema;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The ai.onnx opsets ppmoe reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=23;

/// External tensors up to this size are read at load time; larger ones when converted.
pub(crate) const EAGER_EXTERNAL_BYTES: usize = 64 * 1024;

/// Reads and checks an ONNX model; external data files are resolved relative to the model.
pub fn load_onnx(path: &Path) -> Result<Model, ImportError> {
    let bytes = std::fs::read(path).map_err(|cause| ImportError::Io {
        path: path.to_owned(),
        cause,
    })?;
    let proto = pb::ModelProto::decode(bytes.as_slice()).map_err(|e| ImportError::NotOnnx {
        path: path.to_owned(),
        reason: format!("protobuf decoding failed: {e}"),
    })?;
    let Some(graph) = proto.graph.as_ref() else {
        return Err(ImportError::NotOnnx {
            path: path.to_owned(),
            reason: "the file holds no graph".into(),
        });
    };
    if proto.ir_version <= 0 || proto.opset_import.is_empty() {
        return Err(ImportError::NotOnnx {
            path: path.to_owned(),
            reason: format!(
                "ir_version {} with {} opset imports",
                proto.ir_version,
                proto.opset_import.len()
            ),
        });
    }
    let cx = Loader {
        path: path.to_owned(),
        dir: path.parent().map(Path::to_owned).unwrap_or_default(),
    };
    let mut opsets = Vec::new();
    for o in &proto.opset_import {
        let domain = if o.domain == "ai.onnx" {
            String::new()
        } else {
            o.domain.clone()
        };
        if domain.is_empty() && !OPSETS.contains(&o.version) {
            return Err(ImportError::UnsupportedOpset {
                path: cx.path.clone(),
                domain: "ai.onnx".into(),
                version: o.version,
            });
        }
        opsets.push((domain, o.version));
    }
    let local_functions: HashSet<(String, String)> = proto
        .functions
        .iter()
        .map(|f| (f.domain.clone(), f.name.clone()))
        .collect();
    let graph = cx.graph(graph, &local_functions)?;
    Ok(Model {
        path: path.to_owned(),
        ir_version: proto.ir_version,
        producer: proto.producer_name.clone(),
        opsets,
        graph,
    })
}

struct Loader {
    path: PathBuf,
    dir: PathBuf,
}

impl Loader {
    fn graph(
        &self,
        g: &pb::GraphProto,
        local_functions: &HashSet<(String, String)>,
    ) -> Result<Graph, ImportError> {
        if let Some(s) = g.sparse_initializer.first() {
            let _ = s;
            return Err(ImportError::BadTensor {
                path: self.path.clone(),
                tensor: "(sparse initializer)".into(),
                reason: "sparse initializers are not supported".into(),
            });
        }
        let mut initializers = Vec::with_capacity(g.initializer.len());
        for t in &g.initializer {
            initializers.push((t.name.clone(), self.tensor(t)?));
        }
        let weight_names: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut inputs = Vec::new();
        for vi in &g.input {
            if !weight_names.contains(vi.name.as_str()) {
                inputs.push(self.value_info(vi)?);
            }
        }
        let outputs = g
            .output
            .iter()
            .map(|vi| self.value_info(vi))
            .collect::<Result<Vec<_>, _>>()?;
        let mut value_info = HashMap::new();
        for vi in &g.value_info {
            // Intermediate types are hints: a missing or non-tensor one is simply not recorded.
            if let Ok(v) = self.value_info(vi) {
                value_info.insert(v.name, v.ty);
            }
        }

        let mut defined: HashSet<String> = inputs.iter().map(|v| v.name.clone()).collect();
        defined.extend(weight_names.iter().map(|s| s.to_string()));
        let mut nodes = Vec::with_capacity(g.node.len());
        for (i, n) in g.node.iter().enumerate() {
            let node = self.node(n, i, local_functions, &defined)?;
            defined.extend(node.outputs.iter().cloned());
            nodes.push(node);
        }
        for o in &outputs {
            if !defined.contains(&o.name) {
                return Err(ImportError::BadType {
                    path: self.path.clone(),
                    value: o.name.clone(),
                    reason: "the graph output is produced by no node".into(),
                });
            }
        }
        Ok(Graph {
            name: g.name.clone(),
            inputs,
            outputs,
            nodes,
            initializers,
            value_info,
        })
    }

    /// Node `i` as the graph holds it: named (`<op>_<i>` where the file leaves it unnamed), its
    /// inputs defined before it, its attributes read, an unused optional output named.
    fn node(
        &self,
        n: &pb::NodeProto,
        i: usize,
        local_functions: &HashSet<(String, String)>,
        defined: &HashSet<String>,
    ) -> Result<Node, ImportError> {
        let name = if n.name.is_empty() {
            format!("{}_{i}", n.op_type)
        } else {
            n.name.clone()
        };
        let domain = if n.domain == "ai.onnx" {
            String::new()
        } else {
            n.domain.clone()
        };
        if local_functions.contains(&(n.domain.clone(), n.op_type.clone())) {
            return Err(self.bad_node(
                &name,
                &n.op_type,
                "calls a model-local function; function inlining is not supported",
            ));
        }
        if let Some(input) = n
            .input
            .iter()
            .find(|i| !i.is_empty() && !defined.contains(*i))
        {
            return Err(ImportError::UndefinedValue {
                path: self.path.clone(),
                node: name,
                op: n.op_type.clone(),
                value: input.clone(),
            });
        }
        let attributes = n
            .attribute
            .iter()
            .map(|a| self.attribute(a, &name, &n.op_type, &domain))
            .collect::<Result<Vec<_>, _>>()?;
        // An unused optional output (empty name) still exists in the IR: give it a name.
        let outputs: Vec<String> = n
            .output
            .iter()
            .enumerate()
            .map(|(k, o)| {
                if o.is_empty() {
                    format!("{name}:unused{k}")
                } else {
                    o.clone()
                }
            })
            .collect();
        Ok(Node {
            name,
            op_type: n.op_type.clone(),
            domain,
            inputs: n.input.clone(),
            outputs,
            attributes,
        })
    }

    fn bad_node(&self, node: &str, op: &str, reason: &str) -> ImportError {
        ImportError::BadNode {
            path: self.path.clone(),
            node: node.into(),
            op: op.into(),
            reason: reason.into(),
        }
    }

    fn value_info(&self, vi: &pb::ValueInfoProto) -> Result<ValueInfo, ImportError> {
        let bad = |reason: &str| ImportError::BadType {
            path: self.path.clone(),
            value: vi.name.clone(),
            reason: reason.into(),
        };
        let Some(pb::type_proto::Value::TensorType(tt)) =
            vi.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(bad("only tensor types are supported (sequence, map, optional and sparse types are not)"));
        };
        let dtype = DType::from_onnx(tt.elem_type)
            .ok_or_else(|| bad(&format!("unsupported element type {}", tt.elem_type)))?;
        let Some(shape) = &tt.shape else {
            return Err(bad("the tensor type has no shape (its rank is unknown)"));
        };
        let dims = shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => {
                    Dim::Known(*v)
                }
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                    Dim::Symbol(p.clone())
                }
                _ => Dim::Unknown,
            })
            .collect();
        Ok(ValueInfo {
            name: vi.name.clone(),
            ty: TensorType { dtype, dims },
        })
    }

    /// Decodes a TensorProto's data from whichever field holds it, or from its external file.
    fn tensor(&self, t: &pb::TensorProto) -> Result<TensorData, ImportError> {
        let bad = |reason: String| ImportError::BadTensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            reason,
        };
        let dtype = DType::from_onnx(t.data_type)
            .ok_or_else(|| bad(format!("unsupported data type {}", t.data_type)))?;
        if t.dims.iter().any(|&d| d < 0) {
            return Err(bad(format!("negative dimension in {:?}", t.dims)));
        }
        let n = t
            .dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
            .ok_or_else(|| bad("too many elements".into()))?;
        let want = n
            .checked_mul(dtype.size())
            .ok_or_else(|| bad("too many elements".into()))?;
        let bytes: Vec<u8> = if t.data_location == 1 {
            let ext = self.external(t, want)?;
            // Small tensors (shapes, scalars) are read now, for the folding of shape arithmetic;
            // weights stay in their file until they are converted, one at a time.
            if want > EAGER_EXTERNAL_BYTES {
                return Ok(TensorData {
                    dtype,
                    dims: t.dims.clone(),
                    bytes: Vec::new(),
                    external: Some(ext),
                });
            }
            ext.read().map_err(|cause| ImportError::Io {
                path: ext.file.clone(),
                cause,
            })?
        } else if !t.raw_data.is_empty() || n == 0 {
            t.raw_data.clone()
        } else {
            match dtype {
                DType::F32 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::F64 => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::I64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::U32 | DType::U64 => t
                    .uint64_data
                    .iter()
                    .flat_map(|&v| match dtype {
                        DType::U32 => (v as u32).to_le_bytes().to_vec(),
                        _ => v.to_le_bytes().to_vec(),
                    })
                    .collect(),
                DType::I32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                // int32_data carries the narrower types (and fp16/bf16 bit patterns) one per
                // element.
                DType::I8 | DType::U8 | DType::Bool => {
                    t.int32_data.iter().map(|&v| v as u8).collect()
                }
                DType::I16 | DType::U16 | DType::F16 | DType::BF16 => t
                    .int32_data
                    .iter()
                    .flat_map(|&v| (v as u16).to_le_bytes())
                    .collect(),
            }
        };
        if bytes.len() != want {
            return Err(bad(format!(
                "holds {} bytes, but {} {} elements of shape {:?} need {want}",
                bytes.len(),
                n,
                dtype,
                t.dims
            )));
        }
        Ok(TensorData {
            dtype,
            dims: t.dims.clone(),
            bytes,
            external: None,
        })
    }

    /// Where a tensor's external data is, checked against the file's size (not read).
    fn external(&self, t: &pb::TensorProto, want: usize) -> Result<ExternalData, ImportError> {
        let bad = |reason: String| ImportError::BadTensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            reason,
        };
        let get = |key: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.as_str())
        };
        let location =
            get("location").ok_or_else(|| bad("external data without a 'location'".into()))?;
        let rel = Path::new(location);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(format!("external data location '{location}' must be a relative path inside the model's folder")));
        }
        let parse = |key: &str| -> Result<Option<u64>, ImportError> {
            get(key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| bad(format!("external data '{key}' is not a number: '{v}'")))
                })
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = parse("length")?.unwrap_or(want as u64);
        if length != want as u64 {
            return Err(bad(format!(
                "external data length {length} but the tensor needs {want} bytes"
            )));
        }
        let file_path = self.dir.join(rel);
        let io = |cause| ImportError::Io {
            path: file_path.clone(),
            cause,
        };
        let f = std::fs::File::open(&file_path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(bad(format!(
                "external data {}: bytes {offset}..{} are past the end of the file ({size} bytes)",
                file_path.display(),
                offset.saturating_add(length)
            )));
        }
        Ok(ExternalData {
            file: file_path,
            offset,
            length,
        })
    }

    fn attribute(
        &self,
        a: &pb::AttributeProto,
        node: &str,
        op: &str,
        domain: &str,
    ) -> Result<(String, AttrValue), ImportError> {
        let bad = |reason: String| ImportError::BadAttribute {
            path: self.path.clone(),
            node: node.into(),
            op: op.into(),
            attribute: a.name.clone(),
            reason,
        };
        if a.name.is_empty() {
            return Err(bad("the attribute has no name".into()));
        }
        if !a.ref_attr_name.is_empty() {
            return Err(bad(
                "refers to a function attribute, which only a function body may do".into(),
            ));
        }
        let text =
            |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8".into()));
        let value = match a.r#type {
            at::FLOAT => AttrValue::Float(a.f),
            at::INT => AttrValue::Int(a.i),
            at::STRING => AttrValue::String(text(&a.s)?),
            at::TENSOR => {
                let t =
                    a.t.as_ref()
                        .ok_or_else(|| bad("of type TENSOR but holds no tensor".into()))?;
                AttrValue::Tensor(self.tensor(t)?)
            }
            at::FLOATS => AttrValue::Floats(a.floats.clone()),
            at::INTS => AttrValue::Ints(a.ints.clone()),
            at::STRINGS => AttrValue::Strings(
                a.strings
                    .iter()
                    .map(|s| text(s))
                    .collect::<Result<_, _>>()?,
            ),
            at::GRAPH | at::GRAPHS => {
                return Err(bad(
                    "graph-valued attributes (control flow: If, Loop, Scan) are not supported"
                        .into(),
                ))
            }
            at::TENSORS
            | at::SPARSE_TENSOR
            | at::SPARSE_TENSORS
            | at::TYPE_PROTO
            | at::TYPE_PROTOS => {
                return Err(bad(format!("attribute type {} is not supported", a.r#type)))
            }
            at::UNDEFINED => return Err(bad("the attribute's type is UNDEFINED".into())),
            other => return Err(bad(format!("unknown attribute type {other}"))),
        };
        if domain.is_empty() {
            if let Some(allowed) = schema::attributes(op) {
                match allowed.iter().find(|(n, _)| *n == a.name) {
                    None => {
                        let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                        return Err(bad(format!(
                            "unknown attribute for {op} (it takes {})",
                            if names.is_empty() {
                                "no attributes".to_string()
                            } else {
                                names.join(", ")
                            }
                        )));
                    }
                    Some((_, kind)) if *kind != value.kind() => {
                        return Err(bad(format!("expected a {kind}, got a {}", value.kind())));
                    }
                    _ => {}
                }
            }
        }
        Ok((a.name.clone(), value))
    }
}
