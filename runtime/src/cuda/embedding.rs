//! The token embedding on the GPU (`GpuOp::Embedding`): a `Gather` on axis 0 of a float weight
//! table with integer indices. The indices are checked as ONNX defines them (negative counts
//! from the end; out of range is an error naming the op), narrowed to i32 and put on the
//! device, where a generated kernel copies the rows. A device feed (`ppmoe bench`, a CUDA
//! graph) does that once, before its forwards (`fed_ids`); otherwise the step does it from the
//! host's values.

use super::experts::upload;
use super::{dptr, Rank};
use crate::error::RuntimeError;
use crate::program::{GpuOp, Program};
use crate::tensor::Tensor;
use cudarc::driver::PushKernelArg;

/// `idx` as rows of a table of `rows` rows: negative ones counted from the end, each checked.
fn picked_rows(idx: &Tensor, rows: usize) -> Result<Vec<i32>, String> {
    let v = rows as i64;
    idx.to_i64()
        .iter()
        .map(|&k| {
            let k = if k < 0 { k + v } else { k };
            if (0..v).contains(&k) && k <= i32::MAX as i64 {
                Ok(k as i32)
            } else {
                Err(format!("index {k} is out of range for a table of {v} rows"))
            }
        })
        .collect()
}

/// Input `id`'s values `t` as the rows every embedding of `p` that reads it picks (checked
/// against each table); None where no embedding reads it or a table's rows are not known.
pub(super) fn fed_ids(
    p: &Program,
    id: usize,
    t: &Tensor,
) -> Result<Option<Vec<i32>>, RuntimeError> {
    let mut picked = None;
    for (i, (ins, how)) in p.instructions.iter().zip(&p.gpu).enumerate() {
        let (GpuOp::Embedding { .. }, Some(Some(table)), Some(Some(ids))) =
            (how, ins.inputs.first(), ins.inputs.get(1))
        else {
            continue;
        };
        if *ids != id {
            continue;
        }
        let Some(Some(rows)) = p.buffers[*table].shape.first().copied() else {
            return Ok(None);
        };
        let rows = picked_rows(t, rows).map_err(|reason| RuntimeError::Execute {
            rank: p.rank,
            index: i,
            op: ins.op.name(),
            origin: ins.origin.clone(),
            reason: format!("input '{}': {reason}", p.buffers[id].name),
        })?;
        picked = Some(rows);
    }
    Ok(picked)
}

impl Rank<'_> {
    pub(super) fn embedding(&mut self, i: usize, name: &str) -> Result<(), String> {
        let ins = &self.program.instructions[i];
        let operand = |k: usize| {
            ins.inputs
                .get(k)
                .copied()
                .flatten()
                .ok_or_else(|| format!("operand {k} is missing"))
        };
        let (table, ids) = (operand(0)?, operand(1)?);
        let out = *ins.outputs.first().ok_or("no result")?;
        let shape = self.shape(table);
        let (rows_in_table, row): (usize, usize) = match shape.split_first() {
            Some((&v, rest)) if !rest.is_empty() => (v, rest.iter().product()),
            _ => {
                return Err(format!(
                    "the table's shape {shape:?} has no rows to look up"
                ))
            }
        };
        let func = self
            .functions
            .get(name)
            .cloned()
            .ok_or_else(|| format!("kernel {name} is not in the PTX"))?;
        self.device(table).map_err(|e| e.to_string())?;
        let stream = self.stream.clone();
        // The ids on the device: the feed's (checked then), else the host's, checked here.
        let fed = self.slots[ids]
            .as_ref()
            .and_then(|s| s.ids.as_ref())
            .map(|d| (dptr(d, &stream), d.len(), self.shape(ids)));
        let (_uploaded, d_ids, count, idx_shape) = match fed {
            Some((p, n, idx_shape)) => (None, p, n, idx_shape),
            None => {
                let idx = self.host(ids).map_err(|e| e.to_string())?;
                let picked = picked_rows(&idx, rows_in_table)?;
                let d = upload(&stream, &picked)?;
                let p = dptr(&d, &stream);
                (Some(d), p, picked.len(), idx.shape.clone())
            }
        };
        let n = count * row;
        let y = stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(|e| e.to_string())?;
        let t = self.dev_ref(table)?;
        let (zero, one) = (0i64, 1i64);
        let (lt, li, ly, rows) = (
            t.len() as i64,
            count.max(1) as i64,
            n.max(1) as i64,
            count as i64,
        );
        let mut l = stream.launch_builder(&func);
        l.arg(t).arg(t).arg(&zero).arg(&lt).arg(&one);
        l.arg(&d_ids).arg(&d_ids).arg(&zero).arg(&li).arg(&one);
        l.arg(&y).arg(&y).arg(&zero).arg(&ly).arg(&one);
        l.arg(&rows);
        let cfg = super::experts::launch_cfg(n);
        if n > 0 {
            // SAFETY: every index was checked against the table's rows (here or when fed); the
            // row width is baked into the kernel; `y` holds indices x row floats.
            unsafe { l.launch(cfg) }.map_err(|e| e.to_string())?;
        }
        let mut out_shape = idx_shape;
        out_shape.extend(&shape[1..]);
        self.put_dev(out, y, out_shape);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::picked_rows;
    use crate::tensor::Tensor;

    #[test]
    fn ids_count_negative_ones_from_the_end_and_refuse_the_rest() {
        let t = Tensor::i64(vec![4], vec![0, 3, -1, -4]);
        assert_eq!(picked_rows(&t, 4).unwrap(), vec![0, 3, 3, 0]);
        let bad = picked_rows(&Tensor::i64(vec![1], vec![4]), 4).unwrap_err();
        assert!(
            bad.contains("index 4 is out of range for a table of 4 rows"),
            "{bad}"
        );
        assert!(picked_rows(&Tensor::i64(vec![1], vec![-5]), 4).is_err());
    }
}
