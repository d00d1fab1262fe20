//! `moe.route` with PhiMoE's sparsemixer scoring (see `Scoring::Sparsemixer`) as a generated
//! kernel: one thread per token, as the CPU backend's route computes it. For each of the two
//! choices: a scan for the first largest logit not chosen yet (m), then the sum of
//! exp(logit - m) over the candidates not masked out ((m - logit) / max(|logit|, m) not above
//! the threshold); the choice's weight is exp(0) over that sum, its softmax. The first choice
//! is no candidate of the second (its logit -inf there, as the exported graph scatters it).

use super::kernel_gen::{hexf, kernel, prologue};
use super::template::specialise;

/// One sparsemixer choice (`choice`).
const SPARSEMIXER_CHOICE: &str = include_str!("templates/sparsemixer_choice.mlir");
const SPARSEMIXER_CONSTANTS: &str = include_str!("templates/route/sparsemixer_constants.mlir");
const SPARSEMIXER_STORE: &str = include_str!("templates/route/sparsemixer_store.mlir");

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
    b.push_str(&specialise(
        SPARSEMIXER_CONSTANTS,
        &[("e", &e), ("threshold", &(hexf(threshold)))],
    ));
    choice(&mut b, "p1", "%none", &m_l);
    choice(&mut b, "p2", "%p1i", &m_l);
    for (slot, p) in [(0, "p1"), (1, "p2")] {
        b.push_str(&specialise(
            SPARSEMIXER_STORE,
            &[("p", &p), ("slot", &slot), ("m_k", &m_k)],
        ));
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
