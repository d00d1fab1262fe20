//! The few-token program the `moe` stage recognises layers on. A model exported with a
//! dynamic token (or sequence) dimension is lowered a second time with each symbolic dimension
//! of its inputs made small; the raise runs its numeric checks there, where they cost the same
//! whatever `--input-shape` says, and applies what it finds to the compiled program at the same
//! instructions. That needs the two programs to have the same instructions on the same buffers
//! (only sizes differ); a size where they differ (a dimension of 1 that folds away, say) is
//! passed over for the next.
//!
//!   compiled: %y = gather_nd(%w, %ids) : tensor<128x1536x2048> ... (4096 tokens x 8 slots)
//!   probe:    %y = gather_nd(%w, %ids) : tensor<128x1536x2048> ... (2 tokens x 8 slots)

use crate::core::{lower_to_core_with, CoreProgram};
use ppmoe_frontend::{Dim, Model};
use ppmoe_runtime::Tensor;

/// The token counts tried, in order: 1 is avoided (a dimension of 1 often folds differently).
pub const PROBE_TOKENS: &[i64] = &[2, 3];

/// For each probe size, the input shapes with every dimension the model leaves symbolic (or
/// unknown) and `given` sets larger made that size; empty when the model fixes its sizes.
/// `model` must be as read, before `--input-shape` fixed its dimensions.
pub fn candidate_shapes(
    model: &Model,
    given: &[(String, Vec<i64>)],
) -> Vec<Vec<(String, Vec<i64>)>> {
    PROBE_TOKENS
        .iter()
        .filter_map(|&small| shapes_at(model, given, small))
        .collect()
}

fn shapes_at(
    model: &Model,
    given: &[(String, Vec<i64>)],
    small: i64,
) -> Option<Vec<(String, Vec<i64>)>> {
    let mut changed = false;
    let mut out = Vec::new();
    for (name, dims) in given {
        let input = model.graph.inputs.iter().find(|i| &i.name == name)?;
        if input.ty.dims.len() != dims.len() {
            return None;
        }
        let probe: Vec<i64> = input
            .ty
            .dims
            .iter()
            .zip(dims)
            .map(|(d, &g)| match d {
                Dim::Known(_) => g,
                _ if g > small => {
                    changed = true;
                    small
                }
                _ => g,
            })
            .collect();
        out.push((name.clone(), probe));
    }
    changed.then_some(out)
}

/// The first candidate that lowers to a program of `full`'s structure; None (with the reasons
/// logged) when none does, and the raise then works on the compiled program itself.
pub fn probe_program(
    model: &mut Model,
    candidates: &[Vec<(String, Vec<i64>)>],
    initializers: &[(String, Tensor)],
    limit: usize,
    full: &CoreProgram,
) -> Option<CoreProgram> {
    for shapes in candidates {
        let attempt = ppmoe_frontend::infer_types_at(model, shapes)
            .map_err(|e| e.to_string())
            .and_then(|types| {
                lower_to_core_with(model, &types, initializers, limit, &full.run_time_nodes)
                    .map_err(|e| e.to_string())
            })
            .and_then(|p| same_structure(&full.program, &p.program).map(|()| p));
        match attempt {
            Ok(p) => return Some(p),
            Err(why) => tracing::info!("moe: not recognising at input shapes {shapes:?}: {why}"),
        }
    }
    if !candidates.is_empty() {
        tracing::info!("moe: layers are recognised at the compile size");
    }
    None
}

/// The two programs have the same instructions on the same buffers (sizes aside).
pub fn same_structure(
    a: &ppmoe_runtime::program::Program,
    b: &ppmoe_runtime::program::Program,
) -> Result<(), String> {
    if a.instructions.len() != b.instructions.len() || a.buffers.len() != b.buffers.len() {
        return Err(format!(
            "{} vs {} instructions, {} vs {} buffers",
            a.instructions.len(),
            b.instructions.len(),
            a.buffers.len(),
            b.buffers.len()
        ));
    }
    if let Some(i) = a
        .instructions
        .iter()
        .zip(&b.instructions)
        .position(|(x, y)| {
            x.op.name() != y.op.name() || x.inputs != y.inputs || x.outputs != y.outputs
        })
    {
        return Err(format!(
            "instruction {i} ({} from node \"{}\")",
            a.instructions[i].op.name(),
            a.instructions[i].origin
        ));
    }
    if let Some(i) =
        a.buffers.iter().zip(&b.buffers).position(|(x, y)| {
            x.name != y.name || x.kind != y.kind || x.shape.len() != y.shape.len()
        })
    {
        return Err(format!("buffer '{}'", a.buffers[i].name));
    }
    Ok(())
}
