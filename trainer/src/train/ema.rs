//! Where the weights' moving average (`optim.ema_decay`) lives and where it starts.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::checkpoint;
use super::compute::Compute;
use super::config::TrainConfig;
use super::dist::Dist;
use super::zero1;
use crate::model::{Layout, ModelConfig, Params};
use crate::optim::Ema;

/// This rank's part of the moving average (none when `optim.ema_decay = 0`), and whether the ranks
/// share it out (then checkpoints gather it: [`zero1::gather_shards`]). Beside a device optimizer it is
/// rank 0's, on its GPU, or with ZeRO-1 each rank's shard on its own GPU; on the host with several
/// ranks (the CPU, or ZeRO-1) each rank keeps its shard, so no rank makes a pass over all the weights
/// that the others wait for; alone, rank 0's.
pub fn start(
    cfg: &TrainConfig,
    resume: Option<&Path>,
    (mc, lay): (&ModelConfig, &Layout),
    params: &Params<f32>,
    dist: &Dist,
    compute: &mut Compute,
) -> Result<(Option<Ema>, bool)> {
    let leader = dist.is_leader();
    let sharded = dist.world > 1 && (!compute.device_optimizer() || compute.device_zero1());
    let range = match (sharded, leader) {
        (true, _) => Some(zero1::shard_range(lay.numel, dist.rank, dist.world)),
        (false, true) => Some(0..lay.numel),
        (false, false) => None,
    };
    let ema = match range.filter(|_| cfg.optim.ema_decay > 0.0) {
        Some(range) => {
            let start = match resume {
                Some(dir) => resumed_values(dir, (mc, lay), params, range.clone(), leader)?,
                None => {
                    let (start, source) = fresh_values(cfg, (mc, lay), params, range.clone())?;
                    if let Some(said) = fresh_start_said(cfg, source.as_deref()).filter(|_| leader) {
                        console!("{said}");
                    }
                    start
                }
            };
            let e = Ema::new(cfg.optim.ema_decay, start, range);
            compute.attach_ema(&e)?;
            Some(e)
        }
        None => {
            if let Some(dir) = resume.filter(|d| leader && d.join(checkpoint::EMA_FILE).is_file()) {
                tracing::warn!(
                    "optim.ema_decay = 0: the moving average of the weights in {} is dropped",
                    dir.display()
                );
            }
            None
        }
    };
    Ok((ema, sharded))
}

/// All of the moving average, for rank 0's checkpoint: gathered on rank 0 from the ranks' shards when
/// `sharded` (a collective: every rank calls it), else rank 0's own. `None` on the other ranks.
pub fn whole(ema: Option<&Ema>, sharded: bool, dist: &mut Dist, numel: usize) -> Result<Option<Params<f32>>> {
    let data = match ema {
        Some(e) if sharded => zero1::gather_shards(dist, &e.weights, numel)?,
        Some(e) => dist.is_leader().then(|| e.weights.clone()),
        None => None,
    };
    Ok(data.map(|data| Params { data }))
}

/// Where a fresh run's moving average of parameters `range` starts: the weights it starts from, and
/// where `model.init_from` keeps an average beside its weights, that average over them, as upstream's
/// `--rush_resume` loads `gpt_ema_fsdp` into its EMA (tensors the source lacks keep the weights').
/// With `model.init_from_ema` the weights are that average already. Returns the values and the file
/// of the source's average where they came from it.
pub(crate) fn fresh_values(
    cfg: &TrainConfig,
    (mc, lay): (&ModelConfig, &Layout),
    params: &Params<f32>,
    range: Range<usize>,
) -> Result<(Vec<f32>, Option<PathBuf>)> {
    let mut start = params.data[range.clone()].to_vec();
    let Some(from) = cfg.model.init_from.as_deref().filter(|_| !cfg.model.init_from_ema) else {
        return Ok((start, None));
    };
    match checkpoint::moving_average_of(from).context("model.init_from")? {
        Some((file, which)) => {
            crate::model::io::init_from_weights_part(&file, which, (mc, lay), &mut start, range.start)
                .context("model.init_from: its moving average")?;
            Ok((start, Some(file)))
        }
        None => Ok((start, None)),
    }
}

/// Where a fine-tune's moving average starts, in words (`None` for a run from a random initialisation):
/// the source's average (`source`, its file), or the weights the run starts from.
pub(crate) fn fresh_start_said(cfg: &TrainConfig, source: Option<&Path>) -> Option<String> {
    let what = "the run's moving average of the weights starts from";
    match (source, cfg.model.init_from.is_some(), cfg.model.init_from_ema) {
        (Some(file), ..) => Some(format!("{what} the source's: {}", file.display())),
        (None, true, true) => Some(format!("{what} the weights, the source's average")),
        (None, true, false) => Some(format!("{what} the weights (the source keeps no average of its own)")),
        (None, false, _) => None,
    }
}

/// Where a resumed run's moving average of parameters `range` starts: the checkpoint's, else the weights
/// (a run that turns `optim.ema_decay` on mid-way says so, on the `leader`).
fn resumed_values(
    dir: &Path,
    (mc, lay): (&ModelConfig, &Layout),
    params: &Params<f32>,
    range: Range<usize>,
    leader: bool,
) -> Result<Vec<f32>> {
    let weights = || params.data[range.clone()].to_vec();
    let what = || format!("resuming from {}", dir.display());
    match checkpoint::load_ema(dir, mc, lay, range.clone()).with_context(what)? {
        Some(ema) => Ok(ema),
        None => {
            if leader {
                tracing::warn!("{} keeps no moving average of the weights: it starts from them", dir.display());
            }
            Ok(weights())
        }
    }
}
