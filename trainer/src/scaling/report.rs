//! The text of the `infinity scaling` report: the runs' table (`runs.csv`, `runs.md`, one row per run
//! with whether it is fitted, the point it is part of and whether that is on the compute frontier),
//! the fits' Markdown (`fits.md`: Pearson r, warnings, coefficients with their 95 % intervals, the
//! fitted points with their runs' spread, notes), and the budgets' and IsoFLOP profiles' tables appended
//! to it.

use std::fmt::Write as _;

use super::fit::Fit;
use super::isoflop::IsoFlop;
use super::points::Point;
use super::{budget, RunRecord};

/// What the losses are: the training objective (model/forward.rs), in words for the tables.
pub const LOSS_UNIT: &str = "nats per bit: the mean binary cross-entropy of each token's bits (ln 2 = 0.693 \
                             is chance), weighted over tokens as the training loss is";

/// The table's columns (columns added later go at the end: the CSV's earlier columns keep their places).
const COLUMNS: [&str; 22] = [
    "run",
    "parameters",
    "steps",
    "tokens",
    "compute_flops",
    "final_train_loss",
    "final_val_loss",
    "smoothed_val_loss",
    "finished",
    "diverged",
    "fitted",
    "on_frontier",
    "point",
    "smoothed_train_loss",
    "depth",
    "embed_dim",
    "num_heads",
    "lr",
    "global_batch",
    "tokens_per_s",
    "mfu",
    "non_embedding_parameters",
];

/// The fitted point a run is part of (its number in the fitted points' table, from 1), if any.
type PointOf<'a> = dyn Fn(&RunRecord) -> Option<(usize, &'a Point)> + 'a;

/// One table row; missing values are empty.
fn row(r: &RunRecord, point_of: &PointOf) -> [String; COLUMNS.len()] {
    let point = point_of(r);
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    let shape =
        |f: fn(&crate::model::ModelConfig) -> usize| r.model.as_ref().map_or(String::new(), |m| f(m).to_string());
    let general = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    [
        r.name.clone(),
        r.params.to_string(),
        r.steps.to_string(),
        format!("{:.6e}", r.tokens),
        format!("{:.6e}", r.compute),
        format!("{:.6}", r.final_train),
        opt(r.final_val),
        opt(r.smoothed_val),
        r.finished.to_string(),
        r.ended_diverged().to_string(),
        point.is_some().to_string(),
        point.is_some_and(|p| p.1.on_frontier).to_string(),
        point.map_or(String::new(), |p| p.0.to_string()),
        opt(r.smoothed_train),
        shape(|m| m.depth),
        shape(|m| m.embed_dim),
        shape(|m| m.num_heads),
        general(r.lr),
        general(r.global_batch),
        r.tokens_per_s.map_or(String::new(), |v| format!("{v:.1}")),
        opt(r.mfu),
        r.non_embedding_params.map_or(String::new(), |n| n.to_string()),
    ]
}

pub(super) fn runs_csv(runs: &[RunRecord], point_of: &PointOf) -> String {
    let mut s = COLUMNS.join(",") + "\n";
    for r in runs {
        let cells: Vec<String> = row(r, point_of).into_iter().map(csv_cell).collect();
        s.push_str(&(cells.join(",") + "\n"));
    }
    s
}

/// A CSV cell: quoted (quotes doubled) where it holds a comma, a quote or a line break, as a run's
/// folder name may.
fn csv_cell(c: String) -> String {
    match c.contains([',', '"', '\n', '\r']) {
        true => format!("\"{}\"", c.replace('"', "\"\"")),
        false => c,
    }
}

pub(super) fn runs_markdown(runs: &[RunRecord], point_of: &PointOf) -> String {
    let mut s = format!(
        "# Runs\n\nLosses in {LOSS_UNIT}; smoothed = the mean of the validation losses (or of the finite \
         training losses, one batch's each) in the last 10 % of the steps: the fits take the smoothed validation \
         loss, else the smoothed training loss, else the final training loss. `point`: the fitted point (fits.md) the run is part of: repeats of a config are one point.\n\n| {} \
         |\n|{}\n",
        COLUMNS.join(" | "),
        "---|".repeat(COLUMNS.len())
    );
    for r in runs {
        let cells: Vec<String> = row(r, point_of)
            .into_iter()
            .map(|c| if c.is_empty() { "–".into() } else { c.replace('|', "\\|") })
            .collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s
}

/// A Pearson r, or why there is none.
pub fn pearson_text(r: f64, n: usize) -> String {
    match r.is_finite() {
        true => format!("{r:.4} over {}", crate::cli::plural(n, "point")),
        false => format!("not enough points ({n})"),
    }
}

/// The Pearson r of ln L on ln C over the fitted points and over those on the compute frontier.
pub struct Correlations {
    pub all: (f64, usize),
    pub frontier: (f64, usize),
}

pub(super) fn fits_markdown(
    fits: &[&Fit],
    r: &Correlations,
    points: &[Point],
    notes: &[String],
    warnings: &[String],
) -> String {
    let mut s = format!(
        "# Scaling fits\n\nLosses in {LOSS_UNIT}. Pearson r of ln(loss) against ln(compute): all fitted points {}; \
         the compute frontier {}.\n\n",
        pearson_text(r.all.0, r.all.1),
        pearson_text(r.frontier.0, r.frontier.1)
    );
    for w in warnings {
        let _ = writeln!(s, "**Warning**: {w}\n");
    }
    for f in fits {
        let runs = match f.runs > f.n {
            true => format!(" (from {} runs)", f.runs),
            false => String::new(),
        };
        let _ = writeln!(s, "## {}\n\n{} points{runs}, RMS of the log residuals {:.4}\n", f.formula, f.n, f.rmse_log);
        s.push_str("| coefficient | value | 95 % interval |\n|---|---|---|\n");
        // no interval: too few points for the coefficients, or a covariance the points leave singular
        // (a coefficient at its bound, such as E at 0, or two that the points do not separate)
        let why = match f.n <= f.coefs.len() {
            true => "– (no degrees of freedom: the fit is exact)",
            false => "– (not determined: the fit's covariance is singular)",
        };
        for c in &f.coefs {
            let ci = c.ci95.map_or(why.into(), |(lo, hi)| format!("[{}, {}]", coef_text(lo), coef_text(hi)));
            let _ = writeln!(s, "| {} | {} | {} |", c.name, coef_text(c.value), ci);
        }
        s.push('\n');
    }
    if !points.is_empty() {
        s.push_str(
            "## Fitted points\n\nOne per distinct config: the mean loss of its runs (repeats with other seeds or \
             folders), their standard deviation and count.\n\n| point | runs | N | D | C (FLOPs) | mean loss | std | n | \
             on frontier |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for (i, p) in points.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {:.4e} | {:.4e} | {:.4e} | {:.5} | {} | {} | {} |",
                i + 1,
                p.runs.join(", "),
                p.params,
                p.tokens,
                p.compute,
                p.loss,
                p.std.map_or("–".into(), |v| format!("{v:.5}")),
                p.n(),
                p.on_frontier
            );
        }
        s.push('\n');
    }
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// A fit's coefficient or interval bound as the console and `fits.md` show it: 5 decimals from 0.001 to
/// 1e5, else 4 significant digits in scientific notation (an interval's bound can be 1e41, which fixed
/// decimals would spell in 42 digits), 0 as `0`.
pub fn coef_text(x: f64) -> String {
    match x.abs() {
        0.0 => "0".to_string(),
        a if (1e-3..1e5).contains(&a) || !a.is_finite() => format!("{x:.5}"),
        _ => format!("{x:.3e}"),
    }
}

/// The budgets' table (empty without budgets).
pub fn budgets_markdown(plans: &[budget::BudgetPlan]) -> String {
    if plans.is_empty() {
        return String::new();
    }
    let mut s = "\n## Budgets\n\nk = training FLOPs per parameter and token, the runs' median (its spread: the \
                 notes); N* and D* minimise L(N, D) under C = k·N·D; † = outside the runs' range of N or D (an \
                 extrapolation). Losses with the 95 % interval of the fitted law there (from the fit's covariance; \
                 \"no interval\": the fit has none), which holds only as far as the law does: past 10× the largest \
                 run, a warning.\n\n| C (FLOPs) | × largest run | L(C) power | L(C) with floor | N* | D* (tokens) | \
                 L(N*, D*) | nearest preset |\n|---|---|---|---|---|---|---|---|\n"
        .to_string();
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("–".to_string(), f);
    let loss = |v: Option<f64>, ci: Option<(f64, f64)>| match (v, ci) {
        (None, _) => "–".to_string(),
        (Some(v), Some((lo, hi))) => format!("{v:.4} [{lo:.4}, {hi:.4}]"),
        (Some(v), None) => format!("{v:.4} (no interval)"),
    };
    for b in plans {
        let o = b.optimal.as_ref();
        let dagger = |what: &str| match o.and_then(|o| o.extrapolation.as_ref()).is_some_and(|x| x.contains(what)) {
            true => "†",
            false => "",
        };
        let _ = writeln!(
            s,
            "| {:.3e} | {} | {} | {} | {}{} | {}{} | {} | {} |",
            b.compute,
            super::budget::times_text(b.times_largest_run),
            loss(b.loss_power, b.loss_power_ci95),
            loss(b.loss_power_floor, b.loss_power_floor_ci95),
            opt(o.map(|o| o.params), &|v| format!("{v:.3e}")),
            dagger("N*"),
            opt(o.map(|o| o.tokens), &|v| format!("{v:.3e}")),
            dagger("D*"),
            loss(o.map(|o| o.loss), o.and_then(|o| o.loss_ci95)),
            o.and_then(|o| o.nearest_preset.as_ref()).map_or("–".into(), |(p, n)| format!("{p} ({:.3e})", *n as f64)),
        );
    }
    s
}

/// The IsoFLOP profiles' section (empty without profiles).
pub fn isoflop_markdown(iso: &IsoFlop) -> String {
    if iso.profiles.is_empty() {
        return String::new();
    }
    let mut s = "\n## IsoFLOP profiles\n\nThe points of one compute budget (computes within 10 %), loss against \
                 model size: a parabola in ln N through each places the compute-optimal size N_opt (its 95 % interval \
                 from the parabola's covariance, from 4 points), its tokens D_opt (ln D against ln N through the \
                 points, at N_opt) and the parabola's loss there; † = outside the sizes run (an extrapolation, left \
                 out of the exponents).\n\n| C (FLOPs) | points | N from | N to | N_opt | 95 % interval | D_opt \
                 (tokens) | loss at N_opt | RMS residual |\n|---|---|---|---|---|---|---|---|---|\n"
        .to_string();
    for p in &iso.profiles {
        let points: Vec<String> = p.points.iter().map(usize::to_string).collect();
        let (lo, hi) = (p.measured[0].0, p.measured[p.measured.len() - 1].0);
        let o = p.optimum.as_ref();
        let _ = writeln!(
            s,
            "| {:.3e} | {} | {lo:.3e} | {hi:.3e} | {} | {} | {} | {} | {:.5} |",
            p.compute,
            points.join(", "),
            o.map_or("no minimum".into(), |o| format!("{:.3e}{}", o.params, if o.inside { "" } else { "†" })),
            o.and_then(|o| o.params_ci95).map_or("–".into(), |(lo, hi)| format!("[{lo:.3e}, {hi:.3e}]")),
            o.map_or("–".into(), |o| format!("{:.3e}", o.tokens)),
            o.map_or("–".into(), |o| format!("{:.5}", o.loss)),
            p.parabola.rmse,
        );
    }
    s.push('\n');
    for (what, sym, e) in [("N_opt", "a", &iso.params), ("D_opt", "b", &iso.tokens)] {
        if let Some(e) = e {
            let ci = e.ci95.map_or("no interval: 2 budgets".into(), |(lo, hi)| format!("95 % [{lo:.4}, {hi:.4}]"));
            let (x, k, n) = (e.exponent, e.k, e.n);
            let _ =
                writeln!(s, "- {what} = k·C^{sym}: {sym} = {x:.4} ({ci}), k = {k:.4e}, through {n} budgets' optima");
        }
    }
    if !iso.budgets.is_empty() {
        s.push_str(
            "\nAt the budgets asked for (`--budget`), from those two laws:\n\n| C (FLOPs) | N_opt | D_opt (tokens) \
             |\n|---|---|---|\n",
        );
        for (c, n, d) in &iso.budgets {
            let _ = writeln!(s, "| {c:.3e} | {n:.3e} | {d:.3e} |");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_far_from_1_are_shown_in_scientific_notation() {
        let shown: Vec<String> = [32663495.47426, 8.46266870335752e41, 0.0, 0.46813, 468.13567, -2.5e-7, 99999.0]
            .into_iter()
            .map(coef_text)
            .collect();
        assert_eq!(shown, ["3.266e7", "8.463e41", "0", "0.46813", "468.13567", "-2.500e-7", "99999.00000"]);
        use crate::scaling::fit::{Coef, Law};
        let fit = Fit {
            formula: "L = E + A/N^α + B/D^β",
            coefs: vec![Coef { name: "A", value: 32663495.47426, ci95: Some((0.0, 8.46266870335752e41)) }],
            n: 9,
            runs: 9,
            rmse_log: 0.0,
            law: Law::Chinchilla,
            theta: vec![0.0],
            cov: None,
        };
        let md = fits_markdown(&[&fit], &Correlations { all: (f64::NAN, 0), frontier: (f64::NAN, 0) }, &[], &[], &[]);
        assert!(md.contains("| A | 3.266e7 | [0, 8.463e41] |"), "{md}");
    }

    #[test]
    fn a_missing_interval_gives_its_reason() {
        use crate::scaling::fit::{Coef, Law};
        let coefs = |k: usize| (0..k).map(|_| Coef { name: "E", value: 0.0, ci95: None }).collect::<Vec<_>>();
        let fit = |n: usize| Fit {
            formula: "L = E + A/N^α + B/D^β",
            coefs: coefs(5),
            n,
            runs: n,
            rmse_log: 0.0,
            law: Law::Chinchilla,
            theta: vec![0.0; 5],
            cov: None,
        };
        let (nine, five) = (fit(9), fit(5));
        let r = Correlations { all: (-0.9, 9), frontier: (f64::NAN, 1) };
        assert!(fits_markdown(&[&nine], &r, &[], &[], &[]).contains("covariance is singular"));
        let md = fits_markdown(&[&five], &r, &[], &[], &[]);
        assert!(md.contains("no degrees of freedom: the fit is exact"), "{md}");
        assert!(
            md.contains("all fitted points -0.9000 over 9 points; the compute frontier not enough points (1)"),
            "{md}"
        );
        assert!(md.contains("nats per bit"), "{md}");
    }

    #[test]
    fn a_csv_cell_with_a_comma_or_quote_is_quoted() {
        assert_eq!(super::csv_cell("w64".into()), "w64");
        assert_eq!(super::csv_cell("sweep, depth 1/w64".into()), "\"sweep, depth 1/w64\"");
        assert_eq!(super::csv_cell("a\"b".into()), "\"a\"\"b\"");
    }
}
