//! The warp-specialised form of the warpgroup projection (`producer` set; kernels `sproj_*`,
//! `SP_THREADS` threads): a ninth warp issues every copy and the two warpgroups only multiply,
//! so no block-wide barrier stands between chunks. Each stage has two mbarriers in shared
//! memory after the stages: `full` (32 arrivals: each producer lane's
//! `cp.async.mbarrier.arrive.noinc`, which lands when that lane's copies of the chunk have) and
//! `empty` (256 arrivals: every consumer thread, once its warpgroup's wgmmas that read the
//! stage are done: each chunk's are waited for before the next). Chunk g uses stage g % STAGES in its phase g / STAGES: the consumers wait
//! for `full`'s phase g / STAGES, the producer for `empty`'s phase g / STAGES - 1 before it
//! fills the stage again. A warpgroup with no rows in a pass waits for each chunk too (so its
//! arrivals stay in their phase) and skips the multiplication.
//!
//! The producer lane l copies word l % 8 of the rows l / 8 + 4 i of both operands (32 listed
//! rows, 64 weight rows per chunk), into the swizzled positions the consumers' descriptors
//! read; the listed rows' slots are looked up per chunk.

use super::{copy, WarpgroupProjection, STAGES};
use std::fmt::Write as _;

impl WarpgroupProjection<'_> {
    /// After the prologue: the barriers made, then the producer's loop or the consumers'.
    pub(super) fn specialised(&self, b: &mut String) {
        let _ = writeln!(
            b,
            "        %cBAR = arith.constant {} : index\n        %bars = arith.addi %smx, %cBAR : index\n        %t0 = arith.cmpi eq, %tid, %c0 : index\n        scf.if %t0 {{",
            STAGES * super::STAGE_BYTES
        );
        for s in 0..STAGES {
            let _ = writeln!(b, "          %ci{s} = arith.constant {s} : index");
            for (kind, count) in [("full", 32), ("empty", 256)] {
                let at = barrier(b, &format!("i{kind}{s}"), kind, &format!("%ci{s}"));
                let _ = writeln!(
                    b,
                    "          %n{kind}{s} = arith.constant {count} : i32\n          llvm.inline_asm has_side_effects asm_dialect = att \"mbarrier.init.shared::cta.b64 [$0], $1;\", \"r,r\" {at}, %n{kind}{s} : (i32, i32) -> ()"
                );
            }
        }
        let _ = writeln!(
            b,
            "        }}\n        gpu.barrier\n        %c256 = arith.constant 256 : index\n        %isprod = arith.cmpi uge, %tid, %c256 : index\n        scf.if %isprod {{"
        );
        self.produce(b);
        let _ = writeln!(b, "        }} else {{");
        self.consume(b);
        let _ = writeln!(b, "        }}");
    }

    /// The producer warp: for every chunk of every pass, wait for its stage to be free, copy
    /// both operands' words, and arrive on the stage's `full` barrier as the copies land.
    fn produce(&self, b: &mut String) {
        let _ = writeln!(
            b,
            "        %plane = arith.subi %tid, %c256 : index\n        %prow = arith.divui %plane, %c8 : index\n        scf.for %pg = %c0 to %total step %c1 {{\n          %ps = arith.remui %pg, %cST : index\n          %pph = arith.divui %pg, %cST : index\n          %reuse = arith.cmpi uge, %pg, %cST : index\n          scf.if %reuse {{\n            %pph1 = arith.subi %pph, %c1 : index"
        );
        wait(b, "pe", "empty", "%ps", "%pph1", "            ");
        let _ = writeln!(
            b,
            "          }}\n          %pp = arith.divui %pg, %cNK : index\n          %pk = arith.remui %pg, %cNK : index\n          %pr0 = arith.muli %pp, %cP : index\n          %pgk = arith.muli %pk, %c128 : index\n          %pss = arith.muli %ps, %cSB : index\n          %psa = arith.addi %smx, %pss : index\n          %psb = arith.addi %psa, %cRO : index\n          %cRC = arith.constant 32 : index\n          scf.for %pi = %c0 to %cRC step %c1 {{"
        );
        self.produced_row(b, "pa", "%pi");
        Self::row_word(b, "pa", "%pr0", "%pa_row", "            ");
        copy(b, "pa", "%pa_aq", "%pgk", "%psa", "%pa_at", "            ");
        let _ = writeln!(
            b,
            "          }}\n          %cWC = arith.constant 64 : index\n          scf.for %pw = %c0 to %cWC step %c1 {{"
        );
        self.produced_row(b, "pb", "%pw");
        self.weight_word(b, "pb", "%pb_row", "            ");
        let _ = writeln!(b, "            %pb_wq = arith.addi %wtx, %pb_bwc : index");
        copy(b, "pb", "%pb_wq", "%pgk", "%psb", "%pb_at", "            ");
        let _ = writeln!(b, "          }}");
        let full = barrier(b, "pf", "full", "%ps");
        let _ = writeln!(
            b,
            "          llvm.inline_asm has_side_effects asm_dialect = att \"cp.async.mbarrier.arrive.noinc.shared::cta.b64 [$0];\", \"r\" {full} : (i32) -> ()\n        }}\n        nvvm.cp.async.wait.group 0"
        );
    }

    /// `%{v}_row` (row 4 `i` + this lane's of an operand's chunk) and `%{v}_at` (its word's
    /// swizzled byte offset in the stage).
    fn produced_row(&self, b: &mut String, v: &str, i: &str) {
        let _ = writeln!(
            b,
            "            %{v}_i4 = arith.muli {i}, %c4 : index\n            %{v}_row = arith.addi %prow, %{v}_i4 : index\n            %{v}_rm = arith.remui %{v}_row, %c8 : index\n            %{v}_pos = arith.xori %cj, %{v}_rm : index\n            %{v}_posb = arith.muli %{v}_pos, %c16 : index\n            %{v}_rb = arith.muli %{v}_row, %c128 : index\n            %{v}_at = arith.addi %{v}_rb, %{v}_posb : index"
        );
    }

    /// The two warpgroups: for each chunk, wait for its copies, multiply, wait for the
    /// wgmmas and release the chunk's stage (no branch in the loop: ptxas keeps the wgmmas
    /// unserialised). The two warpgroups do not wait for each other: one's wgmmas run while
    /// the other waits.
    fn consume(&self, b: &mut String) {
        let acc = super::acc_type();
        self.pass_head(b);
        let _ = writeln!(
            b,
            "            %cs = arith.remui %gi, %cST : index\n            %cph = arith.divui %gi, %cST : index"
        );
        wait(b, "cf", "full", "%cs", "%cph", "            ");
        let _ = writeln!(
            b,
            "            nvvm.fence.proxy {{kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}}"
        );
        self.multiply(b, "");
        let _ = writeln!(b, "            nvvm.wgmma.wait.group.sync.aligned 0");
        let empty = barrier(b, "ce", "empty", "%cs");
        arrive(b, &empty, "            ");
        let _ = writeln!(b, "            scf.yield %next : {acc}\n          }}");
        self.pass_tail(b, "");
    }
}

/// The i32 shared address (`%{v}_ba`) of stage `stage`'s (an index value) `kind` barrier
/// (`full` or `empty`, 8 bytes each, the `full` ones first, after the stages at `%bars`).
fn barrier(b: &mut String, v: &str, kind: &str, stage: &str) -> String {
    let base = if kind == "full" { 0 } else { 8 * STAGES };
    let _ = writeln!(
        b,
        "          %{v}_c8 = arith.constant 8 : index\n          %{v}_k = arith.constant {base} : index\n          %{v}_o = arith.muli {stage}, %{v}_c8 : index\n          %{v}_o2 = arith.addi %{v}_o, %{v}_k : index\n          %{v}_x = arith.addi %bars, %{v}_o2 : index\n          %{v}_ba = arith.index_cast %{v}_x : index to i32"
    );
    format!("%{v}_ba")
}

/// Wait until stage `stage`'s `kind` barrier (see `barrier`) has completed its phase `phase`
/// (index values).
fn wait(b: &mut String, v: &str, kind: &str, stage: &str, phase: &str, ind: &str) {
    let at = barrier(b, v, kind, stage);
    let _ = writeln!(
        b,
        "{ind}%{v}_pc1 = arith.constant 1 : index\n{ind}%{v}_par = arith.andi {phase}, %{v}_pc1 : index\n{ind}%{v}_p32 = arith.index_cast %{v}_par : index to i32\n{ind}llvm.inline_asm has_side_effects asm_dialect = att \"{{ .reg .pred p; LAB_WAIT: mbarrier.try_wait.parity.shared::cta.b64 p, [$0], $1; @!p bra LAB_WAIT; }}\", \"r,r\" {at}, %{v}_p32 : (i32, i32) -> ()"
    );
}

/// Arrive on the barrier at `at`.
fn arrive(b: &mut String, at: &str, ind: &str) {
    let _ = writeln!(
        b,
        "{ind}llvm.inline_asm has_side_effects asm_dialect = att \"{{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [$0]; }}\", \"r\" {at} : (i32) -> ()"
    );
}
