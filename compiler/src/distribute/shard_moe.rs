//! The `sharded` stage's MoE part: one `moe.experts` (as a program of its own: its operands,
//! its result, the instruction over them; `passes::shard`), written out for tensor-parallel
//! rank t of tp in the all-to-all form (the DeepSpeed-MoE/GShard baseline).
//!
//!   before: %y = "moe.experts"(%x, %w, %ids, %w_in, %w_out)                  (all E experts)
//!   after:  %xs = core.token_slice(%x) ... %b = "moe.dispatch"(%xs, %ids_s)      [E, C, H]
//!           %r = "shard.all_to_all"(%b) {split_axis = 0, concat_axis = 1}       [E/tp, tp*C, H]
//!           %o = "moe.expert_ffn"(rows of %r, offsets, %w_in_local, %w_out_local)
//!           %c = "shard.all_to_all"(%o) {split_axis = 1, concat_axis = 0}       [E, C, H]
//!           %ys = "moe.combine"(%c, %w_s, %ids_s); %y = "shard.all_gather"(%ys)
//!
//! Experts are placed in contiguous blocks of E/tp: rank t holds [t*E/tp, (t+1)*E/tp), and its
//! weight file holds only that block. Dense layers are replicated over the group. Collective
//! groups hold tp indices here; the grid assigns ranks when the programs are laid out.

use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Op, Program};
use ppmoe_runtime::{DType, Tensor};
use std::collections::HashMap;

/// One rank's program with its weights.
#[derive(Clone)]
pub struct RankProgram {
    pub program: Program,
    pub weights: Vec<(String, Tensor)>,
}

/// Rows [lo, hi) of axis 0 of an [E, ...] weight.
pub fn expert_block(t: &Tensor, lo: usize, hi: usize) -> Tensor {
    let per: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = hi - lo;
    t.pick(shape, lo * per..hi * per)
}

fn push(
    p: &mut Program,
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    kind: BufferKind,
) -> BufferId {
    p.buffers.push(Buffer {
        name,
        dtype,
        shape: shape.into_iter().map(Some).collect(),
        kind,
    });
    p.buffers.len() - 1
}

fn static_shape(p: &Program, b: BufferId) -> Vec<usize> {
    p.buffers[b].shape.iter().map(|d| d.unwrap_or(0)).collect()
}

/// An MoE layer's `tokens` tokens padded by `pad` rows to a multiple of tp, for the all-to-all
/// form: the tokens with rows of zeros, the routing with weight 0 and expert 0 (so the padding
/// rows are dispatched and computed like any, and combined with weight 0), and the gathered
/// output's first `tokens` rows taken after the all-gather.
struct Padding {
    tokens: usize,
    pad: usize,
    h: usize,
}

impl Padding {
    /// A constant of `pad` rows of zeros like `b`'s rows, with its name.
    fn zeros(&self, p: &mut Program, weights: &mut Vec<(String, Tensor)>, b: BufferId) -> BufferId {
        let (dtype, cols) = (p.buffers[b].dtype, static_shape(p, b)[1]);
        let name = format!("{}.token_padding", p.buffers[b].name);
        let n = self.pad * cols;
        let t = match dtype {
            DType::I64 => Tensor::i64(vec![self.pad, cols], vec![0; n]),
            _ => Tensor::f32(vec![self.pad, cols], vec![0.0; n]).with_dtype(dtype),
        };
        weights.push((name.clone(), t));
        push(p, name, dtype, vec![self.pad, cols], BufferKind::Weight)
    }

    /// x, w and ids with the padding rows after their own.
    fn pad(
        &self,
        p: &mut Program,
        weights: &mut Vec<(String, Tensor)>,
        out: &mut Vec<Instruction>,
        ins: &Instruction,
        operands: [BufferId; 3],
    ) -> (BufferId, BufferId, BufferId) {
        let rows = self.tokens + self.pad;
        let padded = operands.map(|b| {
            let z = self.zeros(p, weights, b);
            let (dtype, cols) = (p.buffers[b].dtype, static_shape(p, b)[1]);
            let name = format!("{}.tokens_padded", p.buffers[b].name);
            let o = push(p, name, dtype, vec![rows, cols], BufferKind::Temp);
            out.push(Instruction {
                op: Op::Concat { axis: 0 },
                inputs: vec![Some(b), Some(z)],
                outputs: vec![o],
                origin: ins.origin.clone(),
            });
            o
        });
        (padded[0], padded[1], padded[2])
    }

    /// The gathered output ([tokens + pad, H]) and the slice of its first rows into `y`.
    fn cut(
        &self,
        p: &mut Program,
        weights: &mut Vec<(String, Tensor)>,
        ins: &Instruction,
        y: BufferId,
    ) -> (BufferId, Instruction) {
        let base = p.buffers[y].name.clone();
        let rows = self.tokens + self.pad;
        let gathered = push(
            p,
            format!("{base}.gathered_padded"),
            p.buffers[y].dtype,
            vec![rows, self.h],
            BufferKind::Temp,
        );
        let mut constant = |what: &str, v: i64| {
            let name = format!("{base}.padding_{what}");
            weights.push((name.clone(), Tensor::i64(vec![1], vec![v])));
            Some(push(p, name, DType::I64, vec![1], BufferKind::Weight))
        };
        let (starts, ends, axes) = (
            constant("start", 0),
            constant("end", self.tokens as i64),
            constant("axis", 0),
        );
        let slice = Instruction {
            op: Op::Slice,
            inputs: vec![Some(gathered), starts, ends, axes],
            outputs: vec![y],
            origin: ins.origin.clone(),
        };
        (gathered, slice)
    }
}

/// Each rank's block of every expert weight (and bias), by weight name, cut once for all
/// ranks: each rank's layers take their own (`shard_layer`).
pub type ExpertBlocks = HashMap<String, Vec<Option<Tensor>>>;

/// Takes the expert weights of every `moe.experts` in `p` out of `weights` and cuts each into
/// its `tp` rank blocks, one weight at a time: a weight's storage becomes its blocks (see
/// `Tensor::split_rows`), so the weights are never held twice. A weight that does not divide
/// stays whole in `weights` (`shard_layer` says why).
pub fn cut_expert_weights(
    p: &Program,
    weights: &mut Vec<(String, Tensor)>,
    tp: usize,
) -> ExpertBlocks {
    let mut blocks = ExpertBlocks::new();
    for ins in &p.instructions {
        if !matches!(ins.op, Op::MoeExperts { .. }) {
            continue;
        }
        for &b in ins.inputs.iter().skip(3).flatten() {
            let name = &p.buffers[b].name;
            let Some(pos) = weights.iter().position(|(n, _)| n == name) else {
                continue;
            };
            if weights[pos].1.shape.first().is_none_or(|e| e % tp != 0) {
                continue;
            }
            let (name, whole) = weights.swap_remove(pos);
            if let Some(cut) = whole.split_rows(tp) {
                blocks.insert(name, cut.into_iter().map(Some).collect());
            }
        }
    }
    blocks
}

/// The expert FFN of a `moe.experts` op (its activation and layout), as the all-to-all
/// layer's middle step computes it; None for any other op.
pub(crate) fn expert_ffn_of(op: &Op) -> Option<Op> {
    match *op {
        Op::MoeExperts {
            activation,
            alpha,
            beta,
            limit,
            layout,
        } => Some(Op::MoeExpertFfn {
            activation,
            alpha,
            beta,
            limit,
            layout,
        }),
        _ => None,
    }
}

/// Rank t's form of one `moe.experts` instruction `ins` (its FFN `ffn`), appended to `out`:
/// the tokens padded to a multiple of tp where they are not one, the rank's block of every
/// expert weight, then the all-to-all layer (`AllToAllLayer`).
pub(crate) fn shard_layer(
    rp: &mut RankProgram,
    ins: &Instruction,
    ffn: Op,
    (tp, t): (usize, usize),
    blocks: &mut ExpertBlocks,
    out: &mut Vec<Instruction>,
) -> Result<(), String> {
    let operand = |i: usize| {
        ins.inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i} is missing"))
    };
    let (x, w, ids, w_in, w_out) = (
        operand(0)?,
        operand(1)?,
        operand(2)?,
        operand(3)?,
        operand(4)?,
    );
    let p = &mut rp.program;
    let [tokens, h] = static_shape(p, x)[..] else {
        return Err("the tokens are not a [T, H] matrix".into());
    };
    let k = static_shape(p, w)[1];
    let e = static_shape(p, w_in)[0];
    if !e.is_multiple_of(tp) {
        return Err(format!("{e} experts cannot be split evenly over tp = {tp} (experts are placed in contiguous blocks of E/tp)"));
    }
    // Tokens that do not divide over tp (one token at tp 2: a decode step) are padded with
    // rows of routing weight 0, cut off again after the all-gather (`pad_tokens`).
    let y = ins.outputs[0];
    let padded = tokens.div_ceil(tp) * tp;
    let (x, w, ids, gathered, cut) = match padded - tokens {
        0 => (x, w, ids, y, None),
        pad => {
            let to = Padding { tokens, pad, h };
            let (xp, wp, ip) = to.pad(p, &mut rp.weights, out, ins, [x, w, ids]);
            let (gathered, cut) = to.cut(p, &mut rp.weights, ins, y);
            (xp, wp, ip, gathered, Some(cut))
        }
    };
    let el = e / tp;
    take_expert_blocks(rp, &ins.inputs[3..], (t, el), blocks)?;
    let layer = AllToAllLayer {
        base: rp.program.buffers[y].name.clone(),
        origin: ins.origin.clone(),
        tp,
        t,
        e,
        tl: padded / tp,
        h,
        k,
    };
    let routed = [x, w, ids];
    let bias = |i: usize| ins.inputs.get(i).copied().flatten();
    let weights = [Some(w_in), Some(w_out), bias(5), bias(6)];
    layer.emit(rp, routed, (ffn, weights), gathered, out);
    out.extend(cut);
    Ok(())
}

/// Cuts rank t's block of experts t·el..(t+1)·el out of every expert weight and bias in
/// `operands` (taking it from `blocks` where the streamed loader already cut it).
fn take_expert_blocks(
    rp: &mut RankProgram,
    operands: &[Option<BufferId>],
    (t, el): (usize, usize),
    blocks: &mut ExpertBlocks,
) -> Result<(), String> {
    let p = &mut rp.program;
    for &b in operands.iter().flatten() {
        let name = p.buffers[b].name.clone();
        if let Some(block) = blocks.get_mut(&name).and_then(|v| v.get_mut(t)?.take()) {
            p.buffers[b].shape[0] = Some(el);
            rp.weights.push((name, block));
            continue;
        }
        let pos = rp
            .weights
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| format!("expert weight '{name}' is not a constant"))?;
        let block = expert_block(&rp.weights[pos].1, t * el, (t + 1) * el);
        p.buffers[b].shape[0] = Some(el);
        rp.weights[pos].1 = block;
    }
    Ok(())
}

/// One rank's all-to-all MoE layer over `tp` ranks: its tl tokens (a slice of every rank's),
/// dispatched into capacity buckets per expert (`cap`),
/// exchanged so each rank holds its el = e/tp experts' buckets from every rank, the FFN over
/// them, exchanged back, combined, and the ranks' tokens all-gathered.
struct AllToAllLayer {
    /// The layer output's name, which its buffers' names extend.
    base: String,
    origin: String,
    tp: usize,
    t: usize,
    e: usize,
    tl: usize,
    h: usize,
    k: usize,
}

impl AllToAllLayer {
    fn emit(
        &self,
        rp: &mut RankProgram,
        [x, w, ids]: [BufferId; 3],
        (ffn, [w_in, w_out, b_in, b_out]): (Op, [Option<BufferId>; 4]),
        gathered: BufferId,
        out: &mut Vec<Instruction>,
    ) {
        let (tp, e, tl, h, k) = (self.tp, self.e, self.tl, self.h, self.k);
        let (el, cap) = (e / tp, self.cap());
        let group: Vec<usize> = (0..tp).collect();
        let p = &mut rp.program;
        let mut step = |op: Op, inputs: Vec<Option<BufferId>>, outputs: Vec<BufferId>| {
            out.push(Instruction {
                op,
                inputs,
                outputs,
                origin: self.origin.clone(),
            })
        };
        let xs = self.temp(p, "tokens_local", DType::F32, vec![tl, h]);
        let ws = self.temp(p, "weights_local", DType::F32, vec![tl, k]);
        let is = self.temp(p, "ids_local", DType::I64, vec![tl, k]);
        let slice = Op::TokenSlice {
            axis: 0,
            index: self.t,
            parts: tp,
        };
        step(slice.clone(), vec![Some(x)], vec![xs]);
        step(slice.clone(), vec![Some(w)], vec![ws]);
        step(slice, vec![Some(ids)], vec![is]);
        let buckets = self.temp(p, "buckets", DType::F32, vec![e, cap, h]);
        let dispatch = Op::MoeDispatch {
            num_experts: e,
            capacity: cap,
        };
        step(dispatch, vec![Some(xs), Some(is)], vec![buckets]);
        let recv = self.temp(p, "received", DType::F32, vec![el, tp * cap, h]);
        let there = Op::AllToAll {
            group: group.clone(),
            split_axis: 0,
            concat_axis: 1,
        };
        step(there, vec![Some(buckets)], vec![recv]);
        let rows = self.temp(p, "rows", DType::F32, vec![el * tp * cap, h]);
        let shape = vec![el * tp * cap, h];
        step(Op::ReshapeTo { shape }, vec![Some(recv)], vec![rows]);
        let offsets = self.bucket_offsets(rp);
        let p = &mut rp.program;
        let y_rows = self.temp(p, "expert_out", DType::F32, vec![el * tp * cap, h]);
        let ffn_inputs = vec![Some(rows), Some(offsets), w_in, w_out, b_in, b_out];
        step(ffn, ffn_inputs, vec![y_rows]);
        let y_buckets = self.temp(p, "expert_out_buckets", DType::F32, vec![el, tp * cap, h]);
        let shape = vec![el, tp * cap, h];
        step(Op::ReshapeTo { shape }, vec![Some(y_rows)], vec![y_buckets]);
        let back = self.temp(p, "returned", DType::F32, vec![e, cap, h]);
        let home = Op::AllToAll {
            group: group.clone(),
            split_axis: 1,
            concat_axis: 0,
        };
        step(home, vec![Some(y_buckets)], vec![back]);
        let ys = self.temp(p, "combined_local", DType::F32, vec![tl, h]);
        let combine = Op::MoeCombine { capacity: cap };
        step(combine, vec![Some(back), Some(ws), Some(is)], vec![ys]);
        let gather = Op::AllGather { group, axis: 0 };
        step(gather, vec![Some(ys)], vec![gathered]);
    }

    /// Each expert's bucket: room for every local token's k slots, so none is dropped.
    fn cap(&self) -> usize {
        self.tl * self.k
    }

    /// A temporary named `<base>.<what>`.
    fn temp(&self, p: &mut Program, what: &str, dtype: DType, shape: Vec<usize>) -> BufferId {
        let name = format!("{}.{what}", self.base);
        push(p, name, dtype, shape, BufferKind::Temp)
    }

    /// The received rows' offset of each local expert (a constant: every bucket holds cap
    /// rows from each of the tp ranks).
    fn bucket_offsets(&self, rp: &mut RankProgram) -> BufferId {
        let (el, per) = (self.e / self.tp, self.tp * self.cap());
        let name = format!("{}.bucket_offsets", self.base);
        let offsets = push(
            &mut rp.program,
            name.clone(),
            DType::I64,
            vec![el + 1],
            BufferKind::Weight,
        );
        let values = (0..=el).map(|i| (i * per) as i64).collect();
        rp.weights.push((name, Tensor::i64(vec![el + 1], values)));
        offsets
    }
}
