//! A running sum along an axis known at compile time (`cum_sum_axis`) printed as a
//! `linalg.generic` and read back from it. Its loops are the result's, then one `reduction`
//! loop over the source position along the axis; the input is read at that position, and each
//! step adds the element where the source position is in the sum of the result's position
//! (`arith.cmpi` of the two `linalg.index`es: at or before it, before it where exclusive, at or
//! after it, after it where reversed) and keeps the sum where it is not. Summing from a zero
//! fill in the loops' order is ppmoe's order for a forward f32 sum; integers (i32, i64) wrap
//! at their width, as ppmoe's do, so their order does not matter and a reversed sum prints
//! too. A reversed f32 sum (ppmoe adds it from the end) stays a `core` op.
//!
//! ```text
//! %s = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>,
//!        affine_map<(d0, d1, d2) -> (d0, d1)>],
//!        iterator_types = ["parallel", "parallel", "reduction"]}
//!      ins(%x : tensor<64x4xi32>) outs(%zero : tensor<64x4xi32>) {
//!      ^bb0(%in: i32, %acc: i32):
//!        %j = linalg.index 2 : index
//!        %k = linalg.index 1 : index
//!        %in_sum = arith.cmpi ule, %j, %k : index
//!        %added = arith.addi %acc, %in : i32
//!        %r = arith.select %in_sum, %added, %acc : i32
//!        linalg.yield %r : i32
//!      } -> tensor<64x4xi32>
//! ```

use super::body::{body_is, Step, Use};
use super::generic::array_strings;
use super::read::tensor_type;
use super::reduce::{
    iterator_list, one_loop_more, one_loop_more_iterators, strings, tensor, typed, REDUCTION,
};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::ValueLike;
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

/// `arith.cmpi`'s unsigned predicates on the two positions, by (exclusive, reverse).
const PREDICATES: [((bool, bool), &str, i64); 4] = [
    ((false, false), "ule", 7),
    ((true, false), "ult", 6),
    ((false, true), "uge", 9),
    ((true, true), "ugt", 8),
];

/// The running sum `op` makes of `x` into `out` where ppmoe prints it as a generic: static
/// shapes of one type, f32 summed forward or i32/i64. Returns its axis, exclusive, reverse.
pub fn printable(op: &Op, x: &Buffer, out: &Buffer) -> Option<(usize, bool, bool)> {
    let Op::CumSumAxis {
        axis,
        exclusive,
        reverse,
    } = *op
    else {
        return None;
    };
    let fits = match x.dtype {
        DType::F32 => !reverse,
        DType::I32 | DType::I64 => true,
        _ => false,
    } && out.dtype == x.dtype
        && out.shape == x.shape
        && x.shape.iter().all(Option::is_some)
        && axis < x.shape.len();
    fits.then_some((axis, exclusive, reverse))
}

/// The input's and the result's indexing maps and the iterator types of a running sum along
/// `axis` of a rank-`rank` tensor: the result's loops, then the source position's.
fn maps(rank: usize, axis: usize) -> (String, String, Vec<&'static str>) {
    let (along, id) = one_loop_more(rank, axis);
    (along, id, one_loop_more_iterators(rank))
}

fn predicate(exclusive: bool, reverse: bool) -> (&'static str, i64) {
    let (_, name, value) = PREDICATES
        .iter()
        .find(|(k, _, _)| *k == (exclusive, reverse))
        .copied()
        .unwrap_or(PREDICATES[0]);
    (name, value)
}

/// The addition of two elements of `dtype` (f32, or a signless integer).
pub(super) fn add_name(dtype: DType) -> &'static str {
    if dtype == DType::F32 {
        "arith.addf"
    } else {
        "arith.addi"
    }
}

/// The lines instruction `i` prints as (see the module's comment): `x` its operand's name,
/// `result` its result's, `loc` its location.
pub fn lines(
    (i, axis, exclusive, reverse): (usize, usize, bool, bool),
    (x, x_buffer): (&str, &Buffer),
    result: &str,
    loc: &str,
) -> String {
    let rank = x_buffer.shape.len();
    let (in_map, out_map, iterators) = maps(rank, axis);
    let element = x_buffer.dtype.mlir();
    let ty = tensor(&x_buffer.shape, element);
    let zero = match x_buffer.dtype {
        DType::F32 => "0.000000e+00",
        _ => "0",
    };
    let (predicate, _) = predicate(exclusive, reverse);
    let add = add_name(x_buffer.dtype);
    let (g, u) = (format!("%g{i}"), "loc(unknown)");
    format!(
        "    %d{i} = tensor.empty() : {ty} {u}\n    %c{i} = arith.constant {zero} : {element} {u}\n    %f{i} = linalg.fill ins(%c{i} : {element}) outs(%d{i} : {ty}) -> {ty} {u}\n    {result} = linalg.generic {{indexing_maps = [{in_map}, {out_map}], iterator_types = [{}]}} ins({x} : {ty}) outs(%f{i} : {ty}) {{\n    ^bb0({g}_0: {element} {u}, {g}_o: {element} {u}):\n      {g}_j = linalg.index {rank} : index {u}\n      {g}_k = linalg.index {axis} : index {u}\n      {g}_t = arith.cmpi {predicate}, {g}_j, {g}_k : index {u}\n      {g}_a = {add} {g}_o, {g}_0 : {element} {u}\n      {g}_r = arith.select {g}_t, {g}_a, {g}_o : {element} {u}\n      linalg.yield {g}_r : {element} {u}\n    }} -> {ty} loc({loc})\n",
        iterator_list(&iterators)
    )
}

/// Whether `op` (a `linalg.generic`) is of a running sum's shape: one input, one result, a
/// reduction loop and one loop more than its input's rank (a reduction has as many, an
/// elementwise op no reduction loop).
pub fn is_cum_sum(op: &OperationRef) -> bool {
    let iterators = op.attribute("iterator_types").ok().map(array_strings);
    let rank = (op.operand(0).ok())
        .and_then(|v| tensor_type(v.r#type()).ok())
        .map(|(_, shape)| shape.len() + 1);
    let one_more = iterators.as_ref().map(Vec::len) == rank && rank.is_some();
    let reduces = iterators.is_some_and(|t| t.iter().any(|t| t == REDUCTION));
    op.operand_count() == 2 && op.result_count() == 1 && one_more && reduces
}

/// The body of a running sum along `axis` of a rank-`rank` tensor of `dtype` as ppmoe prints
/// it.
fn body(rank: usize, axis: usize, (exclusive, reverse): (bool, bool), dtype: DType) -> Vec<Step> {
    use Use::{Arg, Step as S};
    vec![
        Step::new("linalg.index", &[]).with("dim", rank as i64),
        Step::new("linalg.index", &[]).with("dim", axis as i64),
        Step::new("arith.cmpi", &[S(0), S(1)]).with("predicate", predicate(exclusive, reverse).1),
        Step::new(add_name(dtype), &[Arg(1), Arg(0)]),
        Step::new("arith.select", &[S(2), S(3), Arg(1)]),
        Step::new("linalg.yield", &[S(4)]),
    ]
}

/// The running sum a `linalg.generic` of `is_cum_sum`'s shape reads back as; its maps,
/// iterators, types and body must be the ones ppmoe prints. Its destination's zero fill is
/// checked by the reader.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let refuse = |what: &str| {
        format!("'linalg.generic' with a loop more than its input's rank (a running sum): {what}")
    };
    let (x, shape) = typed(op.operand(0))?;
    let (out, out_shape) = typed(op.result(0).map(Into::into))?;
    if out != x || out_shape != shape || !matches!(x, DType::F32 | DType::I32 | DType::I64) {
        return Err(refuse(&format!(
            "{x:?} to {out:?}; ppmoe's running sums keep the shape and type of an f32, i32 or i64 operand"
        )));
    }
    let (read_maps, iterators) = (strings(op, "indexing_maps"), strings(op, "iterator_types"));
    let rank = shape.len();
    let axis = (0..rank).find(|&axis| {
        let (input, output, loops) = maps(rank, axis);
        read_maps == [input, output] && iterators == loops
    });
    let axis = axis.ok_or_else(|| {
        refuse(&format!(
            "indexing maps {read_maps:?} and iterators {iterators:?} are no running sum ppmoe prints"
        ))
    })?;
    let order = (PREDICATES.iter())
        .map(|(order, _, _)| *order)
        .find(|&order| body_is(op, &body(rank, axis, order, x)))
        .ok_or_else(|| refuse("its body is not the masked sum ppmoe prints"))?;
    let (exclusive, reverse) = order;
    if reverse && x == DType::F32 {
        return Err(refuse(
            "an f32 sum from the end; ppmoe adds it from the end, this generic from the front",
        ));
    }
    Ok(Op::CumSumAxis {
        axis,
        exclusive,
        reverse,
    })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{program, round_trip};
    use ppmoe_runtime::program::Op;
    use ppmoe_runtime::DType;

    /// A running sum of i32 and i64 (either direction, inclusive or not) and of f32 (forward)
    /// along each axis prints as a generic MLIR verifies and reads back as itself; a reversed
    /// f32 sum stays a `core` op.
    #[test]
    fn running_sums_print_as_a_generic_and_read_back_as_themselves() {
        for dtype in [DType::F32, DType::I32, DType::I64] {
            for axis in 0..3 {
                for (exclusive, reverse) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let op = Op::CumSumAxis {
                        axis,
                        exclusive,
                        reverse,
                    };
                    let p = program(op.clone(), (dtype, &[2, 3, 4]), (dtype, &[2, 3, 4]));
                    let (text, read) = round_trip(&p);
                    let stays = dtype == DType::F32 && reverse;
                    assert_eq!(text.contains("core.cum_sum_axis"), stays, "{text}");
                    assert_eq!(read.instructions.len(), 1, "{text}");
                    assert_eq!(read.instructions[0].op, op, "{text}");
                }
            }
        }
    }
}
