//! All-to-all expert parallelism on the GPU as one step (see `GpuOp::AllToAllExperts`): this
//! rank's tokens' slots are grouped by destination rank and expert there, the counts are
//! exchanged over the group (an all-gather of a few integers, read on the host to size the
//! messages), and only the routed rows travel: one NCCL group of sends and receives each way.
//! The received rows are already in blocks of one expert each (by source rank, then expert),
//! which the grouped GEMMs take as they lie; the expert's output bias goes on its rows there,
//! and the combine kernel sums each token's slots when the rows are back.

use super::experts::{alloc, combine_rows, gather_rows, upload, Combine, ExpertsCall, RowOrder};
use super::nccl::{CommHandle, NCCL_UINT8};
use super::Rank;
use crate::error::RuntimeError;
use crate::program::{Instruction, Op};
use cudarc::driver::CudaSlice;

/// The instructions of one all-to-all step, from the GPU plan.
pub(super) struct AllToAllStep<'p> {
    pub prefix: &'p str,
    pub bf16: bool,
    pub dispatch: usize,
    pub exchange: usize,
    pub ffn: usize,
    pub slices: &'p [usize],
}

fn operand(ins: &Instruction, k: usize) -> Result<usize, String> {
    ins.inputs
        .get(k)
        .copied()
        .flatten()
        .ok_or_else(|| format!("operand {k} of {} is missing", ins.op.name()))
}

impl Rank<'_> {
    /// The step, run at the combine `i`.
    pub(super) fn alltoall_experts(
        &mut self,
        i: usize,
        step: &AllToAllStep,
    ) -> Result<(), RuntimeError> {
        let program = self.program;
        self.alltoall_experts_inner(i, step)
            .map_err(|reason| super::experts::fail_at(program, i, reason))
    }

    fn alltoall_experts_inner(&mut self, i: usize, step: &AllToAllStep) -> Result<(), String> {
        let program = self.program;
        let ins = |j: usize| &program.instructions[j];
        let (d, a1, f, c) = (
            ins(step.dispatch),
            ins(step.exchange),
            ins(step.ffn),
            ins(i),
        );
        let (
            Op::MoeDispatch { num_experts, .. },
            Op::AllToAll { group, .. },
            Op::MoeExpertFfn { layout, .. },
        ) = (&d.op, &a1.op, &f.op)
        else {
            return Err(
                "the step's instructions are not a dispatch, an all_to_all and an expert_ffn"
                    .into(),
            );
        };
        // The tokens, weights and ids: whole, with this rank's piece taken here (fused token
        // slices), or the slices themselves.
        let (x, w, ids, piece) = match step.slices {
            &[sx, sw, si] => {
                let Op::TokenSlice { index, parts, .. } = ins(sx).op else {
                    return Err(format!("instruction {sx} is not a token slice"));
                };
                (
                    operand(ins(sx), 0)?,
                    operand(ins(sw), 0)?,
                    operand(ins(si), 0)?,
                    Some((index, parts)),
                )
            }
            _ => (operand(d, 0)?, operand(c, 1)?, operand(d, 1)?, None),
        };
        let call = ExpertsCall {
            x,
            weights: w,
            ids,
            w_in: operand(f, 2)?,
            w_out: operand(f, 3)?,
            b_in: operand(f, 4).ok(),
            b_out: operand(f, 5).ok(),
            layout: *layout,
            first_local: None,
            out: c.outputs[0],
        };
        let (xs, dims) = self.expert_dims(x, call.w_in, call.w_out, *layout)?;
        let (t_all, h, e_loc) = (xs[0], xs[1], dims.experts);
        let (t0, t) = match piece {
            Some((index, parts)) if parts > 0 && t_all % parts == 0 && index < parts => {
                (index * (t_all / parts), t_all / parts)
            }
            Some((index, parts)) => {
                return Err(format!(
                    "cannot take piece {index} of {parts} of {t_all} tokens"
                ))
            }
            None => (0, t_all),
        };
        let g = group.len();
        let me = group
            .iter()
            .position(|&r| r == program.rank)
            .ok_or_else(|| format!("rank {} is not in the group {group:?}", program.rank))?;
        if *num_experts != e_loc * g {
            return Err(format!(
                "{num_experts} experts over {g} ranks, but this rank's stacks hold {e_loc}"
            ));
        }
        let err = |e: RuntimeError| e.to_string();
        let weights = self.host(w).map_err(err)?.to_f32();
        let experts = self.host(ids).map_err(err)?.to_i64();
        let k = weights.len() / t_all.max(1);
        // This rank's slots grouped by global expert: by destination rank, then its expert.
        let mut by_expert: Vec<Vec<usize>> = vec![Vec::new(); *num_experts];
        for s in 0..t * k {
            let global = t0 * k + s;
            let ex = experts[global];
            if ex < 0 || ex as usize >= *num_experts {
                return Err(format!(
                    "expert id {ex} out of range for {num_experts} experts"
                ));
            }
            if weights[global] != 0.0 {
                by_expert[ex as usize].push(s);
            }
        }
        let order = RowOrder::of(&by_expert, t * k, k, t0);
        let counts: Vec<f32> = order.blocks.iter().map(|b| b.1 as f32).collect();
        let comms = self
            .comms
            .ok_or("an all-to-all step needs NCCL (a multi-rank run)")?;
        let comm = comms.group(group)?;
        // Every rank's counts, [source][destination][expert there].
        self.host_reads.set(self.host_reads.get() + 1);
        let all = self.in_comm(|| comms.gather(&self.stream, comm, g, &counts))?;
        let recv_blocks: Vec<(usize, usize)> = (0..g)
            .flat_map(|src| (0..e_loc).map(move |le| (src, le)))
            .map(|(src, le)| (le, all[src * g * e_loc + me * e_loc + le] as usize))
            .collect();
        let per_rank = |blocks: &[(usize, usize)]| -> Vec<usize> {
            blocks
                .chunks(e_loc)
                .map(|c| c.iter().map(|b| b.1).sum())
                .collect()
        };
        let (send_rows, recv_rows) = (per_rank(&order.blocks), per_rank(&recv_blocks));
        let kernels = self.expert_kernels(step.prefix, call.b_out.is_some())?;
        let ffn = self.ffn_operands(&call, dims, step.bf16, true)?;
        let stream = self.stream.clone();
        self.device(x).map_err(err)?;
        let dx = self.dev_ref(x)?;
        let d_perm = upload(&stream, &order.perm)?;
        let sent = gather_rows(&stream, &kernels, dx, &d_perm, order.perm.len(), h, ffn.mid)?;
        let row_bytes = h * ffn.mid.bytes() as usize;
        let received = alloc(&stream, recv_rows.iter().sum::<usize>() * h, ffn.mid)?;
        self.in_comm(|| {
            self.ragged_exchange(
                comm,
                (&sent, &send_rows),
                (&received, &recv_rows),
                row_bytes,
            )
        })?;
        let done = self.ffn_blocks(&kernels, &received, &recv_blocks, &ffn)?;
        let back = alloc(&stream, order.perm.len() * h, ffn.mid)?;
        self.in_comm(|| {
            self.ragged_exchange(comm, (&done, &recv_rows), (&back, &send_rows), row_bytes)
        })?;
        let local_w = &weights[t0 * k..(t0 + t) * k];
        let d_w = stream.clone_htod(local_w).map_err(|e| e.to_string())?;
        let (d_pos, d_eid) = (
            upload(&stream, &order.pos)?,
            upload(&stream, &vec![0; t * k])?,
        );
        let comb = Combine {
            pos: &d_pos,
            weights: &d_w,
            eid: &d_eid,
            b_out: None,
            tokens: t,
            k,
            h,
        };
        let y = combine_rows(&stream, &kernels, &back, order.perm.len(), &comb)?;
        self.put_dev(call.out, y, vec![t, h]);
        Ok(())
    }

    /// Rows to and from every rank of the group in one NCCL group: `send` holds rows for rank
    /// 0, then 1, ... (`rows` each), `recv` takes rows from each in the same order.
    fn ragged_exchange(
        &self,
        comm: CommHandle,
        (send, send_rows): (&CudaSlice<f32>, &[usize]),
        (recv, recv_rows): (&CudaSlice<f32>, &[usize]),
        row_bytes: usize,
    ) -> Result<(), String> {
        let comms = self.comms.ok_or("no NCCL")?;
        let nccl = comms.nccl;
        let raw = self.stream.cu_stream() as *mut std::ffi::c_void;
        let (sp, rp) = (
            super::dptr(send, &self.stream),
            super::dptr(recv, &self.stream),
        );
        nccl.group_start()?;
        let issue = || -> Result<(), String> {
            let (mut so, mut ro) = (0u64, 0u64);
            for (peer, (&s, &r)) in send_rows.iter().zip(recv_rows).enumerate() {
                let (sb, rb) = (s * row_bytes, r * row_bytes);
                // SAFETY: the offsets and sizes lie inside `send` and `recv`, which hold the
                // summed rows; both live until the stream has passed the group.
                unsafe {
                    if sb > 0 {
                        nccl.send(sp + so, sb, NCCL_UINT8, peer, comm, raw)?;
                    }
                    if rb > 0 {
                        nccl.recv(rp + ro, rb, NCCL_UINT8, peer, comm, raw)?;
                    }
                }
                so += sb as u64;
                ro += rb as u64;
            }
            Ok(())
        };
        let issued = issue();
        // The group is closed whatever happened inside it.
        let closed = nccl.group_end();
        issued.and(closed)
    }
}
