//! `ppmoe-shard`: one function per tensor-parallel index. Its dense part is decided on the
//! program the module reads as: dense layers Megatron-split (upstream's `sharding-propagation`
//! and `shard-partition` where they apply, ppmoe's rules for the rest) and each layer's strategy
//! chosen (`pipeline::shard_dense`); each rank's function is the module's cloned and edited to
//! its program, op by op (`shard_dense`). Its MoE part is over the module's ops too: each
//! `moe.experts` of each function is replaced in place by
//! its all-to-all form for that rank, made to the ops as `distribute::shard_moe` makes it to
//! the rank's program (which decides the padding, the capacity and the rank's expert block).
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
use super::func_ops::{body, functions};
use super::program_ops::ProgramOps;
use crate::core::print::{print_stage, Marks};
use crate::core::read::read_programs_marked;
use crate::distribute::shard_moe::{shard_moe, RankProgram};
use crate::distribute::Grid;
use crate::pipeline::{adopt, shard_dense, Compilation, PassError};
use melior::ir::block::BlockLike;
use melior::ir::operation::OperationRef;
use melior::ir::ValueLike;
use melior::Context;
use ppmoe_runtime::program::{BufferId, BufferKind, Instruction, Program};
use std::collections::{HashMap, HashSet};

/// Writes the dense tp programs into the module, then each MoE layer's all-to-all form into
/// each function's ops; returns how many layers it wrote out over all functions.
pub fn shard_layers(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    adopt(c, module)?;
    let mut blocks = shard_dense(c)?;
    super::shard_dense::write_dense(context, module, c)?;
    let grid = c.options.grid.unwrap_or(Grid::ONE);
    let read = read_programs_marked(module)?;
    let ranks = functions(module)?;
    if ranks.len() != c.sharded.len() || read.len() != ranks.len() {
        return Err(format!(
            "{} functions, where the dense stage made {} programs",
            ranks.len(),
            c.sharded.len()
        )
        .into());
    }
    let strategies: Vec<&str> = c.choices.iter().map(|choice| choice.name()).collect();
    let path = c.options.path.clone();
    let mut written = 0;
    for (t, (f, r)) in ranks.iter().zip(&read).enumerate() {
        let dense = &c.sharded[t];
        let mut ops = RankOps::new(context, *f, r, &dense.program, grid, &strategies)?;
        let mut on_layer =
            |rp: &RankProgram, i: usize, form: &[Instruction]| ops.replace(&rp.program, i, form);
        let rp = shard_moe(&path, dense, (grid.tp, t), &mut blocks, &mut on_layer)?;
        written += ops.layer;
        c.sharded[t] = rp;
    }
    Ok(written)
}

/// One rank's function, and where the dense program's instructions and buffers are among its
/// ops as the layers are written out.
struct RankOps<'c, 'a, 's> {
    grid: Grid,
    strategies: &'s [&'s str],
    /// Per instruction of the dense program, its op.
    at: Vec<mlir_sys::MlirOperation>,
    /// Per buffer of the program (the dense one's, then those the layers add), its value.
    values: BufferValues<'c, 'a>,
    /// The MoE layers written out so far.
    layer: usize,
}

impl<'c, 'a, 's> RankOps<'c, 'a, 's> {
    /// `f` is `dense` printed and read back as `read`: the same instructions in the same
    /// order, the arguments the program's inputs and then its weights in buffer order.
    fn new(
        context: &'c Context,
        f: OperationRef<'c, 'a>,
        read: &crate::core::read::ReadProgram,
        dense: &Program,
        grid: Grid,
        strategies: &'s [&'s str],
    ) -> Result<Self, String> {
        let block = body(&f)?;
        let at = ProgramOps::new(&f, read)?;
        if read.program.instructions.len() != dense.instructions.len() {
            return Err("the dense program does not read back as itself".into());
        }
        let mut values = HashMap::new();
        let weights = (dense.buffers.iter().enumerate())
            .filter(|(_, b)| b.kind == BufferKind::Weight)
            .map(|(id, _)| id);
        for (k, id) in dense.inputs.iter().copied().chain(weights).enumerate() {
            let arg = block.argument(k).map_err(|e| e.to_string())?;
            values.insert(id, arg.to_raw());
        }
        for (ours, theirs) in dense.instructions.iter().zip(&read.program.instructions) {
            for (&b, &r) in ours.outputs.iter().zip(&theirs.outputs) {
                values.insert(b, at.value(r)?.to_raw());
            }
        }
        let at = (0..dense.instructions.len())
            .map(|i| at.op(i).map(|op| op.to_raw()))
            .collect::<Result<_, _>>()?;
        Ok(RankOps {
            grid,
            strategies,
            at,
            values: BufferValues {
                context,
                f,
                block,
                values,
            },
            layer: 0,
        })
    }

    /// Replaces instruction `i` (a `moe.experts`) by `form`, its all-to-all form in `p`: the
    /// expert weights' arguments retyped to the rank's block, the form printed with the grid
    /// the collectives name (the shard verifier checks them against it) and the layer's
    /// strategy on its dispatch, the experts op erased with what only fed it.
    fn replace(&mut self, p: &Program, i: usize, form: &[Instruction]) -> Result<(), String> {
        let experts = *self
            .at
            .get(i)
            .ok_or("the layer's op is not in the function")?;
        // SAFETY: the op is live: the function's ops are erased only after every layer.
        let experts = unsafe { OperationRef::from_raw(experts) };
        let output = (form.last())
            .and_then(|ins| ins.outputs.first().copied())
            .ok_or("the layer's form writes nothing")?;
        // The buffers the form reads and does not make: the expert weights among them.
        let made: HashSet<BufferId> = form.iter().flat_map(|ins| ins.outputs.clone()).collect();
        for &b in form.iter().flat_map(|ins| ins.inputs.iter().flatten()) {
            if !made.contains(&b) {
                self.values.retype_argument(p, b)?;
            }
        }
        let strategy = self.strategies.get(self.layer).copied();
        let marks = Marks {
            strategies: strategy.as_slice(),
            ..Marks::default()
        };
        let grid = self.grid.mlir();
        let print =
            |one: &Program| print_stage(&[one], Some((&grid, self.grid.tp, 1)), 1, &marks, "");
        let old = self.values.splice(p, (form, output), experts, print)?;
        // SAFETY: a live value of the function.
        if !unsafe { mlir_sys::mlirValueIsAOpResult(old) } {
            return Err("the layer's output is an argument of the function".into());
        }
        // SAFETY: `old` is the result of the experts op (or of the cast that narrows it), which
        // nothing uses now; what only fed it goes with it (the form reads the rest).
        let owner = unsafe { mlir_sys::mlirOpResultGetOwner(old) };
        unsafe { erase_with_unused_producers(owner) };
        self.layer += 1;
        Ok(())
    }
}
