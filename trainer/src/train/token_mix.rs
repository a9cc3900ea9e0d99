//! The tokens and training FLOPs a run's batches hold on average: each schedule of each dataset
//! weighted by the global batches the loader draws of it (a mix by its datasets' shares, and its later
//! phases by the steps they span), and the rows no epoch draws.

use anyhow::Result;
use infinity_data::{Dataset, Manifest};

use super::config::TrainConfig;
use crate::model::bench::train_flops_per_token;
use crate::model::ModelConfig;

/// Tokens and training FLOPs per sample of a dataset's schedules, and their mean over the batches a
/// run draws: each schedule weighted by its whole global batches per epoch (the loader's plan; the
/// rows left over are not drawn), or by its rows where no bucket holds a batch. In a mix each dataset's
/// batches count by its share of the mixed epoch.
#[derive(Clone, Debug)]
pub struct TokenMix {
    /// Training FLOPs per token of each schedule (the attention context differs between them).
    pub flops_per_token: Vec<f64>,
    /// Tokens per sample, the mean over the drawn batches.
    pub mean_tokens: f64,
    /// Training FLOPs per sample, the mean over the drawn batches.
    pub mean_flops: f64,
    /// Rows an epoch draws: each bucket's whole global batches (of every dataset of a mix).
    pub rows_per_epoch: u64,
    /// `(schedule, rows)` of the buckets holding fewer rows than a global batch, which no epoch draws
    /// (in a mix, `schedule of data.mix[i]` for its datasets).
    pub undrawn: Vec<(String, u64)>,
    /// Global batches per (mixed) epoch of each dataset: `data.dir`'s, then `data.mix`'s.
    pub quotas: Vec<u64>,
    /// The same of each later phase of the mix (`data.phases`), with its first step.
    pub phase_quotas: Vec<(u64, Vec<u64>)>,
}

/// The weights of a mix from step 0 and its phases', with the names of its datasets for errors and
/// the run's length, as [`TokenMix`] takes them.
struct MixWeights<'a> {
    first: Option<&'a [f64]>,
    phases: &'a [super::config::DataPhase],
    names: &'a [String],
    steps: u64,
    /// The steps whose batches count (`0..steps`, or the span of one global batch size): a phase
    /// outside it counts for none, its quotas unchecked.
    span: (u64, u64),
}

impl TokenMix {
    pub fn of(mc: &ModelConfig, m: &Manifest, global_batch: usize) -> TokenMix {
        let names = ["data.dir".to_string()];
        let weights = MixWeights { first: None, phases: &[], names: &names, steps: 1, span: (0, 1) };
        Self::of_parts(mc, &[m], weights, global_batch).expect("one dataset, no weights")
    }

    /// The mix of `cfg`'s datasets (`data.dir`, `data.mix`), whose manifests are `parts` (the first's
    /// schedules are every one's).
    pub fn of_mix(mc: &ModelConfig, parts: &[&Manifest], cfg: &TrainConfig) -> Result<TokenMix> {
        Self::of_span(mc, parts, cfg, cfg.data.global_batch, (0, cfg.run.steps))
    }

    /// [`TokenMix::of_mix`] of `ds` (`cfg`'s datasets) over steps `span` drawn at global batch size
    /// `global_batch`: a size the run had there (a resume changed it), its phases by their steps in
    /// the span.
    pub fn at_size(
        mc: &ModelConfig,
        ds: &infinity_data::Dataset,
        cfg: &TrainConfig,
        global_batch: usize,
        span: (u64, u64),
    ) -> Result<TokenMix> {
        let manifests: Vec<&Manifest> = ds.parts().iter().map(|p| &p.manifest).collect();
        Self::of_span(mc, &manifests, cfg, global_batch, span)
    }

    fn of_span(
        mc: &ModelConfig,
        parts: &[&Manifest],
        cfg: &TrainConfig,
        global_batch: usize,
        span: (u64, u64),
    ) -> Result<TokenMix> {
        let names: Vec<String> = cfg.data.dirs().map(|(key, dir)| format!("{key} {}", dir.display())).collect();
        let first = cfg.data.mix_weights();
        let (phases, steps) = (&cfg.data.phases[..], cfg.run.steps);
        let weights = MixWeights { first: first.as_deref(), phases, names: &names, steps, span };
        Self::of_parts(mc, parts, weights, global_batch)
    }

    /// [`TokenMix::of_mix`] under `weights`.
    fn of_parts(mc: &ModelConfig, parts: &[&Manifest], weights: MixWeights, global_batch: usize) -> Result<TokenMix> {
        let m = parts[0];
        let text_tokens = m.conditions.text.as_ref().map_or(0, |t| t.max_tokens as usize);
        let scales: Vec<Vec<(usize, usize)>> = m.schedules.iter().map(|s| mc.token_scales(&s.hw())).collect();
        let flops_per_token: Vec<f64> = scales.iter().map(|s| train_flops_per_token(mc, s, text_tokens)).collect();
        let g = global_batch.max(1) as u64;
        // rows and whole global batches of each dataset's buckets
        let rows: Vec<Vec<u64>> = parts.iter().map(|p| p.rows_per_bucket()).collect();
        let batches: Vec<Vec<u64>> = rows.iter().map(|r| r.iter().map(|n| n / g).collect()).collect();
        let natural: Vec<u64> = batches.iter().map(|b| b.iter().sum()).collect();
        let quotas_of = |w: Option<&[f64]>, names: &[String]| match natural.iter().any(|&n| n > 0) {
            true => infinity_data::loader::mix::quotas(&natural, w, names),
            false => Ok(natural.clone()),
        };
        // the steps of `[from, to)` in the span: a phase with none is not drawn there (at this size), and
        // its quotas here are not asked for
        let (lo, hi) = weights.span;
        let overlap = |from: u64, to: u64| to.min(hi).saturating_sub(from.max(lo));
        let starts: Vec<u64> = weights.phases.iter().map(|p| p.start(weights.steps)).collect();
        let first_end = starts.first().copied().unwrap_or(u64::MAX);
        let quotas = match overlap(0, first_end) > 0 || weights.phases.is_empty() {
            true => quotas_of(weights.first, weights.names)?,
            false => quotas_of(weights.first, weights.names).unwrap_or_else(|_| natural.clone()),
        };
        let mut phase_quotas = Vec::with_capacity(weights.phases.len());
        for (k, p) in weights.phases.iter().enumerate() {
            let names: Vec<String> = weights.names.iter().map(|n| format!("{n} (data.phases[{k}])")).collect();
            let end = starts.get(k + 1).copied().unwrap_or(u64::MAX);
            // (a phase the run never reaches is shown by its weights all the same, where they can draw)
            let q = match overlap(starts[k], end) > 0 {
                true => quotas_of(Some(&p.weights), &names)?,
                false => quotas_of(Some(&p.weights), &names).unwrap_or_else(|_| natural.clone()),
            };
            phase_quotas.push((starts[k], q));
        }
        let named = |p: usize, b: usize| match p {
            0 => m.schedules[b].name.clone(),
            _ => format!("{} of data.mix[{}]", m.schedules[b].name, p - 1),
        };
        let mut undrawn = Vec::new();
        for (p, part) in rows.iter().enumerate() {
            for (b, &n) in part.iter().enumerate() {
                // (a dataset weighted 0 is left out on purpose: the mix's line says so)
                if n > 0 && batches[p][b] == 0 {
                    undrawn.push((named(p, b), n));
                }
            }
        }
        // each bucket's expected batches per mixed epoch: a dataset's quota spread as its own epoch is
        let share_of = |quotas: &[u64]| -> Vec<f64> {
            let mut share = vec![0.0f64; m.schedules.len()];
            for p in 0..parts.len() {
                for (b, slot) in share.iter_mut().enumerate() {
                    *slot += match natural[p] {
                        0 => 0.0,
                        n => quotas[p] as f64 * batches[p][b] as f64 / n as f64,
                    };
                }
            }
            share
        };
        let mut share = share_of(&quotas);
        if !phase_quotas.is_empty() {
            // over a mix's phases (each as many batches an epoch), each phase's by its steps in the run
            let starts = std::iter::once(0).chain(phase_quotas.iter().map(|(from, _)| *from));
            let ends = phase_quotas.iter().map(|(from, _)| *from).chain(std::iter::once(u64::MAX));
            let phases = std::iter::once(&quotas).chain(phase_quotas.iter().map(|(_, q)| q));
            share = vec![0.0; m.schedules.len()];
            for ((from, to), q) in starts.zip(ends).zip(phases) {
                let steps = overlap(from, to.min(weights.steps.max(1))) as f64;
                share.iter_mut().zip(share_of(q)).for_each(|(s, x)| *s += steps * x);
            }
        }
        if share.iter().all(|&x| x == 0.0) {
            // (no bucket holds a batch: weighted by rows, for the estimate alone)
            share = (0..m.schedules.len()).map(|b| rows.iter().map(|r| r[b] as f64).sum()).collect();
        }
        let rows_per_epoch = quotas.iter().sum::<u64>() * g;
        let total = share.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let mean =
            |per_sample: &dyn Fn(usize) -> f64| (0..share.len()).map(|b| share[b] * per_sample(b)).sum::<f64>() / total;
        let tokens = |b: usize| infinity_kernels::bsq::num_tokens(&scales[b]) as f64;
        let mean_flops = mean(&|b| tokens(b) * flops_per_token[b]);
        Ok(TokenMix {
            mean_tokens: mean(&tokens),
            mean_flops,
            flops_per_token,
            rows_per_epoch,
            undrawn,
            quotas,
            phase_quotas,
        })
    }

    /// The line saying how a mix draws its datasets (`data.dir` and `data.mix`), where there is one.
    pub fn mix_line(&self, cfg: &TrainConfig, ds: &Dataset) -> Option<String> {
        if self.quotas.len() < 2 {
            return None;
        }
        let total = self.quotas.iter().sum::<u64>().max(1) as f64;
        let percent = |q: u64| 100.0 * q as f64 / total;
        let parts: Vec<String> = cfg
            .data
            .dirs()
            .zip(ds.parts())
            .zip(&self.quotas)
            .map(|(((key, dir), part), &q)| {
                let rows = part.rows.end - part.rows.start;
                format!("{key} {} ({rows} rows): {:.1} % of the batches", dir.display(), percent(q))
            })
            .collect();
        let how = match cfg.data.mix_weights() {
            Some(_) => "by weight",
            None => "by size",
        };
        let mut line = format!("data mix ({how}, {} global batches an epoch): {}", total as u64, parts.join("; "));
        for (from, quotas) in &self.phase_quotas {
            let shares: Vec<String> =
                cfg.data.dirs().zip(quotas).map(|((key, _), &q)| format!("{key} {:.1} %", percent(q))).collect();
            // (after step N as metrics.jsonl counts steps, from 1: the phase's first is step N + 1)
            let late = match *from >= cfg.run.steps {
                true => format!(" (the run has {} steps: never reached)", cfg.run.steps),
                false => String::new(),
            };
            line.push_str(&format!("; after step {from}{late}: {}", shares.join(", ")));
        }
        Some(line)
    }

    /// A warning (without its `warning: `) naming the buckets no epoch draws (fewer rows than a global batch),
    /// if any.
    pub fn undrawn_warning(&self, global_batch: usize, total_rows: u64) -> Option<String> {
        let never: u64 = self.undrawn.iter().map(|(_, r)| r).sum();
        let list: Vec<String> = self.undrawn.iter().map(|(name, rows)| format!("{name} ({rows} rows)")).collect();
        (!self.undrawn.is_empty()).then(|| {
            format!(
                "{never} of {total_rows} rows ({:.1} %) are never trained on: their buckets hold fewer \
                 rows than a global batch of {global_batch}: {} (a smaller data.global_batch, or more data of \
                 those schedules, draws them)",
                100.0 * never as f64 / total_rows.max(1) as f64,
                list.join(", ")
            )
        })
    }
}
