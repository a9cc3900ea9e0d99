//! IsoFLOP profiles (Hoffmann et al. 2022, their second approach). The points of one compute budget
//! trace the loss against the model size at fixed compute. A parabola in ln N through them places the
//! size the budget is best spent on, `N_opt(C)`, and its tokens `D_opt(C)`. Power laws through the
//! optima of several budgets then give `N_opt = k·C^a` and `D_opt = k·C^b`: how to grow the model and
//! the data with compute, measured without assuming the form of `L(N, D)` (`fit::chinchilla`).
//!
//! A budget's points are those whose compute agrees within [`SAME_BUDGET`]: a sweep's `compute` axis
//! spends each budget in whole steps, so its runs overshoot it by up to one step each. Points a sweep
//! planned for a budget are taken at it (a step can be more than 10 % of a small budget).

use nalgebra::{Matrix3, Vector3};
use serde::Serialize;

use super::budget::FAR_BEYOND;
use super::fit::{distinct, line, t975};
use super::points::Point;

/// Points whose compute differs by less than this factor are of one budget.
pub const SAME_BUDGET: f64 = 1.1;

/// One budget's points and the parabola through them.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    /// The geometric mean of its points' compute (FLOPs).
    pub compute: f64,
    /// Its points' numbers in the fitted points' table (from 1), by size.
    pub points: Vec<usize>,
    /// `(N, D, loss)` of each point, by size.
    pub measured: Vec<(f64, f64, f64)>,
    pub parabola: Parabola,
    /// `None`: the parabola opens downwards (no minimum).
    pub optimum: Option<Optimum>,
}

/// `L ≈ c0 + c1·u + c2·u²` in `u = ln N − centre` (centre: the mean ln N of the profile, which keeps
/// the normal equations well conditioned).
#[derive(Clone, Debug, Serialize)]
pub struct Parabola {
    pub centre: f64,
    pub coefs: [f64; 3],
    /// Root mean square of the loss residuals.
    pub rmse: f64,
    /// The coefficients' covariance (`None`: 3 points, no degrees of freedom left).
    #[serde(skip)]
    cov: Option<Matrix3<f64>>,
}

impl Parabola {
    pub fn at(&self, n: f64) -> f64 {
        let u = n.ln() - self.centre;
        self.coefs[0] + self.coefs[1] * u + self.coefs[2] * u * u
    }

    /// Least squares through `(ln N, loss)` pairs (at least 3 distinct sizes).
    fn fit(ln_n: &[f64], loss: &[f64]) -> Option<Parabola> {
        let centre = ln_n.iter().sum::<f64>() / ln_n.len() as f64;
        let (mut xtx, mut xty) = (Matrix3::zeros(), Vector3::zeros());
        for (&x, &y) in ln_n.iter().zip(loss) {
            let u = x - centre;
            let row = Vector3::new(1.0, u, u * u);
            xtx += row * row.transpose();
            xty += row * y;
        }
        let inv = xtx.try_inverse()?;
        let c = inv * xty;
        let coefs = [c[0], c[1], c[2]];
        let sse: f64 = ln_n
            .iter()
            .zip(loss)
            .map(|(&x, &y)| (y - c[0] - c[1] * (x - centre) - c[2] * (x - centre).powi(2)).powi(2))
            .sum();
        let dof = ln_n.len() - 3;
        let cov = (dof > 0).then(|| inv * (sse / dof as f64));
        Some(Parabola { centre, coefs, rmse: (sse / ln_n.len() as f64).sqrt(), cov })
    }
}

/// The parabola's minimum.
#[derive(Clone, Debug, Serialize)]
pub struct Optimum {
    /// N_opt, and its 95 % interval (delta method on the parabola's covariance; from 4 points).
    pub params: f64,
    pub params_ci95: Option<(f64, f64)>,
    /// D_opt: ln D against ln N through the profile's points, at N_opt.
    pub tokens: f64,
    /// The parabola's loss there.
    pub loss: f64,
    /// Within the profile's sizes: only these optima enter the exponents.
    pub inside: bool,
}

/// `y = k·C^exponent` through the optima.
#[derive(Clone, Debug, Serialize)]
pub struct Exponent {
    pub k: f64,
    pub exponent: f64,
    /// `None`: fitted through 2 budgets (exact).
    pub ci95: Option<(f64, f64)>,
    /// Budgets (optima) fitted.
    pub n: usize,
}

impl Exponent {
    pub fn at(&self, c: f64) -> f64 {
        self.k * c.powf(self.exponent)
    }

    fn through(c: &[f64], y: &[f64]) -> Option<Exponent> {
        let ln = |v: &[f64]| v.iter().map(|x| x.ln()).collect::<Vec<_>>();
        let l = line(&ln(c), &ln(y), "compute").ok()?;
        Some(Exponent { k: l.icpt.exp(), exponent: l.slope, ci95: l.slope_ci95(), n: c.len() })
    }
}

/// The profiles, the laws through their optima and what those laws place at the budgets asked for.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IsoFlop {
    pub profiles: Vec<Profile>,
    /// `N_opt = k·C^a` (`a` is `exponent`).
    pub params: Option<Exponent>,
    /// `D_opt = k·C^b`.
    pub tokens: Option<Exponent>,
    /// `(C, N_opt, D_opt)` at each budget asked for (with both laws).
    pub budgets: Vec<(f64, f64, f64)>,
}

/// The points grouped by compute budget ([`SAME_BUDGET`]; a point a sweep planned, by its planned
/// budget), each group's indices into `points` by that compute.
pub(super) fn budgets_of(points: &[Point]) -> Vec<Vec<usize>> {
    let budget = |i: usize| points[i].planned_compute.unwrap_or(points[i].compute);
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| budget(a).total_cmp(&budget(b)));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match groups.last_mut() {
            Some(g) if budget(i) < budget(g[0]) * SAME_BUDGET => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups
}

/// The geometric mean of the compute of `points[idx]`: a budget's compute.
fn geometric_mean(points: &[Point], idx: &[usize]) -> f64 {
    (idx.iter().map(|&i| points[i].compute.ln()).sum::<f64>() / idx.len() as f64).exp()
}

/// Which way along the sizes a profile points: where its losses still fall, or where its N_opt lies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Smaller,
    Larger,
}

impl Side {
    /// "smaller" or "larger" (models to add).
    fn comparative(self) -> &'static str {
        match self {
            Side::Smaller => "smaller",
            Side::Larger => "larger",
        }
    }

    /// "smallest" or "largest" (the end of the sizes run).
    fn superlative(self) -> &'static str {
        match self {
            Side::Smaller => "smallest",
            Side::Larger => "largest",
        }
    }
}

/// The side a profile's losses still fall towards, when its lowest loss is at its smallest or largest size
/// (its minimum not bracketed by the sizes run).
fn falling_towards(p: &Profile) -> Option<Side> {
    let lowest = p.measured.iter().enumerate().min_by(|a, b| a.1 .2.total_cmp(&b.1 .2)).map_or(0, |(i, _)| i);
    match lowest {
        0 => Some(Side::Smaller),
        i if i + 1 == p.measured.len() => Some(Side::Larger),
        _ => None,
    }
}

/// Why a profile has no minimum, and which models to add.
fn no_minimum(p: &Profile) -> String {
    let hint = match falling_towards(p) {
        Some(side) => format!(
            "its loss is lowest at its {} size: add {} models at this budget",
            side.superlative(),
            side.comparative()
        ),
        None => "its losses do not curve upwards around a minimum: repeats (other seeds) or more sizes may settle it"
            .to_string(),
    };
    format!("the IsoFLOP profile at C = {:.3e} has no minimum ({hint})", p.compute)
}

/// A profile of `idx` (by compute) with at least 3 distinct sizes, fitted.
fn profile(points: &[Point], idx: &[usize]) -> Option<Profile> {
    let mut idx = idx.to_vec();
    idx.sort_by(|&a, &b| points[a].params.total_cmp(&points[b].params));
    let measured: Vec<(f64, f64, f64)> =
        idx.iter().map(|&i| (points[i].params, points[i].tokens, points[i].loss)).collect();
    let ln_n: Vec<f64> = measured.iter().map(|m| m.0.ln()).collect();
    let ln_d: Vec<f64> = measured.iter().map(|m| m.1.ln()).collect();
    let loss: Vec<f64> = measured.iter().map(|m| m.2).collect();
    let parabola = Parabola::fit(&ln_n, &loss)?;
    let compute = geometric_mean(points, &idx);
    let [_, c1, c2] = parabola.coefs;
    let optimum = (c2 > 0.0).then(|| {
        let u = -c1 / (2.0 * c2);
        let ln_opt = parabola.centre + u;
        // d u / d(c0, c1, c2)
        let g = Vector3::new(0.0, -1.0 / (2.0 * c2), c1 / (2.0 * c2 * c2));
        let half = parabola.cov.zip(t975(idx.len() - 3)).map(|(cov, t)| t * (g.transpose() * cov * g)[(0, 0)].sqrt());
        let tokens = line(&ln_n, &ln_d, "size").map_or(f64::NAN, |l| (l.icpt + l.slope * ln_opt).exp());
        Optimum {
            params: ln_opt.exp(),
            params_ci95: half.filter(|h| h.is_finite()).map(|h| ((ln_opt - h).exp(), (ln_opt + h).exp())),
            tokens,
            loss: parabola.at(ln_opt.exp()),
            inside: ln_n[0] <= ln_opt && ln_opt <= ln_n[ln_n.len() - 1],
        }
    });
    Some(Profile { compute, points: idx.iter().map(|i| i + 1).collect(), measured, parabola, optimum })
}

/// Profiles of `points` (the fitted points) and the exponents through their optima, with `N_opt` and
/// `D_opt` at each of `budgets`; and the notes and warnings on them.
pub fn analyse(points: &[Point], budgets: &[f64]) -> (IsoFlop, Vec<String>, Vec<String>) {
    let (mut notes, mut warnings) = (Vec::new(), Vec::new());
    let mut iso = IsoFlop::default();
    let mut thin = Vec::new();
    for g in budgets_of(points) {
        let sizes = distinct(g.iter().map(|&i| points[i].params));
        match sizes >= 3 {
            true => iso.profiles.extend(profile(points, &g)),
            false if g.len() >= 2 => {
                thin.push(format!("{:.3e} ({})", geometric_mean(points, &g), crate::cli::plural(sizes, "size")))
            }
            false => {}
        }
    }
    if !thin.is_empty() {
        notes.push(format!(
            "IsoFLOP profiles need 3 or more model sizes at one compute budget; these budgets have fewer: {}",
            thin.join(", ")
        ));
    }
    if iso.profiles.is_empty() {
        // (the budgets with too few sizes, named above, say it already)
        if thin.is_empty() {
            notes.push(
                "no IsoFLOP profiles: no compute budget has points of 3 or more model sizes (computes within 10 % \
                 count as one budget; a sweep's `compute` axis with 3 or more sizes makes them)"
                    .to_string(),
            );
        }
        return (iso, notes, warnings);
    }
    for p in &iso.profiles {
        // (3 coefficients for 3 points: a zero residual says nothing of the shape)
        if p.measured.len() == 3 {
            warnings.push(format!(
                "the IsoFLOP parabola at C = {:.3e} passes exactly through its 3 sizes (3 coefficients for 3 points): \
                 nothing tests its shape, and its N_opt has no interval; a fourth size at this budget tests it",
                p.compute
            ));
        }
        match &p.optimum {
            None => warnings.push(no_minimum(p)),
            Some(o) if !o.inside => {
                let (lo, hi) = (p.measured[0].0, p.measured[p.measured.len() - 1].0);
                let side = if o.params < lo { Side::Smaller } else { Side::Larger };
                warnings.push(format!(
                    "the IsoFLOP profile at C = {:.3e} places N_opt = {:.3e} outside the sizes it ran ({lo:.3e} to \
                     {hi:.3e}): an extrapolation, left out of the exponents; add {} models at this budget",
                    p.compute,
                    o.params,
                    side.comparative()
                ))
            }
            Some(o) => {
                if let Some(side) = falling_towards(p) {
                    warnings.push(format!(
                        "the IsoFLOP profile at C = {:.3e} has its lowest loss at its {} size: its N_opt = {:.3e} \
                         rests on the parabola's shape, not on runs either side of it; add {} models at this budget",
                        p.compute,
                        side.superlative(),
                        o.params,
                        side.comparative()
                    ));
                }
            }
        }
    }
    let optima: Vec<(f64, &Optimum)> =
        iso.profiles.iter().filter_map(|p| p.optimum.as_ref().filter(|o| o.inside).map(|o| (p.compute, o))).collect();
    let c: Vec<f64> = optima.iter().map(|o| o.0).collect();
    if optima.len() >= 2 {
        iso.params = Exponent::through(&c, &optima.iter().map(|o| o.1.params).collect::<Vec<_>>());
        iso.tokens = Exponent::through(&c, &optima.iter().map(|o| o.1.tokens).collect::<Vec<_>>());
        if optima.len() == 2 {
            warnings.push(
                "N_opt = k·C^a and D_opt = k·C^b pass through the optima of 2 budgets: exact, with no uncertainty; \
                 a third budget gives their intervals"
                    .to_string(),
            );
        }
    } else {
        notes.push(format!(
            "N_opt = k·C^a and D_opt = k·C^b need the optima (within the sizes run) of 2 or more budgets, found {}",
            optima.len()
        ));
    }
    if iso.params.is_some() && iso.tokens.is_none() {
        notes.push("D_opt = k·C^b: not fitted (a budget's D_opt could not be placed: see the profiles' table)".into());
    }
    if let (Some(n), Some(d)) = (&iso.params, &iso.tokens) {
        iso.budgets = budgets.iter().map(|&b| (b, n.at(b), d.at(b))).collect();
        let largest = c.iter().copied().fold(0.0, f64::max);
        let smallest = c.iter().copied().fold(f64::INFINITY, f64::min);
        for &b in budgets.iter().filter(|&&b| b > FAR_BEYOND * largest) {
            warnings.push(format!(
                "at C = {b:.3e}: N_opt and D_opt from the IsoFLOP laws extrapolate {:.0}× beyond the largest budget \
                 they were fitted on ({largest:.3e}); they hold only as far as the power laws do",
                b / largest
            ));
        }
        for &b in budgets.iter().filter(|&&b| b * FAR_BEYOND < smallest) {
            warnings.push(format!(
                "at C = {b:.3e}: N_opt and D_opt from the IsoFLOP laws extrapolate to {:.2e} of the smallest budget \
                 they were fitted on ({smallest:.3e}); they hold only as far as the power laws do",
                b / smallest
            ));
        }
    }
    (iso, notes, warnings)
}

#[cfg(test)]
mod tests {
    use nalgebra::{DMatrix, DVector};

    use super::*;

    #[test]
    fn a_parabola_through_exact_points_has_their_minimum_and_an_interval_from_four() {
        let ln_n: Vec<f64> = [1e5f64, 3e5, 1e6, 3e6, 1e7].iter().map(|n| n.ln()).collect();
        let at = |x: f64| 0.5 + 0.02 * (x - 1.5e6f64.ln()).powi(2);
        let loss: Vec<f64> = ln_n.iter().map(|&x| at(x)).collect();
        let p = Parabola::fit(&ln_n, &loss).unwrap();
        assert!(p.rmse < 1e-12 && (p.at(1.5e6) - 0.5).abs() < 1e-12, "{p:?}");
        let points: Vec<Point> = ln_n
            .iter()
            .zip(&loss)
            .enumerate()
            .map(|(i, (&x, &l))| Point {
                runs: vec![format!("r{i}")],
                dirs: vec![],
                params: x.exp(),
                tokens: 1e15 / (6.0 * x.exp()),
                compute: 1e15 * (1.0 + 0.01 * i as f64),
                planned_compute: None,
                loss: l,
                std: None,
                on_frontier: false,
            })
            .collect();
        let (iso, _, warnings) = analyse(&points, &[]);
        assert_eq!(iso.profiles.len(), 1, "computes within 10 % are one budget");
        let o = iso.profiles[0].optimum.as_ref().unwrap();
        assert!((o.params / 1.5e6 - 1.0).abs() < 1e-9 && o.inside, "{o:?}");
        assert!((o.tokens / (1e15 / (6.0 * 1.5e6)) - 1.0).abs() < 0.05, "{o:?}");
        // an exact fit has a zero-width interval; the warning: one budget gives no exponent
        let (lo, hi) = o.params_ci95.unwrap();
        assert!((lo / 1.5e6 - 1.0).abs() < 1e-6 && (hi / 1.5e6 - 1.0).abs() < 1e-6);
        assert!(iso.params.is_none() && warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_parabola_through_three_sizes_is_said_to_be_exact() {
        let at = |n: f64| 0.5 + 0.02 * (n.ln() - 1.5e6f64.ln()).powi(2);
        let three: Vec<Point> = [3e5, 1e6, 3e6].iter().map(|&n| point(n, 1e15, at(n))).collect();
        let (iso, _, warnings) = analyse(&three, &[]);
        assert_eq!(iso.profiles.len(), 1);
        assert!(warnings.iter().any(|w| w.contains("passes exactly through its 3 sizes")), "{warnings:?}");
        let four: Vec<Point> = [3e5, 1e6, 3e6, 1e7].iter().map(|&n| point(n, 1e15, at(n))).collect();
        assert!(analyse(&four, &[]).2.iter().all(|w| !w.contains("exactly")));
    }

    fn point(n: f64, c: f64, loss: f64) -> Point {
        let runs = vec![format!("n{n:e}")];
        let tokens = c / (6.0 * n);
        Point {
            runs,
            dirs: vec![],
            params: n,
            tokens,
            compute: c,
            planned_compute: None,
            loss,
            std: None,
            on_frontier: false,
        }
    }

    #[test]
    fn a_budget_is_the_points_within_ten_percent_of_its_smallest_compute() {
        let computes = [1.0e15, 1.09e15, 1.2e15, 1.25e15, 1.31e15, 1.33e15, 5e14];
        let points: Vec<Point> = computes.iter().map(|&c| point(1e6, c, 0.5)).collect();
        assert_eq!(budgets_of(&points), vec![vec![6], vec![0, 1], vec![2, 3, 4], vec![5]]);
        // a sweep's run planned for 1e15 that overshot it by 13 % (one step of seven) is of that budget
        let planned = |c: f64, plan: Option<f64>| Point { planned_compute: plan, ..point(1e6, c, 0.5) };
        let points = [planned(1.0e15, Some(1e15)), planned(1.13e15, Some(1e15)), planned(1.13e15, None)];
        assert_eq!(budgets_of(&points), vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn the_optimums_interval_is_the_delta_method_on_the_parabolas_covariance() {
        // a noisy profile, checked against an independent computation: the parabola by SVD least squares,
        // the gradient of ln N_opt by central differences, Student's t(0.975, 5 − 3) from the tables
        let ln_n: Vec<f64> = [2e5f64, 5e5, 1e6, 2e6, 5e6].iter().map(|n| n.ln()).collect();
        let loss = [0.5321, 0.5104, 0.5049, 0.5083, 0.5262];
        let points: Vec<Point> = ln_n.iter().zip(loss).map(|(&x, l)| point(x.exp(), 1e15, l)).collect();
        let (iso, _, _) = analyse(&points, &[]);
        let o = iso.profiles[0].optimum.as_ref().unwrap();
        let centre = ln_n.iter().sum::<f64>() / 5.0;
        let x = DMatrix::from_fn(5, 3, |i, j| (ln_n[i] - centre).powi(j as i32));
        let y = DVector::from_column_slice(&loss);
        let c = x.clone().svd(true, true).solve(&y, 1e-12).unwrap();
        let s2 = (&y - &x * &c).norm_squared() / 2.0;
        let cov = (x.transpose() * &x).try_inverse().unwrap() * s2;
        let u = |c: &[f64]| centre - c[1] / (2.0 * c[2]);
        let g: Vec<f64> = (0..3)
            .map(|k| {
                let (mut up, mut dn) = (c.as_slice().to_vec(), c.as_slice().to_vec());
                up[k] += 1e-7;
                dn[k] -= 1e-7;
                (u(&up) - u(&dn)) / 2e-7
            })
            .collect();
        let var: f64 = (0..3).flat_map(|i| (0..3).map(move |j| (i, j))).map(|(i, j)| g[i] * g[j] * cov[(i, j)]).sum();
        let (ln_opt, half) = (u(c.as_slice()), 4.302652729911275 * var.sqrt());
        assert!((o.params.ln() - ln_opt).abs() < 1e-9, "{o:?}");
        let (lo, hi) = o.params_ci95.unwrap();
        assert!(
            (lo.ln() - (ln_opt - half)).abs() < 1e-6 && (hi.ln() - (ln_opt + half)).abs() < 1e-6,
            "{o:?} vs ±{half}"
        );
        assert!(half > 0.01, "a noisy profile's interval has width: ±{half}");
    }
}
