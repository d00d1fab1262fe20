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
use ppmoe_runtime::program::PP_MAX_EXPERTS;
use std::fmt::Write as _;

/// Where the running sums start after the barriers' start (past the 9 barriers and the
/// epilogue's staging).
const PREFIX_OFFSET: usize = 128 + ppmoe_runtime::program::EPILOGUE_STAGING_BYTES;
/// Sorted, the entry of the experts' running row sums (after the tile sums and their total).
const ROW_SUMS: usize = PP_MAX_EXPERTS + 1;

impl WarpgroupProjection<'_> {
    /// The persistent kernel's body.
    pub(super) fn persistent_body(&self, b: &mut String) {
        let acc = acc_type();
        self.constants(b);
        let _ = writeln!(b, "      %acc0 = llvm.mlir.zero : {acc}");
        self.make_barriers(b);
        self.tile_list(b);
        let _ = writeln!(
            b,
            "        %bid = gpu.block_id x\n        %G = gpu.grid_dim x\n        %isprod = arith.cmpi uge, %tid, %c256 : index\n        scf.if %isprod {{"
        );
        self.producer_head(b);
        let _ = writeln!(b, "        scf.for %s = %bid to %total step %G {{");
        self.tile(b);
        let _ = writeln!(b, "          %pg0 = arith.muli %it, %cNK : index");
        self.produce_pass(b, "%r0", "%pg0");
        let _ = writeln!(
            b,
            "        }}\n        nvvm.cp.async.wait.group 0\n        }} else {{"
        );
        // Ping-pong, warpgroup w takes the block's tiles w, w + 2, ... (t = its index + w G,
        // step 2 G); else both take every tile.
        if self.shape.pingpong {
            let _ = writeln!(
                b,
                "        %wgG = arith.muli %wg, %G : index\n        %tfirst = arith.addi %bid, %wgG : index\n        %G2 = arith.muli %G, %c2 : index\n        scf.for %s = %tfirst to %total step %G2 {{"
            );
        } else {
            let _ = writeln!(b, "        scf.for %s = %bid to %total step %G {{");
        }
        self.tile(b);
        if self.shape.pingpong {
            self.wait_turn(b);
        }
        let _ = writeln!(
            b,
            "          %g0 = arith.muli %it, %cNK : index\n          %wgr0 = arith.addi %r0, %wgr : index\n          %active = arith.cmpi ult, %wgr0, %cnt : index\n          %accs = scf.for %kc = %c0 to %cNK step %c1 iter_args(%a = %acc0) -> ({acc}) {{\n            %gi = arith.addi %g0, %kc : index"
        );
        self.consume_chunk(b);
        if self.shape.pingpong {
            self.pass_turn(b);
        }
        self.pass_tail(b);
        let _ = writeln!(b, "        }}");
    }

    /// `%pre`, the running sums of the experts' tiles (see the module's doc), `%cE` (the
    /// experts) and `%total` (their tiles): every thread counts some, thread 0 sums them.
    fn tile_list(&self, b: &mut String) {
        // The running sums start after the stages, the barriers and the staging.
        debug_assert!(
            self.shape.persistent_shared_bytes() <= self.shape.persistent_shared_allowed()
        );
        // The rows' running sums after the tiles' (the cooperative geometry keeps room).
        debug_assert!(!self.sorted || self.shape.row_sums_bytes() > 0);
        let _ = writeln!(
            b,
            "        %cTH = arith.constant {} : index\n        %cCT = arith.constant {} : index\n        %cE = memref.dim %counts, %c0 : memref<?xi32>\n        %z32 = arith.constant 0 : i32\n        %cPRE = arith.constant {PREFIX_OFFSET} : index\n        %pre = arith.addi %bars, %cPRE : index\n        scf.for %x = %tid to %cE step %cTH {{\n          %xc32 = memref.load %counts[%x] : memref<?xi32>\n          %xc = arith.index_cast %xc32 : i32 to index\n          %xc1 = arith.addi %xc, %cPm1 : index\n          %xp = arith.divui %xc1, %cP : index\n          %xt = arith.muli %xp, %cCT : index\n          %xt32 = arith.index_cast %xt : index to i32\n          %x1 = arith.addi %x, %c1 : index",
            self.threads(),
            self.out_columns().div_ceil(self.block_columns())
        );
        let at = entry(b, "xs", "%x1");
        let _ = writeln!(b, "          llvm.store %xt32, {at} : i32, !llvm.ptr<3>");
        // Sorted, the rows' counts too (their running sums after the tiles').
        if self.sorted {
            let _ = writeln!(
                b,
                "          %cRPRE = arith.constant {ROW_SUMS} : index\n          %xr = arith.addi %x1, %cRPRE : index"
            );
            let at = entry(b, "xr", "%xr");
            let _ = writeln!(b, "          llvm.store %xc32, {at} : i32, !llvm.ptr<3>");
        }
        let _ = writeln!(b, "        }}\n        gpu.barrier\n        scf.if %t0 {{");
        let sums: &[(&str, usize)] = if self.sorted {
            &[("", 0), ("r", ROW_SUMS)]
        } else {
            &[("", 0)]
        };
        for &(v, offset) in sums {
            let _ = writeln!(b, "          %{v}so = arith.constant {offset} : index");
            let first = entry(b, &format!("{v}s0"), &format!("%{v}so"));
            let _ = writeln!(
                b,
                "          llvm.store %z32, {first} : i32, !llvm.ptr<3>\n          %{v}run = scf.for %y = %c0 to %cE step %c1 iter_args(%r = %z32) -> (i32) {{\n            %y1 = arith.addi %y, %c1 : index\n            %y1o = arith.addi %y1, %{v}so : index"
            );
            let at = entry(b, "ys", "%y1o");
            let _ = writeln!(
                b,
                "            %yv = llvm.load {at} : !llvm.ptr<3> -> i32\n            %r2 = arith.addi %r, %yv : i32\n            llvm.store %r2, {at} : i32, !llvm.ptr<3>\n            scf.yield %r2 : i32\n          }}"
            );
        }
        let _ = writeln!(b, "        }}\n        gpu.barrier");
        let all = entry(b, "tt", "%cE");
        let _ = writeln!(
            b,
            "        %total32 = llvm.load {all} : !llvm.ptr<3> -> i32\n        %total = arith.index_cast %total32 : i32 to index"
        );
    }

    /// Tile `%t`'s expert `%e` (the first whose running sum past it exceeds t: a binary
    /// search, the sums in shared memory) and what the per-tile form's pieces read of it:
    /// `%cnt`, `%lbase`, `%firsts`, `%eN`, its column tile's `%nb0` and its pass's first row
    /// `%r0`; and `%it`, which of the block's tiles it is.
    fn tile(&self, b: &mut String) {
        self.tile_order(b);
        let steps = (PP_MAX_EXPERTS as f64).log2().ceil() as usize + 1;
        let _ = writeln!(
            b,
            "          %cBS = arith.constant {steps} : index\n          %cE1 = arith.subi %cE, %c1 : index\n          %e, %ehi = scf.for %i = %c0 to %cBS step %c1 iter_args(%lo = %c0, %hi = %cE1) -> (index, index) {{\n            %mid0 = arith.addi %lo, %hi : index\n            %mid = arith.divui %mid0, %c2 : index\n            %mid1 = arith.addi %mid, %c1 : index"
        );
        let at = entry(b, "is", "%mid1");
        let _ = writeln!(
            b,
            "            %iv32 = llvm.load {at} : !llvm.ptr<3> -> i32\n            %iv = arith.index_cast %iv32 : i32 to index\n            %beyond = arith.cmpi ugt, %iv, %t : index\n            %lo2 = arith.select %beyond, %lo, %mid1 : index\n            %hi2 = arith.select %beyond, %mid, %hi : index\n            scf.yield %lo2, %hi2 : index, index\n          }}"
        );
        let base = entry(b, "eb", "%e");
        let _ = writeln!(
            b,
            "          %base32 = llvm.load {base} : !llvm.ptr<3> -> i32\n          %base = arith.index_cast %base32 : i32 to index\n          %cnt32 = memref.load %counts[%e] : memref<?xi32>\n          %cnt = arith.index_cast %cnt32 : i32 to index\n          %lbase = arith.muli %e, %cS : index\n          %first32 = memref.load %lists[%lbase] : memref<?xi32>\n          %firsts = arith.index_cast %first32 : i32 to index\n          %eN = arith.muli %e, %cN : index\n          %local = arith.subi %t, %base : index\n          %tcup = arith.addi %cnt, %cPm1 : index\n          %tpasses = arith.divui %tcup, %cP : index\n          %ct = arith.divui %local, %tpasses : index\n          %pq = arith.remui %local, %tpasses : index\n          %r0 = arith.muli %pq, %cP : index\n          %nb0 = arith.muli %ct, %cB : index"
        );
        // Sorted, `%rbase`: the expert's first row in the sorted source (and output).
        if self.sorted {
            let _ = writeln!(
                b,
                "          %cRB0 = arith.constant {ROW_SUMS} : index\n          %rbe = arith.addi %e, %cRB0 : index"
            );
            let at = entry(b, "rb", "%rbe");
            let _ = writeln!(
                b,
                "          %rbase32 = llvm.load {at} : !llvm.ptr<3> -> i32\n          %rbase = arith.index_cast %rbase32 : i32 to index"
            );
        }
    }
}

impl WarpgroupProjection<'_> {
    /// `%it`, which of the block's tiles (and rounds of the grid) the loop's `%s` (the block's
    /// index, + the grid, ...) is, and `%t`, the tile it takes: `%s` itself,
    /// or mirrored (`geometry::mirrored_tile_order`; `geometry::tile_taken` the same formula)
    /// in the odd rounds of the grid that every block fills. The stages' phases count the block's
    /// tiles by `%it`.
    fn tile_order(&self, b: &mut String) {
        let _ = writeln!(
            b,
            "          %sb = arith.subi %s, %bid : index\n          %it = arith.divui %sb, %G : index"
        );
        if !super::geometry::mirrored_tile_order() {
            let _ = writeln!(b, "          %t = arith.addi %s, %c0 : index");
            return;
        }
        let _ = writeln!(
            b,
            "          %rodd = arith.andi %it, %c1 : index\n          %odd = arith.cmpi ne, %rodd, %c0 : index\n          %round1 = arith.addi %it, %c1 : index\n          %rend = arith.muli %round1, %G : index\n          %full = arith.cmpi ule, %rend, %total : index\n          %mirror = arith.andi %odd, %full : i1\n          %rstart = arith.muli %it, %G : index\n          %Gm1 = arith.subi %G, %c1 : index\n          %mpos = arith.subi %Gm1, %bid : index\n          %mt = arith.addi %rstart, %mpos : index\n          %t = arith.select %mirror, %mt, %s : index"
        );
    }
}

/// `%{v}_p`: the shared-memory pointer of running sum `index` (an index value) at `%pre`.
fn entry(b: &mut String, v: &str, index: &str) -> String {
    let _ = writeln!(
        b,
        "          %{v}_o = arith.muli {index}, %c4 : index\n          %{v}_a = arith.addi %pre, %{v}_o : index\n          %{v}_i = arith.index_cast %{v}_a : index to i64\n          %{v}_p = llvm.inttoptr %{v}_i : i64 to !llvm.ptr<3>"
    );
    format!("%{v}_p")
}
