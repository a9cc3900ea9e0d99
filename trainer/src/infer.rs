//! From a trained model to pictures: conditions from class names, captions or text features, the
//! schedule of an aspect-ratio template, next-scale sampling, and decoding with the dataset's built-in
//! tokenizer. Used by `infinity sample` and by the sample grids the training loop logs.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use infinity_data::manifest::{ClassInfo, TextDtype, TextInfo};
use infinity_data::synth::{embed_caption, text_encoder_name, vocabulary};
use infinity_data::tokenizer::{same_tokenizer, Image, PatchTokenizer};
use infinity_data::{Dataset, Manifest, ScaleSchedule};

use crate::model::sample::{sample, SampleCondition, SampleOptions, Sampled};
use crate::model::{rope_for, Conditioning, Layout, ModelConfig, Params};

/// Class ids from `specs`: names as the manifest lists them (`red circle`; in another case where that
/// names one class alone), ids (`3`), or `all`. A name is read as a name first: with classes named by
/// numbers (folders `1`, `10`, `2`), `--class 2` is the class named `2`, and a note says which id that is
/// where it differs; `#2` is id 2 whatever the names.
pub fn resolve_classes(specs: &[String], info: &ClassInfo) -> Result<Vec<usize>> {
    let n = info.num_classes as usize;
    let mut out = Vec::new();
    let known = || if info.names.is_empty() { "none".to_string() } else { info.names.join(", ") };
    for s in specs {
        let s = s.trim();
        let as_id = |id: &str| -> Result<usize> {
            // (the parser's own words, "invalid digit found in string", say nothing here)
            let id: usize = id
                .parse()
                .map_err(|_| anyhow::anyhow!("--class {s:?}: not a class id or name (names: {})", known()))?;
            ensure!(id < n, "--class {s}: the model has classes 0..{}", n - 1);
            Ok(id)
        };
        let by_case: Vec<usize> = (0..info.names.len()).filter(|&k| info.names[k].eq_ignore_ascii_case(s)).collect();
        if s == "all" {
            out.extend(0..n);
        } else if let Some(id) = info.names.iter().position(|name| name == s) {
            match s.parse::<usize>() {
                Ok(number) if number != id && number < n => {
                    console_err!("--class {s}: the class named `{s}`, id {id} (`#{s}` is id {s})")
                }
                Ok(number) if number != id => console_err!("--class {s}: the class named `{s}`, id {id}"),
                _ => {}
            }
            out.push(id);
        } else if let Some(id) = s.strip_prefix('#') {
            out.push(as_id(id)?);
        } else if by_case.len() > 1 {
            let names: Vec<&str> = by_case.iter().map(|&k| info.names[k].as_str()).collect();
            bail!(
                "--class {s:?}: names {} classes, which differ in case alone ({}): give one exactly",
                by_case.len(),
                names.join(", ")
            );
        } else if let Some(&id) = by_case.first() {
            out.push(id);
        } else {
            out.push(as_id(s)?);
        }
    }
    ensure!(!out.is_empty(), "no classes given");
    Ok(out)
}

/// Text features `[Σ tokens, Ct]` and tokens per caption, with the synthetic dataset's word table.
/// Other encoders (T5) run outside this crate: pass their features with `--text-features`.
pub fn caption_features(captions: &[String], info: &TextInfo) -> Result<(Vec<f32>, Vec<usize>)> {
    ensure!(
        info.encoder == text_encoder_name(),
        "captions can be embedded only for datasets made by `infinity data synth`; this dataset's text \
         encoder is `{}`: embed the captions with it and pass --text-features",
        info.encoder
    );
    let vocab = vocabulary();
    let (mut kv, mut lens) = (Vec::new(), Vec::new());
    for c in captions {
        // (the table's words are lowercase, as the dataset's captions: "A Red Circle!" is "a red circle")
        let lower = c.to_lowercase();
        let words: Vec<&str> =
            lower.split_whitespace().map(|w| w.trim_matches(|ch: char| !ch.is_alphanumeric())).collect();
        let unknown: Vec<&&str> = words.iter().filter(|w| !vocab.contains(w)).collect();
        ensure!(unknown.is_empty(), "caption {c:?}: unknown words {unknown:?}; the vocabulary is {}", vocab.join(" "));
        ensure!(
            !words.is_empty() && words.len() <= info.max_tokens as usize,
            "caption {c:?}: needs 1..={} words",
            info.max_tokens
        );
        let bytes = embed_caption(&words, info.width as usize);
        kv.extend(TextDtype::F16.to_f32(&bytes));
        lens.push(words.len());
    }
    Ok((kv, lens))
}

/// Text features from a safetensors file: one f32/f16/bf16 tensor `[tokens, Ct]` per caption, taken in
/// name order (names that are numbers by value, `2` before `10`, after all others, which sort as text:
/// `cap_10` before `cap_2`), of at most `max_tokens` tokens (the model's
/// `text_maxlen`) and finite values. Returns the features, their lengths and the tensors' names.
pub fn text_features_file(path: &Path, width: usize, max_tokens: usize) -> Result<(Vec<f32>, Vec<usize>, Vec<String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // (numpy's own files, `np.save`'s and `np.savez`'s (a zip), are the usual other format to be given)
    let other = match &bytes[..] {
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => Some("a NumPy .npy file"),
        [b'P', b'K', 3, 4, ..] => Some("a zip file (NumPy's .npz?)"),
        _ => None,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| match other {
        Some(what) => anyhow::anyhow!(
            "{}: {what}, not a safetensors file: give one `[tokens, {width}]` tensor per caption in a safetensors \
             file (`safetensors.numpy.save_file({{\"0\": features}}, PATH)`)",
            path.display()
        ),
        None => anyhow::anyhow!("{}: not a safetensors file of text features ({e})", path.display()),
    })?;
    let mut names = st.names();
    names.sort_by_key(|n| (n.parse::<u64>().ok(), n.to_string()));
    let (mut kv, mut lens) = (Vec::new(), Vec::new());
    for &name in &names {
        let t = st.tensor(name)?;
        ensure!(
            t.shape().len() == 2 && t.shape()[1] == width && t.shape()[0] > 0,
            "{}: `{name}` has shape {:?}, expected [tokens, {width}]",
            path.display(),
            t.shape()
        );
        ensure!(
            t.shape()[0] <= max_tokens,
            "{}: `{name}` has {} tokens; the model takes captions of at most {max_tokens} (its text_maxlen)",
            path.display(),
            t.shape()[0]
        );
        let values =
            crate::model::io::tensor_f32(name, t.dtype(), t.data()).with_context(|| path.display().to_string())?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!("{}: `{name}` holds {} at token {}, channel {}", path.display(), values[i], i / width, i % width);
        }
        kv.extend(values);
        lens.push(t.shape()[0]);
    }
    ensure!(!lens.is_empty(), "{}: no tensors", path.display());
    Ok((kv, lens, names.iter().map(|n| n.to_string()).collect()))
}

/// Which of a dataset's schedules to sample on.
#[derive(Clone, Copy, Debug)]
pub enum SchedulePick<'a> {
    /// Of the schedules the dataset has rows of (`rows`, by schedule; all where none are known: an
    /// export of an earlier build), the first square one if there is one, else the one of the most rows.
    Default,
    /// The one of this aspect-ratio template (`1.000`, `0.666`, …): refused where several share it.
    Template(&'a str),
    /// The one of this name in the manifest.
    Name(&'a str),
}

/// The rows the dataset holds of schedule `s` (0 for a manifest that lists no shards: an export's).
pub fn schedule_rows(m: &Manifest, s: &ScaleSchedule) -> u64 {
    let Some(k) = m.schedules.iter().position(|t| t.name == s.name) else { return 0 };
    m.shards.iter().map(|shard| shard.bucket_rows.get(k).copied().unwrap_or(0)).sum()
}

/// The rows the dataset holds of each of its schedules (what an export's config.json records as
/// `data.schedule_rows`).
pub fn rows_by_schedule(m: &Manifest) -> Vec<u64> {
    m.schedules.iter().map(|s| schedule_rows(m, s)).collect()
}

/// The rows the model trained on (the training dataset `trained`, `trained_rows` of each of its
/// schedules) of each schedule of another dataset `m` (`sample --data`: a validation set, say),
/// schedules matched by their scales.
pub fn rows_matching(trained: &Manifest, trained_rows: &[u64], m: &Manifest) -> Vec<u64> {
    let rows_of = |s: &ScaleSchedule| -> u64 {
        (trained.schedules.iter().zip(trained_rows)).filter(|(t, _)| t.scales == s.scales).map(|(_, &n)| n).sum()
    };
    m.schedules.iter().map(rows_of).collect()
}

/// The dataset schedule `pick` names. A template that several schedules share (one per pixel budget)
/// is refused with their names rather than taking the first.
pub fn pick_schedule<'a>(m: &'a Manifest, rows: &[u64], pick: SchedulePick) -> Result<&'a ScaleSchedule> {
    let rows_of = |s: &ScaleSchedule| {
        m.schedules.iter().position(|t| t.name == s.name).map_or(0, |k| rows.get(k).copied().unwrap_or(0))
    };
    let names = || m.schedules.iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
    // (`0.5` is upstream's `0.500`: the catalog's spelling, which schedules carry)
    let spelled = |t: &str| infinity_data::Catalog::upstream().template_name(t).unwrap_or(t).to_string();
    let of_template = |t: &str| m.schedules.iter().filter(|s| s.h_div_w_template == spelled(t)).collect::<Vec<_>>();
    match pick {
        SchedulePick::Name(name) => m.schedules.iter().find(|s| s.name == name).with_context(|| {
            format!("--schedule {name}: the dataset has no schedule of that name (it has {:?})", names())
        }),
        SchedulePick::Default => {
            let trained: Vec<&ScaleSchedule> = m.schedules.iter().filter(|s| rows_of(s) > 0).collect();
            let square = |of: &[&'a ScaleSchedule]| of.iter().find(|s| s.h_div_w_template == "1.000").copied();
            let most_rows = trained.iter().max_by_key(|s| rows_of(s)).copied();
            let all: Vec<&ScaleSchedule> = m.schedules.iter().collect();
            Ok(square(&trained).or(most_rows).or(square(&all)).unwrap_or(&m.schedules[0]))
        }
        SchedulePick::Template(t) => match of_template(t).as_slice() {
            [one] => Ok(one),
            [] => {
                let have: Vec<&str> = m.schedules.iter().map(|s| s.h_div_w_template.as_str()).collect();
                bail!("--template {t}: the dataset has schedules for {have:?}")
            }
            several => {
                let of: Vec<&str> = several.iter().map(|s| s.name.as_str()).collect();
                bail!("--template {t}: {} schedules have it ({of:?}); pick one with --schedule NAME", several.len())
            }
        },
    }
}

/// Where sampling's transformer runs: the CPU model on host parameters, or a model on the GPU (its
/// parameters there).
pub enum Sampler<'a> {
    Cpu(&'a Params<f32>),
    #[cfg(feature = "cuda")]
    Gpu(&'a mut crate::gpu::GpuModel),
}

/// Sample `cond` on `sched` (RoPE in the template's 1M frame, as in training).
pub fn sample_schedule(
    mc: &ModelConfig,
    lay: &Layout,
    sampler: Sampler,
    cond: &SampleCondition,
    sched: &ScaleSchedule,
    o: &SampleOptions,
) -> Result<Sampled> {
    let (scales, rope) = (sched.hw(), rope_for(mc, sched));
    match sampler {
        Sampler::Cpu(p) => sample(mc, lay, p, cond, &scales, &rope, o),
        #[cfg(feature = "cuda")]
        Sampler::Gpu(m) => m.sample(cond, &scales, &rope, o),
    }
}

/// The dataset's built-in tokenizer, if it has one (checked against its manifest).
pub fn tokenizer(dataset_dir: &Path, m: &Manifest) -> Result<Option<PatchTokenizer>> {
    Ok(infinity_data::tokenizer::of_dataset(dataset_dir, m)?)
}

/// Images of sampled codes.
pub fn decode(tok: &PatchTokenizer, s: &Sampled, sched: &ScaleSchedule) -> Vec<Image> {
    let (hh, ww) = sched.latent_hw();
    s.summed_codes.iter().map(|c| tok.decode(c, hh, ww)).collect()
}

/// Up to `n` of `num_classes` classes spread evenly over the label range, first and last included
/// (`round(i·(N−1)/(k−1))`): for 8 of the demo's 24 classes, every colour and every shape.
pub(crate) fn preview_classes(num_classes: usize, n: usize) -> Vec<usize> {
    let k = n.min(num_classes);
    (0..k).map(|i| ((i * (num_classes - 1)) as f64 / (k - 1).max(1) as f64).round() as usize).collect()
}

/// A fixed preview condition for the sample grids logged during training: [`preview_classes`], or the
/// captions of the dataset's first rows.
pub fn preview_condition(mc: &ModelConfig, ds: &Dataset, n: usize) -> Result<SampleCondition> {
    Ok(match &mc.conditioning {
        Conditioning::Class { num_classes } => SampleCondition::Class(preview_classes(*num_classes, n)),
        Conditioning::Text => {
            let info = ds.manifest.conditions.text.as_ref().context("text model on a dataset without text")?;
            let (mut kv, mut lens) = (Vec::new(), Vec::new());
            for g in 0..(n as u64).min(ds.num_rows()) {
                ds.validate_row(g)?;
                let emb = ds.row(g).text_emb.context("text rows without embeddings")?;
                kv.extend(info.dtype.to_f32(emb));
                lens.push(emb.len() / 2 / info.width as usize);
            }
            SampleCondition::Text { kv, lens, negative: None }
        }
    })
}

/// Why the dataset `m` is not of the kind `mc` trained on (its bits, tokenizer layout or conditions
/// differ), if so: `sample --data` and `export --data` refuse it.
pub fn dataset_mismatch(mc: &ModelConfig, m: &Manifest) -> Option<String> {
    if m.d as usize != mc.d_vae() {
        return Some(format!("d = {}, the model's tokenizer has d = {}", m.d, mc.d_vae()));
    }
    if let Err(e) = crate::train::check_schedules_fit(mc, m) {
        return Some(format!("{e:#}"));
    }
    match (&mc.conditioning, &m.conditions.class, &m.conditions.text) {
        (Conditioning::Class { num_classes }, Some(c), _) if c.num_classes as usize != *num_classes => {
            Some(format!("{} classes, the model has {num_classes}", c.num_classes))
        }
        (Conditioning::Class { .. }, None, _) => Some("no class condition; the model is class-conditioned".into()),
        (Conditioning::Text, _, Some(t)) if t.width as usize != mc.text_channels => {
            Some(format!("text features of width {}, the model's are {}", t.width, mc.text_channels))
        }
        (Conditioning::Text, _, None) => Some("no text condition; the model is text-conditioned".into()),
        _ => None,
    }
}

/// Why the dataset `m` in `dir` is not of the tokenizer the model's bits are of, if so: `saved`
/// ([`CheckpointModel::tokenizer`](crate::train::checkpoint::CheckpointModel::tokenizer)) where known,
/// else the run's own dataset `trained`'s where at hand. Its bits would be decoded with another
/// tokenizer's basis (`sample`, `export`) or scored as other images (`eval`). A tokenizer file that
/// does not read is compared by the checksum its manifest records, where the checkpoint's record is at
/// hand, not at all against the run's dataset (loading it says what is wrong, where the command needs
/// it).
pub fn tokenizer_mismatch(saved: Option<&str>, trained: &Path, dir: &Path, m: &Manifest) -> Option<String> {
    if let Some(saved) = saved {
        // (a file that does not read: by the checksum its manifest records; named where it is loaded)
        let now = infinity_data::tokenizer::identity(dir, m);
        return (!infinity_data::tokenizer::same_identity(&now, saved)).then(|| {
            format!("its tokenizer ({now}) is not the one the model trained with ({saved}, its checkpoint says)")
        });
    }
    // (the run's own dataset is its own; a file that does not read is not compared, as above)
    let resolved = |p: &Path| p.canonicalize().ok();
    if resolved(trained).is_some() && resolved(trained) == resolved(dir) {
        return None;
    }
    let run = Manifest::load(trained).ok()?;
    let same = same_tokenizer((trained, &run), (dir, m));
    (!same).then(|| format!("its tokenizer is not the one the run trained with ({}'s)", trained.display()))
}

/// For `--data`: a warning when the schedule sampled is none of those in the dataset the run trained
/// on (`trained`; nothing when that is not at hand): another pixel budget's scales are ones the model
/// never predicted.
pub fn untrained_schedule_warning(trained: &Path, sched: &ScaleSchedule) -> Option<String> {
    let run = Manifest::load(trained).ok()?;
    (!run.schedules.iter().any(|s| s.scales == sched.scales)).then(|| {
        let names: Vec<&str> = run.schedules.iter().map(|s| s.name.as_str()).collect();
        format!(
            "the `{}` schedule ({} scales) is none the run trained on ({}: {}): the model predicts scales it \
             never saw",
            sched.name,
            sched.scales.len(),
            trained.display(),
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    /// Names first (classes named by numbers, as class folders `1`, `10`, `2` are), `#N` for an id,
    /// another case only where it names one class.
    #[test]
    fn classes_are_resolved_by_name_before_id() {
        let names = ["1", "10", "11", "2", "3", "a", "Cats", "cats"].map(String::from).to_vec();
        let info = infinity_data::manifest::ClassInfo { num_classes: 8, names };
        let ids =
            |specs: &[&str]| super::resolve_classes(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &info);
        assert_eq!(ids(&["2", "#2", "10", "7", "A", "cats", "Cats"]).unwrap(), [3, 2, 1, 7, 5, 7, 6]);
        assert_eq!(ids(&["all"]).unwrap(), (0..8).collect::<Vec<_>>());
        let e = ids(&["CATS"]).unwrap_err().to_string();
        assert!(e.contains("names 2 classes, which differ in case alone (Cats, cats)"), "{e}");
        assert!(ids(&["#10"]).unwrap_err().to_string().contains("--class #10: the model has classes 0..7"));
        let e = format!("{:#}", ids(&["dog"]).unwrap_err());
        assert!(e.contains("not a class id or name (names: 1, 10, 11") && !e.contains("invalid digit"), "{e}");
    }

    /// By default the square schedule, where the dataset has rows of it; else the one of the most rows.
    #[test]
    fn the_default_schedule_is_one_the_model_trained_on() {
        use super::{pick_schedule, SchedulePick};
        let dir = tempfile::tempdir().unwrap();
        let opts =
            infinity_data::synth::SynthOptions { rows: 8, fit_rows: 8, budget: "demo4".into(), ..Default::default() };
        let mut m = infinity_data::synth::synth(dir.path(), &opts).unwrap().0;
        let square = m.schedules.iter().position(|s| s.h_div_w_template == "1.000").unwrap();
        let pick = |m: &infinity_data::Manifest| {
            pick_schedule(m, &super::rows_by_schedule(m), SchedulePick::Default).unwrap().clone()
        };
        assert_eq!(pick(&m).h_div_w_template, "1.000");
        // (no rows of the square one: the other)
        for shard in &mut m.shards {
            let moved = std::mem::take(&mut shard.bucket_rows[square]);
            shard.bucket_rows[1 - square] += moved;
        }
        assert_eq!(pick(&m).name, m.schedules[1 - square].name);
        // (as an export records the rows: the same)
        let rows = super::rows_by_schedule(&m);
        // (another dataset of those schedules, in another order, `sample --data`: the rows the model
        // trained on, matched by scales)
        let mut other = m.clone();
        other.schedules.reverse();
        let mut matched = super::rows_matching(&m, &rows, &other);
        matched.reverse();
        assert_eq!(matched, rows);
        m.shards.clear();
        assert_eq!(pick_schedule(&m, &rows, SchedulePick::Default).unwrap().name, m.schedules[1 - square].name);
        // (no rows known, an export of an earlier build's: the square one)
        assert_eq!(pick(&m).h_div_w_template, "1.000");
    }

    #[test]
    fn preview_classes_span_the_labels() {
        // the demo's names run colour fastest (6 colours × 4 shapes): i·N/k gave only red and yellow
        let ids = super::preview_classes(24, 8);
        assert_eq!(ids, [0, 3, 7, 10, 13, 16, 20, 23]);
        let colours: std::collections::BTreeSet<usize> = ids.iter().map(|i| i % 6).collect();
        assert_eq!(colours.len(), 6);
        assert_eq!(super::preview_classes(5, 8), [0, 1, 2, 3, 4]);
        assert_eq!(super::preview_classes(10, 1), [0]);
    }
}
