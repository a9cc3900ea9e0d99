//! What a training step reports, and where: `metrics.jsonl` (every step), TensorBoard (every step, plus
//! sample grids and the config), and the console (a progress bar with ETA on a terminal, a plain line
//! every `log_every` steps otherwise). Logging never stops training: a TensorBoard write error disables
//! TensorBoard with a warning; only the JSONL file is required.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::tensorboard::EventWriter;

/// Metrics of one optimiser step (averaged over its micro-batches).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    pub bit_acc: f64,
    pub token_acc: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub samples_per_s: f64,
    pub step_time_s: f64,
    /// Model FLOPs utilisation, when the device peak is configured.
    pub mfu: Option<f64>,
    pub bucket: u16,
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
    pub grad_z: Option<f64>,
    /// The spread of the ranks' own work and data waits (with more than one rank).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranks: Option<super::rank_times::RankTimes>,
    /// On a GPU: the most device memory this rank's allocator held during the step (GiB; what
    /// `model::memory` estimates, without the CUDA context and libraries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_mem_peak_gib: Option<f64>,
}

pub struct Logger {
    jsonl: File,
    /// `val.jsonl`, opened at the first evaluation.
    val: Option<File>,
    dir: std::path::PathBuf,
    tb: Option<EventWriter>,
    bar: Option<ProgressBar>,
    log_every: u64,
    total: u64,
    started: Instant,
    start_step: u64,
}

impl Logger {
    /// Open the run's logs, continuing them when resuming at `step`: what an interrupted session logged
    /// after that step is dropped (from the JSON-lines files, and by TensorBoard on reading).
    pub fn open(run: &Path, config_toml: &str, step: u64, total: u64, log_every: u64) -> Result<Logger> {
        for log in ["metrics.jsonl", "val.jsonl"] {
            super::rundir::truncate_log(&run.join(log), step)?;
        }
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("metrics.jsonl"))
            .with_context(|| format!("opening {}", run.join("metrics.jsonl").display()))?;
        let tb = match EventWriter::create(&run.join("tb")) {
            Ok(mut w) => {
                // (also at step 0: a session that crashed before its first checkpoint left points)
                let _ = w.session_start(step + 1);
                let _ = w.text("config", &format!("```toml\n{config_toml}\n```"), step);
                Some(w)
            }
            Err(e) => {
                tracing::warn!("TensorBoard logging disabled: {e}");
                None
            }
        };
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
                    .expect("a valid template"),
            );
            bar.set_position(step);
            bar
        });
        Ok(Logger {
            jsonl,
            val: None,
            dir: run.to_path_buf(),
            tb,
            bar,
            log_every,
            total,
            started: Instant::now(),
            start_step: step,
        })
    }

    pub fn step(&mut self, m: &StepMetrics) -> Result<()> {
        writeln!(self.jsonl, "{}", serde_json::to_string(m)?).context("writing metrics.jsonl")?;
        self.tensorboard(|w| {
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
            if let Some(gib) = m.gpu_mem_peak_gib {
                w.scalar("perf/gpu_mem_peak_gib", gib, m.step)?;
            }
            for (tag, z) in [("train/loss_z", m.loss_z), ("train/grad_norm_z", m.grad_z)] {
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
            w.flush()
        });
        let line = format!(
            "step {:>6}/{} | loss {:.4} | bit acc {:5.1}% | lr {:.2e} | grad {:.3} | {:.0} tok/s{}{}",
            m.step,
            self.total,
            m.loss,
            100.0 * m.bit_acc,
            m.lr,
            m.grad_norm,
            m.tokens_per_s,
            m.mfu.map_or(String::new(), |u| format!(" | MFU {:.1}%", 100.0 * u)),
            m.gpu_mem_peak_gib.map_or(String::new(), |g| format!(" | GPU mem {g:.2} GiB")),
        );
        let logged = m.step.is_multiple_of(self.log_every) || m.step == self.total;
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(format!("loss {:.4} bit acc {:.1}%", m.loss, 100.0 * m.bit_acc));
                if logged {
                    bar.println(line);
                }
            }
            None if logged => {
                let done = (m.step - self.start_step) as f64;
                let eta = self.started.elapsed().as_secs_f64() / done.max(1.0) * (self.total - m.step) as f64;
                console!("{line} | ETA {}", fmt_secs(eta));
            }
            None => {}
        }
        if let Some(line) = m.ranks.as_ref().filter(|_| logged).and_then(|r| r.straggler(m.step)) {
            tracing::warn!("{line}");
        }
        Ok(())
    }

    /// A validation result: `val.jsonl`, TensorBoard `val/*`, a console line.
    pub fn val(&mut self, step: u64, v: &super::val::ValMetrics) -> Result<()> {
        if self.val.is_none() {
            let p = self.dir.join("val.jsonl");
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&p);
            self.val = Some(f.with_context(|| format!("opening {}", p.display()))?);
        }
        let line = serde_json::json!({ "step": step, "loss": v.loss, "bit_acc": v.bit_acc, "rows": v.rows });
        writeln!(self.val.as_mut().unwrap(), "{line}").context("writing val.jsonl")?;
        self.tensorboard(|w| {
            w.scalar("val/loss", v.loss, step)?;
            w.scalar("val/bit_acc", v.bit_acc, step)?;
            w.flush()
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
        self.tensorboard(|w| w.hparams(&list, &group).and_then(|_| w.flush()));
    }

    /// An RGB image (row-major, interleaved) in TensorBoard's Images tab.
    pub fn image(&mut self, tag: &str, rgb: &[u8], height: u32, width: u32, step: u64) {
        self.tensorboard(|w| w.image(tag, rgb, height, width, step).and_then(|_| w.flush()));
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

    fn tensorboard(&mut self, f: impl FnOnce(&mut EventWriter) -> std::io::Result<()>) {
        if let Some(w) = self.tb.as_mut() {
            if let Err(e) = f(w) {
                tracing::warn!("TensorBoard write failed, logging disabled: {e}");
                self.tb = None;
            }
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
