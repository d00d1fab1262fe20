//! `ppmoe-shard`: one function per tensor-parallel index, each the module's cloned, and each
//! MoE layer's strategy chosen. Its dense part: the regions that MLIR's sharding interface
//! covers are partitioned by upstream's `sharding-propagation` and `shard-partition` over the
//! module's own ops (`upstream_regions`, `upstream_partition`); the rest of the dense layers is
//! Megatron-split by ppmoe's rules on the program each rank's function then reads as
//! (`pipeline::shard_dense`) and written to its ops (`shard_dense`). Its MoE part is decided on
//! the module's ops: each
//! `moe.experts` of each function is replaced in place by its all-to-all form for that rank,
//! made for the op's operands as their types give them (`distribute::shard_moe` decides the
//! padding, the capacity and the rank's expert block from the tokens' and the weights' shapes);
//! the ranks' programs are not read.
//!
//!   before:  %y = "moe.experts"(%x, %w, %ids, %w_in, %w_out)         (%w_in: all E experts)
//!   after:   %xs = "core.token_slice"(%x) ...  %b = "moe.dispatch"(%xs, %is) {ppmoe.strategy = "ppmoe"}
//!            %r = shard.all_to_all %b ...  %o = "moe.expert_ffn"(%rows, %offsets, %w_in, %w_out)
//!            ...  %y = shard.all_gather %c ...                          (%w_in: E/tp experts)
//!
//! The new ops are printed as ppmoe prints those instructions (with the grid, and the layer's
//! strategy on its dispatch), parsed and moved in where the `moe.experts` was; the expert
//! weights' arguments take their rank block's type; the constants the form adds (the bucket
//! offsets, a decode step's padding rows) become weight arguments after the others.

use super::buffer_values::BufferValues;
use super::dead_ops::erase_with_unused_producers;
use super::func_ops::{block_ops, body, value_name};
use super::shard_dense::{one_function_per_rank, write_dense};
use super::upstream_partition::partition_regions;
use crate::core::print::{print_stage, Marks};
use crate::core::read::{
    instruction_op, location_names, op_name, read_programs_marked, result_name, tensor_type,
    with_absent,
};
use crate::distribute::shard_moe::{expert_ffn_of, shard_layer, ExpertBlocks, RankProgram};
use crate::distribute::Grid;
use crate::error::CompileError;
use crate::pipeline::{adopt, shard_dense, take_weights, Compilation, PassError};
use melior::ir::block::BlockRef;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{Value, ValueLike};
use melior::Context;
use mlir_sys::MlirValue;
use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Program};
use ppmoe_runtime::Tensor;
use std::collections::{HashMap, HashSet};

/// Makes one function per tp index; partitions the regions upstream takes in each (on the
/// ops), splits the rest of the dense layers on each rank's program and writes it to the ops;
/// then writes each MoE layer's all-to-all form into each function's ops. Returns how many
/// layers it wrote out over all functions.
pub fn shard_layers(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    adopt(c, module)?;
    let (mut blocks, weights) = take_weights(c)?;
    let grid = c.options.grid.unwrap_or(Grid::ONE);
    let ranks = one_function_per_rank(context, module, grid)?;
    let mut rank_weights = vec![weights; grid.tp];
    let dump = c.options.print_ir_after_all;
    partition_regions(context, &ranks, &mut rank_weights, dump)?;
    let read = read_programs_marked(module)?;
    let split: Vec<(RankProgram, HashSet<BufferId>)> = (read.iter().zip(rank_weights))
        .map(|(r, weights)| {
            let pieces = (r.program.buffers.iter().enumerate())
                .filter(|(_, b)| r.rank_pieces.contains(&b.name))
                .map(|(id, _)| id)
                .collect();
            let program = r.program.clone();
            (RankProgram { program, weights }, pieces)
        })
        .collect();
    shard_dense(c, split);
    // The functions stay those made above: the dense split edits their ops (and checks that
    // it made one program per function).
    write_dense(context, module, c, &read)?;
    if grid.tp == 1 {
        return Ok(0);
    }
    let strategies: Vec<&str> = c.choices.iter().map(|choice| choice.name()).collect();
    let path = c.options.path.clone();
    let mut written = 0;
    for (t, f) in ranks.iter().enumerate() {
        let block = body(f)?;
        let layers = (block_ops(block).into_iter()).filter(|op| op_name(op) == "moe.experts");
        let mut rank = RankLayers {
            context,
            f: *f,
            block,
            grid,
            t,
            weights: &mut c.sharded[t].weights,
            blocks: &mut blocks,
        };
        for (n, experts) in layers.enumerate() {
            let origin = location_names(experts.location(), 1).1;
            let marks = Marks {
                strategies: strategies
                    .get(n)
                    .map(std::slice::from_ref)
                    .unwrap_or_default(),
                ..Marks::default()
            };
            rank.write(experts, n, &marks)
                .map_err(|reason| CompileError::Node {
                    path: path.clone(),
                    node: origin,
                    op: "moe.experts".into(),
                    reason,
                })?;
            written += 1;
        }
    }
    // The ranks' programs are the module's now, which the next pass takes (`adopt`) with the
    // weights held here (the expert blocks and the constants the forms added among them): the
    // dense split's programs are let go, so that nothing reads them in its place.
    for rank in &mut c.sharded {
        rank.program = Program::empty();
    }
    Ok(written)
}

/// One rank's function as its MoE layers are written out, and the weights they take.
struct RankLayers<'c, 'a, 'w> {
    context: &'c Context,
    f: OperationRef<'c, 'a>,
    block: BlockRef<'c, 'a>,
    grid: Grid,
    /// The rank's tp index.
    t: usize,
    /// The rank's weights: each expert weight's rank block is taken into them, and the
    /// constants the form adds.
    weights: &'w mut Vec<(String, Tensor)>,
    /// Each expert weight cut into its rank blocks beforehand (`cut_expert_weights`).
    blocks: &'w mut ExpertBlocks,
}

impl<'c, 'a> RankLayers<'c, 'a, '_> {
    /// Replaces `experts` (the function's `n`th `moe.experts`) by its all-to-all form for
    /// this rank, made for the op's operands as they are typed (`distribute::shard_moe`
    /// decides the padding, the capacity and the rank's expert block); the expert weights'
    /// arguments retyped to the rank's block, the form printed with the grid the collectives
    /// name (the shard verifier checks them against it) and the layer's strategy on its
    /// dispatch, the experts op erased with what only fed it.
    fn write(
        &mut self,
        experts: OperationRef<'c, 'a>,
        n: usize,
        marks: &Marks,
    ) -> Result<(), String> {
        let layer = LayerProgram::of(&self.f, &experts, n)?;
        let ffn = expert_ffn_of(&layer.instruction.op).ok_or("not a moe.experts op")?;
        let mut rp = RankProgram {
            program: layer.program,
            weights: std::mem::take(self.weights),
        };
        let mut form = Vec::new();
        let made = shard_layer(
            &mut rp,
            &layer.instruction,
            ffn,
            (self.grid.tp, self.t),
            self.blocks,
            &mut form,
        );
        *self.weights = std::mem::take(&mut rp.weights);
        made?;
        let p = &rp.program;
        let output = layer.instruction.outputs[0];
        let mut values = BufferValues {
            context: self.context,
            f: self.f,
            block: self.block,
            values: layer.values,
        };
        // The buffers the form reads and does not make: the expert weights among them.
        let made: HashSet<BufferId> = form.iter().flat_map(|ins| ins.outputs.clone()).collect();
        for &b in form.iter().flat_map(|ins| ins.inputs.iter().flatten()) {
            if !made.contains(&b) {
                values.retype_argument(p, b)?;
            }
        }
        let grid = self.grid.mlir();
        let print =
            |one: &Program| print_stage(&[one], Some((&grid, self.grid.tp, 1)), 1, marks, "");
        let old = values.splice(p, (&form, output), experts, print)?;
        // SAFETY: `old` is the experts op's result, which nothing uses now; what only fed it
        // goes with it (the form reads the rest).
        unsafe { erase_with_unused_producers(mlir_sys::mlirOpResultGetOwner(old)) };
        Ok(())
    }
}

/// A `moe.experts` op as a program of its own, the form's starting point: a buffer per
/// operand (named as it reads back, an expert weight by its weight's name, which its rank
/// block is taken by) and one for its result, the instruction over them, and each buffer's
/// value.
struct LayerProgram {
    program: Program,
    instruction: Instruction,
    values: HashMap<BufferId, MlirValue>,
}

impl LayerProgram {
    fn of(f: &OperationRef, experts: &OperationRef, n: usize) -> Result<Self, String> {
        let result = experts.result(0).map_err(|e| e.to_string())?;
        let origin = location_names(experts.location(), 1).1;
        // Unnamed (IR written by hand): the form's buffers still need names of their own.
        let output_name = result_name(result.into()).unwrap_or_else(|| format!("moe_layer{n}"));
        let mut program = Program::empty();
        let mut values = HashMap::new();
        let mut add = |name: String, v: Value| -> Result<BufferId, String> {
            let (dtype, shape) = tensor_type(v.r#type())?;
            program.buffers.push(Buffer {
                name,
                dtype,
                shape,
                kind: BufferKind::Temp,
            });
            let b = program.buffers.len() - 1;
            values.insert(b, v.to_raw());
            Ok(b)
        };
        let operands: Vec<Value> = experts.operands().collect();
        let mut inputs = Vec::with_capacity(operands.len());
        for v in operands {
            inputs.push(add(value_name(f, v), v)?);
        }
        let inputs = with_absent(experts, inputs)?;
        let output = add(output_name, result.into())?;
        let instruction = Instruction {
            op: instruction_op(experts)?,
            inputs,
            outputs: vec![output],
            origin,
        };
        Ok(LayerProgram {
            program,
            instruction,
            values,
        })
    }
}
