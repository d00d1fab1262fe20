//! A gather along axis 0 of a half-precision table into f32 (a `--dtype bf16` build's token
//! embedding, whose table is held in bf16) or into the other half type (the same build of an
//! f16 model: a bf16 table into f16 activations), of static shapes and i64 indices, printed as
//! a `linalg.generic` over the indices and read back from it. Each element of the result takes
//! the table's row at its index (wrapped once where negative, as ppmoe wraps it), at its own
//! position along the table's other axes, widened to f32 (`arith.extf`, exact), as ppmoe
//! widens what it gathers, and into the other half type rounded to nearest even from there
//! (`arith.truncf`), as the runtime stores it (`Tensor::stored_as`). The table is read from the body (`tensor.extract`, the one value it
//! reads from outside: the instruction's first operand, `captures`). `tensor.gather` keeps the
//! table's element type, so a gather of one type stays `tensor.gather` (`upstream`).
//!
//! ```text
//! %e = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1)>,
//!        affine_map<(d0, d1, d2) -> (d0, d1, d2)>],
//!        iterator_types = ["parallel", "parallel", "parallel"]}
//!      ins(%ids : tensor<1x16xi64>) outs(%d : tensor<1x16x64xf32>) {
//!      ^bb0(%i: i64, %o: f32):
//!        (the index wrapped by the table's 128 rows, as a gather of elements wraps it)
//!        %row = arith.index_cast %index : i64 to index
//!        %col = linalg.index 2 : index
//!        %v = tensor.extract %table[%row, %col] : tensor<128x64xbf16>
//!        %w = arith.extf %v : bf16 to f32
//!        linalg.yield %w : f32
//!      } -> tensor<1x16x64xf32>
//! ```

use super::body::{body_is, Step, Use};
use super::gather_elements::{wrapped_index_lines, wrapped_index_steps};
use super::reduce::{iterator_list, strings, tensor, typed, PARALLEL};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{Value, ValueLike};
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

fn is_half(d: DType) -> bool {
    matches!(d, DType::BF16 | DType::F16)
}

/// Whether a half-precision `table`'s elements are gathered into `out` by this generic: into
/// f32, or into the other half type (through f32).
fn widens_to(table: DType, out: DType) -> bool {
    is_half(table) && (out == DType::F32 || (is_half(out) && out != table))
}

/// Whether ppmoe prints the gather `op` of `table` rows at `ids` into `out` as this generic:
/// axis 0 of a half-precision table of rank 2 or more, i64 indices, a result in f32 or the
/// other half type of the indices' shape followed by a row's, static shapes.
pub fn printable(op: &Op, [table, ids]: [&Buffer; 2], out: &Buffer) -> bool {
    let Op::Gather { axis } = *op else {
        return false;
    };
    let rank = table.shape.len();
    let first_axis = axis == 0 || axis == -(rank as i64);
    let static_shapes = [table, ids, out]
        .iter()
        .all(|b| b.shape.iter().all(Option::is_some));
    let made: Vec<Option<usize>> = (ids.shape.iter())
        .chain(table.shape.iter().skip(1))
        .copied()
        .collect();
    first_axis
        && rank >= 2
        && static_shapes
        && is_half(table.dtype)
        && ids.dtype == DType::I64
        && widens_to(table.dtype, out.dtype)
        && out.shape == made
        && table.shape[0] != Some(0)
}

/// The indices' map and the result's over the result's loops (`rank` of them, the first
/// `ids` the indices').
fn maps(rank: usize, ids: usize) -> [String; 2] {
    let dims: Vec<String> = (0..rank).map(|d| format!("d{d}")).collect();
    let map = |results: &[String]| {
        format!(
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            results.join(", ")
        )
    };
    [map(&dims[..ids]), map(&dims)]
}

/// The lines instruction `i` prints as (see the module's comment): `operands` the names of its
/// table and indices, `result` its result's name, `loc` its location.
pub fn lines(
    i: usize,
    ([table, ids], [table_buffer, ids_buffer]): ([&str; 2], [&Buffer; 2]),
    (result, out): (&str, &Buffer),
    loc: &str,
) -> String {
    let (rank, r) = (out.shape.len(), ids_buffer.shape.len());
    let half = table_buffer.dtype.mlir();
    let table_type = tensor(&table_buffer.shape, half);
    let ids_type = tensor(&ids_buffer.shape, "i64");
    let element = out.dtype.mlir();
    let ty = tensor(&out.shape, element);
    let extent = table_buffer.shape[0].unwrap_or(0);
    let (g, u) = (format!("%g{i}"), "loc(unknown)");
    let mut body = wrapped_index_lines(&g, extent);
    body.push(format!("{g}_a = arith.index_cast {g}_x : i64 to index {u}"));
    let mut at = vec![format!("{g}_a")];
    for d in r..rank {
        body.push(format!("{g}_k{d} = linalg.index {d} : index {u}"));
        at.push(format!("{g}_k{d}"));
    }
    body.push(format!(
        "{g}_v = tensor.extract {table}[{}] : {table_type} {u}",
        at.join(", ")
    ));
    body.push(format!("{g}_f = arith.extf {g}_v : {half} to f32 {u}"));
    let mut yielded = format!("{g}_f");
    if is_half(out.dtype) {
        body.push(format!("{g}_r = arith.truncf {g}_f : f32 to {element} {u}"));
        yielded = format!("{g}_r");
    }
    body.push(format!("linalg.yield {yielded} : {element} {u}"));
    let [ids_map, own] = maps(rank, r);
    format!(
        "    %d{i} = tensor.empty() : {ty} {u}\n    {result} = linalg.generic {{indexing_maps = [{ids_map}, {own}], iterator_types = [{}]}} ins({ids} : {ids_type}) outs(%d{i} : {ty}) {{\n    ^bb0({g}_i: i64 {u}, {g}_o: {element} {u}):\n      {}\n    }} -> {ty} loc({loc})\n",
        iterator_list(&[PARALLEL; 1].repeat(rank)),
        body.join("\n      ")
    )
}

/// The body of a gather into `rank` loops of `ids` indices from a table of `extent` rows;
/// `narrows`: into the other half type (the widened element rounded to it).
fn body(rank: usize, ids: usize, extent: i64, narrows: bool) -> Vec<Step> {
    use Use::{Outside, Step as S};
    let mut steps = wrapped_index_steps(extent);
    steps.push(Step::new("arith.index_cast", &[S(4)]));
    let mut at = vec![Outside, S(5)];
    for d in ids..rank {
        at.push(S(steps.len()));
        steps.push(Step::new("linalg.index", &[]).with("dim", d as i64));
    }
    let extract = steps.len();
    steps.push(Step::new("tensor.extract", &at));
    steps.push(Step::new("arith.extf", &[S(extract)]));
    if narrows {
        steps.push(Step::new("arith.truncf", &[S(extract + 1)]));
    }
    steps.push(Step::new("linalg.yield", &[S(steps.len() - 1)]));
    steps
}

/// Whether `op` (a `linalg.generic`) is of this gather's shape: one i64 input of fewer axes
/// than its float result (f32, bf16 or f16), all loops parallel, a body that extracts from a
/// tensor.
pub fn is_widening_gather(op: &OperationRef) -> bool {
    let ids = typed(op.operand(0)).ok();
    let result = typed(op.result(0).map(Into::into)).ok();
    let float = |d: DType| d == DType::F32 || is_half(d);
    let shaped = matches!((ids, result), (Some((DType::I64, i)), Some((d, r))) if i.len() < r.len() && float(d));
    let parallel = strings(op, "iterator_types").iter().all(|t| t == PARALLEL);
    let counts = op.operand_count() == 2 && op.result_count() == 1;
    counts && shaped && parallel && super::captures::extracts(op)
}

/// The table the gather `op` reads from outside its body (its extract's tensor).
pub fn table<'c, 'a>(op: &OperationRef<'c, 'a>) -> Option<Value<'c, 'a>> {
    super::gather_elements::data(op)
}

/// The gather a `linalg.generic` of `is_widening_gather`'s shape reads back as; its maps,
/// iterators, types and body must be the ones ppmoe prints.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let refuse = |what: &str| {
        format!("'linalg.generic' of i64 indices into a float result that extracts from a tensor (a widening gather): {what}")
    };
    let (_, ids) = typed(op.operand(0))?;
    let (out_type, out) = typed(op.result(0).map(Into::into))?;
    let (rank, r) = (out.len(), ids.len());
    if strings(op, "indexing_maps") != maps(rank, r) || out[..r] != ids[..] {
        return Err(refuse("its indexing maps are no gather ppmoe prints"));
    }
    let table = table(op).ok_or_else(|| refuse("no table"))?;
    let (element, shape) = super::read::tensor_type(table.r#type())?;
    let row: Vec<Option<usize>> = shape.iter().skip(1).copied().collect();
    if !widens_to(element, out_type) || shape.len() < 2 || out[r..] != row[..] {
        return Err(refuse(
            "its table is not a half-precision one of the result's rows, of another type",
        ));
    }
    let extent = shape[0].and_then(|n| i64::try_from(n).ok());
    let narrows = is_half(out_type);
    if !extent.is_some_and(|n| body_is(op, &body(rank, r, n, narrows))) {
        return Err(refuse("its body is not the widened extract ppmoe prints"));
    }
    Ok(Op::Gather { axis: 0 })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{operand_names, program_of, round_trip};
    use ppmoe_runtime::program::Op;
    use ppmoe_runtime::DType;

    /// A gather of bf16 and f16 tables' rows into f32 prints as a generic MLIR verifies and
    /// reads back as itself, over the same two operands; into the table's own type it stays
    /// `tensor.gather`.
    #[test]
    fn a_widening_gather_prints_as_a_generic_and_reads_back_as_itself() {
        for table in [DType::BF16, DType::F16] {
            for axis in [0, -2] {
                let inputs = [
                    ("table", table, &[8, 4][..]),
                    ("ids", DType::I64, &[2, 3][..]),
                ];
                let p = program_of(Op::Gather { axis }, &inputs, (DType::F32, &[2, 3, 4]));
                let (text, read) = round_trip(&p);
                assert!(
                    !text.contains("core.gather") && !text.contains("tensor.gather"),
                    "{text}"
                );
                assert_eq!(read.instructions[0].op, Op::Gather { axis: 0 }, "{text}");
                assert_eq!(operand_names(&read), ["table", "ids"], "{text}");
            }
        }
        // Into the other half type: widened, then rounded to it.
        for (table, out) in [(DType::BF16, DType::F16), (DType::F16, DType::BF16)] {
            let inputs = [
                ("table", table, &[8, 4][..]),
                ("ids", DType::I64, &[2, 3][..]),
            ];
            let p = program_of(Op::Gather { axis: 0 }, &inputs, (out, &[2, 3, 4]));
            let (text, read) = round_trip(&p);
            assert!(
                text.contains("arith.truncf") && !text.contains("gather\""),
                "{text}"
            );
            assert_eq!(read.instructions[0].op, Op::Gather { axis: 0 }, "{text}");
            assert_eq!(read.buffers[read.outputs[0]].dtype, out, "{text}");
        }
        let inputs = [
            ("table", DType::BF16, &[8, 4][..]),
            ("ids", DType::I64, &[2, 3][..]),
        ];
        let same = program_of(Op::Gather { axis: 0 }, &inputs, (DType::BF16, &[2, 3, 4]));
        assert!(round_trip(&same).0.contains("tensor.gather"));
    }
}
