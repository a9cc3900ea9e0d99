//! What a long rendezvous wait says while it waits: about every 30 s, what is still missing and how long
//! until the timeout, with the connections the store refused meanwhile (a wrong token, another run id),
//! which from the waiting side alone look like a node that never came.

use std::time::{Duration, Instant};

/// How often a rendezvous wait reports.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// [`PROGRESS_EVERY`], or `INFINITY_RDZV_PROGRESS_S` seconds (undocumented: for tests that cannot wait
/// 30 s).
pub fn progress_every() -> Duration {
    let env = std::env::var("INFINITY_RDZV_PROGRESS_S").ok().and_then(|s| s.trim().parse::<f64>().ok());
    env.filter(|s| s.is_finite() && *s > 0.0).map_or(PROGRESS_EVERY, Duration::from_secs_f64)
}

/// The clock of one wait of up to `timeout`, reporting every `every`.
pub struct Progress {
    t0: Instant,
    timeout: Duration,
    every: Duration,
    /// When (since `t0`) the next report is due.
    next: Duration,
    /// The setting that bounds the wait, for the reports: `--rdzv-timeout-s`.
    setting: &'static str,
}

impl Progress {
    pub fn new(timeout: Duration, every: Duration, setting: &'static str) -> Progress {
        let every = every.max(Duration::from_millis(1));
        Progress { t0: Instant::now(), timeout, every, next: every, setting }
    }

    /// A wait of up to `timeout` reporting every [`progress_every`].
    pub fn start(timeout: Duration, setting: &'static str) -> Progress {
        Self::new(timeout, progress_every(), setting)
    }

    /// How long to wait before looking again: until the next report, or the timeout.
    pub fn slice(&self) -> Duration {
        self.next.min(self.timeout).saturating_sub(self.t0.elapsed())
    }

    pub fn timed_out(&self) -> bool {
        self.t0.elapsed() >= self.timeout
    }

    /// Whether a report is due (the wait goes on); the next is then due `every` later.
    pub fn due(&mut self) -> bool {
        let now = self.t0.elapsed();
        if now < self.next || self.timed_out() {
            return false;
        }
        while self.next <= now {
            self.next += self.every;
        }
        true
    }

    /// `30 s so far, 270 s until --rdzv-timeout-s`
    pub fn so_far(&self) -> String {
        let now = self.t0.elapsed();
        format!(
            "{:.0} s so far, {:.0} s until {}",
            now.as_secs_f64(),
            self.timeout.saturating_sub(now).as_secs_f64(),
            self.setting
        )
    }
}

/// What a rendezvous timeout tells to do about missing agents (when the store refused none).
pub const START_THERE: &str = " (start `infinity launch` there)";

/// The store's refusals as a clause to append: `; the store refused agent 1 from 10.0.0.2 (5 s ago): …`
/// (empty without any).
pub fn refused_clause(refused: &[String]) -> String {
    match refused {
        [] => String::new(),
        lines => format!("; the store refused {}", lines.join("; ")),
    }
}

/// A rendezvous timeout: `rendezvous RUN/settings: node ranks [1] of 2 never arrived within 300 s`,
/// then the store's refusals, or without any, `hint` ([`START_THERE`]).
pub fn never_arrived(
    prefix: &str,
    name: &str,
    missing: &[String],
    world: usize,
    timeout: Duration,
    hint: &str,
    refused: &[String],
) -> String {
    let hint = if refused.is_empty() { hint } else { "" };
    format!(
        "rendezvous {prefix}: {name}s [{}] of {world} never arrived within {:.0} s{hint}{}",
        missing.join(", "),
        timeout.as_secs_f64(),
        refused_clause(refused)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_come_every_interval_until_the_timeout() {
        let every = Duration::from_millis(100);
        let mut p = Progress::new(Duration::from_millis(350), every, "--rdzv-timeout-s");
        assert!(!p.due() && p.slice() <= every);
        let mut reports = 0;
        while !p.timed_out() {
            std::thread::sleep(p.slice());
            reports += p.due() as usize;
        }
        // (three on time; a sleep overrunning a whole interval on a loaded machine merges two)
        assert!((2..=3).contains(&reports), "{reports} reports");
        assert!(!p.due());
        assert_eq!(p.slice(), Duration::ZERO);
        assert!(p.so_far().ends_with("0 s until --rdzv-timeout-s"), "{}", p.so_far());
    }

    #[test]
    fn a_timeout_names_refusals_instead_of_the_hint() {
        let t = Duration::from_secs(10);
        let missing = ["1".to_string()];
        let hint = START_THERE;
        assert_eq!(
            never_arrived("run/settings", "node rank", &missing, 2, t, hint, &[]),
            "rendezvous run/settings: node ranks [1] of 2 never arrived within 10 s (start `infinity launch` there)"
        );
        let refused = ["agent 1 from 10.0.0.2 (3 s ago): wrong token".to_string()];
        assert_eq!(
            never_arrived("run/settings", "node rank", &missing, 2, t, hint, &refused),
            "rendezvous run/settings: node ranks [1] of 2 never arrived within 10 s; the store refused agent 1 from \
             10.0.0.2 (3 s ago): wrong token"
        );
    }
}
