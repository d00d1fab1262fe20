//! What a printed module says of itself, so that it reads back: the stage it was printed at and
//! the source of its weights (the model, and what the stages up to it were given that changes
//! a weight: input shapes, microbatches, the evaluation limit, the capacity policy).
//!
//!   module attributes {ppmoe.stage = "moe", ppmoe.source = {model = "/m/model.onnx",
//!       input_shapes = {hidden_states = array<i64: 1, 16, 64>}, microbatches = 1 : i64,
//!       eval_limit = 268435456 : i64, capacity = "keep"}} {

use crate::core::read::{attribute_text, dictionary_entries};
use crate::distribute::Strategy;
use crate::passes::raise_moe::CapacityPolicy;
use melior::ir::attribute::{Attribute, DenseI64ArrayAttribute, IntegerAttribute};
use melior::ir::operation::{OperationLike, OperationRef};
use ppmoe_frontend::onnx_stage::quote;
use ppmoe_runtime::DType;
use std::path::PathBuf;

/// The module attribute naming the stage.
pub const STAGE: &str = "ppmoe.stage";
/// The module attribute naming the weights' source.
pub const SOURCE: &str = "ppmoe.source";

#[derive(Clone, Debug, PartialEq)]
pub struct IrHeader {
    pub stage: String,
    pub source: WeightSource,
}

/// The model the weights come from, and the options of the stages that made them.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSource {
    pub model: PathBuf,
    /// StableHLO: the safetensors file binding @main's arguments.
    pub weights: Option<PathBuf>,
    pub input_shapes: Vec<(String, Vec<i64>)>,
    pub microbatches: usize,
    pub eval_limit: usize,
    pub capacity: CapacityPolicy,
    /// From the `sharded` stage on: the MoE strategy and the weights' type (`--moe-strategy`,
    /// `--dtype`), which the rank pieces depend on. The grid is the module's `shard.grid`.
    pub strategy: Option<String>,
    pub dtype: Option<String>,
    /// The passes that took the source from `core` to this IR, with their options, as a pass
    /// pipeline (`ppmoe-raise-moe{capacity=keep}, ppmoe-shard{tp=2 strategy=ppmoe}`): what
    /// reading the IR back runs on the source for its weights. Absent (IR written by hand):
    /// every pass of the stages up to the IR's.
    pub pipeline: Option<String>,
}

impl IrHeader {
    /// The module's attribute dictionary, as printed after `module attributes`.
    pub fn to_mlir(&self) -> String {
        let s = &self.source;
        let shapes: Vec<String> = s
            .input_shapes
            .iter()
            .map(|(name, dims)| format!("{} = {}", quote(name), i64_array(dims)))
            .collect();
        let mut fields = vec![format!("model = {}", quote(&s.model.display().to_string()))];
        if let Some(w) = &s.weights {
            fields.push(format!("weights = {}", quote(&w.display().to_string())));
        }
        fields.extend([
            format!("input_shapes = {{{}}}", shapes.join(", ")),
            format!("microbatches = {} : i64", s.microbatches),
            format!("eval_limit = {} : i64", s.eval_limit),
            format!("capacity = {}", quote(capacity_name(s.capacity))),
        ]);
        for (key, value) in [
            ("strategy", &s.strategy),
            ("dtype", &s.dtype),
            ("pipeline", &s.pipeline),
        ] {
            if let Some(v) = value {
                fields.push(format!("{key} = {}", quote(v)));
            }
        }
        format!(
            "{STAGE} = {}, {SOURCE} = {{{}}}",
            quote(&self.stage),
            fields.join(", ")
        )
    }

    /// The header of a parsed module; the error says which attribute is missing or wrong.
    pub fn read(op: &OperationRef) -> Result<IrHeader, String> {
        let stage = op
            .attribute(STAGE)
            .ok()
            .and_then(attribute_text)
            .ok_or_else(|| {
                format!(
                    "the module has no {STAGE} string attribute: not IR printed by ppmoe's --emit"
                )
            })?;
        let source = op.attribute(SOURCE).map_err(|_| {
            format!("the module has no {SOURCE} attribute (the source of its weights)")
        })?;
        Ok(IrHeader {
            stage,
            source: read_source(source)?,
        })
    }
}

fn read_source(source: Attribute) -> Result<WeightSource, String> {
    let entries =
        dictionary_entries(source).ok_or_else(|| format!("{SOURCE} is not a dictionary"))?;
    let field = |name: &str| entries.iter().find(|(k, _)| k == name).map(|(_, a)| *a);
    let text = |name: &str| field(name).and_then(attribute_text);
    let int = |name: &str| -> Result<usize, String> {
        field(name)
            .and_then(|a| IntegerAttribute::try_from(a).ok())
            .and_then(|i| usize::try_from(i.value()).ok())
            .ok_or_else(|| format!("{SOURCE}.{name} is not a count"))
    };
    let model = text("model").ok_or_else(|| format!("{SOURCE}.model is not a path"))?;
    let capacity = match text("capacity").as_deref() {
        Some("keep") => CapacityPolicy::Keep,
        Some("dropless") => CapacityPolicy::Dropless,
        other => {
            return Err(format!(
                "{SOURCE}.capacity is {other:?}; expected \"keep\" or \"dropless\""
            ))
        }
    };
    let shapes = field("input_shapes")
        .and_then(dictionary_entries)
        .ok_or_else(|| format!("{SOURCE}.input_shapes is not a dictionary"))?;
    let input_shapes = shapes
        .into_iter()
        .map(|(name, dims)| {
            DenseI64ArrayAttribute::try_from(dims)
                .ok()
                .and_then(|a| (0..a.len()).map(|i| a.element(i).ok()).collect())
                .map(|dims| (name.clone(), dims))
                .ok_or_else(|| format!("{SOURCE}.input_shapes.{name} is not array<i64: ...>"))
        })
        .collect::<Result<_, _>>()?;
    Ok(WeightSource {
        model: PathBuf::from(model),
        weights: text("weights").map(PathBuf::from),
        input_shapes,
        microbatches: int("microbatches")?.max(1),
        eval_limit: int("eval_limit")?,
        capacity,
        strategy: text("strategy"),
        dtype: text("dtype"),
        pipeline: text("pipeline"),
    })
}

/// The spellings of the options the header records, as the flags spell them
/// (`--moe-capacity`, `--moe-strategy`, `--dtype`); each read back by its spelling.
pub fn capacity_name(c: CapacityPolicy) -> &'static str {
    match c {
        CapacityPolicy::Keep => "keep",
        CapacityPolicy::Dropless => "dropless",
    }
}

pub fn parse_capacity(text: &str) -> Option<CapacityPolicy> {
    [CapacityPolicy::Keep, CapacityPolicy::Dropless]
        .into_iter()
        .find(|&c| capacity_name(c) == text)
}

pub fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Ppmoe => "ppmoe",
        Strategy::AllToAll => "alltoall",
        Strategy::Auto => "auto",
    }
}

pub fn parse_strategy(text: &str) -> Option<Strategy> {
    [Strategy::Ppmoe, Strategy::AllToAll, Strategy::Auto]
        .into_iter()
        .find(|&s| strategy_name(s) == text)
}

/// The weights' type (none: fp32, the source's own).
pub fn dtype_name(d: Option<DType>) -> &'static str {
    match d {
        Some(DType::BF16) => "bf16",
        Some(DType::F16) => "fp16",
        _ => "fp32",
    }
}

pub fn parse_dtype(text: &str) -> Option<Option<DType>> {
    [None, Some(DType::BF16), Some(DType::F16)]
        .into_iter()
        .find(|&d| dtype_name(d) == text)
}

fn i64_array(dims: &[i64]) -> String {
    if dims.is_empty() {
        return "array<i64>".into();
    }
    let d: Vec<String> = dims.iter().map(i64::to_string).collect();
    format!("array<i64: {}>", d.join(", "))
}
