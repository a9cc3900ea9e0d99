//! The bitwise cross-entropy of upstream's `use_bit_label=1` head, loss and logit gradients in one pass.
//!
//! Dims: `N` tokens (all samples), `d` bits. Logits `[N, 2d]`: bit `j` of a token uses logit `2j` for
//! class 0 and `2j+1` for class 1 (upstream `logits.view(B, L, d, 2)`). Labels `[N, d]` are 0/1.
//!
//! Per bit: `CE = −Σ_k q_k log p_k` with `p = softmax(z0, z1)` and label smoothing
//! `q_y = 1 − ls/2`, `q_other = ls/2` (PyTorch's `label_smoothing` over 2 classes). A token's loss is
//! the mean over its `d` bits (`bitloss_type='mean'`), and the total is `Σ_n weight_n · loss_n`: the
//! caller's weights encode the mean over samples and the per-scale reweighting.

use crate::Real;

/// What one pass measured, per token (the caller aggregates per scale).
#[derive(Clone, Debug, Default)]
pub struct BitwiseCe {
    /// `Σ_n weight_n · loss_n`.
    pub loss: f64,
    /// `[N]` mean CE over the token's bits.
    pub token_loss: Vec<f64>,
    /// `[N]` bits predicted correctly (argmax, ties → class 0 as `torch.argmax`).
    pub correct_bits: Vec<u32>,
}

/// Loss, per-token statistics and (when `dlogits` is given) `dlogits = ∂loss/∂logits` (written).
pub fn bitwise_ce<T: Real>(
    logits: &[T],
    labels: &[u8],
    weights: &[f64],
    label_smoothing: f64,
    d: usize,
    mut dlogits: Option<&mut [T]>,
) -> BitwiseCe {
    let n = weights.len();
    assert!(logits.len() == n * 2 * d && labels.len() == n * d, "bitwise_ce: logits [N, 2d] and labels [N, d]");
    let (q_hit, q_miss) = (1.0 - label_smoothing / 2.0, label_smoothing / 2.0);
    let mut out = BitwiseCe { loss: 0.0, token_loss: vec![0.0; n], correct_bits: vec![0; n] };
    for t in 0..n {
        let mut sum = 0.0;
        let mut correct = 0;
        for j in 0..d {
            let (z0, z1) = (logits[t * 2 * d + 2 * j].f64(), logits[t * 2 * d + 2 * j + 1].f64());
            let y = labels[t * d + j] as usize;
            let m = z0.max(z1);
            let lse = m + ((z0 - m).exp() + (z1 - m).exp()).ln();
            let (lp0, lp1) = (z0 - lse, z1 - lse);
            let (q0, q1) = if y == 1 { (q_miss, q_hit) } else { (q_hit, q_miss) };
            sum -= q0 * lp0 + q1 * lp1;
            correct += ((z1 > z0) as usize == y) as u32;
            if let Some(g) = dlogits.as_deref_mut() {
                let s = weights[t] / d as f64;
                g[t * 2 * d + 2 * j] = T::of(s * (lp0.exp() - q0));
                g[t * 2 * d + 2 * j + 1] = T::of(s * (lp1.exp() - q1));
            }
        }
        out.token_loss[t] = sum / d as f64;
        out.correct_bits[t] = correct;
        out.loss += weights[t] * out.token_loss[t];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, noise};

    #[test]
    fn matches_two_class_cross_entropy_and_its_gradient() {
        // one token, one bit, logits (0, ln 3): p1 = 0.75; label 1 → CE = −ln 0.75
        let r = bitwise_ce(&[0.0f64, 3f64.ln()], &[1], &[1.0], 0.0, 1, None);
        assert!((r.loss + 0.75f64.ln()).abs() < 1e-12);
        assert_eq!(r.correct_bits, vec![1]);
        // with smoothing 0.2: −(0.9 ln 0.75 + 0.1 ln 0.25)
        let r = bitwise_ce(&[0.0f64, 3f64.ln()], &[1], &[1.0], 0.2, 1, None);
        assert!((r.loss + 0.9 * 0.75f64.ln() + 0.1 * 0.25f64.ln()).abs() < 1e-12);

        let (n, d) = (5, 3);
        let logits: Vec<f64> = noise(n * 2 * d, 1).iter().map(|v| 3.0 * v).collect();
        let labels: Vec<u8> = noise(n * d, 2).iter().map(|v| (*v > 0.0) as u8).collect();
        let weights: Vec<f64> = (0..n).map(|i| 0.1 + i as f64 * 0.05).collect();
        let mut g = vec![0.0; n * 2 * d];
        bitwise_ce(&logits, &labels, &weights, 0.1, d, Some(&mut g));
        check("ce dlogits", &logits, &g, |z| bitwise_ce(z, &labels, &weights, 0.1, d, None).loss, 1e-6, 1e-10);
    }
}
