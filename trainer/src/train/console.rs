//! The training run's console: a progress bar with ETA on a terminal, else a plain line every
//! `log_every` steps (and at the last) with its ETA; each line gives the step's loss, accuracy,
//! learning rate and gradient norm and the throughput since the previous line, and the straggler
//! warnings ride on those lines. Only rank 0 has one.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::log::StepMetrics;
use super::rank_times::StragglerReport;

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

pub(super) struct Console {
    bar: Option<ProgressBar>,
    log_every: u64,
    total: u64,
    started: Instant,
    start_step: u64,
    window: Window,
    stragglers: StragglerReport,
}

impl Console {
    /// The console of a session that starts at `step` of `total`: a progress bar where stderr is a
    /// terminal.
    pub(super) fn open(step: u64, total: u64, log_every: u64) -> Console {
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
        Console {
            bar,
            log_every,
            total,
            started,
            start_step: step,
            window: Window::new(started),
            stragglers: StragglerReport::default(),
        }
    }

    /// Each rank's host, by rank, for the straggler warnings.
    pub(super) fn rank_hosts(&mut self, hosts: Vec<String>) {
        self.stragglers = StragglerReport::new(hosts);
    }

    /// Step `m` on the console: the bar moves, and a line (with the straggler warnings) when one is due.
    pub(super) fn step(&mut self, m: &StepMetrics) {
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

    /// A line on the console that does not tear the progress bar.
    pub(super) fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => console!("{line}"),
        }
    }

    pub(super) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A duration as `1h05m` or `3m07s`.
fn fmt_secs(s: f64) -> String {
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

    use super::super::log::test_step as step;
    use super::*;

    #[test]
    fn console_throughput_is_the_windows_tokens_over_its_wall_time() {
        let mut console = Console::open(0, 4, 2);
        let t0 = Instant::now();
        console.window = Window::new(t0);
        // steps of 100 and 600 tokens (at 100/s and 3000/s) over 4 s of wall time, data waits and
        // checkpoints included: 175 tokens/s, and MFU 0.5 for (1 + 0.2) s of the 4
        assert_eq!(console.progress(&step(1, 100.0, 1.0), t0 + Duration::from_secs(1)), None);
        let line = console.progress(&step(2, 3000.0, 0.2), t0 + Duration::from_secs(4)).unwrap();
        assert!(line.contains("| 175 tok/s | MFU 15.0%"), "{line}");
        // the next line's window starts at this one
        console.progress(&step(3, 50.0, 1.0), t0 + Duration::from_secs(5));
        let line = console.progress(&step(4, 50.0, 1.0), t0 + Duration::from_secs(6)).unwrap();
        assert!(line.starts_with("step      4/4 | loss 0.5000") && line.contains("| 50 tok/s |"), "{line}");
    }
}
