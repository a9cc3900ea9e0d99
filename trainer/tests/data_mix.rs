//! Training on a mix of datasets (`data.mix`), and validating on several (`val.sets`): it draws every dataset, resumes bitwise, records its
//! parts, and refuses datasets of other tokenizers, half-weighted mixes and a changed mix on resume.

mod common;

use std::path::{Path, PathBuf};

use infinity_data::synth::{synth, SynthOptions};
use infinity_data::tokenizer::TOKENIZER_FILE;
use infinity_data::writer::WriterOptions;
use infinity_trainer::train::check::{check, check_with};
use infinity_trainer::train::config::{DataPhase, MixSource, TrainConfig, ValSet};
use infinity_trainer::train::{latest_checkpoint, train, TrainOptions};

/// `rows` synthetic rows of seed `seed` tokenized by `tokenizer` (fitted anew where `None`).
fn dataset(dir: &Path, rows: u64, seed: u64, tokenizer: Option<PathBuf>) {
    let opts = SynthOptions {
        rows,
        seed,
        fit_rows: rows as usize / 2,
        tokenizer,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    synth(dir, &opts).unwrap();
}

/// Datasets `a` (96 rows) and `b` (48, of `a`'s tokenizer) in `dir`.
fn two_datasets(dir: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    dataset(&a, 96, 0, None);
    dataset(&b, 48, 5, Some(a.join(TOKENIZER_FILE)));
    (a, b)
}

/// [`common::tiny_config`] on `a` mixed with `b` at weights 1 : 3.
fn mixed(a: &Path, b: &Path, run: PathBuf) -> TrainConfig {
    let mut c = common::tiny_config(a, run);
    c.data.weight = Some(1.0);
    c.data.mix = vec![MixSource { dir: b.to_path_buf(), weight: Some(3.0) }];
    c
}

fn weights(c: &TrainConfig) -> Vec<u8> {
    std::fs::read(c.run.dir.join("checkpoints/step-00000006/model.safetensors")).unwrap()
}

#[test]
fn a_mix_trains_on_every_dataset_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_datasets(tmp.path());

    let whole = mixed(&a, &b, tmp.path().join("whole"));
    let lines = check(&whole, 1, None, None).unwrap().join("\n");
    assert!(lines.contains(&format!("dataset {} + {}: 144 rows", a.display(), b.display())), "{lines}");
    assert!(lines.contains("data mix (by weight, ") && lines.contains("data.mix[0].dir"), "{lines}");
    let s = train(&whole, &TrainOptions::default()).unwrap();
    assert_eq!(s.steps, 6);
    let derived: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.run.dir.join("derived.json")).unwrap()).unwrap();
    let parts = derived["mix"].as_array().unwrap();
    assert_eq!((parts[0]["rows"].as_u64(), parts[1]["rows"].as_u64()), (Some(96), Some(48)));
    let quotas: Vec<u64> = parts.iter().map(|p| p["batches_per_epoch"].as_u64().unwrap()).collect();
    assert!(quotas[1] > 2 * quotas[0], "b weighted 3 : 1 over its size: {quotas:?}");
    // each step says which dataset it drew: both are
    let datasets: std::collections::BTreeSet<u64> = drawn(&whole).into_iter().collect();
    assert_eq!(datasets.into_iter().collect::<Vec<_>>(), [0, 1]);

    // stopped after step 4, resumed from the checkpoint of step 3: the same weights at step 6
    let split = mixed(&a, &b, tmp.path().join("split"));
    train(&split, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    let ckpt = latest_checkpoint(&split.run.dir).unwrap();
    train(&split, &TrainOptions { resume: Some(ckpt.clone()), ..Default::default() }).unwrap();
    assert!(weights(&whole) == weights(&split), "a mixed run's weights differ after resume");

    // the mix is trained on: `a` alone gives other weights
    let alone = common::tiny_config(&a, tmp.path().join("alone"));
    train(&alone, &TrainOptions::default()).unwrap();
    assert!(weights(&alone) != weights(&whole));

    // another weight is another order of the samples: refused on resume, naming the setting
    let mut other = mixed(&a, &b, split.run.dir.clone());
    other.data.mix[0].weight = Some(1.0);
    let e = format!("{:#}", train(&other, &TrainOptions { resume: Some(ckpt), ..Default::default() }).unwrap_err());
    assert!(e.contains("the mix's weights") && e.contains("data.mix"), "{e}");
    // --accept-data-change takes a mended dataset of the mix, saying its batches per epoch changed with
    // it; not another weight on the same rows
    let accept = |cfg: &TrainConfig| {
        let lines = check_with(cfg, 1, latest_checkpoint(&cfg.run.dir).as_deref(), None, true);
        lines.map(|l| l.join("\n")).map_err(|e| format!("{e:#}"))
    };
    let e = accept(&other).unwrap_err();
    assert!(e.contains("the mix's weights"), "{e}");
    dataset(&b, 80, 5, Some(a.join(TOKENIZER_FILE)));
    let mut longer = mixed(&a, &b, split.run.dir.clone());
    longer.run.steps = 8;
    let lines = accept(&longer).unwrap();
    assert!(
        lines.contains("resume: --accept-data-change: ")
            && lines.contains("the mix's batches per epoch of each dataset change with it"),
        "{lines}"
    );
    let opts =
        TrainOptions { resume: latest_checkpoint(&split.run.dir), accept_data_change: true, ..Default::default() };
    assert_eq!(train(&longer, &opts).unwrap().steps, 8);
}

/// `--rows-of-step` of a mix whose global batch changed at a resume: a step before the change is drawn
/// at its size, from the dataset the run drew it from.
#[test]
fn the_rows_of_a_mixed_step_before_a_change_of_size_are_named() {
    use infinity_trainer::train::step_rows::rows_of_step;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_datasets(tmp.path());
    let small = mixed(&a, &b, tmp.path().join("run"));
    train(&small, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
    let before: Vec<Vec<String>> = (1..=3).map(|step| rows_of_step(&small, step, 1).unwrap()).collect();
    let mut large = mixed(&a, &b, small.run.dir.clone());
    large.data.global_batch *= 2;
    train(&large, &TrainOptions { resume: latest_checkpoint(&large.run.dir), ..Default::default() }).unwrap();
    for step in 1..=3 {
        assert_eq!(rows_of_step(&large, step, 1).unwrap(), before[step as usize - 1], "step {step}");
    }
    let g = large.data.global_batch;
    assert!(rows_of_step(&large, 5, 1).unwrap()[0].starts_with(&format!("step 5: global batch {g} ")));
}

/// The datasets drawn by each step of a finished run (`metrics.jsonl`'s `dataset`).
fn drawn(c: &TrainConfig) -> Vec<u64> {
    let metrics = std::fs::read_to_string(c.run.dir.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["dataset"].as_u64().unwrap())
        .collect()
}

/// `data.phases`: from its step on, a phase draws by its own weights; the steps before are as without
/// it; a resume takes a phase not begun yet as it is now and refuses one begun that changed.
#[test]
fn an_annealing_phase_reweighs_the_mix_from_its_step() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_datasets(tmp.path());
    // `a` alone, then `b` alone from step 3
    let annealed = |run: &str, from_step: u64| {
        let mut c = mixed(&a, &b, tmp.path().join(run));
        (c.data.weight, c.data.mix[0].weight) = (Some(1.0), Some(0.0));
        c.data.phases = vec![DataPhase { from_step: Some(from_step), from_fraction: None, weights: vec![0.0, 1.0] }];
        c
    };
    let whole = annealed("whole", 3);
    let lines = check(&whole, 1, None, None).unwrap().join("\n");
    assert!(lines.contains("; after step 3: data.dir 0.0 %, data.mix[0].dir 100.0 %"), "{lines}");
    // a phase past the run's end is shown by its weights too (it was by the datasets' sizes)
    let late = annealed("late", 900);
    let lines = check(&late, 1, None, None).unwrap().join("\n");
    let said = "; after step 900 (the run has 6 steps: never reached): data.dir 0.0 %, data.mix[0].dir 100.0 %";
    assert!(lines.contains(said), "{lines}");
    train(&whole, &TrainOptions::default()).unwrap();
    assert_eq!(drawn(&whole), [0, 0, 0, 1, 1, 1]);
    let derived: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.run.dir.join("derived.json")).unwrap()).unwrap();
    assert_eq!(derived["mix_phases"][0]["from_step"], 3);
    assert_eq!(derived["mix_phases"][0]["batches_per_epoch"][0], 0);

    // stopped after step 4, resumed from the checkpoint of step 3: the same weights
    let split = annealed("split", 3);
    train(&split, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    let ckpt = latest_checkpoint(&split.run.dir).unwrap();
    train(&split, &TrainOptions { resume: Some(ckpt.clone()), ..Default::default() }).unwrap();
    assert!(weights(&whole) == weights(&split), "a phased run's weights differ after resume");

    // from the checkpoint of step 3: a phase moved to step 2 has begun before it, refused; one moved
    // to step 5 has not, taken
    let resume = |c: &TrainConfig| train(c, &TrainOptions { resume: Some(ckpt.clone()), ..Default::default() });
    let mut earlier = annealed("split", 2);
    earlier.run.dir = split.run.dir.clone();
    let e = format!("{:#}", resume(&earlier).unwrap_err());
    assert!(
        e.contains(
            "the mix's weights drawn before batch 3 (data.weight, data.mix, data.phases) [1.0, 0.0], this run has \
                    [1.0, 0.0], from batch 2: [0.0, 1.0]"
        ),
        "{e}"
    );
    let mut later = annealed("split", 5);
    later.run.dir = split.run.dir.clone();
    resume(&later).unwrap();
    assert_eq!(drawn(&later), [0, 0, 0, 0, 0, 1]);

    // from_fraction: half of 6 steps is step 3, the same run; resumed from the checkpoint of step 3 to
    // 8 steps, the phase (not begun) moves with the length to step 4
    let half = |run: &str, steps: u64| {
        let mut c = annealed(run, 3);
        (c.data.phases[0].from_step, c.data.phases[0].from_fraction) = (None, Some(0.5));
        c.run.steps = steps;
        c
    };
    let (whole_half, split_half) = (half("whole-half", 6), half("split-half", 6));
    train(&whole_half, &TrainOptions::default()).unwrap();
    assert_eq!(drawn(&whole_half), drawn(&whole));
    assert!(weights(&whole_half) == weights(&whole), "a phase from half of 6 steps is the phase from step 3");
    train(&split_half, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    let at_3 = latest_checkpoint(&split_half.run.dir);
    // shortened to 4 steps, the phase would have begun at step 2, before the checkpoint: refused, saying
    // why a change of run.steps alone is refused
    let mut shorter = half("split-half", 4);
    shorter.run.dir = split_half.run.dir.clone();
    let e = format!("{:#}", train(&shorter, &TrainOptions { resume: at_3.clone(), ..Default::default() }).unwrap_err());
    assert!(
        e.contains("data.phases[0].from_fraction (0.5 of run.steps = 4: step 2) moves with run.steps")
            && e.contains("resume with the run.steps it was begun under"),
        "{e}"
    );
    let mut longer = half("split-half", 8);
    longer.run.dir = split_half.run.dir.clone();
    train(&longer, &TrainOptions { resume: at_3, ..Default::default() }).unwrap();
    assert_eq!(drawn(&longer), [0, 0, 0, 0, 1, 1, 1, 1]);

    let refused = |set: &dyn Fn(&mut TrainConfig)| {
        let mut c = annealed("bad", 3);
        set(&mut c);
        c.validate().unwrap_err().to_string()
    };
    let e = refused(&|c| c.data.phases[0].from_step = Some(0));
    assert!(e.starts_with("data.phases[0].from_step (0) must be at least step 1"), "{e}");
    let e = refused(&|c| {
        c.data.phases.push(DataPhase { from_step: Some(2), from_fraction: None, weights: vec![1.0, 1.0] })
    });
    assert!(e.starts_with("data.phases[1].from_step (2) must come after data.phases[0].from_step (3)"), "{e}");
    let by_fraction = |f: f64| DataPhase { from_step: None, from_fraction: Some(f), weights: vec![1.0, 1.0] };
    let e = refused(&|c| c.data.phases.push(by_fraction(0.4)));
    assert!(
        e.starts_with(
            "data.phases[1].from_fraction (0.4 of run.steps = 6: step 2) must come after data.phases[0].from_step (3)"
        ),
        "{e}"
    );
    let e = refused(&|c| c.data.phases[0] = by_fraction(0.05));
    assert!(
        e.starts_with("data.phases[0].from_fraction (0.05 of run.steps = 6: step 0) must be at least step 1"),
        "{e}"
    );
    let e = refused(&|c| c.data.phases[0] = by_fraction(0.95));
    assert!(e.starts_with("data.phases[0].from_fraction (0.95 of run.steps = 6: step 6) is the run's end"), "{e}");
    let e = refused(&|c| c.data.phases[0] = by_fraction(1.0));
    assert!(
        e.starts_with("data.phases[0].from_fraction = 1: expected a share of run.steps above 0 and below 1"),
        "{e}"
    );
    let e = refused(&|c| c.data.phases[0].from_fraction = Some(0.5));
    assert!(e.starts_with("data.phases[0] gives from_step and from_fraction: give one"), "{e}");
    let e = refused(&|c| c.data.phases[0].from_step = None);
    assert!(e.starts_with("data.phases[0] needs its first step"), "{e}");
    let e = refused(&|c| c.data.phases[0].weights = vec![1.0]);
    assert!(e.starts_with("data.phases[0].weights has 1 weights for 2 datasets"), "{e}");
    let e = refused(&|c| c.data.phases[0].weights = vec![0.0, 0.0]);
    assert!(e.starts_with("data.phases[0].weights are all 0"), "{e}");
    let e = refused(&|c| c.data.phases[0].weights[0] = f64::NAN);
    assert!(e.starts_with("data.phases[0].weights must be finite weights ≥ 0, found NaN"), "{e}");
    let e = refused(&|c| {
        c.data.mix.clear();
        c.data.weight = None;
    });
    assert!(e.starts_with("data.phases reweighs a mix, but data.mix names no other dataset"), "{e}");
}

/// A token budget over a phased mix: the planner counts each phase's steps at its own tokens per step,
/// so the run's tokens (as it will record them) meet the budget.
#[test]
fn a_token_budget_counts_each_phase_at_its_own_tokens() {
    use infinity_trainer::train::TokenMix;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // the same two templates, mostly square in `a`, mostly portrait in `b`: other tokens per sample
    let shapes = |dir: &Path, seed: u64, square: f64, tokenizer: Option<PathBuf>| {
        let opts = SynthOptions {
            rows: 160,
            seed,
            fit_rows: 64,
            templates: vec![("1.000".into(), square), ("0.666".into(), 1.0 - square)],
            tokenizer,
            writer: WriterOptions { overwrite: true, ..Default::default() },
            ..Default::default()
        };
        synth(dir, &opts).unwrap();
    };
    shapes(&a, 0, 0.9, None);
    shapes(&b, 5, 0.1, Some(a.join(TOKENIZER_FILE)));
    let mut base = mixed(&a, &b, tmp.path().join("unused"));
    (base.data.weight, base.data.mix[0].weight) = (Some(1.0), Some(0.0));
    base.data.phases = vec![DataPhase { from_step: Some(10), from_fraction: None, weights: vec![0.0, 1.0] }];
    base.optim.warmup_steps = 0;
    std::fs::write(tmp.path().join("base.toml"), toml::to_string(&base).unwrap()).unwrap();
    let sweep = tmp.path().join("sweep.toml");
    let plan = |axes: &str| {
        std::fs::write(&sweep, format!("base = \"base.toml\"\nout = \"sweep\"\n[axes]\n{axes}\n")).unwrap();
        let mut p = infinity_trainer::sweep::plan(&sweep).unwrap();
        p.runs.remove(0)
    };
    // the tokens of 10 steps of `a`, then of 10 of `b`
    let per_step = |steps: u64| plan(&format!("\"run.steps\" = [{steps}]")).tokens;
    let (first, both) = (per_step(10), per_step(20));
    let (in_a, in_b) = (first / 10.0, (both - first) / 10.0);
    assert!((in_a - in_b).abs() > 0.05 * in_a, "the phases differ in tokens: {in_a} {in_b}");
    // a budget of 10 steps of `a` and 14.5 of `b`: 25 whole steps, whatever either phase's tokens alone
    // say
    let budget = first + 14.5 * in_b;
    let run = plan(&format!("tokens = [{budget}]"));
    assert_eq!(run.config.run.steps, 25, "{} tokens planned", run.tokens);
    // and the planned tokens are those the run records (its own token mix over its 25 steps)
    let manifests: Vec<infinity_data::Manifest> =
        [&a, &b].iter().map(|d| infinity_data::Manifest::load(d).unwrap()).collect();
    let m = &manifests[0];
    let mc = run.config.model_for(m).unwrap();
    let mix = TokenMix::of_mix(&mc, &manifests.iter().collect::<Vec<_>>(), &run.config).unwrap();
    let recorded = mix.mean_tokens * run.config.data.global_batch as f64 * 25.0;
    assert!((recorded - run.tokens).abs() <= 1e-9 * recorded, "{recorded} {}", run.tokens);

    // phases set by shares of the budget's steps are checked on those steps: 0.9 and 0.92 of about 25
    // steps are one step, refused when the sweep is planned rather than when the run starts
    let share = |f: f64| DataPhase { from_step: None, from_fraction: Some(f), weights: vec![0.0, 1.0] };
    base.data.phases = vec![share(0.9), share(0.92)];
    std::fs::write(tmp.path().join("base.toml"), toml::to_string(&base).unwrap()).unwrap();
    std::fs::write(&sweep, format!("base = \"base.toml\"\nout = \"sweep\"\n[axes]\ntokens = [{budget}]\n")).unwrap();
    let e = format!("{:#}", infinity_trainer::sweep::plan(&sweep).err().expect("refused"));
    assert!(e.contains("with its budget's") && e.contains("data.phases[1].from_fraction (0.92 of run.steps"), "{e}");
}

#[test]
fn mixes_of_other_tokenizers_or_half_given_weights_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    dataset(&a, 64, 0, None);
    // (fitted on its own rows: another tokenizer's bits)
    dataset(&b, 64, 5, None);
    let run = tmp.path().join("run");
    let e = format!("{:#}", check(&mixed(&a, &b, run.clone()), 1, None, None).unwrap_err());
    assert!(e.contains(&format!("data.mix[0].dir {}: tokenized with a different tokenizer", b.display())), "{e}");

    // other schedules (another pixel budget), named by the key
    let c = tmp.path().join("c");
    let opts = SynthOptions {
        rows: 64,
        fit_rows: 32,
        budget: "demo4".into(),
        tokenizer: Some(a.join(TOKENIZER_FILE)),
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    synth(&c, &opts).unwrap();
    let e = format!("{:#}", check(&mixed(&a, &c, run.clone()), 1, None, None).unwrap_err());
    let want =
        format!("data.mix[0].dir {}: cannot be mixed with data.dir {}: the scale schedules", c.display(), a.display());
    assert!(e.contains(&want), "{e}");
    // a weight too small for one batch of an epoch
    let d = tmp.path().join("d");
    dataset(&d, 64, 6, Some(a.join(TOKENIZER_FILE)));
    let mut tiny = mixed(&a, &d, run.clone());
    tiny.data.mix[0].weight = Some(1e-4);
    let e = format!("{:#}", check(&tiny, 1, None, None).unwrap_err());
    assert!(e.contains(&format!("data.mix[0].dir {}: weight 0.0001 gives it none", d.display())), "{e}");

    let mut half = mixed(&a, &b, run.clone());
    half.data.weight = None;
    let e = half.validate().unwrap_err().to_string();
    assert!(e.starts_with("data.weight is not set, but data.mix[0].weight is"), "{e}");
    let mut alone = common::tiny_config(&a, run.clone());
    alone.data.weight = Some(2.0);
    let e = alone.validate().unwrap_err().to_string();
    assert!(e.contains("data.mix names no other dataset"), "{e}");
    let mut twice = mixed(&a, &a, run.clone());
    twice.data.mix[0].dir = a.join(".");
    let e = twice.validate().unwrap_err().to_string();
    assert!(e.starts_with("data.mix[0].dir names the folder data.dir names"), "{e}");
    let mut negative = mixed(&a, &b, run);
    negative.data.mix[0].weight = Some(-1.0);
    let e = negative.validate().unwrap_err().to_string();
    assert!(e.contains("data.mix[0].weight must be a finite weight ≥ 0, found -1"), "{e}");
}

/// `val.sets` beside `val.dir`: each measured alone at every evaluation, logged in the same `val.jsonl`
/// line and under `val/NAME/` in TensorBoard, `val.dir`'s own loss as without them.
#[test]
fn more_validation_sets_are_each_measured_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, held_out, b) = (tmp.path().join("a"), tmp.path().join("held-out"), tmp.path().join("b"));
    dataset(&a, 96, 0, None);
    dataset(&held_out, 32, 9, Some(a.join(TOKENIZER_FILE)));
    dataset(&b, 32, 5, Some(a.join(TOKENIZER_FILE)));
    let validated = |run: &str, sets: Vec<ValSet>| {
        let mut c = common::tiny_config(&a, tmp.path().join(run));
        (c.val.dir, c.val.every, c.val.max_rows, c.val.sets) = (Some(held_out.clone()), 3, 16, sets);
        c
    };
    let plain = validated("plain", Vec::new());
    train(&plain, &TrainOptions::default()).unwrap();
    let with_sets = validated("sets", vec![ValSet { dir: b.clone(), name: Some("b-domain".into()) }]);
    let lines = check(&with_sets, 1, None, None).unwrap().join("\n");
    assert!(
        lines.contains(&format!(
            "validation: 16 rows of {}; 16 rows of b-domain ({})",
            held_out.display(),
            b.display()
        )),
        "{lines}"
    );
    train(&with_sets, &TrainOptions::default()).unwrap();

    let evaluations = |c: &TrainConfig| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(c.run.dir.join("val.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (alone, beside) = (evaluations(&plain), evaluations(&with_sets));
    assert_eq!(beside.len(), 2, "steps 3 and 6");
    for (x, y) in alone.iter().zip(&beside) {
        assert_eq!((&x["step"], &x["loss"]), (&y["step"], &y["loss"]), "val.dir's loss as without the sets");
        let other = &y["sets"]["b-domain"];
        assert!(other["loss"].as_f64().unwrap() > 0.0 && other["rows"] == 16, "{y}");
        assert_ne!(other["loss"], y["loss"]);
    }
    let events = std::fs::read_dir(with_sets.run.dir.join("tb")).unwrap().next().unwrap().unwrap().path();
    let scalars = infinity_trainer::tensorboard::read_scalars(&events).unwrap();
    let steps: Vec<i64> = scalars.iter().filter(|s| s.tag == "val/b-domain/loss").map(|s| s.step).collect();
    assert_eq!(steps, [3, 6]);

    // names: beside val.dir, each of its own, fit for a tag
    let mut alone = validated("x", vec![ValSet { dir: b.clone(), name: None }]);
    alone.val.dir = None;
    assert!(alone.validate().unwrap_err().to_string().starts_with("val.sets evaluate beside val.dir"));
    let twice =
        validated("x", vec![ValSet { dir: b.clone(), name: None }, ValSet { dir: a.clone(), name: Some("b".into()) }]);
    let e = twice.validate().unwrap_err().to_string();
    assert!(e.starts_with("val.sets[1] is named `b`, as val.sets[0] is"), "{e}");
    let spaced = validated("x", vec![ValSet { dir: b.clone(), name: Some("my set".into()) }]);
    assert!(spaced.validate().unwrap_err().to_string().starts_with("val.sets[0].name must be letters"));
    // (a folder's name is made fit for a tag)
    assert_eq!(ValSet { dir: tmp.path().join("my set"), name: None }.name(), "my-set");
}
