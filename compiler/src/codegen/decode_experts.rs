//! The experts of a step routed on the device: no routing read back, no
//! grouping on the host, no rows gathered. One token by default (`routes_on_device`) with the
//! CUDA-core projections below; more tokens with bf16 stacks where `routes_on_tensor_cores`
//! says, with the tensor-core projections of `tensor_core_projection` (`tproj_in` or, with
//! the activation as its epilogue, `tproj_act`, and `tproj_out`: the same operands; above 16
//! rows per expert the warpgroup ones of `warpgroup_projection`, `pproj_*`) in place of
//! `dproj_*`. Three kernels besides the step's activation and combine:
//! - `{prefix}_dgroup`: one block per local expert lists the slots routed to it (weight not 0)
//!   and counts them; one more block writes each slot's row for the combine (the slot itself,
//!   or -1) and its local expert (for the biases).
//! - `{prefix}_dproj_in` (and `_dproj_in_bf16`, reading x's bf16 bits, where x is bf16),
//!   `{prefix}_dproj_out`: a projection of the listed rows by their
//!   expert's matrix, rows indexed by slot ([T x k, dout]): one block per (expert, column
//!   tile); a block of an expert with no rows returns before reading a weight, so only the
//!   routed experts' matrices are read, each once per `DecodeTile::rows` rows. Each warp
//!   computes a few columns: its lanes read a column's weights 16 bytes at a time along the
//!   inner dimension (the `Linear` layout's contiguous one), multiply them with the rows staged
//!   in shared memory (f32), and the lanes' sums are folded by butterfly shuffles.
//!
//! A slot's place in its expert's list depends on the order of the shared-memory atomics, but
//! its result does not: each row is computed by the same lanes in the same order wherever it
//! sits, and written to its own slot's row.

use super::experts_kernels::ExpertsOperands;
use super::kernel_gen::{static_shape, warp_reduce, WARP};
use super::template::specialise;
use super::tensor_core_projection::TensorCoreProjection;
use ppmoe_runtime::program::{DecodeTile, ExpertDims, ExpertLayout, Op, Program, DECODE_WARPS};

const SLOT_OF: &str = include_str!("templates/slot_of.mlir");
const GROUP: &str = include_str!("templates/decode/group.mlir");
const GROUP_LIST: &str = include_str!("templates/decode/group_list.mlir");
const GROUP_POSITION: &str = include_str!("templates/decode/group_position.mlir");
const SLOT_AT: &str = include_str!("templates/decode/slot_at.mlir");
const PROJECTION: &str = include_str!("templates/decode/projection.mlir");
const FITS: &str = include_str!("templates/decode/fits.mlir");
const BODY: &str = include_str!("templates/decode/body.mlir");
const COLUMNS: &str = include_str!("templates/decode/columns.mlir");
const COLUMN: &str = include_str!("templates/decode/column.mlir");
const STAGE: &str = include_str!("templates/decode/stage.mlir");
const MULTIPLY: &str = include_str!("templates/decode/multiply.mlir");
const WEIGHT_WORD: &str = include_str!("templates/decode/weight_word.mlir");
const STAGED_VALUE: &str = include_str!("templates/decode/staged_value.mlir");
const STORE: &str = include_str!("templates/decode/store.mlir");
const STORE_ROW: &str = include_str!("templates/decode/store_row.mlir");
const STORE_COLUMN: &str = include_str!("templates/decode/store_column.mlir");

/// Bytes one lane reads of a weight column at once.
const WORD_BYTES: usize = 16;
/// Floats of the rows staged in shared memory (32 KiB, under the 48 KiB of static shared
/// memory a kernel may have).
const STAGED: usize = 8192;

/// The kernels (the step's stacks `dims`, over `t` tokens of `k` slots), where the step's
/// routing comes from `moe.route` on the device (`ids`), its stacks are in the `Linear`
/// layout, both of `mid`'s type, and the tokens few enough (`routes_on_device`, or
/// `routes_on_tensor_cores` with bf16 stacks); None otherwise (the step groups elsewhere).
/// `act`: the step's gated activation (`act_math`), where it may be the tensor-core first
/// projection's epilogue.
pub(super) fn kernels(
    p: &Program,
    o: &ExpertsOperands,
    ids: usize,
    prefix: &str,
    (layout, act): (ExpertLayout, Option<String>),
    (dims, t, k): (ExpertDims, usize, usize),
    bf16: bool,
) -> Option<String> {
    let routed = route_of(p, ids)?;
    let stack = |b: usize| p.buffers[b].dtype;
    let same = stack(o.w_in) == stack(o.w_out);
    let per = WORD_BYTES / if bf16 { 2 } else { 4 };
    let words = dims.hidden % per == 0 && dims.ffn % per == 0;
    let s = t * k;
    // More than one token with bf16 stacks: the tensor cores (when the inner dimensions fit).
    let tensor = bf16
        && routed > 1
        && TensorCoreProjection::fits(dims.hidden)
        && TensorCoreProjection::fits(dims.ffn);
    // PPMoE's step of a rank's experts (its all-reduce may overlap the device grouping).
    let local = o.local;
    let matrix_bytes = dims.first_matrix_bytes(2);
    let wanted = if tensor {
        ppmoe_runtime::program::routes_on_tensor_cores(routed, s, dims.experts, matrix_bytes, local)
    } else {
        ppmoe_runtime::program::routes_on_device(routed)
    };
    if layout != ExpertLayout::Linear || !same || !words || !chosen(wanted) {
        return None;
    }
    let mut out = group_kernel(prefix, s, dims.experts);
    if tensor {
        let (warpgroups, producer, persistent) =
            projection_form(s, dims.experts, matrix_bytes, local);
        // The gated activation in the first projection's epilogue where it fits (gate and up
        // columns paired in each warp), else the step's activation kernel between them.
        let fused = act.filter(|_| TensorCoreProjection::fuses(dims.ffn, dims.n, warpgroups));
        // The persistent projections read their rows sorted by expert where the first writes
        // the activations (fused) in that order too.
        let pingpong = persistent && super::warpgroup_projection::pingpong(s, dims.experts);
        let sorted = persistent && !pingpong && fused.is_some() && sorted_rows_wanted(dims.ffn);
        if sorted {
            out.push_str(&super::sorted_rows::kernel(prefix, s, k, dims.hidden));
        }
        let projection = |name: &str, (din, dout): (usize, usize), div, act| {
            TensorCoreProjection {
                name: format!("{prefix}_{name}"),
                din,
                dout,
                div,
                slots: s,
                act,
                warpgroups,
                producer,
                persistent,
                pingpong,
                sorted,
            }
            .kernel()
        };
        let [fused_name, plain_name, second] =
            TensorCoreProjection::names(warpgroups, producer, (persistent, pingpong));
        let first = if fused.is_some() {
            fused_name
        } else {
            plain_name
        };
        out.push_str(&projection(first, (dims.hidden, dims.n), k, fused));
        out.push_str(&projection(second, (dims.ffn, dims.hidden), 1, None));
        return Some(out);
    }
    let tile = DecodeTile::for_tokens(t);
    let mid = if bf16 { "bf16" } else { "f32" };
    let projection = |name: &str, src: &str, (din, dout): (usize, usize), div: usize| Projection {
        name: format!("{prefix}_{name}"),
        src: src.to_string(),
        mid,
        din,
        dout,
        div,
        slots: s,
        tile,
        per,
    };
    out.push_str(&projection("dproj_in", "f32", (dims.hidden, dims.n), k).kernel());
    // x bf16 in the model (with bf16 stacks): the same projection reading x's bf16 bits too,
    // which the runtime takes where it holds x as them (a bf16 input) instead of widening
    // them for the first (the same values: the first rounds x to bf16 as it reads it).
    if bf16 && p.buffers[o.x].dtype == ppmoe_runtime::DType::BF16 {
        let name = ppmoe_runtime::program::DPROJ_IN_BF16;
        out.push_str(&projection(name, "bf16", (dims.hidden, dims.n), k).kernel());
    }
    out.push_str(&projection("dproj_out", mid, (dims.ffn, dims.hidden), 1).kernel());
    Some(out)
}

/// The tensor-core projections' form for a step of `slots` slots over `experts` experts:
/// (warpgroups, a producer warp, persistent).
/// Where `projects_on_warpgroups` says (by rows per expert and `matrix_bytes`, the size of an
/// expert's first matrix) the warpgroup kernels, in their persistent form (a block per SM
/// over every expert's tiles, a producer warp, the weights through tensor maps), measured on
/// an H200 against the per-tile warp-specialised form (`sproj`), Qwen3-30B-A3B's layer: 0.398
/// against 0.410 ms at 512 tokens, 1.109 against 1.260 at 4096, 3.784 against 4.431 at 16384;
/// device-routed, Mixtral's at 4096 5.788 against 6.978 and the DeepSeek-like 7.133 against
/// 7.912 (docs/persistent-projection-h200-9cefc46.txt). `PPMOE_TENSOR_PROJECTIONS=wgmma` or
/// `=mma` takes one kind wherever the tensor cores are; `=wgmma-per-tile` the per-tile form,
/// `=wgmma-cp-async` the form whose threads all copy. Past `PP_MAX_EXPERTS` local experts (the
/// running sums' shared memory) the per-tile form.
fn projection_form(
    slots: usize,
    experts: usize,
    matrix_bytes: usize,
    local: bool,
) -> (bool, bool, bool) {
    let few = experts <= ppmoe_runtime::program::PP_MAX_EXPERTS;
    match std::env::var("PPMOE_TENSOR_PROJECTIONS").as_deref() {
        Ok("wgmma" | "wgmma-persistent") => (true, true, few),
        Ok("wgmma-per-tile") => (true, true, false),
        Ok("wgmma-cp-async") => (true, false, false),
        Ok("mma") => (false, false, false),
        value => {
            if let Ok(other) = value.map(str::trim) {
                if !other.is_empty() && other != "policy" {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| tracing::warn!("PPMOE_TENSOR_PROJECTIONS={other:?} is not a form (wgmma, wgmma-persistent, wgmma-per-tile, wgmma-cp-async, mma, policy): the policy chooses"));
                }
            }
            let w =
                ppmoe_runtime::program::projects_on_warpgroups(slots, experts, matrix_bytes, local);
            (w, w, w && few)
        }
    }
}

/// Whether the persistent projections read rows sorted by expert (`sorted_rows`): where
/// `sorts_rows` says for experts of `ffn` columns, unless `PPMOE_SORTED_ROWS` at compile time
/// says (a measurement aid): `0` never (the rows gathered by the producer warp's lanes), `1`
/// wherever the projections can (another value is warned about and leaves the policy).
fn sorted_rows_wanted(ffn: usize) -> bool {
    super::switch::switch("PPMOE_SORTED_ROWS", || {
        ppmoe_runtime::program::sorts_rows(ffn)
    })
}

/// The tokens `moe.route` routed into `ids`: its own ids, or those padded over tp (the
/// all-to-all form's concat of the ids and constant rows, which PPMoE's local step reads; the
/// padding rows have weight 0, so no expert lists them). A capacity's dropped slots weigh 0
/// too (its kernels zero them on the device), so they are no expert's either, as on the host.
pub(super) fn route_of(p: &Program, ids: usize) -> Option<usize> {
    let producer = |b: usize| p.instructions.iter().find(|i| i.outputs.contains(&b));
    let mut made = producer(ids)?;
    if let (Op::Concat { axis: 0 }, Some(Some(first))) = (&made.op, made.inputs.first()) {
        made = producer(*first)?;
    }
    let Op::MoeRoute { .. } = made.op else {
        return None;
    };
    let own = *made.outputs.get(1)?;
    static_shape(&p.buffers[own])?.first().copied()
}

/// The row counts a projection has a body for: powers of two below `r`, and `r`.
fn row_counts(r: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|&n| n < r)
        .collect();
    sizes.push(r);
    sizes
}

/// Whether to route on the device: where the tokens are few (`routes_on_device`), unless
/// `PPMOE_DEVICE_ROUTING` says: `0` never, `1` wherever the step can (to test and time the
/// device path on any model).
fn chosen(few: bool) -> bool {
    super::switch::switch("PPMOE_DEVICE_ROUTING", || few)
}

/// A slot `%s`'s local expert `%loc` (i64, may lie outside 0..e), whether it is one of this
/// rank's (`%local`), and whether its weight is not 0 (`%nz`): reads `%ids` and `%w`, with
/// `%first64`, `%cE64`, `%z64` and `%zero` defined.
pub(super) fn slot_of() -> String {
    slot_at_index("%s", "")
}

/// `slot_of`'s values for slot `slot` (an index value), each name suffixed `sfx`.
fn slot_at_index(slot: &str, sfx: &str) -> String {
    specialise(SLOT_OF, &[("sfx", &sfx), ("slot", &slot)])
}

/// `{prefix}_dgroup` over `s` slots and `e` local experts (`list_blocks` blocks of
/// `LIST_THREADS`): block b < e lists expert b's slots, the others write `pos` and `eid` for
/// theirs. Each thread reads `LIST_SLOTS_PER_THREAD` slots at a time, all their loads before
/// any use (an index past the slots reads the last one and is left out).
fn group_kernel(prefix: &str, s: usize, e: usize) -> String {
    use ppmoe_runtime::program::{LIST_SLOTS_PER_THREAD as U, LIST_THREADS};
    let each =
        |template: &str| -> String { (0..U).map(|u| specialise(template, &[("u", &u)])).collect() };
    let slots = |base: &str| -> String { (0..U).map(|u| slot_at(u, base)).collect() };
    specialise(
        GROUP,
        &[
            ("name", &format!("{prefix}_dgroup")),
            ("s", &s),
            ("last_slot", &(s - 1)),
            ("e", &e),
            ("step", &(LIST_THREADS * U)),
            ("lister_slots", &slots("%base")),
            ("lists", &each(GROUP_LIST)),
            ("other_slots", &slots("%qbase")),
            ("positions", &each(GROUP_POSITION)),
        ],
    )
}

/// The thread's slot `u` of those from `base`: `%s_{u}` (its index), `%in_{u}` (whether it is one
/// of the slots), and `slot_of`'s values for it (or for the last slot, where it is not), each
/// suffixed `_{u}`; `%cS`, `%cS1` (the last slot) and `%tid` defined.
fn slot_at(u: usize, base: &str) -> String {
    specialise(
        SLOT_AT,
        &[
            ("u", &u),
            ("offset", &(u * ppmoe_runtime::program::LIST_THREADS)),
            ("base", &base),
            (
                "slot",
                &slot_at_index(&format!("%sr_{u}"), &format!("_{u}")),
            ),
        ],
    )
}

/// One projection's kernel (see the module's comment).
struct Projection {
    name: String,
    /// The element type of the source rows and of the output (`mid`).
    src: String,
    mid: &'static str,
    din: usize,
    dout: usize,
    /// Slot s reads source row s / div (k: the token's row of x; 1: the slot's own row).
    div: usize,
    slots: usize,
    tile: DecodeTile,
    /// Weight elements per 16-byte word.
    per: usize,
}

impl Projection {
    /// The inner dimension's chunk staged at once: all of it where it fits, else a multiple of
    /// a warp's words.
    fn chunk(&self) -> usize {
        let fit = STAGED / self.tile.rows;
        if self.din <= fit {
            self.din
        } else {
            fit / (WARP * self.per) * (WARP * self.per)
        }
    }

    fn kernel(&self) -> String {
        let (r, cw, kc) = (self.tile.rows, self.tile.warp_columns, self.chunk());
        // A body per row count up to R (1, 2, 4, .., R), the smallest that holds this pass's
        // rows: an expert with one row does one row's arithmetic and staging, not R's.
        let sizes = row_counts(r);
        let mut bodies = String::new();
        for (i, &n) in sizes.iter().enumerate() {
            let last = i + 1 == sizes.len();
            if !last {
                bodies += &specialise(FITS, &[("n", &n)]);
            }
            bodies += &self.body(n, cw);
            if !last {
                bodies += "          } else {\n";
            }
        }
        bodies += &"          }\n".repeat(sizes.len() - 1);
        specialise(
            PROJECTION,
            &[
                ("name", &self.name),
                ("src", &self.src),
                ("mid", &self.mid),
                ("staged_floats", &(r * kc)),
                ("r", &r),
                ("kc", &kc),
                ("din", &self.din),
                ("slots", &self.slots),
                ("dout", &self.dout),
                ("per", &self.per),
                ("div", &self.div),
                ("columns", &self.columns(cw)),
                ("bodies", &bodies),
            ],
        )
    }

    /// One pass over `n` rows (at most; `%rows` of them real): the chunks of the inner
    /// dimension staged and multiplied, then the sums stored.
    fn body(&self, n: usize, cw: usize) -> String {
        let accs: Vec<String> = (0..n * cw).map(|a| format!("%a{a}")).collect();
        let inits = accs
            .iter()
            .map(|a| format!("{a} = %zero"))
            .collect::<Vec<_>>()
            .join(", ");
        let types = vec!["f32"; n * cw].join(", ");
        specialise(
            BODY,
            &[
                ("n", &(n * cw)),
                ("inits", &inits),
                ("types", &types),
                ("stage", &self.stage(n)),
                ("multiply", &self.multiply(n, &accs, &types)),
                ("store", &self.store(n)),
            ],
        )
    }

    /// This warp's columns `%col{j}`, and the first weight word of each (clamped to the last
    /// column past the end: read, never stored).
    fn columns(&self, cw: usize) -> String {
        let columns: String = (0..cw).map(|j| specialise(COLUMN, &[("j", &j)])).collect();
        specialise(
            COLUMNS,
            &[
                ("cw", &cw),
                ("block_columns", &(DECODE_WARPS * cw)),
                ("last", &(self.dout - 1)),
                ("row_words", &(self.din / self.per)),
                ("columns", &columns),
            ],
        )
    }

    /// Rows r0.. (up to `rows`, of `n` staged) of chunk kc.. of the inner dimension into `%xs`
    /// as f32 (0 past the rows or the end), between barriers.
    fn stage(&self, n: usize) -> String {
        let load = if self.src == "f32" && self.per == 8 {
            // f32 rows into a bf16 projection: rounded to bf16 first, as the host-grouped path
            // narrows a bf16 GEMM's activations and the CPU backend computes it.
            "                %xf = memref.load %src[%o] : memref<?xf32>\n                %xr = arith.truncf %xf : f32 to bf16\n                %xv = arith.extf %xr : bf16 to f32\n".to_string()
        } else if self.src == "f32" {
            "                %xv = memref.load %src[%o] : memref<?xf32>\n".to_string()
        } else {
            format!(
                "                %xb = memref.load %src[%o] : memref<?x{0}>\n                %xv = arith.extf %xb : {0} to f32\n",
                self.src
            )
        };
        specialise(
            STAGE,
            &[
                ("pass_floats", &(n * self.chunk())),
                ("load", &load),
                ("staged_floats", &(self.tile.rows * self.chunk())),
            ],
        )
    }

    /// The lanes' words of the chunk: each column's weights times each staged row, into the
    /// accumulators (one fused multiply-add per element, in the word's order).
    fn multiply(&self, n: usize, accs: &[String], types: &str) -> String {
        let (cw, per) = (self.tile.warp_columns, self.per);
        let xs = format!("memref<{}xf32, 3>", self.tile.rows * self.chunk());
        let inner: Vec<String> = (0..accs.len()).map(|a| format!("%b{a}")).collect();
        let iters = inner
            .iter()
            .zip(accs)
            .map(|(i, a)| format!("{i} = {a}"))
            .collect::<Vec<_>>()
            .join(", ");
        let weights: String = (0..cw).map(|j| self.weight_word(j)).collect();
        let mut next: Vec<String> = inner.clone();
        let mut products = String::new();
        for row in 0..n {
            for u in 0..per {
                products += &specialise(
                    STAGED_VALUE,
                    &[
                        ("row", &row),
                        ("u", &u),
                        ("offset", &(row * self.chunk() + u)),
                        ("xs", &xs),
                    ],
                );
                for j in 0..cw {
                    let a = row * cw + j;
                    products += &format!(
                        "              %f{a}_{u} = math.fma %x{row}_{u}, %w{j}_{u}, {} : f32\n",
                        next[a]
                    );
                    next[a] = format!("%f{a}_{u}");
                }
            }
        }
        let sums = (0..accs.len())
            .map(|a| format!("%in#{a}"))
            .collect::<Vec<_>>()
            .join(", ");
        specialise(
            MULTIPLY,
            &[
                ("n", &accs.len()),
                ("iters", &iters),
                ("types", &types),
                ("weights", &weights),
                ("products", &products),
                ("next", &next.join(", ")),
                ("sums", &sums),
            ],
        )
    }

    /// Word `%wv{j}` of column j's weights, as `per` f32 values `%w{j}_{u}` (bf16: a 4-byte
    /// lane's low half first).
    fn weight_word(&self, j: usize) -> String {
        let mut unpack = String::new();
        super::few_tokens::unpack(&mut unpack, &format!("%wv{j}"), &format!("w{j}"), self.per);
        specialise(WEIGHT_WORD, &[("j", &j), ("unpack", &unpack)])
    }

    /// The lanes' sums folded; lane 0 writes each row's columns that exist (of `n` rows).
    fn store(&self, r: usize) -> String {
        let cw = self.tile.warp_columns;
        let mut totals = Vec::with_capacity(r * cw);
        let mut sums = String::new();
        for a in 0..r * cw {
            sums += &format!("          %p{a} = arith.addf %acc#{a}, %zero : f32\n");
            totals.push(warp_reduce(
                &mut sums,
                &format!("p{a}"),
                &format!("t{a}"),
                "arith.addf",
            ));
        }
        let rows: String = (0..r).map(|row| self.store_row(row, &totals)).collect();
        specialise(STORE, &[("sums", &sums), ("rows", &rows)])
    }

    /// Lane 0's stores of row `row`'s columns that exist, where the pass has the row.
    fn store_row(&self, row: usize, totals: &[String]) -> String {
        let cw = self.tile.warp_columns;
        let mut columns = String::new();
        for j in 0..cw {
            let a = row * cw + j;
            let store = if self.mid == "f32" {
                format!(
                    "                memref.store {0}, %dst[%so{a}] : memref<?xf32>\n",
                    totals[a]
                )
            } else {
                format!(
                    "                %st{a} = arith.truncf {0} : f32 to {1}\n                memref.store %st{a}, %dst[%so{a}] : memref<?x{1}>\n",
                    totals[a], self.mid
                )
            };
            columns += &specialise(
                STORE_COLUMN,
                &[("a", &a), ("j", &j), ("row", &row), ("store", &store)],
            );
        }
        specialise(STORE_ROW, &[("row", &row), ("columns", &columns)])
    }
}

#[cfg(test)]
mod tests {
    use super::row_counts;

    #[test]
    fn a_projection_has_a_body_per_power_of_two_rows_up_to_its_tile() {
        assert_eq!(row_counts(1), [1]);
        assert_eq!(row_counts(2), [1, 2]);
        assert_eq!(row_counts(3), [1, 2, 3]);
        assert_eq!(row_counts(8), [1, 2, 4, 8]);
    }
}
