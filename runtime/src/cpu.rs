//! The CPU backend: runs a rank's program instruction by instruction with the reference kernels.
//! It is the oracle the other backends are checked against.

use crate::bundle::Bundle;
use crate::error::RuntimeError;
use crate::kernels;
use crate::program::{BufferKind, Program};
use crate::tensor::Tensor;

/// Checks that `t` fits buffer `id` of `program` (dtype, rank, static sizes).
fn check_port(program: &Program, id: usize, t: &Tensor) -> Result<(), String> {
    let b = &program.buffers[id];
    if t.dtype != b.dtype {
        return Err(format!("expected dtype {}, got {}", b.dtype.name(), t.dtype.name()));
    }
    let fits = t.shape.len() == b.shape.len() && t.shape.iter().zip(&b.shape).all(|(&d, w)| w.is_none_or(|w| w == d));
    if !fits {
        let want: Vec<String> = b.shape.iter().map(|d| d.map_or("?".into(), |d| d.to_string())).collect();
        return Err(format!("expected shape [{}], got {:?}", want.join(", "), t.shape));
    }
    Ok(())
}

/// Runs one rank's program on `inputs` (in the program's input order).
pub fn run_program(program: &Program, weights: &std::collections::BTreeMap<String, Tensor>, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
    let mut slots: Vec<Option<Tensor>> = vec![None; program.buffers.len()];
    for (&id, t) in program.inputs.iter().zip(inputs) {
        check_port(program, id, t).map_err(|reason| RuntimeError::Input { name: program.buffers[id].name.clone(), reason })?;
        slots[id] = Some(t.clone());
    }
    for (id, b) in program.buffers.iter().enumerate() {
        if b.kind == BufferKind::Weight {
            let w = weights.get(&b.name).ok_or_else(|| RuntimeError::Bundle { path: program.weights_file.clone(), reason: format!("weight '{}' is missing", b.name) })?;
            slots[id] = Some(w.clone());
        }
    }
    // Free each temporary after its last reader, so that memory follows the live set.
    let mut last_use = vec![usize::MAX; program.buffers.len()];
    for (i, ins) in program.instructions.iter().enumerate() {
        for &id in ins.inputs.iter().flatten() {
            last_use[id] = i;
        }
    }
    for (i, ins) in program.instructions.iter().enumerate() {
        let fail = |reason: String| RuntimeError::Execute { rank: program.rank, index: i, op: ins.op.name(), origin: ins.origin.clone(), reason };
        let args: Vec<Option<&Tensor>> = ins
            .inputs
            .iter()
            .map(|o| o.map(|id| slots[id].as_ref().ok_or(id)).transpose())
            .collect::<Result<_, _>>()
            .map_err(|id| fail(format!("buffer '{}' is read before it is written", program.buffers[id].name)))?;
        let outs = kernels::execute(&ins.op, &args, ins.outputs.len()).map_err(fail)?;
        for (&id, t) in ins.outputs.iter().zip(outs) {
            slots[id] = Some(t.with_dtype(program.buffers[id].dtype));
        }
        for &id in ins.inputs.iter().flatten() {
            if last_use[id] == i && program.buffers[id].kind == BufferKind::Temp {
                slots[id] = None;
            }
        }
    }
    program
        .outputs
        .iter()
        .map(|&id| slots[id].take().ok_or_else(|| RuntimeError::Bundle { path: "program".into(), reason: format!("output '{}' is never written", program.buffers[id].name) }))
        .collect()
}

/// Runs a one-rank bundle (multi-rank programs arrive with the distribution passes).
pub fn run_bundle(bundle: &Bundle, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
    let m = &bundle.manifest;
    if m.programs.len() != 1 {
        return Err(RuntimeError::Backend { backend: "cpu".into(), reason: format!("{} ranks: only one-rank bundles run yet", m.programs.len()) });
    }
    if inputs.len() != m.inputs.len() {
        let names: Vec<&str> = m.inputs.iter().map(|p| p.name.as_str()).collect();
        return Err(RuntimeError::Input {
            name: names.get(inputs.len()).copied().unwrap_or("?").into(),
            reason: format!("the model takes {} inputs ({}), {} were given", m.inputs.len(), names.join(", "), inputs.len()),
        });
    }
    run_program(&m.programs[0], &bundle.weights[0], inputs)
}
