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
use crate::codegen::template::{specialise, specialise_at};
use ppmoe_runtime::program::EPILOGUE_STAGING_BYTES;

const STAGED_STORE: &str = include_str!("../templates/warpgroup/staged_store.mlir");
const STAGING_HEAD: &str = include_str!("../templates/warpgroup/staging_head.mlir");
const WARP_ROWS_TEXT: &str = include_str!("../templates/warpgroup/warp_rows.mlir");
const LANE_ROW: &str = include_str!("../templates/warpgroup/lane_row.mlir");
const STAGE_PAIR: &str = include_str!("../templates/warpgroup/stage_pair.mlir");
const WRITE_OUT_CHECKED: &str = include_str!("../templates/warpgroup/write_out_checked.mlir");
const WRITE_OUT: &str = include_str!("../templates/warpgroup/write_out.mlir");
const DIRECT_STORE: &str = include_str!("../templates/warpgroup/direct_store.mlir");
const DIRECT_HALF: &str = include_str!("../templates/warpgroup/direct_half.mlir");
const DIRECT_PAIR: &str = include_str!("../templates/warpgroup/direct_pair.mlir");
const LISTED_ROW: &str = include_str!("../templates/warpgroup/listed_row.mlir");
const GATED_VALUE: &str = include_str!("../templates/warpgroup/gated_value.mlir");
const PACK: &str = include_str!("../templates/warpgroup/pack.mlir");
const EPILOGUE_HEAD: &str = include_str!("../templates/warpgroup/epilogue_head.mlir");

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
    pub(super) fn staged_store(&self) -> String {
        debug_assert_eq!(EPILOGUE_STAGING_BYTES, 8 * WARP_STAGING);
        let (tiles, width) = (self.block_columns() / 8, self.out_columns());
        debug_assert_eq!(width % 8, 0);
        // Where the output's width is not whole blocks, each lane's 16-byte word is checked
        // (the width is whole words: `TensorCoreProjection::fits` takes whole chunks of 64).
        let checked = width % self.block_columns() != 0;
        let sync = "            nvvm.bar.warp.sync %wall : i32\n";
        let mut groups = String::new();
        for q in 0..tiles / 8 {
            groups += &self.stage_group(q, tiles);
            groups += sync;
            // The lanes' rows after the first group is staged, when its accumulators are
            // dead (with all of them live, they spilled: at most 168 registers a thread).
            if q == 0 {
                groups.extend((0..LANE_ROWS).map(|i| self.lane_row(i)));
            }
            groups.extend((0..LANE_ROWS).map(|i| write_out(q, i, checked)));
            groups += sync;
        }
        // A warp with no rows in the pass (at few rows per expert, most) stages nothing: the
        // test is the same for its lanes, so their warp barriers stay whole.
        specialise(
            STAGED_STORE,
            &[("head", &staging_head(width)), ("groups", &groups)],
        )
    }

    /// Row `%wrow` + 4 i of the warp's, this lane's i-th: `%li{i}` (it exists: stored),
    /// `%lg{i}` (the global byte address of its word at column `%wcol`), `%ls{i}` (the
    /// staged word's shared address).
    fn lane_row(&self, i: usize) -> String {
        // Ablated, stored only where the count exceeds the slots: never, but not known to
        // the compiler, which so keeps the multiplications.
        let (exists, never) = if self.ablate.store {
            (format!("%li{i}in"), format!("            %li{i}big = arith.cmpi ugt, %cnt, %cS : index\n            %li{i} = arith.andi %li{i}in, %li{i}big : i1\n"))
        } else {
            (format!("%li{i}"), String::new())
        };
        let output_row = self.output_row(&format!("li{i}"), &format!("%li{i}r"), "              ");
        specialise(
            LANE_ROW,
            &[
                ("i", &i),
                ("row", &(4 * i)),
                ("exists", &exists),
                ("never", &never),
                ("output_row", &output_row),
            ],
        )
    }

    /// Group q's pairs into the staging: tiles 8 q .. 8 q + 7, both row halves.
    fn stage_group(&self, q: usize, tiles: usize) -> String {
        let mut b = String::new();
        for h in 0..2 {
            for jj in 0..8 {
                let j = 8 * q + jj;
                let o = format!("e{h}_{j}");
                let (values, names) = self.output_values(&o, 4 * j + 2 * h, 4 * tiles);
                b += &specialise(
                    STAGE_PAIR,
                    &[
                        ("values", &values),
                        ("pair", &pack(&o, &names, IND)),
                        ("o", &o),
                        ("offset", &(8 * h * ROW_STRIDE + 16 * jj)),
                        ("pointer", &pointer(&o, &format!("%{o}a"), 3, IND)),
                    ],
                );
            }
        }
        b
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
    pub(super) fn direct_store(&self) -> String {
        let width = self.out_columns();
        debug_assert_eq!(width % 2, 0);
        let halves: String = (0..2).map(|h| self.direct_half(h)).collect();
        specialise(
            DIRECT_STORE,
            &[
                ("head", &head(width)),
                ("warp_rows", &WARP_ROWS_TEXT),
                ("halves", &halves),
            ],
        )
    }

    /// `direct_store`'s rows 8 h + g of the warp's.
    fn direct_half(&self, h: usize) -> String {
        let (tiles, width) = (self.block_columns() / 8, self.out_columns());
        let checked = width % self.block_columns() != 0;
        let r = format!("s{h}");
        // Ablated, stored only where the count exceeds the slots: never, but not known to
        // the compiler, which so keeps the multiplications.
        let (never, cond) = if self.ablate.store {
            (format!("            %{r}big = arith.cmpi ugt, %cnt, %cS : index\n            %{r}in = arith.andi %{r}in0, %{r}big : i1\n"), "in")
        } else {
            (String::new(), "in0")
        };
        let mut pairs = String::new();
        for j in 0..tiles {
            let o = format!("{r}_{j}");
            let (values, names) = self.output_values(&o, 4 * j + 2 * h, 4 * tiles);
            pairs += &values;
            pairs += &format!("              %{o}k = arith.constant {} : index\n              %{o}col = arith.addi %oc, %{o}k : index\n", 8 * j);
            let ind = match checked {
                true => "                ",
                false => "              ",
            };
            let pair = specialise_at(
                DIRECT_PAIR,
                ind,
                &[
                    ("o", &o),
                    ("r", &r),
                    ("pair", &pack(&o, &names, "")),
                    ("pointer", &pointer(&o, &format!("%{o}ad"), 1, "")),
                ],
            );
            pairs += &match checked {
                true => format!("              %{o}ok = arith.cmpi ult, %{o}col, %cW : index\n              scf.if %{o}ok {{\n{pair}              }}\n"),
                false => pair,
            };
        }
        specialise(
            DIRECT_HALF,
            &[
                ("r", &r),
                ("row", &(8 * h)),
                ("never", &never),
                ("cond", &cond),
                (
                    "output_row",
                    &self.output_row(&r, &format!("%{r}row"), "              "),
                ),
                ("pairs", &pairs),
            ],
        )
    }

    /// `%{v}s`, the output row of the tile's row `row` of its expert (an index value): its
    /// slot (the expert's list), or where the rows are sorted and this is the first
    /// projection, its place in the sorted rows (from `%rbase`).
    fn output_row(&self, v: &str, row: &str, ind: &str) -> String {
        if self.sorted && self.act.is_some() {
            format!("{ind}%{v}s = arith.addi %rbase, {row} : index\n")
        } else {
            specialise_at(LISTED_ROW, ind, &[("v", &v), ("row", &row)])
        }
    }

    /// `%{o}v`, the f32 output of accumulator `idx`: itself, or fused the activation of it
    /// (a gate value) and of accumulator `idx + up` (its up value), each rounded to bf16 first
    /// as PyTorch's bf16 projection rounds them. The lines, and the value's name.
    fn output_value(&self, o: &str, idx: usize, up: usize) -> (String, String) {
        let acc = acc_type();
        let lines = match &self.act {
            None => format!("              %{o}v = llvm.extractvalue %acc[{idx}] : {acc}\n"),
            Some(act) => {
                let (g, u) = (format!("%{o}g"), format!("%{o}u"));
                let mut rounded = String::new();
                super::super::experts_kernels::rounded_gate_up(
                    &mut rounded,
                    o,
                    &g,
                    &u,
                    "              ",
                );
                specialise(
                    GATED_VALUE,
                    &[
                        ("o", &o),
                        ("gate", &idx),
                        ("up", &(idx + up)),
                        ("acc", &acc),
                        ("rounded", &rounded),
                        ("act", act),
                    ],
                )
            }
        };
        (lines, format!("%{o}v"))
    }

    /// Accumulators `idx` and `idx + 1`'s outputs (`output_value`, named `{o}0` and `{o}1`):
    /// their lines, and their names.
    fn output_values(&self, o: &str, idx: usize, up: usize) -> (String, [String; 2]) {
        let [(l0, v0), (l1, v1)] =
            [0, 1].map(|c| self.output_value(&format!("{o}{c}"), idx + c, up));
        (l0 + &l1, [v0, v1])
    }
}

/// The epilogue's values (`head`'s), `%stw` (this warp's staging),
/// `%stp` (where this thread's pairs of row g go, less the tile's word), `%wcol` (this
/// lane's 16-byte word's first column).
fn staging_head(width: usize) -> String {
    specialise(
        STAGING_HEAD,
        &[
            ("head", &head(width)),
            ("warp_staging", &WARP_STAGING),
            ("row_stride", &ROW_STRIDE),
            ("warp_rows", &WARP_ROWS_TEXT),
        ],
    )
}

/// This lane's i-th row's word of group q: read from the staging, stored where the row
/// (and, `checked`, the word's columns) exist (64 q columns, 128 q bytes, past `%lg{i}`).
fn write_out(q: usize, i: usize, checked: bool) -> String {
    let o = format!("o{q}_{i}");
    let (checks, cond) = match checked {
        true => (
            specialise(
                WRITE_OUT_CHECKED,
                &[("o", &o), ("i", &i), ("column", &(q * GROUP_COLUMNS))],
            ),
            format!("%{o}in"),
        ),
        false => (String::new(), format!("%li{i}")),
    };
    specialise(
        WRITE_OUT,
        &[
            ("checked", &checks),
            (
                "from",
                &pointer(&format!("{o}s"), &format!("%ls{i}"), 3, IND),
            ),
            ("o", &o),
            ("cond", &cond),
            ("offset", &(q * GROUP_COLUMNS * 2)),
            ("i", &i),
            (
                "to",
                &pointer(&format!("{o}g"), &format!("%{o}g"), 1, "              "),
            ),
        ],
    )
}

/// `%{o}p`: the f32 values `[v0, v1]` as a bf16 pair.
fn pack(o: &str, [v0, v1]: &[String; 2], ind: &str) -> String {
    specialise_at(PACK, ind, &[("o", &o), ("v0", v0), ("v1", v1)])
}

/// The two epilogues' common values: `%cW` (the output's width), `%zero`, `%dstx` (the
/// output's address), `%pair0` and its lanes' indices.
fn head(width: usize) -> String {
    specialise(EPILOGUE_HEAD, &[("width", &width)])
}

/// `%{v}_ptr`: the byte address `at` (an index value) as a pointer into address space `space`
/// (1 global, 3 shared).
fn pointer(v: &str, at: &str, space: u32, ind: &str) -> String {
    format!("{ind}%{v}_i64 = arith.index_cast {at} : index to i64\n{ind}%{v}_ptr = llvm.inttoptr %{v}_i64 : i64 to !llvm.ptr<{space}>\n")
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
