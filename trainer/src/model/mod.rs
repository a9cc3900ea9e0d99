//! The Infinity transformer on the CPU: explicit parameter and activation tables, a forward that saves
//! what it needs and a hand-written backward. Generic over f32 (training) and f64 (gradient checks).

pub mod acts;
pub mod backward;
pub mod bench;
pub mod buckets;
pub mod config;
pub mod coord_check;
pub mod f32_reads;
pub mod forward;
pub mod host_memory;
pub mod init;
pub mod io;
pub mod memory;
pub mod mup;
pub mod params;
pub mod sample;
pub mod streamed;
pub mod torch_file;
pub mod weight_shards;
mod weights_file;

pub use backward::backward;
pub use config::{Conditioning, ModelConfig, MAX_WIDTH};
pub use forward::{forward, forward_into, Acts, Condition, ModelInput};
pub use params::{Layout, Params};

/// The RoPE table of a dataset schedule's tokens ([`ModelConfig::token_scales`]): coordinates in the
/// 1M frame of its aspect-ratio template (upstream's tables are the transformer's), or a custom
/// template's own last scale.
pub fn rope_for(cfg: &ModelConfig, sched: &infinity_data::ScaleSchedule) -> infinity_kernels::rope::RopeTable {
    let scales = cfg.token_scales(&sched.hw());
    let last = *scales.last().expect("validated schedule is non-empty");
    let frame = infinity_data::Catalog::upstream().rope_frame(&sched.h_div_w_template).unwrap_or(last);
    infinity_kernels::rope::RopeTable::new(cfg.head_dim(), &scales, frame)
}

/// Per-token loss weights `[B·L]`: upstream's `lw` divided by `B` (the loss is a mean over samples).
/// Uniform is `1/L`; `reweight` gives every token of scale `s` weight `∝ 1/√(h_s·w_s)` (normalised to
/// sum 1 over the sequence), so each scale's total weight is `∝ √(h_s·w_s)` — the formula upstream's
/// `reweight_loss_by_scale=1` intends (its code crashes, issue #33).
pub fn token_weights(b: usize, scales: &[(usize, usize)], reweight: bool) -> Vec<f64> {
    let l: usize = scales.iter().map(|&(h, w)| h * w).sum();
    let per_token: Vec<f64> = if reweight {
        let &(hk, wk) = scales.last().expect("non-empty schedule");
        let raw: Vec<f64> = scales
            .iter()
            .flat_map(|&(h, w)| std::iter::repeat_n(((hk * wk) as f64).sqrt() / ((h * w) as f64).sqrt(), h * w))
            .collect();
        let total: f64 = raw.iter().sum();
        raw.iter().map(|v| v / total).collect()
    } else {
        vec![1.0 / l as f64; l]
    };
    (0..b).flat_map(|_| per_token.iter().map(|v| v / b as f64)).collect()
}

/// Loss and accuracies of each scale, averaged over the batch: what upstream logs as
/// `Detail/L_sXX`, `Acc_bit_sXX`, `Acc_token_sXX`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScaleMetrics {
    /// Mean bit cross-entropy per scale.
    pub loss: Vec<f64>,
    /// Fraction of bits predicted correctly per scale.
    pub bit_acc: Vec<f64>,
    /// Fraction of tokens with all `d` bits correct per scale.
    pub token_acc: Vec<f64>,
}

pub fn scale_metrics(
    ce: &infinity_kernels::bitwise_ce::BitwiseCe,
    b: usize,
    scales: &[(usize, usize)],
    d: usize,
) -> ScaleMetrics {
    let l: usize = scales.iter().map(|&(h, w)| h * w).sum();
    let mut m = ScaleMetrics::default();
    let mut start = 0;
    for &(h, w) in scales {
        let n = h * w;
        let (mut loss, mut bits, mut toks) = (0.0, 0.0, 0.0);
        for bi in 0..b {
            for t in bi * l + start..bi * l + start + n {
                loss += ce.token_loss[t];
                bits += ce.correct_bits[t] as f64;
                toks += (ce.correct_bits[t] as usize == d) as u8 as f64;
            }
        }
        let count = (b * n) as f64;
        m.loss.push(loss / count);
        m.bit_acc.push(bits / count / d as f64);
        m.token_acc.push(toks / count);
        start += n;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use infinity_kernels::bitwise_ce::BitwiseCe;

    #[test]
    fn weights_and_scale_metrics() {
        let scales = [(1, 1), (2, 2)];
        let w = token_weights(2, &scales, false);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12 && w.iter().all(|&v| (v - 0.1).abs() < 1e-12));
        let rw = token_weights(1, &scales, true);
        // per token: scale 0 weight ∝ 2, scale 1 ∝ 1 → 2/6 and 1/6 each; scale totals 1/3 and 2/3
        assert!((rw[0] - 2.0 / 6.0).abs() < 1e-12 && (rw[1] - 1.0 / 6.0).abs() < 1e-12);
        // two samples of L = 5 with d = 2
        let ce = BitwiseCe {
            loss: 0.0,
            token_loss: vec![1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 0.0, 0.0, 0.0, 1.0],
            correct_bits: vec![2, 2, 1, 0, 2, 1, 2, 2, 2, 2],
        };
        let m = scale_metrics(&ce, 2, &scales, 2);
        assert_eq!(m.loss, vec![2.0, 0.375]);
        assert_eq!(m.bit_acc, vec![0.75, 13.0 / 16.0]);
        assert_eq!(m.token_acc, vec![0.5, 0.75]);
    }
}
