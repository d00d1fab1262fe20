//! A scatter of elements along one axis (ONNX's ScatterElements) of static shapes, with no
//! reduction or a sum, printed as a `linalg.generic` and read back from it. Its loops are the
//! data's, then one `reduction` loop over the updates along the axis; it starts from the data
//! (its destination) and each step, where the update's index (wrapped once where negative, as
//! ppmoe wraps it) is the element's position along the axis, takes the update (or adds it).
//! Taking the updates in the loop's order is ppmoe's order, so where two updates hit one
//! element the later one wins (or the sum is ppmoe's). Upstream's `tensor.scatter` takes only
//! unique indices; the indices here must cover the data off the axis (no narrower).
//!
//! ```text
//! %s = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>,
//!        affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d0, d1)>],
//!        iterator_types = ["parallel", "parallel", "reduction"]}
//!      ins(%ids, %updates : tensor<16x1xi64>, tensor<16x1xf32>) outs(%data : tensor<16x4xf32>) {
//!      ^bb0(%i: i64, %u: f32, %acc: f32):
//!        %zero = arith.constant 0 : i64
//!        %negative = arith.cmpi slt, %i, %zero : i64
//!        %n = arith.constant 4 : i64
//!        %wrapped = arith.addi %i, %n : i64
//!        %index = arith.select %negative, %wrapped, %i : i64
//!        %k = linalg.index 1 : index
//!        %position = arith.index_cast %k : index to i64
//!        %hit = arith.cmpi eq, %index, %position : i64
//!        %r = arith.select %hit, %u, %acc : f32        (a sum: arith.addf %acc, %u first)
//!        linalg.yield %r : f32
//!      } -> tensor<16x4xf32>
//! ```

use super::body::{body_is, Step, Use};
use super::cum_sum::add_name;
use super::gather_elements::{wrapped_index_lines, wrapped_index_steps};
use super::reduce::{
    iterator_list, one_loop_more, one_loop_more_iterators, strings, tensor, typed,
};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::Value;
use ppmoe_runtime::program::{Buffer, Op, Reduction};
use ppmoe_runtime::DType;

/// `arith.cmpi eq`.
const EQ: i64 = 0;

/// The axis (from the front) along which ppmoe prints the scatter `op` of `updates` into
/// `data` at `ids` as a generic: f32 or i64 data and updates, i64 indices of the updates'
/// shape and the data's rank, as wide as the data off the axis, static shapes, no reduction or
/// a sum.
pub fn printable(op: &Op, [data, ids, updates]: [&Buffer; 3], out: &Buffer) -> Option<usize> {
    let Op::ScatterElements { axis, reduction } = *op else {
        return None;
    };
    let rank = data.shape.len();
    let from_front = if axis < 0 { axis + rank as i64 } else { axis };
    let axis = usize::try_from(from_front).ok().filter(|&a| a < rank)?;
    let static_shapes = [data, ids, updates, out]
        .iter()
        .all(|b| b.shape.iter().all(Option::is_some));
    let covers = (0..rank).all(|d| d == axis || ids.shape.get(d) == data.shape.get(d));
    let fits = static_shapes
        && matches!(data.dtype, DType::F32 | DType::I64)
        && matches!(reduction, Reduction::None | Reduction::Add)
        && ids.dtype == DType::I64
        && ids.shape.len() == rank
        && updates.shape == ids.shape
        && updates.dtype == data.dtype
        && out.dtype == data.dtype
        && out.shape == data.shape
        && covers;
    fits.then_some(axis)
}

/// The indices' and updates' map and the data's over the data's loops and one more (the
/// position along the axis among the updates).
fn maps(rank: usize, axis: usize) -> [String; 2] {
    let (along, own) = one_loop_more(rank, axis);
    [along, own]
}

/// The lines instruction `i` prints as (see the module's comment): `operands` the names of its
/// data, indices and updates, `result` its result's name, `loc` its location.
pub fn lines(
    (i, axis, sum): (usize, usize, bool),
    ([data, ids, updates], [data_buffer, ids_buffer]): ([&str; 3], [&Buffer; 2]),
    result: &str,
    loc: &str,
) -> String {
    let rank = data_buffer.shape.len();
    let element = data_buffer.dtype.mlir();
    let ty = tensor(&data_buffer.shape, element);
    let (ids_type, updates_type) = (
        tensor(&ids_buffer.shape, "i64"),
        tensor(&ids_buffer.shape, element),
    );
    let extent = data_buffer.shape[axis].unwrap_or(0);
    let [along, own] = maps(rank, axis);
    let (g, u) = (format!("%g{i}"), "loc(unknown)");
    let mut body = wrapped_index_lines(&g, extent);
    body.extend([
        format!("{g}_k = linalg.index {axis} : index {u}"),
        format!("{g}_p = arith.index_cast {g}_k : index to i64 {u}"),
        format!("{g}_h = arith.cmpi eq, {g}_x, {g}_p : i64 {u}"),
    ]);
    let taken = if sum {
        let add = add_name(data_buffer.dtype);
        body.push(format!("{g}_s = {add} {g}_a, {g}_u : {element} {u}"));
        format!("{g}_s")
    } else {
        format!("{g}_u")
    };
    body.push(format!(
        "{g}_r = arith.select {g}_h, {taken}, {g}_a : {element} {u}"
    ));
    body.push(format!("linalg.yield {g}_r : {element} {u}"));
    format!(
        "    {result} = linalg.generic {{indexing_maps = [{along}, {along}, {own}], iterator_types = [{}]}} ins({ids}, {updates} : {ids_type}, {updates_type}) outs({data} : {ty}) {{\n    ^bb0({g}_i: i64 {u}, {g}_u: {element} {u}, {g}_a: {element} {u}):\n      {}\n    }} -> {ty} loc({loc})\n",
        iterator_list(&one_loop_more_iterators(rank)),
        body.join("\n      ")
    )
}

/// The body of a scatter along `axis` of `extent` positions, of `dtype`, a sum or not, as
/// ppmoe prints it.
fn body(axis: usize, extent: i64, dtype: DType, sum: bool) -> Vec<Step> {
    use Use::{Arg, Step as S};
    let mut steps = wrapped_index_steps(extent);
    steps.extend([
        Step::new("linalg.index", &[]).with("dim", axis as i64),
        Step::new("arith.index_cast", &[S(5)]),
        Step::new("arith.cmpi", &[S(4), S(6)]).with("predicate", EQ),
    ]);
    let taken = if sum {
        steps.push(Step::new(add_name(dtype), &[Arg(2), Arg(1)]));
        S(8)
    } else {
        Arg(1)
    };
    let select = steps.len();
    steps.push(Step::new("arith.select", &[S(7), taken, Arg(2)]));
    steps.push(Step::new("linalg.yield", &[S(select)]));
    steps
}

/// The scatter `op` (a `linalg.generic`) reads back as, where it is one ppmoe prints: its
/// maps, iterators, types and body. None where it is not of a scatter's shape (two inputs of
/// one shape, the first i64, a destination of the result's type, one reduction loop more than
/// the destination's rank).
pub fn scatter(op: &OperationRef) -> Option<Op> {
    let (ids, shape) = typed(op.operand(0)).ok()?;
    let (updates, updates_shape) = typed(op.operand(1)).ok()?;
    let (data, data_shape) = typed(op.operand(2)).ok()?;
    let (out, out_shape) = typed(op.result(0).map(Into::into)).ok()?;
    let rank = data_shape.len();
    let typed_so = ids == DType::I64
        && matches!(data, DType::F32 | DType::I64)
        && updates == data
        && out == data
        && out_shape == data_shape
        && updates_shape == shape
        && shape.len() == rank;
    let loops = strings(op, "iterator_types") == one_loop_more_iterators(rank);
    if op.operand_count() != 3 || op.result_count() != 1 || !typed_so || !loops {
        return None;
    }
    let read_maps = strings(op, "indexing_maps");
    (0..rank).find_map(|axis| {
        let [along, own] = maps(rank, axis);
        let extent = data_shape[axis].and_then(|n| i64::try_from(n).ok())?;
        let covers = (0..rank).all(|d| d == axis || shape[d] == data_shape[d]);
        if read_maps != [along.clone(), along, own] || !covers {
            return None;
        }
        let sum = [false, true]
            .into_iter()
            .find(|&sum| body_is(op, &body(axis, extent, data, sum)))?;
        let reduction = if sum { Reduction::Add } else { Reduction::None };
        Some(Op::ScatterElements {
            axis: axis as i64,
            reduction,
        })
    })
}

/// The instruction's operands (data, indices, updates) of a scatter generic (its inputs are
/// the indices and the updates, its destination the data).
pub fn operands<'c, 'a>(op: &OperationRef<'c, 'a>) -> Result<Vec<Value<'c, 'a>>, String> {
    [2, 0, 1]
        .iter()
        .map(|&k| op.operand(k).map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{operand_names, program_of, round_trip};
    use ppmoe_runtime::program::{Op, Program, Reduction};
    use ppmoe_runtime::DType;

    fn scatter(dtype: DType, ids: &[usize], axis: i64, reduction: Reduction) -> Program {
        let data = &[4, 6, 5][..];
        let inputs = [
            ("data", dtype, data),
            ("ids", DType::I64, ids),
            ("updates", dtype, ids),
        ];
        program_of(
            Op::ScatterElements { axis, reduction },
            &inputs,
            (dtype, data),
        )
    }

    /// A scatter along each axis, with no reduction or a sum, prints as a generic MLIR
    /// verifies and reads back as itself (its axis counted from the front) over the same three
    /// operands; a product, or indices narrower than the data off the axis, stay `core` ops.
    #[test]
    fn a_scatter_of_elements_prints_as_a_generic_and_reads_back_as_itself() {
        let shapes = [(0, 0, [2, 6, 5]), (1, 1, [4, 3, 5]), (-1, 2, [4, 6, 2])];
        for dtype in [DType::F32, DType::I64] {
            for (axis, from_front, ids) in shapes {
                for reduction in [Reduction::None, Reduction::Add] {
                    let p = scatter(dtype, &ids, axis, reduction);
                    let (text, read) = round_trip(&p);
                    assert!(!text.contains("core.scatter_elements"), "{text}");
                    assert_eq!(read.instructions.len(), 1, "{text}");
                    let want = Op::ScatterElements {
                        axis: from_front,
                        reduction,
                    };
                    assert_eq!(read.instructions[0].op, want, "{text}");
                    assert_eq!(operand_names(&read), ["data", "ids", "updates"], "{text}");
                }
            }
        }
        // Its data (the destination) may not be a destination no instruction writes.
        let text =
            crate::core::print::print_core(&[&scatter(DType::F32, &[4, 3, 5], 1, Reduction::None)]);
        let empty = "%e = tensor.empty() : tensor<4x6x5xf32>\n    %v0_0 = linalg.generic";
        let bad = (text.replace("%v0_0 = linalg.generic", empty)).replace(
            "outs(%arg0 : tensor<4x6x5xf32>)",
            "outs(%e : tensor<4x6x5xf32>)",
        );
        assert_ne!(bad, text);
        let context = ppmoe_dialect::context();
        let module = ppmoe_dialect::parse_verified(&context, &bad).unwrap();
        let err = crate::core::read::read_programs(&module.as_operation()).err();
        let err = err.unwrap_or_default();
        assert!(
            err.contains("a destination no instruction writes"),
            "{err}\n{bad}"
        );
        for (ids, reduction) in [([4, 3, 5], Reduction::Mul), ([4, 3, 2], Reduction::None)] {
            let (text, _) = round_trip(&scatter(DType::F32, &ids, 1, reduction));
            assert!(text.contains("core.scatter_elements"), "{text}");
        }
    }
}
