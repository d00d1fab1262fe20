//! Counted loops, unrolled: `stablehlo.while` as `jax.lax.scan` and `fori_loop` lower it (a
//! scan over stacked layer weights, say), and `stablehlo.dynamic_slice`, with which such a
//! body picks its iteration's slice. The condition is `counter < N`, the counter one of the
//! carried values (JAX puts it after the scanned arrays), started at a constant, N a constant. Each
//! iteration's body is lowered with the counter as a constant, so that the slices it takes fold to
//! static ones in the core stage. Other loops are refused by name.

use super::ir::{HOp, HRegion};
use super::lower::{Device, Env, Lowering};
use crate::graph::{AttrValue, TensorType};

/// Iterations unrolled at most: layers of a model, not a token loop.
const MAX_ITERATIONS: i64 = 4096;

/// The counter (its place among the carried values) and N of a condition region
/// `counter < N`, N a constant.
fn bound(cond: &HRegion) -> Option<(usize, i64)> {
    let ret = cond.ops.last()?;
    let pred = *ret.operands.first()?;
    let cmp = cond
        .ops
        .iter()
        .find(|o| o.results.first().is_some_and(|r| r.id == pred))?;
    let lt = cmp.name == "stablehlo.compare"
        && cmp
            .attr("comparison_direction")
            .is_some_and(|d| d.contains("LT"));
    let counter = cond
        .args
        .iter()
        .position(|a| cmp.operands.first() == Some(&a.id))?;
    if !lt {
        return None;
    }
    let limit = *cmp.operands.get(1)?;
    let c = cond.ops.iter().find(|o| {
        o.name == "stablehlo.constant" && o.results.first().is_some_and(|r| r.id == limit)
    })?;
    Some((counter, c.dense.first()?.1.as_i64()?.first().copied()?))
}

impl Lowering {
    /// `stablehlo.while`, unrolled (see the module's comment).
    pub(super) fn counted_loop(
        &mut self,
        op: &HOp,
        args: Vec<String>,
        dev: &mut Device,
    ) -> Result<Vec<String>, String> {
        let refuse = |why: &str| {
            format!("stablehlo.while: {why}; ppmoe unrolls only counted loops (jax.lax.scan, fori_loop: the condition counter < a constant, the counter a carried value that starts at a constant)")
        };
        let [cond, body] = &op.regions[..] else {
            return Err(refuse("a condition and a body region are expected"));
        };
        let (counter, end) =
            bound(cond).ok_or_else(|| refuse("the condition is not counter < a constant"))?;
        let counter_ty: TensorType = op
            .operand_types
            .get(counter)
            .cloned()
            .ok_or_else(|| refuse("the counter is not a carried value"))?;
        let start = args
            .get(counter)
            .and_then(|a| self.const_i64(a))
            .ok_or_else(|| refuse("the counter does not start at a constant"))?;
        let trips = end.saturating_sub(start).max(0);
        if trips > MAX_ITERATIONS {
            return Err(refuse(&format!(
                "{trips} iterations, more than the {MAX_ITERATIONS} unrolled"
            )));
        }
        if body.args.len() != args.len() {
            return Err(refuse(
                "the body takes another number of values than the loop carries",
            ));
        }
        let mut carried = args;
        for i in start..end {
            carried[counter] = self.scalar_like(i as f64, &counter_ty)?;
            let mut env: Env = body
                .args
                .iter()
                .map(|a| a.id)
                .zip(carried.clone())
                .collect();
            let next = self.region(&body.ops, &mut env, dev)?;
            if next.len() != carried.len() {
                return Err(refuse(
                    "the body returns another number of values than it takes",
                ));
            }
            carried = next;
        }
        carried[counter] = self.scalar_like(end.max(start) as f64, &counter_ty)?;
        Ok(carried)
    }

    /// `stablehlo.dynamic_slice(x, i0, i1, ...) {slice_sizes}`: a Slice whose starts are the
    /// index scalars, clamped as StableHLO clamps them (to [0, dim - size]).
    pub(super) fn dynamic_slice(&mut self, op: &HOp, args: &[String]) -> Result<String, String> {
        let sizes = super::attrs::i64_array(
            op.attr("slice_sizes")
                .ok_or("attribute slice_sizes is missing")?,
        )?;
        let dims = op
            .operand_types
            .first()
            .and_then(|t| t.static_dims())
            .ok_or("the operand's shape is not static")?;
        if args.len() != dims.len() + 1 || sizes.len() != dims.len() {
            return Err(format!(
                "{} start indices and {} slice sizes for an operand of rank {}",
                args.len().saturating_sub(1),
                sizes.len(),
                dims.len()
            ));
        }
        if let Some(s) = sizes.iter().zip(&dims).find(|(&s, &d)| s < 0 || s > d) {
            return Err(format!("slice size {} on a dimension of {}", s.0, s.1));
        }
        let axes: Vec<i64> = (0..dims.len() as i64).collect();
        // Constant starts (an unrolled loop's counter, constant offsets): a static slice.
        let known: Option<Vec<i64>> = args[1..].iter().map(|a| self.const_i64(a)).collect();
        if let Some(idx) = known {
            let start: Vec<i64> = idx
                .iter()
                .zip(dims.iter().zip(&sizes))
                .map(|(&i, (&d, &s))| i.clamp(0, d - s))
                .collect();
            let end: Vec<i64> = start.iter().zip(&sizes).map(|(a, b)| a + b).collect();
            let (st, en, ax) = (self.i64s(&start), self.i64s(&end), self.i64s(&axes));
            return Ok(self.one("Slice", vec![args[0].clone(), st, en, ax], vec![]));
        }
        let mut starts = Vec::with_capacity(dims.len());
        for (k, (&d, &s)) in dims.iter().zip(&sizes).enumerate() {
            let idx = self.one(
                "Cast",
                vec![args[k + 1].clone()],
                vec![("to", AttrValue::Int(7))],
            );
            let (lo, hi) = (self.i64s(&[0]), self.i64s(&[d - s]));
            let clamped = self.one("Clip", vec![idx, lo, hi], vec![]);
            let shape = self.i64s(&[1]);
            starts.push(self.one("Reshape", vec![clamped, shape], vec![]));
        }
        let start = self.one("Concat", starts, vec![("axis", AttrValue::Int(0))]);
        let size = self.i64s(&sizes);
        let end = self.one("Add", vec![start.clone(), size], vec![]);
        let axes = self.i64s(&axes);
        Ok(self.one("Slice", vec![args[0].clone(), start, end, axes], vec![]))
    }

    /// The value of a constant integer scalar, where `name` is one.
    fn const_i64(&self, name: &str) -> Option<i64> {
        let v = self.consts.get(name)?.as_i64()?;
        (v.len() == 1).then(|| v[0])
    }
}
