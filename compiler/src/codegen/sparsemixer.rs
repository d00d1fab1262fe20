//! `moe.route` with PhiMoE's sparsemixer scoring (see `Scoring::Sparsemixer`) as a generated
//! kernel: one thread per token, as the CPU backend's route computes it. For each of the two
//! choices: a scan for the first largest logit not chosen yet (m), then the sum of
//! exp(logit - m) over the candidates not masked out ((m - logit) / max(|logit|, m) not above
//! the threshold); the choice's weight is exp(0) over that sum, its softmax. The first choice
//! is no candidate of the second (its logit -inf there, as the exported graph scatters it).

use super::kernel_gen::{hexf, kernel, prologue};
use std::fmt::Write as _;

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
    let _ = writeln!(
        b,
        "        %{p}best:2 = scf.for %j = %c0 to %e step %c1 iter_args(%bv = %ninf, %bi = %c0) -> (f32, index) {{\n          %o = arith.addi %base, %j : index\n          %v = memref.load %a0[%o] : {m_l}\n          %other = arith.cmpi ne, %j, {skip} : index\n          %over = arith.cmpf ogt, %v, %bv : f32\n          %take = arith.andi %other, %over : i1\n          %nbv = arith.select %take, %v, %bv : f32\n          %nbi = arith.select %take, %j, %bi : index\n          scf.yield %nbv, %nbi : f32, index\n        }}\n        %{p}m = arith.addf %{p}best#0, %zero : f32\n        %{p}i = arith.addi %{p}best#1, %c0 : index\n        %{p}sum = scf.for %j = %c0 to %e step %c1 iter_args(%a = %zero) -> (f32) {{\n          %o = arith.addi %base, %j : index\n          %v = memref.load %a0[%o] : {m_l}\n          %other = arith.cmpi ne, %j, {skip} : index\n          %nv = arith.negf %v : f32\n          %av = arith.maximumf %v, %nv : f32\n          %den = arith.maximumf %av, %{p}m : f32\n          %gap = arith.subf %{p}m, %v : f32\n          %rel = arith.divf %gap, %den : f32\n          %far = arith.cmpf ogt, %rel, %thr : f32\n          %near = arith.xori %far, %true : i1\n          %keep = arith.andi %other, %near : i1\n          %d = arith.subf %v, %{p}m : f32\n          %dm = arith.mulf %d, %l2e : f32\n          %x = llvm.call_intrinsic \"llvm.nvvm.ex2.approx.ftz.f\"(%dm) : (f32) -> f32\n          %xk = arith.select %keep, %x, %zero : f32\n          %na = arith.addf %a, %xk : f32\n          scf.yield %na : f32\n        }}"
    );
}
