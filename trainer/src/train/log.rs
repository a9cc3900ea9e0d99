//! What a training step reports, and where: `metrics.jsonl` (every step), TensorBoard (every step, plus
//! sample grids and the config), and the console (a progress bar with ETA on a terminal, a plain line
//! every `log_every` steps otherwise). Logging never stops training: only the JSONL file is required.
//! A failed TensorBoard write (a full disk) loses its events and is counted (`summary.json`); the next
//! write goes on in a new event file, so a multi-day run's curves resume when the disk has room again.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::rank_times::StragglerReport;
use super::tb_log::TbLog;

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
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub samples_per_s: f64,
    pub step_time_s: f64,
    /// Model FLOPs utilisation, when the device peak is configured.
    pub mfu: Option<f64>,
    /// The dataset bucket (schedule) the step drew: the shapes of its scales.
    pub bucket: u16,
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

/// The steps since the previous console line, for its throughput: their tokens over the wall time
/// since that line (data waits, validation, checkpoints and sample grids included, unlike a step's
/// own `tokens_per_s`, which jumps with whatever the step shared its time with).
struct Window {
    since: Instant,
    tokens: f64,
    /// Σ MFU × step time: the window's MFU is this over its wall time.
    mfu_seconds: Option<f64>,
}

impl Window {
    fn new(since: Instant) -> Window {
        Window { since, tokens: 0.0, mfu_seconds: None }
    }

    fn add(&mut self, m: &StepMetrics) {
        // (a step's tokens: its rate times its time)
        self.tokens += m.tokens_per_s * m.step_time_s;
        if let Some(u) = m.mfu {
            self.mfu_seconds = Some(self.mfu_seconds.unwrap_or(0.0) + u * m.step_time_s);
        }
    }

    /// Tokens per second and MFU over the window, which starts anew at `now`.
    fn take(&mut self, now: Instant) -> (f64, Option<f64>) {
        let wall = now.saturating_duration_since(self.since).as_secs_f64().max(1e-9);
        let rates = (self.tokens / wall, self.mfu_seconds.map(|s| s / wall));
        *self = Window::new(now);
        rates
    }
}

pub struct Logger {
    jsonl: File,
    /// `val.jsonl`, opened at the first evaluation.
    val: Option<File>,
    /// The run folder.
    run: PathBuf,
    tb: TbLog,
    bar: Option<ProgressBar>,
    log_every: u64,
    total: u64,
    started: Instant,
    start_step: u64,
    window: Window,
    stragglers: StragglerReport,
    /// The buckets' schedule names, for their own TensorBoard tags (with more than one bucket).
    buckets: Option<Vec<String>>,
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
        // (warns of a file it cannot cut and leaves it: TensorBoard is not required)
        crate::tensorboard::truncate_event_dir(&run.join("tb"), step);
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("metrics.jsonl"))
            .with_context(|| format!("opening {}", run.join("metrics.jsonl").display()))?;
        let mut tb = TbLog::new(run.join("tb"), (step, format!("```toml\n{config_toml}\n```")));
        // the preamble at once: a session that stops before its first step still records its start and config
        tb.write(None, |_| Ok(()));
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
                    .expect("a valid template"),
            );
            bar.set_position(step);
            bar
        });
        let started = Instant::now();
        Ok(Logger {
            jsonl,
            val: None,
            run: run.to_path_buf(),
            tb,
            bar,
            log_every,
            total,
            started,
            start_step: step,
            window: Window::new(started),
            stragglers: StragglerReport::default(),
            buckets: None,
        })
    }

    /// The dataset's schedule names, by bucket: with more than one, each step's loss and accuracies are
    /// also written under `bucket/NAME/`, where every scale keeps one shape.
    pub fn bucket_names(&mut self, names: Vec<String>) {
        self.buckets = (names.len() > 1).then_some(names);
    }

    /// Each rank's host, by rank, for the straggler warnings.
    pub fn rank_hosts(&mut self, hosts: Vec<String>) {
        self.stragglers = StragglerReport::new(hosts);
    }

    /// TensorBoard writes that failed this session (their events are lost).
    pub fn tensorboard_failures(&self) -> u64 {
        self.tb.failed_writes()
    }

    pub fn step(&mut self, m: &StepMetrics) -> Result<()> {
        writeln!(self.jsonl, "{}", serde_json::to_string(m)?).context("writing metrics.jsonl")?;
        let buckets = self.buckets.as_ref();
        self.tb.write(Some(m.step), |w| {
            for (tag, v) in [
                ("train/loss", m.loss),
                ("train/bit_acc", m.bit_acc),
                ("train/token_acc", m.token_acc),
                ("train/lr", m.lr),
                ("train/grad_norm", m.grad_norm),
                ("perf/tokens_per_s", m.tokens_per_s),
                ("perf/samples_per_s", m.samples_per_s),
                ("perf/step_time_s", m.step_time_s),
                ("train/skipped_steps", m.skipped_steps as f64),
            ] {
                w.scalar(tag, v, m.step)?;
            }
            if let Some(mfu) = m.mfu {
                w.scalar("perf/mfu", mfu, m.step)?;
            }
            if let Some(l) = m.loss_token_mean {
                w.scalar("train/loss_token_mean", l, m.step)?;
            }
            if let Some(gib) = m.gpu_mem_peak_gib {
                w.scalar("perf/gpu_mem_peak_gib", gib, m.step)?;
            }
            for (tag, z) in [("train/loss_z", m.loss_z), ("train/grad_norm_z", m.grad_norm_z)] {
                if let Some(z) = z {
                    w.scalar(tag, z, m.step)?;
                }
            }
            if let Some(r) = &m.ranks {
                w.scalar("ranks/work_s_max", r.work_s_max, m.step)?;
                w.scalar("ranks/work_s_median", r.work_s_median, m.step)?;
                w.scalar("ranks/data_s_max", r.data_s_max, m.step)?;
            }
            for (s, ((l, a), t)) in m.scale_loss.iter().zip(&m.scale_bit_acc).zip(&m.scale_token_acc).enumerate() {
                w.scalar(&format!("scale/loss_s{s:02}"), *l, m.step)?;
                w.scalar(&format!("scale/bit_acc_s{s:02}"), *a, m.step)?;
                w.scalar(&format!("scale/token_acc_s{s:02}"), *t, m.step)?;
            }
            if let Some(name) = buckets.and_then(|b| b.get(m.bucket as usize)) {
                for (tag, v) in [("loss", m.loss), ("bit_acc", m.bit_acc), ("token_acc", m.token_acc)] {
                    w.scalar(&format!("bucket/{name}/{tag}"), v, m.step)?;
                }
                for (s, l) in m.scale_loss.iter().enumerate() {
                    w.scalar(&format!("bucket/{name}/loss_s{s:02}"), *l, m.step)?;
                }
            }
            Ok(())
        });
        let now = Instant::now();
        let line = self.progress(m, now);
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(format!("loss {:.4} bit acc {:.1}%", m.loss, 100.0 * m.bit_acc));
                if let Some(line) = &line {
                    bar.println(line);
                }
            }
            None => {
                if let Some(line) = &line {
                    let done = (m.step - self.start_step) as f64;
                    let eta = self.started.elapsed().as_secs_f64() / done.max(1.0) * (self.total - m.step) as f64;
                    console!("{line} | ETA {}", fmt_secs(eta));
                }
            }
        }
        let report = &mut self.stragglers;
        if let Some(w) = m.ranks.as_ref().filter(|_| line.is_some()).and_then(|r| report.check(r, m.step, now)) {
            tracing::warn!("{w}");
        }
        Ok(())
    }

    /// The console line of step `m` when one is due (every `log_every` steps and the last), at `now`:
    /// the step's loss, accuracy, learning rate and gradient norm, and the throughput (and MFU) of the
    /// steps since the previous line.
    fn progress(&mut self, m: &StepMetrics, now: Instant) -> Option<String> {
        self.window.add(m);
        if !(m.step.is_multiple_of(self.log_every) || m.step == self.total) {
            return None;
        }
        let (tokens_per_s, mfu) = self.window.take(now);
        Some(format!(
            "step {:>6}/{} | loss {:.4} | bit acc {:5.1}% | lr {:.2e} | grad {:.3} | {:.0} tok/s{}{}",
            m.step,
            self.total,
            m.loss,
            100.0 * m.bit_acc,
            m.lr,
            m.grad_norm,
            tokens_per_s,
            mfu.map_or(String::new(), |u| format!(" | MFU {:.1}%", 100.0 * u)),
            m.gpu_mem_peak_gib.map_or(String::new(), |g| format!(" | GPU mem {g:.2} GiB")),
        ))
    }

    /// A validation result: `val.jsonl`, TensorBoard `val/*`, a console line.
    pub fn val(&mut self, step: u64, v: &super::val::ValMetrics) -> Result<()> {
        if self.val.is_none() {
            let p = self.run.join("val.jsonl");
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&p);
            self.val = Some(f.with_context(|| format!("opening {}", p.display()))?);
        }
        let line = serde_json::json!({ "step": step, "loss": v.loss, "bit_acc": v.bit_acc, "rows": v.rows });
        writeln!(self.val.as_mut().unwrap(), "{line}").context("writing val.jsonl")?;
        self.tb.write(None, |w| {
            w.scalar("val/loss", v.loss, step)?;
            w.scalar("val/bit_acc", v.bit_acc, step)
        });
        self.println(&format!(
            "validation at step {step}: loss {:.4}, bit acc {:.1}% ({} rows)",
            v.loss,
            100.0 * v.bit_acc,
            v.rows
        ));
        Ok(())
    }

    /// The run's hyperparameters for TensorBoard's HParams tab.
    pub fn hparams(
        &mut self,
        cfg: &super::config::TrainConfig,
        mc: &crate::model::ModelConfig,
        params: usize,
        world: usize,
    ) {
        use crate::tensorboard::HParam::{Number, Text};
        let n = |x: f64| Number(x);
        let list = vec![
            ("model.preset".to_string(), Text(cfg.model.preset.clone())),
            ("model.depth".into(), n(mc.depth as f64)),
            ("model.embed_dim".into(), n(mc.embed_dim as f64)),
            ("model.num_heads".into(), n(mc.num_heads as f64)),
            ("parameters".into(), n(params as f64)),
            ("d".into(), n(mc.d as f64)),
            ("optim.lr".into(), n(cfg.optim.lr)),
            // 0: the standard parametrization
            ("model.mup_base_width".into(), n(cfg.model.mup_base_width.unwrap_or(0) as f64)),
            ("model.mup_base_heads".into(), n(cfg.model.mup_base_heads.unwrap_or(0) as f64)),
            ("data.global_batch".into(), n(cfg.data.global_batch as f64)),
            ("run.steps".into(), n(cfg.run.steps as f64)),
            ("run.seed".into(), n(cfg.run.seed as f64)),
            ("bsc.p_max".into(), n(cfg.bsc.p_max)),
            ("world_size".into(), n(world as f64)),
        ];
        let group = cfg.run.dir.file_name().map_or("run".into(), |f| f.to_string_lossy().to_string());
        self.tb.write(None, |w| w.hparams(&list, &group));
    }

    /// An RGB image (row-major, interleaved) in TensorBoard's Images tab.
    pub fn image(&mut self, tag: &str, rgb: &[u8], height: u32, width: u32, step: u64) {
        self.tb.write(None, |w| w.image(tag, rgb, height, width, step));
    }

    /// A line on the console that does not tear the progress bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => console!("{line}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn step(step: u64, tokens_per_s: f64, step_time_s: f64) -> StepMetrics {
        let mfu = Some(0.5);
        StepMetrics { step, loss: 0.5, tokens_per_s, step_time_s, mfu, scale_loss: vec![0.5], ..Default::default() }
    }

    #[test]
    fn console_throughput_is_the_windows_tokens_over_its_wall_time() {
        let run = tempfile::tempdir().unwrap();
        let mut log = Logger::open(run.path(), "", 0, 4, 2).unwrap();
        let t0 = Instant::now();
        log.window = Window::new(t0);
        // steps of 100 and 600 tokens (at 100/s and 3000/s) over 4 s of wall time, data waits and
        // checkpoints included: 175 tokens/s, and MFU 0.5 for (1 + 0.2) s of the 4
        assert_eq!(log.progress(&step(1, 100.0, 1.0), t0 + Duration::from_secs(1)), None);
        let line = log.progress(&step(2, 3000.0, 0.2), t0 + Duration::from_secs(4)).unwrap();
        assert!(line.contains("| 175 tok/s | MFU 15.0%"), "{line}");
        // the next line's window starts at this one
        log.progress(&step(3, 50.0, 1.0), t0 + Duration::from_secs(5));
        let line = log.progress(&step(4, 50.0, 1.0), t0 + Duration::from_secs(6)).unwrap();
        assert!(line.starts_with("step      4/4 | loss 0.5000") && line.contains("| 50 tok/s |"), "{line}");
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

    #[test]
    fn tensorboard_goes_on_after_failed_writes_and_counts_them() {
        let run = tempfile::tempdir().unwrap();
        let mut log = Logger::open(run.path(), "seed = 1", 0, 6, 10).unwrap();
        log.tb.drill = Some(3..5); // steps 3 and 4 fail part-way through a record
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
