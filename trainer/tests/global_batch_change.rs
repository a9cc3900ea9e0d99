//! A run resumed with another `data.global_batch`: it trains on at the new size from the checkpoint's
//! step, `--check` says what changes, `derived.json` records each size from its step (so a sweep's
//! tokens and compute count each at its own), and a resume after the change ends where the run
//! resumed once does, bit for bit; a mix of datasets the same.

mod common;

use std::path::{Path, PathBuf};

use infinity_trainer::train::check::check;
use infinity_trainer::train::config::{MicroBatchSize, TrainConfig};
use infinity_trainer::train::{latest_checkpoint, train, TrainOptions};

/// [`common::tiny_config`] at global batch `g` (micro-batches of 8) for `steps` steps.
fn config(data: &Path, run: PathBuf, g: usize, steps: u64) -> TrainConfig {
    let mut c = common::tiny_config(data, run);
    (c.data.global_batch, c.data.micro_batch, c.run.steps) = (g, MicroBatchSize::Samples(8), steps);
    c
}

fn json(p: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn a_resume_at_another_global_batch_trains_on_and_resumes_again_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::tiny_dataset(&data, 96);
    let resume = |dir: PathBuf| TrainOptions { resume: Some(dir), ..Default::default() };

    // 3 steps at 8, then 16 to step 8
    let once = config(&data, tmp.path().join("once"), 8, 8);
    train(&once, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
    let step3 = latest_checkpoint(&once.run.dir).unwrap();
    assert!(step3.ends_with("step-00000003"), "{}", step3.display());
    let bigger = config(&data, once.run.dir.clone(), 16, 8);
    let lines = check(&bigger, 1, Some(&step3), None).unwrap();
    assert!(
        lines.iter().any(|l| l.contains("data.global_batch: 8 → 16 (from this step the rest of the epoch's rows")
            && l.contains("the peak learning rate stays")),
        "{lines:?}"
    );
    // the run's totals over its sizes: 3 steps of 8 rows, then 5 of 16
    let totals = lines.iter().find(|l| l.starts_with("resume: over its global batch sizes (8 to step 3, then 16): "));
    let tokens: f64 =
        totals.expect("a totals line").split(": ").nth(2).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert_eq!(train(&bigger, &resume(step3.clone())).unwrap().steps, 8);

    // the same, interrupted after step 7 (its newest checkpoint: 6, after the change) and resumed from there
    let twice = config(&data, tmp.path().join("twice"), 8, 8);
    train(&twice, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
    let bigger_twice = config(&data, twice.run.dir.clone(), 16, 8);
    let at3 = latest_checkpoint(&twice.run.dir).unwrap();
    train(&bigger_twice, &TrainOptions { resume: Some(at3), stop_after: Some(7), ..Default::default() }).unwrap();
    let step6 = latest_checkpoint(&twice.run.dir).unwrap();
    assert!(step6.ends_with("step-00000006"), "{}", step6.display());
    let state = json(step6.join("state.json"));
    assert_eq!(state["loader"]["global_batch"], 16);
    assert_eq!(state["loader"]["earlier_sizes"], serde_json::json!([{ "global_batch": 8, "until": 3 }]));
    assert_eq!(train(&bigger_twice, &resume(step6)).unwrap().steps, 8);
    let weights = |run: &Path| std::fs::read(latest_checkpoint(run).unwrap().join("model.safetensors")).unwrap();
    assert!(weights(&once.run.dir) == weights(&twice.run.dir), "a resume after the change trained other weights");
    // each step's line in metrics.jsonl says the rows it drew
    let jsonl = std::fs::read_to_string(once.run.dir.join("metrics.jsonl")).unwrap();
    let drawn: Vec<u64> = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["global_batch"].as_u64().unwrap())
        .collect();
    assert_eq!(drawn, [8, 8, 8, 16, 16, 16, 16, 16]);
    // ... and counts on across the change (`samples_seen`: 3 × 8 + 5 × 16), as the twice-resumed run
    let seen = |run: &Path| {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        (last["samples_seen"].clone(), last["tokens_seen"].clone(), last["flops_seen"].clone())
    };
    assert_eq!(seen(&once.run.dir).0, 104);
    assert_eq!(seen(&once.run.dir), seen(&twice.run.dir));

    // each size from its step; the scaling tables count 3 steps at 8 and 5 at 16
    let derived = json(once.run.dir.join("derived.json"));
    let sizes = derived["global_batch_sizes"].as_array().expect("global_batch_sizes").clone();
    let at = |k: usize, key: &str| sizes[k][key].as_f64().unwrap();
    assert_eq!(
        (at(0, "global_batch"), at(0, "from_step"), at(1, "global_batch"), at(1, "from_step")),
        (8.0, 0.0, 16.0, 3.0)
    );
    assert_eq!(derived["tokens_per_step_mean"].as_f64(), Some(at(1, "tokens_per_step_mean")));
    let (run, _) = infinity_trainer::scaling::read_run(&once.run.dir, None).unwrap();
    let expected = 3.0 * at(0, "tokens_per_step_mean") + 5.0 * at(1, "tokens_per_step_mean");
    assert!((run.tokens - expected).abs() < 1e-6 * expected, "{} tokens, expected {expected}", run.tokens);
    assert!((tokens - expected).abs() < 1e-3 * expected, "--check said {tokens} tokens, expected {expected}");
    let compute = 3.0 * at(0, "train_flops_per_step_mean") + 5.0 * at(1, "train_flops_per_step_mean");
    assert!((run.compute - compute).abs() < 1e-6 * compute, "{} FLOPs, expected {compute}", run.compute);
    // (the loss curves' x: each step at its own size)
    let at3 = 3.0 * at(0, "train_flops_per_step_mean");
    assert!((run.compute_at(3) - at3).abs() < 1e-6 * at3 && run.compute_at(8) == run.compute);
}

/// A mix of two datasets changes its global batch as one dataset does: the run goes on at the new
/// size, drawing both, says its totals over its sizes, and resumes after the change exactly.
#[test]
fn a_mix_changes_its_global_batch_at_a_resume_too() {
    use infinity_data::synth::{synth, SynthOptions};
    use infinity_data::writer::WriterOptions;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let writer = WriterOptions { overwrite: true, ..Default::default() };
    synth(&a, &SynthOptions { rows: 96, fit_rows: 48, writer: writer.clone(), ..Default::default() }).unwrap();
    let tokenizer = Some(a.join(infinity_data::tokenizer::TOKENIZER_FILE));
    synth(&b, &SynthOptions { rows: 64, seed: 5, tokenizer, writer, ..Default::default() }).unwrap();
    let mixed = |run: &str, g: usize| {
        let mut c = config(&a, tmp.path().join(run), g, 8);
        c.data.weight = Some(1.0);
        c.data.mix = vec![infinity_trainer::train::config::MixSource { dir: b.clone(), weight: Some(3.0) }];
        c
    };
    let mut finals = Vec::new();
    for (run, stops) in [("once", &[][..]), ("twice", &[7][..])] {
        train(&mixed(run, 8), &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
        let bigger = mixed(run, 16);
        let step3 = latest_checkpoint(&bigger.run.dir).unwrap();
        if run == "once" {
            let lines = check(&bigger, 1, Some(&step3), None).unwrap();
            assert!(lines.iter().any(|l| l.starts_with("resume: over its global batch sizes (8 to step 3, then 16)")));
        }
        let mut from = step3;
        for &stop in stops {
            train(&bigger, &TrainOptions { resume: Some(from), stop_after: Some(stop), ..Default::default() }).unwrap();
            from = latest_checkpoint(&bigger.run.dir).unwrap();
        }
        assert_eq!(train(&bigger, &TrainOptions { resume: Some(from), ..Default::default() }).unwrap().steps, 8);
        let sizes = json(bigger.run.dir.join("derived.json"))["global_batch_sizes"].clone();
        assert_eq!((sizes[0]["global_batch"].as_u64(), sizes[1]["from_step"].as_u64()), (Some(8), Some(3)), "{sizes}");
        finals.push(std::fs::read(latest_checkpoint(&bigger.run.dir).unwrap().join("model.safetensors")).unwrap());
    }
    assert!(finals[0] == finals[1], "a resume after the change trained other weights");
}

/// `--rows-of-step N` names the rows the training loop's loader draws at step N, rank by rank; in a
/// run whose batch grew at a resume, at the size the step drew.
#[test]
fn the_rows_of_a_step_are_the_ones_it_draws() {
    use infinity_data::loader::Loader;
    use infinity_trainer::train::step_rows::rows_of_step;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::tiny_dataset(&data, 96);
    let cfg = config(&data, tmp.path().join("run"), 8, 8);
    let lines = rows_of_step(&cfg, 5, 2).unwrap();
    assert!(lines[0].starts_with("step 5: global batch 8 from data.dir"), "{lines:?}");
    let ds = std::sync::Arc::new(infinity_data::Dataset::open(&data, infinity_data::Checksums::Skip).unwrap());
    let drawn = |c: &TrainConfig, rank: usize, g: usize, n: usize| {
        let opts = infinity_data::loader::LoaderOptions {
            global_batch: g,
            seed: c.run.seed,
            rank,
            world_size: 2,
            ..Default::default()
        };
        let mut loader = Loader::new(ds.clone(), opts, None).unwrap();
        (0..n).map(|_| loader.next_batch().unwrap()).last().unwrap().ids
    };
    let named = |lines: &[String], rank: usize| -> Vec<u64> {
        let at = |l: &String| l.rsplit("id ").next().unwrap().parse::<u64>().unwrap();
        lines.iter().filter(|l| l.starts_with(&format!("rank {rank} "))).map(at).collect()
    };
    for rank in 0..2 {
        assert_eq!(named(&lines, rank), drawn(&cfg, rank, 8, 5), "rank {rank}");
    }
    assert!(rows_of_step(&cfg, 0, 1).unwrap_err().to_string().contains("from 1"));

    // 3 steps at 8, then 16: step 2 is drawn at 8, step 6 at 16
    train(&cfg, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
    let bigger = config(&data, cfg.run.dir.clone(), 16, 8);
    let step3 = latest_checkpoint(&cfg.run.dir).unwrap();
    train(&bigger, &TrainOptions { resume: Some(step3), stop_after: Some(6), ..Default::default() }).unwrap();
    assert_eq!(named(&rows_of_step(&bigger, 2, 2).unwrap(), 0), drawn(&cfg, 0, 8, 2));
    let lines = rows_of_step(&bigger, 6, 2).unwrap();
    assert!(lines[0].starts_with("step 6: global batch 16"), "{lines:?}");
    assert_eq!(named(&lines, 1).len(), 8);

    // the dataset mended in place since the checkpoint (a value of a row rewritten): the same rows,
    // with a note; a dataset of other rows: refused, as its batches are not the run's
    use infinity_data::writer::{DatasetWriter, RowData, WriterOptions};
    let mended = tmp.path().join("mended");
    let header = infinity_data::manifest::Manifest { shards: vec![], total_rows: 0, ..ds.manifest.clone() };
    let mut w = DatasetWriter::create(&mended, header, WriterOptions::default()).unwrap();
    for g in 0..ds.num_rows() {
        let mut row = RowData::from(ds.row(g));
        if g == 0 {
            row.latent.as_mut().unwrap()[0] ^= 1;
        }
        w.push(row).unwrap();
    }
    w.finish().unwrap();
    std::fs::copy(data.join("tokenizer.safetensors"), mended.join("tokenizer.safetensors")).unwrap();
    let on_mended = TrainConfig { data: config(&mended, cfg.run.dir.clone(), 16, 8).data, ..bigger.clone() };
    let lines = rows_of_step(&on_mended, 6, 2).unwrap();
    assert!(lines[0].starts_with("note: ") && lines[0].contains("(mended in place)"), "{lines:?}");
    let before = rows_of_step(&bigger, 6, 2).unwrap();
    for rank in 0..2 {
        assert_eq!(named(&lines, rank), named(&before, rank), "rank {rank}");
    }
    // (more rows, tokenized alike)
    let tokenizer = tmp.path().join("tokenizer.safetensors");
    std::fs::copy(data.join("tokenizer.safetensors"), &tokenizer).unwrap();
    let more = infinity_data::synth::SynthOptions {
        rows: 80,
        fit_rows: 40,
        tokenizer: Some(tokenizer),
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    infinity_data::synth::synth(&mended, &more).unwrap();
    let e = rows_of_step(&on_mended, 6, 2).unwrap_err().to_string();
    assert!(
        e.contains("and its buckets hold other rows: the batches drawn from it are not the ones the run read"),
        "{e}"
    );
    // taken with `--accept-data-change` at step 6: the steps before it are refused, later ones named
    let accept =
        TrainOptions { resume: latest_checkpoint(&cfg.run.dir), accept_data_change: true, ..Default::default() };
    train(&on_mended, &accept).unwrap();
    let e = rows_of_step(&on_mended, 6, 2).unwrap_err().to_string();
    assert!(e.contains("the run drew steps 1 to 6 from") && e.contains("(steps from 7 on can)"), "{e}");
    assert!(rows_of_step(&on_mended, 7, 2).unwrap()[0].starts_with("step 7: global batch 16"));
}
