//! The few protobuf messages of TensorBoard's event files the writer and reader need (tensorflow's
//! `event.proto` and `summary.proto`, the HParams plugin's `plugin_data.proto`), derived with `prost`.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub(super) struct Event {
    #[prost(double, tag = "1")]
    pub(super) wall_time: f64,
    #[prost(int64, tag = "2")]
    pub(super) step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5, 7")]
    pub(super) what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum EventWhat {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `SessionLog` (tensorflow/core/util/event.proto): a `START` at step N tells TensorBoard's Python
/// loader that a restarted run continues there, so it drops the earlier session's events from step N
/// on (TensorBoard's Rust data server ignores it: [`super::truncate_event_dir`] is what it sees).
#[derive(Clone, PartialEq, Message)]
pub(super) struct SessionLog {
    #[prost(int32, tag = "1")]
    pub(super) status: i32,
}

/// `SessionLog.START`.
pub(super) const SESSION_START: i32 = 1;

#[derive(Clone, PartialEq, Message)]
pub(super) struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub(super) value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct SummaryValue {
    #[prost(string, tag = "1")]
    pub(super) tag: String,
    #[prost(message, optional, tag = "9")]
    pub(super) metadata: Option<SummaryMetadata>,
    #[prost(oneof = "ValueKind", tags = "2, 4, 8")]
    pub(super) value: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(ImageSummary),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct ImageSummary {
    #[prost(int32, tag = "1")]
    pub(super) height: i32,
    #[prost(int32, tag = "2")]
    pub(super) width: i32,
    #[prost(int32, tag = "3")]
    pub(super) colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub(super) encoded_image_string: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub(super) plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct PluginData {
    #[prost(string, tag = "1")]
    pub(super) plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(super) content: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct TensorProto {
    #[prost(int32, tag = "1")]
    pub(super) dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub(super) tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub(super) string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    pub(super) dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct Dim {
    #[prost(int64, tag = "1")]
    pub(super) size: i64,
}

/// The HParams plugin's record of one run (tensorboard/plugins/hparams/plugin_data.proto).
#[derive(Clone, PartialEq, Message)]
pub(super) struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    pub(super) version: i32,
    #[prost(message, optional, tag = "3")]
    pub(super) session_start_info: Option<SessionStartInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    pub(super) hparams: std::collections::BTreeMap<String, PbValue>,
    #[prost(string, tag = "4")]
    pub(super) group_name: String,
    #[prost(double, tag = "5")]
    pub(super) start_time_secs: f64,
}

/// `google.protobuf.Value` (numbers, strings and booleans are all hparams need).
#[derive(Clone, PartialEq, Message)]
pub(super) struct PbValue {
    #[prost(oneof = "PbKind", tags = "2, 3, 4")]
    pub(super) kind: Option<PbKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum PbKind {
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    Text(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
}

/// TensorFlow's `DT_STRING` and `DT_FLOAT`.
pub(super) const DT_STRING: i32 = 7;
pub(super) const DT_FLOAT: i32 = 1;
