//! [`TrainConfig::validate`]: the checks a config gets before any data is read (ranges, required
//! pairings, folders that must differ); what depends on the dataset is checked by
//! `TrainConfig::model_config` and the run's start.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Result};

use super::{DataPhase, PeakTflops, TrainConfig};
use crate::optim::Decay;

/// The longest `dist.timeout_s` and `dist.rdzv_timeout_s`: a week, in seconds.
const MAX_TIMEOUT_S: f64 = 604_800.0;

/// Sample grids drawn per condition at most (`infinity sample --n`'s bound: all are drawn at once).
const MAX_SAMPLES: usize = 4096;

/// Reader threads at most (`data.workers`).
const MAX_WORKERS: usize = 256;

impl TrainConfig {
    /// Checks that need no data: everything else is checked against the dataset in `model_config`.
    /// Settings that are allowed but likely mistakes are warned of.
    pub fn validate(&self) -> Result<()> {
        self.checked(true)
    }

    /// Settings that are allowed but likely mistakes, in words ([`TrainConfig::validate`] warns of them).
    pub fn likely_mistakes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let o = &self.optim;
        if o.warmup_steps >= self.run.steps {
            out.push(format!(
                "optim.warmup_steps ({}) is not below run.steps ({}): the learning rate never reaches optim.lr",
                o.warmup_steps, self.run.steps
            ));
        }
        if self.val.every > 0 && self.val.dir.is_none() {
            out.push(format!("val.every = {} without val.dir: no validation runs", self.val.every));
        }
        if self.data.short_cap_prob > 0.0 && self.model.conditioning != "text" {
            out.push(format!(
                "data.short_cap_prob = {} picks between captions, which a {:?}-conditioned model does not read \
                 (model.conditioning): it has no effect",
                self.data.short_cap_prob, self.model.conditioning
            ));
        }
        if self.model.cond_drop_rate == 0.0 && self.sample.every > 0 && self.sample.cfg != 1.0 {
            out.push(format!(
                "model.cond_drop_rate = 0 trains no unconditional prediction, which the sample grids' guidance \
                 (sample.cfg = {}) mixes in: set sample.cfg = 1 for grids without guidance, or a drop rate (upstream's \
                 0.1)",
                self.sample.cfg
            ));
        }
        out
    }

    /// [`TrainConfig::validate`] without its warnings (a sweep checks a run's config again once its
    /// budget sets its steps, and says what concerns them itself).
    pub fn validate_quietly(&self) -> Result<()> {
        self.checked(false)
    }

    /// The model's shape as far as it needs no dataset (the preset and the keys that change it), checked
    /// with the config: its errors name the keys, and come before the dataset or the run folder is read.
    fn check_model_shape(&self) -> Result<()> {
        let m = &self.model;
        for (key, v) in [("model.depth", m.depth), ("model.embed_dim", m.embed_dim), ("model.num_heads", m.num_heads)] {
            if v == Some(0) {
                bail!("{key} must be at least 1, found 0");
            }
        }
        let mut shape = m.shape()?;
        // (what the dataset gives, in its stead: bits per token that any patchify takes, one class; the
        // drop rates are checked below, naming their keys)
        shape.d = 4;
        (shape.cond_drop_rate, shape.drop_path_rate) = (0.0, 0.0);
        shape.conditioning = crate::model::Conditioning::Class { num_classes: 1 };
        shape.validate().map_err(|e| {
            let set = [("depth", m.depth), ("embed_dim", m.embed_dim), ("num_heads", m.num_heads)];
            let mut keys: Vec<String> =
                set.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| format!("model.{k}")).collect();
            if m.mlp_ratio.is_some() {
                keys.push("model.mlp_ratio".into());
            }
            keys.push("model.preset".into());
            anyhow::anyhow!("{}: {e} (the preset {} with the keys that change it)", keys.join(", "), m.preset)
        })
    }

    fn checked(&self, warn: bool) -> Result<()> {
        let d = &self.data;
        let micro = d.micro_batch.samples().unwrap_or(1);
        if d.global_batch == 0 || micro == 0 || !d.global_batch.is_multiple_of(micro) {
            bail!(
                "data.global_batch ({}) and data.micro_batch ({}): the global batch must be a positive multiple of \
                 the micro-batch",
                d.global_batch,
                d.micro_batch
            );
        }
        if self.run.steps == 0 {
            bail!("run.steps must be positive");
        }
        if self.run.dir.as_os_str().is_empty() {
            bail!("run.dir must name a folder, found \"\"");
        }
        // a run writes checkpoints/, tb/ and its logs into run.dir: never into a dataset
        let same = |a: &Path, b: &Path| where_it_leads(a).is_some_and(|a| Some(a) == where_it_leads(b));
        for (key, dir) in self.data.dirs().chain(self.val.dirs()) {
            if same(&self.run.dir, dir) {
                bail!(
                    "run.dir and {key} are one folder ({}): give the run a folder of its own",
                    self.run.dir.display()
                );
            }
        }
        // (another dataset's folder, or any, as a dataset's manifest says)
        if self.run.dir.join(infinity_data::manifest::MANIFEST_FILE).is_file() {
            bail!(
                "run.dir {}: a dataset's folder (it holds manifest.json): give the run a folder of its own",
                self.run.dir.display()
            );
        }
        self.model.init.check().map_err(anyhow::Error::msg)?;
        self.check_model_shape()?;
        match (self.optim.lr, self.optim.lr_per_256) {
            (Some(_), Some(_)) => bail!(
                "optim.lr and optim.lr_per_256 are both set: they set one rate, give one (lr_per_256 is upstream's \
                 tblr, the rate per 256 samples of data.global_batch)"
            ),
            (None, None) => {
                bail!("optim.lr (or optim.lr_per_256, upstream's tblr) must be set: the peak learning rate")
            }
            (Some(v), None) | (None, Some(v)) if !(v > 0.0 && v.is_finite()) => {
                let key = if self.optim.lr.is_some() { "lr" } else { "lr_per_256" };
                bail!("optim.{key} must be a positive number, found {v}");
            }
            _ => {}
        }
        let o = &self.optim;
        if !(o.clip >= 0.0 && o.clip.is_finite()) {
            bail!("optim.clip must be a finite number ≥ 0 (0 turns clipping off), found {}", o.clip);
        }
        if o.clip_decay && o.clip == 0.0 {
            bail!(
                "optim.clip_decay decays optim.clip, which is 0 (clipping off): set optim.clip > 0 or drop clip_decay"
            );
        }
        let stall = self.run.stall_timeout_s;
        if !(stall >= 0.0 && stall.is_finite()) {
            bail!("run.stall_timeout_s must be a finite number of seconds ≥ 0 (0 watches nothing), found {stall}");
        }
        if !(0.0..1.0).contains(&o.ema_decay) {
            bail!("optim.ema_decay must be in [0, 1) (0 keeps no moving average), found {}", o.ema_decay);
        }
        for (key, z) in [("skip_loss_z", o.skip_loss_z), ("skip_grad_z", o.skip_grad_z)] {
            if !(z >= 0.0 && z.is_finite()) {
                bail!("optim.{key} must be a finite number of standard deviations ≥ 0 (0 turns it off), found {z}");
            }
        }
        if o.spike_window < 2 {
            bail!("optim.spike_window must be at least 2 steps, found {}", o.spike_window);
        }
        let a = &o.adamw;
        for (key, v) in [("beta1", a.beta1), ("beta2", a.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("optim.adamw.{key} must be in [0, 1), found {v}");
            }
        }
        if !(a.eps > 0.0 && a.eps.is_finite()) {
            bail!("optim.adamw.eps must be a positive number, found {}", a.eps);
        }
        if !(a.weight_decay >= 0.0 && a.weight_decay.is_finite()) {
            bail!("optim.adamw.weight_decay must be a finite number ≥ 0, found {}", a.weight_decay);
        }
        if let Some(end) = a.weight_decay_end.filter(|e| !(*e >= 0.0 && e.is_finite())) {
            bail!("optim.adamw.weight_decay_end must be a finite number ≥ 0 (or left out: constant), found {end}");
        }
        let (min_ratio, fraction) = match o.decay {
            Decay::Constant {} => (0.0, 1.0),
            Decay::Cosine { min_ratio } | Decay::Linear { min_ratio } => (min_ratio, 1.0),
            Decay::Wsd { decay_fraction, min_ratio } => (min_ratio, decay_fraction),
        };
        if !(0.0..=1.0).contains(&min_ratio) {
            bail!("optim.decay.min_ratio must be in [0, 1], found {min_ratio}");
        }
        if !(fraction > 0.0 && fraction <= 1.0) {
            bail!("optim.decay.decay_fraction must be in (0, 1], found {fraction}");
        }
        if self.run.log_every == 0 {
            // (no console line but the last, and the straggler warnings ride on those lines)
            bail!("run.log_every must be at least 1 (the steps between console lines)");
        }
        if o.max_nonfinite == 0 {
            bail!("optim.max_nonfinite must be at least 1 (the consecutive non-finite steps that stop a run)");
        }
        if !(0.0..1.0).contains(&self.loss.label_smoothing) {
            bail!("loss.label_smoothing must be in [0, 1), found {}", self.loss.label_smoothing);
        }
        if !(0.0..1.0).contains(&self.bsc.p_max) {
            bail!("bsc.p_max must be in [0, 1), found {}", self.bsc.p_max);
        }
        if let Some(p) = self.val.p_max.filter(|p| !(0.0..1.0).contains(p)) {
            bail!("val.p_max must be in [0, 1), found {p}");
        }
        self.check_mix()?;
        self.check_val_sets()?;
        if !(0.0..=1.0).contains(&self.data.short_cap_prob) {
            bail!("data.short_cap_prob must be in [0, 1], found {}", self.data.short_cap_prob);
        }
        if warn {
            for w in self.likely_mistakes() {
                tracing::warn!("{w}");
            }
        }
        if !(0.0..1.0).contains(&self.model.cond_drop_rate) {
            bail!("model.cond_drop_rate must be in [0, 1), found {}", self.model.cond_drop_rate);
        }
        if let Some(r) = self.model.drop_path_rate.filter(|r| !(0.0..1.0).contains(r)) {
            bail!("model.drop_path_rate must be in [0, 1), found {r}");
        }
        // (`model.init_from` is looked for by a fresh start alone, `init_from::init_from`: a resume, or a
        // branch from another run's checkpoint, goes on whatever the source has become since)
        if self.model.init_from_ema && self.model.init_from.is_none() {
            bail!("model.init_from_ema = true needs model.init_from (the weights whose moving average to start from)");
        }
        if !matches!(self.model.conditioning.as_str(), "class" | "text") {
            bail!("model.conditioning must be \"class\" or \"text\", found {:?}", self.model.conditioning);
        }
        if matches!(self.run.peak_tflops, PeakTflops::Tflops(p) if !(p.is_finite() && p > 0.0)) {
            bail!("run.peak_tflops must be a positive number of TFLOP/s or \"auto\", found {}", self.run.peak_tflops);
        }
        let sample = &self.sample;
        // (a grid of `infinity sample --n`'s bound at most: a larger one is memory no run has)
        if sample.per_condition > MAX_SAMPLES {
            bail!("sample.per_condition must be at most {MAX_SAMPLES}, found {}", sample.per_condition);
        }
        // (reader threads: beyond a few per core they only wait; thousands exhaust the process)
        if self.data.workers > MAX_WORKERS {
            bail!("data.workers must be at most {MAX_WORKERS} reader threads, found {}", self.data.workers);
        }
        if sample.every > 0 && (sample.n == 0 || sample.per_condition == 0) {
            bail!(
                "sample.n and sample.per_condition must be positive when sample.every > 0, found {} and {}",
                sample.n,
                sample.per_condition
            );
        }
        if !(sample.tau > 0.0 && sample.tau.is_finite()) {
            bail!("sample.tau must be a positive number (the temperature), found {}", sample.tau);
        }
        if !sample.cfg.is_finite() {
            bail!("sample.cfg must be a finite number (the guidance scale), found {}", sample.cfg);
        }
        if !(0.0..=1.0).contains(&sample.top_p) {
            bail!("sample.top_p must be in [0, 1] (0 or 1: no filtering), found {}", sample.top_p);
        }
        if !(self.dist.bucket_mib.is_finite() && self.dist.bucket_mib >= 0.0) {
            bail!(
                "dist.bucket_mib must be a finite number ≥ 0 (0: a bucket per block), found {}",
                self.dist.bucket_mib
            );
        }
        for (key, secs) in [("timeout_s", self.dist.timeout_s), ("rdzv_timeout_s", self.dist.rdzv_timeout_s)] {
            // (a millisecond to a week: beyond, a deadline overflows the clock; below, a socket's timeout is 0)
            if !(1e-3..=MAX_TIMEOUT_S).contains(&secs) {
                bail!("dist.{key} must be a number of seconds from 0.001 to {MAX_TIMEOUT_S} (a week), found {secs}");
            }
        }
        if self.val.dir.is_some() && self.val.max_rows == 0 {
            bail!("val.max_rows must be at least 1 (the first rows of val.dir that are evaluated)");
        }
        let minutes = self.checkpoint.every_minutes;
        if !(minutes.is_finite() && minutes >= 0.0) {
            bail!("checkpoint.every_minutes must be a number of minutes ≥ 0 (0: by steps alone), found {minutes}");
        }
        if self.checkpoint.keep_last == 0 {
            bail!("checkpoint.keep_last must be at least 1");
        }
        if self.model.mup_base_width == Some(0) {
            bail!("model.mup_base_width must be a width (≥ 1); leave it out for the standard parametrization");
        }
        if let Some(w) = self.model.mup_base_width.filter(|&w| w > crate::model::MAX_WIDTH) {
            bail!("model.mup_base_width must be at most {} (a model's widest), found {w}", crate::model::MAX_WIDTH);
        }
        match (self.model.mup_base_heads, self.model.mup_base_width) {
            (Some(0), _) => bail!("model.mup_base_heads must be at least 1"),
            (Some(_), None) => bail!("model.mup_base_heads needs model.mup_base_width (μP's base model)"),
            _ => {}
        }
        Ok(())
    }

    /// `val.sets`: beside `val.dir`, each named once, by a name TensorBoard's tags can carry.
    fn check_val_sets(&self) -> Result<()> {
        let sets = &self.val.sets;
        if !sets.is_empty() && self.val.dir.is_none() {
            bail!("val.sets evaluate beside val.dir, which is not set: set val.dir (the validation loss runs are fitted on)");
        }
        for (i, s) in sets.iter().enumerate() {
            let name = s.name();
            // (a folder's name is made fit; a given one is checked)
            if name.is_empty() || !name.chars().all(crate::tensorboard::tag_char) {
                bail!("val.sets[{i}].name must be letters, digits, `.`, `_` or `-` (a TensorBoard tag's part), found {name:?}");
            }
            if let Some(j) = sets[..i].iter().position(|o| o.name() == name) {
                bail!("val.sets[{i}] is named `{name}`, as val.sets[{j}] is: give one a name of its own (val.sets[{i}].name)");
            }
        }
        Ok(())
    }

    /// `data.phases`: each after the one before (and after step 0), a finite weight ≥ 0 for every
    /// dataset of the mix, one positive.
    fn check_phases(&self) -> Result<()> {
        let (d, steps) = (&self.data, self.run.steps);
        let mut after: Option<(usize, &DataPhase)> = None;
        for (k, p) in d.phases.iter().enumerate() {
            match (p.from_step, p.from_fraction) {
                (None, None) => {
                    bail!("data.phases[{k}] needs its first step: from_step, or from_fraction of run.steps")
                }
                (Some(_), Some(_)) => bail!("data.phases[{k}] gives from_step and from_fraction: give one"),
                (None, Some(f)) if !(f > 0.0 && f < 1.0) => {
                    bail!("data.phases[{k}].from_fraction = {f}: expected a share of run.steps above 0 and below 1")
                }
                _ => {}
            }
            let from = p.start(steps);
            // (a share rounding to the run's end would be a phase that never draws, unsaid)
            if p.from_step.is_none() && from >= steps {
                bail!(
                    "{} is the run's end: a phase from a share of run.steps must start before it",
                    p.start_key(k, steps)
                );
            }
            match after {
                None if from == 0 => bail!(
                    "{} must be at least step 1: the weights from step 0 are data.weight and data.mix[*].weight",
                    p.start_key(k, steps)
                ),
                Some((j, before)) if from <= before.start(steps) => bail!(
                    "{} must come after {}: list the phases in order",
                    p.start_key(k, steps),
                    before.start_key(j, steps)
                ),
                _ => {}
            }
            after = Some((k, p));
            let datasets = 1 + d.mix.len();
            if p.weights.len() != datasets {
                bail!(
                    "data.phases[{k}].weights has {} weights for {datasets} datasets: one for data.dir, then one \
                     for each data.mix",
                    p.weights.len()
                );
            }
            if let Some(w) = p.weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
                bail!("data.phases[{k}].weights must be finite weights ≥ 0, found {w}");
            }
            if p.weights.iter().all(|w| *w == 0.0) {
                bail!("data.phases[{k}].weights are all 0: give one dataset a positive weight");
            }
        }
        Ok(())
    }

    /// `data.weight` and `data.mix`: a weight for every dataset or none, each finite and ≥ 0, one
    /// positive; no folder twice.
    fn check_mix(&self) -> Result<()> {
        let d = &self.data;
        if d.mix.is_empty() {
            if let Some(w) = d.weight {
                bail!("data.weight ({w}) weighs data.dir in a mix, but data.mix names no other dataset");
            }
            if !d.phases.is_empty() {
                bail!("data.phases reweighs a mix, but data.mix names no other dataset than data.dir");
            }
            return Ok(());
        }
        self.check_phases()?;
        let keys =
            std::iter::once("data.weight".to_string()).chain((0..d.mix.len()).map(|i| format!("data.mix[{i}].weight")));
        let weights: Vec<(String, Option<f64>)> =
            keys.zip(std::iter::once(d.weight).chain(d.mix.iter().map(|m| m.weight))).collect();
        if let (Some((given, _)), Some((missing, _))) =
            (weights.iter().find(|(_, w)| w.is_some()), weights.iter().find(|(_, w)| w.is_none()))
        {
            bail!(
                "{missing} is not set, but {given} is: give every dataset of the mix a weight, or none (each is then \
                 drawn by its size)"
            );
        }
        for (key, w) in weights.iter().filter_map(|(k, w)| w.map(|w| (k, w))) {
            if !(w.is_finite() && w >= 0.0) {
                bail!("{key} must be a finite weight ≥ 0, found {w}");
            }
        }
        if weights.iter().all(|(_, w)| w.is_some_and(|w| w == 0.0)) {
            bail!("data.weight and data.mix[*].weight are all 0: give one dataset a positive weight");
        }
        let dirs: Vec<(String, &PathBuf)> = d.dirs().collect();
        for (i, (key, dir)) in dirs.iter().enumerate() {
            let leads = where_it_leads(dir);
            if let Some((first, _)) =
                dirs[..i].iter().find(|(_, other)| leads.is_some() && where_it_leads(other) == leads)
            {
                bail!("{key} names the folder {first} names ({}): weigh a dataset once", dir.display());
            }
        }
        Ok(())
    }
}

/// Where `p` leads: its longest existing part with links resolved, the rest (still to be made) with
/// `.` and `..` taken away, so that two spellings of one folder compare equal before it exists.
pub fn where_it_leads(p: &Path) -> Option<PathBuf> {
    let full = std::path::absolute(p).ok()?;
    let existing = full.ancestors().find(|a| a.exists())?;
    let mut out = existing.canonicalize().ok()?;
    for c in full.strip_prefix(existing).ok()?.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::TrainConfig;

    /// A model trained with no condition dropout has no unconditional prediction: sample grids guided
    /// by it are warned of, unguided ones and runs without grids are not.
    #[test]
    fn guided_grids_of_a_model_without_condition_dropout_are_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[run]\ndir = \"r\"\nseed = 0\nsteps = 10\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n[data]\n\
             dir = \"d\"\nglobal_batch = 8\nmicro_batch = 8\n[optim]\nlr = 1e-3\nwarmup_steps = 1\n",
        )
        .unwrap();
        let mistakes = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            TrainConfig::load(&path, &sets).unwrap().likely_mistakes().join("\n")
        };
        let said = mistakes(&["model.cond_drop_rate=0", "sample.every=5"]);
        assert!(said.contains("model.cond_drop_rate = 0 trains no unconditional prediction"), "{said}");
        assert!(said.contains("(sample.cfg = 3)"), "{said}");
        for sets in [&["model.cond_drop_rate=0", "sample.every=5", "sample.cfg=1"][..], &["sample.every=5"]] {
            assert!(!mistakes(sets).contains("cond_drop_rate"), "{sets:?}");
        }
    }
}
