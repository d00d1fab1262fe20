//! ppmoe's frontend: reads ONNX models (StableHLO later) and imports them into MLIR at the
//! `onnx` stage. It knows nothing of what comes after the import.

pub mod dtype;
pub mod error;
pub mod graph;
pub mod infer;
pub mod load;
pub mod onnx_proto;
pub mod onnx_stage;
mod schema;
pub mod stablehlo;

pub use dtype::DType;
pub use error::ImportError;
pub use graph::{
    AttrValue, Dim, ExternalData, Graph, Model, Node, TensorData, TensorType, ValueInfo,
};
pub use infer::{infer_types, Types};
pub use load::load_onnx;

use std::path::Path;

/// Fixes symbolic or unknown dimensions of named inputs (`--input-shape NAME=1x16`).
pub fn set_input_shape(model: &mut Model, name: &str, dims: &[i64]) -> Result<(), ImportError> {
    let bad = |reason: String| ImportError::BadInputShape {
        path: model.path.clone(),
        name: name.into(),
        reason,
    };
    let names: Vec<String> = model.graph.inputs.iter().map(|i| i.name.clone()).collect();
    let Some(input) = model.graph.inputs.iter_mut().find(|i| i.name == name) else {
        return Err(bad(format!(
            "the model has no input of that name (its inputs: {})",
            names.join(", ")
        )));
    };
    if input.ty.dims.len() != dims.len() {
        return Err(bad(format!(
            "the input has rank {}, the shape given has rank {}",
            input.ty.dims.len(),
            dims.len()
        )));
    }
    for (i, (d, &new)) in input.ty.dims.iter().zip(dims).enumerate() {
        if let Dim::Known(k) = d {
            if *k != new {
                return Err(bad(format!(
                    "dimension {i} is fixed at {k} by the model, not {new}"
                )));
            }
        }
    }
    input.ty.dims = dims.iter().map(|&d| Dim::Known(d)).collect();
    Ok(())
}

/// The model's types with its inputs at `shapes` instead (the model is left as it was).
pub fn infer_types_at(
    model: &mut Model,
    shapes: &[(String, Vec<i64>)],
) -> Result<Types, ImportError> {
    let saved = model.graph.inputs.clone();
    for (name, dims) in shapes {
        if let Some(input) = model.graph.inputs.iter_mut().find(|i| &i.name == name) {
            input.ty.dims = dims.iter().map(|&d| Dim::Known(d)).collect();
        }
    }
    let types = infer_types(model);
    model.graph.inputs = saved;
    types
}

/// Reads a model: ONNX, or StableHLO in generic op form (`.mlir`), whose @main arguments
/// `weights` may bind at compile time.
pub fn load_model(path: &Path, weights: Option<&Path>) -> Result<Model, ImportError> {
    if path.extension().is_some_and(|e| e == "mlir") {
        return stablehlo::load_stablehlo(path, weights);
    }
    if let Some(w) = weights {
        return Err(ImportError::StableHlo {
            path: w.to_owned(),
            reason: format!("--weights binds the arguments of a StableHLO program; {} is ONNX, which carries its own weights", path.display()),
        });
    }
    load_onnx(path)
}

/// Reads a model and returns it with its inferred types and its `onnx`-stage MLIR text.
pub fn import(
    path: &Path,
    input_shapes: &[(String, Vec<i64>)],
) -> Result<(Model, Types, String), ImportError> {
    import_with(path, input_shapes, None)
}

/// As `import`, with StableHLO arguments bound from `weights`.
pub fn import_with(
    path: &Path,
    input_shapes: &[(String, Vec<i64>)],
    weights: Option<&Path>,
) -> Result<(Model, Types, String), ImportError> {
    let model = load_model(path, weights)?;
    import_loaded(model, input_shapes)
}

/// As `import_with`, on a model already read.
pub fn import_loaded(
    mut model: Model,
    input_shapes: &[(String, Vec<i64>)],
) -> Result<(Model, Types, String), ImportError> {
    let path = model.path.clone();
    for (name, dims) in input_shapes {
        set_input_shape(&mut model, name, dims)?;
    }
    let types = infer_types(&model)?;
    let text = onnx_stage::emit_onnx(&model, &types).map_err(|reason| ImportError::Verify {
        path: path.clone(),
        diagnostics: reason,
    })?;
    Ok((model, types, text))
}

/// Imports a model into `context` as a verified MLIR module at the `onnx` stage.
pub fn import_module<'c>(
    context: &'c ppmoe_dialect::melior::Context,
    path: &Path,
    input_shapes: &[(String, Vec<i64>)],
) -> Result<(Model, Types, ppmoe_dialect::melior::ir::Module<'c>), ImportError> {
    let (model, types, text) = import(path, input_shapes)?;
    let module = ppmoe_dialect::parse_verified(context, &text).map_err(|diagnostics| {
        ImportError::Verify {
            path: path.to_owned(),
            diagnostics,
        }
    })?;
    Ok((model, types, module))
}
