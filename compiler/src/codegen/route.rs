//! The `moe.route` kernel: per token, the scores of its experts (softmax, sigmoid or raw
//! logits, a DeepSeek-V3 score-correction bias and group limit where the router has them),
//! the k best by k passes (ties to the lower index, as the CPU's), and their weights
//! (renormalised, scaled), written to `ids` as f32; for a capacity, two follow-up kernels.
//! One warp per token (its lanes take every 32nd expert) where there is no group limit, one
//! thread per token otherwise.
//!
//!   gpu.func @k5_route(%a0: memref<TxEf32>, %a1: memref<TxKf32>, %a2: memref<TxKf32>) kernel
//!     token = thread / 32; lane = thread % 32; <row max and sum by shuffles>;
//!     k passes: <each lane's best untaken expert, the warp's best by shuffles, lane 0 writes>

use super::kernel_gen::{hexf, kernel, prologue, static_shape, warp_reduce, WARP};
use super::template::specialise;
use ppmoe_runtime::program::{Op, Program, RouteOrder, Scoring};
use std::fmt::Write;

/// A thread's k passes over its token's experts (`route_top_k`).
const ROUTE_TOP_K: &str = include_str!("templates/route/top_k.mlir");
/// A warp's k passes over its token's experts (`route_warp_top_k`).
const ROUTE_WARP_TOP_K: &str = include_str!("templates/route/warp_top_k.mlir");
/// The capacity drop: each expert keeps its first `capacity` assignments, slot by slot.
const CAPACITY_DROP: &str = include_str!("templates/route/capacity_drop.mlir");
/// The group-limited routing's mask (`group_mask`).
const GROUP_MASK: &str = include_str!("templates/route/group_mask.mlir");
const CONSTANTS: &str = include_str!("templates/route/constants.mlir");
const SOFTMAX: &str = include_str!("templates/route/softmax.mlir");
const SCORE_SOFTMAX: &str = include_str!("templates/route/score_softmax.mlir");
const SCORE_SIGMOID: &str = include_str!("templates/route/score_sigmoid.mlir");
const IN_GROUP: &str = include_str!("templates/route/in_group.mlir");
const SOFTMAX_WEIGHTS: &str = include_str!("templates/route/softmax_weights.mlir");
const SCORE_SUM: &str = include_str!("templates/route/score_sum.mlir");
const SCALE: &str = include_str!("templates/route/scale.mlir");
const WARP_MAX: &str = include_str!("templates/route/warp_max.mlir");
const WARP_SUM: &str = include_str!("templates/route/warp_sum.mlir");
const HELD_SCORE: &str = include_str!("templates/route/held_score.mlir");
const HELD_PASSES: &str = include_str!("templates/route/held_passes.mlir");
const HELD_PICK: &str = include_str!("templates/route/held_pick.mlir");
const SHUFFLE_BEST: &str = include_str!("templates/route/shuffle_best.mlir");
const MARK_TAKEN: &str = include_str!("templates/route/mark_taken.mlir");
const RENORM: &str = include_str!("templates/route/renorm.mlir");

/// What a route kernel is specialised to.
struct RouteShape {
    e: usize,
    k: usize,
    scoring: Scoring,
    order: RouteOrder,
    /// The scores are a softmax over the row, taken before the top k.
    softmax_first: bool,
    biased: bool,
    /// The group limit's groups (0 or 1: none) and how many are kept.
    n_group: usize,
    topk_group: usize,
    /// One warp per token (else one thread).
    warp: bool,
    m_l: String,
    m_k: String,
}

impl RouteShape {
    fn grouped(&self) -> bool {
        self.n_group > 1
    }
}

/// The route kernel of instruction `idx` and, for a capacity, its two follow-ups; the threads
/// of the first, and whether the follow-ups are there. None where the route is not generated
/// (a bias or group limit with softmax after the top k; a group limit the mask cannot hold).
pub(super) fn route_kernel(p: &Program, idx: usize, name: &str) -> Option<(String, usize, bool)> {
    let ins = &p.instructions[idx];
    let Op::MoeRoute {
        top_k: k,
        scoring,
        order,
        renormalize,
        n_group,
        topk_group,
        routed_scaling_factor,
        capacity,
        mask_threshold,
    } = ins.op
    else {
        return None;
    };
    let biased = ins.inputs.get(1).copied().flatten().is_some();
    if scoring == Scoring::Sparsemixer {
        let plain = !biased && n_group <= 1 && capacity == 0 && k == 2;
        let l = static_shape(&p.buffers[ins.inputs[0]?])?;
        return plain.then(|| super::sparsemixer::route_kernel(name, (l[0], l[1]), mask_threshold));
    }
    let grouped = n_group > 1;
    // The bias and the group limit decide the choice of the scored routers only (as the CPU
    // backend's route has them); a capacity is applied by two more kernels (`capacity_kernels`).
    if (biased || grouped) && order == RouteOrder::TopkThenSoftmax {
        return None;
    }
    let l = static_shape(&p.buffers[ins.inputs[0]?])?;
    let (t, e) = (l[0], l[1]);
    if grouped && (e % n_group != 0 || n_group > 63 || k > topk_group * (e / n_group)) {
        return None;
    }
    // A warp keeps which of each lane's experts are taken in a 64-bit mask: at most 64 per lane.
    let r = RouteShape {
        e,
        k,
        scoring,
        order,
        softmax_first: scoring == Scoring::Softmax && order == RouteOrder::SoftmaxThenTopk,
        biased,
        n_group,
        topk_group,
        warp: !grouped && e <= WARP * 64,
        m_l: format!("memref<{}xf32>", t * e),
        m_k: format!("memref<{}xf32>", t * k),
    };
    let mut b = String::new();
    let score = route_scores(&mut b, &r);
    route_choices(&mut b, &r, &score);
    // With a capacity, the renormalisation and the scale come after the drop.
    let normalise = order == RouteOrder::TopkThenSoftmax || (renormalize && capacity == 0);
    let factor = if capacity == 0 {
        routed_scaling_factor
    } else {
        1.0
    };
    route_weights(&mut b, &r, normalise, factor);
    let threads = if r.warp { t * WARP } else { t };
    let mut body = String::new();
    prologue(&mut body, threads);
    body.push_str(&b);
    let mut params = vec![r.m_l, r.m_k.clone(), r.m_k];
    if biased {
        params.push(format!("memref<{e}xf32>"));
    }
    let mut text = kernel(name, &params, &body);
    if capacity > 0 {
        text.push_str(&capacity_kernels(
            name,
            t,
            e,
            k,
            capacity,
            renormalize,
            routed_scaling_factor,
        ));
    }
    Some((text, threads, capacity > 0))
}

/// The token's constants and, for softmax scores, the row's max and sum; returns the text
/// that computes expert %j's score into %sc and what decides its choice into %ch (its score
/// plus its bias: DeepSeek-V3's score correction; the weight stays the score), from its
/// logit %v, inside a loop body.
fn route_scores(b: &mut String, r: &RouteShape) -> String {
    let (e, k, m_l) = (r.e, r.k, &r.m_l);
    let token = if r.warp {
        b.push_str("        %c32 = arith.constant 32 : index\n        %tok = arith.divui %i, %c32 : index\n        %lane = arith.remui %i, %c32 : index\n");
        "%tok"
    } else {
        "%i"
    };
    b.push_str(&specialise(
        CONSTANTS,
        &[("e", &e), ("k", &k), ("token", &token)],
    ));
    if r.softmax_first && r.warp {
        route_warp_softmax(b, m_l);
    } else if r.softmax_first {
        b.push_str(&specialise(SOFTMAX, &[("m_l", &m_l)]));
    }
    // The score's lines, the last without its line break (the choice's follows).
    let score = match (r.scoring, r.softmax_first) {
        (_, true) => SCORE_SOFTMAX,
        (Scoring::Sigmoid, _) => SCORE_SIGMOID,
        _ => "          %sc = arith.addf %v, %zero : f32",
    }
    .trim_end_matches('\n');
    let choice = if r.biased {
        format!("\n          %bj = memref.load %a3[%j] : memref<{e}xf32>\n          %ch = arith.addf %sc, %bj : f32")
    } else {
        "\n          %ch = arith.addf %sc, %zero : f32".to_string()
    };
    format!("{score}{choice}")
}

/// The k choices: by a warp (its lanes' scores held in registers where each lane has at most
/// `HELD_PER_LANE` experts), or by k serial passes over the experts in the groups kept.
fn route_choices(b: &mut String, r: &RouteShape, score: &str) {
    let (e, m_l, m_k) = (r.e, &r.m_l, &r.m_k);
    if r.warp && e.is_multiple_of(WARP) && e / WARP <= HELD_PER_LANE {
        route_warp_top_k_held(b, (m_l, m_k), score, e / WARP);
    } else if r.warp {
        route_warp_top_k(b, m_l, m_k, score);
    } else if r.grouped() {
        group_mask(b, m_l, score, e / r.n_group, r.n_group, r.topk_group);
    } else {
        b.push_str("        %mask = arith.constant 0 : i64\n");
    }
    if r.warp {
        return;
    }
    // Expert %j is a candidate when its group was kept (every expert, without groups).
    let in_group = if r.grouped() {
        IN_GROUP
    } else {
        "            %ing = arith.constant true\n"
    };
    // k passes: the best expert not chosen in an earlier pass, by choice; its score kept.
    b.push_str(&specialise(
        ROUTE_TOP_K,
        &[
            ("m_l", &m_l),
            ("score", &score.replace("\n", "\n  ")),
            ("in_group", &in_group),
            ("m_k", &m_k),
        ],
    ));
}

/// The chosen experts' weights: a softmax over the chosen logits, or the chosen scores
/// (renormalised where `normalise`), times `factor`; by lane 0 of a warp.
fn route_weights(b: &mut String, r: &RouteShape, normalise: bool, factor: f32) {
    let m_k = &r.m_k;
    if r.warp {
        b.push_str("        %lane0 = arith.cmpi eq, %lane, %c0 : index\n        scf.if %lane0 {\n");
    }
    let sum = match r.order {
        RouteOrder::TopkThenSoftmax => SOFTMAX_WEIGHTS,
        _ => SCORE_SUM,
    };
    b.push_str(&specialise(sum, &[("m_k", &m_k)]));
    let div = if normalise { "%ts" } else { "%one" };
    b.push_str(&specialise(
        SCALE,
        &[("factor", &hexf(factor)), ("m_k", &m_k), ("div", &div)],
    ));
    if r.warp {
        b.push_str("        }\n");
    }
}

/// A warp's softmax statistics over its token's logits: each lane folds every 32nd expert,
/// then the lanes' values are folded across the warp; into %mx and %sum.
fn route_warp_softmax(b: &mut String, m_l: &str) {
    b.push_str(&specialise(WARP_MAX, &[("m_l", &m_l)]));
    let mx = warp_reduce(b, "pmx", "wmx", "arith.maximumf");
    b.push_str(&specialise(WARP_SUM, &[("mx", &mx), ("m_l", &m_l)]));
    let sum = warp_reduce(b, "psum", "wsum", "arith.addf");
    let _ = writeln!(b, "        %sum = arith.addf {sum}, %zero : f32");
}

/// The experts a lane's scores are held in registers for (`route_warp_top_k_held`): up to 256
/// experts a warp, Qwen3-MoE's 128 and DeepSeek-V3's 256 among them.
const HELD_PER_LANE: usize = 8;

/// `route_warp_top_k` with each lane's `held` experts (lane + 32 m) read and scored once, into
/// registers, before the k passes (which otherwise read and score them again each pass). The
/// passes compare them in the same order (m ascending, the first of equals), so the choices
/// are the same. Each expert's score is made in a region of its own (`score` names its values
/// alike for every expert).
fn route_warp_top_k_held(b: &mut String, (m_l, m_k): (&str, &str), score: &str, held: usize) {
    for m in 0..held {
        b.push_str(&specialise(
            HELD_SCORE,
            &[
                ("m", &m),
                ("offset", &(WARP * m)),
                ("m_l", &m_l),
                ("score", &score),
            ],
        ));
    }
    b.push_str(HELD_PASSES);
    let (mut bv, mut bi, mut bs) = (
        "%ninf".to_string(),
        "%lane".to_string(),
        "%zero".to_string(),
    );
    for m in 0..held {
        b.push_str(&specialise(
            HELD_PICK,
            &[
                ("m", &m),
                ("offset", &(WARP * m)),
                ("bv", &bv),
                ("bi", &bi),
                ("bs", &bs),
            ],
        ));
        (bv, bi, bs) = (format!("%hbv{m}"), format!("%hbi{m}"), format!("%hbs{m}"));
    }
    let _ = writeln!(
        b,
        "          %bi32 = arith.index_cast {bi} : index to i32\n          %ww = arith.constant 32 : i32"
    );
    warp_best_and_mark(b, m_k, (&bv, "%bi32", &bs));
}

/// A warp's k passes over its token's experts: each lane finds its best expert not taken yet
/// (by choice, the first of equals), the warp the best of the lanes' (the greater choice, of
/// equals the lower expert: the serial scan's pick), and lane 0 writes it; the lane that
/// holds the chosen expert marks it taken. `score` computes %sc and %ch of expert %j from %v.
fn route_warp_top_k(b: &mut String, m_l: &str, m_k: &str, score: &str) {
    b.push_str(&specialise(
        ROUTE_WARP_TOP_K,
        &[("m_l", &m_l), ("score", &score.replace("\n", "\n  "))],
    ));
    warp_best_and_mark(b, m_k, ("%best#0", "%bi32", "%best#2"));
}

/// The rest of a warp's top-k pass (inside the pass loop, its lane's best choice value, expert
/// as i32 and score given): the warp's best by shuffles (the greater choice, of equals the
/// lower expert), written by lane 0, marked taken by the lane that holds it; the loop closed.
fn warp_best_and_mark(b: &mut String, m_k: &str, (v, i, sc): (&str, &str, &str)) {
    let (mut v, mut i, mut sc) = (v.to_string(), i.to_string(), sc.to_string());
    for (n, off) in [16, 8, 4, 2, 1].iter().enumerate() {
        b.push_str(&specialise(
            SHUFFLE_BEST,
            &[("n", &n), ("off", off), ("v", &v), ("i", &i), ("sc", &sc)],
        ));
        (v, i, sc) = (format!("%cv{n}"), format!("%ci{n}"), format!("%cs{n}"));
    }
    b.push_str(&specialise(
        MARK_TAKEN,
        &[("i", &i), ("sc", &sc), ("m_k", &m_k)],
    ));
}

/// GShard's capacity after the route kernel, as the CPU backend's route has it: `<name>_capacity`,
/// one thread per expert, walks the slots in slot order (every token's first choice before any
/// second choice) and zeroes the weight of its assignments past the first `capacity`;
/// `<name>_renorm`, one thread per token, then renormalises the kept weights (over at least
/// f32's epsilon) where the router does, and scales them. Each slot has one expert, so the
/// experts' threads write disjoint slots.
fn capacity_kernels(
    name: &str,
    t: usize,
    e: usize,
    k: usize,
    capacity: usize,
    renormalize: bool,
    factor: f32,
) -> String {
    let m_k = format!("memref<{}xf32>", t * k);
    let mut drop = String::new();
    prologue(&mut drop, e);
    drop.push_str(&specialise(
        CAPACITY_DROP,
        &[("k", &k), ("t", &t), ("capacity", &capacity), ("m_k", &m_k)],
    ));
    let mut renorm = String::new();
    prologue(&mut renorm, t);
    let div = if renormalize {
        "%den = arith.maximumf %sum, %eps : f32"
    } else {
        "%den = arith.addf %one, %zero : f32"
    };
    renorm.push_str(&specialise(
        RENORM,
        &[
            ("k", &k),
            ("eps", &hexf(f32::EPSILON)),
            ("factor", &hexf(factor)),
            ("m_k", &m_k),
            ("div", &div),
        ],
    ));
    let mut text = kernel(
        &format!("{name}_capacity"),
        &[m_k.clone(), m_k.clone()],
        &drop,
    );
    text.push_str(&kernel(&format!("{name}_renorm"), &[m_k], &renorm));
    text
}

/// DeepSeek-V3's group limit, into `%mask` (bit g set for a kept group): `topk_group` passes,
/// each keeping the best group not yet kept, a group's score the sum of its two best choices
/// (its best alone for groups of one); ties to the lower group, as the CPU backend's top-k.
/// `score` computes %sc and %ch of expert %j from %v.
fn group_mask(b: &mut String, m_l: &str, score: &str, size: usize, groups: usize, keep: usize) {
    let top = if size >= 2 {
        "%gs = arith.addf %top#0, %top#1 : f32"
    } else {
        "%gs = arith.addf %top#0, %zero : f32"
    };
    b.push_str(&specialise(
        GROUP_MASK,
        &[
            ("size", &size),
            ("groups", &groups),
            ("keep", &keep),
            ("m_l", &m_l),
            ("score", &score.replace("\n", "\n    ")),
            ("top", &top),
        ],
    ));
}
