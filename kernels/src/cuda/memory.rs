//! Device memory as the allocator sees it: `CudaStream::alloc` draws from the device's default memory
//! pool (stream-ordered `cuMemAllocAsync`), whose used bytes and their high-water mark the driver keeps.
//! That mark, reset before a step and read after it, is the step's peak (what
//! `torch.cuda.max_memory_allocated` reports under PyTorch's caching allocator); `cuMemGetInfo` also counts
//! the CUDA context, cuBLAS's workspace and NCCL's buffers, and memory the pool has not yet returned.

use cudarc::driver::result::mem_pool;
use cudarc::driver::sys::{CUmemPool_attribute, CUmemoryPool};

use super::device::{CudaError, Device};

/// Bytes held from the device's default pool now, and their high-water mark since
/// [`reset_peak`] (or since the process started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    pub used: u64,
    pub peak: u64,
}

fn default_pool(dev: &Device) -> Result<CUmemoryPool, CudaError> {
    dev.ctx.bind_to_thread()?;
    // SAFETY: the device handle comes from the open context.
    Ok(unsafe { cudarc::driver::result::device::get_default_mem_pool(dev.ctx.cu_device()) }?)
}

/// The default pool's use as the allocations and frees called so far leave it (no wait for the queued
/// work: a training step reads it every step).
pub fn pool_usage(dev: &Device) -> Result<PoolUsage, CudaError> {
    let pool = default_pool(dev)?;
    let read = |attr| -> Result<u64, CudaError> {
        let mut v = 0u64;
        // SAFETY: both attributes are cuuint64_t values.
        unsafe { mem_pool::get_attribute(pool, attr, (&mut v as *mut u64).cast()) }?;
        Ok(v)
    };
    let used = read(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
    let peak = read(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
    // a mark reset to 0 moves with the next allocation: until then the bytes in use are the peak
    Ok(PoolUsage { used, peak: peak.max(used) })
}

/// Start the pool's high-water mark again from the bytes in use now.
pub fn reset_peak(dev: &Device) -> Result<(), CudaError> {
    let pool = default_pool(dev)?;
    let mut zero = 0u64;
    // SAFETY: USED_MEM_HIGH is a cuuint64_t, and 0 is the one value a driver accepts for it.
    unsafe {
        mem_pool::set_attribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut zero as *mut u64).cast(),
        )
    }?;
    Ok(())
}
