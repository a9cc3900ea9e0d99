//! `infinity sample` and `infinity export` of a bare weights file with `--config`: the files real
//! PyTorch wrote (tests/torch-files: upstream's released `.pth`, its training checkpoint with the moving
//! average) sample bit for bit as their safetensors twins, an export of one samples as the file does,
//! and what cannot work is named (no `--config`, `--ema` of one set of weights, a config of another
//! model, `--config` with a folder that records its model).

use std::path::{Path, PathBuf};

use crate::{err, infinity, path_str};

/// The files of tests/torch-files.
fn torch_file(name: &str) -> PathBuf {
    crate::repo().join("tests/torch-files").join(name)
}

/// A synthetic dataset of the files' model (16 bits, text 16 wide, captions of 8 tokens) and a training
/// config of that model (tests/torch-files/config.json: width 32, depth 2, 2 heads, mlp ratio 8) with
/// `extra` appended: the temporary folder and the config.
fn dataset_and_config(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let synth = ["data", "synth", "--out", path_str(&data), "--rows", "16", "--fit-rows", "16", "--budget", "demo4"];
    assert!(infinity(&[&synth[..], &["--d", "16", "--text-width", "16"]].concat()));
    let cfg = tmp.path().join("train.toml");
    let text = format!(
        "[run]\ndir = \"{}\"\nseed = 1\nsteps = 2\n[model]\npreset = \"tiny\"\nconditioning = \"text\"\ndepth = 2\nembed_dim = 32\n\
         num_heads = 2\nmlp_ratio = 8.0\n[data]\ndir = \"{}\"\nglobal_batch = 4\nmicro_batch = 4\n[optim]\nlr = 1e-3\n{extra}",
        path_str(&tmp.path().join("run")),
        path_str(&data)
    );
    std::fs::write(&cfg, text).unwrap();
    (tmp, cfg)
}

/// The bits `infinity sample SOURCE ARGS…` draws for two captions (greedy-free: seed 5, the defaults'
/// guidance and temperature), and its grid's bytes.
fn sample(source: &Path, args: &[&str], out: &Path) -> (Vec<u8>, Vec<u8>) {
    let (bits, grid) = (out.join("bits.safetensors"), out.join("grid.png"));
    let base = ["sample", path_str(source), "--caption", "red circle", "--caption", "blue square", "--n", "2"];
    let outs = ["--seed", "5", "--bits", path_str(&bits), "-o", path_str(&grid)];
    assert!(infinity(&[&base[..], args, &outs].concat()), "infinity sample {}", source.display());
    (std::fs::read(bits).unwrap(), std::fs::read(grid).unwrap())
}

#[test]
fn pytorch_files_sample_as_their_safetensors_twins() {
    let (tmp, cfg) = dataset_and_config("");
    let with = ["--config", path_str(&cfg)];
    let out = |name: &str| tmp.path().join(name);
    let released = sample(&torch_file("infinity_tiny.pth"), &with, &out("released"));
    let twin = sample(&torch_file("infinity_tiny.safetensors"), &with, &out("twin"));
    assert!(released == twin, "upstream's released .pth samples otherwise than its safetensors twin");
    // the training checkpoint's weights, and its moving average as the average's own file
    let ckpt = torch_file("ar-ckpt-giter000K-ep0-iter2-last.pth");
    assert!(sample(&ckpt, &with, &out("ckpt")) == twin, "trainer.gpt_fsdp");
    let average = sample(&ckpt, &[&with[..], &["--ema"]].concat(), &out("ckpt-ema"));
    assert!(average == sample(&torch_file("ema.safetensors"), &with, &out("ema")), "trainer.gpt_ema_fsdp");
    assert!(average.0 != twin.0, "the moving average drew the weights' bits");

    // an export of the average samples as the file did, and says where it came from
    let export = out("export");
    assert!(infinity(&["export", path_str(&ckpt), "--ema", "-o", path_str(&export), "--config", path_str(&cfg)]));
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(export.join("config.json")).unwrap()).unwrap();
    assert!(c["source"]["step"].is_null() && c["source"]["weights"] == "ema", "{}", c["source"]);
    assert!(c["source"]["weights_file"].as_str().unwrap().ends_with("ar-ckpt-giter000K-ep0-iter2-last.pth"));
    assert!(sample(&export, &["--ema"], &out("from-export")) == average, "the export of the average");
}

#[test]
fn what_a_weights_file_cannot_give_is_named() {
    let (tmp, cfg) = dataset_and_config("");
    let file = torch_file("infinity_tiny.safetensors");
    let file_s = path_str(&file);
    let e = err(&["sample", file_s, "--caption", "red circle"]);
    assert!(e.contains("a weights file, which records no model: give --config"), "{e}");
    let e = err(&["export", file_s, "-o", path_str(&tmp.path().join("x"))]);
    assert!(e.contains("give --config"), "{e}");

    let e = err(&["sample", file_s, "--config", path_str(&cfg), "--ema", "--caption", "red circle"]);
    assert!(e.contains("--ema: ") && e.contains("holds one set of weights, no moving average"), "{e}");

    // a config of another model: the file's tensors are named against it, with the model it built
    let e = err(&["sample", file_s, "--config", path_str(&cfg), "--set", "model.depth=3", "--caption", "red circle"]);
    assert!(e.contains("against the model of --config") && e.contains("depth 3, width 32"), "{e}");

    // a folder that records its model takes no --config
    let export = tmp.path().join("export");
    assert!(infinity(&["export", file_s, "--config", path_str(&cfg), "-o", path_str(&export)]));
    let e = err(&["sample", path_str(&export), "--config", path_str(&cfg), "--caption", "red circle"]);
    assert!(e.contains("an `infinity export` folder, which records its model: leave --config"), "{e}");
    // --set needs --config
    let e = format!("{:?}", crate::fails(&["sample", path_str(&export), "--set", "model.depth=3"]));
    assert!(e.contains("--config"), "{e}");
}
