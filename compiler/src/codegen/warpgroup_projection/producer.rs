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
use crate::codegen::template::{specialise, specialise_at};

const SPECIALISED: &str = include_str!("../templates/warpgroup/specialised.mlir");
const BARRIERS: &str = include_str!("../templates/warpgroup/barriers.mlir");
const BARRIER_INIT: &str = include_str!("../templates/warpgroup/barrier_init.mlir");
const PRODUCER_HEAD: &str = include_str!("../templates/warpgroup/producer_head.mlir");
const PRODUCE_PASS: &str = include_str!("../templates/warpgroup/produce_pass.mlir");
const ROW_BOX: &str = include_str!("../templates/warpgroup/row_box.mlir");
const WEIGHT_BOX: &str = include_str!("../templates/warpgroup/weight_box.mlir");
const PRODUCED_ROW: &str = include_str!("../templates/warpgroup/produced_row.mlir");
const CONSUME_CHUNK: &str = include_str!("../templates/warpgroup/consume_chunk.mlir");
const RELEASE_LAST_CHUNK: &str = include_str!("../templates/warpgroup/release_last_chunk.mlir");
const WAIT_TURN: &str = include_str!("../templates/warpgroup/wait_turn.mlir");
const PASS_TURN: &str = include_str!("../templates/warpgroup/pass_turn.mlir");
const BARRIER: &str = include_str!("../templates/warpgroup/barrier.mlir");
const WAIT_PARITY: &str = include_str!("../templates/warpgroup/wait_parity.mlir");
const TENSOR_COPY: &str = include_str!("../templates/warpgroup/tensor_copy.mlir");
const ARRIVE: &str = include_str!("../templates/warpgroup/arrive.mlir");

/// Bytes of the weights that land in a stage per chunk (256 rows of 64 inner elements).
const WEIGHT_BYTES: usize = TILE_N * 128;

impl WarpgroupProjection<'_> {
    /// After the prologue: the barriers made, then the producer's loop or the consumers'.
    pub(super) fn specialised(&self) -> String {
        specialise(
            SPECIALISED,
            &[
                ("barriers", &self.make_barriers()),
                ("producer_head", &self.producer_head()),
                ("produce_pass", &self.produce_pass("%pr0", "%pg0")),
                ("pass_head", &self.pass_head()),
                ("consume_chunk", &self.consume_chunk()),
                ("pass_tail", &self.pass_tail()),
            ],
        )
    }

    /// `%bars` (the barriers' start, after the stages) and `%c256`; thread 0 makes the
    /// barriers; no thread waits for it here.
    pub(super) fn make_barriers(&self) -> String {
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
        let inits: String = inits
            .into_iter()
            .map(|(v, kind, s, count)| {
                let address = self.barrier(&format!("i{v}"), kind, &format!("%ci{v}"));
                specialise(
                    BARRIER_INIT,
                    &[
                        ("v", &v),
                        ("index", &s),
                        ("address", &address),
                        ("count", &count),
                    ],
                )
            })
            .collect();
        let stages_bytes = self.shape.stages * self.shape.stage_bytes();
        specialise(
            BARRIERS,
            &[("stages_bytes", &stages_bytes), ("inits", &inits)],
        )
    }

    /// The producer warp's values: `%plane` (its lane), `%prow`, `%lead` (lane 0), `%tm` (the
    /// weights' tensor map; sorted, `%sm` the rows') and `%cWB` (the bytes lane 0 expects per
    /// chunk).
    pub(super) fn producer_head(&self) -> String {
        let weights = if self.ablate.weights { 0 } else { WEIGHT_BYTES };
        let rows = if self.sorted && !self.ablate.rows {
            self.shape.rows_bytes()
        } else {
            0
        };
        let row_map = match self.sorted {
            true => "        %smapx = memref.extract_aligned_pointer_as_index %smap : memref<?xi64> -> index\n        %sm = arith.index_cast %smapx : index to i64\n",
            false => "",
        };
        specialise(
            PRODUCER_HEAD,
            &[("expected_bytes", &(weights + rows)), ("row_map", &row_map)],
        )
    }

    /// The producer warp's work for one pass (its first row `r0`, its first chunk `g0` of the
    /// block's, index values; the expert's `%cnt`, `%lbase`, `%firsts`, `%eN` and `%nb0`
    /// defined):
    /// its rows' addresses; per chunk, wait for the stage to be free, then the weights' box
    /// (lane 0) and the rows' words.
    pub(super) fn produce_pass(&self, r0: &str, g0: &str) -> String {
        // Ablated (`PPMOE_ABLATE`), no rows or no weights are copied; the arrivals stay.
        // The listed rows each lane copies a word of, per chunk (sorted, none: lane 0's box).
        let rows = if self.ablate.rows || self.sorted {
            0
        } else {
            self.shape.pass_rows * 8 / self.producer_lanes()
        };
        let mut addresses = String::new();
        for i in 0..rows {
            let v = format!("pa{i}");
            addresses += &self.produced_row(&v, i);
            addresses += &Self::row_word(&v, r0, &format!("%{v}_row"), "          ");
        }
        let full = "%pf_ba";
        let mut boxes = String::new();
        if !self.ablate.weights {
            boxes += &self.weight_boxes(full);
        }
        if self.sorted && !self.ablate.rows {
            boxes += &row_box(full, r0);
        }
        // Trimmed, a lane copies only the rows the pass holds: a row past the expert's count
        // keeps what its stage held (it is multiplied into its own output row alone, which
        // is never stored).
        let mut row_copies = String::new();
        for i in 0..rows {
            let v = format!("pa{i}");
            let (src, at) = (format!("%{v}_aq"), format!("%{v}_at"));
            let ind = if self.trim {
                "              "
            } else {
                "            "
            };
            let word = copy(&format!("{v}c"), [&src, "%pgk"], ["%psa", &at], ind);
            row_copies += &match self.trim {
                true => format!("            scf.if %{v}_ain {{\n{word}            }}\n"),
                false => word,
            };
        }
        let rows_arrive = match self.sorted {
            true => String::new(),
            false => format!("            llvm.inline_asm has_side_effects asm_dialect = att \"cp.async.mbarrier.arrive.noinc.shared::cta.b64 [$0];\", \"r\" {full} : (i32) -> ()\n"),
        };
        specialise(
            PRODUCE_PASS,
            &[
                ("rows", &addresses),
                ("g0", &g0),
                (
                    "wait_empty",
                    &self.wait("pe", ("empty", "%ps"), "%pph1", "              "),
                ),
                ("full", &self.barrier("pf", "full", "%ps")),
                ("boxes", &boxes),
                ("row_copies", &row_copies),
                ("rows_arrive", &rows_arrive),
            ],
        )
    }

    /// Lane 0's tensor copies of chunk `%tk32`'s weights into the stage at `%psb`, completing
    /// bytes on the barrier at `full`: the block's 256 weight rows of the expert, or fused its
    /// 128 gate rows (at the stage's start) and their up rows (`dout / 2` further in the
    /// stack, 128 rows into the stage).
    fn weight_boxes(&self, full: &str) -> String {
        let boxes: Vec<(usize, usize)> = match self.act {
            None => vec![(0, 0)],
            Some(_) => vec![(0, 0), (self.dout / 2, TILE_N / 2 * 128)],
        };
        let mut b = "              %trow = arith.addi %eN, %nb0 : index\n".to_string();
        for (i, (rows, bytes)) in boxes.into_iter().enumerate() {
            let copy = tensor_copy(&format!("%td{i}32"), "%tm", &format!("%tr{i}32"), full);
            b += &specialise(
                WEIGHT_BOX,
                &[
                    ("i", &i),
                    ("rows", &rows),
                    ("bytes", &bytes),
                    ("copy", &copy),
                ],
            );
        }
        b
    }

    /// The producer's lanes, each copying a share of the gathered rows' words.
    fn producer_lanes(&self) -> usize {
        32 * self.producer_warps
    }

    /// `%{v}_row` (row `lane / 8 + lanes / 8 i` of the pass's listed rows) and `%{v}_at` (its
    /// word's swizzled byte offset in a stage).
    fn produced_row(&self, v: &str, i: usize) -> String {
        let row = self.producer_lanes() / 8 * i;
        specialise(PRODUCED_ROW, &[("v", &v), ("row", &row)])
    }

    /// The two warpgroups' work for chunk `%gi` of the block's (in the chunk loop, whose
    /// accumulators are `%a`): wait for its stage, start its wgmmas, wait for the previous
    /// chunk's and release that one's stage (no branch around the waits: ptxas keeps the
    /// wgmmas unserialised); the chunk loop closed. The two warpgroups do not wait for each
    /// other.
    pub(super) fn consume_chunk(&self) -> String {
        // Ping-pong, the chunk before a tile's first is the other warpgroup's.
        let chunk = if self.shape.pingpong { "%kc" } else { "%gi" };
        specialise(
            CONSUME_CHUNK,
            &[
                (
                    "wait_full",
                    &self.wait("cf", ("full", "%cs"), "%cph", "            "),
                ),
                ("multiply", &self.multiply()),
                ("chunk", &chunk),
                ("empty", &self.barrier("ce", "empty", "%cprev")),
                ("spare", &self.barrier("cx", "spare", "%c0")),
                ("release", &arrive("%crel", "            ")),
                ("acc", &super::acc_type()),
            ],
        )
    }
}

impl WarpgroupProjection<'_> {
    /// Ping-pong, after a tile's last wgmmas: release its last chunk's stage (the tile's
    /// first chunk `%g0`).
    pub(super) fn release_last_chunk(&self) -> String {
        specialise(
            RELEASE_LAST_CHUNK,
            &[
                ("last", &self.barrier("cl", "empty", "%clast")),
                ("release", &arrive("%cl_ba", "          ")),
            ],
        )
    }

    /// Ping-pong, before tile `%it` of the block's (a warpgroup's chunk loop): wait for the
    /// warpgroup's turn, the other's chunk loop of tile `%it - 1` done (its `turn` arrival;
    /// the block's first tile passes at once: parity 1 of a fresh barrier). The chunk loops
    /// thus run one after the other, as in CUTLASS's ping-pong kernels (its ordered math
    /// barrier), and every chunk of the tiles before a warpgroup's has been waited for when it
    /// waits for its own: a stage's `full` barrier is then at most one phase behind the
    /// chunk's, the only distance a parity wait tells apart. Without the turns a warpgroup
    /// skips the other's chunks, and a stage two phases behind reads as ready.
    pub(super) fn wait_turn(&self) -> String {
        let wait = self.wait("tw", ("turn", "%wg"), "%tph", "          ");
        specialise(WAIT_TURN, &[("wait", &wait)])
    }

    /// Ping-pong, after a warpgroup's chunk loop (its wgmmas issued, every stage it reads
    /// waited for): the other warpgroup's turn.
    pub(super) fn pass_turn(&self) -> String {
        specialise(
            PASS_TURN,
            &[
                ("other", &self.barrier("to", "turn", "%owg")),
                ("release", &arrive("%to_ba", "          ")),
            ],
        )
    }

    /// `%{v}_ba`, the i32 shared address of stage `stage`'s (an index value) `kind` barrier
    /// (`full`, `empty`, the `spare` one, then ping-pong's two `turn` ones, 8 bytes each in
    /// that order after the stages at `%bars`).
    fn barrier(&self, v: &str, kind: &str, stage: &str) -> String {
        let stages = self.shape.stages;
        let base = match kind {
            "full" => 0,
            "empty" => 8 * stages,
            "spare" => 16 * stages,
            _ => 16 * stages + 8,
        };
        specialise(BARRIER, &[("v", &v), ("base", &base), ("stage", &stage)])
    }

    /// Wait until stage `stage`'s `kind` barrier (see `barrier`) has completed its phase
    /// `phase` (index values).
    fn wait(&self, v: &str, (kind, stage): (&str, &str), phase: &str, ind: &str) -> String {
        let at = self.barrier(v, kind, stage);
        at + &specialise_at(WAIT_PARITY, ind, &[("v", &v), ("phase", &phase)])
    }
}

/// Sorted, lane 0's tensor copy of chunk `%tk32`'s rows into the stage at `%psa`: the tile's
/// rows from `r0` of its expert's, which start at `%rbase` of the source (rows past the
/// expert's are the next one's, or zeros past the source: multiplied, never stored).
fn row_box(full: &str, r0: &str) -> String {
    let copy = tensor_copy("%sdst32", "%sm", "%srow32", full);
    specialise(ROW_BOX, &[("r0", &r0), ("copy", &copy)])
}

/// Lane 0's tensor copy of one box (chunk `%tk32`'s 64 inner elements of the rows from `row`,
/// an i32 value) through the map at `map` (i64) into shared memory at `dst` (i32), completing
/// its bytes on the barrier at `full`.
fn tensor_copy(dst: &str, map: &str, row: &str, full: &str) -> String {
    specialise(
        TENSOR_COPY,
        &[("dst", &dst), ("map", &map), ("row", &row), ("full", &full)],
    )
}

/// Arrive on the barrier at `at`.
fn arrive(at: &str, ind: &str) -> String {
    specialise_at(ARRIVE, ind, &[("at", &at)])
}
