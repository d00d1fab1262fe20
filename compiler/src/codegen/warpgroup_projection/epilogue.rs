//! The projections' epilogues. The warp-specialised forms': a pass's results go out through
//! shared memory as whole 128-byte rows (`staged_store`); `wproj`'s from the registers, a
//! column pair at a time (`direct_store`). In the wgmma accumulators' layout a thread holds
//! two neighbouring columns of each n8 tile (4 bytes), so stored straight from registers a
//! warp's store instruction writes 8 rows' 16 bytes each (8 sectors for 128 bytes); with
//! `PPMOE_ABLATE=store` the Qwen3-30B-A3B layer at 4096 tokens took 1.000 ms against 1.256
//! (docs/persistent-projection-h200-9cefc46.txt): the epilogue, which no multiplication
//! overlaps, was a fifth of the time.
//!
//! Each consumer warp has 16 rows x 64 columns of bf16 of staging (rows 144 bytes apart: 2304
//! bytes, after the barriers, `EPILOGUE_STAGING_BYTES` in all). Per group of 64 output columns
//! (8 n8 tiles): every thread writes its pairs (row 8 h + g, tile j, word t of the tile's 16
//! bytes) to row 8 h + g's 16-byte word j (the 16 bytes of padding per row put the 8 rows of a
//! store phase in distinct banks, and leave every address an immediate offset from one: the
//! kernels are at their registers' limit), the warp synchronises, and lane l reads word l % 8
//! of rows l / 8 + 4 i (i < 4) and stores it, 16 bytes, to its row's slot: 8 lanes write one
//! row's 128 contiguous bytes. The warp synchronises again before the next group overwrites
//! the staging.
//!
//! `PPMOE_EPILOGUE=direct` at compile time (a measurement aid) stores from the registers
//! instead, a column pair at a time, as the form whose threads all copy does. Measured on an
//! H200 (pproj, Qwen3-30B-A3B's layer, the same run): 0.936 against 0.943 ms at 4096 tokens,
//! 2.951 against 3.100 at 16384; with warps that have no rows skipping it, 0.383 ms at 512
//! tokens (0.423 before; docs/staged-epilogue-h200-43d205f..3b29052.txt).

use super::{acc_type, WarpgroupProjection};
use ppmoe_runtime::program::EPILOGUE_STAGING_BYTES;
use std::fmt::Write as _;

/// Output columns a warp stages at a time: one 128-byte row of bf16.
const GROUP_COLUMNS: usize = 64;
/// The accumulator rows one warp holds (of its warpgroup's m64).
const WARP_ROWS: usize = 16;
/// Rows each lane stores per group: 16 rows of 8 16-byte words over 32 lanes.
const LANE_ROWS: usize = WARP_ROWS * 8 / 32;
/// Bytes between staged rows: 64 columns of bf16 and 16 bytes of padding.
const ROW_STRIDE: usize = GROUP_COLUMNS * 2 + 16;
/// Bytes of one warp's staging (the warps' lie this far apart).
const WARP_STAGING: usize = WARP_ROWS * ROW_STRIDE;
/// `%rw0`, this warp's first row of the pass.
const ROWS: &str = "            %w16 = arith.muli %w4, %c16 : index\n            %rw0 = arith.addi %wgr, %w16 : index";
/// The epilogues' indentation in the kernel text.
const IND: &str = "            ";

/// Whether `PPMOE_EPILOGUE=direct` asks for the stores from the registers (another value is
/// warned about and leaves the staged epilogue).
pub(super) fn direct() -> bool {
    let value = std::env::var("PPMOE_EPILOGUE").unwrap_or_default();
    let value = value.trim();
    if !value.is_empty() && value != "direct" {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!("PPMOE_EPILOGUE={value:?} is not a form (direct): the staged epilogue")
        });
    }
    value == "direct"
}

impl WarpgroupProjection<'_> {
    /// The pass's results (pass `%r0`), as `store` says, through the warp's staging.
    pub(super) fn staged_store(&self, b: &mut String) {
        debug_assert_eq!(EPILOGUE_STAGING_BYTES, 8 * WARP_STAGING);
        let (tiles, width) = (self.block_columns() / 8, self.out_columns());
        debug_assert_eq!(width % 8, 0);
        self.staging_head(b, width);
        // A warp with no rows in the pass (at few rows per expert, most) stages nothing: the
        // test is the same for its lanes, so their warp barriers stay whole.
        let _ = writeln!(
            b,
            "            %wfirst = arith.addi %r0, %rw0 : index\n            %wany = arith.cmpi ult, %wfirst, %cnt : index\n            scf.if %wany {{"
        );
        // Where the output's width is not whole blocks, each lane's 16-byte word is checked
        // (the width is whole words: `TensorCoreProjection::fits` takes whole chunks of 64).
        let checked = width % self.block_columns() != 0;
        for q in 0..tiles / 8 {
            self.stage_group(b, q, tiles);
            let _ = writeln!(b, "            nvvm.bar.warp.sync %wall : i32");
            // The lanes' rows after the first group is staged, when its accumulators are
            // dead (with all of them live, they spilled: at most 168 registers a thread).
            if q == 0 {
                for i in 0..LANE_ROWS {
                    self.lane_row(b, i);
                }
            }
            for i in 0..LANE_ROWS {
                self.write_out(b, q, i, checked);
            }
            let _ = writeln!(b, "            nvvm.bar.warp.sync %wall : i32");
        }
        let _ = writeln!(b, "            }}");
    }

    /// The epilogue's values (`head`'s), `%stw` (this warp's staging),
    /// `%stp` (where this thread's pairs of row g go, less the tile's word), `%wcol` (this
    /// lane's 16-byte word's first column).
    fn staging_head(&self, b: &mut String, width: usize) {
        head(b, width);
        let _ = writeln!(
            b,
            "            %wall = arith.constant -1 : i32\n            %cSTG0 = arith.constant 128 : index\n            %stg = arith.addi %bars, %cSTG0 : index\n            %cWSB = arith.constant {} : index\n            %cwarp = arith.divui %tid, %c32 : index\n            %cwo = arith.muli %cwarp, %cWSB : index\n            %stw = arith.addi %stg, %cwo : index\n            %cRS = arith.constant {ROW_STRIDE} : index\n            %stgr = arith.muli %lgrp, %cRS : index\n            %stgt = arith.muli %tig, %c4 : index\n            %stp0 = arith.addi %stw, %stgr : index\n            %stp = arith.addi %stp0, %stgt : index\n{ROWS}\n            %wword = arith.remui %lane, %c8 : index\n            %wrow = arith.divui %lane, %c8 : index\n            %wcol0 = arith.muli %wword, %c8 : index\n            %wcol = arith.addi %nb0, %wcol0 : index",
            WARP_STAGING
        );
    }

    /// Row `%wrow` + 4 i of the warp's, this lane's i-th: `%li{i}` (it exists: stored),
    /// `%lg{i}` (the global byte address of its word at column `%wcol`), `%ls{i}` (the
    /// staged word's shared address).
    fn lane_row(&self, b: &mut String, i: usize) {
        // Ablated, stored only where the count exceeds the slots: never, but not known to
        // the compiler, which so keeps the multiplications.
        let (exists, never) = if self.ablate.store {
            (format!("%li{i}in"), format!("\n            %li{i}big = arith.cmpi ugt, %cnt, %cS : index\n            %li{i} = arith.andi %li{i}in, %li{i}big : i1"))
        } else {
            (format!("%li{i}"), String::new())
        };
        let _ = writeln!(
            b,
            "            %li{i}k = arith.constant {} : index\n            %li{i}w = arith.addi %wrow, %li{i}k : index\n            %li{i}r0 = arith.addi %rw0, %li{i}w : index\n            %li{i}r = arith.addi %r0, %li{i}r0 : index\n            {exists} = arith.cmpi ult, %li{i}r, %cnt : index{never}\n            %lg{i} = scf.if %li{i} -> (index) {{\n{}              %li{i}e0 = arith.muli %li{i}s, %cW : index\n              %li{i}e = arith.addi %li{i}e0, %wcol : index\n              %li{i}b = arith.muli %li{i}e, %c2 : index\n              %li{i}a = arith.addi %dstx, %li{i}b : index\n              scf.yield %li{i}a : index\n            }} else {{\n              scf.yield %c0 : index\n            }}\n            %li{i}xb = arith.muli %wword, %c16 : index\n            %li{i}rb = arith.muli %li{i}w, %cRS : index\n            %ls{i}0 = arith.addi %stw, %li{i}rb : index\n            %ls{i} = arith.addi %ls{i}0, %li{i}xb : index",
            4 * i,
            self.output_row(&format!("li{i}"), &format!("%li{i}r"), "              ")
        );
    }

    /// Group q's pairs into the staging: tiles 8 q .. 8 q + 7, both row halves.
    fn stage_group(&self, b: &mut String, q: usize, tiles: usize) {
        for h in 0..2 {
            for jj in 0..8 {
                let j = 8 * q + jj;
                let o = format!("e{h}_{j}");
                let values = self.output_values(b, &o, 4 * j + 2 * h, 4 * tiles);
                let pair = pack(b, &o, &values, IND);
                let _ = writeln!(
                    b,
                    "            %{o}h = arith.constant {} : index\n            %{o}a = arith.addi %stp, %{o}h : index",
                    8 * h * ROW_STRIDE + 16 * jj
                );
                let at = pointer(b, &o, &format!("%{o}a"), 3, IND);
                let _ = writeln!(
                    b,
                    "{IND}llvm.store {pair}, {at} {{alignment = 4 : i64}} : vector<2xbf16>, !llvm.ptr<3>"
                );
            }
        }
    }

    /// This lane's i-th row's word of group q: read from the staging, stored where the row
    /// (and, `checked`, the word's columns) exist (64 q columns, 128 q bytes, past `%lg{i}`).
    fn write_out(&self, b: &mut String, q: usize, i: usize, checked: bool) {
        let o = format!("o{q}_{i}");
        let cond = if checked {
            let _ = writeln!(
                b,
                "            %{o}ck = arith.constant {} : index\n            %{o}c = arith.addi %wcol, %{o}ck : index\n            %{o}cin = arith.cmpi ult, %{o}c, %cW : index\n            %{o}in = arith.andi %li{i}, %{o}cin : i1",
                q * GROUP_COLUMNS
            );
            format!("%{o}in")
        } else {
            format!("%li{i}")
        };
        let from = pointer(b, &format!("{o}s"), &format!("%ls{i}"), 3, IND);
        let _ = writeln!(
            b,
            "{IND}%{o}v = llvm.load {from} {{alignment = 16 : i64}} : !llvm.ptr<3> -> vector<4xi32>\n{IND}scf.if {cond} {{\n              %{o}k = arith.constant {} : index\n              %{o}g = arith.addi %lg{i}, %{o}k : index",
            q * GROUP_COLUMNS * 2
        );
        let to = pointer(b, &format!("{o}g"), &format!("%{o}g"), 1, "              ");
        let _ = writeln!(
            b,
            "              llvm.store %{o}v, {to} {{alignment = 16 : i64}} : vector<4xi32>, !llvm.ptr<1>\n{IND}}}"
        );
    }

    /// The pass's results (pass `%r0`), where the warpgroup has rows: accumulator
    /// 4 j + 2 h + c is row 64 wg + 16 w4 + g + 8 h of the pass, column 8 j + 2 t + c of the
    /// block's tile; stored as bf16 where the row and column exist (fused: gate tile j with up
    /// tile j + 16 through the activation, at activation column 8 j + 2 t + c of the block's
    /// 128). A thread's two columns of a tile are neighbours: one 4-byte store each (the
    /// output's width is even — `TensorCoreProjection::fits` takes whole chunks of 64 — so
    /// the pair is in or out together), and where the width is a whole number of blocks no
    /// column is checked.
    /// (Session 30's 2-byte store per element, each behind its column's check, was not timed
    /// against it alone: with `.maxntid` stated too, `pproj` at Qwen3's 4096 tokens went from
    /// 1.109 to 0.943 ms.)
    pub(super) fn direct_store(&self, b: &mut String) {
        let (tiles, width) = (self.block_columns() / 8, self.out_columns());
        debug_assert_eq!(width % 2, 0);
        let checked = width % self.block_columns() != 0;
        head(b, width);
        let _ = writeln!(
            b,
            "{ROWS}\n            %rw = arith.addi %rw0, %lgrp : index\n            %tpair = arith.muli %tig, %c2 : index\n            %oc = arith.addi %nb0, %tpair : index"
        );
        for h in 0..2 {
            let r = format!("s{h}");
            // Ablated, stored only where the count exceeds the slots: never, but not known to
            // the compiler, which so keeps the multiplications.
            let (kept, cond) = if self.ablate.store {
                (format!("            %{r}big = arith.cmpi ugt, %cnt, %cS : index\n            %{r}in = arith.andi %{r}in0, %{r}big : i1\n"), "in")
            } else {
                (String::new(), "in0")
            };
            let _ = writeln!(
                b,
                "            %{r}c = arith.constant {} : index\n            %{r}row0 = arith.addi %rw, %{r}c : index\n            %{r}row = arith.addi %r0, %{r}row0 : index\n            %{r}in0 = arith.cmpi ult, %{r}row, %cnt : index\n{kept}            scf.if %{r}{cond} {{\n{}              %{r}base = arith.muli %{r}s, %cW : index",
                8 * h,
                self.output_row(&r, &format!("%{r}row"), "              ")
            );
            for j in 0..tiles {
                let o = format!("{r}_{j}");
                let values = self.output_values(b, &o, 4 * j + 2 * h, 4 * tiles);
                let _ = writeln!(
                    b,
                    "              %{o}k = arith.constant {} : index\n              %{o}col = arith.addi %oc, %{o}k : index",
                    8 * j
                );
                let ind = if checked {
                    let _ = writeln!(
                        b,
                        "              %{o}ok = arith.cmpi ult, %{o}col, %cW : index\n              scf.if %{o}ok {{"
                    );
                    "                "
                } else {
                    "              "
                };
                let _ = writeln!(b, "{ind}%{o}at = arith.addi %{r}base, %{o}col : index");
                let pair = pack(b, &o, &values, ind);
                let _ = writeln!(
                    b,
                    "{ind}%{o}by = arith.muli %{o}at, %c2 : index\n{ind}%{o}ad = arith.addi %dstx, %{o}by : index"
                );
                let at = pointer(b, &o, &format!("%{o}ad"), 1, ind);
                let _ = writeln!(
                    b,
                    "{ind}llvm.store {pair}, {at} {{alignment = 4 : i64}} : vector<2xbf16>, !llvm.ptr<1>"
                );
                if checked {
                    let _ = writeln!(b, "              }}");
                }
            }
            let _ = writeln!(b, "            }}");
        }
    }

    /// `%{v}s`, the output row of the tile's row `row` of its expert (an index value): its
    /// slot (the expert's list), or where the rows are sorted and this is the first
    /// projection, its place in the sorted rows (from `%rbase`).
    fn output_row(&self, v: &str, row: &str, ind: &str) -> String {
        if self.sorted && self.act.is_some() {
            format!("{ind}%{v}s = arith.addi %rbase, {row} : index\n")
        } else {
            format!("{ind}%{v}l = arith.addi %lbase, {row} : index\n{ind}%{v}s32 = memref.load %lists[%{v}l] : memref<?xi32>\n{ind}%{v}s = arith.index_cast %{v}s32 : i32 to index\n")
        }
    }

    /// `%{o}v`, the f32 output of accumulator `idx`: itself, or fused the activation of it
    /// (a gate value) and of accumulator `idx + up` (its up value), each rounded to bf16 first
    /// as PyTorch's bf16 projection rounds them.
    pub(super) fn output_value(&self, b: &mut String, o: &str, idx: usize, up: usize) -> String {
        let acc = acc_type();
        match &self.act {
            None => {
                let _ = writeln!(
                    b,
                    "              %{o}v = llvm.extractvalue %acc[{idx}] : {acc}"
                );
            }
            Some(act) => {
                let _ = writeln!(
                    b,
                    "              %{o}g = llvm.extractvalue %acc[{idx}] : {acc}\n              %{o}u = llvm.extractvalue %acc[{}] : {acc}",
                    idx + up
                );
                let (g, u) = (format!("%{o}g"), format!("%{o}u"));
                super::super::experts_kernels::rounded_gate_up(b, o, &g, &u, "              ");
                let _ = writeln!(
                    b,
                    "              %{o}v = scf.execute_region -> f32 {{\n              %g = arith.addf %{o}gv, %zero : f32\n              %u = arith.addf %{o}uv, %zero : f32\n{act}              scf.yield %res : f32\n              }}"
                );
            }
        }
        format!("%{o}v")
    }

    /// Accumulators `idx` and `idx + 1`'s outputs (`output_value`, named `{o}0` and `{o}1`).
    fn output_values(&self, b: &mut String, o: &str, idx: usize, up: usize) -> [String; 2] {
        [0, 1].map(|c| self.output_value(b, &format!("{o}{c}"), idx + c, up))
    }
}

/// `%{o}p`: the f32 values `[v0, v1]` as a bf16 pair.
fn pack(b: &mut String, o: &str, [v0, v1]: &[String; 2], ind: &str) -> String {
    let _ = writeln!(
        b,
        "{ind}%{o}b0 = arith.truncf {v0} : f32 to bf16\n{ind}%{o}b1 = arith.truncf {v1} : f32 to bf16\n{ind}%{o}p0 = llvm.insertelement %{o}b0, %pair0[%lane0 : i32] : vector<2xbf16>\n{ind}%{o}p = llvm.insertelement %{o}b1, %{o}p0[%lane1 : i32] : vector<2xbf16>"
    );
    format!("%{o}p")
}

/// The two epilogues' common values: `%cW` (the output's width), `%zero`, `%dstx` (the
/// output's address), `%pair0` and its lanes' indices.
fn head(b: &mut String, width: usize) {
    let _ = writeln!(
        b,
        "{IND}%cW = arith.constant {width} : index\n{IND}%zero = arith.constant 0.0 : f32\n{IND}%dstx = memref.extract_aligned_pointer_as_index %dst : memref<?xbf16> -> index\n{IND}%pair0 = llvm.mlir.undef : vector<2xbf16>\n{IND}%lane0 = llvm.mlir.constant(0 : i32) : i32\n{IND}%lane1 = llvm.mlir.constant(1 : i32) : i32"
    );
}

/// `%{v}_ptr`: the byte address `at` (an index value) as a pointer into address space `space`
/// (1 global, 3 shared).
fn pointer(b: &mut String, v: &str, at: &str, space: u32, ind: &str) -> String {
    let _ = writeln!(
        b,
        "{ind}%{v}_i64 = arith.index_cast {at} : index to i64\n{ind}%{v}_ptr = llvm.inttoptr %{v}_i64 : i64 to !llvm.ptr<{space}>"
    );
    format!("%{v}_ptr")
}

#[cfg(test)]
mod tests {
    use super::super::super::tensor_core_projection::TensorCoreProjection;
    use ppmoe_runtime::program::{EPILOGUE_STAGING_BYTES, SP_SHARED_BYTES, WG_SHARED_BYTES};

    /// The value of `%{name} = arith.constant N : index` in `kernel`.
    fn constant(kernel: &str, name: &str) -> usize {
        let at = format!("%{name} = arith.constant ");
        let rest = &kernel[kernel.find(&at).unwrap_or_else(|| panic!("no %{name}")) + at.len()..];
        rest.split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a number")
    }

    /// The kernel's staging as emitted: a warp's 16 rows (row stride `%cRS`, each row's 64
    /// columns of bf16 within it) fit in its part (`%cWSB` apart), the 8 warps' parts in
    /// `EPILOGUE_STAGING_BYTES`, and those after the barriers within the shared memory the
    /// runtime gives a block (a stride too small once made warps overwrite each other's rows).
    #[test]
    fn each_warps_staging_is_its_own() {
        for persistent in [false, true] {
            let kernel = TensorCoreProjection {
                name: "t_stage".into(),
                din: 768,
                dout: 2048,
                div: 8,
                slots: 4096,
                act: None,
                warpgroups: true,
                producer: true,
                persistent,
                pingpong: false,
                sorted: false,
            }
            .kernel();
            let (row, warp) = (constant(&kernel, "cRS"), constant(&kernel, "cWSB"));
            assert!(row >= super::GROUP_COLUMNS * 2, "a row holds 64 columns");
            assert!(16 * row <= warp, "16 rows of {row} bytes in {warp}");
            assert!(8 * warp <= EPILOGUE_STAGING_BYTES);
            let staging_end = WG_SHARED_BYTES - 1024 + 128 + EPILOGUE_STAGING_BYTES;
            assert!(staging_end + 1024 <= SP_SHARED_BYTES);
            assert_eq!(constant(&kernel, "cSTG0"), 128, "after the barriers");
        }
    }
}
