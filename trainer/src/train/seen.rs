//! What a run has trained on so far, over all ranks: samples, tokens and training FLOPs, the x axes of
//! loss curves that compare runs of other batch sizes or models (`metrics.jsonl`'s `samples_seen`,
//! `tokens_seen` and `flops_seen`, `val.jsonl`'s the same at each evaluation).
//!
//! The counts are the steps' own: each step adds its global batch's rows, their tokens under the
//! schedule of the bucket it drew, and the FLOPs the step's throughput figures count (so a skipped
//! update counts too: its forward and backward were done). They ride in the checkpoint's `state.json`,
//! so a resumed run counts on exactly as an uninterrupted one; a checkpoint of an earlier build, which
//! has none, gets them recounted from `metrics.jsonl`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Samples, tokens and training FLOPs up to and including a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seen {
    pub samples: u64,
    pub tokens: u64,
    pub flops: f64,
}

/// Per bucket (schedule) of the dataset: tokens per sample and training FLOPs per token.
pub type BucketCosts = [(u64, f64)];

/// The [`BucketCosts`] of the model `mc` on the dataset `m`, its training FLOPs per token by schedule
/// `flops_per_token` ([`super::TokenMix`]'s): the transformer's tokens (a spatially patchified
/// schedule's quarter of the stored grid).
pub fn bucket_costs(
    mc: &crate::model::ModelConfig,
    m: &infinity_data::Manifest,
    flops_per_token: &[f64],
) -> Vec<(u64, f64)> {
    let tokens = |s: &infinity_data::ScaleSchedule| infinity_kernels::bsq::num_tokens(&mc.token_scales(&s.hw())) as u64;
    m.schedules.iter().zip(flops_per_token).map(|(s, &f)| (tokens(s), f)).collect()
}

impl Seen {
    /// Step rows `samples` drawn from a bucket of `tokens_per_sample` tokens at `flops_per_token`.
    /// (Saturating: a count no run reaches, as a hand-edited state.json may hold, stays at the bound.)
    pub fn add(&mut self, samples: u64, tokens_per_sample: u64, flops_per_token: f64) {
        let tokens = samples.saturating_mul(tokens_per_sample);
        self.samples = self.samples.saturating_add(samples);
        self.tokens = self.tokens.saturating_add(tokens);
        self.flops += flops_per_token * tokens as f64;
    }

    /// Why counts read from a checkpoint cannot be a run's, if they cannot: FLOPs that are not a finite
    /// number of at least 0, or fewer tokens than samples (every sample has one at least).
    pub fn implausible(&self) -> Option<String> {
        if !(self.flops.is_finite() && self.flops >= 0.0) {
            return Some(format!("`seen.flops` is {}: expected a finite count of at least 0", self.flops));
        }
        (self.tokens < self.samples).then(|| {
            format!(
                "`seen.tokens` is {}, `seen.samples` {}: expected at least as many tokens as samples",
                self.tokens, self.samples
            )
        })
    }

    /// The counts at `step` from the lines of `metrics.jsonl` (`log`, its text) for steps 1 to `step`
    /// (each step's `global_batch` and `bucket`), added in order as the steps added them, so they equal
    /// what an uninterrupted run counted. Errors say which step cannot be counted (a line missing, out of
    /// order or without the fields, a bucket the dataset does not have).
    pub fn recount(log: &str, step: u64, costs: &BucketCosts) -> Result<Seen, String> {
        let mut seen = Seen::default();
        let mut next = 1;
        for (i, line) in log.lines().enumerate() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let Some(s) = v["step"].as_u64().filter(|&s| s <= step) else { continue };
            if s != next {
                return Err(format!("line {} is step {s} where step {next} was expected", i + 1));
            }
            let (rows, bucket) = (v["global_batch"].as_u64(), v["bucket"].as_u64());
            let Some(&(tokens, flops)) = bucket.and_then(|b| costs.get(b as usize)) else {
                return Err(format!("line {} (step {s}) has no bucket of this dataset", i + 1));
            };
            let Some(rows) = rows else { return Err(format!("line {} (step {s}) has no global_batch", i + 1)) };
            seen.add(rows, tokens, flops);
            next += 1;
        }
        match next > step {
            true => Ok(seen),
            false => Err(format!("it has no line for step {next}")),
        }
    }

    /// [`recount`](Self::recount) from the run folder's `metrics.jsonl`, saying why not in a warning
    /// that ends with `without` (what then carries no counts: a guess would mislead a fit).
    pub fn recounted(run: &Path, step: u64, costs: &BucketCosts, without: &str) -> Option<Seen> {
        if step == 0 {
            return Some(Seen::default());
        }
        let path = run.join("metrics.jsonl");
        let counted = std::fs::read_to_string(&path)
            .map_err(|e| format!("it cannot be read ({e})"))
            .and_then(|text| Seen::recount(&text, step, costs));
        counted
            .inspect(|s| {
                tracing::info!(
                    "the checkpoint of step {step} has no count of what the run has seen (an earlier build's): {} \
                     samples, {} tokens and {:.4e} FLOPs recounted from {}",
                    s.samples,
                    s.tokens,
                    s.flops,
                    path.display()
                )
            })
            .map_err(|why| {
                tracing::warn!(
                    "the checkpoint of step {step} has no count of what the run has seen (an earlier build's, or \
                     one of a run whose count was lost so), and {} cannot recount it: {why}; {without}",
                    path.display()
                )
            })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COSTS: [(u64, f64); 2] = [(10, 3.0), (4, 5.5)];

    fn line(step: u64, rows: u64, bucket: u64) -> String {
        format!("{{\"step\":{step},\"loss\":0.5,\"global_batch\":{rows},\"bucket\":{bucket}}}\n")
    }

    #[test]
    fn a_recount_adds_each_step_as_it_was_drawn() {
        let mut by_step = Seen::default();
        let mut log = String::new();
        for (step, (rows, bucket)) in [(8, 0), (8, 1), (16, 1), (16, 0)].into_iter().enumerate() {
            log.push_str(&line(step as u64 + 1, rows, bucket));
            by_step.add(rows, COSTS[bucket as usize].0, COSTS[bucket as usize].1);
        }
        // (a later line, of a session the resume replaces, is not counted)
        log.push_str(&line(5, 99, 0));
        let seen = Seen::recount(&log, 4, &COSTS).unwrap();
        assert_eq!(seen, by_step);
        assert_eq!((seen.samples, seen.tokens), (48, 8 * 10 + 8 * 4 + 16 * 4 + 16 * 10));
        assert_eq!(seen.flops, 80.0 * 3.0 + 32.0 * 5.5 + 64.0 * 5.5 + 160.0 * 3.0);
    }

    #[test]
    fn a_recount_refuses_a_log_it_cannot_count_exactly() {
        let gap = line(1, 8, 0) + &line(3, 8, 0);
        assert_eq!(Seen::recount(&gap, 3, &COSTS).unwrap_err(), "line 2 is step 3 where step 2 was expected");
        let short = line(1, 8, 0);
        assert_eq!(Seen::recount(&short, 2, &COSTS).unwrap_err(), "it has no line for step 2");
        let bucket = line(1, 8, 7);
        assert_eq!(Seen::recount(&bucket, 1, &COSTS).unwrap_err(), "line 1 (step 1) has no bucket of this dataset");
        let rows = "{\"step\":1,\"bucket\":0}\n";
        assert_eq!(Seen::recount(rows, 1, &COSTS).unwrap_err(), "line 1 (step 1) has no global_batch");
        // (a line that is not JSON, a write cut short, is skipped as the truncation keeps it)
        let torn = line(1, 8, 0) + "{\"step\":2,\"lo\n" + &line(2, 8, 1);
        assert_eq!(Seen::recount(&torn, 2, &COSTS).unwrap().samples, 16);
    }
}
