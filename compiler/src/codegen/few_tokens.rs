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
use super::template::{specialise, specialise_at};
use ppmoe_runtime::program::{
    token_out_columns, TOKEN_IN_COLUMNS, TOKEN_KERNELS, TOKEN_OUT_BITS, TOKEN_OUT_WARP_COLUMNS,
    TOKEN_THREADS,
};

const FIRST: &str = include_str!("templates/tokens/first.mlir");
const FIRST_ROW: &str = include_str!("templates/tokens/first_row.mlir");
const FIRST_COLUMN: &str = include_str!("templates/tokens/first_column.mlir");
const X_WORD_F32: &str = include_str!("templates/tokens/x_word_f32.mlir");
const SECOND: &str = include_str!("templates/tokens/second.mlir");
const SECOND_ROW: &str = include_str!("templates/tokens/second_row.mlir");
const SECOND_OUTPUT: &str = include_str!("templates/tokens/second_output.mlir");
const ADD_SLOTS: &str = include_str!("templates/tokens/add_slots.mlir");
const SLOT_PART: &str = include_str!("templates/tokens/slot_part.mlir");
const SLOT_CHECK: &str = include_str!("templates/tokens/slot_check.mlir");
const DOT: &str = include_str!("templates/tokens/dot.mlir");
const DOT_TAIL: &str = include_str!("templates/tokens/dot_tail.mlir");
const DOT_PART: &str = include_str!("templates/tokens/dot_part.mlir");
const UNPACK_BF16: &str = include_str!("templates/tokens/unpack_bf16.mlir");

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
        // x's row: the slot's token's (its first word).
        let x_words = match self.src {
            Source::Bf16 => words,
            Source::F32 => 2 * words,
        };
        // Weight rows: per activation column j, its gate row (and its up row F after it),
        // clamped to the last column past the end (read, never stored).
        let mut rows = Vec::new();
        let mut row_lines = String::new();
        for j in 0..ACT_PER_WARP {
            row_lines += &specialise(FIRST_ROW, &[("j", &j)]);
            rows.push(format!("%gb{j}"));
            if self.gated {
                row_lines += &format!("        %ur{j} = arith.addi %gr{j}, %cF : index\n        %ub{j} = arith.muli %ur{j}, %cW : index\n");
                rows.push(format!("%ub{j}"));
            }
        }
        let x = |q: &str, tag: &str| self.load_x(q, tag);
        let (dot, totals) = dot_rows(Dot { rows: &rows, words }, &x);
        let per_col = if self.gated { 2 } else { 1 };
        let mut columns = String::new();
        for j in 0..ACT_PER_WARP {
            let (g, u) = (&totals[j * per_col], totals.get(j * per_col + 1));
            // The projection's outputs as its bf16 store would round them, then the math.
            let inputs = match u {
                Some(u) => {
                    let mut rounded = String::new();
                    rounded_gate_up(&mut rounded, "r", g, u, "          ");
                    rounded + "          %g = arith.addf %rgv, %kneg0 : f32\n          %u = arith.addf %ruv, %kneg0 : f32\n"
                }
                None => format!("          %gn = arith.truncf {g} : f32 to bf16\n          %g = arith.extf %gn : bf16 to f32\n"),
            };
            columns += &specialise(
                FIRST_COLUMN,
                &[("j", &j), ("f", &f), ("inputs", &inputs), ("act", &act)],
            );
        }
        specialise(
            FIRST,
            &[
                ("name", &self.name),
                ("k", &self.k),
                ("x_words", &x_words),
                (
                    "slot_check",
                    &slot_check(("%s", self.experts), "", "      "),
                ),
                ("n", &n),
                ("f", &f),
                ("words", &words),
                ("block_columns", &TOKEN_IN_COLUMNS),
                ("warp_columns", &ACT_PER_WARP),
                ("flast", &(f - 1)),
                ("rows", &row_lines),
                ("dot", &dot),
                ("columns", &columns),
            ],
        )
    }

    /// x's `per` elements of word `q` (of the weight rows) as f32 values `%x{tag}_{u}`.
    fn load_x(&self, q: &str, tag: &str) -> String {
        let mut b = String::new();
        if self.src == Source::Bf16 {
            b += &format!("          %xq{tag} = arith.addi {q}, %xo : index\n          %xw{tag} = memref.load %src[%xq{tag}] : memref<?xvector<4xi32>>\n");
            unpack(&mut b, &format!("%xw{tag}"), &format!("x{tag}"), PER);
            return b;
        }
        // Eight f32 elements: two words.
        for half in 0..2 {
            b += &specialise(X_WORD_F32, &[("tag", &tag), ("half", &half), ("q", &q)]);
            unpack(
                &mut b,
                &format!("%xw{tag}_{half}"),
                &format!("xf{tag}_{half}"),
                4,
            );
            for m in 0..4 {
                let u = half * 4 + m;
                b += &format!("          %xn{tag}_{u} = arith.truncf %xf{tag}_{half}_{m} : f32 to bf16\n          %x{tag}_{u} = arith.extf %xn{tag}_{u} : bf16 to f32\n");
            }
        }
        b
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
    // The warp's weight rows: its columns', clamped to the last past the end (read, never
    // stored).
    let rows: Vec<String> = (0..c).map(|r| format!("%wb{r}")).collect();
    let row_lines: String = (0..c)
        .map(|r| specialise(SECOND_ROW, &[("r", &r)]))
        .collect();
    let act = |q: &str, tag: &str| {
        let mut b = format!("          %aq{tag} = arith.addi {q}, %ab : index\n          %aw{tag} = memref.load %act[%aq{tag}] : memref<?xvector<4xi32>>\n");
        unpack(&mut b, &format!("%aw{tag}"), &format!("x{tag}"), PER);
        b
    };
    let (dot, totals) = dot_rows(Dot { rows: &rows, words }, &act);
    // Lane 0: each column's output as the projection's store rounds it, times the slot's
    // weight (0 for a slot left out), at part ((g C + r) k + j).
    let outputs: String = totals
        .iter()
        .enumerate()
        .map(|(r, total)| {
            specialise(
                SECOND_OUTPUT,
                &[("r", &r), ("total", total), ("parts", &parts)],
            )
        })
        .collect();
    specialise(
        SECOND,
        &[
            ("name", &name),
            ("y", &y.element()),
            ("parts", &parts),
            ("k", &k),
            ("groups", &groups),
            ("block_columns", &block_columns),
            ("c", &c),
            ("last_column", &(hidden - 1)),
            ("hidden", &hidden),
            ("words", &words),
            ("slot_check", &slot_check(("%sj", experts), "", "        ")),
            ("rows", &row_lines),
            ("dot", &dot),
            ("outputs", &outputs),
            ("add_slots", &add_slots(k, parts, y)),
        ],
    )
}

/// The second kernel's last part: a thread per column of the block (`%cbc` from `%b0`) adds
/// its `k` slots' parts (of `parts` in `%parts`, its own k from tid k) in their order and
/// writes y (f32, or rounded to bf16).
fn add_slots(k: usize, parts: usize, y: Y) -> String {
    let mut sum = "%zero".to_string();
    let mut adds = String::new();
    for j in 0..k {
        adds += &specialise(
            SLOT_PART,
            &[("j", &j), ("part", &j), ("parts", &parts), ("sum", &sum)],
        );
        sum = format!("%y{j}");
    }
    if y == Y::Bits {
        adds += &format!("        %yb = arith.truncf {sum} : f32 to bf16\n");
        sum = "%yb".into();
    }
    specialise(
        ADD_SLOTS,
        &[("adds", &adds), ("sum", &sum), ("y", &y.element())],
    )
}

/// Slot `slot`'s local expert (of `experts`) `%loc{sfx}` (i64), its weight `%wv{sfx}`, and whether
/// it is this rank's with a weight not 0 (`%ok{sfx}`), from `%ids`, `%w` and `%first`.
fn slot_check((slot, experts): (&str, usize), sfx: &str, ind: &str) -> String {
    specialise_at(
        SLOT_CHECK,
        ind,
        &[("sfx", &sfx), ("slot", &slot), ("experts", &experts)],
    )
}

/// The weight rows a warp multiplies by one vector (x, or a slot's activations).
struct Dot<'a> {
    /// Each row's first word (index values).
    rows: &'a [String],
    /// Words per row.
    words: usize,
}

/// Each row of `d` times the vector, whose word q (a word of the rows) `vector(q, tag)`
/// loads as `%x{tag}_{e}`: lane l takes words l, l + 32, ..; `ROUND_UNROLL` rounds' loads before
/// their multiply-adds. The lanes' sums folded (every lane holds them): the lines, and the
/// sums' names, one per row.
fn dot_rows(d: Dot, vector: &dyn Fn(&str, &str) -> String) -> (String, Vec<String>) {
    let n = d.rows.len();
    let full = d.words / WARP;
    let rem = d.words % WARP;
    let groups = full / ROUND_UNROLL;
    let types = vec!["f32"; n].join(", ");
    // Rounds in groups of `ROUND_UNROLL`.
    let iters = (0..n)
        .map(|r| format!("%i{r} = %zero"))
        .collect::<Vec<_>>()
        .join(", ");
    let accs: Vec<String> = (0..n).map(|r| format!("%i{r}")).collect();
    let (rounds_text, next) = rounds(&d, vector, ("%q0", ROUND_UNROLL), &accs);
    let mut accs: Vec<String> = (0..n).map(|r| format!("%dg#{r}")).collect();
    // The whole rounds left, all lanes in.
    let left = full - groups * ROUND_UNROLL;
    let mut tail = String::new();
    if left > 0 {
        let (text, next) = rounds(&d, vector, ("%ql", left), &accs);
        tail = specialise(
            DOT_TAIL,
            &[
                ("start", &(WARP * ROUND_UNROLL * groups)),
                ("n", &n),
                ("types", &types),
                ("rounds", &text),
                ("next", &next.join(", ")),
            ],
        );
        accs = (0..n).map(|r| format!("%tail#{r}")).collect();
    }
    // The last part round: the lanes below `rem`.
    let mut part = String::new();
    if rem > 0 {
        let (text, next) = rounds(&d, vector, ("%qp", 1), &accs);
        part = specialise(
            DOT_PART,
            &[
                ("rem", &rem),
                ("start", &(WARP * full)),
                ("n", &n),
                ("types", &types),
                ("rounds", &text),
                ("next", &next.join(", ")),
                ("accs", &accs.join(", ")),
            ],
        );
        accs = (0..n).map(|r| format!("%part#{r}")).collect();
    }
    let mut sums = String::new();
    let totals = accs
        .iter()
        .enumerate()
        .map(|(r, a)| {
            sums += &format!("        %p{r} = arith.addf {a}, %zero : f32\n");
            warp_reduce(&mut sums, &format!("p{r}"), &format!("t{r}"), "arith.addf")
        })
        .collect();
    let text = specialise(
        DOT,
        &[
            ("step", &(WARP * ROUND_UNROLL)),
            ("groups_end", &(WARP * ROUND_UNROLL * groups)),
            ("n", &n),
            ("iters", &iters),
            ("types", &types),
            ("rounds", &rounds_text),
            ("next", &next.join(", ")),
            ("tail", &tail),
            ("part", &part),
            ("sums", &sums),
        ],
    );
    (text, totals)
}

/// `count` rounds from word `q` (the next 32 words on): every load first, then the
/// multiply-adds into `accs` (each element in the word's order); the lines, and the new sums'
/// names.
fn rounds(
    d: &Dot,
    vector: &dyn Fn(&str, &str) -> String,
    (q, count): (&str, usize),
    accs: &[String],
) -> (String, Vec<String>) {
    let mut b = String::new();
    for u in 0..count {
        b += &format!(
            "          %qo{u}c = arith.constant {} : index\n          %qo{u} = arith.addi {q}, %qo{u}c : index\n",
            WARP * u
        );
        for (r, row) in d.rows.iter().enumerate() {
            b += &format!("          %wi{u}_{r} = arith.addi {row}, %qo{u} : index\n          %ww{u}_{r} = memref.load %wt[%wi{u}_{r}] : memref<?xvector<4xi32>>\n");
        }
        b += &vector(&format!("%qo{u}"), &u.to_string());
    }
    let mut next: Vec<String> = accs.to_vec();
    for u in 0..count {
        for (r, acc) in next.iter_mut().enumerate() {
            unpack(&mut b, &format!("%ww{u}_{r}"), &format!("w{u}_{r}"), PER);
            let x = format!("%x{u}");
            for e in 0..PER {
                b += &format!(
                    "          %f{u}_{r}_{e} = math.fma {x}_{e}, %w{u}_{r}_{e}, {acc} : f32\n"
                );
                *acc = format!("%f{u}_{r}_{e}");
            }
        }
    }
    (b, next)
}

/// A 16-byte word `word` (vector<4xi32>) as `per` f32 values `%{out}_{u}`: four f32, or eight
/// bf16 (a 4-byte lane's low half first).
pub(super) fn unpack(b: &mut String, word: &str, out: &str, per: usize) {
    for m in 0..4 {
        *b += &format!("          %{out}_m{m}c = arith.constant {m} : i32\n          %{out}_m{m} = llvm.extractelement {word}[%{out}_m{m}c : i32] : vector<4xi32>\n");
        if per == 8 {
            *b += &specialise(
                UNPACK_BF16,
                &[
                    ("out", &out),
                    ("m", &m),
                    ("low", &(2 * m)),
                    ("high", &(2 * m + 1)),
                ],
            );
        } else {
            *b += &format!("          %{out}_{m} = arith.bitcast %{out}_m{m} : i32 to f32\n");
        }
    }
}
