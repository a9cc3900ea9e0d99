//! TensorBoard's side of the training log: one event file at a time, whose failed writes (a full disk)
//! are counted and warned of, and whose next write goes on in a new file; a step's scalars and tags.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::log::StepMetrics;
use crate::tensorboard::EventWriter;

/// How often a TensorBoard failure that goes on is warned of again (with the count).
const TB_WARN_EVERY: Duration = Duration::from_secs(600);

/// Outages (failures after writes went on again) warned of at once, each: a later one only after
/// [`TB_WARN_EVERY`], so a flapping disk does not flood the console.
const TB_OUTAGES_WARNED: u64 = 5;

/// Fault drill: `INFINITY_FAULT_TB=STEP:COUNT` fails the TensorBoard writes of steps STEP to
/// STEP + COUNT − 1 as a full disk would, this many bytes into the step's events (a torn record).
const TB_DRILL_BYTES: usize = 100;

/// The Text tab's tag of a session's config, written at the step it starts from.
pub(super) const CONFIG_TAG: &str = "config";

/// TensorBoard's event file and how its writes fared.
pub(super) struct TbLog {
    dir: PathBuf,
    /// `None` until an event file could be made.
    writer: Option<EventWriter>,
    /// The session's start (a `SessionLog.START` at this step) and the config text, until they are written.
    preamble: Option<(u64, String)>,
    /// Writes that failed this session, and in a row.
    failed_writes: u64,
    failed_in_a_row: u64,
    /// When a failure was last warned of, and whether a success has been reported since.
    warned_at: Option<Instant>,
    warned_unresolved: bool,
    /// Outages this session: runs of failed writes.
    outages: u64,
    /// The fault drill's steps.
    pub(super) drill: Vec<std::ops::Range<u64>>,
}

impl TbLog {
    /// The log of `dir` (made at the first write), its first write to start with `preamble`: the
    /// session's start step and the config text.
    pub(super) fn new(dir: PathBuf, preamble: (u64, String)) -> TbLog {
        TbLog {
            dir,
            writer: None,
            preamble: Some(preamble),
            failed_writes: 0,
            failed_in_a_row: 0,
            warned_at: None,
            warned_unresolved: false,
            outages: 0,
            drill: tb_drill(),
        }
    }

    /// Make the events written so far durable (each write is flushed to the file already).
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.writer.as_ref().map_or(Ok(()), EventWriter::sync_data)
    }

    /// Writes that failed this session (their events are lost).
    pub(super) fn failed_writes(&self) -> u64 {
        self.failed_writes
    }

    /// Run `f` on the event file, then flush. A failure loses what `f` wrote, is counted and warned
    /// of (at once, then at most every `TB_WARN_EVERY`), and the next call goes on in a new event file.
    /// `drill_step`: the training step whose events these are, for the fault drill.
    pub(super) fn write(&mut self, drill_step: Option<u64>, f: impl FnOnce(&mut EventWriter) -> std::io::Result<()>) {
        let drill = drill_step.is_some_and(|s| self.drill.iter().any(|r| r.contains(&s)));
        match self.try_write(drill, f) {
            Ok(()) => {
                self.failed_in_a_row = 0;
                if std::mem::take(&mut self.warned_unresolved) {
                    let path = self.writer.as_ref().map_or(self.dir.clone(), |w| w.path().to_path_buf());
                    tracing::warn!(
                        "TensorBoard writes go on in {} ({} failed so far)",
                        path.display(),
                        self.failed_writes
                    );
                }
            }
            Err(e) => {
                (self.failed_writes, self.failed_in_a_row) = (self.failed_writes + 1, self.failed_in_a_row + 1);
                // (a new outage after writes went on again is said at once: the last line said all was well)
                let new_outage = self.failed_in_a_row == 1;
                self.outages += u64::from(new_outage);
                let at_once = new_outage && self.outages <= TB_OUTAGES_WARNED;
                if at_once || self.warned_at.is_none_or(|t| t.elapsed() >= TB_WARN_EVERY) {
                    tracing::warn!(
                        "TensorBoard write failed: {e} ({} in a row, {} this session): its events are lost, and the \
                         next write goes on in a new event file",
                        self.failed_in_a_row,
                        self.failed_writes
                    );
                    (self.warned_at, self.warned_unresolved) = (Some(Instant::now()), true);
                }
            }
        }
    }

    fn try_write(
        &mut self,
        drill: bool,
        f: impl FnOnce(&mut EventWriter) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let w = match self.writer.as_mut() {
            Some(w) => w,
            None => self.writer.insert(EventWriter::create(&self.dir)?),
        };
        // (the writer would reopen a spent file at its first write anyway, but the drill's budget must
        // go to the file this step's events are written to, not to the spent one)
        if w.is_broken() {
            w.reopen()?;
        }
        if drill {
            w.fail_after(TB_DRILL_BYTES);
        }
        if let Some((step, config)) = &self.preamble {
            // (also at step 0: a session that crashed before its first checkpoint left points)
            w.session_start(step + 1)?;
            w.text(CONFIG_TAG, config, *step)?;
        }
        f(w)?;
        w.flush()?;
        self.preamble = None;
        Ok(())
    }
}

/// Step `m`'s scalars: `train/*`, `perf/*`, the spike guard's z-scores, `ranks/*` with several ranks,
/// `scale/*` per scale, with several buckets (`buckets`: their schedule names) `bucket/NAME/*`, where
/// every scale keeps one shape, and in a mix (`datasets`: their names) `dataset/NAME/*`.
pub(super) fn step_scalars(
    w: &mut EventWriter,
    m: &StepMetrics,
    (buckets, datasets): (Option<&[String]>, Option<&[String]>),
) -> std::io::Result<()> {
    for (tag, v) in [
        ("train/loss", m.loss),
        ("train/bit_acc", m.bit_acc),
        ("train/token_acc", m.token_acc),
        ("train/lr", m.lr),
        ("train/grad_norm", m.grad_norm),
        ("perf/tokens_per_s", m.tokens_per_s),
        ("perf/samples_per_s", m.samples_per_s),
        ("perf/step_time_s", m.step_time_s),
        ("perf/data_s", m.data_s),
        ("perf/optimizer_s", m.optimizer_s),
        ("perf/tflops_per_device", m.tflops_per_device),
        ("train/skipped_steps", m.skipped_steps as f64),
    ] {
        w.scalar(tag, v, m.step)?;
    }
    if let Some(mfu) = m.mfu {
        w.scalar("perf/mfu", mfu, m.step)?;
    }
    if let Some(wd) = m.weight_decay {
        w.scalar("train/weight_decay", wd, m.step)?;
    }
    if let Some(clip) = m.clip {
        w.scalar("train/clip", clip, m.step)?;
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
    if let Some(name) = datasets.zip(m.dataset).and_then(|(d, i)| d.get(i as usize)) {
        for (tag, v) in [("loss", m.loss), ("bit_acc", m.bit_acc), ("token_acc", m.token_acc)] {
            w.scalar(&format!("dataset/{name}/{tag}"), v, m.step)?;
        }
    }
    Ok(())
}

/// The `INFINITY_FAULT_TB` drill's steps (`STEP:COUNT`, comma-separated for several outages), if set.
fn tb_drill() -> Vec<std::ops::Range<u64>> {
    let spec = std::env::var("INFINITY_FAULT_TB").unwrap_or_default();
    let range = |part: &str| {
        let (first, count) = part.trim().split_once(':')?;
        let first: u64 = first.parse().ok()?;
        Some(first..first + count.parse::<u64>().ok()?)
    };
    spec.split(',').filter_map(range).collect()
}
