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
    pub skipped_steps: u64,
}

pub struct Logger {
    jsonl: File,
    tb: Option<EventWriter>,
    bar: Option<ProgressBar>,
    log_every: u64,
    total: u64,
    started: Instant,
    start_step: u64,
}

impl Logger {
    /// Open the run's logs, continuing them when resuming at `step`.
    pub fn open(run: &Path, config_toml: &str, step: u64, total: u64, log_every: u64) -> Result<Logger> {
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("metrics.jsonl"))
            .with_context(|| format!("opening {}", run.join("metrics.jsonl").display()))?;
        let tb = match EventWriter::create(&run.join("tb")) {
            Ok(mut w) => {
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
        Ok(Logger { jsonl, tb, bar, log_every, total, started: Instant::now(), start_step: step })
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
            ] {
                w.scalar(tag, v, m.step)?;
            }
            if let Some(mfu) = m.mfu {
                w.scalar("perf/mfu", mfu, m.step)?;
            }
            for (s, (l, a)) in m.scale_loss.iter().zip(&m.scale_bit_acc).enumerate() {
                w.scalar(&format!("scale/loss_s{s:02}"), *l, m.step)?;
                w.scalar(&format!("scale/bit_acc_s{s:02}"), *a, m.step)?;
            }
            w.flush()
        });
        let line = format!(
            "step {:>6}/{} | loss {:.4} | bit acc {:5.1}% | lr {:.2e} | grad {:.3} | {:.0} tok/s{}",
            m.step,
            self.total,
            m.loss,
            100.0 * m.bit_acc,
            m.lr,
            m.grad_norm,
            m.tokens_per_s,
            m.mfu.map_or(String::new(), |u| format!(" | MFU {:.1}%", 100.0 * u)),
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
                println!("{line} | ETA {}", fmt_secs(eta));
            }
            None => {}
        }
        Ok(())
    }

    /// An RGB image (row-major, interleaved) in TensorBoard's Images tab.
    pub fn image(&mut self, tag: &str, rgb: &[u8], height: u32, width: u32, step: u64) {
        self.tensorboard(|w| w.image(tag, rgb, height, width, step).and_then(|_| w.flush()));
    }

    /// A line on the console that does not tear the progress bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
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
