//! Skipping the update of a step whose loss or gradient norm spikes: its z-score against the last
//! `optim.spike_window` steps (their mean and standard deviation) above `optim.skip_loss_z` or
//! `optim.skip_grad_z` (llm.c's `-sl` and `-sg`). Every step's values join the window, spikes too, so
//! a lasting change of level (a new learning rate, a new data mix) stops counting as one after a
//! while. The window rides in each checkpoint's `state.json`, so a resumed run judges as the
//! uninterrupted one; every rank holds the same window (the loss and gradient norm are all-reduced).
//!
//! A dataset of several buckets (aspect ratios) has a loss level per bucket, ~10 % apart, and a
//! gradient-norm level too (a bucket of more tokens per sample averages away more noise): a step's
//! values are judged against the means of its own bucket's steps in the window (when it has
//! [`MIN_BUCKET_STEPS`] there), in the spread of the window's values about their buckets' means, so
//! neither the bucket drawn nor the mix of buckets moves its z-scores. One bucket's z-scores are the
//! plain ones, bit for bit. Here a "bucket" is a level of its own: with `data.mix`, a bucket of one of
//! the mix's datasets (`dataset × buckets + bucket`, the loop's `level`), since datasets differ in loss too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::OptimSection;

/// The last steps' losses and gradient norms, oldest first (finite values only: a non-finite step is
/// skipped on its own terms and leaves no trace here).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeWindow {
    pub losses: Vec<f64>,
    pub grad_norms: Vec<f64>,
    /// Each step's bucket (its level: see the module's doc). A window of an earlier build's checkpoint has none: its steps count as a
    /// bucket of their own ([`UNKNOWN_BUCKET`]) until the window has moved past them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<u16>,
}

/// The bucket of the steps of a window saved without buckets.
const UNKNOWN_BUCKET: u16 = u16::MAX;

/// Steps a bucket needs in the window for its loss and gradient norm to be judged against its own
/// means (a mean of a step or two would make its z-scores swing).
const MIN_BUCKET_STEPS: usize = 8;

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
    /// Judge a step of `bucket` against the window, then add it (dropping the oldest past
    /// `limits.window`).
    pub fn judge(&mut self, limits: &SpikeLimits, (loss, bucket): (f64, u16), grad_norm: f64) -> Verdict {
        let n = limits.window;
        let mean = |by_bucket: bool| match by_bucket {
            true => format!("its bucket's mean over the last {n} steps"),
            false => format!("the last {n} steps' mean"),
        };
        let (loss_z, loss_by_bucket) = self.bucket_zscore(&self.losses, n, loss, bucket);
        let (grad_norm_z, grad_by_bucket) = self.bucket_zscore(&self.grad_norms, n, grad_norm, bucket);
        let judged = [
            ("loss", "skip_loss_z", loss, loss_z, limits.max_loss_z, mean(loss_by_bucket)),
            ("gradient norm", "skip_grad_z", grad_norm, grad_norm_z, limits.max_grad_norm_z, mean(grad_by_bucket)),
        ];
        // (the loss is named first when both spike)
        let skip = judged.iter().find_map(|(what, key, x, z, limit, mean)| {
            z.filter(|&z| *limit > 0.0 && z > *limit)
                .map(|z| format!("{what} {x:.4} is {z:.1} standard deviations above {mean} (optim.{key} = {limit})"))
        });
        self.losses.push(loss);
        self.grad_norms.push(grad_norm);
        self.buckets.push(bucket);
        self.keep_newest(limits.window);
        Verdict { loss_z, grad_norm_z, skip }
    }

    /// The window a run resumes with: the checkpoint's newest `window` steps (all of them, or none when
    /// it kept none).
    pub fn resumed(saved: Option<SpikeWindow>, window: usize) -> SpikeWindow {
        let mut w = saved.unwrap_or_default();
        if w.buckets.len() != w.losses.len() {
            w.buckets = vec![UNKNOWN_BUCKET; w.losses.len()];
        }
        w.keep_newest(window);
        w
    }

    fn keep_newest(&mut self, window: usize) {
        for values in [&mut self.losses, &mut self.grad_norms] {
            values.drain(..values.len().saturating_sub(window));
        }
        self.buckets.drain(..self.buckets.len().saturating_sub(window));
    }

    /// The z-score of `x` (a loss or gradient norm of `bucket`'s step) over a full window of `values`
    /// (the window's losses or gradient norms), and whether against its bucket's own steps: with
    /// several buckets there and [`MIN_BUCKET_STEPS`] of its own, `x` is measured from its bucket's
    /// mean, in the spread of those buckets' steps about their means; otherwise (one bucket, a bucket
    /// seldom drawn, a window holding an earlier build's steps) against the whole window, as
    /// [`zscore`].
    fn bucket_zscore(&self, values: &[f64], full: usize, x: f64, bucket: u16) -> (Option<f64>, bool) {
        let whole = (zscore(values, full, x), false);
        if values.len() < full || self.buckets.len() != values.len() || self.buckets.contains(&UNKNOWN_BUCKET) {
            return whole;
        }
        let entries = || values.iter().copied().zip(self.buckets.iter().copied());
        // (Σ value, steps) per bucket
        let mut sums: BTreeMap<u16, (f64, usize)> = BTreeMap::new();
        for (x, b) in entries() {
            let g = sums.entry(b).or_default();
            (g.0, g.1) = (g.0 + x, g.1 + 1);
        }
        if sums.len() < 2 || sums.get(&bucket).is_none_or(|g| g.1 < MIN_BUCKET_STEPS) {
            return whole;
        }
        let mean = |b: u16| sums[&b].0 / sums[&b].1 as f64;
        let residuals: Vec<f64> =
            entries().filter(|e| sums[&e.1].1 >= MIN_BUCKET_STEPS).map(|(v, b)| v - mean(b)).collect();
        let var = residuals.iter().map(|r| r * r).sum::<f64>() / residuals.len() as f64;
        ((var > 0.0).then(|| (x - mean(bucket)) / var.sqrt()), true)
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
            let v = w.judge(&LIMITS, (x, 0), 1.0);
            assert_eq!((v.loss_z, v.skip), (None, None), "step {i}");
        }
        // the eighth value completes the window; a spike right after it is judged
        w.judge(&LIMITS, (0.9, 0), 1.0);
        let v = w.judge(&LIMITS, (100.0, 0), 1.0);
        assert!(v.skip.as_deref().is_some_and(|s| s.starts_with("loss 100.0000 is") && s.contains("skip_loss_z = 4")));
    }

    #[test]
    fn a_spike_is_measured_in_the_windows_standard_deviations() {
        let mut w = SpikeWindow::default();
        noisy(8).for_each(|x| _ = w.judge(&LIMITS, (x, 0), 1.0));
        // mean 1.0, standard deviation 0.1: 1.35 is 3.5 σ above (kept), 1.45 is 4.5 σ (skipped)
        let mut kept = w.clone();
        let v = kept.judge(&LIMITS, (1.35, 0), 1.0);
        assert!((v.loss_z.unwrap() - 3.5).abs() < 1e-9 && v.skip.is_none(), "{v:?}");
        let v = w.judge(&LIMITS, (1.45, 0), 1.0);
        assert!((v.loss_z.unwrap() - 4.5).abs() < 1e-9 && v.skip.is_some(), "{v:?}");
        // a constant gradient norm has no spread: it is never judged; neither is a 0 limit
        assert_eq!(v.grad_norm_z, None);
    }

    #[test]
    fn the_gradient_norm_has_its_own_limit() {
        let limits = SpikeLimits { max_loss_z: 0.0, max_grad_norm_z: 3.0, window: 8 };
        let mut w = SpikeWindow::default();
        noisy(8).for_each(|x| _ = w.judge(&limits, (1.0, 0), x));
        let v = w.judge(&limits, (50.0, 0), 1.5);
        assert!(v.skip.as_deref().is_some_and(|s| s.starts_with("gradient norm 1.5000")), "{v:?}");
        assert_eq!(v.loss_z, None, "a constant loss is not judged");
    }

    #[test]
    fn spikes_join_the_window_so_a_new_level_is_accepted() {
        let mut w = SpikeWindow::default();
        noisy(8).for_each(|x| _ = w.judge(&LIMITS, (x, 0), 1.0));
        let skipped = (0..20).filter(|i| w.judge(&LIMITS, (3.0 + 0.1 * (i % 2) as f64, 0), 1.0).skip.is_some()).count();
        assert!((1..8).contains(&skipped), "{skipped} of 20 steps at the new level skipped");
        assert_eq!(w.losses.len(), 8);
        assert!(w.losses.iter().all(|&x| x >= 3.0), "the window holds the newest values: {:?}", w.losses);
    }

    #[test]
    fn a_resumed_window_keeps_the_newest_values() {
        let buckets = (0..10).map(|i| i % 2).collect();
        let saved = SpikeWindow { losses: (0..10).map(f64::from).collect(), grad_norms: vec![1.0; 10], buckets };
        let w = SpikeWindow::resumed(Some(saved.clone()), 4);
        assert_eq!((w.losses.as_slice(), w.buckets.as_slice()), (&[6.0, 7.0, 8.0, 9.0][..], &[0, 1, 0, 1][..]));
        assert_eq!(SpikeWindow::resumed(Some(saved.clone()), 16), saved);
        assert_eq!(SpikeWindow::resumed(None, 4), SpikeWindow::default());
    }

    /// Two buckets whose losses differ by 10 %: a step is judged against its own bucket's level, so the
    /// bucket drawn moves no z-score, and a spike hidden in the mixed window's spread is found.
    #[test]
    fn a_loss_is_judged_against_its_own_buckets_steps() {
        let limits = SpikeLimits { window: 16, ..LIMITS };
        let mut w = SpikeWindow::default();
        // 8 steps each of bucket 0 at 1.0 ± 0.01 and bucket 1 at 1.1 ± 0.01
        let level = |b: u16| 1.0 + 0.1 * b as f64;
        for i in 0..16 {
            let b = (i / 2 % 2) as u16;
            w.judge(&limits, (level(b) + if i % 2 == 0 { 0.01 } else { -0.01 }, b), 1.0);
        }
        // either bucket's ordinary loss has z 0; mixed, they would be ±1 σ
        for b in [0, 1] {
            assert!(w.clone().judge(&limits, (level(b), b), 1.0).loss_z.unwrap().abs() < 1e-9);
        }
        // 1.06 on bucket 0 is 6 σ of the spread within buckets (0.01): skipped; against the mixed
        // window (mean 1.05, σ ≈ 0.05) it would be 0.2 σ
        let v = w.clone().judge(&limits, (1.06, 0), 1.0);
        assert!((v.loss_z.unwrap() - 6.0).abs() < 1e-9, "{v:?}");
        assert!(v.skip.as_deref().is_some_and(|s| s.contains("above its bucket's mean over the last 16 steps")));
        // a bucket with no step in the window, or too few, is judged against the whole window
        let v = w.clone().judge(&limits, (1.05, 7), 1.0);
        assert!(v.loss_z.unwrap().abs() < 1e-9, "{v:?}");
        w.judge(&limits, (1.05, 7), 1.0);
        let v = w.clone().judge(&limits, (1.2, 7), 1.0);
        assert_eq!(v.loss_z.map(f64::to_bits), zscore(&w.losses, 16, 1.2).map(f64::to_bits));
    }

    /// The gradient norm too: two buckets at norms 1.0 and 0.7 (the larger images average away more
    /// noise), each ± 0.01; a step is judged against its own bucket's level.
    #[test]
    fn a_gradient_norm_is_judged_against_its_own_buckets_steps() {
        let limits = SpikeLimits { max_loss_z: 0.0, max_grad_norm_z: 4.0, window: 16 };
        let mut w = SpikeWindow::default();
        let level = |b: u16| 1.0 - 0.3 * b as f64;
        for i in 0..16 {
            let b = (i / 2 % 2) as u16;
            w.judge(&limits, (1.0, b), level(b) + if i % 2 == 0 { 0.01 } else { -0.01 });
        }
        for b in [0, 1] {
            assert!(w.clone().judge(&limits, (1.0, b), level(b)).grad_norm_z.unwrap().abs() < 1e-9);
        }
        // 0.76 on bucket 1 is 6 σ above its level; against the mixed window (mean 0.85) it is below
        let v = w.clone().judge(&limits, (1.0, 1), 0.76);
        assert!((v.grad_norm_z.unwrap() - 6.0).abs() < 1e-9, "{v:?}");
        let s = v.skip.unwrap_or_default();
        assert!(s.starts_with("gradient norm 0.7600 is 6.0 standard deviations above its bucket's mean"), "{s}");
    }

    /// One bucket's z-scores are the plain ones, bit for bit (a run's skipped steps do not change with
    /// this build).
    #[test]
    fn one_buckets_z_scores_are_the_plain_ones() {
        let mut w = SpikeWindow::default();
        let limits = SpikeLimits { window: 32, ..LIMITS };
        for i in 0..200 {
            let x = 0.7 + 0.05 * (i as f64 * 0.37).sin() + 1e-3 * (i as f64 * 1.7).cos();
            let g = 1.0 + 0.1 * (i as f64 * 0.53).cos();
            let want = (zscore(&w.losses, 32, x).map(f64::to_bits), zscore(&w.grad_norms, 32, g).map(f64::to_bits));
            let v = w.judge(&limits, (x, 3), g);
            assert_eq!((v.loss_z.map(f64::to_bits), v.grad_norm_z.map(f64::to_bits)), want, "step {i}");
        }
    }

    /// A window saved by an earlier build (no buckets) is judged as a whole, as that build did, until
    /// the window has moved past its steps.
    #[test]
    fn a_window_saved_without_buckets_goes_on() {
        let saved = r#"{"losses": [1.0, 1.2, 1.0, 1.2], "grad_norms": [1, 1, 1, 1]}"#;
        let limits = SpikeLimits { window: 4, ..LIMITS };
        let mut w = SpikeWindow::resumed(Some(serde_json::from_str(saved).unwrap()), 4);
        assert_eq!(w.buckets, [UNKNOWN_BUCKET; 4]);
        // the window's mean 1.1 and σ 0.1
        assert!((w.judge(&limits, (1.3, 0), 1.0).loss_z.unwrap() - 2.0).abs() < 1e-9);
        for x in [1.0, 1.1, 1.05] {
            let want = zscore(&w.losses, 4, x).map(f64::to_bits);
            assert_eq!(w.judge(&limits, (x, 0), 1.0).loss_z.map(f64::to_bits), want);
        }
        assert_eq!(w.buckets, [0; 4]);
        assert!(!serde_json::to_string(&w).unwrap().contains("65535"));
    }
}
