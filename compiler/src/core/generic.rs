//! Elementwise instructions printed as one `linalg.generic` (and read back from it): every loop
//! parallel, each operand read through numpy broadcasting's indexing map (a dimension of 1
//! read at 0), the body one scalar op over the operands' elements:
//!
//! - f32 arithmetic: `arith.addf/subf/mulf/divf`, `math.powf`, and `arith.maxnumf/minnumf`
//!   (a NaN operand gives the other, as ppmoe's max and min do);
//! - bf16 and f16 arithmetic but the power, and the negation (`arith.negf`): ppmoe computes
//!   each in f32 and rounds the result to the type once, which is the correctly rounded result
//!   `arith` defines (f32 carries at least 2p + 2 bits of a p-bit type's operands, so that
//!   rounding twice is rounding once: Figueroa, 1995);
//! - i32 and i64 arithmetic: `arith.addi/subi/muli`, which wrap at the type's width, as
//!   ppmoe's integer arithmetic does, and the signed maximum and minimum `arith.maxsi/minsi`
//!   (an index clamped into range);
//! - comparisons, whose result is `i1`: `arith.cmpf` with ordered predicates for floats (a NaN
//!   compares false, as in ppmoe), `arith.cmpi` with signed ones for i32 and i64, `eq` for
//!   booleans;
//! - a where as `arith.select`, a boolean not as `arith.xori` with `true`, boolean and, or and
//!   xor as `arith.andi/ori/xori`;
//! - arithmetic and a where over float operands of more than one type (a half-precision
//!   weight of a `--dtype bf16` build read by f32 or f16 activations): each half-precision
//!   operand widened in the body (`arith.extf`, exact), the f32 op, and, into half precision,
//!   the result rounded once (`arith.truncf`), as ppmoe widens such operands, computes in f32
//!   and stores the result in its buffer's type;
//! - a broadcast to a static shape (`expand_to`) as the operand's element yielded as it is;
//! - an f32 einsum of two operands that sums over no label (an outer product, `ab,ac->abc`) as
//!   `arith.mulf`, each operand read through the map of its labels to the result's (loops in
//!   the result's order; read back as the einsum of those maps, its letters the loops'), where
//!   the maps are not numpy broadcasting's (which reads back as a multiplication).
//!
//! ```text
//! %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>,
//!        affine_map<(d0, d1) -> ()>, affine_map<(d0, d1) -> (d0, d1)>],
//!        iterator_types = ["parallel", "parallel"]}
//!      ins(%x, %k : tensor<16x4xi32>, tensor<i32>) outs(%d : tensor<16x4xi1>) {
//!      ^bb0(%a: i32, %b: i32, %o: i1):
//!        %c = arith.cmpi eq, %a, %b : i32
//!        linalg.yield %c : i1
//!      } -> tensor<16x4xi1>
//! ```
//!
//! Reading one back recomputes the form of the instruction it reads as from its operands'
//! types and refuses any difference (maps, iterators, body, wiring).

use super::print::element_type;
use super::read::{handle, op_name};
use melior::ir::attribute::{ArrayAttribute, IntegerAttribute};
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::{RegionLike, ValueLike};
use ppmoe_runtime::program::{BinaryFn, Op, UnaryFn};
use ppmoe_runtime::DType;

/// The scalar op of a generic's body.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// An `arith` or `math` op of two operands.
    Binary(&'static str),
    /// An `arith` op of one operand.
    Unary(&'static str),
    /// `arith.cmpf` or `arith.cmpi` with its predicate.
    Compare {
        op: &'static str,
        predicate: &'static str,
    },
    Select,
    Not,
    /// The operand's element as it is (a broadcast).
    Copy,
}

/// An instruction's `linalg.generic` form: its scalar op, the indexing maps (the operands',
/// then the result's), the element types (likewise) and the number of loops (the result's
/// rank).
#[derive(Debug, Clone, PartialEq)]
pub struct Generic {
    pub scalar: Scalar,
    pub maps: Vec<String>,
    pub types: Vec<&'static str>,
    pub loops: usize,
    /// Per operand, whether the body widens it to f32 (`arith.extf`) before the op.
    pub widened: Vec<bool>,
    /// Whether the body narrows the op's f32 result to the result's type (`arith.truncf`).
    pub narrows: bool,
}

/// f32 arithmetic as `arith` and `math` ops (the first five, over operands of one type, are a
/// `linalg.map` of the op: `upstream::BINARY`).
pub const FLOAT_BINARY: &[(BinaryFn, &str)] = &[
    (BinaryFn::Add, "arith.addf"),
    (BinaryFn::Sub, "arith.subf"),
    (BinaryFn::Mul, "arith.mulf"),
    (BinaryFn::Div, "arith.divf"),
    (BinaryFn::Pow, "math.powf"),
    (BinaryFn::Max, "arith.maxnumf"),
    (BinaryFn::Min, "arith.minnumf"),
];

/// Integer arithmetic that wraps as ppmoe's does, and the signed maximum and minimum (division
/// is left out: ppmoe refuses a zero divisor, where `arith.divsi` is undefined).
const INTEGER_BINARY: &[(BinaryFn, &str)] = &[
    (BinaryFn::Add, "arith.addi"),
    (BinaryFn::Sub, "arith.subi"),
    (BinaryFn::Mul, "arith.muli"),
    (BinaryFn::Max, "arith.maxsi"),
    (BinaryFn::Min, "arith.minsi"),
];

/// Boolean logic as `arith`'s bitwise ops on `i1`.
const BOOLEAN_BINARY: &[(BinaryFn, &str)] = &[
    (BinaryFn::And, "arith.andi"),
    (BinaryFn::Or, "arith.ori"),
    (BinaryFn::Xor, "arith.xori"),
];

/// A predicate's name and its value in `arith`'s enum.
type Predicate = (&'static str, i64);

/// Comparisons: each with its ordered float predicate and its signed integer one, and the
/// predicates' values in `arith`'s enums (as the parsed attribute holds them).
const COMPARISONS: &[(BinaryFn, Predicate, Predicate)] = &[
    (BinaryFn::Equal, ("oeq", 1), ("eq", 0)),
    (BinaryFn::Greater, ("ogt", 2), ("sgt", 4)),
    (BinaryFn::GreaterOrEqual, ("oge", 3), ("sge", 5)),
    (BinaryFn::Less, ("olt", 4), ("slt", 2)),
    (BinaryFn::LessOrEqual, ("ole", 5), ("sle", 3)),
];

fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::BF16 | DType::F16)
}

fn is_half(d: DType) -> bool {
    matches!(d, DType::BF16 | DType::F16)
}

fn is_integer(d: DType) -> bool {
    matches!(d, DType::I32 | DType::I64)
}

/// The generic form of `op` over operands and a result of these element types and static
/// shapes (the result's last), where it is one of the module's list.
pub fn generic_form(op: &Op, shapes: &[(DType, Vec<usize>)]) -> Option<Generic> {
    let ((out, out_shape), operands) = shapes.split_last()?;
    let dtypes: Vec<DType> = operands.iter().map(|(d, _)| *d).collect();
    let all = |d: DType| dtypes.iter().all(|t| *t == d);
    let scalar = match (op, dtypes.as_slice()) {
        (Op::Binary { f }, &[a, b]) if f.is_comparison() && a == b && *out == DType::Bool => {
            let (_, float, integer) = COMPARISONS.iter().find(|(g, _, _)| g == f)?;
            match a {
                a if is_float(a) => Scalar::Compare {
                    op: "arith.cmpf",
                    predicate: float.0,
                },
                a if is_integer(a) || (a == DType::Bool && *f == BinaryFn::Equal) => {
                    Scalar::Compare {
                        op: "arith.cmpi",
                        predicate: integer.0,
                    }
                }
                _ => return None,
            }
        }
        (Op::Binary { f }, &[_, _]) if *out == DType::F32 && all(DType::F32) => {
            Scalar::Binary(name_of(FLOAT_BINARY, *f)?)
        }
        (Op::Binary { f }, &[a, _]) if is_half(a) && all(a) && *out == a => {
            (*f != BinaryFn::Pow).then_some(Scalar::Binary(name_of(FLOAT_BINARY, *f)?))?
        }
        (Op::Binary { f }, &[_, _]) if mixed_floats(&dtypes, *out) => {
            (!f.is_comparison()).then_some(Scalar::Binary(name_of(FLOAT_BINARY, *f)?))?
        }
        (Op::Binary { f }, &[a, _]) if is_integer(a) && all(a) && *out == a => {
            Scalar::Binary(name_of(INTEGER_BINARY, *f)?)
        }
        (Op::Binary { f }, &[DType::Bool, _]) if all(DType::Bool) && *out == DType::Bool => {
            Scalar::Binary(name_of(BOOLEAN_BINARY, *f)?)
        }
        (Op::Unary { f: UnaryFn::Neg }, &[a]) if is_half(a) && *out == a => {
            Scalar::Unary("arith.negf")
        }
        (Op::Where, &[DType::Bool, x, y]) if x == y && x == *out && x != DType::F64 => {
            let signless = is_float(x) || is_integer(x) || x == DType::Bool;
            signless.then_some(Scalar::Select)?
        }
        (Op::Where, &[DType::Bool, x, y]) if mixed_floats(&[x, y], *out) => Scalar::Select,
        (Op::Unary { f: UnaryFn::Not }, &[DType::Bool]) if *out == DType::Bool => Scalar::Not,
        (Op::ExpandTo { shape }, &[x]) if x == *out && shape == out_shape => Scalar::Copy,
        (Op::Einsum { equation }, &[DType::F32, DType::F32]) if *out == DType::F32 => {
            let ranks: Vec<usize> = shapes.iter().map(|(_, s)| s.len()).collect();
            let maps = product_maps(equation, &ranks)?;
            // numpy broadcasting's maps read back as a multiplication: that einsum stays core.
            if broadcast_maps(shapes).as_ref() == Some(&maps) {
                return None;
            }
            let types = shapes.iter().map(|(d, _)| element_type(*d)).collect();
            return Some(Generic {
                scalar: Scalar::Binary("arith.mulf"),
                maps,
                types,
                loops: out_shape.len(),
                widened: vec![false; 2],
                narrows: false,
            });
        }
        _ => return None,
    };
    // A broadcast's result takes its shape from the op, not from its operand.
    let maps = match scalar {
        Scalar::Copy => maps_of(shapes)?,
        _ => broadcast_maps(shapes)?,
    };
    let types = shapes.iter().map(|(d, _)| element_type(*d)).collect();
    // Mixed floats are computed in f32: their half-precision operands widened, the result
    // narrowed where it is of half precision.
    let mixed = matches!(scalar, Scalar::Binary(_) | Scalar::Select)
        && mixed_floats(&dtypes[dtypes.len().saturating_sub(2)..], *out);
    let widened = dtypes.iter().map(|&d| mixed && is_half(d)).collect();
    Some(Generic {
        scalar,
        maps,
        types,
        loops: out_shape.len(),
        widened,
        narrows: mixed && is_half(*out),
    })
}

/// Whether float operands of these types into `out` are of more than one type among the
/// operands and the result, one at least of half precision: ppmoe computes them in f32.
fn mixed_floats(dtypes: &[DType], out: DType) -> bool {
    let floats = dtypes.iter().all(|&d| is_float(d)) && is_float(out);
    let half = dtypes.iter().chain([&out]).any(|&d| is_half(d));
    floats && half && dtypes.iter().any(|&d| d != out)
}

fn name_of(table: &[(BinaryFn, &'static str)], f: BinaryFn) -> Option<&'static str> {
    table.iter().find(|(g, _)| *g == f).map(|(_, n)| *n)
}

/// numpy broadcasting of the operands (each right-aligned to the result; a dimension of 1 read
/// at 0) as `linalg.generic`'s indexing maps, the result's last; `shapes` holds the operands
/// and then the result. None where the result has no loops or a dimension is not broadcast.
pub fn broadcast_maps(shapes: &[(DType, Vec<usize>)]) -> Option<Vec<String>> {
    let ((_, out), operands) = shapes.split_last()?;
    let rank = out.len();
    // The result's every dimension comes from an operand that has it (or is 1).
    let covered = (0..rank).all(|d| {
        out[d] == 1
            || operands.iter().any(|(_, of)| {
                let lead = rank.saturating_sub(of.len());
                d >= lead && of[d - lead] == out[d]
            })
    });
    maps_of(shapes).filter(|_| covered)
}

/// Each operand's indexing map into the result (right-aligned, a dimension of 1 read at 0),
/// the result's last; None where the result has no loops or an operand's dimension is neither
/// the result's nor 1.
fn maps_of(shapes: &[(DType, Vec<usize>)]) -> Option<Vec<String>> {
    let ((_, out), operands) = shapes.split_last()?;
    let rank = out.len();
    if rank == 0 {
        return None;
    }
    let dims: Vec<String> = (0..rank).map(|d| format!("d{d}")).collect();
    let map = |of: &[usize]| -> Option<String> {
        let lead = rank.checked_sub(of.len())?;
        let exprs = (of.iter().enumerate())
            .map(|(k, &n)| match n {
                _ if n == out[lead + k] => Some(dims[lead + k].clone()),
                1 => Some("0".to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(format!(
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            exprs.join(", ")
        ))
    };
    let mut maps = (operands.iter())
        .map(|(_, of)| map(of))
        .collect::<Option<Vec<_>>>()?;
    maps.push(map(out)?);
    Some(maps)
}

/// An einsum of two operands that sums over no label as `linalg.generic`'s indexing maps: one
/// loop per label of the result, in its order, each operand's map its labels' loops; `ranks`
/// are the operands' and the result's. None for any other einsum (ellipses, repeated labels, a
/// label summed, a term of another rank).
fn product_maps(equation: &str, ranks: &[usize]) -> Option<Vec<String>> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, out) = eq.split_once("->")?;
    let (x, y) = lhs.split_once(',')?;
    let terms = [x, y, out];
    let distinct = |t: &str| t.chars().enumerate().all(|(i, c)| !t[..i].contains(c));
    let letters = |t: &str| t.chars().all(|c| c.is_ascii_alphabetic());
    let fits = terms
        .iter()
        .zip(ranks)
        .all(|(t, &r)| t.chars().count() == r)
        && ranks.len() == 3
        && terms.iter().all(|t| distinct(t) && letters(t))
        && x.chars().chain(y.chars()).all(|c| out.contains(c))
        && !out.is_empty();
    if !fits {
        return None;
    }
    let dims: Vec<String> = (0..out.len()).map(|d| format!("d{d}")).collect();
    let map = |t: &str| {
        let exprs: Vec<&str> = t
            .chars()
            .filter_map(|c| out.find(c).map(|k| dims[k].as_str()))
            .collect();
        format!(
            "affine_map<({}) -> ({})>",
            dims.join(", "),
            exprs.join(", ")
        )
    };
    Some(terms.iter().map(|t| map(t)).collect())
}

/// The einsum whose `product_maps` are `maps`: the result's letters `a`, `b`, ... for the
/// loops in order, each operand's the letters of the loops its map reads.
fn product_equation(maps: &[String]) -> Option<String> {
    let results = |m: &str| -> Option<Vec<usize>> {
        let (_, r) = m.split_once("-> (")?;
        let r = r.strip_suffix(")>")?;
        if r.is_empty() {
            return Some(vec![]);
        }
        r.split(", ")
            .map(|d| d.strip_prefix('d').and_then(|n| n.parse().ok()))
            .collect()
    };
    let letter = |d: &usize| char::from_u32('a' as u32 + u32::try_from(*d).ok()?);
    let term = |m: &String| -> Option<String> { results(m)?.iter().map(letter).collect() };
    let [x, y, out] = maps else {
        return None;
    };
    Some(format!("{},{}->{}", term(x)?, term(y)?, term(out)?))
}

/// The `linalg.generic` of form `g` for instruction `i`, making `result` from `names` of
/// `types` into the empty `%d<i>` of type `out`.
pub fn generic_line(
    g: &Generic,
    i: usize,
    result: &str,
    operands: (&str, &str),
    out: &str,
) -> String {
    let (names, types) = operands;
    let (result_type, operand_types) = g.types.split_last().unwrap_or((&"", &[]));
    let loops = vec!["\"parallel\""; g.loops].join(", ");
    let args: Vec<String> = (operand_types.iter().enumerate())
        .map(|(k, t)| format!("%g{i}_{k}: {t} loc(unknown)"))
        .collect();
    let widens = g.widened.iter().any(|&w| w) || g.narrows;
    let first = if widens {
        "f32"
    } else {
        operand_types.first().unwrap_or(&"")
    };
    // Each widened operand's `arith.extf`, and what the op reads of each operand.
    let mut widening = String::new();
    let mut a = Vec::new();
    for (k, t) in operand_types.iter().enumerate() {
        if g.widened.get(k) == Some(&true) {
            widening.push_str(&format!(
                "%g{i}_w{k} = arith.extf %g{i}_{k} : {t} to f32 loc(unknown)\n      "
            ));
            a.push(format!("%g{i}_w{k}"));
        } else {
            a.push(format!("%g{i}_{k}"));
        }
    }
    let arg = |k: usize| a.get(k).cloned().unwrap_or_default();
    let op_line = match &g.scalar {
        Scalar::Binary(op) => format!("%g{i}_r = {op} {}, {} : {first} loc(unknown)\n", arg(0), arg(1)),
        Scalar::Unary(op) => format!("%g{i}_r = {op} {} : {first} loc(unknown)\n", arg(0)),
        Scalar::Compare { op, predicate } => format!(
            "%g{i}_r = {op} {predicate}, {}, {} : {first} loc(unknown)\n",
            arg(0),
            arg(1)
        ),
        Scalar::Select => format!(
            "%g{i}_r = arith.select {}, {}, {} : {} loc(unknown)\n",
            arg(0),
            arg(1),
            arg(2),
            if widens { "f32" } else { operand_types.get(1).unwrap_or(&"") }
        ),
        Scalar::Not => format!(
            "%g{i}_t = arith.constant true loc(unknown)\n      %g{i}_r = arith.xori %g{i}_0, %g{i}_t : i1 loc(unknown)\n"
        ),
        Scalar::Copy => String::new(),
    };
    let narrowing = match g.narrows {
        true => {
            format!("      %g{i}_n = arith.truncf %g{i}_r : f32 to {result_type} loc(unknown)\n")
        }
        false => String::new(),
    };
    let body = format!("{widening}{op_line}{narrowing}");
    let yielded = match (&g.scalar, g.narrows) {
        (Scalar::Copy, _) => format!("%g{i}_0"),
        (_, true) => format!("%g{i}_n"),
        _ => format!("%g{i}_r"),
    };
    format!(
        "{result} = linalg.generic {{indexing_maps = [{}], iterator_types = [{loops}]}} ins({names} : {types}) outs(%d{i} : {out}) {{\n    ^bb0({}, %g{i}_o: {result_type} loc(unknown)):\n      {body}      linalg.yield {yielded} : {result_type} loc(unknown)\n    }} -> {out}",
        g.maps.join(", "),
        args.join(", ")
    )
}

/// The instruction a `linalg.generic` reads back as, where it is a form ppmoe prints.
pub fn read_generic(op: &OperationRef) -> Result<Op, String> {
    let refuse = |what: String| format!("'linalg.generic': {what}");
    let (scalar, widened, narrows) = read_body(op).ok_or_else(|| {
        refuse("its body is not one elementwise op over its operands as ppmoe prints it".into())
    })?;
    let shapes = (0..op.operand_count().saturating_sub(1))
        .map(|k| op.operand(k).ok().map(|v| v.r#type()))
        .chain([op.result(0).ok().map(|r| r.r#type())])
        .map(|t| {
            let (d, shape) = super::read::tensor_type(t?).ok()?;
            Some((d, shape.into_iter().collect::<Option<Vec<usize>>>()?))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| refuse("expected tensors of static shape".into()))?;
    let strings = |key: &str| op.attribute(key).ok().map(array_strings);
    let maps = strings("indexing_maps");
    let read = match (&scalar, maps.as_deref()) {
        // A product whose maps are no broadcasting is the einsum they say.
        (Scalar::Binary("arith.mulf"), Some(m))
            if broadcast_maps(&shapes).as_deref() != Some(m) =>
        {
            product_equation(m).map(|equation| Op::Einsum { equation })
        }
        _ => instruction_of(&scalar, &shapes),
    }
    .ok_or_else(|| {
        refuse(format!(
            "{scalar:?} over these operand types is no instruction ppmoe prints"
        ))
    })?;
    let expected = generic_form(&read, &shapes)
        .filter(|g| g.scalar == scalar && g.widened == widened && g.narrows == narrows)
        .ok_or_else(|| {
            refuse(format!(
                "{scalar:?} over these operand types is no form ppmoe prints"
            ))
        })?;
    if maps.as_ref() != Some(&expected.maps) {
        return Err(refuse(format!(
            "indexing maps {maps:?}, where broadcasting its operands takes {:?}",
            expected.maps
        )));
    }
    let parallel = "#linalg.iterator_type<parallel>";
    let iterators = strings("iterator_types").unwrap_or_default();
    if iterators.len() != expected.loops || iterators.iter().any(|t| t != parallel) {
        return Err(refuse(format!(
            "iterator types {iterators:?}; expected every loop parallel"
        )));
    }
    Ok(read)
}

/// An array attribute's elements as MLIR prints them (none where it is no array).
pub(crate) fn array_strings(a: melior::ir::attribute::Attribute) -> Vec<String> {
    ArrayAttribute::try_from(a)
        .map(|a| {
            (0..a.len())
                .filter_map(|k| a.element(k).ok())
                .map(|m| m.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The instruction a body's scalar op computes over operands of these types.
fn instruction_of(scalar: &Scalar, shapes: &[(DType, Vec<usize>)]) -> Option<Op> {
    Some(match scalar {
        Scalar::Unary(_) => Op::Unary { f: UnaryFn::Neg },
        Scalar::Binary(name) => {
            let table = match shapes.first().map(|(d, _)| *d) {
                Some(d) if is_float(d) => FLOAT_BINARY,
                Some(DType::Bool) => BOOLEAN_BINARY,
                _ => INTEGER_BINARY,
            };
            let f = table.iter().find(|(_, n)| n == name)?.0;
            Op::Binary { f }
        }
        Scalar::Compare { op, predicate } => {
            let float = *op == "arith.cmpf";
            let (f, _, _) = COMPARISONS
                .iter()
                .find(|(_, fp, ip)| (if float { fp.0 } else { ip.0 }) == *predicate)?;
            Op::Binary { f: *f }
        }
        Scalar::Select => Op::Where,
        Scalar::Not => Op::Unary { f: UnaryFn::Not },
        Scalar::Copy => Op::ExpandTo {
            shape: shapes.last()?.1.clone(),
        },
    })
}

/// The scalar op of a generic's body, which operands it widens and whether it narrows the
/// result, where the body is one ppmoe prints: each widened operand's `arith.extf` to f32 (in
/// the operands' order), then the op over the block's arguments (or their widenings) in order
/// (a not's second operand a `true` constant), its result yielded, or its `arith.truncf` from
/// f32.
fn read_body(op: &OperationRef) -> Option<(Scalar, Vec<bool>, bool)> {
    let block = op.region(0).ok()?.first_block()?;
    let ops = crate::passes::func_ops::block_ops(block);
    let (yields, steps) = ops.split_last()?;
    let arguments = block.argument_count().checked_sub(1)?;
    if steps.is_empty() {
        let copies = op_name(yields) == "linalg.yield"
            && arguments == 1
            && yields.operand_count() == 1
            && yields.operand(0).map(handle).ok() == block.argument(0).map(handle).ok();
        return copies.then_some((Scalar::Copy, vec![false], false));
    }
    let (mut last, mut before) = steps.split_last()?;
    let yielded = op_name(yields) == "linalg.yield"
        && yields.operand_count() == 1
        && yields.operand(0).map(handle).ok() == last.result(0).map(handle).ok();
    // A narrowing of the op's f32 result.
    let narrows = op_name(last) == "arith.truncf";
    if narrows {
        let (op, rest) = before.split_last()?;
        let f32_result = op.result(0).ok()?.r#type().to_string() == "f32";
        let of_op = last.operand(0).map(handle).ok() == op.result(0).map(handle).ok();
        if !(f32_result && of_op) {
            return None;
        }
        (last, before) = (op, rest);
    }
    let (inputs, widened, before) = widenings(block, before, arguments)?;
    let reads_arguments = |n: usize| {
        last.operand_count() == n
            && (0..n).all(|k| last.operand(k).map(handle).ok() == inputs.get(k).copied())
    };
    let name = op_name(last);
    let scalar = match (name.as_str(), before) {
        ("arith.select", []) if arguments == 3 && reads_arguments(3) => Scalar::Select,
        ("arith.xori", [constant]) if arguments == 1 => {
            let is_true = op_name(constant) == "arith.constant"
                && constant
                    .attribute("value")
                    .ok()
                    .and_then(|a| IntegerAttribute::try_from(a).ok())
                    .is_some_and(|v| v.value() != 0);
            let wired = last.operand_count() == 2
                && last.operand(0).map(handle).ok() == block.argument(0).map(handle).ok()
                && last.operand(1).map(handle).ok() == constant.result(0).map(handle).ok();
            (is_true && wired).then_some(Scalar::Not)?
        }
        ("arith.negf", []) if arguments == 1 && reads_arguments(1) => Scalar::Unary("arith.negf"),
        ("arith.cmpf" | "arith.cmpi", []) if arguments == 2 && reads_arguments(2) => {
            let value = last
                .attribute("predicate")
                .ok()
                .and_then(|a| IntegerAttribute::try_from(a).ok())?
                .value();
            let float = name == "arith.cmpf";
            let (_, fp, ip) = COMPARISONS
                .iter()
                .find(|(_, fp, ip)| (if float { fp.1 } else { ip.1 }) == value)?;
            Scalar::Compare {
                op: if float { "arith.cmpf" } else { "arith.cmpi" },
                predicate: if float { fp.0 } else { ip.0 },
            }
        }
        (name, []) if arguments == 2 && reads_arguments(2) => {
            let known = FLOAT_BINARY
                .iter()
                .chain(INTEGER_BINARY)
                .chain(BOOLEAN_BINARY);
            Scalar::Binary(known.map(|(_, n)| *n).find(|n| *n == name)?)
        }
        _ => return None,
    };
    // Only arithmetic and a where widen and narrow.
    let widens = widened.iter().any(|&w| w) || narrows;
    let may_widen = matches!(scalar, Scalar::Binary(_) | Scalar::Select);
    (yielded && (!widens || may_widen)).then_some((scalar, widened, narrows))
}

/// What the op of a body reads of each of its `arguments` operands (by handle): the block's
/// argument, or its widening where the body's first steps (`steps`) are `arith.extf`s of
/// arguments to f32, in the arguments' order; which arguments are widened; and the steps
/// after the widenings.
#[allow(clippy::type_complexity)]
fn widenings<'s, 'c, 'a>(
    block: melior::ir::BlockRef<'c, 'a>,
    steps: &'s [OperationRef<'c, 'a>],
    arguments: usize,
) -> Option<(Vec<usize>, Vec<bool>, &'s [OperationRef<'c, 'a>])> {
    let mut inputs: Vec<usize> = (0..arguments)
        .map(|k| block.argument(k).map(handle).ok())
        .collect::<Option<_>>()?;
    let mut widened = vec![false; arguments];
    let count = steps
        .iter()
        .take_while(|s| op_name(s) == "arith.extf")
        .count();
    let mut last = None;
    for extf in &steps[..count] {
        let from = extf.operand(0).map(handle).ok()?;
        let k = inputs.iter().position(|&v| v == from)?;
        let to_f32 = extf.result(0).ok()?.r#type().to_string() == "f32";
        // In the operands' order, each once.
        if !to_f32 || widened[k] || last.is_some_and(|l| l >= k) {
            return None;
        }
        inputs[k] = extf.result(0).map(handle).ok()?;
        widened[k] = true;
        last = Some(k);
    }
    Some((inputs, widened, &steps[count..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(op: Op, shapes: &[(DType, &[usize])]) -> Option<Generic> {
        let shapes: Vec<(DType, Vec<usize>)> =
            shapes.iter().map(|(d, s)| (*d, s.to_vec())).collect();
        generic_form(&op, &shapes)
    }

    #[test]
    fn each_elementwise_op_takes_the_scalar_op_of_its_types_or_none() {
        use DType::{Bool, BF16, F32, I32, I64, U32};
        let binary = |f| Op::Binary { f };
        let scalar = |op, a: DType, b: DType, out: DType| {
            form(op, &[(a, &[4, 2]), (b, &[2]), (out, &[4, 2])]).map(|g| g.scalar)
        };
        let less = binary(BinaryFn::Less);
        let cmp = |op, predicate| Some(Scalar::Compare { op, predicate });
        assert_eq!(
            scalar(less.clone(), F32, F32, Bool),
            cmp("arith.cmpf", "olt")
        );
        assert_eq!(
            scalar(less.clone(), BF16, BF16, Bool),
            cmp("arith.cmpf", "olt")
        );
        assert_eq!(
            scalar(less.clone(), I64, I64, Bool),
            cmp("arith.cmpi", "slt")
        );
        // Unsigned integers, booleans ordered, mixed operands: none.
        assert_eq!(scalar(less.clone(), U32, U32, Bool), None);
        assert_eq!(scalar(less, Bool, Bool, Bool), None);
        assert_eq!(
            scalar(binary(BinaryFn::Equal), Bool, Bool, Bool),
            cmp("arith.cmpi", "eq")
        );
        assert_eq!(scalar(binary(BinaryFn::Equal), I32, I64, Bool), None);
        let add = binary(BinaryFn::Add);
        assert_eq!(
            scalar(add.clone(), I32, I32, I32),
            Some(Scalar::Binary("arith.addi"))
        );
        assert_eq!(
            scalar(binary(BinaryFn::Max), I64, I64, I64),
            Some(Scalar::Binary("arith.maxsi"))
        );
        assert_eq!(
            scalar(binary(BinaryFn::Min), I32, I32, I32),
            Some(Scalar::Binary("arith.minsi"))
        );
        assert_eq!(
            scalar(add.clone(), F32, F32, F32),
            Some(Scalar::Binary("arith.addf"))
        );
        // Half-precision arithmetic rounds once, as arith's does; its power and integer
        // division stay core ops. Mixed float operands are computed in f32: the half ones
        // widened (exact), a half-precision result narrowed once.
        assert_eq!(
            scalar(add.clone(), BF16, BF16, BF16),
            Some(Scalar::Binary("arith.addf"))
        );
        assert_eq!(scalar(binary(BinaryFn::Pow), BF16, BF16, BF16), None);
        assert_eq!(
            scalar(add.clone(), BF16, F32, F32),
            Some(Scalar::Binary("arith.addf"))
        );
        let mixed = form(add.clone(), &[(F32, &[4, 2]), (BF16, &[2]), (F32, &[4, 2])]);
        assert_eq!(
            mixed.map(|g| (g.widened, g.narrows)),
            Some((vec![false, true], false))
        );
        let into_half = form(
            add.clone(),
            &[(F32, &[4, 2]), (BF16, &[2]), (BF16, &[4, 2])],
        );
        assert_eq!(
            into_half.map(|g| (g.widened, g.narrows)),
            Some((vec![false, true], true))
        );
        assert_eq!(scalar(binary(BinaryFn::Less), BF16, F32, Bool), None);
        assert_eq!(scalar(add, I64, F32, F32), None);
        assert_eq!(scalar(binary(BinaryFn::Div), I64, I64, I64), None);
        assert_eq!(
            scalar(binary(BinaryFn::Max), F32, F32, F32),
            Some(Scalar::Binary("arith.maxnumf"))
        );
        let select = form(
            Op::Where,
            &[(Bool, &[4, 1]), (F32, &[]), (F32, &[4, 2]), (F32, &[4, 2])],
        );
        let select = select.unwrap();
        assert_eq!(select.scalar, Scalar::Select);
        let map = |to: &str| format!("affine_map<(d0, d1) -> ({to})>");
        assert_eq!(
            select.maps,
            [map("d0, 0"), map(""), map("d0, d1"), map("d0, d1")]
        );
        assert_eq!(select.types, ["i1", "f32", "f32", "f32"]);
        let not = Op::Unary { f: UnaryFn::Not };
        assert_eq!(
            form(not.clone(), &[(Bool, &[3]), (Bool, &[3])]).map(|g| g.scalar),
            Some(Scalar::Not)
        );
        assert_eq!(form(not, &[(I64, &[3]), (I64, &[3])]), None);
    }

    #[test]
    fn broadcasting_reads_each_operand_through_its_map() {
        use DType::F32;
        let maps = broadcast_maps(&[
            (F32, vec![1, 16, 64]),
            (F32, vec![1, 16, 1]),
            (F32, vec![]),
            (F32, vec![1, 16, 64]),
        ])
        .unwrap();
        let map = |to: &str| format!("affine_map<(d0, d1, d2) -> ({to})>");
        let want = [
            map("d0, d1, d2"),
            map("d0, d1, 0"),
            map(""),
            map("d0, d1, d2"),
        ];
        assert_eq!(maps, want);
        // A dimension the result has that no operand gives: none.
        assert_eq!(broadcast_maps(&[(F32, vec![4]), (F32, vec![3, 4])]), None);
    }

    /// Each form printed, parsed and verified by MLIR, reads back as its instruction; a body
    /// whose operands are swapped is refused.
    #[test]
    fn every_form_reads_back_as_its_instruction() {
        use DType::{Bool, F32, I32, I64};
        let context = ppmoe_dialect::context();
        type Shapes = Vec<(DType, Vec<usize>)>;
        let cases: Vec<(Op, Shapes)> = vec![
            (
                Op::Binary { f: BinaryFn::Sub },
                vec![(F32, vec![4, 2]), (F32, vec![2]), (F32, vec![4, 2])],
            ),
            (
                Op::Binary { f: BinaryFn::Min },
                vec![(F32, vec![3]), (F32, vec![3]), (F32, vec![3])],
            ),
            (
                Op::Binary { f: BinaryFn::Mul },
                vec![(I32, vec![3]), (I32, vec![3]), (I32, vec![3])],
            ),
            (
                Op::Binary { f: BinaryFn::Sub },
                vec![(I64, vec![3]), (I64, vec![]), (I64, vec![3])],
            ),
            (
                Op::Where,
                vec![
                    (Bool, vec![3]),
                    (I64, vec![3]),
                    (I64, vec![1]),
                    (I64, vec![3]),
                ],
            ),
            (
                Op::Unary { f: UnaryFn::Not },
                vec![(Bool, vec![2, 3]), (Bool, vec![2, 3])],
            ),
            (
                Op::Binary { f: BinaryFn::Xor },
                vec![(Bool, vec![2, 3]), (Bool, vec![3]), (Bool, vec![2, 3])],
            ),
            (
                Op::Binary { f: BinaryFn::And },
                vec![(Bool, vec![3]), (Bool, vec![3]), (Bool, vec![3])],
            ),
            (
                Op::Einsum {
                    equation: "ab,ac->abc".into(),
                },
                vec![(F32, vec![4, 2]), (F32, vec![4, 3]), (F32, vec![4, 2, 3])],
            ),
            (
                Op::Einsum {
                    equation: "a,ab->ab".into(),
                },
                vec![(F32, vec![4]), (F32, vec![4, 3]), (F32, vec![4, 3])],
            ),
            (
                Op::ExpandTo {
                    shape: vec![2, 4, 3],
                },
                vec![(I32, vec![2, 1, 3]), (I32, vec![2, 4, 3])],
            ),
            (
                Op::Unary { f: UnaryFn::Neg },
                vec![(DType::BF16, vec![3]), (DType::BF16, vec![3])],
            ),
            (
                Op::Binary { f: BinaryFn::Div },
                vec![
                    (DType::F16, vec![3]),
                    (DType::F16, vec![1]),
                    (DType::F16, vec![3]),
                ],
            ),
            // Mixed precision into f32: a bf16 weight read by an f32 activation, and back.
            (
                Op::Binary { f: BinaryFn::Mul },
                vec![(DType::BF16, vec![3]), (F32, vec![2, 3]), (F32, vec![2, 3])],
            ),
            (
                Op::Binary { f: BinaryFn::Pow },
                vec![(F32, vec![2, 3]), (DType::BF16, vec![]), (F32, vec![2, 3])],
            ),
            (
                Op::Binary { f: BinaryFn::Add },
                vec![
                    (DType::F16, vec![3]),
                    (DType::BF16, vec![3]),
                    (F32, vec![3]),
                ],
            ),
            (
                Op::Where,
                vec![
                    (Bool, vec![2, 3]),
                    (DType::BF16, vec![]),
                    (F32, vec![2, 3]),
                    (F32, vec![2, 3]),
                ],
            ),
            // Into half precision: computed in f32, rounded once.
            (
                Op::Binary { f: BinaryFn::Mul },
                vec![
                    (DType::BF16, vec![3]),
                    (DType::F16, vec![2, 3]),
                    (DType::F16, vec![2, 3]),
                ],
            ),
            (
                Op::Where,
                vec![
                    (Bool, vec![2, 3]),
                    (DType::BF16, vec![]),
                    (DType::F16, vec![2, 3]),
                    (DType::F16, vec![2, 3]),
                ],
            ),
        ]
        .into_iter()
        .chain(COMPARISONS.iter().flat_map(|(f, _, _)| {
            [F32, I64].map(|d| {
                (
                    Op::Binary { f: *f },
                    vec![(d, vec![3]), (d, vec![3]), (Bool, vec![3])],
                )
            })
        }))
        .collect();
        for (op, shapes) in cases {
            let g = generic_form(&op, &shapes).unwrap();
            let text = module_of(&g, &shapes);
            let module = ppmoe_dialect::parse_verified(&context, &text)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(read_first_generic(&module), Some(Ok(op.clone())), "{text}");
            if let Scalar::Binary(_) | Scalar::Compare { .. } = g.scalar {
                let swapped = (text.replace("%g0_0, %g0_1", "%g0_1, %g0_0"))
                    .replace("%g0_w0, %g0_1", "%g0_1, %g0_w0")
                    .replace("%g0_0, %g0_w1", "%g0_w1, %g0_0")
                    .replace("%g0_w0, %g0_w1", "%g0_w1, %g0_w0");
                assert_ne!(swapped, text);
                let module = ppmoe_dialect::parse_verified(&context, &swapped).unwrap();
                let read = read_first_generic(&module);
                assert!(read.is_some_and(|r| r.is_err()), "{swapped}");
            }
        }
    }

    fn module_of(g: &Generic, shapes: &[(DType, Vec<usize>)]) -> String {
        let ty = |(d, s): &(DType, Vec<usize>)| {
            let dims: String = s.iter().map(|n| format!("{n}x")).collect();
            format!("tensor<{dims}{}>", element_type(*d))
        };
        let (out, operands) = shapes.split_last().unwrap();
        let names: Vec<String> = (0..operands.len()).map(|k| format!("%arg{k}")).collect();
        let types: Vec<String> = operands.iter().map(ty).collect();
        let args: Vec<String> = names
            .iter()
            .zip(&types)
            .map(|(n, t)| format!("{n}: {t}"))
            .collect();
        let out = ty(out);
        let line = generic_line(g, 0, "%r", (&names.join(", "), &types.join(", ")), &out);
        format!(
            "module {{\n  func.func @f({}) -> {out} {{\n    %d0 = tensor.empty() : {out}\n    {line}\n    return %r : {out}\n  }}\n}}\n",
            args.join(", ")
        )
    }

    /// The first `linalg.generic` of the module's first function, read.
    fn read_first_generic(module: &melior::ir::Module) -> Option<Result<Op, String>> {
        let top = module.as_operation();
        let f = top.region(0).ok()?.first_block()?.first_operation()?;
        let mut next = f.region(0).ok()?.first_block()?.first_operation();
        while let Some(o) = next {
            if op_name(&o) == "linalg.generic" {
                return Some(read_generic(&o));
            }
            next = o.next_in_block();
        }
        None
    }
}
