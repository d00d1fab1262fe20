//! StableHLO read through MLIR (the generic op form parses with unregistered dialects allowed)
//! and copied into plain Rust values: ops with their operands, typed results, regions, and
//! attributes as MLIR prints them (decoded by `attrs`), dense constants as bytes.

use crate::dtype::DType;
use crate::graph::{TensorData, TensorType};
use ppmoe_dialect::melior::ir::attribute::DenseElementsAttribute;
use ppmoe_dialect::melior::ir::operation::OperationLike;
use ppmoe_dialect::melior::ir::{AttributeLike, BlockLike, OperationRef, RegionLike, ValueLike};
use std::collections::HashMap;

/// A value: its number in the module (operands refer to it) and its type.
#[derive(Clone, Debug)]
pub struct Val {
    pub id: usize,
    pub ty: TensorType,
}

#[derive(Clone, Debug)]
pub struct HOp {
    pub name: String,
    pub operands: Vec<usize>,
    pub operand_types: Vec<TensorType>,
    pub results: Vec<Val>,
    /// Attribute name -> MLIR's printed form.
    pub attrs: Vec<(String, String)>,
    /// Dense elements attributes, decoded (`value` of a constant, `padding`, ...).
    pub dense: Vec<(String, TensorData)>,
    pub regions: Vec<HRegion>,
}

#[derive(Clone, Debug, Default)]
pub struct HRegion {
    pub args: Vec<Val>,
    pub ops: Vec<HOp>,
}

impl HOp {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn dense(&self, name: &str) -> Option<&TensorData> {
        self.dense.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// How the op is named in messages: its name and its first result's number.
    pub fn describe(&self) -> String {
        match self.results.first() {
            Some(r) => format!("{} (result %v{})", self.name, r.id),
            None => self.name.clone(),
        }
    }
}

/// `tensor<16x4xf32>`, `tensor<f32>`, `tensor<i1>` -> a static tensor type.
pub fn parse_tensor_type(s: &str) -> Result<TensorType, String> {
    let inner = s
        .trim()
        .strip_prefix("tensor<")
        .and_then(|r| r.strip_suffix('>'))
        .ok_or_else(|| format!("type {s}: expected a ranked tensor type"))?;
    let mut parts: Vec<&str> = inner.split('x').collect();
    let elem = parts
        .pop()
        .ok_or_else(|| format!("type {s}: no element type"))?;
    let dtype = match elem {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "f64" => DType::F64,
        "i1" => DType::Bool,
        "i8" => DType::I8,
        "i16" => DType::I16,
        "i32" => DType::I32,
        "i64" => DType::I64,
        "ui8" => DType::U8,
        "ui32" => DType::U32,
        "ui64" => DType::U64,
        other => return Err(format!("type {s}: element type {other} is not supported")),
    };
    let dims = parts
        .iter()
        .map(|d| {
            d.parse::<i64>()
                .map_err(|_| format!("type {s}: dimension '{d}' is not static"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorType::new(dtype, &dims))
}

/// Reads the values of a dense elements attribute of `ty`'s element type as little-endian bytes.
fn dense_bytes(a: &DenseElementsAttribute, ty: &TensorType) -> Result<TensorData, String> {
    let n = a.len();
    let dims = ty
        .static_dims()
        .ok_or("a dense attribute of dynamic shape")?;
    let err = |e: ppmoe_dialect::melior::Error| e.to_string();
    let mut bytes = Vec::with_capacity(n * ty.dtype.size());
    for i in 0..n {
        match ty.dtype {
            DType::F32 => bytes.extend(a.f32_element(i).map_err(err)?.to_le_bytes()),
            DType::F64 => bytes.extend(a.f64_element(i).map_err(err)?.to_le_bytes()),
            DType::I32 => bytes.extend(a.i32_element(i).map_err(err)?.to_le_bytes()),
            DType::I64 => bytes.extend(a.i64_element(i).map_err(err)?.to_le_bytes()),
            DType::Bool => bytes.push(a.bool_element(i).map_err(err)? as u8),
            DType::I8 => bytes.extend(a.i8_element(i).map_err(err)?.to_le_bytes()),
            DType::U8 => bytes.push(a.u8_element(i).map_err(err)?),
            other => return Err(format!("dense constants of {other:?} are not supported")),
        }
    }
    Ok(TensorData {
        dtype: ty.dtype,
        dims,
        bytes,
        external: None,
    })
}

/// What `func.call` is parsed as (see `load_stablehlo`).
pub const CALL_ALIAS: &str = "ppmoe.stablehlo_call";

/// The properties StableHLO, Shardy and func ops carry that the lowering reads.
const INHERENT: [&str; 35] = [
    "value",
    "dimensions",
    "dot_dimension_numbers",
    "comparison_direction",
    "compare_type",
    "broadcast_dimensions",
    "permutation",
    "iota_dimension",
    "dimension",
    "start_indices",
    "limit_indices",
    "strides",
    "window_dimensions",
    "window_strides",
    "base_dilations",
    "window_dilations",
    "padding",
    "slice_sizes",
    "dimension_numbers",
    "call_target_name",
    "callee",
    "sym_name",
    "sym_visibility",
    "in_shardings",
    "out_shardings",
    "manual_axes",
    "mesh",
    "split_dimension",
    "concat_dimension",
    "split_count",
    "replica_groups",
    "channel_handle",
    "backend_config",
    "k",
    "scatter_dimension_numbers",
];

/// Copies a parsed module into plain values. Values are numbered in the order they are met.
pub struct Reader {
    ids: HashMap<usize, usize>,
}

impl Reader {
    pub fn new() -> Self {
        Reader {
            ids: HashMap::new(),
        }
    }

    fn val(&mut self, key: usize, ty: String) -> Result<Val, String> {
        let next = self.ids.len();
        let id = *self.ids.entry(key).or_insert(next);
        Ok(Val {
            id,
            ty: parse_tensor_type(&ty)?,
        })
    }

    pub fn block_ops<'c, 'a>(
        &mut self,
        first: Option<OperationRef<'c, 'a>>,
    ) -> Result<Vec<HOp>, String> {
        let mut ops = Vec::new();
        let mut cur = first;
        while let Some(op) = cur {
            ops.push(self.op(&op)?);
            cur = op.next_in_block();
        }
        Ok(ops)
    }

    pub fn op<'c, 'a>(&mut self, op: &OperationRef<'c, 'a>) -> Result<HOp, String> {
        let mut name = op
            .name()
            .as_string_ref()
            .as_str()
            .map_err(|e| e.to_string())?
            .to_string();
        if name == CALL_ALIAS {
            name = "func.call".into();
        }
        let mut operands = Vec::new();
        let mut operand_types = Vec::new();
        for (i, v) in op.operands().enumerate() {
            let key = v.to_raw().ptr as usize;
            let next = self.ids.len();
            operands.push(*self.ids.entry(key).or_insert(next));
            operand_types.push(
                parse_tensor_type(&v.r#type().to_string())
                    .map_err(|e| format!("{name}: operand {i}: {e}"))?,
            );
        }
        let mut results = Vec::new();
        for r in op.results() {
            let ty = r.r#type().to_string();
            // Tokens and other non-tensor results are named in the error, with the op.
            results.push(
                self.val(r.to_raw().ptr as usize, ty)
                    .map_err(|e| format!("{name}: {e}"))?,
            );
        }
        let mut attrs = Vec::new();
        let mut dense = Vec::new();
        // The generic form's `<{...}>` properties of an unregistered op are reachable by name only.
        let mut all: Vec<(String, ppmoe_dialect::melior::ir::Attribute)> = INHERENT
            .iter()
            .filter_map(|n| op.inherent_attribute(n).ok().map(|a| (n.to_string(), a)))
            .collect();
        for (id, a) in op.attributes() {
            all.push((
                id.as_string_ref()
                    .as_str()
                    .map_err(|e| e.to_string())?
                    .to_string(),
                a,
            ));
        }
        for (key, a) in all {
            if let Ok(d) = DenseElementsAttribute::try_from(a) {
                let ty = parse_tensor_type(&a.r#type().to_string())
                    .map_err(|e| format!("{name}: attribute {key}: {e}"))?;
                dense.push((
                    key.clone(),
                    dense_bytes(&d, &ty).map_err(|e| format!("{name}: attribute {key}: {e}"))?,
                ));
            }
            attrs.push((key, a.to_string()));
        }
        let mut regions = Vec::new();
        for region in op.regions() {
            let mut hr = HRegion::default();
            if let Some(block) = region.first_block() {
                for i in 0..block.argument_count() {
                    let arg = block.argument(i).map_err(|e| e.to_string())?;
                    hr.args.push(
                        self.val(arg.to_raw().ptr as usize, arg.r#type().to_string())
                            .map_err(|e| format!("{name}: block argument {i}: {e}"))?,
                    );
                }
                hr.ops = self.block_ops(block.first_operation())?;
            }
            regions.push(hr);
        }
        Ok(HOp {
            name,
            operands,
            operand_types,
            results,
            attrs,
            dense,
            regions,
        })
    }
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}
