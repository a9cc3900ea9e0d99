//! `infinity scaling RUNS_DIR...`: gather every run folder under each `RUNS_DIR` (a sweep's output; several
//! are read as one set of runs: `roots`), take its final and smoothed losses (validation, else training),
//! fit scaling laws (`fit`) to one point per distinct config (`points`), and write a table (CSV,
//! Markdown), the fits (Markdown, JSON) and the figures (`plot`: PNG and SVG) into `RUNS_DIR/scaling/`
//! (`--out` with several). This module holds the orchestration ([`analyse`]) and its [`Report`];
//! reading the run folders is in `runs` and `settings`, which runs the fits take in `select`, the
//! tables' text in `report`.

pub mod budget;
pub mod fit;
pub mod isoflop;
mod legend;
mod lm;
pub mod lr;
pub mod plot;
pub mod points;
mod report;
mod roots;
mod runs;
mod select;
pub mod settings;
mod ticks;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use infinity_data::manifest::write_atomic;
use serde::Serialize;

use self::fit::{pearson, Fit};
use self::points::Point;
pub use self::report::{budgets_markdown, coef_text, isoflop_markdown, pearson_text, Correlations};
use self::report::{fits_markdown, runs_csv, runs_markdown};
use self::runs::read_json;
pub use self::runs::{gather, read_run, RunRecord};
use crate::model::Layout;

/// The fits and where the files went.
pub struct Report {
    pub runs: Vec<RunRecord>,
    /// The fitted points: one per distinct config among the fitted runs.
    pub points: Vec<Point>,
    pub power: Option<Fit>,
    pub power_floor: Option<Fit>,
    pub chinchilla: Option<Fit>,
    /// Pearson r of ln L on ln C over all fitted points, and over the compute frontier's.
    pub pearson: Correlations,
    /// The fits' predictions at the budgets asked for.
    pub budgets: Vec<budget::BudgetPlan>,
    /// The IsoFLOP profiles (points of one compute budget, several sizes) and the laws through their optima.
    pub isoflop: isoflop::IsoFlop,
    pub notes: Vec<String>,
    /// What makes a fit or a prediction doubtful (an exponent at 0, an exact fit, a degenerate
    /// L(N, D), a budget far beyond the runs, N* far from them).
    pub warnings: Vec<String>,
    pub files: Vec<PathBuf>,
}

/// Pearson r of ln L on ln C over `points` (NaN under 2).
fn log_pearson(points: &[&Point]) -> (f64, usize) {
    let (c, l): (Vec<f64>, Vec<f64>) = points.iter().map(|p| (p.compute.ln(), p.loss.ln())).unzip();
    (if points.len() >= 2 { pearson(&c, &l) } else { f64::NAN }, points.len())
}

/// N, the model size the fits take: every parameter (Hoffmann et al.'s) or those outside the
/// embeddings (Kaplan et al.'s, [`Layout::non_embedding_numel`]), whose laws hold down to smaller
/// models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parameters {
    #[default]
    Total,
    NonEmbedding,
}

impl Parameters {
    /// The parameters of `layout` counted this way.
    pub fn count(self, layout: &Layout) -> usize {
        match self {
            Parameters::Total => layout.numel,
            Parameters::NonEmbedding => layout.non_embedding_numel(),
        }
    }

    /// N's name in the tables and figures.
    pub fn label(self) -> &'static str {
        match self {
            Parameters::Total => "parameters N",
            Parameters::NonEmbedding => "non-embedding parameters N",
        }
    }
}

/// What an analysis measures beyond its runs: the budgets to predict at, the validation losses it
/// fits and how it counts N.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measure<'a> {
    /// Training budgets in FLOPs: each fit's prediction there and the compute-optimal split.
    pub at_computes: &'a [f64],
    /// One of the runs' `val.sets`, by name, whose losses replace `val.dir`'s: the scaling of one
    /// domain of a mix.
    pub val_set: Option<&'a str>,
    pub parameters: Parameters,
}

/// Gather the runs in `dirs` (folders of run folders), fit (and predict at each of `at_computes`, in
/// FLOPs), and write tables and figures into `out`.
/// A sweep still under way (no finished run yet) gets its tables and notes, and no fits or figures of
/// them.
pub fn analyse<P: AsRef<Path>>(dirs: &[P], out: &Path, at_computes: &[f64]) -> Result<Report> {
    analyse_with(dirs, out, &Measure { at_computes, ..Default::default() })
}

/// An error where `out` is a folder of runs given, or a run's folder (or inside one): the analysis
/// writes its tables there and removes those of an earlier one it no longer writes.
fn refuse_output_among_runs(out: &Path, roots: &[roots::Root], runs: &[RunRecord]) -> Result<()> {
    // (a folder not made yet: where it would be; `new/../r1` under a `new` not made yet is `r1`)
    let resolved = |p: &Path| crate::train::config::where_it_leads(p);
    let Some(at) = resolved(out) else { return Ok(()) };
    if let Some(root) = roots.iter().find(|r| resolved(&r.dir).as_ref() == Some(&at)) {
        bail!(
            "--out {}: the folder of runs itself ({}): the analysis would write its tables among the run folders \
             (name a folder of its own)",
            out.display(),
            root.dir.display()
        );
    }
    // (the runs read, and those with no summary yet: training, failed or not started)
    let waiting: Vec<(String, PathBuf)> = roots.iter().flat_map(runs::unsummarised).collect();
    let all = runs.iter().map(|r| (&r.name, &r.dir)).chain(waiting.iter().map(|(n, d)| (n, d)));
    if let Some((name, dir)) = all.into_iter().find(|(_, d)| resolved(d).is_some_and(|d| at.starts_with(d))) {
        bail!(
            "--out {}: in the folder of run {name} ({}): the analysis would write its tables into a run (name a \
             folder of its own)",
            out.display(),
            dir.display()
        );
    }
    Ok(())
}

/// [`analyse`] measured as `measure` says.
pub fn analyse_with<P: AsRef<Path>>(dirs: &[P], out: &Path, measure: &Measure) -> Result<Report> {
    let Measure { at_computes, val_set, parameters } = *measure;
    let roots = roots::roots(dirs)?;
    let (mut runs, mut read_notes) = gather(&roots, val_set)?;
    refuse_output_among_runs(out, &roots, &runs)?;
    if let Some(name) = val_set {
        read_notes.insert(
            0,
            format!("the validation losses are the set {name}'s (val.jsonl's sets.{name}, else the run's eval.jsonl)"),
        );
    }
    if parameters == Parameters::NonEmbedding {
        let (counted, uncounted): (Vec<RunRecord>, Vec<RunRecord>) =
            runs.into_iter().partition(|r| r.non_embedding_params.is_some());
        runs = counted.into_iter().map(|r| RunRecord { n: r.non_embedding_params.unwrap_or(r.params), ..r }).collect();
        read_notes.insert(0, "N counts the parameters outside the embeddings (--parameters non-embedding)".into());
        if !uncounted.is_empty() {
            let names: Vec<&str> = uncounted.iter().map(|r| r.name.as_str()).collect();
            read_notes.push(format!(
                "left out (derived.json records neither parameters_non_embedding nor the model's shape: a folder \
                 of an older build): {}",
                names.join(", ")
            ));
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (lr_runs, unreadable) = lr::read_runs(&roots, &runs)?;
    let lr_groups = lr::groups(&lr_runs);
    let select::Selection { fitted, mut notes, mut warnings } = select::select(&roots, &runs, &lr_groups);
    warnings.extend(lr::edge_warnings(&lr_groups));
    notes.splice(0..0, read_notes);
    // one point per distinct config: repeats (seeds, copies) are one measurement, not several
    let points = points::group(&fitted);
    notes.extend(points::merged_note(&points));
    warnings.extend(points::same_seed_warning(&fitted));
    let frontier: Vec<&Point> = points.iter().filter(|p| p.on_frontier).collect();
    let above: Vec<String> = points.iter().filter(|p| !p.on_frontier).map(|p| p.runs.join(" + ")).collect();
    if !above.is_empty() {
        notes.push(format!(
            "L(C) is fitted to the {} on the compute frontier (no other reached a lower loss with no more \
             compute); above it, in the tables and figures but not in L(C): {}",
            infinity_launcher::plural(frontier.len(), "point"),
            above.join(", ")
        ));
    }
    let mut attempt = |what: &str, f: Result<Fit>| match f {
        Ok(mut f) => {
            let pts: Vec<&Point> =
                if f.law == fit::Law::Chinchilla { points.iter().collect() } else { frontier.clone() };
            f.runs = pts.iter().map(|p| p.n()).sum();
            Some(f)
        }
        Err(e) => {
            notes.push(format!("{what}: not fitted ({e:#})"));
            None
        }
    };
    let (c, l): (Vec<f64>, Vec<f64>) = frontier.iter().map(|p| (p.compute, p.loss)).unzip();
    let power = attempt("L(C) = a·C^(−b)", fit::power_law(&c, &l));
    let power_floor = attempt("L(C) = E + a·C^(−b)", fit::power_law_with_floor(&c, &l));
    let (n, d): (Vec<f64>, Vec<f64>) = points.iter().map(|p| (p.params, p.tokens)).unzip();
    let all_l: Vec<f64> = points.iter().map(|p| p.loss).collect();
    let chinchilla = attempt("L(N, D)", fit::chinchilla(&n, &d, &all_l));
    for f in [&power, &power_floor, &chinchilla].into_iter().flatten() {
        warnings.extend(fit::no_uncertainty(f));
        warnings.extend(fit::not_a_scaling_law(f));
    }
    let lmin = all_l.iter().copied().fold(f64::INFINITY, f64::min);
    if let Some(why) = chinchilla.as_ref().and_then(|f| budget::degenerate(f, lmin)) {
        warnings.push(format!(
            "the L(N, D) fit is degenerate: {why}: its coefficients do not describe how the loss scales with N and D, \
             and it places no compute-optimal model (N* and D* are withheld at any budget); runs over a wider range \
             of sizes and token counts may determine it"
        ));
    }
    // the frontier falls with compute by construction: whether the runs do is asked of all the points
    let pearson =
        Correlations { all: log_pearson(&points.iter().collect::<Vec<_>>()), frontier: log_pearson(&frontier) };
    // (an IsoFLOP design's points share one budget: whether the loss falls with C is not asked of them)
    let (c_lo, c_hi) =
        points.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| (lo.min(p.compute), hi.max(p.compute)));
    let one_budget = points.len() >= 2 && isoflop::budgets_of(&points).len() == 1;
    // (L(C) at other budgets is not predicted where the points do not measure it: said below)
    let no_compute_law = one_budget || pearson.all.0 >= 0.0;
    if one_budget {
        warnings.push(format!(
            "the {} fitted points share one compute budget (C from {c_lo:.3e} to {c_hi:.3e}: within 10 %, or planned \
             for one by a sweep): how the \
             loss falls with compute is not measured, so L(C) and its predictions at other budgets mean nothing \
             (an IsoFLOP profile, 3 or more sizes at the budget, places the best size there)",
            points.len()
        ));
    } else if pearson.all.0 >= 0.0 {
        warnings.push(format!(
            "the loss does not fall with compute over the {} fitted points (Pearson r of log L on log C = {:+.2}): \
             no scaling law describes them, and predictions at other budgets are not meaningful",
            points.len(),
            pearson.all.0
        ));
    } else if points.len() >= 2 && frontier.len() < 2 {
        warnings.push("one point on the compute frontier: L(C) cannot be fitted".to_string());
    }
    let fitted_runs: Vec<RunRecord> = fitted.iter().map(|r| (*r).clone()).collect();
    let like = fitted.iter().find_map(|r| r.model.as_ref());
    let laws = match no_compute_law {
        true => (None, None, chinchilla.as_ref()),
        false => (power.as_ref(), power_floor.as_ref(), chinchilla.as_ref()),
    };
    let (budgets, budget_notes, budget_warnings) =
        budget::plans(at_computes, &fitted_runs, laws, lmin, (like, parameters));
    if no_compute_law && !budgets.is_empty() && (power.is_some() || power_floor.is_some()) {
        let why = match one_budget {
            true => "the points share one compute budget",
            false => "the loss does not fall with compute over the points",
        };
        notes.push(format!("L(C) at the budgets: withheld (–), {why}"));
    }
    notes.extend(budget_notes);
    warnings.extend(budget_warnings);
    if budgets.iter().any(|b| b.optimal.is_none()) && chinchilla.is_none() {
        notes.push("no compute-optimal N and D at the budgets: L(N, D) was not fitted".to_string());
    }
    let (isoflop, iso_notes, iso_warnings) = isoflop::analyse(&points, at_computes);
    notes.extend(iso_notes);
    warnings.extend(iso_warnings);

    let mut files = vec![out.join("runs.csv"), out.join("runs.md"), out.join("fits.md"), out.join("fits.json")];
    let point_of =
        |r: &RunRecord| points.iter().enumerate().find(|(_, p)| p.dirs.contains(&r.dir)).map(|(i, p)| (i + 1, p));
    write_atomic(&files[0], runs_csv(&runs, &point_of).as_bytes())?;
    write_atomic(&files[1], runs_markdown(&runs, &point_of).as_bytes())?;
    let fits: Vec<&Fit> = [&power, &power_floor, &chinchilla].into_iter().flatten().collect();

    let curves: Vec<plot::Curve> = [&power, &power_floor]
        .into_iter()
        .flatten()
        .map(|f| -> plot::Curve { (f, Box::new(move |x: f64| f.predict((x, 0.0)).0)) })
        .collect();
    let mut stems = Vec::new();
    // (an earlier analysis's figures go when this one has none of them)
    for f in ["loss_vs_compute", "loss_curves", "loss_vs_lr", "isoflop"]
        .iter()
        .flat_map(|s| [format!("{s}.png"), format!("{s}.svg")])
    {
        let _ = std::fs::remove_file(out.join(f));
    }
    let _ = std::fs::remove_file(out.join("lr_sweep.md"));
    // (a figure that cannot be drawn, for want of a font say, is a warning: the fits are written all the same)
    let mut failed = Vec::new();
    if points.is_empty() {
        notes.push("loss_vs_compute: not drawn (no finished run with a finite loss yet)".to_string());
    } else {
        drawn(
            "loss_vs_compute",
            plot::loss_vs_compute(out, &points, &curves, &pearson).map(|()| true),
            &mut stems,
            &mut failed,
        );
    }
    if !drawn("loss_curves", plot::curves(out, &runs), &mut stems, &mut failed) {
        notes.push("loss_curves: not drawn (no run has logged a finite loss yet)".to_string());
    }
    if !isoflop.profiles.is_empty() {
        drawn("isoflop", plot::isoflop(out, &isoflop, parameters).map(|()| true), &mut stems, &mut failed);
    }
    if !lr_groups.is_empty() {
        drawn("loss_vs_lr", plot::loss_vs_lr(out, &lr_groups), &mut stems, &mut failed);
    }
    warnings.extend(not_drawn(&failed));
    write_atomic(
        &files[2],
        (fits_markdown(&fits, &pearson, &points, &notes, &warnings)
            + &budgets_markdown(&budgets)
            + &isoflop_markdown(&isoflop))
            .as_bytes(),
    )?;
    let json = serde_json::json!({
        "loss_unit": "nats per bit",
        "pearson_r_log_loss_log_compute": { "all_points": pearson.all.0, "points": pearson.all.1,
            "frontier": pearson.frontier.0, "frontier_points": pearson.frontier.1 },
        "fits": fits, "points": points, "budgets": budgets, "isoflop": isoflop, "notes": notes,
        "warnings": warnings, "k": budget::k_spread(&fitted_runs), "parameters": parameters,
    });
    write_atomic(&files[3], serde_json::to_string_pretty(&json)?.as_bytes())?;
    if !lr_groups.is_empty() {
        files.push(out.join("lr_sweep.md"));
        write_atomic(&files[files.len() - 1], lr::markdown(&lr_groups, &unreadable).as_bytes())?;
    }
    for stem in stems {
        files.push(out.join(format!("{stem}.png")));
        files.push(out.join(format!("{stem}.svg")));
    }
    drop(curves);
    Ok(Report { runs, points, power, power_floor, chinchilla, pearson, budgets, isoflop, notes, warnings, files })
}

/// Whether the figure `stem` was drawn (`Ok(false)`: nothing to draw; an error: `failed` says it).
fn drawn(
    stem: &'static str,
    result: Result<bool>,
    stems: &mut Vec<&'static str>,
    failed: &mut Vec<(&str, String)>,
) -> bool {
    match result {
        Ok(true) => {
            stems.push(stem);
            true
        }
        Ok(false) => false,
        Err(e) => {
            failed.push((stem, format!("{e:#}")));
            true // (a failure is said, not taken for a want of data)
        }
    }
}

/// The warnings of the figures that failed, one per cause: `figures loss_vs_compute, loss_curves not
/// drawn: no TrueType font found …`.
fn not_drawn(failed: &[(&str, String)]) -> Vec<String> {
    let mut causes: Vec<(&str, Vec<&str>)> = Vec::new();
    for (stem, why) in failed {
        match causes.iter_mut().find(|(w, _)| w == why) {
            Some((_, stems)) => stems.push(stem),
            None => causes.push((why, vec![stem])),
        }
    }
    let figures = |stems: &[&str]| match stems.len() {
        1 => format!("figure {}", stems[0]),
        _ => format!("figures {}", stems.join(", ")),
    };
    causes.iter().map(|(why, stems)| format!("{} not drawn: {why}", figures(stems))).collect()
}

#[cfg(test)]
mod tests;
