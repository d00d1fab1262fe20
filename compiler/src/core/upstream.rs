//! The instructions that upstream MLIR ops express exactly, printed as those ops (and read back
//! from them), so that MLIR verifies their types and upstream passes can read them:
//!
//! - a matmul of two matrices as `linalg.matmul`, of two stacks of matrices with one batch as
//!   `linalg.batch_matmul` (an f32 result, which linalg accumulates in, as ppmoe does; the
//!   operands f32 or stored in half precision) into a zero `linalg.fill` (linalg's matmuls add
//!   the product to their destination; a half-precision result prints as the f32 one and an
//!   `arith.truncf` marked `ppmoe.narrows`: `print::narrowed`), a transpose as
//!   `linalg.transpose`, a softmax as `linalg.softmax` (it, and an f32 function of one
//!   operand, of a half-precision operand widened to f32 first and narrowed after, as ppmoe
//!   computes them: `print::widened_operand`), each into a `tensor.empty`;
//! - a concatenation as `tensor.concat`, a reshape to a static shape as `tensor.reshape` (the
//!   shape an `arith.constant`), a gather along axis 0 as `tensor.gather` of the indices with
//!   their index axis appended by a `tensor.expand_shape` (`Upstream::Gather`);
//! - f32 elementwise arithmetic whose operands and result have one type as a `linalg.map` of
//!   the `arith` or `math` op (linalg's ops carry upstream's sharding interface, which
//!   `sharding-propagation` and `shard-partition` need; `arith` on tensors does not), an f32
//!   sigmoid (upstream has no op for it) as a `linalg.map` of `1 / (1 + exp(-x))` in `arith`
//!   and `math` ops;
//! - other elementwise ops as a `linalg.generic` of one scalar op whose indexing maps broadcast
//!   each operand (`generic`): f32 arithmetic with numpy broadcasting, f32 max and min, i32 and
//!   i64 add/sub/mul, comparisons, a where, a boolean not;
//! - a cast as the `arith` cast that converts as ppmoe does (`cast_name`): between f32 and half
//!   precision (round to nearest even, as ppmoe rounds), booleans and integers to integers
//!   and f32.
//!
//! An axis counted from the end prints (and reads back) counted from the front. "Exactly" is
//! tested by running the printed ops with upstream MLIR (`tests/integration/upstream_semantics.rs`:
//! bit for bit the runtime's kernels), but for the matmuls and contractions: their products
//! are ppmoe's, their sums run in linalg's loop order where ppmoe's GEMM blocks them. Anything else
//! stays a `core` op: half-precision results of arithmetic (their rounding is ppmoe's, through
//! f32), a float cast to an integer (which saturates in ppmoe, where `arith.fptosi` is
//! undefined out of range), integer division, unsigned integers (`arith` takes signless ones),
//! a matmul that broadcasts its batch, reductions but f32 sums, means, maxima and minima over
//! static axes (`core::reduce` prints those), a gather along another axis than the first or
//! into another element type than its table's, ops whose axes or bounds are operands.

use super::generic::{
    array_strings, generic_form, generic_line, read_generic, Generic, FLOAT_BINARY,
};
use melior::ir::attribute::{Attribute, IntegerAttribute};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{RegionLike, ValueLike};
use ppmoe_runtime::program::{BinaryFn, Buffer, Instruction, Op, Program, UnaryFn};
use ppmoe_runtime::DType;

/// The upstream op an instruction prints as, where one fits.
#[derive(Debug, PartialEq)]
pub enum Upstream {
    /// `linalg.matmul` or `linalg.batch_matmul`.
    Matmul(&'static str),
    /// Stacks of matrices times one matrix (tokens [b, m, k] by a weight [k, n]): a
    /// `linalg.batch_matmul` whose indexing maps broadcast the matrix over the batch.
    BroadcastMatmul,
    /// A contraction as `linalg.contract` with its indexing maps: a matmul over several batch
    /// axes (attention's [b, heads, m, k] by [b, heads, k, n]), or an einsum that is a plain
    /// contraction (its labels numbered by first appearance).
    Contract(Vec<String>),
    Transpose(Vec<usize>),
    Softmax(usize),
    Concat(usize),
    Reshape(Vec<usize>),
    /// `tensor.extract_slice` with static offsets, sizes and strides; a token slice's marked
    /// with its axis and part count (`token_slice`).
    ExtractSlice {
        offsets: Vec<usize>,
        sizes: Vec<usize>,
        strides: Vec<usize>,
        token_slice: Option<[usize; 2]>,
    },
    /// `arith.extf` or `arith.truncf`.
    Cast(&'static str),
    /// A gather along axis 0 (a token embedding) as `tensor.gather` with `gather_dims([0])`,
    /// its result rank-reduced, of the indices (of these dims and this integer type) with a
    /// unit axis appended by a `tensor.expand_shape` (`tensor.gather` reads each index tuple
    /// along the last axis). ppmoe also takes an index counted from the end, as ONNX does,
    /// where `tensor.gather` leaves an index out of range undefined: the same values wherever
    /// upstream's are defined.
    Gather {
        indices: Vec<usize>,
        index: DType,
    },
    /// A GatherND without batch axes as `tensor.gather` of its indices as they are, with
    /// `gather_dims` the data's first axes, as many as an index tuple has, its result
    /// rank-reduced (an index out of range as for `Gather`).
    GatherNd {
        depth: usize,
    },
    /// An f32 unary function upstream has no op for (the sigmoid, the reciprocal) as a
    /// `linalg.map` of the `arith` and `math` ops ppmoe computes it by (`COMPOSITES`).
    Composite(UnaryFn),
    /// A `linalg.map` of an `arith` or `math` op, over operands and a result of one type.
    Elementwise(&'static str),
    /// An elementwise op as a `linalg.generic` of one scalar op, each operand read through
    /// numpy broadcasting's indexing map (`generic`): f32 arithmetic with broadcasting, integer
    /// arithmetic, comparisons, a where, a boolean not.
    Generic(Generic),
}

/// The upstream form of `op` over `inputs` making `output`, where one fits.
pub fn upstream_form(op: &Op, inputs: &[&Buffer], output: &Buffer) -> Option<Upstream> {
    let static_shape = |b: &Buffer| b.shape.iter().all(Option::is_some);
    if inputs.is_empty() || !inputs.iter().all(|b| static_shape(b)) || !static_shape(output) {
        return None;
    }
    let rank = output.shape.len();
    let same_element = inputs.iter().all(|b| b.dtype == output.dtype);
    let one_input = inputs.len() == 1;
    match op {
        Op::MatMul => matmul(inputs, output),
        Op::Einsum { equation } => {
            let f32s = inputs.len() == 2 && same_element && output.dtype == DType::F32;
            let ranks: Vec<usize> = inputs.iter().map(|b| b.shape.len()).chain([rank]).collect();
            let contract = einsum_maps(equation, &ranks).filter(|_| f32s);
            // One that sums over no label (an outer product): a generic of the product.
            contract
                .map(Upstream::Contract)
                .or_else(|| generic(op, inputs, output))
        }
        Op::Binary { f } if same_f32_type(inputs, output) && binary_name(*f).is_some() => {
            binary_name(*f).map(Upstream::Elementwise)
        }
        Op::Binary { .. } | Op::Where | Op::Unary { f: UnaryFn::Not } | Op::ExpandTo { .. } => {
            generic(op, inputs, output)
        }
        Op::Unary { f: UnaryFn::Neg } if !same_f32_type(inputs, output) => {
            generic(op, inputs, output)
        }
        Op::Unary { f } if composite(*f).is_some() => {
            same_f32_type(inputs, output).then_some(Upstream::Composite(*f))
        }
        Op::Unary { f } => {
            let name = unary_name(*f)?;
            same_f32_type(inputs, output).then_some(Upstream::Elementwise(name))
        }
        Op::Transpose { perm } => {
            let valid = perm.len() == rank && inputs[0].shape.len() == rank;
            (one_input && same_element && valid).then(|| Upstream::Transpose(perm.clone()))
        }
        Op::Softmax { axis, log: false } => {
            let axis = non_negative(*axis, rank)?;
            same_f32_type(inputs, output).then_some(Upstream::Softmax(axis))
        }
        Op::Concat { axis } => {
            let axis = non_negative(*axis, rank)?;
            let ranks = inputs.iter().all(|b| b.shape.len() == rank);
            (same_element && ranks).then_some(Upstream::Concat(axis))
        }
        Op::ReshapeTo { shape } => {
            let dims: Vec<usize> = output.shape.iter().flatten().copied().collect();
            let fits = !shape.is_empty() && *shape == dims && !inputs[0].shape.is_empty();
            (one_input && same_element && fits).then(|| Upstream::Reshape(shape.clone()))
        }
        Op::ExtractSlice {
            offsets,
            sizes,
            strides,
        } => {
            let dims: Vec<usize> = output.shape.iter().flatten().copied().collect();
            let rank = inputs[0].shape.len();
            let fits = one_input
                && same_element
                && *sizes == dims
                && [offsets.len(), sizes.len(), strides.len()] == [rank; 3];
            fits.then(|| Upstream::ExtractSlice {
                offsets: offsets.clone(),
                sizes: sizes.clone(),
                strides: strides.clone(),
                token_slice: None,
            })
        }
        Op::TokenSlice { axis, parts, .. } => {
            let shape: Vec<usize> = inputs[0].shape.iter().flatten().copied().collect();
            let (offsets, sizes, strides) = super::token_slice::bounds(op, &shape)?;
            let dims: Vec<usize> = output.shape.iter().flatten().copied().collect();
            (one_input && same_element && sizes == dims).then_some(Upstream::ExtractSlice {
                offsets,
                sizes,
                strides,
                token_slice: Some([*axis, *parts]),
            })
        }
        Op::Gather { axis } => gather(*axis, inputs, output),
        Op::GatherNd { batch_dims: 0 } => gather_nd(inputs, output),
        Op::Cast { to } => {
            let fits = one_input && *to == output.dtype && inputs[0].shape == output.shape;
            cast_name(inputs[0].dtype, *to)
                .filter(|_| fits)
                .map(Upstream::Cast)
        }
        _ => None,
    }
}

/// A gather along axis 0 of integer indices whose result is the indices' shape followed by
/// the data's without its first axis (what `tensor.gather` makes, rank-reduced).
fn gather(axis: i64, inputs: &[&Buffer], output: &Buffer) -> Option<Upstream> {
    let [data, indices] = inputs else { return None };
    let dims = |b: &Buffer| b.shape.iter().flatten().copied().collect::<Vec<usize>>();
    let first_axis = non_negative(axis, data.shape.len()) == Some(0);
    let integer = matches!(indices.dtype, DType::I32 | DType::I64);
    let made: Vec<usize> = (dims(indices).into_iter())
        .chain(dims(data).into_iter().skip(1))
        .collect();
    let fits = first_axis && integer && data.dtype == output.dtype && dims(output) == made;
    fits.then(|| Upstream::Gather {
        indices: dims(indices),
        index: indices.dtype,
    })
}

/// A GatherND without batch axes of integer index tuples whose result is the indices' shape
/// without the tuples' axis, followed by the data's past the axes a tuple indexes.
fn gather_nd(inputs: &[&Buffer], output: &Buffer) -> Option<Upstream> {
    let [data, indices] = inputs else { return None };
    let dims = |b: &Buffer| b.shape.iter().flatten().copied().collect::<Vec<usize>>();
    let (data_dims, index_dims) = (dims(data), dims(indices));
    let (&depth, batch) = index_dims.split_last()?;
    let integer = matches!(indices.dtype, DType::I32 | DType::I64);
    let made: Vec<usize> = (batch.iter().copied())
        .chain(data_dims.iter().skip(depth).copied())
        .collect();
    let fits = integer
        && depth >= 1
        && depth <= data_dims.len()
        && data.dtype == output.dtype
        && dims(output) == made;
    fits.then_some(Upstream::GatherNd { depth })
}

/// The `linalg.generic` form of an elementwise `op` (`generic`), where it has one.
fn generic(op: &Op, inputs: &[&Buffer], output: &Buffer) -> Option<Upstream> {
    let shapes: Vec<(DType, Vec<usize>)> = (inputs.iter().copied().chain([output]))
        .map(|b| (b.dtype, b.shape.iter().flatten().copied().collect()))
        .collect();
    generic_form(op, &shapes).map(Upstream::Generic)
}

/// The `arith` cast that converts `from` to `to` as ppmoe does: between f32 and half precision
/// rounding to nearest even; a boolean to an integer or f32 as 0 or 1; an i32 to an i64 by its
/// sign, an i64 to an i32 wrapping; an integer to f32 rounding to nearest even. (A float to
/// an integer saturates in ppmoe, where `arith.fptosi` is undefined out of range: none.)
fn cast_name(from: DType, to: DType) -> Option<&'static str> {
    use DType::{Bool, BF16, F16, F32, I32, I64};
    Some(match (from, to) {
        (F32, BF16 | F16) => "arith.truncf",
        (BF16 | F16, F32) => "arith.extf",
        (Bool, I32 | I64) => "arith.extui",
        (I32, I64) => "arith.extsi",
        (I64, I32) => "arith.trunci",
        (I32 | I64, F32) => "arith.sitofp",
        (Bool, F32) => "arith.uitofp",
        _ => return None,
    })
}

/// The upstream op instruction `ins` of `p` prints as, where one fits (every operand present,
/// one result).
pub fn instruction_form(p: &Program, ins: &Instruction) -> Option<Upstream> {
    let [out] = ins.outputs.as_slice() else {
        return None;
    };
    let inputs: Option<Vec<&Buffer>> = (ins.inputs.iter())
        .map(|b| b.map(|b| &p.buffers[b]))
        .collect();
    upstream_form(&ins.op, &inputs?, &p.buffers[*out])
}

/// The form's text: the op making `result` (and before it, on lines of their own, the
/// `tensor.empty` or `arith.constant` it takes), each line without its location.
pub fn upstream_lines(
    form: &Upstream,
    i: usize,
    result: &str,
    operands: &[(String, String)],
    out: &str,
) -> (Vec<String>, String) {
    let names: Vec<&str> = operands.iter().map(|(n, _)| n.as_str()).collect();
    let types: Vec<&str> = operands.iter().map(|(_, t)| t.as_str()).collect();
    let (n, t) = (names.join(", "), types.join(", "));
    let empty = vec![format!("%d{i} = tensor.empty() : {out}")];
    match form {
        // linalg's matmuls add the product to their destination: a zero fill of an empty.
        Upstream::Matmul(name) => (
            vec![
                format!("%z{i} = arith.constant 0.000000e+00 : f32"),
                empty[0].clone(),
                format!("%f{i} = linalg.fill ins(%z{i} : f32) outs(%d{i} : {out}) -> {out}"),
            ],
            format!("{result} = {name} ins({n} : {t}) outs(%f{i} : {out}) -> {out}"),
        ),
        Upstream::Contract(maps) => (
            vec![
                format!("%z{i} = arith.constant 0.000000e+00 : f32"),
                empty[0].clone(),
                format!("%f{i} = linalg.fill ins(%z{i} : f32) outs(%d{i} : {out}) -> {out}"),
            ],
            format!(
                "{result} = linalg.contract indexing_maps = [{}] ins({n} : {t}) outs(%f{i} : {out}) -> {out}",
                maps.join(", ")
            ),
        ),
        Upstream::BroadcastMatmul => (
            vec![
                format!("%z{i} = arith.constant 0.000000e+00 : f32"),
                empty[0].clone(),
                format!("%f{i} = linalg.fill ins(%z{i} : f32) outs(%d{i} : {out}) -> {out}"),
            ],
            format!(
                "{result} = linalg.batch_matmul indexing_maps = [{}] ins({n} : {t}) outs(%f{i} : {out}) -> {out}",
                BROADCAST_MATMUL_MAPS.join(", ")
            ),
        ),
        Upstream::Transpose(perm) => (
            empty,
            format!(
                "{result} = linalg.transpose ins({n} : {t}) outs(%d{i} : {out}) permutation = [{}]",
                list(perm)
            ),
        ),
        Upstream::Softmax(axis) => (
            empty,
            format!(
                "{result} = linalg.softmax dimension({axis}) ins({n} : {t}) outs(%d{i} : {out}) -> {out}"
            ),
        ),
        Upstream::Concat(axis) => (
            vec![],
            format!("{result} = tensor.concat dim({axis}) {n} : ({t}) -> {out}"),
        ),
        Upstream::Reshape(shape) => {
            let shape_type = format!("tensor<{}xi64>", shape.len());
            (
                vec![format!(
                    "%s{i} = arith.constant dense<[{}]> : {shape_type}",
                    list(shape)
                )],
                format!("{result} = tensor.reshape {n}(%s{i}) : ({t}, {shape_type}) -> {out}"),
            )
        }
        Upstream::Cast(name) => (vec![], format!("{result} = {name} {n} : {t} to {out}")),
        Upstream::GatherNd { depth } => {
            let dims: Vec<String> = (0..*depth).map(|d| d.to_string()).collect();
            (
                vec![],
                format!(
                    "{result} = tensor.gather {}[{}] gather_dims([{}]) : ({}, {}) -> {out}",
                    names.first().copied().unwrap_or_default(),
                    names.get(1).copied().unwrap_or_default(),
                    dims.join(", "),
                    types.first().copied().unwrap_or_default(),
                    types.get(1).copied().unwrap_or_default(),
                ),
            )
        }
        Upstream::Gather { indices, index } => {
            let (data, data_type) = (names.first().copied(), types.first().copied());
            let (ids, ids_type) = (names.get(1).copied(), types.get(1).copied());
            let expanded: Vec<usize> = indices.iter().copied().chain([1]).collect();
            let expanded_type = format!("tensor<{}x{}>", dims_text(&expanded), index.mlir());
            (
                vec![format!(
                    "%x{i} = tensor.expand_shape {} [{}] output_shape [{}] : {} into {expanded_type}",
                    ids.unwrap_or_default(),
                    trailing_unit_groups(indices.len()),
                    list(&expanded),
                    ids_type.unwrap_or_default(),
                )],
                format!(
                    "{result} = tensor.gather {}[%x{i}] gather_dims([0]) : ({}, {expanded_type}) -> {out}",
                    data.unwrap_or_default(),
                    data_type.unwrap_or_default(),
                ),
            )
        }
        Upstream::ExtractSlice {
            offsets,
            sizes,
            strides,
            token_slice,
        } => (
            vec![],
            format!(
                "{result} = tensor.extract_slice {n}[{}] [{}] [{}] {}: {t} to {out}",
                list(offsets),
                list(sizes),
                list(strides),
                token_slice.map_or(String::new(), |[axis, parts]| {
                    super::token_slice::mark(axis, parts) + " "
                }),
            ),
        ),
        Upstream::Generic(g) => (empty, generic_line(g, i, result, (&n, &t), out)),
        Upstream::Elementwise(name) => (
            empty,
            format!("{result} = linalg.map {{ {name} }} ins({n} : {t}) outs(%d{i} : {out})"),
        ),
        Upstream::Composite(f) => (
            empty,
            format!(
                "{result} = linalg.map ins({n} : {t}) outs(%d{i} : {out})\n    (%g{i}_x: f32 loc(unknown), %g{i}_o: f32 loc(unknown)) {{\n{}    }}",
                composite_body(*f, i)
            ),
        ),
    }
}

/// An axis counted from the end (ONNX's -1) as upstream counts it, from the front: the same
/// axis (it reads back so).
fn non_negative(axis: i64, rank: usize) -> Option<usize> {
    let rank = i64::try_from(rank).ok()?;
    let axis = if axis < 0 { axis + rank } else { axis };
    usize::try_from(axis).ok().filter(|&a| (a as i64) < rank)
}

/// The reassociation of a `tensor.expand_shape` that appends a unit axis to a rank-`rank`
/// tensor: each axis its own group, the last one's with the new axis (none for a scalar).
fn trailing_unit_groups(rank: usize) -> String {
    let groups: Vec<String> = (0..rank)
        .map(|d| match d + 1 == rank {
            true => format!("[{d}, {rank}]"),
            false => format!("[{d}]"),
        })
        .collect();
    groups.join(", ")
}

fn dims_text(values: &[usize]) -> String {
    let v: Vec<String> = values.iter().map(usize::to_string).collect();
    v.join("x")
}

fn list(values: &[usize]) -> String {
    let v: Vec<String> = values.iter().map(usize::to_string).collect();
    v.join(", ")
}

/// The indexing maps of each matmul form: a matmul's, a batch matmul's, a batch matmul whose
/// second operand is one matrix for every batch (as MLIR prints them).
const MATMUL_MAPS: [&str; 3] = [
    "affine_map<(d0, d1, d2) -> (d0, d2)>",
    "affine_map<(d0, d1, d2) -> (d2, d1)>",
    "affine_map<(d0, d1, d2) -> (d0, d1)>",
];
const BATCH_MATMUL_MAPS: [&str; 3] = [
    "affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>",
    "affine_map<(d0, d1, d2, d3) -> (d0, d3, d2)>",
    "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>",
];
const BROADCAST_MATMUL_MAPS: [&str; 3] = [
    "affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>",
    "affine_map<(d0, d1, d2, d3) -> (d3, d2)>",
    "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>",
];

/// The indexing maps of a matmul over `rank - 2` batch axes as `linalg.contract` takes them
/// (as MLIR prints them): loops over the batch axes, m, n, then k.
fn contract_maps(rank: usize) -> [String; 3] {
    let dims: Vec<String> = (0..=rank).map(|d| format!("d{d}")).collect();
    let batch = &dims[..rank - 2];
    let (m, n, k) = (&dims[rank - 2], &dims[rank - 1], &dims[rank]);
    let map = |last: [&String; 2]| {
        let exprs: Vec<&str> = batch.iter().chain(last).map(String::as_str).collect();
        format!(
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            exprs.join(", ")
        )
    };
    [map([m, k]), map([k, n]), map([m, n])]
}

/// A `linalg.contract`: a matmul over several batch axes where its maps are one's, else the
/// plain contraction (einsum) they say; anything else refused by name.
fn read_contract(maps: Option<Vec<String>>, second_rank: usize) -> Result<Op, String> {
    let maps = maps.ok_or("'linalg.contract' without its maps")?;
    if second_rank >= 4 && maps == contract_maps(second_rank) {
        return Ok(Op::MatMul);
    }
    einsum_of_maps(&maps)
        .map(|equation| Op::Einsum { equation })
        .ok_or_else(|| {
            format!("'linalg.contract': indexing maps {maps:?} are no matmul or plain contraction ppmoe holds")
        })
}

/// An einsum's indexing maps for `linalg.contract`, where it is a plain two-operand contraction
/// whose terms have `ranks` (the operands', then the result's) labels: each label a loop,
/// numbered by first appearance (so an einsum's maps do not depend on its letters).
fn einsum_maps(equation: &str, ranks: &[usize]) -> Option<Vec<String>> {
    if !crate::passes::einsum_matmul::is_contraction(equation) {
        return None;
    }
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, out) = eq.split_once("->")?;
    let (x, y) = lhs.split_once(',')?;
    let terms = [x, y, out];
    // linalg.contract sums over one label at least (an outer product is not one).
    let summed = x.chars().any(|c| y.contains(c) && !out.contains(c));
    if !summed
        || terms
            .iter()
            .zip(ranks)
            .any(|(t, &r)| t.chars().count() != r)
    {
        return None;
    }
    let mut labels: Vec<char> = Vec::new();
    for c in x.chars().chain(y.chars()) {
        if !labels.contains(&c) {
            labels.push(c);
        }
    }
    let dims: Vec<String> = (0..labels.len()).map(|d| format!("d{d}")).collect();
    let map = |t: &str| -> Option<String> {
        let exprs: Option<Vec<&str>> = t
            .chars()
            .map(|c| {
                labels
                    .iter()
                    .position(|&l| l == c)
                    .map(|d| dims[d].as_str())
            })
            .collect();
        Some(format!(
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            exprs?.join(", ")
        ))
    };
    terms.iter().map(|t| map(t)).collect()
}

/// The einsum equation of a `linalg.contract`'s maps (each result a loop; letters by first
/// appearance), where it is a plain contraction whose own maps they are.
fn einsum_of_maps(maps: &[String]) -> Option<String> {
    let results = |m: &str| -> Option<Vec<usize>> {
        let (_, r) = m.split_once("-> (")?;
        let r = r.strip_suffix(")>")?;
        r.split(", ")
            .map(|d| d.strip_prefix('d').and_then(|n| n.parse().ok()))
            .collect()
    };
    let terms: Vec<Vec<usize>> = maps.iter().map(|m| results(m)).collect::<Option<_>>()?;
    let [x, y, out] = terms.as_slice() else {
        return None;
    };
    let mut order: Vec<usize> = Vec::new();
    for &d in x.iter().chain(y) {
        if !order.contains(&d) {
            order.push(d);
        }
    }
    let letter = |d: &usize| -> Option<char> {
        let k = order.iter().position(|o| o == d)?;
        char::from_u32('a' as u32 + u32::try_from(k).ok()?).filter(|c| c.is_ascii_lowercase())
    };
    let term = |t: &[usize]| t.iter().map(letter).collect::<Option<String>>();
    let equation = format!("{},{}->{}", term(x)?, term(y)?, term(out)?);
    let again = einsum_maps(&equation, &[x.len(), y.len(), out.len()])?;
    (again == maps).then_some(equation)
}

/// A matmul's indexing maps checked to be the ones its form has (linalg's matmuls take maps
/// that transpose or broadcast an operand, which ppmoe's matmul does not, but for a weight
/// broadcast over a batch).
fn read_matmul(op: &OperationRef, name: &str) -> Result<Op, String> {
    let maps = op.attribute("indexing_maps").ok().map(array_strings);
    let second_rank = op
        .operand(1)
        .ok()
        .and_then(|v| super::read::tensor_type(v.r#type()).ok())
        .map_or(0, |(_, shape)| shape.len());
    if name == "linalg.contract" {
        return read_contract(maps, second_rank);
    }
    let expected: Vec<String> = match (name, second_rank) {
        ("linalg.matmul", _) => MATMUL_MAPS.map(String::from).to_vec(),
        (_, 2) => BROADCAST_MATMUL_MAPS.map(String::from).to_vec(),
        _ => BATCH_MATMUL_MAPS.map(String::from).to_vec(),
    };
    match maps {
        Some(m) if m != expected => Err(format!(
            "'{name}': indexing maps {m:?}; ppmoe's matmul takes {expected:?}"
        )),
        // Without maps, linalg's verifier has checked the operands are its default form's.
        None if second_rank == 2 && name == "linalg.batch_matmul" => Err(format!(
            "'{name}' of a matrix without the maps that broadcast it"
        )),
        _ => Ok(Op::MatMul),
    }
}

/// An operand of a composite's step: the map's argument, or an earlier step's result; an
/// `arith.constant` step's one `Value` is its f32 value's bits.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ref {
    Arg,
    Step(usize),
    Value(u32),
}

/// One step of a composite: an `arith`/`math` op over earlier values, or a constant.
type Step = (&'static str, &'static [Ref]);

/// The f32 constants of the composites, as bits: 1, 0.5 and sqrt(2) (the one ppmoe's GELU
/// divides by).
const ONE: u32 = 1.0f32.to_bits();
const HALF: u32 = 0.5f32.to_bits();
const SQRT_2: u32 = std::f32::consts::SQRT_2.to_bits();

/// The unary functions upstream has no op for, each as the steps ppmoe computes it by.
const COMPOSITES: &[(UnaryFn, &[Step])] = &[
    // 1 / (1 + exp(-x))
    (
        UnaryFn::Sigmoid,
        &[
            ("arith.negf", &[Ref::Arg]),
            ("math.exp", &[Ref::Step(0)]),
            ("arith.constant", &[Ref::Value(ONE)]),
            ("arith.addf", &[Ref::Step(2), Ref::Step(1)]),
            ("arith.divf", &[Ref::Step(2), Ref::Step(3)]),
        ],
    ),
    // 1 / x
    (
        UnaryFn::Reciprocal,
        &[
            ("arith.constant", &[Ref::Value(ONE)]),
            ("arith.divf", &[Ref::Step(0), Ref::Arg]),
        ],
    ),
    // 0.5 x (1 + erf(x / sqrt(2))), in the order ppmoe's GELU computes it
    (
        UnaryFn::Gelu,
        &[
            ("arith.constant", &[Ref::Value(SQRT_2)]),
            ("arith.divf", &[Ref::Arg, Ref::Step(0)]),
            ("math.erf", &[Ref::Step(1)]),
            ("arith.constant", &[Ref::Value(ONE)]),
            ("arith.addf", &[Ref::Step(3), Ref::Step(2)]),
            ("arith.constant", &[Ref::Value(HALF)]),
            ("arith.mulf", &[Ref::Step(5), Ref::Arg]),
            ("arith.mulf", &[Ref::Step(6), Ref::Step(4)]),
        ],
    ),
];

fn composite(f: UnaryFn) -> Option<&'static [Step]> {
    COMPOSITES.iter().find(|(g, _)| *g == f).map(|(_, s)| *s)
}

/// The body of composite `f`'s `linalg.map` for instruction `i` (its argument `%g<i>_x`).
fn composite_body(f: UnaryFn, i: usize) -> String {
    let steps = composite(f).unwrap_or_default();
    let value = |r: &Ref| match r {
        Ref::Arg => format!("%g{i}_x"),
        Ref::Step(k) => format!("%g{i}_{k}"),
        // 1.0 as MLIR prints it; another constant by its bits, exactly.
        Ref::Value(ONE) => "1.000000e+00".into(),
        Ref::Value(bits) => format!("0x{bits:08X}"),
    };
    let mut body = String::new();
    for (k, (op, operands)) in steps.iter().enumerate() {
        let line = if let [Ref::Value(_)] = operands {
            format!("%g{i}_{k} = {op} {} : f32", value(&operands[0]))
        } else {
            let operands: Vec<String> = operands.iter().map(value).collect();
            format!("%g{i}_{k} = {op} {} : f32", operands.join(", "))
        };
        body.push_str(&format!("      {line} loc(unknown)\n"));
    }
    let last = steps.len().saturating_sub(1);
    body.push_str(&format!(
        "      linalg.yield %g{i}_{last} : f32 loc(unknown)\n"
    ));
    body
}

/// The ops that only feed an upstream op (its destination, a reshape's shape, a matmul's zero
/// start): not instructions. (`read` checks that a fill is of zero.)
pub const OPERAND_ONLY: &[&str] = &["tensor.empty", "arith.constant", "linalg.fill"];

/// The instruction an upstream op reads back as, where ppmoe prints it (None: not one of
/// them); `result` is the op's result's element type and shape.
pub fn read_upstream(
    op: &OperationRef,
    name: &str,
    result: Option<(DType, Vec<Option<usize>>)>,
) -> Option<Result<Op, String>> {
    if name == "linalg.generic" {
        if let Some(scatter) = super::scatter_elements::scatter(op) {
            return Some(Ok(scatter));
        }
    }
    let attribute = |key: &str| {
        op.attribute(key)
            .map_err(|_| format!("'{name}' without its '{key}'"))
    };
    let index = |a: Attribute| -> Result<i64, String> {
        IntegerAttribute::try_from(a)
            .map(|i| i.value())
            .map_err(|_| format!("'{name}': expected an integer"))
    };
    let read = match name {
        "linalg.matmul" | "linalg.batch_matmul" | "linalg.contract" => read_matmul(op, name),
        "linalg.transpose" => attribute("permutation").and_then(|a| {
            let perm = super::read::i64_list(a)
                .and_then(|p| p.into_iter().map(|x| usize::try_from(x).ok()).collect())
                .ok_or_else(|| format!("'{name}': permutation is not array<i64>"))?;
            Ok(Op::Transpose { perm })
        }),
        "linalg.softmax" => attribute("dimension")
            .and_then(index)
            .map(|axis| Op::Softmax { axis, log: false }),
        "tensor.concat" => attribute("dim")
            .and_then(index)
            .map(|axis| Op::Concat { axis }),
        "tensor.reshape" => result
            .and_then(|(_, dims)| dims.into_iter().collect::<Option<Vec<usize>>>())
            .map(|shape| Op::ReshapeTo { shape })
            .ok_or_else(|| format!("'{name}': expected a static result")),
        "arith.extf" | "arith.truncf" | "arith.extui" | "arith.extsi" | "arith.trunci"
        | "arith.sitofp" | "arith.uitofp" => read_cast(op, name, result),
        "linalg.generic" if super::one_hot::is_one_hot(op) => super::one_hot::read(op),
        "linalg.generic" if super::gather_elements::is_gather_elements(op) => {
            super::gather_elements::read(op)
        }
        "linalg.generic" if super::widening_gather::is_widening_gather(op) => {
            super::widening_gather::read(op)
        }
        "linalg.generic" if super::mixed_concat::is_mixed_concat(op) => {
            super::mixed_concat::read(op)
        }
        "linalg.generic" if super::top_k::is_top_k(op) => super::top_k::read(op),
        "linalg.generic" if super::arg_max::is_arg_max(op) => super::arg_max::read(op),
        "linalg.generic" if super::cum_sum::is_cum_sum(op) => super::cum_sum::read(op),
        "linalg.generic" if super::reduce::is_reduction(op) => super::reduce::read_reduction(op),
        "linalg.generic" if super::layer_norm::is_normalisation(op) => super::layer_norm::read(op),
        "linalg.generic" => read_generic(op),
        "tensor.extract_slice" => read_extract_slice(op, result),
        "tensor.gather" => read_gather(op),
        "linalg.map" if super::cast_map::is_cast(op) => super::cast_map::read(op),
        "linalg.map" => read_composite(op)
            .map(|f| Op::Unary { f })
            .or_else(|| map_body(op).and_then(|body| read_elementwise(&body)))
            .ok_or_else(|| format!("'{name}': its body is not an elementwise op ppmoe prints")),
        _ => return None,
    };
    Some(read)
}

/// A `tensor.gather` as ppmoe prints a gather along axis 0: `gather_dims([0])`, its indices
/// those of a `tensor.expand_shape` (which the reader reads as the indices it expands:
/// `read::FunctionReader::gather_indices`), its result rank-reduced.
fn read_gather(op: &OperationRef) -> Result<Op, String> {
    let refuse = |what: &str| format!("'tensor.gather': {what}");
    let dims = (op.attribute("gather_dims").ok()).and_then(super::read::i64_list);
    let rank = |k: usize| {
        (op.operand(k).ok())
            .and_then(|v| super::read::tensor_type(v.r#type()).ok())
            .map(|(_, shape)| shape.len())
    };
    let result_rank = (op.result(0).ok())
        .and_then(|r| super::read::tensor_type(r.r#type()).ok())
        .map(|(_, shape)| shape.len());
    let expanded = (op.operand(1).ok())
        .and_then(|v| melior::ir::operation::OperationResult::try_from(v).ok())
        .is_some_and(|r| super::read::op_name(&r.owner()) == "tensor.expand_shape");
    if !expanded {
        // A GatherND's: the data's first axes, as many as the last axis of the indices holds.
        let depth = (op.operand(1).ok())
            .and_then(|v| super::read::tensor_type(v.r#type()).ok())
            .and_then(|(_, shape)| shape.last().copied().flatten());
        let leading = depth.map(|q| (0..q as i64).collect::<Vec<i64>>());
        return match (rank(0), rank(1), result_rank, depth) {
            (Some(d), Some(i), Some(r), Some(q)) if dims == leading && q >= 1 && q <= d && r + 1 + q == d + i => {
                Ok(Op::GatherNd { batch_dims: 0 })
            }
            _ => Err(refuse(&format!(
                "gather_dims {dims:?} of indices no tensor.expand_shape made: ppmoe reads a gather along axis 0 of expanded indices, or the data's first axes for each index tuple (a GatherND), rank-reduced"
            ))),
        };
    }
    if dims != Some(vec![0]) {
        return Err(refuse(&format!(
            "gather_dims {dims:?}; ppmoe gathers along axis 0 only ([0])"
        )));
    }
    match (rank(0), rank(1), result_rank) {
        (Some(d), Some(i), Some(r)) if d >= 1 && i >= 1 && r + 2 == d + i => {
            Ok(Op::Gather { axis: 0 })
        }
        _ => Err(refuse(
            "a result that is not rank-reduced; ppmoe drops the gathered axis",
        )),
    }
}

/// A `tensor.extract_slice` of static offsets, sizes and strides whose result is its sizes
/// (not rank-reduced), each a non-negative number and every stride positive.
fn read_extract_slice(
    op: &OperationRef,
    result: Option<(DType, Vec<Option<usize>>)>,
) -> Result<Op, String> {
    let refuse = |what: &str| format!("'tensor.extract_slice': {what}");
    if op.operand_count() != 1 {
        return Err(refuse(
            "offsets, sizes or strides given as values; ppmoe takes static ones",
        ));
    }
    let list = |key: &str| -> Result<Vec<usize>, String> {
        op.attribute(key)
            .ok()
            .and_then(super::read::i64_list)
            .and_then(|v| v.into_iter().map(|x| usize::try_from(x).ok()).collect())
            .ok_or_else(|| refuse(&format!("'{key}' is not a list of non-negative integers")))
    };
    let (offsets, sizes, strides) = (
        list("static_offsets")?,
        list("static_sizes")?,
        list("static_strides")?,
    );
    let dims: Option<Vec<usize>> = result.and_then(|(_, d)| d.into_iter().collect());
    if dims.as_ref() != Some(&sizes) {
        return Err(refuse(&format!(
            "a result of shape {dims:?} for sizes {sizes:?}; ppmoe takes no rank-reducing slice"
        )));
    }
    if strides.contains(&0) {
        return Err(refuse("a zero stride"));
    }
    if op.has_attribute(super::token_slice::MARK) {
        let source = (op.operand(0).ok())
            .and_then(|v| super::read::tensor_type(v.r#type()).ok())
            .and_then(|(_, shape)| shape.into_iter().collect::<Option<Vec<usize>>>())
            .ok_or_else(|| refuse("a token slice of a tensor of dynamic shape"))?;
        return super::token_slice::read(op, &source, &(offsets, sizes, strides));
    }
    Ok(Op::ExtractSlice {
        offsets,
        sizes,
        strides,
    })
}

/// An `arith` cast on tensors, where it is the one ppmoe prints for its operand's and result's
/// element types (`cast_name`): `arith.extui` of an i32 reads as no ppmoe cast.
fn read_cast(
    op: &OperationRef,
    name: &str,
    result: Option<(DType, Vec<Option<usize>>)>,
) -> Result<Op, String> {
    let from = op
        .operand(0)
        .ok()
        .and_then(|v| super::read::tensor_type(v.r#type()).ok());
    match (from, result) {
        (Some((from, _)), Some((to, _))) if cast_name(from, to) == Some(name) => {
            Ok(Op::Cast { to })
        }
        (Some((from, _)), Some((to, _))) => Err(format!(
            "'{name}' from {} to {}: ppmoe converts those types by {}",
            from.mlir(),
            to.mlir(),
            cast_name(from, to).unwrap_or("no arith op")
        )),
        _ => Err(format!("'{name}': expected a tensor operand and result")),
    }
}

/// The name of the one op in a `linalg.map`'s body, where it computes the map's element from
/// the input elements in order (`op %in0, %in1`) and the body yields it: a body whose op reads
/// its operands in another order, or a value from outside, computes another function.
fn map_body(op: &OperationRef) -> Option<String> {
    use super::read::{handle, op_name};
    let block = op.region(0).ok()?.first_block()?;
    let first = block.first_operation()?;
    let yields = first.next_in_block()?;
    let inputs = block.argument_count().checked_sub(1)?;
    let reads_inputs = first.operand_count() == inputs
        && (0..inputs)
            .all(|k| first.operand(k).map(handle).ok() == block.argument(k).map(handle).ok());
    let yields_it = yields.operand_count() == 1
        && yields.operand(0).map(handle).ok() == first.result(0).map(handle).ok();
    (op_name(&yields) == "linalg.yield" && reads_inputs && yields_it).then(|| op_name(&first))
}

/// A value a composite's step reads: the map's input, an earlier step that computes, or an f32
/// constant (its bits) wherever it is defined, in the body as ppmoe prints it or outside it
/// (where `-canonicalize` hoists it).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Read {
    Arg,
    Step(usize),
    Value(u32),
}

/// The composite function a `linalg.map`'s body computes, where it is one ppmoe prints, op for
/// op and operand for operand (`COMPOSITES`), its constants compared by value.
fn read_composite(op: &OperationRef) -> Option<UnaryFn> {
    use super::read::{handle, op_name as name};
    let block = op.region(0).ok()?.first_block()?;
    let ops = crate::passes::func_ops::block_ops(block);
    let (yields, body) = ops.split_last()?;
    let argument = block.argument(0).map(handle).ok()?;
    let steps: Vec<&OperationRef> = (body.iter())
        .filter(|o| name(o) != "arith.constant")
        .collect();
    let read = |v: melior::ir::Value| -> Option<Read> {
        if handle(v) == argument {
            return Some(Read::Arg);
        }
        let made_by = |o: &&OperationRef| o.result(0).map(handle).ok() == Some(handle(v));
        if let Some(k) = steps.iter().position(made_by) {
            return Some(Read::Step(k));
        }
        constant_bits(v).map(Read::Value)
    };
    let reads = (steps.iter())
        .map(|o| {
            let operands = (0..o.operand_count()).map(|k| read(o.operand(k).ok()?));
            Some((name(o), operands.collect::<Option<Vec<_>>>()?))
        })
        .collect::<Option<Vec<_>>>()?;
    let last = yields.operand(0).ok().and_then(read);
    let wired = block.argument_count() == 2
        && name(yields) == "linalg.yield"
        && last == reads.len().checked_sub(1).map(Read::Step);
    COMPOSITES
        .iter()
        .find(|(_, form)| wired && same_steps(&composite_reads(form), &reads))
        .map(|(f, _)| *f)
}

/// Whether a body's steps are a composite's: the same ops over the same values, a commutative
/// op's two operands in either order (`-canonicalize` moves a constant to the right; IEEE
/// addition and multiplication give the same bits either way).
fn same_steps(form: &[(String, Vec<Read>)], body: &[(String, Vec<Read>)]) -> bool {
    let commutes = |name: &str| matches!(name, "arith.addf" | "arith.mulf");
    form.len() == body.len()
        && form.iter().zip(body).all(|((f, want), (b, have))| {
            let swapped = match have.as_slice() {
                [x, y] if commutes(f) => want.as_slice() == [*y, *x],
                _ => false,
            };
            f == b && (want == have || swapped)
        })
}

/// The bits of the f32 constant `v` is, where an `arith.constant` defines it exactly.
fn constant_bits(v: melior::ir::Value) -> Option<u32> {
    let owner = melior::ir::operation::OperationResult::try_from(v)
        .ok()?
        .owner();
    if super::read::op_name(&owner) != "arith.constant" {
        return None;
    }
    let value = owner.attribute("value").ok()?;
    let value = melior::ir::attribute::FloatAttribute::try_from(value)
        .ok()?
        .value();
    let narrow = value as f32;
    (f64::from(narrow) == value).then(|| narrow.to_bits())
}

/// A composite's steps that compute, each with what it reads (a constant step by its value).
fn composite_reads(form: &[Step]) -> Vec<(String, Vec<Read>)> {
    let computes = |k: usize| !matches!(form[k].1, [Ref::Value(_)]);
    let position = |k: usize| (0..k).filter(|&j| computes(j)).count();
    let read = |r: &Ref| match *r {
        Ref::Arg => Read::Arg,
        Ref::Value(bits) => Read::Value(bits),
        Ref::Step(k) => match form[k].1 {
            [Ref::Value(bits)] => Read::Value(*bits),
            _ => Read::Step(position(k)),
        },
    };
    (0..form.len())
        .filter(|&k| computes(k))
        .map(|k| (form[k].0.to_string(), form[k].1.iter().map(read).collect()))
        .collect()
}

fn read_elementwise(name: &str) -> Option<Op> {
    if let Some(f) = BINARY.iter().find(|(_, n)| *n == name).map(|(f, _)| *f) {
        return Some(Op::Binary { f });
    }
    UNARY
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(f, _)| Op::Unary { f: *f })
}

/// The f32 arithmetic printed as a `linalg.map` where its operands and result have one type
/// (max and min print as a generic: `generic::FLOAT_BINARY`).
const BINARY: &[(BinaryFn, &str)] = FLOAT_BINARY.split_at(5).0;

const UNARY: &[(UnaryFn, &str)] = &[
    (UnaryFn::Neg, "arith.negf"),
    (UnaryFn::Abs, "math.absf"),
    (UnaryFn::Sqrt, "math.sqrt"),
    (UnaryFn::Exp, "math.exp"),
    (UnaryFn::Log, "math.log"),
    (UnaryFn::Tanh, "math.tanh"),
    (UnaryFn::Erf, "math.erf"),
    (UnaryFn::Sin, "math.sin"),
    (UnaryFn::Cos, "math.cos"),
    (UnaryFn::Floor, "math.floor"),
    (UnaryFn::Ceil, "math.ceil"),
];

fn binary_name(f: BinaryFn) -> Option<&'static str> {
    BINARY.iter().find(|(g, _)| *g == f).map(|(_, n)| *n)
}

fn unary_name(f: UnaryFn) -> Option<&'static str> {
    UNARY.iter().find(|(g, _)| *g == f).map(|(_, n)| *n)
}

/// Every operand and the result f32, of one shape (no broadcasting).
fn same_f32_type(inputs: &[&Buffer], output: &Buffer) -> bool {
    output.dtype == DType::F32
        && inputs
            .iter()
            .all(|b| b.dtype == output.dtype && b.shape == output.shape)
}

/// `linalg.matmul` for [m, k] x [k, n] -> [m, n], `linalg.batch_matmul` for [b, m, k] x
/// [b, k, n] -> [b, m, n] (an f32 result, which linalg accumulates in, as ppmoe does).
fn matmul(inputs: &[&Buffer], output: &Buffer) -> Option<Upstream> {
    let [a, b] = inputs else { return None };
    let float = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16);
    if !(float(a.dtype) && float(b.dtype) && output.dtype == DType::F32) {
        return None;
    }
    let dims = |x: &Buffer| x.shape.iter().map(|d| d.unwrap_or(0)).collect::<Vec<_>>();
    match (
        dims(a).as_slice(),
        dims(b).as_slice(),
        dims(output).as_slice(),
    ) {
        (&[m, k], &[k2, n], &[m2, n2]) if k == k2 && m == m2 && n == n2 => {
            Some(Upstream::Matmul("linalg.matmul"))
        }
        (&[bt, m, k], &[bt2, k2, n], &[bt3, m2, n2])
            if bt == bt2 && bt == bt3 && k == k2 && m == m2 && n == n2 =>
        {
            Some(Upstream::Matmul("linalg.batch_matmul"))
        }
        (&[bt, m, k], &[k2, n], &[bt2, m2, n2]) if bt == bt2 && k == k2 && m == m2 && n == n2 => {
            Some(Upstream::BroadcastMatmul)
        }
        (a, b, o) if a.len() >= 4 && a.len() == b.len() && a.len() == o.len() => {
            let r = a.len();
            let batch = a[..r - 2] == b[..r - 2] && a[..r - 2] == o[..r - 2];
            let fits = a[r - 1] == b[r - 2] && o[r - 2] == a[r - 2] && o[r - 1] == b[r - 1];
            (batch && fits).then(|| Upstream::Contract(contract_maps(r).to_vec()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppmoe_runtime::program::BufferKind;

    fn buffer(dtype: DType, dims: &[usize]) -> Buffer {
        Buffer {
            name: "b".into(),
            dtype,
            shape: dims.iter().map(|&d| Some(d)).collect(),
            kind: BufferKind::Temp,
        }
    }

    fn half4() -> Buffer {
        buffer(DType::BF16, &[4])
    }

    fn form(op: Op, inputs: &[Buffer], output: Buffer) -> Option<&'static str> {
        let inputs: Vec<&Buffer> = inputs.iter().collect();
        upstream_form(&op, &inputs, &output).map(|u| match u {
            Upstream::Matmul(n) | Upstream::Elementwise(n) | Upstream::Cast(n) => n,
            Upstream::Generic(_) => "linalg.generic",
            Upstream::Transpose(_) => "linalg.transpose",
            Upstream::Softmax(_) => "linalg.softmax",
            Upstream::Concat(_) => "tensor.concat",
            Upstream::Reshape(_) => "tensor.reshape",
            Upstream::ExtractSlice { .. } => "tensor.extract_slice",
            Upstream::Gather { .. } | Upstream::GatherNd { .. } => "tensor.gather",
            Upstream::Composite(_) => "composite",
            Upstream::BroadcastMatmul => "linalg.batch_matmul (broadcast)",
            Upstream::Contract(_) => "linalg.contract",
        })
    }

    #[test]
    fn an_einsums_maps_do_not_depend_on_its_letters_and_read_back_as_it() {
        let maps = einsum_maps("cab,dab->acd", &[3, 3, 3]).unwrap();
        assert_eq!(maps[1], "affine_map<(d0, d1, d2, d3) -> (d3, d1, d2)>");
        let equation = einsum_of_maps(&maps).unwrap();
        assert_eq!(equation, "abc,dbc->bad");
        assert_eq!(einsum_maps(&equation, &[3, 3, 3]).unwrap(), maps);
        // No label summed (an outer product), a term of another rank: no linalg.contract.
        assert_eq!(einsum_maps("ab,ac->abc", &[2, 2, 3]), None);
        assert_eq!(einsum_maps("cab,dab->acd", &[3, 2, 3]), None);
    }

    #[test]
    fn only_what_upstream_expresses_exactly_is_printed_as_upstream() {
        use DType::{BF16, F32, I64};
        let f = |d: &[usize]| buffer(F32, d);
        let mm = |a: &[usize], b: &[usize], o: Buffer| form(Op::MatMul, &[f(a), f(b)], o);
        assert_eq!(mm(&[4, 3], &[3, 5], f(&[4, 5])), Some("linalg.matmul"));
        assert_eq!(
            mm(&[2, 4, 3], &[2, 3, 5], f(&[2, 4, 5])),
            Some("linalg.batch_matmul")
        );
        // One matrix for every batch: a batch matmul whose maps broadcast it.
        assert_eq!(
            mm(&[2, 4, 3], &[3, 5], f(&[2, 4, 5])),
            Some("linalg.batch_matmul (broadcast)")
        );
        // Two batch axes (attention's heads): a contraction.
        assert_eq!(
            mm(&[1, 2, 4, 3], &[1, 2, 3, 5], f(&[1, 2, 4, 5])),
            Some("linalg.contract")
        );
        // A matrix by two batch axes, a broadcast stack, and half-precision results stay core
        // ops.
        assert_eq!(mm(&[2, 2, 4, 3], &[3, 5], f(&[2, 2, 4, 5])), None);
        assert_eq!(mm(&[1, 2, 4, 3], &[1, 1, 3, 5], f(&[1, 2, 4, 5])), None);
        assert_eq!(mm(&[1, 4, 3], &[2, 3, 5], f(&[2, 4, 5])), None);
        assert_eq!(mm(&[4, 3], &[3, 5], buffer(BF16, &[4, 5])), None);
        // bf16 weights into an f32 result: linalg casts them as ppmoe does.
        let mixed = form(Op::MatMul, &[f(&[4, 3]), buffer(BF16, &[3, 5])], f(&[4, 5]));
        assert_eq!(mixed, Some("linalg.matmul"));
        let add = Op::Binary { f: BinaryFn::Add };
        assert_eq!(
            form(add.clone(), &[f(&[4]), f(&[4])], f(&[4])),
            Some("arith.addf")
        );
        let bias = form(add.clone(), &[f(&[4, 5]), f(&[5])], f(&[4, 5]));
        assert_eq!(bias, Some("linalg.generic"));
        // Not numpy-broadcastable to the result.
        assert_eq!(form(add.clone(), &[f(&[4, 5]), f(&[3])], f(&[4, 5])), None);
        // Integer arithmetic wraps as arith's does; half-precision arithmetic rounds once, as
        // arith's does; a mixed one widens its half-precision operands (exact), computes in
        // f32 and, into half precision, rounds once.
        let ints = buffer(I64, &[4]);
        let integer_add = form(add.clone(), &[ints.clone(), ints.clone()], ints);
        assert_eq!(integer_add, Some("linalg.generic"));
        let half_add = form(add.clone(), &[half4(), half4()], half4());
        assert_eq!(half_add, Some("linalg.generic"));
        assert_eq!(
            form(add.clone(), &[half4(), f(&[4])], f(&[4])),
            Some("linalg.generic")
        );
        assert_eq!(
            form(add.clone(), &[half4(), f(&[4])], half4()),
            Some("linalg.generic")
        );
        // Integers and floats do not mix.
        let ints = buffer(I64, &[4]);
        assert_eq!(form(add, &[ints, f(&[4])], f(&[4])), None);
        let pow = Op::Binary { f: BinaryFn::Pow };
        assert_eq!(
            form(pow.clone(), &[f(&[4]), f(&[4])], f(&[4])),
            Some("math.powf")
        );
        // An RMS norm's square: a scalar exponent broadcast.
        assert_eq!(
            form(pow, &[f(&[4, 5]), f(&[])], f(&[4, 5])),
            Some("linalg.generic")
        );
        // The sigmoid (a linalg.map of arith and math ops) in f32 only.
        let sigmoid = Op::Unary {
            f: UnaryFn::Sigmoid,
        };
        assert_eq!(
            form(sigmoid.clone(), &[f(&[4])], f(&[4])),
            Some("composite")
        );
        let half = buffer(BF16, &[4]);
        assert_eq!(form(sigmoid, &[buffer(BF16, &[4])], half), None);
        // Casts between f32 and half precision; an axis counted from the end.
        let to_bf16 = Op::Cast { to: BF16 };
        let cast = form(to_bf16, &[f(&[4])], buffer(BF16, &[4]));
        assert_eq!(cast, Some("arith.truncf"));
        let to_i64 = Op::Cast { to: I64 };
        assert_eq!(form(to_i64.clone(), &[f(&[4])], buffer(I64, &[4])), None);
        let from_i32 = form(to_i64, &[buffer(DType::I32, &[4])], buffer(I64, &[4]));
        assert_eq!(from_i32, Some("arith.extsi"));
        let to_f32 = Op::Cast { to: F32 };
        let from_bool = form(to_f32, &[buffer(DType::Bool, &[4])], f(&[4]));
        assert_eq!(from_bool, Some("arith.uitofp"));
        let concat = |axis| form(Op::Concat { axis }, &[f(&[2, 3]), f(&[2, 1])], f(&[2, 4]));
        assert_eq!(concat(1), Some("tensor.concat"));
        assert_eq!(concat(-1), Some("tensor.concat"));
        assert_eq!(concat(-3), None);
        let slice = |sizes: Vec<usize>, out: &[usize]| {
            let op = Op::ExtractSlice {
                offsets: vec![1, 0],
                sizes,
                strides: vec![1, 2],
            };
            form(op, &[f(&[4, 5])], f(out))
        };
        assert_eq!(slice(vec![2, 3], &[2, 3]), Some("tensor.extract_slice"));
        // A result that is not the sizes (rank-reduced, say): none.
        assert_eq!(slice(vec![1, 3], &[3]), None);
        let reshape = |shape: Vec<usize>| form(Op::ReshapeTo { shape }, &[f(&[2, 3])], f(&[6]));
        assert_eq!(reshape(vec![6]), Some("tensor.reshape"));
        assert_eq!(reshape(vec![3, 2]), None);
        // A gather along axis 0 (counted from the end too) of integer indices, a scalar one
        // included; along another axis, of float indices, or from a bf16 table into f32: none.
        let gather = |axis, ids: Buffer, out: &[usize]| {
            form(Op::Gather { axis }, &[f(&[8, 4]), ids], f(out))
        };
        let ids = || buffer(I64, &[2, 3]);
        assert_eq!(gather(0, ids(), &[2, 3, 4]), Some("tensor.gather"));
        let scalar = buffer(DType::I32, &[]);
        assert_eq!(gather(-2, scalar, &[4]), Some("tensor.gather"));
        assert_eq!(gather(1, ids(), &[8, 2, 3]), None);
        assert_eq!(gather(0, f(&[2]), &[2, 4]), None);
        let table = buffer(BF16, &[8, 4]);
        let widened = form(Op::Gather { axis: 0 }, &[table, ids()], f(&[2, 3, 4]));
        assert_eq!(widened, None);
    }

    #[test]
    fn every_elementwise_name_reads_back_as_its_op() {
        for (f, name) in BINARY {
            assert_eq!(read_elementwise(name), Some(Op::Binary { f: *f }));
        }
        for (f, name) in UNARY {
            assert_eq!(read_elementwise(name), Some(Op::Unary { f: *f }));
        }
        assert_eq!(read_elementwise("arith.addi"), None);
    }

    /// A GatherND without batch axes prints as `tensor.gather` of its index tuples over the
    /// data's first axes (one or two), which MLIR verifies, and reads back as itself; one with
    /// batch axes stays a `core` op.
    #[test]
    fn a_gather_nd_prints_as_a_tensor_gather_and_reads_back_as_itself() {
        use crate::core::one_instruction::{program, round_trip};
        for (depth, out) in [(1usize, vec![5, 3, 6]), (2, vec![5, 6])] {
            let op = Op::GatherNd { batch_dims: 0 };
            let mut p = program(op.clone(), (DType::F32, &[4, 3, 6]), (DType::F32, &out));
            p.buffers.push(buffer(DType::I64, &[5, depth]));
            p.buffers[2].kind = BufferKind::Input;
            p.inputs.push(2);
            p.instructions[0].inputs.push(Some(2));
            let (text, read) = round_trip(&p);
            assert!(text.contains("tensor.gather"), "{text}");
            assert!(!text.contains("core.gather_nd"), "{text}");
            assert_eq!(read.instructions[0].op, op, "{text}");
        }
        let batched = Op::GatherNd { batch_dims: 1 };
        let inputs = [
            &buffer(DType::F32, &[4, 3, 6]),
            &buffer(DType::I64, &[4, 1]),
        ];
        assert_eq!(
            upstream_form(&batched, &inputs, &buffer(DType::F32, &[4, 6])),
            None
        );
    }
}
