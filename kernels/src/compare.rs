//! Comparing a result with its reference (twin tests, golden checks): the largest difference, where a
//! NaN the other side does not share counts as infinitely far (a plain `fold(0.0, f64::max)` would
//! skip it, and a kernel producing NaN would pass).

/// Largest `|a − b|` over the pairs (0 for none); a lone NaN is `f64::INFINITY`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let (x, y) = (x as f64, y as f64);
            if x == y || (x.is_nan() && y.is_nan()) {
                0.0
            } else if x.is_nan() || y.is_nan() {
                f64::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// [`max_abs_diff`] over the largest magnitude in `reference` (at least `floor`).
pub fn max_rel_diff(a: &[f32], reference: &[f32], floor: f64) -> f64 {
    let scale = reference.iter().map(|v| (*v as f64).abs()).filter(|v| v.is_finite()).fold(0.0, f64::max);
    max_abs_diff(a, reference) / scale.max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_on_one_side_is_infinitely_far_and_shared_values_are_equal() {
        assert_eq!(max_abs_diff(&[1.0, f32::NAN], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[2.0], &[f32::NAN]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[f32::NAN, f32::INFINITY], &[f32::NAN, f32::INFINITY]), 0.0);
        assert_eq!(max_abs_diff(&[1.0, 3.0], &[1.5, 2.0]), 1.0);
        assert_eq!(max_rel_diff(&[1.0, 4.0], &[1.0, 2.0], 1e-30), 1.0);
        assert_eq!(max_rel_diff(&[0.0], &[0.0], 1e-12), 0.0);
    }
}
