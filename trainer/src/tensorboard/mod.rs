//! A TensorBoard event-file writer: scalars, images and text, in the TFRecord framing TensorBoard reads.
//!
//! Why not the `tensorboard-rs` crate: its last release (2022) depends on protobuf 2.28 (RUSTSEC-2024-0437)
//! and image 0.23, panics on I/O errors, leaves most methods `unimplemented!()` and swaps width and height
//! of non-square images. This module is the few protobuf messages TensorBoard needs (`proto.rs`, derived
//! with `prost`), the record framing (length, masked crc32c of the length, data, masked crc32c of the
//! data) and, in `read.rs`, the framing-checking reader, which also cuts a resumed run's event files
//! back to the step it resumes at.
//!
//! A logging failure must never stop training: every method returns a `Result` the trainer may log and
//! ignore. A failed write (a full disk) may leave a torn record, after which a reader of the file stops,
//! so the writer never appends to a file after a failure: the next write first cuts that file back to
//! its last flushed record and goes on in a new event file (TensorBoard reads a run's files in name
//! order).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use proto::*;
pub use read::{
    event_files, read_scalars, read_steps, remove_event_files, truncate_event_dir, truncate_event_file, Scalar,
    Truncated,
};

mod proto;
mod read;

/// Whether `c` may stand in a tag's part of ours (a dataset's or validation set's name): letters,
/// digits, `.`, `_` and `-`.
pub fn tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-".contains(c)
}

/// `name` fit for a tag's part: every other character made `-`.
pub fn tag_part(name: &str) -> String {
    name.chars().map(|c| if tag_char(c) { c } else { '-' }).collect()
}

/// A hyperparameter value for [`EventWriter::hparams`].
#[derive(Clone, Debug, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// TFRecord's masked CRC: rotate right by 15, add a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The event file under its buffer, with the fault drill's budget: after `fail_after` more bytes,
/// every write fails as on a full disk.
struct Sink {
    file: File,
    fail_after: Option<usize>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.fail_after {
            None => self.file.write(buf),
            Some(0) => Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (drill)")),
            Some(left) => {
                let n = self.file.write(&buf[..left.min(buf.len())])?;
                self.fail_after = Some(left - n);
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Appends events to an `events.out.tfevents.*` file (a new one after a failed write).
pub struct EventWriter {
    dir: PathBuf,
    path: PathBuf,
    /// `None` once a failed write spent the file and no new one could be made yet.
    out: Option<BufWriter<Sink>>,
    /// Bytes handed to the buffer, and those a successful flush put in the file: its whole records.
    written: u64,
    committed: u64,
    /// A write or flush failed: the file may end in a torn record, and takes no more.
    broken: bool,
}

impl EventWriter {
    /// Create a new event file in `dir` (named as TensorBoard expects).
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        // (no file yet: `reopen` makes the first one as it makes every later one)
        let mut w = EventWriter {
            dir: dir.to_path_buf(),
            path: PathBuf::new(),
            out: None,
            written: 0,
            committed: 0,
            broken: false,
        };
        w.reopen()?;
        Ok(w)
    }

    /// The file written now (or last).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a write failed since the file was opened (the next write reopens first).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// After a failed write: cut the spent file back to its last flushed record (remove it when it has
    /// none) and go on in a new event file. The failed writes' events are lost, and nothing after them
    /// is: a reader stops at a torn record.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.close_spent();
        let (path, out) = new_file(&self.dir)?;
        (self.path, self.out, self.written, self.committed, self.broken) = (path, Some(out), 0, 0, false);
        self.write_event(0, Some(EventWhat::FileVersion("brain.Event:2".into())))
    }

    /// Close the file a failure spent, cut back to its last flushed record (removed when it has none).
    fn close_spent(&mut self) {
        let Some(spent) = self.out.take() else { return };
        // (the buffer's bytes, the failed events', are dropped unwritten)
        let file = spent.into_parts().0.file;
        let cut = match self.committed {
            0 => std::fs::remove_file(&self.path),
            n => file.set_len(n),
        };
        if let Err(e) = cut {
            tracing::debug!("TensorBoard: cutting {} back to its whole records: {e}", self.path.display());
        }
    }

    /// Fault drill: after `bytes` more bytes reach this file, its writes fail as on a full disk
    /// (tearing the record they cut), until the next file.
    pub fn fail_after(&mut self, bytes: usize) {
        if let Some(out) = self.out.as_mut() {
            out.get_mut().fail_after = Some(bytes);
        }
    }

    /// Run `io` on the file's buffer; a failure spends the file.
    fn on_file(&mut self, io: impl FnOnce(&mut BufWriter<Sink>) -> std::io::Result<()>) -> std::io::Result<()> {
        if self.broken {
            self.reopen()?;
        }
        let result = match self.out.as_mut() {
            Some(out) => io(out),
            None => Err(std::io::Error::other("no event file open")),
        };
        self.broken = result.is_err();
        result
    }

    fn write_event(&mut self, step: i64, what: Option<EventWhat>) -> std::io::Result<()> {
        let wall_time = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let data = Event { wall_time, step, what }.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.on_file(|out| out.write_all(&record))?;
        self.written += record.len() as u64;
        Ok(())
    }

    fn summary(&mut self, step: u64, value: SummaryValue) -> std::io::Result<()> {
        self.write_event(step as i64, Some(EventWhat::Summary(Summary { value: vec![value] })))
    }

    /// Marks a restart at `step` (a resumed run): TensorBoard's Python loader discards what earlier
    /// sessions logged from `step` on, as PyTorch's `SummaryWriter(purge_step=…)` asks it to. Its Rust
    /// data server ignores the mark: a resume also cuts the event files back ([`truncate_event_dir`]).
    pub fn session_start(&mut self, step: u64) -> std::io::Result<()> {
        self.write_event(step as i64, Some(EventWhat::SessionLog(SessionLog { status: SESSION_START })))
    }

    /// A scalar, e.g. `train/loss`.
    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) -> std::io::Result<()> {
        self.summary(
            step,
            SummaryValue { tag: tag.into(), metadata: None, value: Some(ValueKind::SimpleValue(value as f32)) },
        )
    }

    /// An RGB image, row-major interleaved 8-bit, `height × width`.
    pub fn image(&mut self, tag: &str, rgb: &[u8], height: u32, width: u32, step: u64) -> std::io::Result<()> {
        let mut png_bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png_bytes, width, height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(std::io::Error::other)?;
            w.write_image_data(rgb).map_err(std::io::Error::other)?;
        }
        let img =
            ImageSummary { height: height as i32, width: width as i32, colorspace: 3, encoded_image_string: png_bytes };
        self.summary(step, SummaryValue { tag: tag.into(), metadata: None, value: Some(ValueKind::Image(img)) })
    }

    /// Markdown text (TensorBoard's Text tab), e.g. the resolved config.
    pub fn text(&mut self, tag: &str, markdown: &str, step: u64) -> std::io::Result<()> {
        let tensor = TensorProto {
            dtype: DT_STRING,
            tensor_shape: Some(TensorShape { dim: vec![Dim { size: 1 }] }),
            string_val: vec![markdown.as_bytes().to_vec()],
        };
        let metadata =
            SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".into(), content: vec![] }) };
        self.summary(
            step,
            SummaryValue { tag: tag.into(), metadata: Some(metadata), value: Some(ValueKind::Tensor(tensor)) },
        )
    }

    /// This run's hyperparameters for TensorBoard's HParams tab (its metrics are the run's scalars);
    /// `group` names the group of runs it belongs to there (empty: a group of its own, named after it;
    /// TensorBoard averages a group's metrics).
    pub fn hparams(&mut self, hparams: &[(String, HParam)], group: &str) -> std::io::Result<()> {
        let info = SessionStartInfo {
            hparams: hparams
                .iter()
                .map(|(k, v)| {
                    let kind = match v {
                        HParam::Number(x) => PbKind::Number(*x),
                        HParam::Text(t) => PbKind::Text(t.clone()),
                        HParam::Bool(b) => PbKind::Bool(*b),
                    };
                    (k.clone(), PbValue { kind: Some(kind) })
                })
                .collect(),
            group_name: group.into(),
            start_time_secs: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        };
        let content = HParamsPluginData { version: 0, session_start_info: Some(info) }.encode_to_vec();
        let metadata = SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "hparams".into(), content }) };
        let tensor = TensorProto { dtype: DT_FLOAT, tensor_shape: None, string_val: vec![] };
        self.summary(
            0,
            SummaryValue {
                tag: "_hparams_/session_start_info".into(),
                metadata: Some(metadata),
                value: Some(ValueKind::Tensor(tensor)),
            },
        )
    }

    /// Make what was flushed to the file durable (a power loss otherwise leaves a gap in `tb/` that the
    /// checkpoint after it never fills).
    pub fn sync_data(&self) -> std::io::Result<()> {
        match &self.out {
            Some(out) => out.get_ref().file.sync_data(),
            None => Ok(()),
        }
    }

    /// Push buffered records to the file (TensorBoard reads complete records only).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.on_file(|out| out.flush())?;
        self.committed = self.written;
        Ok(())
    }
}

impl Drop for EventWriter {
    /// A spent file is cut back as on reopening (a plain drop would flush the failed events' bytes).
    fn drop(&mut self) {
        if self.broken {
            self.close_spent();
        }
    }
}

/// How an event file's name starts (then its second, host, pid and counter), as TensorBoard expects.
const FILE_PREFIX: &str = "events.out.tfevents.";

/// A new event file in `dir`, named as TensorBoard expects, and its buffer.
fn new_file(dir: &Path) -> std::io::Result<(PathBuf, BufWriter<Sink>)> {
    std::fs::create_dir_all(dir)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // (the machine's name, as TensorBoard's own writer takes it: `$HOSTNAME` is a shell's, rarely exported)
    let host = infinity_launcher::env::hostname().unwrap_or_else(|| "localhost".into()).replace('/', "_");
    // a file per writer and reopening: the counter keeps two files of one process in one second (a resume
    // in tests, a reopening) from sharing a name and, zero-padded, sorts them in the order TensorBoard
    // must read them; `create_new` never truncates an earlier file
    static FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = |secs: u64| format!("{FILE_PREFIX}{secs}.{host}.{}.{n:06}", std::process::id());
    // TensorBoard reads a run's files in name order, and a later file's earlier steps purge what the
    // files before showed: a session started in the same second as the last file's, under a pid that
    // sorts before its (`10220` < `9855`; pid 1 in a container), or on a machine whose clock is behind,
    // would have the points of the session it resumed drop its own. Its name then takes the second
    // after the last file's.
    let mut secs = now.as_secs();
    let last = read::event_files(dir)?.pop().and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
    if let Some(last) = last.filter(|last| *last >= name(secs)) {
        let theirs = last.strip_prefix(FILE_PREFIX).and_then(|rest| rest.split('.').next()?.parse().ok());
        secs = theirs.map_or(secs, |t: u64| secs.max(t + 1));
    }
    let path = dir.join(name(secs));
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    Ok((path, BufWriter::new(Sink { file, fail_after: None })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_is_rotated_crc32c_plus_the_tfrecord_constant() {
        // crc32c("123456789") = 0xe3069283; masking is rotr 15 + 0xa282ead8
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    /// A new file sorts after every file already there, whatever its process id or the clock say.
    #[test]
    fn a_new_file_is_read_after_the_files_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let host = infinity_launcher::env::hostname().unwrap_or_else(|| "localhost".into());
        for before in [format!("{now}.{host}.99999999.999999"), format!("{}.{host}.1.000000", now + 100)] {
            std::fs::write(dir.path().join(format!("events.out.tfevents.{before}")), b"").unwrap();
            let w = EventWriter::create(dir.path()).unwrap();
            let files = read::event_files(dir.path()).unwrap();
            assert_eq!(files.last().unwrap(), w.path(), "{files:?}");
        }
    }

    #[test]
    fn records_are_framed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("train/loss", 0.5, 3).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        // walk the records: every length and crc must check out
        let mut off = 0;
        let mut n = 0;
        while off < bytes.len() {
            let len = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()),
                masked_crc(&bytes[off..off + 8])
            );
            let data = &bytes[off + 12..off + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[off + 12 + len..off + 16 + len].try_into().unwrap()), masked_crc(data));
            off += 16 + len;
            n += 1;
        }
        assert_eq!(n, 2, "file version + one scalar");
    }

    /// The event files in `dir`, in the order TensorBoard reads them (by name).
    fn event_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }

    fn steps(path: &Path) -> Vec<i64> {
        read_scalars(path).unwrap().iter().map(|s| s.step).collect()
    }

    #[test]
    fn a_failed_write_loses_its_events_and_the_next_goes_on_in_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("train/loss", 1.0, 1).unwrap();
        w.flush().unwrap();
        let first = w.path().to_path_buf();
        // a full disk 60 bytes into step 2's events: a record torn in the file
        w.fail_after(60);
        for tag in ["train/loss", "train/lr", "train/grad_norm"] {
            w.scalar(tag, 2.0, 2).unwrap(); // (buffered)
        }
        assert_eq!(w.flush().unwrap_err().kind(), std::io::ErrorKind::StorageFull);
        assert!(w.is_broken());
        let torn = read_scalars(&first).unwrap_err().to_string();
        assert!(torn.contains("torn record"), "{torn}");
        // the next write cuts that file back to step 1 and goes on in a new one, which sorts after it
        w.scalar("train/loss", 3.0, 3).unwrap();
        w.flush().unwrap();
        assert_eq!(event_files(dir.path()), [first.clone(), w.path().to_path_buf()]);
        assert_eq!(steps(&first), [1]);
        assert_eq!(steps(w.path()), [3]);
    }

    #[test]
    fn a_file_a_failure_leaves_empty_is_removed_and_a_dropped_one_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        // the file's first flush fails: it holds nothing, and goes
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.fail_after(10);
        w.scalar("train/loss", 1.0, 1).unwrap();
        assert!(w.flush().is_err());
        // so does every new file while the disk stays full
        w.reopen().unwrap();
        w.fail_after(0);
        w.scalar("train/loss", 2.0, 2).unwrap();
        assert!(w.flush().is_err());
        w.scalar("train/loss", 3.0, 3).unwrap();
        w.flush().unwrap();
        assert_eq!(event_files(dir.path()), [w.path().to_path_buf()]);
        assert_eq!(steps(w.path()), [3]);
        // a writer dropped after a failure leaves its file's whole records alone
        w.fail_after(30);
        w.scalar("train/loss", 4.0, 4).unwrap();
        assert!(w.flush().is_err());
        let path = w.path().to_path_buf();
        drop(w);
        assert_eq!(steps(&path), [3]);
    }

    #[test]
    fn hparams_record_the_wall_clock_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        w.hparams(&[("optim.lr".into(), HParam::Number(3e-3))], "run").unwrap();
        w.flush().unwrap();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let bytes = std::fs::read(w.path()).unwrap();
        // the second record: the hparams summary
        let first_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let at = 16 + first_len;
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let event = Event::decode(&bytes[at + 12..at + 12 + len]).unwrap();
        let Some(EventWhat::Summary(summary)) = event.what else { panic!("not a summary: {event:?}") };
        let content = summary.value[0].metadata.as_ref().unwrap().plugin_data.as_ref().unwrap().content.clone();
        let info = HParamsPluginData::decode(&content[..]).unwrap().session_start_info.unwrap();
        assert!(
            (before..=after).contains(&info.start_time_secs),
            "{} not in [{before}, {after}]",
            info.start_time_secs
        );
        assert_eq!(info.group_name, "run");
    }
}
