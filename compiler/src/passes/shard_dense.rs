//! `ppmoe-shard`'s dense split by ppmoe's rules, written to the module's ops. The `moe`
//! function is cloned once per rank (`one_function_per_rank`), upstream partitions the regions
//! it takes in each (`upstream_partition`), and the rest of the split is decided on the program
//! each function then reads as (`pipeline::shard_dense`); each function is edited to its rank's
//! program, op by op:
//!
//!   before:  func.func @rank0(.., %wq: tensor<64x64xf32> ..) { %q = linalg.matmul ins(%x, %wq) .. }
//!   after:   func.func @rank0(.., %wq: .., %wq0: tensor<64x32xf32> {ppmoe.rank_piece}) {
//!              %q = linalg.matmul ins(%x, %wq0) ..  %o = shard.all_reduce %p on @grid .. }
//!            func.func @rank1(..)  (rank 1's columns and rows)
//!
//! An instruction the split leaves as it was (same op, same buffers of the same types) keeps
//! its op; every other is printed as ppmoe prints that instruction and spliced in after the op
//! of the last instruction kept before it, the readers of a buffer it writes again moved to the
//! new value; the ops of the instructions the rank no longer has go. The rank's weight pieces
//! become arguments after the others, in the program's order, so the function reads back as
//! the rank's program (and `--emit sharded` prints what printing the programs whole printed).

use super::buffer_values::BufferValues;
use super::dead_ops::{erase_op, unused};
use super::func_ops::{add_weight_argument, block_ops, body, functions, module_body, top_level};
use super::program_ops::ProgramOps;
use crate::core::print::{print_stage, tensor_type, Marks};
use crate::core::read::{op_name, ReadProgram};
use crate::distribute::Grid;
use crate::pipeline::Compilation;
use melior::ir::attribute::{Attribute, StringAttribute};
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef, OperationRefMut};
use melior::ir::{Operation, ValueLike};
use melior::Context;
use ppmoe_runtime::program::{BufferId, BufferKind, Instruction, Program};
use std::collections::{HashMap, HashSet};

/// Makes the `moe` module's one function into one function per tp index (`@rank<t>`, at grid
/// coordinates (0, 0, t)), each the function as it was, and declares the grid first in the
/// module; returns the functions in rank order.
pub fn one_function_per_rank<'c, 'a>(
    context: &'c Context,
    module: &OperationRef<'c, 'a>,
    grid: Grid,
) -> Result<Vec<OperationRef<'c, 'a>>, String> {
    let [one]: [OperationRef; 1] = functions(module)?
        .try_into()
        .map_err(|f: Vec<_>| format!("the moe stage holds one function, not {}", f.len()))?;
    let module_body = module_body(module)?;
    for _ in 1..grid.tp {
        // SAFETY: cloning copies the function; the module's body takes the copy over.
        let copy = unsafe { Operation::from_raw(mlir_sys::mlirOperationClone(one.to_raw())) };
        module_body.append_operation(copy);
    }
    declare_grid(context, module, &grid.mlir())?;
    let ranks = functions(module)?;
    for (t, f) in ranks.iter().enumerate() {
        name_rank(context, *f, t)?;
    }
    Ok(ranks)
}

/// Edits each rank's function, which reads as `read` (the rank's program before the dense
/// split), to the rank's program of `c.sharded`.
pub fn write_dense(
    context: &Context,
    module: &OperationRef,
    c: &Compilation,
    read: &[ReadProgram],
) -> Result<(), String> {
    let grid = c.options.grid.unwrap_or(Grid::ONE);
    let ranks = functions(module)?;
    if read.len() != c.sharded.len() || ranks.len() != c.sharded.len() {
        return Err(format!(
            "{} functions, where the dense split made {} programs",
            ranks.len(),
            c.sharded.len()
        ));
    }
    let grid_text = grid.mlir();
    for (t, (f, r)) in ranks.iter().zip(read).enumerate() {
        let pieces = c.rank_pieces.get(t).ok_or("a rank without its pieces")?;
        let rank = Rank {
            context,
            program: &c.sharded[t].program,
            pieces,
            grid: (&grid_text, grid.tp),
        };
        rank.write(*f, r)?;
    }
    Ok(())
}

/// One rank's program and how its new instructions print.
struct Rank<'c, 'p> {
    context: &'c Context,
    program: &'p Program,
    /// The weights cut into this rank's own pieces.
    pieces: &'p HashSet<String>,
    /// The grid's declaration and its tp size (the collectives name it).
    grid: (&'p str, usize),
}

impl<'c> Rank<'c, '_> {
    /// Edits `f`, which reads as `read` (the one-rank program), to this rank's program.
    fn write<'a>(&self, f: OperationRef<'c, 'a>, read: &ReadProgram) -> Result<(), String> {
        let original = &read.program;
        let p = self.program;
        if p.inputs != original.inputs || p.buffers.len() < original.buffers.len() {
            return Err("the rank's program does not extend the module's".into());
        }
        let at = ProgramOps::new(&f, read)?;
        let block = body(&f)?;
        let before = block_ops(block);
        let values = (0..original.buffers.len())
            .filter_map(|b| at.value(b).ok().map(|v| (b, v.to_raw())))
            .collect();
        let mut values = BufferValues {
            context: self.context,
            f,
            block,
            values,
        };
        self.add_pieces(&mut values, original.buffers.len())?;
        let kept = Kept::new(original, p);
        // The ops of the instructions kept (and the casts that narrow their results).
        let mut keep: HashSet<usize> = HashSet::new();
        // New ops go before this op of the function: the one after the last kept instruction.
        let mut anchor = 0;
        for ins in &p.instructions {
            if let Some(j) = kept.of(ins) {
                let k = at.instruction_at[j];
                if k < anchor {
                    return Err(format!("instruction {j} is kept out of its order"));
                }
                let last = at.narrowed_by.get(&j).copied().unwrap_or(k);
                keep.extend([k, last]);
                anchor = last + 1;
                continue;
            }
            let before_op = *before.get(anchor).ok_or("the function has no return")?;
            values.splice_writing(
                p,
                (std::slice::from_ref(ins), &ins.outputs),
                before_op,
                |one| self.print(one),
            )?;
        }
        set_returned(&values, block, (original, p))?;
        // What the rank no longer has, last to first: an op goes once nothing reads it, and
        // what only fed it after it.
        for (k, op) in before.iter().enumerate().rev() {
            let results_unused = op.result_count() > 0 && op.results().all(unused);
            if !keep.contains(&k) && op_name(op) != "func.return" && results_unused {
                // SAFETY: the op is live, of this function's block, and nothing reads it.
                unsafe { erase_op(*op) };
            }
        }
        Ok(())
    }

    /// The weights the split made (the rank's pieces), as arguments after the others in the
    /// program's order; a weight of the module's retyped where the program retypes it.
    fn add_pieces(&self, values: &mut BufferValues<'c, '_>, known: usize) -> Result<(), String> {
        let p = self.program;
        for (b, buffer) in p.buffers.iter().enumerate() {
            if buffer.kind != BufferKind::Weight {
                continue;
            }
            if b < known {
                values.retype_argument(p, b)?;
                continue;
            }
            let ty = values.type_of(p, b)?;
            let piece = self.pieces.contains(&buffer.name);
            let arg = add_weight_argument(
                self.context,
                &values.f,
                values.block,
                ty,
                (&buffer.name, piece),
            )?;
            values.values.insert(b, arg.to_raw());
        }
        Ok(())
    }

    /// A new instruction's ops, as ppmoe prints the rank's program.
    fn print(&self, one: &Program) -> String {
        let (grid, tp) = self.grid;
        print_stage(&[one], Some((grid, tp, 1)), 1, &Marks::default(), "")
    }
}

/// Which instructions of a rank's program are the module's own, unchanged.
struct Kept<'p> {
    original: &'p Program,
    rank: &'p Program,
    /// Per buffer the module's program writes, the instruction that writes it.
    writer: HashMap<BufferId, usize>,
}

impl<'p> Kept<'p> {
    fn new(original: &'p Program, rank: &'p Program) -> Self {
        let writer = (original.instructions.iter().enumerate())
            .flat_map(|(j, ins)| ins.outputs.iter().map(move |&b| (b, j)))
            .collect();
        Kept {
            original,
            rank,
            writer,
        }
    }

    /// The module's instruction `ins` is, where it is one: the same op over the same buffers,
    /// each as the module declares it (a buffer split or renamed makes a new instruction).
    fn of(&self, ins: &Instruction) -> Option<usize> {
        let j = *self.writer.get(ins.outputs.first()?)?;
        let same = |b: &BufferId| self.original.buffers.get(*b) == self.rank.buffers.get(*b);
        let buffers = ins.inputs.iter().flatten().chain(&ins.outputs);
        (self.original.instructions[j] == *ins && buffers.into_iter().all(same)).then_some(j)
    }
}

/// The function's return reads the values of the rank's outputs (a split output is made whole
/// by a new value, which the return reads in the old one's place), each of the type the module's
/// function returns.
fn set_returned(
    values: &BufferValues,
    block: BlockRef,
    (original, rank): (&Program, &Program),
) -> Result<(), String> {
    let ret = block.terminator().ok_or("a func.func without its return")?;
    if ret.operand_count() != rank.outputs.len() || original.outputs.len() != rank.outputs.len() {
        return Err("the function returns other than the program's outputs".into());
    }
    for (k, (&was, &o)) in original.outputs.iter().zip(&rank.outputs).enumerate() {
        let (returns, now) = (
            tensor_type(&original.buffers[was]),
            tensor_type(&rank.buffers[o]),
        );
        if returns != now {
            return Err(format!(
                "output {k} is {now}, where the function returns {returns}"
            ));
        }
        let value = *values.values.get(&o).ok_or("an output with no value")?;
        // SAFETY: the value lives in the function, before its return, which is its own.
        unsafe { mlir_sys::mlirOperationSetOperand(ret.to_raw(), k as isize, value) };
    }
    Ok(())
}

/// Names function `f` as rank t's, at grid coordinates (0, 0, t).
fn name_rank(context: &Context, f: OperationRef, t: usize) -> Result<(), String> {
    let coords = format!("array<i64: 0, 0, {t}>");
    let coords = Attribute::parse(context, &coords).ok_or("the coordinates do not parse")?;
    // SAFETY: the pass manager hands this pass the module; no other handle writes the op.
    let mut f = unsafe { OperationRefMut::from_raw(f.to_raw()) };
    f.set_attribute(
        "sym_name",
        StringAttribute::new(context, &format!("rank{t}")).into(),
    );
    f.set_attribute("ppmoe.coords", coords);
    Ok(())
}

/// Declares `grid` (`shard.grid @grid(...)`) first in the module, where it declares none.
fn declare_grid(context: &Context, module: &OperationRef, grid: &str) -> Result<(), String> {
    if !top_level(module, "shard.grid")?.is_empty() {
        return Err("the moe module already declares a grid".into());
    }
    let scratch =
        ppmoe_dialect::parse_verified(context, &format!("module {{ {grid} loc(unknown) }}"))?;
    let scratch_op = scratch.as_operation();
    let declared = *top_level(&scratch_op, "shard.grid")?
        .first()
        .ok_or("the grid does not parse")?;
    let first = module_body(module)?
        .first_operation()
        .ok_or("the module is empty")?;
    // SAFETY: the scratch module and this one share the context; the op is moved once.
    let mut declared = unsafe { OperationRefMut::from_raw(declared.to_raw()) };
    declared.move_before(first);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Kept;
    use ppmoe_runtime::program::{Buffer, BufferKind, Instruction, Op, Program};
    use ppmoe_runtime::DType;

    /// An f32 buffer of a known shape.
    fn buffer(name: &str, shape: &[usize], kind: BufferKind) -> Buffer {
        Buffer {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.iter().map(|&d| Some(d)).collect(),
            kind,
        }
    }

    fn matmul(x: usize, w: usize, y: usize) -> Instruction {
        Instruction {
            op: Op::MatMul,
            inputs: vec![Some(x), Some(w)],
            outputs: vec![y],
            origin: "q_proj".into(),
        }
    }

    /// x [16, 64] @ w [64, 64] -> y: the module's one-rank program.
    fn one_rank() -> Program {
        Program {
            buffers: vec![
                buffer("x", &[16, 64], BufferKind::Input),
                buffer("w", &[64, 64], BufferKind::Weight),
                buffer("y", &[16, 64], BufferKind::Output),
            ],
            inputs: vec![0],
            outputs: vec![2],
            instructions: vec![matmul(0, 1, 2)],
            ..Program::empty()
        }
    }

    #[test]
    fn an_instruction_is_kept_only_over_the_same_buffers_as_the_module_declares_them() {
        let original = one_rank();
        let same = one_rank();
        assert_eq!(
            Kept::new(&original, &same).of(&same.instructions[0]),
            Some(0)
        );

        // Rank 0's columns: the weight's piece is a new buffer, the result split in place.
        let mut split = one_rank();
        split
            .buffers
            .push(buffer("w.tp0_1", &[64, 32], BufferKind::Weight));
        split.buffers[2].shape = vec![Some(16), Some(32)];
        split.instructions = vec![matmul(0, 3, 2)];
        assert_eq!(
            Kept::new(&original, &split).of(&split.instructions[0]),
            None
        );

        // The same op over the same ids, but its result split: a new instruction.
        let mut retyped = one_rank();
        retyped.buffers[2].shape = vec![Some(16), Some(32)];
        assert_eq!(
            Kept::new(&original, &retyped).of(&retyped.instructions[0]),
            None
        );

        // The output renamed (a split output made whole by a gather): a new instruction.
        let mut renamed = one_rank();
        renamed.buffers[2].name = "y.local".into();
        assert_eq!(
            Kept::new(&original, &renamed).of(&renamed.instructions[0]),
            None
        );

        // An instruction writing a buffer the module has no writer of is new.
        let mut added = one_rank();
        added
            .buffers
            .push(buffer("y.whole", &[16, 64], BufferKind::Temp));
        let gather = Instruction {
            op: Op::AllReduce { group: vec![0, 1] },
            inputs: vec![Some(2)],
            outputs: vec![3],
            origin: "q_proj".into(),
        };
        assert_eq!(Kept::new(&original, &added).of(&gather), None);
    }
}
