//! The combine of an experts step over bf16 rows whose width H is a multiple of eight
//! (`ppmoe_runtime::program::bf16_octets`): y[t, c] = sum_j w[t, j] * (out[pos[t, j], c] +
//! b_out[eid[t, j], c]), one thread per eight columns of a token. Each slot's eight values are
//! one 16-byte load and the eight sums two 16-byte stores, and the k slots' loads do not wait
//! for one another: a slot with no row (pos -1) reads the first row and adds 0, so no load sits
//! behind a branch (the bias, present or not, is one branch around two straight copies of the
//! body: each slot's bias inside a branch of its own would let the compiler sink the later
//! slots' loads past it). The pairs kernel (4-byte loads, one slot's load after the other's)
//! reached about half the copy bandwidth on an H200 (0.083 ms for Qwen3-30B-A3B's layer at 4096
//! tokens, 168 MB). Each column's sum is the pairs kernel's, term by term in slot order.
//!
//! Where y is bf16 in the model, `{prefix}_combine_bits` (`COMBINE_BITS_SUFFIX`) is the same
//! kernel writing each sum rounded to bf16 (to nearest even: the bits the narrowing of the f32
//! y gives), one 16-byte store of eight: where y's readers all take bf16 bits, no f32 y is
//! written and narrowed by another kernel after.

use super::kernel_gen::dyn_kernel;
use super::template::specialise;
use std::fmt::Write as _;

const COMBINE_OCTETS: &str = include_str!("templates/experts/combine_octets.mlir");
const SLOT_LOAD: &str = include_str!("templates/experts/slot_load.mlir");
const SLOT_EXPERT: &str = include_str!("templates/experts/slot_expert.mlir");

/// Columns a thread sums.
const COLUMNS: usize = 8;

/// How the combine writes y.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Output {
    F32,
    /// bf16 bits, each sum rounded to nearest even (`{prefix}_combine_bits`).
    Bits,
}

/// `{prefix}_combine` (or with `Output::Bits` `{prefix}_combine_bits`) over `t` tokens of `k`
/// slots, H = `h` (a multiple of eight).
pub(super) fn kernel(prefix: &str, t: usize, h: usize, k: usize, y: Output) -> String {
    debug_assert!(h.is_multiple_of(COLUMNS));
    let groups = h / COLUMNS;
    let mut b = String::new();
    b.push_str(&specialise(
        COMBINE_OCTETS,
        &[
            ("groups", &groups),
            ("k", &k),
            ("h", &h),
            ("columns", &COLUMNS),
        ],
    ));
    for m in 0..COLUMNS {
        let _ = writeln!(
            b,
            "        %l{m} = arith.constant {m} : i32\n        %cm{m} = arith.constant {m} : index"
        );
    }
    let _ = writeln!(b, "        scf.if %hb {{");
    body_of(&mut b, k, true, y);
    let _ = writeln!(b, "        }} else {{");
    body_of(&mut b, k, false, y);
    let _ = writeln!(b, "        }}");
    let (name, y_param) = match y {
        Output::F32 => ("combine", "%y: memref<?xvector<4xf32>>"),
        Output::Bits => (
            ppmoe_runtime::program::COMBINE_BITS_SUFFIX,
            "%y: memref<?xvector<8xbf16>>",
        ),
    };
    let params = [
        "%out: memref<?xvector<8xbf16>>",
        "%pos: memref<?xi32>",
        "%w: memref<?xf32>",
        "%eid: memref<?xi32>",
        "%bout: memref<?xf32>",
        y_param,
        "%has_bias: index",
    ];
    dyn_kernel(
        &format!("{prefix}_{name}"),
        &params,
        &format!("      %n = arith.constant {} : index\n", t * groups),
        &b,
    )
}

/// The token's eight sums over its `k` slots, stored as `y` says: every slot's loads first,
/// then the sums, with (`bias`) or without the experts' output biases. Names are tagged by
/// `bias`.
fn body_of(b: &mut String, k: usize, bias: bool, y: Output) {
    let g = if bias { "b" } else { "n" };
    for j in 0..k {
        slot_loads(b, g, j, bias);
    }
    for j in 0..k {
        slot_sum(b, g, j, bias);
    }
    if y == Output::Bits {
        store_bits(b, g, k);
        return;
    }
    // The eight sums, as two vectors of four.
    for half in 0..2 {
        let _ = writeln!(
            b,
            "          %{g}y{half}_0 = llvm.mlir.undef : vector<4xf32>"
        );
        for q in 0..4 {
            let _ = writeln!(
                b,
                "          %{g}y{half}_{} = llvm.insertelement {}, %{g}y{half}_{q}[%l{q} : i32] : vector<4xf32>",
                q + 1,
                sum(g, k, 4 * half + q)
            );
        }
        let _ = writeln!(
            b,
            "          memref.store %{g}y{half}_4, %y[%yi{half}] : memref<?xvector<4xf32>>"
        );
    }
}

/// The eight sums as one vector, rounded to bf16 (to nearest even) and stored: 16 bytes.
fn store_bits(b: &mut String, g: &str, k: usize) {
    let _ = writeln!(b, "          %{g}z_0 = llvm.mlir.undef : vector<8xf32>");
    for m in 0..COLUMNS {
        let _ = writeln!(
            b,
            "          %{g}z_{} = llvm.insertelement {}, %{g}z_{m}[%l{m} : i32] : vector<8xf32>",
            m + 1,
            sum(g, k, m)
        );
    }
    let _ = writeln!(
        b,
        "          %{g}zb = arith.truncf %{g}z_{COLUMNS} : vector<8xf32> to vector<8xbf16>\n          memref.store %{g}zb, %y[%i] : memref<?xvector<8xbf16>>"
    );
}

/// Column `m`'s sum over the token's first `j` slots (0 before the first).
fn sum(g: &str, j: usize, m: usize) -> String {
    match j {
        0 => "%zero".into(),
        _ => format!("%{g}a{j}_{m}"),
    }
}

/// Slot `j` of the token: its weight, its row's eight values (the first row's where it has
/// none) and, with `bias`, its expert's eight biases.
fn slot_loads(b: &mut String, g: &str, j: usize, bias: bool) {
    b.push_str(&specialise(SLOT_LOAD, &[("g", &g), ("j", &j)]));
    if !bias {
        return;
    }
    b.push_str(&specialise(SLOT_EXPERT, &[("g", &g), ("j", &j)]));
    for m in 0..COLUMNS {
        let _ = writeln!(
            b,
            "          %{g}bi{j}_{m} = arith.addi %{g}eb{j}, %cm{m} : index\n          %{g}bv{j}_{m} = memref.load %bout[%{g}bi{j}_{m}] : memref<?xf32>"
        );
    }
}

/// Slot `j`'s terms added to the running sums (`sum`) over the token's first j slots: w (o +
/// b), or 0 where the slot has no row.
fn slot_sum(b: &mut String, g: &str, j: usize, bias: bool) {
    let _ = writeln!(
        b,
        "          %{g}o{j} = arith.extf %{g}o{j}h : vector<8xbf16> to vector<8xf32>"
    );
    for m in 0..COLUMNS {
        let x = format!("%{g}x{j}_{m}");
        let _ = writeln!(
            b,
            "          {x} = llvm.extractelement %{g}o{j}[%l{m} : i32] : vector<8xf32>"
        );
        let value = if bias {
            let _ = writeln!(
                b,
                "          %{g}ob{j}_{m} = arith.addf {x}, %{g}bv{j}_{m} : f32"
            );
            format!("%{g}ob{j}_{m}")
        } else {
            x
        };
        let _ = writeln!(
            b,
            "          %{g}wo{j}_{m} = arith.mulf %{g}w{j}, {value} : f32\n          %{g}t{j}_{m} = arith.select %{g}v{j}, %{g}wo{j}_{m}, %zero : f32\n          {} = arith.addf {}, %{g}t{j}_{m} : f32",
            sum(g, j + 1, m),
            sum(g, j, m)
        );
    }
}
