//! Raises each MoE layer of a `core` program, whatever form the exporter gave it, to
//! `moe.route` + `moe.experts`, and says why where it cannot.
//!
//!   before: %l = mat_mul(%x, %wr); %p = softmax(%l); %v, %i = top_k(%p, 2); ... gather_nd(%w13, %i)
//!           ... mat_mul ... sigmoid ... mul ... reduce_sum(...)          (dozens of ops)
//!   after:  %l = mat_mul(%x, %wr); %w, %ids = "moe.route"(%l) {top_k = 2, ...}
//!           %y = "moe.experts"(%x, %w, %ids, %w_in, %w_out) {activation = "swiglu"}
//!
//! How: a layer is found from its router (a top_k, or GShard's arg_max, over softmax or
//! sigmoid scores of logits that are a linear function of the tokens; or PhiMoE's arg_max
//! straight over the logits, its sparsemixer). Its output is the value
//! after the router, of the tokens' size, whose backward slice (cut at the tokens and the
//! logits) reads nothing else and is read by nothing else. The expert weights are the weights
//! of that slice with a leading dimension of the expert count. Each reading of them (which is
//! which, which way round, how gate and up are packed, which activation and routing) is run
//! against the slice itself on random tokens and random logits, and a reading is taken only
//! when it gives the slice's own result (relative error below 1e-5, two trials). Anything that
//! looks like MoE but matches no reading stays as it was, with the reason.

mod anchor;
mod on_ops;
mod rewrite;
mod search;

pub use on_ops::raise_moe_layers;

use crate::core::CoreProgram;
use crate::moe::expert_weights::{ActivationHints, ExpertFfn, Reading};
use crate::moe::region::{backward_slice, producers};
use crate::moe::{Family, MoeLayer};
use anchor::{find_anchor, reshape_family, router_input};
use ppmoe_runtime::program::{BufferId, Op, RouteOrder, Scoring, UnaryFn};
use ppmoe_runtime::{kernels, DType, Tensor};
use rewrite::apply;
pub use rewrite::Splice;
use search::try_raise;
use std::collections::{BTreeSet, HashMap, HashSet};

/// What the pass did: the layers raised and, for each near miss, why it was left alone.
#[derive(Debug, Default)]
pub struct RaiseOutcome {
    pub raised: Vec<MoeLayer>,
    pub unraised: Vec<String>,
}

/// How the raise treats a source that drops tokens beyond an expert's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapacityPolicy {
    /// Keep the source's capacity and its dropping: exact.
    Keep,
    /// Drop nothing: not exact where the source dropped; the summary says so.
    Dropless,
}

const TOLERANCE: f64 = 1e-5;
/// How close a reading must come to a layer that computes in bf16 or fp16: such a layer
/// rounds after each op, so no reading in f32 can match it to f32's precision. A wrong reading
/// (another activation, no renormalisation, another k) is off by 1e-1 or more.
const TOLERANCE_BF16: f64 = 1e-2;
const TOLERANCE_F16: f64 = 2e-3;

/// The tolerance of the readings of a layer: by the coarsest float type it computes in.
fn region_tolerance(prog: &ppmoe_runtime::program::Program, region: &BTreeSet<usize>) -> f64 {
    let types: HashSet<DType> = region
        .iter()
        .flat_map(|&i| prog.instructions[i].outputs.iter())
        .map(|&o| prog.buffers[o].dtype)
        .collect();
    if types.contains(&DType::BF16) {
        TOLERANCE_BF16
    } else if types.contains(&DType::F16) {
        TOLERANCE_F16
    } else {
        TOLERANCE
    }
}
/// How far past the router the layer's output is looked for.
const SCAN_LIMIT: usize = 600;

#[derive(Clone)]
struct Route {
    scoring: Scoring,
    order: RouteOrder,
    renormalize: bool,
    top_k: usize,
    capacity: usize,
    /// DeepSeek-V3's group limit: experts in `n_group` groups, the choice made among the
    /// `topk_group` best groups (0: none).
    n_group: usize,
    topk_group: usize,
    routed_scaling_factor: f32,
    /// Sparsemixer scoring's masking threshold (0 for the others).
    mask_threshold: f32,
    /// The score-correction bias (a weight of [E], by name: added to the scores for the choice
    /// only) and its values for the trials.
    bias: Option<(String, Tensor)>,
}

impl Route {
    fn op(&self) -> Op {
        Op::MoeRoute {
            top_k: self.top_k,
            scoring: self.scoring,
            order: self.order,
            renormalize: self.renormalize,
            n_group: self.n_group,
            topk_group: self.topk_group,
            routed_scaling_factor: self.routed_scaling_factor,
            capacity: self.capacity,
            mask_threshold: self.mask_threshold,
        }
    }

    fn describe(&self) -> String {
        let s = match (self.scoring, self.order) {
            (Scoring::Softmax, RouteOrder::SoftmaxThenTopk) => {
                format!("softmax -> top-{}", self.top_k)
            }
            (Scoring::Softmax, RouteOrder::TopkThenSoftmax) => {
                format!("top-{} -> softmax", self.top_k)
            }
            (Scoring::Sigmoid, _) => format!("sigmoid -> top-{}", self.top_k),
            (Scoring::Sparsemixer, _) => format!(
                "sparsemixer top-{} (mask threshold {})",
                self.top_k, self.mask_threshold
            ),
        };
        let r = if self.renormalize && self.order == RouteOrder::SoftmaxThenTopk {
            ", renormalised"
        } else {
            ""
        };
        let c = if self.capacity > 0 {
            format!(", capacity {}", self.capacity)
        } else {
            String::new()
        };
        let b = if self.bias.is_some() {
            ", score bias"
        } else {
            ""
        };
        let g = if self.n_group > 1 {
            format!(", best {} of {} groups", self.topk_group, self.n_group)
        } else {
            String::new()
        };
        let f = if self.routed_scaling_factor != 1.0 {
            format!(", x{}", self.routed_scaling_factor)
        } else {
            String::new()
        };
        format!("{s}{r}{b}{g}{f}{c}")
    }
}

fn experts_op(f: &ExpertFfn) -> Op {
    Op::MoeExperts {
        activation: f.activation,
        alpha: f.alpha,
        beta: f.beta,
        limit: f.limit,
        layout: f.layout,
    }
}

/// Runs route + experts of one reading on the trial inputs, with only the experts the trial
/// routing reaches materialised (renumbered 0..): the check never copies a whole stack.
fn run_reading(
    route: &Route,
    reading: &Reading,
    stacks: &[Tensor],
    biases: &[Tensor],
    x: &Tensor,
    l: &Tensor,
) -> Result<Tensor, String> {
    let bias = route.bias.as_ref().map(|(_, t)| t);
    let r = kernels::execute(&route.op(), &[Some(l), bias], 2)?;
    let ids = r[1].to_i64();
    let mut used: Vec<usize> = ids
        .iter()
        .map(|&i| usize::try_from(i).map_err(|_| format!("expert id {i}")))
        .collect::<Result<_, _>>()?;
    used.sort_unstable();
    used.dedup();
    let local: Vec<i64> = ids
        .iter()
        .map(|&i| used.binary_search(&(i as usize)).map_or(-1, |p| p as i64))
        .collect();
    let local_ids = Tensor::i64(r[1].shape.clone(), local).with_dtype(r[1].dtype);
    let f = reading.materialize(stacks, biases, &used);
    let args = [
        Some(x),
        Some(&r[0]),
        Some(&local_ids),
        Some(&f.w_in),
        Some(&f.w_out),
        f.b_in.as_ref(),
        f.b_out.as_ref(),
    ];
    Ok(kernels::execute(&experts_op(&f), &args, 1)?.remove(0))
}

fn hints(
    p: &CoreProgram,
    region: &BTreeSet<usize>,
    weights: &HashMap<&str, &Tensor>,
) -> ActivationHints {
    let prog = &p.program;
    let mut h = ActivationHints::default();
    for &i in region {
        let ins = &prog.instructions[i];
        match ins.op {
            Op::Unary { f: UnaryFn::Erf } | Op::Unary { f: UnaryFn::Gelu } => h.erf = true,
            Op::Unary { f: UnaryFn::Tanh }
            | Op::Unary {
                f: UnaryFn::GeluTanh,
            } => h.tanh = true,
            // A sigmoid, or the exponential it is spelt with (JAX lowers jax.nn.silu to
            // x / (1 + exp(-x)) on some paths).
            Op::Unary {
                f: UnaryFn::Sigmoid,
            }
            | Op::Unary { f: UnaryFn::Exp } => h.sigmoid = true,
            Op::Unary { f: UnaryFn::Relu } => h.relu = true,
            _ => {}
        }
        for b in ins.inputs.iter().flatten() {
            if let Some(t) = weights.get(prog.buffers[*b].name.as_str()) {
                if t.len() == 1 && t.dtype.is_float() {
                    let v = t.to_f32()[0];
                    if !h.scalars.contains(&v) {
                        h.scalars.push(v);
                    }
                }
            }
        }
    }
    h
}

fn family(p: &CoreProgram, region: &BTreeSet<usize>) -> Family {
    let ops: Vec<&Op> = region
        .iter()
        .map(|&i| &p.program.instructions[i].op)
        .collect();
    if ops.iter().any(|o| matches!(o, Op::NonZero)) {
        Family::UnrolledLoop
    } else if ops.iter().any(|o| matches!(o, Op::Einsum { .. })) {
        Family::EinsumDispatch
    } else {
        Family::GatherWeights
    }
}

#[derive(Clone)]
struct Found {
    output: BufferId,
    region: BTreeSet<usize>,
    route: Route,
    reading: Reading,
    /// The layer's expert weight stacks and biases, as the reading indexes them.
    stacks: Vec<Tensor>,
    biases: Vec<Tensor>,
    /// The stacks' names in the program.
    stack_names: Vec<String>,
}

fn weights_of(
    p: &ppmoe_runtime::program::Program,
    region: &BTreeSet<usize>,
    weights: &HashMap<&str, &Tensor>,
    keep: impl Fn(&Tensor) -> bool,
) -> Vec<(String, Tensor)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &i in region {
        for b in p.instructions[i].inputs.iter().flatten() {
            let name = p.buffers[*b].name.as_str();
            if let Some(t) = weights.get(name) {
                if keep(t) && seen.insert(name) {
                    out.push((name.to_string(), (*t).clone()));
                }
            }
        }
    }
    out
}

/// The bytes of the largest weight `region` reads.
fn largest_weight(
    p: &ppmoe_runtime::program::Program,
    region: &BTreeSet<usize>,
    weights: &HashMap<&str, &Tensor>,
) -> usize {
    region
        .iter()
        .flat_map(|&i| p.instructions[i].inputs.iter().flatten())
        .filter_map(|b| weights.get(p.buffers[*b].name.as_str()))
        .map(|t| t.len().saturating_mul(t.dtype.size()))
        .max()
        .unwrap_or(0)
}

/// GShard's capacity: the C of the [tokens, experts, C] combine tensor an einsum reads.
fn einsum_capacity(
    p: &ppmoe_runtime::program::Program,
    region: &BTreeSet<usize>,
    t: usize,
    e: usize,
) -> usize {
    for &i in region {
        let ins = &p.instructions[i];
        if let Op::Einsum { .. } = ins.op {
            for b in ins.inputs.iter().flatten() {
                if let [Some(a), Some(b2), Some(c)] = p.buffers[*b].shape[..] {
                    if a == t && b2 == e {
                        return c;
                    }
                }
            }
        }
    }
    0
}

/// Describes the dense experts beside the routed ones: an `add` of the layer's output with a
/// value computed from the tokens by weights alone.
fn shared_experts(core: &CoreProgram, output: BufferId, tokens: &HashSet<BufferId>) -> String {
    let prog = &core.program;
    let prod = producers(prog);
    for ins in &prog.instructions {
        if !matches!(
            ins.op,
            Op::Binary {
                f: ppmoe_runtime::program::BinaryFn::Add
            }
        ) || !ins.inputs.contains(&Some(output))
        {
            continue;
        }
        let Some(other) = ins.inputs.iter().flatten().copied().find(|&b| b != output) else {
            continue;
        };
        let region = backward_slice(prog, &prod, other, tokens);
        let reads_tokens = region.iter().any(|&i| {
            prog.instructions[i]
                .inputs
                .iter()
                .flatten()
                .any(|b| tokens.contains(b))
        });
        let routed = region.iter().any(|&i| {
            matches!(
                prog.instructions[i].op,
                Op::MoeRoute { .. } | Op::TopK { .. } | Op::TopKAxis { .. }
            )
        });
        if reads_tokens && !routed {
            let gated = region.iter().any(|&i| {
                matches!(
                    prog.instructions[i].op,
                    Op::Unary {
                        f: UnaryFn::Sigmoid
                    }
                )
            });
            let mms = region
                .iter()
                .filter(|&&i| matches!(prog.instructions[i].op, Op::MatMul))
                .count();
            return format!(
                "1 dense{} ({} matmuls)",
                if gated { ", sigmoid-gated" } else { "" },
                mms
            );
        }
    }
    "none".into()
}

/// Raises every MoE layer it can find; see the module comment. Trial evaluation makes no
/// tensor over `limit` bytes. With `probe`, the layers are recognised on it: the same model lowered at a few tokens (see
/// `moe::probe`), so the numeric checks cost the same at any compile size; each layer found
/// there is applied to both programs at the same instructions. `on_splice` is told of each
/// change to `core`'s instructions as it is made (the pass over the module's ops makes the
/// same change there); an error from it stops the raise.
pub fn raise_layers(
    core: &mut CoreProgram,
    mut probe: Option<&mut CoreProgram>,
    policy: CapacityPolicy,
    limit: usize,
    on_splice: &mut dyn FnMut(&CoreProgram, &Splice) -> Result<(), String>,
) -> Result<RaiseOutcome, String> {
    let mut outcome = RaiseOutcome::default();
    let mut tried: HashSet<String> = HashSet::new();
    let mut unraised: Vec<(BufferId, String)> = Vec::new();
    loop {
        let work: &CoreProgram = probe.as_deref().unwrap_or(&*core);
        let next = work
            .program
            .instructions
            .iter()
            .enumerate()
            .find(|(_, ins)| {
                matches!(
                    ins.op,
                    Op::TopK { .. } | Op::TopKAxis { .. } | Op::ArgMax { max: true, .. }
                ) && !tried.contains(&work.program.buffers[ins.outputs[0]].name)
            });
        let Some((i, ins)) = next else { break };
        let key = work.program.buffers[ins.outputs[0]].name.clone();
        let origin = ins.origin.clone();
        tried.insert(key);
        match try_raise(work, i, limit) {
            Ok(None) => {}
            Ok(Some(mut found)) => {
                // Materialised once (the one copy of the experts' weights in the canonical
                // layout), shared by both programs.
                let ffn = materialize(&mut found, core, probe.as_deref_mut());
                if let Some(p) = probe.as_deref_mut() {
                    apply_found(p, &found, &ffn, i, policy);
                }
                // GShard's capacity is a function of the token count: read it at the compile size.
                if found.route.capacity > 0 {
                    let logits = &core.program.buffers[find_anchor_logits(core, i).unwrap_or(0)];
                    if let [Some(t), Some(e)] = logits.shape[..] {
                        found.route.capacity = einsum_capacity(&core.program, &found.region, t, e);
                    }
                }
                if let Some((layer, done)) = apply_found(core, &found, &ffn, i, policy) {
                    on_splice(core, &done)?;
                    outcome.raised.push(layer);
                }
                // The GShard gating has a second arg_max in the region just removed; any
                // router read by it is gone with it.
            }
            Err(reason) => unraised.push((
                ins.outputs[0],
                format!("router at node \"{origin}\": {reason}"),
            )),
        }
    }
    // A choice tried before its layer's own anchor (DeepSeek's group top-k comes before the
    // expert top-k) and then raised with it is no unraised router: only those still in the
    // program are reported.
    let work: &CoreProgram = probe.as_deref().unwrap_or(&*core);
    let produced: HashSet<BufferId> = work
        .program
        .instructions
        .iter()
        .flat_map(|ins| ins.outputs.iter().copied())
        .collect();
    outcome.unraised = unraised
        .into_iter()
        .filter(|(b, _)| produced.contains(b))
        .map(|(_, why)| why)
        .collect();
    let weights = &mut core.weights;
    core.program = crate::passes::dead_code::remove_dead_code(
        std::mem::replace(&mut core.program, ppmoe_runtime::program::Program::empty()),
        weights,
    );
    Ok(outcome)
}

/// The layer's weights in the canonical layout, made once for both programs. The source
/// stacks are first let go by the programs (when only the layer reads them), so that they can
/// be reoriented in place rather than copied.
fn materialize(
    found: &mut Found,
    core: &mut CoreProgram,
    probe: Option<&mut CoreProgram>,
) -> ExpertFfn {
    let stacks = std::mem::take(&mut found.stacks);
    for program in std::iter::once(core).chain(probe) {
        release_weights(program, &found.region, &found.stack_names);
    }
    let biases = std::mem::take(&mut found.biases);
    found.reading.materialize_owned(stacks, &biases)
}

/// Drops `names` from the program's weights where nothing outside `region` reads them (the
/// region is about to be replaced).
fn release_weights(core: &mut CoreProgram, region: &BTreeSet<usize>, names: &[String]) {
    let prog = &core.program;
    let read_outside = |name: &str| {
        prog.instructions.iter().enumerate().any(|(i, ins)| {
            !region.contains(&i)
                && ins
                    .inputs
                    .iter()
                    .flatten()
                    .any(|b| prog.buffers[*b].name == name)
        }) || prog.outputs.iter().any(|&o| prog.buffers[o].name == name)
    };
    let gone: HashSet<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !read_outside(n))
        .collect();
    core.weights.retain(|(n, _)| !gone.contains(n.as_str()));
}

fn find_anchor_logits(core: &CoreProgram, i: usize) -> Option<BufferId> {
    let prod = producers(&core.program);
    let weights: HashMap<&str, &Tensor> =
        core.weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    find_anchor(core, &prod, &weights, i).map(|a| a.logits)
}

/// Replaces the layer `found` (router at instruction `i`) in `core`; the raised layer's row.
fn apply_found(
    core: &mut CoreProgram,
    found: &Found,
    ffn: &ExpertFfn,
    i: usize,
    policy: CapacityPolicy,
) -> Option<(MoeLayer, Splice)> {
    let prod = producers(&core.program);
    let weights: HashMap<&str, &Tensor> =
        core.weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let anchor = find_anchor(core, &prod, &weights, i)?;
    let x = router_input(core, &prod, anchor.logits)?;
    let tokens = reshape_family(core, &prod, x);
    let output = found.output;
    let (mut layer, done) = apply(core, found, ffn, anchor.logits, x, policy);
    layer.shared_experts = shared_experts(core, output, &tokens);
    Some((layer, done))
}
