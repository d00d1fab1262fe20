//! A layer norm (`layer_norm`: over the axes from `axis` to the end, times a scale, plus an
//! optional bias) of f32, bf16 or f16 activations printed as three `linalg.generic`s and read
//! back as the one instruction.
//! ppmoe computes a row's sum, and its squared deviations' sum, in f64 from +0.0 element by
//! element, then each element's `(x - mean) / sqrt(var + eps)` in f64, rounded once to f32,
//! times the scale plus the bias in f32; the generics compute exactly that:
//!
//! 1. the sum: `reduction` loops over the normalised axes into a zero f64 fill, each element
//!    `arith.extf` to f64 and added (a sum's body, left unnarrowed);
//! 2. the squared deviations' sum, likewise, of the element less the mean (the sum read at
//!    the row, `arith.divf` by the count) times itself;
//! 3. every loop parallel over the input, the sum, the squares, the scale and the bias (read
//!    along the normalised axes): the deviation times `1 / math.sqrt(squares / count + eps)`
//!    in f64, `arith.truncf` to f32, `arith.mulf` by the scale, `arith.addf` of the bias (of a
//!    zero without one, as ppmoe adds). A bf16 or f16 scale or bias (a `--dtype bf16` build's
//!    norm weights) is `arith.extf`ed to f32 first, exactly, as the runtime widens it.
//!
//! bf16 or f16 activations (a half-precision model's) are `arith.extf`ed to f64 where the f32
//! ones are (exactly, as the runtime widens them), and the f32 result is `arith.truncf`ed to
//! their type last, rounded to nearest even as the runtime stores an f32 result in a
//! half-precision buffer.
//!
//! The first two are read as parts of the third (`part`): their results must feed only layer
//! norms' generics, and the third is read back only where the two are exactly these over its
//! own input (`read`).

use super::body::{body_is, Step, Use};
use super::print::element_type;
use super::read::{handle, op_name, tensor_type, users};
use super::reduce::{iterator_list, maps, strings, tensor, PARALLEL};
use melior::ir::operation::{OperationLike, OperationRef, OperationResult};
use melior::ir::ValueLike;
use ppmoe_runtime::program::{Buffer, Op};
use ppmoe_runtime::DType;

/// The layer norm `op` makes of `inputs` (x, scale, bias?) into `out` where ppmoe prints it as
/// generics: an f32 input and result, static shapes, the scale and bias f32, bf16 or f16 and
/// of the normalised axes' shape. Returns its axis counted from the front and its epsilon.
pub fn printable(op: &Op, inputs: &[Option<&Buffer>], out: &Buffer) -> Option<(usize, f32)> {
    let Op::LayerNorm { axis, epsilon } = *op else {
        return None;
    };
    let (x, scale, bias) = match inputs {
        [Some(x), Some(scale)] => (*x, *scale, None),
        [Some(x), Some(scale), bias] => (*x, *scale, *bias),
        _ => return None,
    };
    let rank = i64::try_from(x.shape.len()).ok()?;
    let from_front = usize::try_from(if axis < 0 { axis + rank } else { axis }).ok()?;
    let normalised = x.shape.get(from_front..)?;
    let fits_axes = |b: &Buffer| is_float(b.dtype) && b.shape == normalised;
    let fits = is_float(x.dtype)
        && out.dtype == x.dtype
        && out.shape == x.shape
        && from_front < x.shape.len()
        && x.shape.iter().all(Option::is_some)
        && fits_axes(scale)
        && bias.is_none_or(fits_axes);
    fits.then_some((from_front, epsilon))
}

/// The float types a layer norm's operands and result may be (a half-precision one widened in
/// the body, exactly, as the runtime widens it).
fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::BF16 | DType::F16)
}

/// An f64 as an MLIR float literal that reads back as it (Rust's shortest round-trip digits,
/// with the point MLIR's grammar wants).
fn literal(v: f64) -> String {
    let s = format!("{v:e}");
    match s.split_once('e') {
        Some((m, e)) if !m.contains('.') => format!("{m}.0e{e}"),
        _ => s,
    }
}

/// The maps of a layer norm of a rank-`rank` input normalised from `axis`: the input's (the
/// identity), a row's (the normalised axes read at 0), the scale's (the normalised axes).
fn layer_maps(rank: usize, axis: usize) -> (String, String, String) {
    let axes: Vec<usize> = (axis..rank).collect();
    let (id, row, _) = maps(rank, &axes, true);
    let dims: Vec<String> = (0..rank).map(|d| format!("d{d}")).collect();
    let scale = format!(
        "affine_map<({}) -> ({})>",
        dims.join(", "),
        dims[axis..].join(", ")
    );
    (id, row, scale)
}

/// The lines instruction `i` prints as (see the module's comment): `names` its operands'
/// (x, scale, bias?), `buffers` those operands, `result` its result's name, `loc` its location.
pub fn lines(
    (i, axis, epsilon): (usize, usize, f32),
    (names, buffers): (&[&str], &[&Buffer]),
    result: &str,
    loc: &str,
) -> String {
    let x = buffers[0];
    let rank = x.shape.len();
    let (id, row, scale_map) = layer_maps(rank, axis);
    let axes: Vec<usize> = (axis..rank).collect();
    let (_, _, reducing) = maps(rank, &axes, true);
    let count: usize = x.shape[axis..].iter().map(|d| d.unwrap_or(0)).product();
    let n = literal(count as f64);
    let eps = literal(epsilon as f64);
    let xe = element_type(x.dtype);
    let x_type = tensor(&x.shape, xe);
    let row_shape: Vec<Option<usize>> = (x.shape.iter().enumerate())
        .map(|(d, &s)| if d >= axis { Some(1) } else { s })
        .collect();
    let row_type = tensor(&row_shape, "f64");
    let weight_type = |b: &Buffer| tensor(&x.shape[axis..], element_type(b.dtype));
    let u = "loc(unknown)";
    let (s, q, g) = (format!("%v{i}_s"), format!("%v{i}_q"), format!("%g{i}"));
    let mut text = format!(
        "    %d{i} = tensor.empty() : {row_type} {u}\n    %c{i} = arith.constant 0.000000e+00 : f64 {u}\n    %f{i} = linalg.fill ins(%c{i} : f64) outs(%d{i} : {row_type}) -> {row_type} {u}\n"
    );
    text += &format!(
        "    {s} = linalg.generic {{indexing_maps = [{id}, {row}], iterator_types = [{}]}} ins({x_name} : {x_type}) outs(%f{i} : {row_type}) {{\n    ^bb0({g}_a: {xe} {u}, {g}_o: f64 {u}):\n      {g}_e = arith.extf {g}_a : {xe} to f64 {u}\n      {g}_r = arith.addf {g}_o, {g}_e : f64 {u}\n      linalg.yield {g}_r : f64 {u}\n    }} -> {row_type} {u}\n",
        iterator_list(&reducing),
        x_name = names[0],
    );
    text += &format!(
        "    {q} = linalg.generic {{indexing_maps = [{id}, {row}, {row}], iterator_types = [{}]}} ins({x_name}, {s} : {x_type}, {row_type}) outs(%f{i} : {row_type}) {{\n    ^bb0({g}_b: {xe} {u}, {g}_s: f64 {u}, {g}_p: f64 {u}):\n      {g}_f = arith.extf {g}_b : {xe} to f64 {u}\n      {g}_n = arith.constant {n} : f64 {u}\n      {g}_m = arith.divf {g}_s, {g}_n : f64 {u}\n      {g}_d = arith.subf {g}_f, {g}_m : f64 {u}\n      {g}_q = arith.mulf {g}_d, {g}_d : f64 {u}\n      {g}_t = arith.addf {g}_p, {g}_q : f64 {u}\n      linalg.yield {g}_t : f64 {u}\n    }} -> {row_type} {u}\n",
        iterator_list(&reducing),
        x_name = names[0],
    );
    let scale = weight_operand(buffers[1], (&format!("{g}_g"), &format!("{g}_gw")));
    let bias = (names.get(2).zip(buffers.get(2)))
        .map(|(_, b)| weight_operand(b, (&format!("{g}_y"), &format!("{g}_yw"))));
    let (bias_operand, bias_map, bias_type, bias_arg, widen_bias) = match (&bias, names.get(2)) {
        (Some(b), Some(name)) => (
            format!(", {name}"),
            format!(", {scale_map}"),
            format!(", {}", weight_type(buffers[2])),
            format!(", {}", b.argument),
            b.widen.clone(),
        ),
        _ => Default::default(),
    };
    let add_bias = match &bias {
        Some(b) => format!("{widen_bias}{g}_z = arith.addf {g}_w, {} : f32 {u}", b.value),
        None => format!(
            "{g}_0 = arith.constant 0.000000e+00 : f32 {u}\n      {g}_z = arith.addf {g}_w, {g}_0 : f32 {u}"
        ),
    };
    let scale_type = weight_type(buffers[1]);
    let (scale_arg, widen_scale, scale_value) = (&scale.argument, &scale.widen, &scale.value);
    let parallel = iterator_list(&vec![PARALLEL; rank]);
    // A half-precision result: the f32 value rounded to it (to nearest even), as the runtime
    // stores an f32 result in a half-precision buffer.
    let (narrow, yielded) = match x.dtype {
        DType::F32 => (String::new(), format!("{g}_z")),
        _ => (
            format!("{g}_zn = arith.truncf {g}_z : f32 to {xe} {u}\n      "),
            format!("{g}_zn"),
        ),
    };
    text += &format!(
        "    %e{i} = tensor.empty() : {x_type} {u}\n    {result} = linalg.generic {{indexing_maps = [{id}, {row}, {row}, {scale_map}{bias_map}, {id}], iterator_types = [{parallel}]}} ins({x_name}, {s}, {q}, {scale}{bias_operand} : {x_type}, {row_type}, {row_type}, {scale_type}{bias_type}) outs(%e{i} : {x_type}) {{\n    ^bb0({g}_x: {xe} {u}, {g}_sum: f64 {u}, {g}_sq: f64 {u}, {scale_arg}{bias_arg}, {g}_out: {xe} {u}):\n      {g}_h = arith.extf {g}_x : {xe} to f64 {u}\n      {g}_c = arith.constant {n} : f64 {u}\n      {g}_mean = arith.divf {g}_sum, {g}_c : f64 {u}\n      {g}_dev = arith.subf {g}_h, {g}_mean : f64 {u}\n      {g}_var = arith.divf {g}_sq, {g}_c : f64 {u}\n      {g}_eps = arith.constant {eps} : f64 {u}\n      {g}_ve = arith.addf {g}_var, {g}_eps : f64 {u}\n      {g}_sd = math.sqrt {g}_ve : f64 {u}\n      {g}_one = arith.constant 1.000000e+00 : f64 {u}\n      {g}_inv = arith.divf {g}_one, {g}_sd : f64 {u}\n      {g}_t = arith.mulf {g}_dev, {g}_inv : f64 {u}\n      {g}_n32 = arith.truncf {g}_t : f64 to f32 {u}\n      {widen_scale}{g}_w = arith.mulf {g}_n32, {scale_value} : f32 {u}\n      {add_bias}\n      {narrow}linalg.yield {yielded} : {xe} {u}\n    }} -> {x_type} loc({loc})\n",
        x_name = names[0],
        scale = names[1],
    );
    text
}

/// A scale or bias as the normalisation's body reads it: its block argument, the line that
/// widens a half-precision one to f32 (none for f32), and the f32 value the body uses.
struct WeightOperand {
    argument: String,
    widen: String,
    value: String,
}

/// `b` as block argument `arg`, widened into `wide` where it is half precision.
fn weight_operand(b: &Buffer, (arg, wide): (&str, &str)) -> WeightOperand {
    let u = "loc(unknown)";
    let ty = element_type(b.dtype);
    let argument = format!("{arg}: {ty} {u}");
    if b.dtype == DType::F32 {
        return WeightOperand {
            argument,
            widen: String::new(),
            value: arg.into(),
        };
    }
    WeightOperand {
        argument,
        widen: format!("{wide} = arith.extf {arg} : {ty} to f32 {u}\n      "),
        value: wide.into(),
    }
}

/// The sum's body: each element extended to f64 and added.
fn sum_body() -> Vec<Step> {
    use Use::{Arg, Step as S};
    vec![
        Step::new("arith.extf", &[Arg(0)]),
        Step::new("arith.addf", &[Arg(1), S(0)]),
        Step::new("linalg.yield", &[S(1)]),
    ]
}

/// The squared deviations' body over `count` elements a row.
fn squares_body(count: f64) -> Vec<Step> {
    use Use::{Arg, Step as S};
    vec![
        Step::new("arith.extf", &[Arg(0)]),
        Step::float(count),
        Step::new("arith.divf", &[Arg(1), S(1)]),
        Step::new("arith.subf", &[S(0), S(2)]),
        Step::new("arith.mulf", &[S(3), S(3)]),
        Step::new("arith.addf", &[Arg(2), S(4)]),
        Step::new("linalg.yield", &[S(5)]),
    ]
}

/// The normalisation's body over `count` elements a row, with `epsilon`; `widened` says, of
/// the scale and of the bias (none without one), whether it is half precision and widened;
/// `narrowed`, whether the result is half precision (the f32 value truncated to it).
fn normalise_body(
    count: f64,
    epsilon: f64,
    widened: (bool, Option<bool>),
    narrowed: bool,
) -> Vec<Step> {
    use Use::{Arg, Step as S};
    let mut steps = vec![
        Step::new("arith.extf", &[Arg(0)]),
        Step::float(count),
        Step::new("arith.divf", &[Arg(1), S(1)]),
        Step::new("arith.subf", &[S(0), S(2)]),
        Step::new("arith.divf", &[Arg(2), S(1)]),
        Step::float(epsilon),
        Step::new("arith.addf", &[S(4), S(5)]),
        Step::new("math.sqrt", &[S(6)]),
        Step::float(1.0),
        Step::new("arith.divf", &[S(8), S(7)]),
        Step::new("arith.mulf", &[S(3), S(9)]),
        Step::new("arith.truncf", &[S(10)]),
    ];
    // The step that reads block argument `arg` as f32: the argument, or its widening.
    let read_f32 = |steps: &mut Vec<Step>, arg: usize, half: bool| {
        if !half {
            return Arg(arg);
        }
        steps.push(Step::new("arith.extf", &[Arg(arg)]));
        S(steps.len() - 1)
    };
    let scale = read_f32(&mut steps, 3, widened.0);
    steps.push(Step::new("arith.mulf", &[S(11), scale]));
    let scaled = S(steps.len() - 1);
    let bias = match widened.1 {
        Some(half) => read_f32(&mut steps, 4, half),
        None => {
            steps.push(Step::float(0.0));
            S(steps.len() - 1)
        }
    };
    steps.push(Step::new("arith.addf", &[scaled, bias]));
    if narrowed {
        steps.push(Step::new("arith.truncf", &[S(steps.len() - 1)]));
    }
    steps.push(Step::new("linalg.yield", &[S(steps.len() - 1)]));
    steps
}

/// The element types of `op`'s operands (inputs, then destination).
fn operand_types(op: &OperationRef) -> Vec<Option<DType>> {
    (0..op.operand_count())
        .map(|k| {
            (op.operand(k).ok())
                .and_then(|v| tensor_type(v.r#type()).ok())
                .map(|(d, _)| d)
        })
        .collect()
}

/// Whether `op` (a `linalg.generic`) is of a layer norm's normalisation's shape: every loop
/// parallel over a float input, two f64 rows and the scale (and bias) into the input's type.
/// (A pass that retypes the scale asks while the body still reads f32.)
pub fn is_normalisation(op: &OperationRef) -> bool {
    use DType::F64;
    let types = operand_types(op);
    let parallel = strings(op, "iterator_types").iter().all(|t| t == PARALLEL);
    let shape = match types[..] {
        [Some(x), Some(F64), Some(F64), Some(_), Some(out)]
        | [Some(x), Some(F64), Some(F64), Some(_), Some(_), Some(out)] => is_float(x) && out == x,
        _ => false,
    };
    op.result_count() == 1 && parallel && shape
}

/// Whether `op` (a `linalg.generic`) is of the shape of a layer norm's sum (a float input to
/// an f64 row) or squares (a float input and an f64 row to an f64 row) with every reader a
/// layer norm's squares or normalisation: a part of the layer norm the normalisation reads
/// back as.
pub fn is_part(op: &OperationRef) -> bool {
    use DType::F64;
    let shaped = |o: &OperationRef| {
        let rows = match operand_types(o)[..] {
            [Some(x), Some(F64)] | [Some(x), Some(F64), Some(F64)] => is_float(x),
            _ => false,
        };
        op_name(o) == "linalg.generic" && o.result_count() == 1 && rows
    };
    let Ok(result) = op.result(0) else {
        return false;
    };
    let readers = users(result.into());
    shaped(op)
        && !readers.is_empty()
        && readers
            .iter()
            .all(|r| is_normalisation(r) || (shaped(r) && r.operand_count() == 3))
}

/// The op that makes operand `k` of `op`.
fn maker<'c, 'a>(op: &OperationRef<'c, 'a>, k: usize) -> Option<OperationRef<'c, 'a>> {
    let v = op.operand(k).ok()?;
    OperationResult::try_from(v).ok().map(|r| r.owner())
}

/// The parts a normalisation reads (its sum's and squares' generics), for the passes that
/// place an instruction's ops together.
pub fn parts<'c, 'a>(op: &OperationRef<'c, 'a>) -> Vec<OperationRef<'c, 'a>> {
    if op_name(op) != "linalg.generic" || !is_normalisation(op) {
        return Vec::new();
    }
    [1, 2].into_iter().filter_map(|k| maker(op, k)).collect()
}

/// The layer norm a normalisation generic reads back as, with the generics that make its
/// rows: each's maps, iterators and body the ones ppmoe prints for its input, the sum and
/// squares over the normalisation's own input, the squares over that sum, neither read by
/// anything else. The zero fills they start from are checked by the reader.
pub fn read(op: &OperationRef) -> Result<Op, String> {
    let refuse =
        |what: &str| format!("'linalg.generic' normalising by f64 rows (a layer norm): {what}");
    let (_, shape) =
        (op.operand(0).map_err(|e| e.to_string())).and_then(|v| tensor_type(v.r#type()))?;
    let rank = shape.len();
    let bias = op.operand_count() == 6;
    let read_maps = strings(op, "indexing_maps");
    let axis = (0..rank).find(|&axis| {
        let (id, row, scale) = layer_maps(rank, axis);
        let mut want = vec![id.clone(), row.clone(), row, scale.clone()];
        if bias {
            want.push(scale);
        }
        want.push(id);
        read_maps == want
    });
    let axis = axis.ok_or_else(|| {
        refuse(&format!(
            "indexing maps {read_maps:?} are not a layer norm's"
        ))
    })?;
    let count: usize = (shape[axis..].iter())
        .map(|d| d.ok_or_else(|| refuse("a dynamic normalised axis")))
        .product::<Result<usize, String>>()?;
    let count = count as f64;
    let eps = (op.region(0).ok())
        .and_then(|r| melior::ir::RegionLike::first_block(&r))
        .and_then(|b| crate::passes::func_ops::block_ops(b).get(5).copied())
        .and_then(|c| c.attribute("value").ok())
        .and_then(|a| melior::ir::attribute::FloatAttribute::try_from(a).ok())
        .map(|f| f.value())
        .ok_or_else(|| refuse("no epsilon where ppmoe prints it"))?;
    let epsilon = eps as f32;
    let types = operand_types(op);
    let half = |k: usize| {
        types
            .get(k)
            .copied()
            .flatten()
            .is_some_and(|d| d != DType::F32)
    };
    let widened = (half(3), bias.then(|| half(4)));
    let body = normalise_body(count, eps, widened, half(0));
    if epsilon as f64 != eps || !body_is(op, &body) {
        return Err(refuse(
            "its body is not the f64 normalisation ppmoe prints (an f32 epsilon, the deviation over sqrt(var + eps) rounded once, times the scale plus the bias)",
        ));
    }
    let x = op.operand(0).map(handle).ok();
    let (sum, squares) = (maker(op, 1), maker(op, 2));
    let axes: Vec<usize> = (axis..rank).collect();
    let (id, row, reducing) = maps(rank, &axes, true);
    // A part of `rows` f64 rows (its destination's among them) read by `readers` ops.
    let part_fits = |p: &Option<OperationRef>, rows: usize, readers: usize, body: &[Step]| {
        p.as_ref().is_some_and(|p| {
            let mut want_maps = vec![id.clone()];
            want_maps.extend(std::iter::repeat_n(row.clone(), rows));
            op_name(p) == "linalg.generic"
                && p.operand(0).map(handle).ok() == x
                && strings(p, "indexing_maps") == want_maps
                && strings(p, "iterator_types") == reducing
                && body_is(p, body)
                && p.result(0).is_ok_and(|r| users(r.into()).len() == readers)
        })
    };
    let squares_read_sum = (squares.as_ref()).and_then(|q| q.operand(1).map(handle).ok())
        == op.operand(1).map(handle).ok();
    if !part_fits(&sum, 1, 2, &sum_body())
        || !part_fits(&squares, 2, 1, &squares_body(count))
        || !squares_read_sum
    {
        return Err(refuse(
            "its rows are not the f64 sum and squared deviations of its input ppmoe prints, read by it alone",
        ));
    }
    Ok(Op::LayerNorm {
        axis: axis as i64,
        epsilon,
    })
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{program, round_trip};
    use ppmoe_runtime::program::{Buffer, BufferKind, Op};
    use ppmoe_runtime::DType;

    /// A layer norm over the last axis or the last two, with a bias or without, of f32, bf16
    /// or f16 weights, prints as its three generics (no `core` op, a half-precision weight
    /// widened in the body), which MLIR verifies, and reads back as itself: its axis counted
    /// from the front, its f32 epsilon exactly, its operands x, scale and bias.
    #[test]
    fn layer_norms_print_as_three_generics_and_read_back_as_themselves() {
        let grids = [(-1i64, 2usize, vec![4]), (1, 1, vec![3, 4])];
        for ((axis, from_front, normalised), bias) in grids
            .into_iter()
            .flat_map(|g| [true, false].map(|b| (g.clone(), b)))
        {
            for weights in [DType::F32, DType::BF16, DType::F16] {
                let op = |axis| Op::LayerNorm {
                    axis,
                    epsilon: 1e-5,
                };
                let mut p = program(op(axis), (DType::F32, &[2, 3, 4]), (DType::F32, &[2, 3, 4]));
                let operands = if bias { 2 } else { 1 };
                for name in ["scale", "bias"].into_iter().take(operands) {
                    p.buffers.push(Buffer {
                        name: name.into(),
                        dtype: weights,
                        shape: normalised.iter().map(|&d| Some(d)).collect(),
                        kind: BufferKind::Input,
                    });
                    let id = p.buffers.len() - 1;
                    p.inputs.push(id);
                    p.instructions[0].inputs.push(Some(id));
                }
                let (text, read) = round_trip(&p);
                assert!(!text.contains("core.layer_norm"), "{text}");
                assert_eq!(text.matches("linalg.generic").count(), 3, "{text}");
                let widenings = if weights == DType::F32 { 0 } else { operands };
                let ty = weights.mlir();
                let widen = format!("arith.extf %g0_g : {ty} to f32");
                assert_eq!(text.contains(&widen), widenings > 0, "{text}");
                assert_eq!(
                    text.matches(&format!(": {ty} to f32")).count(),
                    widenings,
                    "{text}"
                );
                let ins = &read.instructions;
                assert_eq!(ins.len(), 1, "{text}");
                assert_eq!(ins[0].op, op(from_front as i64), "{text}");
                assert_eq!(ins[0].inputs.len(), 1 + operands, "{text}");
                for &b in ins[0].inputs.iter().skip(1).flatten() {
                    assert_eq!(read.buffers[b].dtype, weights, "{text}");
                }
            }
        }
    }

    /// A layer norm of bf16 or f16 activations (a half-precision model's): its input widened
    /// to f64 in each generic's body, its f32 value truncated to the input's type last; read
    /// back as itself, its result of that type.
    #[test]
    fn a_half_precision_layer_norm_widens_its_input_and_narrows_its_result() {
        for x in [DType::BF16, DType::F16] {
            for weights in [DType::F32, x] {
                let op = Op::LayerNorm {
                    axis: -1,
                    epsilon: 1e-5,
                };
                let mut p = program(op.clone(), (x, &[2, 3, 4]), (x, &[2, 3, 4]));
                p.buffers.push(Buffer {
                    name: "scale".into(),
                    dtype: weights,
                    shape: vec![Some(4)],
                    kind: BufferKind::Input,
                });
                let id = p.buffers.len() - 1;
                p.inputs.push(id);
                p.instructions[0].inputs.push(Some(id));
                let (text, read) = round_trip(&p);
                let ty = x.mlir();
                assert!(!text.contains("core.layer_norm"), "{text}");
                assert_eq!(text.matches("linalg.generic").count(), 3, "{text}");
                assert_eq!(text.matches(&format!(": {ty} to f64")).count(), 3, "{text}");
                assert!(
                    text.contains(&format!("arith.truncf %g0_z : f32 to {ty}")),
                    "{text}"
                );
                let ins = &read.instructions;
                assert_eq!(
                    (ins.len(), &ins[0].op),
                    (
                        1,
                        &Op::LayerNorm {
                            axis: 2,
                            epsilon: 1e-5
                        }
                    ),
                    "{text}"
                );
                assert_eq!(read.buffers[ins[0].outputs[0]].dtype, x, "{text}");
            }
        }
    }
}
