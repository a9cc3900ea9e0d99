//! What a training step reports, and where: `metrics.jsonl` (every step), TensorBoard (every step, plus
//! sample grids and the config: `tb_log.rs`), and the console (`console.rs`). Logging never stops
//! training: only the JSONL file is required.
//! A failed TensorBoard write (a full disk) loses its events and is counted (`summary.json`); the next
//! write goes on in a new event file, so a multi-day run's curves resume when the disk has room again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::console::Console;
use super::tb_log::{step_scalars, TbLog};

/// Metrics of one optimiser step (averaged over its micro-batches).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    /// Unix time (seconds) at the step's end: a wall-clock axis that spans sessions.
    pub time: f64,
    /// The training objective: the token mean of the (label-smoothed) loss, weighted by scale under
    /// `loss.reweight_by_scale`.
    pub loss: f64,
    /// Under `loss.reweight_by_scale`: the plain token mean, comparable with runs that do not reweight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_token_mean: Option<f64>,
    pub bit_acc: f64,
    pub token_acc: f64,
    pub lr: f64,
    /// The weight decay of the step, where it changes over the run (`optim.adamw.weight_decay_end`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// The global-norm clip of the step, where it decays over the run (`optim.clip_decay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
    pub grad_norm: f64,
    /// The rows the step drew over all ranks (`data.global_batch` when the step drew it; it may change
    /// at a resume).
    pub global_batch: u64,
    /// Samples, tokens and training FLOPs up to and including this step, over all ranks (`seen.rs`):
    /// absent where a checkpoint of an earlier build could not be recounted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_seen: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_seen: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops_seen: Option<f64>,
    pub tokens_per_s: f64,
    pub samples_per_s: f64,
    pub step_time_s: f64,
    /// Of the step time, rank 0's wait for its data and their preparation (self-correction, inputs).
    pub data_s: f64,
    /// Of the step time, rank 0's all-reduces of the metrics and gradients (with the wait for slower
    /// ranks), clipping, optimiser step and moving average. On a GPU the host waits for the device's
    /// queued work where it reads the gradient norm: the backward's tail is in it, and the optimiser's
    /// kernels run on into the next step.
    pub optimizer_s: f64,
    /// Training FLOP/s per device (the group's over its ranks), in TFLOP/s: the efficiency figure of a
    /// device without a known peak (the CPU, an unlisted GPU), as Megatron logs it.
    pub tflops_per_device: f64,
    /// Model FLOPs utilisation, when the device peak is configured.
    pub mfu: Option<f64>,
    /// The dataset bucket (schedule) the step drew: the shapes of its scales.
    pub bucket: u16,
    /// In a mix (`data.mix`), the dataset the step drew: 0 for `data.dir`, `i + 1` for `data.mix[i]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<u16>,
    /// Per scale, by index as upstream's `L_sNN` (0-based here): with several buckets, scale `s` has
    /// the shape of each step's own bucket (the per-bucket tags separate them).
    pub scale_loss: Vec<f64>,
    pub scale_bit_acc: Vec<f64>,
    /// Fraction of each scale's tokens with all bits right (upstream's `Acc_token_sXX`).
    pub scale_token_acc: Vec<f64>,
    /// Updates skipped so far (non-finite or spiking steps).
    pub skipped_steps: u64,
    /// The loss's and gradient norm's z-scores over the spike guard's window, once it is full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_z: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm_z: Option<f64>,
    /// The spread of the ranks' own work and data waits (with more than one rank).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranks: Option<super::rank_times::RankTimes>,
    /// On a GPU: the most device memory this rank's allocator held during the step (GiB; what
    /// `model::memory` estimates, without the CUDA context and libraries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_mem_peak_gib: Option<f64>,
}

/// The names of a joined dataset's folders for TensorBoard tags: each folder's own name, with `-P`
/// (its place in the mix) added where two share one.
pub fn dataset_names(ds: &infinity_data::Dataset) -> Vec<String> {
    let tag = |n: &std::ffi::OsStr| crate::tensorboard::tag_part(&n.to_string_lossy());
    let names: Vec<String> = ds.parts().iter().map(|p| p.dir.file_name().map_or("data".into(), tag)).collect();
    let shared = |n: &String| names.iter().filter(|m| *m == n).count() > 1;
    names.iter().enumerate().map(|(p, n)| if shared(n) { format!("{n}-{p}") } else { n.clone() }).collect()
}

pub struct Logger {
    jsonl: File,
    /// `val.jsonl`, opened at the first evaluation.
    val: Option<File>,
    /// The run folder.
    run: PathBuf,
    tb: TbLog,
    console: Console,
    /// The buckets' schedule names, for their own TensorBoard tags (with more than one bucket).
    buckets: Option<Vec<String>>,
    /// A mix's datasets' names, for their own TensorBoard tags.
    datasets: Option<Vec<String>>,
}

impl Logger {
    /// Open the run's logs, continuing them when resuming at `step`: what an interrupted session logged
    /// after that step is dropped from the JSON-lines files and the TensorBoard event files (before this
    /// session writes its own, whose `SessionLog.START` at `step + 1` asks TensorBoard's Python loader
    /// for the same).
    pub fn open(run: &Path, config_toml: &str, step: u64, total: u64, log_every: u64) -> Result<Logger> {
        for log in ["metrics.jsonl", "val.jsonl"] {
            super::rundir::truncate_log(&run.join(log), step)?;
        }
        // (`infinity eval --out RUN/eval.jsonl`'s lines of this run's checkpoints past the step: of
        // checkpoints a crash lost or a rewind set aside)
        super::rundir::truncate_eval_log(run, step)?;
        // (warns of a file it cannot cut and leaves it: TensorBoard is not required)
        match step {
            // a fresh start (a checkpoint is of step 1 or later): a session that took none left its
            // start (config, HParams) at step 0, which TensorBoard would show as a second start
            0 => crate::tensorboard::remove_event_files(&run.join("tb")),
            _ => {
                let restated = [super::tb_log::CONFIG_TAG];
                let _ = crate::tensorboard::truncate_event_dir(&run.join("tb"), step, &restated);
            }
        }
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("metrics.jsonl"))
            .with_context(|| format!("opening {}", run.join("metrics.jsonl").display()))?;
        let mut tb = TbLog::new(run.join("tb"), (step, format!("```toml\n{config_toml}\n```")));
        // the preamble at once: a session that stops before its first step still records its start and config
        tb.write(None, |_| Ok(()));
        let console = Console::open(step, total, log_every);
        Ok(Logger { jsonl, val: None, run: run.to_path_buf(), tb, console, buckets: None, datasets: None })
    }

    /// The dataset's schedule names, by bucket: with more than one, each step's loss and accuracies are
    /// also written under `bucket/NAME/`, where every scale keeps one shape.
    pub fn bucket_names(&mut self, names: Vec<String>) {
        self.buckets = (names.len() > 1).then_some(names);
    }

    /// A mix's datasets' names (their folders' names, made unique): with more than one, each step's loss
    /// and accuracies are also written under `dataset/NAME/`.
    pub fn dataset_names(&mut self, names: Vec<String>) {
        self.datasets = (names.len() > 1).then_some(names);
    }

    /// Each rank's host, by rank, for the straggler warnings.
    pub fn rank_hosts(&mut self, hosts: Vec<String>) {
        self.console.rank_hosts(hosts);
    }

    /// TensorBoard writes that failed this session (their events are lost).
    pub fn tensorboard_failures(&self) -> u64 {
        self.tb.failed_writes()
    }

    /// Make `metrics.jsonl`, `val.jsonl` and the TensorBoard events durable (before a checkpoint of
    /// their steps: after a power loss, a checkpoint whose log lines were lost would leave a gap in the
    /// curves and no loss to say).
    pub fn sync(&self) {
        for f in std::iter::once(&self.jsonl).chain(&self.val) {
            if let Err(e) = f.sync_data() {
                tracing::warn!("syncing the run's logs to disk: {e}");
            }
        }
        if let Err(e) = self.tb.sync() {
            tracing::warn!("syncing the run's TensorBoard events to disk: {e}");
        }
    }

    pub fn step(&mut self, m: &StepMetrics) -> Result<()> {
        writeln!(self.jsonl, "{}", serde_json::to_string(m)?).context("writing metrics.jsonl")?;
        let (buckets, datasets) = (self.buckets.as_deref(), self.datasets.as_deref());
        self.tb.write(Some(m.step), |w| step_scalars(w, m, (buckets, datasets)));
        self.console.step(m);
        Ok(())
    }

    /// A validation result: `val.jsonl`, TensorBoard `val/*`, a console line; with `val.sets`, each
    /// one's (`sets`) in the same line under `sets`, `val/NAME/*` and the console line.
    pub fn val(
        &mut self,
        (step, seen): (u64, Option<super::seen::Seen>),
        v: &super::val::ValMetrics,
        sets: &[(String, super::val::ValMetrics)],
    ) -> Result<()> {
        if self.val.is_none() {
            let p = self.run.join("val.jsonl");
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&p);
            self.val = Some(f.with_context(|| format!("opening {}", p.display()))?);
        }
        let mut line = serde_json::json!({ "step": step, "loss": v.loss, "bit_acc": v.bit_acc, "rows": v.rows });
        if let Some(seen) = seen {
            line["samples_seen"] = seen.samples.into();
            line["tokens_seen"] = seen.tokens.into();
            line["flops_seen"] = seen.flops.into();
        }
        if !sets.is_empty() {
            let each = sets.iter().map(|(name, m)| {
                (name.clone(), serde_json::json!({ "loss": m.loss, "bit_acc": m.bit_acc, "rows": m.rows }))
            });
            line["sets"] = serde_json::Value::Object(each.collect());
        }
        writeln!(self.val.as_mut().unwrap(), "{line}").context("writing val.jsonl")?;
        self.tb.write(None, |w| {
            w.scalar("val/loss", v.loss, step)?;
            w.scalar("val/bit_acc", v.bit_acc, step)?;
            for (name, m) in sets {
                w.scalar(&format!("val/{name}/loss"), m.loss, step)?;
                w.scalar(&format!("val/{name}/bit_acc"), m.bit_acc, step)?;
            }
            Ok(())
        });
        let more: Vec<String> = sets
            .iter()
            .map(|(name, m)| format!("; {name}: loss {:.4}, bit acc {:.1}%", m.loss, 100.0 * m.bit_acc))
            .collect();
        self.println(&format!(
            "validation at step {step}: loss {:.4}, bit acc {:.1}% ({}){}",
            v.loss,
            100.0 * v.bit_acc,
            crate::cli::plural(v.rows, "row"),
            more.concat()
        ));
        Ok(())
    }

    /// The run's hyperparameters for TensorBoard's HParams tab ([`hparam_list`]).
    pub fn hparams(
        &mut self,
        cfg: &super::config::TrainConfig,
        mc: &crate::model::ModelConfig,
        params: usize,
        world: usize,
    ) {
        let list = hparam_list(cfg, mc, params, world);
        // (no group: TensorBoard makes each run its own group; one named would merge, and average, the
        // runs of one name: an abandoned history's copy, or two sweeps' `lr-0.001`)
        self.tb.write(None, |w| w.hparams(&list, ""));
    }

    /// An RGB image (row-major, interleaved) in TensorBoard's Images tab.
    pub fn image(&mut self, tag: &str, rgb: &[u8], height: u32, width: u32, step: u64) {
        self.tb.write(None, |w| w.image(tag, rgb, height, width, step));
    }

    /// A line on the console that does not tear the progress bar.
    pub fn println(&self, line: &str) {
        self.console.println(line);
    }

    pub fn finish(&mut self) {
        self.console.finish();
    }
}

/// The file an `infinity sweep` writes beside a run's `config.toml`: the run's values of the sweep's
/// axes (`{"model.embed_dim": 64, "tokens": 2e6}`), which its HParams add.
pub const SWEEP_POINT_FILE: &str = "sweep-point.json";

/// A run's hyperparameters: the model's shape and size, the optimisation, the data and conditioning,
/// and, in a sweep's run, each of the sweep's axes the list does not hold already (its budget, a mix's
/// weight, …: `RUN/sweep-point.json`, which an unreadable file leaves out).
pub fn hparam_list(
    cfg: &super::config::TrainConfig,
    mc: &crate::model::ModelConfig,
    params: usize,
    world: usize,
) -> Vec<(String, crate::tensorboard::HParam)> {
    use crate::tensorboard::HParam::{Bool, Number, Text};
    let n = |x: f64| Number(x);
    let mut list = vec![
        ("model.preset".to_string(), Text(cfg.model.preset.clone())),
        ("model.depth".into(), n(mc.depth as f64)),
        ("model.embed_dim".into(), n(mc.embed_dim as f64)),
        ("model.num_heads".into(), n(mc.num_heads as f64)),
        ("model.mlp_ratio".into(), n(mc.mlp_ratio)),
        ("model.conditioning".into(), Text(cfg.model.conditioning.clone())),
        ("model.cond_drop_rate".into(), n(mc.cond_drop_rate)),
        ("model.drop_path_rate".into(), n(mc.drop_path_rate)),
        ("parameters".into(), n(params as f64)),
        ("d".into(), n(mc.d as f64)),
        ("optim.lr".into(), n(cfg.peak_lr())),
        ("optim.warmup_steps".into(), n(cfg.optim.warmup_steps as f64)),
        ("optim.adamw.weight_decay".into(), n(cfg.optim.adamw.weight_decay)),
        // 0: the standard parametrization
        ("model.mup_base_width".into(), n(cfg.model.mup_base_width.unwrap_or(0) as f64)),
        ("model.mup_base_heads".into(), n(cfg.model.mup_base_heads.unwrap_or(0) as f64)),
        ("data.global_batch".into(), n(cfg.data.global_batch as f64)),
        ("data.short_cap_prob".into(), n(cfg.data.short_cap_prob)),
        ("run.steps".into(), n(cfg.run.steps as f64)),
        ("run.seed".into(), n(cfg.run.seed as f64)),
        ("bsc.p_max".into(), n(cfg.bsc.p_max)),
        ("world_size".into(), n(world as f64)),
    ];
    let text = std::fs::read_to_string(cfg.run.dir.join(SWEEP_POINT_FILE)).unwrap_or_default();
    let point: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    for (key, value) in point {
        let value = match value {
            serde_json::Value::Number(x) => x.as_f64().map(Number),
            serde_json::Value::Bool(b) => Some(Bool(b)),
            serde_json::Value::String(t) => Some(Text(t)),
            other => Some(Text(other.to_string())),
        };
        if let Some(v) = value.filter(|_| list.iter().all(|(k, _)| *k != key)) {
            list.push((key, v));
        }
    }
    list
}

/// A step's metrics for the logging tests: `step` at `tokens_per_s` for `step_time_s`, MFU 0.5.
#[cfg(test)]
pub(super) fn test_step(step: u64, tokens_per_s: f64, step_time_s: f64) -> StepMetrics {
    let mfu = Some(0.5);
    StepMetrics { step, loss: 0.5, tokens_per_s, step_time_s, mfu, scale_loss: vec![0.5], ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::test_step as step;
    use super::*;

    /// A sweep's run adds its axes to its HParams, where the list does not hold them already.
    #[test]
    fn hparams_hold_a_sweep_runs_axes() {
        let run = tempfile::tempdir().unwrap();
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo-cpu.toml");
        let cfg = super::super::config::TrainConfig::load(&demo, &[format!("run.dir={}", run.path().display())]);
        let cfg = cfg.unwrap();
        let mc = crate::model::ModelConfig::named_preset("tiny").unwrap();
        let point = r#"{"data.mix[0].weight": 2, "model.embed_dim": 999, "tokens": 2e5, "note": "x", "ema": true}"#;
        std::fs::write(run.path().join(SWEEP_POINT_FILE), point).unwrap();
        let list = hparam_list(&cfg, &mc, 1000, 2);
        let get = |k: &str| get_of(&list, k);
        use crate::tensorboard::HParam::{Bool, Number, Text};
        assert_eq!(get("data.mix[0].weight"), Some(Number(2.0)));
        assert_eq!(get("tokens"), Some(Number(2e5)));
        assert_eq!(get("note"), Some(Text("x".into())));
        assert_eq!(get("ema"), Some(Bool(true)));
        // (the resolved value, not the point's)
        assert_eq!(get("model.embed_dim"), Some(Number(mc.embed_dim as f64)));
        assert_eq!(get("model.conditioning"), Some(Text(cfg.model.conditioning.clone())));
        // a damaged file is left out
        std::fs::write(run.path().join(SWEEP_POINT_FILE), "{").unwrap();
        assert!(get_of(&hparam_list(&cfg, &mc, 1000, 2), "tokens").is_none());
    }

    fn get_of(list: &[(String, crate::tensorboard::HParam)], k: &str) -> Option<crate::tensorboard::HParam> {
        list.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    }

    /// With several buckets each step's loss and accuracies are also written under its bucket's
    /// schedule, where scale `s` keeps one shape; with one bucket they are not repeated.
    #[test]
    fn several_buckets_have_tags_of_their_own() {
        let tags = |names: &[&str]| {
            let run = tempfile::tempdir().unwrap();
            let mut log = Logger::open(run.path(), "", 0, 2, 10).unwrap();
            log.bucket_names(names.iter().map(|n| n.to_string()).collect());
            for (s, bucket) in [(1, 1), (2, 0)] {
                log.step(&StepMetrics { bucket, scale_loss: vec![0.25, 0.5], ..step(s, 100.0, 1.0) }).unwrap();
            }
            let file = std::fs::read_dir(run.path().join("tb")).unwrap().next().unwrap().unwrap().path();
            let scalars = crate::tensorboard::read_scalars(&file).unwrap();
            let mut tags: Vec<(String, i64)> =
                scalars.iter().filter(|s| s.tag.starts_with("bucket/")).map(|s| (s.tag.clone(), s.step)).collect();
            tags.sort();
            tags
        };
        let of = |name: &str, step: i64| {
            ["bit_acc", "loss", "loss_s00", "loss_s01", "token_acc"].map(|t| (format!("bucket/{name}/{t}"), step))
        };
        let expected: Vec<(String, i64)> = of("0.666/demo5", 2).into_iter().chain(of("1.000/demo5", 1)).collect();
        assert_eq!(tags(&["0.666/demo5", "1.000/demo5"]), expected);
        assert!(tags(&["1.000/demo5"]).is_empty());
    }

    /// In a mix each step's loss and accuracies are also written under its dataset's name, and
    /// `metrics.jsonl` says which dataset it drew; without one, neither.
    #[test]
    fn a_mix_has_tags_of_each_dataset() {
        let run = tempfile::tempdir().unwrap();
        let mut log = Logger::open(run.path(), "", 0, 2, 10).unwrap();
        log.dataset_names(vec!["laion".into(), "synthetic".into()]);
        for (s, dataset) in [(1, Some(1)), (2, Some(0))] {
            log.step(&StepMetrics { dataset, ..step(s, 100.0, 1.0) }).unwrap();
        }
        let file = std::fs::read_dir(run.path().join("tb")).unwrap().next().unwrap().unwrap().path();
        let scalars = crate::tensorboard::read_scalars(&file).unwrap();
        let mut tags: Vec<(String, i64)> =
            scalars.iter().filter(|s| s.tag.starts_with("dataset/")).map(|s| (s.tag.clone(), s.step)).collect();
        tags.sort();
        let of =
            |name: &str, step: i64| ["bit_acc", "loss", "token_acc"].map(|t| (format!("dataset/{name}/{t}"), step));
        assert_eq!(tags, of("laion", 2).into_iter().chain(of("synthetic", 1)).collect::<Vec<_>>());
        let jsonl = std::fs::read_to_string(run.path().join("metrics.jsonl")).unwrap();
        assert!(jsonl.lines().next().unwrap().contains("\"dataset\":1"), "{jsonl}");
        let plain = serde_json::to_string(&step(1, 100.0, 1.0)).unwrap();
        assert!(!plain.contains("dataset"), "{plain}");
    }

    #[test]
    fn tensorboard_goes_on_after_failed_writes_and_counts_them() {
        let run = tempfile::tempdir().unwrap();
        let mut log = Logger::open(run.path(), "seed = 1", 0, 6, 10).unwrap();
        log.tb.drill = std::iter::once(3..5).collect(); // steps 3 and 4 fail part-way through a record
        for s in 1..=6 {
            log.step(&step(s, 100.0, 1.0)).unwrap();
        }
        assert_eq!(log.tensorboard_failures(), 2);
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(run.path().join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        // every file reads to its end: the first session's up to step 2, a new one from step 5
        let steps: Vec<Vec<i64>> = files
            .iter()
            .map(|f| {
                let scalars = crate::tensorboard::read_scalars(f).unwrap();
                scalars.iter().filter(|s| s.tag == "train/loss").map(|s| s.step).collect()
            })
            .collect();
        assert_eq!(steps, [vec![1, 2], vec![5, 6]]);
        let jsonl = std::fs::read_to_string(run.path().join("metrics.jsonl")).unwrap();
        assert_eq!(jsonl.lines().count(), 6, "metrics.jsonl has every step");
    }

    #[test]
    fn a_preamble_that_failed_is_written_with_the_next_events() {
        let run = tempfile::tempdir().unwrap();
        // the tb folder cannot be made (a file there) until it is removed
        std::fs::write(run.path().join("tb"), b"").unwrap();
        let mut log = Logger::open(run.path(), "seed = 1", 4, 6, 10).unwrap();
        log.step(&step(5, 100.0, 1.0)).unwrap();
        assert_eq!(log.tensorboard_failures(), 2, "the preamble's write and step 5's");
        std::fs::remove_file(run.path().join("tb")).unwrap();
        log.step(&step(6, 100.0, 1.0)).unwrap();
        let files: Vec<PathBuf> =
            std::fs::read_dir(run.path().join("tb")).unwrap().map(|e| e.unwrap().path()).collect();
        let bytes = std::fs::read(&files[0]).unwrap();
        // the resumed session's start (which drops the earlier session's later points) and the config
        // come before step 6
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("seed = 1"), "no config text");
        let scalars = crate::tensorboard::read_scalars(&files[0]).unwrap();
        assert!(scalars.iter().all(|s| s.step == 6), "{scalars:?}");
    }
}
