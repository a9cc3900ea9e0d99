//! Axis ticks and their labels for the scaling figures. plotters labels a log axis at powers of ten
//! only, so a range within one decade (a compute or learning-rate sweep of a factor of 5) had no
//! labelled tick at all; and a fixed number of decimals repeated one label over a narrow loss range.

/// Tick values for a log axis over `lo..hi` (`0 < lo < hi`), at least 2: 1×, 2× and 5× each power of
/// ten; only the powers of ten (thinned to about 8) over many decades; every 1…9× when 1-2-5 gives
/// fewer than 3; evenly spaced nice values when even those give fewer than 2.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let within = |ms: &[f64]| -> Vec<f64> {
        (k0..=k1)
            .flat_map(|k| ms.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|v| *v >= lo * (1.0 - 1e-12) && *v <= hi * (1.0 + 1e-12))
            .collect()
    };
    let one_two_five = within(&[1.0, 2.0, 5.0]);
    if one_two_five.len() > 12 {
        let decades = within(&[1.0]);
        let every = decades.len().div_ceil(8).max(1);
        return decades.into_iter().step_by(every).collect();
    }
    if one_two_five.len() >= 3 {
        return one_two_five;
    }
    let all = within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    if all.len() >= 2 {
        return all;
    }
    linear_ticks(lo, hi)
}

/// Multiples of a 1-2-5 step over `lo..hi`, about 6 (at least 2).
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    (first..).map(|i| i as f64 * step).take_while(|v| *v <= hi).collect()
}

/// A tick value in the fewest significant digits that give it back: `2e15`, `1.5e-3`.
pub fn sci(x: f64) -> String {
    (0..4)
        .map(|p| format!("{x:.p$e}"))
        .find(|s| s.parse::<f64>().is_ok_and(|v| (v - x).abs() <= 1e-9 * x.abs()))
        .unwrap_or_else(|| format!("{x:.3e}"))
}

/// Decimals that tell apart the ticks plotters puts on a linear axis spanning `span` (at most 10, at
/// 1-2-5 steps: a step of at least `span / 10`).
pub fn decimals(span: f64) -> usize {
    if !(span.is_finite() && span > 0.0) {
        return 3;
    }
    ((-(span / 10.0).log10()).ceil().max(0.0) as usize).min(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_log_range_has_two_labelled_ticks() {
        // within one decade, within a factor of 2, within less than one 1…9 step, over many decades
        for (lo, hi) in [(2.1e15, 8.0e15), (1.2e-3, 2.3e-3), (1.05, 1.77), (3.1e14, 2.0e19), (7.7e10, 1.3e13)] {
            let t = log_ticks(lo, hi);
            assert!(t.len() >= 2 && t.len() <= 13, "{lo:e}..{hi:e}: {t:?}");
            assert!(t.iter().all(|v| *v >= lo * 0.999 && *v <= hi * 1.001), "{t:?}");
            let labels: Vec<String> = t.iter().map(|v| sci(*v)).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels, "labels repeat: {labels:?}");
        }
        assert_eq!(
            log_ticks(2.1e15, 8.0e15).iter().map(|v| sci(*v)).collect::<Vec<_>>(),
            ["3e15", "4e15", "5e15", "6e15", "7e15", "8e15"]
        );
        assert_eq!(
            log_ticks(7.7e-4, 1.3e-1).iter().map(|v| sci(*v)).collect::<Vec<_>>(),
            ["1e-3", "2e-3", "5e-3", "1e-2", "2e-2", "5e-2", "1e-1"]
        );
        assert_eq!(sci(1.4), "1.4e0");
    }

    #[test]
    fn linear_labels_have_the_decimals_the_range_needs() {
        // a loss range of 0.004 (the figure that repeated `0.549`): steps of 5e-4 want 4 decimals
        assert_eq!(decimals(0.004), 4);
        assert_eq!(decimals(0.3), 2);
        assert_eq!(decimals(40.0), 0);
    }
}
