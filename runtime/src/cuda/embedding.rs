//! The token embedding on the GPU (`GpuOp::Embedding`): a `Gather` on axis 0 of a float weight
//! table with integer indices. The indices come from the host (a model input), so they are
//! checked there, as ONNX defines them (negative counts from the end; out of range is an
//! error naming the op), narrowed to i32 and uploaded; a generated kernel copies the rows.

use super::experts::upload;
use super::Rank;
use cudarc::driver::PushKernelArg;

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
        let idx = self.host(ids).map_err(|e| e.to_string())?;
        let v = rows_in_table as i64;
        let picked: Vec<i32> = idx
            .to_i64()
            .iter()
            .map(|&k| {
                let k = if k < 0 { k + v } else { k };
                if (0..v).contains(&k) {
                    Ok(k as i32)
                } else {
                    Err(format!("index {k} is out of range for a table of {v} rows"))
                }
            })
            .collect::<Result<_, _>>()?;
        let func = self
            .functions
            .get(name)
            .cloned()
            .ok_or_else(|| format!("kernel {name} is not in the PTX"))?;
        self.device(table).map_err(|e| e.to_string())?;
        let stream = self.stream.clone();
        let d_ids = upload(&stream, &picked)?;
        let n = picked.len() * row;
        let y = stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(|e| e.to_string())?;
        let t = self.dev_ref(table)?;
        let (zero, one) = (0i64, 1i64);
        let (lt, li, ly, rows) = (
            t.len() as i64,
            picked.len().max(1) as i64,
            n.max(1) as i64,
            picked.len() as i64,
        );
        let mut l = stream.launch_builder(&func);
        l.arg(t).arg(t).arg(&zero).arg(&lt).arg(&one);
        l.arg(&d_ids).arg(&d_ids).arg(&zero).arg(&li).arg(&one);
        l.arg(&y).arg(&y).arg(&zero).arg(&ly).arg(&one);
        l.arg(&rows);
        let cfg = super::experts::launch_cfg(n);
        if n > 0 {
            // SAFETY: every index was checked against the table's rows above; the row width is
            // baked into the kernel; `y` holds indices x row floats.
            unsafe { l.launch(cfg) }.map_err(|e| e.to_string())?;
        }
        let mut out_shape = idx.shape.clone();
        out_shape.extend(&shape[1..]);
        self.put_dev(out, y, out_shape);
        Ok(())
    }
}
