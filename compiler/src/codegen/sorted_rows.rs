//! The rows of a device-routed experts step sorted by expert, for the persistent warpgroup
//! projections (`pproj`, `TensorCoreProjection::sorted`): expert e's listed rows, in its
//! list's order, written from its running row sum (the counts of the experts before it), so
//! that a tile's 128 rows are one box of a tensor map, copied by the tensor memory
//! accelerator as the weights are. Gathered row by row instead (each producer lane's 16-byte
//! `cp.async`), the rows cost the first projection of Mixtral-8x7B's layer at 4096 tokens
//! 0.43 ms of 3.12 on an H200, about 1.5 times the weights' tensor copies per byte
//! (`PPMOE_ABLATE`, session 36). The first projection writes its activations in the same
//! order, so the second reads its rows as boxes too, with no pass of its own.
//!
//! `{prefix}_psort` (`SORTED_ROWS_KERNEL`): a block of `SORT_THREADS` per (local expert,
//! one of the grid's y); its threads add the counts of the experts before its own (shared
//! memory atomics), then each warp copies whole rows, the block's y-th of every grid-y rows'
//! 8, each lane `UNROLL` 16-byte words at a time (all loads before the stores).

use super::template::specialise;
use ppmoe_runtime::program::{SORTED_ROWS_KERNEL, SORT_THREADS};

const SORTED_ROWS: &str = include_str!("templates/experts/sorted_rows.mlir");
const SORTED_ROWS_LOAD: &str = include_str!("templates/experts/sorted_rows_load.mlir");
const SORTED_ROWS_STORE: &str = include_str!("templates/experts/sorted_rows_store.mlir");

/// The rows' words a lane moves at once, where the row's words are a whole number of them
/// per warp (else one at a time).
const UNROLL: usize = 4;

/// `{prefix}_psort` over `slots` slots (each expert's list is `slots` long; slot s reads
/// source row s / `div`) of rows of `hidden` bf16 (a multiple of eight).
pub(super) fn kernel(prefix: &str, slots: usize, div: usize, hidden: usize) -> String {
    debug_assert!(hidden.is_multiple_of(8));
    let words = hidden / 8;
    let unroll = if words.is_multiple_of(32 * UNROLL) {
        UNROLL
    } else {
        1
    };
    let loads: String = (0..unroll)
        .map(|u| specialise(SORTED_ROWS_LOAD, &[("u", &u), ("offset", &(32 * u))]))
        .collect();
    let stores: String = (0..unroll)
        .map(|u| specialise(SORTED_ROWS_STORE, &[("u", &u)]))
        .collect();
    specialise(
        SORTED_ROWS,
        &[
            ("name", &format!("{prefix}_{SORTED_ROWS_KERNEL}")),
            ("threads", &SORT_THREADS),
            ("warps", &(SORT_THREADS / 32)),
            ("slots", &slots),
            ("div", &div),
            ("words", &words),
            ("lane_words", &(32 * unroll)),
            ("loads", &loads),
            ("stores", &stores),
        ],
    )
}

#[cfg(test)]
mod tests {
    /// The running row sum by shared-memory atomics between two barriers, then whole rows
    /// moved 16 bytes a lane: four words' loads before their stores where a row is whole
    /// warps of four (H = 4096: 512 words), one at a time where not (H = 64: 8).
    #[test]
    fn rows_move_in_sixteen_byte_words_from_the_running_sum() {
        let wide = crate::codegen::ptx::kernel_ptx(&super::kernel("t", 8192, 2, 4096));
        assert!(wide.contains(".entry t_psort"));
        assert!(wide.contains("atom.shared.add") || wide.contains("red.shared.add"));
        assert_eq!(wide.matches("bar.sync").count(), 2);
        assert_eq!(wide.matches("ld.global.v4.b32").count(), 4, "{wide}");
        assert_eq!(wide.matches("st.global.v4.b32").count(), 4);
        let last_load = wide.rfind("ld.global.v4.b32").unwrap_or(0);
        assert!(last_load < wide.find("st.global.v4.b32").unwrap_or(0));
        let narrow = crate::codegen::ptx::kernel_ptx(&super::kernel("t", 64, 2, 64));
        assert_eq!(narrow.matches("ld.global.v4.b32").count(), 1);
        assert!(!narrow.contains(".local"));
    }
}
