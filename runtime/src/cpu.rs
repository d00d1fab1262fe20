//! The CPU backend: runs a rank's program instruction by instruction with the reference kernels.
//! It is the oracle the other backends are checked against.

use crate::bundle::Bundle;
use crate::collectives::Hub;
use crate::error::RuntimeError;
use crate::kernels;
use crate::program::Op;
use crate::program::{BufferKind, Program};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Checks a model input against its buffer, as a typed error.
pub fn check_input(program: &Program, id: usize, t: &Tensor) -> Result<(), RuntimeError> {
    check_port(program, id, t).map_err(|reason| RuntimeError::Input {
        name: program.buffers[id].name.clone(),
        reason,
    })
}

/// Checks that `t` fits buffer `id` of `program` (dtype, rank, static sizes).
fn check_port(program: &Program, id: usize, t: &Tensor) -> Result<(), String> {
    let b = &program.buffers[id];
    if t.dtype != b.dtype {
        return Err(format!(
            "expected dtype {}, got {}",
            b.dtype.name(),
            t.dtype.name()
        ));
    }
    let fits = t.shape.len() == b.shape.len()
        && t.shape
            .iter()
            .zip(&b.shape)
            .all(|(&d, w)| w.is_none_or(|w| w == d));
    if !fits {
        let want: Vec<String> = b
            .shape
            .iter()
            .map(|d| d.map_or("?".into(), |d| d.to_string()))
            .collect();
        return Err(format!(
            "expected shape [{}], got {:?}",
            want.join(", "),
            t.shape
        ));
    }
    Ok(())
}

/// The rank's link to its peers: the hub and the sequence number of each group's next call.
pub struct Comm<'h> {
    pub hub: &'h Hub,
    pub rank: usize,
    seq: HashMap<Vec<usize>, u64>,
    /// The microbatch in flight: it keeps the sends and receives of different microbatches apart.
    pub microbatch: u64,
}

impl<'h> Comm<'h> {
    pub fn new(hub: &'h Hub, rank: usize) -> Self {
        Comm {
            hub,
            rank,
            seq: HashMap::new(),
            microbatch: 0,
        }
    }

    fn next(&mut self, group: &[usize]) -> u64 {
        let s = self.seq.entry(group.to_vec()).or_insert(0);
        *s += 1;
        *s
    }

    /// Runs a communication op; `out` is the type the result must have (for recv).
    fn run(&mut self, op: &Op, x: Option<&Tensor>) -> Result<Tensor, String> {
        let x = || x.cloned().ok_or_else(|| "missing operand".to_string());
        match op {
            Op::AllReduce { group } => {
                let seq = self.next(group);
                let all = self.hub.gather_all(group, seq, self.rank, x()?)?;
                let mut acc = all[0].to_f32();
                for t in &all[1..] {
                    if t.shape != all[0].shape {
                        return Err(format!(
                            "all_reduce of shapes {:?} and {:?}",
                            all[0].shape, t.shape
                        ));
                    }
                    acc.iter_mut().zip(t.to_f32()).for_each(|(a, b)| *a += b);
                }
                Ok(Tensor::f32(all[0].shape.clone(), acc).with_dtype(all[0].dtype))
            }
            Op::AllGather { group, axis } => {
                let seq = self.next(group);
                let all = self.hub.gather_all(group, seq, self.rank, x()?)?;
                let refs: Vec<&Tensor> = all.iter().collect();
                kernels::execute(
                    &Op::Concat { axis: *axis as i64 },
                    &refs.iter().map(|t| Some(*t)).collect::<Vec<_>>(),
                    1,
                )
                .map(|mut v| v.remove(0))
            }
            Op::AllToAll {
                group,
                split_axis,
                concat_axis,
            } => {
                let seq = self.next(group);
                let n = group.len();
                let pieces = kernels::execute(
                    &Op::Split {
                        axis: *split_axis as i64,
                    },
                    &[Some(&x()?)],
                    n,
                )?;
                let me = group
                    .iter()
                    .position(|&r| r == self.rank)
                    .ok_or("not in group")?;
                // Everyone puts in all its pieces (stacked in a list), then takes the i-th of each.
                let packed = kernels::execute(
                    &Op::Concat {
                        axis: *split_axis as i64,
                    },
                    &pieces.iter().map(Some).collect::<Vec<_>>(),
                    1,
                )?
                .remove(0);
                let all = self.hub.gather_all(group, seq, self.rank, packed)?;
                let mine: Vec<Tensor> = all
                    .iter()
                    .map(|t| {
                        kernels::execute(
                            &Op::Split {
                                axis: *split_axis as i64,
                            },
                            &[Some(t)],
                            n,
                        )
                        .map(|mut v| v.swap_remove(me))
                    })
                    .collect::<Result<_, _>>()?;
                kernels::execute(
                    &Op::Concat {
                        axis: *concat_axis as i64,
                    },
                    &mine.iter().map(Some).collect::<Vec<_>>(),
                    1,
                )
                .map(|mut v| v.remove(0))
            }
            Op::Send { peer, tag } => {
                self.hub
                    .send(self.rank, *peer, (self.microbatch << 32) | *tag, x()?)?;
                Ok(Tensor::f32(vec![], vec![0.0]))
            }
            Op::Recv { peer, tag } => {
                self.hub
                    .recv(*peer, self.rank, (self.microbatch << 32) | *tag)
            }
            other => Err(format!("{} is not a communication op", other.name())),
        }
    }
}

/// Runs one rank's program on `inputs` (in the program's input order), alone.
pub fn run_program(
    program: &Program,
    weights: &std::collections::BTreeMap<String, Tensor>,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, RuntimeError> {
    let hub = Hub::default();
    run_rank(program, weights, inputs, &mut Comm::new(&hub, program.rank))
}

/// Runs one rank's program, its collectives going through `comm`.
pub fn run_rank(
    program: &Program,
    weights: &std::collections::BTreeMap<String, Tensor>,
    inputs: &[Tensor],
    comm: &mut Comm,
) -> Result<Vec<Tensor>, RuntimeError> {
    let mut slots: Vec<Option<Tensor>> = vec![None; program.buffers.len()];
    for (&id, t) in program.inputs.iter().zip(inputs) {
        check_input(program, id, t)?;
        slots[id] = Some(t.clone());
    }
    for (id, b) in program.buffers.iter().enumerate() {
        if b.kind == BufferKind::Weight {
            let w = weights.get(&b.name).ok_or_else(|| RuntimeError::Bundle {
                path: program.weights_file.clone(),
                reason: format!("weight '{}' is missing", b.name),
            })?;
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
        let fail = |reason: String| RuntimeError::Execute {
            rank: program.rank,
            index: i,
            op: ins.op.name(),
            origin: ins.origin.clone(),
            reason,
        };
        let args: Vec<Option<&Tensor>> = ins
            .inputs
            .iter()
            .map(|o| o.map(|id| slots[id].as_ref().ok_or(id)).transpose())
            .collect::<Result<_, _>>()
            .map_err(|id| {
                fail(format!(
                    "buffer '{}' is read before it is written",
                    program.buffers[id].name
                ))
            })?;
        let outs = if ins.op.is_communication() {
            vec![comm
                .run(&ins.op, args.first().copied().flatten())
                .map_err(fail)?]
        } else {
            kernels::execute(&ins.op, &args, ins.outputs.len()).map_err(fail)?
        };
        // A send has no result to keep.
        for (&id, t) in ins.outputs.iter().zip(outs) {
            slots[id] = Some(t.stored_as(program.buffers[id].dtype));
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
        .map(|&id| {
            slots[id].take().ok_or_else(|| RuntimeError::Bundle {
                path: "program".into(),
                reason: format!("output '{}' is never written", program.buffers[id].name),
            })
        })
        .collect()
}

/// Runs a bundle: one thread per rank, collectives in process. Returns the outputs of the
/// lowest rank that has them (every rank of the last pipeline stage computes them).
pub fn run_bundle(bundle: &Bundle, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
    let m = &bundle.manifest;
    if inputs.len() != m.inputs.len() {
        let names: Vec<&str> = m.inputs.iter().map(|p| p.name.as_str()).collect();
        return Err(RuntimeError::Input {
            name: names.get(inputs.len()).copied().unwrap_or("?").into(),
            reason: format!(
                "the model takes {} inputs ({}), {} were given",
                m.inputs.len(),
                names.join(", "),
                inputs.len()
            ),
        });
    }
    if m.programs.len() == 1 && m.microbatches <= 1 {
        return run_program(&m.programs[0], &bundle.weights[0], inputs);
    }
    let pieces = crate::microbatch::split_inputs(m, inputs)?;
    let hub = Hub::default();
    let results: Vec<Result<Vec<Tensor>, RuntimeError>> = std::thread::scope(|s| {
        let handles: Vec<_> = m
            .programs
            .iter()
            .zip(&bundle.weights)
            .map(|(p, w)| {
                let hub = &hub;
                let pieces = &pieces;
                s.spawn(move || {
                    // However the thread ends (a panic included), its peers learn it at once.
                    let _exit = RankExit { hub, rank: p.rank };
                    let mut comm = Comm::new(hub, p.rank);
                    let mut outs: Vec<Vec<Tensor>> = Vec::new();
                    for (mb, piece) in pieces.iter().enumerate() {
                        comm.microbatch = mb as u64;
                        // Ranks that take no model input (later pipeline stages) get none.
                        let mine: &[Tensor] = if p.inputs.is_empty() { &[] } else { piece };
                        match run_rank(p, w, mine, &mut comm) {
                            Ok(o) => outs.push(o),
                            Err(e) => {
                                hub.fail();
                                return Err(e);
                            }
                        }
                    }
                    crate::microbatch::join_outputs(outs, "cpu")
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&m.programs)
            .map(|(h, p)| {
                h.join().unwrap_or_else(|payload| {
                    let what = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(RuntimeError::Backend {
                        backend: "cpu".into(),
                        reason: format!("rank {}'s thread panicked: {what}", p.rank),
                    })
                })
            })
            .collect()
    });
    // The first failure is the one to report: the others only say a peer failed.
    if let Some(i) = results
        .iter()
        .position(|r| matches!(r, Err(e) if !e.to_string().contains("a peer rank failed")))
    {
        if let Some(Err(e)) = results.into_iter().nth(i) {
            return Err(e);
        }
        unreachable!("position found an error there");
    }
    let mut outputs = None;
    for (p, r) in m.programs.iter().zip(results) {
        let r = r?;
        if outputs.is_none() && !p.outputs.is_empty() {
            outputs = Some(r);
        }
    }
    outputs.ok_or_else(|| RuntimeError::Bundle {
        path: bundle.dir.display().to_string(),
        reason: "no rank produces the model's outputs".into(),
    })
}

/// Tells the hub that a rank's thread has ended; a panic marks the run failed first.
struct RankExit<'a> {
    hub: &'a Hub,
    rank: usize,
}

impl Drop for RankExit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.hub.fail();
        }
        self.hub.exit(self.rank);
    }
}
