//! Tensor parallelism of the dense layers (Megatron style), by sharding propagation over a rank's
//! `core` program: a matmul reading replicated tokens with a weight of splittable columns takes
//! rank t's columns (its heads); the split is carried through the ops that allow it (reshape to
//! heads, transpose, RoPE's elementwise work, attention's batched matmuls over heads, SwiGLU);
//! the matmul that contracts the split axis takes rank t's rows of its weight and gives a
//! partial sum, and one all-reduce makes it whole before the residual add. Wherever an op cannot
//! take a split operand, the value is made whole first (all-gather, all-reduce): the result is
//! exact for any graph, and as parallel as its ops allow.
//!
//!   before: %q = mat_mul(%x, %wq[64,64]) ... %o = mat_mul(%a, %wo[64,64]); %h = add(%x, %o)
//!   after:  %q = mat_mul(%x, %wq[:, t*32:(t+1)*32]) ... (2 of 4 heads)
//!           %p = mat_mul(%a, %wo[t*32:(t+1)*32, :]); %o = "shard.all_reduce"(%p); %h = add(%x, %o)
//!
//! Grouped-query attention: where the KV heads divide by tp they are split with the query heads
//! (rank t holds the KV heads its query heads read); where they do not, they are made whole and
//! each rank slices the heads it needs (replicated KV).

mod rules;

use super::shard_moe::RankProgram;
use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Op};
use ppmoe_runtime::{DType, Tensor};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum S {
    Rep,
    Split(usize),
    Partial,
}

struct Tp<'a> {
    rp: &'a mut RankProgram,
    tp: usize,
    t: usize,
    /// Full (unsplit) shapes of every buffer, as the one-rank program had them.
    full: Vec<Option<Vec<usize>>>,
    state: Vec<S>,
    out: Vec<Instruction>,
    whole: HashMap<BufferId, BufferId>,
    sliced: HashMap<(BufferId, usize), BufferId>,
    group: Vec<usize>,
    /// Buffers no split may reach (the router's logits: routing must be replicated).
    keep_whole: HashSet<BufferId>,
    /// The weights cut into this rank's own pieces (their values differ between ranks).
    rank_pieces: HashSet<BufferId>,
    /// The half-precision type of each partial sum held in f32 (`set_partial`).
    partial_dtype: HashMap<BufferId, DType>,
}

fn shape_of(b: &Buffer) -> Option<Vec<usize>> {
    b.shape.iter().copied().collect()
}

/// The output axis a split of input axis `a` becomes under a reshape, if one does.
fn map_reshape(inp: &[usize], out: &[usize], a: usize, tp: usize) -> Option<usize> {
    let pre: usize = inp[..a].iter().product();
    let mut acc = 1usize;
    for (j, &d) in out.iter().enumerate() {
        if acc == pre && d != 1 {
            let ok = d % tp == 0
                && inp[a].is_multiple_of(tp)
                && (inp[a].is_multiple_of(d) || d % inp[a] == 0);
            return ok.then_some(j);
        }
        acc *= d;
        if acc > pre {
            return None;
        }
    }
    None
}

impl Tp<'_> {
    fn p(&mut self) -> &mut ppmoe_runtime::program::Program {
        &mut self.rp.program
    }

    fn new_buf(
        &mut self,
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        kind: BufferKind,
    ) -> BufferId {
        let p = self.p();
        p.buffers.push(Buffer {
            name,
            dtype,
            shape: shape.into_iter().map(Some).collect(),
            kind,
        });
        self.full.push(None);
        self.state.push(S::Rep);
        self.rp.program.buffers.len() - 1
    }

    fn emit(
        &mut self,
        op: Op,
        inputs: Vec<Option<BufferId>>,
        outputs: Vec<BufferId>,
        origin: &str,
    ) {
        self.out.push(Instruction {
            op,
            inputs,
            outputs,
            origin: origin.to_string(),
        });
    }

    fn is_weight(&self, b: BufferId) -> bool {
        self.rp.program.buffers[b].kind == BufferKind::Weight
    }

    fn weight(&self, b: BufferId) -> Option<&Tensor> {
        let name = &self.rp.program.buffers[b].name;
        self.rp
            .weights
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    /// A new temporary buffer `name` [`shape`] of `dtype`, made from `input` by `op`.
    fn derive(
        &mut self,
        op: Op,
        input: BufferId,
        (name, dtype, shape): (String, DType, Vec<usize>),
        origin: &str,
    ) -> BufferId {
        let out = self.new_buf(name, dtype, shape, BufferKind::Temp);
        self.emit(op, vec![Some(input)], vec![out], origin);
        out
    }

    /// The whole value of `b` (all-gather a split, all-reduce a partial).
    fn whole(&mut self, b: BufferId, origin: &str) -> BufferId {
        match self.state[b] {
            S::Rep => b,
            s => {
                if let Some(&w) = self.whole.get(&b) {
                    return w;
                }
                let full = self.full[b].clone().unwrap_or_default();
                // A partial held in f32 is made whole in the type the model gave it.
                let held = self.rp.program.buffers[b].dtype;
                let (name, dtype) = (
                    format!("{}.whole", self.rp.program.buffers[b].name),
                    self.partial_dtype.get(&b).copied().unwrap_or(held),
                );
                let group = self.group.clone();
                let w = match s {
                    S::Split(a) => self
                        .gather_by_leading_axis(b, a, (&full, dtype), origin)
                        .unwrap_or_else(|| {
                            let op = Op::AllGather { group, axis: a };
                            self.derive(op, b, (name, dtype, full), origin)
                        }),
                    _ => self.derive(Op::AllReduce { group }, b, (name, dtype, full), origin),
                };
                self.whole.insert(b, w);
                w
            }
        }
    }

    /// The whole of `b`, split along `a` with rows before it (a tp LM head's logits, split by
    /// vocabulary), gathered as NCCL gathers: the pieces stacked along the leading axis, then
    /// viewed as [group, piece..], the group's axis moved beside `a` by a transpose, and merged
    /// with it by a reshape. The same values as an all-gather along `a`, which NCCL cannot do
    /// in place (the CUDA backend would rearrange it on the host); None where `a` is the
    /// leading axis in effect or a shape is unknown.
    fn gather_by_leading_axis(
        &mut self,
        b: BufferId,
        a: usize,
        (full, dtype): (&[usize], DType),
        origin: &str,
    ) -> Option<BufferId> {
        let g = self.group.len();
        let rows_before: usize = full.get(..a)?.iter().product();
        if a == 0 || rows_before == 1 || g < 2 || full.get(a)? % g != 0 {
            return None;
        }
        let mut piece = full.to_vec();
        piece[a] /= g;
        let name = self.rp.program.buffers[b].name.clone();
        let mut stacked_shape = piece.clone();
        stacked_shape[0] *= g;
        let gather = Op::AllGather {
            group: self.group.clone(),
            axis: 0,
        };
        let stacked = self.derive(
            gather,
            b,
            (format!("{name}.stacked"), dtype, stacked_shape),
            origin,
        );
        let by_rank_shape: Vec<usize> = std::iter::once(g).chain(piece.iter().copied()).collect();
        let view = Op::ReshapeTo {
            shape: by_rank_shape.clone(),
        };
        let by_rank = self.derive(
            view,
            stacked,
            (format!("{name}.by_rank"), dtype, by_rank_shape.clone()),
            origin,
        );
        // [g, p0, .., pn-1] -> [p0, .., pa-1, g, pa, ..]: rank r's columns follow rank r-1's.
        let perm: Vec<usize> = (1..=a).chain([0]).chain(a + 1..=piece.len()).collect();
        let moved_shape: Vec<usize> = perm.iter().map(|&i| by_rank_shape[i]).collect();
        let moved = self.derive(
            Op::Transpose { perm },
            by_rank,
            (format!("{name}.by_column"), dtype, moved_shape),
            origin,
        );
        let merge = Op::ReshapeTo {
            shape: full.to_vec(),
        };
        Some(self.derive(
            merge,
            moved,
            (format!("{name}.whole"), dtype, full.to_vec()),
            origin,
        ))
    }

    /// Marks `o` a partial sum. A half-precision one is held in f32 until its all-reduce,
    /// which rounds the whole sum once (`whole`), as the one-rank product rounds once: rounding
    /// each rank's part first would round twice.
    fn set_partial(&mut self, o: BufferId) {
        self.state[o] = S::Partial;
        let dtype = self.rp.program.buffers[o].dtype;
        if matches!(dtype, DType::BF16 | DType::F16) {
            self.partial_dtype.insert(o, dtype);
            self.rp.program.buffers[o].dtype = DType::F32;
        }
    }

    /// Rank t's piece along `axis` of a whole value: a sliced constant for a weight, a
    /// token_slice at run time otherwise.
    fn piece(&mut self, b: BufferId, axis: usize, origin: &str) -> Option<BufferId> {
        if let Some(&s) = self.sliced.get(&(b, axis)) {
            return Some(s);
        }
        // A piece is not cut again.
        if self.rank_pieces.contains(&b) {
            return None;
        }
        let full = shape_of(&self.rp.program.buffers[b])?;
        if full.get(axis).is_none_or(|d| d % self.tp != 0) {
            return None;
        }
        let mut local = full.clone();
        local[axis] /= self.tp;
        let (name, dtype) = (
            format!("{}.tp{}_{}", self.rp.program.buffers[b].name, self.t, axis),
            self.rp.program.buffers[b].dtype,
        );
        let id = if self.is_weight(b) {
            let w = self.weight(b)?.clone();
            let piece = ppmoe_runtime::kernels::execute(
                &Op::TokenSlice {
                    axis,
                    index: self.t,
                    parts: self.tp,
                },
                &[Some(&w)],
                1,
            )
            .ok()?
            .remove(0);
            let id = self.new_buf(name.clone(), dtype, local, BufferKind::Weight);
            self.rp.weights.push((name, piece));
            self.rank_pieces.insert(id);
            id
        } else {
            let slice = Op::TokenSlice {
                axis,
                index: self.t,
                parts: self.tp,
            };
            self.derive(slice, b, (name, dtype, local), origin)
        };
        self.full[id] = Some(full);
        self.sliced.insert((b, axis), id);
        Some(id)
    }

    /// Marks `o` split along `a`: its local shape loses a factor tp there.
    fn set_split(&mut self, o: BufferId, a: usize) {
        let full = self.full[o].clone().unwrap_or_default();
        let mut local = full;
        local[a] /= self.tp;
        self.rp.program.buffers[o].shape = local.into_iter().map(Some).collect();
        self.state[o] = S::Split(a);
    }

    /// Falls back: every operand whole, the op as it was.
    fn replicated(&mut self, ins: Instruction) {
        let inputs: Vec<Option<BufferId>> = ins
            .inputs
            .iter()
            .map(|i| i.map(|b| self.whole(b, &ins.origin)))
            .collect();
        self.out.push(Instruction { inputs, ..ins });
    }

    fn splittable(&self, b: BufferId, a: usize) -> bool {
        self.full[b]
            .as_ref()
            .is_some_and(|s| s.get(a).is_some_and(|d| d % self.tp == 0))
            && !self.keep_whole.contains(&b)
    }

    /// Rank t's form of `ins`: on pieces where its op's rule allows, else on whole operands.
    fn step(&mut self, ins: Instruction) {
        match self.split_rule(&ins) {
            Some(split) => self.out.push(split),
            None => self.replicated(ins),
        }
    }
}

/// The dense layers of `rp` split over tp ranks, for rank t, and the weights cut into rank
/// t's own pieces (whose values differ between ranks; later passes append buffers, so the ids
/// hold through the `sharded` stage). MoE ops are left whole (their operands made
/// replicated); the MoE passes distribute them.
/// `pieces`: the weights already cut into rank t's pieces (by upstream's partitioning of the
/// regions it takes), which stay as they are.
pub fn dense_tp(
    rp: &RankProgram,
    tp: usize,
    t: usize,
    pieces: HashSet<BufferId>,
) -> (RankProgram, HashSet<BufferId>) {
    let mut out = rp.clone();
    if tp == 1 {
        return (out, pieces);
    }
    let n = out.program.buffers.len();
    let full: Vec<Option<Vec<usize>>> = out.program.buffers.iter().map(shape_of).collect();
    let mut keep_whole = HashSet::new();
    for ins in &out.program.instructions {
        if let Op::MoeRoute { .. } = ins.op {
            keep_whole.extend(ins.inputs.iter().flatten().copied());
        }
    }
    let instructions = std::mem::take(&mut out.program.instructions);
    let outputs = out.program.outputs.clone();
    let mut tpx = Tp {
        rp: &mut out,
        tp,
        t,
        full,
        state: vec![S::Rep; n],
        out: Vec::new(),
        whole: HashMap::new(),
        sliced: HashMap::new(),
        group: (0..tp).collect(),
        keep_whole,
        rank_pieces: pieces,
        partial_dtype: HashMap::new(),
    };
    for ins in instructions {
        tpx.step(ins);
    }
    // The model's outputs whole: the last gather or reduce writes the output buffer itself.
    for o in outputs {
        if tpx.state[o] != S::Rep {
            let w = tpx.whole(o, "outputs");
            let (old_name, full) = (
                tpx.rp.program.buffers[o].name.clone(),
                tpx.full[o].clone().unwrap_or_default(),
            );
            tpx.rp.program.buffers[o].name = format!("{old_name}.local");
            tpx.rp.program.buffers[o].kind = BufferKind::Temp;
            tpx.rp.program.buffers[w].name = old_name;
            tpx.rp.program.buffers[w].kind = BufferKind::Output;
            tpx.rp.program.buffers[w].shape = full.into_iter().map(Some).collect();
            let pos = tpx
                .rp
                .program
                .outputs
                .iter()
                .position(|&x| x == o)
                .unwrap_or(0);
            tpx.rp.program.outputs[pos] = w;
        }
    }
    let body = std::mem::take(&mut tpx.out);
    let rank_pieces = std::mem::take(&mut tpx.rank_pieces);
    out.program.instructions = body;
    (out, rank_pieces)
}
