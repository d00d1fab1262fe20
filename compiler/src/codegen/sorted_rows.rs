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

use ppmoe_runtime::program::{SORTED_ROWS_KERNEL, SORT_THREADS};
use std::fmt::Write as _;

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
    let warps = SORT_THREADS / 32;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "      %e = gpu.block_id x\n      %y = gpu.block_id y\n      %Y = gpu.grid_dim y\n      %tid = gpu.thread_id x\n      %c0 = arith.constant 0 : index\n      %c32 = arith.constant 32 : index\n      %cT = arith.constant {SORT_THREADS} : index\n      %cWP = arith.constant {warps} : index\n      %cS = arith.constant {slots} : index\n      %cdiv = arith.constant {div} : index\n      %cW = arith.constant {words} : index\n      %cLW = arith.constant {} : index\n      %z32 = arith.constant 0 : i32\n      %t0 = arith.cmpi eq, %tid, %c0 : index\n      scf.if %t0 {{\n        memref.store %z32, %base[%c0] : memref<1xi32, 3>\n      }}\n      gpu.barrier\n      scf.for %j = %tid to %e step %cT {{\n        %cj = memref.load %counts[%j] : memref<?xi32>\n        %old = memref.atomic_rmw addi %cj, %base[%c0] : (i32, memref<1xi32, 3>) -> i32\n      }}\n      gpu.barrier\n      %rb32 = memref.load %base[%c0] : memref<1xi32, 3>\n      %rb = arith.index_cast %rb32 : i32 to index\n      %cnt32 = memref.load %counts[%e] : memref<?xi32>\n      %cnt = arith.index_cast %cnt32 : i32 to index\n      %warp = arith.divui %tid, %c32 : index\n      %lane = arith.remui %tid, %c32 : index\n      %y8 = arith.muli %y, %cWP : index\n      %i0 = arith.addi %y8, %warp : index\n      %istep = arith.muli %Y, %cWP : index\n      %lbase = arith.muli %e, %cS : index\n      scf.for %i = %i0 to %cnt step %istep {{\n        %l = arith.addi %lbase, %i : index\n        %s32 = memref.load %lists[%l] : memref<?xi32>\n        %s = arith.index_cast %s32 : i32 to index\n        %srow = arith.divui %s, %cdiv : index\n        %from = arith.muli %srow, %cW : index\n        %drow = arith.addi %rb, %i : index\n        %to = arith.muli %drow, %cW : index\n        scf.for %w = %lane to %cW step %cLW {{",
        32 * unroll
    );
    for u in 0..unroll {
        let _ = writeln!(
            b,
            "          %o{u} = arith.constant {} : index\n          %w{u} = arith.addi %w, %o{u} : index\n          %f{u} = arith.addi %from, %w{u} : index\n          %v{u} = memref.load %src[%f{u}] : memref<?xvector<4xi32>>",
            32 * u
        );
    }
    for u in 0..unroll {
        let _ = writeln!(
            b,
            "          %d{u} = arith.addi %to, %w{u} : index\n          memref.store %v{u}, %dst[%d{u}] : memref<?xvector<4xi32>>"
        );
    }
    let _ = writeln!(b, "        }}\n      }}");
    let params = [
        "%src: memref<?xvector<4xi32>>",
        "%lists: memref<?xi32>",
        "%counts: memref<?xi32>",
        "%dst: memref<?xvector<4xi32>>",
    ];
    format!(
        "    gpu.func @{prefix}_{SORTED_ROWS_KERNEL}({}) workgroup(%base: memref<1xi32, 3>) kernel attributes {{nvvm.maxntid = array<i32: {SORT_THREADS}, 1, 1>}} {{\n{b}      gpu.return\n    }}\n",
        params.join(", ")
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
