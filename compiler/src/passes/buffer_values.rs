//! A function's values by the buffers of the program it is changed beside. A pass that makes
//! each change to the ops from new instructions (the raise and the shard's dense part, beside
//! the program the function reads as; the shard's MoE part, beside one layer's program) finds
//! here the value of each buffer the new instructions read, and splices the new instructions
//! in as ppmoe prints them.

use super::func_ops::{add_weight_argument, set_signature, splice_function};
use super::program_ops::as_function;
use melior::ir::block::{BlockArgument, BlockRef};
use melior::ir::operation::OperationRef;
use melior::ir::{Type, Value, ValueLike};
use melior::Context;
use mlir_sys::MlirValue;
use ppmoe_runtime::program::{BufferId, BufferKind, Instruction, Program};
use std::collections::HashMap;

pub struct BufferValues<'c, 'a> {
    pub context: &'c Context,
    pub f: OperationRef<'c, 'a>,
    pub block: BlockRef<'c, 'a>,
    /// Per buffer, the value that holds it: an argument, an op's result, or the result of a
    /// change spliced in.
    pub values: HashMap<BufferId, MlirValue>,
}

impl<'c, 'a> BufferValues<'c, 'a> {
    /// The value of buffer `b` of `p`; a weight no argument holds yet (one the change made)
    /// becomes a new weight argument after the others (ppmoe prints weights in the order they
    /// are made).
    pub fn value_of(&mut self, p: &Program, b: BufferId) -> Result<Value<'c, 'a>, String> {
        if let Some(&v) = self.values.get(&b) {
            // SAFETY: the value is the function's (an argument or a live op's result).
            return Ok(unsafe { Value::from_raw(v) });
        }
        let buffer = &p.buffers[b];
        if buffer.kind != BufferKind::Weight {
            return Err(format!(
                "the new instructions read '{}', which no op of the function makes",
                buffer.name
            ));
        }
        let ty = self.type_of(p, b)?;
        let arg =
            add_weight_argument(self.context, &self.f, self.block, ty, (&buffer.name, false))?;
        self.values.insert(b, arg.to_raw());
        Ok(arg)
    }

    /// Gives the argument that holds buffer `b` the type `p` now declares for it, where that
    /// changed (an expert weight cut to the rank's block); refuses any other value that would
    /// change type.
    pub fn retype_argument(&mut self, p: &Program, b: BufferId) -> Result<(), String> {
        let Some(&v) = self.values.get(&b) else {
            return Ok(());
        };
        // SAFETY: the value is the function's (an argument or a live op's result).
        let value = unsafe { Value::from_raw(v) };
        let ty = self.type_of(p, b)?;
        if value.r#type() == ty {
            return Ok(());
        }
        let arg = BlockArgument::try_from(value).map_err(|_| {
            format!(
                "'{}' changes type, and is no weight argument",
                p.buffers[b].name
            )
        })?;
        arg.set_type(ty);
        set_signature(self.context, &self.f, self.block, None)
    }

    /// Moves in, before `at`, the ops `print` makes of `instructions` (new instructions of `p`,
    /// the last writing `output`) printed as a function of the buffers they read; the readers
    /// of `output`'s value read the new one. Returns the old value (whose op the caller erases,
    /// or leaves to a dead-op sweep).
    pub fn splice(
        &mut self,
        p: &Program,
        (instructions, output): (&[Instruction], BufferId),
        at: OperationRef<'c, 'a>,
        print: impl FnOnce(&Program) -> String,
    ) -> Result<MlirValue, String> {
        let old = *(self.values.get(&output)).ok_or("the replaced output has no value")?;
        self.splice_writing(p, (instructions, &[output]), at, print)?;
        Ok(old)
    }

    /// As `splice`, for new instructions writing `outputs`: the readers of each output's old
    /// value, where it had one, read the new one.
    pub fn splice_writing(
        &mut self,
        p: &Program,
        (instructions, outputs): (&[Instruction], &[BufferId]),
        at: OperationRef<'c, 'a>,
        print: impl FnOnce(&Program) -> String,
    ) -> Result<(), String> {
        let (one, external) = as_function(p, instructions, outputs)?;
        let mut operands = Vec::with_capacity(external.len());
        for &b in &external {
            operands.push(self.value_of(p, b)?);
        }
        let spliced = splice_function(self.context, &print(&one), at, &operands)?;
        if spliced.returned.len() != outputs.len() {
            return Err("the new ops return other than their outputs".into());
        }
        for (&b, made) in outputs.iter().zip(&spliced.returned) {
            if let Some(old) = self.values.insert(b, made.to_raw()) {
                // SAFETY: both values live in the function.
                unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(old, made.to_raw()) };
            }
        }
        Ok(())
    }

    /// Buffer `b`'s type as ppmoe prints it.
    pub fn type_of(&self, p: &Program, b: BufferId) -> Result<Type<'c>, String> {
        let text = crate::core::print::tensor_type(&p.buffers[b]);
        Type::parse(self.context, &text).ok_or_else(|| format!("type {text}"))
    }
}
