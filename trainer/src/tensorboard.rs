//! A TensorBoard event-file writer: scalars, images and text, in the TFRecord framing TensorBoard reads.
//!
//! Why not the `tensorboard-rs` crate: its last release (2022) depends on protobuf 2.28 (RUSTSEC-2024-0437)
//! and image 0.23, panics on I/O errors, leaves most methods `unimplemented!()` and swaps width and height
//! of non-square images. This file is the few protobuf messages TensorBoard needs (derived with `prost`)
//! plus the record framing (length, masked crc32c of the length, data, masked crc32c of the data).
//!
//! A logging failure must never stop training: every method returns a `Result` the trainer may log and
//! ignore, and the writer keeps no state that a failed write could corrupt beyond the current record.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5, 7")]
    what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum EventWhat {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `SessionLog` (tensorflow/core/util/event.proto): a `START` at step N tells TensorBoard that a
/// restarted run continues there, so it drops the earlier session's events from step N on.
#[derive(Clone, PartialEq, Message)]
struct SessionLog {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `SessionLog.START`.
const SESSION_START: i32 = 1;

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
    #[prost(oneof = "ValueKind", tags = "2, 4, 8")]
    value: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(ImageSummary),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

#[derive(Clone, PartialEq, Message)]
struct ImageSummary {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

/// The HParams plugin's record of one run (tensorboard/plugins/hparams/plugin_data.proto).
#[derive(Clone, PartialEq, Message)]
struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    version: i32,
    #[prost(message, optional, tag = "3")]
    session_start_info: Option<SessionStartInfo>,
}

#[derive(Clone, PartialEq, Message)]
struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    hparams: std::collections::BTreeMap<String, PbValue>,
    #[prost(string, tag = "4")]
    group_name: String,
    #[prost(double, tag = "5")]
    start_time_secs: f64,
}

/// `google.protobuf.Value` (numbers, strings and booleans are all hparams need).
#[derive(Clone, PartialEq, Message)]
struct PbValue {
    #[prost(oneof = "PbKind", tags = "2, 3, 4")]
    kind: Option<PbKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PbKind {
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    Text(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
}

/// A hyperparameter value for [`EventWriter::hparams`].
#[derive(Clone, Debug, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// TensorFlow's `DT_STRING` and `DT_FLOAT`.
const DT_STRING: i32 = 7;
const DT_FLOAT: i32 = 1;

/// TFRecord's masked CRC: rotate right by 15, add a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends events to one `events.out.tfevents.*` file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Create a new event file in `dir` (named as TensorBoard expects).
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        // a writer per session: the counter keeps two sessions of one process in one second (a resume in
        // tests) from sharing a file name, and `create_new` from ever truncating an earlier session's file
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("events.out.tfevents.{}.{host}.{}.{n}", now.as_secs(), std::process::id()));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut w = EventWriter { out: BufWriter::new(file), path };
        w.write_event(0, Some(EventWhat::FileVersion("brain.Event:2".into())))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, step: i64, what: Option<EventWhat>) -> std::io::Result<()> {
        let wall_time = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let data = Event { wall_time, step, what }.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(&data)?;
        self.out.write_all(&masked_crc(&data).to_le_bytes())
    }

    fn summary(&mut self, step: u64, value: SummaryValue) -> std::io::Result<()> {
        self.write_event(step as i64, Some(EventWhat::Summary(Summary { value: vec![value] })))
    }

    /// Marks a restart at `step` (a resumed run): TensorBoard discards what earlier sessions logged from
    /// `step` on, as PyTorch's `SummaryWriter(purge_step=…)` asks it to.
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
    /// `group` names the run there.
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

    /// Push buffered records to the file (TensorBoard reads complete records only).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
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
}
