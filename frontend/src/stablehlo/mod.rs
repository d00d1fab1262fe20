//! The StableHLO reader: a JAX program in MLIR's generic op form (as
//! `jax.jit(f).lower(*args).compiler_ir("stablehlo").operation.get_asm(print_generic_op_form=True)`
//! prints it) -> the imported graph, as the ONNX reader makes it.
//!
//! The function `main`'s arguments are the model's inputs, named `arg0`, `arg1`, ... in order;
//! `--weights FILE.safetensors` binds those it names (`arg2`, ...) at compile time, which makes
//! them weights (and lets the MoE raise see the expert stacks).

pub mod attrs;
mod indexing;
pub mod ir;
mod loops;
pub mod lower;
mod shard_map;
mod softmax;

use crate::error::ImportError;
use crate::graph::{Graph, Model, Node, TensorData, ValueInfo};
use ir::{HOp, Reader};
use std::collections::HashMap;
use std::path::Path;

const HOW_TO_GENERIC: &str = "print it in MLIR's generic op form: jax.jit(f).lower(*args).compiler_ir(\"stablehlo\").operation.get_asm(print_generic_op_form=True)";

/// Reads a StableHLO module; `weights` binds arguments at compile time.
pub fn load_stablehlo(path: &Path, weights: Option<&Path>) -> Result<Model, ImportError> {
    let err = |reason: String| ImportError::StableHlo {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|cause| ImportError::Io {
        path: path.to_owned(),
        cause,
    })?;
    refuse_pretty_form(&text).map_err(err)?;
    // MLIR's parser verifies symbol uses, and takes any one-region unregistered op (a
    // sdy.manual_computation) for a symbol table, where a func.call inside finds no callee. The
    // calls are read under another name, which no verifier looks at, and named back.
    let text = text.replace("\"func.call\"(", &format!("\"{}\"(", ir::CALL_ALIAS));
    let context = ppmoe_dialect::reading_context();
    let module = ppmoe_dialect::parse_unverified(&context, &text)
        .map_err(|d| err(format!("not MLIR in generic op form: {d}")))?;
    let mut reader = Reader::new();
    use ppmoe_dialect::melior::ir::BlockLike;
    let top = reader
        .block_ops(module.body().first_operation())
        .map_err(err)?;
    let (funcs, meshes) = functions_and_meshes(top).map_err(err)?;
    let main = funcs
        .get("main")
        .cloned()
        .ok_or_else(|| err("no function @main".into()))?;
    let body = main
        .regions
        .first()
        .ok_or_else(|| err("@main has no body".into()))?;
    let bound = match weights {
        Some(w) => read_weights(w, body)?,
        None => HashMap::new(),
    };
    let lowering = lower::Lowering::new(funcs.clone(), meshes);
    let graph = main_graph(lowering, body, &bound).map_err(err)?;
    Ok(Model {
        path: path.to_owned(),
        ir_version: 8,
        producer: "stablehlo".into(),
        opsets: vec![(String::new(), 18)],
        graph,
    })
}

/// The pretty form names ops bare (`%0 = stablehlo.add %a, %b`), the generic one in quotes:
/// the first line in the pretty form is refused, with how to print the generic one.
fn refuse_pretty_form(text: &str) -> Result<(), String> {
    let pretty = text.lines().enumerate().find(|(_, l)| {
        let t = l.trim_start();
        t.starts_with("func.func @")
            || t.starts_with("module ")
            || t.starts_with("module{")
            || t.contains("= stablehlo.")
            || t.starts_with("stablehlo.")
    });
    match pretty {
        Some((n, line)) => Err(format!("line {}: `{}` is pretty-printed StableHLO; ppmoe reads the generic op form: {HOW_TO_GENERIC}", n + 1, line.trim())),
        None => Ok(()),
    }
}

/// A module's functions by symbol, and its sdy meshes (each axis's name and size).
type FunctionsAndMeshes = (HashMap<String, HOp>, HashMap<String, Vec<(String, i64)>>);

/// The module's functions and sdy meshes by symbol; anything else at the top is refused.
fn functions_and_meshes(top: Vec<HOp>) -> Result<FunctionsAndMeshes, String> {
    let mut funcs: HashMap<String, HOp> = HashMap::new();
    let mut meshes = HashMap::new();
    for op in top {
        let sym = op.attr("sym_name").map(attrs::symbol).unwrap_or_default();
        match op.name.as_str() {
            "func.func" => {
                funcs.insert(sym, op);
            }
            "sdy.mesh" => {
                let mesh = attrs::mesh(op.attr("mesh").unwrap_or_default()).map_err(|e| {
                    format!("sdy.mesh @{}: {e}", op.attr("sym_name").unwrap_or("?"))
                })?;
                meshes.insert(sym, mesh);
            }
            other => {
                return Err(format!(
                    "a top-level {other}: expected func.func and sdy.mesh"
                ))
            }
        }
    }
    Ok((funcs, meshes))
}

/// @main as the graph: its arguments the inputs (those `bound` by `--weights` initializers),
/// its body lowered, its results the outputs `out0`, `out1`, ...
fn main_graph(
    mut lowering: lower::Lowering,
    body: &ir::HRegion,
    bound: &HashMap<String, TensorData>,
) -> Result<Graph, String> {
    let mut inputs = Vec::new();
    let mut env = HashMap::new();
    for (i, a) in body.args.iter().enumerate() {
        let name = format!("arg{i}");
        match bound.get(&name) {
            Some(t) => {
                lowering.initializers.push((name.clone(), t.clone()));
            }
            None => inputs.push(ValueInfo {
                name: name.clone(),
                ty: a.ty.clone(),
            }),
        }
        env.insert(a.id, name);
    }
    let ret_types = body
        .ops
        .iter()
        .find(|o| o.name == "func.return")
        .map(|o| o.operand_types.clone())
        .unwrap_or_default();
    let results = lowering.lower_function(body, &mut env)?;
    let mut outputs = Vec::new();
    for (i, (r, ty)) in results.into_iter().zip(ret_types).enumerate() {
        let name = format!("out{i}");
        lowering.nodes.push(Node {
            name: format!("output_{i}"),
            op_type: "Identity".into(),
            domain: String::new(),
            inputs: vec![r],
            outputs: vec![name.clone()],
            attributes: vec![],
        });
        outputs.push(ValueInfo { name, ty });
    }
    Ok(Graph {
        name: "main".into(),
        inputs,
        outputs,
        nodes: lowering.nodes,
        initializers: lowering.initializers,
        value_info: HashMap::new(),
    })
}

/// `--weights FILE.safetensors`: tensors named `argN` bound to @main's argument N.
fn read_weights(
    file: &Path,
    body: &ir::HRegion,
) -> Result<HashMap<String, TensorData>, ImportError> {
    let err = |reason: String| ImportError::StableHlo {
        path: file.to_owned(),
        reason,
    };
    let io = |cause| ImportError::Io {
        path: file.to_owned(),
        cause,
    };
    // Mapped, not read: the header is parsed in place, and each large tensor stays in the file
    // as external data (read, or mapped again, by the stage that converts it).
    // SAFETY: the weights file is only read, and not changed while it is compiled.
    let map = unsafe { memmap2::Mmap::map(&std::fs::File::open(file).map_err(io)?) }.map_err(io)?;
    let st = safetensors::SafeTensors::deserialize(&map)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let index = name
            .strip_prefix("arg")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < body.args.len());
        let Some(i) = index else {
            return Err(err(format!(
                "tensor '{name}' names no argument of @main (expected arg0 .. arg{})",
                body.args.len().saturating_sub(1)
            )));
        };
        let want = &body.args[i].ty;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => crate::DType::F32,
            safetensors::Dtype::BF16 => crate::DType::BF16,
            safetensors::Dtype::F16 => crate::DType::F16,
            safetensors::Dtype::I32 => crate::DType::I32,
            safetensors::Dtype::I64 => crate::DType::I64,
            other => {
                return Err(err(format!(
                    "tensor '{name}': dtype {other:?} is not supported"
                )))
            }
        };
        let dims: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if dtype != want.dtype || Some(dims.clone()) != want.static_dims() {
            return Err(err(format!(
                "tensor '{name}' is {dtype:?} {dims:?}, but @main's argument {i} is {}",
                want.mlir()
            )));
        }
        let data = view.data();
        let (bytes, external) = if data.len() > crate::load::EAGER_EXTERNAL_BYTES {
            let offset = data.as_ptr() as usize - map.as_ptr() as usize;
            let range = crate::ExternalData {
                file: file.to_owned(),
                offset: offset as u64,
                length: data.len() as u64,
            };
            (Vec::new(), Some(range))
        } else {
            (data.to_vec(), None)
        };
        out.insert(
            name,
            TensorData {
                dtype,
                dims,
                bytes,
                external,
            },
        );
    }
    Ok(out)
}
