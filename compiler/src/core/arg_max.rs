//! An arg-max or arg-min of a float tensor along one axis, printed as a `linalg.generic` of
//! two results (the best value so far and its position, an i64) and read back from it. The
//! axis's loop is `reduction`; each step takes the element where it is the first along the
//! axis or beats the best strictly (`arith.cmpf ogt` / `olt`: a tie keeps the earlier
//! position, a NaN never beats and, first, is never beaten), as ppmoe picks. The destinations
//! are zero fills the first step overwrites; only the position is the instruction's result.
//!
//! ```text
//! %best:2 = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>,
//!             affine_map<(d0, d1) -> (d0)>, affine_map<(d0, d1) -> (d0)>],
//!             iterator_types = ["parallel", "reduction"]}
//!           ins(%x : tensor<64x4xf32>) outs(%v, %k : tensor<64xf32>, tensor<64xi64>) {
//!           ^bb0(%in: f32, %value: f32, %at: i64):
//!             %i = linalg.index 1 : index
//!             %c0 = arith.constant 0 : index
//!             %first = arith.cmpi eq, %i, %c0 : index
//!             %beats = arith.cmpf ogt, %in, %value : f32
//!             %take = arith.ori %first, %beats : i1
//!             %v = arith.select %take, %in, %value : f32
//!             %p = arith.index_cast %i : index to i64
//!             %q = arith.select %take, %p, %at : i64
//!             linalg.yield %v, %q : f32, i64
//!           } -> (tensor<64xf32>, tensor<64xi64>)
//! ```

use super::body::{body_is, Step, Use};
use super::reduce::{iterator_list, maps, reduction_loops, strings, tensor, typed};
use melior::ir::operation::{OperationLike, OperationRef};
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

/// `arith.cmpf`'s predicates: ordered greater and less than.
const OGT: i64 = 2;
const OLT: i64 = 4;
/// `arith.cmpi eq`.
const EQ: i64 = 0;

/// The arg-max `op` makes of `x` into `out` where ppmoe prints it as a generic: a float
/// operand of static shape (ppmoe compares integers through f32, which `arith` would not),
/// an i64 result. Returns its axis counted from the front, keepdims, and whether a maximum.
pub fn printable(op: &Op, x: &Buffer, out: &Buffer) -> Option<(usize, bool, bool)> {
    let Op::ArgMax {
        axis,
        keepdims,
        max,
    } = *op
    else {
        return None;
    };
    let rank = i64::try_from(x.shape.len()).ok()?;
    let from_front = if axis < 0 { axis + rank } else { axis };
    let float = matches!(x.dtype, DType::F32 | DType::BF16 | DType::F16);
    let fits = float
        && out.dtype == DType::I64
        && (x.shape.iter().chain(&out.shape)).all(Option::is_some)
        && (0..rank).contains(&from_front);
    fits.then_some((usize::try_from(from_front).ok()?, keepdims, max))
}

/// The lines instruction `i` prints as (see the module's comment): `x` its operand's name,
/// `result` the name of the generic's results, `loc` its location. Returns them and the name
/// of the position result.
pub fn lines(
    (i, axis, keepdims, max): (usize, usize, bool, bool),
    (x, x_buffer): (&str, &Buffer),
    (result, out): (&str, &Buffer),
    loc: &str,
) -> (String, String) {
    let (in_map, out_map, iterators) = maps(x_buffer.shape.len(), &[axis], keepdims);
    let element = x_buffer.dtype.mlir();
    let x_type = tensor(&x_buffer.shape, element);
    let value_type = tensor(&out.shape, element);
    let at_type = tensor(&out.shape, "i64");
    let beats = if max { "ogt" } else { "olt" };
    let mut s = format!(
        "    %d{i} = tensor.empty() : {value_type} loc(unknown)\n    %c{i} = arith.constant 0.000000e+00 : {element} loc(unknown)\n    %f{i} = linalg.fill ins(%c{i} : {element}) outs(%d{i} : {value_type}) -> {value_type} loc(unknown)\n"
    );
    s += &format!(
        "    %e{i} = tensor.empty() : {at_type} loc(unknown)\n    %z{i} = arith.constant 0 : i64 loc(unknown)\n    %h{i} = linalg.fill ins(%z{i} : i64) outs(%e{i} : {at_type}) -> {at_type} loc(unknown)\n"
    );
    let g = format!("%g{i}");
    let u = "loc(unknown)";
    s += &format!(
        "    {result}:2 = linalg.generic {{indexing_maps = [{in_map}, {out_map}, {out_map}], iterator_types = [{}]}} ins({x} : {x_type}) outs(%f{i}, %h{i} : {value_type}, {at_type}) {{\n    ^bb0({g}_0: {element} {u}, {g}_v: {element} {u}, {g}_k: i64 {u}):\n      {g}_a = linalg.index {axis} : index {u}\n      {g}_z = arith.constant 0 : index {u}\n      {g}_f = arith.cmpi eq, {g}_a, {g}_z : index {u}\n      {g}_b = arith.cmpf {beats}, {g}_0, {g}_v : {element} {u}\n      {g}_t = arith.ori {g}_f, {g}_b : i1 {u}\n      {g}_s = arith.select {g}_t, {g}_0, {g}_v : {element} {u}\n      {g}_c = arith.index_cast {g}_a : index to i64 {u}\n      {g}_i = arith.select {g}_t, {g}_c, {g}_k : i64 {u}\n      linalg.yield {g}_s, {g}_i : {element}, i64 {u}\n    }} -> ({value_type}, {at_type}) loc({loc})\n",
        iterator_list(&iterators)
    );
    (s, format!("{result}#1"))
}

/// Whether `op` (a `linalg.generic`) is of the arg-max's shape: one input, two results.
pub fn is_arg_max(op: &OperationRef) -> bool {
    op.result_count() == 2 && op.operand_count() == 3
}

/// The body of an arg-max along `axis` (`max`, or an arg-min) as ppmoe prints it.
fn body(axis: usize, max: bool) -> Vec<Step> {
    use Use::{Arg, Step as S};
    vec![
        Step::new("linalg.index", &[]).with("dim", axis as i64),
        Step::new("arith.constant", &[]).with("value", 0),
        Step::new("arith.cmpi", &[S(0), S(1)]).with("predicate", EQ),
        Step::new("arith.cmpf", &[Arg(0), Arg(1)]).with("predicate", if max { OGT } else { OLT }),
        Step::new("arith.ori", &[S(2), S(3)]),
        Step::new("arith.select", &[S(4), Arg(0), Arg(1)]),
        Step::new("arith.index_cast", &[S(0)]),
        Step::new("arith.select", &[S(4), S(6), Arg(2)]),
        Step::new("linalg.yield", &[S(5), S(7)]),
    ]
}

/// The arg-max a two-result `linalg.generic` reads back as; its maps, iterators, types and
/// body must be the ones ppmoe prints. Its destinations' fills, and that nothing reads the
/// best values, are checked by the reader.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let refuse = |what: &str| format!("'linalg.generic' of two results (an arg-max): {what}");
    if op.operand_count() != 3 {
        return Err(refuse("expected one input and two destinations"));
    }
    let (x, shape) = typed(op.operand(0))?;
    let (value, _) = typed(op.result(0).map(Into::into))?;
    let (at, _) = typed(op.result(1).map(Into::into))?;
    if value != x || at != DType::I64 || !matches!(x, DType::F32 | DType::BF16 | DType::F16) {
        return Err(refuse(&format!(
            "a {x:?} operand gives {value:?} and {at:?}; ppmoe's arg-max takes a float operand to its type and i64"
        )));
    }
    let iterators = strings(op, "iterator_types");
    let axes = reduction_loops(&iterators);
    let [axis] = axes[..] else {
        return Err(refuse(&format!("reduces over loops {axes:?}, not one")));
    };
    let read_maps = strings(op, "indexing_maps");
    let keepdims = [true, false].into_iter().find(|&keep| {
        let (input, output, loops) = maps(shape.len(), &[axis], keep);
        read_maps == [input, output.clone(), output] && iterators == loops
    });
    let keepdims = keepdims.ok_or_else(|| {
        refuse(&format!(
            "indexing maps {read_maps:?} are not an arg-max's along axis {axis}"
        ))
    })?;
    let max = [true, false]
        .into_iter()
        .find(|&max| body_is(op, &body(axis, max)))
        .ok_or_else(|| refuse("its body is not the first-or-strictly-better pick ppmoe prints"))?;
    Ok(Op::ArgMax {
        axis: axis as i64,
        keepdims,
        max,
    })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{program, round_trip};
    use ppmoe_runtime::program::Op;
    use ppmoe_runtime::DType;

    /// An arg-max or arg-min of each float type, along the first, a middle or the last axis
    /// (counted from the end too), keepdims or not, prints as a generic MLIR verifies and
    /// reads back as itself, its axis counted from the front.
    #[test]
    fn every_float_arg_max_prints_as_a_generic_and_reads_back_as_itself() {
        let cases: [(i64, usize, bool, &[usize]); 4] = [
            (0, 0, false, &[3, 4]),
            (1, 1, true, &[2, 1, 4]),
            (-1, 2, false, &[2, 3]),
            (2, 2, true, &[2, 3, 1]),
        ];
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            for max in [true, false] {
                for (axis, from_front, keepdims, out) in cases {
                    let op = |axis| Op::ArgMax {
                        axis,
                        keepdims,
                        max,
                    };
                    let p = program(op(axis), (dtype, &[2, 3, 4]), (DType::I64, out));
                    let (text, read) = round_trip(&p);
                    assert!(!text.contains("core.arg_max"), "{text}");
                    let ins = &read.instructions;
                    assert_eq!(ins.len(), 1, "{text}");
                    assert_eq!(ins[0].op, op(from_front as i64), "{text}");
                    assert_eq!(read.buffers[ins[0].outputs[0]].dtype, DType::I64);
                }
            }
        }
    }

    /// An integer arg-max stays a `core` op (ppmoe compares integers through f32).
    #[test]
    fn an_integer_arg_max_stays_a_core_op() {
        let op = Op::ArgMax {
            axis: 1,
            keepdims: false,
            max: true,
        };
        let p = program(op.clone(), (DType::I64, &[2, 3]), (DType::I64, &[2]));
        let (text, read) = round_trip(&p);
        assert!(text.contains("core.arg_max"), "{text}");
        assert_eq!(read.instructions[0].op, op);
    }
}
