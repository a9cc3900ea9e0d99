//! What the fits say about a compute budget the sweep did not spend: the loss the `L(C)` laws
//! predict, and the compute-optimal split into parameters and tokens that `L(N, D)` implies
//! (Hoffmann et al.'s closed form under `C = k·N·D`, with `k` the training FLOPs per parameter and
//! token that the sweep's own runs spent, attention included), with the preset nearest that size.

use serde::Serialize;

use super::fit::Fit;
use super::{Parameters, RunRecord};
use crate::model::config::PRESETS;
use crate::model::{Layout, ModelConfig};

/// The fits' predictions at one budget.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetPlan {
    /// C: training FLOPs.
    pub compute: f64,
    /// C over the largest run's compute (above 1: an extrapolation).
    pub times_largest_run: f64,
    /// `L(C) = a·C^(−b)` and `E + a·C^(−b)` at C, where fitted, each with the 95 % interval of the law
    /// there (from the fit's covariance; `None` where it has none).
    pub loss_power: Option<f64>,
    pub loss_power_ci95: Option<(f64, f64)>,
    pub loss_power_floor: Option<f64>,
    pub loss_power_floor_ci95: Option<(f64, f64)>,
    /// The compute-optimal model at C, where `L(N, D)` was fitted.
    pub optimal: Option<Optimal>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Optimal {
    /// N*: parameters.
    pub params: f64,
    /// D*: training tokens.
    pub tokens: f64,
    /// `L(N*, D*)`, and the 95 % interval of the law at (N*, D*) (N* and D* held fixed).
    pub loss: f64,
    pub loss_ci95: Option<(f64, f64)>,
    /// The preset (with the runs' bits per token and conditioning) nearest N* in log size.
    pub nearest_preset: Option<(String, usize)>,
    /// Where N* or D* lies outside the range of N or D the runs cover (an extrapolation of L(N, D)).
    pub extrapolation: Option<String>,
}

/// k over the runs: the median, the smallest and largest (with their runs), and the spread max/min − 1.
#[derive(Clone, Debug, Serialize)]
pub struct KSpread {
    pub median: f64,
    pub min: (f64, String),
    pub max: (f64, String),
    pub spread: f64,
}

/// A multiple of the largest run's compute (or size) as the table and the warnings print it: scientific
/// below 0.095 (1.93e-2), one decimal below 100 (10.5), whole below 10⁴ (1538), scientific above (1.54e4).
pub fn times_text(x: f64) -> String {
    match x {
        // (a budget below the largest run: 1.93e-2, not 0.0)
        x if x < 0.095 => format!("{x:.2e}"),
        x if x < 100.0 => format!("{x:.1}"),
        x if x < 1e4 => format!("{x:.0}"),
        x => format!("{x:.2e}"),
    }
}

/// What an N* or D* (`what`) of `v` outside the runs' range `(lo, hi)` says (none inside it).
fn outside(what: &str, v: f64, (lo, hi): (f64, f64)) -> Option<String> {
    (v < lo || v > hi).then(|| {
        // (just outside as a share: N* 0.2 % below the smallest run's, not 1/1.0 of it)
        let by = match (v > hi, v / hi, lo / v) {
            (true, r, _) if r < 1.0005 => "just above the largest".to_string(),
            (true, r, _) if r < 1.1 => format!("{:.1} % above the largest", (r - 1.0) * 100.0),
            (true, r, _) => format!("{}× the largest", times_text(r)),
            (false, _, r) if r < 1.0005 => "just below the smallest".to_string(),
            (false, _, r) if r < 1.1 => format!("{:.1} % below the smallest", (1.0 - 1.0 / r) * 100.0),
            (false, _, r) => format!("1/{r:.1} of the smallest"),
        };
        format!("{what} = {v:.3e} is {by} of the runs ({lo:.3e} to {hi:.3e})")
    })
}

/// A budget past this many times the largest run's compute is warned about (an extrapolation the runs
/// do not support).
pub const FAR_BEYOND: f64 = 10.0;

/// How far k may vary over the runs before N* and D* are flagged as rough.
pub const K_SPREAD_WARN: f64 = 0.2;

/// k = C/(N·D) of each run: its median, extremes and spread (`None` without runs).
pub fn k_spread(runs: &[RunRecord]) -> Option<KSpread> {
    let mut k: Vec<(f64, &str)> = runs
        .iter()
        .map(|r| (r.compute / (r.n * r.tokens), r.name.as_str()))
        .filter(|v| v.0.is_finite() && v.0 > 0.0)
        .collect();
    k.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (first, last) = (k.first()?, k.last()?);
    let values: Vec<f64> = k.iter().map(|v| v.0).collect();
    Some(KSpread {
        median: super::runs::median_of_sorted(&values)?,
        min: (first.0, first.1.to_string()),
        max: (last.0, last.1.to_string()),
        spread: last.0 / first.0 - 1.0,
    })
}

/// Why an `L(N, D)` fit is degenerate and places no compute-optimal model (`None`: it is not): E run
/// to 0 (as `fit::power_law_with_floor` refuses for L(C)), or a covariance the runs leave singular
/// (some coefficient is not determined by them). `lmin`: the smallest loss fitted. `analyse` warns of
/// it with or without budgets.
pub fn degenerate(chinchilla: &Fit, lmin: f64) -> Option<String> {
    let e = chinchilla.get("E");
    let singular = chinchilla.n > chinchilla.coefs.len() && chinchilla.coefs.iter().any(|c| c.ci95.is_none());
    let mut why = Vec::new();
    if e < 1e-4 * lmin {
        why.push(format!("E ran to {e:.2e} (no irreducible loss: the runs do not bend towards a floor)"));
    }
    if singular {
        why.push("its covariance is singular (the runs do not determine every coefficient)".to_string());
    }
    (!why.is_empty()).then(|| why.join(", and "))
}

/// k in `C = k·N·D`: the median over the runs of compute / (parameters · tokens).
pub fn flops_per_param_token(runs: &[RunRecord]) -> f64 {
    k_spread(runs).map_or(f64::NAN, |k| k.median)
}

/// The minimum of `E + A/N^α + B/D^β` subject to `k·N·D = compute`:
/// `N* = G·(C/k)^(β/(α+β))` with `G = (αA/(βB))^(1/(α+β))`, `D* = (C/k)/N*`.
pub fn compute_optimal(chinchilla: &Fit, compute: f64, k: f64) -> (f64, f64, f64) {
    let (e, a, b) = (chinchilla.get("E"), chinchilla.get("A"), chinchilla.get("B"));
    let (alpha, beta) = (chinchilla.get("alpha"), chinchilla.get("beta"));
    let nd = compute / k;
    let g = (alpha * a / (beta * b)).powf(1.0 / (alpha + beta));
    let n = g * nd.powf(beta / (alpha + beta));
    let d = nd / n;
    (n, d, e + a * n.powf(-alpha) + b * d.powf(-beta))
}

/// The preset whose parameter count (for `like`'s bits per token and conditioning), counted as
/// `parameters` counts, is nearest `n`.
pub fn nearest_preset(like: &ModelConfig, n: f64, parameters: Parameters) -> Option<(String, usize)> {
    let sized = PRESETS.iter().filter_map(|name| {
        let p = ModelConfig::preset(name)?;
        let cfg = ModelConfig { d: like.d, conditioning: like.conditioning.clone(), ..p };
        let cfg = ModelConfig { text_channels: like.text_channels, text_maxlen: like.text_maxlen, ..cfg };
        Some((name.to_string(), parameters.count(&Layout::new(&cfg))))
    });
    sized.min_by(|x, y| (x.1 as f64 / n).ln().abs().total_cmp(&(y.1 as f64 / n).ln().abs()))
}

/// The plan for each budget, and what to say about it: notes (k and its spread) and warnings (a budget
/// far beyond the largest run, a k that varies over the runs, N* or D* outside the runs' range). A
/// degenerate L(N, D) places no model (`analyse` says why): `lmin` is the lowest loss of the points it
/// was fitted to, as [`degenerate`] takes it.
pub fn plans(
    budgets: &[f64],
    runs: &[RunRecord],
    (power, floor, chinchilla): (Option<&Fit>, Option<&Fit>, Option<&Fit>),
    lmin: f64,
    (like, parameters): (Option<&ModelConfig>, Parameters),
) -> (Vec<BudgetPlan>, Vec<String>, Vec<String>) {
    let (mut notes, mut warnings) = (Vec::new(), Vec::new());
    let largest = runs.iter().map(|r| r.compute).fold(0.0, f64::max);
    let smallest = runs.iter().map(|r| r.compute).fold(f64::INFINITY, f64::min);
    let spread = k_spread(runs);
    let withheld = chinchilla.and_then(|f| degenerate(f, lmin));
    let chinchilla = chinchilla.filter(|_| withheld.is_none() && spread.is_some());
    if !budgets.is_empty() {
        // (the budgets' table points here for k's spread, with or without a model to place)
        if let Some(k) = &spread {
            let uses = if chinchilla.is_some() { "; N* and D* use the median" } else { "" };
            notes.push(format!(
                "k = C/(N·D), the training FLOPs per parameter and token: median {:.2} over the {} fitted, from \
                 {:.2} ({}) to {:.2} ({}){uses}",
                k.median,
                infinity_launcher::plural(runs.len(), "run"),
                k.min.0,
                k.min.1,
                k.max.0,
                k.max.1
            ));
        }
        if let (Some(k), Some(_)) = (&spread, chinchilla) {
            if k.spread > K_SPREAD_WARN {
                warnings.push(format!(
                    "k varies by {:.0} % over the runs (attention and the embeddings weigh more in small models): \
                     C = k·N·D with one k is rough, and so are N* and D*, the more so the further N* lies from the \
                     runs' sizes",
                    k.spread * 100.0
                ));
            }
        }
    }
    let range = |v: &dyn Fn(&RunRecord) -> f64| {
        runs.iter().map(v).fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)))
    };
    let (n_range, d_range) = (range(&|r| r.n), range(&|r| r.tokens));
    let plans: Vec<BudgetPlan> = budgets
        .iter()
        .map(|&c| BudgetPlan {
            compute: c,
            times_largest_run: c / largest,
            loss_power: power.map(|f| f.predict((c, 0.0)).0),
            loss_power_ci95: power.and_then(|f| f.predict((c, 0.0)).1),
            loss_power_floor: floor.map(|f| f.predict((c, 0.0)).0),
            loss_power_floor_ci95: floor.and_then(|f| f.predict((c, 0.0)).1),
            optimal: chinchilla.zip(spread.as_ref()).map(|(f, k)| {
                let (params, tokens, loss) = compute_optimal(f, c, k.median);
                let out: Vec<String> =
                    [outside("N*", params, n_range), outside("D*", tokens, d_range)].into_iter().flatten().collect();
                Optimal {
                    params,
                    tokens,
                    loss,
                    loss_ci95: f.predict((params, tokens)).1,
                    nearest_preset: like.and_then(|m| nearest_preset(m, params, parameters)),
                    extrapolation: (!out.is_empty()).then(|| out.join("; ")),
                }
            }),
        })
        .collect();
    // (a budget nothing is predicted at, no fit having taken, has no predictions to warn of)
    for p in plans.iter().filter(|p| p.loss_power.is_some() || p.loss_power_floor.is_some() || p.optimal.is_some()) {
        if p.compute * FAR_BEYOND < smallest {
            warnings.push(format!(
                "at C = {:.3e}: {:.2e} of the smallest run's compute ({smallest:.3e}): the predictions there \
                 extrapolate the laws far below the runs (small models and budgets leave the power law first)",
                p.compute,
                p.compute / smallest
            ));
        }
        if p.times_largest_run > FAR_BEYOND {
            warnings.push(format!(
                "at C = {:.3e}: {}× the largest run's compute ({largest:.3e}): the predictions there extrapolate the \
                 laws far beyond the runs (their intervals assume the law holds all the way; nothing the runs show \
                 says it does)",
                p.compute,
                times_text(p.times_largest_run)
            ));
        }
        if let Some(x) = p.optimal.as_ref().and_then(|o| o.extrapolation.as_ref()) {
            warnings.push(format!(
                "at C = {:.3e}: {x}: an extrapolation of L(N, D) beyond the sizes and token counts it was fitted on",
                p.compute
            ));
        }
    }
    (plans, notes, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::fit::Coef;

    fn law(e: f64, a: f64, b: f64, alpha: f64, beta: f64) -> Fit {
        let c = |name, value| Coef { name, value, ci95: None };
        Fit {
            formula: "L = E + A/N^α + B/D^β",
            coefs: vec![c("E", e), c("A", a), c("B", b), c("alpha", alpha), c("beta", beta)],
            n: 9,
            runs: 9,
            rmse_log: 0.0,
            law: crate::scaling::fit::Law::Chinchilla,
            theta: vec![e.ln(), a.ln(), b.ln(), alpha, beta],
            cov: None,
        }
    }

    /// The closed form against a search along the budget's curve N·D = C/k.
    #[test]
    fn the_closed_form_is_the_minimum_along_the_budget() {
        let (k, c) = (6.6, 3.0e21);
        for f in [law(1.69, 406.4, 410.7, 0.34, 0.28), law(0.2, 50.0, 900.0, 0.5, 0.25)] {
            let (n, d, l) = compute_optimal(&f, c, k);
            assert!((k * n * d / c - 1.0).abs() < 1e-12, "the plan spends the budget");
            let loss = |n: f64| {
                let d = c / k / n;
                f.get("E") + f.get("A") * n.powf(-f.get("alpha")) + f.get("B") * d.powf(-f.get("beta"))
            };
            assert!((loss(n) - l).abs() < 1e-12);
            let best = (0..=4000)
                .map(|i| 10f64.powf(3.0 + 12.0 * i as f64 / 4000.0))
                .min_by(|x, y| loss(*x).total_cmp(&loss(*y)));
            let best = best.unwrap();
            assert!((best / n).ln().abs() < 0.01, "search {best:e} vs closed form {n:e}");
            assert!(loss(n * 1.1) > l && loss(n / 1.1) > l);
        }
    }

    /// Run folders whose losses follow a known L(N, D) exactly: `infinity scaling --budget` recovers the
    /// law's compute-optimal model and names the nearest preset.
    #[test]
    fn analyse_plans_a_budget_from_run_folders() {
        let truth = law(0.3, 40.0, 600.0, 0.45, 0.35);
        let k = 6.5;
        let tmp = tempfile::tempdir().unwrap();
        let like = ModelConfig::preset("tiny").unwrap();
        for (i, n) in [2.0e5f64, 1.0e6, 5.0e6].into_iter().enumerate() {
            for (j, d) in [1.0e7f64, 5.0e7, 2.0e8].into_iter().enumerate() {
                let dir = tmp.path().join(format!("run-{i}-{j}"));
                std::fs::create_dir_all(&dir).unwrap();
                let l = truth.get("E")
                    + truth.get("A") * n.powf(-truth.get("alpha"))
                    + truth.get("B") * d.powf(-truth.get("beta"));
                let steps = 100u64;
                let derived = serde_json::json!({
                    "parameters": n, "tokens_per_step_mean": d / steps as f64,
                    "train_flops_per_step_mean": k * n * d / steps as f64, "model": like,
                });
                let summary = serde_json::json!({ "step": steps, "loss": l, "finished": true });
                std::fs::write(dir.join("derived.json"), derived.to_string()).unwrap();
                std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
                std::fs::write(dir.join("val.jsonl"), format!("{{\"step\":{steps},\"loss\":{l}}}\n")).unwrap();
            }
        }
        let budget = 1.0e20;
        let r = crate::scaling::analyse(&[tmp.path()], &tmp.path().join("scaling"), &[budget]).unwrap();
        let fitted = r.chinchilla.as_ref().expect("9 runs on a 3 × 3 grid fit L(N, D)");
        let o = r.budgets[0].optimal.as_ref().unwrap();
        let (n, d, l) = compute_optimal(&truth, budget, k);
        assert!((o.params / n).ln().abs() < 0.05 && (o.tokens / d).ln().abs() < 0.05, "{o:?} vs N* {n:e}, D* {d:e}");
        assert!((o.loss / l - 1.0).abs() < 1e-3, "{} vs {l}", o.loss);
        assert!((fitted.get("alpha") - 0.45).abs() < 0.01);
        assert_eq!(o.nearest_preset.as_ref().unwrap().0, nearest_preset(&like, n, Parameters::Total).unwrap().0);
        let md = std::fs::read_to_string(tmp.path().join("scaling/fits.md")).unwrap();
        assert!(md.contains("## Budgets") && md.contains("1.000e20"), "{md}");
        // k is the same for every run here: stated, no warning about its spread
        let notes = r.notes.join("\n");
        assert!(notes.contains("median 6.50 over the 9 runs fitted, from 6.50"), "{notes}");
        let warnings = r.warnings.join("\n");
        assert!(!warnings.contains("k varies"), "{warnings}");
        // N* at 1e20 FLOPs lies far beyond the runs' 5e6 parameters: flagged, in the table too
        assert!(o.extrapolation.as_ref().is_some_and(|x| x.contains("N* = ") && x.contains("× the largest")), "{o:?}");
        assert!(warnings.contains("an extrapolation of L(N, D)") && md.contains("†"), "{warnings}\n{md}");
        // 1e20 FLOPs is far beyond the largest run (6.5e15): warned; the predicted loss has an interval
        assert!(warnings.contains("at C = 1.000e20: 1.54e4× the largest run's compute (6.500e15)"), "{warnings}");
        let (p, ci) = (r.budgets[0].loss_power.unwrap(), r.budgets[0].loss_power_ci95);
        assert!(ci.is_some_and(|(lo, hi)| lo < p && p < hi), "{p} {ci:?}");
        assert!(md.contains(&format!("| {p:.4} [")), "{md}");
        // N* within the runs' sizes is not flagged (D* lies beyond their token counts: it is)
        let (n, _, _) = compute_optimal(&truth, 4.0e17, k);
        assert!((2.0e5..5.0e6).contains(&n), "{n:e}");
        let r = crate::scaling::analyse(&[tmp.path()], &tmp.path().join("scaling"), &[4.0e17]).unwrap();
        let o = r.budgets[0].optimal.as_ref().unwrap();
        assert!(o.extrapolation.as_ref().is_some_and(|x| !x.contains("N*") && x.contains("D* = ")), "{o:?}");
    }

    fn record(name: &str, params: f64, tokens: f64, k: f64) -> RunRecord {
        RunRecord {
            name: name.into(),
            dir: name.into(),
            params,
            non_embedding_params: None,
            n: params,
            steps: 1,
            tokens,
            flops_per_step: k * params * tokens,
            flops_by_size: vec![(0, k * params * tokens)],
            compute: k * params * tokens,
            planned_compute: None,
            finished: true,
            diverged: false,
            final_train: 1.0,
            final_val: Some(1.0),
            smoothed_val: Some(1.0),
            smoothed_train: None,
            val_curve: vec![],
            val_from_eval: false,
            train_curve: vec![],
            tokens_per_s: None,
            mfu: None,
            lr: None,
            global_batch: None,
            model: None,
            settings: Default::default(),
            val_fingerprint: None,
        }
    }

    /// FLOPs per parameter and token vary with the model's size: the spread is stated and, past 20 %,
    /// warned about; a degenerate L(N, D) places no model.
    #[test]
    fn k_spread_and_degenerate_fits_are_reported() {
        let runs = [record("tiny", 1e6, 1e8, 15.5), record("mid", 1e7, 1e8, 8.0), record("big", 1e8, 1e8, 5.7)];
        let mut good = law(0.3, 40.0, 600.0, 0.45, 0.35);
        for c in &mut good.coefs {
            c.ci95 = Some((c.value * 0.9, c.value * 1.1));
        }
        let (planned, notes, warnings) =
            plans(&[1e18], &runs, (None, None, Some(&good)), 5.7, (None, Parameters::Total));
        assert!(planned[0].optimal.is_some());
        assert!(notes[0].contains("median 8.00") && notes[0].contains("5.70 (big) to 15.50 (tiny)"), "{notes:?}");
        assert!(warnings.iter().any(|w| w.contains("k varies by 172 %")), "{warnings:?}");
        let same = [record("a", 1e6, 1e8, 6.0), record("b", 1e7, 1e8, 6.3)];
        let (_, notes, warnings) = plans(&[1e18], &same, (None, None, Some(&good)), 6.0, (None, Parameters::Total));
        assert!(!warnings.iter().any(|w| w.contains("k varies")), "{warnings:?}");
        // (of an even count, the mean of the middle two: it was the upper one)
        assert!(notes[0].contains("median 6.15 over the 2 runs fitted"), "{notes:?}");
        // E run to 0, with a singular covariance
        let mut flat = law(1e-9, 40.0, 600.0, 0.45, 0.35);
        flat.coefs[0].ci95 = None;
        let why = degenerate(&flat, 1.0).expect("degenerate");
        assert!(why.contains("E ran to 1.00e-9") && why.contains("covariance is singular"), "{why}");
        let (planned, _, warnings) = plans(&[1e18], &runs, (None, None, Some(&flat)), 5.7, (None, Parameters::Total));
        assert!(planned[0].optimal.is_none(), "no N* from a degenerate fit");
        assert!(
            !warnings.iter().any(|w| w.contains("extrapolate")),
            "nothing predicted, nothing to warn of: {warnings:?}"
        );
        let (_, _, warnings) = plans(&[1e18], &runs, (None, None, Some(&good)), 5.7, (None, Parameters::Total));
        assert!(warnings.iter().any(|w| w.contains("extrapolate the laws far beyond the runs")), "{warnings:?}");
        // (`analyse` warns of a degenerate fit, budgets or not: mod.rs's tests)
        assert!(!warnings.iter().any(|w| w.contains("degenerate")), "{warnings:?}");
        assert!(degenerate(&good, 1.0).is_none());
    }

    /// An N* just outside the runs' sizes is said as a share; a budget far below the runs as a ratio that
    /// is not 0.0.
    #[test]
    fn outside_the_runs_is_said_in_readable_numbers() {
        let said = |v| super::outside("N*", v, (9.223e4, 1e6)).unwrap_or_default();
        assert!(said(9.204e4).contains("N* = 9.204e4 is 0.2 % below the smallest of the runs"), "{}", said(9.204e4));
        assert!(said(1e4).contains("is 1/9.2 of the smallest"), "{}", said(1e4));
        assert!(said(1.05e6).contains("is 5.0 % above the largest"), "{}", said(1.05e6));
        assert!(said(3e6).contains("is 3.0× the largest"), "{}", said(3e6));
        assert!(said(1.0001e6).contains("is just above the largest"), "{}", said(1.0001e6));
        assert_eq!(said(5e5), "");
        assert_eq!([super::times_text(1.93e-2), super::times_text(0.5)], ["1.93e-2", "0.5"]);
    }

    #[test]
    fn the_nearest_preset_is_chosen_by_log_size() {
        let like = ModelConfig::preset("layer12").unwrap();
        let size = |p: &str| Layout::new(&ModelConfig::preset(p).unwrap()).numel as f64;
        let nearest = |n: f64| nearest_preset(&like, n, Parameters::Total).unwrap().0;
        assert_eq!(nearest(size("layer24") * 1.2), "layer24");
        assert_eq!(nearest(size("layer16") * 0.95), "layer16");
        assert_eq!(nearest(1.0), "tiny");
        // counted without embeddings, the presets are smaller: a size between is matched by that count
        let bare =
            |p: &str| Layout::new(&ModelConfig { d: like.d, ..ModelConfig::preset(p).unwrap() }).non_embedding_numel();
        let (name, n) = nearest_preset(&like, bare("layer16") as f64 * 1.05, Parameters::NonEmbedding).unwrap();
        assert_eq!((name.as_str(), n), ("layer16", bare("layer16")));
    }
}
