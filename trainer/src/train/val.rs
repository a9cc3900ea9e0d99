//! Held-out validation, as upstream's eval: a fixed set of rows from a separate dataset (made with the
//! training dataset's tokenizer), fixed bitwise self-correction noise (keyed by `val.seed`, not the
//! step), no condition dropout, the training loss. Every evaluation sees the same inputs, so the curve
//! moves only with the weights. Ranks split the micro-batches and sum their results.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use infinity_data::loader::batch::gather;
use infinity_data::tokenizer::same_tokenizer;
use infinity_data::{Checksums, Dataset, Manifest};
use infinity_kernels::rope::RopeTable;

use super::check::{row_as_read, BadRows};
use super::compute::Compute;
use super::config::TrainConfig;
use super::dist::Dist;
use super::micro_batch::{prepare, Draws};
use crate::model::{rope_for, token_weights, Acts, Conditioning, Layout, ModelConfig, Params};

/// Loss and bit accuracy over the validation rows.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValMetrics {
    pub loss: f64,
    pub bit_acc: f64,
    pub rows: usize,
}

/// One validation dataset, as read at every evaluation.
struct ValData {
    /// `None` for `val.dir`; a `val.sets` entry's name.
    name: Option<String>,
    ds: Arc<Dataset>,
    /// Micro-batches: (bucket, global row ids).
    batches: Vec<(u16, Vec<u64>)>,
    ropes: HashMap<u16, RopeTable>,
    /// What rank 0 warns of, in words: its rows on schedules the training data has none of
    /// ([`unseen_schedules`]); rows that are the training data's own.
    warnings: Vec<String>,
}

pub struct Validator {
    /// `val.dir`'s, then each of `val.sets`.
    sets: Vec<ValData>,
    every: u64,
    last: u64,
    /// The fixed self-correction noise (`val.seed`, at validation's strength), alike at every evaluation.
    draws: Draws,
}

impl ValData {
    /// The first `val.max_rows` rows of `dir` (`key` naming it), grouped by bucket, in micro-batches of
    /// `micro_batch` rows; checked now, as the loader and the step would check them, since the first
    /// evaluation comes steps (and a checkpoint) later.
    fn open(
        (cfg, mc, train): (&TrainConfig, &ModelConfig, &Dataset),
        (key, dir, name): (&str, &Path, Option<String>),
        micro_batch: usize,
    ) -> Result<ValData> {
        let ds = Dataset::open(dir, Checksums::Verify).with_context(|| format!("{key} {}", dir.display()))?;
        compatible(&train.manifest, train.dir(), (&ds.manifest, dir), key, Some(mc))?;
        super::setup::check_schedules_fit(mc, &ds.manifest).with_context(|| format!("{key} {}", dir.display()))?;
        let n = (cfg.val.max_rows as u64).min(ds.num_rows());
        let leave = if key == "val.dir" { "leave val.dir out" } else { "leave this [[val.sets]] entry out" };
        ensure!(n > 0, "{key} {}: no rows to validate on (name a dataset with rows, or {leave})", dir.display());
        let mut by_bucket: Vec<Vec<u64>> = vec![Vec::new(); ds.manifest.schedules.len()];
        let mut bad = BadRows::default();
        for g in 0..n {
            // (validation reads the long captions alone)
            bad.note(row_as_read(&ds, g, mc, false));
            by_bucket[ds.row(g).bucket as usize].push(g);
        }
        bad.finish(key, dir)?;
        let rows: Vec<usize> = by_bucket.iter().map(Vec::len).collect();
        let unseen = unseen_schedules(&train.manifest, &ds.manifest, &rows);
        // (the training data itself, or one dataset of its mix: a loss of rows the model trains on)
        let fingerprint = ds.manifest.fingerprint();
        let trained = train.parts().iter().find(|p| p.manifest.fingerprint() == fingerprint).map(|p| {
            format!(
                "the same rows as the training data {} (its loss measures the fit to rows the model trains on, \
                 not held-out error: validate on rows it does not train on)",
                p.dir.display()
            )
        });
        let warnings = unseen.into_iter().chain(trained).map(|w| format!("{key} {}: {w}", dir.display())).collect();
        let batches = by_bucket
            .iter()
            .enumerate()
            .flat_map(|(b, rows)| rows.chunks(micro_batch).map(move |c| (b as u16, c.to_vec())))
            .collect();
        let ropes = ds.manifest.schedules.iter().enumerate().map(|(b, s)| (b as u16, rope_for(mc, s))).collect();
        Ok(ValData { name, ds: Arc::new(ds), batches, ropes, warnings })
    }

    fn rows(&self) -> usize {
        self.batches.iter().map(|(_, rows)| rows.len()).sum()
    }

    /// The key that names it ([`set_key`]).
    fn key(&self) -> String {
        set_key(self.name.as_deref())
    }

    /// Loss and bit accuracy over this set's rows, the ranks splitting its micro-batches.
    fn run(
        &self,
        (cfg, draws): (&TrainConfig, Draws),
        (mc, lay): (&ModelConfig, &Layout),
        params: &Params<f32>,
        dist: &mut Dist,
        (compute, acts): (&mut Compute, &mut Acts<f32>),
    ) -> Result<ValMetrics> {
        let m = &self.ds.manifest;
        // [Σ loss·rows, Σ bit accuracy·rows, rows] over this rank's micro-batches
        let mut sums = [0.0f64; 3];
        for (bucket, rows) in self.batches.iter().skip(dist.rank).step_by(dist.world) {
            let batch = gather(&self.ds, *bucket, rows, false, None)?;
            let sched = m.schedules[*bucket as usize].hw();
            let scales = mc.token_scales(&sched);
            let mb = prepare(mc, m, &batch, 0..rows.len(), &sched, draws, false)
                .map_err(|e| super::micro_batch::name_the_row(e, &batch, &self.ds))?;
            let weights = token_weights(mb.b, &scales, cfg.loss.reweight_by_scale);
            let inp = mb.input(mc, &scales, &self.ropes[bucket], &weights, cfg.loss.label_smoothing);
            let ce = compute.forward((mc, lay), params, &inp, acts)?;
            let acc = ce.correct_bits.iter().map(|&c| c as f64).sum::<f64>() / (ce.correct_bits.len() * mc.d) as f64;
            let b = mb.b as f64;
            sums[0] += ce.loss * b;
            sums[1] += acc * b;
            sums[2] += b;
        }
        let mut f: Vec<f32> = sums.iter().map(|&x| x as f32).collect();
        dist.tag("validation loss");
        dist.all_reduce_sum(&mut f)?;
        let rows = f[2].round() as usize;
        ensure!(rows > 0, "validation: no rows");
        Ok(ValMetrics { loss: f[0] as f64 / f[2] as f64, bit_acc: f[1] as f64 / f[2] as f64, rows })
    }
}

impl Validator {
    /// Rows evaluated each time, per set: `(None, val.dir's)`, then `(name, rows)` of each `val.sets`.
    pub fn rows(&self) -> Vec<(Option<&str>, usize)> {
        self.sets.iter().map(|s| (s.name.as_deref(), s.rows())).collect()
    }

    /// The validator of `cfg.val`, if a validation dataset is configured, in micro-batches of
    /// `micro_batch` rows. Its rows are checked here: an empty set is a configuration error, a bad row
    /// a data error naming its file, row and column.
    pub fn new(cfg: &TrainConfig, mc: &ModelConfig, train: &Dataset, micro_batch: usize) -> Result<Option<Validator>> {
        let Some(dir) = &cfg.val.dir else { return Ok(None) };
        let mut sets = vec![ValData::open((cfg, mc, train), ("val.dir", dir, None), micro_batch)?];
        for (i, set) in cfg.val.sets.iter().enumerate() {
            let key = format!("val.sets[{i}].dir");
            sets.push(ValData::open((cfg, mc, train), (&key, &set.dir, Some(set.name())), micro_batch)?);
        }
        Ok(Some(Validator {
            sets,
            every: cfg.val.every,
            last: cfg.run.steps,
            draws: Draws::evaluation(cfg.val.seed, cfg.val.bsc(&cfg.bsc)),
        }))
    }

    /// What its sets hold that the training data does not (for rank 0 to warn of).
    pub fn warnings(&self) -> Vec<String> {
        self.sets.iter().flat_map(|s| s.warnings.iter().cloned()).collect()
    }

    /// Each set's dataset fingerprint, by the key that names it (`val.dir`, `val.sets "NAME"`): what a
    /// checkpoint keeps ([`super::checkpoint::TrainState::val_sets`]).
    pub fn fingerprints(&self) -> BTreeMap<String, String> {
        self.sets.iter().map(|s| (s.key(), s.ds.manifest.fingerprint())).collect()
    }

    /// Its sets that differ from those of the checkpoint of `step` (`saved`, their fingerprints), in
    /// words: a set rebuilt in place since (other rows or shards), whose losses from here on are not
    /// comparable with the ones logged before (for rank 0 to warn of). Sets the checkpoint did not
    /// validate on are a config change, which the resume names.
    pub fn changed_since(&self, saved: &BTreeMap<String, String>, step: u64) -> Vec<String> {
        let changed = self.differing(saved).into_iter().map(|(key, dir, changes)| {
            format!(
                "{key} {} differs from the set the checkpoint of step {step} validated on ({changes}): its losses \
                 in val.jsonl from here on are not comparable with those before",
                dir.display()
            )
        });
        changed.collect()
    }

    /// Its sets whose contents differ from what a checkpoint recorded of them (`saved`, their
    /// fingerprints): each one's key, folder and what changed (rows, shards). Sets the checkpoint did not
    /// record are left out.
    pub fn differing(&self, saved: &BTreeMap<String, String>) -> Vec<(String, &Path, String)> {
        let differing = self.sets.iter().filter_map(|s| {
            let was = saved.get(&s.key())?;
            let m = &s.ds.manifest;
            (!m.fingerprint_matches(was)).then(|| (s.key(), s.ds.dir(), m.fingerprint_changes(was).join("; ")))
        });
        differing.collect()
    }

    /// Evaluate every `val.every` steps and at the last step.
    pub fn due(&self, step: u64) -> bool {
        super::due(step, self.every, self.last)
    }

    /// `val.dir`'s loss and bit accuracy, and each of `val.sets`' with its name.
    pub fn run(
        &self,
        cfg: &TrainConfig,
        (mc, lay): (&ModelConfig, &Layout),
        params: &Params<f32>,
        dist: &mut Dist,
        compute: &mut Compute,
        acts: &mut Acts<f32>,
    ) -> Result<(ValMetrics, Vec<(String, ValMetrics)>)> {
        let mut results = Vec::with_capacity(self.sets.len());
        for set in &self.sets {
            results.push(set.run((cfg, self.draws), (mc, lay), params, dist, (&mut *compute, &mut *acts))?);
        }
        let more = self.sets[1..].iter().zip(&results[1..]).map(|(s, m)| (s.name.clone().unwrap_or_default(), *m));
        Ok((results[0], more.collect()))
    }
}

/// Validation rows on schedules the training data holds no rows of (another pixel budget, an aspect
/// ratio it lacks), in words: the model never predicted those scales, so their loss is not comparable
/// with a validation set drawn as the training data is. `rows`: the rows of each of `val`'s buckets.
fn unseen_schedules(train: &Manifest, val: &Manifest, rows: &[usize]) -> Option<String> {
    let trained = crate::infer::rows_matching(train, &crate::infer::rows_by_schedule(train), val);
    let unseen: Vec<String> = (val.schedules.iter().zip(rows).zip(trained))
        .filter(|((_, &n), trained)| n > 0 && *trained == 0)
        .map(|((s, n), _)| format!("{n} on {}", s.name))
        .collect();
    let of = rows.iter().sum::<usize>();
    (!unseen.is_empty()).then(|| {
        format!(
            "of its {of} rows validated, {} are on schedules the training data holds no rows of: the model never \
             predicted those scales, and their loss is not comparable (a validation set packed at the training \
             data's --budget, of images of its aspect ratios, measures what training does)",
            unseen.join(", ")
        )
    })
}

/// The validation dataset (or one mixed in, `key` naming its setting) must carry the same bits (d,
/// tokenizer) and conditions as the training one. Given the `model` it validates, only the condition
/// the model takes counts (a text model's set may have no classes), and its captions must fit the
/// model's `text_maxlen`; without one (a dataset mixed in) both conditions do.
pub(crate) fn compatible(
    train: &Manifest,
    train_dir: &Path,
    (val, val_dir): (&Manifest, &Path),
    key: &str,
    model: Option<&ModelConfig>,
) -> Result<()> {
    let name = |p: &Path| p.display().to_string();
    if train.d != val.d {
        bail!("{key} {}: d = {}, the training data has d = {}", name(val_dir), val.d, train.d);
    }
    let (class_used, text_used) = match model.map(|mc| &mc.conditioning) {
        Some(Conditioning::Class { .. }) => (true, false),
        Some(Conditioning::Text) => (false, true),
        None => (true, true),
    };
    // the conditions the model's shape depends on: its class embedding and text projection
    let shape = |m: &Manifest| {
        let classes = m.conditions.class.as_ref().map(|c| c.num_classes).filter(|_| class_used);
        (classes, m.conditions.text.as_ref().map(|t| t.width).filter(|_| text_used))
    };
    let words = |m: &Manifest| {
        let (classes, width) = shape(m);
        let class = classes.map_or("no class condition".into(), |n| match n {
            1 => "1 class".to_string(),
            n => format!("{n} classes"),
        });
        let text = width.map_or("no text condition".into(), |w| format!("text features of width {w}"));
        match (class_used, text_used) {
            (true, false) => class,
            (false, true) => text,
            _ => format!("{class}, {text}"),
        }
    };
    if shape(train) != shape(val) {
        bail!(
            "{key} {}: its conditions ({}) differ from the training data's ({})",
            name(val_dir),
            words(val),
            words(train)
        );
    }
    // a caption longer than the model's longest: a loss over inputs it never saw, which `infinity sample`
    // refuses
    if let (Some(mc), Some(text)) = (model.filter(|_| text_used), &val.conditions.text) {
        if text.max_tokens as usize > mc.text_maxlen {
            bail!(
                "{key} {}: captions of up to {} tokens (its conditions.text.max_tokens); the model takes captions \
                 of at most {} (its text_maxlen, the training data's bound)",
                name(val_dir),
                text.max_tokens,
                mc.text_maxlen
            );
        }
    }
    // class ids mean the same classes where both datasets name them (pack: sorted folder names)
    if let (true, Some(t), Some(v)) = (class_used, &train.conditions.class, &val.conditions.class) {
        // (an unnamed side has no names to zip)
        if let Some(i) = t.names.iter().zip(&v.names).position(|(a, b)| a != b) {
            // (`data pack` names the one class of a folder of loose images after the folder)
            let one_class = match (t.num_classes, v.num_classes) {
                (1, 1) => {
                    "; a folder of loose images packs as one class named after the folder: for one \
                           unconditional model, pack them from folders of one name"
                }
                _ => "",
            };
            bail!(
                "{key} {}: class {i} is `{}` there and `{}` in the training data (class ids must name the same \
                 classes{one_class})",
                name(val_dir),
                v.names[i],
                t.names[i]
            );
        }
    }
    if train.tokenizer.name != val.tokenizer.name {
        bail!(
            "{key} {}: tokenizer `{}`, the training data's is `{}`",
            name(val_dir),
            val.tokenizer.name,
            train.tokenizer.name
        );
    }
    // (a VAE's datasets name its checkpoint: tools/write_shards.py's `params.ckpt`)
    let ckpt = |m: &Manifest| m.tokenizer.params.get("ckpt").cloned();
    if let (Some(t), Some(v)) = (ckpt(train), ckpt(val)) {
        if t != v {
            bail!(
                "{key} {}: its tokenizer.params.ckpt is {v}, the training data's {t} (bits of two VAE checkpoints \
                 mean different images: encode both with one)",
                name(val_dir)
            );
        }
    }
    if !same_tokenizer((train_dir, train), (val_dir, val)) {
        bail!(
            "{key} {}: tokenized with a different tokenizer than the training data (make it with \
             `infinity data synth --tokenizer TRAIN/tokenizer.safetensors`, or `infinity data pack --tokenizer \
             TRAIN/tokenizer.safetensors` for images)",
            name(val_dir)
        );
    }
    Ok(())
}

/// The key that names a validation set in a checkpoint's record of their fingerprints (`val_sets`) and
/// in messages: `val.dir` for `val.dir`'s (`name` none), `val.sets "NAME"` for an entry of `val.sets`.
pub fn set_key(name: Option<&str>) -> String {
    match name {
        None => "val.dir".into(),
        Some(name) => format!("val.sets {name:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use infinity_data::Manifest;

    use crate::model::{Conditioning, ModelConfig};

    fn manifest(conditions: serde_json::Value) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": "infinity-bits", "format_version": 1, "d": 16, "bit_order": "",
            "tokenizer": { "name": "t", "file": null }, "conditions": conditions, "latent": null,
            "schedules": [], "shards": [], "total_rows": 0, "created_by": ""
        }))
        .unwrap()
    }

    /// Conditions that change the model's shape are refused, each side's named; captions alone do not.
    #[test]
    fn other_conditions_are_named() {
        let classes = |n: u32| manifest(serde_json::json!({ "class": { "num_classes": n }, "caption": true }));
        let text = manifest(serde_json::json!({
            "text": { "width": 2048, "dtype": "bf16", "max_tokens": 512, "encoder": "flan-t5-xl" }
        }));
        let check = |train: &Manifest, val: &Manifest| {
            super::compatible(train, Path::new("t"), (val, Path::new("v")), "val.dir", None)
        };
        assert_eq!(
            check(&classes(24), &classes(2)).unwrap_err().to_string(),
            "val.dir v: its conditions (2 classes, no text condition) differ from the training data's (24 classes, \
             no text condition)"
        );
        assert_eq!(
            check(&classes(24), &text).unwrap_err().to_string(),
            "val.dir v: its conditions (no class condition, text features of width 2048) differ from the training \
             data's (24 classes, no text condition)"
        );
        let no_captions = manifest(serde_json::json!({ "class": { "num_classes": 24 } }));
        check(&classes(24), &no_captions).unwrap();
        // of a model given, the condition it takes alone: a text model's set without classes (it was
        // refused), a class model's without text; a caption longer than the model's is refused
        let both = |n: u32, max_tokens: u32| {
            manifest(serde_json::json!({ "class": { "num_classes": n }, "text": {
                "width": 2048, "dtype": "bf16", "max_tokens": max_tokens, "encoder": "flan-t5-xl" } }))
        };
        let of_model = |conditioning: Conditioning, text_maxlen: usize, train: &Manifest, val: &Manifest| {
            let mc =
                ModelConfig { conditioning, text_maxlen, text_channels: 2048, ..ModelConfig::preset("tiny").unwrap() };
            super::compatible(train, Path::new("t"), (val, Path::new("v")), "val.dir", Some(&mc))
        };
        of_model(Conditioning::Text, 512, &both(24, 512), &text).unwrap();
        of_model(Conditioning::Class { num_classes: 24 }, 512, &both(24, 512), &classes(24)).unwrap();
        assert_eq!(
            of_model(Conditioning::Text, 512, &both(24, 512), &classes(24)).unwrap_err().to_string(),
            "val.dir v: its conditions (no text condition) differ from the training data's (text features of width \
             2048)"
        );
        assert_eq!(
            of_model(Conditioning::Text, 64, &both(24, 64), &both(24, 512)).unwrap_err().to_string(),
            "val.dir v: captions of up to 512 tokens (its conditions.text.max_tokens); the model takes captions of at \
             most 64 (its text_maxlen, the training data's bound)"
        );
        of_model(Conditioning::Text, 512, &both(24, 512), &both(2, 64)).unwrap();
        assert!(check(&both(24, 512), &text).is_err(), "a dataset mixed in carries both");
    }

    /// Two VAE datasets (no tokenizer file) of other checkpoints are refused, each named.
    #[test]
    fn another_vae_checkpoint_is_refused() {
        let encoded_by = |ckpt: &str| {
            let mut m = manifest(serde_json::json!({ "class": { "num_classes": 2 } }));
            m.tokenizer.params = serde_json::json!({ "ckpt": ckpt });
            m
        };
        let check = |train: &Manifest, val: &Manifest| {
            super::compatible(train, Path::new("t"), (val, Path::new("v")), "data.mix[0].dir", None)
        };
        let e = check(&encoded_by("a.pth"), &encoded_by("b.pth")).unwrap_err().to_string();
        assert!(
            e.starts_with(r#"data.mix[0].dir v: its tokenizer.params.ckpt is "b.pth", the training data's "a.pth""#),
            "{e}"
        );
        check(&encoded_by("a.pth"), &encoded_by("a.pth")).unwrap();
    }
}
