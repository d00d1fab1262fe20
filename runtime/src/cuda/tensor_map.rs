//! Tensor maps of bf16 matrices: what the warp-specialised warpgroup projections (`sproj`,
//! `pproj`) read their weights through (expert stacks), and with sorted rows their rows too
//! (the rank's workspaces, `workspace`): a box of 64 inner elements by 128 or 256 rows per
//! chunk copied by the tensor memory accelerator into the 128-byte swizzled layout their wgmma
//! descriptors read. A map is encoded on the host (`cuTensorMapEncodeTiled`) and uploaded once
//! per matrix and box; the kernels take its device address. The stacks and workspaces stay
//! where they are for the rank's life, so the maps do too, and a later forward uploads nothing
//! (it can be captured).

use super::Rank;
use cudarc::driver::sys;
use cudarc::driver::CudaSlice;
use std::collections::HashMap;

/// What a map is made for: the stack's address, rows and inner elements, and a box's rows.
type MapKey = (u64, usize, usize, u32);

/// The maps made so far.
#[derive(Default)]
pub(super) struct TensorMaps(std::cell::RefCell<HashMap<MapKey, CudaSlice<u64>>>);

/// Inner elements of a box: one 128-byte row of bf16, the swizzle's width.
const BOX_INNER: u32 = 64;

impl Rank<'_> {
    /// The device address of the tensor map of the bf16 matrix `[rows, inner]` at `base`
    /// (row-major), read in boxes of `BOX_INNER` x `box_rows` with the 128-byte swizzle.
    pub(super) fn bf16_tensor_map(
        &self,
        base: u64,
        rows: usize,
        inner: usize,
        box_rows: u32,
    ) -> Result<u64, String> {
        let key = (base, rows, inner, box_rows);
        if let Some(map) = self.tensor_maps.0.borrow().get(&key) {
            return Ok(super::dptr(map, &self.stream));
        }
        let map = encode(base, rows, inner, box_rows)?;
        let uploaded =
            super::graph::upload(&self.stream, &map.opaque).map_err(|e| e.to_string())?;
        let at = super::dptr(&uploaded, &self.stream);
        self.tensor_maps.0.borrow_mut().insert(key, uploaded);
        Ok(at)
    }
}

/// The map itself (see `bf16_tensor_map`); out-of-bounds rows of a box read as zeros.
fn encode(base: u64, rows: usize, inner: usize, box_rows: u32) -> Result<sys::CUtensorMap, String> {
    let row_bytes = inner
        .checked_mul(2)
        .ok_or("a tensor map's row is too long")?;
    let dims = [inner as u64, rows as u64];
    let strides = [row_bytes as u64];
    let boxed = [BOX_INNER, box_rows];
    let unit = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: the arrays hold the rank (2) entries the call reads (strides: rank - 1), and
    // `map` is the 64-byte-aligned object it writes; `base` is a device allocation.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            base as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxed.as_ptr(),
            unit.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(format!(
            "a tensor map of a [{rows}, {inner}] bf16 stack in boxes of {BOX_INNER} x {box_rows}: {r:?}"
        ));
    }
    // SAFETY: the call succeeded, so it wrote the map.
    Ok(unsafe { map.assume_init() })
}
