//! Errors of the data crate. Every variant names the file and, where one exists, the row and column,
//! and says what was expected: a user with a broken dataset should know where to look from the message.

use std::path::PathBuf;

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// A shard's format, as errors name it.
pub(crate) const ARROW_IPC_FILE: &str = "Arrow IPC file";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// (`error` is in the message and deliberately not the `source`: `{:#}` would print it twice)
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },

    #[error("{path}: not a valid manifest: {detail}")]
    Manifest { path: PathBuf, detail: String },

    #[error("{path}: manifest key `{key}`: expected {expected}, found {found}")]
    ManifestInvalid { path: PathBuf, key: String, expected: String, found: String },

    #[error("{path}: manifest key `{key}` says {expected}, but {found}")]
    ManifestMismatch { path: PathBuf, key: String, expected: String, found: String },

    /// A shard the manifest lists that is not there (bad data: the dataset is incomplete, which a
    /// retry does not mend).
    #[error(
        "{path}: missing: the manifest lists this shard ({expected} bytes), the folder does not hold it (a dataset \
             copied or synced in part, or a shard deleted)"
    )]
    Missing { path: PathBuf, expected: u64 },

    #[error("{path}: file is {found} bytes, manifest expects {expected} bytes (truncated or replaced shard)")]
    Size { path: PathBuf, expected: u64, found: u64 },

    /// `why`: "corrupt shard", or that `expected` is another checksum of the file (zlib's CRC-32).
    #[error("{path}: crc32c checksum is {found}, manifest expects {expected} ({why})")]
    Checksum { path: PathBuf, expected: String, found: String, why: String },

    /// `format`: what the file should have been ("Arrow IPC file", the tokenizer's safetensors).
    #[error("{path}: not a readable {format}: {detail}")]
    Corrupt { path: PathBuf, format: String, detail: String },

    /// A file's encoder (Arrow's writer, safetensors') refused to write it.
    #[error("{path}: could not write {format}: {detail}")]
    Write { path: PathBuf, format: String, detail: String },

    #[error("{path}: column `{column}`: expected {expected}, found {found}")]
    Schema { path: PathBuf, column: String, expected: String, found: String },

    #[error("{path}: row {row} (id {id}), column `{column}`: expected {expected}, found {found}")]
    Row { path: PathBuf, row: u64, id: u64, column: String, expected: String, found: String },

    #[error("{0}")]
    Config(String),

    #[error("loader: {0}")]
    Loader(String),

    #[error("{path}: {detail}")]
    Image { path: PathBuf, detail: String },

    /// A decoded sample's values are unusable (found by the consumer, which knows the id, not the file).
    #[error("sample id {id}: {detail} (`infinity data verify` lists every such row)")]
    Sample {
        id: u64,
        /// Its index in the batch it came in, where known: ids may repeat, so the id alone may name a twin.
        index: Option<usize>,
        detail: String,
    },

    /// [`DataError::Sample`] with the file and row that hold it ([`DataError::at_row`]).
    #[error("{path}: row {row} (id {id}): {detail} (`infinity data verify` lists every such row)")]
    SampleAt { path: PathBuf, row: u64, id: u64, detail: String },
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), error: source }
    }

    /// An Arrow IPC file (a shard) that does not read.
    pub fn corrupt(path: impl Into<PathBuf>, detail: impl std::fmt::Display) -> Self {
        Self::unreadable(path, ARROW_IPC_FILE, detail)
    }

    /// A file of another `format` than a shard's that does not read.
    pub fn unreadable(path: impl Into<PathBuf>, format: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        DataError::Corrupt { path: path.into(), format: format.into(), detail: detail.to_string() }
    }

    /// A `format` file whose encoder refused to write it.
    pub fn write(path: impl Into<PathBuf>, format: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        DataError::Write { path: path.into(), format: format.into(), detail: detail.to_string() }
    }

    /// A [`DataError::Sample`] of `batch` named by the shard and row that hold it in `ds`; other errors
    /// as they are.
    pub fn at_row(self, batch: &crate::loader::Batch, ds: &crate::Dataset) -> DataError {
        let DataError::Sample { id, index, detail } = self else { return self };
        let index = index.or_else(|| batch.ids.iter().position(|&x| x == id));
        match index.and_then(|i| batch.rows.get(i)) {
            Some(&g) => {
                let (s, row) = ds.locate(g);
                DataError::SampleAt { path: ds.shards()[s].path().into(), row: row as u64, id, detail }
            }
            None => DataError::Sample { id, index, detail },
        }
    }

    /// Whether reading again would meet the same error: the files' contents are wrong, not the
    /// moment (an I/O error may pass, e.g. a network file system remounting; a reader thread may
    /// have died of something else). A launcher does not restart a group for a permanent one.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DataError::Io { .. } | DataError::Loader(_))
    }

    /// Whether the data themselves are wrong (a permanent error other than a configuration's, such as
    /// a batch no bucket can fill or a saved position another seed cannot continue).
    pub fn is_bad_data(&self) -> bool {
        self.is_permanent() && !matches!(self, DataError::Config(_))
    }
}
