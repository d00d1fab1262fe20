//! The device's stream-ordered memory pool, told to keep what is freed. Every buffer of a
//! forward is allocated and freed on the stream (cudarc allocates with `cuMemAllocAsync`), and
//! the pool's default release threshold is 0: at every synchronisation (the routing copied to
//! the host, the end of a forward) the pool hands its free memory back to the driver, and the
//! next forward maps it again, a cost that grows with the buffers' size. With the threshold at
//! its maximum the pool keeps the memory, as PyTorch's caching allocator does.

use cudarc::driver::{sys, CudaContext};

/// Sets the default pool of `ctx`'s device to keep freed memory (a no-op where the device has
/// no stream-ordered allocator: cudarc then allocates synchronously).
pub(super) fn keep_freed_memory(ctx: &CudaContext) -> Result<(), String> {
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool = std::mem::MaybeUninit::<sys::CUmemoryPool>::uninit();
    // SAFETY: the out-pointer is valid; the device handle comes from a live context.
    unsafe { sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device()) }
        .result()
        .map_err(|e| format!("the device's memory pool: {e}"))?;
    let mut threshold = u64::MAX;
    // SAFETY: the pool was returned above; the release threshold attribute takes a u64.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool.assume_init(),
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result()
    .map_err(|e| format!("the memory pool's release threshold: {e}"))
}
