//! ONNX Runtime's contrib ops (domain `com.microsoft`) whose outputs ppmoe infers; other
//! domains' ops take the file's value_info.

use super::{elementwise, out, Ctx, Outs};
use crate::graph::Dim;

pub(super) fn infer(c: &Ctx) -> Outs {
    match (c.node.domain.as_str(), c.node.op_type.as_str()) {
        ("com.microsoft", "MoE" | "QMoE") => Ok(vec![out(c.x()?.clone())]),
        // (output, mean, inv_std_var, input_skip_bias_sum)
        ("com.microsoft", "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization") => {
            let mut v = vec![
                out(c.x()?.clone()),
                c.stats()?,
                c.stats()?,
                out(c.x()?.clone()),
            ];
            v.truncate(c.node.outputs.len());
            Ok(v)
        }
        ("com.microsoft", "GroupQueryAttention") => group_query_attention(c),
        ("com.microsoft", "SimplifiedLayerNormalization") => elementwise::norm_with_stats(c),
        _ => Ok(c.unknown()),
    }
}

/// The attention's output: the query's [B, S] and num_heads heads (of a packed query's width
/// over its Q, K and V heads). The present caches are the lowering's.
fn group_query_attention(c: &Ctx) -> Outs {
    let mut ty = c.x()?.clone();
    let (n, kv) = (c.int_attr("num_heads", 0), c.int_attr("kv_num_heads", 0));
    let heads = if c.has(1) { n } else { n + 2 * kv };
    match ty.dims.last_mut() {
        Some(Dim::Known(w)) if n > 0 && kv > 0 => *w = *w / heads * n,
        _ => return Ok(c.unknown()),
    }
    let mut v = vec![out(ty)];
    v.resize(c.node.outputs.len(), None);
    Ok(v)
}
