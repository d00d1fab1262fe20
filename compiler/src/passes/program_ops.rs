//! Where a function's program (`core::read`: what it reads back as) is among its ops: each
//! instruction's op, and the value that holds each buffer. A pass over the ops that decides on
//! the program (the raise, the shard's dense part) edits the ops found here.

use super::func_ops::{block_ops, body};
use crate::core::read::{
    location_names, op_name, parts_of, skipped_results, tensor_type, ReadProgram, NARROWING,
    WIDENING,
};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::{Location, Value, ValueLike};
use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Op, Program};
use std::collections::HashMap;

pub struct ProgramOps<'c, 'a> {
    /// The function's block's ops, in order.
    pub ops: Vec<OperationRef<'c, 'a>>,
    /// Per instruction, its op's position in `ops`.
    pub instruction_at: Vec<usize>,
    /// Per instruction, the position of the cast that narrows its result (`ppmoe.narrows`,
    /// read as part of the instruction), where it has one.
    pub narrowed_by: HashMap<usize, usize>,
    /// Per instruction, the position of the op that makes one of its operands as its upstream
    /// form reads it, read as part of the instruction: the `tensor.expand_shape` that appends
    /// a gather's index axis, the `arith.extf` that widens a softmax's half-precision operand,
    /// the generics that sum a layer norm's rows.
    pub operand_made_by: HashMap<usize, Vec<usize>>,
    /// Per buffer, the value that holds it: an argument, an op's result, or a narrowing cast's.
    values: Vec<Option<Value<'c, 'a>>>,
}

impl<'c, 'a> ProgramOps<'c, 'a> {
    pub fn new(f: &OperationRef<'c, 'a>, read: &ReadProgram) -> Result<Self, String> {
        let block = body(f)?;
        let ops = block_ops(block);
        let position: HashMap<usize, usize> = (ops.iter().enumerate())
            .map(|(k, op)| (op.to_raw().ptr as usize, k))
            .collect();
        let p = &read.program;
        let mut values = vec![None; p.buffers.len()];
        // The reader numbers the arguments' buffers first, in order.
        for (k, v) in values.iter_mut().enumerate().take(block.argument_count()) {
            *v = Some(block.argument(k).map_err(|e| e.to_string())?.into());
        }
        let mut instruction_at = Vec::with_capacity(p.instructions.len());
        let mut narrowed_by = HashMap::new();
        let mut operand_made_by = HashMap::new();
        for (i, (ins, handle)) in p.instructions.iter().zip(&read.ops).enumerate() {
            let k = *position.get(handle).ok_or(
                "an instruction inside a region (scf.if): the pass takes a function's own ops",
            )?;
            instruction_at.push(k);
            let op = &ops[k];
            let makers: Vec<usize> = (operand_makers(op).iter())
                .filter_map(|m| position.get(m).copied())
                .collect();
            if !makers.is_empty() {
                operand_made_by.insert(i, makers);
            }
            if let Some(next) = ops.get(k + 1).filter(|next| narrows(next, op)) {
                narrowed_by.insert(i, k + 1);
                if let (Some(&b), Ok(r)) = (ins.outputs.first(), next.result(0)) {
                    values[b] = Some(r.into());
                }
                continue;
            }
            for (&b, r) in ins
                .outputs
                .iter()
                .zip(op.results().skip(skipped_results(op)))
            {
                values[b] = Some(r.into());
            }
        }
        Ok(ProgramOps {
            ops,
            instruction_at,
            narrowed_by,
            operand_made_by,
            values,
        })
    }

    /// The value that holds buffer `b`.
    pub fn value(&self, b: BufferId) -> Result<Value<'c, 'a>, String> {
        self.values
            .get(b)
            .copied()
            .flatten()
            .ok_or_else(|| format!("buffer {b} has no value in the function"))
    }

    /// Instruction `i`'s op.
    pub fn op(&self, i: usize) -> Result<OperationRef<'c, 'a>, String> {
        (self.instruction_at.get(i))
            .map(|&k| self.ops[k])
            .ok_or_else(|| format!("no instruction {i}"))
    }
}

/// Whether `op` is the cast that narrows `collective`'s (or a matmul's) result
/// (`ppmoe.narrows`).
pub fn narrows(op: &OperationRef, collective: &OperationRef) -> bool {
    // Checked in this order: melior's error for an operand or result out of range prints the
    // whole op, which costs as much as printing its function.
    let name = op_name(op);
    if !NARROWING.contains(&name.as_str()) || !op.has_attribute("ppmoe.narrows") {
        return false;
    }
    if op.operand_count() == 0 || collective.result_count() == 0 {
        return false;
    }
    let reads_it = op.operand(0).ok().zip(collective.result(0).ok());
    reads_it.is_some_and(|(a, b)| a.to_raw().ptr == b.to_raw().ptr)
}

/// `instructions` (a program's new instructions, about to replace some of its ops) as a
/// program of their own: its inputs the buffers they read and do not make (returned, in the
/// order they are first read), its outputs `outputs`, the rest its temporaries. Printed, it
/// is a function of those inputs whose ops are what ppmoe prints for the instructions.
pub fn as_function(
    p: &Program,
    instructions: &[Instruction],
    outputs: &[BufferId],
) -> Result<(Program, Vec<BufferId>), String> {
    let made: Vec<BufferId> = (instructions.iter())
        .flat_map(|ins| ins.outputs.iter().copied())
        .collect();
    let mut external: Vec<BufferId> = Vec::new();
    for b in instructions
        .iter()
        .flat_map(|ins| ins.inputs.iter().flatten())
    {
        if !made.contains(b) && !external.contains(b) {
            external.push(*b);
        }
    }
    let ids: Vec<BufferId> = external.iter().chain(&made).copied().collect();
    let local = |b: BufferId| ids.iter().position(|&x| x == b);
    let mut buffers = Vec::with_capacity(ids.len());
    for &b in &ids {
        let mut buffer = p
            .buffers
            .get(b)
            .ok_or("a new instruction's buffer")?
            .clone();
        buffer.kind = if external.contains(&b) {
            BufferKind::Input
        } else if outputs.contains(&b) {
            BufferKind::Output
        } else {
            BufferKind::Temp
        };
        buffers.push(buffer);
    }
    let instructions = (instructions.iter())
        .map(|ins| Instruction {
            inputs: ins.inputs.iter().map(|b| b.and_then(local)).collect(),
            outputs: ins.outputs.iter().filter_map(|&b| local(b)).collect(),
            ..ins.clone()
        })
        .collect();
    let outputs = (outputs.iter())
        .map(|&b| local(b).ok_or("an output is not among the new instructions'"))
        .collect::<Result<_, _>>()?;
    let program = Program {
        buffers,
        inputs: (0..external.len()).collect(),
        outputs,
        instructions,
        ..Program::empty()
    };
    Ok((program, external))
}

/// Instruction `op` over `inputs` into `result`, as a program of its own: its output named,
/// and its origin placed, as `location` names the op's (`unnamed` where it names none).
/// Printed, it is the op a pass makes again for its operands' types as they now are.
pub fn one_instruction(
    op: Op,
    inputs: &[Value],
    result: Value,
    location: Location,
    unnamed: &str,
) -> Result<Program, String> {
    let buffer = |name: String, v: &Value, kind| -> Result<Buffer, String> {
        let (dtype, shape) = tensor_type(v.r#type())?;
        Ok(Buffer {
            name,
            dtype,
            shape,
            kind,
        })
    };
    let (names, origin) = location_names(location, 1);
    let out_name = names.into_iter().next().unwrap_or_else(|| unnamed.into());
    let mut buffers = (inputs.iter().enumerate())
        .map(|(k, v)| buffer(format!("x{k}"), v, BufferKind::Input))
        .collect::<Result<Vec<_>, _>>()?;
    buffers.push(buffer(out_name, &result, BufferKind::Output)?);
    let n = inputs.len();
    Ok(Program {
        buffers,
        inputs: (0..n).collect(),
        outputs: vec![n],
        instructions: vec![Instruction {
            op,
            inputs: (0..n).map(Some).collect(),
            outputs: vec![n],
            origin,
        }],
        ..Program::empty()
    })
}

/// The op (by its handle) that makes an operand of `op` as its upstream form reads it, where
/// `op` has one: a `tensor.gather`'s indices' `tensor.expand_shape`
/// (`core::upstream::Upstream::Gather`), a `linalg.softmax`'s or a token slice's widening
/// `arith.extf` (`ppmoe.widens`).
fn operand_makers(op: &OperationRef) -> Vec<usize> {
    let address = |o: &OperationRef| o.to_raw().ptr as usize;
    let (k, maker_name) = match op_name(op).as_str() {
        "tensor.gather" => (1, "tensor.expand_shape"),
        "linalg.softmax" | "linalg.map" | "tensor.extract_slice" => (0, WIDENING),
        _ => return parts_of(op).iter().map(address).collect(),
    };
    let made = op
        .operand(k)
        .ok()
        .and_then(|v| OperationResult::try_from(v).ok());
    let Some(maker) = made.map(|m| m.owner()) else {
        return Vec::new();
    };
    let marked = maker_name != WIDENING || maker.has_attribute("ppmoe.widens");
    match op_name(&maker) == maker_name && marked {
        true => vec![address(&maker)],
        false => Vec::new(),
    }
}
