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
}
