//! `infinity sample` and `infinity export` of a bare weights file with `--config`: the files real
//! PyTorch wrote (tests/torch-files: upstream's released `.pth`, its training checkpoint with the moving
//! average) and a folder of files with an index sample bit for bit as their safetensors twins, an
//! export of one samples as the file does, and what cannot work is named (no `--config`, `--ema` of one
//! set of weights, a config of another model, a file inside a folder that records its model, an export
//! over the file it reads, a damaged `.pth`).

use std::path::{Path, PathBuf};

use crate::{drawn, err, infinity, path_str};

/// The files of tests/torch-files.
fn torch_file(name: &str) -> PathBuf {
    crate::repo().join("tests/torch-files").join(name)
}

/// A synthetic dataset of the files' model (16 bits, text 16 wide, captions of 8 tokens) and a config
/// of that model alone (tests/torch-files/config.json: width 32, depth 2, 2 heads, mlp ratio 8; no
/// data.dir, so each command names the dataset with `--data`; bf16 as the run's precision): the
/// temporary folder, the dataset and the config.
fn dataset_and_config() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let synth = ["data", "synth", "--out", path_str(&data), "--rows", "16", "--fit-rows", "16", "--budget", "demo4"];
    assert!(infinity(&[&synth[..], &["--d", "16", "--text-width", "16"]].concat()));
    let cfg = tmp.path().join("model.toml");
    let text = "[run]\nprecision = \"bf16\"\n[model]\npreset = \"tiny\"\nconditioning = \"text\"\ndepth = 2\n\
                embed_dim = 32\nnum_heads = 2\nmlp_ratio = 8.0\n";
    std::fs::write(&cfg, text).unwrap();
    (tmp, data, cfg)
}

/// What `infinity sample SOURCE ARGS…` draws for two captions (seed 5, the default guidance and
/// temperature) into `out`: the grid's pixels, the bits and their metadata ([`drawn`]).
fn sample(source: &Path, args: &[&str], out: &Path) -> (Vec<u8>, Vec<u8>, serde_json::Value) {
    let (bits, grid) = (out.join("bits.safetensors"), out.join("grid.png"));
    let base = ["sample", path_str(source), "--caption", "red circle", "--caption", "blue square", "--n", "2"];
    let outs = ["--seed", "5", "--bits", path_str(&bits), "-o", path_str(&grid)];
    assert!(infinity(&[&base[..], args, &outs].concat()), "infinity sample {}", source.display());
    drawn(&grid, &bits)
}

/// A folder holding `file` and an index (`model.safetensors.index.json`) mapping its tensors to it.
fn indexed_folder(file: &Path, folder: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    std::fs::copy(file, folder.join(name)).unwrap();
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let map: serde_json::Map<String, serde_json::Value> =
        st.names().into_iter().map(|n| (n.into(), name.into())).collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(folder.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// A zip file's bytes with every entry's CRC-32 set to 0 (in its local header and the central
/// directory), as `torch.save` writes them under `torch.serialization.set_crc32_options(False)`.
fn without_checksums(mut zip: Vec<u8>) -> Vec<u8> {
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap()) as usize;
    let mut i = 0;
    while i + 46 <= zip.len() {
        // a central directory header: its CRC at +16, its local header's offset at +42 (CRC at +14)
        if zip[i..i + 4] == *b"PK\x01\x02" {
            let local = u32_at(&zip, i + 42);
            assert_eq!(zip[local..local + 4], *b"PK\x03\x04", "a local header at {local}");
            zip[i + 16..i + 20].fill(0);
            zip[local + 14..local + 18].fill(0);
            i += 46 + u16_at(&zip, i + 28) + u16_at(&zip, i + 30) + u16_at(&zip, i + 32);
        } else {
            i += 1;
        }
    }
    zip
}

#[test]
fn pytorch_files_sample_as_their_safetensors_twins() {
    let (tmp, data, cfg) = dataset_and_config();
    let with = ["--config", path_str(&cfg), "--data", path_str(&data)];
    let out = |name: &str| tmp.path().join(name);
    let released = sample(&torch_file("infinity_tiny.pth"), &with, &out("released"));
    let twin = sample(&torch_file("infinity_tiny.safetensors"), &with, &out("twin"));
    assert!(released == twin, "upstream's released .pth samples otherwise than its safetensors twin");
    let folder = out("indexed");
    indexed_folder(&torch_file("infinity_tiny.safetensors"), &folder);
    assert!(sample(&folder, &with, &out("from-index")) == twin, "a folder of weight files with their index");
    // the training checkpoint's weights, and its moving average as the average's own file
    let ckpt = torch_file("ar-ckpt-giter000K-ep0-iter2-last.pth");
    assert!(sample(&ckpt, &with, &out("ckpt")) == twin, "trainer.gpt_fsdp");
    let average = sample(&ckpt, &[&with[..], &["--ema"]].concat(), &out("ckpt-ema"));
    assert!(average == sample(&torch_file("ema.safetensors"), &with, &out("ema")), "trainer.gpt_ema_fsdp");
    assert!(average.1 != twin.1, "the moving average drew the weights' bits");

    // an export of the average samples as the file did, and says where it came from
    let export = out("export");
    let ckpt_s = path_str(&ckpt);
    assert!(infinity(&[&["export", ckpt_s, "--ema", "-o", path_str(&export)][..], &with].concat()));
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(export.join("config.json")).unwrap()).unwrap();
    let source = &c["source"];
    assert!(source["step"].is_null() && source["weights"] == "ema" && source["ema_decay"].is_null(), "{source}");
    assert!(source["weights_file"].as_str().unwrap().ends_with("ar-ckpt-giter000K-ep0-iter2-last.pth"), "{source}");
    assert_eq!(source["precision"], "bf16", "the config's run.precision");
    assert!(sample(&export, &["--ema"], &out("from-export")) == average, "the export of the average");

    // the export exported again in two chunks: the same weights, what it came from kept
    let again = out("export-chunked");
    assert!(infinity(&["export", path_str(&export), "--block-chunks", "2", "-o", path_str(&again)]));
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(again.join("config.json")).unwrap()).unwrap();
    assert!(c["source"]["weights_file"] == source["weights_file"] && c["source"]["weights"] == "ema", "{c}");
    let exports = &c["source"]["exports"];
    assert!(exports[0]["dir"].as_str().unwrap().ends_with("export") && exports[0]["dtype"] == "float32", "{c}");
    assert!(again.join("tokenizer.safetensors").is_file(), "the tokenizer beside the first export was not carried");
    assert!(sample(&again, &[], &out("from-again")) == average, "the export exported again");
    let e = err(&["export", path_str(&export), "--dtype", "bf16", "-o", path_str(&export)]);
    assert!(e.contains("the export being read"), "{e}");

    // an export into the folder of the file it reads, twice (the same export replaced): the other
    // files there stay bare weights files
    let here = out("here");
    std::fs::create_dir(&here).unwrap();
    for f in ["infinity_tiny.pth", "ema.safetensors"] {
        std::fs::copy(torch_file(f), here.join(f)).unwrap();
    }
    for _ in 0..2 {
        assert!(infinity(
            &[&["export", path_str(&here.join("infinity_tiny.pth")), "-o", path_str(&here)][..], &with].concat()
        ));
    }
    assert!(sample(&here.join("infinity_tiny.pth"), &with, &out("here-released")) == twin);
    assert!(sample(&here.join("ema.safetensors"), &with, &out("here-ema")) == average);
    assert!(sample(&here, &[], &out("here-export")) == twin, "the export beside its file");
}

#[test]
fn what_a_weights_file_cannot_give_is_named() {
    let (tmp, data, cfg) = dataset_and_config();
    let (cfg_s, data_s) = (path_str(&cfg), path_str(&data));
    let with = ["--config", cfg_s, "--data", data_s];
    let file = torch_file("infinity_tiny.safetensors");
    let file_s = path_str(&file);
    let cap = ["--caption", "red circle"];
    let sample_err = |source: &str, args: &[&str]| err(&[&["sample", source][..], args, &cap].concat());

    let e = sample_err(file_s, &[]);
    assert!(e.contains("a weights file, which records no model: give --config"), "{e}");
    let e = err(&["export", file_s, "-o", path_str(&tmp.path().join("x"))]);
    assert!(e.contains("give --config"), "{e}");
    let e = sample_err(file_s, &["--config", cfg_s]);
    assert!(e.contains("no data.dir: pass --data"), "{e}");
    // what a run alone reads is not checked: a fine-tune's config whose model.init_from is gone still
    // shapes its model
    let (bits, grid) = (tmp.path().join("b0.safetensors"), tmp.path().join("g0.png"));
    let gone = ["--set", "model.init_from=/nonexistent/weights.pth", "--bits", path_str(&bits)];
    assert!(infinity(&[&["sample", file_s][..], &with, &gone, &cap, &["-o", path_str(&grid)]].concat()));
    let e = sample_err(path_str(&tmp.path().join("nope.pth")), &with);
    assert!(e.contains("nope.pth: no such weights file or folder"), "{e}");
    let e = sample_err(file_s, &["--config", path_str(tmp.path()), "--data", data_s]);
    assert!(e.contains("a folder; give the training config file"), "{e}");
    let e = sample_err(file_s, &[&with[..], &["--ema"]].concat());
    assert!(e.contains("--ema: ") && e.contains("holds one set of weights, no moving average"), "{e}");

    // a safetensors file of something else (the dataset's tokenizer)
    let e = sample_err(path_str(&data.join("tokenizer.safetensors")), &with);
    assert!(e.contains("tensors is a parameter of this model") && e.contains("not Infinity weights"), "{e}");

    // a config of another model: the file's tensors are named against it, with the model it built
    let e = sample_err(file_s, &[&with[..], &["--set", "model.depth=3"]].concat());
    assert!(e.contains("--set model.depth=3") && e.contains("depth 3, width 32, 2 heads"), "{e}");
    assert!(e.contains("from the dataset: d 16, text 16 wide, 8 tokens"), "{e}");

    // an export of the file: a folder that records its model takes no --config, nor does a file in it;
    // it holds the trained weights, and --ema says how to export the average
    let export = tmp.path().join("export");
    assert!(infinity(&[&["export", file_s, "-o", path_str(&export)][..], &with].concat()));
    let e = sample_err(path_str(&export), &with);
    assert!(e.contains("an `infinity export` folder, which records its model: give"), "{e}");
    let inner = export.join("model.safetensors");
    let e = sample_err(path_str(&inner), &with);
    assert!(e.contains("the weights of an `infinity export` folder") && e.contains("without --config"), "{e}");
    let e = sample_err(path_str(&inner), &[]);
    assert!(e.contains("(a file: give the export folder holding it"), "{e}");
    let e = sample_err(path_str(&export), &["--ema"]);
    assert!(e.contains("infinity_tiny.safetensors, which holds one set of weights: there is no average"), "{e}");
    let train = tmp.path().join("train.toml");
    let run = format!("[run]\ndir = \"{}\"\nseed = 1\nsteps = 2\n", path_str(&tmp.path().join("run")));
    let rest = format!("[data]\ndir = \"{data_s}\"\nglobal_batch = 4\nmicro_batch = 4\n[optim]\nlr = 1e-3\n");
    let model = std::fs::read_to_string(&cfg).unwrap().replace("[run]\nprecision = \"bf16\"\n", "");
    std::fs::write(&train, format!("{run}{model}{rest}")).unwrap();
    let e = err(&["train", "--check", path_str(&train), "--resume", path_str(&export)]);
    assert!(e.contains("it came from the weights file") && e.contains("which holds none either"), "{e}");
    let e = sample_err(path_str(&export), &["--set", "model.depth=3"]);
    assert!(e.contains("--set changes the --config of a bare weights file"), "{e}");
    let e = sample_err(file_s, &["--set", "model.depth=3"]);
    assert!(e.contains("changes a --config, which is missing") && e.contains("give --config"), "{e}");
    let e = sample_err(file_s, &[&with[..], &["--set", "model.conditioning=Text"]].concat());
    assert!(e.contains("model.conditioning must be \"class\" or \"text\", found \"Text\""), "{e}");

    // --bits never writes over a file it did not write itself (the weights, a dataset's files, -o's)
    let copy = tmp.path().join("weights.safetensors");
    std::fs::copy(&file, &copy).unwrap();
    for bits in [copy.clone(), data.join("tokenizer.safetensors"), data.join("manifest.json")] {
        let e = sample_err(path_str(&copy), &[&with[..], &["--bits", path_str(&bits)]].concat());
        assert!(e.contains("an existing file that `infinity sample --bits` did not write"), "{e}");
    }
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&file).unwrap(), "the weights were overwritten");
    let grid = tmp.path().join("g.png");
    let roundabout = tmp.path().join("sub/../g.png");
    let e =
        sample_err(path_str(&copy), &[&with[..], &["--bits", path_str(&roundabout), "-o", path_str(&grid)]].concat());
    assert!(e.contains("and -o name the same file"), "{e}");
    let bits = tmp.path().join("bits.safetensors");
    for _ in 0..2 {
        let outs = ["--bits", path_str(&bits), "-o", path_str(&grid)];
        assert!(infinity(&[&["sample", path_str(&copy)][..], &with, &cap, &outs].concat()), "an earlier --bits file");
    }

    // an export over the file it reads (the same file, or the folder of an index naming it)
    let own = tmp.path().join("own");
    std::fs::create_dir(&own).unwrap();
    let copy = own.join("model.safetensors");
    std::fs::copy(&file, &copy).unwrap();
    for o in [&copy, &own] {
        let e = err(&[&["export", path_str(&copy), "-o", path_str(o)][..], &with].concat());
        assert!(e.contains("the weights being exported"), "-o {}: {e}", o.display());
    }
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&file).unwrap(), "the weights were overwritten");
    let indexed = tmp.path().join("indexed");
    indexed_folder(&file, &indexed);
    let e = err(&[&["export", path_str(&indexed), "-o", path_str(&indexed.join("e.safetensors"))][..], &with].concat());
    assert!(e.contains("the weights being exported"), "{e}");

    // a .pth whose bytes changed after it was written: its zip entry's checksum names it; one saved
    // without checksums (torch.serialization.set_crc32_options(False) records 0) loads
    let damaged = tmp.path().join("damaged.pth");
    let mut bytes = std::fs::read(torch_file("infinity_tiny.pth")).unwrap();
    bytes[150_000..150_004].copy_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(&damaged, &bytes).unwrap();
    let e = sample_err(path_str(&damaged), &with);
    assert!(e.contains("is damaged: its CRC-32 is"), "{e}");
    let unchecked = tmp.path().join("no-crc.pth");
    std::fs::write(&unchecked, without_checksums(std::fs::read(torch_file("infinity_tiny.pth")).unwrap())).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (source, dir) in [(&unchecked, &a), (&file, &b)] {
        std::fs::create_dir_all(dir).unwrap();
        let (bits, grid) = (dir.join("bits.safetensors"), dir.join("g.png"));
        let outs = ["--bits", path_str(&bits), "-o", path_str(&grid)];
        assert!(infinity(&[&["sample", path_str(source)][..], &with, &cap, &outs].concat()));
    }
    assert_eq!(
        drawn(&a.join("g.png"), &a.join("bits.safetensors")),
        drawn(&b.join("g.png"), &b.join("bits.safetensors"))
    );

    // an export's own index counts as the export's; an export whose weights are gone is named
    let index = export.join("model.safetensors.index.json");
    let e = sample_err(path_str(&index), &with);
    assert!(e.contains("an `infinity export` folder") && e.contains("without --config"), "{e}");
    let gone = tmp.path().join("gone");
    assert!(infinity(&[&["export", file_s, "-o", path_str(&gone)][..], &with].concat()));
    std::fs::remove_file(gone.join("model.safetensors")).unwrap();
    let e = sample_err(path_str(&gone), &[]);
    assert!(e.contains("whose weights file model.safetensors, which model.safetensors.index.json maps"), "{e}");
    // a damaged config.json, or another tool's, is named as such (not taken for a folder of bare weights)
    let config = export.join("config.json");
    let kept = std::fs::read(&config).unwrap();
    std::fs::write(&config, &kept[..kept.len() / 2]).unwrap();
    let e = sample_err(path_str(&export), &[]);
    assert!(e.contains("config.json: not readable JSON") && e.contains("export again"), "{e}");
    std::fs::write(&config, r#"{"architectures": ["T5"], "model_type": "t5"}"#).unwrap();
    let e = sample_err(path_str(&export), &[]);
    assert!(e.contains("whose config.json is not an `infinity export`'s (its format is not given"), "{e}");
    // (with --config its weights are read as a folder of bare files, whatever config.json holds)
    let grid = tmp.path().join("foreign-config.png");
    assert!(infinity(&[&["sample", path_str(&export)][..], &with, &cap, &["-o", path_str(&grid)]].concat()));
    // a shard index mapping a tensor to another file (missing) than the export's weights
    let index = export.join("model.safetensors.index.json");
    let kept_index = std::fs::read(&index).unwrap();
    let mut edited: serde_json::Value = serde_json::from_slice(&kept_index).unwrap();
    edited["weight_map"]["head.weight"] = "other.safetensors".into();
    std::fs::write(&index, edited.to_string()).unwrap();
    std::fs::write(&config, &kept).unwrap();
    let e = sample_err(path_str(&export), &[]);
    assert!(e.contains("maps `head.weight` to other.safetensors, which is missing"), "{e}");
    std::fs::write(&index, kept_index).unwrap();
    // constructor_kwargs (what upstream builds) edited apart from `model` (what is read here)
    let mut edited: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    let depth = edited["constructor_kwargs"]["depth"].as_u64().unwrap();
    edited["constructor_kwargs"]["depth"] = (depth + 2).into();
    std::fs::write(&config, edited.to_string()).unwrap();
    let e = sample_err(path_str(&export), &[]);
    let said =
        format!("constructor_kwargs.depth is {} where `model` gives {depth}: upstream would build another", depth + 2);
    assert!(e.contains(&said), "{e}");
    std::fs::write(&config, kept).unwrap();
}
