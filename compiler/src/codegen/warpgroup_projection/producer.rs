//! The warp-specialised form of the warpgroup projection (`producer` set; kernels `sproj_*`,
//! the two warpgroups and the producer's warps, `PRODUCER_WARPS` by default): the producer feeds
//! the stages and the two warpgroups only multiply,
//! so no block-wide barrier stands between chunks and each warpgroup keeps one chunk's
//! wgmmas running while it starts the next's.
//!
//! The weights come by the tensor memory accelerator: the runtime encodes a tensor map of the
//! stack (`[experts x dout, din]` bf16, boxes of 64 inner elements by 256 weight rows, or 128
//! fused, the 128-byte swizzle, the layout the descriptors read) and passes its address
//! (`%tmap`); lane 0 of the producer issues a chunk's one box (fused: the 128 gate rows' and
//! their 128 up rows') with `cp.async.bulk.tensor`, counted in bytes on the stage's `full`
//! mbarrier. Rows past the expert's (or the stack's) come as the next expert's rows or zeros,
//! multiplied and never stored. The listed rows are a gather (one slot's row each), which a
//! tensor map cannot express: each of the producer's `32 w` lanes (w warps,
//! `geometry::producer_warps`) copies word `lane % 8` of rows `lane / 8 + 4 w i` (i < 32 / w)
//! with `cp.async`, their addresses looked up once per pass, and arrives on `full` as they
//! land (`cp.async.mbarrier.arrive.noinc`).
//!
//! Barriers (8 bytes each, after the stages): `full[s]` (`32 w + 1` arrivals: the lanes', and
//! lane 0's with the weights' 32 KiB expected), `empty[s]` (256 arrivals, every consumer thread's),
//! and a spare one. Chunk g (of the block's chunks over all passes) uses stage g % STAGES in
//! its phase g / STAGES. The consumers wait for `full`'s phase, start the chunk's wgmmas, wait
//! for the previous chunk's (all but one group done) and release its stage through `empty`
//! (chunk 0 arrives on the spare barrier: no stage to release); the producer waits for
//! `empty`'s phase g / STAGES - 1 before it fills the stage again. A warpgroup with no rows in
//! a pass waits and releases like the other, and skips the multiplication.

use super::{copy, WarpgroupProjection, TILE_N};
use std::fmt::Write as _;

/// Bytes of the weights that land in a stage per chunk (256 rows of 64 inner elements).
const WEIGHT_BYTES: usize = TILE_N * 128;

impl WarpgroupProjection<'_> {
    /// After the prologue: the barriers made, then the producer's loop or the consumers'.
    pub(super) fn specialised(&self, b: &mut String) {
        self.make_barriers(b);
        let _ = writeln!(
            b,
            "        gpu.barrier\n        %isprod = arith.cmpi uge, %tid, %c256 : index\n        scf.if %isprod {{"
        );
        self.producer_head(b);
        let _ = writeln!(
            b,
            "        scf.for %pp = %c0 to %passes step %c1 {{\n          %pr0 = arith.muli %pp, %cP : index\n          %pg0 = arith.muli %pp, %cNK : index"
        );
        self.produce_pass(b, "%pr0", "%pg0");
        let _ = writeln!(
            b,
            "        }}\n        nvvm.cp.async.wait.group 0\n        }} else {{"
        );
        self.pass_head(b);
        self.consume_chunk(b);
        self.pass_tail(b);
        let _ = writeln!(b, "        }}");
    }

    /// `%bars` (the barriers' start, after the stages) and `%c256`; thread 0 makes the
    /// barriers; no thread waits for it here.
    pub(super) fn make_barriers(&self, b: &mut String) {
        let _ = writeln!(
            b,
            "        %cBAR = arith.constant {} : index\n        %bars = arith.addi %smx, %cBAR : index\n        %c256 = arith.constant 256 : index\n        %t0 = arith.cmpi eq, %tid, %c0 : index\n        scf.if %t0 {{",
            self.shape.stages * self.shape.stage_bytes()
        );
        let mut inits = Vec::new();
        let releasers = self.shape.releasers();
        // Sorted, lane 0's expectation alone: the rows come by tensor copies too.
        let full = if self.sorted {
            1
        } else {
            self.producer_lanes() + 1
        };
        for s in 0..self.shape.stages {
            inits.push((format!("full{s}"), "full", s, full));
            inits.push((format!("empty{s}"), "empty", s, releasers));
        }
        inits.push(("spare".into(), "spare", 0, releasers));
        // Ping-pong, each warpgroup's turn (see `wait_turn`): the other's 128 threads arrive.
        if self.shape.pingpong {
            for w in 0..2 {
                inits.push((format!("turn{w}"), "turn", w, 128));
            }
        }
        debug_assert_eq!(inits.len(), self.shape.barriers());
        for (v, kind, s, count) in inits {
            let _ = writeln!(b, "          %ci{v} = arith.constant {s} : index");
            let at = self.barrier(b, &format!("i{v}"), kind, &format!("%ci{v}"));
            let _ = writeln!(
                b,
                "          %n{v} = arith.constant {count} : i32\n          llvm.inline_asm has_side_effects asm_dialect = att \"mbarrier.init.shared::cta.b64 [$0], $1;\", \"r,r\" {at}, %n{v} : (i32, i32) -> ()"
            );
        }
        let _ = writeln!(
            b,
            "          llvm.inline_asm has_side_effects asm_dialect = att \"fence.mbarrier_init.release.cluster;\", \"\" : () -> ()\n        }}"
        );
    }

    /// The producer warp's values: `%plane` (its lane), `%prow`, `%lead` (lane 0), `%tm` (the
    /// weights' tensor map; sorted, `%sm` the rows') and `%cWB` (the bytes lane 0 expects per
    /// chunk).
    pub(super) fn producer_head(&self, b: &mut String) {
        let weights = if self.ablate.weights { 0 } else { WEIGHT_BYTES };
        let rows = if self.sorted && !self.ablate.rows {
            self.shape.rows_bytes()
        } else {
            0
        };
        let _ = writeln!(
            b,
            "        %plane = arith.subi %tid, %c256 : index\n        %prow = arith.divui %plane, %c8 : index\n        %lead = arith.cmpi eq, %plane, %c0 : index\n        %tmx = memref.extract_aligned_pointer_as_index %tmap : memref<?xi64> -> index\n        %tm = arith.index_cast %tmx : index to i64\n        %cWB = arith.constant {} : i32",
            weights + rows
        );
        if self.sorted {
            let _ = writeln!(
                b,
                "        %smapx = memref.extract_aligned_pointer_as_index %smap : memref<?xi64> -> index\n        %sm = arith.index_cast %smapx : index to i64"
            );
        }
    }

    /// The producer warp's work for one pass (its first row `r0`, its first chunk `g0` of the
    /// block's, index values; the expert's `%cnt`, `%lbase`, `%firsts`, `%eN` and `%nb0`
    /// defined):
    /// its rows' addresses; per chunk, wait for the stage to be free, then the weights' box
    /// (lane 0) and the rows' words.
    pub(super) fn produce_pass(&self, b: &mut String, r0: &str, g0: &str) {
        // Ablated (`PPMOE_ABLATE`), no rows or no weights are copied; the arrivals stay.
        // The listed rows each lane copies a word of, per chunk (sorted, none: lane 0's box).
        let rows = if self.ablate.rows || self.sorted {
            0
        } else {
            self.shape.pass_rows * 8 / self.producer_lanes()
        };
        for i in 0..rows {
            self.produced_row(b, &format!("pa{i}"), i);
            Self::row_word(
                b,
                &format!("pa{i}"),
                r0,
                &format!("%pa{i}_row"),
                "          ",
            );
        }
        let _ = writeln!(
            b,
            "          scf.for %pk = %c0 to %cNK step %c1 {{\n            %pg = arith.addi {g0}, %pk : index\n            %ps = arith.remui %pg, %cST : index\n            %pph = arith.divui %pg, %cST : index\n            %reuse = arith.cmpi uge, %pg, %cST : index\n            scf.if %reuse {{\n              %pph1 = arith.subi %pph, %c1 : index"
        );
        self.wait(b, "pe", "empty", "%ps", "%pph1", "              ");
        let _ = writeln!(
            b,
            "            }}\n            %pgk = arith.muli %pk, %c128 : index\n            %pss = arith.muli %ps, %cSB : index\n            %psa = arith.addi %smx, %pss : index\n            %psb = arith.addi %psa, %cRO : index"
        );
        let full = self.barrier(b, "pf", "full", "%ps");
        let _ = writeln!(
            b,
            "            scf.if %lead {{\n              llvm.inline_asm has_side_effects asm_dialect = att \"{{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [$0], $1; }}\", \"r,r\" {full}, %cWB : (i32, i32) -> ()\n              %tk = arith.muli %pk, %c64 : index\n              %tk32 = arith.index_cast %tk : index to i32"
        );
        if !self.ablate.weights {
            self.weight_boxes(b, &full);
        }
        if self.sorted && !self.ablate.rows {
            self.row_box(b, &full, r0);
        }
        let _ = writeln!(b, "            }}");
        // Trimmed, a lane copies only the rows the pass holds: a row past the expert's count
        // keeps what its stage held (it is multiplied into its own output row alone, which
        // is never stored).
        let trim = self.trim;
        for i in 0..rows {
            let v = format!("pa{i}");
            let (src, at) = (format!("%{v}_aq"), format!("%{v}_at"));
            let ind = if trim {
                let _ = writeln!(b, "            scf.if %{v}_ain {{");
                "              "
            } else {
                "            "
            };
            copy(b, &format!("{v}c"), &src, "%pgk", "%psa", &at, ind);
            if trim {
                let _ = writeln!(b, "            }}");
            }
        }
        if !self.sorted {
            let _ = writeln!(
                b,
                "            llvm.inline_asm has_side_effects asm_dialect = att \"cp.async.mbarrier.arrive.noinc.shared::cta.b64 [$0];\", \"r\" {full} : (i32) -> ()"
            );
        }
        let _ = writeln!(b, "          }}");
    }

    /// Sorted, lane 0's tensor copy of chunk `%tk32`'s rows into the stage at `%psa`: the tile's
    /// rows from `r0` of its expert's, which start at `%rbase` of the source (rows past the
    /// expert's are the next one's, or zeros past the source: multiplied, never stored).
    fn row_box(&self, b: &mut String, full: &str, r0: &str) {
        let _ = writeln!(
            b,
            "              %srow = arith.addi %rbase, {r0} : index\n              %srow32 = arith.index_cast %srow : index to i32\n              %sdst32 = arith.index_cast %psa : index to i32"
        );
        tensor_copy(b, "%sdst32", "%sm", "%srow32", full);
    }

    /// Lane 0's tensor copies of chunk `%tk32`'s weights into the stage at `%psb`, completing
    /// bytes on the barrier at `full`: the block's 256 weight rows of the expert, or fused its
    /// 128 gate rows (at the stage's start) and their up rows (`dout / 2` further in the
    /// stack, 128 rows into the stage).
    fn weight_boxes(&self, b: &mut String, full: &str) {
        let boxes: Vec<(usize, usize)> = match self.act {
            None => vec![(0, 0)],
            Some(_) => vec![(0, 0), (self.dout / 2, TILE_N / 2 * 128)],
        };
        let _ = writeln!(b, "              %trow = arith.addi %eN, %nb0 : index");
        for (i, (rows, bytes)) in boxes.into_iter().enumerate() {
            let _ = writeln!(
                b,
                "              %tr{i}o = arith.constant {rows} : index\n              %tr{i} = arith.addi %trow, %tr{i}o : index\n              %tr{i}32 = arith.index_cast %tr{i} : index to i32\n              %td{i}o = arith.constant {bytes} : index\n              %td{i} = arith.addi %psb, %td{i}o : index\n              %td{i}32 = arith.index_cast %td{i} : index to i32"
            );
            tensor_copy(b, &format!("%td{i}32"), "%tm", &format!("%tr{i}32"), full);
        }
    }

    /// The producer's lanes, each copying a share of the gathered rows' words.
    fn producer_lanes(&self) -> usize {
        32 * self.producer_warps
    }

    /// `%{v}_row` (row `lane / 8 + lanes / 8 i` of the pass's listed rows) and `%{v}_at` (its
    /// word's swizzled byte offset in a stage).
    fn produced_row(&self, b: &mut String, v: &str, i: usize) {
        let _ = writeln!(
            b,
            "          %{v}_i4 = arith.constant {} : index\n          %{v}_row = arith.addi %prow, %{v}_i4 : index\n          %{v}_rm = arith.remui %{v}_row, %c8 : index\n          %{v}_pos = arith.xori %cj, %{v}_rm : index\n          %{v}_posb = arith.muli %{v}_pos, %c16 : index\n          %{v}_rb = arith.muli %{v}_row, %c128 : index\n          %{v}_at = arith.addi %{v}_rb, %{v}_posb : index",
            self.producer_lanes() / 8 * i
        );
    }

    /// The two warpgroups' work for chunk `%gi` of the block's (in the chunk loop, whose
    /// accumulators are `%a`): wait for its stage, start its wgmmas, wait for the previous
    /// chunk's and release that one's stage (no branch around the waits: ptxas keeps the
    /// wgmmas unserialised); the chunk loop closed. The two warpgroups do not wait for each
    /// other.
    pub(super) fn consume_chunk(&self, b: &mut String) {
        let acc = super::acc_type();
        let _ = writeln!(
            b,
            "            %cs = arith.remui %gi, %cST : index\n            %cph = arith.divui %gi, %cST : index"
        );
        self.wait(b, "cf", "full", "%cs", "%cph", "            ");
        let _ = writeln!(
            b,
            "            nvvm.fence.proxy {{kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}}"
        );
        self.multiply(b);
        let _ = writeln!(
            b,
            "            nvvm.wgmma.wait.group.sync.aligned 1\n            %cST1 = arith.subi %cST, %c1 : index\n            %cprev0 = arith.addi %gi, %cST1 : index\n            %cprev = arith.remui %cprev0, %cST : index\n            %cfirst = arith.cmpi eq, {}, %c0 : index",
            // Ping-pong, the chunk before a tile's first is the other warpgroup's.
            if self.shape.pingpong { "%kc" } else { "%gi" }
        );
        let empty = self.barrier(b, "ce", "empty", "%cprev");
        let spare = self.barrier(b, "cx", "spare", "%c0");
        let _ = writeln!(
            b,
            "            %crel = arith.select %cfirst, {spare}, {empty} : i32"
        );
        arrive(b, "%crel", "            ");
        let _ = writeln!(b, "            scf.yield %next : {acc}\n          }}");
    }
}

impl WarpgroupProjection<'_> {
    /// Ping-pong, after a tile's last wgmmas: release its last chunk's stage (the tile's
    /// first chunk `%g0`).
    pub(super) fn release_last_chunk(&self, b: &mut String) {
        let _ = writeln!(
            b,
            "          %clast0 = arith.addi %g0, %cNK : index\n          %clast1 = arith.subi %clast0, %c1 : index\n          %clast = arith.remui %clast1, %cST : index"
        );
        let at = self.barrier(b, "cl", "empty", "%clast");
        arrive(b, &at, "          ");
    }

    /// Ping-pong, before tile `%it` of the block's (a warpgroup's chunk loop): wait for the
    /// warpgroup's turn, the other's chunk loop of tile `%it - 1` done (its `turn` arrival;
    /// the block's first tile passes at once: parity 1 of a fresh barrier). The chunk loops
    /// thus run one after the other, as in CUTLASS's ping-pong kernels (its ordered math
    /// barrier), and every chunk of the tiles before a warpgroup's has been waited for when it
    /// waits for its own: a stage's `full` barrier is then at most one phase behind the
    /// chunk's, the only distance a parity wait tells apart. Without the turns a warpgroup
    /// skips the other's chunks, and a stage two phases behind reads as ready.
    pub(super) fn wait_turn(&self, b: &mut String) {
        let _ = writeln!(
            b,
            "          %ctw3 = arith.constant 3 : index\n          %itp = arith.addi %it, %ctw3 : index\n          %tph = arith.divui %itp, %c2 : index"
        );
        self.wait(b, "tw", "turn", "%wg", "%tph", "          ");
    }

    /// Ping-pong, after a warpgroup's chunk loop (its wgmmas issued, every stage it reads
    /// waited for): the other warpgroup's turn.
    pub(super) fn pass_turn(&self, b: &mut String) {
        let _ = writeln!(b, "          %owg = arith.subi %c1, %wg : index");
        let at = self.barrier(b, "to", "turn", "%owg");
        arrive(b, &at, "          ");
    }

    /// The i32 shared address (`%{v}_ba`) of stage `stage`'s (an index value) `kind` barrier
    /// (`full`, `empty`, the `spare` one, then ping-pong's two `turn` ones, 8 bytes each in
    /// that order after the stages at `%bars`).
    fn barrier(&self, b: &mut String, v: &str, kind: &str, stage: &str) -> String {
        let stages = self.shape.stages;
        let base = match kind {
            "full" => 0,
            "empty" => 8 * stages,
            "spare" => 16 * stages,
            _ => 16 * stages + 8,
        };
        let _ = writeln!(
            b,
            "          %{v}_c8 = arith.constant 8 : index\n          %{v}_k = arith.constant {base} : index\n          %{v}_o = arith.muli {stage}, %{v}_c8 : index\n          %{v}_o2 = arith.addi %{v}_o, %{v}_k : index\n          %{v}_x = arith.addi %bars, %{v}_o2 : index\n          %{v}_ba = arith.index_cast %{v}_x : index to i32"
        );
        format!("%{v}_ba")
    }

    /// Wait until stage `stage`'s `kind` barrier (see `barrier`) has completed its phase
    /// `phase` (index values).
    fn wait(&self, b: &mut String, v: &str, kind: &str, stage: &str, phase: &str, ind: &str) {
        let at = self.barrier(b, v, kind, stage);
        let _ = writeln!(
            b,
            "{ind}%{v}_pc1 = arith.constant 1 : index\n{ind}%{v}_par = arith.andi {phase}, %{v}_pc1 : index\n{ind}%{v}_p32 = arith.index_cast %{v}_par : index to i32\n{ind}llvm.inline_asm has_side_effects asm_dialect = att \"{{ .reg .pred p; LAB_WAIT: mbarrier.try_wait.parity.shared::cta.b64 p, [$0], $1; @!p bra LAB_WAIT; }}\", \"r,r\" {at}, %{v}_p32 : (i32, i32) -> ()"
        );
    }
}

/// Lane 0's tensor copy of one box (chunk `%tk32`'s 64 inner elements of the rows from `row`,
/// an i32 value) through the map at `map` (i64) into shared memory at `dst` (i32), completing
/// its bytes on the barrier at `full`.
fn tensor_copy(b: &mut String, dst: &str, map: &str, row: &str, full: &str) {
    let _ = writeln!(
        b,
        "              llvm.inline_asm has_side_effects asm_dialect = att \"cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [$0], [$1, {{$2, $3}}], [$4];\", \"r,l,r,r,r\" {dst}, {map}, %tk32, {row}, {full} : (i32, i64, i32, i32, i32) -> ()"
    );
}

/// Arrive on the barrier at `at`.
fn arrive(b: &mut String, at: &str, ind: &str) {
    let _ = writeln!(
        b,
        "{ind}llvm.inline_asm has_side_effects asm_dialect = att \"{{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [$0]; }}\", \"r\" {at} : (i32) -> ()"
    );
}
