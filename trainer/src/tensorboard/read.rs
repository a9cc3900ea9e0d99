//! Reading event files, every record's framing checked as TensorBoard's reader checks it: the scalars
//! and steps of a file, and a resumed run's event files cut back to the step it resumes at.
//!
//! The cut is TensorBoard's purge done on disk: a resumed session's `SessionLog.START` makes the Python
//! loader drop an earlier session's later events, but the Rust data server (the default since
//! TensorBoard 2.5) ignores it and would show them, with the HParams tab's metrics taken from them.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::masked_crc;
use super::proto::{Event, EventWhat, ValueKind};

/// Where [`truncate_event_file`] writes a file's kept records before renaming them over it (in the
/// file's folder; no `tfevents` in the name, so TensorBoard never reads it).
const TMP_NAME: &str = ".truncating.tmp";

/// Why a walk over a file's records stopped before its end.
enum Stop {
    Io(std::io::Error),
    /// The file ends inside a record (a crash mid-write), at this byte.
    Torn(u64),
    /// A record whose checksum or contents are wrong, at this byte, and what is wrong.
    Corrupt(u64, String),
}

impl Stop {
    /// As an error naming the file (and the byte where its records stop being whole).
    fn into_io(self, path: &Path) -> std::io::Error {
        let (at, what) = match self {
            Stop::Io(e) => return std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
            Stop::Torn(at) => (at, "a torn record".to_string()),
            Stop::Corrupt(at, what) => (at, what),
        };
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {what} at byte {at}", path.display()))
    }
}

/// The records of an event file, in order.
struct Records {
    input: BufReader<File>,
    /// The file's length, and the offset of the next record.
    len: u64,
    at: u64,
}

impl Records {
    fn open(path: &Path) -> std::io::Result<Records> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Records { input: BufReader::new(file), len, at: 0 })
    }

    /// The next record's bytes (framing included) and event; `None` at the end of the file.
    fn next_record(&mut self) -> Result<Option<(Vec<u8>, Event)>, Stop> {
        let (at, left) = (self.at, self.len.saturating_sub(self.at));
        if left == 0 {
            return Ok(None);
        }
        if left < 16 {
            return Err(Stop::Torn(at));
        }
        let mut head = [0u8; 12];
        self.input.read_exact(&mut head).map_err(Stop::Io)?;
        let crc = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if crc(&head[8..]) != masked_crc(&head[..8]) {
            return Err(Stop::Corrupt(at, "a corrupt record length".into()));
        }
        let len = u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
        let size = len.checked_add(16).filter(|&n| n <= left).ok_or(Stop::Torn(at))?;
        let mut record = head.to_vec();
        record.resize(size as usize, 0);
        self.input.read_exact(&mut record[12..]).map_err(Stop::Io)?;
        let (data, data_crc) = record[12..].split_at(len as usize);
        if crc(data_crc) != masked_crc(data) {
            return Err(Stop::Corrupt(at, "a corrupt record".into()));
        }
        let event = Event::decode(data).map_err(|e| Stop::Corrupt(at, format!("an undecodable event ({e})")))?;
        self.at += size;
        Ok(Some((record, event)))
    }
}

/// The events of an event file, every record checked: an error names the offset of the first torn or
/// corrupt record (after which TensorBoard reads nothing).
fn read_events(path: &Path) -> std::io::Result<Vec<Event>> {
    let mut records = Records::open(path).map_err(|e| Stop::Io(e).into_io(path))?;
    let mut events = Vec::new();
    while let Some((_, event)) = records.next_record().map_err(|s| s.into_io(path))? {
        events.push(event);
    }
    Ok(events)
}

/// A scalar event, as [`read_scalars`] finds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    pub value: f32,
}

/// The scalars of an event file, every record's framing checked as TensorBoard's reader checks it: an
/// error names the offset of the first torn or corrupt record (after which TensorBoard reads nothing).
pub fn read_scalars(path: &Path) -> std::io::Result<Vec<Scalar>> {
    let mut scalars = Vec::new();
    for event in read_events(path)? {
        if let Some(EventWhat::Summary(summary)) = event.what {
            for v in summary.value {
                if let Some(ValueKind::SimpleValue(value)) = v.value {
                    scalars.push(Scalar { tag: v.tag, step: event.step, value });
                }
            }
        }
    }
    Ok(scalars)
}

/// The step of every event of an event file (of any kind: scalars, images, text, hparams, session
/// marks, the file version), in order; checked as [`read_scalars`] checks.
pub fn read_steps(path: &Path) -> std::io::Result<Vec<i64>> {
    Ok(read_events(path)?.iter().map(|e| e.step).collect())
}

/// What [`truncate_event_file`] did to a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Truncated {
    /// Nothing past the step, and no torn record: the file is as it was, not rewritten.
    Untouched,
    /// Rewritten with its events up to the step: `dropped` later ones went, and a torn last record
    /// (`torn_tail`, a crash mid-write) with them.
    Rewritten { dropped: usize, torn_tail: bool },
}

/// Cut an event file back to its events at steps up to `step`, any kind of event (scalars, images,
/// text, hparams, session marks), the kept records byte for byte, but summaries at `step` itself of the
/// tags in `restated` (what a session resuming there writes at its start step again: its config text,
/// which would otherwise show twice at the step when a session that started there too was cut). A file with none past `step` and
/// whole to its end is left untouched (a long run's event files are large); another is rewritten
/// atomically under its own name (TensorBoard reads a run's files in name order): the kept records go
/// to a file beside it, synced and renamed over it. A torn last record (a crash mid-write) goes with
/// the later events, and so does a zeroed end (a power loss); a corrupt record before, or a file that
/// cannot be read, is an error and the file stays as it was.
pub fn truncate_event_file(path: &Path, step: u64, restated: &[&str]) -> std::io::Result<Truncated> {
    let last = i64::try_from(step).unwrap_or(i64::MAX);
    // first a look (nothing written), then, only when something goes, the rewrite
    let mut records = Records::open(path).map_err(|e| Stop::Io(e).into_io(path))?;
    let (mut dropped, mut torn_tail) = (0, false);
    loop {
        match records.next_record() {
            Ok(Some((_, event))) => dropped += usize::from(!kept(&event, last, restated)),
            Ok(None) => break,
            Err(Stop::Torn(_)) => {
                torn_tail = true;
                break;
            }
            // (a power loss can leave a file's last blocks zeroed: a torn end too)
            Err(Stop::Corrupt(at, _)) if zeros_from(path, at)? => {
                torn_tail = true;
                break;
            }
            Err(stop) => return Err(stop.into_io(path)),
        }
    }
    if dropped == 0 && !torn_tail {
        return Ok(Truncated::Untouched);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(TMP_NAME);
    let written = write_kept(path, &tmp, (last, restated), torn_tail).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::new(e.kind(), format!("rewriting {}: {e}", path.display())));
    }
    infinity_data::manifest::sync_dir(dir); // (the rename itself)
    Ok(Truncated::Rewritten { dropped, torn_tail })
}

/// Whether [`truncate_event_file`] keeps `event`: of a step before `last`, or at `last` and no summary of
/// a tag in `restated`.
fn kept(event: &Event, last: i64, restated: &[&str]) -> bool {
    let restates = || match &event.what {
        Some(EventWhat::Summary(summary)) => summary.value.iter().any(|v| restated.contains(&v.tag.as_str())),
        _ => false,
    };
    event.step < last || (event.step == last && !restates())
}

/// The records of `path` that [`kept`] keeps, written to `tmp` and synced; up to a torn one, or with
/// `torn_tail` the first one not whole (a zeroed end, which [`truncate_event_file`] has checked).
fn write_kept(path: &Path, tmp: &Path, (last, restated): (i64, &[&str]), torn_tail: bool) -> std::io::Result<()> {
    let mut records = Records::open(path)?;
    let mut out = BufWriter::new(File::create(tmp)?);
    loop {
        match records.next_record() {
            Ok(Some((record, event))) if kept(&event, last, restated) => out.write_all(&record)?,
            Ok(Some(_)) => {}
            Ok(None) | Err(Stop::Torn(_)) => break,
            Err(Stop::Corrupt(..)) if torn_tail => break,
            Err(stop) => return Err(stop.into_io(path)),
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Whether `path` holds only zero bytes from byte `at` on.
fn zeros_from(path: &Path, at: u64) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path).map_err(|e| Stop::Io(e).into_io(path))?;
    file.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// The event files in `dir` (plain files with `tfevents` in the name), in the order TensorBoard reads
/// them (by name); none when `dir` does not exist.
pub fn event_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tfevents") && e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// A run started afresh: remove the event files in `dir` (the run's `tb/`) that earlier sessions, which
/// wrote no checkpoint, left. Never fails: a file that cannot be removed is warned of.
pub fn remove_event_files(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(TMP_NAME));
    let files = match event_files(dir) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            return tracing::warn!("TensorBoard: cannot list {} to remove an earlier start's files: {e}", dir.display())
        }
    };
    for file in files {
        match std::fs::remove_file(&file) {
            Ok(()) => tracing::info!("TensorBoard: {} removed (of a session that wrote no checkpoint)", file.display()),
            Err(e) => tracing::warn!("TensorBoard: cannot remove {} of an earlier start: {e}", file.display()),
        }
    }
}

/// A run resumed at `step`: cut every event file in `dir` (the run's `tb/`) back to its events up to
/// `step` ([`truncate_event_file`], which also drops the `restated` tags at `step`), so that what an
/// interrupted or abandoned session logged after it is gone whatever reads the folder. Never fails (logging never stops training): a file that cannot
/// be cut is warned of, naming it, and left as it was; a torn last record is warned of and dropped.
/// Returns each event file rewritten, and how.
pub fn truncate_event_dir(dir: &Path, step: u64, restated: &[&str]) -> Vec<(PathBuf, Truncated)> {
    // (a rewrite a crash interrupted left its kept records here; the file it was for is whole)
    let _ = std::fs::remove_file(dir.join(TMP_NAME));
    let files = match event_files(dir) {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!("TensorBoard: cannot list {} to drop its events after step {step}: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut rewritten = Vec::new();
    for file in files {
        match truncate_event_file(&file, step, restated) {
            Ok(Truncated::Untouched) => {}
            Ok(done) => {
                if let Truncated::Rewritten { torn_tail: true, .. } = done {
                    tracing::warn!(
                        "TensorBoard: {} ended in a torn record (a crash mid-write); its whole records up to step \
                         {step} are kept",
                        file.display()
                    );
                }
                rewritten.push((file, done));
            }
            Err(e) => tracing::warn!(
                "TensorBoard: {e}; the file is left as it was, with whatever it holds after step {step} (TensorBoard \
                 stops reading it at its first bad record)"
            ),
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::super::EventWriter;
    use super::*;

    /// An event file with scalars at steps 1 to 6, an image at 5 and a session mark at 4 (after the
    /// file version and the text at step 0).
    fn six_steps(dir: &Path) -> PathBuf {
        let mut w = EventWriter::create(dir).unwrap();
        w.text("config", "seed = 1", 0).unwrap();
        for step in 1..=6 {
            w.scalar("train/loss", 1.0 / step as f64, step).unwrap();
            if step == 4 {
                w.session_start(4).unwrap();
            }
            if step == 5 {
                w.image("samples/grid", &[7; 2 * 3 * 3], 2, 3, 5).unwrap();
            }
        }
        w.flush().unwrap();
        w.path().to_path_buf()
    }

    fn identity(path: &Path) -> (u64, std::time::SystemTime) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        (m.ino(), m.modified().unwrap())
    }

    #[test]
    fn an_event_file_is_cut_back_to_its_events_up_to_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = six_steps(dir.path());
        assert_eq!(read_steps(&path).unwrap(), [0, 0, 1, 2, 3, 4, 4, 5, 5, 6]);
        let before = std::fs::read(&path).unwrap();
        // scalars at 4, 5 and 6, the session mark at 4 and the image at 5 go
        let done = truncate_event_file(&path, 3, &[]).unwrap();
        assert_eq!(done, Truncated::Rewritten { dropped: 5, torn_tail: false });
        assert_eq!(read_steps(&path).unwrap(), [0, 0, 1, 2, 3]);
        let losses: Vec<(i64, f32)> = read_scalars(&path).unwrap().iter().map(|s| (s.step, s.value)).collect();
        assert_eq!(losses, [(1, 1.0), (2, 0.5), (3, 1.0 / 3.0)]);
        // the kept records are the file's first ones, byte for byte; no temporary file is left
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after[..], before[..after.len()]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(names, std::slice::from_ref(&path));
    }

    #[test]
    fn a_session_that_started_at_the_step_loses_its_restated_config() {
        // a session that started at 3 (its config at 3, its start mark at 4), killed at 5: the session
        // resuming at 3 writes its own config there, so the killed one's goes with its later events
        let dir = tempfile::tempdir().unwrap();
        let first = six_steps(dir.path());
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.session_start(4).unwrap();
        w.text("config", "seed = 2", 3).unwrap();
        w.scalar("train/loss", 0.2, 3).unwrap();
        w.scalar("train/loss", 0.1, 4).unwrap();
        w.flush().unwrap();
        let killed = w.path().to_path_buf();
        drop(w);
        assert_eq!(read_steps(&killed).unwrap(), [0, 4, 3, 3, 4]);
        let done = truncate_event_dir(dir.path(), 3, &["config"]);
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(read_steps(&killed).unwrap(), [0, 3]);
        assert_eq!(read_scalars(&killed).unwrap(), [Scalar { tag: "train/loss".into(), step: 3, value: 0.2 }]);
        // the first session's config at step 0 is before the step: kept
        assert_eq!(read_steps(&first).unwrap(), [0, 0, 1, 2, 3]);
    }

    #[test]
    fn a_file_with_nothing_past_the_step_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = six_steps(dir.path());
        let before = identity(&path);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(truncate_event_file(&path, 6, &[]).unwrap(), Truncated::Untouched);
        assert!(truncate_event_dir(dir.path(), 9, &[]).is_empty());
        assert_eq!(identity(&path), before, "rewritten");
        assert_eq!(read_steps(&path).unwrap().len(), 10);
    }

    #[test]
    fn a_torn_last_record_goes_with_the_later_events_and_a_corrupt_file_stays_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = six_steps(dir.path());
        let whole = std::fs::read(&path).unwrap();
        // a crash mid-write: the last record (step 6's scalar) torn
        std::fs::write(&path, &whole[..whole.len() - 5]).unwrap();
        assert!(read_steps(&path).unwrap_err().to_string().contains("torn record"));
        let done = truncate_event_dir(dir.path(), 6, &[]);
        assert_eq!(done, [(path.clone(), Truncated::Rewritten { dropped: 0, torn_tail: true })]);
        assert_eq!(read_steps(&path).unwrap(), [0, 0, 1, 2, 3, 4, 4, 5, 5]);
        // torn and with later steps: both go
        std::fs::write(&path, &whole[..whole.len() - 5]).unwrap();
        let done = truncate_event_file(&path, 2, &[]).unwrap();
        assert_eq!(done, Truncated::Rewritten { dropped: 5, torn_tail: true });
        assert_eq!(read_steps(&path).unwrap(), [0, 0, 1, 2]);
        // a flipped bit in a record: an error naming the file, which stays as it was
        let mut bad = whole.clone();
        bad[whole.len() - 10] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let e = truncate_event_file(&path, 2, &[]).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("corrupt record"), "{e}");
        assert!(truncate_event_dir(dir.path(), 2, &[]).is_empty());
        assert!(std::fs::read(&path).unwrap() == bad);
        // a power loss's zeroed blocks after the records: an end as a torn record is
        let mut zeroed = whole.clone();
        zeroed.extend([0u8; 4096]);
        std::fs::write(&path, &zeroed).unwrap();
        let done = truncate_event_file(&path, 3, &[]).unwrap();
        assert_eq!(done, Truncated::Rewritten { dropped: 5, torn_tail: true });
        assert_eq!(read_steps(&path).unwrap(), [0, 0, 1, 2, 3]);
    }

    #[test]
    fn a_rewrite_a_crash_interrupted_leaves_nothing_tensorboard_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = six_steps(dir.path());
        std::fs::write(dir.path().join(TMP_NAME), b"kept records").unwrap();
        assert!(!TMP_NAME.contains("tfevents"));
        truncate_event_dir(dir.path(), 3, &[]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(names, std::slice::from_ref(&path));
        assert_eq!(read_steps(&path).unwrap(), [0, 0, 1, 2, 3]);
    }
}
