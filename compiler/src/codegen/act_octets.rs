//! The activation of an experts step over bf16 rows whose FFN width F is a multiple of eight
//! (`ppmoe_runtime::program::row_columns`): out[r, c] = act(hid[r, c] + b[e, c] (, hid[r, F +
//! c] + b[e, F + c])) for the row's expert e, one thread per eight activations of a row. The
//! eight gate values (and the eight up values) are one 16-byte load each and the eight
//! results one 16-byte store. The pairs kernel (4-byte words) took 0.295 ms for Mixtral-8x7B's
//! layer at 4096 tokens on an H200 (8192 rows: 705 MB read and written, about 55% of the copy
//! bandwidth). Each element's arithmetic is the pairs kernel's.

use super::experts_kernels::{add_bias, step_params, Kind};
use super::kernel_gen::dyn_kernel;
use super::template::specialise;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const ACT_OCTETS: &str = include_str!("templates/experts/act_octets.mlir");
const ACT_OCTETS_UP: &str = include_str!("templates/experts/act_octets_up.mlir");
const OCTET_COLUMN: &str = include_str!("templates/experts/octet_column.mlir");

/// Activations a thread computes.
const COLUMNS: usize = 8;

/// `{prefix}_act` over rows of `n` hidden columns (2F gated, else F) into rows of `f`
/// activations; `math` is `act_math` (`%g`, `%u` -> `%res`).
pub(super) fn kernel(prefix: &str, (f, n): (usize, usize), gated: bool, math: &str) -> String {
    debug_assert!(f.is_multiple_of(COLUMNS) && n.is_multiple_of(COLUMNS));
    let groups = f / COLUMNS;
    let mut a = String::new();
    a.push_str(&specialise(
        ACT_OCTETS,
        &[
            ("groups", &groups),
            ("row_words", &(n / COLUMNS)),
            ("n", &n),
            ("columns", &COLUMNS),
        ],
    ));
    if gated {
        a.push_str(&specialise(
            ACT_OCTETS_UP,
            &[("groups", &groups), ("f", &f)],
        ));
    }
    let _ = writeln!(a, "        %res0 = llvm.mlir.undef : vector<8xbf16>");
    for m in 0..COLUMNS {
        column(&mut a, m, gated, math);
    }
    let _ = writeln!(
        a,
        "        memref.store %res{COLUMNS}, %out[%i] : memref<?xvector<8xbf16>>"
    );
    dyn_kernel(
        &format!("{prefix}_act"),
        &step_params(Kind::Act, "vector<8xbf16>"),
        &format!("      %cgn = arith.constant {groups} : index\n      %n = arith.muli %rows, %cgn : index\n"),
        &a,
    )
}

/// Activation `m` of the thread's eight: its gate (and up) value with its bias, the
/// activation, rounded to bf16 into `%res{m + 1}`.
fn column(a: &mut String, m: usize, gated: bool, math: &str) {
    a.push_str(&specialise(OCTET_COLUMN, &[("m", &m)]));
    add_bias(a, &format!("%q{m}"), &format!("%g{m}h"), &format!("g{m}"));
    if gated {
        let _ = writeln!(
            a,
            "        %qu{m} = arith.addi %q{m}, %cf : index\n        %u{m}h = llvm.extractelement %ux[%l{m} : i32] : vector<8xf32>"
        );
        add_bias(a, &format!("%qu{m}"), &format!("%u{m}h"), &format!("u{m}"));
    }
    let operands = BTreeMap::from([("g", format!("%g{m}")), ("u", format!("%u{m}"))]);
    a.push_str(&super::pointwise::scoped(math, &format!("p{m}"), &operands));
    let _ = writeln!(
        a,
        "        %p{m}_b = arith.truncf %p{m}_res : f32 to bf16\n        %res{} = llvm.insertelement %p{m}_b, %res{m}[%l{m} : i32] : vector<8xbf16>",
        m + 1
    );
}

#[cfg(test)]
mod tests {
    /// Gated (Mixtral's SiLU): a thread's eight gate and eight up values two 16-byte loads,
    /// its eight activations one 16-byte store, each with its exponential and reciprocal.
    #[test]
    fn eight_activations_a_thread() {
        let math = crate::codegen::experts_kernels::silu_gated_math();
        let kernel = super::kernel("t", (64, 128), true, &math);
        let ptx = crate::codegen::ptx::kernel_ptx(&kernel);
        assert!(ptx.contains(".entry t_act"));
        assert_eq!(ptx.matches("ld.global.v4.b32").count(), 2, "{ptx}");
        assert_eq!(ptx.matches("st.global.v4.b32").count(), 1);
        assert_eq!(ptx.matches("ex2.approx.ftz.f32").count(), 8);
        assert_eq!(ptx.matches("rcp.approx.ftz.f32").count(), 8);
    }
}
