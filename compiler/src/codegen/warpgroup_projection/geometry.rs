//! The tiles and stages of a warpgroup projection. Cooperative (every form's, and the
//! persistent form's past `PINGPONG_MAX_ROWS` rows per expert): both warpgroups multiply the
//! same tile, 128 rows (64 each) by 256 weight rows, in four stages; a tile's epilogue then
//! stops both, and no multiplication overlaps it (14% of `pproj`'s time at Qwen3-30B-A3B's
//! 4096 tokens on an H200, session 34). Ping-pong (the persistent form up to
//! `PINGPONG_MAX_ROWS` rows per expert, `pingpong_tiles`; measured slower past it on an H200
//! in session 35: Qwen3's layer at 4096 tokens 0.907 ms against 0.817, at 16384 3.150
//! against 2.577): each warpgroup takes every other tile of its block's, 64 rows by 256
//! weight rows, in five stages of 40 KiB (`qproj_*` kernels, `QP_SHARED_BYTES`), so one
//! warpgroup's epilogue runs while the other's wgmmas do (the stages come in the tiles'
//! order, so the second warpgroup's tile starts as the first's ends). Each tile's weight rows
//! then come from the L2 for 64 rows, not 128.

use super::{PASS_ROWS, STAGES, TILE_N};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Geometry {
    /// Rows of a tile (a pass).
    pub pass_rows: usize,
    pub stages: usize,
    /// Each warpgroup its own tiles.
    pub pingpong: bool,
}

impl Geometry {
    pub const COOPERATIVE: Geometry = Geometry {
        pass_rows: PASS_ROWS,
        stages: STAGES,
        pingpong: false,
    };
    pub const PINGPONG: Geometry = Geometry {
        pass_rows: PASS_ROWS / 2,
        stages: ppmoe_runtime::program::PINGPONG_STAGES,
        pingpong: true,
    };

    /// Whether a step of `slots` slots over `experts` experts takes the ping-pong geometry:
    /// where `pingpong_tiles` says, unless `PPMOE_PPROJ` at compile time names one (a
    /// measurement aid: `pingpong` or `cooperative`; another value is warned about once and
    /// leaves the policy).
    pub(crate) fn pingpong_wanted(slots: usize, experts: usize) -> bool {
        crate::codegen::switch::named_switch("PPMOE_PPROJ", ("cooperative", "pingpong"), || {
            ppmoe_runtime::program::pingpong_tiles(slots, experts)
        })
    }

    pub fn rows_bytes(&self) -> usize {
        self.pass_rows * 128
    }

    pub fn stage_bytes(&self) -> usize {
        self.rows_bytes() + TILE_N * 128
    }

    /// The rows between one warpgroup's first row of a tile and the next's (0: each its own
    /// tile).
    pub fn warpgroup_rows(&self) -> usize {
        if self.pingpong {
            0
        } else {
            PASS_ROWS / 2
        }
    }

    /// Shared memory the persistent kernel uses in this geometry: the stages, their alignment
    /// (up to 1024 bytes), the barriers (128), the epilogue's staging, the tile sums and
    /// the row sums.
    pub fn persistent_shared_bytes(&self) -> usize {
        use ppmoe_runtime::program::{EPILOGUE_STAGING_BYTES, PP_MAX_EXPERTS};
        self.stages * self.stage_bytes()
            + 1024
            + 128
            + EPILOGUE_STAGING_BYTES
            + 4 * (PP_MAX_EXPERTS + 1)
            + self.row_sums_bytes()
    }

    /// Room for the experts' running row sums, which the sorted rows' kernels keep after the
    /// tile sums: the cooperative geometry's (the ping-pong one's stages leave none).
    pub fn row_sums_bytes(&self) -> usize {
        if self.pingpong {
            0
        } else {
            4 * (ppmoe_runtime::program::PP_MAX_EXPERTS + 1)
        }
    }

    /// Shared memory the runtime gives this geometry's persistent kernels.
    pub fn persistent_shared_allowed(&self) -> usize {
        use ppmoe_runtime::program::{PP_SHARED_BYTES, QP_SHARED_BYTES};
        if self.pingpong {
            QP_SHARED_BYTES
        } else {
            PP_SHARED_BYTES
        }
    }

    /// The mbarriers after the stages (8 bytes each, in the 128 bytes kept for them): `full`
    /// and `empty` per stage, a spare one, and ping-pong's two turns.
    pub fn barriers(&self) -> usize {
        2 * self.stages + 1 + if self.pingpong { 2 } else { 0 }
    }

    /// Threads that release a stage: those of the warpgroups that multiply its chunk.
    pub fn releasers(&self) -> usize {
        if self.pingpong {
            128
        } else {
            256
        }
    }
}

/// Whether the persistent kernels' blocks take their tiles in mirrored order (`tile_taken`):
/// in the odd rounds of the grid that every block fills, block b takes the round's tile
/// G - 1 - b (G blocks), not b. In the plain order, with an even grid, tiles numbered pass
/// fastest and an even number of column tiles per expert (each expert's tiles then start at
/// an even one), a block takes tiles of one parity only: the even blocks every first pass of
/// the experts that need two, the odd ones every short second pass. Measured on an H200 (session
/// 47, `docs/bench-h200-s47.txt`, alternated in one run, median of 20): Mixtral-8x7B's layer
/// at 512 tokens 0.947 / 0.947 ms against 0.966 / 0.966, at 4096 4.879 against 4.851;
/// Qwen3-30B-A3B's at 512 0.338 against 0.334, at 4096 0.734 against 0.745, at 16384 2.253
/// against 2.337. `PPMOE_TILE_ORDER` at compile time (`stride` or `mirror`) chooses.
pub(super) fn mirrored_tile_order() -> bool {
    crate::codegen::switch::named_switch("PPMOE_TILE_ORDER", ("stride", "mirror"), || true)
}

/// Whether the warp-specialised projections' producer in geometry `shape` copies only the
/// listed rows a pass holds (its gathers; sorted rows come by one tensor box whatever the pass
/// holds), not the expert's first row again for each row past its count: in the ping-pong
/// geometry (few rows per expert, most of a tile's rows past its expert's count), unless
/// `PPMOE_ROW_TRIM` at compile time (`0` or `1`) says. Measured on an H200 (session 48,
/// `docs/bench-h200-s48.txt`, alternated in one run, median of 20): Qwen3-30B-A3B's layer at
/// 64 tokens 0.311 / 0.311 ms trimmed against 0.319 / 0.319, at 512 0.334 / 0.333 against
/// 0.335 / 0.338; in the cooperative geometry, at 4096 tokens, 0.813 / 0.807 against 0.749 /
/// 0.747 (each lane's 32 copies a chunk under a branch, where nearly every row is held).
pub(super) fn trimmed_rows(shape: Geometry) -> bool {
    crate::codegen::switch::switch("PPMOE_ROW_TRIM", || shape.pingpong)
}

/// The warps of a warp-specialised projection's producer (the first issues the weights'
/// tensor copies, all gather a share of the listed rows): `PRODUCER_WARPS`, unless
/// `PPMOE_PRODUCER_WARPS` at compile time says 1, 2 or 4 (a measurement aid; another value is
/// warned about and leaves the policy). Four keep a block's 384 threads within 168 registers
/// each, what the kernels take.
pub(super) fn producer_warps() -> usize {
    crate::codegen::switch::count_switch(
        "PPMOE_PRODUCER_WARPS",
        &[1, 2, 4],
        ppmoe_runtime::program::PRODUCER_WARPS,
    )
}

/// The tile that a persistent kernel's block `block` of `grid` takes at its loop's slot
/// `slot` (`block`, + `grid`, ...) of `total` tiles, mirrored (the kernel's `%t`, generated
/// by `persistent::tile_order` from the same formula): a full round's odd turn reversed.
#[cfg(test)]
fn tile_taken(slot: usize, block: usize, grid: usize, total: usize) -> usize {
    let round = (slot - block) / grid;
    let full = (round + 1) * grid <= total;
    if round % 2 == 1 && full {
        round * grid + grid - 1 - block
    } else {
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::Geometry;

    /// Each geometry's stages fit in the shared memory the runtime gives its kernels
    /// (`PP_SHARED_BYTES`, `QP_SHARED_BYTES`) with the barriers, the epilogue's staging and the
    /// tile sums, and the descriptors' 1024-byte alignment holds at every stage and operand.
    #[test]
    fn both_geometries_fit_the_persistent_forms_shared_memory() {
        use ppmoe_runtime::program::{PP_SHARED_BYTES, QP_SHARED_BYTES};
        for g in [Geometry::COOPERATIVE, Geometry::PINGPONG] {
            let used = g.persistent_shared_bytes();
            assert!(used <= g.persistent_shared_allowed(), "{g:?}: {used}");
            assert_eq!(g.stage_bytes() % 1024, 0);
            assert_eq!(g.rows_bytes() % 1024, 0);
            assert!(8 * g.barriers() <= 128, "the barriers' 128 bytes");
        }
        assert!(
            QP_SHARED_BYTES.max(PP_SHARED_BYTES) <= 227 * 1024,
            "an H200 block's most"
        );
    }

    /// The mirrored order takes every tile once (whatever the grid and the tiles' count),
    /// and with an even grid each block's tiles of its full rounds alternate in parity (an
    /// expert's two passes, numbered pass fastest, shared out).
    #[test]
    fn the_mirrored_order_takes_every_tile_once_and_alternates_parity() {
        for grid in [1, 2, 7, 132] {
            for total in [0, 1, grid - 1, grid, grid + 1, 5 * grid + 3, 10 * grid] {
                let mut taken = vec![0; total];
                for block in 0..grid {
                    let tiles: Vec<usize> = (block..total)
                        .step_by(grid)
                        .map(|s| super::tile_taken(s, block, grid, total))
                        .collect();
                    for &t in &tiles {
                        taken[t] += 1;
                    }
                    let full = total / grid;
                    if grid % 2 == 0 {
                        for w in tiles[..full].windows(2) {
                            assert_ne!(w[0] % 2, w[1] % 2, "grid {grid} total {total}: {tiles:?}");
                        }
                    }
                }
                assert!(taken.iter().all(|&n| n == 1), "grid {grid} total {total}");
            }
        }
    }
}
