//! A few tokens' experts in two kernels (`TOKEN_KERNELS`): the slots indexed as the route left
//! them, so nothing is listed, and the activation and the combine are the projections'
//! epilogues. Where the tokens' slots are at most one per expert on average
//! (`token_kernels_take`), listing them per expert (`dgroup`) buys little, and the activation
//! and combine kernels were two more launches in a chain of kernels each too short to hide its
//! start (Qwen3-30B-A3B's layer at one token was 7 kernels in 0.051 ms on an H200, where its
//! weights take 0.018 to read). A slot reads its expert's weights itself; two slots of one
//! expert read the same rows at about the same time (the slots are the blocks' fastest index),
//! so the second read is the L2's.
//! - `{prefix}_dtok_in` (x f32) or `_dtok_in_bf16` (x's bf16 bits): a block per (slot, 16
//!   activation columns); a slot not this rank's or of weight 0 returns at once. Each warp
//!   computes two activation columns of its slot's token: the gate row and the up row of each
//!   (gated; the one row otherwise) along the inner dimension, a lane reading a 16-byte word of
//!   each row and of x per round (two rounds' loads issued before their multiply-adds), the
//!   lanes' sums folded by shuffles; lane 0 rounds gate and up as the projection's bf16 store
//!   would, applies the activation and writes the activation ([T k, F], `mid`).
//! - `{prefix}_dtok_out`: a block per (token, a few output columns), a warp per (slot, 4 of
//!   them): the slot's activation row times its expert's four weight rows, read as the first
//!   kernel reads x and its rows; each output rounded as the projection's store would and
//!   times the slot's weight into shared memory; then a thread per column adds its slots' in
//!   their order, as the combine does, and writes y ([T, H], f32).
//! - `{prefix}_dtok_out_bits` (`TOKEN_OUT_BITS`), where every reader of y takes bf16 bits: the
//!   same, each sum rounded to bf16 (to nearest even: the bits narrowing the f32 y gives), so
//!   the step writes no f32 y for its readers to narrow.
//!
//! Generated for a whole step (not PPMoE's local one) of bf16 stacks in the `Linear` layout
//! with no biases, both dimensions whole 16-byte words, where `token_kernels_take`; the listed
//! kernels are generated beside them (the runtime falls back to those where x is not 16-byte
//! aligned, or under `PPMOE_SINGLE_TOKEN=0`).

use super::experts_kernels::rounded_gate_up;
use super::kernel_gen::{warp_reduce, WARP};
use ppmoe_runtime::program::{
    token_out_columns, TOKEN_IN_COLUMNS, TOKEN_KERNELS, TOKEN_OUT_BITS, TOKEN_OUT_WARP_COLUMNS,
    TOKEN_THREADS,
};
use std::fmt::Write as _;

/// The two (to four) kernels for `experts` local experts of `hidden` x `ffn`, `k` slots a
/// token, the activation's math (`act_math`: `%g` (and `%u`) -> `%res`), gated or not; the
/// first reading x's bf16 bits too where `x_bf16`, the second writing y's too where `y_bits`.
pub(super) fn kernels(
    prefix: &str,
    (hidden, ffn, k, experts): (usize, usize, usize, usize),
    (act, gated): (&str, bool),
    (x_bf16, y_bits): (bool, bool),
) -> String {
    let first = |name: &str, src: Source| {
        First {
            name: format!("{prefix}_{name}"),
            src,
            hidden,
            ffn,
            k,
            gated,
            experts,
        }
        .kernel(act)
    };
    let mut out = first(TOKEN_KERNELS[0], Source::F32);
    if x_bf16 {
        out.push_str(&first(TOKEN_KERNELS[1], Source::Bf16));
    }
    let dims = (hidden, ffn, k, experts);
    out.push_str(&second(
        &format!("{prefix}_{}", TOKEN_KERNELS[2]),
        dims,
        Y::F32,
    ));
    if y_bits {
        out.push_str(&second(
            &format!("{prefix}_{TOKEN_OUT_BITS}"),
            dims,
            Y::Bits,
        ));
    }
    out
}

/// What the second kernel writes y as.
#[derive(Clone, Copy, PartialEq)]
enum Y {
    F32,
    /// bf16 bits, each sum rounded to nearest even (what narrowing the f32 y gives).
    Bits,
}

impl Y {
    fn element(self) -> &'static str {
        match self {
            Y::F32 => "f32",
            Y::Bits => "bf16",
        }
    }
}

/// Whether a step of `tokens` tokens, `k` slots each over `experts` experts of `hidden`
/// columns, has the token kernels: where `token_kernels_take` says, unless
/// `PPMOE_TOKEN_KERNELS` at compile time says (a measurement aid): `0` never, `1` at any
/// token count (another value is warned about and leaves the policy). Never past a block's
/// warps of slots (`token_out_columns`), which the second kernel's blocks cannot hold.
pub(super) fn wanted(tokens: usize, k: usize, experts: usize, hidden: usize) -> bool {
    token_out_columns(k).is_some()
        && super::switch::switch("PPMOE_TOKEN_KERNELS", || {
            ppmoe_runtime::program::token_kernels_take(tokens, k, experts, hidden)
        })
}

/// How the first kernel reads x.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// f32, each element rounded to bf16 first, as the host-grouped path narrows a bf16
    /// GEMM's activations.
    F32,
    /// bf16 bits.
    Bf16,
}

/// Elements of a 16-byte word of bf16 weights or activations.
const PER: usize = 8;

/// The first kernel.
struct First {
    name: String,
    src: Source,
    hidden: usize,
    ffn: usize,
    /// Slots per token.
    k: usize,
    gated: bool,
    experts: usize,
}

/// Activation columns per warp in the first kernel.
const ACT_PER_WARP: usize = TOKEN_IN_COLUMNS / (TOKEN_THREADS / WARP);
/// Rounds of loads issued together in either kernel (four weight rows a round).
const ROUND_UNROLL: usize = 2;

impl First {
    fn kernel(&self, act: &str) -> String {
        let (h, f) = (self.hidden, self.ffn);
        let n = if self.gated { 2 * f } else { f };
        let words = h / PER;
        let mut b = String::new();
        let _ = writeln!(
            b,
            "      %s = gpu.block_id x\n      %nb = gpu.block_id y\n      %tid = gpu.thread_id x\n      %c32 = arith.constant 32 : index\n      %warp = arith.divui %tid, %c32 : index\n      %lane = arith.remui %tid, %c32 : index\n      %zero = arith.constant 0.0 : f32\n      %kneg0 = arith.constant -0.0 : f32"
        );
        // x's row: the slot's token's (its first word).
        let x_words = match self.src {
            Source::Bf16 => words,
            Source::F32 => 2 * words,
        };
        let _ = writeln!(
            b,
            "      %ck = arith.constant {} : index\n      %tok = arith.divui %s, %ck : index\n      %cxw = arith.constant {x_words} : index\n      %xo = arith.muli %tok, %cxw : index",
            self.k
        );
        slot_check(&mut b, ("%s", self.experts), "", "      ");
        let _ = writeln!(
            b,
            "      scf.if %ok {{\n        %e = arith.index_cast %loc : i64 to index\n        %cN = arith.constant {n} : index\n        %cF = arith.constant {f} : index\n        %cW = arith.constant {words} : index\n        %eN = arith.muli %e, %cN : index\n        %cbc = arith.constant {TOKEN_IN_COLUMNS} : index\n        %cpw = arith.constant {ACT_PER_WARP} : index\n        %b0 = arith.muli %nb, %cbc : index\n        %w0 = arith.muli %warp, %cpw : index\n        %abase = arith.addi %b0, %w0 : index\n        %flast = arith.constant {} : index",
            f - 1
        );
        // Weight rows: per activation column j, its gate row (and its up row F after it),
        // clamped to the last column past the end (read, never stored).
        let mut rows = Vec::new();
        for j in 0..ACT_PER_WARP {
            let _ = writeln!(
                b,
                "        %cj{j} = arith.constant {j} : index\n        %a{j} = arith.addi %abase, %cj{j} : index\n        %ac{j} = arith.minui %a{j}, %flast : index\n        %gr{j} = arith.addi %eN, %ac{j} : index\n        %gb{j} = arith.muli %gr{j}, %cW : index"
            );
            rows.push(format!("%gb{j}"));
            if self.gated {
                let _ = writeln!(
                    b,
                    "        %ur{j} = arith.addi %gr{j}, %cF : index\n        %ub{j} = arith.muli %ur{j}, %cW : index"
                );
                rows.push(format!("%ub{j}"));
            }
        }
        let x = |b: &mut String, q: &str, tag: &str| self.load_x(b, q, tag);
        let totals = dot_rows(&mut b, Dot { rows: &rows, words }, &x);
        let _ = writeln!(
            b,
            "        %c0 = arith.constant 0 : index\n        %lane0 = arith.cmpi eq, %lane, %c0 : index\n        %sF = arith.muli %s, %cF : index"
        );
        let per_col = if self.gated { 2 } else { 1 };
        for j in 0..ACT_PER_WARP {
            let (g, u) = (&totals[j * per_col], totals.get(j * per_col + 1));
            let _ = writeln!(
                b,
                "        %cf{j} = arith.constant {f} : index\n        %in{j} = arith.cmpi ult, %a{j}, %cf{j} : index\n        %st{j} = arith.andi %lane0, %in{j} : i1\n        scf.if %st{j} {{"
            );
            // The projection's outputs as its bf16 store would round them, then the math.
            match u {
                Some(u) => {
                    rounded_gate_up(&mut b, "r", g, u, "          ");
                    b.push_str("          %g = arith.addf %rgv, %kneg0 : f32\n          %u = arith.addf %ruv, %kneg0 : f32\n");
                }
                None => {
                    let _ = writeln!(b, "          %gn = arith.truncf {g} : f32 to bf16\n          %g = arith.extf %gn : bf16 to f32");
                }
            }
            b.push_str(act);
            let _ = writeln!(b, "          %o = arith.addi %sF, %a{j} : index");
            b.push_str("          %rb = arith.truncf %res : f32 to bf16\n          memref.store %rb, %dst[%o] : memref<?xbf16>\n");
            b.push_str("        }\n");
        }
        b.push_str("      }\n");
        let params = [
            "%src: memref<?xvector<4xi32>>",
            "%wt: memref<?xvector<4xi32>>",
            "%ids: memref<?xf32>",
            "%w: memref<?xf32>",
            "%dst: memref<?xbf16>",
            "%first: index",
        ];
        format!(
            "    gpu.func @{}({}) kernel {{\n{b}      gpu.return\n    }}\n",
            self.name,
            params.join(", ")
        )
    }

    /// x's `per` elements of word `q` (of the weight rows) as f32 values `%x{tag}_{u}`.
    fn load_x(&self, b: &mut String, q: &str, tag: &str) {
        if self.src == Source::Bf16 {
            let _ = writeln!(
                b,
                "          %xq{tag} = arith.addi {q}, %xo : index\n          %xw{tag} = memref.load %src[%xq{tag}] : memref<?xvector<4xi32>>"
            );
            unpack(b, &format!("%xw{tag}"), &format!("x{tag}"), PER);
            return;
        }
        // Eight f32 elements: two words.
        for half in 0..2 {
            let _ = writeln!(
                b,
                "          %xq{tag}_{half}c = arith.constant {half} : index\n          %xq{tag}_{half}0 = arith.muli {q}, %c2x : index\n          %xq{tag}_{half}1 = arith.addi %xq{tag}_{half}0, %xo : index\n          %xq{tag}_{half} = arith.addi %xq{tag}_{half}1, %xq{tag}_{half}c : index\n          %xw{tag}_{half} = memref.load %src[%xq{tag}_{half}] : memref<?xvector<4xi32>>"
            );
            unpack(
                b,
                &format!("%xw{tag}_{half}"),
                &format!("xf{tag}_{half}"),
                4,
            );
            for m in 0..4 {
                let u = half * 4 + m;
                let _ = writeln!(
                    b,
                    "          %xn{tag}_{u} = arith.truncf %xf{tag}_{half}_{m} : f32 to bf16\n          %x{tag}_{u} = arith.extf %xn{tag}_{u} : bf16 to f32"
                );
            }
        }
    }
}

/// The second kernel (see the module's comment): a block per (token, `token_out_columns(k)`
/// output columns), a warp per (slot, `TOKEN_OUT_WARP_COLUMNS` of them): the slot's expert's
/// weight rows times its activation row (each lane's word of it shared by the rows, as the
/// first kernel shares x), so a warp's rounds are the first kernel's (four rows, two rounds'
/// loads issued together; where a warp took one column of every slot, its registers held
/// every slot's loads and a multiprocessor took three blocks: 2.3 TB/s at Qwen3-30B-A3B's 8
/// tokens on an H200, session 41). A slot not this rank's or of weight 0 reads expert 0's
/// rows and adds 0. Lane 0 puts each column's output, rounded as the projection's store
/// would and times the slot's weight, in shared memory; after a barrier a thread per column
/// adds the slots' in their order, as the combine does, and writes y (as `y` says).
fn second(name: &str, (hidden, ffn, k, experts): (usize, usize, usize, usize), y: Y) -> String {
    let words = ffn / PER;
    let c = TOKEN_OUT_WARP_COLUMNS;
    let block_columns = token_out_columns(k).unwrap_or(c);
    let groups = block_columns / c;
    let parts = block_columns * k;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "      %tok = gpu.block_id x\n      %nb = gpu.block_id y\n      %tid = gpu.thread_id x\n      %c32 = arith.constant 32 : index\n      %c0 = arith.constant 0 : index\n      %warp = arith.divui %tid, %c32 : index\n      %lane = arith.remui %tid, %c32 : index\n      %zero = arith.constant 0.0 : f32\n      %ck = arith.constant {k} : index\n      %j = arith.remui %warp, %ck : index\n      %g = arith.divui %warp, %ck : index\n      %cG = arith.constant {groups} : index\n      %active = arith.cmpi ult, %g, %cG : index\n      %cbc = arith.constant {block_columns} : index\n      %b0 = arith.muli %nb, %cbc : index\n      %cC = arith.constant {c} : index\n      %gc = arith.muli %g, %cC : index\n      %cbase = arith.addi %b0, %gc : index\n      %hlast = arith.constant {} : index\n      %cH = arith.constant {hidden} : index\n      %cW = arith.constant {words} : index\n      %z64 = arith.constant 0 : i64\n      %tk = arith.muli %tok, %ck : index\n      %sj = arith.addi %tk, %j : index",
        hidden - 1
    );
    let _ = writeln!(b, "      scf.if %active {{");
    slot_check(&mut b, ("%sj", experts), "", "        ");
    let _ = writeln!(
        b,
        "        %lk = arith.select %ok, %loc, %z64 : i64\n        %e = arith.index_cast %lk : i64 to index\n        %eH = arith.muli %e, %cH : index\n        %ab = arith.muli %sj, %cW : index"
    );
    // The warp's weight rows: its columns', clamped to the last past the end (read, never
    // stored).
    let mut rows = Vec::with_capacity(c);
    for r in 0..c {
        let _ = writeln!(
            b,
            "        %cr{r} = arith.constant {r} : index\n        %col{r}u = arith.addi %cbase, %cr{r} : index\n        %col{r} = arith.minui %col{r}u, %hlast : index\n        %wr{r} = arith.addi %eH, %col{r} : index\n        %wb{r} = arith.muli %wr{r}, %cW : index"
        );
        rows.push(format!("%wb{r}"));
    }
    let act = |b: &mut String, q: &str, tag: &str| {
        let _ = writeln!(
            b,
            "          %aq{tag} = arith.addi {q}, %ab : index\n          %aw{tag} = memref.load %act[%aq{tag}] : memref<?xvector<4xi32>>"
        );
        unpack(b, &format!("%aw{tag}"), &format!("x{tag}"), PER);
    };
    let totals = dot_rows(&mut b, Dot { rows: &rows, words }, &act);
    // Lane 0: each column's output as the projection's store rounds it, times the slot's
    // weight (0 for a slot left out), at part ((g C + r) k + j).
    let _ = writeln!(
        b,
        "        %lane0 = arith.cmpi eq, %lane, %c0 : index\n        scf.if %lane0 {{"
    );
    for (r, total) in totals.iter().enumerate() {
        let _ = writeln!(
            b,
            "          %on{r} = arith.truncf {total} : f32 to bf16\n          %o{r} = arith.extf %on{r} : bf16 to f32\n          %wo{r} = arith.mulf %wv, %o{r} : f32\n          %v{r} = arith.select %ok, %wo{r}, %zero : f32\n          %pc{r} = arith.addi %gc, %cr{r} : index\n          %pk{r} = arith.muli %pc{r}, %ck : index\n          %pi{r} = arith.addi %pk{r}, %j : index\n          memref.store %v{r}, %parts[%pi{r}] : memref<{parts}xf32, 3>"
        );
    }
    let _ = writeln!(b, "        }}\n      }}\n      gpu.barrier");
    add_slots(&mut b, k, parts, y);
    let out = format!("%out: memref<?x{}>", y.element());
    let params = [
        "%act: memref<?xvector<4xi32>>",
        "%wt: memref<?xvector<4xi32>>",
        "%ids: memref<?xf32>",
        "%w: memref<?xf32>",
        &out,
        "%first: index",
    ];
    format!(
        "    gpu.func @{name}({}) workgroup(%parts: memref<{parts}xf32, 3>) kernel {{\n{b}      gpu.return\n    }}\n",
        params.join(", ")
    )
}

/// The second kernel's last part: a thread per column of the block (`%cbc` from `%b0`) adds
/// its `k` slots' parts (of `parts` in `%parts`, its own k from tid k) in their order and
/// writes y (f32, or rounded to bf16).
fn add_slots(b: &mut String, k: usize, parts: usize, y: Y) {
    let mut sum = "%zero".to_string();
    let mut adds = String::new();
    for j in 0..k {
        let _ = writeln!(
            adds,
            "        %sp{j} = arith.constant {} : index\n        %sq{j} = arith.addi %sk, %sp{j} : index\n        %sv{j} = memref.load %parts[%sq{j}] : memref<{parts}xf32, 3>\n        %y{j} = arith.addf {sum}, %sv{j} : f32",
            j
        );
        sum = format!("%y{j}");
    }
    if y == Y::Bits {
        let _ = writeln!(adds, "        %yb = arith.truncf {sum} : f32 to bf16");
        sum = "%yb".into();
    }
    let _ = writeln!(
        b,
        "      %ycol = arith.addi %b0, %tid : index\n      %mine = arith.cmpi ult, %tid, %cbc : index\n      %inH = arith.cmpi ult, %ycol, %cH : index\n      %st = arith.andi %mine, %inH : i1\n      scf.if %st {{\n        %sk = arith.muli %tid, %ck : index\n{adds}        %tH = arith.muli %tok, %cH : index\n        %yo = arith.addi %tH, %ycol : index\n        memref.store {sum}, %out[%yo] : memref<?x{}>\n      }}",
        y.element()
    );
}

/// Slot `slot`'s local expert (of `experts`) `%loc{sfx}` (i64), its weight `%wv{sfx}`, and whether
/// it is this rank's with a weight not 0 (`%ok{sfx}`), from `%ids`, `%w` and `%first`.
fn slot_check(b: &mut String, (slot, experts): (&str, usize), sfx: &str, ind: &str) {
    let _ = writeln!(
        b,
        "{ind}%idf{sfx} = memref.load %ids[{slot}] : memref<?xf32>\n{ind}%id{sfx} = arith.fptosi %idf{sfx} : f32 to i64\n{ind}%first64{sfx} = arith.index_cast %first : index to i64\n{ind}%loc{sfx} = arith.subi %id{sfx}, %first64{sfx} : i64\n{ind}%wv{sfx} = memref.load %w[{slot}] : memref<?xf32>\n{ind}%zf{sfx} = arith.constant 0.0 : f32\n{ind}%nz{sfx} = arith.cmpf une, %wv{sfx}, %zf{sfx} : f32\n{ind}%zl{sfx} = arith.constant 0 : i64\n{ind}%cE64{sfx} = arith.constant {experts} : i64\n{ind}%ge{sfx} = arith.cmpi sge, %loc{sfx}, %zl{sfx} : i64\n{ind}%lt{sfx} = arith.cmpi slt, %loc{sfx}, %cE64{sfx} : i64\n{ind}%local{sfx} = arith.andi %ge{sfx}, %lt{sfx} : i1\n{ind}%ok{sfx} = arith.andi %local{sfx}, %nz{sfx} : i1"
    );
}

/// The weight rows a warp multiplies by one vector (x, or a slot's activations).
struct Dot<'a> {
    /// Each row's first word (index values).
    rows: &'a [String],
    /// Words per row.
    words: usize,
}

/// Each row of `d` times the vector, whose word q (a word of the rows) `vector(b, q, tag)`
/// loads as `%x{tag}_{e}`: lane l takes words l, l + 32, ..; `ROUND_UNROLL` rounds' loads before
/// their multiply-adds. The lanes' sums folded (every lane holds them): their names, one per
/// row.
fn dot_rows(b: &mut String, d: Dot, vector: &dyn Fn(&mut String, &str, &str)) -> Vec<String> {
    let n = d.rows.len();
    let full = d.words / WARP;
    let rem = d.words % WARP;
    let groups = full / ROUND_UNROLL;
    let types = vec!["f32"; n].join(", ");
    let _ = writeln!(
        b,
        "        %c2x = arith.constant 2 : index\n        %cstep = arith.constant {} : index\n        %cgend = arith.constant {} : index",
        WARP * ROUND_UNROLL,
        WARP * ROUND_UNROLL * groups
    );
    // Rounds in groups of `ROUND_UNROLL`.
    let iters = (0..n)
        .map(|r| format!("%i{r} = %zero"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        b,
        "        %dg:{n} = scf.for %q0 = %lane to %cgend step %cstep iter_args({iters}) -> ({types}) {{"
    );
    let accs: Vec<String> = (0..n).map(|r| format!("%i{r}")).collect();
    let next = rounds(b, &d, vector, ("%q0", ROUND_UNROLL), &accs);
    let _ = writeln!(
        b,
        "          scf.yield {} : {types}\n        }}",
        next.join(", ")
    );
    let mut accs: Vec<String> = (0..n).map(|r| format!("%dg#{r}")).collect();
    // The whole rounds left, all lanes in.
    let left = full - groups * ROUND_UNROLL;
    if left > 0 {
        let _ = writeln!(
            b,
            "        %cl = arith.constant {} : index\n        %ql = arith.addi %lane, %cl : index",
            WARP * ROUND_UNROLL * groups
        );
        let _ = writeln!(b, "        %tail:{n} = scf.execute_region -> ({types}) {{");
        let next = rounds(b, &d, vector, ("%ql", left), &accs);
        let _ = writeln!(
            b,
            "          scf.yield {} : {types}\n        }}",
            next.join(", ")
        );
        accs = (0..n).map(|r| format!("%tail#{r}")).collect();
    }
    // The last part round: the lanes below `rem`.
    if rem > 0 {
        let _ = writeln!(
            b,
            "        %crem = arith.constant {rem} : index\n        %cpart = arith.constant {} : index\n        %qp = arith.addi %lane, %cpart : index\n        %inp = arith.cmpi ult, %lane, %crem : index\n        %part:{n} = scf.if %inp -> ({types}) {{",
            WARP * full
        );
        let next = rounds(b, &d, vector, ("%qp", 1), &accs);
        let _ = writeln!(
            b,
            "          scf.yield {} : {types}\n        }} else {{\n          scf.yield {} : {types}\n        }}",
            next.join(", "),
            accs.join(", ")
        );
        accs = (0..n).map(|r| format!("%part#{r}")).collect();
    }
    accs.iter()
        .enumerate()
        .map(|(r, a)| {
            let _ = writeln!(b, "        %p{r} = arith.addf {a}, %zero : f32");
            warp_reduce(b, &format!("p{r}"), &format!("t{r}"), "arith.addf")
        })
        .collect()
}

/// `count` rounds from word `q` (the next 32 words on): every load first, then the
/// multiply-adds into `accs` (each element in the word's order); the new sums' names.
fn rounds(
    b: &mut String,
    d: &Dot,
    vector: &dyn Fn(&mut String, &str, &str),
    (q, count): (&str, usize),
    accs: &[String],
) -> Vec<String> {
    for u in 0..count {
        let _ = writeln!(
            b,
            "          %qo{u}c = arith.constant {} : index\n          %qo{u} = arith.addi {q}, %qo{u}c : index",
            WARP * u
        );
        for (r, row) in d.rows.iter().enumerate() {
            let _ = writeln!(
                b,
                "          %wi{u}_{r} = arith.addi {row}, %qo{u} : index\n          %ww{u}_{r} = memref.load %wt[%wi{u}_{r}] : memref<?xvector<4xi32>>"
            );
        }
        vector(b, &format!("%qo{u}"), &u.to_string());
    }
    let mut next: Vec<String> = accs.to_vec();
    for u in 0..count {
        for (r, acc) in next.iter_mut().enumerate() {
            unpack(b, &format!("%ww{u}_{r}"), &format!("w{u}_{r}"), PER);
            let x = format!("%x{u}");
            for e in 0..PER {
                let _ = writeln!(
                    b,
                    "          %f{u}_{r}_{e} = math.fma {x}_{e}, %w{u}_{r}_{e}, {acc} : f32"
                );
                *acc = format!("%f{u}_{r}_{e}");
            }
        }
    }
    next
}

/// A 16-byte word `word` (vector<4xi32>) as `per` f32 values `%{out}_{u}`: four f32, or eight
/// bf16 (a 4-byte lane's low half first).
pub(super) fn unpack(b: &mut String, word: &str, out: &str, per: usize) {
    for m in 0..4 {
        let _ = writeln!(
            b,
            "          %{out}_m{m}c = arith.constant {m} : i32\n          %{out}_m{m} = llvm.extractelement {word}[%{out}_m{m}c : i32] : vector<4xi32>"
        );
        if per == 8 {
            let _ = writeln!(
                b,
                "          %{out}_s{m} = arith.constant 16 : i32\n          %{out}_l{m} = arith.shli %{out}_m{m}, %{out}_s{m} : i32\n          %{out}_h{m}m = arith.constant -65536 : i32\n          %{out}_h{m} = arith.andi %{out}_m{m}, %{out}_h{m}m : i32\n          %{out}_{} = arith.bitcast %{out}_l{m} : i32 to f32\n          %{out}_{} = arith.bitcast %{out}_h{m} : i32 to f32",
                2 * m,
                2 * m + 1
            );
        } else {
            let _ = writeln!(
                b,
                "          %{out}_{m} = arith.bitcast %{out}_m{m} : i32 to f32"
            );
        }
    }
}
