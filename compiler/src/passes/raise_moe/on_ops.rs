//! `ppmoe-raise-moe` over the module's MLIR ops. Which layers are MoE, and how their experts'
//! weights read, is decided on the program the `core` module reads as (the search runs the
//! readings numerically, on the few-token program where there is one); each layer's change is
//! then made to the ops as it is made to the program: the layer's `moe.route` and `moe.experts`
//! (with the reshapes around them) printed as ppmoe prints those instructions, parsed and moved
//! in where the layer's last op was, the layer's output read from them; the new expert stacks
//! become weight arguments. When every layer is raised, the ops nothing reads (the layers'
//! regions among them) and the weights nothing reads are erased.
//!
//!   before:  %l = linalg.matmul ins(%x, %wr ...)  %p = linalg.softmax ...  %v, %i = "core.top_k"(%p)
//!            ... gathers, matmuls, activations, a reduce_sum over the experts ...  -> %y
//!   after:   %l = linalg.matmul ins(%x, %wr ...)  %r:2 = "moe.route"(%l) {top_k = 2 ...}
//!            %y = "moe.experts"(%x, %r#0, %r#1, %w_in, %w_out) {activation = "swiglu" ...}

use super::{raise_layers, CapacityPolicy, Splice};
use crate::core::print::print_core;
use crate::core::read::read_programs_marked;
use crate::core::{CoreProgram, DEFAULT_EVAL_LIMIT_BYTES};
use crate::passes::buffer_values::BufferValues;
use crate::passes::dead_ops::{erase_dead, erase_unread_weights};
use crate::passes::func_ops::{body, functions};
use crate::passes::program_ops::ProgramOps;
use crate::pipeline::{adopt, Compilation, PassError};
use melior::ir::operation::OperationRef;
use melior::ir::ValueLike;
use melior::Context;
use ppmoe_runtime::program::Program;

/// Raises every MoE layer of the `core` module's function; returns how many.
pub fn raise_moe_layers(
    context: &Context,
    module: &OperationRef,
    c: &mut Compilation,
) -> Result<usize, PassError> {
    adopt(c, module)?;
    let read = read_programs_marked(module)?;
    let f = (functions(module)?.into_iter().next()).ok_or("the module holds no func.func")?;
    let first = read.first().ok_or("the module holds no func.func")?;
    let at = ProgramOps::new(&f, first)?;
    let block = body(&f)?;
    let mut ops = LayerOps {
        at: (at.instruction_at.iter())
            .map(|&k| Some(at.ops[k].to_raw()))
            .collect(),
        values: BufferValues {
            context,
            f,
            block,
            values: (0..first.program.buffers.len())
                .filter_map(|b| Some((b, at.value(b).ok()?.to_raw())))
                .collect(),
        },
    };
    let policy = c.options.capacity_policy.unwrap_or(CapacityPolicy::Keep);
    let limit = c.options.eval_limit.unwrap_or(DEFAULT_EVAL_LIMIT_BYTES);
    let mut probe = c.probe_core.take();
    let core = c.core.as_mut().ok_or("no core program to raise")?;
    // The few-token program is only a means of recognition: dropped once used.
    let outcome = raise_layers(core, probe.as_mut(), policy, limit, &mut |core, done| {
        ops.splice(core, done)
    })?;
    for u in &outcome.unraised {
        tracing::warn!("not raised: {u}");
    }
    let raised = outcome.raised.len();
    core.moe_layers.extend(outcome.raised);
    c.diagnostics.unraised = outcome.unraised;
    erase_dead(block);
    erase_unread_weights(context, &f, block)?;
    Ok(raised)
}

/// The function being raised, and where the program's instructions and buffers are among its
/// ops as the raise changes them.
struct LayerOps<'c, 'a> {
    /// Per instruction of the program as it now is, its op (none for a raised instruction).
    at: Vec<Option<mlir_sys::MlirOperation>>,
    /// Per buffer, its value (the arguments', the ops' results, the raised layers' outputs).
    values: BufferValues<'c, 'a>,
}

impl LayerOps<'_, '_> {
    /// Makes `done` (the program's change) to the ops: the raised instructions moved in where
    /// the layer's last op was (its region's ops go with the dead-op sweep after the raise).
    fn splice(&mut self, core: &CoreProgram, done: &Splice) -> Result<(), String> {
        let last = (self.at.get(done.last).copied().flatten())
            .ok_or("the layer's last instruction is not one of the module's ops")?;
        // SAFETY: the op is live: the function's ops are erased only after the raise.
        let last = unsafe { OperationRef::from_raw(last) };
        let raised = (done.raised.as_slice(), done.output);
        let print = |one: &Program| print_core(&[one]);
        self.values.splice(&core.program, raised, last, print)?;
        let before = std::mem::take(&mut self.at);
        for (i, op) in before.into_iter().enumerate() {
            if i == done.last {
                self.at.extend(done.raised.iter().map(|_| None));
            } else if !done.region.contains(&i) {
                self.at.push(op);
            }
        }
        Ok(())
    }
}
