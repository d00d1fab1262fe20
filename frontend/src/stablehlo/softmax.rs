//! JAX spells softmax out (`exp(x - max(x)) / sum(exp(x - max(x)))`, with broadcasts and a
//! `max(-inf, m)` guard); the MoE raise knows routers by their softmax, so the spelled-out form
//! is found here and lowered as one Softmax.

use super::attrs;
use super::ir::HOp;
use std::collections::HashMap;

/// The value under broadcasts and JAX's `max(-inf, m)` guard.
fn strip<'a>(mut id: usize, producers: &HashMap<usize, &'a HOp>) -> (usize, Option<&'a HOp>) {
    loop {
        let Some(p) = producers.get(&id).copied() else {
            return (id, None);
        };
        match p.name.as_str() {
            "stablehlo.broadcast_in_dim" => id = p.operands[0],
            "stablehlo.maximum" => {
                // One side a broadcast constant: the other is the value.
                let is_const = |v: usize| {
                    let mut v = v;
                    while let Some(q) = producers.get(&v) {
                        match q.name.as_str() {
                            "stablehlo.broadcast_in_dim" => v = q.operands[0],
                            "stablehlo.constant" => return true,
                            _ => return false,
                        }
                    }
                    false
                };
                match (is_const(p.operands[0]), is_const(p.operands[1])) {
                    (true, false) => id = p.operands[1],
                    (false, true) => id = p.operands[0],
                    _ => return (id, Some(p)),
                }
            }
            _ => return (id, Some(p)),
        }
    }
}

/// A single-operand reduce by `body` over one dimension: (operand, dimension).
fn reduce_of(op: &HOp, body: &str) -> Option<(usize, i64)> {
    if op.name != "stablehlo.reduce" || op.operands.len() != 2 {
        return None;
    }
    let dims = attrs::i64_array(op.attr("dimensions")?).ok()?;
    let by = op
        .regions
        .first()?
        .ops
        .iter()
        .find(|o| o.name != "stablehlo.return")?;
    (dims.len() == 1 && by.name == body).then(|| (op.operands[0], dims[0]))
}

/// `exp(x - max(x)) / sum(exp(x - max(x)))` over one dimension: (x, dimension).
pub(super) fn softmax_of(op: &HOp, producers: &HashMap<usize, &HOp>) -> Option<(usize, i64)> {
    if op.name != "stablehlo.divide" {
        return None;
    }
    let e = op.operands[0];
    let exp = producers
        .get(&e)
        .filter(|p| p.name == "stablehlo.exponential")?;
    let sub = producers
        .get(&exp.operands[0])
        .filter(|p| p.name == "stablehlo.subtract")?;
    let x = sub.operands[0];
    let (_, max) = strip(sub.operands[1], producers);
    let (mx, maxis) = reduce_of(max?, "stablehlo.maximum")?;
    let (_, sum) = strip(op.operands[1], producers);
    let (sx, saxis) = reduce_of(sum?, "stablehlo.add")?;
    (mx == x && sx == e && maxis == saxis).then_some((x, maxis))
}
