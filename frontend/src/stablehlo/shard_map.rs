//! `sdy.manual_computation` (shard_map) at its global meaning: the body once per device of the
//! manual axis, on that device's block of each sharded argument, the results joined along their
//! sharded dimension; and the all_to_all pair of an expert-parallel MoE layer (dispatch ->
//! expert FFN -> return) raised to "each source shard's slots through every expert", with the
//! whole expert weights and nothing moved.

use super::attrs;
use super::ir::HOp;
use super::lower::{Device, Env, Lowering};
use crate::graph::AttrValue;

impl Lowering {
    /// The global meaning of a shard_map: each device's part on its blocks, joined.
    pub(super) fn manual_computation(
        &mut self,
        op: &HOp,
        args: Vec<String>,
    ) -> Result<Vec<String>, String> {
        let sharding = |name: &str| {
            attrs::shardings(
                op.attr(name)
                    .ok_or_else(|| format!("attribute {name} is missing"))?,
            )
        };
        let axes = attrs::manual_axes(
            op.attr("manual_axes")
                .ok_or("attribute manual_axes is missing")?,
        )?;
        let (ins, outs) = (sharding("in_shardings")?, sharding("out_shardings")?);
        let [axis] = &axes[..] else {
            return Err(format!(
                "manual axes {axes:?}: one manual axis is supported"
            ));
        };
        let n = self.axis_size(&ins, axis)?;
        let body = op.regions.first().ok_or("no body")?;
        if ins.len() != args.len() || body.args.len() != args.len() {
            return Err("in_shardings, operands and body arguments differ in number".into());
        }
        let mut per_device: Vec<Vec<String>> = Vec::new();
        for d in 0..n {
            let mut dev = Device {
                index: d,
                count: n,
                axis: axis.clone(),
                ..Default::default()
            };
            let mut env = Env::new();
            for ((a, s), (global, local)) in body
                .args
                .iter()
                .zip(&ins)
                .zip(args.iter().zip(body.args.iter()))
            {
                let v = match split_dim(s, axis)? {
                    None => global.clone(),
                    Some(k) => self.device_block(global, &local.ty, k, &mut dev)?,
                };
                env.insert(a.id, v);
            }
            per_device.push(self.region(&body.ops, &mut env, &mut dev)?);
            if dev.exchange.is_some() {
                return Err("a dispatch all_to_all has no return all_to_all".into());
            }
        }
        self.join_devices(&outs, &per_device, axis)
    }

    /// The size of the mesh axis the shardings (their first's mesh) split over.
    fn axis_size(&self, ins: &[attrs::Sharding], axis: &str) -> Result<usize, String> {
        let mesh_name = ins.first().map(|s| s.mesh.clone()).unwrap_or_default();
        let mesh = self
            .meshes
            .get(&mesh_name)
            .ok_or_else(|| format!("mesh @{mesh_name} is not defined"))?;
        Ok(mesh
            .iter()
            .find(|(a, _)| a == axis)
            .map(|(_, s)| *s)
            .ok_or_else(|| format!("mesh @{mesh_name} has no axis {axis}"))? as usize)
    }

    /// Device `dev`'s block of `global` along dimension `k` (the body argument's type `local`
    /// gives its length), remembered as a block of the whole.
    fn device_block(
        &mut self,
        global: &str,
        local: &crate::graph::TensorType,
        k: usize,
        dev: &mut Device,
    ) -> Result<String, String> {
        let len = *local
            .static_dims()
            .ok_or("dynamic shape")?
            .get(k)
            .ok_or_else(|| {
                format!(
                    "a sharding of dimension {k} for a rank-{} argument",
                    local.dims.len()
                )
            })?;
        let d = dev.index as i64;
        let (st, en, ax) = (
            self.i64s(&[d * len]),
            self.i64s(&[(d + 1) * len]),
            self.i64s(&[k as i64]),
        );
        let block = self.one("Slice", vec![global.to_string(), st, en, ax], vec![]);
        dev.whole.insert(block.clone(), (global.to_string(), k));
        Ok(block)
    }

    /// The shard_map's results: each output the devices' parts joined along its split
    /// dimension, or device 0's where it is replicated.
    fn join_devices(
        &mut self,
        outs: &[attrs::Sharding],
        per_device: &[Vec<String>],
        axis: &str,
    ) -> Result<Vec<String>, String> {
        if per_device.iter().any(|o| o.len() != outs.len()) {
            return Err(format!(
                "the body returns a different number of values than out_shardings lists ({})",
                outs.len()
            ));
        }
        let mut results = Vec::new();
        for (j, s) in outs.iter().enumerate() {
            let parts: Vec<String> = per_device.iter().map(|o| o[j].clone()).collect();
            results.push(match split_dim(s, axis)? {
                None => parts[0].clone(),
                Some(k) => self.one("Concat", parts, vec![("axis", AttrValue::Int(k as i64))]),
            });
        }
        Ok(results)
    }

    /// all_to_all inside a manual computation: the dispatch (experts split, slots joined) opens
    /// per-expert work on the exchanged slots, raised to every expert on the source's own slots;
    /// the return (slots split, experts joined) closes it.
    pub(super) fn all_to_all(
        &mut self,
        op: &HOp,
        x: String,
        dev: &mut Device,
    ) -> Result<String, String> {
        if dev.count == 0 {
            return Err("an all_to_all outside a manual computation (shard_map) has no devices to exchange between".into());
        }
        let int = |n: &str| {
            op.attr(n)
                .ok_or_else(|| format!("attribute {n} is missing"))
                .and_then(attrs::integer)
        };
        let (split, concat, count) = (
            int("split_dimension")?,
            int("concat_dimension")?,
            int("split_count")? as usize,
        );
        if count != dev.count {
            return Err(format!(
                "split_count {count} differs from the manual axis's {} devices",
                dev.count
            ));
        }
        if let Some(c) = op.attr("channel_handle") {
            attrs::channel_handle(c)?;
        }
        // The exchange must span the manual axis's devices, in order.
        if let Some(g) = op.attr("replica_groups") {
            if g.starts_with("#stablehlo.replica_group_mesh_axes") {
                let (_, axes) = attrs::replica_mesh_axes(g)?;
                if axes != [dev.axis.clone()] {
                    return Err(format!("replica groups over mesh axes {axes:?}: ppmoe reads exchanges over the manual axis {}", dev.axis));
                }
            } else if let Some(groups) = op.dense("replica_groups") {
                let ids = groups.as_i64().unwrap_or_default();
                if ids != (0..dev.count as i64).collect::<Vec<_>>() {
                    return Err(format!("replica groups {ids:?} (shape {:?}): ppmoe reads one group of all {} devices in order", groups.dims, dev.count));
                }
            } else {
                return Err(format!(
                    "replica_groups {g}: expected mesh axes or a dense group"
                ));
            }
        }
        let in_dims = op.operand_dims(0)?;
        let out_dims = op
            .results
            .first()
            .and_then(|r| r.ty.static_dims())
            .ok_or("dynamic shape")?;
        match (split, concat, dev.exchange) {
            (0, 1, None) if in_dims.len() >= 2 && out_dims.len() >= 2 => {
                dev.exchange = Some([out_dims[0], out_dims[1], in_dims[0], in_dims[1]]);
                Ok(x)
            }
            (1, 0, Some([el, rows, _, _])) if in_dims.len() >= 2 && in_dims[0] == el && in_dims[1] == rows => {
                dev.exchange = None;
                Ok(x)
            }
            _ => Err(format!(
                "all_to_all split {split} concat {concat} (device {} of {}): ppmoe raises the dispatch pair of an expert-parallel MoE layer (split 0 / concat 1 over [experts, slots, ...], then back)",
                dev.index, dev.count
            )),
        }
    }
}

/// The one dimension sharding `s` splits over `axis`, if any.
fn split_dim(s: &attrs::Sharding, axis: &str) -> Result<Option<usize>, String> {
    let d: Vec<usize> = (0..s.dims.len())
        .filter(|&i| !s.dims[i].is_empty())
        .collect();
    match d[..] {
        [] => Ok(None),
        [k] if s.dims[k] == [axis.to_string()] => Ok(Some(k)),
        _ => Err(format!(
            "sharding {:?}: one dimension split over {axis} is supported",
            s.dims
        )),
    }
}
