//! The passes the stages list (`super::STAGES`): each takes the compilation one step, and has
//! the registered name in its comment.

use super::{Compilation, DEFAULT_EVAL_LIMIT_BYTES};
use crate::core::{convert_initializers, lower_to_core_with};
use crate::distribute::shard_moe::{ExpertBlocks, RankProgram};
use crate::distribute::{Grid, Strategy};
use crate::error::CompileError;
use crate::strategy::cost_model::{Choice, Hardware, LayerShape};
use ppmoe_runtime::program::BufferId;
use std::collections::HashSet;

/// The grid the options give (1 x 1 x 1 when none).
fn grid_of(c: &Compilation) -> Grid {
    c.options.grid.unwrap_or(Grid::ONE)
}

/// `ppmoe-shard`'s start: each MoE layer's strategy chosen (the `auto` e-graph's pick, or the
/// one asked for) for `ppmoe-rewrite`; the `moe` program's weights taken over, each expert
/// weight cut into its rank blocks (returned apart, for the MoE part: `passes::shard`), one
/// stack at a time, so that no weight is held twice.
pub(crate) fn take_weights(
    c: &mut Compilation,
) -> Result<(ExpertBlocks, Vec<(String, ppmoe_runtime::Tensor)>), CompileError> {
    let grid = grid_of(c);
    let strategy = c.options.strategy.unwrap_or(Strategy::Ppmoe);
    let Some(core) = c.core.as_mut() else {
        return Err(CompileError::StageNotBuilt(
            "sharded".into(),
            "it needs the moe stage first".into(),
        ));
    };
    let mut weights = std::mem::take(&mut core.weights);
    let blocks = if grid.tp > 1 {
        crate::distribute::shard_moe::cut_expert_weights(&core.program, &mut weights, grid.tp)
    } else {
        Default::default()
    };
    c.choices = choose_strategies(strategy, &core.moe_layers, grid.tp, c.options.hardware);
    Ok((blocks, weights))
}

/// `ppmoe-shard`'s dense part, decided on each rank's program (upstream's regions already
/// partitioned in it, `pieces` their weights' pieces): the rest of its dense layers split by
/// ppmoe's rules (`dense_tp`), its MoE layers still whole.
pub(crate) fn shard_dense(c: &mut Compilation, ranks: Vec<(RankProgram, HashSet<BufferId>)>) {
    let grid = grid_of(c);
    c.sharded.clear();
    c.rank_pieces.clear();
    for (t, (rank, pieces)) in ranks.into_iter().enumerate() {
        let (mut dense, rank_pieces) =
            crate::distribute::dense_tp::dense_tp(&rank, grid.tp, t, pieces);
        dense.program.coords = [0, 0, t];
        dense.program.rank = t;
        let names = (rank_pieces.iter())
            .map(|&b| dense.program.buffers[b].name.clone())
            .collect();
        c.sharded.push(dense);
        c.rank_pieces.push(names);
    }
}

/// Each MoE layer's strategy: the one asked for, or per layer the e-graph's pick among the
/// forms codegen has (ppmoe, alltoall).
fn choose_strategies(
    strategy: Strategy,
    layers: &[crate::moe::MoeLayer],
    tp: usize,
    hardware: Option<Hardware>,
) -> Vec<Choice> {
    match strategy {
        Strategy::Ppmoe => vec![Choice::Ppmoe; layers.len()],
        Strategy::AllToAll => vec![Choice::AllToAll; layers.len()],
        Strategy::Auto => {
            let shapes: Vec<LayerShape> = layers
                .iter()
                .map(|l| LayerShape {
                    tokens: l.tokens,
                    hidden: l.hidden,
                    ffn: l.ffn,
                    experts: l.experts,
                    top_k: l.top_k,
                    gated: l.gated,
                })
                .collect();
            crate::strategy::egraph::choose(
                &shapes,
                tp,
                hardware.unwrap_or_default(),
                &[Choice::Ppmoe, Choice::AllToAll],
            )
            .into_iter()
            .map(|(c, _)| c)
            .collect()
        }
    }
}

/// The `run` of a pass written over the module's ops: those run in the pass manager, which
/// every stage from `moe` on is run by.
pub(super) fn needs_module(c: &mut Compilation) -> Result<(), CompileError> {
    Err(CompileError::StageNotBuilt(
        "module".into(),
        format!(
            "{}: a pass over the module's ops runs in the pass manager",
            c.error_path().display()
        ),
    ))
}

/// `ppmoe-import`: the model read (ONNX or StableHLO) at the input shapes.
pub(super) fn import_onnx(c: &mut Compilation) -> Result<(), CompileError> {
    let shapes = microbatch_shapes(c)?;
    let loaded = ppmoe_frontend::load_model(&c.options.path, c.options.weights.as_deref())?;
    c.probe_shapes = crate::moe::probe::candidate_shapes(&loaded, &shapes);
    let (model, types, text) = ppmoe_frontend::import_loaded(loaded, &shapes)?;
    c.model = Some(model);
    c.types = Some(types);
    c.onnx_text = Some(text);
    Ok(())
}

/// The input shapes to compile at: with K microbatches, axis 0 (the batch) of every input is
/// cut by K, so the programs run one microbatch at a time.
fn microbatch_shapes(c: &Compilation) -> Result<Vec<(String, Vec<i64>)>, CompileError> {
    let k = c.options.microbatches.max(1) as i64;
    if k == 1 {
        return Ok(c.options.input_shapes.clone());
    }
    let model = ppmoe_frontend::load_model(&c.options.path, c.options.weights.as_deref())?;
    let bad = |reason: String| CompileError::Grid {
        path: c.options.path.clone(),
        reason,
    };
    let mut out = Vec::new();
    for input in &model.graph.inputs {
        let given = c
            .options
            .input_shapes
            .iter()
            .find(|(n, _)| n == &input.name)
            .map(|(_, d)| d.clone());
        if let Some(ppmoe_frontend::Dim::Known(b)) = input.ty.dims.first() {
            return Err(bad(format!(
                "--microbatches {k}: input '{}' has its batch fixed at {b} by the model: it cannot be cut into microbatches (export it with a dynamic batch)",
                input.name
            )));
        }
        let Some(mut dims) = given else {
            return Err(bad(format!(
                "--microbatches {k}: give the full shape of input '{}' with --input-shape",
                input.name
            )));
        };
        if dims.is_empty() || dims[0] % k != 0 {
            return Err(bad(format!("--microbatches {k}: input '{}' has a batch of {}, which {k} microbatches do not divide", input.name, dims.first().copied().unwrap_or(0))));
        }
        dims[0] /= k;
        out.push((input.name.clone(), dims));
    }
    Ok(out)
}

/// `ppmoe-lower-core`: the graph normalised to the core op set, static shapes.
pub(super) fn lower_core(c: &mut Compilation) -> Result<(), CompileError> {
    let (Some(model), Some(types)) = (c.model.as_mut(), &c.types) else {
        return Err(CompileError::StageNotBuilt(
            "core".into(),
            "it needs the onnx stage first".into(),
        ));
    };
    let limit = c.options.eval_limit.unwrap_or(DEFAULT_EVAL_LIMIT_BYTES);
    let initializers = convert_initializers(model)?;
    let core = lower_to_core_with(model, types, &initializers, limit, &Default::default())?;
    c.probe_core =
        crate::moe::probe::probe_program(model, &c.probe_shapes, &initializers, limit, &core);
    c.core = Some(core);
    Ok(())
}
