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
use crate::passes::dead_ops::{erase_dead, erase_unread_weights};
use crate::passes::func_ops::{add_weight_argument, body, functions, splice_function};
use crate::passes::program_ops::{as_function, ProgramOps};
use crate::pipeline::{adopt, Compilation, PassError};
use melior::ir::block::BlockRef;
use melior::ir::operation::OperationRef;
use melior::ir::{Type, Value, ValueLike};
use melior::Context;
use ppmoe_runtime::program::{BufferId, BufferKind, Program};
use std::collections::HashMap;

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
        context,
        f,
        block,
        at: (at.instruction_at.iter())
            .map(|&k| Some(at.ops[k].to_raw()))
            .collect(),
        values: (0..first.program.buffers.len())
            .filter_map(|b| Some((b, at.value(b).ok()?.to_raw())))
            .collect(),
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
    context: &'c Context,
    f: OperationRef<'c, 'a>,
    block: BlockRef<'c, 'a>,
    /// Per instruction of the program as it now is, its op (none for a raised instruction).
    at: Vec<Option<mlir_sys::MlirOperation>>,
    /// Per buffer, the value that holds it (the arguments', the ops' results, the raised
    /// layers' outputs).
    values: HashMap<BufferId, mlir_sys::MlirValue>,
}

impl<'c, 'a> LayerOps<'c, 'a> {
    /// Makes `done` (the program's change) to the ops.
    fn splice(&mut self, core: &CoreProgram, done: &Splice) -> Result<(), String> {
        let p = &core.program;
        let last = (self.at.get(done.last).copied().flatten())
            .ok_or("the layer's last instruction is not one of the module's ops")?;
        // SAFETY: the op is live: the function's ops are erased only after the raise.
        let last = unsafe { OperationRef::from_raw(last) };
        let (mini, external) = as_function(p, &done.raised, done.output)?;
        let mut operands = Vec::with_capacity(external.len());
        for &b in &external {
            operands.push(self.value_of(p, b)?);
        }
        let spliced = splice_function(self.context, &print_core(&[&mini]), last, &operands)?;
        let made = *spliced
            .returned
            .first()
            .ok_or("the raised layer returns nothing")?;
        let old = *(self.values.get(&done.output)).ok_or("the layer's output has no value")?;
        // SAFETY: both values live in the function; the old one's op goes with the region.
        unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(old, made.to_raw()) };
        self.values.insert(done.output, made.to_raw());
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

    /// The value of buffer `b`; a weight the raise made (an expert stack) becomes a new
    /// argument of the function, after the others (ppmoe prints weights in the order they are
    /// made).
    fn value_of(&mut self, p: &Program, b: BufferId) -> Result<Value<'c, 'a>, String> {
        if let Some(&v) = self.values.get(&b) {
            // SAFETY: the value is the function's (an argument or a live op's result).
            return Ok(unsafe { Value::from_raw(v) });
        }
        let buffer = &p.buffers[b];
        if buffer.kind != BufferKind::Weight {
            return Err(format!(
                "the raised layer reads '{}', which no op of the function makes",
                buffer.name
            ));
        }
        let text = crate::core::print::tensor_type(buffer);
        let ty = Type::parse(self.context, &text).ok_or_else(|| format!("type {text}"))?;
        let arg = add_weight_argument(self.context, &self.f, self.block, ty, &buffer.name)?;
        self.values.insert(b, arg.to_raw());
        Ok(arg)
    }
}
