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
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, PushKernelArg};
use std::sync::Arc;

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
        // A table held as bf16 bits (`bits_table`): its rows copied as bits by `{name}_bits`.
        let bits = self.bits_embeddings.get(&i) == Some(&table)
            && self.slots[table]
                .as_ref()
                .is_some_and(|s| s.dev16.is_some());
        let kernel = match bits {
            true => format!("{name}_{}", crate::program::EMBEDDING_BITS_SUFFIX),
            false => name.to_string(),
        };
        let func = self
            .functions
            .get(&kernel)
            .cloned()
            .ok_or_else(|| format!("kernel {kernel} is not in the PTX"))?;
        if !bits {
            self.device(table).map_err(|e| e.to_string())?;
        }
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
        let mut out_shape = idx_shape;
        out_shape.extend(&shape[1..]);
        let copy = RowCopy {
            ids: (d_ids, count),
            elements: n,
        };
        if bits {
            let t = self.slots[table].as_ref().and_then(|s| s.dev16.as_ref());
            let t = t.ok_or("the table's bits are not on the device")?;
            let y = stream
                .alloc_zeros::<u16>(n.max(1))
                .map_err(|e| e.to_string())?;
            copy.launch(&stream, &func, t, &y)?;
            self.put_bits(out, Arc::new(y), out_shape);
            return Ok(());
        }
        let y = stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(|e| e.to_string())?;
        copy.launch(&stream, &func, self.dev_ref(table)?, &y)?;
        self.put_dev(out, y, out_shape);
        Ok(())
    }
}

/// An embedding kernel's launch: `ids` (device pointer, count) rows of the table into
/// `elements` elements.
struct RowCopy {
    ids: (u64, usize),
    elements: usize,
}

impl RowCopy {
    fn launch<T: cudarc::driver::DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        func: &CudaFunction,
        table: &CudaSlice<T>,
        y: &CudaSlice<T>,
    ) -> Result<(), String> {
        let ((d_ids, count), n) = (self.ids, self.elements);
        let (zero, one) = (0i64, 1i64);
        let (lt, li, ly, rows) = (
            table.len() as i64,
            count.max(1) as i64,
            n.max(1) as i64,
            count as i64,
        );
        let mut l = stream.launch_builder(func);
        l.arg(table).arg(table).arg(&zero).arg(&lt).arg(&one);
        l.arg(&d_ids).arg(&d_ids).arg(&zero).arg(&li).arg(&one);
        l.arg(y).arg(y).arg(&zero).arg(&ly).arg(&one);
        l.arg(&rows);
        if n > 0 {
            // SAFETY: every index was checked against the table's rows (here or when fed); the
            // row width is baked into the kernel; `y` holds indices x row elements.
            unsafe { l.launch(super::experts::launch_cfg(n)) }.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The table of embedding step `i` where it is to be held as bf16 bits only: the step has its
/// bits kernel (`EMBEDDING_BITS_SUFFIX`), the table is a bf16 weight, and every reader of the
/// result takes bf16 bits (`Program::rounded_for_every_reader`). None otherwise.
pub(super) fn bits_table(
    p: &Program,
    functions: &std::collections::HashMap<String, CudaFunction>,
    i: usize,
) -> Option<usize> {
    let (GpuOp::Embedding { name }, ins) = (p.gpu.get(i)?, p.instructions.get(i)?) else {
        return None;
    };
    let table = ins.inputs.first().copied().flatten()?;
    let out = ins.outputs.first().copied()?;
    let suffix = crate::program::EMBEDDING_BITS_SUFFIX;
    let ok = functions.contains_key(&format!("{name}_{suffix}"))
        && p.buffers[table].dtype == crate::tensor::DType::BF16
        && p.buffers[table].kind == crate::program::BufferKind::Weight
        && p.rounded_for_every_reader(out);
    ok.then_some(table)
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
