//! `infinity sample` as a process: what it warns of on the console.

use std::path::Path;
use std::process::Command;

use infinity_data::synth::{synth, SynthOptions};
use infinity_data::writer::WriterOptions;
use infinity_trainer::train::config::TrainConfig;
use infinity_trainer::train::{train, TrainOptions};

/// A tiny class model trained one step with `model.cond_drop_rate` = `drop` into `dir/run`.
fn trained(dir: &Path, drop: f64) {
    train(&TrainConfig::load(&config(dir, "class", drop, 0), &[]).unwrap(), &TrainOptions::default()).unwrap();
}

/// A config of one step of a tiny `conditioning` model on a fresh dataset `dir/data` into `dir/run`,
/// with a sample grid of 2 conditions every `grid_every` steps (0: none).
fn config(dir: &Path, conditioning: &str, drop: f64, grid_every: u64) -> std::path::PathBuf {
    let data = dir.join("data");
    let opts = SynthOptions {
        rows: 16,
        fit_rows: 16,
        budget: "demo4".into(),
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    synth(&data, &opts).unwrap();
    let config = dir.join("config.toml");
    let text = format!(
        "[run]\ndir = \"{}\"\nseed = 0\nsteps = 1\n[model]\npreset = \"tiny\"\ndepth = 1\nconditioning = \
         \"{conditioning}\"\ncond_drop_rate = {drop:?}\n[data]\ndir = \"{}\"\nglobal_batch = 4\nmicro_batch = 4\n\
         workers = 0\n[optim]\nlr = 1e-3\nwarmup_steps = 0\n[sample]\nevery = {grid_every}\nn = 2\nper_condition = 1\n",
        dir.join("run").display(),
        data.display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// `infinity sample RUN --class 1 --bits FILE ARGS…`'s stderr (it must succeed).
fn sample(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_infinity"))
        .arg("sample")
        .arg(dir.join("run"))
        .args(["--class", "1", "--n", "1", "--bits"])
        .arg(dir.join("bits.safetensors"))
        .arg("-o")
        .arg(dir.join("grid.png"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let _ = std::fs::remove_file(dir.join("bits.safetensors"));
    stderr
}

/// Guidance from a model trained without condition dropout mixes in an unconditional prediction it never
/// trained: warned of, unless the sampling is unguided (`--cfg 1`, or 1 on every scale the schedule takes).
#[test]
fn guidance_of_a_model_trained_without_condition_dropout_is_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let warning = "model.cond_drop_rate = 0: the unconditional prediction guidance mixes in (the null class's)";
    let none = tmp.path().join("none");
    std::fs::create_dir(&none).unwrap();
    trained(&none, 0.0);
    assert!(sample(&none, &[]).contains(warning), "the default --cfg guides");
    assert!(!sample(&none, &["--cfg", "1"]).contains(warning));
    let some = tmp.path().join("some");
    std::fs::create_dir(&some).unwrap();
    trained(&some, 0.1);
    assert!(!sample(&some, &[]).contains(warning));
}

/// A text model's sample grid line names the captions its rows show (the dataset's first rows'), which
/// `infinity sample --caption` draws again.
#[test]
fn a_text_models_grid_names_its_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), "text", 0.1, 1);
    let out = Command::new(env!("CARGO_BIN_EXE_infinity")).arg("train").arg(&config).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    let ds = infinity_data::Dataset::open(&tmp.path().join("data"), infinity_data::Checksums::Verify).unwrap();
    let captions: Vec<String> = (0..2).map(|g| format!("{:?}", ds.row(g).caption.unwrap())).collect();
    let want = format!("(the captions of the dataset's first 2 rows: {}, 1 each)", captions.join(", "));
    assert!(said.contains(&want), "{want}\n{said}");
}
