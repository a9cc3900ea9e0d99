//! The Infinity transformer on the CPU: explicit parameter and activation tables, a forward that saves
//! what it needs and a hand-written backward. Generic over f32 (training) and f64 (gradient checks).

pub mod backward;
pub mod bench;
pub mod config;
pub mod forward;
pub mod init;
pub mod params;

pub use backward::backward;
pub use config::{Conditioning, ModelConfig};
pub use forward::{forward, Acts, Condition, ModelInput};
pub use params::{Layout, Params};

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
