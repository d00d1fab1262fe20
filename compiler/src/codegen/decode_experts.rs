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
use std::fmt::Write as _;

const SLOT_OF: &str = include_str!("templates/slot_of.mlir");

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
    let step = LIST_THREADS * U;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "      %bid = gpu.block_id x\n      %tid = gpu.thread_id x\n      %c0 = arith.constant 0 : index\n      %cS = arith.constant {s} : index\n      %cS1 = arith.constant {} : index\n      %cE = arith.constant {e} : index\n      %cstep = arith.constant {step} : index\n      %z32 = arith.constant 0 : i32\n      %one32 = arith.constant 1 : i32\n      %m1 = arith.constant -1 : i32\n      %zero = arith.constant 0.0 : f32\n      %first64 = arith.index_cast %first : index to i64\n      %cE64 = arith.index_cast %cE : index to i64\n      %z64 = arith.constant 0 : i64\n      %lister = arith.cmpi ult, %bid, %cE : index\n      scf.if %lister {{\n        %tid0 = arith.cmpi eq, %tid, %c0 : index\n        scf.if %tid0 {{\n          memref.store %z32, %cnt[%c0] : memref<1xi32, 3>\n        }}\n        gpu.barrier\n        %bid64 = arith.index_cast %bid : index to i64\n        %lbase = arith.muli %bid, %cS : index\n        scf.for %base = %c0 to %cS step %cstep {{",
        s - 1
    );
    for u in 0..U {
        slot_at(&mut b, u, "%base");
    }
    for u in 0..U {
        let _ = writeln!(
            b,
            "          %is_{u} = arith.cmpi eq, %loc_{u}, %bid64 : i64\n          %mine_{u}_0 = arith.andi %is_{u}, %nz_{u} : i1\n          %mine_{u} = arith.andi %mine_{u}_0, %in_{u} : i1\n          scf.if %mine_{u} {{\n            %at_{u}_32 = memref.atomic_rmw addi %one32, %cnt[%c0] : (i32, memref<1xi32, 3>) -> i32\n            %at_{u} = arith.index_cast %at_{u}_32 : i32 to index\n            %li_{u} = arith.addi %lbase, %at_{u} : index\n            %s_{u}_32 = arith.index_cast %s_{u} : index to i32\n            memref.store %s_{u}_32, %lists[%li_{u}] : memref<?xi32>\n          }}"
        );
    }
    let _ = writeln!(
        b,
        "        }}\n        gpu.barrier\n        scf.if %tid0 {{\n          %n = memref.load %cnt[%c0] : memref<1xi32, 3>\n          memref.store %n, %counts[%bid] : memref<?xi32>\n        }}\n      }} else {{\n        %q = arith.subi %bid, %cE : index\n        %qbase = arith.muli %q, %cstep : index"
    );
    for u in 0..U {
        slot_at(&mut b, u, "%qbase");
    }
    for u in 0..U {
        let _ = writeln!(
            b,
            "          scf.if %in_{u} {{\n            %used_{u} = arith.andi %local_{u}, %nz_{u} : i1\n            %s_{u}_32 = arith.index_cast %s_{u} : index to i32\n            %p_{u} = arith.select %used_{u}, %s_{u}_32, %m1 : i32\n            memref.store %p_{u}, %pos[%s_{u}] : memref<?xi32>\n            %l_{u}_32 = arith.trunci %loc_{u} : i64 to i32\n            %le_{u} = arith.select %local_{u}, %l_{u}_32, %z32 : i32\n            memref.store %le_{u}, %eid[%s_{u}] : memref<?xi32>\n          }}"
        );
    }
    let _ = writeln!(b, "      }}");
    let params = [
        "%ids: memref<?xf32>",
        "%w: memref<?xf32>",
        "%lists: memref<?xi32>",
        "%counts: memref<?xi32>",
        "%pos: memref<?xi32>",
        "%eid: memref<?xi32>",
        "%first: index",
    ];
    format!(
        "    gpu.func @{prefix}_dgroup({}) workgroup(%cnt: memref<1xi32, 3>) kernel {{\n{b}      gpu.return\n    }}\n",
        params.join(", ")
    )
}

/// The thread's slot `u` of those from `base`: `%s_{u}` (its index), `%in_{u}` (whether it is one
/// of the slots), and `slot_of`'s values for it (or for the last slot, where it is not), each
/// suffixed `_{u}`; `%cS`, `%cS1` (the last slot) and `%tid` defined.
fn slot_at(b: &mut String, u: usize, base: &str) {
    let _ = writeln!(
        b,
        "          %o_{u} = arith.constant {} : index\n          %sb_{u} = arith.addi {base}, %o_{u} : index\n          %s_{u} = arith.addi %sb_{u}, %tid : index\n          %in_{u} = arith.cmpi ult, %s_{u}, %cS : index\n          %sr_{u} = arith.minui %s_{u}, %cS1 : index",
        u * ppmoe_runtime::program::LIST_THREADS
    );
    b.push_str(&slot_at_index(&format!("%sr_{u}"), &format!("_{u}")));
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
        let mut b = String::new();
        let _ = writeln!(
            b,
            "      %e = gpu.block_id y\n      %nb = gpu.block_id x\n      %tid = gpu.thread_id x\n      %c0 = arith.constant 0 : index\n      %c32 = arith.constant 32 : index\n      %c256 = arith.constant 256 : index\n      %cR = arith.constant {r} : index\n      %cKC = arith.constant {kc} : index\n      %cK = arith.constant {} : index\n      %cS = arith.constant {} : index\n      %cN = arith.constant {} : index\n      %cper = arith.constant {} : index\n      %cdiv = arith.constant {} : index\n      %zero = arith.constant 0.0 : f32\n      %warp = arith.divui %tid, %c32 : index\n      %lane = arith.remui %tid, %c32 : index\n      %cnt32 = memref.load %counts[%e] : memref<?xi32>\n      %cnt = arith.index_cast %cnt32 : i32 to index\n      %any = arith.cmpi ugt, %cnt, %c0 : index\n      scf.if %any {{",
            self.din,
            self.slots,
            self.dout,
            self.per,
            self.div
        );
        self.columns(&mut b, cw);
        let _ = writeln!(
            b,
            "        %lbase = arith.muli %e, %cS : index\n        scf.for %r0 = %c0 to %cnt step %cR {{\n          %left = arith.subi %cnt, %r0 : index\n          %rows = arith.minui %left, %cR : index"
        );
        // A body per row count up to R (1, 2, 4, .., R), the smallest that holds this pass's
        // rows: an expert with one row does one row's arithmetic and staging, not R's.
        let sizes = row_counts(r);
        for (i, &n) in sizes.iter().enumerate() {
            if i + 1 < sizes.len() {
                let _ = writeln!(
                    b,
                    "          %rn{n} = arith.constant {n} : index\n          %fits{n} = arith.cmpi ule, %rows, %rn{n} : index\n          scf.if %fits{n} {{"
                );
            }
            self.body(&mut b, n, cw);
            if i + 1 < sizes.len() {
                let _ = writeln!(b, "          }} else {{");
            }
        }
        for _ in 1..sizes.len() {
            let _ = writeln!(b, "          }}");
        }
        let _ = writeln!(b, "        }}\n      }}");
        let params = [
            format!("%src: memref<?x{}>", self.src),
            "%wt: memref<?xvector<4xi32>>".to_string(),
            "%lists: memref<?xi32>".to_string(),
            "%counts: memref<?xi32>".to_string(),
            format!("%dst: memref<?x{}>", self.mid),
        ];
        format!(
            "    gpu.func @{}({}) workgroup(%xs: memref<{}xf32, 3>) kernel {{\n{b}      gpu.return\n    }}\n",
            self.name,
            params.join(", "),
            r * kc
        )
    }

    /// One pass over `n` rows (at most; `%rows` of them real): the chunks of the inner
    /// dimension staged and multiplied, then the sums stored.
    fn body(&self, b: &mut String, n: usize, cw: usize) {
        let accs: Vec<String> = (0..n * cw).map(|a| format!("%a{a}")).collect();
        let inits = accs
            .iter()
            .map(|a| format!("{a} = %zero"))
            .collect::<Vec<_>>()
            .join(", ");
        let types = vec!["f32"; n * cw].join(", ");
        let _ = writeln!(
            b,
            "          %acc:{} = scf.for %kc = %c0 to %cK step %cKC iter_args({inits}) -> ({types}) {{",
            n * cw
        );
        self.stage(b, n);
        self.multiply(b, n, &accs, &types);
        let _ = writeln!(b, "          }}");
        self.store(b, n);
    }

    /// This warp's columns `%col{j}`, and the first weight word of each (clamped to the last
    /// column past the end: read, never stored).
    fn columns(&self, b: &mut String, cw: usize) {
        let _ = writeln!(
            b,
            "        %ccw = arith.constant {cw} : index\n        %cbw = arith.constant {} : index\n        %cb00 = arith.muli %nb, %cbw : index\n        %wcw = arith.muli %warp, %ccw : index\n        %cbase = arith.addi %cb00, %wcw : index\n        %eN = arith.muli %e, %cN : index\n        %nm1 = arith.constant {} : index\n        %kw = arith.constant {} : index",
            DECODE_WARPS * cw,
            self.dout - 1,
            self.din / self.per
        );
        for j in 0..cw {
            let _ = writeln!(
                b,
                "        %cj{j} = arith.constant {j} : index\n        %col{j} = arith.addi %cbase, %cj{j} : index\n        %colc{j} = arith.minui %col{j}, %nm1 : index\n        %wr{j} = arith.addi %eN, %colc{j} : index\n        %wb{j} = arith.muli %wr{j}, %kw : index"
            );
        }
    }

    /// Rows r0.. (up to `rows`, of `n` staged) of chunk kc.. of the inner dimension into `%xs`
    /// as f32 (0 past the rows or the end), between barriers.
    fn stage(&self, b: &mut String, n: usize) {
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
        let _ = writeln!(
            b,
            "            gpu.barrier\n            %klen0 = arith.subi %cK, %kc : index\n            %klen = arith.minui %klen0, %cKC : index\n            %cNKC = arith.constant {} : index\n            scf.for %ix = %tid to %cNKC step %c256 {{\n              %r = arith.divui %ix, %cKC : index\n              %kk = arith.remui %ix, %cKC : index\n              %rin = arith.cmpi ult, %r, %rows : index\n              %kin = arith.cmpi ult, %kk, %klen : index\n              %ok = arith.andi %rin, %kin : i1\n              %v = scf.if %ok -> (f32) {{\n                %li0 = arith.addi %lbase, %r0 : index\n                %li = arith.addi %li0, %r : index\n                %s32 = memref.load %lists[%li] : memref<?xi32>\n                %s = arith.index_cast %s32 : i32 to index\n                %row = arith.divui %s, %cdiv : index\n                %rb = arith.muli %row, %cK : index\n                %o1 = arith.addi %rb, %kc : index\n                %o = arith.addi %o1, %kk : index\n{load}                scf.yield %xv : f32\n              }} else {{\n                scf.yield %zero : f32\n              }}\n              memref.store %v, %xs[%ix] : memref<{}xf32, 3>\n            }}\n            gpu.barrier",
            n * self.chunk(),
            self.tile.rows * self.chunk()
        );
    }

    /// The lanes' words of the chunk: each column's weights times each staged row, into the
    /// accumulators (one fused multiply-add per element, in the word's order).
    fn multiply(&self, b: &mut String, n: usize, accs: &[String], types: &str) {
        let (cw, per) = (self.tile.warp_columns, self.per);
        let xs = format!("memref<{}xf32, 3>", self.tile.rows * self.chunk());
        let inner: Vec<String> = (0..accs.len()).map(|a| format!("%b{a}")).collect();
        let iters = inner
            .iter()
            .zip(accs)
            .map(|(i, a)| format!("{i} = {a}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            b,
            "            %nw = arith.divui %klen, %cper : index\n            %kcw = arith.divui %kc, %cper : index\n            %in:{} = scf.for %q = %lane to %nw step %c32 iter_args({iters}) -> ({types}) {{\n              %qp = arith.muli %q, %cper : index",
            accs.len()
        );
        for j in 0..cw {
            let _ = writeln!(
                b,
                "              %wi{j}0 = arith.addi %wb{j}, %kcw : index\n              %wi{j} = arith.addi %wi{j}0, %q : index\n              %wv{j} = memref.load %wt[%wi{j}] : memref<?xvector<4xi32>>"
            );
            self.unpack(b, j);
        }
        let mut next: Vec<String> = inner.clone();
        for row in 0..n {
            for u in 0..per {
                let _ = writeln!(
                    b,
                    "              %xo{row}_{u}c = arith.constant {} : index\n              %xo{row}_{u} = arith.addi %qp, %xo{row}_{u}c : index\n              %x{row}_{u} = memref.load %xs[%xo{row}_{u}] : {xs}",
                    row * self.chunk() + u
                );
                for j in 0..cw {
                    let a = row * cw + j;
                    let _ = writeln!(
                        b,
                        "              %f{a}_{u} = math.fma %x{row}_{u}, %w{j}_{u}, {} : f32",
                        next[a]
                    );
                    next[a] = format!("%f{a}_{u}");
                }
            }
        }
        let _ = writeln!(
            b,
            "              scf.yield {} : {types}\n            }}\n            scf.yield {} : {types}",
            next.join(", "),
            (0..accs.len())
                .map(|a| format!("%in#{a}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Word `%wv{j}` as `per` f32 values `%w{j}_{u}` (bf16: a 4-byte lane's low half first).
    fn unpack(&self, b: &mut String, j: usize) {
        super::few_tokens::unpack(b, &format!("%wv{j}"), &format!("w{j}"), self.per);
    }

    /// The lanes' sums folded; lane 0 writes each row's columns that exist (of `n` rows).
    fn store(&self, b: &mut String, r: usize) {
        let cw = self.tile.warp_columns;
        let mut totals = Vec::with_capacity(r * cw);
        for a in 0..r * cw {
            let _ = writeln!(b, "          %p{a} = arith.addf %acc#{a}, %zero : f32");
            totals.push(warp_reduce(
                b,
                &format!("p{a}"),
                &format!("t{a}"),
                "arith.addf",
            ));
        }
        let _ = writeln!(
            b,
            "          %lane0 = arith.cmpi eq, %lane, %c0 : index\n          scf.if %lane0 {{"
        );
        for row in 0..r {
            let _ = writeln!(
                b,
                "            %rc{row} = arith.constant {row} : index\n            %rok{row} = arith.cmpi ult, %rc{row}, %rows : index\n            scf.if %rok{row} {{\n              %sl{row}0 = arith.addi %lbase, %r0 : index\n              %sl{row} = arith.addi %sl{row}0, %rc{row} : index\n              %ss{row}32 = memref.load %lists[%sl{row}] : memref<?xi32>\n              %ss{row} = arith.index_cast %ss{row}32 : i32 to index\n              %sb{row} = arith.muli %ss{row}, %cN : index"
            );
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
                let _ = writeln!(
                    b,
                    "              %cok{a} = arith.cmpi ult, %col{j}, %cN : index\n              scf.if %cok{a} {{\n                %so{a} = arith.addi %sb{row}, %col{j} : index\n{store}              }}"
                );
            }
            let _ = writeln!(b, "            }}");
        }
        let _ = writeln!(b, "          }}");
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
