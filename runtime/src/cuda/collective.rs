//! The communication instructions on the GPU, through NCCL: all-reduce and all-gather straight on
//! the device buffers, all-to-all as one NCCL group of sends and receives, and pipeline sends as a
//! small header (tag, microbatch, dtype, shape) followed by the data, so that a receiver knows
//! what comes and can tell an out-of-order message from the one it waits for.

use super::comm_time::event_on;
use super::nccl::{NCCL_FLOAT32, NCCL_INT64};
use super::pipeline_send::InFlight;
use super::{dptr as ptr, Rank};
use crate::error::RuntimeError;
use crate::kernels;
use crate::program::Op;
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

/// Header words: tag, microbatch, is-integer, rank, then up to 8 sizes.
const HEADER: usize = 12;
const MAX_RANK: usize = HEADER - 4;

/// `g` pieces of `piece` shape laid end to end in `flat` (as NCCL leaves them), joined along
/// `axis`.
fn join(flat: &[f32], piece: &[usize], g: usize, axis: usize) -> Result<Tensor, String> {
    let m = piece.iter().product::<usize>().max(1);
    let pieces: Vec<Tensor> = flat
        .chunks(m)
        .take(g)
        .map(|c| Tensor::f32(piece.to_vec(), c.to_vec()))
        .collect();
    kernels::execute(
        &Op::Concat { axis: axis as i64 },
        &pieces.iter().map(Some).collect::<Vec<_>>(),
        1,
    )
    .map(|mut v| v.remove(0))
}

impl Rank<'_> {
    pub(super) fn collective(&mut self, i: usize) -> Result<(), RuntimeError> {
        let ins = &self.program.instructions[i];
        let fail = |reason: String| RuntimeError::Execute {
            rank: self.program.rank,
            index: i,
            op: ins.op.name(),
            origin: ins.origin.clone(),
            reason,
        };
        let src = ins.inputs.first().copied().flatten();
        let dst = ins.outputs.first().copied();
        let group_len = match &ins.op {
            Op::AllReduce { group } | Op::AllGather { group, .. } | Op::AllToAll { group, .. } => {
                group.len()
            }
            _ => 2,
        };
        // One rank, or a group of one: every collective is the identity.
        let Some(comms) = self.comms.filter(|_| group_len > 1) else {
            if let (Some(s), Some(d)) = (src, dst) {
                let shape = self.shape(s);
                self.alias(s, d, shape)?;
            }
            return Ok(());
        };
        let (nccl, stream) = (comms.nccl, self.stream.clone());
        let raw = stream.cu_stream() as *mut std::ffi::c_void;
        let alloc = |n: usize| {
            stream
                .alloc_zeros::<f32>(n.max(1))
                .map_err(|e| fail(e.to_string()))
        };
        match &ins.op {
            Op::AllReduce { group } => {
                let (s, d) = (
                    src.ok_or_else(|| fail("no operand".into()))?,
                    dst.ok_or_else(|| fail("no result".into()))?,
                );
                let shape = self.shape(s);
                let n: usize = shape.iter().product();
                let y = alloc(n)?;
                let x = self.device(s)?;
                // SAFETY: both buffers hold n floats on this rank's stream.
                unsafe {
                    nccl.all_reduce_sum(
                        ptr(x, &stream),
                        ptr(&y, &stream),
                        n,
                        NCCL_FLOAT32,
                        comms.group(group).map_err(&fail)?,
                        raw,
                    )
                }
                .map_err(&fail)?;
                self.put_dev(d, y, shape);
            }
            Op::AllGather { group, axis } => {
                let (s, d) = (
                    src.ok_or_else(|| fail("no operand".into()))?,
                    dst.ok_or_else(|| fail("no result".into()))?,
                );
                let shape = self.shape(s);
                let n: usize = shape.iter().product();
                let g = group.len();
                let y = alloc(n * g)?;
                let x = self.device(s)?;
                // SAFETY: x holds n floats, y n × g.
                unsafe {
                    nccl.all_gather(
                        ptr(x, &stream),
                        ptr(&y, &stream),
                        n,
                        NCCL_FLOAT32,
                        comms.group(group).map_err(&fail)?,
                        raw,
                    )
                }
                .map_err(&fail)?;
                let mut out_shape = shape.clone();
                out_shape[*axis] *= g;
                if shape[..*axis].iter().product::<usize>() == 1 {
                    // NCCL stacks the pieces: along a leading axis that is the concatenation.
                    self.put_dev(d, y, out_shape);
                } else {
                    self.host_reads.set(self.host_reads.get() + 1);
                    let flat = stream.clone_dtoh(&y).map_err(|e| fail(e.to_string()))?;
                    self.put_host(d, join(&flat, &shape, g, *axis).map_err(&fail)?);
                }
            }
            Op::AllToAll {
                group,
                split_axis,
                concat_axis,
            } => {
                let (s, d) = (
                    src.ok_or_else(|| fail("no operand".into()))?,
                    dst.ok_or_else(|| fail("no result".into()))?,
                );
                let g = group.len();
                let x = self.host(s)?;
                // Piece j goes to the group's j-th member; what comes from member j is piece j of
                // the result.
                let pieces = kernels::execute(
                    &Op::Split {
                        axis: *split_axis as i64,
                    },
                    &[Some(&x)],
                    g,
                )
                .map_err(&fail)?;
                let piece_shape = pieces[0].shape.clone();
                let m: usize = piece_shape.iter().product();
                let packed: Vec<f32> = pieces.iter().flat_map(|p| p.to_f32()).collect();
                let send =
                    super::graph::upload(&stream, &packed).map_err(|e| fail(e.to_string()))?;
                let recv = alloc(m * g)?;
                let comm = comms.group(group).map_err(&fail)?;
                let (sp, rp) = (ptr(&send, &stream), ptr(&recv, &stream));
                nccl.group_start().map_err(&fail)?;
                for j in 0..g {
                    let off = (j * m * 4) as u64;
                    // SAFETY: piece j spans [j·m, (j+1)·m) of both buffers.
                    let r = unsafe {
                        nccl.send(sp + off, m, NCCL_FLOAT32, j, comm, raw)
                            .and_then(|_| nccl.recv(rp + off, m, NCCL_FLOAT32, j, comm, raw))
                    };
                    if let Err(e) = r {
                        let _ = nccl.group_end();
                        return Err(fail(e));
                    }
                }
                nccl.group_end().map_err(&fail)?;
                self.host_reads.set(self.host_reads.get() + 1);
                let flat = stream.clone_dtoh(&recv).map_err(|e| fail(e.to_string()))?;
                self.put_host(
                    d,
                    join(&flat, &piece_shape, g, *concat_axis)
                        .map_err(&fail)?
                        .with_dtype(x.dtype),
                );
            }
            Op::Send { peer, tag } => {
                let s = src.ok_or_else(|| fail("no operand".into()))?;
                let t_shape = self.shape(s);
                if t_shape.len() > MAX_RANK {
                    return Err(fail(format!(
                        "a rank-{} tensor: sends carry at most rank {MAX_RANK}",
                        t_shape.len()
                    )));
                }
                let is_float = self.program.buffers[s].dtype.is_float();
                let mut header = vec![
                    *tag as i64,
                    self.microbatch as i64,
                    i64::from(!is_float),
                    t_shape.len() as i64,
                ];
                header.extend(t_shape.iter().map(|&d| d as i64));
                header.resize(HEADER, 0);
                let h = super::graph::upload(&stream, &header).map_err(|e| fail(e.to_string()))?;
                let n: usize = t_shape.iter().product();
                // The data: the float buffer itself, integers uploaded as i64 words.
                let data = if is_float {
                    self.device(s)?;
                    let x = self.shared_dev(s);
                    InFlight::Floats(
                        x.ok_or_else(|| fail("the operand is not on the device".into()))?,
                    )
                } else {
                    let v = super::graph::upload(&stream, &self.host(s)?.to_i64())
                        .map_err(|e| fail(e.to_string()))?;
                    InFlight::Words(v)
                };
                // After the header and data are made (the second stream waits for them there).
                let on = self.send_stream().map_err(&fail)?;
                let on_raw = on.cu_stream() as *mut std::ffi::c_void;
                let aside = !Arc::ptr_eq(&on, &stream);
                let start = match aside && self.timing_comms() {
                    true => Some(event_on(&on).map_err(&fail)?),
                    false => None,
                };
                // SAFETY: the header buffer holds HEADER words, the data n floats or integers;
                // both stay alive until the send is done (freed in stream order after it, or
                // held until the forward joins the sends).
                let (p, kind) = match &data {
                    InFlight::Floats(x) => (ptr(&**x, &on), NCCL_FLOAT32),
                    InFlight::Words(v) => (ptr(v, &on), NCCL_INT64),
                };
                unsafe {
                    nccl.send(ptr(&h, &on), HEADER, NCCL_INT64, *peer, comms.world, on_raw)
                        .and_then(|_| nccl.send(p, n, kind, *peer, comms.world, on_raw))
                }
                .map_err(&fail)?;
                if let Some(start) = start {
                    let end = event_on(&on).map_err(&fail)?;
                    self.record_span(start, end, false);
                }
                self.hold_for_send(InFlight::Words(h));
                self.hold_for_send(data);
                if let Some(d) = dst {
                    self.put_host(d, Tensor::f32(vec![], vec![0.0]));
                }
            }
            Op::Recv { peer, tag } => {
                let d = dst.ok_or_else(|| fail("no result".into()))?;
                let h = stream
                    .alloc_zeros::<i64>(HEADER)
                    .map_err(|e| fail(e.to_string()))?;
                // SAFETY: the header buffer holds HEADER words.
                unsafe {
                    nccl.recv(
                        ptr(&h, &stream),
                        HEADER,
                        NCCL_INT64,
                        *peer,
                        comms.world,
                        raw,
                    )
                }
                .map_err(&fail)?;
                self.host_reads.set(self.host_reads.get() + 1);
                let header = stream.clone_dtoh(&h).map_err(|e| fail(e.to_string()))?;
                let (got_tag, got_mb, is_int, rank) =
                    (header[0], header[1], header[2] != 0, header[3] as usize);
                if got_tag != *tag as i64 || got_mb != self.microbatch as i64 || rank > MAX_RANK {
                    return Err(fail(format!(
                        "expected tag {tag} of microbatch {} from rank {peer}, got tag {got_tag} of microbatch {got_mb}: the ranks' programs disagree on the order of their messages",
                        self.microbatch
                    )));
                }
                let shape: Vec<usize> = header[4..4 + rank].iter().map(|&v| v as usize).collect();
                let n: usize = shape.iter().product();
                let dtype = self.program.buffers[d].dtype;
                if is_int {
                    let v = stream
                        .alloc_zeros::<i64>(n.max(1))
                        .map_err(|e| fail(e.to_string()))?;
                    // SAFETY: v holds n integers.
                    unsafe { nccl.recv(ptr(&v, &stream), n, NCCL_INT64, *peer, comms.world, raw) }
                        .map_err(&fail)?;
                    self.host_reads.set(self.host_reads.get() + 1);
                    let mut host = stream.clone_dtoh(&v).map_err(|e| fail(e.to_string()))?;
                    host.truncate(n);
                    let t = Tensor::i64(shape, host);
                    self.put_host(
                        d,
                        if dtype == DType::Bool {
                            kernels::execute(&Op::Cast { to: DType::Bool }, &[Some(&t)], 1)
                                .map_err(&fail)?
                                .remove(0)
                        } else {
                            t
                        },
                    );
                } else {
                    let y = alloc(n)?;
                    // SAFETY: y holds n floats.
                    unsafe {
                        nccl.recv(ptr(&y, &stream), n, NCCL_FLOAT32, *peer, comms.world, raw)
                    }
                    .map_err(&fail)?;
                    self.put_dev(d, y, shape);
                }
            }
            other => return Err(fail(format!("{} is not a communication op", other.name()))),
        }
        Ok(())
    }
}
