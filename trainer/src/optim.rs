//! AdamW with decoupled weight decay, upstream's no-decay groups and per-tensor learning-rate
//! multipliers (μP), global-norm gradient clipping, and the learning-rate schedules. Matches
//! `torch.optim.AdamW` and `torch.nn.utils.clip_grad_norm_`.

use std::ops::Range;

use infinity_kernels::adamw::{adamw_update, ema_update, group_byte, sum_squares, AdamWScalars, GroupRuns};
use serde::{Deserialize, Serialize};

use crate::model::Layout;

/// `[optim.adamw]`: any field left out takes its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Applied to tensors in the decay group only (upstream `twd`).
    pub weight_decay: f64,
    /// Upstream's `twde`: the weight decay at the last step, reached from `weight_decay` along a cosine
    /// over the whole run (upstream's default, and ours when left out, is `weight_decay` itself:
    /// constant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay_end: Option<f64>,
}

impl Default for AdamWConfig {
    /// Upstream train.sh: `--ada=0.9_0.97`, PyTorch's eps, `twd = 0.005`.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.97, eps: 1e-8, weight_decay: 0.005, weight_decay_end: None }
    }
}

impl AdamWConfig {
    /// The weight decay of step `step` (0-based) of `total`: `weight_decay` at the first step, cosine to
    /// `weight_decay_end` at the last (upstream's `lr_wd_annealing`).
    pub fn weight_decay_at(&self, step: u64, total: u64) -> f64 {
        let Some(end) = self.weight_decay_end else { return self.weight_decay };
        let t = (step as f64 / total.saturating_sub(1).max(1) as f64).min(1.0);
        cosine(self.weight_decay, end, t)
    }
}

/// Optimiser state: first and second moments of the parameters in `range` of the flat layout (all of
/// them, or one rank's shard under ZeRO-1), and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub step: u64,
    /// Which parameters these moments belong to.
    pub range: std::ops::Range<usize>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// The group bytes of the parameters in `range`, as runs (`adamw::group_byte`: weight decay, and an
    /// index into `lr_mult`).
    groups: GroupRuns,
    /// The learning-rate multipliers the groups index (`[0]` = 1).
    lr_mult: Vec<f64>,
    /// The weight decay of the next step, where a schedule set it ([`AdamW::set_weight_decay`]; else
    /// `cfg.weight_decay`).
    weight_decay_now: Option<f64>,
}

/// The distinct learning-rate multipliers of `lay`'s tensors, 1 first, then in layout order.
pub fn lr_mults(lay: &Layout) -> Vec<f64> {
    let mut lr_mult = vec![1.0];
    for s in &lay.specs {
        if !lr_mult.contains(&s.lr_mult) {
            lr_mult.push(s.lr_mult);
        }
    }
    lr_mult
}

/// The optimizer groups of `lay`: each parameter's group byte (upstream's no-decay groups, the tensor's
/// learning-rate multiplier), as runs over the flat layout (elements no tensor holds: group 0), and the
/// distinct multipliers they index ([`lr_mults`]).
pub fn param_groups(lay: &Layout) -> (GroupRuns, Vec<f64>) {
    let lr_mult = lr_mults(lay);
    let mut specs: Vec<_> = lay.specs.iter().collect();
    specs.sort_by_key(|s| s.offset);
    let mut groups = GroupRuns::default();
    for s in specs {
        let k = lr_mult.iter().position(|&k| k == s.lr_mult).expect("lr_mults lists every multiplier");
        groups.push(s.offset - groups.len(), 0);
        groups.push(s.numel(), group_byte(s.decay, k));
    }
    groups.push(lay.numel - groups.len(), 0);
    (groups, lr_mult)
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, lay: &Layout) -> AdamW {
        AdamW::new_part(cfg, lay, 0..lay.numel)
    }

    /// A fresh state of the parameters in `range` alone (a ZeRO-1 shard, as [`AdamW::shard`] cuts it).
    pub fn new_part(cfg: AdamWConfig, lay: &Layout, range: Range<usize>) -> AdamW {
        let (groups, lr_mult) = param_groups(lay);
        let (m, v) = (vec![0.0; range.len()], vec![0.0; range.len()]);
        AdamW { cfg, step: 0, groups: groups.slice(range.clone()), range, m, v, lr_mult, weight_decay_now: None }
    }

    /// The group bytes of the parameters in `range` ([`param_groups`]).
    pub fn groups(&self) -> &GroupRuns {
        &self.groups
    }

    /// The learning-rate multipliers [`AdamW::groups`] index.
    pub fn lr_mult(&self) -> &[f64] {
        &self.lr_mult
    }

    /// The weight decay of the next steps, as the schedule has it ([`AdamWConfig::weight_decay_at`]).
    pub fn set_weight_decay(&mut self, weight_decay: f64) {
        self.weight_decay_now = Some(weight_decay);
    }

    /// The AdamW scalars of the next step, which it counts (for an update that runs elsewhere: the
    /// device).
    pub fn next_step_scalars(&mut self, lr: f64) -> AdamWScalars {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay, .. } = self.cfg;
        let weight_decay = self.weight_decay_now.unwrap_or(weight_decay);
        AdamWScalars::new(lr, beta1, beta2, eps, weight_decay, self.step)
    }

    /// The part of this (full) state that covers `range` (a ZeRO-1 shard).
    pub fn shard(&self, range: Range<usize>) -> AdamW {
        assert_eq!(self.range, 0..self.m.len(), "shard of a shard");
        AdamW {
            cfg: self.cfg.clone(),
            step: self.step,
            m: self.m[range.clone()].to_vec(),
            v: self.v[range.clone()].to_vec(),
            groups: self.groups.slice(range.clone()),
            lr_mult: self.lr_mult.clone(),
            weight_decay_now: self.weight_decay_now,
            range,
        }
    }

    /// Free the host copy of the moments, which a device optimizer keeps (a rank that writes no
    /// checkpoint never reads them back): the state keeps its step and settings, and
    /// [`AdamW::update`] can no longer run on the host.
    pub fn release_moments(&mut self) {
        (self.m, self.v) = (Vec::new(), Vec::new());
    }

    /// One update of the parameters in `self.range` (`params`, `grads`: exactly those) at learning rate
    /// `lr` (PyTorch's AdamW arithmetic).
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        assert!(params.len() == self.m.len() && grads.len() == self.m.len(), "AdamW: layout mismatch");
        let scalars = self.next_step_scalars(lr);
        adamw_update(params, grads, &mut self.m, &mut self.v, &self.groups, &self.lr_mult, &scalars);
    }
}

/// A moving average of the weights (`optim.ema_decay`, upstream's `update_ema`), pulled towards the
/// weights after every update. It covers `range` of the flat parameters: all of them on rank 0, or
/// each rank's own shard when several ranks update on the host or ZeRO-1 runs on the GPUs (gathered
/// for checkpoints: `train::ema`).
#[derive(Clone)]
pub struct Ema {
    pub decay: f64,
    /// The average of `params[range]`.
    pub weights: Vec<f32>,
    pub range: Range<usize>,
}

impl Ema {
    /// The average of the parameters `range`, starting from `weights` (theirs: a checkpoint's average,
    /// or the weights themselves).
    pub fn new(decay: f64, weights: Vec<f32>, range: Range<usize>) -> Ema {
        assert_eq!(weights.len(), range.len(), "the moving average of {range:?}");
        Ema { decay, weights, range }
    }

    pub fn update(&mut self, params: &[f32]) {
        ema_update(&mut self.weights, &params[self.range.clone()], self.decay);
    }
}

/// `√Σ g²` over all gradients (accumulated in f64).
pub fn global_norm(grads: &[f32]) -> f64 {
    sum_squares(grads).sqrt()
}

/// The factor that clips gradients of global norm `norm` to `max_norm` (PyTorch: `max_norm / (norm +
/// 1e-6)`), when it is below 1; `max_norm = 0` turns clipping off (upstream's `tclip = 0`).
pub fn clip_coef(norm: f64, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (norm + 1e-6);
    (max_norm > 0.0 && coef < 1.0).then_some(coef)
}

/// The global-norm clip of step `step` (0-based) of `total`: `clip` itself, or under upstream's `--cdec`
/// (`decay`) `clip · (0.3^(20·t) + 0.2)` with `t = step / (total - 1)`: 1.2 × `clip` at the first step,
/// down to 0.2 × within the first quarter of the run or so, 0.2 × at the last (upstream's
/// `clip_decay_ratio`, its progress `g_it / (max_it - 1)` with one micro-step per step).
pub fn clip_at(clip: f64, decay: bool, step: u64, total: u64) -> f64 {
    if !decay {
        return clip;
    }
    let t = (step as f64 / total.saturating_sub(1).max(1) as f64).min(1.0);
    clip * (0.3f64.powf(20.0 * t) + 0.2)
}

/// Scale gradients so their global norm is at most `max_norm` ([`clip_coef`]). Returns the norm before
/// clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if let Some(coef) = clip_coef(norm, max_norm) {
        grads.iter_mut().for_each(|g| *g = (*g as f64 * coef) as f32);
    }
    norm
}

/// Learning-rate schedule after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum Decay {
    /// Constant at the peak (upstream train.sh: `lin0` with `wpe=1`). (Braces, not a unit variant: a unit
    /// variant of a tagged enum would take `min_ratio` beside its kind without a word.)
    Constant {},
    /// Cosine from the peak to `min_ratio · peak` at the last step.
    Cosine { min_ratio: f64 },
    /// Linear from the peak to `min_ratio · peak` at the last step.
    Linear { min_ratio: f64 },
    /// Warmup-stable-decay: constant until the last `decay_fraction` of steps, then linear to
    /// `min_ratio · peak`.
    Wsd { decay_fraction: f64, min_ratio: f64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    pub peak: f64,
    /// Linear warm-up from `warmup_start_ratio · peak` (upstream `wp0 = 0.005`) to the peak.
    pub warmup_steps: u64,
    pub warmup_start_ratio: f64,
    pub decay: Decay,
}

/// A half cosine from `from` at `t = 0` to `to` at `t = 1`.
fn cosine(from: f64, to: f64, t: f64) -> f64 {
    to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

impl LrSchedule {
    /// Learning rate of optimiser step `step` (0-based) of `total` steps: the decay runs from the peak
    /// at step `warmup_steps` to its end value at the last step, `total - 1` (upstream's
    /// `lr_wd_annealing` divides by `max_it - 1 - wp_it` alike).
    pub fn lr(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return self.peak * (self.warmup_start_ratio + (1.0 - self.warmup_start_ratio) * t);
        }
        let span = total.saturating_sub(1).saturating_sub(self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let f = match self.decay {
            Decay::Constant {} => 1.0,
            Decay::Cosine { min_ratio } => cosine(1.0, min_ratio, t),
            Decay::Linear { min_ratio } => 1.0 - (1.0 - min_ratio) * t,
            Decay::Wsd { decay_fraction, min_ratio } => {
                let start = 1.0 - decay_fraction;
                if t <= start {
                    1.0
                } else {
                    1.0 - (1.0 - min_ratio) * (t - start) / decay_fraction.max(1e-12)
                }
            }
        };
        self.peak * f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn adamw_matches_the_pytorch_formula_with_decay_and_learning_rate_groups() {
        let mut lay = Layout::new(&ModelConfig::preset("tiny").unwrap());
        // μP-style multipliers: a hidden weight's learning rate × 0.25, the decay unscaled
        let fc2 = lay.specs.iter().position(|s| s.name == "blocks.0.ffn.fc2.weight").unwrap();
        lay.specs[fc2].lr_mult = 0.25;
        let (groups, lr_mult) = param_groups(&lay);
        assert_eq!(lr_mult, [1.0, 0.25]);
        let at = |name: &str| lay.spec(name).unwrap().offset;
        let byte = |name: &str| groups.byte_of(at(name));
        assert_eq!((byte("blocks.0.ffn.fc2.weight"), byte("blocks.0.ffn.fc1.weight")), (3, 1));
        assert_eq!(byte("blocks.0.ffn.fc2.bias"), 0);
        // every tensor's elements carry its group, in a run per tensor at most
        for s in &lay.specs {
            let want = group_byte(s.decay, (s.lr_mult != 1.0) as usize);
            assert!((s.offset..s.offset + s.numel()).all(|i| groups.byte_of(i) == want), "{}", s.name);
        }
        assert!(groups.starts().len() <= lay.specs.len() && groups.len() == lay.numel);
        let mut opt = AdamW::new(
            AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, ..Default::default() },
            &lay,
        );
        let mut p = vec![0.5f32; lay.numel];
        let g: Vec<f32> = (0..lay.numel).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        for _ in 0..2 {
            opt.update(&mut p, &g, 1e-2);
        }
        // reference in f64 for one decayed and one non-decayed coordinate after two identical steps
        let reference = |decay: bool, k: f64, g: f64| {
            let (mut x, mut m, mut v) = (0.5f64, 0.0, 0.0);
            for t in 1..=2 {
                if decay {
                    x *= 1.0 - 1e-2 * 0.1;
                }
                m = 0.9 * m + 0.1 * g;
                v = 0.95 * v + 0.05 * g * g;
                let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.95f64.powi(t)));
                x -= k * 1e-2 * mh / (vh.sqrt() + 1e-8);
            }
            x
        };
        let w = lay.spec("blocks.0.ffn.fc1.weight").unwrap().offset + 1;
        let b = lay.spec("blocks.0.ffn.fc1.bias").unwrap().offset + 2;
        let h = lay.spec("blocks.0.ffn.fc2.weight").unwrap().offset + 3;
        assert!((p[w] as f64 - reference(true, 1.0, g[w] as f64)).abs() < 1e-6);
        assert!((p[b] as f64 - reference(false, 1.0, g[b] as f64)).abs() < 1e-6);
        assert!((p[h] as f64 - reference(true, 0.25, g[h] as f64)).abs() < 1e-6);
        assert!((reference(true, 1.0, g[h] as f64) - reference(true, 0.25, g[h] as f64)).abs() > 1e-3);
    }

    #[test]
    fn clipping_and_schedules() {
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
        let mut small = vec![0.3f32, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
        let mut off = vec![3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut off, 0.0), 5.0);
        assert_eq!(off, vec![3.0, 4.0], "max_norm 0 turns clipping off");
        assert_eq!(clip_at(5.0, false, 7, 11), 5.0);
        assert!((clip_at(5.0, true, 0, 11) - 6.0).abs() < 1e-12, "1.2 × at the first step");
        // t = 0.1: 0.3² + 0.2 = 0.29
        assert!((clip_at(5.0, true, 1, 11) - 1.45).abs() < 1e-12);
        assert!((clip_at(5.0, true, 10, 11) - 5.0 * (0.3f64.powi(20) + 0.2)).abs() < 1e-12);
        assert_eq!(clip_at(5.0, true, 0, 1), 6.0, "a one-step run");

        // 101 steps (0..=100), 10 of warm-up: the decay spans steps 10..=100
        let s = |decay| LrSchedule { peak: 1.0, warmup_steps: 10, warmup_start_ratio: 0.005, decay };
        assert!((s(Decay::Constant {}).lr(0, 101) - 0.005).abs() < 1e-12);
        assert!((s(Decay::Constant {}).lr(5, 101) - (0.005 + 0.995 * 0.5)).abs() < 1e-12);
        assert_eq!(s(Decay::Constant {}).lr(100, 101), 1.0);
        let cos = s(Decay::Cosine { min_ratio: 0.1 });
        assert!((cos.lr(10, 101) - 1.0).abs() < 1e-12 && (cos.lr(100, 101) - 0.1).abs() < 1e-12);
        assert!((cos.lr(55, 101) - 0.55).abs() < 1e-12);
        let lin = s(Decay::Linear { min_ratio: 0.0 });
        assert!((lin.lr(55, 101) - 0.5).abs() < 1e-12 && lin.lr(100, 101).abs() < 1e-12);
        let wsd = s(Decay::Wsd { decay_fraction: 0.2, min_ratio: 0.0 });
        assert_eq!(wsd.lr(82, 101), 1.0);
        assert!((wsd.lr(91, 101) - 0.5).abs() < 1e-9);
        assert!(wsd.lr(100, 101).abs() < 1e-12);
        // the last step the loop runs (total - 1) is the decay's end, and a WSD cool-down takes its
        // fraction of the steps: 20 steps, 0.2 → the last 4 decay (the old span ended one step late)
        let wsd = LrSchedule { warmup_steps: 0, ..wsd };
        let lrs: Vec<f64> = (0..20).map(|k| wsd.lr(k, 20)).collect();
        assert_eq!(lrs.iter().filter(|&&lr| lr < 1.0).count(), 4, "{lrs:?}");
        assert!(lrs[19].abs() < 1e-12, "{lrs:?}");
        // a run of one step without warm-up trains at the peak
        assert_eq!(LrSchedule { warmup_steps: 0, ..s(Decay::Cosine { min_ratio: 0.0 }) }.lr(0, 1), 1.0);

        // upstream's twde: the weight decay along a cosine over the whole run, warm-up included
        let constant = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        assert_eq!(constant.weight_decay_at(50, 101), 0.1);
        let wd = AdamWConfig { weight_decay_end: Some(0.02), ..constant };
        assert_eq!(wd.weight_decay_at(0, 101), 0.1);
        assert!(
            (wd.weight_decay_at(50, 101) - 0.06).abs() < 1e-12 && (wd.weight_decay_at(100, 101) - 0.02).abs() < 1e-12
        );
        // the rate in force is the one the update's scalars take
        let mut opt = AdamW::new(wd.clone(), &Layout::new(&ModelConfig::preset("tiny").unwrap()));
        assert_eq!(opt.next_step_scalars(0.5).shrink, (1.0 - 0.5 * 0.1) as f32);
        opt.set_weight_decay(wd.weight_decay_at(100, 101));
        assert_eq!(opt.next_step_scalars(0.5).shrink, (1.0 - 0.5 * 0.02) as f32);
    }
}
