//! Skipping the update of a step whose loss or gradient norm spikes: its z-score against the last
//! `optim.spike_window` steps (their mean and standard deviation) above `optim.skip_loss_z` or
//! `optim.skip_grad_z` (llm.c's `-sl` and `-sg`). Every step's values join the window, spikes too, so
//! a lasting change of level (a new learning rate, a new data mix) stops counting as one after a
//! while. The window rides in each checkpoint's `state.json`, so a resumed run judges as the
//! uninterrupted one; every rank holds the same window (the loss and gradient norm are all-reduced).

use serde::{Deserialize, Serialize};

use super::config::OptimSection;

/// The last steps' losses and gradient norms, oldest first (finite values only: a non-finite step is
/// skipped on its own terms and leaves no trace here).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeWindow {
    pub losses: Vec<f64>,
    pub grad_norms: Vec<f64>,
}

/// The z-score limits (0: that value is not judged) and the window's length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpikeLimits {
    /// The loss's z-score above which a step's update is skipped (`optim.skip_loss_z`).
    pub max_loss_z: f64,
    /// The gradient norm's z-score above which a step's update is skipped (`optim.skip_grad_z`).
    pub max_grad_norm_z: f64,
    pub window: usize,
}

impl SpikeLimits {
    /// The limits `optim` sets. With both at 0 nothing is skipped, but the window is kept all the same:
    /// every step's z-scores are logged, so a run shows how far its ordinary steps stray before a
    /// limit is chosen.
    pub fn of(optim: &OptimSection) -> SpikeLimits {
        SpikeLimits { max_loss_z: optim.skip_loss_z, max_grad_norm_z: optim.skip_grad_z, window: optim.spike_window }
    }
}

/// One step judged: its z-scores (`None` while the window fills, or over a constant window) and,
/// when its update is to be skipped, why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub loss_z: Option<f64>,
    pub grad_norm_z: Option<f64>,
    pub skip: Option<String>,
}

impl SpikeWindow {
    /// Judge a step against the window, then add it (dropping the oldest past `limits.window`).
    pub fn judge(&mut self, limits: &SpikeLimits, loss: f64, grad_norm: f64) -> Verdict {
        let loss_z = zscore(&self.losses, limits.window, loss);
        let grad_norm_z = zscore(&self.grad_norms, limits.window, grad_norm);
        let judged = [
            ("loss", "skip_loss_z", loss, loss_z, limits.max_loss_z),
            ("gradient norm", "skip_grad_z", grad_norm, grad_norm_z, limits.max_grad_norm_z),
        ];
        // (the loss is named first when both spike)
        let skip = judged.iter().find_map(|&(what, key, x, z, limit)| {
            z.filter(|&z| limit > 0.0 && z > limit).map(|z| {
                format!(
                    "{what} {x:.4} is {z:.1} standard deviations above the last {} steps' mean (optim.{key} = {limit})",
                    limits.window
                )
            })
        });
        self.losses.push(loss);
        self.grad_norms.push(grad_norm);
        self.keep_newest(limits.window);
        Verdict { loss_z, grad_norm_z, skip }
    }

    /// The window a run resumes with: the checkpoint's newest `window` steps (all of them, or none when
    /// it kept none).
    pub fn resumed(saved: Option<SpikeWindow>, window: usize) -> SpikeWindow {
        let mut w = saved.unwrap_or_default();
        w.keep_newest(window);
        w
    }

    fn keep_newest(&mut self, window: usize) {
        for values in [&mut self.losses, &mut self.grad_norms] {
            values.drain(..values.len().saturating_sub(window));
        }
    }
}

/// `(x − mean) / std` over a full window (population standard deviation); `None` while it fills or
/// when its values are all equal.
fn zscore(window: &[f64], full: usize, x: f64) -> Option<f64> {
    if window.len() < full || window.is_empty() {
        return None;
    }
    let n = window.len() as f64;
    let mean = window.iter().sum::<f64>() / n;
    let var = window.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (var > 0.0).then(|| (x - mean) / var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SpikeLimits = SpikeLimits { max_loss_z: 4.0, max_grad_norm_z: 0.0, window: 8 };

    /// A noisy history: 1 ± 0.1, alternating.
    fn noisy(n: usize) -> impl Iterator<Item = f64> {
        (0..n).map(|i| if i % 2 == 0 { 1.1 } else { 0.9 })
    }

    #[test]
    fn nothing_is_judged_until_the_window_is_full() {
        let mut w = SpikeWindow::default();
        for (i, x) in noisy(7).enumerate() {
            let v = w.judge(&LIMITS, x, 1.0);
            assert_eq!((v.loss_z, v.skip), (None, None), "step {i}");
        }
        // the eighth value completes the window; a spike right after it is judged
        w.judge(&LIMITS, 0.9, 1.0);
        let v = w.judge(&LIMITS, 100.0, 1.0);
        assert!(v.skip.as_deref().is_some_and(|s| s.starts_with("loss 100.0000 is") && s.contains("skip_loss_z = 4")));
    }

    #[test]
    fn a_spike_is_measured_in_the_windows_standard_deviations() {
        let mut w = SpikeWindow::default();
        noisy(8).for_each(|x| _ = w.judge(&LIMITS, x, 1.0));
        // mean 1.0, standard deviation 0.1: 1.35 is 3.5 σ above (kept), 1.45 is 4.5 σ (skipped)
        let mut kept = w.clone();
        let v = kept.judge(&LIMITS, 1.35, 1.0);
        assert!((v.loss_z.unwrap() - 3.5).abs() < 1e-9 && v.skip.is_none(), "{v:?}");
        let v = w.judge(&LIMITS, 1.45, 1.0);
        assert!((v.loss_z.unwrap() - 4.5).abs() < 1e-9 && v.skip.is_some(), "{v:?}");
        // a constant gradient norm has no spread: it is never judged; neither is a 0 limit
        assert_eq!(v.grad_norm_z, None);
    }

    #[test]
    fn the_gradient_norm_has_its_own_limit() {
        let limits = SpikeLimits { max_loss_z: 0.0, max_grad_norm_z: 3.0, window: 8 };
        let mut w = SpikeWindow::default();
        noisy(8).for_each(|x| _ = w.judge(&limits, 1.0, x));
        let v = w.judge(&limits, 50.0, 1.5);
        assert!(v.skip.as_deref().is_some_and(|s| s.starts_with("gradient norm 1.5000")), "{v:?}");
        assert_eq!(v.loss_z, None, "a constant loss is not judged");
    }

    #[test]
    fn spikes_join_the_window_so_a_new_level_is_accepted() {
        let mut w = SpikeWindow::default();
        noisy(8).for_each(|x| _ = w.judge(&LIMITS, x, 1.0));
        let skipped = (0..20).filter(|i| w.judge(&LIMITS, 3.0 + 0.1 * (i % 2) as f64, 1.0).skip.is_some()).count();
        assert!((1..8).contains(&skipped), "{skipped} of 20 steps at the new level skipped");
        assert_eq!(w.losses.len(), 8);
        assert!(w.losses.iter().all(|&x| x >= 3.0), "the window holds the newest values: {:?}", w.losses);
    }

    #[test]
    fn a_resumed_window_keeps_the_newest_values() {
        let saved = SpikeWindow { losses: (0..10).map(f64::from).collect(), grad_norms: vec![1.0; 10] };
        let w = SpikeWindow::resumed(Some(saved.clone()), 4);
        assert_eq!(w.losses, [6.0, 7.0, 8.0, 9.0]);
        assert_eq!(SpikeWindow::resumed(Some(saved.clone()), 16), saved);
        assert_eq!(SpikeWindow::resumed(None, 4), SpikeWindow::default());
    }
}
