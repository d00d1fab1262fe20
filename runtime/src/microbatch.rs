//! Microbatches: axis 0 of every model input cut into K equal pieces that stream through the
//! pipeline one after another, and the outputs joined back along axis 0. Both backends use it.

use crate::bundle::Manifest;
use crate::error::RuntimeError;
use crate::kernels;
use crate::program::Op;
use crate::tensor::Tensor;

/// The inputs of each microbatch, in order.
pub fn split_inputs(m: &Manifest, inputs: &[Tensor]) -> Result<Vec<Vec<Tensor>>, RuntimeError> {
    let k = m.microbatches.max(1);
    if k == 1 {
        return Ok(vec![inputs.to_vec()]);
    }
    let mut per_mb = vec![Vec::new(); k];
    for (t, port) in inputs.iter().zip(&m.inputs) {
        // Equal pieces only: the programs were compiled for 1/K of the batch.
        if t.shape.first().is_none_or(|&b| b % k != 0) {
            return Err(RuntimeError::Input {
                name: port.name.clone(),
                reason: format!(
                    "axis 0 of {:?} does not cut into {k} equal microbatches",
                    t.shape
                ),
            });
        }
        let cut = kernels::execute(&Op::Split { axis: 0 }, &[Some(t)], k).map_err(|reason| {
            RuntimeError::Input {
                name: port.name.clone(),
                reason: format!(
                    "cannot cut axis 0 of {:?} into {k} microbatches: {reason}",
                    t.shape
                ),
            }
        })?;
        for (mb, piece) in cut.into_iter().enumerate() {
            per_mb[mb].push(piece);
        }
    }
    Ok(per_mb)
}

/// The outputs of the microbatches (one list each), joined along axis 0.
pub fn join_outputs(outs: Vec<Vec<Tensor>>, backend: &str) -> Result<Vec<Tensor>, RuntimeError> {
    if outs.len() == 1 {
        return Ok(outs.into_iter().next().expect("one microbatch"));
    }
    let n = outs.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| {
            let parts: Vec<Option<&Tensor>> = outs.iter().map(|o| Some(&o[i])).collect();
            kernels::execute(&Op::Concat { axis: 0 }, &parts, 1)
                .map(|mut v| v.remove(0))
                .map_err(|reason| RuntimeError::Backend {
                    backend: backend.into(),
                    reason,
                })
        })
        .collect()
}
