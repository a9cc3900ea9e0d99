//! The AdamW step, the weights' moving average and the squared gradient norm, element by element: the
//! CPU twins of `adamw.cu`.
//! The optimiser state and schedules live in the trainer (`optim.rs`); this is only the arithmetic,
//! PyTorch's `_single_tensor_adamw` in f32 with the scalars precomputed in f64.

/// Per-step scalars of AdamW, derived once per step from the hyperparameters. The step size stays in
/// f64 so that each parameter group (below) takes its own multiple of it before rounding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    /// `lr / (1 − β1^t)`.
    pub step_size: f64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `√(1 − β2^t)`.
    pub bc2_sqrt: f32,
    /// `1 − lr·wd` (decoupled weight decay, decay group only). The same at every learning-rate
    /// multiplier: μP's tensors shrink by it at any width, as microsoft/mup's `MuAdamW` has them.
    pub shrink: f32,
    /// The factor the gradients still need, applied as the update reads them (through f64, as a
    /// scaling pass over them would): `1/world` after a summing all-reduce, times the clipping
    /// coefficient. 1 (exactly the gradients) unless [`AdamWScalars::with_grad_scale`] says otherwise;
    /// folding it here saves the device one pass over the gradients per factor.
    pub grad_scale: f64,
}

impl AdamWScalars {
    /// Scalars of step `t` (1-based).
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, t: u64) -> AdamWScalars {
        let bc1 = 1.0 - beta1.powi(t as i32);
        AdamWScalars {
            step_size: lr / bc1,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: eps as f32,
            bc2_sqrt: (1.0 - beta2.powi(t as i32)).sqrt() as f32,
            shrink: (1.0 - lr * weight_decay) as f32,
            grad_scale: 1.0,
        }
    }

    /// The same scalars for gradients that still need the factor `grad_scale`.
    pub fn with_grad_scale(self, grad_scale: f64) -> AdamWScalars {
        AdamWScalars { grad_scale, ..self }
    }

    /// The step size of a group whose learning rate is `lr_mult · lr`: `lr_mult·lr/(1 − β1^t)`, rounded
    /// to f32 once (adamw.cu does the same).
    pub fn group_step_size(&self, lr_mult: f64) -> f32 {
        (self.step_size * lr_mult) as f32
    }
}

/// A parameter's group byte: bit 0 says whether weight decay applies, the bits above index the
/// learning-rate multipliers (`lr_mult`, at most [`MAX_LR_GROUPS`] of them: 1 alone without μP, a few
/// per-width factors with it).
pub fn group_byte(decay: bool, lr_group: usize) -> u8 {
    assert!(lr_group < MAX_LR_GROUPS, "at most {MAX_LR_GROUPS} learning-rate groups");
    (lr_group << 1) as u8 | decay as u8
}

/// How many learning-rate multipliers a group byte can index.
pub const MAX_LR_GROUPS: usize = 128;

/// The parameters' group bytes as runs: run `r` covers the elements from `starts[r]` to the next run's
/// start (the last one to `len`) and has group byte `bytes[r]` ([`group_byte`]). A model's tensors make
/// a few hundred runs, where a byte per parameter took 2.2 GB at 2b (on the GPU and the host).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupRuns {
    /// `[runs]` each run's first element, increasing from 0.
    starts: Vec<i64>,
    /// `[runs]` each run's group byte; no two neighbours equal.
    bytes: Vec<u8>,
    len: usize,
}

impl GroupRuns {
    /// The runs of element-wise group bytes (tests, and callers that have them).
    pub fn from_bytes(per_element: &[u8]) -> GroupRuns {
        let mut runs = GroupRuns::default();
        for &b in per_element {
            runs.push(1, b);
        }
        runs
    }

    /// Append `count` elements of group byte `byte` (joining the last run when it has the same byte).
    pub fn push(&mut self, count: usize, byte: u8) {
        if count == 0 {
            return;
        }
        if self.bytes.last() != Some(&byte) {
            self.starts.push(self.len as i64);
            self.bytes.push(byte);
        }
        self.len += count;
    }

    /// The elements covered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[runs]` each run's first element (what adamw.cu reads).
    pub fn starts(&self) -> &[i64] {
        &self.starts
    }

    /// `[runs]` each run's group byte.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Each run's elements and group byte, in order.
    pub fn runs(&self) -> impl Iterator<Item = (std::ops::Range<usize>, u8)> + '_ {
        let ends = self.starts.iter().skip(1).map(|&e| e as usize).chain([self.len]);
        self.starts.iter().zip(ends).zip(&self.bytes).map(|((&a, e), &b)| (a as usize..e, b))
    }

    /// Element `i`'s group byte.
    pub fn byte_of(&self, i: usize) -> u8 {
        assert!(i < self.len, "element {i} of {} grouped", self.len);
        self.bytes[self.starts.partition_point(|&a| a as usize <= i) - 1]
    }

    /// The runs of elements `range` (a ZeRO-1 shard), counted from its start.
    pub fn slice(&self, range: std::ops::Range<usize>) -> GroupRuns {
        assert!(range.end <= self.len, "elements {range:?} of {} grouped", self.len);
        let mut out = GroupRuns::default();
        for (r, b) in self.runs() {
            out.push(r.end.min(range.end).saturating_sub(r.start.max(range.start)), b);
        }
        out
    }
}

/// One AdamW update of `params` with `grads`; `m`, `v` the moments, `groups` the elements' group bytes
/// ([`group_byte`]) and `lr_mult` the learning-rate multipliers they index.
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    groups: &GroupRuns,
    lr_mult: &[f64],
    s: &AdamWScalars,
) {
    let n = params.len();
    assert!(grads.len() == n && m.len() == n && v.len() == n && groups.len() == n, "adamw_update: lengths differ");
    let step_sizes: Vec<f32> = lr_mult.iter().map(|&k| s.group_step_size(k)).collect();
    for (run, byte) in groups.runs() {
        let step_size = step_sizes[(byte >> 1) as usize];
        for i in run {
            let g = if s.grad_scale == 1.0 { grads[i] } else { (grads[i] as f64 * s.grad_scale) as f32 };
            if byte & 1 != 0 {
                params[i] *= s.shrink;
            }
            m[i] += (g - m[i]) * (1.0 - s.beta1);
            v[i] = v[i] * s.beta2 + g * g * (1.0 - s.beta2);
            let denom = v[i].sqrt() / s.bc2_sqrt + s.eps;
            params[i] -= step_size * m[i] / denom;
        }
    }
}

/// One step of an exponential moving average of the weights, `ema ← ema·decay + params·(1 − decay)`
/// (upstream's `update_ema`), each product rounded to f32. `1 − decay` is taken of the f32 decay
/// (exact for decay ≥ 0.5), so the two weights sum to 1 and a constant weight stays put.
pub fn ema_update(ema: &mut [f32], params: &[f32], decay: f64) {
    assert_eq!(ema.len(), params.len(), "ema_update: lengths differ");
    let d = decay as f32;
    let rest = 1.0 - d;
    for (e, &p) in ema.iter_mut().zip(params) {
        *e = *e * d + p * rest;
    }
}

/// `Σ x²`, accumulated in f64.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.iter().map(|&g| (g as f64) * (g as f64)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_runs_join_equal_neighbours_and_slice_shards() {
        let bytes = [1, 1, 0, 0, 0, 3, 1, 1];
        let runs = GroupRuns::from_bytes(&bytes);
        assert_eq!((runs.starts(), runs.bytes(), runs.len()), (&[0, 2, 5, 6][..], &[1, 0, 3, 1][..], 8));
        assert!((0..8).all(|i| runs.byte_of(i) == bytes[i]));
        for (a, b) in [(0, 8), (1, 4), (2, 5), (4, 7), (3, 3), (7, 8)] {
            assert_eq!(runs.slice(a..b), GroupRuns::from_bytes(&bytes[a..b]), "{a}..{b}");
        }
        let mut built = GroupRuns::default();
        for (count, byte) in [(2, 1), (0, 5), (3, 0), (1, 3), (2, 1)] {
            built.push(count, byte);
        }
        assert_eq!(built, runs);
    }
}
