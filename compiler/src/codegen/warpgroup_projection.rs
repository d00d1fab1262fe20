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
use std::fmt::Write as _;

mod ablation;
mod epilogue;
mod geometry;
mod persistent;
mod producer;

use super::template::specialise;
use geometry::Geometry;

const WARPGROUP_KERNEL: &str = include_str!("templates/warpgroup_kernel.mlir");

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
/// less what `PPMOE_ABLATE` leaves out, its tiles and stages as `shape` says.
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
        let acc = acc_type();
        let mut b = String::new();
        if self.persistent {
            self.persistent_body(&mut b);
            return self.function(&b);
        }
        self.prologue(&mut b);
        let _ = writeln!(
            b,
            "        %cntup = arith.addi %cnt, %cPm1 : index\n        %passes = arith.divui %cntup, %cP : index\n        %total = arith.muli %passes, %cNK : index\n        %acc0 = llvm.mlir.zero : {acc}"
        );
        if self.producer {
            self.specialised(&mut b);
        } else {
            for chunk in 0..AHEAD {
                let _ = writeln!(
                    b,
                    "        %pk{chunk} = arith.constant {chunk} : index\n        %pin{chunk} = arith.cmpi ult, %pk{chunk}, %total : index\n        scf.if %pin{chunk} {{"
                );
                self.issue(&mut b, &format!("%pk{chunk}"), "          ");
                let _ = writeln!(b, "        }}\n        nvvm.cp.async.commit.group");
            }
            self.chunks(&mut b);
        }
        let _ = writeln!(b, "      }}");
        self.function(&b)
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
    fn prologue(&self, b: &mut String) {
        self.constants(b);
        let _ = writeln!(
            b,
            "      %e = gpu.block_id y\n      %nb = gpu.block_id x\n      %cnt32 = memref.load %counts[%e] : memref<?xi32>\n      %cnt = arith.index_cast %cnt32 : i32 to index\n      %any = arith.cmpi ugt, %cnt, %c0 : index\n      scf.if %any {{\n        %lbase = arith.muli %e, %cS : index\n        %first32 = memref.load %lists[%lbase] : memref<?xi32>\n        %firsts = arith.index_cast %first32 : i32 to index\n        %nb0 = arith.muli %nb, %cB : index\n        %eN = arith.muli %e, %cN : index"
        );
        if self.producer {
            return;
        }
        for q in 0..WEIGHT_COPIES {
            let _ = writeln!(
                b,
                "        %cq{q} = arith.constant {} : index\n        %crow{q} = arith.addi %crow, %cq{q} : index",
                32 * q
            );
            self.weight_word(b, &format!("q{q}"), &format!("%crow{q}"), "        ");
            let _ = writeln!(
                b,
                "        %wq{q} = arith.addi %wtx, %q{q}_bwc : index\n        %sqr{q} = arith.muli %crow{q}, %c128 : index\n        %sq{q} = arith.addi %sqr{q}, %cposb : index"
            );
        }
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
    fn constants(&self, b: &mut String) {
        let rows_per_block = self.block_columns();
        // Fused, the up rows' offset from their gate rows.
        let second = match self.act {
            None => 0,
            Some(_) => self.dout / 2,
        };
        let _ = writeln!(
            b,
            "      %tid = gpu.thread_id x\n      %c0 = arith.constant 0 : index\n      %c1 = arith.constant 1 : index\n      %c2 = arith.constant 2 : index\n      %c4 = arith.constant 4 : index\n      %c8 = arith.constant 8 : index\n      %c16 = arith.constant 16 : index\n      %c32 = arith.constant 32 : index\n      %c64 = arith.constant 64 : index\n      %c128 = arith.constant 128 : index\n      %c1024 = arith.constant 1024 : index\n      %cP = arith.constant {} : index\n      %cPm1 = arith.constant {} : index\n      %cRB = arith.constant {} : index\n      %cNK = arith.constant {} : index\n      %cN = arith.constant {} : index\n      %cS = arith.constant {} : index\n      %cdiv = arith.constant {} : index\n      %cST = arith.constant {} : index\n      %cSB = arith.constant {} : index\n      %cRO = arith.constant {} : index\n      %dyn = gpu.dynamic_shared_memory : memref<?xi8, #gpu.address_space<workgroup>>\n      %dynx = memref.extract_aligned_pointer_as_index %dyn : memref<?xi8, #gpu.address_space<workgroup>> -> index\n      %c1023 = arith.constant 1023 : index\n      %dyn1 = arith.addi %dynx, %c1023 : index\n      %dyn2 = arith.divui %dyn1, %c1024 : index\n      %smx = arith.muli %dyn2, %c1024 : index\n      %srcx = memref.extract_aligned_pointer_as_index %src : memref<?xvector<4xi32>> -> index\n      %wtx = memref.extract_aligned_pointer_as_index %wt : memref<?xvector<4xi32>> -> index\n      %wg = arith.divui %tid, %c128 : index\n      %wtid = arith.remui %tid, %c128 : index\n      %w4 = arith.divui %wtid, %c32 : index\n      %lane = arith.remui %tid, %c32 : index\n      %lgrp = arith.divui %lane, %c4 : index\n      %tig = arith.remui %lane, %c4 : index\n      %cj = arith.remui %tid, %c8 : index\n      %crow = arith.divui %tid, %c8 : index\n      %crm = arith.remui %crow, %c8 : index\n      %cpos = arith.xori %cj, %crm : index\n      %cjb = arith.muli %cj, %c16 : index\n      %cposb = arith.muli %cpos, %c16 : index\n      %cB = arith.constant {rows_per_block} : index\n      %csecond = arith.constant {second} : index\n      %cHALF = arith.constant {} : index\n      %cWGR = arith.constant {} : index\n      %wgr = arith.muli %wg, %cWGR : index",
            self.shape.pass_rows,
            self.shape.pass_rows - 1,
            self.din * 2,
            self.din / CHUNK,
            self.dout,
            self.slots,
            self.div,
            self.shape.stages,
            self.shape.stage_bytes(),
            self.shape.rows_bytes(),
            TILE_N / 2,
            self.shape.warpgroup_rows(),
        );
    }

    /// `%{v}_bwc`: the byte offset in the weights of word `%cj` of the block's weight row
    /// `row` (an index value: 0 .. TILE_N) of expert `%e`, its chunk 0; past the expert's last
    /// row (or fused, its last gate row) the last row's, read and never stored.
    fn weight_word(&self, b: &mut String, v: &str, row: &str, ind: &str) {
        let weight_row = match self.act {
            None => format!(
                "{ind}%{v}_bn = arith.addi %nb0, {row} : index\n{ind}%{v}_bnl = arith.constant {} : index\n{ind}%{v}_bnc = arith.minui %{v}_bn, %{v}_bnl : index",
                self.dout - 1
            ),
            Some(_) => format!(
                "{ind}%{v}_bup = arith.cmpi uge, {row}, %cHALF : index\n{ind}%{v}_bo = arith.remui {row}, %cHALF : index\n{ind}%{v}_bg = arith.addi %nb0, %{v}_bo : index\n{ind}%{v}_bgl = arith.constant {} : index\n{ind}%{v}_bgc = arith.minui %{v}_bg, %{v}_bgl : index\n{ind}%{v}_bus = arith.addi %{v}_bgc, %csecond : index\n{ind}%{v}_bnc = arith.select %{v}_bup, %{v}_bus, %{v}_bgc : index",
                self.dout / 2 - 1
            ),
        };
        let _ = writeln!(
            b,
            "{weight_row}\n{ind}%{v}_bwr = arith.addi %eN, %{v}_bnc : index\n{ind}%{v}_bwb = arith.muli %{v}_bwr, %cRB : index\n{ind}%{v}_bwc = arith.addi %{v}_bwb, %cjb : index"
        );
    }

    /// `%{v}_aq`: the global byte address of word `%cj` of the listed row `row` of the pass
    /// from `r0` (index values), its chunk 0: the first listed row's past the count.
    fn row_word(b: &mut String, v: &str, r0: &str, row: &str, ind: &str) {
        let _ = writeln!(
            b,
            "{ind}%{v}_ar = arith.addi {r0}, {row} : index\n{ind}%{v}_ain = arith.cmpi ult, %{v}_ar, %cnt : index\n{ind}%{v}_aslot = scf.if %{v}_ain -> (index) {{\n{ind}  %{v}_al = arith.addi %lbase, %{v}_ar : index\n{ind}  %{v}_as32 = memref.load %lists[%{v}_al] : memref<?xi32>\n{ind}  %{v}_as = arith.index_cast %{v}_as32 : i32 to index\n{ind}  scf.yield %{v}_as : index\n{ind}}} else {{\n{ind}  scf.yield %firsts : index\n{ind}}}\n{ind}%{v}_asr = arith.divui %{v}_aslot, %cdiv : index\n{ind}%{v}_asb = arith.muli %{v}_asr, %cRB : index\n{ind}%{v}_asc = arith.addi %{v}_asb, %cjb : index\n{ind}%{v}_aq = arith.addi %srcx, %{v}_asc : index"
        );
    }

    /// The copies of the block's chunk `{g}` (an index value: pass g / NK, chunk g % NK of
    /// it) into stage g % STAGES: each thread's four words of the pass's listed rows (the
    /// first listed row's past the count) and eight of the weights.
    fn issue(&self, b: &mut String, g: &str, ind: &str) {
        let n = g.trim_start_matches('%');
        let _ = writeln!(
            b,
            "{ind}%{n}_p = arith.divui {g}, %cNK : index\n{ind}%{n}_k = arith.remui {g}, %cNK : index\n{ind}%{n}_r0 = arith.muli %{n}_p, %cP : index\n{ind}%{n}_gk = arith.muli %{n}_k, %c128 : index\n{ind}%{n}_st = arith.remui {g}, %cST : index\n{ind}%{n}_ss = arith.muli %{n}_st, %cSB : index\n{ind}%{n}_sa = arith.addi %smx, %{n}_ss : index\n{ind}%{n}_sb = arith.addi %{n}_sa, %cRO : index"
        );
        for q in 0..ROW_COPIES {
            let v = format!("{n}_a{q}");
            Self::row_word(b, &v, &format!("%{n}_r0"), &format!("%crow{q}"), ind);
            copy(
                b,
                &v,
                &format!("%{v}_aq"),
                &format!("%{n}_gk"),
                &format!("%{n}_sa"),
                &format!("%sq{q}"),
                ind,
            );
        }
        for q in 0..WEIGHT_COPIES {
            copy(
                b,
                &format!("{n}_b{q}"),
                &format!("%wq{q}"),
                &format!("%{n}_gk"),
                &format!("%{n}_sb"),
                &format!("%sq{q}"),
                ind,
            );
        }
    }

    /// The loops over the block's passes and each pass's chunks: wait for chunk g's copies
    /// (g counts the block's chunks), start chunk g's wgmmas (four k16 steps) where the
    /// warpgroup has rows, issue chunk g + AHEAD's copies, of this pass or the next (into the
    /// stage chunk g - 1 used: every warpgroup waited for its wgmmas before the barrier), and
    /// wait for the wgmmas; after the pass's last chunk, store the pass's results. (The
    /// epilogue stays outside the chunk loop: inside it, in a branch, ptxas serialises the
    /// wgmmas, C7518.)
    fn chunks(&self, b: &mut String) {
        let acc = acc_type();
        self.pass_head(b);
        let _ = writeln!(
            b,
            "            nvvm.cp.async.wait.group {}\n            nvvm.fence.proxy {{kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}}\n            gpu.barrier\n            %cAH = arith.constant {AHEAD} : index\n            %gn = arith.addi %gi, %cAH : index\n            %more = arith.cmpi ult, %gn, %total : index",
            AHEAD - 1
        );
        // The next copies are issued while the tensor cores multiply.
        self.multiply(b);
        let _ = writeln!(b, "            scf.if %more {{");
        self.issue(b, "%gn", "              ");
        let _ = writeln!(
            b,
            "            }}\n            nvvm.cp.async.commit.group\n            nvvm.wgmma.wait.group.sync.aligned 0\n            scf.yield %next : {acc}\n          }}"
        );
        self.pass_tail(b);
    }

    /// The pass loop's head and the chunk loop's: `%r0` (the pass's first row), `%active`
    /// (the warpgroup has rows in it), `%gi` (the block's chunk), `%a` (the accumulators).
    fn pass_head(&self, b: &mut String) {
        let acc = acc_type();
        let _ = writeln!(
            b,
            "        scf.for %pass = %c0 to %passes step %c1 {{\n          %r0 = arith.muli %pass, %cP : index\n          %g0 = arith.muli %pass, %cNK : index\n          %wgr0 = arith.addi %r0, %wgr : index\n          %active = arith.cmpi ult, %wgr0, %cnt : index\n          %accs = scf.for %kc = %c0 to %cNK step %c1 iter_args(%a = %acc0) -> ({acc}) {{\n            %gi = arith.addi %g0, %kc : index"
        );
    }

    /// `%next`: chunk `%gi`'s wgmmas started where the warpgroup has rows, else `%a`.
    fn multiply(&self, b: &mut String) {
        let acc = acc_type();
        let _ = writeln!(
            b,
            "            %st = arith.remui %gi, %cST : index\n{}            %next = scf.if {} -> ({acc}) {{\n              %stb = arith.muli %st, %cSB : index\n              %stx = arith.addi %smx, %stb : index\n              %wga = arith.constant {} : index\n              %wgo = arith.muli %wg, %wga : index\n              %abase = arith.addi %stx, %wgo : index\n              %bbase = arith.addi %stx, %cRO : index\n              nvvm.wgmma.fence.aligned",
            if self.ablate.mma {
                "            %never = arith.constant false\n"
            } else {
                ""
            },
            if self.ablate.mma { "%never" } else { "%active" },
            self.shape.warpgroup_rows() * 128,
        );
        let mut cur = "%a".to_string();
        for step in 0..CHUNK / 16 {
            for (op, base) in [("a", "%abase"), ("b", "%bbase")] {
                descriptor(b, &format!("d{step}{op}"), base, 32 * step);
            }
            let _ = writeln!(
                b,
                "              %m{step} = nvvm.wgmma.mma_async %dd{step}a, %dd{step}b, {cur}, <m = 64, n = {TILE_N}, k = 16>, D[<f32>, <one>], A[<bf16>, <one>, <row>], B[<bf16>, <one>, <col>] : {acc} -> {acc}"
            );
            cur = format!("%m{step}");
        }
        let _ = writeln!(
            b,
            "              nvvm.wgmma.commit.group.sync.aligned\n              scf.yield {cur} : {acc}\n            }} else {{\n              scf.yield %a : {acc}\n            }}"
        );
    }

    /// After the chunk loop: the pass's last wgmmas waited for, the results stored, the pass
    /// loop closed.
    fn pass_tail(&self, b: &mut String) {
        let acc = acc_type();
        // The wait is an identity of all the accumulators, so no read can be moved above it.
        let outs = vec!["=f"; ACCS].join(",");
        let ties = (0..ACCS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let vals = (0..ACCS).map(|i| format!("%fa{i}")).collect::<Vec<_>>();
        for (i, v) in vals.iter().enumerate() {
            let _ = writeln!(b, "          {v} = llvm.extractvalue %accs[{i}] : {acc}");
        }
        let _ = writeln!(
            b,
            "          %acc = llvm.inline_asm has_side_effects asm_dialect = att \"wgmma.wait_group.sync.aligned 0;\", \"{outs},{ties}\" {} : ({}) -> {acc}",
            vals.join(", "),
            vec!["f32"; ACCS].join(", ")
        );
        // Ping-pong, the tile's last chunk is this warpgroup's alone: its stage is released
        // here, before the epilogue (the next chunk, the other warpgroup's, releases nothing
        // of this one's).
        if self.shape.pingpong {
            self.release_last_chunk(b);
        }
        // Ablated (`PPMOE_ABLATE=epilogue`), the tile ends at its last wait.
        if !self.ablate.epilogue {
            self.store(b);
        }
        let _ = writeln!(b, "        }}");
    }

    /// The pass's results (pass `%r0`): through shared memory in the warp-specialised forms
    /// (`epilogue`), else (or asked, `PPMOE_EPILOGUE=direct`) from the registers.
    fn store(&self, b: &mut String) {
        if self.producer && !epilogue::direct() {
            self.staged_store(b)
        } else {
            self.direct_store(b)
        }
    }
}

/// One 16-byte `cp.async` (values named `%{v}_...`): from global byte address `src` + `gk`
/// to shared byte address `stage` + `at` (all index values).
fn copy(b: &mut String, v: &str, src: &str, gk: &str, stage: &str, at: &str, ind: &str) {
    let _ = writeln!(
        b,
        "{ind}%{v}_s = arith.addi {src}, {gk} : index\n{ind}%{v}_si = arith.index_cast %{v}_s : index to i64\n{ind}%{v}_sp = llvm.inttoptr %{v}_si : i64 to !llvm.ptr<1>\n{ind}%{v}_d = arith.addi {stage}, {at} : index\n{ind}%{v}_di = arith.index_cast %{v}_d : index to i64\n{ind}%{v}_dp = llvm.inttoptr %{v}_di : i64 to !llvm.ptr<3>\n{ind}nvvm.cp.async.shared.global %{v}_dp, %{v}_sp, 16, cache = cg : !llvm.ptr<3>, !llvm.ptr<1>"
    );
}

/// `%d{name}`: the wgmma descriptor (i64) of the operand at shared-memory byte address
/// `base` + `offset` (an index value): start address / 16 and `DESCRIPTOR_FIXED`.
fn descriptor(b: &mut String, name: &str, base: &str, offset: usize) {
    let _ = writeln!(
        b,
        "              %{name}o = arith.constant {offset} : index\n              %{name}x = arith.addi {base}, %{name}o : index\n              %{name}i = arith.index_cast %{name}x : index to i64\n              %{name}m = arith.constant 262143 : i64\n              %{name}a = arith.andi %{name}i, %{name}m : i64\n              %{name}s4 = arith.constant 4 : i64\n              %{name}h = arith.shrui %{name}a, %{name}s4 : i64\n              %{name}f = arith.constant {DESCRIPTOR_FIXED} : i64\n              %d{name} = arith.ori %{name}h, %{name}f : i64"
    );
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
        for (warpgroups, producer, persistent, pingpong, sorted) in [
            (true, false, false, false, false),
            (true, true, false, false, false),
            (true, true, true, false, false),
            (true, true, true, false, true),
            (true, true, true, true, false),
            (false, false, false, false, false),
        ] {
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
