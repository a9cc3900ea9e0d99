//! What the fits say about a compute budget the sweep did not spend: the loss the `L(C)` laws
//! predict, and the compute-optimal split into parameters and tokens that `L(N, D)` implies
//! (Hoffmann et al.'s closed form under `C = k·N·D`, with `k` the training FLOPs per parameter and
//! token that the sweep's own runs spent, attention included), with the preset nearest that size.

use serde::Serialize;

use super::fit::Fit;
use super::RunRecord;
use crate::model::config::PRESETS;
use crate::model::{Layout, ModelConfig};

/// The fits' predictions at one budget.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetPlan {
    /// C: training FLOPs.
    pub compute: f64,
    /// C over the largest run's compute (above 1: an extrapolation).
    pub times_largest_run: f64,
    /// `L(C) = a·C^(−b)` and `E + a·C^(−b)` at C, where fitted.
    pub loss_power: Option<f64>,
    pub loss_power_floor: Option<f64>,
    /// The compute-optimal model at C, where `L(N, D)` was fitted.
    pub optimal: Option<Optimal>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Optimal {
    /// N*: parameters.
    pub params: f64,
    /// D*: training tokens.
    pub tokens: f64,
    /// `L(N*, D*)`.
    pub loss: f64,
    /// The preset (with the runs' bits per token and conditioning) nearest N* in log size.
    pub nearest_preset: Option<(String, usize)>,
}

/// k in `C = k·N·D`: the median over the runs of compute / (parameters · tokens).
pub fn flops_per_param_token(runs: &[RunRecord]) -> f64 {
    let mut k: Vec<f64> = runs.iter().map(|r| r.compute / (r.params * r.tokens)).filter(|v| v.is_finite()).collect();
    k.sort_by(f64::total_cmp);
    k.get(k.len() / 2).copied().unwrap_or(f64::NAN)
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

/// The preset whose parameter count (for `like`'s bits per token and conditioning) is nearest `n`.
pub fn nearest_preset(like: &ModelConfig, n: f64) -> Option<(String, usize)> {
    let sized = PRESETS.iter().filter_map(|name| {
        let p = ModelConfig::preset(name)?;
        let cfg = ModelConfig { d: like.d, conditioning: like.conditioning.clone(), ..p };
        let cfg = ModelConfig { text_channels: like.text_channels, text_maxlen: like.text_maxlen, ..cfg };
        Some((name.to_string(), Layout::new(&cfg).numel))
    });
    sized.min_by(|x, y| (x.1 as f64 / n).ln().abs().total_cmp(&(y.1 as f64 / n).ln().abs()))
}

/// The plan for each budget.
pub fn plans(
    budgets: &[f64],
    runs: &[RunRecord],
    (power, floor, chinchilla): (Option<&Fit>, Option<&Fit>, Option<&Fit>),
    like: Option<&ModelConfig>,
) -> Vec<BudgetPlan> {
    let largest = runs.iter().map(|r| r.compute).fold(0.0, f64::max);
    let k = flops_per_param_token(runs);
    budgets
        .iter()
        .map(|&c| BudgetPlan {
            compute: c,
            times_largest_run: c / largest,
            loss_power: power.map(|f| f.get("a") * c.powf(-f.get("b"))),
            loss_power_floor: floor.map(|f| f.get("E") + f.get("a") * c.powf(-f.get("b"))),
            optimal: chinchilla.filter(|_| k.is_finite()).map(|f| {
                let (params, tokens, loss) = compute_optimal(f, c, k);
                Optimal { params, tokens, loss, nearest_preset: like.and_then(|m| nearest_preset(m, params)) }
            }),
        })
        .collect()
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
            rmse_log: 0.0,
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
        let r = crate::scaling::analyse(tmp.path(), &tmp.path().join("scaling"), &[budget]).unwrap();
        let fitted = r.chinchilla.as_ref().expect("9 runs on a 3 × 3 grid fit L(N, D)");
        let o = r.budgets[0].optimal.as_ref().unwrap();
        let (n, d, l) = compute_optimal(&truth, budget, k);
        assert!((o.params / n).ln().abs() < 0.05 && (o.tokens / d).ln().abs() < 0.05, "{o:?} vs N* {n:e}, D* {d:e}");
        assert!((o.loss / l - 1.0).abs() < 1e-3, "{} vs {l}", o.loss);
        assert!((fitted.get("alpha") - 0.45).abs() < 0.01);
        assert_eq!(o.nearest_preset.as_ref().unwrap().0, nearest_preset(&like, n).unwrap().0);
        let md = std::fs::read_to_string(tmp.path().join("scaling/fits.md")).unwrap();
        assert!(md.contains("## Budgets") && md.contains("1.000e20"), "{md}");
    }

    #[test]
    fn the_nearest_preset_is_chosen_by_log_size() {
        let like = ModelConfig::preset("layer12").unwrap();
        let size = |p: &str| Layout::new(&ModelConfig::preset(p).unwrap()).numel as f64;
        assert_eq!(nearest_preset(&like, size("layer24") * 1.2).unwrap().0, "layer24");
        assert_eq!(nearest_preset(&like, size("layer16") * 0.95).unwrap().0, "layer16");
        assert_eq!(nearest_preset(&like, 1.0).unwrap().0, "tiny");
    }
}
