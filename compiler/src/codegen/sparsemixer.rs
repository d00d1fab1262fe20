//! `moe.route` with PhiMoE's sparsemixer scoring (see `Scoring::Sparsemixer`) as a generated
//! kernel: one thread per token, as the CPU backend's route computes it. For each of the two
//! choices: a scan for the first largest logit not chosen yet (m), then the sum of
//! exp(logit - m) over the candidates not masked out ((m - logit) / max(|logit|, m) not above
//! the threshold); the choice's weight is exp(0) over that sum, its softmax. The first choice
//! is no candidate of the second (its logit -inf there, as the exported graph scatters it).

use super::kernel_gen::{hexf, kernel, prologue};
use super::template::specialise;
use std::fmt::Write as _;

/// One sparsemixer choice (`choice`).
const SPARSEMIXER_CHOICE: &str = include_str!("templates/sparsemixer_choice.mlir");

/// The kernel over `t` tokens of `e` logits each; its text, threads (one per token) and that
/// it has no capacity kernels (what `route_kernel` returns).
pub(super) fn route_kernel(
    name: &str,
    (t, e): (usize, usize),
    threshold: f32,
) -> (String, usize, bool) {
    let m_l = format!("memref<{}xf32>", t * e);
    let m_k = format!("memref<{}xf32>", t * 2);
    let mut b = String::new();
    let _ = writeln!(
        b,
        "        %e = arith.constant {e} : index\n        %c0 = arith.constant 0 : index\n        %c1 = arith.constant 1 : index\n        %none = arith.constant {e} : index\n        %base = arith.muli %i, %e : index\n        %c2 = arith.constant 2 : index\n        %obase = arith.muli %i, %c2 : index\n        %ninf = arith.constant 0xFF800000 : f32\n        %zero = arith.constant 0.0 : f32\n        %one = arith.constant 1.0 : f32\n        %true = arith.constant true\n        %l2e = arith.constant 1.44269504 : f32\n        %thr = arith.constant {} : f32",
        hexf(threshold)
    );
    choice(&mut b, "p1", "%none", &m_l);
    choice(&mut b, "p2", "%p1i", &m_l);
    for (slot, p) in [(0, "p1"), (1, "p2")] {
        let _ = writeln!(
            b,
            "        %{p}so = arith.addi %obase, %c{slot} : index\n        %{p}w = arith.divf %one, %{p}sum : f32\n        memref.store %{p}w, %a1[%{p}so] : {m_k}\n        %{p}i64 = arith.index_cast %{p}i : index to i64\n        %{p}if = arith.sitofp %{p}i64 : i64 to f32\n        memref.store %{p}if, %a2[%{p}so] : {m_k}"
        );
    }
    let mut body = String::new();
    prologue(&mut body, t);
    body.push_str(&b);
    let params = [m_l, m_k.clone(), m_k];
    (kernel(name, &params, &body), t, false)
}

/// One choice, `%{p}i` (the first largest logit but expert `skip`'s) and `%{p}sum` (the sum of
/// exp(logit - its logit) over the experts kept for its softmax, `skip` excluded).
fn choice(b: &mut String, p: &str, skip: &str, m_l: &str) {
    b.push_str(&specialise(
        SPARSEMIXER_CHOICE,
        &[("p", &p), ("m_l", &m_l), ("skip", &skip)],
    ));
}
