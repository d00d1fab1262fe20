//! The casts no single `arith` op makes as ppmoe does, printed as the `linalg.map` that
//! computes them and read back from it:
//!
//! - f32 to i64 or i32: ppmoe truncates toward zero and saturates at i64's range (a NaN is 0,
//!   as Rust's `as` casts), then wraps to the result's width (an i32 keeps the low 32 bits, as
//!   its integer arithmetic wraps). `arith.fptosi` is that truncation where the value is in
//!   i64's range and poison outside it, so the map selects the saturated value there (a
//!   select does not propagate the poison of the operand it does not take);
//! - a number to a boolean: whether it is not zero (`arith.cmpf une` with 0.0, so a NaN is
//!   true; `arith.cmpi ne` with 0).
//!
//! ```text
//! %r = linalg.map ins(%x : tensor<32xf32>) outs(%d : tensor<32xi64>)
//!   (%in: f32, %init: i64) {
//!     %nan = arith.cmpf uno, %in, %in : f32
//!     %hi = arith.constant 9.22337203E+18 : f32            (2^63)
//!     %over = arith.cmpf oge, %in, %hi : f32
//!     %lo = arith.constant -9.22337203E+18 : f32           (-2^63)
//!     %under = arith.cmpf olt, %in, %lo : f32
//!     %i = arith.fptosi %in : f32 to i64
//!     %max = arith.constant 9223372036854775807 : i64
//!     %min = arith.constant -9223372036854775808 : i64
//!     %zero = arith.constant 0 : i64
//!     %a = arith.select %under, %min, %i : i64
//!     %b = arith.select %over, %max, %a : i64
//!     %c = arith.select %nan, %zero, %b : i64
//!     linalg.yield %c : i64                                 (an i32's: arith.trunci first)
//!   }
//! ```

use super::body::{body_is, Step, Use};
use super::reduce::{tensor, typed};
use melior::ir::operation::{OperationLike, OperationRef};
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

/// `arith.cmpf`'s predicates: ordered greater or equal, ordered less than, unordered.
const OGE: i64 = 3;
const OLT: i64 = 4;
const UNO: i64 = 14;
/// 2^63, the least f32 past i64's range, as its bits.
const TWO_TO_63: u32 = 0x5F00_0000;

/// Whether `op` over `x` into `out` is a cast ppmoe prints so: f32 to i64 or i32, or f32,
/// i32 or i64 to a boolean; static shapes.
pub fn printable(op: &Op, x: &Buffer, out: &Buffer) -> bool {
    let Op::Cast { to } = *op else {
        return false;
    };
    let saturating = x.dtype == DType::F32 && matches!(to, DType::I64 | DType::I32);
    let to_bool = to == DType::Bool && matches!(x.dtype, DType::F32 | DType::I32 | DType::I64);
    (saturating || to_bool)
        && out.dtype == to
        && out.shape == x.shape
        && x.shape.iter().all(Option::is_some)
}

/// The comparison with zero a cast of `from` to a boolean is: the zero as MLIR spells it,
/// the op, its predicate's name and value.
fn not_zero(from: DType) -> (&'static str, &'static str, &'static str, i64) {
    match from {
        DType::F32 => ("0.000000e+00", "arith.cmpf", "une", UNE),
        _ => ("0", "arith.cmpi", "ne", NE),
    }
}

/// The lines instruction `i` prints as (see the module's comment): `x` its operand's name,
/// `result` its result's, `loc` its location.
pub fn lines(
    i: usize,
    (x, x_buffer): (&str, &Buffer),
    (result, to): (&str, DType),
    loc: &str,
) -> String {
    let from = x_buffer.dtype.mlir();
    let x_type = tensor(&x_buffer.shape, from);
    let out_type = tensor(&x_buffer.shape, to.mlir());
    let (g, u) = (format!("%g{i}"), "loc(unknown)");
    if to == DType::Bool {
        let (zero, compare, predicate, _) = not_zero(x_buffer.dtype);
        return format!(
            "    %d{i} = tensor.empty() : {out_type} {u}\n    {result} = linalg.map ins({x} : {x_type}) outs(%d{i} : {out_type})\n      ({g}_x: {from} {u}, {g}_o: i1 {u}) {{\n        {g}_zero = arith.constant {zero} : {from} {u}\n        {g}_b = {compare} {predicate}, {g}_x, {g}_zero : {from} {u}\n        linalg.yield {g}_b : i1 {u}\n      }} loc({loc})\n"
        );
    }
    let (last, narrow) = match to {
        DType::I32 => (
            format!("{g}_t"),
            format!("\n        {g}_t = arith.trunci {g}_c : i64 to i32 {u}"),
        ),
        _ => (format!("{g}_c"), String::new()),
    };
    format!(
        "    %d{i} = tensor.empty() : {out_type} {u}\n    {result} = linalg.map ins({x} : {x_type}) outs(%d{i} : {out_type})\n      ({g}_x: f32 {u}, {g}_o: {} {u}) {{\n        {g}_nan = arith.cmpf uno, {g}_x, {g}_x : f32 {u}\n        {g}_hi = arith.constant 0x{TWO_TO_63:08X} : f32 {u}\n        {g}_over = arith.cmpf oge, {g}_x, {g}_hi : f32 {u}\n        {g}_lo = arith.constant 0x{:08X} : f32 {u}\n        {g}_under = arith.cmpf olt, {g}_x, {g}_lo : f32 {u}\n        {g}_i = arith.fptosi {g}_x : f32 to i64 {u}\n        {g}_max = arith.constant {} : i64 {u}\n        {g}_min = arith.constant {} : i64 {u}\n        {g}_zero = arith.constant 0 : i64 {u}\n        {g}_a = arith.select {g}_under, {g}_min, {g}_i : i64 {u}\n        {g}_b = arith.select {g}_over, {g}_max, {g}_a : i64 {u}\n        {g}_c = arith.select {g}_nan, {g}_zero, {g}_b : i64 {u}{narrow}\n        linalg.yield {last} : {} {u}\n      }} loc({loc})\n",
        to.mlir(),
        TWO_TO_63 | 0x8000_0000,
        i64::MAX,
        i64::MIN,
        to.mlir(),
    )
}

/// `arith.cmpf une` and `arith.cmpi ne`.
const UNE: i64 = 13;
const NE: i64 = 1;

/// The body of a cast of `from` to `to` as ppmoe prints it.
fn body(from: DType, to: DType) -> Vec<Step> {
    use Use::{Arg, Step as S};
    if to == DType::Bool {
        let (_, compare, _, predicate) = not_zero(from);
        let zero = match from {
            DType::F32 => Step::float(0.0),
            _ => Step::new("arith.constant", &[]).with("value", 0),
        };
        return vec![
            zero,
            Step::new(compare, &[Arg(0), S(0)]).with("predicate", predicate),
            Step::new("linalg.yield", &[S(1)]),
        ];
    }
    let bound = f32::from_bits(TWO_TO_63) as f64;
    let mut steps = vec![
        Step::new("arith.cmpf", &[Arg(0), Arg(0)]).with("predicate", UNO),
        Step::float(bound),
        Step::new("arith.cmpf", &[Arg(0), S(1)]).with("predicate", OGE),
        Step::float(-bound),
        Step::new("arith.cmpf", &[Arg(0), S(3)]).with("predicate", OLT),
        Step::new("arith.fptosi", &[Arg(0)]),
        Step::new("arith.constant", &[]).with("value", i64::MAX),
        Step::new("arith.constant", &[]).with("value", i64::MIN),
        Step::new("arith.constant", &[]).with("value", 0),
        Step::new("arith.select", &[S(4), S(7), S(5)]),
        Step::new("arith.select", &[S(2), S(6), S(9)]),
        Step::new("arith.select", &[S(0), S(8), S(10)]),
    ];
    match to {
        DType::I32 => {
            steps.push(Step::new("arith.trunci", &[S(11)]));
            steps.push(Step::new("linalg.yield", &[S(12)]));
        }
        _ => steps.push(Step::new("linalg.yield", &[S(11)])),
    }
    steps
}

/// Whether `op` (a `linalg.map`) maps f32 to an integer type: a cast's shape.
pub fn is_cast(op: &OperationRef) -> bool {
    let from = typed(op.operand(0)).map(|(d, _)| d);
    let to = typed(op.result(0).map(Into::into)).map(|(d, _)| d);
    let number = from
        .as_ref()
        .is_ok_and(|d| matches!(d, DType::F32 | DType::I32 | DType::I64));
    let to_integer = to
        .as_ref()
        .is_ok_and(|d| matches!(d, DType::I64 | DType::I32));
    (from == Ok(DType::F32) && to_integer) || (number && to == Ok(DType::Bool))
}

/// The cast a `linalg.map` of f32 to i64 or i32 reads back as; its body must be the one ppmoe
/// prints.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let (from, _) = typed(op.operand(0))?;
    let (to, _) = typed(op.result(0).map(Into::into))?;
    if op.operand_count() != 2 || !body_is(op, &body(from, to)) {
        return Err(format!(
            "'linalg.map' of {from:?} to {to:?}: its body is not the cast ppmoe prints (to an integer: NaN to 0, beyond i64's range to its bounds, arith.fptosi within, an i32 truncated from the i64; to a boolean: not equal to zero, a NaN true)"
        ));
    }
    Ok(Op::Cast { to })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{program, round_trip};
    use ppmoe_runtime::program::Op;
    use ppmoe_runtime::DType;

    /// A cast of f32 to i64 or i32, or of a number to booleans, prints as the map MLIR
    /// verifies and reads back as itself; f32 to another integer type stays a `core` op.
    #[test]
    fn casts_no_single_arith_op_makes_print_as_a_map_and_read_back_as_themselves() {
        let cases = [
            (DType::F32, DType::I64, true),
            (DType::F32, DType::I32, true),
            (DType::F32, DType::U8, false),
            (DType::F32, DType::Bool, true),
            (DType::I64, DType::Bool, true),
            (DType::I32, DType::Bool, true),
        ];
        for (from, to, mapped) in cases {
            let op = Op::Cast { to };
            let p = program(op.clone(), (from, &[2, 3]), (to, &[2, 3]));
            let (text, read) = round_trip(&p);
            assert_eq!(text.contains("core.cast"), !mapped, "{text}");
            assert_eq!(read.instructions[0].op, op, "{text}");
        }
    }
}
