//! Where a step's gradients are averaged over the ranks and clipped, and where the optimiser updates
//! the parameters: on the GPU, on the host for this rank's ZeRO-1 shard, or on the host for all of them.

use anyhow::Result;

use super::compute::Compute;
use super::config::TrainConfig;
use super::dist::Dist;
use super::zero1::{self, Zero1};
use crate::model::{Layout, Params};
use crate::optim::{clip_grad_norm, AdamW};

/// Where a step's gradients are averaged over the ranks and clipped, and the optimiser updates the
/// parameters (decided once, alike on every rank, when the optimiser is placed).
pub(super) enum Updater {
    /// On the GPU ([`Compute::device_optimizer`]), a ZeRO-1 shard or all of the parameters.
    Device,
    /// On the host, this rank's ZeRO-1 shard.
    HostZero1(Zero1),
    /// On the host, all of the parameters, alike on every rank.
    Replicated,
}

impl Updater {
    /// Place the optimiser `opt` of `numel` parameters, `sharded` (ZeRO-1) or not, and the gradients'
    /// way to it (every rank alike): the optimiser as this rank keeps it, and where it updates.
    pub(super) fn place(
        cfg: &TrainConfig,
        sharded: bool,
        numel: usize,
        mut opt: AdamW,
        compute: &mut Compute,
        dist: &mut Dist,
    ) -> Result<(AdamW, Updater)> {
        // ZeRO-1: keep only this rank's shard of the optimiser state (a resumed run loaded it alone)
        let shard = zero1::shard_range(numel, dist.rank, dist.world);
        if sharded && opt.range != shard {
            opt = opt.shard(shard);
        }
        // on a GPU, clipping and AdamW run on the device (the parameters stay there); a ZeRO-1 shard
        // there too when the gradients travel by NCCL, else on the host
        // (every rank decides alike: a model too small for every rank to own a part stays on the host)
        let nccl = dist.has_nccl() && zero1::every_rank_owns_a_shard(numel, dist.world);
        compute.attach_optimizer(&opt, sharded.then_some(dist.world), nccl)?;
        let updater = match (compute.device_optimizer(), sharded) {
            (true, _) => Updater::Device,
            (false, true) => Updater::HostZero1(Zero1::new(numel, dist.rank, dist.world)),
            (false, false) => Updater::Replicated,
        };
        // the whole optimizer on each GPU: the host's moments are read back for rank 0's checkpoints
        // alone (17.6 GB a rank at 2b), so the other ranks free theirs
        if matches!(updater, Updater::Device) && !sharded && !dist.is_leader() {
            opt.release_moments();
        }
        if sharded {
            let place = if compute.device_zero1() { "this GPU" } else { "the host" };
            console!("ZeRO-1: {place} updates parameters {:?} of {}", opt.range, numel);
            if let Some(reads) = compute.device_master_shard() {
                console!(
                    "ZeRO-1 with bf16 matmuls: this GPU keeps the f32 weights of its shard and of the {reads} values \
                     the kernels read in f32, and the bf16 weights of all"
                );
            }
        }
        // over NCCL the backward sums each bucket of gradients over the ranks as soon as it is complete
        let bucket_bytes = (cfg.dist.bucket_mib * (1 << 20) as f64) as usize;
        if let Some(n) = compute.overlap_grads(dist, cfg.dist.overlap_grads, bucket_bytes)? {
            console!("gradients summed over the ranks during the backward: {n} buckets a step");
        }
        Ok((opt, updater))
    }

    /// The host's buffer for a step's gradients: the whole model's, or none where the device keeps
    /// them (at 8B parameters it was 33 GB of host memory a rank, zeroed every step, unread).
    pub(super) fn host_grads(&self, lay: &Layout) -> Params<f32> {
        match self {
            Updater::Device => Params { data: Vec::new() },
            Updater::HostZero1(_) | Updater::Replicated => Params::zeros(lay),
        }
    }

    /// Average the step's gradients (`grads`, on the host; the device's own on the GPU) over the
    /// ranks and clip them to `max_norm`: their norm before clipping.
    pub(super) fn reduce_and_clip(
        &mut self,
        compute: &mut Compute,
        dist: &mut Dist,
        grads: &mut [f32],
        max_norm: f64,
    ) -> Result<f64> {
        match self {
            Updater::Device => compute.clip(dist, max_norm),
            Updater::HostZero1(z) => {
                z.reduce_grads(dist, grads)?;
                z.clip(dist, max_norm)
            }
            Updater::Replicated => {
                dist.tag("gradients");
                dist.all_reduce_mean(grads)?;
                Ok(clip_grad_norm(grads, max_norm))
            }
        }
    }

    /// One AdamW step of `params` at learning rate `lr` (with the gradients
    /// [`Updater::reduce_and_clip`] left).
    pub(super) fn update(
        &mut self,
        compute: &mut Compute,
        dist: &mut Dist,
        opt: &mut AdamW,
        params: &mut [f32],
        grads: &[f32],
        lr: f64,
    ) -> Result<()> {
        match self {
            Updater::Device => compute.update(dist, opt, lr),
            Updater::HostZero1(z) => z.update(dist, opt, params, lr),
            Updater::Replicated => {
                opt.update(params, grads, lr);
                Ok(())
            }
        }
    }
}
