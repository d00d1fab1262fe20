//! An experts step's own kernels around its GEMMs: the gather of each slot's row, the
//! activation between the projections, and the weighted combine (f32, or bf16 rows two or
//! eight columns a thread); and, where the routing is on the device, the listed projections,
//! one token's two kernels and the device grouping. The activation's math is shared with
//! every projection that takes it as its epilogue (`act_math`, `silu_gated_math`).

use super::kernel_gen::{activation_expr, dyn_kernel, exp, hexf, static_shape};
use super::template::{specialise, specialise_at};
use ppmoe_runtime::program::{ExpertDims, Op, Program};
use std::fmt::Write;

const EXPERTS_GATHER: &str = include_str!("templates/experts_gather.mlir");

/// The experts' FFN as the kernels need it: from `moe.experts`, or from PPMoE's
/// `moe.expert_ffn`.
pub(super) struct Ffn {
    activation: ppmoe_runtime::program::Activation,
    alpha: f32,
    beta: f32,
    limit: Option<f32>,
    layout: ppmoe_runtime::program::ExpertLayout,
}

impl Ffn {
    pub(super) fn of(op: &Op) -> Option<Ffn> {
        match *op {
            Op::MoeExperts {
                activation,
                alpha,
                beta,
                limit,
                layout,
            }
            | Op::MoeExpertFfn {
                activation,
                alpha,
                beta,
                limit,
                layout,
            } => Some(Ffn {
                activation,
                alpha,
                beta,
                limit,
                layout,
            }),
            _ => None,
        }
    }
}

/// The buffers the experts kernels are specialised to: tokens x [T,H], routing weights [T,k],
/// the two expert stacks, and the routing's expert ids where the step may be routed on the
/// device (`decode_experts`).
pub(super) struct ExpertsOperands {
    pub x: usize,
    pub weights: usize,
    pub w_in: usize,
    pub w_out: usize,
    pub ids: Option<usize>,
    /// The first projection's bias, and the second's, where the step has them.
    pub b_in: Option<usize>,
    pub b_out: Option<usize>,
    /// Whether every reader of the step's output takes it as bf16 bits (a whole step's output,
    /// bf16 in the model and no result of the program: `bf16_read_inside`), so its combines
    /// may write bits.
    pub y_bits: bool,
    /// Whether the step is PPMoE's local step: a rank's slice of the experts, its output
    /// all-reduced after it (the all-reduce may overlap the device grouping).
    pub local: bool,
}

/// The three kernels of `moe.experts` on the GPU (see `GpuOp::Experts`), and whether the
/// rows, hidden activations and expert outputs between them are bf16 (both stacks bf16).
pub(super) fn experts_kernels(
    p: &Program,
    ffn: &Ffn,
    o: &ExpertsOperands,
    prefix: &str,
) -> Option<(String, bool)> {
    let shape = |b: usize| static_shape(&p.buffers[b]);
    let (x, w, w_in, w_out) = (
        shape(o.x)?,
        shape(o.weights)?,
        shape(o.w_in)?,
        shape(o.w_out)?,
    );
    let dims = ffn.layout.dims(&w_in, &w_out)?;
    let stack_bf16 = |b: usize| p.buffers[b].dtype == ppmoe_runtime::DType::BF16;
    let mid = Mid {
        bf16: stack_bf16(o.w_in) && stack_bf16(o.w_out),
    };
    let (t, h, k) = (x[0], x[1], w[1]);
    let mut out = String::new();
    gather_kernels(&mut out, prefix, h, mid);
    act_kernels(&mut out, prefix, ffn, (dims.ffn, dims.n), mid);
    combine_kernels(&mut out, prefix, (t, h, k), mid);
    if let Some(ids) = o.ids {
        let step = (ffn, dims, (t, h, k));
        device_routed_kernels(&mut out, p, o, ids, prefix, step, mid.bf16);
    }
    Some((out, mid.bf16))
}

/// The combine writing y as bf16 bits (`COMBINE_BITS_SUFFIX`), where the step's rows are bf16
/// (`bf16_rows`), H a multiple of eight and y bf16 in the model and no result of it
/// (`o.y_bits`): for a whole step whose output the next kernels read as bits (the runtime
/// decides that).
pub(super) fn combine_bits_kernel(
    p: &Program,
    o: &ExpertsOperands,
    prefix: &str,
    bf16_rows: bool,
) -> Option<String> {
    let shape = |b: usize| static_shape(&p.buffers[b]);
    let (x, w) = (shape(o.x)?, shape(o.weights)?);
    let (t, h, k) = (*x.first()?, *x.get(1)?, *w.get(1)?);
    let wanted = o.y_bits && ppmoe_runtime::program::row_columns(bf16_rows, h) == 8;
    let bits = super::combine_octets::Output::Bits;
    wanted.then(|| super::combine_octets::kernel(prefix, t, h, k, bits))
}

/// The element type between the experts' kernels and the GEMMs: a load widens it to f32, a
/// store narrows to it (round to nearest even), so the arithmetic stays f32.
#[derive(Clone, Copy)]
struct Mid {
    bf16: bool,
}

impl Mid {
    fn name(self) -> &'static str {
        if self.bf16 {
            "bf16"
        } else {
            "f32"
        }
    }

    fn load(self, dst: &str, mem: &str, idx: &str) -> String {
        if self.bf16 {
            format!("        %{dst}_b = memref.load %{mem}[%{idx}] : memref<?xbf16>\n        %{dst} = arith.extf %{dst}_b : bf16 to f32\n")
        } else {
            format!("        %{dst} = memref.load %{mem}[%{idx}] : memref<?xf32>\n")
        }
    }

    fn store(self, val: &str, mem: &str, idx: &str) -> String {
        if self.bf16 {
            format!("        %{val}_b = arith.truncf %{val} : f32 to bf16\n        memref.store %{val}_b, %{mem}[%{idx}] : memref<?xbf16>\n")
        } else {
            format!("        memref.store %{val}, %{mem}[%{idx}] : memref<?xf32>\n")
        }
    }
}

/// gather: out[i] = x[perm[i / H] * H + i % H] (eight or two columns a thread where bf16 rows
/// allow: x's bf16 copy read by 16-byte words, or pairs).
fn gather_kernels(out: &mut String, prefix: &str, h: usize, mid: Mid) {
    if ppmoe_runtime::program::bf16_octets(mid.bf16, h) {
        out.push_str(&super::gather_octets::kernel(prefix, h));
    }
    if ppmoe_runtime::program::bf16_pairs(mid.bf16, h) {
        out.push_str(&gather_pairs_kernel(prefix, h));
        return;
    }
    let g = specialise(
        EXPERTS_GATHER,
        &[("h", &h), ("store", &mid.store("v", "out", "i"))],
    );
    out.push_str(&dyn_kernel(
        &format!("{prefix}_gather"),
        &step_params(Kind::Gather, mid.name()),
        &format!(
            "      %hh = arith.constant {h} : index\n      %n = arith.muli %rows, %hh : index\n"
        ),
        &g,
    ));
}

/// act: a[r, q] from hid[r, q] (and hid[r, F + q]) plus the row's expert's bias; `n` is the
/// first projection's width (2F gated, F not).
fn act_kernels(out: &mut String, prefix: &str, ffn: &Ffn, (f, n): (usize, usize), mid: Mid) {
    let gated = ffn.activation.is_gated();
    let math = act_math(ffn);
    match ppmoe_runtime::program::row_columns(mid.bf16, f) {
        8 => return out.push_str(&super::act_octets::kernel(prefix, (f, n), gated, &math)),
        2 => return out.push_str(&act_pairs_kernel(prefix, f, n, gated, &math)),
        _ => {}
    }
    let mut a = specialise(ACT_SETUP, &[("f", &f), ("n", &n)]);
    let load = |a: &mut String, col: &str, out: &str| {
        let _ = writeln!(a, "        %{out}_o = arith.addi %rb, {col} : index");
        a.push_str(&mid.load(&format!("{out}_h"), "hid", &format!("{out}_o")));
        add_bias(a, col, &format!("%{out}_h"), out);
    };
    load(&mut a, "%q", "g");
    if gated {
        let _ = writeln!(a, "        %qf = arith.addi %q, %f : index");
        load(&mut a, "%qf", "u");
    }
    a.push_str(&math);
    a.push_str(&mid.store("res", "out", "i"));
    out.push_str(&dyn_kernel(
        &format!("{prefix}_act"),
        &step_params(Kind::Act, mid.name()),
        &format!(
            "      %ff = arith.constant {f} : index\n      %n = arith.muli %rows, %ff : index\n"
        ),
        &a,
    ));
}

/// The combine's body (one thread per output element; `load_o` reads the row's value).
const COMBINE: &str = include_str!("templates/combine.mlir");
/// The combine's body over bf16 rows, two columns a thread (`combine_pairs_kernel`).
const COMBINE_PAIRS: &str = include_str!("templates/combine_pairs.mlir");
const ACT_SETUP: &str = include_str!("templates/act_setup.mlir");
const ACT_PAIRS_SETUP: &str = include_str!("templates/act_pairs_setup.mlir");
const GATHER_PAIRS: &str = include_str!("templates/gather_pairs.mlir");
const BIAS: &str = include_str!("templates/experts/bias.mlir");
const CLAMP: &str = include_str!("templates/experts/clamp.mlir");
const ROUNDED_GATE_UP: &str = include_str!("templates/experts/rounded_gate_up.mlir");
const STORE_PAIR: &str = include_str!("templates/experts/store_pair.mlir");
const COLUMN_PAIR: &str = include_str!("templates/experts/column_pair.mlir");
const GATED_SILU: &str = include_str!("templates/experts/gated_silu.mlir");

/// combine: y[t, c] = sum_j w[t, j] * (out[pos[t, j], c] + b_out[eid[t, j], c]).
fn combine_kernels(out: &mut String, prefix: &str, (t, h, k): (usize, usize, usize), mid: Mid) {
    match ppmoe_runtime::program::row_columns(mid.bf16, h) {
        8 => {
            let y = super::combine_octets::Output::F32;
            return out.push_str(&super::combine_octets::kernel(prefix, t, h, k, y));
        }
        2 => return out.push_str(&combine_pairs_kernel(prefix, t, h, k)),
        _ => {}
    }
    let c = specialise(
        COMBINE,
        &[
            ("h", &h),
            ("k", &k),
            ("load_o", &mid.load("o", "out", "po")),
        ],
    );
    out.push_str(&dyn_kernel(
        &format!("{prefix}_combine"),
        &step_params(Kind::Combine, mid.name()),
        &format!("      %n = arith.constant {} : index\n", t * h),
        &c,
    ));
}

/// A step whose routing is on the device (`ids`): the listed projections (`decode_experts`),
/// one token's two-kernel form where it pays, and the device grouping for cuBLAS over
/// device-side pointers (rows, hidden activations and outputs of the stacks' own type: both
/// bf16, or both f32) where the matrices are small (`groups_on_device`).
fn device_routed_kernels(
    out: &mut String,
    p: &Program,
    o: &ExpertsOperands,
    ids: usize,
    prefix: &str,
    (ffn, dims, (t, h, k)): (&Ffn, ExpertDims, (usize, usize, usize)),
    bf16: bool,
) {
    let (f, n) = (dims.ffn, dims.n);
    let gated = ffn.activation.is_gated();
    let step = (dims, t, k);
    // A gated activation without a first bias can be the tensor-core projection's epilogue.
    let act = (gated && o.b_in.is_none()).then(|| act_math(ffn));
    let decode = super::decode_experts::kernels(p, o, ids, prefix, (ffn.layout, act), step, bf16);
    // A few tokens routed on the device, bf16 stacks, no biases: their two-kernel form too.
    // (A whole step's only: PPMoE's local step at one token has not run on two GPUs.)
    let token_kernels = decode.is_some()
        && bf16
        && super::few_tokens::wanted(t, k, dims.experts, h)
        && !o.local
        && o.b_in.is_none()
        && o.b_out.is_none()
        && n == if gated { 2 * f } else { f };
    out.push_str(&decode.unwrap_or_default());
    if token_kernels {
        let x_bf16 = p.buffers[o.x].dtype == ppmoe_runtime::DType::BF16;
        let dims = (h, f, k, dims.experts);
        let math = act_math(ffn);
        out.push_str(&super::few_tokens::kernels(
            prefix,
            dims,
            (&math, gated),
            (x_bf16, o.y_bits),
        ));
    }
    let stacks = p.buffers[o.w_in].dtype;
    let same = stacks == p.buffers[o.w_out].dtype;
    // fp16 stacks are held widened to f32 on the device (the runtime's weight upload).
    let bytes = match (bf16, stacks) {
        (true, _) => Some(2),
        (false, ppmoe_runtime::DType::F32 | ppmoe_runtime::DType::F16) => Some(4),
        _ => None,
    };
    // Large matrices are grouped on the host (`groups_on_device`).
    let small = |&b: &usize| ppmoe_runtime::program::groups_on_device(dims.first_matrix_bytes(b));
    if let (true, Some(bytes)) = (same, bytes.filter(small)) {
        let grouping = super::device_grouping::kernel(p, ids, prefix, (dims, t * k, k), bytes);
        out.push_str(&grouping.unwrap_or_default());
    }
}

/// An experts step's row kernels.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Gather,
    Act,
    Combine,
}

/// The parameters of an experts step's row kernel, its rows of element type `rows` (`bf16` or
/// `f32`; `i32` where two bf16 columns are one word): the same in every form of the kernel,
/// as the runtime passes them.
pub(super) fn step_params(kind: Kind, rows: &str) -> Vec<String> {
    let r = format!("memref<?x{rows}>");
    match kind {
        Kind::Gather => vec![
            "%x: memref<?xf32>".into(),
            "%perm: memref<?xi32>".into(),
            format!("%out: {r}"),
            "%rows: index".into(),
        ],
        Kind::Act => vec![
            format!("%hid: {r}"),
            "%bias: memref<?xf32>".into(),
            "%rexp: memref<?xi32>".into(),
            format!("%out: {r}"),
            "%rows: index".into(),
            "%has_bias: index".into(),
        ],
        Kind::Combine => vec![
            format!("%out: {r}"),
            "%pos: memref<?xi32>".into(),
            "%w: memref<?xf32>".into(),
            "%eid: memref<?xi32>".into(),
            "%bout: memref<?xf32>".into(),
            "%y: memref<?xf32>".into(),
            "%has_bias: index".into(),
        ],
    }
}

/// `%{out}` = `value` plus the row's expert's bias at column `col` (0 without a bias).
pub(super) fn add_bias(a: &mut String, col: &str, value: &str, out: &str) {
    a.push_str(&specialise(
        BIAS,
        &[("out", &out), ("col", &col), ("value", &value)],
    ));
}

/// The activation of one element, from `%g` (and `%u`, gated: the hidden values with their
/// biases) into `%res`; every other name is its own.
pub(super) fn act_math(ffn: &Ffn) -> String {
    use ppmoe_runtime::program::Activation;
    let Ffn {
        activation,
        alpha,
        beta,
        limit,
        ..
    } = ffn;
    let mut a = String::new();
    if !activation.is_gated() {
        activation_expr(&mut a, *activation, "%g", "res");
        return a;
    }
    let (gl, ul) = match limit {
        Some(l) => {
            a.push_str(&specialise(
                CLAMP,
                &[("limit", &(hexf(*l))), ("negative_limit", &(hexf(-l)))],
            ));
            ("%gl", "%ul")
        }
        None => ("%g", "%u"),
    };
    if *activation == Activation::Geglu {
        activation_expr(&mut a, Activation::Gelu, gl, "gate");
    } else {
        let _ = writeln!(a, "        %al = arith.constant {} : f32\n        %ag = arith.mulf %al, {gl} : f32\n        %nag = arith.negf %ag : f32", hexf(*alpha));
        exp(&mut a, "%nag", "ee");
        // g / (1 + e^-g) as g times the denominator's approximate reciprocal (within an ulp
        // of f32, as the ex2 before it): the correctly rounded division was a call with a
        // range check per element in the projections' epilogues.
        a.push_str(&specialise(GATED_SILU, &[("gl", &gl)]));
    }
    let _ = writeln!(a, "        %be = arith.constant {} : f32\n        %up = arith.addf {ul}, %be : f32\n        %res = arith.mulf %gate, %up : f32", hexf(*beta));
    a
}

/// `%{o}gv` and `%{o}uv`: a gate value `g` and its up value `u` (f32) rounded to bf16
/// (nearest even) and widened again, as PyTorch's bf16 projection stores them before the
/// activation; one `cvt.rn.bf16x2.f32` narrows both, the gate in the low half (the two
/// single narrowings were two F2F instructions in `pproj_act`'s SASS, 128 per thread and tile).
pub(super) fn rounded_gate_up(b: &mut String, o: &str, g: &str, u: &str, ind: &str) {
    b.push_str(&specialise_at(
        ROUNDED_GATE_UP,
        ind,
        &[("o", &o), ("u", &u), ("g", &g)],
    ));
}

/// `v` (f32) rounded to bf16 (nearest even, as a bf16 store), its bits in the low half of
/// the i32 `%{name}`.
fn bf16_bits(b: &mut String, v: &str, name: &str) {
    let _ = writeln!(
        b,
        "        %{name}_b = arith.truncf {v} : f32 to bf16\n        %{name}_i = arith.bitcast %{name}_b : bf16 to i16\n        %{name} = arith.extui %{name}_i : i16 to i32"
    );
}

/// The gather into bf16 rows of an even width `h` (`ppmoe_runtime::program::bf16_pairs`): one
/// thread per two columns, the two f32 values rounded to bf16 and stored as one 4-byte word
/// (the even column in its low half).
fn gather_pairs_kernel(prefix: &str, h: usize) -> String {
    let mut g = specialise(GATHER_PAIRS, &[("h", &h), ("hp", &(h / 2))]);
    bf16_bits(&mut g, "%v0", "w0");
    bf16_bits(&mut g, "%v1", "w1");
    g.push_str(STORE_PAIR);
    dyn_kernel(
        &format!("{prefix}_gather"),
        &step_params(Kind::Gather, "i32"),
        &format!(
            "      %hh = arith.constant {} : index\n      %n = arith.muli %rows, %hh : index\n",
            h / 2
        ),
        &g,
    )
}

/// The combine over bf16 rows of an even width `h` (`ppmoe_runtime::program::bf16_pairs`): one
/// thread per two columns of a token, each slot's two bf16 values read as one 4-byte word;
/// each column's sum is the scalar kernel's, term by term in slot order.
fn combine_pairs_kernel(prefix: &str, t: usize, h: usize, k: usize) -> String {
    let c = specialise(COMBINE_PAIRS, &[("h", &h), ("hp", &(h / 2)), ("k", &k)]);
    dyn_kernel(
        &format!("{prefix}_combine"),
        &step_params(Kind::Combine, "i32"),
        &format!("      %n = arith.constant {} : index\n", t * h / 2),
        &c,
    )
}

/// The activation kernel of bf16 rows with an even FFN width `f`
/// (`ppmoe_runtime::program::bf16_pairs`): one thread per two columns, each two bf16
/// values one 4-byte word (the scalar kernel's 2-byte accesses reach about a third of the
/// copy bandwidth). A word's low half is the even column: widened, a bf16 is its bits over
/// 16 zero bits; narrowed, the same round to nearest even as the scalar kernel's. `math` is
/// `act_math`, made each column's own.
fn act_pairs_kernel(prefix: &str, f: usize, n: usize, gated: bool, math: &str) -> String {
    let half = f / 2;
    let mut a = specialise(ACT_PAIRS_SETUP, &[("half", &half), ("f", &f), ("n", &n)]);
    // The two columns of the gate (and of the up projection, F further on), with biases.
    let pair = |a: &mut String, col: &str, name: &str| {
        a.push_str(&specialise(COLUMN_PAIR, &[("name", &name), ("col", &col)]));
        add_bias(a, col, &format!("%{name}_h0"), &format!("{name}0"));
        add_bias(
            a,
            &format!("%{name}_c1"),
            &format!("%{name}_h1"),
            &format!("{name}1"),
        );
    };
    pair(&mut a, "%q", "g");
    if gated {
        let _ = writeln!(a, "        %qf = arith.addi %q, %f : index");
        pair(&mut a, "%qf", "u");
    }
    for j in 0..2 {
        let operands =
            std::collections::BTreeMap::from([("g", format!("%g{j}")), ("u", format!("%u{j}"))]);
        a.push_str(&super::pointwise::scoped(math, &format!("p{j}"), &operands));
        bf16_bits(&mut a, &format!("%p{j}_res"), &format!("r{j}w"));
    }
    let _ = writeln!(
        a,
        "        %hiw = arith.shli %r1w, %s16 : i32\n        %word = arith.ori %r0w, %hiw : i32\n        memref.store %word, %out[%i] : memref<?xi32>"
    );
    dyn_kernel(
        &format!("{prefix}_act"),
        &step_params(Kind::Act, "i32"),
        &format!(
            "      %ff = arith.constant {half} : index\n      %n = arith.muli %rows, %ff : index\n"
        ),
        &a,
    )
}

/// The pairs combine of a 66-column bf16 row (the fixtures' rows, of 64, take eight columns a
/// thread): for the template test.
#[cfg(test)]
pub(super) fn combine_pairs_for_test() -> String {
    combine_pairs_kernel("k0_experts", 4, 66, 2)
}

/// Mixtral's and Qwen's SiLU-gated activation as `act_math` writes it (for the projections'
/// tests).
#[cfg(test)]
pub(super) fn silu_gated_math() -> String {
    act_math(&Ffn {
        activation: ppmoe_runtime::program::Activation::Swiglu,
        alpha: 1.0,
        beta: 0.0,
        limit: None,
        layout: ppmoe_runtime::program::ExpertLayout::Linear,
    })
}
