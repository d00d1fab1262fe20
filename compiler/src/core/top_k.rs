//! An f32 top-k along an axis known at compile time (`top_k_axis`) printed as two
//! `linalg.generic`s and read back as the one instruction:
//!
//! 1. each element's rank: how many elements of its row come before it in the order top-k
//!    picks in (a greater value, a NaN above every number, an equal value at a lower index;
//!    smaller first for the smallest k): the row's loops, then a `reduction` loop over the
//!    other element, counting from a zero fill;
//! 2. the pick: the result's loops (its axis the k positions), then a `reduction` loop over
//!    the row, taking the element (and its index) whose rank is the position: exactly one is.
//!
//! This is the order ppmoe's top-k sorts by (a stable sort, NaN largest, as PyTorch's top-k
//! places it). The rank generic is read as part of the pick (`is_part`), which is read back
//! only where the rank is exactly this over its own input.

use super::body::{body_is, Step, Use};
use super::read::{handle, op_name, users};
use super::reduce::{
    iterator_list, one_loop_more as maps, one_loop_more_iterators as iterators, strings, tensor,
    typed,
};
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

/// `arith.cmpf`'s predicates: ordered equal, greater than, ordered (no NaN), unordered.
const OEQ: i64 = 1;
const OGT: i64 = 2;
const ORD: i64 = 7;
const UNO: i64 = 14;
/// `arith.cmpi`'s equal and unsigned less than.
const EQ: i64 = 0;
const ULT: i64 = 6;

/// The top-k `op` makes of `x` into `outs` (values, indices) where ppmoe prints it as
/// generics: f32 values of static shapes, i64 indices. Returns its axis, k and largest.
pub fn printable(op: &Op, x: &Buffer, outs: [&Buffer; 2]) -> Option<(usize, usize, bool)> {
    let Op::TopKAxis { axis, k, largest } = *op else {
        return None;
    };
    let mut shape = x.shape.clone();
    *shape.get_mut(axis)? = Some(k);
    let fits = x.dtype == DType::F32
        && outs[0].dtype == DType::F32
        && outs[1].dtype == DType::I64
        && outs.iter().all(|o| o.shape == shape)
        && x.shape.iter().all(Option::is_some)
        && k > 0;
    fits.then_some((axis, k, largest))
}

/// The rank's body: element `Arg(1)` counts `Arg(0)` (the other element) where it comes first.
fn rank_body(rank: usize, axis: usize, largest: bool) -> Vec<Step> {
    use Use::{Arg, Step as S};
    // Which is compared as the greater, and whose being a number lets a NaN over it.
    let (high, low) = if largest { (0, 1) } else { (1, 0) };
    vec![
        Step::new("linalg.index", &[]).with("dim", rank as i64),
        Step::new("linalg.index", &[]).with("dim", axis as i64),
        Step::new("arith.cmpf", &[Arg(0), Arg(0)]).with("predicate", UNO),
        Step::new("arith.cmpf", &[Arg(1), Arg(1)]).with("predicate", UNO),
        Step::new("arith.cmpf", &[Arg(high), Arg(low)]).with("predicate", OGT),
        Step::new("arith.cmpf", &[Arg(low), Arg(low)]).with("predicate", ORD),
        Step::new("arith.andi", &[S(2 + high), S(5)]),
        Step::new("arith.ori", &[S(4), S(6)]),
        Step::new("arith.cmpf", &[Arg(0), Arg(1)]).with("predicate", OEQ),
        Step::new("arith.andi", &[S(2), S(3)]),
        Step::new("arith.ori", &[S(8), S(9)]),
        Step::new("arith.cmpi", &[S(0), S(1)]).with("predicate", ULT),
        Step::new("arith.andi", &[S(10), S(11)]),
        Step::new("arith.ori", &[S(7), S(12)]),
        Step::new("arith.extui", &[S(13)]),
        Step::new("arith.addi", &[Arg(2), S(14)]),
        Step::new("linalg.yield", &[S(15)]),
    ]
}

/// The pick's body: the element whose rank is the result's position along the axis.
fn pick_body(rank: usize, axis: usize) -> Vec<Step> {
    use Use::{Arg, Step as S};
    vec![
        Step::new("linalg.index", &[]).with("dim", axis as i64),
        Step::new("linalg.index", &[]).with("dim", rank as i64),
        Step::new("arith.index_cast", &[S(0)]),
        Step::new("arith.cmpi", &[Arg(1), S(2)]).with("predicate", EQ),
        Step::new("arith.select", &[S(3), Arg(0), Arg(2)]),
        Step::new("arith.index_cast", &[S(1)]),
        Step::new("arith.select", &[S(3), S(5), Arg(3)]),
        Step::new("linalg.yield", &[S(4), S(6)]),
    ]
}

/// The pick's body for k = 1 as `-canonicalize` leaves it: the position along the axis, whose
/// loop has one step, folded to the constant 0 (which `sink_constants` puts back in the body).
fn folded_pick_body(rank: usize) -> Vec<Step> {
    use Use::{Arg, Step as S};
    vec![
        Step::new("linalg.index", &[]).with("dim", rank as i64),
        Step::new("arith.constant", &[]).with("value", 0),
        Step::new("arith.cmpi", &[Arg(1), S(1)]).with("predicate", EQ),
        Step::new("arith.select", &[S(2), Arg(0), Arg(2)]),
        Step::new("arith.index_cast", &[S(0)]),
        Step::new("arith.select", &[S(2), S(4), Arg(3)]),
        Step::new("linalg.yield", &[S(3), S(5)]),
    ]
}

/// The lines instruction `i` prints as (see the module's comment): `x` its operand's name,
/// `result` the name of the pick's two results, `loc` its location.
pub fn lines(
    (i, axis, k, largest): (usize, usize, usize, bool),
    (x, x_buffer): (&str, &Buffer),
    result: &str,
    loc: &str,
) -> String {
    let rank = x_buffer.shape.len();
    let (along, id) = maps(rank, axis);
    let loops = iterator_list(&iterators(rank));
    let x_type = tensor(&x_buffer.shape, "f32");
    let ranks_type = tensor(&x_buffer.shape, "i64");
    let mut shape = x_buffer.shape.clone();
    shape[axis] = Some(k);
    let (values_type, indices_type) = (tensor(&shape, "f32"), tensor(&shape, "i64"));
    let (g, u) = (format!("%g{i}"), "loc(unknown)");
    let (high, low) = if largest { ("a", "b") } else { ("b", "a") };
    let mut s = format!(
        "    %d{i} = tensor.empty() : {ranks_type} {u}\n    %c{i} = arith.constant 0 : i64 {u}\n    %f{i} = linalg.fill ins(%c{i} : i64) outs(%d{i} : {ranks_type}) -> {ranks_type} {u}\n"
    );
    s += &format!(
        "    %v{i}_r = linalg.generic {{indexing_maps = [{along}, {id}, {id}], iterator_types = [{loops}]}} ins({x}, {x} : {x_type}, {x_type}) outs(%f{i} : {ranks_type}) {{\n    ^bb0({g}_a: f32 {u}, {g}_b: f32 {u}, {g}_n: i64 {u}):\n      {g}_j = linalg.index {rank} : index {u}\n      {g}_i = linalg.index {axis} : index {u}\n      {g}_an = arith.cmpf uno, {g}_a, {g}_a : f32 {u}\n      {g}_bn = arith.cmpf uno, {g}_b, {g}_b : f32 {u}\n      {g}_gt = arith.cmpf ogt, {g}_{high}, {g}_{low} : f32 {u}\n      {g}_num = arith.cmpf ord, {g}_{low}, {g}_{low} : f32 {u}\n      {g}_nan = arith.andi {g}_{high}n, {g}_num : i1 {u}\n      {g}_over = arith.ori {g}_gt, {g}_nan : i1 {u}\n      {g}_eq = arith.cmpf oeq, {g}_a, {g}_b : f32 {u}\n      {g}_nans = arith.andi {g}_an, {g}_bn : i1 {u}\n      {g}_same = arith.ori {g}_eq, {g}_nans : i1 {u}\n      {g}_lower = arith.cmpi ult, {g}_j, {g}_i : index {u}\n      {g}_tie = arith.andi {g}_same, {g}_lower : i1 {u}\n      {g}_first = arith.ori {g}_over, {g}_tie : i1 {u}\n      {g}_one = arith.extui {g}_first : i1 to i64 {u}\n      {g}_r = arith.addi {g}_n, {g}_one : i64 {u}\n      linalg.yield {g}_r : i64 {u}\n    }} -> {ranks_type} {u}\n"
    );
    s += &format!(
        "    %e{i} = tensor.empty() : {values_type} {u}\n    %z{i} = arith.constant 0.000000e+00 : f32 {u}\n    %h{i} = linalg.fill ins(%z{i} : f32) outs(%e{i} : {values_type}) -> {values_type} {u}\n    %o{i} = tensor.empty() : {indices_type} {u}\n    %q{i} = linalg.fill ins(%c{i} : i64) outs(%o{i} : {indices_type}) -> {indices_type} {u}\n"
    );
    s += &format!(
        "    {result}:2 = linalg.generic {{indexing_maps = [{along}, {along}, {id}, {id}], iterator_types = [{loops}]}} ins({x}, %v{i}_r : {x_type}, {ranks_type}) outs(%h{i}, %q{i} : {values_type}, {indices_type}) {{\n    ^bb0({g}_x: f32 {u}, {g}_rk: i64 {u}, {g}_v: f32 {u}, {g}_k: i64 {u}):\n      {g}_p = linalg.index {axis} : index {u}\n      {g}_s = linalg.index {rank} : index {u}\n      {g}_p64 = arith.index_cast {g}_p : index to i64 {u}\n      {g}_hit = arith.cmpi eq, {g}_rk, {g}_p64 : i64 {u}\n      {g}_val = arith.select {g}_hit, {g}_x, {g}_v : f32 {u}\n      {g}_s64 = arith.index_cast {g}_s : index to i64 {u}\n      {g}_at = arith.select {g}_hit, {g}_s64, {g}_k : i64 {u}\n      linalg.yield {g}_val, {g}_at : f32, i64 {u}\n    }} -> ({values_type}, {indices_type}) loc({loc})\n"
    );
    s
}

/// Whether `op` (a `linalg.generic`) is of a top-k pick's shape: two inputs, two results.
pub fn is_top_k(op: &OperationRef) -> bool {
    op.result_count() == 2 && op.operand_count() == 4
}

/// Whether `op` (a `linalg.generic`) is of a top-k rank's shape (an f32 input read twice, an
/// i64 result) with every reader a top-k pick: a part of the top-k the pick reads back as.
pub fn is_part(op: &OperationRef) -> bool {
    let twice = op.operand_count() == 3
        && op.result_count() == 1
        && op.operand(0).map(handle).ok() == op.operand(1).map(handle).ok();
    let counts = typed(op.result(0).map(Into::into)).is_ok_and(|(d, _)| d == DType::I64);
    let readers = op.result(0).map(|r| users(r.into())).unwrap_or_default();
    twice
        && counts
        && !readers.is_empty()
        && readers
            .iter()
            .all(|r| op_name(r) == "linalg.generic" && is_top_k(r))
}

/// The rank generic a top-k pick reads, for the passes that place an instruction's ops
/// together.
pub fn parts<'c, 'a>(op: &OperationRef<'c, 'a>) -> Vec<OperationRef<'c, 'a>> {
    if op_name(op) != "linalg.generic" || !is_top_k(op) {
        return Vec::new();
    }
    let maker = op
        .operand(1)
        .ok()
        .and_then(|v| OperationResult::try_from(v).ok());
    maker.map(|m| m.owner()).into_iter().collect()
}

/// The top-k a pick generic reads back as, with the rank generic it reads: each's maps,
/// iterators and body the ones ppmoe prints, the rank over the pick's own input and read by
/// it alone. The zero fills they start from are checked by the reader.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let refuse =
        |what: &str| format!("'linalg.generic' of two results picking by rank (a top-k): {what}");
    let (x, shape) = typed(op.operand(0))?;
    let (values, out_shape) = typed(op.result(0).map(Into::into))?;
    let (indices, _) = typed(op.result(1).map(Into::into))?;
    if x != DType::F32 || values != DType::F32 || indices != DType::I64 {
        return Err(refuse(&format!(
            "{x:?} to {values:?} and {indices:?}; ppmoe's top-k takes f32 to f32 values and i64 indices"
        )));
    }
    let rank = shape.len();
    let (read_maps, loops) = (strings(op, "indexing_maps"), strings(op, "iterator_types"));
    let picked = (0..rank).find(|&axis| {
        let (along, id) = maps(rank, axis);
        let same_elsewhere = (0..rank).all(|d| d == axis || shape[d] == out_shape[d]);
        read_maps == [along.clone(), along, id.clone(), id]
            && loops == iterators(rank)
            && same_elsewhere
            && (body_is(op, &pick_body(rank, axis))
                || out_shape[axis] == Some(1) && body_is(op, &folded_pick_body(rank)))
    });
    let axis =
        picked.ok_or_else(|| refuse("its maps or body are not the pick by rank ppmoe prints"))?;
    let k = out_shape[axis].ok_or_else(|| refuse("a dynamic k"))?;
    // A position no rank reaches would keep its fill: ppmoe refuses such a k.
    if k == 0 || shape[axis].is_some_and(|n| k > n) {
        return Err(refuse(&format!("k = {k} of a row of {:?}", shape[axis])));
    }
    let maker = op
        .operand(1)
        .ok()
        .and_then(|v| OperationResult::try_from(v).ok());
    let ranks = maker.map(|m| m.owner());
    let (along, id) = maps(rank, axis);
    let largest = [true, false].into_iter().find(|&largest| {
        ranks.as_ref().is_some_and(|r| {
            op_name(r) == "linalg.generic"
                && r.operand(0).map(handle).ok() == op.operand(0).map(handle).ok()
                && strings(r, "indexing_maps") == [along.clone(), id.clone(), id.clone()]
                && strings(r, "iterator_types") == iterators(rank)
                && body_is(r, &rank_body(rank, axis, largest))
                && r.result(0).is_ok_and(|v| users(v.into()).len() == 1)
        })
    });
    let largest = largest.ok_or_else(|| {
        refuse("its ranks are not the count of what comes first in its own input's row ppmoe prints, read by it alone")
    })?;
    Ok(Op::TopKAxis { axis, k, largest })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{program, round_trip};
    use ppmoe_runtime::program::{Buffer, BufferKind, Op};
    use ppmoe_runtime::DType;

    /// A top-k of the largest or the smallest, along the first or the last axis, prints as its
    /// two generics (no `core` op), which MLIR verifies, and reads back as itself with both
    /// results.
    #[test]
    fn top_ks_print_as_two_generics_and_read_back_as_themselves() {
        for (axis, out) in [(1usize, [3usize, 2]), (0, [1, 5])] {
            for largest in [true, false] {
                let k = out[axis];
                let op = Op::TopKAxis { axis, k, largest };
                let mut p = program(op.clone(), (DType::F32, &[3, 5]), (DType::F32, &out));
                p.buffers.push(Buffer {
                    name: "i".into(),
                    dtype: DType::I64,
                    shape: out.iter().map(|&d| Some(d)).collect(),
                    kind: BufferKind::Output,
                });
                p.outputs.push(2);
                p.instructions[0].outputs.push(2);
                let (text, read) = round_trip(&p);
                assert!(!text.contains("core.top_k"), "{text}");
                assert_eq!(text.matches("linalg.generic").count(), 2, "{text}");
                let ins = &read.instructions;
                assert_eq!(ins.len(), 1, "{text}");
                assert_eq!(ins[0].op, op, "{text}");
                let types: Vec<DType> = ins[0]
                    .outputs
                    .iter()
                    .map(|&o| read.buffers[o].dtype)
                    .collect();
                assert_eq!(types, [DType::F32, DType::I64], "{text}");
            }
        }
    }
}
