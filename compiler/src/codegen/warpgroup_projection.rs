//! A device-routed expert projection on Hopper's warpgroup tensor cores (`wgmma`), for steps
//! whose experts have many rows each: the same operands and slot lists as the `tproj` kernels
//! (see `tensor_core_projection`), but each block multiplies its expert's listed rows, 128 at a
//! time, by 256 of the expert's weight rows with `wgmma.mma_async` m64n256k16 (bf16 in, f32
//! accumulated in registers), both operands staged in shared memory by `cp.async` in four
//! stages of 64 inner elements: the copies of the next three chunks are in flight while the
//! tensor cores multiply one (the next chunk's copies issued while they do).
//! The copies run ahead over the block's chunks of every pass, so a pass's first chunks are in
//! flight while the previous pass's results are stored. That is the `wproj` form, every
//! thread copying between block-wide barriers (`PPMOE_TENSOR_PROJECTIONS=wgmma-cp-async`);
//! the warp-specialised forms of `producer` (producer warps feed the same stages, the weights
//! by tensor copies: `sproj`, per tile) and `persistent` (`pproj`, a block per SM over every
//! expert's tiles, the policy's) keep the same multiplication and epilogue.
//!
//! Per block (two warpgroups, 256 threads; grid: column tiles x local experts): warpgroup w
//! computes rows 64 w .. 64 w + 63 of each pass (and skips the multiplication where the pass
//! has no such rows). Every thread copies four 16-byte words of the rows' chunk and eight of
//! the weights'.
//!
//! Shared memory (dynamic, `WG_SHARED_BYTES`, its start aligned to 1024 bytes), per stage: the
//! 128 listed rows' chunk (16 KiB), then the 256 weight rows' (32 KiB), each in the K-major
//! layout with the 128-byte swizzle: row r's 128 bytes at 128 r, its 16-byte word j at
//! position j ^ (r % 8) (so the 8 lanes of a store phase, one row's 8 words, write 8 distinct
//! bank groups, and the wgmma reads without conflicts); groups of 8 rows are 1024 bytes apart
//! (the descriptors' stride byte offset), and a k16 step starts 32 bytes further. Rows past
//! the expert's count are copied from its first listed row (valid memory), multiplied, and
//! never stored.
//!
//! The accumulators (m64n256, 128 f32 per thread) are those of 32 m16n8 tiles: thread t of a
//! warpgroup holds row 16 (t / 32) + (t % 32) / 4 (+ 8 for the second pair) and columns
//! 8 j + 2 (t % 4) (+ 1) of n8 tile j. Fused, the block's 256 weight rows are 128 gate rows
//! and their 128 up rows, so tile j's gate value and tile j + 16's up value are the same
//! element.

use super::tensor_core_projection::TensorCoreProjection;

mod ablation;
mod epilogue;
mod geometry;
mod persistent;
mod producer;

use super::template::{specialise, specialise_at};
use geometry::Geometry;

const WARPGROUP_KERNEL: &str = include_str!("templates/warpgroup_kernel.mlir");
const CONSTANTS: &str = include_str!("templates/warpgroup/constants.mlir");
const PER_TILE: &str = include_str!("templates/warpgroup/per_tile.mlir");
const COPY_AHEAD: &str = include_str!("templates/warpgroup/copy_ahead.mlir");
const BLOCK_EXPERT: &str = include_str!("templates/warpgroup/block_expert.mlir");
const COPY_ADDRESS: &str = include_str!("templates/warpgroup/copy_address.mlir");
const WEIGHT_ROW: &str = include_str!("templates/warpgroup/weight_row.mlir");
const WEIGHT_ROW_FUSED: &str = include_str!("templates/warpgroup/weight_row_fused.mlir");
const WEIGHT_WORD: &str = include_str!("templates/warpgroup/weight_word.mlir");
const ROW_WORD: &str = include_str!("templates/warpgroup/row_word.mlir");
const ISSUE: &str = include_str!("templates/warpgroup/issue.mlir");
const CHUNKS: &str = include_str!("templates/warpgroup/chunks.mlir");
const PASS_HEAD: &str = include_str!("templates/warpgroup/pass_head.mlir");
const MULTIPLY: &str = include_str!("templates/warpgroup/multiply.mlir");
const WGMMA_STEP: &str = include_str!("templates/warpgroup/wgmma_step.mlir");
const DESCRIPTOR: &str = include_str!("templates/warpgroup/descriptor.mlir");
const PASS_TAIL: &str = include_str!("templates/warpgroup/pass_tail.mlir");
const CP_ASYNC: &str = include_str!("templates/warpgroup/cp_async.mlir");

/// Rows of one pass (two warpgroups of m64): a box of the runtime's sorted rows' tensor maps.
const PASS_ROWS: usize = ppmoe_runtime::program::PP_TILE_ROWS;
/// Weight rows a block multiplies (the wgmma's n).
const TILE_N: usize = 256;
/// Inner elements per stage (four k16 steps; one 128-byte swizzled row): the inner
/// dimensions `TensorCoreProjection::fits` takes are whole chunks.
const CHUNK: usize = 64;
/// Stages, and the chunks whose copies are issued ahead of the one multiplied (one stage
/// more: the one multiplied; each chunk's wgmmas are waited for before the next barrier).
/// Measured on an H200 against two ahead with one chunk's wgmmas left running: Qwen3's layer
/// at 4096 tokens 1.272 against 1.307 ms, Mixtral's (device-routed) at 512 1.158 against
/// 1.230, at 4096 7.22 against 7.45.
const STAGES: usize = 4;
const AHEAD: usize = STAGES - 1;
/// Bytes of one chunk of the rows (128 rows of 128 bytes) and of the weights (256 rows), and
/// of one stage (both).
const ROWS_BYTES: usize = PASS_ROWS * CHUNK * 2;
const STAGE_BYTES: usize = ROWS_BYTES + TILE_N * CHUNK * 2;
/// 16-byte copies per thread and chunk: of the rows, and of the weights.
const ROW_COPIES: usize = 4;
const WEIGHT_COPIES: usize = 8;
/// A descriptor's fixed part: the 128-byte swizzle (bits 62-63: 1), the stride byte offset
/// between groups of 8 rows (1024 / 16, bits 32-45) and the leading byte offset a swizzled
/// K-major operand does not use (1, bits 16-29).
const DESCRIPTOR_FIXED: u64 = (1 << 62) | ((1024 >> 4) << 32) | (1 << 16);
/// f32 accumulators per thread (m64n256).
const ACCS: usize = TILE_N / 2;

/// The kernel of `p` (its `warpgroups` set): its generation, a view of the description.
pub(super) fn kernel(p: &TensorCoreProjection) -> String {
    let shape = match p.persistent && p.pingpong {
        true => Geometry::PINGPONG,
        false => Geometry::COOPERATIVE,
    };
    kernel_of(p, shape)
}

/// Whether a step's persistent kernels, `slots` slots over `experts` experts, take the
/// ping-pong geometry (`pingpong_tiles`, or `PPMOE_PPROJ`).
pub(super) fn pingpong(slots: usize, experts: usize) -> bool {
    Geometry::pingpong_wanted(slots, experts)
}

/// The kernel of `p` in geometry `shape` (the ping-pong one only where `p` is persistent).
fn kernel_of(p: &TensorCoreProjection, shape: Geometry) -> String {
    let ablate = if p.producer {
        ablation::Ablation::from_env()
    } else {
        ablation::Ablation::default()
    };
    let trim = geometry::trimmed_rows(shape);
    WarpgroupProjection {
        p,
        ablate,
        shape,
        trim,
        producer_warps: geometry::producer_warps(),
    }
    .kernel()
}

/// A projection generated on the warpgroup tensor cores (the fields are the description's),
/// less what `PPMOE_ABLATE` leaves out, its tiles and stages as `shape` says. Its parts are
/// the templates of `templates/warpgroup/`, each specialised by the method of its name.
struct WarpgroupProjection<'p> {
    p: &'p TensorCoreProjection,
    ablate: ablation::Ablation,
    shape: Geometry,
    /// The producer copies only the rows a pass holds (`geometry::trimmed_rows`).
    trim: bool,
    /// The producer's warps (`geometry::producer_warps`; the warp-specialised forms).
    producer_warps: usize,
}

impl std::ops::Deref for WarpgroupProjection<'_> {
    type Target = TensorCoreProjection;
    fn deref(&self) -> &TensorCoreProjection {
        self.p
    }
}

impl WarpgroupProjection<'_> {
    /// The threads of a block: the two warpgroups, and the producer's warps.
    fn threads(&self) -> usize {
        if self.producer {
            ppmoe_runtime::program::producer_threads(self.producer_warps)
        } else {
            ppmoe_runtime::program::WG_THREADS
        }
    }
}

/// The accumulator struct of one m64n256 wgmma.
fn acc_type() -> String {
    format!("!llvm.struct<({})>", vec!["f32"; ACCS].join(", "))
}

impl WarpgroupProjection<'_> {
    fn kernel(&self) -> String {
        use ppmoe_runtime::program::{
            WG_ACT_BLOCK_COLUMNS, WG_BLOCK_COLUMNS, WG_SHARED_BYTES, WG_THREADS,
        };
        debug_assert_eq!(CHUNK, super::tensor_core_projection::CHUNK);
        // A chunk's row is 8 words: the threads' copies cover both operands' rows.
        debug_assert_eq!(ROW_COPIES * WG_THREADS, PASS_ROWS * 8);
        debug_assert_eq!(WEIGHT_COPIES * WG_THREADS, TILE_N * 8);
        debug_assert_eq!(
            (WG_BLOCK_COLUMNS, 2 * WG_ACT_BLOCK_COLUMNS),
            (TILE_N, TILE_N)
        );
        debug_assert_eq!(WG_SHARED_BYTES, STAGES * STAGE_BYTES + 1024);
        debug_assert!(!self.shape.pingpong || self.persistent);
        debug_assert!(!self.sorted || (self.persistent && !self.shape.pingpong));
        if self.persistent {
            return self.function(&self.persistent_body());
        }
        let passes = if self.producer {
            self.specialised()
        } else {
            let mut ahead: String = (0..AHEAD).map(|chunk| self.copy_ahead(chunk)).collect();
            ahead.push_str(&self.chunks());
            ahead
        };
        let body = specialise(
            PER_TILE,
            &[
                ("prologue", &self.prologue()),
                ("acc", &acc_type()),
                ("passes", &passes),
            ],
        );
        self.function(&body)
    }

    /// The copies of the block's chunk `chunk`, issued before its chunk loop (where it has so
    /// many chunks).
    fn copy_ahead(&self, chunk: usize) -> String {
        let issue = self.issue(&format!("%pk{chunk}"), "          ");
        specialise(COPY_AHEAD, &[("chunk", &chunk), ("issue", &issue)])
    }

    /// The kernel function around its body `b`.
    fn function(&self, b: &str) -> String {
        // The warp-specialised forms read the weights through a tensor map (its address);
        // sorted, the rows through another.
        let tmap = match (self.producer, self.sorted) {
            (true, true) => ", %tmap: memref<?xi64>, %smap: memref<?xi64>",
            (true, false) => ", %tmap: memref<?xi64>",
            _ => "",
        };
        // The block's threads stated (`.maxntid`), so that the register allocation (ptxas,
        // or the driver's JIT) fits a block on an SM: unstated, the driver's JIT gave the
        // staged epilogue more registers than 288 threads have (a launch out of resources).
        let threads = self.threads();
        specialise(
            WARPGROUP_KERNEL,
            &[
                ("name", &self.name),
                ("tmap", &tmap),
                ("threads", &threads),
                ("b", &b),
            ],
        )
    }

    /// The block's constants and this thread's place (`constants`), then the block's expert
    /// `%e`, column tile `%nb` and count `%cnt`, and (where it has rows; in the form whose
    /// threads all copy) the addresses the copies start from: `%wq{q}` (weight row q's word, bytes,
    /// q = 0 .. 7) and `%sq{q}` (an operand's row q's word in a stage, bytes): thread t copies word
    /// t % 8 of row t / 8 + 32 q, into position (t % 8) ^ (t / 8 % 8) of that row.
    fn prologue(&self) -> String {
        let copy_addresses: String = match self.producer {
            true => String::new(),
            false => (0..WEIGHT_COPIES).map(|q| self.copy_address(q)).collect(),
        };
        specialise(
            BLOCK_EXPERT,
            &[
                ("constants", &self.constants()),
                ("copy_addresses", &copy_addresses),
            ],
        )
    }

    /// `%wq{q}` and `%sq{q}` (see `prologue`).
    fn copy_address(&self, q: usize) -> String {
        let weight_word = self.weight_word(&format!("q{q}"), &format!("%crow{q}"), "        ");
        specialise(
            COPY_ADDRESS,
            &[("q", &q), ("row", &(32 * q)), ("weight_word", &weight_word)],
        )
    }

    /// The output's columns: the weight rows, or fused the activations (one per gate row).
    fn out_columns(&self) -> usize {
        match self.act {
            None => self.dout,
            Some(_) => self.dout / 2,
        }
    }

    /// A block's output columns: its 256 weight rows, or fused their 128 activations.
    fn block_columns(&self) -> usize {
        match self.act {
            None => TILE_N,
            Some(_) => TILE_N / 2,
        }
    }

    /// What no block's expert changes: constants (`%cB`, the block's output columns; `%cN`,
    /// the weight rows of an expert; ...), the stages' start `%smx` (aligned to 1024 bytes),
    /// the operands' addresses, and this thread's place (warpgroup `%wg`, warp `%w4` in it,
    /// `%lane`, ...).
    fn constants(&self) -> String {
        // Fused, the up rows' offset from their gate rows.
        let second = match self.act {
            None => 0,
            Some(_) => self.dout / 2,
        };
        specialise(
            CONSTANTS,
            &[
                ("pass_rows", &self.shape.pass_rows),
                ("pass_rows_less_one", &(self.shape.pass_rows - 1)),
                ("row_bytes", &(self.din * 2)),
                ("chunks", &(self.din / CHUNK)),
                ("dout", &self.dout),
                ("slots", &self.slots),
                ("div", &self.div),
                ("stages", &self.shape.stages),
                ("stage_bytes", &self.shape.stage_bytes()),
                ("rows_bytes", &self.shape.rows_bytes()),
                ("block_columns", &self.block_columns()),
                ("second", &second),
                ("half", &(TILE_N / 2)),
                ("warpgroup_rows", &self.shape.warpgroup_rows()),
            ],
        )
    }

    /// `%{v}_bwc`: the byte offset in the weights of word `%cj` of the block's weight row
    /// `row` (an index value: 0 .. TILE_N) of expert `%e`, its chunk 0; past the expert's last
    /// row (or fused, its last gate row) the last row's, read and never stored.
    fn weight_word(&self, v: &str, row: &str, ind: &str) -> String {
        let weight_row = match self.act {
            None => specialise(
                WEIGHT_ROW,
                &[("v", &v), ("row", &row), ("last", &(self.dout - 1))],
            ),
            Some(_) => specialise(
                WEIGHT_ROW_FUSED,
                &[("v", &v), ("row", &row), ("last", &(self.dout / 2 - 1))],
            ),
        };
        specialise_at(WEIGHT_WORD, ind, &[("weight_row", &weight_row), ("v", &v)])
    }

    /// `%{v}_aq`: the global byte address of word `%cj` of the listed row `row` of the pass
    /// from `r0` (index values), its chunk 0: the first listed row's past the count.
    fn row_word(v: &str, r0: &str, row: &str, ind: &str) -> String {
        specialise_at(ROW_WORD, ind, &[("v", &v), ("r0", &r0), ("row", &row)])
    }

    /// The copies of the block's chunk `{g}` (an index value: pass g / NK, chunk g % NK of
    /// it) into stage g % STAGES: each thread's four words of the pass's listed rows (the
    /// first listed row's past the count) and eight of the weights.
    fn issue(&self, g: &str, ind: &str) -> String {
        let n = g.trim_start_matches('%');
        let (gk, rows, weights) = (format!("%{n}_gk"), format!("%{n}_sa"), format!("%{n}_sb"));
        let mut copies = String::new();
        for q in 0..ROW_COPIES {
            let v = format!("{n}_a{q}");
            copies += &Self::row_word(&v, &format!("%{n}_r0"), &format!("%crow{q}"), "");
            let src = format!("%{v}_aq");
            copies += &copy(&v, [&src, &gk], [&rows, &format!("%sq{q}")], "");
        }
        for q in 0..WEIGHT_COPIES {
            let (v, src) = (format!("{n}_b{q}"), format!("%wq{q}"));
            copies += &copy(&v, [&src, &gk], [&weights, &format!("%sq{q}")], "");
        }
        specialise_at(ISSUE, ind, &[("n", &n), ("g", &g), ("copies", &copies)])
    }

    /// The loops over the block's passes and each pass's chunks: wait for chunk g's copies
    /// (g counts the block's chunks), start chunk g's wgmmas (four k16 steps) where the
    /// warpgroup has rows, issue chunk g + AHEAD's copies, of this pass or the next (into the
    /// stage chunk g - 1 used: every warpgroup waited for its wgmmas before the barrier), and
    /// wait for the wgmmas; after the pass's last chunk, store the pass's results. (The
    /// epilogue stays outside the chunk loop: inside it, in a branch, ptxas serialises the
    /// wgmmas, C7518.)
    fn chunks(&self) -> String {
        specialise(
            CHUNKS,
            &[
                ("pass_head", &self.pass_head()),
                ("left", &(AHEAD - 1)),
                ("ahead", &AHEAD),
                // The next copies are issued while the tensor cores multiply.
                ("multiply", &self.multiply()),
                ("issue", &self.issue("%gn", "              ")),
                ("acc", &acc_type()),
                ("pass_tail", &self.pass_tail()),
            ],
        )
    }

    /// The pass loop's head and the chunk loop's: `%r0` (the pass's first row), `%active`
    /// (the warpgroup has rows in it), `%gi` (the block's chunk), `%a` (the accumulators).
    fn pass_head(&self) -> String {
        specialise(PASS_HEAD, &[("acc", &acc_type())])
    }

    /// `%next`: chunk `%gi`'s wgmmas started where the warpgroup has rows, else `%a`.
    fn multiply(&self) -> String {
        let acc = acc_type();
        let (never, active) = match self.ablate.mma {
            true => ("            %never = arith.constant false\n", "%never"),
            false => ("", "%active"),
        };
        let mut steps = String::new();
        let mut cur = "%a".to_string();
        for step in 0..CHUNK / 16 {
            let descriptors: String = [("a", "%abase"), ("b", "%bbase")]
                .iter()
                .map(|(op, base)| descriptor(&format!("d{step}{op}"), base, 32 * step))
                .collect();
            steps += &specialise(
                WGMMA_STEP,
                &[
                    ("descriptors", &descriptors),
                    ("step", &step),
                    ("acc_in", &cur),
                    ("n", &TILE_N),
                    ("acc", &acc),
                ],
            );
            cur = format!("%m{step}");
        }
        specialise(
            MULTIPLY,
            &[
                ("never", &never),
                ("active", &active),
                ("acc", &acc),
                ("warpgroup_bytes", &(self.shape.warpgroup_rows() * 128)),
                ("steps", &steps),
                ("result", &cur),
            ],
        )
    }

    /// After the chunk loop: the pass's last wgmmas waited for, the results stored, the pass
    /// loop closed.
    fn pass_tail(&self) -> String {
        let acc = acc_type();
        // The wait is an identity of all the accumulators, so no read can be moved above it.
        let outs = vec!["=f"; ACCS].join(",");
        let ties = (0..ACCS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let vals = (0..ACCS).map(|i| format!("%fa{i}")).collect::<Vec<_>>();
        let accumulators: String = vals
            .iter()
            .enumerate()
            .map(|(i, v)| format!("          {v} = llvm.extractvalue %accs[{i}] : {acc}\n"))
            .collect();
        // Ping-pong, the tile's last chunk is this warpgroup's alone: its stage is released
        // here, before the epilogue (the next chunk, the other warpgroup's, releases nothing
        // of this one's).
        let release = match self.shape.pingpong {
            true => self.release_last_chunk(),
            false => String::new(),
        };
        // Ablated (`PPMOE_ABLATE=epilogue`), the tile ends at its last wait.
        let store = match self.ablate.epilogue {
            true => String::new(),
            false => self.store(),
        };
        specialise(
            PASS_TAIL,
            &[
                ("accumulators", &accumulators),
                ("outs", &outs),
                ("ties", &ties),
                ("values", &vals.join(", ")),
                ("types", &vec!["f32"; ACCS].join(", ")),
                ("acc", &acc),
                ("release", &release),
                ("store", &store),
            ],
        )
    }

    /// The pass's results (pass `%r0`): through shared memory in the warp-specialised forms
    /// (`epilogue`), else (or asked, `PPMOE_EPILOGUE=direct`) from the registers.
    fn store(&self) -> String {
        if self.producer && !epilogue::direct() {
            self.staged_store()
        } else {
            self.direct_store()
        }
    }
}

/// One 16-byte `cp.async` (values named `%{v}_...`): from global byte address `src` + `gk`
/// to shared byte address `stage` + `at` (all index values).
fn copy(v: &str, [src, gk]: [&str; 2], [stage, at]: [&str; 2], ind: &str) -> String {
    specialise_at(
        CP_ASYNC,
        ind,
        &[
            ("v", &v),
            ("src", &src),
            ("gk", &gk),
            ("stage", &stage),
            ("at", &at),
        ],
    )
}

/// `%d{name}`: the wgmma descriptor (i64) of the operand at shared-memory byte address
/// `base` + `offset` (an index value): start address / 16 and `DESCRIPTOR_FIXED`.
fn descriptor(name: &str, base: &str, offset: usize) -> String {
    specialise(
        DESCRIPTOR,
        &[
            ("name", &name),
            ("base", &base),
            ("offset", &offset),
            ("fixed", &DESCRIPTOR_FIXED),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::TensorCoreProjection;

    fn ptx_of(kernel: &str) -> String {
        crate::codegen::ptx::kernel_ptx(kernel)
    }

    /// A projection of 128 inner elements onto 96, unfused.
    fn small(name: &str, producer: bool) -> TensorCoreProjection {
        TensorCoreProjection {
            name: name.into(),
            din: 128,
            dout: 96,
            div: 2,
            slots: 64,
            act: None,
            warpgroups: true,
            producer,
            persistent: false,
            pingpong: false,
            sorted: false,
        }
    }

    /// The kernel lowers to sm_90a PTX: four m64n256k16 wgmmas per chunk of 64 (one per k16
    /// step) on descriptors with the 128-byte swizzle, the copies as 16-byte cp.async, the
    /// results stored as column pairs, and no local memory.
    #[test]
    fn a_projection_lowers_to_wgmmas_fed_by_cp_async() {
        let kernel = small("t_wproj_in", false).kernel();
        assert_eq!(kernel.matches("nvvm.wgmma.mma_async").count(), 4);
        assert!(kernel.contains(&super::DESCRIPTOR_FIXED.to_string()));
        assert_eq!(super::DESCRIPTOR_FIXED >> 62, 1, "128-byte swizzle");
        let ptx = ptx_of(&kernel);
        assert!(ptx.contains(".target sm_90a"), "wgmma needs sm_90a");
        let wgmmas = ptx
            .matches("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16")
            .count();
        assert!(wgmmas >= 4, "{wgmmas} wgmmas in the PTX");
        assert!(ptx.contains("cp.async.cg.shared.global"));
        assert!(ptx.contains("wgmma.wait_group.sync.aligned 0"));
        assert!(
            ptx.contains("st.global.b32") && !ptx.contains("st.global.b16"),
            "a thread's two neighbouring columns stored together"
        );
        assert!(!ptx.contains(".local"), "no spills to local memory");
    }

    /// The warp-specialised form: the producer warp's weight boxes (tensor copies) and row
    /// copies arrive on the stages' `full` mbarriers, the warpgroups wait on their parity, keep
    /// one chunk's wgmmas running and release the previous chunk's stage through its `empty`
    /// one; the only block-wide barrier is the one after the mbarriers are made; the results
    /// go out through shared memory (`epilogue`).
    #[test]
    fn a_producer_warp_feeds_the_warpgroups_through_mbarriers() {
        let kernel = small("t_sproj_out", true).kernel();
        let ptx = ptx_of(&kernel);
        assert_eq!(ptx.matches("mbarrier.init.shared::cta.b64").count(), 9);
        assert!(ptx.contains("cp.async.bulk.tensor.2d.shared::cluster.global"));
        assert!(ptx.contains("mbarrier.arrive.expect_tx.shared::cta.b64"));
        assert!(ptx.contains("cp.async.mbarrier.arrive.noinc.shared::cta.b64"));
        assert!(ptx.contains("mbarrier.try_wait.parity.shared::cta.b64"));
        assert!(ptx.contains("mbarrier.arrive.shared::cta.b64"));
        let words = ptx.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("wgmma.wait_group.sync.aligned 1;"),
            "one group left running"
        );
        assert!(ptx.contains("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16"));
        assert_eq!(ptx.matches("bar.sync").count(), 1, "one block-wide barrier");
        assert!(ptx.contains(".maxntid 288, 1, 1"), "its threads stated");
        // The results through each warp's staging, out as 16-byte words.
        for needle in [
            "st.shared.b32",
            "bar.warp.sync",
            "ld.shared.v4.b32",
            "st.global.v4.b32",
        ] {
            assert!(ptx.contains(needle), "no {needle}");
        }
        assert!(!ptx.contains(".local"), "no spills to local memory");
    }

    /// The persistent form: a grid-stride loop over the tiles (`%nctaid.x`), the running sums
    /// in shared memory between two block-wide barriers, then the warp-specialised pieces.
    #[test]
    fn a_persistent_projection_walks_every_experts_tiles() {
        let mut p = small("t_pproj_out", true);
        p.persistent = true;
        let ptx = ptx_of(&p.kernel());
        assert!(ptx.contains("%nctaid.x"), "the grid strides the tiles");
        assert!(ptx.contains("st.shared.b32") || ptx.contains("st.shared.u32"));
        assert!(ptx.contains("ld.shared.b32") || ptx.contains("ld.shared.u32"));
        assert_eq!(
            ptx.matches("bar.sync").count(),
            2,
            "the counts, then their sums"
        );
        assert_eq!(ptx.matches("mbarrier.init.shared::cta.b64").count(), 9);
        assert!(ptx.contains("cp.async.bulk.tensor.2d.shared::cluster.global"));
        assert!(ptx.contains("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16"));
        assert!(!ptx.contains(".local"), "no spills to local memory");
    }

    /// Sorted rows (`sorted_rows`): the producer's lane 0 copies a tile's rows as one more
    /// box (from the rows' tensor map, `%smap`, at the expert's running row sum) and is the
    /// `full` barriers' one arrival, no lane copies a row by `cp.async`; the row sums follow
    /// the tile sums; fused, the activations go to the sorted rows (no slot looked up in the
    /// epilogue), unfused (the second projection) to the listed slots.
    #[test]
    fn a_sorted_projection_copies_its_rows_as_boxes() {
        let act = crate::codegen::experts_kernels::silu_gated_math();
        for fused in [false, true] {
            let mut p = small("t_pproj_sorted", true);
            p.persistent = true;
            p.sorted = true;
            if fused {
                p.act = Some(act.clone());
                p.dout = 128;
            }
            let kernel = p.kernel();
            assert!(kernel.contains("%smap: memref<?xi64>"));
            assert!(kernel.contains("%nfull0 = arith.constant 1 : i32"));
            assert!(!kernel.contains("nvvm.cp.async.shared.global"));
            assert!(!kernel.contains("cp.async.mbarrier.arrive.noinc"));
            assert!(kernel.contains("%cRPRE = arith.constant 1025 : index"));
            let rows_bytes = format!("%cWB = arith.constant {} : i32", 256 * 128 + 128 * 128);
            assert!(kernel.contains(&rows_bytes), "the weights' and rows' bytes");
            assert_eq!(kernel.contains("%li0s = arith.addi %rbase"), fused);
            assert_eq!(kernel.contains("%li0s32 = memref.load %lists"), !fused);
            assert_eq!(
                kernel.matches("cp.async.bulk.tensor.2d").count(),
                if fused { 3 } else { 2 },
                "the weights' boxes and the rows' box"
            );
            let ptx = ptx_of(&kernel);
            assert!(ptx.contains("cp.async.bulk.tensor.2d.shared::cluster.global"));
            assert_eq!(ptx.matches("bar.sync").count(), 2);
            assert!(!ptx.contains("cp.async.cg.shared.global"));
            assert!(!ptx.contains(".local"), "no spills to local memory");
        }
        let mut plain = small("t_pproj_out", true);
        plain.persistent = true;
        let kernel = plain.kernel();
        assert!(!kernel.contains("%smap") && !kernel.contains("%cRPRE"));
        assert!(kernel.contains("%nfull0 = arith.constant 33 : i32"));
    }

    /// Ping-pong (`pingpong_tiles`: up to 32 rows per expert): each warpgroup walks every other
    /// tile of the block's, 64 rows from the stage's start, in five stages of 40 KiB whose
    /// `empty` barriers one warpgroup (128 threads) releases, a tile's last stage released
    /// after its last wgmmas; the producer's lanes copy 16 rows' words a chunk (32 in the
    /// cooperative form); each warpgroup's chunk loop waits for its turn (parity of (it + 3) /
    /// 2: the block's first tile at once) and passes the turn after it. The cooperative kernel
    /// past 32 rows per expert.
    #[test]
    fn a_pingpong_projection_gives_each_warpgroup_its_own_tiles() {
        let mut p = small("t_pproj_out", true);
        p.persistent = true;
        let ping = super::kernel_of(&p, super::Geometry::PINGPONG);
        let coop = super::kernel_of(&p, super::Geometry::COOPERATIVE);
        assert!(
            super::pingpong(64, 2) && !super::pingpong(66, 2),
            "up to 32 rows"
        );
        assert!(ping.contains("scf.for %s = %tfirst to %total step %G2"));
        assert!(!coop.contains("%tfirst"));
        for (name, value) in [
            ("cP", 64),
            ("cST", 5),
            ("cSB", 40960),
            ("cRO", 8192),
            ("cWGR", 0),
        ] {
            assert!(
                ping.contains(&format!("%{name} = arith.constant {value} : index")),
                "{name}"
            );
        }
        assert!(ping.contains("%nempty0 = arith.constant 128 : i32"));
        assert!(coop.contains("%nempty0 = arith.constant 256 : i32"));
        assert!(ping.contains("%cfirst = arith.cmpi eq, %kc, %c0"));
        assert!(ping.contains("%clast = arith.remui %clast1, %cST"));
        assert_eq!(ping.matches("nvvm.cp.async.shared.global").count(), 16);
        assert_eq!(coop.matches("nvvm.cp.async.shared.global").count(), 32);
        // The turns: two barriers of 128 arrivals after the spare one; the wait before the
        // consumers' chunk loop, the arrival on the other's after it.
        for w in 0..2 {
            assert!(ping.contains(&format!("%nturn{w} = arith.constant 128 : i32")));
        }
        assert!(!coop.contains("%nturn") && !coop.contains("%owg"));
        let at = |needle: &str| ping.find(needle).unwrap_or_else(|| panic!("{needle}"));
        let consumers = at("scf.for %s = %tfirst");
        let chunk_loop = consumers + ping[consumers..].find("scf.for %kc").unwrap();
        assert!(consumers < at("%tph = arith.divui %itp, %c2") && at("%tph") < chunk_loop);
        assert!(at("%owg = arith.subi %c1, %wg") > chunk_loop);
        assert!(
            ping.contains("%tw_k = arith.constant 88 : index"),
            "after 5 + 5 + 1"
        );
        let ptx = ptx_of(&ping);
        assert_eq!(ptx.matches("mbarrier.init.shared::cta.b64").count(), 13);
        assert!(ptx.contains("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16"));
        assert!(!ptx.contains(".local"), "no spills to local memory");
    }

    /// `PPMOE_ABLATE` leaves out what it names, and only that: here four parts (no row
    /// copies, no tensor copies, no wgmmas, no stores but behind a test), the barriers kept;
    /// then the epilogue too (no stores at all).
    #[test]
    fn an_ablated_producer_form_leaves_out_what_it_names() {
        let whole = ptx_of(&small("t_sproj_out", true).kernel());
        let p = small("t_sproj_out", true);
        let ablate = super::ablation::Ablation {
            rows: true,
            weights: true,
            mma: true,
            store: true,
            epilogue: false,
        };
        let shape = super::Geometry::COOPERATIVE;
        let ablated = ptx_of(
            &super::WarpgroupProjection {
                p: &p,
                ablate,
                shape,
                trim: false,
                producer_warps: 1,
            }
            .kernel(),
        );
        for part in [
            "cp.async.cg.shared.global",
            "cp.async.bulk.tensor",
            "wgmma.mma_async",
        ] {
            assert!(whole.contains(part) && !ablated.contains(part), "{part}");
        }
        assert!(
            ablated.contains("st.global.v4.b32"),
            "the stores stay (16 bytes each), behind a test"
        );
        assert!(ablated.contains("mbarrier.try_wait.parity.shared::cta.b64"));
        assert!(ablated.contains("cp.async.mbarrier.arrive.noinc.shared::cta.b64"));
        // And without the epilogue: no stores at all, the barriers still there.
        let bare = super::ablation::Ablation {
            epilogue: true,
            ..ablate
        };
        let bare = ptx_of(
            &super::WarpgroupProjection {
                p: &p,
                ablate: bare,
                shape,
                trim: false,
                producer_warps: 1,
            }
            .kernel(),
        );
        assert!(
            !bare.contains("st.global"),
            "the epilogue's stores are the only global ones"
        );
        assert!(bare.contains("mbarrier.try_wait.parity.shared::cta.b64"));
    }

    /// Trimmed (the ping-pong geometry's policy, `geometry::trimmed_rows`), each of a producer
    /// lane's row copies is under its row's test (`%paN_ain`: the row is one of the expert's
    /// listed rows), so rows past the count are not copied; untrimmed (the cooperative
    /// geometry's), every copy runs, the expert's first row standing in. Both compile with no
    /// spills, and trimming changes nothing else: the same copies, the same multiplications.
    /// With 2 or 4 producer warps, each lane copies a half or a quarter as many words, the
    /// block states its threads, and `full` waits for every producer lane.
    #[test]
    fn a_trimmed_producer_copies_only_the_rows_a_pass_holds() {
        let mut p = small("t_pproj_out", true);
        p.persistent = true;
        for warps in [1, 2, 4] {
            let generate = |shape, trim| {
                super::WarpgroupProjection {
                    p: &p,
                    ablate: Default::default(),
                    shape,
                    trim,
                    producer_warps: warps,
                }
                .kernel()
            };
            for (shape, copies) in [
                (super::Geometry::PINGPONG, 16 / warps),
                (super::Geometry::COOPERATIVE, 32 / warps),
            ] {
                producer_copies(generate(shape, false), generate(shape, true), copies);
                let kernel = generate(shape, false);
                let threads = 256 + 32 * warps;
                assert!(kernel.contains(&format!("nvvm.maxntid = array<i32: {threads}, 1, 1>")));
                let arrivals = format!("%nfull0 = arith.constant {} : i32", 32 * warps + 1);
                assert!(kernel.contains(&arrivals), "{warps} warps: {arrivals}");
            }
        }
        if std::env::var_os("PPMOE_ROW_TRIM").is_none() {
            assert!(super::geometry::trimmed_rows(super::Geometry::PINGPONG));
            assert!(!super::geometry::trimmed_rows(super::Geometry::COOPERATIVE));
        }
    }

    /// A producer's `copies` row copies a lane: each under its row's test where `trimmed`,
    /// none in `plain`; the same copies in both, and both compile with no spills.
    fn producer_copies(plain: String, trimmed: String, copies: usize) {
        for i in 0..copies {
            let test = format!("scf.if %pa{i}_ain {{");
            // Untrimmed, the test only chooses the row's slot (an scf.if yielding it).
            assert!(!plain.contains(&format!("{test}\n")), "{i}");
            assert!(trimmed.contains(&format!("{test}\n")), "{i}");
        }
        for kernel in [&plain, &trimmed] {
            assert_eq!(
                kernel.matches("nvvm.cp.async.shared.global").count(),
                copies
            );
            let ptx = ptx_of(kernel);
            assert!(ptx.contains("wgmma.mma_async"));
            assert!(!ptx.contains(".local"), "no spills to local memory");
        }
    }

    /// Fused: each thread's gate value (tile j) and up value (tile j + 16) of its 2 rows and 2
    /// columns per tile go through the activation (16 tiles x 2 x 2 = 64 per thread), each
    /// pair narrowed to bf16 by one conversion, the SiLU's division an approximate reciprocal.
    #[test]
    fn a_fused_projection_pairs_gate_and_up_tiles() {
        let act = crate::codegen::experts_kernels::silu_gated_math();
        assert!(TensorCoreProjection::fuses(64, 128, true));
        assert!(!TensorCoreProjection::fuses(64, 96, true));
        let kernel = TensorCoreProjection {
            name: "t_wproj_act".into(),
            din: 64,
            dout: 128,
            div: 2,
            slots: 64,
            act: Some(act),
            warpgroups: true,
            producer: false,
            persistent: false,
            pingpong: false,
            sorted: false,
        }
        .kernel();
        assert_eq!(kernel.matches("scf.execute_region").count(), 64);
        assert!(kernel.contains("llvm.extractvalue %acc[64]"), "up tile 16");
        let ptx = ptx_of(&kernel);
        // (Not all of them reach this small kernel's PTX: LLVM merges or drops some.)
        let reciprocals = ptx.matches("rcp.approx.ftz.f32").count();
        assert!(reciprocals >= 32, "{reciprocals} reciprocals");
        assert!(!ptx.contains("div.rn.f32"), "no correctly rounded division");
        assert!(ptx.matches("cvt.rn.bf16x2.f32").count() >= reciprocals);
        assert!(!ptx.contains("cvt.rn.bf16.f32"), "no value narrowed alone");
        assert!(!ptx.contains(".local"), "no spills to local memory");
    }
}

/// The tensor-core projections as ptxas assembles them for the H200 (sm_90a), at Qwen3-30B-A3B's
/// sizes: ptxas is `PPMOE_PTXAS`, or the one `scripts/setup` installs in `.tools/`.
#[cfg(test)]
mod assembled {
    use super::TensorCoreProjection;
    use std::path::PathBuf;

    fn ptxas() -> PathBuf {
        std::env::var_os("PPMOE_PTXAS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/ptxas"))
    }

    /// ptxas's report (`-v`) on `kernel`'s PTX.
    fn report(kernel: &str, name: &str) -> String {
        let ptx = crate::codegen::ptx::kernel_ptx(kernel);
        let file = std::env::temp_dir().join(format!("ppmoe-{}-{name}.ptx", std::process::id()));
        std::fs::write(&file, ptx).expect("writes the PTX");
        let ptxas = ptxas();
        let out = std::process::Command::new(&ptxas)
            .args(["-arch=sm_90a", "-v", "-o", "/dev/null"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| {
                panic!("{}: {e} (bash scripts/setup installs it)", ptxas.display())
            });
        let _ = std::fs::remove_file(&file);
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{name}: ptxas failed: {text}");
        text
    }

    /// Each kernel (wgmma in its three forms, the persistent one in both geometries and with
    /// sorted rows, and mma.sync, fused and not) assembles with no spills, few enough
    /// registers for its block on one SM, and (wgmma) without ptxas serialising the wgmmas
    /// (advisory C7518, which an epilogue inside the chunk loop caused: the chunks' wgmmas
    /// then wait for each other).
    #[test]
    fn real_size_projections_assemble_unserialised_without_spills() {
        use ppmoe_runtime::program::{producer_threads, TC_WARPS, WG_THREADS};
        for (warpgroups, producer, persistent, pingpong, sorted) in
            super::super::tensor_core_projection::FORMS
        {
            let threads = match (warpgroups, producer) {
                (true, true) => producer_threads(super::geometry::producer_warps()),
                (true, false) => WG_THREADS,
                _ => TC_WARPS * 32,
            };
            for (kind, din, dout, act) in qwen3_projections() {
                let [.., out] =
                    TensorCoreProjection::names(warpgroups, producer, (persistent, pingpong));
                let form = match (pingpong, sorted) {
                    (true, _) => "pingpong",
                    (_, true) => "sorted",
                    _ => &out[..5],
                };
                let name = format!("q_{form}_{kind}");
                let forms = (warpgroups, producer, persistent, pingpong, sorted);
                let p = qwen3_projection(name.clone(), (din, dout, act), forms);
                assert_assembles(&p.kernel(), &name, threads);
            }
        }
    }

    /// The persistent kernels with 2 and 4 producer warps (`PPMOE_PRODUCER_WARPS`), in both
    /// geometries, fused and not, at Qwen3-30B-A3B's sizes: no spills, unserialised wgmmas,
    /// and registers for the larger block (320 or 384 threads) on one SM.
    #[test]
    fn more_producer_warps_assemble_without_spills() {
        for warps in [2, 4] {
            let threads = ppmoe_runtime::program::producer_threads(warps);
            for (shape, form) in [
                (super::Geometry::COOPERATIVE, "pproj"),
                (super::Geometry::PINGPONG, "qproj"),
            ] {
                for (kind, din, dout, act) in qwen3_projections() {
                    let name = format!("q{warps}_{form}_{kind}");
                    let forms = (true, true, true, shape.pingpong, false);
                    let p = qwen3_projection(name.clone(), (din, dout, act), forms);
                    let kernel = super::WarpgroupProjection {
                        p: &p,
                        ablate: Default::default(),
                        shape,
                        trim: super::geometry::trimmed_rows(shape),
                        producer_warps: warps,
                    }
                    .kernel();
                    assert_assembles(&kernel, &name, threads);
                }
            }
        }
    }

    /// Qwen3-30B-A3B's projections: the first fused with a gated activation, the second;
    /// each as (kind, inner, outer, activation).
    fn qwen3_projections() -> [(&'static str, usize, usize, Option<String>); 2] {
        let act = "        %gate = arith.maximumf %g, %zero : f32\n        %res = arith.mulf %gate, %u : f32\n";
        [
            ("act", 2048, 1536, Some(act.to_string())),
            ("out", 768, 2048, None),
        ]
    }

    /// One of Qwen3-30B-A3B's projections at 4096 tokens (32768 slots, k 8) in the form
    /// `(warpgroups, producer, persistent, pingpong, sorted)`.
    fn qwen3_projection(
        name: String,
        (din, dout, act): (usize, usize, Option<String>),
        (warpgroups, producer, persistent, pingpong, sorted): (bool, bool, bool, bool, bool),
    ) -> TensorCoreProjection {
        TensorCoreProjection {
            name,
            din,
            dout,
            div: 8,
            slots: 32768,
            act,
            warpgroups,
            producer,
            persistent,
            pingpong,
            sorted,
        }
    }

    /// ptxas assembles `kernel` with its wgmmas unserialised (no advisory C7518), no spills,
    /// and few enough registers for a block of `threads` on one SM.
    fn assert_assembles(kernel: &str, name: &str, threads: usize) {
        let text = report(kernel, name);
        assert!(!text.contains("C7518"), "{name}: wgmmas serialised: {text}");
        assert!(text.contains(" 0 bytes spill stores"), "{name}: {text}");
        let registers: usize = text
            .split("Used ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no register count: {text}"));
        eprintln!("{name}: {registers} registers");
        assert!(
            registers * threads <= 65536,
            "{name}: {registers} registers x {threads} threads"
        );
    }
}
