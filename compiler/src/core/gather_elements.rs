//! A gather of elements along one axis (ONNX's GatherElements) of static shapes, printed as a
//! `linalg.generic` over the indices and read back from it. Each element of the result takes
//! the data at its own position but along the axis, where it takes its index, wrapped once where
//! negative (`index + n`, n the data's extent along the axis, as ppmoe wraps it); the data is
//! read from the body (`tensor.extract`, the one value it reads from outside: the instruction's
//! first operand, `captures`). An index out of range, which ppmoe refuses when it runs, reads
//! out of bounds here: the form is exact on the indices a model can have.
//!
//! ```text
//! %g = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>,
//!        affine_map<(d0, d1) -> (d0, d1)>], iterator_types = ["parallel", "parallel"]}
//!      ins(%ids : tensor<16x2xi64>) outs(%e : tensor<16x2xf32>) {
//!      ^bb0(%i: i64, %o: f32):
//!        %zero = arith.constant 0 : i64
//!        %negative = arith.cmpi slt, %i, %zero : i64
//!        %n = arith.constant 8 : i64
//!        %wrapped = arith.addi %i, %n : i64
//!        %index = arith.select %negative, %wrapped, %i : i64
//!        %at = arith.index_cast %index : i64 to index
//!        %row = linalg.index 0 : index
//!        %v = tensor.extract %data[%row, %at] : tensor<16x8xf32>
//!        linalg.yield %v : f32
//!      } -> tensor<16x2xf32>
//! ```

use super::body::{body_is, Step, Use};
use super::reduce::{iterator_list, strings, tensor, typed, PARALLEL};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{RegionLike, Value, ValueLike};
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

/// `arith.cmpi slt`.
const SLT: i64 = 2;
/// The body's steps before its loop indices (the index wrapped and cast).
const WRAP_STEPS: usize = 6;

/// The axis (from the front) along which ppmoe prints the gather `op` of `data` by `ids` into
/// `out` as a generic: i64 indices of the data's rank and static shapes, the result the
/// data's type in the indices' shape, no wider than the data off the axis.
pub fn printable(op: &Op, [data, ids]: [&Buffer; 2], out: &Buffer) -> Option<usize> {
    let Op::GatherElements { axis } = *op else {
        return None;
    };
    let rank = data.shape.len();
    let from_front = if axis < 0 { axis + rank as i64 } else { axis };
    let axis = usize::try_from(from_front).ok().filter(|&a| a < rank)?;
    let static_shapes = [data, ids, out]
        .iter()
        .all(|b| b.shape.iter().all(Option::is_some));
    let within = (0..rank).all(|d| d == axis || ids.shape.get(d) <= data.shape.get(d));
    let fits = static_shapes
        && ids.dtype == DType::I64
        && ids.shape.len() == rank
        && out.dtype == data.dtype
        && out.shape == ids.shape
        && within
        && data.shape[axis] != Some(0);
    fits.then_some(axis)
}

/// A body's first lines: its index (the block's first argument, `{g}_i`) wrapped once where
/// negative by the data's `extent` along the axis (`index + extent`, as ppmoe wraps ONNX's
/// indices) into `{g}_x`; a gather's and a scatter's.
pub(super) fn wrapped_index_lines(g: &str, extent: usize) -> Vec<String> {
    let u = "loc(unknown)";
    vec![
        format!("{g}_z = arith.constant 0 : i64 {u}"),
        format!("{g}_n = arith.cmpi slt, {g}_i, {g}_z : i64 {u}"),
        format!("{g}_e = arith.constant {extent} : i64 {u}"),
        format!("{g}_w = arith.addi {g}_i, {g}_e : i64 {u}"),
        format!("{g}_x = arith.select {g}_n, {g}_w, {g}_i : i64 {u}"),
    ]
}

/// The steps `wrapped_index_lines` print (the wrapped index the fifth's result).
pub(super) fn wrapped_index_steps(extent: i64) -> Vec<Step> {
    use Use::{Arg, Step as S};
    vec![
        Step::new("arith.constant", &[]).with("value", 0),
        Step::new("arith.cmpi", &[Arg(0), S(0)]).with("predicate", SLT),
        Step::new("arith.constant", &[]).with("value", extent),
        Step::new("arith.addi", &[Arg(0), S(2)]),
        Step::new("arith.select", &[S(1), S(3), Arg(0)]),
    ]
}

/// The identity map over `rank` loops (the indices' and the result's).
fn identity(rank: usize) -> String {
    let dims: Vec<String> = (0..rank).map(|d| format!("d{d}")).collect();
    format!("affine_map<({0}) -> ({0})>", dims.join(", "))
}

/// The lines instruction `i` prints as (see the module's comment): `operands` the names of its
/// data and indices, `result` its result's name, `loc` its location.
pub fn lines(
    (i, axis): (usize, usize),
    ([data, ids], [data_buffer, ids_buffer]): ([&str; 2], [&Buffer; 2]),
    result: &str,
    loc: &str,
) -> String {
    let rank = ids_buffer.shape.len();
    let element = data_buffer.dtype.mlir();
    let data_type = tensor(&data_buffer.shape, element);
    let ids_type = tensor(&ids_buffer.shape, "i64");
    let ty = tensor(&ids_buffer.shape, element);
    let extent = data_buffer.shape[axis].unwrap_or(0);
    let (g, u) = (format!("%g{i}"), "loc(unknown)");
    let mut body = wrapped_index_lines(&g, extent);
    body.push(format!("{g}_a = arith.index_cast {g}_x : i64 to index {u}"));
    let mut at = Vec::new();
    for d in 0..rank {
        if d == axis {
            at.push(format!("{g}_a"));
        } else {
            body.push(format!("{g}_k{d} = linalg.index {d} : index {u}"));
            at.push(format!("{g}_k{d}"));
        }
    }
    body.push(format!(
        "{g}_v = tensor.extract {data}[{}] : {data_type} {u}",
        at.join(", ")
    ));
    body.push(format!("linalg.yield {g}_v : {element} {u}"));
    format!(
        "    %d{i} = tensor.empty() : {ty} {u}\n    {result} = linalg.generic {{indexing_maps = [{0}, {0}], iterator_types = [{1}]}} ins({ids} : {ids_type}) outs(%d{i} : {ty}) {{\n    ^bb0({g}_i: i64 {u}, {g}_o: {element} {u}):\n      {2}\n    }} -> {ty} loc({loc})\n",
        identity(rank),
        iterator_list(&[PARALLEL; 1].repeat(rank)),
        body.join("\n      ")
    )
}

/// The body of a gather along `axis` of rank-`rank` tensors, `extent` the data's extent along
/// it, as ppmoe prints it.
fn body(rank: usize, axis: usize, extent: i64) -> Vec<Step> {
    use Use::{Outside, Step as S};
    let mut steps = wrapped_index_steps(extent);
    steps.push(Step::new("arith.index_cast", &[S(4)]));
    let mut at = vec![Outside];
    for d in 0..rank {
        if d == axis {
            at.push(S(WRAP_STEPS - 1));
        } else {
            at.push(S(steps.len()));
            steps.push(Step::new("linalg.index", &[]).with("dim", d as i64));
        }
    }
    let extract = steps.len();
    steps.push(Step::new("tensor.extract", &at));
    steps.push(Step::new("linalg.yield", &[S(extract)]));
    steps
}

/// Whether `op` (a `linalg.generic`) is of a gather's shape: one i64 input of the result's
/// shape, all loops parallel, a body that extracts from a tensor.
pub fn is_gather_elements(op: &OperationRef) -> bool {
    let ids = typed(op.operand(0)).ok();
    let result = typed(op.result(0).map(Into::into)).ok();
    let shaped = matches!((ids, result), (Some((DType::I64, i)), Some((_, r))) if i == r);
    let parallel = strings(op, "iterator_types").iter().all(|t| t == PARALLEL);
    let counts = op.operand_count() == 2 && op.result_count() == 1;
    counts && shaped && parallel && super::captures::extracts(op)
}

/// The data the gather `op` reads from outside its body (its extract's tensor).
pub fn data<'c, 'a>(op: &OperationRef<'c, 'a>) -> Option<Value<'c, 'a>> {
    let block = op.region(0).ok()?.first_block()?;
    let ops = crate::passes::func_ops::block_ops(block);
    let extract = ops
        .iter()
        .find(|o| super::read::op_name(o) == "tensor.extract")?;
    let data = extract.operand(0).ok()?;
    // SAFETY: the value is an operand of an op of `op`'s body, defined outside it (checked by
    // `read`), so it lives as long as `op`'s function.
    Some(unsafe { Value::from_raw(data.to_raw()) })
}

/// The gather a `linalg.generic` of `is_gather_elements`'s shape reads back as; its maps,
/// iterators, types and body must be the ones ppmoe prints.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let refuse = |what: &str| {
        format!("'linalg.generic' of i64 indices that extracts from a tensor (a gather of elements): {what}")
    };
    let (_, ids) = typed(op.operand(0))?;
    let (out, _) = typed(op.result(0).map(Into::into))?;
    let rank = ids.len();
    let read_maps = strings(op, "indexing_maps");
    if read_maps != [identity(rank), identity(rank)] {
        return Err(refuse(&format!(
            "indexing maps {read_maps:?} are no gather ppmoe prints"
        )));
    }
    let data = data(op).ok_or_else(|| refuse("no data"))?;
    let (element, data_shape) = super::read::tensor_type(data.r#type())?;
    if element != out || data_shape.len() != rank {
        return Err(refuse("its data is not of the result's type and rank"));
    }
    let axis = (0..rank).find(|&axis| {
        let extent = data_shape[axis].and_then(|n| i64::try_from(n).ok());
        extent.is_some_and(|n| body_is(op, &body(rank, axis, n)))
    });
    let axis = axis.ok_or_else(|| refuse("its body is not the indexed extract ppmoe prints"))?;
    Ok(Op::GatherElements { axis: axis as i64 })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{operand_names, program_of, round_trip};
    use ppmoe_runtime::program::{Op, Program};
    use ppmoe_runtime::DType;

    fn gather(dtype: DType, ids: &[usize], axis: i64) -> Program {
        let inputs = [("data", dtype, &[4, 6, 5][..]), ("ids", DType::I64, ids)];
        program_of(Op::GatherElements { axis }, &inputs, (dtype, ids))
    }

    /// A gather along each axis prints as a generic MLIR verifies and reads back as itself
    /// (its axis counted from the front), over the same two operands; indices wider than
    /// the data off the axis stay a `core` op.
    #[test]
    fn a_gather_of_elements_prints_as_a_generic_and_reads_back_as_itself() {
        for dtype in [DType::F32, DType::I64, DType::BF16] {
            for (axis, from_front) in [(0, 0), (1, 1), (-1, 2)] {
                let (text, read) = round_trip(&gather(dtype, &[4, 3, 2], axis));
                assert!(!text.contains("core.gather_elements"), "{text}");
                assert_eq!(read.instructions.len(), 1, "{text}");
                let want = Op::GatherElements { axis: from_front };
                assert_eq!(read.instructions[0].op, want, "{text}");
                assert_eq!(operand_names(&read), ["data", "ids"], "{text}");
            }
        }
        let (text, _) = round_trip(&gather(DType::F32, &[4, 7, 2], 2));
        assert!(text.contains("core.gather_elements"), "{text}");
    }
}
