//! The search for one layer from its router: every value after the router of the tokens'
//! size is a candidate output; its backward slice (cut at the tokens and the logits) is run
//! on two random trials, and each reading of its expert weights and routing is run on the same
//! trials; the first candidate a reading reproduces is the layer, and each later candidate the
//! same reading still reproduces extends it (a residual add or a cast after the layer's sum).

use super::anchor::{find_anchor, reshape_family, router_input, router_side, Anchor};
use super::{
    einsum_capacity, hints, largest_weight, region_tolerance, run_reading, weights_of, Found,
    Route, SCAN_LIMIT, TOLERANCE,
};
use crate::core::CoreProgram;
use crate::moe::expert_weights::{candidates, ActivationHints, Reading};
use crate::moe::region::{
    backward_slice, consumers, evaluate, forward_slice, live_ins, live_outs, producers, randn,
    rel_err,
};
use ppmoe_runtime::program::{BufferId, Program, Scoring};
use ppmoe_runtime::Tensor;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Tries to raise the layer whose router is instruction `i`; trial evaluation makes no tensor
/// over `limit` bytes.
pub(super) fn try_raise(
    core: &CoreProgram,
    i: usize,
    limit: usize,
) -> Result<Option<Found>, String> {
    let prog = &core.program;
    let weights: HashMap<&str, &Tensor> =
        core.weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let prod = producers(prog);
    let Some(anchor) = find_anchor(core, &prod, &weights, i) else {
        return Ok(None);
    };
    let s = Search::new(core, &weights, prod, anchor, i, limit)?;
    let mut found: Option<Found> = None;
    let mut why = Reason::default();
    let after = forward_slice(prog, &prog.instructions[i].outputs);
    let mut memo: [HashMap<BufferId, Tensor>; 2] = Default::default();
    for &j in after.iter().take(SCAN_LIMIT) {
        if j != i && found.is_some() && find_anchor(core, &s.prod, &weights, j).is_some() {
            break;
        }
        for &o in &prog.instructions[j].outputs {
            if !s.is_layer_sized(o) {
                continue;
            }
            let name = &prog.buffers[o].name;
            let region = match s.candidate(o) {
                Candidate::Unreached => continue,
                Candidate::Layer(region) => region,
                Candidate::NotClosed => {
                    let text = format!("the layer's values are read outside it or it reads values other than the tokens and logits (at '{name}')");
                    tracing::debug!("moe: candidate '{name}': {text}");
                    // A candidate that got further says more: keep its reason.
                    why.unless_specific(text);
                    continue;
                }
            };
            let refs = match s.references(&region.full, o, &mut memo) {
                Ok(refs) => refs,
                Err(e) => {
                    why.specific(format!(
                        "the candidate layer ending at '{name}' does not run on random routing: {e}"
                    ));
                    continue;
                }
            };
            let tolerance = region_tolerance(prog, &region.full);
            if let Some(prev) = &found {
                // A later value the same reading still reproduces ends the layer further on.
                if s.error(
                    &prev.route,
                    &prev.reading,
                    &prev.stacks,
                    &prev.biases,
                    &refs,
                ) < tolerance
                {
                    found = Some(Found {
                        output: o,
                        region: region.inner,
                        ..prev.clone()
                    });
                    continue;
                }
                return Ok(found);
            }
            match s.read(o, &region, &refs, tolerance) {
                Ok(f) => found = Some(f),
                Err(Miss::NoStacks(text)) => why.text = text,
                Err(Miss::NoReading(text)) => why.specific(text),
            }
        }
    }
    found.map(Some).ok_or(why.text)
}

/// Why no layer was found: the reason of the candidate that got furthest.
struct Reason {
    text: String,
    /// Whether `text` comes from a candidate that ran (its reason is the one to give).
    specific: bool,
}

impl Default for Reason {
    fn default() -> Self {
        Reason {
            text: "no value after the router matches an MoE layer".into(),
            specific: false,
        }
    }
}

impl Reason {
    fn unless_specific(&mut self, text: String) {
        if !self.specific {
            self.text = text;
        }
    }

    fn specific(&mut self, text: String) {
        tracing::debug!("moe: {text}");
        self.text = text;
        self.specific = true;
    }
}

/// A candidate layer that reads only the tokens and the logits and is read only through its
/// output: its backward slice, and that less the router values it keeps beside it.
struct Region {
    full: BTreeSet<usize>,
    inner: BTreeSet<usize>,
}

/// A value after the router, as a candidate layer's output.
enum Candidate {
    /// Its backward slice does not reach the router.
    Unreached,
    /// It reads, or is read by, something other than the tokens, the logits and its output.
    NotClosed,
    Layer(Region),
}

/// Why a candidate that ran is not the layer.
enum Miss {
    NoStacks(String),
    NoReading(String),
}

/// One router's search: the program, the tokens and logits, and the two random trials.
struct Search<'a> {
    core: &'a CoreProgram,
    prog: &'a Program,
    weights: &'a HashMap<&'a str, &'a Tensor>,
    prod: HashMap<BufferId, usize>,
    cons: HashMap<BufferId, Vec<usize>>,
    anchor: Anchor,
    /// The router: a candidate's slice must reach it.
    router: usize,
    limit: usize,
    /// Tokens, experts, hidden size.
    t: usize,
    e: usize,
    h: usize,
    /// The tokens in every shape, and where a candidate's backward slice stops.
    tokens: HashSet<BufferId>,
    cut: HashSet<BufferId>,
    x_trials: [Tensor; 2],
    l_trials: [Tensor; 2],
}

impl<'a> Search<'a> {
    fn new(
        core: &'a CoreProgram,
        weights: &'a HashMap<&'a str, &'a Tensor>,
        prod: HashMap<BufferId, usize>,
        anchor: Anchor,
        router: usize,
        limit: usize,
    ) -> Result<Self, String> {
        let prog = &core.program;
        let lb = &prog.buffers[anchor.logits];
        let [Some(t), Some(e)] = lb.shape[..] else {
            return Err(format!(
                "router logits '{}' are not a static [tokens, experts] matrix",
                lb.name
            ));
        };
        let x = router_input(core, &prod, anchor.logits).ok_or_else(|| {
            format!(
                "router logits '{}' are not a linear function of the tokens",
                lb.name
            )
        })?;
        let h = prog.buffers[x]
            .shape
            .last()
            .copied()
            .flatten()
            .ok_or("the tokens' hidden size is not static")?;
        check_trial_size(prog, x, (t, h, e), limit)?;
        let tokens = reshape_family(core, &prod, x);
        let mut cut = tokens.clone();
        cut.insert(anchor.logits);
        Ok(Search {
            core,
            prog,
            weights,
            cons: consumers(prog),
            prod,
            anchor,
            router,
            limit,
            t,
            e,
            h,
            tokens,
            cut,
            x_trials: [
                Tensor::f32(vec![t, h], randn(t * h, 11, 1.0)),
                Tensor::f32(vec![t, h], randn(t * h, 12, 2.0)),
            ],
            l_trials: [
                Tensor::f32(vec![t, e], randn(t * e, 13, 1.0)),
                Tensor::f32(vec![t, e], randn(t * e, 14, 3.0)),
            ],
        })
    }

    /// Trial `k`'s inputs: its tokens in each of their shapes, and its logits.
    fn trial_inputs(&self, k: usize) -> HashMap<BufferId, Tensor> {
        let mut m: HashMap<BufferId, Tensor> = self
            .tokens
            .iter()
            .map(|&b| {
                let shape: Vec<usize> = self.prog.buffers[b]
                    .shape
                    .iter()
                    .map(|d| d.unwrap_or(0))
                    .collect();
                let x = Tensor {
                    shape,
                    ..self.x_trials[k].clone()
                };
                (b, x)
            })
            .collect();
        m.insert(self.anchor.logits, self.l_trials[k].clone());
        m
    }

    /// Whether `o` could be a layer's output: a float of the tokens' static size.
    fn is_layer_sized(&self, o: BufferId) -> bool {
        let b = &self.prog.buffers[o];
        b.dtype.is_float()
            && b.shape.iter().all(Option::is_some)
            && b.shape.iter().map(|d| d.unwrap_or(0)).product::<usize>() == self.t * self.h
    }

    /// The candidate ending at `o`.
    fn candidate(&self, o: BufferId) -> Candidate {
        let prog = self.prog;
        let full = backward_slice(prog, &self.prod, o, &self.cut);
        if !full.contains(&self.router) {
            return Candidate::Unreached;
        }
        let ins_ok = live_ins(prog, &full).iter().all(|b| self.cut.contains(b));
        // Router values the model also returns (gpt-oss's block returns its routing scores,
        // others keep the logits for an auxiliary loss) are made from the logits alone:
        // their instructions stay as they are beside the raised layer.
        let Some(kept) = router_side(prog, &self.prod, &full, &self.cons, o, self.anchor.logits)
        else {
            return Candidate::NotClosed;
        };
        let kept_writes = |v: &BufferId| {
            kept.iter()
                .any(|&k| prog.instructions[k].outputs.contains(v))
        };
        let read_outside = live_outs(prog, &full, &self.cons)
            .iter()
            .any(|v| *v != o && !kept_writes(v));
        if !ins_ok || read_outside {
            return Candidate::NotClosed;
        }
        let inner = full.difference(&kept).copied().collect();
        Candidate::Layer(Region { full, inner })
    }

    /// The candidate's own results on the two trials.
    fn references(
        &self,
        full: &BTreeSet<usize>,
        o: BufferId,
        memo: &mut [HashMap<BufferId, Tensor>; 2],
    ) -> Result<Vec<Tensor>, String> {
        // A layer that gathers its experts' weights per routed slot makes tensors as large
        // as its largest weight on any number of tokens: the trial may go that far.
        let trial_limit = self
            .limit
            .max(largest_weight(self.prog, full, self.weights));
        memo.iter_mut()
            .enumerate()
            .map(|(k, memo)| {
                let inputs = self.trial_inputs(k);
                evaluate(self.prog, self.weights, full, &inputs, o, trial_limit, memo)
            })
            .collect()
    }

    /// The worst relative error of a reading over the trials (infinite if it fails).
    fn error(
        &self,
        route: &Route,
        r: &Reading,
        stacks: &[Tensor],
        biases: &[Tensor],
        refs: &[Tensor],
    ) -> f64 {
        (0..2)
            .map(|k| {
                run_reading(
                    route,
                    r,
                    stacks,
                    biases,
                    &self.x_trials[k],
                    &self.l_trials[k],
                )
                .map_or(f64::INFINITY, |y| rel_err(&y, &refs[k]))
            })
            .fold(0.0, f64::max)
    }

    /// The layer ending at `o`, where a reading of its weights and routing reproduces it
    /// within `tolerance`.
    fn read(
        &self,
        o: BufferId,
        region: &Region,
        refs: &[Tensor],
        tolerance: f64,
    ) -> Result<Found, Miss> {
        let (prog, e) = (self.prog, self.e);
        let name = &prog.buffers[o].name;
        let (stack_names, stacks): (Vec<String>, Vec<Tensor>) =
            weights_of(prog, &region.inner, self.weights, |t| {
                t.shape.len() == 3 && t.shape[0] == e
            })
            .into_iter()
            .unzip();
        let biases: Vec<Tensor> = weights_of(prog, &region.inner, self.weights, |t| {
            t.shape.len() == 2 && t.shape[0] == e && t.dtype.is_float()
        })
        .into_iter()
        .map(|(_, t)| t)
        .collect();
        if stacks.is_empty() {
            return Err(Miss::NoStacks(format!(
                "no expert weights (a weight of {e} stacked matrices) in the layer ending at '{name}'"
            )));
        }
        // The region's activation hints and scalar constants, gathered once.
        let hint = hints(self.core, &region.full, self.weights);
        let readings = candidates(&stacks, &biases, self.h, &hint);
        let capacity = einsum_capacity(prog, &region.full, self.t, e);
        let closest = self.closest(&readings, &stacks, &biases, refs, capacity, &hint);
        // The closest reading, where it is within the region's precision (a half-precision
        // layer rounds between its ops, so its readings can only be that close).
        match closest {
            Some((err, route, reading)) if err < tolerance => Ok(Found {
                output: o,
                region: region.inner.clone(),
                route,
                reading,
                stacks,
                stack_names,
                biases,
            }),
            _ => {
                let mut text = format!(
                    "the layer ending at '{}' ({} expert weight stacks {:?}) matches none of {} readings of its weights and routing",
                    name,
                    stacks.len(),
                    stacks.iter().map(|s| s.shape.clone()).collect::<Vec<_>>(),
                    readings.len() * self.anchor.scoring.len() * self.anchor.top_k.len() * 2
                );
                if let Some((err, ..)) = closest.filter(|c| c.0.is_finite()) {
                    text.push_str(&format!(
                        " (the closest is off by {err:.1e}, relative; {tolerance:.0e} is needed)"
                    ));
                }
                Err(Miss::NoReading(text))
            }
        }
    }

    /// The routes the anchor allows, each with every reading: the closest pair and its error
    /// (the search stops at one exact in f32: no other can be closer in any way that matters).
    fn closest(
        &self,
        readings: &[Reading],
        stacks: &[Tensor],
        biases: &[Tensor],
        refs: &[Tensor],
        capacity: usize,
        hint: &ActivationHints,
    ) -> Option<(f64, Route, Reading)> {
        let mut best: Option<(f64, Route, Reading)> = None;
        for route in self.routes(capacity, hint) {
            for r in readings {
                let e = self.error(&route, r, stacks, biases, refs);
                if best.as_ref().is_none_or(|b| e < b.0) {
                    best = Some((e, route.clone(), r.clone()));
                }
                if e < TOLERANCE {
                    return best;
                }
            }
        }
        best
    }

    /// Every routing the anchor allows, in the order they are tried: per scoring and k, with
    /// and without renormalisation; a biased sigmoid router (DeepSeek-V3) with its bias and
    /// groups and each of the region's scalar constants as its scaling factor; a sparsemixer
    /// with each of the region's positive scalars as its masking threshold.
    fn routes(&self, capacity: usize, hint: &ActivationHints) -> Vec<Route> {
        let (bias, n_group, topk_group) = match self.anchor.biased {
            Some((b, g, tg)) => {
                let name = self.prog.buffers[b].name.clone();
                let t = self.weights.get(name.as_str()).map(|t| (*t).clone());
                (t.map(|t| (name, t)), g, tg)
            }
            None => (None, 0, 0),
        };
        let mut scales = vec![1.0f32];
        if bias.is_some() {
            scales.extend(
                hint.scalars
                    .iter()
                    .copied()
                    .filter(|&v| v > 0.0 && v != 1.0),
            );
        }
        let thresholds: Vec<f32> = hint
            .scalars
            .iter()
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let mut routes = Vec::new();
        for &(scoring, order) in &self.anchor.scoring {
            let (renorms, masks): (&[bool], &[f32]) = if scoring == Scoring::Sparsemixer {
                (&[false], &thresholds)
            } else {
                (&[true, false], &[0.0])
            };
            for &top_k in &self.anchor.top_k {
                for &renormalize in renorms {
                    for &routed_scaling_factor in &scales {
                        for &mask_threshold in masks {
                            routes.push(Route {
                                scoring,
                                order,
                                renormalize,
                                top_k,
                                capacity,
                                n_group,
                                topk_group,
                                routed_scaling_factor,
                                mask_threshold,
                                bias: bias.clone(),
                            });
                        }
                    }
                }
            }
        }
        routes
    }
}

/// The trials make [t, h] tokens and [t, e] logits (a few tokens: small for any real layer;
/// a hostile size asked for a terabyte): bounded by the evaluation limit, or its default where
/// that is lower, since a raise must be able to make at least its own inputs; and the router's
/// input must hold h values per token.
fn check_trial_size(
    prog: &Program,
    x: BufferId,
    (t, h, e): (usize, usize, usize),
    limit: usize,
) -> Result<(), String> {
    let bound = limit.max(crate::core::DEFAULT_EVAL_LIMIT_BYTES);
    let fits = |n: usize| {
        t.checked_mul(n)
            .and_then(|c| c.checked_mul(4))
            .is_some_and(|b| b <= bound)
    };
    if !fits(h) || !fits(e) {
        return Err(format!(
            "trial inputs of {t} tokens x {h} hidden and {e} experts would exceed {bound} bytes, the compile-time evaluation limit"
        ));
    }
    let values = prog.buffers[x]
        .shape
        .iter()
        .map(|d| d.unwrap_or(0))
        .try_fold(1usize, |a, d| a.checked_mul(d));
    if values != Some(t * h) {
        return Err(format!(
            "the router reads {h} values per token for {t} tokens, which does not match its input"
        ));
    }
    Ok(())
}
