//! Scaling-law fits with confidence intervals.
//!
//! - `L(C) = a·C^(−b)`: ordinary least squares of ln L on ln C (exact, closed form).
//! - `L(C) = E + a·C^(−b)` and `L(N, D) = E + A/N^α + B/D^β` (Hoffmann et al.'s parametric form):
//!   Levenberg–Marquardt (`lm`) on the residuals `ln L − ln L̂`, started from a grid of exponents,
//!   with `E`, `a`, `A`, `B` fitted through their logarithms so they stay positive.
//!
//! Intervals are 95 %: `estimate ± t(0.975, n − p)·se`, with `se` from `s²·(JᵀJ)⁻¹` at the optimum
//! (exact for the linear fit). Parameters fitted through a logarithm get the interval of the logarithm,
//! exponentiated (asymmetric). A prediction's interval comes from the same covariance (delta method on
//! `ln L̂`). `n` counts distinct points: repeats of a config are one (`points`).

use anyhow::{bail, Result};
use nalgebra::{DMatrix, DVector};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::lm::best_of;

/// One fitted coefficient with its 95 % interval (`None` without degrees of freedom left).
#[derive(Clone, Debug, Serialize)]
pub struct Coef {
    pub name: &'static str,
    pub value: f64,
    pub ci95: Option<(f64, f64)>,
}

/// Which law a fit is, for evaluating it at new inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Law {
    /// θ = (ln a, b).
    Power,
    /// θ = (ln E, ln a, b).
    PowerFloor,
    /// θ = (ln E, ln A, ln B, α, β).
    Chinchilla,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fit {
    pub formula: &'static str,
    pub coefs: Vec<Coef>,
    /// Distinct points fitted (one per config).
    pub n: usize,
    /// Runs behind those points (more than `n` where configs were repeated).
    pub runs: usize,
    /// Root mean square of `ln L − ln L̂`.
    pub rmse_log: f64,
    #[serde(skip)]
    pub law: Law,
    /// The fitted parameters as fitted ([`Law`]) and their covariance (`None`: no degrees of freedom
    /// left, or singular).
    #[serde(skip)]
    pub theta: Vec<f64>,
    #[serde(skip)]
    pub cov: Option<DMatrix<f64>>,
}

impl Fit {
    pub fn get(&self, name: &str) -> f64 {
        self.coefs.iter().find(|c| c.name == name).map_or(f64::NAN, |c| c.value)
    }

    /// `ln L̂` at `x` (C for L(C); (N, D) for L(N, D)) with parameters `th`.
    fn ln_law(&self, th: &[f64], x: (f64, f64)) -> f64 {
        match self.law {
            Law::Power => th[0] - th[1] * x.0.ln(),
            Law::PowerFloor => (th[0].exp() + (th[1] - th[2] * x.0.ln()).exp()).ln(),
            Law::Chinchilla => (th[0].exp() + (th[1] - th[3] * x.0.ln()).exp() + (th[2] - th[4] * x.1.ln()).exp()).ln(),
        }
    }

    /// The law at `x` (C, or (N, D): the second value is ignored by L(C)) and the 95 % interval of it
    /// from the fit's covariance (`None` where the fit has none).
    pub fn predict(&self, x: (f64, f64)) -> (f64, Option<(f64, f64)>) {
        let y = self.ln_law(&self.theta, x);
        let ci = self.cov.as_ref().zip(t975(self.n.saturating_sub(self.theta.len()))).and_then(|(cov, t)| {
            // the gradient of ln L̂ in θ, by central differences
            let g = DVector::from_iterator(
                self.theta.len(),
                (0..self.theta.len()).map(|k| {
                    let h = 1e-6 * self.theta[k].abs().max(1e-3);
                    let (mut up, mut dn) = (self.theta.clone(), self.theta.clone());
                    up[k] += h;
                    dn[k] -= h;
                    (self.ln_law(&up, x) - self.ln_law(&dn, x)) / (2.0 * h)
                }),
            );
            let var = (g.transpose() * cov * &g)[(0, 0)];
            (var.is_finite() && var >= 0.0).then(|| ((y - t * var.sqrt()).exp(), (y + t * var.sqrt()).exp()))
        });
        (y.exp(), ci)
    }
}

pub(super) fn t975(dof: usize) -> Option<f64> {
    (dof > 0).then(|| StudentsT::new(0.0, 1.0, dof as f64).expect("dof > 0").inverse_cdf(0.975))
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let syy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
    sxy / (sxx * syy).sqrt()
}

/// A straight line `y = icpt + slope·x` fitted by least squares.
pub struct Line {
    pub icpt: f64,
    pub slope: f64,
    /// The covariance of (icpt, slope) (`None`: two points, no degrees of freedom left).
    pub cov: Option<[[f64; 2]; 2]>,
    /// Student's t at 97.5 % for the line's degrees of freedom (`None` with none).
    pub t: Option<f64>,
    pub sse: f64,
}

impl Line {
    /// The 95 % interval of the slope.
    pub fn slope_ci95(&self) -> Option<(f64, f64)> {
        let (cov, t) = (self.cov?, self.t?);
        let half = t * cov[1][1].sqrt();
        Some((self.slope - half, self.slope + half))
    }
}

/// Least squares of `y` on `x` (`what`: what the `x` are, for the error when they are all equal).
pub fn line(x: &[f64], y: &[f64], what: &str) -> Result<Line> {
    if x.len() != y.len() || x.iter().chain(y).any(|v| !v.is_finite()) {
        bail!("expected as many finite x as y");
    }
    if x.len() < 2 {
        bail!("a line needs at least 2 points, found {}", x.len());
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    if sxx <= 0.0 {
        bail!("all points have the same {what}: nothing to fit");
    }
    let slope = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum::<f64>() / sxx;
    let icpt = my - slope * mx;
    let sse: f64 = x.iter().zip(y).map(|(a, b)| (b - icpt - slope * a).powi(2)).sum();
    let t = t975(x.len() - 2);
    // s²·[[1/n + x̄²/Sxx, −x̄/Sxx], [−x̄/Sxx, 1/Sxx]]
    let s2 = sse / (n - 2.0);
    let cov = t.map(|_| [[s2 * (1.0 / n + mx * mx / sxx), -s2 * mx / sxx], [-s2 * mx / sxx, s2 / sxx]]);
    Ok(Line { icpt, slope, cov, t, sse })
}

/// `L = a·C^(−b)` by least squares in log space.
pub fn power_law(c: &[f64], l: &[f64]) -> Result<Fit> {
    check(&[c, l])?;
    if c.len() < 2 {
        bail!("a power law needs at least 2 points, found {}", c.len());
    }
    let (x, y): (Vec<f64>, Vec<f64>) = (c.iter().map(|v| v.ln()).collect(), l.iter().map(|v| v.ln()).collect());
    let fit = line(&x, &y, "compute")?;
    let (icpt, slope, t) = (fit.icpt, fit.slope, fit.t);
    // θ = (ln a, b) = (intercept, −slope): the covariance's off-diagonal changes sign
    let cov = fit.cov.map(|c| DMatrix::from_row_slice(2, 2, &[c[0][0], -c[0][1], -c[1][0], c[1][1]]));
    let se = fit.cov.map(|c| (c[0][0].sqrt(), c[1][1].sqrt()));
    Ok(Fit {
        formula: "L = a·C^(−b)",
        coefs: vec![
            Coef {
                name: "a",
                value: icpt.exp(),
                ci95: t.zip(se).map(|(t, se)| ((icpt - t * se.0).exp(), (icpt + t * se.0).exp())),
            },
            Coef { name: "b", value: -slope, ci95: fit.slope_ci95().map(|(lo, hi)| (-hi, -lo)) },
        ],
        n: x.len(),
        runs: x.len(),
        rmse_log: (fit.sse / x.len() as f64).sqrt(),
        law: Law::Power,
        theta: vec![icpt, -slope],
        cov,
    })
}

/// `L = E + a·C^(−b)`.
pub fn power_law_with_floor(c: &[f64], l: &[f64]) -> Result<Fit> {
    check(&[c, l])?;
    if c.len() < 4 {
        bail!("a power law with an irreducible term needs at least 4 points, found {}", c.len());
    }
    let lmin = l.iter().cloned().fold(f64::INFINITY, f64::min);
    let model = |th: &[f64], i: usize| th[0].exp() + (th[1] - th[2] * c[i].ln()).exp();
    let mut starts = Vec::new();
    for frac in [0.1, 0.5, 0.9] {
        let e = lmin * frac;
        let base = power_law(c, &l.iter().map(|v| (v - e).max(1e-12)).collect::<Vec<_>>())?;
        starts.push(vec![e.ln(), base.get("a").ln(), base.get("b")]);
    }
    let (th, cov, sse) = best_of(&starts, l, &model)?;
    if th[0].exp() < 1e-4 * lmin {
        bail!("E runs to 0: these runs show no irreducible term (the plain power law describes them)");
    }
    if !(0.0..5.0).contains(&th[2]) {
        bail!("degenerate: the exponent ran to {:.3}", th[2]);
    }
    let n = c.len();
    let var = |i: usize| cov.as_ref().map(|c| c[(i, i)]);
    Ok(Fit {
        formula: "L = E + a·C^(−b)",
        coefs: vec![
            log_coef("E", th[0], var(0), n, 3),
            log_coef("a", th[1], var(1), n, 3),
            lin_coef("b", th[2], var(2), n, 3),
        ],
        n,
        runs: n,
        rmse_log: (sse / n as f64).sqrt(),
        law: Law::PowerFloor,
        theta: th,
        cov,
    })
}

/// How many different values `v` holds (bitwise).
pub(super) fn distinct(v: impl Iterator<Item = f64>) -> usize {
    let mut bits: Vec<u64> = v.map(f64::to_bits).collect();
    bits.sort();
    bits.dedup();
    bits.len()
}

/// `L = E + A/N^α + B/D^β`.
pub fn chinchilla(nparams: &[f64], tokens: &[f64], l: &[f64]) -> Result<Fit> {
    check(&[nparams, tokens, l])?;
    if l.len() < 6 {
        bail!("L(N, D) has 5 parameters and needs at least 6 points, found {}", l.len());
    }
    let (sizes, counts) = (distinct(nparams.iter().copied()), distinct(tokens.iter().copied()));
    if sizes < 3 || counts < 3 {
        bail!("L(N, D) needs at least 3 distinct model sizes and 3 distinct token counts (found {sizes} and {counts})");
    }
    let lmin = l.iter().cloned().fold(f64::INFINITY, f64::min);
    let model = |th: &[f64], i: usize| {
        th[0].exp() + (th[1] - th[3] * nparams[i].ln()).exp() + (th[2] - th[4] * tokens[i].ln()).exp()
    };
    // a grid of exponents; A and B start where each term is a third of the smallest loss at the median size
    let med = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let (nm, dm) = (med(nparams).ln(), med(tokens).ln());
    let mut starts = Vec::new();
    for alpha in [0.1, 0.3, 0.6] {
        for beta in [0.1, 0.3, 0.6] {
            let third = (lmin / 3.0).ln();
            starts.push(vec![third, third + alpha * nm, third + beta * dm, alpha, beta]);
        }
    }
    let (th, cov, sse) = best_of(&starts, l, &model)?;
    if !(0.0..3.0).contains(&th[3]) || !(0.0..3.0).contains(&th[4]) {
        bail!("degenerate: the exponents ran to α = {:.3}, β = {:.3} (the runs do not determine them)", th[3], th[4]);
    }
    let n = l.len();
    let var = |i: usize| cov.as_ref().map(|c| c[(i, i)]);
    Ok(Fit {
        formula: "L = E + A/N^α + B/D^β",
        coefs: vec![
            log_coef("E", th[0], var(0), n, 5),
            log_coef("A", th[1], var(1), n, 5),
            log_coef("B", th[2], var(2), n, 5),
            lin_coef("alpha", th[3], var(3), n, 5),
            lin_coef("beta", th[4], var(4), n, 5),
        ],
        n,
        runs: n,
        rmse_log: (sse / n as f64).sqrt(),
        law: Law::Chinchilla,
        theta: th,
        cov,
    })
}

/// A warning when a fit's loss does not fall with compute (or with N and D): an exponent (`b`, `alpha`,
/// `beta`) at or below 0, or one whose 95 % interval reaches 0. Such a fit describes no scaling law,
/// and what it predicts at other budgets means nothing.
pub fn not_a_scaling_law(f: &Fit) -> Option<String> {
    let bad: Vec<String> = f
        .coefs
        .iter()
        .filter(|c| matches!(c.name, "b" | "alpha" | "beta"))
        .filter_map(|c| match c.ci95 {
            _ if c.value <= 0.0 => Some(format!("{} = {:.4} ≤ 0 (the loss rises with it)", c.name, c.value)),
            Some((lo, hi)) if lo <= 0.0 => {
                Some(format!("{} = {:.4}, whose 95 % interval [{lo:.4}, {hi:.4}] includes 0", c.name, c.value))
            }
            _ => None,
        })
        .collect();
    // (L(C)'s b is the fall with compute; L(N, D)'s alpha and beta each with one of the two, which the
    // runs may not separate even where the loss falls with compute)
    // (an exponent at or below 0 says the loss rises; an interval reaching 0, that the runs do not tell)
    let rises = f.coefs.iter().any(|c| matches!(c.name, "b" | "alpha" | "beta") && c.value <= 0.0);
    let with = match (f.law, rises) {
        (Law::Chinchilla, false) => "this fit cannot tell how the loss falls with N and with D apart over these runs",
        (Law::Chinchilla, true) => "the loss does not fall with N and with D over these runs",
        _ => "the loss does not fall measurably with compute over these runs",
    };
    (!bad.is_empty()).then(|| {
        format!(
            "{}: {}: {with}, so this fit does not describe a scaling law and its predictions at the budgets are \
             not meaningful (check the runs' losses; a wider range of compute, sizes and token counts, or more \
             runs, may settle it)",
            f.formula,
            bad.join("; ")
        )
    })
}

/// A warning when a fit states no uncertainty: no degrees of freedom left (as many coefficients as
/// distinct points or more: it passes through every point, whatever law the runs follow), or an L(C)
/// fit whose covariance the points leave singular (a degenerate L(N, D) has a warning of its own).
pub fn no_uncertainty(f: &Fit) -> Option<String> {
    if f.n <= f.coefs.len() {
        return Some(format!(
            "{}: {} distinct points for {} coefficients: the fit is exact (it passes through every point) and has no \
             uncertainty: no intervals, no test of the law, and its predictions are not meaningful; runs of more \
             distinct configs (not more seeds of the same ones) would give it some",
            f.formula,
            f.n,
            f.coefs.len()
        ));
    }
    (f.law != Law::Chinchilla && f.cov.is_none()).then(|| {
        format!(
            "{}: its covariance is singular (the points do not determine every coefficient): no intervals, and its \
             predictions have none",
            f.formula
        )
    })
}

fn check(cols: &[&[f64]]) -> Result<()> {
    let n = cols[0].len();
    if cols.iter().any(|c| c.len() != n) {
        bail!("columns of different lengths");
    }
    if cols.iter().any(|c| c.iter().any(|v| !(v.is_finite() && *v > 0.0))) {
        bail!("every value must be positive and finite");
    }
    Ok(())
}

fn lin_coef(name: &'static str, v: f64, var: Option<f64>, n: usize, p: usize) -> Coef {
    let ci95 = match (var, t975(n.saturating_sub(p))) {
        (Some(var), Some(t)) if var.is_finite() && var >= 0.0 => Some((v - t * var.sqrt(), v + t * var.sqrt())),
        _ => None,
    };
    Coef { name, value: v, ci95 }
}

/// A coefficient fitted as its logarithm `lv`.
fn log_coef(name: &'static str, lv: f64, var: Option<f64>, n: usize, p: usize) -> Coef {
    let c = lin_coef(name, lv, var, n, p);
    Coef { name, value: lv.exp(), ci95: c.ci95.map(|(lo, hi)| (lo.exp(), hi.exp())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Multiplicative noise `exp(σ·N(0, 1))` from a fixed seed.
    fn noisy(v: &[f64], sigma: f64, seed: u64) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        v.iter()
            .map(|x| {
                let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
                x * (sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()).exp()
            })
            .collect()
    }

    fn logspace(a: f64, b: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| 10f64.powf(a + (b - a) * i as f64 / (n - 1) as f64)).collect()
    }

    // Tolerances stated in docs/numerics.md ("Scaling fits").
    #[test]
    fn power_law_recovers_known_coefficients() {
        let c = logspace(15.0, 19.0, 9);
        let l: Vec<f64> = c.iter().map(|c| 12.0 * c.powf(-0.048)).collect();
        let exact = power_law(&c, &l).unwrap();
        assert!((exact.get("b") - 0.048).abs() < 1e-12 && (exact.get("a") / 12.0 - 1.0).abs() < 1e-9);
        let f = power_law(&c, &noisy(&l, 0.002, 1)).unwrap();
        console!("power law, 0.2 % noise: a = {:.4} (12), b = {:.5} (0.048)", f.get("a"), f.get("b"));
        assert!((f.get("b") - 0.048).abs() < 0.002, "{f:?}");
        assert!((f.get("a") / 12.0 - 1.0).abs() < 0.1, "{f:?}");
        let (lo, hi) = f.coefs[1].ci95.unwrap();
        assert!(lo < 0.048 && 0.048 < hi, "the interval {lo}..{hi} misses the true exponent");
        let logs: (Vec<f64>, Vec<f64>) = (c.iter().map(|v| v.ln()).collect(), l.iter().map(|v| v.ln()).collect());
        assert!((pearson(&logs.0, &logs.1) + 1.0).abs() < 1e-9);
    }

    #[test]
    fn power_law_with_floor_recovers_known_coefficients() {
        let c = logspace(15.0, 20.0, 12);
        let l: Vec<f64> = c.iter().map(|c| 1.5 + 2000.0 * c.powf(-0.2)).collect();
        let f = power_law_with_floor(&c, &noisy(&l, 0.001, 2)).unwrap();
        console!("with floor, 0.1 % noise: E = {:.4} (1.5), b = {:.4} (0.2)", f.get("E"), f.get("b"));
        assert!((f.get("E") - 1.5).abs() < 0.05, "{f:?}");
        assert!((f.get("b") - 0.2).abs() < 0.01, "{f:?}");
    }

    #[test]
    fn a_loss_that_rises_with_compute_is_no_scaling_law() {
        let c = logspace(15.0, 19.0, 6);
        let rising: Vec<f64> = c.iter().map(|c| 0.5 * c.powf(0.01)).collect();
        let f = power_law(&c, &noisy(&rising, 0.001, 4)).unwrap();
        let w = not_a_scaling_law(&f).expect("b < 0 is flagged");
        assert!(w.contains("b = -0.01") && w.contains("not meaningful"), "{w}");
        // a slope lost in the noise: its interval includes 0
        let mut f = power_law(&c, &rising).unwrap();
        f.coefs[1] = Coef { name: "b", value: 0.01, ci95: Some((-0.002, 0.022)) };
        assert!(not_a_scaling_law(&f).is_some_and(|w| w.contains("[-0.0020, 0.0220] includes 0")));
        let falling: Vec<f64> = c.iter().map(|c| 12.0 * c.powf(-0.048)).collect();
        assert!(not_a_scaling_law(&power_law(&c, &noisy(&falling, 0.002, 1)).unwrap()).is_none());
    }

    #[test]
    fn chinchilla_form_recovers_known_coefficients() {
        // Hoffmann et al.'s fitted values as ground truth, on a 5 × 5 grid of model and data sizes
        let (e, a, b, alpha, beta) = (1.69, 406.4, 410.7, 0.34, 0.28);
        let (mut n, mut d, mut l) = (vec![], vec![], vec![]);
        for nn in logspace(7.0, 10.0, 5) {
            for dd in logspace(9.0, 12.0, 5) {
                n.push(nn);
                d.push(dd);
                l.push(e + a / nn.powf(alpha) + b / dd.powf(beta));
            }
        }
        let f = chinchilla(&n, &d, &noisy(&l, 0.001, 3)).unwrap();
        let g = |k: &str| f.get(k);
        console!(
            "L(N, D), 0.1 % noise: E = {:.4} (1.69), A = {:.1} (406.4), B = {:.1} (410.7), α = {:.4} (0.34), β = {:.4} (0.28)",
            g("E"), g("A"), g("B"), g("alpha"), g("beta")
        );
        assert!((f.get("alpha") - alpha).abs() < 0.02, "{f:?}");
        assert!((f.get("beta") - beta).abs() < 0.02, "{f:?}");
        assert!((f.get("E") - e).abs() < 0.05, "{f:?}");
        assert!(chinchilla(&n[..5], &d[..5], &l[..5]).is_err(), "5 points cannot fit 5 parameters");
    }

    /// A prediction's interval (delta method) is the textbook one for the linear fit, and a fit with no
    /// degrees of freedom left has none, and is warned about.
    #[test]
    fn predictions_have_intervals_and_exact_fits_are_flagged() {
        let c = logspace(15.0, 18.0, 6);
        let l = noisy(&c.iter().map(|c| 12.0 * c.powf(-0.05)).collect::<Vec<_>>(), 0.01, 7);
        let f = power_law(&c, &l).unwrap();
        let c0 = 1e20;
        let (p, ci) = f.predict((c0, 0.0));
        assert!((p / (f.get("a") * c0.powf(-f.get("b"))) - 1.0).abs() < 1e-12);
        // ŷ ± t·s·√(1/n + (x0 − x̄)²/Sxx) in log space
        let x: Vec<f64> = c.iter().map(|v| v.ln()).collect();
        let n = x.len() as f64;
        let mx = x.iter().sum::<f64>() / n;
        let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
        let sse: f64 = x.iter().zip(&l).map(|(a, y)| (y.ln() - f.theta[0] + f.get("b") * a).powi(2)).sum();
        let se = (sse / (n - 2.0) * (1.0 / n + (c0.ln() - mx).powi(2) / sxx)).sqrt();
        let hi = (p.ln() + t975(4).unwrap() * se).exp();
        let (lo_ci, hi_ci) = ci.expect("4 degrees of freedom");
        assert!((hi_ci / hi - 1.0).abs() < 1e-5 && lo_ci < p && p < hi_ci, "{ci:?} vs {hi}");
        assert!(no_uncertainty(&f).is_none());
        let two = power_law(&c[..2], &l[..2]).unwrap();
        assert!(two.predict((c0, 0.0)).1.is_none() && two.coefs.iter().all(|c| c.ci95.is_none()));
        let w = no_uncertainty(&two).expect("2 points, 2 coefficients");
        assert!(w.contains("2 distinct points for 2 coefficients: the fit is exact"), "{w}");
        // the nonlinear fits' intervals come from their covariance too
        let floor: Vec<f64> = logspace(15.0, 20.0, 8).iter().map(|c| 1.5 + 2000.0 * c.powf(-0.2)).collect();
        let f = power_law_with_floor(&logspace(15.0, 20.0, 8), &noisy(&floor, 0.002, 8)).unwrap();
        let (p, ci) = f.predict((1e21, 0.0));
        assert!(ci.is_some_and(|(lo, hi)| lo < p && p < hi), "{p} {ci:?}");
    }
}
