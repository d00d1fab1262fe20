//! The ops that move elements by index or along an axis: reduce_window as a cumulative sum,
//! gather as row lookups, scatter at leading-dimension indices.

use super::attrs;
use super::ir::HOp;
use super::lower::Lowering;
use crate::dtype::DType;
use crate::graph::{AttrValue, TensorData};

impl Lowering {
    pub(super) fn cumsum(&mut self, op: &HOp, x: String) -> Result<String, String> {
        let win = attrs::i64_array(
            op.attr("window_dimensions")
                .ok_or("attribute window_dimensions is missing")?,
        )?;
        let dims = op
            .results
            .first()
            .and_then(|r| r.ty.static_dims())
            .ok_or("dynamic shape")?;
        let pad = op
            .dense("padding")
            .and_then(TensorData::as_i64)
            .unwrap_or_else(|| vec![0; 2 * win.len()]);
        let ones = |name: &str| {
            op.attr(name).map_or(Ok(true), |a| {
                attrs::i64_array(a).map(|v| v.iter().all(|&x| x == 1))
            })
        };
        let body_add = op
            .regions
            .first()
            .is_some_and(|r| r.ops.iter().any(|o| o.name == "stablehlo.add") && r.ops.len() == 2);
        if win.len() != dims.len() || pad.len() != 2 * dims.len() {
            return Err(format!(
                "a reduce_window with window {win:?} and padding {pad:?} for a rank-{} operand",
                dims.len()
            ));
        }
        let axes: Vec<usize> = (0..win.len()).filter(|&i| win[i] != 1).collect();
        let [a] = axes[..] else {
            return Err("a reduce_window that is not a cumulative sum along one dimension".into());
        };
        let n = dims[a];
        if !body_add
            || !ones("window_strides")?
            || !ones("base_dilations")?
            || !ones("window_dilations")?
            || win[a] != n
        {
            return Err("a reduce_window that is not a cumulative sum (window of the whole dimension, stride 1, add)".into());
        }
        let reverse = match (pad[2 * a], pad[2 * a + 1]) {
            (lo, 0) if lo == n - 1 => 0,
            (0, hi) if hi == n - 1 => 1,
            other => {
                return Err(format!(
                    "a reduce_window with padding {other:?}: not a cumulative sum"
                ))
            }
        };
        let axis = self.constant(TensorData::from_i64(vec![], &[a as i64]));
        Ok(self.one(
            "CumSum",
            vec![x, axis],
            vec![("reverse", AttrValue::Int(reverse))],
        ))
    }

    /// Row lookups (`x[ids]` along dimension 0): ONNX's Gather on axis 0.
    pub(super) fn gather(&mut self, op: &HOp, x: String, ids: String) -> Result<String, String> {
        let dn = op
            .attr("dimension_numbers")
            .ok_or("attribute dimension_numbers is missing")?;
        let sizes = attrs::i64_array(
            op.attr("slice_sizes")
                .ok_or("attribute slice_sizes is missing")?,
        )?;
        let xd = op.operand_dims(0)?;
        let idd = op.operand_dims(1)?;
        let rows_form = dn.contains("collapsed_slice_dims = [0]")
            && dn.contains("start_index_map = [0]")
            && sizes.first() == Some(&1)
            && sizes.get(1..) == xd.get(1..)
            && idd.last() == Some(&1);
        if !rows_form {
            return Err(format!("gather {dn} with slice sizes {sizes:?}: only row lookups along dimension 0 are supported"));
        }
        let squeezed = self.reshape(ids, &idd[..idd.len() - 1]);
        Ok(self.one(
            "Gather",
            vec![x, squeezed],
            vec![("axis", AttrValue::Int(0))],
        ))
    }

    /// Scatters of whole rows or blocks at leading-dimension indices (`x.at[ids].set/add/max`):
    /// ONNX's ScatterND, with the update computation as its reduction.
    pub(super) fn scatter(&mut self, op: &HOp, args: &[String]) -> Result<String, String> {
        let [x, ids, updates] = args else {
            return Err(format!(
                "{} operands: ppmoe reads scatters of one operand",
                args.len()
            ));
        };
        let dn = attrs::scatter_dims(
            op.attr("scatter_dimension_numbers")
                .ok_or("attribute scatter_dimension_numbers is missing")?,
        )?;
        let idd = op.operand_dims(1)?;
        let k = dn.to_operand.len();
        let leading: Vec<i64> = (0..k as i64).collect();
        let ivd = dn.index_vector_dim as usize;
        let form = !dn.batching
            && dn.to_operand == leading
            && dn.inserted_window == leading
            && (ivd == idd.len() || (ivd + 1 == idd.len() && idd[ivd] == k as i64));
        if !form {
            return Err(format!("scatter {:?}: only scatters at leading-dimension indices (to_operand = inserted = [0..k), the index vector last) are supported", dn));
        }
        let body = op.regions.first().ok_or("no update computation")?;
        let computing: Vec<&HOp> = body
            .ops
            .iter()
            .filter(|o| o.name != "stablehlo.return")
            .collect();
        let reduction = match computing[..] {
            [] if body
                .ops
                .first()
                .is_some_and(|r| r.operands.first().copied() == body.args.get(1).map(|a| a.id)) =>
            {
                "none"
            }
            [one] => match one.name.as_str() {
                "stablehlo.add" => "add",
                "stablehlo.multiply" => "mul",
                "stablehlo.maximum" => "max",
                "stablehlo.minimum" => "min",
                other => return Err(format!("a scatter combining by {other} is not supported")),
            },
            _ => {
                return Err(
                    "a scatter's update computation is not set, add, multiply, max or min".into(),
                )
            }
        };
        // ONNX wants the index vector last and int64.
        let mut ids = ids.clone();
        if ivd == idd.len() {
            let mut d = idd.clone();
            d.push(1);
            ids = self.reshape(ids, &d);
        }
        let ids = self.one(
            "Cast",
            vec![ids],
            vec![("to", AttrValue::Int(DType::I64.to_onnx() as i64))],
        );
        Ok(self.one(
            "ScatterND",
            vec![x.clone(), ids, updates.clone()],
            vec![("reduction", AttrValue::String(reduction.into()))],
        ))
    }
}
