//! An f32 reduction over static axes (`reduce_axes`: a sum, a mean, a maximum or a minimum),
//! or an integer sum,
//! printed as a `linalg.generic` into a `linalg.fill` of its identity, and read back from it:
//! the reduced axes' loops `reduction`, the result read at 0 on them (keepdims) or without
//! them. ppmoe accumulates an f32 sum in f64 and rounds once, so a sum's generic accumulates
//! in f64 (each element `arith.extf`) and is narrowed by an `arith.truncf` marked
//! `ppmoe.narrows`; a mean's narrowing is a `linalg.generic` marked so that divides by the
//! count in f64 and then truncates, as ppmoe does. A maximum or minimum picks an element, so
//! it is exact in f32: `arith.maxnumf` / `arith.minnumf` (a NaN gives the other operand, as
//! ppmoe's f64 max and min do) from -inf / +inf. An i32 or i64 sum (a routing's counts) is an
//! `arith.addi` of its type from 0, a product an `arith.muli` from 1 (ppmoe's integer sums and
//! products wrap at their width, as `addi` and `muli` do), a maximum or minimum an
//! `arith.maxsi` / `arith.minsi` from the type's least or greatest value (over no element,
//! ppmoe's would be 0 in i32: such a reduction stays a `core` op).
//!
//! ```text
//! %s = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1, d2)>,
//!        affine_map<(d0, d1, d2) -> (d0, d1, 0)>],
//!        iterator_types = ["parallel", "parallel", "reduction"]}
//!      ins(%x : tensor<1x16x64xf32>) outs(%zero : tensor<1x16x1xf64>) {
//!      ^bb0(%in: f32, %acc: f64):
//!        %e = arith.extf %in : f32 to f64
//!        %r = arith.addf %acc, %e : f64
//!        linalg.yield %r : f64
//!      } -> tensor<1x16x1xf64>
//! %m = linalg.generic {... all parallel} ins(%s) outs(%d : tensor<1x16x1xf32>)
//!      attrs = {ppmoe.narrows = true} {
//!      ^bb0(%in: f64, %o: f32):
//!        %n = arith.constant 6.400000e+01 : f64
//!        %q = arith.divf %in, %n : f64
//!        %t = arith.truncf %q : f64 to f32
//!        linalg.yield %t : f32
//!      } -> tensor<1x16x1xf32>
//! ```

use super::generic::array_strings;
use super::read::{handle, op_name, tensor_type};
use crate::passes::func_ops::block_ops;
use melior::ir::attribute::FloatAttribute;
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{RegionLike, Value, ValueLike};
use ppmoe_runtime::program::{Buffer, Op, ReduceFn};
use ppmoe_runtime::DType;

pub(super) const REDUCTION: &str = "#linalg.iterator_type<reduction>";
pub(super) const PARALLEL: &str = "#linalg.iterator_type<parallel>";

/// The reduction `op` makes of `x` into `out`, where ppmoe prints it as a generic: f32 in and
/// out, static shapes, a sum, mean, maximum or minimum; or i32 or i64 in and out, a sum,
/// product, maximum or minimum (an extremum over at least one element). Returns its function,
/// axes, keepdims.
pub fn printable<'o>(
    op: &'o Op,
    x: &Buffer,
    out: &Buffer,
) -> Option<(ReduceFn, &'o [usize], bool)> {
    let Op::ReduceAxes { f, axes, keepdims } = op else {
        return None;
    };
    let float = matches!(
        f,
        ReduceFn::Sum | ReduceFn::Mean | ReduceFn::Max | ReduceFn::Min
    ) && x.dtype == DType::F32
        && out.dtype == DType::F32;
    let integer = match f {
        ReduceFn::Sum | ReduceFn::Prod => true,
        ReduceFn::Max | ReduceFn::Min => !over_an_empty_axis(&x.shape, axes),
        _ => false,
    } && is_integer(x.dtype)
        && out.dtype == x.dtype;
    let fits = (float || integer)
        && (x.shape.iter().chain(&out.shape)).all(Option::is_some)
        && !axes.is_empty()
        && axes.iter().all(|&a| a < x.shape.len());
    fits.then_some((*f, axes.as_slice(), *keepdims))
}

/// The input's (identity) and the result's indexing maps and the iterator types (as MLIR
/// prints them, `#linalg.iterator_type<...>`) of a reduction of a rank-`rank` tensor.
pub(super) fn maps(
    rank: usize,
    axes: &[usize],
    keepdims: bool,
) -> (String, String, Vec<&'static str>) {
    let dims: Vec<String> = (0..rank).map(|d| format!("d{d}")).collect();
    let kept: Vec<String> = (0..rank)
        .filter_map(|d| match axes.contains(&d) {
            true if keepdims => Some("0".to_string()),
            true => None,
            false => Some(dims[d].clone()),
        })
        .collect();
    let map = |results: &[String]| {
        format!(
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            results.join(", ")
        )
    };
    let iterators = (0..rank)
        .map(|d| {
            if axes.contains(&d) {
                REDUCTION
            } else {
                PARALLEL
            }
        })
        .collect();
    (map(&dims), map(&kept), iterators)
}

/// An array attribute of `op` as strings (none where it has none).
pub(super) fn strings(op: &OperationRef, key: &str) -> Vec<String> {
    op.attribute(key)
        .ok()
        .map(array_strings)
        .unwrap_or_default()
}

/// The loops of `iterators` (as `strings` reads them) that are `reduction`s.
pub(super) fn reduction_loops(iterators: &[String]) -> Vec<usize> {
    (iterators.iter().enumerate())
        .filter(|(_, t)| *t == REDUCTION)
        .map(|(d, _)| d)
        .collect()
}

/// A value's element type and shape.
pub(super) fn typed(
    v: Result<Value, melior::Error>,
) -> Result<(DType, Vec<Option<usize>>), String> {
    v.map_err(|e| e.to_string())
        .and_then(|v| tensor_type(v.r#type()))
}

/// Maps over a rank-`rank` tensor's loops and one more (`d<rank>`: a running sum's source
/// position, a top-k's other element): the tensor read at that loop along `axis`, and read at
/// its own (the identity over the first `rank` loops).
pub(super) fn one_loop_more(rank: usize, axis: usize) -> (String, String) {
    let dims: Vec<String> = (0..=rank).map(|d| format!("d{d}")).collect();
    let mut along = dims[..rank].to_vec();
    along[axis] = dims[rank].clone();
    let map = |results: &[String]| {
        format!(
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            results.join(", ")
        )
    };
    (map(&along), map(&dims[..rank]))
}

/// The iterators of `one_loop_more`'s loops: the tensor's parallel, the one more a reduction.
pub(super) fn one_loop_more_iterators(rank: usize) -> Vec<&'static str> {
    let mut loops = vec![PARALLEL; rank];
    loops.push(REDUCTION);
    loops
}

/// Iterator types as the generic form's `iterator_types` spells them.
pub(super) fn iterator_list(iterators: &[&str]) -> String {
    let quoted: Vec<&str> = (iterators.iter())
        .map(|t| match *t {
            REDUCTION => "\"reduction\"",
            _ => "\"parallel\"",
        })
        .collect();
    quoted.join(", ")
}

/// The signless integer types whose sums, products and extrema print as a generic of `arith`'s
/// integer ops.
pub(super) fn is_integer(dtype: DType) -> bool {
    matches!(dtype, DType::I32 | DType::I64)
}

/// Whether a reduction of a tensor of `shape` over `axes` reduces an axis of no element (an
/// integer extremum's result is then ppmoe's 0 in i32, not the type's extreme: no generic).
fn over_an_empty_axis(shape: &[Option<usize>], axes: &[usize]) -> bool {
    axes.iter()
        .any(|&a| shape.get(a).copied().flatten() == Some(0))
}

/// The accumulator's element type and its identity as MLIR spells it, for a reduction of
/// elements of `x`.
fn accumulator(f: ReduceFn, x: DType) -> (&'static str, String) {
    match f {
        _ if is_integer(x) => (x.mlir(), integer_start(f, x).to_string()),
        ReduceFn::Max => ("f32", "0xFF800000".into()),
        ReduceFn::Min => ("f32", "0x7F800000".into()),
        _ => ("f64", "0.000000e+00".into()),
    }
}

/// The identity an integer reduction `f` of elements of type `x` starts from (what its
/// destination's fill must hold, exactly).
pub fn integer_start(f: ReduceFn, x: DType) -> i64 {
    let (least, greatest) = match x {
        DType::I32 => (i32::MIN.into(), i32::MAX.into()),
        _ => (i64::MIN, i64::MAX),
    };
    match f {
        ReduceFn::Max => least,
        ReduceFn::Min => greatest,
        ReduceFn::Prod => 1,
        _ => 0,
    }
}

/// The identity value a reduction `f` starts from (what its destination's fill must hold).
pub fn starts_from(f: ReduceFn) -> f64 {
    match f {
        ReduceFn::Max => f64::NEG_INFINITY,
        ReduceFn::Min => f64::INFINITY,
        _ => 0.0,
    }
}

pub(super) fn tensor(shape: &[Option<usize>], element: &str) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.unwrap_or(0).to_string()).collect();
    match dims.is_empty() {
        true => format!("tensor<{element}>"),
        false => format!("tensor<{}x{element}>", dims.join("x")),
    }
}

/// The lines instruction `i` prints as (see the module's comment): `x` its operand's name,
/// `result` its result's, `loc` its location.
pub fn lines(
    (i, f, axes, keepdims): (usize, ReduceFn, &[usize], bool),
    (x, x_buffer): (&str, &Buffer),
    (result, out): (&str, &Buffer),
    loc: &str,
) -> String {
    let rank = x_buffer.shape.len();
    let (in_map, out_map, iterators) = maps(rank, axes, keepdims);
    let element = x_buffer.dtype.mlir();
    let integer = is_integer(x_buffer.dtype);
    let (acc, init) = accumulator(f, x_buffer.dtype);
    let x_type = tensor(&x_buffer.shape, element);
    let acc_type = tensor(&out.shape, acc);
    let out_type = tensor(&out.shape, element);
    let wide = match f {
        ReduceFn::Sum | ReduceFn::Mean if !integer => format!("%v{i}_w"),
        _ => result.to_string(),
    };
    let mut s = format!(
        "    %d{i} = tensor.empty() : {acc_type} loc(unknown)\n    %c{i} = arith.constant {init} : {acc} loc(unknown)\n    %f{i} = linalg.fill ins(%c{i} : {acc}) outs(%d{i} : {acc_type}) -> {acc_type} loc(unknown)\n"
    );
    if f == ReduceFn::Mean {
        // Before the sum, so that the narrowing generic follows it directly.
        s += &format!("    %n{i} = tensor.empty() : {out_type} loc(unknown)\n");
    }
    let step = match f {
        _ if integer => {
            let step = integer_step(f).unwrap_or("arith.addi");
            format!("%g{i}_r = {step} %g{i}_o, %g{i}_0 : {acc} loc(unknown)")
        }
        ReduceFn::Max => format!("%g{i}_r = arith.maxnumf %g{i}_o, %g{i}_0 : f32 loc(unknown)"),
        ReduceFn::Min => format!("%g{i}_r = arith.minnumf %g{i}_o, %g{i}_0 : f32 loc(unknown)"),
        _ => format!(
            "%g{i}_e = arith.extf %g{i}_0 : f32 to f64 loc(unknown)\n      %g{i}_r = arith.addf %g{i}_o, %g{i}_e : f64 loc(unknown)"
        ),
    };
    s += &format!(
        "    {wide} = linalg.generic {{indexing_maps = [{in_map}, {out_map}], iterator_types = [{}]}} ins({x} : {x_type}) outs(%f{i} : {acc_type}) {{\n    ^bb0(%g{i}_0: {element} loc(unknown), %g{i}_o: {acc} loc(unknown)):\n      {step}\n      linalg.yield %g{i}_r : {acc} loc(unknown)\n    }} -> {acc_type} loc({loc})\n",
        iterator_list(&iterators)
    );
    match f {
        _ if integer => {}
        ReduceFn::Sum => s += &format!(
            "    {result} = arith.truncf {wide} {{ppmoe.narrows = true}} : {acc_type} to {out_type} loc({loc})\n"
        ),
        ReduceFn::Mean => {
            let (id, _, _) = maps(out.shape.len(), &[], true);
            let parallel = vec!["\"parallel\""; out.shape.len()].join(", ");
            let count: usize = (axes.iter())
                .map(|&a| x_buffer.shape[a].unwrap_or(0))
                .product();
            s += &format!(
                "    {result} = linalg.generic {{indexing_maps = [{id}, {id}], iterator_types = [{parallel}]}} ins({wide} : {acc_type}) outs(%n{i} : {out_type}) attrs = {{ppmoe.narrows = true}} {{\n    ^bb0(%m{i}_0: f64 loc(unknown), %m{i}_o: f32 loc(unknown)):\n      %m{i}_n = arith.constant {count}.0 : f64 loc(unknown)\n      %m{i}_q = arith.divf %m{i}_0, %m{i}_n : f64 loc(unknown)\n      %m{i}_r = arith.truncf %m{i}_q : f64 to f32 loc(unknown)\n      linalg.yield %m{i}_r : f32 loc(unknown)\n    }} -> {out_type} loc({loc})\n"
            );
        }
        _ => {}
    }
    s
}

/// The `arith` op of an integer reduction's step, and back.
const INTEGER_STEPS: [(ReduceFn, &str); 4] = [
    (ReduceFn::Sum, "arith.addi"),
    (ReduceFn::Prod, "arith.muli"),
    (ReduceFn::Max, "arith.maxsi"),
    (ReduceFn::Min, "arith.minsi"),
];

fn integer_step(f: ReduceFn) -> Option<&'static str> {
    INTEGER_STEPS.iter().find(|(g, _)| *g == f).map(|(_, s)| *s)
}

/// Whether `op` (a `linalg.generic`) has a reduction loop.
pub fn is_reduction(op: &OperationRef) -> bool {
    let iterators = op.attribute("iterator_types").ok().map(array_strings);
    iterators.is_some_and(|t| t.iter().any(|t| t == REDUCTION))
}

/// The reduction a `linalg.generic` with a reduction loop reads back as: a sum (its f64 result
/// narrowed after), a maximum or a minimum; its maps, iterators and body must be the ones ppmoe
/// prints. Its destination's fill is checked by the reader, which knows the fills.
pub fn read_reduction(op: &OperationRef) -> Result<Op, String> {
    let refuse = |what: &str| format!("'linalg.generic' reduction: {what}");
    if op.operand_count() != 2 || op.result_count() != 1 {
        return Err(refuse("expected one input and one destination"));
    }
    let (x, shape) = typed(op.operand(0))?;
    let (acc, _) = typed(op.result(0).map(Into::into))?;
    let iterators = strings(op, "iterator_types");
    let axes = reduction_loops(&iterators);
    let read_maps = strings(op, "indexing_maps");
    let keepdims = [true, false].into_iter().find(|&keep| {
        let (input, output, loops) = maps(shape.len(), &axes, keep);
        read_maps == [input, output] && iterators == loops
    });
    let keepdims = keepdims.ok_or_else(|| {
        refuse(&format!(
            "indexing maps {read_maps:?} and iterators {iterators:?} are no reduction ppmoe prints"
        ))
    })?;
    let f = body_function(op, x, acc)?;
    let extremum = matches!(f, ReduceFn::Max | ReduceFn::Min);
    if is_integer(x) && extremum && over_an_empty_axis(&shape, &axes) {
        return Err(refuse(
            "an integer maximum or minimum over no element (ppmoe's is 0 in i32, not the type's extreme)",
        ));
    }
    Ok(Op::ReduceAxes { f, axes, keepdims })
}

/// The function a reduction's body computes, where it is one ppmoe prints over these types.
fn body_function(op: &OperationRef, x: DType, acc: DType) -> Result<ReduceFn, String> {
    let refuse = || {
        "'linalg.generic' reduction: its body is not a sum in f64, a maxnumf or a minnumf, or an integer addi, muli, maxsi or minsi as ppmoe prints it"
            .to_string()
    };
    let block = (op.region(0).ok())
        .and_then(|r| r.first_block())
        .ok_or_else(refuse)?;
    let ops = block_ops(block);
    let arg = |k: usize| block.argument(k).map(handle).ok();
    let operand = |o: &OperationRef, k: usize| o.operand(k).map(handle).ok();
    let result = |o: &OperationRef| o.result(0).map(handle).ok();
    let yields = |o: &OperationRef, last: &OperationRef| {
        op_name(o) == "linalg.yield" && o.operand_count() == 1 && operand(o, 0) == result(last)
    };
    let f = match (ops.as_slice(), x, acc) {
        ([step, y], _, _) if is_integer(x) && x == acc && yields(y, step) => {
            let name = op_name(step);
            let f = INTEGER_STEPS
                .iter()
                .find(|(_, s)| *s == name)
                .map(|(f, _)| *f);
            let wired = operand(step, 0) == arg(1) && operand(step, 1) == arg(0);
            f.filter(|_| wired)
        }
        ([step, y], DType::F32, DType::F32) if yields(y, step) => {
            let f = match op_name(step).as_str() {
                "arith.maxnumf" => ReduceFn::Max,
                "arith.minnumf" => ReduceFn::Min,
                _ => return Err(refuse()),
            };
            let wired = operand(step, 0) == arg(1) && operand(step, 1) == arg(0);
            wired.then_some(f)
        }
        ([extend, add, y], DType::F32, DType::F64) if yields(y, add) => {
            let wired = op_name(extend) == "arith.extf"
                && operand(extend, 0) == arg(0)
                && op_name(add) == "arith.addf"
                && operand(add, 0) == arg(1)
                && operand(add, 1) == result(extend);
            wired.then_some(ReduceFn::Sum)
        }
        _ => None,
    };
    f.ok_or_else(refuse)
}

/// Whether `op` (a `linalg.generic` marked `ppmoe.narrows`) is a mean's narrowing of a sum over
/// `count` elements: every loop parallel, identity maps, its body the division by the count in
/// f64 and the truncation to f32, as ppmoe prints it.
pub fn divides_by(op: &OperationRef, count: usize) -> bool {
    let Ok((_, shape)) = op
        .result(0)
        .map_err(|e| e.to_string())
        .and_then(|r| tensor_type(r.r#type()))
    else {
        return false;
    };
    let (id, _, iterators) = maps(shape.len(), &[], true);
    if op.operand_count() != 2
        || strings(op, "indexing_maps") != [id.clone(), id]
        || strings(op, "iterator_types") != iterators
    {
        return false;
    }
    let Some(block) = op.region(0).ok().and_then(|r| r.first_block()) else {
        return false;
    };
    let ops = block_ops(block);
    let [constant, divide, truncate, y] = ops.as_slice() else {
        return false;
    };
    let operand = |o: &OperationRef, k: usize| o.operand(k).map(handle).ok();
    let result = |o: &OperationRef| o.result(0).map(handle).ok();
    let value = (constant.attribute("value").ok())
        .and_then(|a| FloatAttribute::try_from(a).ok())
        .map(|f| f.value());
    op_name(constant) == "arith.constant"
        && value == Some(count as f64)
        && op_name(divide) == "arith.divf"
        && operand(divide, 0) == block.argument(0).map(handle).ok()
        && operand(divide, 1) == result(constant)
        && op_name(truncate) == "arith.truncf"
        && operand(truncate, 0) == result(divide)
        && op_name(y) == "linalg.yield"
        && operand(y, 0) == result(truncate)
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{program, round_trip};
    use ppmoe_runtime::program::{Op, ReduceFn};
    use ppmoe_runtime::DType;

    /// Each f32 reduction and integer sum prints as a generic MLIR verifies (keepdims or not,
    /// one axis or several, all of them) and reads back as itself, its result of its type
    /// again.
    #[test]
    fn every_f32_reduction_and_integer_sum_prints_as_a_generic_and_reads_back_as_itself() {
        let cases: [(&[usize], bool, &[usize]); 4] = [
            (&[2], true, &[2, 3, 1]),
            (&[1], false, &[2, 4]),
            (&[0, 2], true, &[1, 3, 1]),
            (&[0, 1, 2], false, &[]),
        ];
        let functions = [
            (ReduceFn::Sum, DType::F32),
            (ReduceFn::Mean, DType::F32),
            (ReduceFn::Max, DType::F32),
            (ReduceFn::Min, DType::F32),
            (ReduceFn::Sum, DType::I32),
            (ReduceFn::Sum, DType::I64),
        ];
        for (f, dtype) in functions {
            for (axes, keepdims, out) in cases {
                let op = Op::ReduceAxes {
                    f,
                    axes: axes.to_vec(),
                    keepdims,
                };
                let p = program(op.clone(), (dtype, &[2, 3, 4]), (dtype, out));
                let (text, read) = round_trip(&p);
                assert!(!text.contains("core.reduce"), "{text}");
                let ins = &read.instructions;
                assert_eq!(ins.len(), 1, "{text}");
                assert_eq!(ins[0].op, op, "{text}");
                assert_eq!(read.buffers[ins[0].outputs[0]].dtype, dtype);
            }
        }
    }
}
