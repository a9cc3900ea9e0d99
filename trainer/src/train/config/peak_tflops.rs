//! `run.peak_tflops`: one device's peak in TFLOP/s, or `"auto"` (the default: a GPU's dense peak from
//! the datasheet table in `train::mfu`, none on the CPU), read from TOML, `INF__…` variables and `--set`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum PeakTflops {
    /// The GPU's datasheet peak at `run.precision`; MFU is off on the CPU and on GPUs the table lacks.
    #[default]
    Auto,
    Tflops(f64),
}

impl std::fmt::Display for PeakTflops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeakTflops::Tflops(p) => write!(f, "{p}"),
            PeakTflops::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for PeakTflops {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PeakTflops::Tflops(p) => s.serialize_f64(*p),
            PeakTflops::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for PeakTflops {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PeakTflops;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive number of TFLOP/s or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, p: f64) -> std::result::Result<PeakTflops, E> {
                match p.is_finite() && p > 0.0 {
                    true => Ok(PeakTflops::Tflops(p)),
                    false => Err(E::invalid_value(serde::de::Unexpected::Float(p), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, p: u64) -> std::result::Result<PeakTflops, E> {
                self.visit_f64(p as f64)
            }
            fn visit_i64<E: serde::de::Error>(self, p: i64) -> std::result::Result<PeakTflops, E> {
                self.visit_f64(p as f64)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<PeakTflops, E> {
                match v.trim() {
                    "auto" => Ok(PeakTflops::Auto),
                    t => match t.parse::<f64>() {
                        Ok(p) => self.visit_f64(p),
                        Err(_) => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                    },
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}
