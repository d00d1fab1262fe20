//! A device-routed expert projection on the tensor cores (bf16 stacks, more than one token):
//! the same operands and slot lists as the CUDA-core `dproj` kernels (see `decode_experts`),
//! so nothing is read back to the host, but each block multiplies its expert's listed rows, 64
//! at a time, by 64 of the expert's output columns with `mma.sync` (m16n8k16, bf16 in, f32
//! accumulated), so an expert's weights are read once per 64 rows instead of once per few.
//!
//! Per block (4 warps; grid: column tiles x local experts): for each pass of up to 64 rows,
//! the inner dimension is taken 64 at a time; the block stages the pass's rows of the chunk in
//! shared memory, and each warp multiplies them by its 16 columns, whose weights it reads
//! straight from global memory into the B fragments (each weight is used by every row of the
//! pass, held in registers). A chunk's operands are loaded one chunk ahead. A pass of 1-16,
//! 17-32, 33-48 or 49-64 rows runs that many m16 tiles. The source rows are bf16: the hidden
//! activations, or x narrowed by the runtime first (as the host-grouped path narrows a bf16
//! GEMM's activations).
//!
//! Fragments: every operand is contiguous along the inner dimension (rows of x or of the
//! hidden activations; the `Linear` stacks' [dout, din]), so lane (g = lane / 4, t = lane % 4)
//! reads 8 consecutive elements at t * 8 of a 32-wide slice with one 16-byte load, and uses
//! elements 0-3 as its "k = 2t, 2t+1, 2t+8, 2t+9" of one m16n8k16 and 4-7 of the next: the
//! inner dimension is permuted, the same way for both operands, so the sums are the products'.
//! Staged rows are 12 words (192 bytes) apart, so the 8 lanes of a load phase hit 32 distinct
//! banks. A row's result does not depend on where the atomics of the slot lists placed it.

use super::template::specialise;

const TENSOR_CORE_KERNEL: &str = include_str!("templates/tensor_core_kernel.mlir");
const BLOCK: &str = include_str!("templates/tensor_core/block.mlir");
const PASS_FITS: &str = include_str!("templates/tensor_core/pass_fits.mlir");
const COLUMNS: &str = include_str!("templates/tensor_core/columns.mlir");
const COLUMN_TILE: &str = include_str!("templates/tensor_core/column_tile.mlir");
const STAGED_ROW: &str = include_str!("templates/tensor_core/staged_row.mlir");
const PASS: &str = include_str!("templates/tensor_core/pass.mlir");
const WEIGHT_LOAD: &str = include_str!("templates/tensor_core/weight_load.mlir");
const ROW_LOAD: &str = include_str!("templates/tensor_core/row_load.mlir");
const FRAGMENT: &str = include_str!("templates/tensor_core/fragment.mlir");
const MMA: &str = include_str!("templates/tensor_core/mma.mlir");
const STORE_COLUMN: &str = include_str!("templates/tensor_core/store_column.mlir");
const STORE_ACTIVATED_COLUMN: &str =
    include_str!("templates/tensor_core/store_activated_column.mlir");
const SLOT_ROW: &str = include_str!("templates/tensor_core/slot_row.mlir");

/// Rows of one pass (four m16 tiles).
const PASS_ROWS: usize = 64;
/// Inner elements staged at once (two 32-wide slices).
pub const CHUNK: usize = 64;
/// 16-byte words per staged row: 8 used and 4 of padding (see the module's comment).
const ROW_WORDS: usize = 12;
/// The f32 type of the four accumulators one mma returns.
pub(super) const MMA_OUT: &str = "!llvm.struct<(f32, f32, f32, f32)>";

/// Every form of the projections as (warpgroups, producer, persistent, pingpong, sorted):
/// mma.sync; wgmma with every thread copying, warp-specialised, persistent, ping-pong, and
/// persistent over sorted rows (the tests build and assemble each).
#[cfg(test)]
pub(super) const FORMS: [(bool, bool, bool, bool, bool); 6] = [
    (false, false, false, false, false),
    (true, false, false, false, false),
    (true, true, false, false, false),
    (true, true, true, false, false),
    (true, true, true, true, false),
    (true, true, true, false, true),
];

/// One tensor-core projection kernel.
pub(super) struct TensorCoreProjection {
    pub name: String,
    pub din: usize,
    pub dout: usize,
    /// Slot s reads source row s / div.
    pub div: usize,
    pub slots: usize,
    /// The gated activation (`act_math`: `%g`, `%u` -> `%res`) computed in the epilogue: then
    /// each warp's two n8 tiles are 8 gate columns and the up columns F after them, and the
    /// kernel writes the activations ([slots, F], F = dout / 2), 32 of them per block (with
    /// `warpgroups`, a block's 128 gate rows and their up rows give 128).
    pub act: Option<String>,
    /// The projection on the warpgroup tensor cores (`warpgroup_projection`: wgmma, 128 rows
    /// a pass) rather than with mma.sync (64 rows a pass).
    pub warpgroups: bool,
    /// With `warpgroups`: the warp-specialised form (a producer warp feeds the stages, the
    /// weights by tensor copies, mbarriers between it and the warpgroups; `sproj` kernels),
    /// else every thread copies between block-wide barriers (`wproj`).
    pub producer: bool,
    /// With `producer`: the persistent form (a block per SM walking every expert's tiles,
    /// pass fastest; `pproj` kernels, the policy's).
    pub persistent: bool,
    /// With `persistent`: the ping-pong geometry (a 64-row tile per warpgroup; `qproj`
    /// kernels, where `pingpong_tiles` says) rather than the cooperative one.
    pub pingpong: bool,
    /// With `persistent` (the cooperative geometry): the rows sorted by expert
    /// (`sorted_rows`: expert e's listed rows at its running row sum, in its list's order),
    /// so a tile's rows are one box of the source, copied by the tensor memory accelerator
    /// like the weights (`%smap`) rather than gathered row by row; fused, the activations are
    /// written in that order too (the second projection's sorted source), else by slot.
    pub sorted: bool,
}

impl TensorCoreProjection {
    /// Whether projections of `din` inner elements fit the kernel.
    pub fn fits(din: usize) -> bool {
        din > 0 && din.is_multiple_of(CHUNK)
    }

    /// Whether a gated activation over `ffn` columns (the first projection's `n` = 2 ffn) can
    /// be the first projection's epilogue: whole blocks of gate columns with mma.sync (the
    /// warpgroup kernels multiply rows past the gate rows and never store them, so any width).
    pub fn fuses(ffn: usize, n: usize, warpgroups: bool) -> bool {
        use ppmoe_runtime::program::TC_ACT_BLOCK_COLUMNS;
        n == 2 * ffn && ffn > 0 && (warpgroups || ffn.is_multiple_of(TC_ACT_BLOCK_COLUMNS))
    }

    /// The kernel's names: the first projection's (fused or not) and the second's.
    pub fn names(
        warpgroups: bool,
        producer: bool,
        (persistent, pingpong): (bool, bool),
    ) -> [&'static str; 3] {
        use ppmoe_runtime::program::{PP_KERNELS, QP_KERNELS, SP_KERNELS, TC_KERNELS, WG_KERNELS};
        match (warpgroups, producer) {
            // The persistent kernels in the ping-pong geometry are named apart: they take
            // more shared memory.
            (true, true) if persistent && pingpong => QP_KERNELS,
            (true, true) if persistent => PP_KERNELS,
            (true, true) => SP_KERNELS,
            (true, false) => WG_KERNELS,
            _ => TC_KERNELS,
        }
    }

    pub fn kernel(&self) -> String {
        if self.warpgroups {
            return super::warpgroup_projection::kernel(self);
        }
        use ppmoe_runtime::program::{TC_BLOCK_COLUMNS, TC_WARPS};
        debug_assert_eq!(TC_BLOCK_COLUMNS, TC_WARPS * 16);
        let mut passes = String::new();
        for tiles in 1..=4 {
            if tiles < 4 {
                passes += &specialise(PASS_FITS, &[("tiles", &tiles), ("rows", &(tiles * 16))]);
            }
            passes += &self.pass(tiles);
            if tiles < 4 {
                passes += "          } else {\n";
            }
        }
        passes += &"          }\n".repeat(3);
        let staged_rows: String = (0..4).map(staged_row).collect();
        let b = specialise(
            BLOCK,
            &[
                ("pass_rows", &PASS_ROWS),
                ("chunk", &CHUNK),
                ("row_words", &ROW_WORDS),
                ("din", &self.din),
                ("dout", &self.dout),
                ("slots", &self.slots),
                ("div", &self.div),
                ("source_row_words", &(self.din / 8)),
                ("columns", &self.columns()),
                ("staged_rows", &staged_rows),
                ("passes", &passes),
            ],
        );
        specialise(
            TENSOR_CORE_KERNEL,
            &[
                ("name", &self.name),
                ("pass_words", &(PASS_ROWS * ROW_WORDS)),
                ("b", &b),
            ],
        )
    }

    /// This warp's two n8 tiles: each lane's weight column `%col{j}` (clamped to the last
    /// column past the end: read, never stored) and its first word `%wb{j}`, and the first of
    /// the columns its accumulators hold, `%oc{j}`.
    fn columns(&self) -> String {
        // Plain: 16 consecutive columns per warp. Fused: 8 gate columns per warp and the 8 up
        // columns F after them.
        let (block, warp, second) = match self.act {
            None => (ppmoe_runtime::program::TC_BLOCK_COLUMNS, 16, 8),
            Some(_) => (
                ppmoe_runtime::program::TC_ACT_BLOCK_COLUMNS,
                8,
                self.dout / 2,
            ),
        };
        let tiles: String = (0..2)
            .map(|j| specialise(COLUMN_TILE, &[("j", &j), ("first", &(second * j))]))
            .collect();
        specialise(
            COLUMNS,
            &[
                ("block", &block),
                ("warp", &warp),
                ("last", &(self.dout - 1)),
                ("row_words", &(self.din / 8)),
                ("tiles", &tiles),
            ],
        )
    }

    /// One pass of `tiles` m16 tiles: the chunks of the inner dimension, then the stores.
    /// Each chunk's operands are loaded into registers one chunk ahead (the first before the
    /// loop), so their latency is spent beside the previous chunk's mmas.
    fn pass(&self, tiles: usize) -> String {
        let n = tiles * 2 * 4;
        let p = format!("p{tiles}_");
        let carried: Vec<(String, String, &str)> = (0..n)
            .map(|a| (format!("%{p}i{a}"), "%zero".to_string(), "f32"))
            .chain(
                Self::operand_names(tiles)
                    .into_iter()
                    .map(|o| (format!("%{p}c{o}"), format!("%{p}f{o}"), "vector<4xi32>")),
            )
            .collect();
        let inits = carried
            .iter()
            .map(|(name, init, _)| format!("{name} = {init}"))
            .collect::<Vec<_>>()
            .join(", ");
        let types = carried
            .iter()
            .map(|(_, _, t)| *t)
            .collect::<Vec<_>>()
            .join(", ");
        let staging: String = (0..tiles)
            .map(|q| {
                format!(
                    "            memref.store %{p}cx{q}, %xs[%xo{q}] : memref<{}xvector<4xi32>, 3>\n",
                    PASS_ROWS * ROW_WORDS
                )
            })
            .collect();
        let mut accs: Vec<String> = (0..n).map(|a| format!("%{p}i{a}")).collect();
        let multiply: String = (0..2)
            .map(|half| self.multiply(&p, tiles, half, &mut accs))
            .collect();
        let next: Vec<String> = Self::operand_names(tiles)
            .into_iter()
            .map(|o| format!("%{p}n{o}"))
            .collect();
        specialise(
            PASS,
            &[
                ("p", &p),
                ("first_loads", &loads(&p, &format!("{p}k0"), "f", tiles)),
                ("carried", &carried.len()),
                ("inits", &inits),
                ("types", &types),
                ("staging", &staging),
                // The next chunk (the last chunk again after the last: loaded, never used).
                ("next_loads", &loads(&p, &format!("{p}kp"), "n", tiles)),
                ("multiply", &multiply),
                ("accs", &accs.join(", ")),
                ("next", &next.join(", ")),
                ("store", &self.store(&p, tiles)),
            ],
        )
    }

    /// The names of one chunk's operands in registers: the weight words `bw{j}{half}` of the
    /// warp's two n8 tiles, and the staged words `x{q}` of the pass's rows.
    fn operand_names(tiles: usize) -> Vec<String> {
        let mut v = Vec::new();
        for j in 0..2 {
            for half in 0..2 {
                v.push(format!("bw{j}{half}"));
            }
        }
        v.extend((0..tiles).map(|q| format!("x{q}")));
        v
    }

    /// The 32-wide slice `half` of the chunk: each m16 tile's A fragments from shared memory,
    /// two mmas per (m tile, n8 tile), `accs` advanced to their results.
    fn multiply(&self, p: &str, tiles: usize, half: usize, accs: &mut [String]) -> String {
        let xs = format!("memref<{}xvector<4xi32>, 3>", PASS_ROWS * ROW_WORDS);
        let q = format!("{p}h{half}_");
        let mut b = String::new();
        for i in 0..tiles {
            for (side, extra) in [("a", 0), ("b", 8)] {
                let v = format!("{q}v{i}{side}");
                b += &specialise(
                    FRAGMENT,
                    &[
                        ("r", &format!("{q}r{i}{side}")),
                        ("row", &(16 * i + extra)),
                        ("word", &(4 * half)),
                        ("v", &v),
                        ("xs", &xs),
                        ("words", &words(&v)),
                    ],
                );
            }
        }
        for j in 0..2 {
            let weights = format!("{p}cbw{j}{half}");
            b += &words(&weights);
            for i in 0..tiles {
                for step in 0..2 {
                    let a = (i * 2 + j) * 4;
                    let m = format!("%{q}m{i}{j}{step}");
                    b += &specialise(
                        MMA,
                        &[
                            ("m", &m),
                            ("a", &format!("{q}v{i}")),
                            ("b", &weights),
                            ("w0", &(2 * step)),
                            ("w1", &(2 * step + 1)),
                            ("c", &accs[a..a + 4].join(", ")),
                            ("out", &MMA_OUT),
                        ],
                    );
                    for r in 0..4 {
                        b += &format!(
                            "            {m}_{r} = llvm.extractvalue {m}[{r}] : {MMA_OUT}\n"
                        );
                        accs[a + r] = format!("{m}_{r}");
                    }
                }
            }
        }
        b
    }

    /// The pass's results: accumulator (i, j, r) is row 16 i + g (+ 8 for r >= 2) of the
    /// pass, column `%oc{j}` + r % 2; stored as bf16 where the row and column exist (fused:
    /// each gate and up pair through the activation, at the gate's column of [slots, F]).
    fn store(&self, p: &str, tiles: usize) -> String {
        if let Some(act) = &self.act {
            return self.store_activated(p, tiles, act);
        }
        let mut b = String::new();
        for i in 0..tiles {
            for side in 0..2 {
                let r = format!("{p}s{i}{side}");
                b += &slot_row(&r, 16 * i + 8 * side, "%cN");
                for j in 0..2 {
                    for c in 0..2 {
                        let a = (i * 2 + j) * 4 + 2 * side + c;
                        let o = format!("{r}_{j}{c}");
                        b += &specialise(
                            STORE_COLUMN,
                            &[
                                ("o", &o),
                                ("c", &c),
                                ("j", &j),
                                ("r", &r),
                                ("p", &p),
                                ("a", &a),
                            ],
                        );
                    }
                }
                b += "          }\n";
            }
        }
        b
    }

    /// The fused epilogue: gate accumulator (i, 0, r) and up (i, 1, r) hold the same row and
    /// column; each is rounded to bf16 and back first (as the hidden activations are stored
    /// between the kernels), then the activation, in a region of its own (its names are
    /// `act_math`'s), stored as bf16 into row slot of [slots, F].
    fn store_activated(&self, p: &str, tiles: usize, act: &str) -> String {
        let f = self.dout / 2;
        let mut b = format!("          %{p}cF = arith.constant {f} : index\n");
        for i in 0..tiles {
            for side in 0..2 {
                let r = format!("{p}s{i}{side}");
                b += &slot_row(&r, 16 * i + 8 * side, &format!("%{p}cF"));
                for c in 0..2 {
                    let (gate, up) = ((i * 2) * 4 + 2 * side + c, (i * 2 + 1) * 4 + 2 * side + c);
                    let o = format!("{r}_{c}");
                    let (g, u) = (format!("%{p}acc#{gate}"), format!("%{p}acc#{up}"));
                    let mut rounded = String::new();
                    super::experts_kernels::rounded_gate_up(
                        &mut rounded,
                        &o,
                        &g,
                        &u,
                        "            ",
                    );
                    b += &specialise(
                        STORE_ACTIVATED_COLUMN,
                        &[
                            ("rounded", &rounded),
                            ("o", &o),
                            ("act", &act),
                            ("c", &c),
                            ("p", &p),
                            ("r", &r),
                        ],
                    );
                }
                b += "          }\n";
            }
        }
        b
    }
}

/// The four rows this thread stages (`%srow` + 16 q): whether each is a row of the pass
/// (`%sin{q}`), its source's first word (`%sb{q}`) and its shared-memory word (`%xo{q}`).
fn staged_row(q: usize) -> String {
    specialise(STAGED_ROW, &[("q", &q), ("row", &(16 * q))])
}

/// The operands of the chunk at `%{k}` loaded as `%{p}{tag}bw{j}{half}` and `%{p}{tag}x{q}`
/// (0 past the pass's rows).
fn loads(p: &str, k: &str, tag: &str, tiles: usize) -> String {
    let o = format!("{p}{tag}");
    let mut b = format!("            %{o}kw = arith.divui %{k}, %c8 : index\n");
    for j in 0..2 {
        for half in 0..2 {
            b += &specialise(
                WEIGHT_LOAD,
                &[
                    ("o", &o),
                    ("jh", &format!("{j}{half}")),
                    ("j", &j),
                    ("offset", &(4 * half)),
                ],
            );
        }
    }
    for q in 0..tiles {
        b += &specialise(ROW_LOAD, &[("o", &o), ("q", &q)]);
    }
    b
}

/// Row `%lgrp` + `offset` of the pass, where it is one (`%{r}in`), opens an `scf.if` that
/// looks up its slot in the expert's list and defines `%{r}base`, the slot's first element of
/// a destination `width` (an index value) wide; the caller closes the `scf.if`.
fn slot_row(r: &str, offset: usize, width: &str) -> String {
    specialise(
        SLOT_ROW,
        &[("r", &r), ("offset", &offset), ("width", &width)],
    )
}

/// Word vector `%{v}` as its four i32 elements `%{v}_0` .. `%{v}_3`.
fn words(v: &str) -> String {
    (0..4)
        .map(|m| format!("            %{v}_{m}c = arith.constant {m} : i32\n            %{v}_{m} = llvm.extractelement %{v}[%{v}_{m}c : i32] : vector<4xi32>\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::TensorCoreProjection;

    /// The kernel lowers to PTX with one mma per (m16 tile, n8 tile, 16-wide step) of each
    /// pass body: bodies of 1 to 4 m tiles, 2 n8 tiles, 4 steps per 64-wide chunk = 80.
    #[test]
    fn a_projection_lowers_to_bf16_mmas_for_each_pass_size() {
        let kernel = TensorCoreProjection {
            name: "t_tproj_in".into(),
            din: 128,
            dout: 96,
            div: 2,
            slots: 64,
            act: None,
            warpgroups: false,
            producer: false,
            persistent: false,
            pingpong: false,
            sorted: false,
        }
        .kernel();
        let ptx = crate::codegen::ptx::kernel_ptx(&kernel);
        assert_eq!(kernel.matches("nvvm.mma.sync").count(), 80);
        // LLVM may unroll the chunk loop (two chunks here), never drop an mma.
        let mmas = ptx
            .matches("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
            .count();
        assert!(mmas >= 80, "{mmas} mmas in the PTX");
        assert!(!ptx.contains(".local"), "no spills to local memory");
    }

    /// With a gated activation in the epilogue: the same mmas, the activation (Mixtral's
    /// SiLU-gated one: an ex2 and an approximate reciprocal per element, no correctly rounded
    /// division) at each of a thread's 8 (gate, up) pairs per m16 tile, gate and up narrowed
    /// to bf16 by one conversion, and stores into [slots, F].
    #[test]
    fn a_fused_projection_applies_the_activation_to_paired_columns() {
        let act = crate::codegen::experts_kernels::silu_gated_math();
        assert!(TensorCoreProjection::fuses(64, 128, false));
        assert!(
            !TensorCoreProjection::fuses(48, 96, false),
            "not whole blocks of 32"
        );
        assert!(TensorCoreProjection::fuses(48, 96, true));
        let kernel = TensorCoreProjection {
            name: "t_tproj_act".into(),
            din: 128,
            dout: 128,
            div: 2,
            slots: 64,
            act: Some(act),
            warpgroups: false,
            producer: false,
            persistent: false,
            pingpong: false,
            sorted: false,
        }
        .kernel();
        assert_eq!(kernel.matches("nvvm.mma.sync").count(), 80);
        // (1 + 2 + 3 + 4) m16 tiles x 2 rows x 2 columns per thread.
        assert_eq!(kernel.matches("scf.execute_region").count(), 40);
        let ptx = &crate::codegen::ptx::kernel_ptx(&kernel);
        assert!(ptx.contains("ex2.approx.ftz.f32"));
        // (Not all of them reach this small kernel's PTX: LLVM merges or drops some.)
        let reciprocals = ptx.matches("rcp.approx.ftz.f32").count();
        assert!(reciprocals >= 20, "{reciprocals} reciprocals");
        assert!(!ptx.contains("div.rn.f32"), "no correctly rounded division");
        let pairs = ptx.matches("cvt.rn.bf16x2.f32").count();
        assert_eq!(pairs, reciprocals, "gate and up narrowed as a pair");
        assert!(!ptx.contains(".local"), "no spills to local memory");
    }
}
