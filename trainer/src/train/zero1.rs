//! ZeRO-1 for the data-parallel loop: the optimiser state sharded over the ranks, and the gathers
//! that put the shards back together for checkpoints.

use std::ops::Range;

use anyhow::Result;

use super::dist::Dist;
use crate::model::Layout;
use crate::optim::AdamW;

/// ZeRO-1: each rank owns the optimiser state of one contiguous shard of the flat parameters.
/// Gradients are reduce-scattered (each rank gets the mean of its shard), the rank updates its shard,
/// and the parameters are all-gathered. The flat layout is padded to a multiple of the world size so
/// every shard has the same length. Checkpoints gather the moments, so they are the same files as
/// without ZeRO-1 and restore on any world size.
pub struct Zero1 {
    /// This rank's parameters.
    pub range: std::ops::Range<usize>,
    padded: Vec<f32>,
    shard: Vec<f32>,
}

impl Zero1 {
    pub fn new(numel: usize, rank: usize, world: usize) -> Zero1 {
        let shard_len = numel.div_ceil(world);
        Zero1 {
            range: shard_range(numel, rank, world),
            padded: vec![0.0; shard_len * world],
            shard: vec![0.0; shard_len],
        }
    }

    /// This rank's shard of the rank-mean of `grads`, kept for [`Zero1::clip`] and [`Zero1::update`].
    pub fn reduce_grads(&mut self, dist: &mut Dist, grads: &[f32]) -> Result<()> {
        self.padded[..grads.len()].copy_from_slice(grads);
        self.padded[grads.len()..].iter_mut().for_each(|x| *x = 0.0);
        dist.tag("gradients (ZeRO-1 shards)");
        dist.reduce_scatter_sum(&self.padded, &mut self.shard)?;
        let inv = 1.0 / dist.world as f32;
        self.shard.iter_mut().for_each(|x| *x *= inv);
        Ok(())
    }

    /// Global-norm clipping of the sharded gradient: the norm is summed over ranks.
    pub fn clip(&mut self, dist: &mut Dist, max_norm: f64) -> Result<f64> {
        let local: f64 = self.shard.iter().map(|&g| (g as f64) * (g as f64)).sum();
        // a sum of squares travels as f32 (a few ulps of the norm; the same on every rank)
        let mut total = [local as f32];
        dist.tag("gradient norm");
        dist.all_reduce_sum(&mut total)?;
        let norm = (total[0] as f64).sqrt();
        if let Some(coef) = crate::optim::clip_coef(norm, max_norm) {
            self.shard.iter_mut().for_each(|g| *g = (*g as f64 * coef) as f32);
        }
        Ok(norm)
    }

    /// AdamW on this rank's shard, then every rank's updated shard into `params` on every rank.
    pub fn update(&mut self, dist: &mut Dist, opt: &mut AdamW, params: &mut [f32], lr: f64) -> Result<()> {
        opt.update(&mut params[self.range.clone()], &self.shard[..self.range.len()], lr);
        let mine = params[self.range.clone()].to_vec();
        self.gather(dist, &mine)?;
        params.copy_from_slice(&self.padded[..params.len()]);
        Ok(())
    }

    /// All-gather `part` (this rank's values, padded to the shard length) into `self.padded`.
    fn gather(&mut self, dist: &mut Dist, part: &[f32]) -> Result<()> {
        self.shard[..part.len()].copy_from_slice(part);
        self.shard[part.len()..].iter_mut().for_each(|x| *x = 0.0);
        let send = std::mem::take(&mut self.shard);
        dist.tag("parameters (ZeRO-1 shards)");
        let r = dist.all_gather(&send, &mut self.padded);
        self.shard = send;
        r
    }
}

/// Rank `rank`'s contiguous shard of `numel` flat values split `world` ways: `numel.div_ceil(world)`
/// values each, the last shards shorter (or empty) where the split is uneven.
pub fn shard_range(numel: usize, rank: usize, world: usize) -> Range<usize> {
    let shard_len = numel.div_ceil(world);
    (rank * shard_len).min(numel)..((rank + 1) * shard_len).min(numel)
}

/// Whether each of `world` ranks owns a part of `numel` values (NCCL moves equal parts: a model too
/// small for that keeps its ZeRO-1 shards on the host, `Updater::place`).
pub fn every_rank_owns_a_shard(numel: usize, world: usize) -> bool {
    !shard_range(numel, world - 1, world).is_empty()
}

/// The whole of `numel` values from every rank's shard of them (`part`: this rank's
/// [`shard_range`]), on rank 0 alone (the others get `None`, and hold a chunk of the whole at a time:
/// [`Communicator::gather`](infinity_launcher::comm::Communicator::gather)); a collective, so every
/// rank calls it.
pub fn gather_shards(dist: &mut Dist, part: &[f32], numel: usize) -> Result<Option<Vec<f32>>> {
    let shard_len = numel.div_ceil(dist.world);
    let mut send = part.to_vec();
    send.resize(shard_len, 0.0);
    let mut whole = dist.is_leader().then(|| vec![0.0; shard_len * dist.world]);
    dist.tag("gathering ZeRO-1 shards");
    dist.gather_to_leader(&send, whole.as_deref_mut())?;
    Ok(whole.map(|mut w| {
        w.truncate(numel);
        w
    }))
}

/// The whole optimiser state (for a checkpoint), gathered from the ranks' ZeRO-1 shards (`opt`: this
/// rank's) on rank 0, the rank that writes it: a collective (the others get `None`).
pub fn gather_optimizer(dist: &mut Dist, opt: &AdamW, lay: &Layout) -> Result<Option<AdamW>> {
    let m = gather_shards(dist, &opt.m, lay.numel)?;
    let v = gather_shards(dist, &opt.v, lay.numel)?;
    Ok(m.zip(v).map(|(m, v)| {
        let mut full = AdamW::new(opt.cfg.clone(), lay);
        (full.step, full.m, full.v) = (opt.step, m, v);
        full
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero1_shards_cover_the_parameters_once() {
        let (numel, world) = (10, 4);
        let ranges: Vec<_> = (0..world).map(|r| Zero1::new(numel, r, world).range).collect();
        assert_eq!(ranges, vec![0..3, 3..6, 6..9, 9..10]);
    }
}
