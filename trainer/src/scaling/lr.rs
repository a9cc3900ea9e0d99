//! Learning-rate sweeps in `infinity scaling`: run folders whose configs differ only in `optim.lr`
//! (and in what is not the experiment: `run.dir`, `run.seed`, logging, `settings`) form a group, and
//! each group's loss against the learning rate goes to `lr_sweep.md` and `loss_vs_lr.{png,svg}`. Under
//! μP the best rate should stay put as the width grows (what μP is for); in the standard
//! parametrization it falls. Runs that diverged, failed or still train stay in the table as such;
//! several seeds at a rate are judged by their mean.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::roots::Root;
use super::{settings, RunRecord};

/// One run of a learning-rate sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct LrRun {
    pub dir: PathBuf,
    /// The run's experiment ([`super::settings::experiment`]) without `optim.lr`: runs with equal keys
    /// form a group.
    pub key: String,
    pub label: String,
    /// Where its group goes in the table: standard before μP, then by depth, width and steps.
    pub order: GroupOrder,
    pub lr: f64,
    /// The run's loss ([`RunRecord::loss`]); `None` when it left no summary or ended non-finite.
    pub loss: Option<f64>,
    /// Whether it left a `summary.json` (a run that failed before its first checkpoint, or is still on it, has
    /// none; one that diverged has one, saying so).
    pub summary: bool,
    /// Whether its folder could not be read (a malformed log line: the notes say which).
    pub unreadable: bool,
    /// Whether it reached `run.steps`.
    pub finished: bool,
}

impl LrRun {
    /// Whether it ended without a finite loss, its summary saying so (not a folder that did not read).
    pub fn diverged(&self) -> bool {
        self.summary && self.loss.is_none() && !self.unreadable
    }
}

/// μP or not, depth, width and `run.steps` (0: not set): the order of a learning-rate sweep's groups.
pub type GroupOrder = (bool, usize, usize, u64);

/// The runs of one config, by rising learning rate.
#[derive(Clone, Debug, PartialEq)]
pub struct LrGroup {
    pub label: String,
    /// μP or not, depth, width, steps ([`LrRun::order`]).
    pub order: GroupOrder,
    pub points: Vec<LrRun>,
}

impl LrGroup {
    /// The mean finite loss of the finished runs at each learning rate (rising), where there is one.
    pub fn means(&self) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = Vec::new();
        for p in &self.points {
            if out.last().is_some_and(|o| o.0 == p.lr) {
                continue;
            }
            let at: Vec<f64> =
                self.points.iter().filter(|q| q.lr == p.lr && q.finished).filter_map(|q| q.loss).collect();
            if !at.is_empty() {
                out.push((p.lr, at.iter().sum::<f64>() / at.len() as f64));
            }
        }
        out
    }

    /// The learning rate whose finished runs have the lowest mean finite loss (the lowest rate of
    /// equals), and that mean: a run stopped early (or diverged after a good start) reports a loss of a
    /// schedule it did not finish.
    pub fn best(&self) -> Option<(f64, f64)> {
        self.means().into_iter().fold(None, |best, m| match best {
            Some(b) if b.1 <= m.1 => Some(b),
            _ => Some(m),
        })
    }
}

/// A warning for each group whose best rate is the smallest or the largest of the rates that tell
/// (a finished run's loss, or a divergence): the optimum is not bracketed, the loss may fall further
/// beyond it, and the fits take that group's run as tuned (as an IsoFLOP profile's lowest loss at an
/// end of its sizes is warned of).
pub fn edge_warnings(groups: &[LrGroup]) -> Vec<String> {
    let mut out = Vec::new();
    for g in groups {
        let Some((best, _)) = g.best() else { continue };
        let mut tried: Vec<f64> =
            g.points.iter().filter(|p| (p.finished && p.loss.is_some()) || p.diverged()).map(|p| p.lr).collect();
        tried.dedup(); // (sorted: the points are)
        let (Some(&lo), Some(&hi)) = (tried.first(), tried.last()) else { continue };
        let (end, more) = match best {
            _ if tried.len() < 2 => continue,
            b if b == hi => ("largest", "larger"),
            b if b == lo => ("smallest", "smaller"),
            _ => continue,
        };
        // (written as the table's columns are)
        let rates: Vec<String> = tried.iter().map(|&r| rate_text(r)).collect();
        out.push(format!(
            "{}: the best learning rate, {}, is the {end} tried ({}): the loss may fall further at {more} \
             rates, so its best run may not be tuned; add {more} rates",
            g.label,
            rate_text(best),
            rates.join(", ")
        ));
    }
    out
}

/// The runs of the groups that are not at their group's best rate: a scaling fit over a learning-rate
/// sweep takes each group's best rate (all its seeds), as compute-optimal fits assume tuned runs.
pub fn not_best(groups: &[LrGroup]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for g in groups {
        let Some((best, _)) = g.best() else { continue };
        out.extend(g.points.iter().filter(|p| p.lr != best).map(|p| p.dir.clone()));
    }
    out
}

/// A learning rate as the table shows it: `0.003`, and `1e-5` or `1e9` where plain digits would run long.
pub fn rate_text(lr: f64) -> String {
    match crate::sweep::long_in_digits(lr) {
        true => format!("{lr:e}"),
        false => lr.to_string(),
    }
}

/// `width W, depth D, standard | μP base B, S steps` from a run's config and `derived.json` model.
fn label(config: &toml::Value, model: &crate::model::ModelConfig) -> String {
    let get = |s: &str, k: &str| config.get(s).and_then(|t| t.get(k)).and_then(|v| v.as_integer());
    let heads = get("model", "mup_base_heads").map_or(String::new(), |h| format!(" × {h} heads"));
    let param = get("model", "mup_base_width").map_or("standard".into(), |b| format!("μP base {b}{heads}"));
    let steps = get("run", "steps").map_or(String::new(), |s| format!(", {s} steps"));
    format!("width {}, depth {}, {param}{steps}", model.embed_dim, model.depth)
}

/// Every run folder under `roots` with a `config.toml` and a `derived.json` (written before training
/// starts, so failed runs have them too), its loss taken from `runs` (the folders with a summary);
/// and the folders whose files could not be read (listed, not fatal: the fits do not need them).
pub fn read_runs(roots: &[Root], runs: &[RunRecord]) -> Result<(Vec<LrRun>, Vec<String>)> {
    let mut dirs = Vec::new();
    for root in roots {
        let rd = std::fs::read_dir(&root.dir).with_context(|| format!("reading {}", root.dir.display()))?;
        let mut here: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("config.toml").is_file() && p.join("derived.json").is_file())
            .collect();
        super::runs::sort_by_name(&mut here);
        dirs.extend(here);
    }
    let (mut out, mut unreadable) = (Vec::new(), Vec::new());
    for dir in dirs {
        let read = || -> Result<(toml::Value, serde_json::Value)> {
            let p = dir.join("config.toml");
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let config = toml::from_str(&text).with_context(|| format!("{}: not TOML", p.display()))?;
            Ok((config, super::read_json(&dir.join("derived.json"))?))
        };
        let (config, derived) = match read() {
            Ok(files) => files,
            Err(e) => {
                unreadable.push(format!("{e:#}"));
                continue;
            }
        };
        let (Some(lr), Ok(model)) = (
            config.as_table().and_then(settings::peak_lr),
            serde_json::from_value::<crate::model::ModelConfig>(derived["model"].clone()),
        ) else {
            continue;
        };
        let label = label(&config, &model);
        let mup = config.get("model").and_then(|m| m.get("mup_base_width")).is_some();
        let steps = config.get("run").and_then(|r| r.get("steps")).and_then(|s| s.as_integer());
        let order = (mup, model.depth, model.embed_dim, steps.map_or(0, |s| s.max(0) as u64));
        let text = toml::to_string(&config)?;
        let Some(table) = settings::normalised(&text) else { continue };
        let record = runs.iter().find(|r| r.dir == dir);
        let summary = dir.join("summary.json").is_file();
        out.push(LrRun {
            dir: dir.clone(),
            key: settings::experiment(&settings::as_trained(&table, &derived), &settings::LEARNING_RATE),
            label,
            order,
            lr,
            loss: record.map(|r| r.loss()).filter(|l| l.is_finite()),
            summary,
            unreadable: summary && record.is_none(),
            finished: record.is_some_and(|r| r.finished),
        });
    }
    Ok((out, unreadable))
}

/// The groups of at least two learning rates (none: no learning-rate sweep among the runs), standard
/// before μP, then by depth and width. Labels that two groups share get their row's number.
pub fn groups(runs: &[LrRun]) -> Vec<LrGroup> {
    let mut keys: Vec<&str> = Vec::new();
    let mut out: Vec<LrGroup> = Vec::new();
    for r in runs {
        match keys.iter().position(|k| *k == r.key) {
            Some(i) => out[i].points.push(r.clone()),
            None => {
                keys.push(&r.key);
                out.push(LrGroup { label: r.label.clone(), order: r.order, points: vec![r.clone()] });
            }
        }
    }
    for g in &mut out {
        g.points.sort_by(|a, b| a.lr.total_cmp(&b.lr));
    }
    out.retain(|g| {
        let mut lrs: Vec<f64> = g.points.iter().map(|p| p.lr).collect();
        lrs.dedup();
        lrs.len() >= 2
    });
    out.sort_by_key(|g| g.order); // stable: folder order within equal keys
    let shared: Vec<bool> = out.iter().map(|g| out.iter().filter(|h| h.label == g.label).count() > 1).collect();
    for (i, g) in out.iter_mut().enumerate().filter(|(i, _)| shared[*i]) {
        g.label = format!("{} (#{})", g.label, i + 1);
    }
    out
}

/// Loss per group (rows) and learning rate (columns), each group's best in bold. A cell with several
/// runs (other seeds, or the same config twice) lists each, and their mean. `unreadable`: folders left
/// out, listed below the table.
pub fn markdown(groups: &[LrGroup], unreadable: &[String]) -> String {
    let mut lrs: Vec<f64> = groups.iter().flat_map(|g| g.points.iter().map(|p| p.lr)).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    let mut s = "# Learning-rate sweep\n\nLoss (smoothed validation loss, else the smoothed training loss: means over \
                 the last 10 % of the steps; else summary.json's final training loss) per learning rate of runs whose \
                 configs differ only in `optim.lr` (and their seeds), in nats per bit; each row's best rate in bold \
                 (the lowest mean over its finished runs), * = stopped before `run.steps`, diverged = ended on a \
                 non-finite loss, no summary = failed before its first checkpoint or still before it, \
                 left out = unreadable, or without the loss measured (fits.md says why), – = no run. Under μP the best rate should not move with \
                 the width.\n\n"
        .to_string();
    let head: Vec<String> = lrs.iter().map(|&lr| format!("lr {}", rate_text(lr))).collect();
    let _ = writeln!(s, "| runs | {} | best lr |\n|---|{}---|", head.join(" | "), "---|".repeat(lrs.len()));
    for g in groups {
        let best = g.best();
        let cells: Vec<String> = lrs
            .iter()
            .map(|lr| {
                let at: Vec<String> = g
                    .points
                    .iter()
                    .filter(|p| p.lr == *lr)
                    .map(|p| {
                        let star = if p.finished { "" } else { "*" };
                        match p.loss {
                            None if p.unreadable => "left out".to_string(),
                            None if !p.summary => "no summary".to_string(),
                            None => format!("diverged{star}"),
                            Some(l) if best.is_some_and(|b| b.0 == p.lr) && p.finished => format!("**{l:.4}**"),
                            Some(l) => format!("{l:.4}{star}"),
                        }
                    })
                    .collect();
                let done: Vec<f64> =
                    g.points.iter().filter(|p| p.lr == *lr && p.finished).filter_map(|p| p.loss).collect();
                match at.len() {
                    0 => "–".into(),
                    1 => at.join(", "),
                    _ if done.len() > 1 => {
                        format!("{} (mean {:.4})", at.join(", "), done.iter().sum::<f64>() / done.len() as f64)
                    }
                    _ => at.join(", "),
                }
            })
            .collect();
        let best = best.map_or("–".into(), |b| rate_text(b.0));
        let _ = writeln!(s, "| {} | {} | {best} |", g.label, cells.join(" | "));
    }
    for w in edge_warnings(groups) {
        let _ = write!(s, "\n**Warning**: {w}\n");
    }
    if !unreadable.is_empty() {
        s.push_str("\nLeft out (unreadable):\n\n");
        for u in unreadable {
            let _ = writeln!(s, "- {u}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(key: &str, lr: f64, loss: Option<f64>, finished: bool) -> LrRun {
        let order = (key.contains("μP"), 2, key.get(..3).and_then(|w| w.parse().ok()).unwrap_or(0), 0);
        let dir = PathBuf::from(format!("{key}-{lr}"));
        let label = format!("width {key}");
        LrRun { dir, key: key.into(), label, order, lr, loss, summary: finished, unreadable: false, finished }
    }

    /// Run folders are read in natural name order (numbers by value), as runs.md lists them: a
    /// width's rows of several budgets come out `tokens-5e4`, `tokens-1e5`, `tokens-2e5`.
    #[test]
    fn runs_are_read_in_natural_name_order() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["tokens-2e5", "tokens-1e5", "tokens-5e4"] {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("config.toml"), "not = [toml").unwrap();
            std::fs::write(dir.join("derived.json"), "{}").unwrap();
        }
        let roots = crate::scaling::roots::roots(&[tmp.path()]).unwrap();
        let (runs, unreadable) = read_runs(&roots, &[]).unwrap();
        assert!(runs.is_empty());
        let names: Vec<&str> =
            unreadable.iter().map(|u| ["5e4", "1e5", "2e5"].into_iter().find(|n| u.contains(n)).unwrap()).collect();
        assert_eq!(names, ["5e4", "1e5", "2e5"], "{unreadable:?}");
    }

    #[test]
    fn runs_group_by_config_and_the_best_rate_is_marked() {
        let runs = vec![
            run("128 μP", 1e-2, Some(0.48), true),
            run("128 μP", 3e-3, Some(0.51), true),
            run("128", 1e-2, None, false), // failed: no summary
            run("128", 3e-3, Some(0.53), true),
            LrRun { summary: true, ..run("128", 2.5e-3, Some(0.52), false) }, // stopped early: not the best
            LrRun { summary: true, ..run("128", 3e-2, None, true) },          // ended NaN
            run("256", 3e-3, Some(0.55), true),                               // one rate only: no group
        ];
        let g = groups(&runs);
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(g[1].best(), Some((1e-2, 0.48)), "μP's rows after the standard ones");
        assert_eq!(g[0].best(), Some((3e-3, 0.53)), "the diverged run is not the best");
        let lrs: Vec<f64> = g[0].points.iter().map(|p| p.lr).collect();
        assert_eq!(lrs, [2.5e-3, 3e-3, 1e-2, 3e-2]);
        let md = markdown(&g, &["x: not TOML".into()]);
        assert!(md.contains("| runs | lr 0.0025 | lr 0.003 | lr 0.01 | lr 0.03 | best lr |"), "{md}");
        assert!(md.contains("| width 128 μP | – | 0.5100 | **0.4800** | – | 0.01 |"), "{md}");
        assert!(md.contains("| width 128 | 0.5200* | **0.5300** | no summary | diverged | 0.003 |"), "{md}");
        assert!(md.contains("- x: not TOML"), "{md}");
        assert!(md.contains("diverged = ended on a non-finite loss") && !md.contains("no summary = diverged"), "{md}");
        assert!(groups(&runs[6..]).is_empty());
        let left_out: Vec<String> = not_best(&g).iter().map(|d| d.display().to_string()).collect();
        assert_eq!(left_out, ["128-0.0025", "128-0.01", "128-0.03", "128 μP-0.003"], "all but each group's best");
    }

    /// A best rate at an end of the rates tried is not bracketed: said, with the side to extend; a
    /// divergence above it brackets it, a run stopped early does not.
    #[test]
    fn a_best_rate_at_the_edge_of_the_grid_is_warned_of() {
        let grid = |key: &str, losses: &[(f64, Option<f64>)]| -> Vec<LrRun> {
            losses.iter().map(|&(lr, l)| LrRun { summary: true, ..run(key, lr, l, true) }).collect()
        };
        let runs = [
            grid("64", &[(1e-3, Some(0.50)), (3e-3, Some(0.45)), (1e-2, Some(0.41))]),
            grid("128", &[(1e-3, Some(0.40)), (3e-3, Some(0.45))]),
            grid("256", &[(1e-3, Some(0.50)), (3e-3, Some(0.45)), (1e-2, None)]), // 1e-2 diverged
            grid("512", &[(1e-3, Some(0.50)), (3e-3, Some(0.45)), (1e-2, Some(0.48))]),
            // (1e-2 stopped early: its loss is of a schedule it did not finish)
            vec![
                run("768", 1e-3, Some(0.50), true),
                run("768", 3e-3, Some(0.45), true),
                run("768", 1e-2, Some(0.3), false),
            ],
        ]
        .concat();
        let g = groups(&runs);
        let w = edge_warnings(&g);
        assert_eq!(w.len(), 3, "{w:#?}");
        assert_eq!(
            w[0],
            "width 64: the best learning rate, 0.01, is the largest tried (0.001, 0.003, 0.01): the loss may fall \
             further at larger rates, so its best run may not be tuned; add larger rates"
        );
        assert!(w[1].starts_with("width 128: the best learning rate, 0.001, is the smallest tried"), "{}", w[1]);
        assert!(w[1].ends_with("add smaller rates"), "{}", w[1]);
        assert!(!w.iter().any(|w| w.contains("width 256") || w.contains("width 512")), "{w:#?}");
        assert!(
            w[2].contains("width 768: the best learning rate, 0.003, is the largest tried (0.001, 0.003)"),
            "{}",
            w[2]
        );
        let md = markdown(&g, &[]);
        assert!(md.contains("\n**Warning**: width 64: the best learning rate, 0.01, is the largest tried"), "{md}");
        // (rates written as the table's columns are: `1e4`, not `10000`)
        let huge = groups(&grid("64", &[(1e-2, Some(0.5)), (1e4, Some(0.4))]));
        let w = edge_warnings(&huge);
        assert!(w[0].contains("the best learning rate, 1e4, is the largest tried (0.01, 1e4)"), "{w:?}");
        assert!(markdown(&huge, &[]).contains("lr 1e4"));
    }

    #[test]
    fn groups_sharing_a_label_are_numbered() {
        let mut a = run("a", 1e-3, Some(1.0), true);
        let mut b = run("b", 1e-3, Some(1.0), true);
        a.label = "same".into();
        b.label = "same".into();
        let runs = vec![a.clone(), LrRun { lr: 2e-3, ..a }, b.clone(), LrRun { lr: 2e-3, ..b }];
        let labels: Vec<String> = groups(&runs).into_iter().map(|g| g.label).collect();
        assert_eq!(labels, ["same (#1)", "same (#2)"]);
    }

    /// Seeds at one rate are judged by their mean, not by the luckiest: the best single run (0.50 at
    /// 1e-3) is not the best rate.
    #[test]
    fn seeds_at_a_rate_are_judged_by_their_mean() {
        let seeds = |lr: f64, losses: &[f64]| -> Vec<LrRun> {
            let at =
                |(i, l): (usize, &f64)| LrRun { dir: format!("{lr}-s{i}").into(), ..run("64", lr, Some(*l), true) };
            losses.iter().enumerate().map(at).collect()
        };
        let runs = [seeds(1e-3, &[0.50, 0.60]), seeds(2e-3, &[0.52, 0.54])].concat();
        let g = groups(&runs);
        assert_eq!(g.len(), 1);
        assert!(g[0].best().is_some_and(|(lr, l)| lr == 2e-3 && (l - 0.53).abs() < 1e-12), "{:?}", g[0].best());
        let left_out: Vec<String> = not_best(&g).iter().map(|d| d.display().to_string()).collect();
        assert_eq!(left_out, ["0.001-s0", "0.001-s1"]);
        let md = markdown(&g, &[]);
        assert!(md.contains("| 0.5000, 0.6000 (mean 0.5500) | **0.5200**, **0.5400** (mean 0.5300) | 0.002 |"), "{md}");
    }
}
