//! Model FLOPs utilisation: the peak a run divides by (`run.peak_tflops`, a number or `"auto"`: the
//! GPU's dense peak from NVIDIA's datasheets, by its name and `run.precision`), and the ratio itself,
//! per device: a step's FLOPs over all ranks, divided by the world size, over the step time and one
//! device's peak.

use super::config::{PeakTflops, Precision};

/// A GPU's dense peaks in TFLOP/s (without 2:4 sparsity, at the datasheet's boost clock): bf16 inputs
/// with f32 accumulation on tensor cores, and f32 on CUDA cores (SGEMM: `run.precision = "f32"` uses no
/// TF32). `None` where the datasheet gives no figure.
struct Peaks {
    bf16: f64,
    f32: Option<f64>,
}

/// Datasheet peaks by the words of the device's name (`cuDeviceGetName`, as `nvidia-smi` prints it):
/// the model's word, then a variant word that must also appear (`""`: none), most specific first, so
/// "H100 NVL" and "H100 PCIe" come before the SXM part that names no variant ("H100 80GB HBM3").
const DATASHEET: &[(&str, &str, Peaks)] = &[
    ("B200", "", Peaks { bf16: 2250.0, f32: None }),
    ("GH200", "", Peaks { bf16: 989.4, f32: Some(66.9) }),
    ("H200", "NVL", Peaks { bf16: 835.5, f32: Some(60.0) }),
    ("H200", "", Peaks { bf16: 989.4, f32: Some(66.9) }),
    ("H100", "NVL", Peaks { bf16: 835.5, f32: Some(60.0) }),
    ("H100", "PCIe", Peaks { bf16: 756.5, f32: Some(51.2) }),
    ("H100", "", Peaks { bf16: 989.4, f32: Some(66.9) }),
    ("H800", "PCIe", Peaks { bf16: 756.5, f32: Some(51.2) }),
    ("H800", "", Peaks { bf16: 989.4, f32: Some(66.9) }),
    ("A100", "", Peaks { bf16: 312.0, f32: Some(19.5) }),
    ("A800", "", Peaks { bf16: 312.0, f32: Some(19.5) }),
    ("A40", "", Peaks { bf16: 149.7, f32: Some(37.4) }),
    ("A30", "", Peaks { bf16: 165.0, f32: Some(10.3) }),
    ("A10", "", Peaks { bf16: 125.0, f32: Some(31.2) }),
    ("L40S", "", Peaks { bf16: 362.05, f32: Some(91.6) }),
    ("L40", "", Peaks { bf16: 181.05, f32: Some(90.5) }),
    ("L4", "", Peaks { bf16: 121.0, f32: Some(30.3) }),
    ("4090", "", Peaks { bf16: 165.2, f32: Some(82.6) }),
    ("3090", "", Peaks { bf16: 71.0, f32: Some(35.6) }),
];

/// The datasheet peak for a device of this name at this precision, in TFLOP/s.
pub fn datasheet_peak(device_name: &str, precision: Precision) -> Option<f64> {
    // words, so that "A10" is not found in "A100-SXM4-80GB" nor "L4" in "L40S"
    let words: Vec<&str> = device_name.split(|c: char| c.is_whitespace() || c == '-').collect();
    let has = |w: &str| words.iter().any(|x| x.eq_ignore_ascii_case(w));
    let (_, _, p) = DATASHEET.iter().find(|(model, variant, _)| has(model) && (variant.is_empty() || has(variant)))?;
    match precision {
        Precision::Bf16 => Some(p.bf16),
        Precision::F32 => p.f32,
    }
}

/// The peak one device of this run is measured against, in TFLOP/s, and the line saying where it came
/// from (or why a GPU has none). `device_name` is the GPU's, or `None` on the CPU, where `"auto"` has no
/// peak to take and nothing to say (a number still applies).
pub fn resolve_peak(
    setting: PeakTflops,
    device_name: Option<&str>,
    precision: Precision,
) -> (Option<f64>, Option<String>) {
    let what = match precision {
        Precision::Bf16 => "bf16 dense",
        Precision::F32 => "f32, CUDA cores",
    };
    match (setting, device_name) {
        (PeakTflops::Tflops(p), _) => (Some(p), Some(format!("MFU against {p} TFLOP/s per device (run.peak_tflops)"))),
        (PeakTflops::Auto, None) => (None, None),
        (PeakTflops::Auto, Some(name)) => match datasheet_peak(name, precision) {
            Some(p) => (
                Some(p),
                Some(format!(
                    "MFU against {p} TFLOP/s per GPU ({name}, {what}: NVIDIA's datasheet; run.peak_tflops overrides)"
                )),
            ),
            None => (
                None,
                Some(format!(
                    "MFU: off (no {what} peak known for \"{name}\"; set run.peak_tflops to the GPU's dense TFLOP/s)"
                )),
            ),
        },
    }
}

/// MFU of one step: `flops` of the whole step over every rank, `world` devices sharing it evenly.
pub fn mfu(flops: f64, secs: f64, world: usize, peak_tflops: f64) -> f64 {
    flops / world as f64 / secs / (peak_tflops * 1e12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_found_by_the_words_of_their_names() {
        let bf16 = |n: &str| datasheet_peak(n, Precision::Bf16);
        assert_eq!(bf16("NVIDIA H100 80GB HBM3"), Some(989.4));
        assert_eq!(bf16("NVIDIA H100 PCIe"), Some(756.5));
        assert_eq!(bf16("NVIDIA H100 NVL"), Some(835.5));
        assert_eq!(bf16("NVIDIA H200"), Some(989.4));
        assert_eq!(bf16("NVIDIA H200 NVL"), Some(835.5));
        assert_eq!(bf16("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(bf16("NVIDIA A100 80GB PCIe"), Some(312.0));
        assert_eq!(bf16("NVIDIA A10"), Some(125.0), "A10 is not A100");
        assert_eq!(bf16("NVIDIA L4"), Some(121.0));
        assert_eq!(bf16("NVIDIA L40S"), Some(362.05), "L40S is neither L40 nor L4");
        assert_eq!(bf16("NVIDIA GeForce RTX 4090"), Some(165.2));
        assert_eq!(datasheet_peak("NVIDIA H100 80GB HBM3", Precision::F32), Some(66.9));
        assert_eq!(datasheet_peak("NVIDIA B200", Precision::F32), None, "no datasheet figure");
        assert_eq!(bf16("NVIDIA A10G"), None, "A10G is not an A10");
        assert_eq!(bf16("Tesla V100-SXM2-16GB"), None);
        assert_eq!(bf16("Emulated CUDA device (kernels/emulator)"), None);
    }

    #[test]
    fn the_peak_comes_from_the_setting_or_the_datasheet() {
        let (p, line) = resolve_peak(PeakTflops::Auto, Some("NVIDIA H100 80GB HBM3"), Precision::Bf16);
        assert_eq!(p, Some(989.4));
        assert!(line.unwrap().contains("NVIDIA H100 80GB HBM3, bf16 dense: NVIDIA's datasheet"));
        let (p, line) = resolve_peak(PeakTflops::Tflops(790.0), Some("NVIDIA H200"), Precision::Bf16);
        assert_eq!(p, Some(790.0), "a number overrides the table: {line:?}");
        let (p, line) = resolve_peak(PeakTflops::Auto, Some("Tesla V100-SXM2-16GB"), Precision::F32);
        let line = line.unwrap();
        assert!(p.is_none() && line.contains("no f32, CUDA cores peak known for \"Tesla V100-SXM2-16GB\""), "{line}");
        assert_eq!(resolve_peak(PeakTflops::Auto, None, Precision::Bf16), (None, None), "the CPU has no table");
        assert_eq!(resolve_peak(PeakTflops::Tflops(2.0), None, Precision::F32).0, Some(2.0));
    }

    #[test]
    fn mfu_is_per_device() {
        // 8 devices of 100 TFLOP/s running 400 TFLOP in a second: each at half its peak
        assert_eq!(mfu(400e12, 1.0, 8, 100.0), 0.5);
        assert_eq!(mfu(400e12, 1.0, 1, 800.0), 0.5);
    }
}
