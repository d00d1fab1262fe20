//! A concatenation of operands of more than one float type into f32 (a `--dtype bf16` build's
//! gpt-oss attention, whose f32 scores are joined by the bf16 sink weights), of static shapes,
//! printed as a `linalg.generic` over the result and read back from it. `tensor.concat` takes
//! operands of the result's type only. ppmoe widens every half-precision operand to f32 and
//! concatenates; the generic computes each element the same way: along the axis, position `k`
//! is operand j's element `k - offset_j` for the j whose range holds it, widened where half
//! (`arith.extf`, exact). Each operand is an input read at `(k - offset_j) mod extent_j`
//! along the axis (its own position where `k` is in its range, and always in bounds, so every
//! read is defined), and a chain of selects on `k` keeps the one whose range holds it. The
//! maps are affine, so `-canonicalize` leaves the body as it is (an operand of one element
//! along the axis is read at `0`: MLIR simplifies `x mod 1`).
//!
//! ```text
//! %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1 mod 16)>,
//!        affine_map<(d0, d1) -> (d0, 0)>, affine_map<(d0, d1) -> (d0, d1)>],
//!        iterator_types = ["parallel", "parallel"]}
//!      ins(%scores, %sinks : tensor<4x16xf32>, tensor<4x1xbf16>) outs(%e : tensor<4x17xf32>) {
//!      ^bb0(%s: f32, %t: bf16, %o: f32):
//!        %w = arith.extf %t : bf16 to f32
//!        %k = linalg.index 1 : index                   (the axis)
//!        %off = arith.constant 16 : index              (where the sinks start)
//!        %in = arith.cmpi ult, %k, %off : index
//!        %r = arith.select %in, %s, %w : f32
//!        linalg.yield %r : f32
//!      } -> tensor<4x17xf32>
//! ```

use super::body::{body_is, Step, Use};
use super::read::op_name;
use super::reduce::{iterator_list, strings, tensor, typed, PARALLEL};
use crate::passes::func_ops::block_ops;
use melior::ir::attribute::Attribute;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::RegionLike;
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

/// `arith.cmpi ult`.
const ULT: i64 = 6;

/// The axis (from the front) along which ppmoe prints the concatenation `op` of `inputs` into
/// `out` as this generic: an f32 result, float operands not all f32, one rank and static
/// shapes, each operand of the result's extents off the axis and of some along it, the
/// operands' extents along it adding up to the result's.
pub fn printable(op: &Op, inputs: &[&Buffer], out: &Buffer) -> Option<usize> {
    let Op::Concat { axis } = *op else {
        return None;
    };
    let rank = out.shape.len();
    let from_front = if axis < 0 { axis + rank as i64 } else { axis };
    let axis = usize::try_from(from_front).ok().filter(|&a| a < rank)?;
    let floats = |b: &&Buffer| matches!(b.dtype, DType::F32 | DType::BF16 | DType::F16);
    let mixed = inputs.iter().any(|b| b.dtype != DType::F32);
    let shaped = |b: &&Buffer| {
        b.shape.len() == rank
            && (0..rank).all(|d| d == axis || b.shape[d] == out.shape[d])
            && b.shape[axis].is_some_and(|n| n > 0)
    };
    let along = (inputs.iter()).try_fold(0usize, |sum, b| {
        sum.checked_add(b.shape.get(axis).copied()??)
    });
    let fits = out.dtype == DType::F32
        && !inputs.is_empty()
        && mixed
        && inputs.iter().all(|b| floats(b) && shaped(b))
        && out.shape.iter().all(Option::is_some)
        && along.is_some()
        && along == out.shape[axis];
    fits.then_some(axis)
}

/// The indexing maps over `rank` loops of operands of `extents` along `axis` (each read at
/// its position less its offset, modulo its extent), then the result's.
fn maps(rank: usize, axis: usize, extents: &[usize]) -> Vec<String> {
    let dims: Vec<String> = (0..rank).map(|d| format!("d{d}")).collect();
    let map = |along: String| {
        let mut results = dims.clone();
        results[axis] = along;
        format!(
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            results.join(", ")
        )
    };
    let mut offset = 0;
    let mut out = Vec::new();
    for &n in extents {
        out.push(map(match n {
            1 => "0".into(),
            _ if offset % n == 0 => format!("d{axis} mod {n}"),
            _ => format!("(d{axis} - {offset}) mod {n}"),
        }));
        offset += n;
    }
    out.push(map(format!("d{axis}")));
    out
}

/// The lines instruction `i` prints as (see the module's comment): `names` and `buffers` its
/// operands', `axis` the one it joins along, `result` its result's name, `loc` its location.
pub fn lines(
    (i, axis): (usize, usize),
    (names, buffers): (&[&str], &[&Buffer]),
    (result, out): (&str, &Buffer),
    loc: &str,
) -> String {
    let rank = out.shape.len();
    let ty = tensor(&out.shape, "f32");
    let (g, u) = (format!("%g{i}"), "loc(unknown)");
    let extents: Vec<usize> = buffers.iter().map(|b| b.shape[axis].unwrap_or(0)).collect();
    let mut arguments = Vec::new();
    let mut body = Vec::new();
    let mut values = Vec::new();
    for (j, b) in buffers.iter().enumerate() {
        let element = b.dtype.mlir();
        arguments.push(format!("{g}_a{j}: {element} {u}"));
        if b.dtype == DType::F32 {
            values.push(format!("{g}_a{j}"));
        } else {
            body.push(format!(
                "{g}_w{j} = arith.extf {g}_a{j} : {element} to f32 {u}"
            ));
            values.push(format!("{g}_w{j}"));
        }
    }
    body.push(format!("{g}_k = linalg.index {axis} : index {u}"));
    let mut chosen = values.last().cloned().unwrap_or_default();
    for j in (0..values.len().saturating_sub(1)).rev() {
        let offset: usize = extents[..=j].iter().sum();
        body.push(format!("{g}_off{j} = arith.constant {offset} : index {u}"));
        body.push(format!(
            "{g}_in{j} = arith.cmpi ult, {g}_k, {g}_off{j} : index {u}"
        ));
        body.push(format!(
            "{g}_r{j} = arith.select {g}_in{j}, {}, {chosen} : f32 {u}",
            values[j]
        ));
        chosen = format!("{g}_r{j}");
    }
    body.push(format!("linalg.yield {chosen} : f32 {u}"));
    let types: Vec<String> = (buffers.iter())
        .map(|b| tensor(&b.shape, b.dtype.mlir()))
        .collect();
    arguments.push(format!("{g}_o: f32 {u}"));
    format!(
        "    %d{i} = tensor.empty() : {ty} {u}\n    {result} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}} ins({} : {}) outs(%d{i} : {ty}) {{\n    ^bb0({}):\n      {}\n    }} -> {ty} loc({loc})\n",
        maps(rank, axis, &extents).join(", "),
        iterator_list(&[PARALLEL; 1].repeat(rank)),
        names.join(", "),
        types.join(", "),
        arguments.join(", "),
        body.join("\n      ")
    )
}

/// The body of a concatenation along `axis` of operands of `extents` along it, `half` saying
/// of each whether it is widened, as `lines` prints it.
fn body(axis: usize, operands: &[(usize, bool)]) -> Vec<Step> {
    use Use::{Arg, Step as S};
    let mut steps = Vec::new();
    let mut values = Vec::new();
    for (j, &(_, half)) in operands.iter().enumerate() {
        if half {
            steps.push(Step::new("arith.extf", &[Arg(j)]));
            values.push(S(steps.len() - 1));
        } else {
            values.push(Arg(j));
        }
    }
    let k = S(steps.len());
    steps.push(Step::new("linalg.index", &[]).with("dim", axis as i64));
    let mut chosen = values.last().copied().unwrap_or(Arg(0));
    for j in (0..values.len().saturating_sub(1)).rev() {
        let offset: usize = operands[..=j].iter().map(|&(n, _)| n).sum();
        steps.push(Step::new("arith.constant", &[]).with("value", offset as i64));
        steps.push(Step::new("arith.cmpi", &[k, S(steps.len() - 1)]).with("predicate", ULT));
        steps.push(Step::new(
            "arith.select",
            &[S(steps.len() - 1), values[j], chosen],
        ));
        chosen = S(steps.len() - 1);
    }
    steps.push(Step::new("linalg.yield", &[chosen]));
    steps
}

/// Whether `op` (a `linalg.generic`) is of this concatenation's shape: float inputs not all
/// f32, each of the f32 result's rank, all loops parallel, a body that reads a loop's index
/// (which an elementwise generic of mixed types does not).
pub fn is_mixed_concat(op: &OperationRef) -> bool {
    let Ok((DType::F32, out)) = typed(op.result(0).map(Into::into)) else {
        return false;
    };
    let inputs: Vec<_> = (0..op.operand_count().saturating_sub(1))
        .map(|k| typed(op.operand(k)).ok())
        .collect();
    let float = |t: &Option<(DType, Vec<Option<usize>>)>| {
        t.as_ref().is_some_and(|(d, shape)| {
            matches!(d, DType::F32 | DType::BF16 | DType::F16) && shape.len() == out.len()
        })
    };
    let mixed = inputs.iter().flatten().any(|(d, _)| *d != DType::F32);
    let parallel = strings(op, "iterator_types").iter().all(|t| t == PARALLEL);
    let shaped = !inputs.is_empty() && inputs.iter().all(float) && mixed && parallel;
    shaped && op.result_count() == 1 && reads_an_index(op)
}

/// `maps` as MLIR prints them once parsed (it simplifies affine expressions: `(d0 - 4) mod 2`
/// is `d0 mod 2`, `x mod 1` is `0`); a map that does not parse stays as it is.
fn as_mlir_prints(op: &OperationRef, maps: &[String]) -> Vec<String> {
    let owner = op.context();
    // SAFETY: `owner` (the handle `to_ref` views) lives to the end of this function, and the
    // context it names, which owns `op`, outlives it.
    let context = unsafe { owner.to_ref() };
    (maps.iter())
        .map(|m| Attribute::parse(context, m).map_or_else(|| m.clone(), |a| a.to_string()))
        .collect()
}

/// Whether `op`'s body reads one of its loops' indices (`linalg.index`).
fn reads_an_index(op: &OperationRef) -> bool {
    let block = op.region(0).ok().and_then(|r| r.first_block());
    block.is_some_and(|b| block_ops(b).iter().any(|o| op_name(o) == "linalg.index"))
}

/// The concatenation a `linalg.generic` of `is_mixed_concat`'s shape reads back as; its maps,
/// iterators, types and body must be the ones ppmoe prints.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let refuse = |what: &str| {
        format!(
            "'linalg.generic' of float inputs of mixed types into f32 (a concatenation): {what}"
        )
    };
    let (_, out) = typed(op.result(0).map(Into::into))?;
    let rank = out.len();
    let mut operands = Vec::new();
    for k in 0..op.operand_count().saturating_sub(1) {
        let (element, shape) = typed(op.operand(k))?;
        if shape.len() != rank {
            return Err(refuse("an input of another rank than the result's"));
        }
        operands.push((element != DType::F32, shape));
    }
    let read_maps = strings(op, "indexing_maps");
    let axis = (0..rank).find(|&axis| {
        let extents: Option<Vec<usize>> = operands.iter().map(|(_, s)| s[axis]).collect();
        let Some(extents) = extents else {
            return false;
        };
        let fits = (operands.iter()).all(|(_, s)| (0..rank).all(|d| d == axis || s[d] == out[d]));
        let along = (extents.iter()).try_fold(0usize, |sum, &n| sum.checked_add(n));
        let halves: Vec<(usize, bool)> = (extents.iter().copied())
            .zip(operands.iter().map(|&(half, _)| half))
            .collect();
        fits && along.is_some()
            && out[axis] == along
            && extents.iter().all(|&n| n > 0)
            && read_maps == as_mlir_prints(op, &maps(rank, axis, &extents))
            && body_is(op, &body(axis, &halves))
    });
    let axis = axis.ok_or_else(|| {
        refuse("its maps and body are not the offset reads and selects ppmoe prints")
    })?;
    Ok(Op::Concat { axis: axis as i64 })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{operand_names, program_of, round_trip};
    use ppmoe_runtime::program::Op;
    use ppmoe_runtime::DType;

    /// A concatenation's axis, that axis counted from the front, its operands' shapes and its
    /// result's.
    type Case<'a> = (i64, i64, [&'a [usize]; 3], &'a [usize]);

    /// Concatenations of f32, bf16 and f16 operands into f32, along the first axis and the
    /// last, print as one generic MLIR verifies (no `tensor.concat`, no `core` op) and read
    /// back as themselves over the same operands in order; operands all f32 stay
    /// `tensor.concat`.
    #[test]
    fn a_mixed_concat_prints_as_a_generic_and_reads_back_as_itself() {
        let cases: [Case; 2] = [
            (-1, 1, [&[4, 16], &[4, 1], &[4, 3]], &[4, 20]),
            (0, 0, [&[2, 5], &[1, 5], &[3, 5]], &[6, 5]),
        ];
        for (axis, from_front, shapes, out) in cases {
            for dtypes in [
                [DType::F32, DType::BF16, DType::F16],
                [DType::BF16, DType::F32, DType::BF16],
            ] {
                let inputs = [
                    ("a", dtypes[0], shapes[0]),
                    ("b", dtypes[1], shapes[1]),
                    ("c", dtypes[2], shapes[2]),
                ];
                let p = program_of(Op::Concat { axis }, &inputs, (DType::F32, out));
                let (text, read) = round_trip(&p);
                assert!(!text.contains("concat"), "{text}");
                assert_eq!(text.matches(" mod ").count(), 2, "{text}");
                let want = Op::Concat { axis: from_front };
                assert_eq!(read.instructions.len(), 1, "{text}");
                assert_eq!(read.instructions[0].op, want, "{text}");
                assert_eq!(operand_names(&read), ["a", "b", "c"], "{text}");
            }
        }
        let inputs = [
            ("a", DType::F32, &[4, 16][..]),
            ("b", DType::F32, &[4, 1][..]),
        ];
        let same = program_of(Op::Concat { axis: 1 }, &inputs, (DType::F32, &[4, 17]));
        assert!(round_trip(&same).0.contains("tensor.concat"));
    }
}
