//! A one-hot of i64 indices along a new last axis, of static shapes, printed as a
//! `linalg.generic` and read back from it. The generic reads the indices and the depth; each
//! element compares its position along the new axis (`linalg.index`, cast to i64) with its
//! index, wrapped once where negative (`index + depth`, as ppmoe wraps it), and takes `on` where
//! they are equal and `off` elsewhere, an index out of range matching no position. The values
//! `[off, on]` are read from the body (`tensor.extract`, the one value it reads from outside:
//! the instruction's third operand, `captures`). Each constant comes just before its first
//! reader, where `sink_constants` puts back those that `-canonicalize` hoists.
//!
//! ```text
//! %h = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0)>,
//!        affine_map<(d0, d1) -> ()>, affine_map<(d0, d1) -> (d0, d1)>],
//!        iterator_types = ["parallel", "parallel"]}
//!      ins(%ids, %depth : tensor<16xi64>, tensor<i64>) outs(%e : tensor<16x4xf32>) {
//!      ^bb0(%i: i64, %n: i64, %o: f32):
//!        %zero = arith.constant 0 : i64
//!        %negative = arith.cmpi slt, %i, %zero : i64
//!        %wrapped = arith.addi %i, %n : i64
//!        %index = arith.select %negative, %wrapped, %i : i64
//!        %k = linalg.index 1 : index
//!        %position = arith.index_cast %k : index to i64
//!        %hot = arith.cmpi eq, %index, %position : i64
//!        %c0 = arith.constant 0 : index
//!        %off = tensor.extract %values[%c0] : tensor<2xf32>
//!        %c1 = arith.constant 1 : index
//!        %on = tensor.extract %values[%c1] : tensor<2xf32>
//!        %r = arith.select %hot, %on, %off : f32
//!        linalg.yield %r : f32
//!      } -> tensor<16x4xf32>
//! ```

use super::body::{body_is, Step, Use};
use super::reduce::{iterator_list, strings, tensor, typed, PARALLEL};
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{RegionLike, Value, ValueLike};
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

/// `arith.cmpi`'s predicates: equal, signed less than.
const EQ: i64 = 0;
const SLT: i64 = 2;
/// The body's steps that read the values `[off, on]` from outside it.
const READS_VALUES: [usize; 2] = [8, 10];

/// Whether ppmoe prints the one-hot `op` of `ids` by `depth` with `values` into `out` as a
/// generic: i64 indices and depth (a scalar or one element), two values of the result's
/// type, static shapes, the new axis last.
pub fn printable(op: &Op, [ids, depth, values]: [&Buffer; 3], out: &Buffer) -> bool {
    let Op::OneHot { axis } = *op else {
        return false;
    };
    let rank = ids.shape.len();
    let last = axis == -1 || usize::try_from(axis) == Ok(rank);
    let static_shapes = [ids, depth, values, out]
        .iter()
        .all(|b| b.shape.iter().all(Option::is_some));
    last && static_shapes
        && ids.dtype == DType::I64
        && depth.dtype == DType::I64
        && matches!(depth.shape[..], [] | [Some(1)])
        && values.shape == [Some(2)]
        && values.dtype == out.dtype
        && out.shape.len() == rank + 1
        && out.shape[..rank] == ids.shape[..]
}

/// The indices', the depth's and the result's indexing maps over the result's loops, for
/// indices of rank `rank` and a depth of rank `depth_rank` (0 or 1).
fn maps(rank: usize, depth_rank: usize) -> Vec<String> {
    let dims: Vec<String> = (0..=rank).map(|d| format!("d{d}")).collect();
    let map = |results: &str| format!("affine_map<({}) -> ({results})>", dims.join(", "));
    let depth = if depth_rank == 0 { "" } else { "0" };
    vec![
        map(&dims[..rank].join(", ")),
        map(depth),
        map(&dims.join(", ")),
    ]
}

/// The lines instruction `i` prints as (see the module's comment): `operands` the names of
/// its indices, depth and values, `result` its result's name, `loc` its location.
pub fn lines(
    i: usize,
    (operands, [ids, depth, values]): ([&str; 3], [&Buffer; 3]),
    (result, out): (&str, &Buffer),
    loc: &str,
) -> String {
    let rank = ids.shape.len();
    let element = out.dtype.mlir();
    let ty = tensor(&out.shape, element);
    let types = [ids, depth, values].map(|b| tensor(&b.shape, b.dtype.mlir()));
    let iterators = iterator_list(&[PARALLEL; 1].repeat(rank + 1));
    let [x, n, v] = operands;
    let (g, u) = (format!("%g{i}"), "loc(unknown)");
    let body = [
        format!("{g}_z = arith.constant 0 : i64 {u}"),
        format!("{g}_n = arith.cmpi slt, {g}_i, {g}_z : i64 {u}"),
        format!("{g}_w = arith.addi {g}_i, {g}_d : i64 {u}"),
        format!("{g}_x = arith.select {g}_n, {g}_w, {g}_i : i64 {u}"),
        format!("{g}_k = linalg.index {rank} : index {u}"),
        format!("{g}_p = arith.index_cast {g}_k : index to i64 {u}"),
        format!("{g}_h = arith.cmpi eq, {g}_x, {g}_p : i64 {u}"),
        format!("{g}_c0 = arith.constant 0 : index {u}"),
        format!("{g}_off = tensor.extract {v}[{g}_c0] : {} {u}", types[2]),
        format!("{g}_c1 = arith.constant 1 : index {u}"),
        format!("{g}_on = tensor.extract {v}[{g}_c1] : {} {u}", types[2]),
        format!("{g}_r = arith.select {g}_h, {g}_on, {g}_off : {element} {u}"),
        format!("linalg.yield {g}_r : {element} {u}"),
    ];
    format!(
        "    %d{i} = tensor.empty() : {ty} {u}\n    {result} = linalg.generic {{indexing_maps = [{}], iterator_types = [{iterators}]}} ins({x}, {n} : {}, {}) outs(%d{i} : {ty}) {{\n    ^bb0({g}_i: i64 {u}, {g}_d: i64 {u}, {g}_o: {element} {u}):\n      {}\n    }} -> {ty} loc({loc})\n",
        maps(rank, depth.shape.len()).join(", "),
        types[0],
        types[1],
        body.join("\n      ")
    )
}

/// The body of a one-hot along loop `rank` (the new axis) as ppmoe prints it.
fn body(rank: usize) -> Vec<Step> {
    use Use::{Arg, Outside, Step as S};
    vec![
        Step::new("arith.constant", &[]).with("value", 0),
        Step::new("arith.cmpi", &[Arg(0), S(0)]).with("predicate", SLT),
        Step::new("arith.addi", &[Arg(0), Arg(1)]),
        Step::new("arith.select", &[S(1), S(2), Arg(0)]),
        Step::new("linalg.index", &[]).with("dim", rank as i64),
        Step::new("arith.index_cast", &[S(4)]),
        Step::new("arith.cmpi", &[S(3), S(5)]).with("predicate", EQ),
        Step::new("arith.constant", &[]).with("value", 0),
        Step::new("tensor.extract", &[Outside, S(7)]),
        Step::new("arith.constant", &[]).with("value", 1),
        Step::new("tensor.extract", &[Outside, S(9)]),
        Step::new("arith.select", &[S(6), S(10), S(8)]),
        Step::new("linalg.yield", &[S(11)]),
    ]
}

/// Whether `op` (a `linalg.generic`) is of a one-hot's shape: two inputs, the first i64 of
/// one rank less than the result, the second an i64 of rank 0 or 1, all loops parallel, a
/// body that extracts from a tensor.
pub fn is_one_hot(op: &OperationRef) -> bool {
    let rank = |v: Result<Value, melior::Error>| typed(v).ok().map(|(t, s)| (t, s.len()));
    let result = rank(op.result(0).map(Into::into));
    let ids = rank(op.operand(0));
    let depth = rank(op.operand(1));
    let parallel = strings(op, "iterator_types").iter().all(|t| t == PARALLEL);
    let shaped = match (ids, depth, result) {
        (Some((DType::I64, r)), Some((DType::I64, d)), Some((_, out))) => r + 1 == out && d <= 1,
        _ => false,
    };
    let counts = op.operand_count() == 3 && op.result_count() == 1;
    counts && parallel && shaped && super::captures::extracts(op)
}

/// The values `[off, on]` the one-hot `op` reads from outside its body, where both its
/// extracts read the same tensor.
pub fn values<'c, 'a>(op: &OperationRef<'c, 'a>) -> Option<Value<'c, 'a>> {
    let block = op.region(0).ok()?.first_block()?;
    let ops = crate::passes::func_ops::block_ops(block);
    let [off, on] = READS_VALUES.map(|k| ops.get(k).and_then(|o| o.operand(0).ok()));
    let (off, on) = (off?, on?);
    let same = super::read::handle(off) == super::read::handle(on);
    // SAFETY: the value is an operand of an op of `op`'s body, defined outside it (checked by
    // `read`), so it lives as long as `op`'s function.
    let outside = unsafe { Value::from_raw(off.to_raw()) };
    same.then_some(outside)
}

/// The one-hot a `linalg.generic` of `is_one_hot`'s shape reads back as; its maps, iterators,
/// types and body must be the ones ppmoe prints.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let refuse =
        |what: &str| format!("'linalg.generic' of an i64 input and a depth (a one-hot): {what}");
    let (_, ids) = typed(op.operand(0))?;
    let (_, depth) = typed(op.operand(1))?;
    let (out, out_shape) = typed(op.result(0).map(Into::into))?;
    let rank = ids.len();
    let read_maps = strings(op, "indexing_maps");
    if read_maps != maps(rank, depth.len()) || out_shape[..rank] != ids[..] {
        return Err(refuse(&format!(
            "indexing maps {read_maps:?} are no one-hot ppmoe prints"
        )));
    }
    if !body_is(op, &body(rank)) {
        return Err(refuse("its body is not the comparison ppmoe prints"));
    }
    let values = values(op).ok_or_else(|| refuse("its two extracts read different values"))?;
    let (element, shape) = super::read::tensor_type(values.r#type())?;
    if element != out || shape != [Some(2)] {
        return Err(refuse("its values are not two of the result's type"));
    }
    Ok(Op::OneHot { axis: -1 })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{operand_names, program_of, round_trip};
    use ppmoe_runtime::program::{Op, Program};
    use ppmoe_runtime::DType;

    fn one_hot(values: DType, depth: &[usize], axis: i64, out: &[usize]) -> Program {
        let inputs = [
            ("ids", DType::I64, &[3, 5][..]),
            ("depth", DType::I64, depth),
            ("values", values, &[2][..]),
        ];
        program_of(Op::OneHot { axis }, &inputs, (values, out))
    }

    /// A one-hot along a new last axis prints as a generic MLIR verifies and reads back as
    /// itself, over the same three operands; along another axis it stays a `core` op.
    #[test]
    fn a_one_hot_prints_as_a_generic_and_reads_back_as_itself() {
        for (values, depth) in [(DType::F32, &[][..]), (DType::I64, &[1][..])] {
            for axis in [-1, 2] {
                let (text, read) = round_trip(&one_hot(values, depth, axis, &[3, 5, 4]));
                assert!(!text.contains("core.one_hot"), "{text}");
                assert_eq!(read.instructions.len(), 1, "{text}");
                assert_eq!(read.instructions[0].op, Op::OneHot { axis: -1 }, "{text}");
                assert_eq!(operand_names(&read), ["ids", "depth", "values"], "{text}");
            }
        }
        let (text, read) = round_trip(&one_hot(DType::F32, &[], 0, &[4, 3, 5]));
        assert!(text.contains("core.one_hot"), "{text}");
        assert_eq!(read.instructions[0].op, Op::OneHot { axis: 0 });
    }
}
