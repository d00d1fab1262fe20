//! An e-graph of each MoE layer's equivalent implementations (egg). A layer is one e-class:
//! `(layer L0)` is made equal to `(ppmoe L0)`, `(alltoall L0)`, `(ag-rs L0)` and
//! `(replicated L0)` by rewrites (the ones the caller allows); the analysis carries each
//! layer's shape; extraction picks the cheapest implementation under the cost model.

use super::cost_model::{layer_time, Choice, Hardware, LayerShape};
use egg::{
    define_language, rewrite, Analysis, CostFunction, DidMerge, EGraph, Extractor, Id, Language,
    RecExpr, Rewrite, Runner, Symbol,
};
use std::collections::HashMap;

define_language! {
    pub enum MoeImpl {
        "layer" = Layer([Id; 1]),
        "ppmoe" = Ppmoe([Id; 1]),
        "alltoall" = AllToAll([Id; 1]),
        "ag-rs" = AgRs([Id; 1]),
        "replicated" = Replicated([Id; 1]),
        Shape(Symbol),
    }
}

/// The analysis: the shape of the layer a leaf names.
#[derive(Default)]
pub struct Shapes {
    pub table: HashMap<Symbol, LayerShape>,
}

impl Analysis<MoeImpl> for Shapes {
    type Data = Option<LayerShape>;

    fn make(egraph: &mut EGraph<MoeImpl, Self>, enode: &MoeImpl, _id: Id) -> Self::Data {
        match enode {
            MoeImpl::Shape(s) => egraph.analysis.table.get(s).copied(),
            other => other.children().first().and_then(|&c| egraph[c].data),
        }
    }

    fn merge(&mut self, a: &mut Self::Data, b: Self::Data) -> DidMerge {
        egg::merge_option(a, b, |x, y| {
            debug_assert_eq!(*x, y, "one layer, one shape");
            DidMerge(false, false)
        })
    }
}

struct Time<'a> {
    egraph: &'a EGraph<MoeImpl, Shapes>,
    tp: usize,
    hw: Hardware,
}

impl CostFunction<MoeImpl> for Time<'_> {
    type Cost = f64;

    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &MoeImpl, _costs: C) -> f64 {
        let shape = |id: &Id| self.egraph[*id].data;
        let time = |c: Choice, id: &Id| {
            shape(id).map_or(f64::INFINITY, |s| layer_time(&s, c, self.tp, &self.hw))
        };
        match enode {
            // The abstract layer is not an implementation: only its equals are.
            MoeImpl::Layer(_) => f64::INFINITY,
            MoeImpl::Ppmoe([c]) => time(Choice::Ppmoe, c),
            MoeImpl::AllToAll([c]) => time(Choice::AllToAll, c),
            MoeImpl::AgRs([c]) => time(Choice::AllGatherReduceScatter, c),
            MoeImpl::Replicated([c]) => time(Choice::Replicated, c),
            MoeImpl::Shape(_) => 0.0,
        }
    }
}

fn rules(allowed: &[Choice]) -> Vec<Rewrite<MoeImpl, Shapes>> {
    allowed
        .iter()
        .map(|c| match c {
            Choice::Ppmoe => rewrite!("ppmoe"; "(layer ?s)" => "(ppmoe ?s)"),
            Choice::AllToAll => rewrite!("alltoall"; "(layer ?s)" => "(alltoall ?s)"),
            Choice::AllGatherReduceScatter => rewrite!("ag-rs"; "(layer ?s)" => "(ag-rs ?s)"),
            Choice::Replicated => rewrite!("replicated"; "(layer ?s)" => "(replicated ?s)"),
        })
        .collect()
}

/// The cheapest allowed implementation of each layer, with its predicted time.
pub fn choose(
    layers: &[LayerShape],
    tp: usize,
    hw: Hardware,
    allowed: &[Choice],
) -> Vec<(Choice, f64)> {
    let mut shapes = Shapes::default();
    let mut exprs = Vec::new();
    for (i, s) in layers.iter().enumerate() {
        let name = Symbol::from(format!("L{i}"));
        shapes.table.insert(name, *s);
        let mut e = RecExpr::default();
        let leaf = e.add(MoeImpl::Shape(name));
        e.add(MoeImpl::Layer([leaf]));
        exprs.push(e);
    }
    let mut runner = Runner::<MoeImpl, Shapes>::new(shapes);
    for e in &exprs {
        runner = runner.with_expr(e);
    }
    let runner = runner.run(&rules(allowed));
    let extractor = Extractor::new(
        &runner.egraph,
        Time {
            egraph: &runner.egraph,
            tp,
            hw,
        },
    );
    runner
        .roots
        .iter()
        .map(|&root| {
            let (cost, best) = extractor.find_best(root);
            let choice = match best.as_ref().last() {
                Some(MoeImpl::Ppmoe(_)) => Choice::Ppmoe,
                Some(MoeImpl::AllToAll(_)) => Choice::AllToAll,
                Some(MoeImpl::AgRs(_)) => Choice::AllGatherReduceScatter,
                _ => Choice::Replicated,
            };
            (choice, cost)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mixtral(tokens: usize) -> LayerShape {
        LayerShape {
            tokens,
            hidden: 4096,
            ffn: 14336,
            experts: 8,
            top_k: 2,
            gated: true,
        }
    }

    #[test]
    fn extraction_prefers_ppmoe_inside_a_node_and_respects_the_allowed_set() {
        let hw = Hardware::default();
        let picks = choose(&[mixtral(4096), mixtral(16384)], 8, hw, &Choice::ALL);
        assert_eq!(picks.len(), 2);
        for (c, t) in &picks {
            let best = Choice::ALL
                .iter()
                .map(|&x| layer_time(&mixtral(4096), x, 8, &hw))
                .fold(f64::INFINITY, f64::min);
            assert!(*t >= best * 0.999, "extraction returns a real minimum");
            assert_eq!(*c, Choice::Ppmoe);
        }
        // Only all-to-all allowed: it is what comes out.
        let only = choose(&[mixtral(4096)], 8, hw, &[Choice::AllToAll]);
        assert_eq!(only[0].0, Choice::AllToAll);
        assert!((only[0].1 - layer_time(&mixtral(4096), Choice::AllToAll, 8, &hw)).abs() < 1e-12);
    }
}
