//! `ppmoe-einsum-to-matmul`, over the module's MLIR ops: two-operand einsums that are
//! contractions, as a batched matmul between transposes and reshapes: `cab,dab->acd` is
//! x -> [a, c, b], y -> [a, b, d], matmul -> [a, c, d]. The GPU has GEMMs (cuBLAS), not an
//! einsum; the JAX block's attention comes as such einsums (StableHLO's dot_general). It runs
//! after the raise, which reads the dispatch einsums of the einsum-form MoE layers as they are.
//! An einsum is a `linalg.contract` whose maps are not a matmul's, a `linalg.generic` of an
//! outer product (one that sums over no label), or a `core.einsum` (one that upstream's ops do
//! not take); one that is not a plain contraction (a label repeated
//! in one term, a label summed away from one operand alone, unknown sizes) stays.
//!
//! The replacement is the ops ppmoe prints for its instructions (`lower`), parsed, and moved
//! in place of the einsum, their operands the einsum's:
//!
//!   before:  %r = linalg.contract indexing_maps = [...] ins(%q, %k ...)
//!   after:   %t = linalg.transpose ins(%q ...)  %m = tensor.reshape %t(...)  ...
//!            %p = linalg.batch_matmul ins(%m, %n ...)  %r = tensor.reshape %p(...)

use super::func_ops::{block_ops, body, functions, replace_op};
use super::program_ops::one_instruction;
use crate::core::read::{op_name, tensor_type};
use crate::core::upstream::{read_upstream, upstream_form, Upstream};
use crate::pipeline::Compilation;
use melior::ir::operation::{OperationLike, OperationRef};
use melior::ir::ValueLike;
use melior::Context;
use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Op, Program};

/// The terms of a contraction `x,y->out`, and how their labels split.
struct Contraction {
    x: Vec<char>,
    y: Vec<char>,
    out: Vec<char>,
    /// In x, y and out (the matmul's batch), in out's order.
    batch: Vec<char>,
    /// In x and out only (the matmul's rows), in out's order.
    rows: Vec<char>,
    /// In x and y only (summed), in x's order.
    summed: Vec<char>,
    /// In y and out only (the matmul's columns), in out's order.
    cols: Vec<char>,
}

/// Whether `equation` is a two-operand contraction this pass (and `linalg.contract`) takes.
pub fn is_contraction(equation: &str) -> bool {
    contraction(equation).is_some()
}

fn contraction(equation: &str) -> Option<Contraction> {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, out) = eq.split_once("->")?;
    let (x, y) = lhs.split_once(',')?;
    let (x, y, out): (Vec<char>, Vec<char>, Vec<char>) = (
        x.chars().collect(),
        y.chars().collect(),
        out.chars().collect(),
    );
    let distinct = |t: &[char]| t.iter().enumerate().all(|(i, c)| !t[..i].contains(c));
    if !distinct(&x) || !distinct(&y) || !distinct(&out) || y.contains(&',') {
        return None;
    }
    // Every label of an operand is either kept or summed against the other operand.
    let (in_x, in_y, in_o) = (
        |c: &char| x.contains(c),
        |c: &char| y.contains(c),
        |c: &char| out.contains(c),
    );
    if x.iter().chain(&y).any(|c| !(in_o(c) || in_x(c) && in_y(c)))
        || out.iter().any(|c| !in_x(c) && !in_y(c))
    {
        return None;
    }
    let pick = |t: &[char], keep: &dyn Fn(&char) -> bool| t.iter().copied().filter(keep).collect();
    let batch = pick(&out, &|c| in_x(c) && in_y(c));
    let rows = pick(&out, &|c| in_x(c) && !in_y(c));
    let summed = pick(&x, &|c| in_y(c) && !in_o(c));
    let cols = pick(&out, &|c| in_y(c) && !in_x(c));
    Some(Contraction {
        x,
        y,
        out,
        batch,
        rows,
        summed,
        cols,
    })
}

/// Rewrites every such einsum of every function of `module`; returns how many.
pub fn einsums_as_matmuls(
    context: &Context,
    module: &OperationRef,
    _: &mut Compilation,
) -> Result<usize, crate::pipeline::PassError> {
    let mut rewritten = 0;
    for f in functions(module)? {
        for op in block_ops(body(&f)?) {
            if let Some(replacement) = replacement(&op)? {
                replace(context, &op, &replacement)?;
                rewritten += 1;
            }
        }
    }
    Ok(rewritten)
}

/// What a contraction op reads back as: an einsum (`core.einsum`, a `linalg.contract` whose
/// maps are not a matmul's, or a `linalg.generic` of an outer product), or a matmul (a `linalg.contract` whose maps are one's);
/// none for any other op.
fn read_contraction(op: &OperationRef) -> Result<Option<Op>, String> {
    let name = op_name(op);
    let read = match name.as_str() {
        "core.einsum" => op
            .attribute("equation")
            .ok()
            .and_then(crate::core::read::attribute_text)
            .map(|equation| Ok(Op::Einsum { equation })),
        "linalg.contract" => {
            let result = op.result(0).map_err(|e| e.to_string())?;
            read_upstream(op, &name, Some(tensor_type(result.r#type())?))
        }
        // An einsum that sums over no label prints as a generic of the product.
        "linalg.generic" => match crate::core::read::instruction_op(op) {
            Ok(einsum @ Op::Einsum { .. }) => Some(Ok(einsum)),
            _ => None,
        },
        _ => None,
    };
    read.transpose()
}

/// The ops that replace a contraction op, printed as a function of its two operands (`x`,
/// `y`) returning its result: an einsum lowered to a batched matmul (`lower`), a
/// `linalg.contract` that is a matmul as the matmul op ppmoe prints for it. None where the op
/// stays: no contraction, an einsum `lower` does not take, a matmul printed as a contract.
fn replacement(op: &OperationRef) -> Result<Option<String>, String> {
    let Some(read) = read_contraction(op)? else {
        return Ok(None);
    };
    // Two operands (a `linalg.contract` also has its destination, which the replacement
    // makes anew) and one result.
    let operands = match op_name(op).as_str() {
        "linalg.contract" | "linalg.generic" => 3,
        _ => 2,
    };
    if op.operand_count() != operands || op.result_count() != 1 {
        return Ok(None);
    }
    let value = |k: usize| op.operand(k).map_err(|e| e.to_string());
    let result = op.result(0).map_err(|e| e.to_string())?;
    let inputs = [value(0)?, value(1)?];
    let mut p = one_instruction(read, &inputs, result.into(), op.location(), "einsum")?;
    let ins = p.instructions.pop().ok_or("the instruction")?;
    let seq = match ins.op {
        Op::Einsum { .. } => lower(&mut p, &ins),
        _ => {
            let b = &p.buffers;
            let form = upstream_form(&ins.op, &[&b[0], &b[1]], &b[2]);
            (!matches!(form, Some(Upstream::Contract(_)))).then(|| vec![ins])
        }
    };
    let Some(seq) = seq else {
        return Ok(None);
    };
    p.instructions = seq;
    Ok(Some(crate::core::print::print_core(&[&p])))
}

/// Replaces `op` by the function `replacement` writes over its two operands.
fn replace(context: &Context, op: &OperationRef, replacement: &str) -> Result<(), String> {
    let text = |e: melior::Error| e.to_string();
    let operands = [op.operand(0).map_err(text)?, op.operand(1).map_err(text)?];
    replace_op(context, *op, replacement, &operands)
}

fn static_shape(p: &Program, b: BufferId) -> Option<Vec<usize>> {
    p.buffers[b].shape.iter().copied().collect()
}

/// The instructions that replace one einsum, and the temporaries they write.
struct Emit<'p> {
    p: &'p mut Program,
    seq: Vec<Instruction>,
    origin: String,
    dtype: ppmoe_runtime::DType,
    name: String,
}

impl Emit<'_> {
    /// `op` of `input` into a new temporary of `shape` (or into `into`).
    fn op(
        &mut self,
        op: Op,
        inputs: &[BufferId],
        shape: &[usize],
        into: Option<BufferId>,
    ) -> BufferId {
        let id = into.unwrap_or_else(|| {
            self.p.buffers.push(Buffer {
                name: format!("{}.einsum{}", self.name, self.seq.len()),
                dtype: self.dtype,
                shape: shape.iter().map(|&d| Some(d)).collect(),
                kind: BufferKind::Temp,
            });
            self.p.buffers.len() - 1
        });
        self.seq.push(Instruction {
            op,
            inputs: inputs.iter().map(|&b| Some(b)).collect(),
            outputs: vec![id],
            origin: self.origin.clone(),
        });
        id
    }

    /// Operand `b` (labels `t`) into `order`, then reshaped to `mat`.
    fn arrange(
        &mut self,
        b: BufferId,
        t: &[char],
        order: &[char],
        sizes: &[usize],
        mat: [usize; 3],
    ) -> BufferId {
        let perm: Vec<usize> = order
            .iter()
            .map(|l| t.iter().position(|c| c == l).unwrap_or(0))
            .collect();
        let moved = if is_identity(&perm) {
            b
        } else {
            self.op(Op::Transpose { perm }, &[b], sizes, None)
        };
        self.op(
            Op::ReshapeTo {
                shape: mat.to_vec(),
            },
            &[moved],
            &mat,
            None,
        )
    }
}

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &q)| i == q)
}

/// The einsum's replacement: transposes, reshapes to [B, M, K] and [B, K, N], the matmul,
/// the reshape and transpose to the output's order.
fn lower(p: &mut Program, ins: &Instruction) -> Option<Vec<Instruction>> {
    let Op::Einsum { equation } = &ins.op else {
        return None;
    };
    let (&[Some(xb), Some(yb)], &[ob]) = (ins.inputs.as_slice(), ins.outputs.as_slice()) else {
        return None;
    };
    let c = contraction(equation)?;
    let (x, y, out) = (&c.x, &c.y, &c.out);
    let (xs, ys, out_shape) = (
        static_shape(p, xb)?,
        static_shape(p, yb)?,
        static_shape(p, ob)?,
    );
    // Terms that do not match their operands' ranks, or a label of two sizes, are the
    // einsum's own errors: it stays, and the backend reports them with the op.
    let label_size =
        |t: &[char], s: &[usize], l: &char| t.iter().position(|c| c == l).map(|i| s[i]);
    let consistent = |t: &[char], s: &[usize]| {
        t.len() == s.len()
            && t.iter().zip(s).all(|(l, &d)| {
                [label_size(x, &xs, l), label_size(y, &ys, l)]
                    .into_iter()
                    .flatten()
                    .all(|other| other == d)
            })
    };
    if x.len() != xs.len() || y.len() != ys.len() {
        return None;
    }
    if !consistent(x, &xs) || !consistent(y, &ys) || !consistent(out, &out_shape) {
        return None;
    }
    let size = |l: &char| label_size(x, &xs, l).or_else(|| label_size(y, &ys, l));
    let sizes = |ls: &[char]| ls.iter().map(size).collect::<Option<Vec<usize>>>();
    let prod = |ls: &[char]| sizes(ls).map(|v| v.iter().product::<usize>());
    let (bsz, m, k, n) = (
        prod(&c.batch)?,
        prod(&c.rows)?,
        prod(&c.summed)?,
        prod(&c.cols)?,
    );
    let x_order = [&c.batch[..], &c.rows, &c.summed].concat();
    let y_order = [&c.batch[..], &c.summed, &c.cols].concat();
    let natural = [&c.batch[..], &c.rows, &c.cols].concat();
    let (x_sizes, y_sizes, natural_sizes) = (sizes(&x_order)?, sizes(&y_order)?, sizes(&natural)?);
    let mut e = Emit {
        dtype: p.buffers[ob].dtype,
        name: p.buffers[ob].name.clone(),
        p,
        seq: Vec::new(),
        origin: ins.origin.clone(),
    };
    let xm = e.arrange(xb, x, &x_order, &x_sizes, [bsz, m, k]);
    let ym = e.arrange(yb, y, &y_order, &y_sizes, [bsz, k, n]);
    let product = e.op(Op::MatMul, &[xm, ym], &[bsz, m, n], None);
    // [batch, rows, cols] in their own order, then out's order, into the einsum's result.
    let perm: Vec<usize> = out
        .iter()
        .map(|l| natural.iter().position(|c| c == l).unwrap_or(0))
        .collect();
    if is_identity(&perm) {
        e.op(
            Op::ReshapeTo {
                shape: out_shape.clone(),
            },
            &[product],
            &out_shape,
            Some(ob),
        );
    } else {
        let r = e.op(
            Op::ReshapeTo {
                shape: natural_sizes.clone(),
            },
            &[product],
            &natural_sizes,
            None,
        );
        e.op(Op::Transpose { perm }, &[r], &out_shape, Some(ob));
    }
    Some(e.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contractions_split_their_labels_and_others_are_left() {
        let c = contraction("cab,dab->acd").unwrap();
        assert_eq!(
            (c.batch, c.rows, c.summed, c.cols),
            (vec!['a'], vec!['c'], vec!['b'], vec!['d'])
        );
        let c = contraction("ab,bac->ac").unwrap();
        assert_eq!(
            (c.batch, c.rows, c.summed, c.cols),
            (vec!['a'], vec![], vec!['b'], vec!['c'])
        );
        // A label repeated in a term (a diagonal), or summed from one operand alone.
        assert!(contraction("aab,bc->ac").is_none());
        assert!(contraction("ab,bc->c").is_none());
        assert!(contraction("ab,bc,cd->ad").is_none());
    }

    /// An einsum whose terms do not fit its operands (a hostile file) is left as it is, for the
    /// backend to refuse with the op; the pass does not index past a shape.
    #[test]
    fn terms_that_do_not_fit_their_operands_are_left() {
        use ppmoe_runtime::DType;
        let buf = |name: &str, shape: &[usize]| Buffer {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.iter().map(|&d| Some(d)).collect(),
            kind: BufferKind::Temp,
        };
        for (equation, x, y, out) in [
            ("abc,cd->abd", vec![2, 3], vec![3, 4], vec![2, 3, 4]),
            ("ab,bc->ac", vec![2, 3], vec![5, 4], vec![2, 4]),
            ("ab,bc->ac", vec![2, 3], vec![3, 4], vec![2, 7]),
        ] {
            let mut p = Program {
                buffers: vec![buf("x", &x), buf("y", &y), buf("o", &out)],
                inputs: vec![0, 1],
                outputs: vec![2],
                ..Program::empty()
            };
            let ins = Instruction {
                op: Op::Einsum {
                    equation: equation.into(),
                },
                inputs: vec![Some(0), Some(1)],
                outputs: vec![2],
                origin: String::new(),
            };
            assert!(
                lower(&mut p, &ins).is_none(),
                "{equation} {x:?} {y:?} {out:?}"
            );
            assert_eq!(p.buffers.len(), 3, "nothing added");
        }
    }
}
