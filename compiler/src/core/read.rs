//! Reads the stages' MLIR back into programs (`core` to `kernels`): the inverse of `print`.
//! Each `func.func @rank<N>` is one program (a `kernels` module's plans and `gpu.module`s are
//! read beside them, `pipeline/adopt_kernels.rs`); its arguments are the inputs (`core.input`) and
//! the weights (`core.weight`), its results the outputs (`core.output`); each op in it one
//! instruction, the op's attributes read back into the op's fields, its location naming its
//! results and the source node (`loc("result"("node"))`, fused when there are several). The
//! `shard` ops' groups and peers come from the module's `shard.grid` and the function's rank
//! (the TP group of its rank; a peer's stage at its own dp and tp coordinates).

use super::reduce;
use crate::core::upstream::{read_upstream, OPERAND_ONLY};
use crate::distribute::Grid;
use melior::ir::attribute::{
    Attribute, AttributeLike, BoolAttribute, DenseI64ArrayAttribute, DictionaryAttribute,
    FloatAttribute, IntegerAttribute, StringAttribute,
};
use melior::ir::block::{BlockLike, BlockRef};
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::r#type::RankedTensorType;
use melior::ir::{Location, RegionLike, Type, TypeLike, Value, ValueLike};
use mlir_sys::MlirStringRef;
use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Op, Program, ReduceFn};
use ppmoe_runtime::DType;
use std::collections::{HashMap, HashSet};

/// The most ranks a grid read from IR may have (a bound on what the reader builds per rank).
const MAX_RANKS: i64 = 1 << 16;

/// The deepest `scf.if` nesting read (upstream's partitioning writes one level).
const MAX_BRANCH_DEPTH: usize = 16;

/// The ops that may narrow the result of the instruction before them (`ppmoe.narrows`): a
/// collective's (`arith.truncf` into half precision, `core.cast` otherwise), a matmul's, an
/// f32 reshape's, a softmax's or an f64 sum's (`arith.truncf`), a mean's
/// division of an f64 sum (`linalg.generic`, `core::reduce`).
pub(crate) const NARROWING: &[&str] = &["core.cast", "arith.truncf", "linalg.generic"];

/// The op that widens a half-precision operand to f32 for the one op that reads it, a softmax,
/// a function of one operand or a token slice (`ppmoe.widens`: `print::widened_operand`),
/// read as that operand.
pub(crate) const WIDENING: &str = "arith.extf";

/// The ops whose operand may be so widened.
const WIDENED_READERS: &[&str] = &["linalg.softmax", "linalg.map"];

/// A tensor's element type and shape, as `read_as_its_operand` hands them to its check.
type Typed<'s> = (DType, &'s [Option<usize>]);

/// Attributes that say how operands are laid out, not what the op computes.
const STRUCTURAL: &[&str] = &["operandSegmentSizes", "core.absent_inputs"];

/// A program as read, with the weights its arguments mark as rank pieces (`ppmoe.rank_piece`:
/// the pieces dense TP cut for this rank, which `ppmoe-rewrite` must tell from replicated
/// weights).
pub struct ReadProgram {
    pub program: Program,
    pub rank_pieces: HashSet<String>,
    /// Each instruction's op (its MLIR handle), in order: what a pass over the ops finds an
    /// instruction of the program by.
    pub ops: Vec<usize>,
}

/// The marker of a weight argument that is this rank's piece of a dense TP split.
pub const RANK_PIECE: &str = "ppmoe.rank_piece";

/// The attribute that marks a function as the kernel plan of the program it names.
pub const PLAN_OF: &str = "kernels.plan_of";

/// The attribute of a `moe.dispatch` that names its layer's strategy (`ppmoe` or `alltoall`).
pub const STRATEGY: &str = "ppmoe.strategy";

/// Every `func.func` of the module as a program, in order; the error names the function and
/// the op.
pub fn read_programs(module: &OperationRef) -> Result<Vec<Program>, String> {
    Ok(read_programs_marked(module)?
        .into_iter()
        .map(|r| r.program)
        .collect())
}

/// The module operation's one block.
fn body<'c, 'a>(module: &OperationRef<'c, 'a>) -> Result<BlockRef<'c, 'a>, String> {
    module
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| "the module has no body".to_string())
}

/// `read_programs`, with each program's rank pieces.
pub fn read_programs_marked(module: &OperationRef) -> Result<Vec<ReadProgram>, String> {
    let grid = read_grid(module)?;
    // A `kernels` module's kernels and plans are read beside its programs (`adopt_kernels`),
    // and a `ptx` module's kernels are binaries (`codegen::ptx::read_ptx`).
    let stage = crate::core::header::IrHeader::read(module).map(|h| h.stage);
    let kernels = stage.is_ok_and(|s| s == "kernels" || s == "ptx");
    let mut programs = Vec::new();
    let mut next = body(module)?.first_operation();
    while let Some(op) = next {
        next = op.next_in_block();
        match op_name(&op).as_str() {
            "func.func" if kernels && op.attribute(PLAN_OF).is_ok() => {}
            "gpu.module" | "gpu.binary" if kernels => {}
            "func.func" => programs.push(read_function(&op, grid)?),
            // The grid the later stages' collectives name: read above.
            "shard.grid" => {}
            other => {
                return Err(format!(
                    "the module holds '{other}'; expected func.func (and, at stages 'kernels' and 'ptx', its kernels)"
                ))
            }
        }
    }
    if programs.is_empty() {
        return Err("the module holds no func.func".into());
    }
    Ok(programs)
}

/// The module's `shard.grid @grid(shape = DxPxT)`: ppmoe's grid (dp, pp, tp), or 1 x 1 x 1
/// where the module has none (the `core` and `moe` stages).
pub fn read_grid(module: &OperationRef) -> Result<Grid, String> {
    let mut next = body(module)?.first_operation();
    while let Some(op) = next {
        next = op.next_in_block();
        if op_name(&op) != "shard.grid" {
            continue;
        }
        let shape = op.attribute("shape").ok().and_then(i64_list);
        let ranks = |d: &[i64]| {
            d.iter()
                .try_fold(1i64, |n, &x| n.checked_mul(x).filter(|_| x > 0))
                .filter(|&n| n <= MAX_RANKS)
        };
        return match shape.as_deref() {
            Some(d @ &[dp, pp, tp]) if ranks(d).is_some() => Ok(Grid {
                dp: dp as usize,
                pp: pp as usize,
                tp: tp as usize,
            }),
            _ => Err(format!(
                "shard.grid: expected a shape of three sizes, dp x pp x tp, of at most {MAX_RANKS} ranks"
            )),
        };
    }
    Ok(Grid::ONE)
}

/// `f` as a program of the rank its name gives (`@rank<N>`).
fn read_function(f: &OperationRef, grid: Grid) -> Result<ReadProgram, String> {
    let name = f
        .attribute("sym_name")
        .ok()
        .and_then(attribute_text)
        .unwrap_or_default();
    let rank = (name.strip_prefix("rank"))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| format!("function @{name}: expected @rank<N>"))?;
    let at = |what: String| format!("@{name}: {what}");
    let mut reader = FunctionReader {
        program: Program {
            rank,
            weights_file: format!("rank{rank}.safetensors"),
            ..Program::empty()
        },
        values: HashMap::new(),
        empties: HashSet::new(),
        known: Known::default(),
        ops: Vec::new(),
        depth: 0,
        rank: 0,
        grid: Grid::ONE,
    };
    let block = f
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .ok_or_else(|| at("no body".into()))?;
    let arg_attrs = list(f, "arg_attrs");
    let mut rank_pieces = HashSet::new();
    for i in 0..block.argument_count() {
        let arg = block.argument(i).map_err(|e| at(e.to_string()))?;
        let dict = arg_attrs.get(i).copied();
        let field = |k: &str| {
            dict.and_then(|d| dictionary_field(d, k))
                .and_then(attribute_text)
        };
        let (kind, buffer_name) = match (field("core.input"), field("core.weight")) {
            (Some(n), None) => (BufferKind::Input, n),
            (None, Some(n)) => (BufferKind::Weight, n),
            _ => {
                return Err(at(format!(
                    "argument {i} names neither core.input nor core.weight"
                )))
            }
        };
        let id = reader
            .add(buffer_name, kind, arg.r#type(), handle(arg))
            .map_err(|e| at(format!("argument {i}: {e}")))?;
        if kind == BufferKind::Input {
            reader.program.inputs.push(id);
        }
        if dict.and_then(|d| dictionary_field(d, RANK_PIECE)).is_some() {
            rank_pieces.insert(reader.program.buffers[id].name.clone());
        }
    }
    if rank >= grid.size() {
        return Err(at(format!(
            "rank {rank} is outside the grid of {} ranks",
            grid.size()
        )));
    }
    reader.rank = rank;
    reader.grid = grid;
    let mut index = 0;
    match reader.read_block(block, &mut index).map_err(at)? {
        BlockEnd::Return(ret) => reader
            .outputs(&ret, &list(f, "res_attrs"))
            .map_err(|e| at(format!("func.return: {e}")))?,
        BlockEnd::Yield(_) => return Err(at("scf.yield outside an scf.if".into())),
    }
    let mut p = reader.program;
    if let Ok(coords) = f.attribute("ppmoe.coords") {
        let c = i64_list(coords).ok_or_else(|| at("ppmoe.coords is not array<i64>".into()))?;
        match c.as_slice() {
            &[d, s, t] => p.coords = [d, s, t].map(|x| x.max(0) as usize),
            _ => return Err(at("ppmoe.coords needs three coordinates".into())),
        }
    }
    Ok(ReadProgram {
        program: p,
        rank_pieces,
        ops: reader.ops,
    })
}

struct FunctionReader {
    program: Program,
    /// Each SSA value (by its MLIR handle) as a buffer.
    values: HashMap<usize, BufferId>,
    /// The values that are no buffer: a destination (`tensor.empty`, a matmul's zero fill), a
    /// reshape's shape, a receive's operand.
    empties: HashSet<usize>,
    known: Known,
    /// Each instruction's op, by its handle.
    ops: Vec<usize>,
    /// How many `scf.if` branches the op being read is inside.
    depth: usize,
    rank: usize,
    grid: Grid,
}

/// What the reader knows of the values that are no tensors: index values (a partitioned
/// function's process index, the grid's sizes, constants), their comparisons, the zero
/// constants and the zero fills.
#[derive(Default)]
struct Known {
    indices: HashMap<usize, i64>,
    conditions: HashMap<usize, bool>,
    zero_scalars: HashSet<usize>,
    zero_fills: HashSet<usize>,
    /// Float constants and the fills made of them: a reduction's destination must be a fill
    /// of its identity.
    scalars: HashMap<usize, f64>,
    fills: HashMap<usize, f64>,
    /// Integer constants and their fills, exactly (an integer reduction's identity is an
    /// extreme of its type, which f64 does not hold).
    integer_scalars: HashMap<usize, i64>,
    integer_fills: HashMap<usize, i64>,
}

/// How a block ends: the function's `func.return`, or an `scf.if` branch's `scf.yield` (its
/// operands' handles).
enum BlockEnd<'c, 'a> {
    Return(OperationRef<'c, 'a>),
    Yield(Vec<usize>),
}

/// A value's identity while its module lives (its MLIR handle), to key what is known of it.
pub(crate) fn handle<'c>(v: impl ValueLike<'c>) -> usize {
    v.to_raw().ptr as usize
}

impl FunctionReader {
    /// Reads `block`'s ops as instructions (`index` counts them, for the errors) up to its
    /// terminator.
    fn read_block<'c, 'a>(
        &mut self,
        block: BlockRef<'c, 'a>,
        index: &mut usize,
    ) -> Result<BlockEnd<'c, 'a>, String> {
        let mut next = block.first_operation();
        while let Some(op) = next {
            next = op.next_in_block();
            let name = op_name(&op);
            let at = *index;
            let here = |e: String| format!("op {at} ({name}): {e}");
            match name.as_str() {
                "func.return" => return Ok(BlockEnd::Return(op)),
                "scf.yield" => return Ok(BlockEnd::Yield(op.operands().map(handle).collect())),
                "scf.if" => self.branch(&op, index).map_err(here)?,
                _ if self.index_op(&op, &name).map_err(here)? => {}
                "tensor.expand_shape" => self.gather_indices(&op).map_err(here)?,
                // A receive's operand (ppmoe's runtime needs none), an upstream op's
                // destination or a reshape's shape: not an instruction.
                _ if OPERAND_ONLY.contains(&name.as_str()) => {
                    self.operand_only(&op, &name).map_err(here)?
                }
                _ => {
                    self.instruction(&op, *index).map_err(here)?;
                    *index += 1;
                }
            }
        }
        Err("a block without its terminator".into())
    }

    /// An op on index values that `shard-partition` writes (the process's index, the grid's
    /// size, their comparison), evaluated for this rank; false where `op` is none of them.
    fn index_op(&mut self, op: &OperationRef, name: &str) -> Result<bool, String> {
        let result = || op.result(0).map(handle).map_err(|e| e.to_string());
        let axes = || {
            op.attribute("axes")
                .ok()
                .and_then(i16_list)
                .filter(|a| a.len() == 1)
                .and_then(|a| usize::try_from(a[0]).ok().filter(|&x| x < 3))
                .ok_or_else(|| format!("'{name}': expected one axis of the grid"))
        };
        let value = match name {
            "shard.process_multi_index" => self.grid.coords(self.rank)[axes()?] as i64,
            "shard.grid_shape" => {
                let Grid { dp, pp, tp } = self.grid;
                [dp, pp, tp][axes()?] as i64
            }
            "arith.constant" if op.result(0).is_ok_and(|r| r.r#type().is_index()) => op
                .attribute("value")
                .ok()
                .and_then(|a| IntegerAttribute::try_from(a).ok())
                .map(|i| i.value())
                .ok_or("an index constant without its value")?,
            "arith.cmpi" => {
                let operand = |k| {
                    op.operand(k)
                        .ok()
                        .and_then(|v| self.known.indices.get(&handle(v)).copied())
                        .ok_or("arith.cmpi of an index value not known at this rank")
                };
                let (a, b) = (operand(0)?, operand(1)?);
                let holds = match op
                    .attribute("predicate")
                    .ok()
                    .and_then(|p| IntegerAttribute::try_from(p).ok().map(|i| i.value()))
                {
                    Some(0) => a == b,
                    Some(1) => a != b,
                    _ => return Err("arith.cmpi: only eq and ne are read".into()),
                };
                self.known.conditions.insert(result()?, holds);
                return Ok(true);
            }
            _ => return Ok(false),
        };
        self.known.indices.insert(result()?, value);
        Ok(true)
    }

    /// An `scf.if` on a condition known at this rank: the branch taken read in its place, its
    /// results the values that branch yields.
    fn branch(&mut self, op: &OperationRef, index: &mut usize) -> Result<(), String> {
        if self.depth >= MAX_BRANCH_DEPTH {
            return Err(format!("scf.if nested deeper than {MAX_BRANCH_DEPTH}"));
        }
        let condition = op
            .operand(0)
            .ok()
            .and_then(|c| self.known.conditions.get(&handle(c)).copied())
            .ok_or("scf.if on a condition not known at this rank")?;
        let region = op
            .region(if condition { 0 } else { 1 })
            .map_err(|e| e.to_string())?;
        let block = region.first_block().ok_or("scf.if without that branch")?;
        self.depth += 1;
        let end = self.read_block(block, index);
        self.depth -= 1;
        let BlockEnd::Yield(yielded) = end? else {
            return Err("func.return inside scf.if".into());
        };
        for (k, result) in op.results().enumerate() {
            let from = *yielded
                .get(k)
                .ok_or("scf.yield of fewer values than results")?;
            let to = handle(result);
            if let Some(&b) = self.values.get(&from) {
                self.values.insert(to, b);
            } else if self.empties.contains(&from) {
                self.empties.insert(to);
                if self.known.zero_fills.contains(&from) {
                    self.known.zero_fills.insert(to);
                }
            } else {
                return Err("scf.yield of a value defined outside the function".into());
            }
        }
        Ok(())
    }

    /// An `arith.extf` marked `ppmoe.widens`: its half-precision operand extended to f32 for
    /// the one op that reads it, a softmax, which ppmoe computes in f32; read as that operand
    /// (the softmax's instruction takes the half-precision buffer).
    fn widen(&mut self, op: &OperationRef) -> Result<(), String> {
        let fits = |(half, from): Typed, (wide, to): Typed, readers: &[OperationRef], _| {
            let reads_widened = |r: &OperationRef| {
                let name = op_name(r);
                WIDENED_READERS.contains(&name.as_str())
                    || (name == "tensor.extract_slice" && r.has_attribute(super::token_slice::MARK))
            };
            let one_reader = matches!(readers, [r] if reads_widened(r));
            let types = matches!(half, DType::BF16 | DType::F16) && wide == DType::F32;
            one_reader && types && from == to
        };
        self.read_as_its_operand(
            op,
            fits,
            "ppmoe.widens extends a half-precision operand to f32 for the one op that reads it (a linalg.softmax, a linalg.map, a token slice's tensor.extract_slice), as ppmoe prints it",
        )
    }

    /// A `tensor.expand_shape` that appends a unit axis to a gather's indices (as ppmoe prints
    /// a gather: `upstream::Upstream::Gather`): read as the indices it expands, which the
    /// gather's instruction takes. Any other is refused by name.
    fn gather_indices(&mut self, op: &OperationRef) -> Result<(), String> {
        let fits = |(x, from): Typed, (y, to): Typed, readers: &[OperationRef], result| {
            let appended = (from.iter().copied().chain([Some(1)])).eq(to.iter().copied());
            let gathers = !readers.is_empty()
                && readers.iter().all(|r| {
                    op_name(r) == "tensor.gather" && r.operand(1).map(handle).ok() == Some(result)
                });
            x == y && appended && gathers
        };
        self.read_as_its_operand(
            op,
            fits,
            "'tensor.expand_shape': ppmoe reads one only as a tensor.gather's indices with a unit axis appended",
        )
    }

    /// An op that makes the operand of the ops that read it in the form their upstream op takes
    /// (`widen`, `gather_indices`): read as its own operand (no instruction), where `fits`
    /// holds of its operand's and result's types, its readers and its result's handle; else
    /// refused with `refusal`.
    fn read_as_its_operand(
        &mut self,
        op: &OperationRef,
        fits: impl Fn(Typed, Typed, &[OperationRef], usize) -> bool,
        refusal: &str,
    ) -> Result<(), String> {
        let (Ok(from), Ok(to)) = (op.operand(0), op.result(0)) else {
            return Err(refusal.into());
        };
        let (x, y) = (tensor_type(from.r#type())?, tensor_type(to.r#type())?);
        let readers = users(to.into());
        if !fits((x.0, &x.1), (y.0, &y.1), &readers, handle(to)) {
            return Err(refusal.into());
        }
        let b =
            *(self.values.get(&handle(from))).ok_or("an operand defined outside the function")?;
        self.values.insert(handle(to), b);
        Ok(())
    }

    /// An op that only feeds upstream ops: a zero constant and a fill with it noted (a
    /// matmul's destination must be one; a fill of anything else is refused).
    fn operand_only(&mut self, op: &OperationRef, name: &str) -> Result<(), String> {
        let result = handle(op.result(0).map_err(|e| e.to_string())?);
        match name {
            "arith.constant" => {
                // A float, or an integer (an integer sum's start), as f64.
                let attribute = op.attribute("value").ok();
                let value = (attribute.and_then(|a| FloatAttribute::try_from(a).ok()))
                    .map(|f| f.value())
                    .or_else(|| {
                        (attribute.and_then(|a| IntegerAttribute::try_from(a).ok()))
                            .map(|i| i.value() as f64)
                    });
                if value == Some(0.0) {
                    self.known.zero_scalars.insert(result);
                }
                if let Some(value) = value {
                    self.known.scalars.insert(result, value);
                }
                if let Some(i) = attribute.and_then(|a| IntegerAttribute::try_from(a).ok()) {
                    self.known.integer_scalars.insert(result, i.value());
                }
            }
            "linalg.fill" => {
                let operand = |k| op.operand(k).map(handle).ok();
                let value = operand(0).and_then(|v| self.known.scalars.get(&v)).copied();
                let empty = operand(1).is_some_and(|v| self.empties.contains(&v));
                let Some(value) = value.filter(|_| empty && op.operand_count() == 2) else {
                    return Err("linalg.fill: ppmoe reads only a fill of a tensor.empty with a scalar constant (a matmul's or a reduction's start)".into());
                };
                if value == 0.0 {
                    self.known.zero_fills.insert(result);
                }
                self.known.fills.insert(result, value);
                let integer = operand(0).and_then(|v| self.known.integer_scalars.get(&v));
                if let Some(&i) = integer {
                    self.known.integer_fills.insert(result, i);
                }
            }
            _ => {}
        }
        self.empties.insert(result);
        Ok(())
    }

    fn add(
        &mut self,
        name: String,
        kind: BufferKind,
        ty: Type,
        value: usize,
    ) -> Result<BufferId, String> {
        let (dtype, shape) = tensor_type(ty)?;
        let id = self.program.buffers.len();
        self.program.buffers.push(Buffer {
            name,
            dtype,
            shape,
            kind,
        });
        self.values.insert(value, id);
        Ok(id)
    }

    fn instruction(&mut self, op: &OperationRef, index: usize) -> Result<(), String> {
        let full = op_name(op);
        if NARROWING.contains(&full.as_str()) && op.has_attribute("ppmoe.narrows") {
            return self.narrow(op);
        }
        if full == WIDENING && op.has_attribute("ppmoe.widens") {
            return self.widen(op);
        }
        if full == "linalg.generic" && (super::layer_norm::is_part(op) || super::top_k::is_part(op))
        {
            // A layer norm's row or a top-k's ranks, read as part of the instruction (which
            // checks it).
            let row = op.result(0).map_err(|e| e.to_string())?;
            self.empties.insert(handle(row));
            return Ok(());
        }
        if matches!(
            full.as_str(),
            "linalg.matmul" | "linalg.batch_matmul" | "linalg.contract"
        ) {
            let init = op.operand(op.operand_count().saturating_sub(1)).map(handle);
            if !init.is_ok_and(|v| self.known.zero_fills.contains(&v)) {
                return Err(
                    "a matmul adds its product to its destination: expected a zero linalg.fill"
                        .into(),
                );
            }
        }
        let result = op.result(0).ok().and_then(|r| tensor_type(r.r#type()).ok());
        let upstream = read_upstream(op, &full, result).transpose()?;
        if let Some(upstream) = &upstream {
            self.check_start(op, upstream)?;
        }
        let instruction_op = match (full.strip_prefix("shard."), upstream.clone()) {
            (Some(name), _) => shard_op(op, name, self.rank, self.grid)?,
            (None, Some(upstream)) => upstream,
            (None, None) => read_op(op, &full)?,
        };
        let is_send = matches!(instruction_op, Op::Send { .. });
        // A body's extract reads an operand from outside it (a one-hot's values, a gather's
        // data), a scatter's destination is its data: each of them an operand, none a
        // destination no instruction wrote.
        let operands = match super::captures::instruction_operands(op, &instruction_op) {
            Some(operands) => {
                let operands = operands?;
                if operands.iter().any(|v| self.empties.contains(&handle(*v))) {
                    return Err(format!(
                        "'{full}' read as {}: an operand of it is a destination no instruction writes (a tensor.empty or a fill)",
                        instruction_op.name()
                    ));
                }
                operands
            }
            None => op.operands().collect(),
        };
        let present: Vec<BufferId> = (operands.into_iter())
            .filter(|v| !self.empties.contains(&handle(*v)))
            .map(|v| {
                self.values
                    .get(&handle(v))
                    .copied()
                    .ok_or_else(|| "an operand defined outside the function".to_string())
            })
            .collect::<Result<_, _>>()?;
        // Upstream ops take every operand (linalg's segments are its inputs and destination).
        let inputs = if upstream.is_some() {
            present.into_iter().map(Some).collect()
        } else {
            with_absent(op, present)?
        };
        // A send's result (the shard dialect's) is nothing the runtime holds.
        let skipped = skipped_results(op);
        let results = if is_send {
            0
        } else {
            op.result_count() - skipped
        };
        let origin = location_names(op.location(), results).1;
        let mut outputs = Vec::new();
        for (k, result) in op.results().skip(skipped).take(results).enumerate() {
            // Unnamed (IR written by hand): named by the instruction's position.
            let name = result_name(result.into()).unwrap_or_else(|| format!("v{index}_{k}"));
            let id = self.add(name, BufferKind::Temp, result.r#type(), handle(result))?;
            outputs.push(id);
        }
        if let Op::ReduceAxes { axes, keepdims, .. } = &instruction_op {
            self.check_reduction(&inputs, &outputs, axes, *keepdims)?;
        }
        self.ops.push(op.to_raw().ptr as usize);
        self.program.instructions.push(Instruction {
            op: instruction_op,
            inputs,
            outputs,
            origin,
        });
        Ok(())
    }

    /// The destinations a reduction-like generic `op`, read as `read`, starts from: a fill of
    /// a reduction's identity, a running sum's zero fill, an arg-max's zero fills (which its
    /// first step overwrites), whose best values (its first result, which the runtime does not
    /// make) nothing reads.
    fn check_start(&self, op: &OperationRef, read: &Op) -> Result<(), String> {
        let fill = |k: usize| {
            let v = op.operand(k).map(handle).ok();
            v.and_then(|v| self.known.fills.get(&v)).copied()
        };
        // Operand `k` of `p` is a fill of +0.0 (or an integer 0): -0.0 would start a float sum
        // elsewhere than ppmoe's.
        let zero = |p: &OperationRef, k: usize| {
            let v = p.operand(k).map(handle).ok();
            let start = v.and_then(|v| self.known.fills.get(&v));
            start.is_some_and(|s| s.to_bits() == 0.0f64.to_bits())
        };
        let parts = parts_of(op);
        match read {
            Op::ReduceAxes { f, .. } => {
                let (x, _) = tensor_type(op.operand(0).map_err(|e| e.to_string())?.r#type())?;
                if super::reduce::is_integer(x) {
                    let identity = super::reduce::integer_start(*f, x);
                    let v = op.operand(1).map(handle).ok();
                    if v.and_then(|v| self.known.integer_fills.get(&v)) != Some(&identity) {
                        return Err(format!(
                            "an integer reduction starts from its destination: expected a linalg.fill of {identity} for its {f:?}"
                        ));
                    }
                } else {
                    let identity = super::reduce::starts_from(*f);
                    if fill(1) != Some(identity) {
                        return Err(format!(
                            "a reduction starts from its destination: expected a linalg.fill of {identity} for its {f:?}"
                        ));
                    }
                }
            }
            Op::LayerNorm { .. } => {
                let starts =
                    matches!(&parts[..], [sum, squares] if zero(sum, 1) && zero(squares, 2));
                if !starts {
                    return Err("a layer norm's rows start from their destinations: expected zero linalg.fills".into());
                }
            }
            Op::TopKAxis { .. } => {
                let starts = matches!(&parts[..], [ranks] if zero(ranks, 2));
                if !zero(op, 2) || !zero(op, 3) || !starts {
                    return Err("a top-k's ranks and picks start from their destinations: expected zero linalg.fills".into());
                }
            }
            Op::CumSumAxis { .. } if !zero(op, 1) => {
                return Err(
                    "a running sum starts from its destination: expected a zero linalg.fill".into(),
                );
            }
            Op::ArgMax { .. } => {
                if !zero(op, 1) || !zero(op, 2) {
                    return Err("an arg-max's destinations: expected zero linalg.fills".into());
                }
                let best = op.result(0).map_err(|e| e.to_string())?;
                if !users(best.into()).is_empty() {
                    return Err("an arg-max's best values (its first result) are read; ppmoe makes only the positions".into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A reduction's axes name axes of its operand, in increasing order, and its result's
    /// shape is the operand's without them (or with them 1, keepdims): the type MLIR checked
    /// is the one the runtime will make.
    fn check_reduction(
        &self,
        inputs: &[Option<BufferId>],
        outputs: &[BufferId],
        axes: &[usize],
        keepdims: bool,
    ) -> Result<(), String> {
        let (Some(Some(x)), [out]) = (inputs.first(), outputs) else {
            return Err("a reduction takes one operand and makes one result".into());
        };
        let shape = &self.program.buffers[*x].shape;
        let ordered = axes.windows(2).all(|w| w[0] < w[1]);
        if axes.is_empty() || !ordered || axes.iter().any(|&a| a >= shape.len()) {
            return Err(format!(
                "reduction axes {axes:?} are not increasing axes of a rank-{} operand",
                shape.len()
            ));
        }
        let want: Vec<Option<usize>> = (shape.iter().enumerate())
            .filter(|(a, _)| keepdims || !axes.contains(a))
            .map(|(a, &d)| if axes.contains(&a) { Some(1) } else { d })
            .collect();
        let got = &self.program.buffers[*out].shape;
        if *got != want {
            let dims = |s: &[Option<usize>]| {
                let d: Vec<String> = s
                    .iter()
                    .map(|d| d.map_or("?".into(), |v| v.to_string()))
                    .collect();
                d.join("x")
            };
            return Err(format!(
                "a reduction over axes {axes:?} of {} gives {}, where its result type says {}",
                dims(shape),
                dims(&want),
                dims(got)
            ));
        }
        Ok(())
    }

    /// Checks that `op`, marked `ppmoe.narrows`, narrows buffer `b`, the result of the
    /// instruction just before it, as ppmoe prints: a cast of a collective's or a matmul's
    /// result, a truncation of an f32 reshape's or softmax's, an f32 truncation of an f64 sum, a mean's division and truncation of one (which
    /// makes the sum the mean).
    fn narrowed_instruction(&mut self, op: &OperationRef, b: BufferId) -> Result<(), String> {
        let name = op_name(op);
        let f32_result = (op.result(0).ok())
            .and_then(|r| tensor_type(r.r#type()).ok())
            .is_some_and(|(d, _)| d == DType::F32);
        let wide_f64 = self.program.buffers[b].dtype == DType::F64;
        let buffers = &self.program.buffers;
        let last = (self.program.instructions.last_mut()).filter(|ins| ins.outputs == [b]);
        let fits = match last.map(|ins| (&mut ins.op, &ins.inputs)) {
            Some((
                Op::AllReduce { .. } | Op::AllGather { .. } | Op::AllToAll { .. } | Op::MatMul,
                _,
            )) => name != "linalg.generic",
            Some((Op::ReshapeTo { .. } | Op::Softmax { .. } | Op::Unary { .. }, _)) => {
                name == "arith.truncf" && self.program.buffers[b].dtype == DType::F32
            }
            Some((Op::ReduceAxes { f, axes, .. }, inputs)) if *f == ReduceFn::Sum => {
                let x = inputs.first().copied().flatten();
                let count = x.and_then(|x| {
                    (axes.iter())
                        .map(|&a| buffers[x].shape.get(a).copied().flatten())
                        .product::<Option<usize>>()
                });
                match name.as_str() {
                    "arith.truncf" => wide_f64 && f32_result,
                    "linalg.generic" if count.is_some_and(|n| reduce::divides_by(op, n)) => {
                        *f = ReduceFn::Mean;
                        wide_f64
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !fits {
            return Err(
                "ppmoe.narrows narrows the result of the collective, matmul, f32 reshape, softmax or sum just before it as ppmoe prints it"
                    .into(),
            );
        }
        Ok(())
    }

    /// A cast marked `ppmoe.narrows` (see `print::narrowed`): folded into the collective or
    /// matmul before it, whose result becomes the cast's type and name. The wide result must
    /// have no other reader, which would read the narrowed buffer in its place.
    fn narrow(&mut self, op: &OperationRef) -> Result<(), String> {
        let wide = op.operand(0).map_err(|e| e.to_string())?;
        if users(wide).len() != 1 {
            return Err("ppmoe.narrows casts a result that other ops read too".into());
        }
        let from = handle(wide);
        let b = *self
            .values
            .get(&from)
            .ok_or("an operand defined outside the function")?;
        self.narrowed_instruction(op, b)?;
        let result = op.result(0).map_err(|e| e.to_string())?;
        let (dtype, shape) = tensor_type(result.r#type())?;
        let name = result_name(result.into());
        let buffer = &mut self.program.buffers[b];
        if shape != buffer.shape {
            return Err("ppmoe.narrows changes the element type only".into());
        }
        buffer.dtype = dtype;
        if let Some(name) = name {
            buffer.name = name;
        }
        self.values.insert(handle(result), b);
        Ok(())
    }

    fn outputs(&mut self, ret: &OperationRef, res_attrs: &[Attribute]) -> Result<(), String> {
        for (k, v) in ret.operands().enumerate() {
            let id = *self
                .values
                .get(&handle(v))
                .ok_or("an operand defined outside the function")?;
            let b = &mut self.program.buffers[id];
            if b.kind == BufferKind::Temp {
                b.kind = BufferKind::Output;
            }
            if let Some(name) = res_attrs
                .get(k)
                .and_then(|d| dictionary_field(*d, "core.output"))
                .and_then(attribute_text)
            {
                b.name = name;
            }
            self.program.outputs.push(id);
        }
        Ok(())
    }
}

/// The instruction a `core`, `moe` or upstream op reads back as (a `shard` op's depends on
/// the rank, and is not read here).
pub(crate) fn instruction_op(op: &OperationRef) -> Result<Op, String> {
    let name = op_name(op);
    let result = if op.result_count() > 0 {
        op.result(0).ok().and_then(|r| tensor_type(r.r#type()).ok())
    } else {
        None
    };
    match read_upstream(op, &name, result) {
        Some(read) => read,
        None => read_op(op, &name),
    }
}

/// The op an MLIR op prints: its attributes as the op's serde fields, under its name, or, for
/// the elementwise and reduction families, the name as the function (`core.add`).
fn read_op(op: &OperationRef, full: &str) -> Result<Op, String> {
    let Some((dialect, name)) = full.split_once('.') else {
        return Err("not a core or moe op".into());
    };
    if !matches!(dialect, "core" | "moe") {
        return Err(format!(
            "'{full}': only core and moe ops read back so far (IR printed at the core and moe stages)"
        ));
    }
    let mut fields = serde_json::Map::new();
    for (key, value) in op.attributes() {
        let key = identifier_text(key);
        if STRUCTURAL.contains(&key.as_str()) || (full == "moe.dispatch" && key == STRATEGY) {
            continue;
        }
        let json = attribute_json(value)
            .ok_or_else(|| format!("attribute '{key}' is of a kind no op field takes"))?;
        fields.insert(key, json);
    }
    let with_tag = |tag: &str, f: Option<&str>| {
        let mut m = fields.clone();
        m.insert("op".into(), tag.into());
        if let Some(f) = f {
            m.insert("f".into(), f.into());
        }
        serde_json::from_value::<Op>(serde_json::Value::Object(m))
    };
    let tag = match name {
        "route" | "experts" | "local_slice" | "expert_ffn" | "scatter_combine" | "dispatch"
        | "combine" => format!("moe_{name}"),
        _ => name.to_string(),
    };
    let named = with_tag(&tag, None);
    let candidates = [
        named.as_ref().ok().cloned(),
        with_tag("unary", Some(name)).ok(),
        with_tag("binary", Some(name)).ok(),
        // Over static axes (an `axes` attribute, no `noop_with_empty_axes`) or an operand's.
        name.strip_prefix("reduce_")
            .and_then(|f| with_tag("reduce_axes", Some(f)).ok()),
        name.strip_prefix("reduce_")
            .and_then(|f| with_tag("reduce", Some(f)).ok()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|o| o.dialect() == dialect && o.name() == name)
        .ok_or_else(|| match named {
            // The op exists under this name: what serde said of its attributes.
            Err(e) if !e.to_string().contains(&format!("unknown variant `{tag}`")) => {
                format!("'{full}': {e}")
            }
            _ => format!("no op '{full}' in ppmoe's {dialect} ops"),
        })
}

/// A `shard` op as the runtime's collective or pipeline message: the TP group of `rank` on
/// `grid` (collectives run over grid axis 2), or the peer at the named stage (axis 1) with
/// the rank's own dp and tp coordinates, and the tag that pairs the two (`ppmoe.tag`).
fn shard_op(op: &OperationRef, name: &str, rank: usize, grid: Grid) -> Result<Op, String> {
    let int = |key: &str| -> Result<usize, String> {
        op.attribute(key)
            .ok()
            .and_then(|a| IntegerAttribute::try_from(a).ok())
            .and_then(|i| usize::try_from(i.value()).ok())
            .ok_or_else(|| format!("'{key}' is not a count"))
    };
    let peer = |key: &str| -> Result<usize, String> {
        let stage = op
            .attribute(key)
            .ok()
            .and_then(i64_list)
            .and_then(|v| v.first().copied())
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s < grid.pp)
            .ok_or_else(|| format!("'{key}' is not a stage of the grid"))?;
        let [d, _, t] = grid.coords(rank);
        Ok(grid.rank(d, stage, t))
    };
    let group = grid.tp_group(rank);
    Ok(match name {
        "all_reduce" => Op::AllReduce { group },
        "all_gather" => Op::AllGather {
            group,
            axis: int("gather_axis")?,
        },
        "all_to_all" => Op::AllToAll {
            group,
            split_axis: int("split_axis")?,
            concat_axis: int("concat_axis")?,
        },
        "send" => Op::Send {
            peer: peer("destination")?,
            tag: int("ppmoe.tag")? as u64,
        },
        "recv" => Op::Recv {
            peer: peer("source")?,
            tag: int("ppmoe.tag")? as u64,
        },
        other => return Err(format!("shard.{other} is not an op ppmoe's programs hold")),
    })
}

/// The instruction's inputs with its optional operands' absences put back: by segment sizes
/// (`moe.experts`, `moe.expert_ffn`) or by the listed positions (`core.absent_inputs`).
pub(crate) fn with_absent<T>(op: &OperationRef, present: Vec<T>) -> Result<Vec<Option<T>>, String> {
    let count = present.len();
    let mut present = present.into_iter();
    if let Ok(segments) = op.attribute("operandSegmentSizes") {
        let sizes = melior::ir::attribute::DenseI32ArrayAttribute::try_from(segments)
            .map_err(|_| "operandSegmentSizes is not array<i32>")?;
        return (0..sizes.len())
            .map(|i| match sizes.element(i) {
                Ok(0) => Ok(None),
                Ok(1) => Ok(present.next()),
                _ => Err("operandSegmentSizes: each segment is 0 or 1".to_string()),
            })
            .collect();
    }
    let absent = match op.attribute("core.absent_inputs") {
        Ok(a) => i64_list(a).ok_or("core.absent_inputs is not array<i64>")?,
        Err(_) => vec![],
    };
    let total = count + absent.len();
    Ok((0..total)
        .map(|k| {
            if absent.contains(&(k as i64)) {
                None
            } else {
                present.next()
            }
        })
        .collect())
}

/// The names an op's location gives its results, and the source node it came from:
/// `loc("name"("node"))` for one result, `loc(fused["a"("node"), "b"("node")])` for several,
/// `loc("node")` for none. Anything else (IR written by hand) names nothing.
pub(crate) fn location_names(loc: Location, results: usize) -> (Vec<String>, String) {
    let named = |l: Location| -> Option<(String, String)> {
        if !l.is_name() {
            return None;
        }
        let name = identifier_text(l.name_value());
        let child = l.name_child_location();
        let origin = if child.is_name() {
            identifier_text(child.name_value())
        } else {
            String::new()
        };
        Some((name, origin))
    };
    if results == 0 {
        return (vec![], named(loc).map(|(n, _)| n).unwrap_or_default());
    }
    let parts: Vec<Location> = if loc.is_fused() {
        (0..loc.fused_num_locations())
            .map(|i| loc.fused_location(i))
            .collect()
    } else {
        vec![loc]
    };
    let pairs: Option<Vec<(String, String)>> = parts.into_iter().map(named).collect();
    match pairs {
        Some(p) if p.len() == results => {
            let origin = p[0].1.clone();
            (p.into_iter().map(|(n, _)| n).collect(), origin)
        }
        _ => (vec![], String::new()),
    }
}

/// The name an op's result reads back as, where its location gives one: a narrowing cast's
/// own, else the name of what it narrows; an op's, counting only the results the runtime holds
/// (not an arg-max's best values, nor a send's result). `None` for a block argument, a result
/// the runtime does not hold, or an op whose location names nothing (IR written by hand: the
/// reader then names the buffer by its instruction's position).
pub(crate) fn result_name(v: Value) -> Option<String> {
    let result = OperationResult::try_from(v).ok()?;
    let op = result.owner();
    let name = op_name(&op);
    if NARROWING.contains(&name.as_str()) && op.has_attribute("ppmoe.narrows") {
        let own = location_names(op.location(), 1).0.pop();
        return own.or_else(|| op.operand(0).ok().and_then(result_name));
    }
    let skipped = skipped_results(&op);
    let held = match name.as_str() {
        "shard.send" => 0,
        _ => op.result_count() - skipped,
    };
    let k = result.result_number().checked_sub(skipped)?;
    location_names(op.location(), held).0.into_iter().nth(k)
}

/// A ranked tensor type as a buffer's element type and shape (`?` unknown).
pub(crate) fn tensor_type(ty: Type) -> Result<(DType, Vec<Option<usize>>), String> {
    use melior::ir::r#type::{DimSize, ShapedTypeLike};
    let t = RankedTensorType::try_from(ty).map_err(|_| format!("{ty} is not a ranked tensor"))?;
    let dtype = element_dtype(&t.element().to_string())
        .ok_or_else(|| format!("{ty}: element type not one ppmoe holds"))?;
    let shape = (0..t.rank())
        .map(|i| match t.dim_size(i) {
            Ok(DimSize::Static(n)) => usize::try_from(n).map(Some).map_err(|e| e.to_string()),
            Ok(DimSize::Dynamic) => Ok(None),
            Err(e) => Err(e.to_string()),
        })
        .collect::<Result<_, _>>()?;
    Ok((dtype, shape))
}

/// The element type `print` writes for each of ppmoe's types (unsigned as `ui<N>`).
pub fn element_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "f64" => DType::F64,
        "i8" => DType::I8,
        "i16" => DType::I16,
        "i32" => DType::I32,
        "i64" => DType::I64,
        "ui8" => DType::U8,
        "ui16" => DType::U16,
        "ui32" => DType::U32,
        "ui64" => DType::U64,
        "i1" => DType::Bool,
        _ => return None,
    })
}

/// An attribute as the JSON value of the op field it prints: booleans, integers, floats,
/// strings and `array<i64>`.
fn attribute_json(a: Attribute) -> Option<serde_json::Value> {
    if let Ok(b) = BoolAttribute::try_from(a) {
        return Some(b.value().into());
    }
    if let Ok(i) = IntegerAttribute::try_from(a) {
        return Some(i.value().into());
    }
    if let Ok(f) = FloatAttribute::try_from(a) {
        return serde_json::Number::from_f64(f.value()).map(Into::into);
    }
    if let Some(s) = attribute_text(a) {
        return Some(s.into());
    }
    i64_list(a).map(Into::into)
}

pub(crate) fn i64_list(a: Attribute) -> Option<Vec<i64>> {
    let d = DenseI64ArrayAttribute::try_from(a).ok()?;
    (0..d.len()).map(|i| d.element(i).ok()).collect()
}

/// An `array<i16: ...>` attribute's values (the `shard` dialect's grid axes), which melior
/// has no type for.
fn i16_list(a: Attribute) -> Option<Vec<i64>> {
    let raw = a.to_raw();
    // SAFETY: `raw` is a live attribute of this context; the element reads are bounded by
    // the count MLIR gives, and only after MLIR says the attribute is a dense i16 array.
    unsafe {
        if !mlir_sys::mlirAttributeIsADenseI16Array(raw) {
            return None;
        }
        let n = mlir_sys::mlirDenseArrayGetNumElements(raw);
        Some(
            (0..n)
                .map(|i| i64::from(mlir_sys::mlirDenseI16ArrayGetElement(raw, i)))
                .collect(),
        )
    }
}

/// A string attribute's text (empty strings included, which melior's own accessor cannot
/// read).
pub fn attribute_text(a: Attribute) -> Option<String> {
    let s = StringAttribute::try_from(a).ok()?;
    // SAFETY: the attribute is a string attribute (checked above).
    Some(string_ref(unsafe {
        mlir_sys::mlirStringAttrGetValue(s.to_raw())
    }))
}

/// A dictionary attribute's entries, in order.
pub fn dictionary_entries(a: Attribute) -> Option<Vec<(String, Attribute)>> {
    let d = DictionaryAttribute::try_from(a).ok()?;
    (0..d.len())
        .map(|i| d.element(i).ok().map(|(k, v)| (identifier_text(k), v)))
        .collect()
}

fn dictionary_field<'c>(d: Attribute<'c>, key: &str) -> Option<Attribute<'c>> {
    DictionaryAttribute::try_from(d).ok()?.element_by_name(key)
}

/// An op's array-of-dictionaries attribute (`arg_attrs`, `res_attrs`) as a list.
fn list<'c>(op: &OperationRef<'c, '_>, name: &str) -> Vec<Attribute<'c>> {
    let Ok(a) = op.attribute(name) else {
        return vec![];
    };
    let Ok(array) = melior::ir::attribute::ArrayAttribute::try_from(a) else {
        return vec![];
    };
    (0..array.len())
        .filter_map(|i| array.element(i).ok())
        .collect()
}

/// The op of each operand that reads `value`, in its use list's order (an op once per operand
/// that reads it).
pub(crate) fn users<'c, 'a>(value: melior::ir::Value<'c, 'a>) -> Vec<OperationRef<'c, 'a>> {
    let mut owners = Vec::new();
    // SAFETY: walking the live use list of a value of a live function.
    let mut use_ = unsafe { mlir_sys::mlirValueGetFirstUse(value.to_raw()) };
    while !unsafe { mlir_sys::mlirOpOperandIsNull(use_) } {
        // SAFETY: a use's owner is a live op of the function.
        owners.push(unsafe { OperationRef::from_raw(mlir_sys::mlirOpOperandGetOwner(use_)) });
        // SAFETY: as above.
        use_ = unsafe { mlir_sys::mlirOpOperandGetNextUse(use_) };
    }
    owners
}

/// The ops read as part of `op`'s instruction, which it reads: a layer norm's rows, a
/// top-k's ranks.
pub(crate) fn parts_of<'c, 'a>(op: &OperationRef<'c, 'a>) -> Vec<OperationRef<'c, 'a>> {
    let mut parts = super::layer_norm::parts(op);
    parts.extend(super::top_k::parts(op));
    parts
}

/// How many of `op`'s results come before those its instruction makes (which the runtime does
/// not hold): an arg-max generic's best values.
pub(crate) fn skipped_results(op: &OperationRef) -> usize {
    let arg_max = op_name(op) == "linalg.generic" && super::arg_max::is_arg_max(op);
    usize::from(arg_max)
}

pub(crate) fn op_name(op: &OperationRef) -> String {
    identifier_text(op.name())
}

fn identifier_text(id: melior::ir::Identifier) -> String {
    // SAFETY: an identifier of a live context.
    string_ref(unsafe { mlir_sys::mlirIdentifierStr(id.to_raw()) })
}

/// MLIR's string reference as an owned string; empty references have no data to read.
pub(crate) fn string_ref(r: MlirStringRef) -> String {
    if r.length == 0 || r.data.is_null() {
        return String::new();
    }
    // SAFETY: MLIR guarantees `length` bytes at `data` for as long as the context lives.
    let bytes = unsafe { std::slice::from_raw_parts(r.data as *const u8, r.length) };
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::element_dtype;
    use crate::core::header::{IrHeader, WeightSource};
    use crate::core::print::element_type;
    use crate::passes::raise_moe::CapacityPolicy;
    use ppmoe_runtime::DType;

    #[test]
    fn every_element_type_reads_back_as_itself() {
        use DType::*;
        for d in [
            F32, F16, BF16, F64, I8, I16, I32, I64, U8, U16, U32, U64, Bool,
        ] {
            assert_eq!(element_dtype(element_type(d)), Some(d), "{d:?}");
        }
    }

    #[test]
    fn a_header_reads_back_as_written() {
        let header = IrHeader {
            stage: "moe".into(),
            source: WeightSource {
                model: "/m/a \"b\".onnx".into(),
                weights: Some("/m/w.safetensors".into()),
                input_shapes: vec![("input.1".into(), vec![2, 16]), ("x".into(), vec![])],
                microbatches: 2,
                eval_limit: 1 << 20,
                capacity: CapacityPolicy::Dropless,
                strategy: Some("alltoall".into()),
                dtype: Some("bf16".into()),
                pipeline: Some("ppmoe-raise-moe{capacity=dropless}, ppmoe-shard{tp=2}".into()),
            },
        };
        let text = format!("module attributes {{{}}} {{\n}}\n", header.to_mlir());
        let context = ppmoe_dialect::context();
        let module = ppmoe_dialect::parse_verified(&context, &text).unwrap();
        let mut read = IrHeader::read(&module.as_operation()).unwrap();
        // A dictionary's entries come back sorted by name.
        read.source.input_shapes.sort();
        let mut want = header.clone();
        want.source.input_shapes.sort();
        assert_eq!(read, want);
    }
}
