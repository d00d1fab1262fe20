//! The grouping of an experts step's slots by expert on the device, for any number of tokens:
//! `{prefix}_tgroup`, one block of `GROUP_THREADS` threads, so that the step needs nothing
//! from the host and cuBLAS's batched GEMMs read their operands from device-side pointers.
//!
//! Each local expert's rows are laid in tiles of `m` rows (a run-time argument, the batched
//! GEMMs' rows per product): expert e's tiles start at tile `tstart[e]`, the sum of the earlier
//! experts' `ceil(count / m)`. The kernel writes, for a chunk of slots `lo..hi`:
//! - `perm` (row -> token, for the gather) and `rexp` (row -> local expert, for the input
//!   bias) over all `(bound + 1) * m` rows: rows no slot fills (the ends of tiles, the spare
//!   tiles, the last tile) name token 0 and expert 0, so every row the GEMMs read is finite;
//! - `pos` (slot -> row, or -1: outside the chunk, weight 0, another rank's expert) and `eid`
//!   (slot -> local expert, 0 where none) for the combine;
//! - `ptrs`: six arrays of `bound` device pointers (rows in, expert matrix in, hidden out;
//!   activation in, expert matrix out, rows out) for the two batched GEMMs, one product per
//!   tile. The tiles past the experts' (`bound` is an upper bound the host can compute without
//!   the counts: `ceil(slots / m)` plus one partial tile per expert) all read the last tile and
//!   expert 0's matrices and write the last tile, which nothing reads.
//!
//! A slot's row within its expert's tiles depends on the order of the shared-memory atomics;
//! its result does not (each row of a product is computed alone), and the combine reads it
//! through `pos`.

use super::decode_experts::{route_of, slot_of};
use ppmoe_runtime::program::{ExpertDims, GROUP_THREADS};
use std::fmt::Write as _;

/// `{prefix}_tgroup` for `s` slots of `k` per token over the step's `dims` (local experts),
/// its rows and matrices of `bytes` bytes an element; None where the route is not a
/// `moe.route` on the device (`route_of`).
pub(super) fn kernel(
    p: &ppmoe_runtime::program::Program,
    ids: usize,
    prefix: &str,
    (dims, s, k): (ExpertDims, usize, usize),
    bytes: usize,
) -> Option<String> {
    route_of(p, ids)?;
    let e = dims.experts;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "      %tid = gpu.thread_id x\n      %c0 = arith.constant 0 : index\n      %c1 = arith.constant 1 : index\n      %cT = arith.constant {GROUP_THREADS} : index\n      %cS = arith.constant {s} : index\n      %cE = arith.constant {e} : index\n      %ck = arith.constant {k} : index\n      %z32 = arith.constant 0 : i32\n      %one32 = arith.constant 1 : i32\n      %m1 = arith.constant -1 : i32\n      %zero = arith.constant 0.0 : f32\n      %first64 = arith.index_cast %first : index to i64\n      %cE64 = arith.index_cast %cE : index to i64\n      %z64 = arith.constant 0 : i64\n      %b1 = arith.addi %bound, %c1 : index\n      %rows = arith.muli %b1, %m : index\n      %s0 = arith.addi %lo, %tid : index\n      %tid0 = arith.cmpi eq, %tid, %c0 : index"
    );
    let shared = |name: &str, n: usize| format!("%{name}: memref<{n}xi32, 3>");
    let cnt = format!("memref<{e}xi32, 3>");
    let starts = format!("memref<{}xi32, 3>", e + 1);
    let slot = slot_of();
    // Clear the counters and every row and slot; then count the chunk's slots per expert.
    let _ = writeln!(
        b,
        "      scf.for %e = %tid to %cE step %cT {{\n        memref.store %z32, %cnt[%e] : {cnt}\n        memref.store %z32, %fill[%e] : {cnt}\n      }}\n      scf.for %r = %tid to %rows step %cT {{\n        memref.store %z32, %perm[%r] : memref<?xi32>\n        memref.store %z32, %rexp[%r] : memref<?xi32>\n      }}\n      scf.for %s = %tid to %cS step %cT {{\n{slot}        memref.store %m1, %pos[%s] : memref<?xi32>\n        %l32 = arith.trunci %loc : i64 to i32\n        %le = arith.select %local, %l32, %z32 : i32\n        memref.store %le, %eid[%s] : memref<?xi32>\n      }}\n      gpu.barrier\n      scf.for %s = %s0 to %hi step %cT {{\n{slot}        %used = arith.andi %local, %nz : i1\n        scf.if %used {{\n          %li = arith.index_cast %loc : i64 to index\n          %old = memref.atomic_rmw addi %one32, %cnt[%li] : (i32, {cnt}) -> i32\n        }}\n      }}\n      gpu.barrier"
    );
    // Each expert's first tile (one thread: E additions), then each tile's pointers.
    let _ = writeln!(
        b,
        "      scf.if %tid0 {{\n        %m32 = arith.index_cast %m : index to i32\n        %mm1 = arith.subi %m32, %one32 : i32\n        %total = scf.for %e = %c0 to %cE step %c1 iter_args(%acc = %z32) -> (i32) {{\n          memref.store %acc, %tstart[%e] : {starts}\n          %c = memref.load %cnt[%e] : {cnt}\n          %c2 = arith.addi %c, %mm1 : i32\n          %nt = arith.divui %c2, %m32 : i32\n          %na = arith.addi %acc, %nt : i32\n          scf.yield %na : i32\n        }}\n        memref.store %total, %tstart[%cE] : {starts}\n      }}\n      gpu.barrier\n      scf.for %e = %tid to %cE step %cT {{\n        %ts32 = memref.load %tstart[%e] : {starts}\n        %e1 = arith.addi %e, %c1 : index\n        %te32 = memref.load %tstart[%e1] : {starts}\n        %ts = arith.index_cast %ts32 : i32 to index\n        %te = arith.index_cast %te32 : i32 to index\n        %ex64 = arith.index_cast %e : index to i64\n        scf.for %t = %ts to %te step %c1 {{"
    );
    tile_pointers(&mut b, "x", ("%t", "%t", "%ex64"), dims, bytes);
    let _ = writeln!(
        b,
        "        }}\n      }}\n      %tot32 = memref.load %tstart[%cE] : {starts}\n      %tot = arith.index_cast %tot32 : i32 to index\n      scf.for %t = %tid to %bound step %cT {{\n        %spare = arith.cmpi uge, %t, %tot : index\n        scf.if %spare {{"
    );
    tile_pointers(&mut b, "s", ("%t", "%bound", "%z64"), dims, bytes);
    // Each slot of the chunk takes the next row of its expert's tiles.
    let _ = writeln!(
        b,
        "        }}\n      }}\n      scf.for %s = %s0 to %hi step %cT {{\n{slot}        %used = arith.andi %local, %nz : i1\n        scf.if %used {{\n          %li = arith.index_cast %loc : i64 to index\n          %at32 = memref.atomic_rmw addi %one32, %fill[%li] : (i32, {cnt}) -> i32\n          %ts32 = memref.load %tstart[%li] : {starts}\n          %ts = arith.index_cast %ts32 : i32 to index\n          %rb = arith.muli %ts, %m : index\n          %at = arith.index_cast %at32 : i32 to index\n          %p = arith.addi %rb, %at : index\n          %p32 = arith.index_cast %p : index to i32\n          memref.store %p32, %pos[%s] : memref<?xi32>\n          %tok = arith.divui %s, %ck : index\n          %tok32 = arith.index_cast %tok : index to i32\n          memref.store %tok32, %perm[%p] : memref<?xi32>\n          %l32 = arith.trunci %loc : i64 to i32\n          memref.store %l32, %rexp[%p] : memref<?xi32>\n        }}\n      }}"
    );
    let params = [
        "%ids: memref<?xf32>",
        "%w: memref<?xf32>",
        "%perm: memref<?xi32>",
        "%rexp: memref<?xi32>",
        "%pos: memref<?xi32>",
        "%eid: memref<?xi32>",
        "%ptrs: memref<?xi64>",
        "%first: index",
        "%lo: index",
        "%hi: index",
        "%m: index",
        "%bound: index",
        "%xg: i64",
        "%win: i64",
        "%hid: i64",
        "%act: i64",
        "%wout: i64",
        "%out: i64",
    ];
    let workgroup = [shared("cnt", e), shared("fill", e), shared("tstart", e + 1)];
    Some(format!(
        "    gpu.func @{prefix}_tgroup({}) workgroup({}) kernel {{\n{b}      gpu.return\n    }}\n",
        params.join(", "),
        workgroup.join(", ")
    ))
}

/// Tile `t`'s six pointers (its rows from tile `row_tile`, expert `ex`, an i64), names tagged
/// `tag`: `ptrs[j * bound + t]` for the rows in, matrix in, hidden out, activation in, matrix
/// out, rows out.
fn tile_pointers(
    b: &mut String,
    tag: &str,
    (t, row_tile, ex): (&str, &str, &str),
    dims: ExpertDims,
    bytes: usize,
) {
    let (h, n, f) = (dims.hidden, dims.n, dims.ffn);
    let _ = writeln!(
        b,
        "          %{tag}row = arith.muli {row_tile}, %m : index\n          %{tag}r64 = arith.index_cast %{tag}row : index to i64"
    );
    // (base, the row's or the expert's stride in bytes, whether it steps by expert).
    let parts = [
        ("%xg", h * bytes, false),
        ("%win", h * n * bytes, true),
        ("%hid", n * bytes, false),
        ("%act", f * bytes, false),
        ("%wout", f * h * bytes, true),
        ("%out", h * bytes, false),
    ];
    for (j, (base, stride, by_expert)) in parts.into_iter().enumerate() {
        let step = if by_expert {
            ex.to_string()
        } else {
            format!("%{tag}r64")
        };
        let _ = writeln!(
            b,
            "          %{tag}st{j} = arith.constant {stride} : i64\n          %{tag}of{j} = arith.muli {step}, %{tag}st{j} : i64\n          %{tag}pt{j} = arith.addi {base}, %{tag}of{j} : i64\n          %{tag}cj{j} = arith.constant {j} : index\n          %{tag}ib{j} = arith.muli %{tag}cj{j}, %bound : index\n          %{tag}ix{j} = arith.addi %{tag}ib{j}, {t} : index\n          memref.store %{tag}pt{j}, %ptrs[%{tag}ix{j}] : memref<?xi64>"
        );
    }
}
