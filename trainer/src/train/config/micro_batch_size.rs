//! `data.micro_batch`: a number of samples, or `"auto"` (chosen at start from the GPU's memory,
//! `train::gpu_fit::resolve_micro_batch`), read from TOML, `INF__…` variables and `--set` alike.

use serde::{Deserialize, Serialize};

/// `data.micro_batch`: a number of samples, or `"auto"`, the largest divisor of a rank's share of the
/// global batch whose training step fits the rank's GPU (the whole share on the CPU), chosen at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MicroBatchSize {
    Samples(usize),
    Auto,
}

impl MicroBatchSize {
    /// The number of samples, unless it is chosen at start.
    pub fn samples(self) -> Option<usize> {
        match self {
            MicroBatchSize::Samples(n) => Some(n),
            MicroBatchSize::Auto => None,
        }
    }
}

impl std::fmt::Display for MicroBatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MicroBatchSize::Samples(n) => write!(f, "{n}"),
            MicroBatchSize::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for MicroBatchSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            MicroBatchSize::Samples(n) => s.serialize_u64(*n as u64),
            MicroBatchSize::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for MicroBatchSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MicroBatchSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of samples or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<MicroBatchSize, E> {
                Ok(MicroBatchSize::Samples(n as usize))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<MicroBatchSize, E> {
                let n = u64::try_from(n).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))?;
                self.visit_u64(n)
            }
            /// (`4.0` as a number of samples, as the config takes `global_batch = 8.0`)
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> std::result::Result<MicroBatchSize, E> {
                match x.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&x) {
                    true => self.visit_u64(x as u64),
                    false => Err(E::invalid_value(serde::de::Unexpected::Float(x), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<MicroBatchSize, E> {
                match v.trim() {
                    "auto" => Ok(MicroBatchSize::Auto),
                    t => t
                        .parse()
                        .map(MicroBatchSize::Samples)
                        .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}
