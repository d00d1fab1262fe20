//! The persistent form of the warp-specialised projection (`persistent` set; kernels
//! `pproj_*`, the policy's; measured in `decode_experts::projection_form`): a block per SM
//! (the runtime's grid), each taking tiles t = its index, + the grid, ... of every local
//! expert's (column tile, pass) pairs, numbered expert by expert and, within an expert, pass
//! fastest. The per-tile form gives a block one column tile of one expert and walks its
//! passes: a column tile's weight rows (1 MiB at Qwen3-30B-A3B's sizes, 2 MiB at Mixtral's)
//! are read again for every pass, and with 132 blocks running, more than the L2 holds passes
//! between one pass and the next, so they come from memory each time. Here the passes of a
//! column tile run on neighbouring blocks at about the same time, so its weights are read
//! from memory about once.
//!
//! The tile list: every block counts each expert's tiles (passes x column tiles) into shared
//! memory after the barriers (4 bytes each, `%pre`), thread 0 turns them into running sums
//! (`%pre[e]` the tiles before expert e, `%pre[E]` all of them), and tile t's expert is the
//! first whose running sum past it exceeds t (a binary search). Producer and consumers walk
//! the same tiles in the same order, and number the block's chunks over its tiles (its i-th
//! tile's chunk k is i NK + k) for the stages' phases, as the per-tile form numbers them over
//! its passes; the rest (a tile is one pass) is that form's.

use super::{acc_type, WarpgroupProjection};
use crate::codegen::template::specialise;
use ppmoe_runtime::program::PP_MAX_EXPERTS;

const PERSISTENT: &str = include_str!("../templates/warpgroup/persistent.mlir");
const PINGPONG_TILES: &str = include_str!("../templates/warpgroup/pingpong_tiles.mlir");
const TILE_LIST: &str = include_str!("../templates/warpgroup/tile_list.mlir");
const TILE_LIST_ROWS: &str = include_str!("../templates/warpgroup/tile_list_rows.mlir");
const RUNNING_SUM: &str = include_str!("../templates/warpgroup/running_sum.mlir");
const TILE: &str = include_str!("../templates/warpgroup/tile.mlir");
const TILE_ROW_BASE: &str = include_str!("../templates/warpgroup/tile_row_base.mlir");
const TILE_ORDER: &str = include_str!("../templates/warpgroup/tile_order.mlir");
const MIRRORED_TILE: &str = include_str!("../templates/warpgroup/mirrored_tile.mlir");
const SHARED_ENTRY: &str = include_str!("../templates/warpgroup/shared_entry.mlir");

/// Where the running sums start after the barriers' start (past the 9 barriers and the
/// epilogue's staging).
const PREFIX_OFFSET: usize = 128 + ppmoe_runtime::program::EPILOGUE_STAGING_BYTES;
/// Sorted, the entry of the experts' running row sums (after the tile sums and their total).
const ROW_SUMS: usize = PP_MAX_EXPERTS + 1;

impl WarpgroupProjection<'_> {
    /// The persistent kernel's body.
    pub(super) fn persistent_body(&self) -> String {
        // Ping-pong, warpgroup w takes the block's tiles w, w + 2, ... (t = its index + w G,
        // step 2 G); else both take every tile.
        let (tiles, wait_turn, pass_turn) = match self.shape.pingpong {
            true => (
                PINGPONG_TILES.to_string(),
                self.wait_turn(),
                self.pass_turn(),
            ),
            false => (
                "        scf.for %s = %bid to %total step %G {\n".to_string(),
                String::new(),
                String::new(),
            ),
        };
        specialise(
            PERSISTENT,
            &[
                ("constants", &self.constants()),
                ("acc", &acc_type()),
                ("barriers", &self.make_barriers()),
                ("tile_list", &self.tile_list()),
                ("producer_head", &self.producer_head()),
                ("tile", &self.tile()),
                ("produce_pass", &self.produce_pass("%r0", "%pg0")),
                ("tiles", &tiles),
                ("wait_turn", &wait_turn),
                ("consume_chunk", &self.consume_chunk()),
                ("pass_turn", &pass_turn),
                ("pass_tail", &self.pass_tail()),
            ],
        )
    }

    /// `%pre`, the running sums of the experts' tiles (see the module's doc), `%cE` (the
    /// experts) and `%total` (their tiles): every thread counts some, thread 0 sums them.
    fn tile_list(&self) -> String {
        // The running sums start after the stages, the barriers and the staging.
        debug_assert!(
            self.shape.persistent_shared_bytes() <= self.shape.persistent_shared_allowed()
        );
        // The rows' running sums after the tiles' (the cooperative geometry keeps room).
        debug_assert!(!self.sorted || self.shape.row_sums_bytes() > 0);
        // Sorted, the rows' counts too (their running sums after the tiles').
        let (rows, sums): (String, &[(&str, usize)]) = match self.sorted {
            true => (
                specialise(
                    TILE_LIST_ROWS,
                    &[("row_sums", &ROW_SUMS), ("rows_entry", &entry("xr", "%xr"))],
                ),
                &[("", 0), ("r", ROW_SUMS)],
            ),
            false => (String::new(), &[("", 0)]),
        };
        let running_sums: String = sums
            .iter()
            .map(|&(v, offset)| {
                let first = entry(&format!("{v}s0"), &format!("%{v}so"));
                specialise(
                    RUNNING_SUM,
                    &[
                        ("v", &v),
                        ("offset", &offset),
                        ("first_entry", &first),
                        ("entry", &entry("ys", "%y1o")),
                    ],
                )
            })
            .collect();
        specialise(
            TILE_LIST,
            &[
                ("threads", &self.threads()),
                (
                    "column_tiles",
                    &self.out_columns().div_ceil(self.block_columns()),
                ),
                ("prefix_offset", &PREFIX_OFFSET),
                ("tiles_entry", &entry("xs", "%x1")),
                ("rows", &rows),
                ("running_sums", &running_sums),
                ("total_entry", &entry("tt", "%cE")),
            ],
        )
    }

    /// Tile `%t`'s expert `%e` (the first whose running sum past it exceeds t: a binary
    /// search, the sums in shared memory) and what the per-tile form's pieces read of it:
    /// `%cnt`, `%lbase`, `%firsts`, `%eN`, its column tile's `%nb0` and its pass's first row
    /// `%r0`; and `%it`, which of the block's tiles it is.
    fn tile(&self) -> String {
        let steps = (PP_MAX_EXPERTS as f64).log2().ceil() as usize + 1;
        // Sorted, `%rbase`: the expert's first row in the sorted source (and output).
        let row_base = match self.sorted {
            true => specialise(
                TILE_ROW_BASE,
                &[("row_sums", &ROW_SUMS), ("row_entry", &entry("rb", "%rbe"))],
            ),
            false => String::new(),
        };
        specialise(
            TILE,
            &[
                ("tile_order", &tile_order()),
                ("steps", &steps),
                ("mid_entry", &entry("is", "%mid1")),
                ("base_entry", &entry("eb", "%e")),
                ("row_base", &row_base),
            ],
        )
    }
}

/// `%it`, which of the block's tiles (and rounds of the grid) the loop's `%s` (the block's
/// index, + the grid, ...) is, and `%t`, the tile it takes: `%s` itself,
/// or mirrored (`geometry::mirrored_tile_order`; `geometry::tile_taken` the same formula)
/// in the odd rounds of the grid that every block fills. The stages' phases count the block's
/// tiles by `%it`.
fn tile_order() -> String {
    let tile = match super::geometry::mirrored_tile_order() {
        true => MIRRORED_TILE,
        false => "          %t = arith.addi %s, %c0 : index\n",
    };
    specialise(TILE_ORDER, &[("tile", &tile)])
}

/// `%{v}_p`: the shared-memory pointer of running sum `index` (an index value) at `%pre`.
fn entry(v: &str, index: &str) -> String {
    specialise(SHARED_ENTRY, &[("v", &v), ("index", &index)])
}
