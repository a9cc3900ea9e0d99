//! The training loop: a resumed run is bitwise identical to an uninterrupted one; bad checkpoints,
//! mismatched configs and unwritable run folders give clear errors and lose nothing.

mod common;

use std::path::{Path, PathBuf};

use infinity_data::synth::{synth, SynthOptions};
use infinity_data::writer::WriterOptions;
use infinity_trainer::train::config::{MicroBatchSize, PeakTflops, TrainConfig};
use infinity_trainer::train::{latest_checkpoint, train, TrainOptions};

fn dataset(dir: &Path) {
    common::tiny_dataset(dir, 96);
}

/// [`common::tiny_config`] with two micro-batches a step, drop path in the second block, sample grids
/// at steps 3 and 6 (sampling inside the loop must not disturb resumption), and for a text model the
/// short captions half of the time.
fn config(data: &Path, run: PathBuf, conditioning: &str) -> TrainConfig {
    let mut c = common::tiny_config(data, run);
    (c.model.conditioning, c.model.drop_path_rate) = (conditioning.into(), Some(0.2));
    c.data.short_cap_prob = if conditioning == "text" { 0.5 } else { 0.0 };
    (c.data.micro_batch, c.sample.every) = (MicroBatchSize::Samples(4), 3);
    c
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn resumed_run_is_bitwise_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    for conditioning in ["class", "text"] {
        let whole = config(&data, tmp.path().join(format!("whole-{conditioning}")), conditioning);
        let s = train(&whole, &TrainOptions::default()).unwrap();
        assert_eq!(s.steps, 6);
        assert!(s.last_loss.is_finite() && s.last_loss < 0.75, "{conditioning}: loss {}", s.last_loss);

        let split = config(&data, tmp.path().join(format!("split-{conditioning}")), conditioning);
        train(&split, &TrainOptions { resume: None, stop_after: Some(4), ..Default::default() }).unwrap();
        // interrupted after step 4: the newest complete checkpoint is step 3
        let ckpt = latest_checkpoint(&split.run.dir).unwrap();
        assert!(ckpt.ends_with("step-00000003"), "{}", ckpt.display());
        train(&split, &TrainOptions { resume: Some(ckpt), stop_after: None, ..Default::default() }).unwrap();

        let end = |c: &TrainConfig, f: &str| read(c.run.dir.join("checkpoints/step-00000006").join(f));
        assert!(
            end(&whole, "model.safetensors") == end(&split, "model.safetensors"),
            "{conditioning}: weights differ after resume"
        );
        assert!(
            end(&whole, "optim.safetensors") == end(&split, "optim.safetensors"),
            "{conditioning}: optimiser state differs after resume"
        );
        // the sample grids are logged at steps 3 and 6 and depend only on the weights
        let grid = |c: &TrainConfig, step: u64| read(c.run.dir.join(format!("samples/step-{step:08}.png")));
        assert!(grid(&whole, 3).len() > 100, "{conditioning}: empty grid");
        assert!(grid(&whole, 6) == grid(&split, 6), "{conditioning}: sample grids differ after resume");
        // the metrics of the resumed steps equal the uninterrupted run's
        let lines = |c: &TrainConfig| std::fs::read_to_string(c.run.dir.join("metrics.jsonl")).unwrap();
        let loss_of = |text: String, step: u64| {
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["step"] == step)
                .map(|v| v["loss"].as_f64().unwrap())
                .next_back()
                .unwrap()
        };
        assert_eq!(loss_of(lines(&whole), 6), loss_of(lines(&split), 6));
    }
}

/// Resuming from an earlier checkpoint starts a new history: the later checkpoints are moved aside
/// (not taken for the newest by `--resume auto`, nor kept by pruning in place of the new ones), with a
/// whole copy of the run's logs; the run's own logs, TensorBoard's event files included, keep the
/// steps up to the resumed one and the new history's.
#[test]
fn resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"), "class");
    cfg.sample.every = 0;
    (cfg.val.dir, cfg.val.max_rows, cfg.val.every) = (Some(data.clone()), 16, 2);
    train(&cfg, &TrainOptions::default()).unwrap(); // checkpoints at steps 3 and 6, validation at 2, 4, 6
    let tb_files = |dir: PathBuf| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect();
        v.sort();
        v
    };
    let tb_before = tb_files(cfg.run.dir.join("tb"));
    let val_before = std::fs::read(cfg.run.dir.join("val.jsonl")).unwrap();
    let step3 = cfg.run.dir.join("checkpoints/step-00000003");
    // a resume that is refused (another seed: the saved data position; another width: the weights)
    // leaves the run folder as it was: its config and sizes, which `infinity scaling` reads, and the
    // checkpoints after the one named
    let folder = |name: &str| std::fs::read(cfg.run.dir.join(name)).unwrap();
    let before = (folder("config.toml"), folder("derived.json"));
    let metrics_before = folder("metrics.jsonl");
    for refused in ["seed", "width", "validation"] {
        let mut other = cfg.clone();
        let want = match refused {
            "seed" => {
                other.run.seed += 1;
                "cannot resume"
            }
            "width" => {
                other.model.embed_dim = Some(96);
                "shape"
            }
            _ => {
                other.val.dir = Some(tmp.path().join("no-such-validation-set"));
                "no-such-validation-set"
            }
        };
        let e = train(&other, &TrainOptions { resume: Some(step3.clone()), ..Default::default() }).unwrap_err();
        assert!(format!("{e:#}").contains(want), "{refused}: {e:#}");
        // (the tensors' shapes come with the setting that changed them)
        let named =
            format!("{e:#}").contains("model settings changed since the checkpoint: model.embed_dim: (unset) → 96");
        assert_eq!(named, refused == "width", "{refused}: {e:#}");
        assert!(folder("metrics.jsonl") == metrics_before, "{refused}: the log was cut to step 3");
        assert!(before == (folder("config.toml"), folder("derived.json")), "{refused}: the run folder was rewritten");
        assert!(cfg.run.dir.join("checkpoints/step-00000006").is_dir(), "{refused}: step 6 was set aside");
    }
    let mut again = cfg.clone();
    (again.run.steps, again.checkpoint.every, again.checkpoint.keep_last) = (5, 1, 2);
    // sample grids of both histories (the later one's go with its checkpoints); `--check` says so
    std::fs::create_dir_all(cfg.run.dir.join("samples")).unwrap();
    for step in [2, 6] {
        std::fs::write(cfg.run.dir.join(format!("samples/step-{step:08}.png")), b"png").unwrap();
    }
    // and `infinity eval --out RUN/eval.jsonl`'s lines of both (the later one's go with it too)
    // (an export's line, of another model whatever its step, stays)
    let ckpt_of = |s: u64| cfg.run.dir.join(format!("checkpoints/step-{s:08}")).display().to_string();
    let eval_lines = format!(
        "{{\"checkpoint\":{:?},\"step\":2,\"loss\":0.5}}\n{{\"checkpoint\":{:?},\"step\":6,\"loss\":0.4}}\n\
         {{\"checkpoint\":\"/elsewhere/export\",\"step\":9,\"loss\":0.3}}\n",
        ckpt_of(2),
        ckpt_of(6)
    );
    std::fs::write(cfg.run.dir.join("eval.jsonl"), &eval_lines).unwrap();
    // (the folder they would move to, named as the resume would take it: the next free one)
    let taken = cfg.run.dir.join("abandoned/after-step-00000003");
    std::fs::create_dir_all(&taken).unwrap();
    let lines = infinity_trainer::train::check::check(&again, 1, Some(&step3), None).unwrap();
    std::fs::remove_dir_all(cfg.run.dir.join("abandoned")).unwrap();
    let want = format!(
        "resume: a new history from step 3: the run's checkpoints after step 3 (steps [6]) and 1 sample grid \
         would move to {}.1 (with a copy of its logs, which are cut back to step 3)",
        taken.display()
    );
    assert!(lines.contains(&want), "{lines:?}");
    let s = train(&again, &TrainOptions { resume: Some(step3), ..Default::default() }).unwrap();
    let names = |dir: PathBuf| -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(names(cfg.run.dir.join("checkpoints")), ["step-00000004", "step-00000005"]);
    let abandoned = cfg.run.dir.join("abandoned/after-step-00000003");
    assert_eq!(
        names(abandoned.clone()),
        ["eval.jsonl", "metrics.jsonl", "samples", "step-00000006", "tb", "val.jsonl"]
    );
    assert_eq!(std::fs::read_to_string(abandoned.join("eval.jsonl")).unwrap(), eval_lines);
    let kept: Vec<String> =
        eval_lines.lines().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| format!("{l}\n")).collect();
    assert_eq!(std::fs::read_to_string(cfg.run.dir.join("eval.jsonl")).unwrap(), kept.concat());
    // the abandoned history's logs, whole: every step to 6, TensorBoard's as they were
    assert!(std::fs::read(abandoned.join("metrics.jsonl")).unwrap() == metrics_before, "metrics.jsonl");
    assert!(std::fs::read(abandoned.join("val.jsonl")).unwrap() == val_before, "val.jsonl");
    assert!(tb_files(abandoned.join("tb")) == tb_before, "tb/");
    // the run's event files: the first history's up to step 3 (whatever the event), then the new one's
    use infinity_trainer::tensorboard::{read_scalars, read_steps};
    let mut loss_steps = Vec::new();
    let mut val_steps = Vec::new();
    for (name, _) in tb_files(cfg.run.dir.join("tb")) {
        let path = cfg.run.dir.join("tb").join(&name);
        let steps = read_steps(&path).unwrap();
        if tb_before.iter().any(|(n, _)| *n == name) {
            assert!(steps.iter().all(|&s| s <= 3), "{name}: {steps:?}");
        }
        for s in read_scalars(&path).unwrap() {
            match s.tag.as_str() {
                "train/loss" => loss_steps.push(s.step),
                "val/loss" => val_steps.push(s.step),
                _ => {}
            }
        }
    }
    assert_eq!(loss_steps, [1, 2, 3, 4, 5]);
    assert_eq!(val_steps, [2, 4, 5]);
    assert_eq!(names(cfg.run.dir.join("abandoned/after-step-00000003/samples")), ["step-00000006.png"]);
    assert_eq!(names(cfg.run.dir.join("samples")), ["step-00000002.png"]);
    let latest = latest_checkpoint(&cfg.run.dir).unwrap();
    assert!(latest.ends_with("step-00000005") && s.last_checkpoint.as_ref() == Some(&latest), "{latest:?} {s:?}");
    let metrics = std::fs::read_to_string(cfg.run.dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    let val = std::fs::read_to_string(cfg.run.dir.join("val.jsonl")).unwrap();
    let steps: Vec<u64> =
        val.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 4, 5]);

    // the abandoned history resumed into the folder, or a copy of its step 6 kept elsewhere, would join
    // the two histories (logs jumping from 5 to 7, checkpoints 4 and 5 of the other beside it): refused
    let resume = |dir: PathBuf| TrainOptions { resume: Some(dir), ..Default::default() };
    let e = format!("{:#}", train(&cfg, &resume(abandoned.join("step-00000006"))).unwrap_err());
    assert!(e.contains("a history this run folder abandoned at step 3, since when it trained another"), "{e}");
    let kept = tmp.path().join("kept/step-00000006");
    std::fs::create_dir_all(&kept).unwrap();
    for f in std::fs::read_dir(abandoned.join("step-00000006")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, kept.join(f.file_name().unwrap())).unwrap();
    }
    let e = format!("{:#}", train(&cfg, &resume(kept.clone())).unwrap_err());
    assert!(e.contains("of a history this run folder abandoned at step 3"), "a copy of one: {e}");
    // (with that record gone, the folder's history still ends before the copy's step)
    std::fs::remove_dir_all(cfg.run.dir.join("abandoned")).unwrap();
    let e = format!("{:#}", train(&cfg, &resume(kept)).unwrap_err());
    assert!(
        e.contains("its metrics.jsonl ends at step 5 and its newest checkpoint is of step 5, before the step"),
        "{e}"
    );
}

/// μP (`model.mup_base_width`): at its base width the run is the standard one byte for byte; a run
/// twice as wide (its hidden and output learning rates halved through the optimizer's groups) differs
/// from the standard one and resumes to the uninterrupted run's bytes, class- and text-conditioned
/// (the text model's base has its 2 heads: `model.mup_base_heads`).
#[test]
fn mup_at_its_base_width_is_the_standard_run_and_a_wider_one_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = |name: &str, conditioning: &str, width: usize, mup: Option<usize>, opts: TrainOptions| {
        let mut c = config(&data, tmp.path().join(format!("{name}-{conditioning}")), conditioning);
        (c.model.embed_dim, c.model.num_heads, c.model.mup_base_width) = (Some(width), Some(2), mup);
        c.model.mup_base_heads = mup.map(|_| 2);
        train(&c, &opts).unwrap();
        c
    };
    let weights = |c: &TrainConfig| read(c.run.dir.join("checkpoints/step-00000006/model.safetensors"));
    let plain = TrainOptions::default;
    for conditioning in ["class", "text"] {
        let sp = run("sp", conditioning, 64, None, plain());
        let base = run("mup-base", conditioning, 64, Some(64), plain());
        assert!(weights(&sp) == weights(&base), "{conditioning}: μP at its base width is not the standard run");

        let sp_wide = run("sp-wide", conditioning, 128, None, plain());
        let whole = run("mup-wide", conditioning, 128, Some(64), plain());
        assert!(weights(&sp_wide) != weights(&whole), "{conditioning}: μP at twice its base is the standard run");
        let stop = TrainOptions { stop_after: Some(4), ..Default::default() };
        let split = run("mup-split", conditioning, 128, Some(64), stop);
        let ckpt = latest_checkpoint(&split.run.dir).unwrap();
        train(&split, &TrainOptions { resume: Some(ckpt), ..Default::default() }).unwrap();
        assert!(weights(&whole) == weights(&split), "{conditioning}: μP weights differ after resume");
    }
}

/// The spike guard (`optim.skip_grad_z`, here so low that ordinary steps trip it): a skipped step
/// leaves the weights and optimiser state as they were, an applied one moves them; the z-scores are
/// logged once the window is full; a run resumed mid-way judges as the uninterrupted one (the window
/// rides in state.json) and ends with the same bytes.
#[test]
fn a_step_whose_gradient_norm_spikes_is_skipped_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let guarded = |name: &str| {
        let mut c = config(&data, tmp.path().join(name), "class");
        c.run.steps = 14;
        (c.optim.skip_grad_z, c.optim.spike_window) = (0.5, 4);
        (c.checkpoint.every, c.checkpoint.keep_last) = (1, 20);
        c.sample.every = 0;
        c
    };
    let whole = guarded("whole");
    let s = train(&whole, &TrainOptions::default()).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(whole.run.dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let skipped_by = |step: u64| lines[step as usize - 1]["skipped_steps"].as_u64().unwrap();
    assert!(s.skipped_steps > 0 && s.skipped_steps < 10, "{} of 14 steps skipped", s.skipped_steps);
    for v in &lines {
        let step = v["step"].as_u64().unwrap();
        assert_eq!(
            v.get("grad_norm_z").is_some(),
            step > 4,
            "step {step}: a z-score only once the window is full: {v}"
        );
    }
    // with no limit set nothing is skipped, but the z-scores are logged all the same (to choose one)
    let mut open = guarded("open");
    (open.optim.skip_grad_z, open.checkpoint.every) = (0.0, 100);
    assert_eq!(train(&open, &TrainOptions::default()).unwrap().skipped_steps, 0);
    let log = std::fs::read_to_string(open.run.dir.join("metrics.jsonl")).unwrap();
    let scored = log.lines().filter(|l| l.contains("\"grad_norm_z\"") && l.contains("\"loss_z\"")).count();
    assert_eq!(scored, 10, "steps 5 to 14 have z-scores:\n{log}");
    let ckpt = |c: &TrainConfig, step: u64, f: &str| read(c.run.dir.join(format!("checkpoints/step-{step:08}/{f}")));
    for step in 2..=14 {
        let skipped = skipped_by(step) > skipped_by(step - 1);
        for f in ["model.safetensors", "optim.safetensors"] {
            let same = ckpt(&whole, step, f) == ckpt(&whole, step - 1, f);
            assert_eq!(same, skipped, "step {step} (skipped: {skipped}): {f} unchanged: {same}");
        }
    }

    let split = guarded("split");
    train(&split, &TrainOptions { stop_after: Some(7), ..Default::default() }).unwrap();
    let resume = latest_checkpoint(&split.run.dir).unwrap();
    let s2 = train(&split, &TrainOptions { resume: Some(resume), ..Default::default() }).unwrap();
    assert_eq!(s2.skipped_steps, s.skipped_steps);
    assert!(ckpt(&whole, 14, "model.safetensors") == ckpt(&split, 14, "model.safetensors"), "resumed: weights differ");
    assert!(ckpt(&whole, 14, "state.json") == ckpt(&split, 14, "state.json"), "resumed: the state differs");
}

#[test]
fn bad_checkpoints_and_configs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"), "class");
    train(&cfg, &TrainOptions { resume: None, stop_after: Some(3), ..Default::default() }).unwrap();
    let ckpt = latest_checkpoint(&cfg.run.dir).unwrap();

    // a config that does not match the checkpoint: every mismatching name and shape is listed
    let mut wider = cfg.clone();
    wider.model.embed_dim = Some(128);
    wider.model.num_heads = Some(4);
    let e = format!(
        "{:#}",
        train(&wider, &TrainOptions { resume: Some(ckpt.clone()), stop_after: None, ..Default::default() })
            .unwrap_err()
    );
    assert!(
        e.contains("does not match the model config") && e.contains("word_embed.weight") && e.contains("[128, 16]"),
        "{e}"
    );

    // a corrupt checkpoint is refused by checksum, and the file is left as it was
    let model = ckpt.join("model.safetensors");
    let mut bytes = read(model.clone());
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&model, &bytes).unwrap();
    let e = format!(
        "{:#}",
        train(&cfg, &TrainOptions { resume: Some(ckpt.clone()), stop_after: None, ..Default::default() }).unwrap_err()
    );
    assert!(e.contains("model.safetensors") && e.contains("corrupt checkpoint"), "{e}");

    // an incomplete checkpoint (no DONE marker) is not offered by --resume auto
    std::fs::remove_file(ckpt.join("DONE")).unwrap();
    assert!(latest_checkpoint(&cfg.run.dir).is_none());

    // an unwritable run folder is named
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let mut bad = cfg.clone();
    bad.run.dir = blocker.join("run");
    let e = format!("{:#}", train(&bad, &TrainOptions::default()).unwrap_err());
    assert!(e.contains("cannot be created"), "{e}");
}

/// `[model.init]` sets a fresh start's initialisation (upstream's `tini`, `aln`, `alng`, `hd0`,
/// `diva`), survives the run folder's config.toml, and bad values are named before any data is read.
#[test]
fn model_init_sets_the_fresh_weights() {
    use infinity_trainer::train::{fresh_weights, Setup};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let path = tmp.path().join("c.toml");
    std::fs::write(&path, toml::to_string(&config(&data, tmp.path().join("run"), "class")).unwrap()).unwrap();
    let weights = |sets: &[&str]| {
        let c = TrainConfig::load(&path, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let Setup { mc, lay, .. } = Setup::open(&c).unwrap();
        let p = fresh_weights(&c, &mc, &lay);
        (c, p.get(&lay, "head.weight").to_vec(), p.get(&lay, "blocks.0.ffn.fc2.weight").to_vec())
    };
    let (plain, head, fc2) = weights(&[]);
    assert!(!toml::to_string(&plain).unwrap().contains("[model.init]"), "the defaults are not written out");
    let (c, zero_head, undivided) = weights(&["model.init.hd0=0", "model.init.diva=false"]);
    assert!(zero_head.iter().all(|&x| x == 0.0) && head.iter().any(|&x| x != 0.0));
    // the same draws, not divided by √(2·depth) (depth 2 here)
    for (a, b) in undivided.iter().zip(&fc2) {
        assert!((a / 2.0 - b).abs() <= 1e-6 * a.abs(), "{a} {b}");
    }
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("[model.init]") && text.contains("hd0 = 0.0") && text.contains("diva = false"), "{text}");
    std::fs::write(&path, text).unwrap();
    assert_eq!(TrainConfig::load(&path, &[]).unwrap(), c);
    let e = format!("{:#}", TrainConfig::load(&path, &["model.init.alng=-1".into()]).unwrap_err());
    assert!(e.contains("model.init.alng must be a finite number ≥ 0, found -1"), "{e}");
}

#[test]
fn config_files_reject_unknown_keys_and_take_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.toml");
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo-cpu.toml")).unwrap();
    std::fs::write(&path, &base).unwrap();
    use infinity_trainer::train::config::TrainConfig as C;
    let c = C::load(&path, &["optim.lr=0.01".into(), "run.steps=7".into()]).unwrap();
    assert_eq!((c.optim.lr, c.run.steps), (Some(0.01), 7));
    std::fs::write(&path, base.replace("clip = 2.0", "clip = 2.0\nclipp = 1.0")).unwrap();
    let e = format!("{:#}", C::load(&path, &[]).unwrap_err());
    assert!(e.contains("optim") && e.contains("clipp"), "{e}");
    std::fs::write(&path, &base).unwrap();
    let e = format!("{:#}", C::load(&path, &["data.micro_batch=5".into()]).unwrap_err());
    assert!(e.contains("the global batch must be a positive multiple of the micro-batch"), "{e}");
    // "auto", chosen at start, goes back to the run folder's config.toml as "auto"
    let c = C::load(&path, &["data.micro_batch=auto".into()]).unwrap();
    assert_eq!(c.data.micro_batch, MicroBatchSize::Auto);
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("micro_batch = \"auto\""), "{text}");
    std::fs::write(&path, text).unwrap();
    assert_eq!(C::load(&path, &[]).unwrap(), c);
    assert_eq!(
        C::load(&path, &["data.micro_batch=\"4\"".into()]).unwrap().data.micro_batch,
        MicroBatchSize::Samples(4)
    );
    for bad in ["most", "-2", "2.5"] {
        let e = format!("{:#}", C::load(&path, &[format!("data.micro_batch={bad}")]).unwrap_err());
        assert!(e.contains("at `data.micro_batch`") && e.contains("a number of samples or \"auto\""), "{bad}: {e}");
    }
    // the config crate would round 2.6 and read "3" as 3: refused, naming the key and its source
    for (set, want) in [
        ("run.steps=2.6", "--set run.steps: at `run.steps`: expected a whole number, found 2.6"),
        ("data.global_batch=7.5", "at `data.global_batch`: expected a whole number, found 7.5"),
        (
            "run.steps=\"3\"",
            "at `run.steps`: expected a number as TOML writes one (0.001, 1e-3; not in quotes), found \"3\"",
        ),
        ("checkpoint.background=\"on\"", "expected true or false (without quotes), found \"on\""),
        // and would read true as 1 and 1 as true
        ("optim.lr=true", "--set optim.lr: at `optim.lr`: expected a number, found true"),
        ("run.steps=true", "at `run.steps`: expected a number, found true"),
        (
            "loss.reweight_by_scale=0",
            "--set loss.reweight_by_scale: at `loss.reweight_by_scale`: expected true or false, found 0",
        ),
        // values a run only trips over later (a panic on a multi-rank run, an error at the first step)
        ("dist.timeout_s=-1", "dist.timeout_s must be a number of seconds from 0.001 to 604800 (a week), found -1"),
        (
            "dist.rdzv_timeout_s=0",
            "dist.rdzv_timeout_s must be a number of seconds from 0.001 to 604800 (a week), found 0",
        ),
        (
            "dist.timeout_s=1e20",
            "dist.timeout_s must be a number of seconds from 0.001 to 604800 (a week), found 100000000000000000000",
        ),
        ("optim.max_nonfinite=0", "optim.max_nonfinite must be at least 1"),
        ("run.log_every=0", "run.log_every must be at least 1"),
        ("sample.tau=0", "--set sample.tau: sample.tau must be a positive number (the temperature), found 0"),
        ("sample.cfg=nan", "sample.cfg must be a finite number (the guidance scale), found NaN"),
        ("sample.top_p=1.5", "sample.top_p must be in [0, 1] (0 or 1: no filtering), found 1.5"),
        ("data.short_cap_prob=-0.5", "data.short_cap_prob must be in [0, 1], found -0.5"),
        ("checkpoint.every_minutes=-1", "checkpoint.every_minutes must be a number of minutes ≥ 0 (0: by steps"),
        // a message about two keys names the source of the one overridden
        ("data.micro_batch=3", "--set data.micro_batch: data.global_batch (32) and data.micro_batch (3): the global"),
    ] {
        let e = format!("{:#}", C::load(&path, &[set.into()]).unwrap_err());
        assert!(e.contains(want), "{set}: {e}");
    }
    assert_eq!(C::load(&path, &["run.steps=3.0".into()]).unwrap().run.steps, 3, "a whole number written as a float");
    // a key missing because an override changed its table is the override's; an empty key part is named
    let e = format!("{:#}", C::load(&path, &["optim.decay.kind=wsd".into()]).unwrap_err());
    assert!(e.starts_with("--set optim.decay.kind: at `optim.decay.decay_fraction`: missing"), "{e}");
    // (a key the file lacks is the file's, whatever else of its table is overridden)
    let unseeded = tmp.path().join("unseeded.toml");
    std::fs::write(&unseeded, base.replace("seed = ", "# seed = ")).unwrap();
    for set in ["run.steps=5", "run={steps=5}"] {
        let e = format!("{:#}", C::load(&unseeded, &[set.into()]).unwrap_err());
        assert!(e.starts_with(&format!("{}: at `run.seed`: missing", unseeded.display())), "{set}: {e}");
    }
    let e = format!("{:#}", C::load(&path, &["optim..lr=1".into()]).unwrap_err());
    assert!(e.contains("`optim..lr` has an empty part"), "{e}");
    // a typo in a file another `extends` is that file's
    let (typo, top) = (tmp.path().join("typo.toml"), tmp.path().join("top.toml"));
    std::fs::write(
        &typo,
        format!(
            "{base}
[model.init]
hd00 = 1.0
"
        ),
    )
    .unwrap();
    std::fs::write(&top, "extends = \"typo.toml\"\n[run]\nsteps = 4\n").unwrap();
    let e = format!("{:#}", C::load(&top, &[]).unwrap_err());
    assert!(e.starts_with(&format!("{}: at `model.init.hd00`", typo.display())), "{e}");
    let e = format!("{:#}", C::load(&path, &["val.dir=x".into(), "val.max_rows=0".into()]).unwrap_err());
    assert!(e.starts_with("--set val.max_rows: val.max_rows must be at least 1"), "{e}");
    // the key a check is about names the source, not a key its message mentions as context
    let other = tmp.path().join("max-rows-0.toml");
    std::fs::write(&other, format!("{base}\n[val]\nmax_rows = 0\n")).unwrap();
    let e = format!("{:#}", C::load(&other, &["val.dir=x".into()]).unwrap_err());
    assert!(e.starts_with(&format!("{}: val.max_rows must be", other.display())), "{e}");
    // run.peak_tflops: "auto" by default and back from config.toml as "auto"; a number; nothing else
    assert_eq!(c.run.peak_tflops, PeakTflops::Auto);
    let c = C::load(&path, &["run.peak_tflops=790".into()]).unwrap();
    assert_eq!(c.run.peak_tflops, PeakTflops::Tflops(790.0));
    std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(C::load(&path, &[]).unwrap(), c);
    assert_eq!(C::load(&path, &["run.peak_tflops=auto".into()]).unwrap().run.peak_tflops, PeakTflops::Auto);
    for bad in ["fast", "0", "-1", "nan"] {
        let e = format!("{:#}", C::load(&path, &[format!("run.peak_tflops={bad}")]).unwrap_err());
        assert!(e.contains("run.peak_tflops") && e.contains("a positive number of TFLOP/s or \"auto\""), "{bad}: {e}");
    }
}

/// `checkpoint.every_minutes`: a checkpoint once that long has passed since the last one, besides the
/// ones by steps (here at every step: the minutes are shorter than a step); 0 saves by steps alone.
#[test]
fn checkpoints_are_saved_by_the_clock_too() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let checkpoints = |minutes: f64| -> Vec<String> {
        let mut c = common::tiny_config(&data, tmp.path().join(format!("run-{minutes}")));
        (c.checkpoint.every, c.checkpoint.every_minutes, c.checkpoint.keep_last) = (0, minutes, 10);
        // (written in the step loop: none is in flight when the clock is read, which would skip a step)
        c.checkpoint.background = false;
        train(&c, &TrainOptions::default()).unwrap();
        let dir = c.run.dir.join("checkpoints");
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(checkpoints(1e-9), (1..=6).map(|s| format!("step-{s:08}")).collect::<Vec<_>>());
    assert_eq!(checkpoints(0.0), ["step-00000006"]);
}

/// `data.micro_batch = "auto"` on the CPU takes a rank's whole share of the global batch (one
/// micro-step), records it in derived.json, and trains the same bytes as that number written out.
#[test]
fn micro_batch_auto_on_the_cpu_is_a_ranks_share() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = |name: &str, micro: MicroBatchSize| {
        let mut cfg = config(&data, tmp.path().join(name), "class");
        (cfg.run.steps, cfg.sample.every, cfg.data.micro_batch) = (2, 0, micro);
        train(&cfg, &TrainOptions::default()).unwrap();
        let derived: serde_json::Value = serde_json::from_slice(&read(cfg.run.dir.join("derived.json"))).unwrap();
        assert_eq!((derived["micro_batch"].as_u64(), derived["grad_accumulation"].as_u64()), (Some(8), Some(1)));
        read(cfg.run.dir.join("checkpoints/step-00000002/model.safetensors"))
    };
    assert!(
        run("auto", MicroBatchSize::Auto) == run("eight", MicroBatchSize::Samples(8)),
        "auto trains as micro_batch = 8"
    );
}

#[test]
fn every_preset_in_configs_loads_and_extends_merges() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut files = vec![];
    for dir in [root.clone(), root.join("upstream")] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") && !p.ends_with("base.toml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 17, "found {} presets", files.len());
    for f in &files {
        let c = TrainConfig::load(f, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        assert!(infinity_trainer::model::ModelConfig::preset(&c.model.preset).is_some(), "{}", f.display());
    }
    let c = TrainConfig::load(&root.join("upstream/2b-512.toml"), &[]).unwrap();
    assert_eq!((c.model.preset.as_str(), c.optim.clip, c.optim.adamw.beta2), ("2b", 5.0, 0.97), "base values merge");
    // upstream trains with bf16 autocast (--fp16=2): its sizes take bf16 on a GPU
    assert_eq!(c.run.precision, infinity_trainer::train::config::Precision::Bf16);
    // the rate is upstream's tblr · global_batch / 256, so it follows the batch
    let upstream = root.join("upstream/2b-512.toml");
    assert_eq!((c.optim.lr, c.optim.lr_per_256, c.peak_lr()), (None, Some(6e-3), 6e-3 * 128.0 / 256.0));
    let batch = TrainConfig::load(&upstream, &["data.global_batch=32".into(), "data.micro_batch=4".into()]).unwrap();
    assert_eq!(batch.peak_lr(), 7.5e-4);
    // a rate of its own replaces it (the later of the two wins), and the run folder records that one
    let own = TrainConfig::load(&upstream, &["optim.lr=1e-4".into()]).unwrap();
    assert_eq!((own.optim.lr, own.optim.lr_per_256, own.peak_lr()), (Some(1e-4), None, 1e-4));
    assert!(!toml::to_string(&own).unwrap().contains("lr_per_256"));
    let later = ["optim.lr=1e-4".into(), "optim.lr_per_256=1e-3".into()];
    assert_eq!(TrainConfig::load(&upstream, &later).unwrap().peak_lr(), 1e-3 * 128.0 / 256.0);

    // the extending file wins; a cycle is an error naming the files
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root.join("upstream/base.toml")).unwrap();
    std::fs::write(tmp.path().join("base.toml"), base).unwrap();
    let child = "extends = \"base.toml\"\n[run]\ndir = \"r\"\nsteps = 7\n[model]\npreset = \"tiny\"\n\
                 [data]\ndir = \"d\"\nglobal_batch = 4\nmicro_batch = 2\n[optim]\nlr = 1e-3\nclip = 1.5\n";
    std::fs::write(tmp.path().join("child.toml"), child).unwrap();
    let c = TrainConfig::load(&tmp.path().join("child.toml"), &[]).unwrap();
    assert_eq!((c.run.steps, c.run.log_every, c.optim.clip, c.optim.adamw.weight_decay), (7, 50, 1.5, 0.005));
    // the child's own rate replaces the base's rate per 256 samples
    assert_eq!((c.optim.lr, c.optim.lr_per_256, c.peak_lr()), (Some(1e-3), None, 1e-3));
    // both in one file: no order says which, so it is refused
    std::fs::write(tmp.path().join("both.toml"), child.replace("lr = 1e-3", "lr = 1e-3\nlr_per_256 = 1e-3")).unwrap();
    let e = format!("{:#}", TrainConfig::load(&tmp.path().join("both.toml"), &[]).unwrap_err());
    assert!(e.contains("both.toml: optim.lr and optim.lr_per_256 set one value: give one"), "{e}");
    std::fs::write(tmp.path().join("a.toml"), "extends = \"b.toml\"").unwrap();
    std::fs::write(tmp.path().join("b.toml"), "extends = \"a.toml\"").unwrap();
    let e = format!("{:#}", TrainConfig::load(&tmp.path().join("a.toml"), &[]).unwrap_err());
    assert!(e.contains("`extends` makes a cycle: ") && e.matches("makes a cycle").count() == 1, "{e}");
    assert!(e.contains("a.toml extends ") && e.contains("b.toml extends "), "{e}");
}

/// A closed stdout and stderr (a log pipe that died, the launcher killed) do not stop a run: it trains to
/// its end, writes its summary and exits 0, where a print to the closed pipe panicked (exit 101).
#[test]
fn a_run_whose_output_pipes_close_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"), "class");
    (cfg.run.log_every, cfg.sample.every) = (1, 0);
    let cfg_path = tmp.path().join("train.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
        .args(["train", cfg_path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop((child.stdout.take(), child.stderr.take())); // both pipes closed before the first line
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let summary = std::fs::read_to_string(cfg.run.dir.join("summary.json")).unwrap();
    assert!(summary.contains("\"finished\": true"), "{summary}");
}

/// A full disk, simulated with a file-size limit (`ulimit -f`, SIGXFSZ ignored so writes fail with
/// EFBIG): the run stops with an error naming the file, and the checkpoint saved before is intact.
#[test]
fn a_full_disk_stops_the_run_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"), "class");
    cfg.sample.every = 0;
    train(&cfg, &TrainOptions { resume: None, stop_after: Some(3), ..Default::default() }).unwrap();
    let before = latest_checkpoint(&cfg.run.dir).unwrap();
    let model_bytes = read(before.join("model.safetensors"));

    let cfg_path = tmp.path().join("train.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    // 64 KiB per file: logs fit, a model checkpoint (≈ 150 KB f32) does not
    let out = std::process::Command::new("bash")
        .args(["-c", "trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_infinity"))
        .args(["train", cfg_path.to_str().unwrap(), "--resume", "auto"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "training must fail when the disk is full");
    assert!(stderr.contains("model.safetensors") || stderr.contains("optim.safetensors"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // the earlier checkpoint is still the newest complete one, byte for byte
    assert_eq!(latest_checkpoint(&cfg.run.dir).unwrap(), before);
    assert!(read(before.join("model.safetensors")) == model_bytes);
    train(&cfg, &TrainOptions { resume: Some(before), stop_after: None, ..Default::default() }).unwrap();
}

/// `run.device`: `auto` on a machine without a GPU trains on the CPU, the same bytes as `cpu`; `cuda`
/// there is a clear error naming the key and the reason. (On a GPU machine with the `cuda` feature,
/// trainer/tests/gpu_model.rs covers the GPU path.)
#[test]
fn device_auto_falls_back_to_the_cpu_and_cuda_without_a_gpu_is_named() {
    #[cfg(feature = "cuda")]
    if infinity_trainer::gpu::cuda_available() {
        println!("skipped: this machine has a GPU (the fallback needs none)");
        return;
    }
    use infinity_trainer::train::config::DeviceChoice;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut runs = Vec::new();
    for (name, device) in [("cpu", DeviceChoice::Cpu), ("auto", DeviceChoice::Auto)] {
        let mut cfg = config(&data, tmp.path().join(name), "class");
        (cfg.run.steps, cfg.run.device, cfg.sample.every) = (2, device, 0);
        train(&cfg, &TrainOptions::default()).unwrap();
        runs.push(read(tmp.path().join(name).join("checkpoints/step-00000002/model.safetensors")));
    }
    assert!(runs[0] == runs[1], "device = auto without a GPU must train exactly as device = cpu");
    let mut cfg = config(&data, tmp.path().join("cuda"), "class");
    cfg.run.device = DeviceChoice::Cuda;
    let e = format!("{:#}", train(&cfg, &TrainOptions::default()).unwrap_err());
    assert!(e.contains("run.device = \"cuda\""), "{e}");
    assert!(e.contains("no CUDA") || e.contains("--features cuda"), "{e}");
    // no restart helps: exit 2, which `infinity launch` does not restart (it exited 1 and was restarted
    // to fail again), and `--check` says so too; as for a backend this build lacks and rank variables
    // that contradict each other
    let cfg_path = tmp.path().join("cuda.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let cpu = "run.device=cpu";
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str); // arguments, environment, message
    let cases: [Case; 5] = [
        (&[], &[], "run.device = \"cuda\""),
        (&["--check"], &[], "run.device = \"cuda\""),
        (
            &["--check", "--set", cpu, "--set", "dist.backend=nccl"],
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")],
            "`cuda` feature",
        ),
        (&["--check", "--set", cpu], &[("RANK", "5"), ("WORLD_SIZE", "2")], "RANK"),
        (&["--check", "--set", cpu], &[("RANK", "0")], "WORLD_SIZE"),
    ];
    for (args, env, want) in cases {
        if want == "`cuda` feature" && cfg!(feature = "cuda") {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
            .args(["train", cfg_path.to_str().unwrap()])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?} {env:?}: {stderr}");
    }
}

/// A bucket with fewer rows than a global batch is never drawn: `--check` and the run name it, and
/// the epochs count the rows an epoch draws.
#[test]
fn buckets_smaller_than_a_global_batch_are_named_as_never_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data); // 96 rows, about a quarter of them in the 0.666 template's bucket
    let mut cfg = config(&data, tmp.path().join("run"), "class");
    cfg.data.global_batch = 32;
    let lines = infinity_trainer::train::check::check(&cfg, 1, None, None).unwrap();
    let warning = lines.iter().find(|l| l.contains("never trained on")).expect("a warning line");
    assert!(warning.contains("0.666") && warning.contains("global batch of 32"), "{warning}");
    let run = lines.iter().find(|l| l.starts_with("run:")).unwrap();
    assert!(run.contains("epochs of the 64 rows an epoch draws"), "{run}");
    cfg.data.global_batch = 8;
    let lines = infinity_trainer::train::check::check(&cfg, 1, None, None).unwrap();
    assert!(!lines.iter().any(|l| l.contains("never trained on")), "{lines:?}");
}

/// A resume from another run's checkpoint into a run.dir that holds a run of its own is refused (the two
/// histories would share one folder), whether that run has checkpoints or only its log (stopped before
/// its first). A copy of the run's own checkpoint kept elsewhere resumes it. Into a fresh run.dir the
/// resume trains, and the same resume again (a retry) continues. A checkpoint without its config.toml
/// resumes with a line saying the settings were not compared.
#[test]
fn a_resume_from_elsewhere_does_not_mix_two_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = |name: &str| {
        let mut c = config(&data, tmp.path().join(name), "class");
        c.sample.every = 0;
        c
    };
    let (a, b, c) = (run("a"), run("b"), run("c"));
    train(&a, &TrainOptions::default()).unwrap();
    train(&b, &TrainOptions::default()).unwrap();
    let step3 = a.run.dir.join("checkpoints/step-00000003");
    let from_a = |stop_after| TrainOptions { resume: Some(step3.clone()), stop_after, ..Default::default() };
    let e = format!("{:#}", train(&b, &from_a(None)).unwrap_err());
    assert!(
        e.contains("holds another run (its own checkpoint of step 3)") && e.contains("mix the two histories"),
        "{e}"
    );
    // a run stopped before its first checkpoint holds its log
    let mut d = run("d");
    d.checkpoint.every = 0;
    train(&d, &TrainOptions { stop_after: Some(2), ..Default::default() }).unwrap();
    let e = format!("{:#}", train(&d, &from_a(None)).unwrap_err());
    assert!(e.contains("holds another run (metrics.jsonl from step 1)"), "{e}");
    // a copy of a run's own checkpoint kept elsewhere is its own
    let archived = tmp.path().join("archive/step-00000003");
    std::fs::create_dir_all(&archived).unwrap();
    for f in std::fs::read_dir(&step3).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, archived.join(f.file_name().unwrap())).unwrap();
    }
    let mut a_again = a.clone();
    a_again.run.steps = 4;
    train(&a_again, &TrainOptions { resume: Some(archived), ..Default::default() }).unwrap();
    // a run started from another's checkpoint at its last step: its summary has that step's figures
    let mut at_3 = run("at-3");
    at_3.run.steps = 3;
    let s = train(&at_3, &from_a(None)).unwrap();
    let loss_3 = std::fs::read_to_string(a.run.dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .nth(2)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap());
    assert_eq!((s.steps, Some(s.last_loss)), (3, loss_3));
    let summary = std::fs::read_to_string(at_3.run.dir.join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["loss"].as_f64(), loss_3, "{summary}");
    train(&c, &from_a(Some(4))).unwrap();
    let s = train(&c, &from_a(None)).unwrap();
    assert_eq!(s.steps, 6);
    let first = std::fs::read_to_string(c.run.dir.join("metrics.jsonl")).unwrap();
    assert!(first.starts_with("{\"step\":4,"), "{}", &first[..40]);
    let ckpt = c.run.dir.join("checkpoints/step-00000006");
    std::fs::remove_file(ckpt.join("config.toml")).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, Some(&ckpt), None).unwrap();
    assert!(lines.iter().any(|l| l.contains("(not compared: ") && l.contains("config.toml")), "{lines:?}");
}

/// A shard copied under another name (and listed) repeats its rows' ids: `--check` says so.
#[test]
fn repeated_ids_are_named_by_the_check() {
    use infinity_data::manifest::Manifest;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut m = Manifest::load(&data).unwrap();
    let mut copy = m.shards[0].clone();
    copy.file = "shard-copy.arrow".into();
    std::fs::copy(data.join(&m.shards[0].file), data.join(&copy.file)).unwrap();
    m.total_rows += copy.rows;
    let (rows, first) = (copy.rows, m.shards[0].file.clone());
    m.shards.push(copy);
    m.save(&data).unwrap();
    let cfg = config(&data, tmp.path().join("run"), "class");
    let lines = infinity_trainer::train::check::check(&cfg, 1, None, None).unwrap();
    let warning = lines.iter().find(|l| l.contains("repeat an earlier row's id")).expect("a warning");
    assert!(warning.starts_with(&format!("warning: {rows} rows")), "{warning} ({first})");
}

/// A requeued job whose command line names the step it once rewound to (`--resume RUN/checkpoints/step-3`
/// again, with the same config) continues the history that rewind began, rather than setting it aside
/// to compute the same steps again; another config rewinds as asked.
/// A class-conditioned run trained to its end in a fresh folder: the folder, its dataset, the config
/// and the run's checkpoint at step 3.
fn trained_with_step3() -> (tempfile::TempDir, PathBuf, TrainConfig, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"), "class");
    train(&cfg, &TrainOptions::default()).unwrap();
    let step3 = cfg.run.dir.join("checkpoints/step-00000003");
    (tmp, data, cfg, step3)
}

#[test]
fn a_repeated_rewind_with_the_same_config_continues_its_history() {
    let (_tmp, _data, cfg, step3) = trained_with_step3();
    let mut longer = cfg.clone();
    longer.run.steps = 9;
    let rewind = |c: &TrainConfig, stop_after| {
        train(c, &TrainOptions { resume: Some(step3.clone()), stop_after, ..Default::default() }).unwrap()
    };
    // the rewind, stopped at step 6 (its checkpoint written), then the same command line again
    assert_eq!(rewind(&longer, Some(6)).started_at, 3);
    let six = std::fs::read(cfg.run.dir.join("checkpoints/step-00000006/model.safetensors")).unwrap();
    let lines = infinity_trainer::train::check::check(&longer, 1, Some(&step3), None).unwrap();
    assert!(lines.iter().any(|l| l.contains("continuing from step 6 rather than computing the same steps again")));
    assert!(lines.iter().any(|l| l.contains("start: resume from") && l.ends_with("at step 6")), "{lines:?}");
    let s = rewind(&longer, None);
    assert_eq!((s.started_at, s.steps), (6, 9));
    let abandoned: Vec<_> =
        std::fs::read_dir(cfg.run.dir.join("abandoned")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(abandoned, ["after-step-00000003"]);
    assert!(std::fs::read(cfg.run.dir.join("checkpoints/step-00000006/model.safetensors")).unwrap() == six);
    // another config: a rewind as asked, the history since set aside
    let mut other = longer.clone();
    other.run.steps = 8;
    assert_eq!(rewind(&other, None).started_at, 3);
    assert!(cfg.run.dir.join("abandoned/after-step-00000003.1/step-00000009").is_dir());
    // that history goes on with yet other settings: no longer the rewind's, so the same rewind with
    // them rewinds (steps 4 to 8 were of the other settings)
    let mut then = other.clone();
    then.run.steps = 10;
    let newest = latest_checkpoint(&cfg.run.dir).unwrap();
    train(&then, &TrainOptions { resume: Some(newest), ..Default::default() }).unwrap();
    assert_eq!(rewind(&then, None).started_at, 3);
}

/// A branch (`--resume OTHER/checkpoints/step-3` into a new run.dir) requeued with the same command line
/// after it wrote checkpoints of its own continues from its newest, as a repeated rewind does, rather
/// than setting them aside to compute the same steps again.
#[test]
fn a_requeued_branch_continues_from_its_newest_checkpoint() {
    let (tmp, data, _cfg, step3) = trained_with_step3();
    let branch = |name: &str| {
        let mut c = config(&data, tmp.path().join(name), "class");
        c.run.steps = 9;
        c
    };

    let from3 = |c: &TrainConfig, stop_after| {
        train(c, &TrainOptions { resume: Some(step3.clone()), stop_after, ..Default::default() }).unwrap()
    };
    let requeued = branch("branch");
    assert_eq!(from3(&requeued, Some(6)).started_at, 3);
    let lines = infinity_trainer::train::check::check(&requeued, 1, Some(&step3), None).unwrap();
    assert!(lines.iter().any(|l| l.contains("continuing from step 6 rather than computing the same steps again")));
    let s = from3(&requeued, None);
    assert_eq!((s.started_at, s.steps), (6, 9));
    assert!(!requeued.run.dir.join("abandoned").exists());
    let whole = branch("whole");
    assert_eq!(from3(&whole, None).started_at, 3);
    let weights =
        |c: &TrainConfig| std::fs::read(c.run.dir.join("checkpoints/step-00000009/model.safetensors")).unwrap();
    assert!(weights(&requeued) == weights(&whole), "the requeued branch is the branch");
    // another source checkpoint of the same step is another branch: a rewind as asked
    let copy = tmp.path().join("copy/checkpoints/step-00000003");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(&step3).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let again = |stop_after| TrainOptions { resume: Some(copy.clone()), stop_after, ..Default::default() };
    assert_eq!(train(&requeued, &again(Some(6))).unwrap().started_at, 3);
    assert!(requeued.run.dir.join("abandoned/after-step-00000003").is_dir());
    // and that branch, requeued, continues too
    let s = train(&requeued, &again(None)).unwrap();
    assert_eq!((s.started_at, s.steps), (6, 9));
}

/// A rewind with the settings the run had recomputes the abandoned history's weights bit for bit: its own
/// checkpoints are still its own (not copies of the abandoned ones), so a requeue of the rewind and
/// `--resume auto` continue it.
#[test]
fn a_rewind_that_recomputes_the_same_weights_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let mut cfg = config(&data, tmp.path().join("run"), "class");
    cfg.run.steps = 9;
    train(&cfg, &TrainOptions::default()).unwrap();
    let step3 = cfg.run.dir.join("checkpoints/step-00000003");
    let rewind = TrainOptions { resume: Some(step3.clone()), stop_after: Some(6), ..Default::default() };
    assert_eq!(train(&cfg, &rewind).unwrap().steps, 6);
    let same =
        |a: &str, b: &str| std::fs::read(cfg.run.dir.join(a)).unwrap() == std::fs::read(cfg.run.dir.join(b)).unwrap();
    assert!(same(
        "checkpoints/step-00000006/model.safetensors",
        "abandoned/after-step-00000003/step-00000006/model.safetensors"
    ));
    let again = TrainOptions { resume: Some(step3), ..Default::default() };
    let s = train(&cfg, &again).unwrap();
    assert_eq!((s.started_at, s.steps), (6, 9));
    let newest = latest_checkpoint(&cfg.run.dir);
    let auto = TrainOptions { resume: newest, resume_auto: true, ..Default::default() };
    assert_eq!(train(&cfg, &auto).unwrap().started_at, 9);
}

/// Bits that are not their latents' BSQ (training never reads them, so a writer's convention that
/// differs goes unnoticed by the run): `--check` warns from a sample of rows.
#[test]
fn bits_that_are_not_their_latents_bsq_are_warned_of_by_the_check() {
    use infinity_data::manifest::Manifest;
    use infinity_data::writer::{DatasetWriter, RowData, WriterOptions};
    use infinity_data::{Checksums, Dataset};
    let tmp = tempfile::tempdir().unwrap();
    let (data, edited) = (tmp.path().join("data"), tmp.path().join("edited"));
    dataset(&data);
    let cfg = config(&edited, tmp.path().join("run"), "class");
    let ds = Dataset::open(&data, Checksums::Verify).unwrap();
    assert!(ds.manifest.latent.is_some());
    let header = Manifest { shards: Vec::new(), total_rows: 0, ..ds.manifest.clone() };
    let mut w = DatasetWriter::create(&edited, header, WriterOptions::default()).unwrap();
    for g in 0..ds.num_rows() {
        let mut row = RowData::from(ds.row(g));
        row.bits[0] ^= 1; // token 0, bit 0: the coarsest scale's
        w.push(row).unwrap();
    }
    w.finish().unwrap();
    std::fs::copy(data.join("tokenizer.safetensors"), edited.join("tokenizer.safetensors")).unwrap();
    let lines = infinity_trainer::train::check::check(&cfg, 1, None, None).unwrap();
    let warning = lines.iter().find(|l| l.contains("not the multi-scale BSQ of their latent")).expect("a warning");
    assert!(warning.starts_with("warning: 64 of 64 rows checked") && warning.contains("token 0, bit 0"), "{warning}");
    let cfg = config(&data, tmp.path().join("run"), "class");
    let lines = infinity_trainer::train::check::check(&cfg, 1, None, None).unwrap();
    assert!(!lines.iter().any(|l| l.contains("multi-scale BSQ")), "{lines:?}");
}

/// The test dataset's first 16 rows as a validation set, and a freshly initialised model to evaluate.
struct ValFixture {
    tmp: tempfile::TempDir,
    cfg: TrainConfig,
    setup: infinity_trainer::train::Setup,
    params: infinity_trainer::model::params::Params<f32>,
}

impl ValFixture {
    fn new() -> ValFixture {
        use infinity_trainer::model::init::{init_params, InitConfig};
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        dataset(&data);
        let mut cfg = config(&data, tmp.path().join("run"), "class");
        (cfg.val.dir, cfg.val.max_rows) = (Some(data.clone()), 16);
        let setup = infinity_trainer::train::Setup::open(&cfg).unwrap();
        let params = init_params(&setup.mc, &setup.lay, &InitConfig::default(), 3);
        ValFixture { tmp, cfg, setup, params }
    }

    /// The validation loss of the model, evaluated under `cfg` as the model `mc`.
    fn loss(&self, cfg: &TrainConfig, mc: &infinity_trainer::model::config::ModelConfig) -> f64 {
        use infinity_trainer::train::{compute::Compute, dist::Dist, val::Validator};
        let lay = &self.setup.lay;
        let v = Validator::new(cfg, mc, &self.setup.ds, 4).unwrap().expect("a validation set");
        let mut compute = Compute::open(&cfg.run, mc, lay).unwrap();
        let m = v.run(cfg, (mc, lay), &self.params, &mut Dist::solo(), &mut compute, &mut Default::default());
        m.unwrap().0.loss
    }
}

/// Validation evaluates the whole model, as upstream's `eval()`: no drop path, whatever the rate.
#[test]
fn validation_is_not_subject_to_drop_path() {
    let f = ValFixture::new();
    let losses: Vec<f64> = [0.0, 0.5]
        .into_iter()
        .map(|rate| {
            let mut mc = f.setup.mc.clone();
            mc.drop_path_rate = rate; // depth 2: the second block's branches at 0.5
            f.loss(&f.cfg, &mc)
        })
        .collect();
    assert_eq!(losses[0], losses[1], "validation loss moved with drop_path_rate");
}

/// Validation's self-correction is the training's unless `val.p_max` / `val.apply_layers` fix it: then
/// runs that train at other strengths are measured alike (a self-correction ablation's losses compare).
#[test]
fn validation_measures_at_its_own_self_correction_strength() {
    let f = ValFixture::new();
    let val_loss = |train_p: f64, val_p: Option<f64>| {
        let mut cfg = f.cfg.clone();
        (cfg.bsc.p_max, cfg.val.p_max) = (train_p, val_p);
        f.loss(&cfg, &f.setup.mc)
    };
    assert_eq!(val_loss(0.3, None), val_loss(0.3, Some(0.3)), "unset is the training's strength");
    assert_ne!(val_loss(0.3, None), val_loss(0.1, None), "the training's strength is validation's");
    assert_eq!(val_loss(0.3, Some(0.2)), val_loss(0.1, Some(0.2)), "a fixed strength measures alike");
    assert_ne!(val_loss(0.3, Some(0.0)), val_loss(0.3, Some(0.2)));
    let mut bad = f.cfg.clone();
    bad.val.p_max = Some(1.0);
    let path = f.tmp.path().join("bad.toml");
    std::fs::write(&path, toml::to_string(&bad).unwrap()).unwrap();
    let e = format!("{:#}", TrainConfig::load(&path, &[]).unwrap_err());
    assert!(e.contains("val.p_max must be in [0, 1), found 1"), "{e}");
}

/// Spatial patchify (upstream's 8B tokens): a dataset stored at twice the schedule's sides trains a
/// model of 4·d bits per token on the transformer's schedule (as many tokens as the plain dataset),
/// samples its preview grids and resumes exactly; a model and a dataset that disagree are named
/// before the first step.
#[test]
fn spatial_patchify_trains_on_a_patchified_dataset_and_mismatches_are_named() {
    use infinity_trainer::train::Setup;
    let tmp = tempfile::tempdir().unwrap();
    let (plain, patched) = (tmp.path().join("plain"), tmp.path().join("patched"));
    dataset(&plain);
    let opts = SynthOptions {
        rows: 96,
        fit_rows: 48,
        d: 4,
        patch: 2, // the images of the plain dataset's (twice the latent sides, half the patch)
        spatial_patchify: true,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    synth(&patched, &opts).unwrap();
    let patchify = |data: &Path, run: &str, on: Option<bool>| {
        let mut c = config(data, tmp.path().join(run), "class");
        c.model.apply_spatial_patchify = on;
        c
    };
    let setup = Setup::open(&patchify(&patched, "x", Some(true))).unwrap();
    assert_eq!((setup.mc.d, setup.mc.d_vae()), (16, 4));
    let plain_mix = Setup::open(&config(&plain, tmp.path().join("y"), "class")).unwrap().mix;
    assert_eq!(setup.mix.mean_tokens, plain_mix.mean_tokens, "the transformer's tokens are the plain schedule's");

    let whole = patchify(&patched, "whole", Some(true));
    let s = train(&whole, &TrainOptions::default()).unwrap();
    assert!(s.last_loss.is_finite() && s.last_loss < 0.75, "loss {}", s.last_loss);
    assert!(read(whole.run.dir.join("samples/step-00000006.png")).len() > 100, "no preview grid");
    // the step's metrics count the transformer's tokens (a quarter of the stored grid's): its
    // throughput (and MFU) and its token accuracy, the scales' weighted by their tokens
    let text = std::fs::read_to_string(whole.run.dir.join("metrics.jsonl")).unwrap();
    let stored = infinity_data::Manifest::load(&patched).unwrap().schedules;
    for line in text.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let bucket = m["bucket"].as_u64().unwrap() as usize;
        // (a stored 2h × 2w grid is h × w of the transformer's tokens)
        let tokens: Vec<f64> = stored[bucket].hw().iter().map(|&(h, w)| (h / 2 * (w / 2)) as f64).collect();
        let per_sample = m["tokens_per_s"].as_f64().unwrap() / m["samples_per_s"].as_f64().unwrap();
        assert!((per_sample - tokens.iter().sum::<f64>()).abs() < 1e-6, "{per_sample} tokens per sample: {line}");
        let scale_acc: Vec<f64> =
            m["scale_token_acc"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(tokens.len(), scale_acc.len());
        let mean = scale_acc.iter().zip(&tokens).map(|(a, n)| a * n).sum::<f64>() / tokens.iter().sum::<f64>();
        assert!((m["token_acc"].as_f64().unwrap() - mean).abs() < 1e-9, "token_acc: {line}");
        // the step time's parts: the data's wait and preparation, the optimiser's
        let part = |k: &str| m[k].as_f64().unwrap();
        assert!(part("data_s") > 0.0 && part("optimizer_s") > 0.0, "{line}");
        assert!(part("data_s") + part("optimizer_s") <= part("step_time_s"), "{line}");
    }
    let split = patchify(&patched, "split", Some(true));
    train(&split, &TrainOptions { stop_after: Some(4), ..Default::default() }).unwrap();
    let ckpt = latest_checkpoint(&split.run.dir).unwrap();
    train(&split, &TrainOptions { resume: Some(ckpt), ..Default::default() }).unwrap();
    let end = |c: &TrainConfig| read(c.run.dir.join("checkpoints/step-00000006/model.safetensors"));
    assert!(end(&whole) == end(&split), "weights differ after resume");

    let err = |c: TrainConfig| format!("{:#}", Setup::open(&c).err().expect("a mismatch"));
    let e = err(patchify(&patched, "a", None));
    assert!(e.contains("stored for spatial patchify") && e.contains("apply_spatial_patchify = true"), "{e}");
    let e = err(patchify(&plain, "b", Some(true)));
    assert!(e.contains("--spatial-patchify") && e.contains("1.000/demo5"), "{e}");

    // `model info --dataset` counts the model a run trains on it: of 2×2 patches, the transformer's tokens
    let model_info = |preset: &str, data: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
            .args(["model", "info", "--preset", preset, "--classes", "24", "--dataset"])
            .arg(data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = model_info("tiny", &patched);
    assert!(text.contains("counted with model.apply_spatial_patchify = true"), "{text}");
    let numel = infinity_trainer::model::Layout::new(&setup.mc).numel;
    assert!(text.contains(&format!("parameters: {numel} ")), "{text}");
    let square = stored.iter().find(|s| s.h_div_w_template == "1.000").unwrap();
    let tokens: usize = square.hw().iter().map(|&(h, w)| h / 2 * (w / 2)).sum();
    assert!(text.contains(&format!("schedule {}: L = {tokens} (the dataset's", square.name)), "{text}");
    // and a preset of patches (8b's) on a dataset stored at the transformer's sides, without them
    let text = model_info("8b", &plain);
    let said = "stored at the transformer's sides: counted with model.apply_spatial_patchify = false";
    assert!(text.contains(said) && !text.contains("(spatial patchify"), "{text}");
}

/// One job per run folder: while another holds the folder's lock, a run (fresh or resumed) stops
/// before it writes anything.
#[test]
fn a_second_job_on_a_run_folder_is_refused() {
    use infinity_trainer::train::run_lock::RunLock;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"), "class");
    std::fs::create_dir_all(&cfg.run.dir).unwrap();
    let held = RunLock::acquire(&cfg.run.dir).unwrap();
    let e = format!("{:#}", train(&cfg, &TrainOptions::default()).expect_err("refused"));
    assert!(e.contains("is in use by another training job (pid "), "{e}");
    assert!(!cfg.run.dir.join("config.toml").exists(), "the refused job wrote into the folder");
    drop(held);
    assert_eq!(train(&cfg, &TrainOptions::default()).unwrap().steps, 6);
}

/// Upstream's `--cdec`: the clip decays from 1.2 × `optim.clip` to 0.2 × over the run, logged each step.
#[test]
fn a_decaying_clip_as_upstreams_cdec() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = |name: &str, clip: f64, decay: bool| {
        let mut c = config(&data, tmp.path().join(name), "class");
        (c.run.steps, c.optim.clip, c.optim.clip_decay, c.sample.every, c.checkpoint.every) = (5, clip, decay, 0, 100);
        train(&c, &TrainOptions::default()).unwrap();
        let text = std::fs::read_to_string(c.run.dir.join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (lines, read(c.run.dir.join("checkpoints/step-00000005/model.safetensors")))
    };
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    let (free, _) = run("free", 0.0, false);
    assert!(free[0].get("clip").is_none(), "a constant clip is not logged: {}", free[0]);
    // a clip at the first step's norm: 1.2 × leaves step 0 alone, the decayed ones bite after it
    let g0 = f(&free[0], "grad_norm");
    let (_, fixed_weights) = run("fixed", g0, false);
    let (decayed, decayed_weights) = run("decayed", g0, true);
    for (s, m) in decayed.iter().enumerate() {
        let want = g0 * (0.3f64.powf(20.0 * s as f64 / 4.0) + 0.2);
        assert!((f(m, "clip") - want).abs() <= 1e-12 * want, "step {s}: {m}");
    }
    // (1.2 × g0 left step 0 unclipped: step 1 starts from the weights the unclipped run has)
    assert_eq!(f(&decayed[1], "grad_norm"), f(&free[1], "grad_norm"), "step 0 was clipped");
    assert!(f(&decayed[1], "grad_norm") > f(&decayed[1], "clip"), "the decayed clip never bit: {decayed:?}");
    assert!(decayed_weights != fixed_weights, "the decaying clip changed nothing");

    let path = tmp.path().join("c.toml");
    std::fs::write(&path, toml::to_string(&config(&data, tmp.path().join("off"), "class")).unwrap()).unwrap();
    let sets = ["optim.clip=0".to_string(), "optim.clip_decay=true".to_string()];
    let e = format!("{:#}", TrainConfig::load(&path, &sets).unwrap_err());
    assert!(e.contains("optim.clip_decay decays optim.clip, which is 0"), "{e}");
}

/// Upstream's `bitloss_type = 'sum'` (gradients d times the mean's, the logged loss per bit alike) and
/// `twde` (weight decay along a cosine to its end value, logged each step, resumed exactly).
#[test]
fn bitloss_sum_and_a_weight_decay_schedule_as_upstream_has_them() {
    use infinity_trainer::train::config::BitLoss;
    use infinity_trainer::train::Setup;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = |name: &str, set: &dyn Fn(&mut TrainConfig)| {
        let mut c = config(&data, tmp.path().join(name), "class");
        (c.run.steps, c.optim.clip, c.sample.every, c.checkpoint.every) = (5, 0.0, 0, 100);
        set(&mut c);
        (train(&c, &TrainOptions::default()).unwrap(), c)
    };
    let metrics = |c: &TrainConfig| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(c.run.dir.join("metrics.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (_, mean) = run("mean", &|_| {});
    let (_, sum) = run("sum", &|c| c.loss.bitloss = BitLoss::Sum);
    let d = Setup::open(&mean).unwrap().mc.d as f64;
    let (a, b) = (&metrics(&mean)[0], &metrics(&sum)[0]);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    assert!((f(a, "loss") - f(b, "loss")).abs() <= 1e-6 * f(a, "loss"), "the loss is logged per bit: {a} {b}");
    let ratio = f(b, "grad_norm") / f(a, "grad_norm");
    assert!((ratio - d).abs() <= 1e-4 * d, "gradient norm ratio {ratio}, d = {d}");
    assert!(a.get("weight_decay").is_none(), "a constant weight decay is not logged: {a}");

    let scheduled = |c: &mut TrainConfig| {
        (c.optim.adamw.weight_decay, c.optim.adamw.weight_decay_end) = (0.5, Some(0.0));
    };
    let (_, wd) = run("wd", &scheduled);
    let logged: Vec<f64> = metrics(&wd).iter().map(|v| f(v, "weight_decay")).collect();
    let want = [0.5, 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0, 0.25, 0.0732233, 0.0];
    for (got, want) in logged.iter().zip(want) {
        assert!((got - want).abs() < 1e-6, "{logged:?}");
    }
    let weights = |c: &TrainConfig| read(c.run.dir.join("checkpoints/step-00000005/model.safetensors"));
    assert!(weights(&wd) != weights(&mean), "the schedule's decay changed nothing");
    // stopped at step 2 and resumed: the same weights as the whole run
    let split = {
        let mut c = config(&data, tmp.path().join("split"), "class");
        (c.run.steps, c.optim.clip, c.sample.every, c.checkpoint.every) = (5, 0.0, 0, 1);
        scheduled(&mut c);
        c
    };
    train(&split, &TrainOptions { stop_after: Some(2), ..Default::default() }).unwrap();
    let resume = latest_checkpoint(&split.run.dir).unwrap();
    train(&split, &TrainOptions { resume: Some(resume), ..Default::default() }).unwrap();
    assert!(weights(&split) == weights(&wd), "resumed under a weight decay schedule: weights differ");

    let path = tmp.path().join("c.toml");
    std::fs::write(&path, toml::to_string(&mean).unwrap()).unwrap();
    let refused = |set: &str| format!("{:#}", TrainConfig::load(&path, &[set.to_string()]).unwrap_err());
    let e = refused("optim.adamw.weight_decay_end=-1");
    assert!(e.contains("optim.adamw.weight_decay_end must be a finite number ≥ 0"), "{e}");
    let e = refused("loss.bitloss=max");
    assert!(e.contains("bitloss") && e.contains("mean") && e.contains("sum"), "{e}");
}

/// A resume under the same config onto a dataset of another layout (text features of another width)
/// names what the dataset changed in the model, not only the tensors whose shapes differ.
#[test]
fn a_resume_onto_another_text_width_names_the_dataset_change() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let cfg = config(&data, tmp.path().join("run"), "text");
    train(&cfg, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
    let wide = tmp.path().join("wide");
    let opts = SynthOptions {
        rows: 96,
        text_width: 48,
        tokenizer: Some(data.join("tokenizer.safetensors")),
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    synth(&wide, &opts).unwrap();
    let mut other = cfg.clone();
    other.data.dir = wide;
    let e = train(
        &other,
        &TrainOptions { resume: Some(cfg.run.dir.join("checkpoints/step-00000003")), ..Default::default() },
    )
    .unwrap_err();
    let want =
        "model settings changed since the checkpoint: model.text_channels (from the dataset: its text features' \
                width): 32 → 48";
    assert!(format!("{e:#}").contains(want), "{e:#}");
}

/// A model whose state the host cannot hold (here under `ulimit -v`) is refused by the run before
/// anything is allocated, naming the need and the bound, with exit 2 and no run folder left (the
/// allocation aborted the process with a backtrace); `--check`, which may run on a login node with less
/// memory than the job's nodes, warns of it.
#[test]
fn a_model_beyond_the_hosts_memory_is_refused_before_it_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data);
    let run = tmp.path().join("run");
    let path = common::config_file(&config(&data, run.clone(), "class"), tmp.path());
    let big = ["--set", "model.depth=24", "--set", "model.embed_dim=1024", "--set", "model.num_heads=8"];
    for check in [true, false] {
        let limited = "ulimit -v 3000000 && exec \"$@\"";
        let out = std::process::Command::new("sh")
            .args(["-c", limited, "sh", env!("CARGO_BIN_EXE_infinity"), "train"])
            .arg(&path)
            .args(big)
            .args(check.then_some("--check"))
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(if check { 0 } else { 2 }), "--check {check}: {said}");
        // (the least bound: the ulimit, or a container's or machine's smaller still)
        assert!(said.contains("GB of host memory on this rank") && said.contains(", more than "), "{said}");
        assert_eq!(said.contains("warning: the model's state needs"), check, "{said}");
        assert!(!run.exists(), "--check {check}: left {}", run.display());
    }
}
