//! A bf16 model's attention as one kernel, flash-style: the scores' GEMM, the pointwise chain
//! before the softmax (the mask's add, a scale), the softmax, sdpa's NaN guard after it and
//! the values' GEMM, with the scores [.., Sq, Sk] never written. Unfused they are two cuBLAS
//! GEMMs around a softmax kernel that reads and writes the whole score tensor
//! (8 x 32 x 512 x 512 bf16, 134 MB per layer, for the real-size LM at 8 x 512 tokens).
//!
//! A block of 8 warps takes 128 query rows of one batch entry (`threads` = 256 x batch x
//! ceil(Sq / 128)), each warp 16 rows, their queries kept as mma fragments, and the block
//! walks the keys 32 at a time. Per step the block copies the step's keys' transpose [D][32]
//! and values [32][Dv] into shared memory in 16-byte words (loaded a step ahead, so their
//! latency is spent beside the step before; rows padded by 8 elements so each `ldmatrix`
//! phase's 8 rows fall on distinct banks), and every warp takes its B fragments from there by
//! transposing `ldmatrix`es (four 8x8 matrices, two n8 tiles' fragments, per instruction).
//! The scores by `mma.sync` m16n8k16 (bf16 in, f32 accumulated), each rounded to bf16 (the
//! scores' type in the model: cuBLAS's result was so rounded) and put through the chain
//! before the softmax at its element's flat index (the chain's own loads and broadcasting,
//! `pointwise::emit_chain`); keys past Sk count as -inf. Then the online softmax (Milakov and
//! Gimelshein; FlashAttention 2's form): the rows' running maximum and sum (the four lanes
//! that share a row agree by two shuffles), the output rescaled by exp(old max - new max),
//! the probabilities exp(score - max) rounded to bf16 as the second GEMM's A fragments (the
//! scores' accumulator layout is that operand's), times the values by mma. At the end each
//! row is divided by its sum. (The first form, each lane loading its fragments' 16-bit
//! elements from global memory, made the real-size LM's forward 1.1 ms slower than unfused
//! on an H200, where this one makes it 0.2-0.4 ms slower: session 44.)
//!
//! What differs from the unfused kernels, all within bf16's rounding: the probabilities are
//! rounded before they are normalised (unfused: after), and the exponentials are of the
//! running maximum, not the row's. A row every key of which is masked (-inf) gives 0 where
//! the model guards the softmax's NaN (`where(isnan(p), 0, p)`, sdpa's export), NaN where it
//! does not, as unfused; a NaN score elsewhere makes its row NaN (the guard would have zeroed
//! only a NaN probability).
//!
//! Taken where the GEMMs' operands are the model's bf16 (an fp32 model keeps the unfused
//! kernels and its fp32 accuracy), the queries, keys' transpose [.., D, Sk], values and
//! output share their batch dimensions (GQA's heads already expanded, as exported), D and Dv
//! are multiples of 16 and at most 128 (the fragments stay in registers) and Sk a multiple of
//! 8 (whole 16-byte words), and where `fused_by_policy` says: for memory, from 1 GiB of
//! scores (at the measured size the unfused kernels are faster).

use super::kernel_gen::{butterfly_reduce, exp, memref, prologue, static_shape, warp_reduce};
use super::pointwise::{emit_chain, producers, read_counts, Operands, Scalar};
use super::template::specialise;
use super::tensor_core_projection::MMA_OUT;
use ppmoe_runtime::program::{BinaryFn, Op, Program, UnaryFn};
use ppmoe_runtime::{DType, Tensor};
use std::collections::HashMap;
use std::fmt::Write as _;

const V_INDEX: &str = include_str!("templates/attention_v_index.mlir");
const K_INDEX: &str = include_str!("templates/attention_k_index.mlir");
const SCORE_ROW: &str = include_str!("templates/attention/score_row.mlir");
const PACK: &str = include_str!("templates/attention/pack.mlir");
const WORD_INDEX: &str = include_str!("templates/attention/word_index.mlir");
const GUARDED_LOAD: &str = include_str!("templates/attention/guarded_load.mlir");
const LOAD: &str = include_str!("templates/attention/load.mlir");
const CONSTANTS: &str = include_str!("templates/attention/constants.mlir");
const ROWS: &str = include_str!("templates/attention/rows.mlir");
const BASES: &str = include_str!("templates/attention/bases.mlir");
const ENTRY_WORDS: &str = include_str!("templates/attention/entry_words.mlir");
const LDMATRIX_ROWS: &str = include_str!("templates/attention/ldmatrix_rows.mlir");
const STORE_KEY: &str = include_str!("templates/attention/store_key.mlir");
const STORE_VALUE: &str = include_str!("templates/attention/store_value.mlir");
const STEPS: &str = include_str!("templates/attention/steps.mlir");
const NEXT_STEP: &str = include_str!("templates/attention/next_step.mlir");
const LDMATRIX: &str = include_str!("templates/attention/ldmatrix.mlir");
const KEY_COLUMNS: &str = include_str!("templates/attention/key_columns.mlir");
const KEY_COLUMN: &str = include_str!("templates/attention/key_column.mlir");
const REFERENCE: &str = include_str!("templates/attention/reference.mlir");
const STEP_END: &str = include_str!("templates/attention/step_end.mlir");
const MMA: &str = include_str!("templates/attention/mma.mlir");
const FUNCTION: &str = include_str!("templates/attention/function.mlir");
const OUTPUT_ROW: &str = include_str!("templates/attention/output_row.mlir");
const STORE_OUTPUT: &str = include_str!("templates/attention/store_output.mlir");

/// Keys per step of the walk: two k16 chunks of the values' GEMM.
const KEYS: usize = 32;
/// Threads of a block: 8 warps, 128 query rows of one batch entry, which share each step's
/// keys and values in shared memory.
const BLOCK: usize = 256;
const WARPS: usize = BLOCK / 32;
/// The keys' transpose's row length (bf16 elements) in shared memory: [D][KEYS + 8], as the
/// values' [KEYS][Dv + 8] (`Geometry::v_row`). The 8 more put the 8 rows an ldmatrix phase
/// reads (16 bytes each) on 8 distinct groups of 4 banks: rows 80 bytes apart (272 for the
/// values at Dv 128) start 20 (4) banks apart modulo 32.
const K_ROW: usize = KEYS + 8;
/// The parameters the kernel reads as 16-byte words of bf16 bits: the keys' transpose and the
/// values (the runtime passes their bits; the queries, the chain's operands and the output
/// are narrowed as other kernels' are).
pub(super) const WORD_PARAMS: [usize; 2] = [1, 2];
/// The largest head dimensions taken (queries' D, values' Dv).
const MAX_HEAD: usize = 128;

/// One attention: its instructions and the chains (indices into the program's chains) fused.
pub(super) struct Attention {
    /// The scores' GEMM, queries [.., Sq, D] by the keys' transpose [.., D, Sk].
    pub scores: usize,
    /// The chain between the scores and the softmax (it reads the scores).
    pub before: Option<usize>,
    pub softmax: usize,
    /// The chain after the softmax: sdpa's NaN guard (`guard`) or a cast to bf16.
    pub after: Option<usize>,
    pub guard: bool,
    /// The values' GEMM, the probabilities by the values [.., Sk, Dv]: the step's root.
    pub values: usize,
    g: Geometry,
}

impl Attention {
    /// Its instructions but the root, in program order, with the chains' members.
    pub fn members(&self, chains: &[Vec<usize>]) -> Vec<usize> {
        let mut m = vec![self.scores, self.softmax];
        for c in self.before.iter().chain(&self.after) {
            m.extend(&chains[*c]);
        }
        m.sort_unstable();
        m
    }
}

/// The smallest score tensor (bytes, bf16, per attention) at which the policy fuses. Measured
/// on an H200 (session 44, the real-size 2-layer Mixtral-shaped LM at 8 x 512 tokens, scores
/// [8, 32, 512, 512], 128 MiB): the fused kernel took 0.405 ms per layer where the unfused
/// softmax-and-guard kernel takes 0.21 and its two GEMMs about 0.16, the forward 14.83 /
/// 14.94 ms against 14.62 / 14.52 (alternated in one run). Unfused, the scores and the
/// probabilities are each written and read whole, S^2 per head: at 8 x 2048 tokens 2 GiB each
/// per layer, at 32768 tokens of one sequence 64 GiB each, the two nearly all an H200 holds.
/// From 1 GiB the kernel is taken for memory's sake, not speed (the crossover in time is not
/// measured).
pub const FLASH_MIN_SCORE_BYTES: usize = 1 << 30;

/// Whether an attention whose scores hold `elements` bf16 values is fused: from
/// `FLASH_MIN_SCORE_BYTES`, unless `PPMOE_FLASH_ATTENTION` at compile time says (`1`: every
/// attention the kernel takes, `0`: none; a measurement aid).
fn fused_by_policy(elements: usize) -> bool {
    super::switch::switch("PPMOE_FLASH_ATTENTION", || {
        elements.saturating_mul(2) >= FLASH_MIN_SCORE_BYTES
    })
}

/// The attentions of `p` one kernel can take (see the module's doc) and `fused_by_policy`
/// takes; none of their instructions in `taken`.
pub(super) fn find(
    p: &Program,
    chains: &[Vec<usize>],
    taken: &dyn Fn(usize) -> bool,
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
) -> Vec<Attention> {
    let uses = read_counts(p);
    let producer = producers(p);
    let chain_ending_in: HashMap<usize, usize> = chains
        .iter()
        .enumerate()
        .filter_map(|(c, m)| Some((p.instructions[*m.last()?].outputs[0], c)))
        .collect();
    let readers = |b: usize| -> Vec<usize> {
        (0..p.instructions.len())
            .filter(|&r| p.instructions[r].inputs.contains(&Some(b)))
            .collect()
    };
    let mut found = Vec::new();
    for (s, ins) in p.instructions.iter().enumerate() {
        let Op::Softmax { axis, log: false } = ins.op else {
            continue;
        };
        let (Some(Some(x)), [y]) = (ins.inputs.first(), &ins.outputs[..]) else {
            continue;
        };
        let (x, y) = (*x, *y);
        let Some(shape) = static_shape(&p.buffers[y]) else {
            continue;
        };
        if !(axis == -1 || axis == shape.len() as i64 - 1) || uses[x] != 1 || uses[y] == 0 {
            continue;
        }
        // Before: a chain into x that reads the scores, or x the scores themselves.
        let before = chain_ending_in.get(&x).copied();
        let scores_buffer = match before {
            Some(c) => chains[c]
                .iter()
                .flat_map(|&m| p.instructions[m].inputs.iter().flatten())
                .copied()
                .find(
                    |b| matches!(producer.get(b), Some(&m) if p.instructions[m].op == Op::MatMul),
                ),
            None => Some(x),
        };
        let same_shape = |b: &usize| p.buffers[*b].shape == p.buffers[x].shape;
        let Some(sb) = scores_buffer.filter(|b| uses[*b] == 1 && same_shape(b)) else {
            continue;
        };
        // The scores come from a GEMM (not a graph input, nor another op's result).
        let Some(&scores) = producer
            .get(&sb)
            .filter(|&&m| p.instructions[m].op == Op::MatMul)
        else {
            continue;
        };
        // After: sdpa's guard or a cast, whose result the values' GEMM alone reads.
        let after_readers = readers(y);
        let (after, guard, probs) = match after_readers[..] {
            [r] if p.instructions[r].op == Op::MatMul => (None, false, y),
            _ => match after_chain(p, chains, &after_readers, y, constant) {
                Some((c, guard)) => {
                    let root = *chains[c].last().expect("a chain has a root");
                    (Some(c), guard, p.instructions[root].outputs[0])
                }
                None => continue,
            },
        };
        let [values] = readers(probs)[..] else {
            continue;
        };
        let Some(g) = geometry(p, scores, values) else {
            continue;
        };
        let a = Attention {
            scores,
            before,
            softmax: s,
            after,
            guard,
            values,
            g,
        };
        let fits = p.instructions[values].op == Op::MatMul
            && p.instructions[values].inputs.first() == Some(&Some(probs))
            && uses[probs] == 1
            && a.members(chains)
                .iter()
                .chain([&values])
                .all(|&m| !taken(m))
            && fused_by_policy(g.batch * g.sq * g.sk);
        if fits {
            found.push(a);
        }
    }
    found
}

/// The chain that alone reads the softmax's result `y` (its `readers`), where it is sdpa's
/// guard `where(not(equal(y, y)), 0, y)` (true) or a cast to bf16 (false).
fn after_chain(
    p: &Program,
    chains: &[Vec<usize>],
    readers: &[usize],
    y: usize,
    constant: &dyn Fn(Option<usize>) -> Option<Tensor>,
) -> Option<(usize, bool)> {
    let first = *readers.first()?;
    let c = chains.iter().position(|m| m.contains(&first))?;
    let members = &chains[c];
    if !readers.iter().all(|r| members.contains(r)) || p.outputs.contains(&y) {
        return None;
    }
    let ins = |k: usize| &p.instructions[members[k]];
    let out = |k: usize| ins(k).outputs[0];
    match members.len() {
        1 => (ins(0).op == Op::Cast { to: DType::BF16 }).then_some((c, false)),
        3 => {
            let equal = ins(0).op == Op::Binary { f: BinaryFn::Equal }
                && ins(0).inputs == [Some(y), Some(y)];
            let not = ins(1).op == Op::Unary { f: UnaryFn::Not } && ins(1).inputs == [Some(out(0))];
            let zero = constant(ins(2).inputs.get(1).copied().flatten())
                .is_some_and(|t| t.len() == 1 && t.to_f32()[0] == 0.0);
            let guard = ins(2).op == Op::Where
                && ins(2).inputs.first() == Some(&Some(out(1)))
                && ins(2).inputs.get(2) == Some(&Some(y))
                && zero;
            (equal && not && guard).then_some((c, true))
        }
        _ => None,
    }
}

/// The sizes of one attention.
#[derive(Clone, Copy)]
struct Geometry {
    /// Batch entries (the product of the leading dimensions).
    batch: usize,
    sq: usize,
    sk: usize,
    d: usize,
    dv: usize,
}

impl Geometry {
    /// Blocks per batch entry: 8 warps of 16 query rows each.
    fn blocks_per_entry(&self) -> usize {
        self.sq.div_ceil(16).div_ceil(WARPS)
    }
    fn blocks(&self) -> usize {
        self.batch * self.blocks_per_entry()
    }
    /// The values' row length in shared memory.
    fn v_row(&self) -> usize {
        self.dv + 8
    }
    /// 16-byte words a step copies: of the keys' transpose (D rows of KEYS), of the values
    /// (KEYS rows of Dv).
    fn k_words(&self) -> usize {
        self.d * KEYS / 8
    }
    fn v_words(&self) -> usize {
        KEYS * self.dv / 8
    }
}

/// The sizes of the attention of GEMMs `scores` and `values`, where their operands are bf16
/// in the model, static, of one batch shape, and its head dimensions ones the kernel takes.
fn geometry(p: &Program, scores: usize, values: usize) -> Option<Geometry> {
    let operand = |i: usize, k: usize| p.instructions[i].inputs.get(k).copied().flatten();
    let (q, kt) = (operand(scores, 0)?, operand(scores, 1)?);
    let v = operand(values, 1)?;
    let o = p.instructions[values].outputs[0];
    let s = p.instructions[scores].outputs[0];
    let bufs = [q, kt, v, o, s];
    if !bufs.iter().all(|&b| p.buffers[b].dtype == DType::BF16) {
        return None;
    }
    let shapes: Vec<Vec<usize>> = bufs
        .iter()
        .map(|&b| static_shape(&p.buffers[b]))
        .collect::<Option<_>>()?;
    let rank = shapes[0].len();
    if rank < 2 || shapes.iter().any(|s| s.len() != rank) {
        return None;
    }
    let lead = &shapes[0][..rank - 2];
    if shapes.iter().any(|s| &s[..rank - 2] != lead) {
        return None;
    }
    let dims = |k: usize| (shapes[k][rank - 2], shapes[k][rank - 1]);
    let ((sq, d), (d2, sk), (sk2, dv), (sq2, dv2)) = (dims(0), dims(1), dims(2), dims(3));
    let g = Geometry {
        batch: lead.iter().product(),
        sq,
        sk,
        d,
        dv,
    };
    let ok = d == d2
        && sk == sk2
        && sq == sq2
        && dv == dv2
        && dims(4) == (sq, sk)
        && d.is_multiple_of(16)
        && dv.is_multiple_of(16)
        && sk.is_multiple_of(8)
        && (1..=MAX_HEAD).contains(&d)
        && (1..=MAX_HEAD).contains(&dv)
        && sq > 0
        && sk > 0;
    ok.then_some(g)
}

/// The fused kernel of `a`: its name, text, threads and the buffers it reads (its parameters
/// before the result); None where the chain before the softmax does not broadcast.
pub(super) fn kernel_of(
    p: &Program,
    chains: &[Vec<usize>],
    a: &Attention,
    scalars: &[Option<Scalar>],
) -> Option<(String, String, usize, Vec<usize>)> {
    let g = a.g;
    let name = format!("k{}_attention", a.values);
    let operand = |i: usize, k: usize| p.instructions[i].inputs.get(k).copied().flatten();
    let (q, kt, v) = (
        operand(a.scores, 0)?,
        operand(a.scores, 1)?,
        operand(a.values, 1)?,
    );
    let scores = p.instructions[a.scores].outputs[0];
    let score_shape = static_shape(&p.buffers[scores])?;
    let mut ops = Operands::default();
    ops.buffers.extend([q, kt, v]);
    ops.params.push(memref(&static_shape(&p.buffers[q])?));
    // The keys' transpose and the values as 16-byte words (copied so into shared memory).
    for b in [kt, v] {
        let n: usize = static_shape(&p.buffers[b])?.iter().product();
        ops.params.push(format!("memref<{}xvector<4xi32>>", n / 8));
    }
    let mut body = String::new();
    let w = Walk { g, guard: a.guard };
    w.head(&mut body);
    w.queries(&mut body);
    w.open_steps(&mut body);
    w.scores(&mut body);
    for j in 0..KEYS / 8 {
        for r in 0..4 {
            let s = format!("%s{j}_{r}");
            body.push_str(&specialise(
                SCORE_ROW,
                &[
                    ("j", &j),
                    ("r", &r),
                    ("s", &s),
                    ("row", &(r / 2)),
                    ("key", &(r % 2)),
                ],
            ));
            let value = match a.before {
                Some(c) => emit_chain(
                    p,
                    &chains[c],
                    scalars,
                    (&score_shape, &format!("%o{j}_{r}0"), &format!("ch{j}_{r}_")),
                    &HashMap::from([(scores, format!("{s}r"))]),
                    &mut ops,
                    &mut body,
                )?,
                None => format!("{s}r"),
            };
            w.masked_tail(&mut body, j, r, &value);
        }
    }
    w.open_live(&mut body);
    w.online_softmax(&mut body);
    w.values(&mut body);
    w.close_steps(&mut body);
    let out = ops.buffers.len();
    w.store(&mut body, out);
    let o = p.instructions[a.values].outputs[0];
    ops.params.push(memref(&static_shape(&p.buffers[o])?));
    let threads = g.blocks() * BLOCK;
    Some((
        name.clone(),
        w.function(&name, &ops.params, &body),
        threads,
        ops.buffers,
    ))
}

/// The kernel's text, piece by piece: parameters %a0 (queries), %a1 (keys' transpose), %a2
/// (values), the chain's operands, then the output.
struct Walk {
    g: Geometry,
    guard: bool,
}

/// Two bf16 values (`lo` the element of the lower index) packed into one i32 operand `%{out}`.
fn pack(b: &mut String, out: &str, lo: &str, hi: &str) {
    b.push_str(&specialise(
        PACK,
        &[("out", &out), ("lo", &lo), ("hi", &hi)],
    ));
}

/// Word `%{t}w` = thread + 256 `r` of a step's `count`, and whether it is one (`%{t}in`).
fn word_index(b: &mut String, t: &str, r: usize, count: usize) {
    b.push_str(&specialise(
        WORD_INDEX,
        &[("t", &t), ("offset", &(BLOCK * r)), ("count", &count)],
    ));
}

/// `%{t}`: the 16-byte word `%{t}x` (computed by `index`, inside the guard) of parameter `k`
/// (of `n` words) where `%{t}in`, else 0.
fn guarded_load(b: &mut String, t: &str, index: &str, (k, n): (usize, usize)) {
    b.push_str(&specialise(
        GUARDED_LOAD,
        &[("t", &t), ("index", &index), ("k", &k), ("n", &n)],
    ));
}

/// `%{out}` = element `%{base}` + `off` of parameter `k` (of `n` elements), loaded as f32 (the
/// bf16 narrowing makes it the element's bits widened).
fn load(b: &mut String, out: &str, (k, n): (usize, usize), base: &str, off: usize) {
    b.push_str(&specialise(
        LOAD,
        &[
            ("out", &out),
            ("off", &off),
            ("base", &base),
            ("k", &k),
            ("n", &n),
        ],
    ));
}

/// One `mma.sync` m16n8k16 (bf16, f32 accumulators): `%{out}_0..3` from A words `a`, B words
/// `bw` and accumulators `c`.
fn mma(b: &mut String, out: &str, a: [&str; 4], bw: [&str; 2], c: [&str; 4]) {
    b.push_str(&specialise(
        MMA,
        &[
            ("out", &out),
            ("a0", &(a[0])),
            ("a1", &(a[1])),
            ("a2", &(a[2])),
            ("a3", &(a[3])),
            ("b0", &(bw[0])),
            ("b1", &(bw[1])),
            ("c0", &(c[0])),
            ("c1", &(c[1])),
            ("c2", &(c[2])),
            ("c3", &(c[3])),
            ("mma_out", &MMA_OUT),
        ],
    ));
    for r in 0..4 {
        let _ = writeln!(
            b,
            "        %{out}_{r} = llvm.extractvalue %{out}[{r}] : {MMA_OUT}"
        );
    }
}

impl Walk {
    fn q_len(&self) -> usize {
        self.g.batch * self.g.sq * self.g.d
    }
    /// The accumulators of the output: (n8 tile of Dv, register).
    fn accs(&self) -> impl Iterator<Item = (usize, usize)> {
        (0..self.g.dv / 8).flat_map(|n| (0..4).map(move |r| (n, r)))
    }
    /// The 16-byte words each thread copies per step: (key words, value words).
    fn copies(&self) -> (usize, usize) {
        (
            self.g.k_words().div_ceil(BLOCK),
            self.g.v_words().div_ceil(BLOCK),
        )
    }
    /// The names of one step's copied words in registers (`tag` the step's).
    fn words(&self, tag: &str) -> Vec<String> {
        let (kc, vc) = self.copies();
        (0..kc)
            .map(|r| format!("%{tag}k{r}"))
            .chain((0..vc).map(|r| format!("%{tag}v{r}")))
            .collect()
    }

    /// The kernel: its parameters, and the shared memory of one step's keys and values.
    fn function(&self, name: &str, params: &[String], body: &str) -> String {
        let args: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(k, t)| format!("%a{k}: {t}"))
            .collect();
        let kw = self.g.d * K_ROW / 8;
        let vw = KEYS * self.g.v_row() / 8;
        specialise(
            FUNCTION,
            &[
                ("name", &name),
                ("args", &(args.join(", "))),
                ("kw", &kw),
                ("vw", &vw),
                ("body", &body),
            ],
        )
    }

    /// The warp's batch entry and rows (clamped to the last where past Sq), the lane's place
    /// in its fragments, the bases of its loads, and each lane's ldmatrix row in the shared
    /// tiles.
    fn head(&self, b: &mut String) {
        let Geometry { sq, sk, d, dv, .. } = self.g;
        prologue(b, self.g.blocks() * BLOCK);
        b.push_str(CONSTANTS);
        b.push_str(&specialise(
            ROWS,
            &[
                ("blocks_per_entry", &(self.g.blocks_per_entry())),
                ("warps", &WARPS),
                ("last_query", &(sq - 1)),
            ],
        ));
        b.push_str(&specialise(
            BASES,
            &[
                ("sq", &sq),
                ("sk", &sk),
                ("last_key", &(sk - 1)),
                ("d", &d),
                ("dv", &dv),
            ],
        ));
        // Word bases of the entry's keys' transpose and values (`Sk % 8 == 0`, so every
        // copied word is whole and 16-byte aligned).
        b.push_str(&specialise(
            ENTRY_WORDS,
            &[
                ("key_words", &(d * sk / 8)),
                ("value_words", &(sk * dv / 8)),
            ],
        ));
        // ldmatrix rows: lane l gives row l % 8 of matrix l / 8. Keys' transpose (rows d,
        // columns keys): matrices (d 0-7, keys 0-7), (d 8-15, keys 0-7), (d 0-7, keys 8-15),
        // (d 8-15, keys 8-15). Values (rows keys, columns dv): (keys 0-7, dv 0-7), (keys
        // 8-15, dv 0-7), (keys 0-7, dv 8-15), (keys 8-15, dv 8-15). Transposed, they are
        // the B fragments of two n8 tiles.
        b.push_str(&specialise(
            LDMATRIX_ROWS,
            &[
                ("k_row", &K_ROW),
                ("value_row", &(self.g.v_row())),
                ("key_shared", &(d * K_ROW / 8)),
                ("value_shared", &(KEYS * self.g.v_row() / 8)),
            ],
        ));
    }

    /// The warp's queries as A fragments `%qf{ks}_{w}`: rows g and g + 8, columns 16 ks + 2 t
    /// (+ 8) and the next.
    fn queries(&self, b: &mut String) {
        let n = self.q_len();
        for ks in 0..self.g.d / 16 {
            for (w, (row, half)) in [(0, 0), (1, 0), (0, 8), (1, 8)].iter().enumerate() {
                let off = 16 * ks + half;
                let lo = format!("qe{ks}_{w}l");
                let hi = format!("qe{ks}_{w}h");
                load(b, &lo, (0, n), &format!("%qa{row}"), off);
                load(b, &hi, (0, n), &format!("%qa{row}"), off + 1);
                pack(
                    b,
                    &format!("qf{ks}_{w}"),
                    &format!("%{lo}"),
                    &format!("%{hi}"),
                );
            }
        }
    }

    /// Loads of the words of the step at key `k0` into `%{tag}k{r}` (word tid + 256 r of the
    /// keys' transpose: row d = w / 4, keys 8 (w % 4) ..) and `%{tag}v{r}` (of the values:
    /// row w / (Dv / 8), dv 8 (w % (Dv / 8)) ..); keys past Sk read the last ones (their
    /// scores are -inf, their probabilities 0), words past the tile 0.
    fn load_words(&self, b: &mut String, tag: &str, k0: &str) {
        let (kc, vc) = self.copies();
        let vpr = self.g.dv / 8;
        let _ = writeln!(
            b,
            "        %{tag}cSk8 = arith.constant {} : index\n        %{tag}cVPR = arith.constant {vpr} : index",
            self.g.sk - 8
        );
        for r in 0..kc {
            let t = format!("{tag}k{r}");
            word_index(b, &t, r, self.g.k_words());
            let index = specialise(K_INDEX, &[("t", &t), ("tag", &tag), ("k0", &k0)]);
            let words = self.g.batch * self.g.d * self.g.sk / 8;
            guarded_load(b, &t, &index, (1, words));
        }
        for r in 0..vc {
            let t = format!("{tag}v{r}");
            word_index(b, &t, r, self.g.v_words());
            let index = specialise(V_INDEX, &[("t", &t), ("tag", &tag), ("k0", &k0)]);
            let words = self.g.batch * self.g.sk * self.g.dv / 8;
            guarded_load(b, &t, &index, (2, words));
        }
    }

    /// The carried words `%cw*` stored into the shared tiles (words past the tile not).
    fn store_words(&self, b: &mut String) {
        let (kc, vc) = self.copies();
        let vpr = self.g.dv / 8;
        let (kw, vw) = (self.g.d * K_ROW / 8, KEYS * self.g.v_row() / 8);
        for r in 0..kc {
            let t = format!("sk{r}");
            word_index(b, &t, r, self.g.k_words());
            b.push_str(&specialise(
                STORE_KEY,
                &[
                    ("t", &t),
                    ("key_row_words", &(K_ROW / 8)),
                    ("r", &r),
                    ("kw", &kw),
                ],
            ));
        }
        for r in 0..vc {
            let t = format!("sv{r}");
            word_index(b, &t, r, self.g.v_words());
            b.push_str(&specialise(
                STORE_VALUE,
                &[
                    ("t", &t),
                    ("vpr", &vpr),
                    ("value_row_words", &(self.g.v_row() / 8)),
                    ("r", &r),
                    ("vw", &vw),
                ],
            ));
        }
    }

    /// The loop over steps of `KEYS` keys, carrying each row's maximum and (this lane's part
    /// of the) sum, the output's accumulators and the step's words (loaded a step ahead:
    /// their latency is spent beside the step before). Each step: a barrier (every warp done
    /// with the tiles), the words stored, a barrier, the next step's words loaded.
    fn open_steps(&self, b: &mut String) {
        let steps = self.g.sk.div_ceil(KEYS);
        let _ = writeln!(b, "        %cKeys = arith.constant {KEYS} : index");
        self.load_words(b, "f", "%c0");
        let accs: Vec<String> = self
            .accs()
            .map(|(n, r)| format!("%y{n}_{r} = %zero"))
            .collect();
        let words: Vec<String> = self
            .words("f")
            .iter()
            .zip(self.words("cw"))
            .map(|(init, name)| format!("{name} = {init}"))
            .collect();
        let n = self.state_len() + words.len();
        b.push_str(&specialise(
            STEPS,
            &[
                ("steps", &steps),
                ("n", &n),
                ("accs", &(accs.join(", "))),
                ("words", &(words.join(", "))),
                ("types", &(self.carried_types())),
            ],
        ));
        self.store_words(b);
        b.push_str(NEXT_STEP);
        self.load_words(b, "n", "%kn");
    }

    /// The values of a warp's softmax state: two rows' maxima and sums, and the accumulators.
    fn state_len(&self) -> usize {
        4 + self.g.dv / 2
    }

    /// The types of the softmax state.
    fn state_types(&self) -> String {
        vec!["f32"; self.state_len()].join(", ")
    }

    /// The types the step loop carries: the softmax state, then the next step's words.
    fn carried_types(&self) -> String {
        let words = self.words("x").len();
        let mut t = vec!["f32"; self.state_len()];
        t.extend(vec!["vector<4xi32>"; words]);
        t.join(", ")
    }

    /// `%{out}`: an `ldmatrix` of four transposed 8x8 matrices at byte `%{base}` + `off`.
    fn ldmatrix(b: &mut String, out: &str, base: &str, off: usize) {
        b.push_str(&specialise(
            LDMATRIX,
            &[("out", &out), ("off", &off), ("base", &base)],
        ));
        for r in 0..4 {
            let _ = writeln!(
                b,
                "        %{out}_{r} = llvm.extractvalue %{out}[{r}] : !llvm.struct<(i32, i32, i32, i32)>"
            );
        }
    }

    /// The step's scores `%s{j}_{r}a`, n8 tile j of the step's keys: rows g (r < 2) and
    /// g + 8, keys 8 j + 2 t (+ 1 for odd r); `%key{j}_{0,1}` those keys (clamped to the last
    /// where past Sk), `%kin{j}_{0,1}` whether they exist. Tiles 2 p and 2 p + 1 take their
    /// B fragments from one ldmatrix per k16 step.
    fn scores(&self, b: &mut String) {
        for j in 0..KEYS / 8 {
            b.push_str(&specialise(KEY_COLUMNS, &[("j", &j), ("offset", &(8 * j))]));
            for e in 0..2 {
                b.push_str(&specialise(KEY_COLUMN, &[("j", &j), ("e", &e)]));
            }
        }
        for pair in 0..KEYS / 16 {
            let mut c: [Vec<String>; 2] =
                [vec!["%zero".to_string(); 4], vec!["%zero".to_string(); 4]];
            for ks in 0..self.g.d / 16 {
                let l = format!("kl{pair}_{ks}");
                Self::ldmatrix(b, &l, "%ksl", (16 * ks * K_ROW + 16 * pair) * 2);
                let a: Vec<String> = (0..4).map(|w| format!("%qf{ks}_{w}")).collect();
                for (h, cur) in c.iter_mut().enumerate() {
                    let j = 2 * pair + h;
                    let out = format!("sm{j}_{ks}");
                    let (b0, b1) = (format!("%{l}_{}", 2 * h), format!("%{l}_{}", 2 * h + 1));
                    mma(
                        b,
                        &out,
                        [&a[0], &a[1], &a[2], &a[3]],
                        [&b0, &b1],
                        [&cur[0], &cur[1], &cur[2], &cur[3]],
                    );
                    *cur = (0..4).map(|r| format!("%{out}_{r}")).collect();
                }
            }
            for (h, cur) in c.iter().enumerate() {
                for (r, v) in cur.iter().enumerate() {
                    let _ = writeln!(
                        b,
                        "        %s{}_{r}a = arith.addf {v}, %zero : f32",
                        2 * pair + h
                    );
                }
            }
        }
    }

    /// `%v{j}_{r}`: the chain's `value`, or -inf where the key is past Sk.
    fn masked_tail(&self, b: &mut String, j: usize, r: usize, value: &str) {
        if self.g.sk.is_multiple_of(KEYS) {
            let _ = writeln!(b, "        %v{j}_{r} = arith.addf {value}, %zero : f32");
        } else {
            let _ = writeln!(
                b,
                "        %v{j}_{r} = arith.select %kin{j}_{}, {value}, %ninf : f32",
                r % 2
            );
        }
    }

    /// The rows' new maxima, the rescaling of the sums and accumulators, the probabilities
    /// `%p{j}_{r}` and their A fragments `%pf{c}_{w}` (k16 chunk c of the step's keys).
    fn online_softmax(&self, b: &mut String) {
        for h in 0..2 {
            let vals: Vec<String> = (0..KEYS / 8)
                .flat_map(|j| [format!("%v{j}_{}", 2 * h), format!("%v{j}_{}", 2 * h + 1)])
                .collect();
            let mut acc = format!("%m{h}");
            for (k, v) in vals.iter().enumerate() {
                let _ = writeln!(b, "        %mx{h}_{k} = arith.maximumf {acc}, {v} : f32");
                acc = format!("%mx{h}_{k}");
            }
            let acc = butterfly_reduce(b, &acc, &format!("mq{h}"), "arith.maximumf", &[1, 2]);
            // A row with no key yet (-inf) takes 0 as its reference, so -inf - (-inf) never
            // makes NaN.
            b.push_str(&specialise(REFERENCE, &[("h", &h), ("acc", &acc)]));
            exp(b, &format!("%da{h}"), &format!("al{h}"));
            let mut sum = format!("%l{h}");
            let _ = writeln!(b, "        %ls{h} = arith.mulf {sum}, %al{h} : f32");
            sum = format!("%ls{h}");
            for j in 0..KEYS / 8 {
                for r in [2 * h, 2 * h + 1] {
                    let _ = writeln!(
                        b,
                        "        %dp{j}_{r} = arith.subf %v{j}_{r}, %ref{h} : f32"
                    );
                    exp(b, &format!("%dp{j}_{r}"), &format!("p{j}_{r}"));
                    let _ = writeln!(b, "        %lp{j}_{r} = arith.addf {sum}, %p{j}_{r} : f32");
                    sum = format!("%lp{j}_{r}");
                }
            }
            let _ = writeln!(b, "        %ln{h} = arith.addf {sum}, %zero : f32");
        }
        for (n, r) in self.accs() {
            let _ = writeln!(
                b,
                "        %ys{n}_{r} = arith.mulf %y{n}_{r}, %al{} : f32",
                r / 2
            );
        }
        // A fragments of chunk c: rows g, g + 8 by keys 16 c + 2 t (+ 1), then + 8: the
        // accumulators of n8 tiles 2 c and 2 c + 1.
        for c in 0..KEYS / 16 {
            for (w, (j, r)) in [(2 * c, 0), (2 * c, 2), (2 * c + 1, 0), (2 * c + 1, 2)]
                .iter()
                .enumerate()
            {
                pack(
                    b,
                    &format!("pf{c}_{w}"),
                    &format!("%p{j}_{r}"),
                    &format!("%p{j}_{}", r + 1),
                );
            }
        }
    }

    /// The probabilities by the values' rows of the step: B[k][n] = V[key][dv] (keys 16 c ..
    /// of the tile, dv 8 n ..), the B fragments of n8 tiles 2 q and 2 q + 1 from one
    /// ldmatrix; keys past Sk hold the last key's row (their probability is 0). Then the
    /// step's yield: the maxima, sums, accumulators and the next step's words.
    fn values(&self, b: &mut String) {
        let mut accs: HashMap<(usize, usize), String> = self
            .accs()
            .map(|(t, r)| ((t, r), format!("%ys{t}_{r}")))
            .collect();
        for c in 0..KEYS / 16 {
            let a: Vec<String> = (0..4).map(|w| format!("%pf{c}_{w}")).collect();
            for q in 0..self.g.dv / 16 {
                let l = format!("vl{c}_{q}");
                Self::ldmatrix(b, &l, "%vsl", (16 * c * self.g.v_row() + 16 * q) * 2);
                for h in 0..2 {
                    let t = 2 * q + h;
                    let cur: Vec<String> = (0..4).map(|r| accs[&(t, r)].clone()).collect();
                    let out = format!("pv{c}_{t}");
                    let (b0, b1) = (format!("%{l}_{}", 2 * h), format!("%{l}_{}", 2 * h + 1));
                    mma(
                        b,
                        &out,
                        [&a[0], &a[1], &a[2], &a[3]],
                        [&b0, &b1],
                        [&cur[0], &cur[1], &cur[2], &cur[3]],
                    );
                    for r in 0..4 {
                        accs.insert((t, r), format!("%{out}_{r}"));
                    }
                }
            }
        }
        let next: Vec<String> = self.accs().map(|k| accs[&k].clone()).collect();
        let state = self.state_types();
        let kept: Vec<String> = self.accs().map(|(t, r)| format!("%y{t}_{r}")).collect();
        let updated: Vec<String> = (0..self.state_len()).map(|k| format!("%upd#{k}")).collect();
        b.push_str(&specialise(
            STEP_END,
            &[
                ("next", &(next.join(", "))),
                ("state", &state),
                ("kept", &(kept.join(", "))),
                ("updated", &(updated.join(", "))),
                ("words", &(self.words("n").join(", "))),
                ("types", &(self.carried_types())),
            ],
        ));
    }

    /// `%upd`: the step's softmax update and values' GEMM, done only where some score of the
    /// warp's is not -inf (`%live`, the same in every lane: a warp-wide maximum). A step every
    /// score of which is -inf (a causal mask's keys past the warp's rows) leaves the maxima,
    /// sums and accumulators as they are, the values the update would give them: the
    /// rescaling factor is exp(0) = 1 (or the accumulators 0 where no key was yet), every
    /// probability 0 (the update would differ only in a zero's sign, and where a masked key's
    /// value row holds an infinity or NaN, which 0 times it spreads).
    /// `PPMOE_ATTENTION_SKIP=0` at compile time: every step updated (a measurement aid).
    fn open_live(&self, b: &mut String) {
        let live = self.live(b);
        let _ = writeln!(
            b,
            "        %live = {live}\n        %upd:{} = scf.if %live -> ({}) {{",
            self.state_len(),
            self.state_types()
        );
    }

    /// The right-hand side of `%live`: whether some score of the warp's step is not -inf (a
    /// warp-wide maximum), or `true` under `PPMOE_ATTENTION_SKIP=0`.
    fn live(&self, b: &mut String) -> String {
        if !super::switch::switch("PPMOE_ATTENTION_SKIP", || true) {
            return "arith.constant true".into();
        }
        let vals: Vec<String> = (0..KEYS / 8)
            .flat_map(|j| (0..4).map(move |r| format!("%v{j}_{r}")))
            .collect();
        let mut acc = "%ninf".to_string();
        for (k, v) in vals.iter().enumerate() {
            let _ = writeln!(b, "        %wl{k} = arith.maximumf {acc}, {v} : f32");
            acc = format!("%wl{k}");
        }
        let _ = writeln!(b, "        %wlx = arith.addf {acc}, %zero : f32");
        let wmax = warp_reduce(b, "wlx", "wlw", "arith.maximumf");
        format!("arith.cmpf une, {wmax}, %ninf : f32")
    }

    fn close_steps(&self, b: &mut String) {
        let _ = writeln!(b, "        }}");
    }

    /// Each row's sum over its four lanes, the output divided by it (0 for a row with no key
    /// where the model guards the softmax) and stored where the row exists.
    fn store(&self, b: &mut String, out: usize) {
        let Geometry { sq, dv, .. } = self.g;
        let n = self.g.batch * sq * dv;
        for h in 0..2 {
            let acc = butterfly_reduce(
                b,
                &format!("%run#{}", 2 + h),
                &format!("sq{h}"),
                "arith.addf",
                &[1, 2],
            );
            b.push_str(&specialise(OUTPUT_ROW, &[("h", &h), ("acc", &acc)]));
        }
        for (t, r) in self.accs() {
            let h = r / 2;
            let idx = 4 + t * 4 + r;
            let _ = writeln!(
                b,
                "        %yq{t}_{r} = arith.mulf %run#{idx}, %inv{h} : f32"
            );
            let value = if self.guard {
                let _ = writeln!(
                    b,
                    "        %yg{t}_{r} = arith.select %some{h}, %yq{t}_{r}, %zero : f32"
                );
                format!("%yg{t}_{r}")
            } else {
                format!("%yq{t}_{r}")
            };
            b.push_str(&specialise(
                STORE_OUTPUT,
                &[
                    ("h", &h),
                    ("t", &t),
                    ("r", &r),
                    ("column", &(8 * t + r % 2)),
                    ("value", &value),
                    ("out", &out),
                    ("n", &n),
                ],
            ));
        }
    }
}
