//! ZeRO-1 with bf16 matmuls on the device (`model::f32_reads`): the rank's `params` hold the f32
//! master weights of its shard alone, `params16` the bf16 copy of all of them, and [`DeviceReads`]
//! the f32 values the kernels still read, every rank's, shared by their owners after each update.

use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaView};
use infinity_kernels::cuda::linear::to_bf16_dev;
use infinity_kernels::cuda::{CudaError, Device};
use infinity_launcher::comm::NcclComm;

use super::optim::tag;
use crate::model::f32_reads::{read_in_f32, F32Reads};
use crate::model::Layout;

/// Values converted to bf16 at a time when the whole f32 parameters come from the host (a buffer of
/// all of them is what the shard saves).
const UPLOAD_CHUNK: usize = 1 << 24;

/// The f32-read tensors on the device: `values [k]`, laid out as [`F32Reads`] says.
pub struct DeviceReads {
    values: CudaSlice<f32>,
    plan: F32Reads,
}

impl DeviceReads {
    pub fn new(dev: &Device, lay: &Layout, rank: usize, world: usize) -> Result<DeviceReads> {
        let plan = F32Reads::new(lay, rank, world);
        let values = dev.stream.alloc_zeros::<f32>(plan.numel.max(1)).map_err(CudaError::from)?;
        Ok(DeviceReads { values, plan })
    }

    /// Values held.
    pub fn numel(&self) -> usize {
        self.plan.numel
    }

    /// Tensor `name`'s f32 values, if the kernels read it in f32 (`numel` of them).
    pub fn view(&self, name: &str, numel: usize) -> Option<CudaView<'_, f32>> {
        self.plan.start(name).map(|at| self.values.slice(at..at + numel))
    }

    /// From the whole flat parameters on the host.
    pub fn upload(&mut self, dev: &Device, lay: &Layout, flat: &[f32]) -> Result<()> {
        let mut packed = Vec::with_capacity(self.plan.numel);
        for s in lay.specs.iter().filter(|s| read_in_f32(s)) {
            packed.extend_from_slice(&flat[s.offset..s.offset + s.numel()]);
        }
        dev.stream.memcpy_htod(&packed, &mut self.values.slice_mut(0..packed.len()))?;
        Ok(())
    }

    /// After an update of `shard` (this rank's f32 masters): its pieces into place here, then each
    /// rank's span of the buffer broadcast from that rank, in place (exactly the f32-read values
    /// travel). Enqueued on `comm` after the work on the model's stream; the caller orders the stream
    /// after the collectives ([`NcclComm::before`]).
    pub fn share(&mut self, dev: &Device, shard: &CudaSlice<f32>, comm: &mut NcclComm) -> Result<()> {
        for &(from, to, len) in &self.plan.mine {
            dev.stream.memcpy_dtod(&shard.slice(from..from + len), &mut self.values.slice_mut(to..to + len))?;
        }
        comm.after(&dev.stream)?;
        for (owner, span) in self.plan.spans.iter().enumerate().filter(|(_, span)| !span.is_empty()) {
            tag(comm, "f32-read parameters (ZeRO-1 shards)");
            comm.broadcast_part(&mut self.values, span.clone(), owner)?;
        }
        Ok(())
    }
}

/// `flat`, the whole parameters from the host, rounded into `params16` on the device a chunk at a time.
pub fn upload_bf16(dev: &Device, flat: &[f32], params16: &mut CudaSlice<u16>) -> Result<()> {
    let s = &dev.stream;
    // SAFETY: each chunk's values are copied in before to_bf16 reads them (same stream).
    let mut chunk = unsafe { s.alloc::<f32>(UPLOAD_CHUNK.min(flat.len()).max(1)) }.map_err(CudaError::from)?;
    for (i, part) in flat.chunks(UPLOAD_CHUNK).enumerate() {
        let at = i * UPLOAD_CHUNK;
        s.memcpy_htod(part, &mut chunk.slice_mut(0..part.len()))?;
        to_bf16_dev(dev, &chunk.slice(0..part.len()), &mut params16.slice_mut(at..at + part.len()))?;
    }
    Ok(())
}
