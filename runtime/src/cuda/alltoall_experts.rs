//! All-to-all expert parallelism on the GPU as one step (see `GpuOp::AllToAllExperts`): this
//! rank's tokens' slots are grouped by destination rank and expert there, the counts are
//! exchanged over the group (an all-gather of a few integers, read on the host to size the
//! messages), and only the routed rows travel: one NCCL group of sends and receives each way.
//! Each (rank, expert) piece is its own message, so the receiver lays the rows out as it likes:
//! in blocks of one expert each (by source rank, then expert), which the grouped GEMMs take as
//! they lie, or, where it costs little, every expert's rows in one padded block of a common
//! size, for one strided-batched GEMM (`ReceiveLayout`); the expert's output bias goes on its
//! rows there, and the combine kernel sums each token's slots when the rows are back.

use super::experts::{
    alloc, combine_rows, gather_rows, padded_block, upload, Combine, ExpertsCall, RowOrder,
    SlotsByExpert,
};
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
        let mut expert_of = vec![None; t * k];
        for (s, of) in expert_of.iter_mut().enumerate() {
            let global = t0 * k + s;
            let ex = experts[global];
            if ex < 0 || ex as usize >= *num_experts {
                return Err(format!(
                    "expert id {ex} out of range for {num_experts} experts"
                ));
            }
            if weights[global] != 0.0 {
                *of = Some(ex as usize);
            }
        }
        let by_expert = SlotsByExpert::sort(&expert_of, *num_experts);
        let order = RowOrder::of(&by_expert.groups(&(0..t), k), t * k, k, t0);
        let counts: Vec<f32> = order.blocks.iter().map(|b| b.1 as f32).collect();
        let comms = self
            .comms
            .ok_or("an all-to-all step needs NCCL (a multi-rank run)")?;
        let comm = comms.group(group)?;
        // Every rank's counts, [source][destination][expert there].
        self.host_reads.set(self.host_reads.get() + 1);
        let all = self.in_comm(|| comms.gather(&self.stream, comm, g, &counts))?;
        // count(src, dest, le): rows rank src sends to rank dest's expert le.
        let count =
            |src: usize, dest: usize, le: usize| all[src * g * e_loc + dest * e_loc + le] as usize;
        let layout = ReceiveLayout::of(g, e_loc, |src, le| count(src, me, le));
        // This rank's rows for (dest, le) lie in order.perm's order: by destination, then expert.
        let mut sent_at = vec![0usize; g * e_loc + 1];
        for (j, b) in order.blocks.iter().enumerate() {
            sent_at[j + 1] = sent_at[j] + b.1;
        }
        let pieces: Vec<Piece> = (0..g)
            .flat_map(|peer| (0..e_loc).map(move |le| (peer, le)))
            .map(|(peer, le)| Piece {
                peer,
                send_at: sent_at[peer * e_loc + le],
                send_rows: count(me, peer, le),
                recv_at: layout.at[peer * e_loc + le],
                recv_rows: count(peer, me, le),
            })
            .collect();
        let kernels = self.expert_kernels(step.prefix, call.b_out.is_some())?;
        let ffn = self.ffn_operands(&call, dims, step.bf16, true)?;
        let stream = self.stream.clone();
        self.device(x).map_err(err)?;
        let dx = self.dev_ref(x)?;
        let d_perm = upload(&stream, &order.perm)?;
        let sent = gather_rows(&stream, &kernels, dx, &d_perm, order.perm.len(), h, ffn.mid)?;
        let row_bytes = h * ffn.mid.bytes() as usize;
        let received = if layout.padded {
            // Padding rows are computed and never sent back: zeros, not whatever memory held.
            let slots = (layout.rows * row_bytes).div_ceil(4).max(1);
            stream
                .alloc_zeros::<f32>(slots)
                .map_err(|e| e.to_string())?
        } else {
            alloc(&stream, layout.rows * h, ffn.mid)?
        };
        self.in_comm(|| self.ragged_exchange(comm, &sent, &received, &pieces, row_bytes))?;
        let done = self.ffn_blocks(&kernels, &received, &layout.blocks, &ffn)?;
        let back = alloc(&stream, order.perm.len() * h, ffn.mid)?;
        let returned: Vec<Piece> = pieces.iter().map(Piece::reversed).collect();
        self.in_comm(|| self.ragged_exchange(comm, &done, &back, &returned, row_bytes))?;
        let local_w = &weights[t0 * k..(t0 + t) * k];
        let d_w = super::graph::upload(&stream, local_w).map_err(|e| e.to_string())?;
        // The output bias went on the rows: the combine reads no expert ids (one unread word).
        let (d_pos, d_eid) = (
            upload(&stream, &order.pos)?,
            stream.alloc_zeros::<i32>(1).map_err(|e| e.to_string())?,
        );
        let comb = Combine {
            pos: &d_pos,
            weights: &d_w,
            eid: &d_eid,
            b_out: None,
            tokens: t,
            k,
            h,
            mid: ffn.mid,
        };
        let y = combine_rows(&stream, &kernels, &back, order.perm.len(), &comb)?;
        self.put_dev(call.out, y, vec![t, h]);
        Ok(())
    }

    /// Rows to and from the ranks of the group in one NCCL group: per piece, in order, its
    /// rows of `send` to its peer and its rows from the peer into `recv` (a pair of ranks
    /// matches its pieces in the order both issue them; empty ones are skipped on both sides,
    /// which agree on the counts).
    fn ragged_exchange(
        &self,
        comm: CommHandle,
        send: &CudaSlice<f32>,
        recv: &CudaSlice<f32>,
        pieces: &[Piece],
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
            for p in pieces {
                let bytes = |rows: usize| rows * row_bytes;
                let at = |rows: usize| (rows * row_bytes) as u64;
                // SAFETY: the pieces lie inside `send` and `recv` (laid out from the same
                // counts); both live until the stream has passed the group.
                unsafe {
                    if p.send_rows > 0 {
                        nccl.send(
                            sp + at(p.send_at),
                            bytes(p.send_rows),
                            NCCL_UINT8,
                            p.peer,
                            comm,
                            raw,
                        )?;
                    }
                    if p.recv_rows > 0 {
                        nccl.recv(
                            rp + at(p.recv_at),
                            bytes(p.recv_rows),
                            NCCL_UINT8,
                            p.peer,
                            comm,
                            raw,
                        )?;
                    }
                }
            }
            Ok(())
        };
        let issued = issue();
        // The group is closed whatever happened inside it.
        let closed = nccl.group_end();
        issued.and(closed)
    }
}

/// One message each way between this rank and `peer`: rows at `send_at` of the send buffer
/// go, rows arrive at `recv_at` of the receive buffer (offsets and counts in rows).
struct Piece {
    peer: usize,
    send_at: usize,
    send_rows: usize,
    recv_at: usize,
    recv_rows: usize,
}

impl Piece {
    /// The same message the other way (the rows going back where they came from).
    fn reversed(&self) -> Piece {
        Piece {
            peer: self.peer,
            send_at: self.recv_at,
            send_rows: self.recv_rows,
            recv_at: self.send_at,
            recv_rows: self.send_rows,
        }
    }
}

/// Where the rows this rank's experts receive lie: `at[src * e + le]` (in rows) for those
/// from rank src for local expert le, the FFN's blocks, and the rows in all. Either by source
/// rank, then expert (a block per (source, expert)), or, where each expert's rows from every
/// source can be padded to one block size at little cost (`padded_block`), by expert, every
/// expert a block of that size, so that a projection can be one strided-batched GEMM.
struct ReceiveLayout {
    at: Vec<usize>,
    blocks: Vec<(usize, usize)>,
    rows: usize,
    padded: bool,
}

impl ReceiveLayout {
    fn of(g: usize, e: usize, count: impl Fn(usize, usize) -> usize) -> ReceiveLayout {
        let totals: Vec<usize> = (0..e)
            .map(|le| (0..g).map(|src| count(src, le)).sum())
            .collect();
        let mut at = vec![0usize; g * e];
        if let Some(m) = padded_block(&totals) {
            for le in 0..e {
                let mut off = le * m;
                for src in 0..g {
                    at[src * e + le] = off;
                    off += count(src, le);
                }
            }
            return ReceiveLayout {
                at,
                blocks: (0..e).map(|le| (le, m)).collect(),
                rows: e * m,
                padded: true,
            };
        }
        let mut blocks = Vec::with_capacity(g * e);
        let mut off = 0;
        for src in 0..g {
            for le in 0..e {
                at[src * e + le] = off;
                off += count(src, le);
                blocks.push((le, count(src, le)));
            }
        }
        ReceiveLayout {
            at,
            blocks,
            rows: off,
            padded: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_rows_lie_by_source_or_in_equal_expert_blocks() {
        // 2 sources, 2 local experts: counts[src][le].
        let counts = [[3, 1], [2, 4]];
        let even = ReceiveLayout::of(2, 2, |s, e| counts[s][e] * 10);
        let padded = ReceiveLayout::of(2, 2, |s, e| counts[s][e] * 10 + 20);
        // Totals 50 and 50 rows per expert pad to 56 (12% more); 90 and 90 to 96.
        assert!(even.padded && padded.padded);
        assert_eq!(even.at, vec![0, 56, 30, 66]);
        assert_eq!(even.blocks, vec![(0, 56), (1, 56)]);
        let skewed = ReceiveLayout::of(2, 2, |s, e| [[30, 1], [20, 4]][s][e]);
        // Totals 50 and 5: padding would double the rows; by source, then expert.
        assert!(!skewed.padded);
        assert_eq!(skewed.at, vec![0, 30, 31, 51]);
        assert_eq!(skewed.blocks, vec![(0, 30), (1, 1), (0, 20), (1, 4)]);
        assert_eq!(skewed.rows, 55);
        assert_eq!(padded.at, vec![0, 96, 50, 126]);
        assert_eq!(padded.rows, 192);
    }
}
