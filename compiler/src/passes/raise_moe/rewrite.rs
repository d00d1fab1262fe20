//! The rewrite once a layer is found: its region replaced by `moe.route` + `moe.experts` (the
//! expert stacks as the reading indexes them), placed where its last instruction was.

use super::{experts_op, family, CapacityPolicy, Found, Route};
use crate::core::CoreProgram;
use crate::moe::expert_weights::ExpertFfn;
use crate::moe::MoeLayer;
use ppmoe_runtime::program::{Buffer, BufferId, BufferKind, Instruction, Op};
use ppmoe_runtime::{DType, Tensor};
use std::collections::BTreeSet;

/// How a layer's raise changed the program's instructions: `region` (instruction indices
/// before the change) replaced by `raised`, placed where instruction `last` was; the layer's
/// output buffer, which the last of `raised` now writes.
pub struct Splice {
    pub region: BTreeSet<usize>,
    pub last: usize,
    pub raised: Vec<Instruction>,
    pub output: BufferId,
}

/// Replaces `found.region` by route + experts.
pub(super) fn apply(
    core: &mut CoreProgram,
    found: &Found,
    ffn: &ExpertFfn,
    logits: BufferId,
    x: BufferId,
    policy: CapacityPolicy,
) -> (MoeLayer, Splice) {
    let prog = &core.program;
    let (t, h) = {
        let n: usize = (prog.buffers[found.output].shape.iter())
            .map(|d| d.unwrap_or(0))
            .product();
        let t = prog.buffers[logits].shape[0].unwrap_or(0);
        (t, n / t.max(1))
    };
    let e = prog.buffers[logits].shape[1].unwrap_or(0);
    let last = *found
        .region
        .iter()
        .next_back()
        .expect("a region has instructions");
    let mut route = found.route.clone();
    let note = capacity_note(&mut route, policy);
    let mut layer = Raised {
        base: prog.buffers[found.output].name.clone(),
        origin: prog.instructions[last].origin.clone(),
        core,
        ins: Vec::new(),
    };
    let x2 = layer.tokens_2d(x, (t, h));
    let (w, ids) = layer.route(&route, logits, t);
    let w_in = layer.weight("w_in", &ffn.w_in);
    let w_out = layer.weight("w_out", &ffn.w_out);
    let b_in = ffn.b_in.as_ref().map(|b| layer.weight("b_in", b));
    let b_out = ffn.b_out.as_ref().map(|b| layer.weight("b_out", b));
    let inputs = vec![x2, w, ids, w_in, w_out].into_iter().map(Some);
    let inputs = inputs.chain([b_in, b_out]).collect();
    layer.experts(experts_op(ffn), inputs, found.output, (t, h));
    let Raised { origin, ins, .. } = layer;
    let family = family(core, &found.region);
    let done = Splice {
        region: found.region.clone(),
        last,
        raised: ins.clone(),
        output: found.output,
    };
    splice(&mut core.program, &found.region, last, ins);
    let layer = MoeLayer {
        origin,
        tokens: t,
        experts: e,
        top_k: route.top_k,
        hidden: h,
        ffn: ffn.ffn_size(),
        routing: route.describe(),
        activation: ffn.describe_activation(),
        gated: ffn.activation.is_gated(),
        shared_experts: String::new(),
        family,
        note,
    };
    (layer, done)
}

/// What the raise says of a source that drops tokens beyond an expert's capacity, the route
/// made dropless first where `policy` asks it.
fn capacity_note(route: &mut Route, policy: CapacityPolicy) -> Option<String> {
    let c = route.capacity;
    if c == 0 {
        return None;
    }
    Some(match policy {
        CapacityPolicy::Keep => {
            format!("the source drops tokens beyond {c} per expert; kept (exact)")
        }
        CapacityPolicy::Dropless => {
            route.capacity = 0;
            format!("made dropless: the source drops tokens beyond {c} per expert, the compiled layer drops none (results differ where the source dropped)")
        }
    })
}

/// The program's instructions with `region` replaced by `raised`, placed where its last
/// instruction was.
fn splice(
    prog: &mut ppmoe_runtime::program::Program,
    region: &BTreeSet<usize>,
    last: usize,
    mut raised: Vec<Instruction>,
) {
    let mut kept = Vec::with_capacity(prog.instructions.len());
    for (i, ins) in std::mem::take(&mut prog.instructions)
        .into_iter()
        .enumerate()
    {
        if i == last {
            kept.append(&mut raised);
        } else if !region.contains(&i) {
            kept.push(ins);
        }
    }
    prog.instructions = kept;
}

/// The raised layer's instructions as they are made, with their buffers (named after the
/// layer's output) and weights added to the program.
struct Raised<'a> {
    core: &'a mut CoreProgram,
    base: String,
    origin: String,
    ins: Vec<Instruction>,
}

impl Raised<'_> {
    fn buffer(
        &mut self,
        suffix: &str,
        dtype: DType,
        shape: Vec<usize>,
        kind: BufferKind,
    ) -> BufferId {
        let prog = &mut self.core.program;
        prog.buffers.push(Buffer {
            name: format!("{}.{suffix}", self.base),
            dtype,
            shape: shape.into_iter().map(Some).collect(),
            kind,
        });
        prog.buffers.len() - 1
    }

    fn push(&mut self, op: Op, inputs: Vec<Option<BufferId>>, outputs: Vec<BufferId>) {
        self.ins.push(Instruction {
            op,
            inputs,
            outputs,
            origin: self.origin.clone(),
        });
    }

    fn weight(&mut self, suffix: &str, t: &Tensor) -> BufferId {
        let id = self.buffer(suffix, t.dtype, t.shape.clone(), BufferKind::Weight);
        let name = self.core.program.buffers[id].name.clone();
        self.core.weights.push((name, t.clone()));
        id
    }

    /// The tokens as [t, h] (a view where they have more axes).
    fn tokens_2d(&mut self, x: BufferId, (t, h): (usize, usize)) -> BufferId {
        if self.core.program.buffers[x].shape.len() == 2 {
            return x;
        }
        let b = self.buffer("tokens", DType::F32, vec![t, h], BufferKind::Temp);
        self.push(Op::ReshapeTo { shape: vec![t, h] }, vec![Some(x)], vec![b]);
        b
    }

    /// `moe.route` over the logits: each token's k weights and expert ids.
    fn route(&mut self, route: &Route, logits: BufferId, t: usize) -> (BufferId, BufferId) {
        let k = route.top_k;
        let w = self.buffer("route_weights", DType::F32, vec![t, k], BufferKind::Temp);
        let ids = self.buffer("route_ids", DType::I64, vec![t, k], BufferKind::Temp);
        // The score-correction bias by name: the buffer of that weight in this program.
        let bias = route.bias.as_ref().and_then(|(name, _)| {
            (self.core.program.buffers.iter())
                .position(|b| &b.name == name && b.kind == BufferKind::Weight)
        });
        self.push(route.op(), vec![Some(logits), bias], vec![w, ids]);
        (w, ids)
    }

    /// `moe.experts` writing the layer's output (through a [t, h] view where it has more
    /// axes).
    fn experts(
        &mut self,
        op: Op,
        inputs: Vec<Option<BufferId>>,
        output: BufferId,
        (t, h): (usize, usize),
    ) {
        let shape: Vec<usize> = (self.core.program.buffers[output].shape.iter())
            .map(|d| d.unwrap_or(0))
            .collect();
        if shape.len() == 2 {
            self.push(op, inputs, vec![output]);
            return;
        }
        let y = self.buffer("experts_out", DType::F32, vec![t, h], BufferKind::Temp);
        self.push(op, inputs, vec![y]);
        self.push(Op::ReshapeTo { shape }, vec![Some(y)], vec![output]);
    }
}
