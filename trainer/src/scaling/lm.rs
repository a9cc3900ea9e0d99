//! Levenberg–Marquardt for the nonlinear fits (`fit`): least squares of `ln L − ln L̂(θ)` from several
//! starts, the best kept, with the covariance `s²·(JᵀJ)⁻¹` of θ at the optimum.

use anyhow::{bail, Result};
use nalgebra::{DMatrix, DVector};

/// A model: `L̂(θ, i)` for the `i`-th point.
pub type Model<'a> = &'a dyn Fn(&[f64], usize) -> f64;

/// Levenberg–Marquardt from each start; the best (parameters, their covariance, SSE). No covariance
/// without degrees of freedom left, or where `JᵀJ` is singular (the points do not determine θ).
pub fn best_of(starts: &[Vec<f64>], l: &[f64], model: Model) -> Result<(Vec<f64>, Option<DMatrix<f64>>, f64)> {
    let mut best: Option<(Vec<f64>, f64)> = None;
    for s in starts {
        if let Some((th, sse)) = levenberg_marquardt(s.clone(), l, model) {
            if best.as_ref().is_none_or(|b| sse < b.1) {
                best = Some((th, sse));
            }
        }
    }
    let Some((th, sse)) = best else { bail!("the fit did not converge from any start") };
    let (_, jac) = residuals_and_jacobian(&th, l, model);
    let dof = l.len().saturating_sub(th.len());
    let cov = (dof > 0).then(|| (jac.transpose() * &jac).try_inverse()).flatten().map(|inv| inv * (sse / dof as f64));
    Ok((th, cov, sse))
}

fn residuals_and_jacobian(th: &[f64], l: &[f64], model: Model) -> (DVector<f64>, DMatrix<f64>) {
    let r = DVector::from_iterator(l.len(), (0..l.len()).map(|i| l[i].ln() - model(th, i).ln()));
    let mut j = DMatrix::zeros(l.len(), th.len());
    for k in 0..th.len() {
        let h = 1e-6 * th[k].abs().max(1e-3);
        let (mut up, mut dn) = (th.to_vec(), th.to_vec());
        up[k] += h;
        dn[k] -= h;
        for i in 0..l.len() {
            // d r / d θ = −d ln L̂ / d θ
            j[(i, k)] = -(model(&up, i).ln() - model(&dn, i).ln()) / (2.0 * h);
        }
    }
    (r, j)
}

fn levenberg_marquardt(mut th: Vec<f64>, l: &[f64], model: Model) -> Option<(Vec<f64>, f64)> {
    let sse = |t: &[f64]| -> f64 { (0..l.len()).map(|i| (l[i].ln() - model(t, i).ln()).powi(2)).sum::<f64>() };
    let mut cur = sse(&th);
    if !cur.is_finite() {
        return None;
    }
    let mut lambda = 1e-3;
    for _ in 0..500 {
        let (r, j) = residuals_and_jacobian(&th, l, model);
        let jtj = j.transpose() * &j;
        let g = j.transpose() * &r;
        let mut improved = false;
        for _ in 0..20 {
            let mut a = jtj.clone();
            for k in 0..th.len() {
                a[(k, k)] += lambda * jtj[(k, k)].max(1e-12);
            }
            let Some(step) = a.lu().solve(&(-&g)) else {
                lambda *= 10.0;
                continue;
            };
            let cand: Vec<f64> = th.iter().zip(step.iter()).map(|(t, s)| t + s).collect();
            let v = sse(&cand);
            if v.is_finite() && v < cur {
                let done = (cur - v) < 1e-15 * cur.max(1e-300) || step.norm() < 1e-12;
                th = cand;
                cur = v;
                lambda = (lambda / 3.0).max(1e-12);
                improved = true;
                if done {
                    return Some((th, cur));
                }
                break;
            }
            lambda *= 4.0;
        }
        if !improved {
            break;
        }
    }
    Some((th, cur))
}
