//! Gradient checking against central finite differences in f64, used by every backward's tests (here
//! and in the model). A kernel is checked through the scalar `loss = Σ y ⊙ r` with fixed random `r`,
//! so the analytic input gradient is the backward of `dy = r`.

/// Deterministic pseudo-random values in [-1, 1) (a tiny LCG; tests only need reproducible noise).
pub fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// `Σ a ⊙ b`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Check `analytic` = ∂f/∂x at `x` by central differences (step `h`) at up to `max_checks` evenly
/// spread coordinates. Fails with the worst coordinate when `|a − n| > atol + rtol·|n|`.
/// Returns the largest absolute error seen.
pub fn check(name: &str, x: &[f64], analytic: &[f64], mut f: impl FnMut(&[f64]) -> f64, rtol: f64, atol: f64) -> f64 {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient has the wrong length");
    let h = 1e-6;
    let max_checks = 64;
    let step = (x.len() / max_checks).max(1);
    let mut xs = x.to_vec();
    let mut worst = 0.0f64;
    for i in (0..x.len()).step_by(step) {
        let orig = xs[i];
        xs[i] = orig + h;
        let fp = f(&xs);
        xs[i] = orig - h;
        let fm = f(&xs);
        xs[i] = orig;
        let numeric = (fp - fm) / (2.0 * h);
        let err = (analytic[i] - numeric).abs();
        assert!(
            err <= atol + rtol * numeric.abs(),
            "{name}[{i}]: analytic {} vs finite difference {numeric} (|err| {err:.3e})",
            analytic[i]
        );
        worst = worst.max(err);
    }
    worst
}
