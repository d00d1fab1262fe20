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
use super::template::specialise;
use ppmoe_runtime::program::{ExpertDims, GROUP_THREADS};

const TGROUP: &str = include_str!("templates/grouping/tgroup.mlir");
const TILE_POINTER: &str = include_str!("templates/grouping/tile_pointer.mlir");

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
    Some(specialise(
        TGROUP,
        &[
            ("name", &format!("{prefix}_tgroup")),
            ("experts", &e),
            ("starts", &(e + 1)),
            ("threads", &GROUP_THREADS),
            ("s", &s),
            ("k", &k),
            ("slot", &slot_of()),
            (
                "expert_pointers",
                &tile_pointers("x", ("%t", "%t", "%ex64"), dims, bytes),
            ),
            (
                "spare_pointers",
                &tile_pointers("s", ("%t", "%bound", "%z64"), dims, bytes),
            ),
        ],
    ))
}

/// Tile `t`'s six pointers (its rows from tile `row_tile`, expert `ex`, an i64), names tagged
/// `tag`: `ptrs[j * bound + t]` for the rows in, matrix in, hidden out, activation in, matrix
/// out, rows out.
fn tile_pointers(
    tag: &str,
    (t, row_tile, ex): (&str, &str, &str),
    dims: ExpertDims,
    bytes: usize,
) -> String {
    let (h, n, f) = (dims.hidden, dims.n, dims.ffn);
    let mut b = format!("          %{tag}row = arith.muli {row_tile}, %m : index\n          %{tag}r64 = arith.index_cast %{tag}row : index to i64\n");
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
        b += &specialise(
            TILE_POINTER,
            &[
                ("tag", &tag),
                ("j", &j),
                ("stride", &stride),
                ("step", &step),
                ("base", &base),
                ("t", &t),
            ],
        );
    }
    b
}
