//! The gather into an experts step's rows from x's bf16 copy, where H is a multiple of eight
//! (`ppmoe_runtime::program::bf16_octets`): out[r, c] = x[perm[r], c], one thread per eight
//! columns of a row, each one 16-byte load and one 16-byte store. The step's other gather reads
//! x in f32 and narrows two columns a thread (8 bytes in, 4 out): on an H200 it took 0.605 ms
//! for the DeepSeek-like layer at 4096 tokens (32768 rows of 7168 columns: 1.4 GB moved, about
//! 55% of the copy bandwidth). The values are the same: x's copy is rounded to
//! bf16 as that gather rounds each element.

use super::kernel_gen::dyn_kernel;
use super::template::specialise;

const GATHER_OCTETS: &str = include_str!("templates/experts/gather_octets.mlir");

/// Columns a thread moves (16 bytes of bf16).
const COLUMNS: usize = 8;

/// `{prefix}_gather8` over rows of H = `h` columns (a multiple of eight).
pub(super) fn kernel(prefix: &str, h: usize) -> String {
    debug_assert!(h.is_multiple_of(COLUMNS));
    let groups = h / COLUMNS;
    let mut b = String::new();
    b.push_str(&specialise(GATHER_OCTETS, &[("groups", &groups)]));
    let params = [
        "%x: memref<?xvector<4xi32>>",
        "%perm: memref<?xi32>",
        "%out: memref<?xvector<4xi32>>",
        "%rows: index",
    ];
    dyn_kernel(
        &format!("{prefix}_{}", ppmoe_runtime::program::GATHER_BF16_SUFFIX),
        &params,
        &format!("      %cgn = arith.constant {groups} : index\n      %n = arith.muli %rows, %cgn : index\n"),
        &b,
    )
}

#[cfg(test)]
mod tests {
    /// One 16-byte load and one 16-byte store a thread, and nothing narrowed (x's copy is
    /// bf16 already).
    #[test]
    fn a_row_moves_sixteen_bytes_a_thread() {
        let kernel = super::kernel("t", 64);
        let ptx = crate::codegen::ptx::kernel_ptx(&kernel);
        assert!(ptx.contains(".entry t_gather8"));
        assert_eq!(ptx.matches("ld.global.v4.b32").count(), 1, "{ptx}");
        assert_eq!(ptx.matches("st.global.v4.b32").count(), 1);
        assert!(!ptx.contains("cvt.rn"), "no value narrowed");
    }
}
