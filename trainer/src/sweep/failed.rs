//! The record of a run's failed attempt under a local `infinity sweep` (`RUN/sweep-failed.json`: when,
//! and the exit status), so that `--status` can tell it later. Without it, a resume that fails leaves
//! the earlier session's `summary.json` in place (`"preempted": true`, say), and the run would read as
//! stopped. The sweep removes the record when it starts the run again; a later session's own
//! `summary.json` (a resume by hand that got past its setup) outdates it.

use std::path::Path;

use serde_json::json;

/// The record's file in the run folder.
pub const FAILED_FILE: &str = "sweep-failed.json";

/// Records that the attempt at the run in `dir` failed with `status` (`exit status: 2`); a run folder
/// that cannot take it (the run never made one) is passed over: the sweep's own line says it failed.
pub fn record(dir: &Path, status: &str) {
    if !dir.is_dir() {
        return;
    }
    let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let text = json!({ "time": time, "status": status, "log": "train.log" }).to_string() + "\n";
    let path = dir.join(FAILED_FILE);
    if let Err(e) = infinity_data::manifest::write_atomic(&path, text.as_bytes()) {
        tracing::warn!("{}: the failure is not recorded for --status: {e}", path.display());
    }
}

/// An attempt starts: an earlier failure no longer says where the run stands.
pub fn clear(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FAILED_FILE));
}

/// The exit status of the run's failed attempt, when that is the newest news of it: recorded after its
/// `summary.json` was last written (or with none).
pub fn last_failure(dir: &Path) -> Option<String> {
    let path = dir.join(FAILED_FILE);
    let recorded = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let summary = std::fs::metadata(dir.join("summary.json")).and_then(|m| m.modified());
    if summary.is_ok_and(|s| s > recorded) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    Some(v["status"].as_str().unwrap_or("unknown exit status").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_news_until_a_later_summary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // (the files' times set outright: a file system may keep them to the second)
        let at = |name: &str, secs: u64| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + secs);
            std::fs::File::options().write(true).open(d.join(name)).unwrap().set_modified(t).unwrap();
        };
        std::fs::write(d.join("summary.json"), "{\"preempted\": true}").unwrap();
        at("summary.json", 0);
        assert_eq!(last_failure(d), None);
        record(d, "exit status: 2");
        at(FAILED_FILE, 10);
        assert_eq!(last_failure(d).as_deref(), Some("exit status: 2"));
        // a later session's summary outdates it
        std::fs::write(d.join("summary.json"), "{\"finished\": true}").unwrap();
        at("summary.json", 20);
        assert_eq!(last_failure(d), None);
        record(d, "signal: 9 (SIGKILL)");
        clear(d);
        assert_eq!(last_failure(d), None);
        record(&d.join("never-made"), "exit status: 1");
        assert!(!d.join("never-made").exists());
    }
}
