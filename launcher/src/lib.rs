//! Scale-out without the model: the `infinity launch` agent (`agent`), the rendezvous store (`store`),
//! the process's place in the group from the environment (`env`), and communicators (`comm`: a TCP ring
//! for CPU ranks; NCCL for GPUs, feature `cuda`).

/// `println!` that ignores a closed stdout: a log pipe that died (a launcher killed, `| head`) must
/// not stop a run mid-way, nor turn its exit code into a panic's. (The trainer's `#[macro_use]`s them.)
/// The line goes out in one write, so a process stopped mid-way leaves no half line.
#[macro_export]
macro_rules! console {
    ($($arg:tt)*) => {
        $crate::write_whole(&mut std::io::stdout().lock(), format_args!($($arg)*), true)
    };
}

/// `eprintln!` that ignores a closed stderr (as [`console!`]). stderr is unbuffered: `writeln!` would
/// write each piece of the format on its own, and a rank the agent stops between two of them would
/// leave `error: ` with no message.
#[macro_export]
macro_rules! console_err {
    ($($arg:tt)*) => {
        $crate::write_whole(&mut std::io::stderr().lock(), format_args!($($arg)*), true)
    };
}

/// `print!` that ignores a closed stdout (as [`console!`]).
#[macro_export]
macro_rules! console_text {
    ($($arg:tt)*) => {
        $crate::write_whole(&mut std::io::stdout().lock(), format_args!($($arg)*), false)
    };
}

/// `println!` for output another program reads (`infinity sweep --print`'s command lines, for a
/// scheduler): as [`console!`], but never with the time in front ([`LOG_TIME_VAR`]).
#[macro_export]
macro_rules! console_data {
    ($($arg:tt)*) => {
        $crate::write_lines(&mut std::io::stdout().lock(), format_args!($($arg)*), true, false)
    };
}

/// Formats `args` (and a newline if `line`) into one buffer and writes it in one call, ignoring errors:
/// the console macros' body. Each line starts with the time where [`time_prefix`] says so.
#[doc(hidden)]
pub fn write_whole(w: &mut impl std::io::Write, args: std::fmt::Arguments, line: bool) {
    write_lines(w, args, line, line)
}

/// [`write_whole`], each line with the time in front only where `timed` (and [`time_prefix`] says so).
#[doc(hidden)]
pub fn write_lines(w: &mut impl std::io::Write, args: std::fmt::Arguments, line: bool, timed: bool) {
    let mut text = std::fmt::format(args);
    if let Some(time) = time_prefix().filter(|_| timed) {
        // (a report's further lines too: each line of the log says when)
        text = format!("{time}{}", text.replace('\n', &format!("\n{time}")));
    }
    if line {
        text.push('\n');
    }
    let _ = w.write_all(text.as_bytes());
}

/// The variable that puts the UTC time at the start of every console line of a process (its own, and
/// an agent's ranks' as it forwards them and writes their logs): a job's log then says when the group
/// failed, restarted or stalled, as torchrun's do.
pub const LOG_TIME_VAR: &str = "INFINITY_LOG_TIME";

/// `2026-12-07T02:10:03.123Z ` (the time now, to the millisecond, and a space) when
/// [`LOG_TIME_VAR`] is `1` (or `true`, `yes`, `on`), else `None`. Read once per process; a value that
/// is neither on nor off (`0`, `false`, `no`, `off`, empty) is warned of once and taken as off.
pub fn time_prefix() -> Option<String> {
    static SETTING: std::sync::OnceLock<(bool, Option<String>)> = std::sync::OnceLock::new();
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // (read without writing: the caller may hold stderr's lock, which another thread's first call, inside
    // the initialisation, would then wait for)
    let (on, unknown) = SETTING.get_or_init(|| {
        let v = std::env::var(LOG_TIME_VAR).unwrap_or_default();
        let (on, known) = log_time_setting(&v);
        (on, (!known).then_some(v))
    });
    if let Some(v) = unknown.as_ref().filter(|_| !WARNED.swap(true, std::sync::atomic::Ordering::SeqCst)) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "warning: {LOG_TIME_VAR}={v:?}: expected 1 (times on the console lines) or 0; taken as 0"
        );
    }
    on.then(|| chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ ").to_string())
}

/// Whether a [`LOG_TIME_VAR`] value `v` turns the times on, and whether it is one of the values known.
fn log_time_setting(v: &str) -> (bool, bool) {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => (true, true),
        "" | "0" | "false" | "no" | "off" => (false, true),
        _ => (false, false),
    }
}

/// A count a command line takes that must be at least 1 (ranks, iterations, a batch, a world size), for
/// clap's `value_parser`.
pub fn positive() -> impl clap::builder::TypedValueParser<Value = usize> {
    positive_of::<usize>()
}

/// A number of seconds > 0 (a grace or timeout of 0 would skip what it gives time to).
pub fn positive_seconds() -> impl clap::builder::TypedValueParser<Value = f64> {
    use clap::builder::TypedValueParser;
    // (at most a week, as the config's `dist.timeout_s`: a deadline must fit the clock)
    clap::builder::StringValueParser::new().try_map(|s| match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= MAX_SECONDS => Ok(x),
        _ => Err(format!("expected a number of seconds > 0 and at most {MAX_SECONDS} (a week), found `{s}`")),
    })
}

/// The longest wait a seconds flag takes ([`positive_seconds`]).
pub const MAX_SECONDS: f64 = 604_800.0;

/// A SLURM `--time` in seconds (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`); `None`
/// for what it cannot read (`UNLIMITED`).
pub fn time_limit_s(text: &str) -> Option<u64> {
    let text = text.trim();
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (d.parse::<u64>().ok()?, rest),
        None => (0, text),
    };
    let parts: Vec<u64> = rest.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let (h, m, s) = match (text.contains('-'), parts.as_slice()) {
        (false, &[m]) => (0, m, 0),
        (false, &[m, s]) => (0, m, s),
        (_, &[h, m, s]) => (h, m, s),
        (true, &[h]) => (h, 0, 0),
        (true, &[h, m]) => (h, m, 0),
        _ => return None,
    };
    days.checked_mul(24)?.checked_add(h)?.checked_mul(60)?.checked_add(m)?.checked_mul(60)?.checked_add(s)
}

/// `--time-limit`: a positive time in sbatch's `--time` formats, as seconds.
pub fn time_limit() -> impl clap::builder::TypedValueParser<Value = u64> {
    use clap::builder::TypedValueParser;
    // (at most a year: no job runs longer, and the deadline must fit the clock)
    clap::builder::StringValueParser::new().try_map(|s| match time_limit_s(&s) {
        Some(t) if t > 0 && t <= 366 * 86_400 => Ok(t),
        Some(0) => Err(format!("`{s}`: sbatch's 0 is no limit; leave --time-limit out for none")),
        _ => Err(format!(
            "expected a time as sbatch --time takes it (MM, MM:SS, HH:MM:SS, D-HH:MM:SS; minutes alone, up to a \
             year), found `{s}`"
        )),
    })
}

/// [`positive`] for another unsigned type (`u64` rows and budgets).
pub fn positive_of<T>() -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + PartialOrd + From<u8> + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    // (clap's ranged parser says "0 is not in 1..18446744073709551615")
    clap::builder::StringValueParser::new().try_map(|s| match s.trim().parse::<T>() {
        Ok(n) if n > T::from(0) => Ok(n),
        _ => Err(format!("expected a whole number ≥ 1, found `{s}`")),
    })
}

/// Whether signal `sig` is ignored in this process now (`SIG_IGN`). Asked before a handler is installed,
/// it says whether the process was started with it ignored (`nohup` ignores SIGHUP; a shell's
/// background job, SIGINT and SIGQUIT): a program that stops on the terminal's signals keeps them
/// ignored then, as shells and Python do, or `nohup` would not keep it running.
pub fn signal_ignored(sig: i32) -> bool {
    // SAFETY: sigaction(2) with no new action only reads the present one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// SIGINTs closer together than this are one Ctrl-C delivered twice (by the terminal's process group
/// and by a wrapper that forwards it, as `timeout` does), not a second press (nanoseconds).
pub const SAME_PRESS_NS: u64 = 100_000_000;

/// CLOCK_MONOTONIC in nanoseconds (async-signal-safe: clock_gettime(2)), for [`SAME_PRESS_NS`].
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// `n` and the noun, plural unless `n` is 1 ("1 image", "4 images", "24 classes").
pub fn plural(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ if ["s", "x", "ch", "sh"].iter().any(|e| noun.ends_with(e)) => format!("{n} {noun}es"),
        _ => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
#[test]
fn plural_forms() {
    let forms = [plural(1, "rank"), plural(4, "rank"), plural(2, "class"), plural(1, "class")];
    assert_eq!(forms, ["1 rank", "4 ranks", "2 classes", "1 class"]);
}

pub mod agent;
pub mod bench;
pub mod comm;
pub mod env;
pub mod store;

#[cfg(test)]
mod tests {
    /// Counts the writes it is given.
    struct Writes(Vec<Vec<u8>>);

    impl std::io::Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_console_line_is_one_write() {
        let mut w = Writes(Vec::new());
        let e = "the dataset is missing";
        super::write_whole(&mut w, format_args!("[rank {}] error: {e}", 1), true);
        assert_eq!(w.0, [b"[rank 1] error: the dataset is missing\n".to_vec()]);
    }

    #[test]
    fn log_time_values_read_as_on_or_off_and_others_are_named() {
        for v in ["1", "true", "Yes", " on "] {
            assert_eq!(super::log_time_setting(v), (true, true), "{v:?}");
        }
        for v in ["", "0", "false", "NO", "off"] {
            assert_eq!(super::log_time_setting(v), (false, true), "{v:?}");
        }
        assert_eq!(super::log_time_setting("2"), (false, false));
    }

    #[test]
    fn one_of_a_noun_is_singular() {
        assert_eq!([super::plural(1, "local rank"), super::plural(2, "GPU")], ["1 local rank", "2 GPUs"]);
        assert_eq!(super::plural(0, "shard"), "0 shards");
    }

    #[test]
    fn slurm_times_read_as_seconds() {
        for (t, s) in [
            ("30", 1800),
            ("30:15", 1815),
            ("24:00:00", 86400),
            ("1-2", 93600),
            ("1-02:30", 95400),
            ("2-00:00:10", 172810),
        ] {
            assert_eq!(super::time_limit_s(t), Some(s), "{t}");
        }
        assert_eq!(super::time_limit_s("UNLIMITED"), None);
        assert_eq!(super::time_limit_s("1:2:3:4"), None);
        assert_eq!(super::time_limit_s("99999999999999999999999-0"), None, "too large to read");
        assert_eq!(super::time_limit_s("999999999999999-0"), None, "its seconds overflow");
    }
}
