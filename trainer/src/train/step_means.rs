//! A step's loss and accuracies as the ranks average them: one vector for one all-reduce.

use crate::model::ScaleMetrics;

/// A step's loss and accuracies: each rank's means over its micro-batches, then (all-reduced) the
/// means over the ranks.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMeans {
    pub loss: f64,
    pub bit_acc: f64,
    /// Over all tokens, as the bit accuracy.
    pub token_acc: f64,
    pub scale_loss: Vec<f64>,
    pub scale_bit_acc: Vec<f64>,
    pub scale_token_acc: Vec<f64>,
}

impl StepMeans {
    /// The means over `accum` micro-batches of a schedule of tokens at `scales`: `loss` and
    /// `bit_acc` summed from each micro-batch's share (already divided by `accum`), and each
    /// micro-batch's `per_scale` metrics.
    pub fn over_micro_steps(
        (loss, bit_acc): (f64, f64),
        per_scale: &[ScaleMetrics],
        scales: &[(usize, usize)],
        accum: usize,
    ) -> StepMeans {
        let ns = scales.len();
        let num_tokens = infinity_kernels::bsq::num_tokens(scales) as f64;
        let tokens_of = |s: usize| (scales[s].0 * scales[s].1) as f64 / num_tokens;
        let token_acc: f64 =
            per_scale.iter().map(|p| (0..ns).map(|s| p.token_acc[s] * tokens_of(s)).sum::<f64>()).sum();
        let mean_per_scale = |of: fn(&ScaleMetrics) -> &Vec<f64>| -> Vec<f64> {
            (0..ns).map(|s| per_scale.iter().map(|p| of(p)[s]).sum::<f64>() / accum as f64).collect()
        };
        StepMeans {
            loss,
            bit_acc,
            token_acc: token_acc / accum as f64,
            scale_loss: mean_per_scale(|p| &p.loss),
            scale_bit_acc: mean_per_scale(|p| &p.bit_acc),
            scale_token_acc: mean_per_scale(|p| &p.token_acc),
        }
    }

    /// The token mean of the loss over `scales` (the objective without reweighting by scale).
    pub fn token_mean_loss(&self, scales: &[(usize, usize)]) -> f64 {
        let tokens = |s: usize| (scales[s].0 * scales[s].1) as f64;
        let n: f64 = (0..scales.len()).map(tokens).sum();
        self.scale_loss.iter().enumerate().map(|(s, l)| l * tokens(s)).sum::<f64>() / n
    }

    /// The values in one vector, for the all-reduce: `[loss, bit_acc, token_acc, scale_loss…,
    /// scale_bit_acc…, scale_token_acc…]`.
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = vec![self.loss, self.bit_acc, self.token_acc];
        v.extend([&self.scale_loss, &self.scale_bit_acc, &self.scale_token_acc].into_iter().flatten());
        v
    }

    /// The inverse of [`StepMeans::to_vec`], for `ns` scales.
    pub fn from_vec(v: &[f64], ns: usize) -> StepMeans {
        assert_eq!(v.len(), 3 + 3 * ns, "3 + 3 × {ns} values");
        StepMeans {
            loss: v[0],
            bit_acc: v[1],
            token_acc: v[2],
            scale_loss: v[3..3 + ns].to_vec(),
            scale_bit_acc: v[3 + ns..3 + 2 * ns].to_vec(),
            scale_token_acc: v[3 + 2 * ns..].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_means_travel_as_one_vector() {
        let p = |x: f64| ScaleMetrics { loss: vec![x, 2.0 * x], bit_acc: vec![0.5, 0.75], token_acc: vec![0.25, x] };
        // two micro-batches over scales of 1 and 3 tokens
        let means = StepMeans::over_micro_steps((0.5, 0.625), &[p(1.0), p(0.0)], &[(1, 1), (1, 3)], 2);
        assert_eq!(
            (means.scale_loss.as_slice(), means.scale_token_acc.as_slice()),
            (&[0.5, 1.0][..], &[0.25, 0.5][..])
        );
        assert_eq!(means.token_acc, (0.25 / 4.0 + 0.75 + 0.25 / 4.0) / 2.0);
        let v = means.to_vec();
        assert_eq!(v[..5], [0.5, 0.625, means.token_acc, 0.5, 1.0]);
        assert_eq!(StepMeans::from_vec(&v, 2), means);
        // scale losses 0.5 and 1.0 over 1 and 3 tokens
        assert_eq!(means.token_mean_loss(&[(1, 1), (1, 3)]), (0.5 + 3.0) / 4.0);
    }
}
