//! `infinity train`, `sample` and `export` end to end through the command line: a tiny text model is
//! trained, sampled to a PNG grid and to bits, exported in f32 and bf16, and the export is checked by
//! tools/check_export.py against the reference PyTorch model's state_dict names and shapes.

use std::path::{Path, PathBuf};

use infinity_trainer::train::config::TrainConfig;

use crate::{err, fails, infinity, path_str, python, python_fails, repo};

/// A temporary folder with 48 synthetic rows (`data`) and a class model's config (`cfg`) training into
/// `run`.
pub(crate) fn class_run() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run, cfg) = (tmp.path().join("data"), tmp.path().join("run"), tmp.path().join("train.toml"));
    let synth = ["data", "synth", "--out", path_str(&data), "--rows", "48", "--fit-rows", "32", "--budget", "demo4"];
    assert!(infinity(&synth));
    write_config(&cfg, &data, &run, "class");
    (tmp, data, run, cfg)
}

/// A tiny `conditioning` model's config at `path`: 2 steps of 4 samples on `data` into `run`, a checkpoint
/// every step (the newest kept), a sample grid at step 2.
pub fn write_config(path: &Path, data: &Path, run: &Path, conditioning: &str) {
    let text = format!(
        r#"
[run]
dir = "{run}"
seed = 3
steps = 2
log_every = 1
[model]
preset = "tiny"
conditioning = "{conditioning}"
[data]
dir = "{data}"
global_batch = 4
micro_batch = 4
[optim]
lr = 1e-3
[checkpoint]
every = 1
keep_last = 1
[sample]
every = 2
n = 2
per_condition = 1
"#,
        run = path_str(run),
        data = path_str(data)
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn train_sample_and_export_a_text_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run, cfg) = (tmp.path().join("data"), tmp.path().join("run"), tmp.path().join("train.toml"));
    let data_s = path_str(&data);
    assert!(infinity(&["data", "synth", "--out", data_s, "--rows", "64", "--fit-rows", "32", "--budget", "demo4"]));
    write_config(&cfg, &data, &run, "text");
    assert!(infinity(&["train", path_str(&cfg)]));
    for f in ["config.toml", "derived.json", "metrics.jsonl", "summary.json", "samples/step-00000002.png"] {
        assert!(run.join(f).is_file(), "run folder lacks {f}");
    }
    // TensorBoard's own reader sees the curves, the sample grid and the config
    let out = python(&[&"tools/read_tensorboard.py", &run.join("tb")]);
    let tb: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let tags = ["train/loss", "train/bit_acc", "train/token_acc", "train/lr", "train/grad_norm", "perf/tokens_per_s"];
    for tag in tags.into_iter().chain(["perf/data_s", "perf/optimizer_s"]) {
        assert_eq!(tb["scalars"][tag].as_array().map(|a| a.len()), Some(2), "{tag}: {out}");
    }
    assert!(tb["scalars"]["scale/bit_acc_s00"].is_array() && tb["scalars"]["scale/loss_s03"].is_array(), "{out}");
    assert!(tb["scalars"]["scale/token_acc_s03"].is_array() && tb["scalars"]["train/skipped_steps"].is_array());
    // the token accuracy is over all tokens (as the bit accuracy): the scales' weighted by their tokens
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("manifest.json")).unwrap()).unwrap();
    for line in std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let scales = manifest["schedules"][m["bucket"].as_u64().unwrap() as usize]["scales"].as_array().unwrap();
        let n: Vec<f64> = scales.iter().map(|s| (s[1].as_u64().unwrap() * s[2].as_u64().unwrap()) as f64).collect();
        let per_scale = m["scale_token_acc"].as_array().unwrap();
        let want = n.iter().zip(per_scale).map(|(n, a)| n * a.as_f64().unwrap()).sum::<f64>() / n.iter().sum::<f64>();
        assert!((m["token_acc"].as_f64().unwrap() - want).abs() < 1e-12, "{line}");
    }
    assert_eq!(tb["images"]["samples"][0][0], 2, "{out}");
    assert!(tb["text"]["config"][0][1].as_str().unwrap().contains("[optim]"), "{out}");

    // sampling: a grid (2 captions × 3) and the bits
    let (png, bits) = (tmp.path().join("grid.png"), tmp.path().join("bits.safetensors"));
    let run_s = path_str(&run);
    let args = ["sample", run_s, "--caption", "a red circle", "--caption", "a large blue square top left"];
    let more = ["--n", "3", "--cfg", "2", "--top-p", "0.9", "-o", path_str(&png), "--bits", path_str(&bits)];
    assert!(infinity(&[&args[..], &more[..]].concat()));
    let img = image::open(&png).unwrap();
    assert!(img.width() > img.height(), "grid of 2 rows × 3 columns is {}×{}", img.width(), img.height());
    let bytes = std::fs::read(&bits).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("bits").unwrap();
    let l: u64 = manifest["schedules"][0]["scales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[1].as_u64().unwrap() * s[2].as_u64().unwrap())
        .sum();
    assert_eq!(t.shape(), [6, l as usize, 16]);
    assert!(t.data().iter().all(|&b| b <= 1));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let about: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["infinity_sample"]).unwrap();
    assert_eq!(about["conditions"][1], "a large blue square top left");
    assert_eq!(about["schedule"]["scales"], manifest["schedules"][0]["scales"]);
    // what made them, in the bits and in the grid (a PNG's iTXt chunk)
    let made_by = &about["made_by"];
    let source = run.join("checkpoints/step-00000002").canonicalize().unwrap();
    assert_eq!((&made_by["source"], &made_by["step"]), (&source.to_str().unwrap().into(), &2.into()), "{made_by}");
    assert_eq!(
        (&made_by["seed"], &made_by["cfg"], &made_by["top_p"]),
        (&0.into(), &serde_json::json!([2.0]), &0.9.into())
    );
    assert_eq!(
        (&made_by["n"], &made_by["device"], &made_by["conditions"]),
        (&3.into(), &"cpu".into(), &about["conditions"])
    );
    let png_reader =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap())).read_info().unwrap();
    let notes = &png_reader.info().utf8_text;
    assert_eq!(notes.len(), 1, "one iTXt chunk");
    assert_eq!(notes[0].keyword, "infinity_sample");
    let in_png: serde_json::Value = serde_json::from_str(&notes[0].get_text().unwrap()).unwrap();
    assert_eq!(&in_png, made_by);
    // the same seed, the same file, byte for byte
    let again = tmp.path().join("bits-again.safetensors");
    let more = ["--n", "3", "--cfg", "2", "--top-p", "0.9", "-o", path_str(&png), "--bits", path_str(&again)];
    assert!(infinity(&[&args[..], &more[..]].concat()));
    assert!(std::fs::read(&again).unwrap() == bytes, "the bits file differs between two runs of one seed");
    // a value per scale (upstream's cfg_list, tau_list): the same values at every scale, the same bits
    let k = manifest["schedules"][0]["scales"].as_array().unwrap().len();
    let per_scale = vec!["2"; k].join(",");
    let more = ["--n", "3", "--cfg", &per_scale, "--top-p", "0.9", "-o", path_str(&png), "--bits", path_str(&again)];
    assert!(infinity(&[&args[..], &more[..]].concat()));
    let bits_of = |b: &[u8]| safetensors::SafeTensors::deserialize(b).unwrap().tensor("bits").unwrap().data().to_vec();
    assert!(bits_of(&std::fs::read(&again).unwrap()) == bits_of(&bytes), "--cfg 2,2,… differs from --cfg 2");
    // a negative prompt replaces the unconditional rows: other bits, named in the metadata; it needs
    // guidance
    let neg = ["--negative-caption", "a blue square", "--n", "3", "--cfg", "2", "--top-p", "0.9"];
    let more = ["-o", path_str(&png), "--bits", path_str(&again)];
    assert!(infinity(&[&args[..], &neg[..], &more[..]].concat()));
    let negative = std::fs::read(&again).unwrap();
    assert!(bits_of(&negative) != bits_of(&bytes), "a negative prompt changed no bit");
    let (_, header) = safetensors::SafeTensors::read_metadata(&negative).unwrap();
    let about: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["infinity_sample"]).unwrap();
    assert_eq!(about["negative_prompt"], "a blue square");
    let e = err(&["sample", run_s, "--caption", "a red circle", "--negative-caption", "a blue square", "--cfg", "1"]);
    assert!(e.contains("a negative prompt takes effect through guidance"), "{e}");
    let e = err(&["sample", run_s, "--caption", "a red circle", "--tau", "1,0.5"]);
    assert!(e.contains(&format!("--tau: 2 values for a schedule of {k} scales")), "{e}");
    // a list longer than the schedule (upstream's 1M cfg_list at a smaller budget): its first k
    let long: Vec<String> = (0..k + 2).map(|i| if i < k { "1".into() } else { "9".into() }).collect();
    let longer = ["--cfg", &long.join(","), "--bits", path_str(&again), "-o", path_str(&png)];
    assert!(infinity(&[&["sample", run_s, "--caption", "a red circle", "--n", "3"][..], &longer[..]].concat()));
    let first = std::fs::read(&again).unwrap();
    let unguided = ["--cfg", "1", "--bits", path_str(&again), "-o", path_str(&png)];
    assert!(infinity(&[&["sample", run_s, "--caption", "a red circle", "--n", "3"][..], &unguided[..]].concat()));
    assert_eq!(bits_of(&std::fs::read(&again).unwrap()), bits_of(&first), "the values past the schedule's are read");
    // (so a negative prompt with guidance only past the schedule's scales has none: refused as with 1)
    let e = err(&[
        &["sample", run_s, "--caption", "a red circle", "--negative-caption", "a blue square"][..],
        &longer[..2],
    ]
    .concat());
    assert!(e.contains("a negative prompt takes effect through guidance") && e.contains(&format!("{k} scales")), "{e}");
    // a dataset of another text width is not the model's (it panicked sampling)
    let other = tmp.path().join("data-wide");
    std::fs::create_dir(&other).unwrap();
    let mut wide = manifest.clone();
    wide["conditions"]["text"]["width"] = 48.into();
    std::fs::write(other.join("manifest.json"), wide.to_string()).unwrap();
    let e = err(&["sample", run_s, "--caption", "a red circle", "--data", path_str(&other)]);
    assert!(e.contains("text features of width 48, the model's are 32: not the model's dataset"), "{e}");

    // two schedules of one template (two pixel budgets): --template names them, --schedule picks one
    let mut budgets = manifest.clone();
    let mut other = budgets["schedules"][0].clone();
    other["name"] = "1.000/other".into();
    budgets["schedules"].as_array_mut().unwrap().push(other);
    let m: infinity_data::Manifest = serde_json::from_value(budgets).unwrap();
    use infinity_trainer::infer::SchedulePick;
    let pick = |p| {
        infinity_trainer::infer::pick_schedule(&m, &infinity_trainer::infer::rows_by_schedule(&m), p).map(|s| &s.name)
    };
    assert_eq!(pick(SchedulePick::Default).unwrap(), "1.000/demo4");
    assert_eq!(pick(SchedulePick::Name("1.000/other")).unwrap(), "1.000/other");
    let e = format!("{:#}", pick(SchedulePick::Template("1.000")).unwrap_err());
    assert!(e.contains("2 schedules have it ([\"1.000/demo4\", \"1.000/other\"]); pick one with --schedule"), "{e}");
    assert!(format!("{:#}", pick(SchedulePick::Name("0.5/x")).unwrap_err()).contains("no schedule of that name"));

    // wrong conditions are named
    assert!(err(&["sample", run_s, "--class", "3"]).contains("text-conditioned"));
    let e = err(&[
        "sample",
        run_s,
        "--caption",
        "a red circle",
        "--negative-text-features",
        "x",
        "--negative-caption",
        "a",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
    assert!(err(&["sample", run_s, "--caption", "a purple dragon"]).contains("unknown words"));
    // (a place for guidance is the model's: the schedule is not named with it)
    let e = err(&["sample", run_s, "--caption", "a red circle", "--cfg-insertion-layer", "-9"]);
    assert!(e.contains("--cfg-insertion-layer -9: expected") && !e.contains("schedule"), "{e}");
    // (the word table is lowercase, as the captions: any case reads as it)
    let (upper, lower) = (tmp.path().join("upper.safetensors"), tmp.path().join("lower.safetensors"));
    for (caption, bits) in [("A RED Circle!", &upper), ("a red circle", &lower)] {
        assert!(infinity(&["sample", run_s, "--caption", caption, "--bits", path_str(bits), "-o", path_str(&png)]));
    }
    assert_eq!(bits_of(&std::fs::read(&upper).unwrap()), bits_of(&std::fs::read(&lower).unwrap()));
    assert!(err(&["sample", path_str(&tmp.path().join("nowhere"))]).contains("no such checkpoint"));
    // a grid name no encoder takes fails before the sampling, leaving no file (a .bmp was refused after
    // it, an empty file and the bits written)
    let (bmp, bits_bmp) = (tmp.path().join("grid.bmp"), tmp.path().join("bits-bmp.safetensors"));
    let e = err(&["sample", run_s, "--caption", "a red circle", "-o", path_str(&bmp), "--bits", path_str(&bits_bmp)]);
    assert!(e.contains("grid.bmp") && e.contains("written as .png or .jpg"), "{e}");
    assert!(!bmp.exists() && !bits_bmp.exists(), "a refused sampling left files");
    // another dataset's tokenizer decodes other images: compared with the run's dataset where the
    // checkpoint does not say (one of an earlier build)
    let (same, other) = (tmp.path().join("data-same-tok"), tmp.path().join("data-other-tok"));
    let tok = data.join("tokenizer.safetensors");
    let synth = ["data", "synth", "--rows", "8", "--fit-rows", "8", "--budget", "demo4", "--out"];
    assert!(infinity(&[&synth[..], &[path_str(&same), "--tokenizer", path_str(&tok)]].concat()));
    assert!(infinity(&[&synth[..], &[path_str(&other), "--seed", "1"]].concat()));
    let m = |dir: &Path| infinity_data::Manifest::load(dir).unwrap();
    let mismatch = infinity_trainer::infer::tokenizer_mismatch;
    assert_eq!(mismatch(None, &data, &same, &m(&same)), None);
    let why = mismatch(None, &data, &other, &m(&other)).unwrap();
    assert!(why.contains("its tokenizer is not the one the run trained with"), "{why}");
    // (a tokenizer file that does not read is compared by the checksum its manifest records; the run's
    // own dataset is never another)
    std::fs::write(other.join("tokenizer.safetensors"), b"damaged").unwrap();
    std::fs::write(same.join("tokenizer.safetensors"), b"damaged").unwrap();
    assert!(mismatch(None, &data, &other, &m(&other)).is_some());
    assert_eq!(mismatch(None, &data, &same, &m(&same)), None);
    assert_eq!(mismatch(None, &other, &other, &m(&other)), None);
    // and a schedule of another pixel budget than the run's
    let trained = &m(&data).schedules[0];
    let mut longer = trained.clone();
    longer.scales.push([1, 16, 16]);
    longer.name = "longer".into();
    assert_eq!(infinity_trainer::infer::untrained_schedule_warning(&data, trained), None);
    let warning = infinity_trainer::infer::untrained_schedule_warning(&data, &longer).unwrap();
    assert!(warning.starts_with("the `longer` schedule (") && warning.contains("none the run trained on"), "{warning}");
    // text features longer than the model's captions, or not finite, are named (not a panic)
    let text = &manifest["conditions"]["text"];
    let (width, max_tokens) = (text["width"].as_u64().unwrap() as usize, text["max_tokens"].as_u64().unwrap() as usize);
    let features = |tokens: usize, value: f32| {
        let path = tmp.path().join(format!("features-{tokens}-{value}.safetensors"));
        let data: Vec<u8> = vec![value; tokens * width].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![tokens, width], &data).unwrap();
        std::fs::write(&path, safetensors::serialize([("caption", view)], None).unwrap()).unwrap();
        path
    };
    let sample_features = |f: PathBuf| err(&["sample", run_s, "--text-features", path_str(&f), "-o", path_str(&png)]);
    let e = sample_features(features(max_tokens + 1, 0.5));
    assert!(
        e.contains(&format!(
            "`caption` has {} tokens; the model takes captions of at most {max_tokens}",
            max_tokens + 1
        )),
        "{e}"
    );
    let e = sample_features(features(2, f32::NAN));
    assert!(e.contains("`caption` holds NaN at token 0, channel 0"), "{e}");
    // numpy's own file, named as such ("header too large")
    let npy = tmp.path().join("features.npy");
    std::fs::write(&npy, b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 32), }")
        .unwrap();
    let e = sample_features(npy);
    let want = format!("features.npy: a NumPy .npy file, not a safetensors file: give one `[tokens, {width}]` tensor");
    assert!(e.contains(&want), "{e}");
    assert!(err(&["sample", run_s, "--caption", "a red circle", "--cfg", "nan"]).contains("--cfg"));
    // a negative value reaches the checks (clap took it for an option: "unexpected argument '-1'")
    assert!(err(&["sample", run_s, "--caption", "a red circle", "--tau", "-1"]).contains("--tau must be positive"));

    // export in both dtypes; the checker compares with the reference model's names and shapes
    let expect = repo().join("tests/golden/export-state-dict.json");
    for dtype in ["f32", "bf16"] {
        let out = tmp.path().join(format!("export-{dtype}/model.safetensors"));
        assert!(infinity(&["export", run_s, "-o", path_str(&out), "--dtype", dtype]));
        assert!(out.with_file_name("tokenizer.safetensors").is_file(), "the tokenizer travels with the export");
        let report = python(&[&"tools/check_export.py", &out, &"--expect", &expect]);
        assert!(report.contains("names and shapes equal the reference"), "{report}");
        println!("{report}");
    }

    // -o a folder: the weights go inside it
    let folder = tmp.path().join("export-folder");
    std::fs::create_dir(&folder).unwrap();
    assert!(infinity(&["export", run_s, "-o", path_str(&folder)]));
    assert!(folder.join("model.safetensors").is_file() && folder.join("config.json").is_file());
    // as is any name but a .safetensors file's, made when missing
    let named = tmp.path().join("export-new");
    assert!(infinity(&["export", run_s, "-o", path_str(&named)]));
    assert!(named.join("model.safetensors").is_file() && named.join("tokenizer.safetensors").is_file());

    // the blocks in 2 chunks: upstream's `block_chunks.C.module.J` keys, and config.json says so
    let chunked = tmp.path().join("export-chunked/model.safetensors");
    assert!(infinity(&["export", run_s, "-o", path_str(&chunked), "--block-chunks", "2"]));
    let config = |out: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.with_file_name("config.json")).unwrap()).unwrap()
    };
    let c = config(&chunked);
    assert_eq!(
        (c["constructor_kwargs"]["block_chunks"].as_u64(), c["key_layout"].as_str()),
        (Some(2), Some("block_chunks.C.module.J"))
    );
    assert_eq!(c["source"]["weights"], "trained");
    let report = python(&[&"tools/check_export.py", &chunked, &"--expect", &expect]);
    assert!(
        report.contains("block keys as Infinity(block_chunks=2)") && report.contains("names and shapes equal"),
        "{report}"
    );
    // transformers' load_sharded_checkpoint (run_infinity.py --checkpoint_type torch_shard) reads the index
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(chunked.with_file_name("model.safetensors.index.json")).unwrap())
            .unwrap();
    let weights = std::fs::read(&chunked).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut names: Vec<&str> = index["weight_map"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let mut want: Vec<&str> = st.names();
    names.sort();
    want.sort();
    assert!(names == want && index["weight_map"]["head.weight"] == "model.safetensors", "{index}");
    // a tiny model is none of run_infinity.py's --model_type shapes; its 32 text channels no upstream pool
    assert!(c["upstream_loader"]["model_type"].is_null() && c["inference_kwargs"]["fused_norm"] == true, "{c}");
    let e = err(&["export", run_s, "-o", path_str(&tmp.path().join("slim.pth"))]);
    assert!(e.contains("--checkpoint_type torch_shard") && e.contains("torch.save"), "{e}");
    // the checker refuses keys that disagree with config.json's block_chunks (what upstream's strict load does)
    let flat = tmp.path().join("export-f32/model.safetensors");
    let mut c = config(&flat);
    c["constructor_kwargs"]["block_chunks"] = 2.into();
    std::fs::write(flat.with_file_name("config.json"), c.to_string()).unwrap();
    let report = python_fails(&[&"tools/check_export.py", &flat]);
    assert!(report.contains("`blocks.0.") && report.contains("block_chunks = 2"), "{report}");
    let e = err(&["export", run_s, "-o", path_str(&chunked), "--block-chunks", "3"]);
    assert!(e.contains("--block-chunks 3: must divide the model's depth 2 (one of [1, 2])"), "{e}");

    // exports never overwrite their sources: a checkpoint folder is refused, and so is the dataset's
    // folder (its tokenizer was once copied onto itself, emptied), which stays as it was
    let step2 = run.join("checkpoints/step-00000002");
    let e = err(&["export", run_s, "-o", path_str(&step2.join("model.safetensors"))]);
    assert!(e.contains("a checkpoint folder; export beside it"), "{e}");
    let e = err(&["export", run_s, "-o", &format!("{}/", path_str(&data))]);
    assert!(e.contains("a dataset folder; export into a folder of its own"), "{e}");
    assert!(!data.join("config.json").exists() && !data.join("model.safetensors").exists());
    assert!(infinity(&["data", "verify", data_s]));

    // a dataset moved since training: the export says so (no schedules) and takes --data
    let moved = tmp.path().join("data-moved");
    std::fs::rename(&data, &moved).unwrap();
    let out = tmp.path().join("export-moved/model.safetensors");
    assert!(infinity(&["export", run_s, "-o", path_str(&out)]));
    assert!(config(&out)["data"].is_null());
    assert!(infinity(&["export", run_s, "-o", path_str(&out), "--data", path_str(&moved)]));
    assert!(config(&out)["data"]["schedules"].is_array() && out.with_file_name("tokenizer.safetensors").is_file());
    let e = err(&["export", run_s, "-o", path_str(&out), "--data", path_str(&tmp.path().join("typo"))]);
    assert!(e.contains("--data") && e.contains("typo"), "{e}");
    std::fs::rename(&moved, &data).unwrap();

    // a corrupt checkpoint is refused with its checksum
    let ckpt = run.join("checkpoints/step-00000002/model.safetensors");
    let mut b = std::fs::read(&ckpt).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x55;
    std::fs::write(&ckpt, b).unwrap();
    assert!(err(&["export", run_s, "-o", path_str(&tmp.path().join("x.safetensors"))]).contains("crc32c"));
}

#[test]
fn sample_a_class_model_by_name() {
    let (tmp, _data, run, cfg) = class_run();
    assert!(infinity(&["train", path_str(&cfg), "--set", "run.steps=1"]));
    let png = tmp.path().join("g.png");
    let ckpt = run.join("checkpoints/step-00000001");
    assert!(infinity(&["sample", path_str(&ckpt), "--class", "red circle,5", "--n", "2", "-o", path_str(&png)]));
    assert!(image::open(&png).is_ok());
    assert!(err(&["sample", path_str(&ckpt), "--class", "purple dragon"]).contains("not a class id or name"));
    assert!(err(&["sample", path_str(&ckpt), "--class", "99"]).contains("classes 0..23"));
    assert!(err(&["sample", path_str(&ckpt), "--caption", "a red circle"]).contains("class-conditioned"));
    // a dataset of more classes is not the model's: class 29 panicked, class 24 sampled the null class
    let (data, other) = (tmp.path().join("data"), tmp.path().join("data-30"));
    std::fs::create_dir(&other).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("manifest.json")).unwrap()).unwrap();
    m["conditions"]["class"]["num_classes"] = 30.into();
    m["conditions"]["class"]["names"] = serde_json::json!([]); // (a name per class, or none)
    std::fs::write(other.join("manifest.json"), m.to_string()).unwrap();
    let e = err(&["sample", path_str(&ckpt), "--class", "24", "--data", path_str(&other)]);
    assert!(e.contains("30 classes, the model has 24: not the model's dataset"), "{e}");
}

/// `train --check` reports what a run would do, and the first error it would stop with, without
/// training or writing anything.
#[test]
fn check_reports_a_run_without_starting_it() {
    let (tmp, data, run, cfg) = class_run();
    let c = TrainConfig::load(&cfg, &["data.micro_batch=2".into()]).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 2, None, None).unwrap().join("\n");
    for want in ["48 rows in 1 shard (checksums verified)", "4 samples per step = 2 ranks × 1 micro-step × 2"] {
        assert!(lines.contains(want), "{want}:\n{lines}");
    }
    assert!(lines.contains("start: a fresh initialisation"), "{lines}");
    let per_256 = TrainConfig::load(&cfg, &["data.micro_batch=2".into(), "optim.lr_per_256=0.064".into()]).unwrap();
    let said = infinity_trainer::train::check::check(&per_256, 2, None, None).unwrap().join("\n");
    let want =
        format!("learning rate: peak 1.0000e-3 (optim.lr_per_256 = 0.064 × {} / 256)", per_256.data.global_batch);
    assert!(per_256.data.global_batch == 4 && said.contains(&want), "{said}");
    assert!(
        lines.contains("host memory for the model's state: rank 0 ") && lines.contains("each other rank"),
        "{lines}"
    );
    assert!(!lines.contains("moving average"), "{lines}");
    // the weights' moving average: one more f32 copy in memory and in each checkpoint
    let ema = TrainConfig::load(&cfg, &["data.micro_batch=2".into(), "optim.ema_decay=0.9".into()]).unwrap();
    let with_ema = infinity_trainer::train::check::check(&ema, 2, None, None).unwrap().join("\n");
    let mb = |text: &str, after: &str| -> f64 {
        let rest = &text[text.find(after).unwrap_or_else(|| panic!("{after}:\n{text}")) + after.len()..];
        rest.trim_start().split(' ').next().unwrap().parse().unwrap()
    };
    // each CPU rank: the weights, gradients and two moments; a checkpoint holds all but the gradients
    let (state, ckpt) = (mb(&lines, "state: rank 0"), mb(&lines, "checkpoints of"));
    assert!((state - ckpt * 4.0 / 3.0).abs() < 0.1, "{lines}");
    // the moving average: its shard on each of the 2 ranks, a whole copy in each checkpoint
    assert!((mb(&with_ema, "state: rank 0") - state * 18.0 / 16.0).abs() < 0.1, "{with_ema}");
    assert!((mb(&with_ema, "checkpoints of") - ckpt * 4.0 / 3.0).abs() < 0.15, "{with_ema}");
    // a shard copied in without being written into the dataset is named, not silently left out
    let extra = data.join("more.arrow");
    std::fs::copy(data.join("shard-00000.arrow"), &extra).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 2, None, None).unwrap().join("\n");
    assert!(
        lines.contains("1 shard file(s) the manifest does not list, not read: ") && lines.contains("more.arrow"),
        "{lines}"
    );
    std::fs::remove_file(&extra).unwrap();
    assert!(infinity(&["train", path_str(&cfg), "--check"]));
    assert!(!run.exists(), "--check wrote {}", run.display());
    let (e, code) = fails(&["train", path_str(&cfg), "--check", "--resume", path_str(&tmp.path().join("nowhere"))]);
    assert!(e.contains("no such checkpoint or run folder") && code == 2, "{code}: {e}");
    assert!(!e.contains("did you mean"), "{e}");
    let (e, code) = fails(&["train", path_str(&cfg), "--check", "--resume", "autoo"]);
    assert!(e.contains("autoo: no such checkpoint") && e.contains("did you mean `--resume auto`") && code == 2, "{e}");
    assert!(
        err(&["train", path_str(&cfg), "--check", "--world", "0"]).contains("expected a whole number ≥ 1, found `0`")
    );
    // u64 counts too (clap's own range check said "0 is not in 1..18446744073709551615")
    let out = tmp.path().join("none");
    assert!(err(&["data", "synth", "--out", path_str(&out), "--rows", "0"])
        .contains("expected a whole number ≥ 1, found `0`"));
    let (e, code) = fails(&["train", path_str(&cfg), "--check", "--world", "3"]);
    assert!(e.contains("must split into 3 ranks"), "{e}");
    assert_eq!(code, 2, "a batch that does not split over the ranks is a config error");
    // a stall limit within the collectives' timeout is refused for several ranks, as their run refuses it
    let stall = ["--set", "run.stall_timeout_s=3", "--set", "dist.timeout_s=4", "--set", "data.micro_batch=2"];
    let (e, code) = fails(&[&["train", path_str(&cfg), "--check", "--world", "2"][..], &stall[..]].concat());
    let said = "run.stall_timeout_s (3) must be longer than dist.timeout_s (4) with 2 ranks";
    assert!(e.contains(said) && code == 2, "{code}: {e}");
    assert!(infinity(&[&["train", path_str(&cfg), "--check"][..], &stall[..]].concat()), "one rank waits on none");
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not weights").unwrap();
    let (e, code) =
        fails(&["train", path_str(&cfg), "--check", "--set", &format!("model.init_from={}", path_str(&junk))]);
    assert!(e.contains("model.init_from") && e.contains("not a safetensors file") && code == 2, "{code}: {e}");
    // what a run finds before its first step, a restart would find again: the launcher's no-restart code
    let (e, code) = fails(&["train", path_str(&cfg), "--set", &format!("model.init_from={}", path_str(&junk))]);
    assert!(e.contains("model.init_from") && code == 2, "{code}: {e}");
    let nowhere = format!("data.dir={}", path_str(&tmp.path().join("nowhere")));
    let (e, code) = fails(&["train", path_str(&cfg), "--set", &nowhere]);
    assert!(e.contains("data.dir") && e.contains("nowhere") && code == 2, "{code}: {e}");
    // μP's base model must exist: at width 32 the tiny preset's FFN rounds to nothing
    let e = err(&["train", path_str(&cfg), "--check", "--set", "model.mup_base_width=32"]);
    assert!(e.contains("model.mup_base_width = 32") && e.contains("FFN"), "{e}");
    assert!(infinity(&["train", path_str(&cfg), "--check", "--set", "model.mup_base_width=48"]));
    let c = TrainConfig::load(&cfg, &["model.mup_base_width=48".into()]).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, None, None).unwrap().join("\n");
    let want = "μP: base model of width 48 with 1 head (head dimension 48); learning-rate multipliers 1.0000, 0.7500";
    assert!(lines.contains(want), "{lines}");
    // a run that may take a GPU is told what one needs (here none is found: the estimate alone)
    assert!(!lines.contains("GPU memory"), "a CPU run has no GPU estimate: {lines}");
    let c = TrainConfig::load(&cfg, &["run.device=auto".into()]).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, None, None).unwrap().join("\n");
    let line =
        lines.lines().find(|l| l.starts_with("GPU memory per rank (estimate): ")).unwrap_or_else(|| panic!("{lines}"));
    assert!(line.contains("(micro-batch 4 × ") && line.contains("with run.recompute = true"), "{line}");
    assert!(!lines.contains("precision: f32"), "{lines}");
    // a bf16 config (upstream's recipe) landing on the CPU is told it computes in f32 there
    let c = TrainConfig::load(&cfg, &["run.device=auto".into(), "run.precision=bf16".into()]).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, None, None).unwrap().join("\n");
    assert!(lines.contains("precision: f32 (run.precision = \"bf16\" is the GPU's arithmetic"), "{lines}");
    // data.micro_batch = "auto" without a GPU: a rank's share of the global batch, in one micro-step
    let c = TrainConfig::load(&cfg, &["data.micro_batch=auto".into()]).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 2, None, None).unwrap().join("\n");
    for want in ["data.micro_batch = auto: 2, a rank's share", "4 samples per step = 2 ranks × 1 micro-step × 2"] {
        assert!(lines.contains(want), "{want}:\n{lines}");
    }
    // a GPU run checked on a machine without one, against the GPU it will get (--gpu-gib)
    let set = ["data.micro_batch=auto".to_string(), "run.device=auto".into()];
    let c = TrainConfig::load(&cfg, &set).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, None, Some((1 << 30) + (64 << 20))).unwrap().join("\n");
    for want in [
        "device: auto (f32), checked against a GPU of 1.06 GiB (this machine's devices not opened)",
        "data.micro_batch = auto: 4, the largest divisor of the 4 samples per rank whose step fits the GPU's 1.06 GiB",
        "GPU memory per rank (estimate): ",
    ] {
        assert!(lines.contains(want), "{want}:\n{lines}");
    }
    let check = |gib: &str, device: &str| {
        let args = ["train", path_str(&cfg), "--check", "--set", device, "--gpu-gib", gib];
        fails(&args)
    };
    let (e, code) = check("1.0", "run.device=auto");
    assert!(e.contains("Micro-batches: none fits") && code == 2, "{code}: {e}");
    assert!(check("80", "run.device=cpu").0.contains("but run.device = \"cpu\""));
    // sizing a CUDA run takes any build (a login node's); it says what this one would do
    let c = TrainConfig::load(&cfg, &["run.device=cuda".to_string()]).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, None, Some(80 << 30)).unwrap().join("\n");
    assert!(lines.contains("device: cuda (f32), checked against a GPU of 80.00 GiB"), "{lines}");
    assert!(check("0", "run.device=auto").0.contains("--gpu-gib 0: expected a size in GiB"));
    // validation data whose class ids name other classes
    let val = tmp.path().join("val");
    std::fs::create_dir(&val).unwrap();
    for e in std::fs::read_dir(tmp.path().join("data")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, val.join(p.file_name().unwrap())).unwrap();
    }
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(val.join("manifest.json")).unwrap()).unwrap();
    m["conditions"]["class"]["names"][0] = "zebra".into();
    std::fs::write(val.join("manifest.json"), m.to_string()).unwrap();
    // an enumerated key's unknown value is named with the values it takes (not the Rust enum)
    let (e, code) = fails(&["train", path_str(&cfg), "--check", "--set", "run.device=gpu"]);
    assert!(e.contains("unknown value `gpu` (expected \"cpu\", \"cuda\" or \"auto\")") && code == 2, "{code}: {e}");
    assert!(!e.contains("DeviceChoice"), "{e}");
    let val_dir = format!("val.dir={}", path_str(&val));
    let (e, code) = fails(&["train", path_str(&cfg), "--check", "--set", &val_dir, "--set", "val.every=1"]);
    assert!(e.contains("class 0 is `zebra` there and") && code == 2, "{code}: {e}");
    // the loader's checks, as the first step would make them: a bucket holding the global batch, and a
    // saved position this config can continue
    let (e, code) =
        fails(&["train", path_str(&cfg), "--check", "--set", "data.global_batch=96", "--set", "data.micro_batch=96"]);
    // (a configuration error, exit 2: the data are fine)
    assert!(e.contains("no bucket has a full global batch of 96 rows") && code == 2, "{code}: {e}");
    assert!(infinity(&["train", path_str(&cfg)]));
    let c = TrainConfig::load(&cfg, &["optim.lr=2e-3".into()]).unwrap();
    let lines =
        infinity_trainer::train::check::check(&c, 1, Some(&run.join("checkpoints/step-00000002")), None).unwrap();
    let want = "resume: settings that differ from the checkpoint's: optim.lr: 0.001 → 0.002";
    assert!(lines.iter().any(|l| l == want), "{lines:?}");
    // a longer run: its schedule is another one from here
    let c = TrainConfig::load(&cfg, &["run.steps=4".into()]).unwrap();
    let lines =
        infinity_trainer::train::check::check(&c, 1, Some(&run.join("checkpoints/step-00000002")), None).unwrap();
    let want = "run.steps: 2 → 4 (the learning-rate schedule is recomputed for the new length from this step)";
    assert!(lines.iter().any(|l| l.ends_with(want)), "{lines:?}");
    // the drop-path rate an unset key takes from the preset, against the checkpoint's model's (one of an
    // earlier build, whose state.json records no checksum of its model.json)
    let ckpt = run.join("checkpoints/step-00000002");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(ckpt.join("model.json")).unwrap()).unwrap();
    m["drop_path_rate"] = 0.1.into();
    std::fs::write(ckpt.join("model.json"), m.to_string()).unwrap();
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("state.json")).unwrap()).unwrap();
    state.as_object_mut().unwrap().remove("model_json_crc32c").expect("this build records model.json's checksum");
    let state = serde_json::to_string_pretty(&state).unwrap();
    std::fs::write(ckpt.join("state.json"), &state).unwrap();
    std::fs::write(ckpt.join("DONE"), format!("state.json crc32c {:08x}\n", crc32c::crc32c(state.as_bytes()))).unwrap();
    let c = TrainConfig::load(&cfg, &[]).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, Some(&ckpt), None).unwrap();
    assert!(lines.iter().any(|l| l.contains("model.drop_path_rate (resolved): 0.1 → 0")), "{lines:?}");
    let (e, code) = fails(&["train", path_str(&cfg), "--check", "--resume", "auto", "--set", "run.seed=5"]);
    assert!(
        e.contains("cannot resume the data stream") && e.contains("run.seed 3, this run has 5") && code == 2,
        "{code}: {e}"
    );
    // another global batch goes on at its size (trainer/tests/global_batch_change.rs), said
    let c = TrainConfig::load(&cfg, &["data.global_batch=8".into(), "run.steps=3".into()]).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, Some(&ckpt), None).unwrap();
    let want =
        "data.global_batch: 4 → 8 (from this step the rest of the epoch's rows are drawn in batches of the new size";
    assert!(lines.iter().any(|l| l.contains(want)), "{lines:?}");
}

/// `infinity model coord-check` prints both parametrizations' tables.
#[test]
fn the_coordinate_check_runs_from_the_command_line() {
    assert!(infinity(&["model", "coord-check", "--widths", "64,96", "--steps", "1", "--batch", "1"]));
    let e = err(&["model", "coord-check", "--widths", "64", "--base-width", "32"]);
    assert!(e.contains("model.mup_base_width = 32"), "{e}");
}

/// A sample grid logged during training is what `infinity sample` draws from the checkpoint of that
/// step with the same settings, tile for tile (each sample keyed by its condition, not its place).
#[test]
fn a_training_sample_grid_is_what_infinity_sample_draws() {
    let (tmp, _data, run, cfg) = class_run();
    assert!(infinity(&["train", path_str(&cfg)]));
    // (sample.n = 2 of 24 classes: the first and the last; one each; the sample section's defaults)
    let out = tmp.path().join("drawn.png");
    assert!(infinity(&["sample", path_str(&run), "--class", "0,23", "--n", "1", "-o", path_str(&out)]));
    let (logged, drawn) =
        (image::open(run.join("samples/step-00000002.png")).unwrap().to_rgb8(), image::open(&out).unwrap().to_rgb8());
    // the logged grid holds the two side by side, the drawn one one above the other (2 px borders)
    let side = logged.height() - 4;
    assert_eq!(drawn.width() - 4, side, "tiles of one size");
    for k in 0..2u32 {
        let tile = |img: &image::RgbImage, x0: u32, y0: u32| -> Vec<u8> {
            (0..side).flat_map(|y| (0..side).flat_map(move |x| img.get_pixel(x0 + x, y0 + y).0)).collect()
        };
        let at = 2 + k * (side + 2);
        assert!(tile(&logged, at, 2) == tile(&drawn, 2, at), "tile {k} differs");
    }
}

/// `model.init_from` starts a fresh run from another run's weights (its folder or its export): with a
/// learning rate too small to move them, the new run's first checkpoint holds the old run's weights.
#[test]
fn a_fresh_run_starts_from_another_runs_weights() {
    let (tmp, _data, run, cfg) = class_run();
    assert!(infinity(&["train", path_str(&cfg), "--set", "run.steps=3"]));
    let (exported, export_dir) = (tmp.path().join("export.safetensors"), tmp.path().join("export-dir"));
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&exported)]));
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&export_dir)]));
    let weights = |dir: &Path| infinity_trainer::train::checkpoint::load_model(dir, false).unwrap().params.data;
    let trained = weights(&run);
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    // an export folder is no checkpoint: resuming from it names the one it came from
    let e = err(&["train", path_str(&cfg), "--resume", path_str(&export_dir)]);
    assert!(e.contains("an `infinity export` folder") && e.contains("step 3"), "{e}");
    for (i, from) in [None, Some(&run), Some(&exported), Some(&export_dir)].into_iter().enumerate() {
        let dir = tmp.path().join(format!("next-{i}"));
        let mut args = vec!["train".to_string(), path_str(&cfg).into()];
        for set in [format!("run.dir={}", path_str(&dir)), "run.steps=1".into(), "optim.lr=1e-30".into()] {
            args.extend(["--set".into(), set]);
        }
        if let Some(from) = from {
            args.extend(["--set".into(), format!("model.init_from={}", path_str(from))]);
        }
        assert!(infinity(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        let d = max_diff(&weights(&dir), &trained);
        assert!(if from.is_some() { d < 1e-12 } else { d > 1e-3 }, "init_from {from:?}: weights differ by {d}");
    }
    let elsewhere = format!("run.dir={}", path_str(&tmp.path().join("elsewhere")));
    let (e, _) = fails(&["train", path_str(&cfg), "--set", "model.init_from=/nowhere/at-all", "--set", &elsewhere]);
    assert!(e.contains("model.init_from") && e.contains("/nowhere/at-all"), "{e}");
}

/// `optim.ema_decay` keeps a moving average of the weights in every checkpoint (`ema.safetensors`):
/// each checkpoint's average is the previous one pulled towards that step's weights, a resumed run
/// continues it bit for bit, `export --ema` and `sample --ema` use it, and `model.init_from_ema`
/// starts a fresh run from it.
#[test]
fn a_moving_average_of_the_weights_rides_along() {
    use infinity_trainer::train::checkpoint::load_model;
    let (tmp, _data, run, cfg) = class_run();
    let sets = ["--set", "run.steps=4", "--set", "checkpoint.every=1", "--set", "checkpoint.keep_last=4"];
    let sets = [&sets[..], &["--set", "optim.ema_decay=0.75"]].concat();
    let train = |extra: &[&str]| assert!(infinity(&[&["train", path_str(&cfg)][..], &sets[..], extra].concat()));
    train(&[]);
    let ckpt = |run: &Path, step: u64| run.join(format!("checkpoints/step-{step:08}"));
    let load = |step: u64, ema: bool| load_model(&ckpt(&run, step), ema).unwrap().params.data;
    for step in 2..=4 {
        let mut expect = load(step - 1, true);
        infinity_kernels::adamw::ema_update(&mut expect, &load(step, false), 0.75);
        assert!(expect == load(step, true), "step {step}: not the previous average moved towards the weights");
    }
    assert!(load(4, true) != load(4, false), "the average is the weights");

    // resumed from step 2 (a copy of that checkpoint): the same average at step 4, byte for byte
    let again = tmp.path().join("again");
    std::fs::create_dir_all(ckpt(&again, 2)).unwrap();
    for f in std::fs::read_dir(ckpt(&run, 2)).unwrap().flatten() {
        std::fs::copy(f.path(), ckpt(&again, 2).join(f.file_name())).unwrap();
    }
    train(&["--set", &format!("run.dir={}", path_str(&again)), "--resume", "auto"]);
    let bytes = |run: &Path| std::fs::read(ckpt(run, 4).join("ema.safetensors")).unwrap();
    assert!(bytes(&again) == bytes(&run), "a resumed run's moving average differs");

    // export and sample with it
    let out = tmp.path().join("ema-export.safetensors");
    assert!(infinity(&["export", path_str(&run), "--ema", "-o", path_str(&out)]));
    let ck = load_model(&run, false).unwrap();
    let lay = infinity_trainer::model::Layout::new(&ck.model);
    let exported = infinity_trainer::model::io::load_weights(&out, &ck.model, &lay).unwrap();
    assert!(exported.data == load(4, true), "export --ema did not write the moving average");
    let grid = tmp.path().join("ema.png");
    assert!(infinity(&["sample", path_str(&run), "--ema", "--n", "1", "--class", "0", "-o", path_str(&grid)]));
    assert!(grid.is_file());
    // a run without one says so
    let plain = tmp.path().join("plain");
    assert!(infinity(&[
        "train",
        path_str(&cfg),
        "--set",
        "run.steps=1",
        "--set",
        &format!("run.dir={}", path_str(&plain))
    ]));
    let (e, _) = fails(&["export", path_str(&plain), "--ema", "-o", path_str(&out)]);
    assert!(e.contains("no moving average of the weights"), "{e}");
    assert!(!plain.join("checkpoints/step-00000001/ema.safetensors").exists());

    // model.init_from_ema: a fresh run starts from the average (a learning rate too small to move it)
    let next = tmp.path().join("from-ema");
    let from = |src: &Path| format!("model.init_from={}", path_str(src));
    let (src, dir) = (from(&run), format!("run.dir={}", path_str(&next)));
    let tiny_lr = ["--set", "run.steps=1", "--set", "optim.lr=1e-30", "--set", "model.init_from_ema=true"];
    assert!(infinity(&[&["train", path_str(&cfg), "--set", &src, "--set", &dir][..], &tiny_lr[..]].concat()));
    let started = load_model(&next, false).unwrap().params.data;
    let d = started.iter().zip(&load(4, true)).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(d < 1e-12, "model.init_from_ema: the new run's weights differ from the average by {d}");
    // an export of the average is taken; sources without one are named with what to give instead
    let ema_dir = tmp.path().join("ema-export");
    assert!(infinity(&["export", path_str(&run), "--ema", "-o", path_str(&ema_dir)]));
    let with_ema = |src: &Path| vec![from(src), "model.init_from_ema=true".into()];
    let fresh_dir = format!("run.dir={}", path_str(&tmp.path().join("checked")));
    let c = TrainConfig::load(&cfg, &[with_ema(&ema_dir), vec![fresh_dir.clone()]].concat()).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, None, None).unwrap().join("\n");
    assert!(lines.contains("start: weights from") && lines.contains(": the moving average of its weights)"), "{lines}");
    let check_fails = |src: &Path| {
        let sets = with_ema(src);
        fails(&["train", path_str(&cfg), "--check", "--set", &sets[0], "--set", &sets[1], "--set", &fresh_dir]).0
    };
    let e = check_fails(&plain);
    assert!(e.contains("no moving average of the weights (the run had optim.ema_decay = 0)"), "{e}");
    // (the weights file of an export made with --ema is the average: taken as it is)
    let c = TrainConfig::load(&cfg, &[with_ema(&out), vec![fresh_dir.clone()]].concat()).unwrap();
    let lines = infinity_trainer::train::check::check(&c, 1, None, None).unwrap().join("\n");
    assert!(lines.contains(&format!("start: weights from {} (an export of", out.display())), "{lines}");
    let trained_dir = tmp.path().join("trained-export");
    assert!(infinity(&["export", path_str(&run), "-o", path_str(&trained_dir)]));
    let e = check_fails(&trained_dir);
    assert!(e.contains("an export of the trained weights, not their moving average"), "{e}");
    let e = check_fails(&trained_dir.join("model.safetensors"));
    assert!(e.contains("model.safetensors: an export of the trained weights, not their moving average"), "{e}");
    let loose = tmp.path().join("loose.safetensors");
    std::fs::copy(trained_dir.join("model.safetensors"), &loose).unwrap();
    let e = check_fails(&loose);
    assert!(e.contains("loose.safetensors: a safetensors file holds one set of weights, taken as it is"), "{e}");

    // a fresh run keeping its own average starts it from the source's average, as upstream's
    // --rush_resume loads gpt_ema_fsdp into its EMA; its weights from the source's weights
    let keeping = [from(&run), "optim.ema_decay=0.75".into(), fresh_dir.clone()];
    let lines = infinity_trainer::train::check::check(&TrainConfig::load(&cfg, &keeping).unwrap(), 1, None, None)
        .unwrap()
        .join("\n");
    let want =
        format!("start: the run's moving average of the weights starts from the source's: {}", ckpt(&run, 4).display());
    assert!(lines.contains(&want), "{lines}");
    let carried = tmp.path().join("carried");
    let sets = [from(&run), format!("run.dir={}", path_str(&carried)), "optim.ema_decay=0.75".into()];
    let sets: Vec<&str> = sets.iter().flat_map(|s| ["--set", s.as_str()]).collect();
    let tiny_lr = ["--set", "run.steps=1", "--set", "optim.lr=1e-30"];
    assert!(infinity(&[&["train", path_str(&cfg)][..], &sets[..], &tiny_lr[..]].concat()));
    let (weights, average) = (load_model(&carried, false).unwrap().params.data, load_model(&carried, true).unwrap());
    let mut expect = load(4, true);
    infinity_kernels::adamw::ema_update(&mut expect, &weights, 0.75);
    assert!(average.params.data == expect, "the average did not start from the source's");
    let d = weights.iter().zip(&load(4, false)).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(d < 1e-12, "the weights did not start from the source's weights ({d})");
    let (e, _) = fails(&["train", path_str(&cfg), "--check", "--set", "model.init_from_ema=true"]);
    assert!(e.contains("model.init_from_ema = true needs model.init_from"), "{e}");
}

/// The run folder across sessions: a fresh start refuses a folder that holds a run; a finished run
/// resubmitted with `--resume auto` keeps its summary; a resume after a crash drops what the crashed
/// session logged past its checkpoint (metrics.jsonl, and TensorBoard through a session restart), so
/// every step appears once, with the uninterrupted run's values.
#[test]
fn a_run_folder_across_sessions() {
    let (_tmp, _data, run, cfg) = class_run();
    let four = ["--set", "run.steps=4", "--set", "checkpoint.every=2", "--set", "checkpoint.keep_last=2"];
    assert!(infinity(&[&["train", path_str(&cfg)][..], &four[..]].concat()));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();

    let (again, code) = fails(&[&["train", path_str(&cfg)][..], &four[..]].concat());
    assert_eq!(code, 2, "a run folder that holds a run is a bad invocation (not restarted)");
    assert!(
        again.contains("already holds a run (checkpoints up to step 4)") && again.contains("--resume auto"),
        "{again}"
    );

    // resubmitted after it finished: nothing to train, the summary stays (and the temporary file of a
    // summary write killed before its rename goes)
    std::fs::write(run.join(".summary.json.tmp"), &summary[..summary.len() / 2]).unwrap();
    assert!(infinity(&[&["train", path_str(&cfg), "--resume", "auto"][..], &four[..]].concat()));
    assert_eq!(std::fs::read_to_string(run.join("summary.json")).unwrap(), summary);
    assert!(!run.join(".summary.json.tmp").exists(), "the killed write's temporary file stayed");

    // a crash after step 4 but before its checkpoint landed: resume from step 2
    std::fs::remove_dir_all(run.join("checkpoints/step-00000004")).unwrap();
    assert!(infinity(&[&["train", path_str(&cfg), "--resume", "auto"][..], &four[..]].concat()));
    let resumed = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let losses = |text: &str| -> Vec<(u64, f64)> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(losses(&resumed), losses(&metrics), "each step once, as the uninterrupted run logged it");
    let out = python(&[&"tools/read_tensorboard.py", &run.join("tb")]);
    // (TensorBoard reports the purge on stderr)
    let tb: serde_json::Value = serde_json::from_str(out.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    let steps: Vec<u64> =
        tb["scalars"]["train/loss"].as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4], "TensorBoard drops the first session's steps 3 and 4: {out}");
}

/// Settings out of range are refused naming the key; a single AdamW field can be set alone.
#[test]
fn out_of_range_settings_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("train.toml");
    write_config(&cfg, &tmp.path().join("data"), &tmp.path().join("run"), "class");
    let load = |set: &[&str]| TrainConfig::load(&cfg, &set.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for (set, key) in [
        (&["optim.clip=-1"][..], "optim.clip"),
        (&["optim.adamw.beta1=1.5"], "optim.adamw.beta1"),
        (&["optim.adamw.weight_decay=-5"], "weight_decay"),
        (&["loss.label_smoothing=2"], "loss.label_smoothing"),
        (&["optim.decay.kind=cosine", "optim.decay.min_ratio=2"], "min_ratio"),
        (&["optim.skip_grad_z=-3"], "optim.skip_grad_z"),
        (&["optim.skip_loss_z=inf"], "optim.skip_loss_z"),
        (&["optim.spike_window=1"], "optim.spike_window"),
        (&["dist.bucket_mib=-1"], "dist.bucket_mib"),
        (&["model.mup_base_width=0"], "model.mup_base_width"),
        (&["model.mup_base_heads=2"], "model.mup_base_heads needs model.mup_base_width"),
        (&["model.mup_base_width=64", "model.mup_base_heads=0"], "model.mup_base_heads"),
    ] {
        let e = format!("{:#}", load(set).unwrap_err());
        assert!(e.contains(key), "{set:?}: {e}");
        // the error says where the value came from: the last override here
        assert!(e.starts_with(&format!("--set {}: ", set[set.len() - 1].split('=').next().unwrap())), "{set:?}: {e}");
    }
    // a range error about the file's own value names the file
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("lr = 1e-3", "lr = -1e-3")).unwrap();
    let e = format!("{:#}", load(&[]).unwrap_err());
    assert!(e.starts_with(&format!("{}: optim.lr must be", cfg.display())), "{e}");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("lr = -1e-3", "lr = 1e-3")).unwrap();
    let e = format!("{:#}", load(&["=3"]).unwrap_err());
    assert!(e.contains("--set =3: expected key.path=value"), "{e}");
    let e = format!("{:#}", load(&["run.dir="]).unwrap_err());
    assert!(e.contains("--set run.dir: run.dir must name a folder"), "{e}");
    // (the dataset's folder, named another way)
    let into_data = format!("run.dir={}/run/../data", tmp.path().display());
    let e = format!("{:#}", load(&[&into_data]).unwrap_err());
    assert!(e.contains("run.dir and data.dir are one folder"), "{e}");
    // another dataset's folder
    let other = tmp.path().join("other-data");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("manifest.json"), "{}").unwrap();
    let e = format!("{:#}", load(&[&format!("run.dir={}", other.display())]).unwrap_err());
    assert!(e.contains("a dataset's folder (it holds manifest.json): give the run a folder of its own"), "{e}");
    // a known kind without its fields is told what it takes, not the kinds
    let e = format!("{:#}", load(&["optim.decay.kind=wsd"]).unwrap_err());
    assert!(e.contains("\"wsd\" takes decay_fraction and min_ratio") && !e.contains("expected kind"), "{e}");
    let c = load(&["optim.adamw.beta1=0.95", "optim.clip=0"]).unwrap();
    assert_eq!((c.optim.adamw.beta1, c.optim.adamw.beta2, c.optim.clip), (0.95, 0.97, 0.0));
}

/// A latent value that is not finite (which checksums and the loader's length checks let through)
/// stops training at the step that reads it, naming the step and the sample, and `data verify` lists
/// the rows.
#[test]
fn a_non_finite_latent_stops_training_naming_the_sample() {
    use infinity_data::writer::{DatasetWriter, RowData, WriterOptions};
    let tmp = tempfile::tempdir().unwrap();
    let (data, bad, run) = (tmp.path().join("data"), tmp.path().join("bad"), tmp.path().join("run"));
    let synth = ["data", "synth", "--out", path_str(&data), "--rows", "16", "--fit-rows", "16", "--budget", "demo4"];
    assert!(infinity(&synth));
    let ds = infinity_data::Dataset::open(&data, infinity_data::Checksums::Verify).unwrap();
    let header = infinity_data::manifest::Manifest { shards: vec![], total_rows: 0, ..ds.manifest.clone() };
    let mut w = DatasetWriter::create(&bad, header, WriterOptions::default()).unwrap();
    for g in 0..ds.num_rows() {
        let mut row = RowData::from(ds.row(g));
        row.latent.as_mut().unwrap()[10..12].copy_from_slice(&half::f16::NAN.to_le_bytes()); // value 5 of every row
        w.push(row).unwrap();
    }
    w.finish().unwrap();
    std::fs::copy(data.join("tokenizer.safetensors"), bad.join("tokenizer.safetensors")).unwrap();

    let cfg = tmp.path().join("train.toml");
    write_config(&cfg, &bad, &run, "class");
    // exit code 65 (bad data): `infinity launch` does not restart a group that would read the same row
    let (e, code) = fails(&["train", path_str(&cfg)]);
    // (the shard and row that hold it, as a bad row's error names them)
    let shard = bad.join(&ds.manifest.shards[0].file);
    assert!(e.contains(&format!("{}: row ", shard.display())) && e.contains("its latent holds NaN at value 5"), "{e}");
    assert!(e.contains("preparing the batch of step 1: "), "{e}");
    assert_eq!(code, 65, "{e}");
    let report = infinity_data::inspect::verify(&bad);
    assert!(
        report.problems.iter().any(|p| p.contains("column `latent`: expected finite values")),
        "{:?}",
        report.problems
    );

    // a shard whose bytes changed fails its checksum when training opens it: bad data too
    let shard = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().path());
    let shard = shard.filter(|p| p.extension().is_some_and(|x| x == "arrow")).min().unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    write_config(&cfg, &data, &tmp.path().join("run2"), "class");
    let (e, code) = fails(&["train", path_str(&cfg)]);
    assert!(e.contains("crc32c") && e.contains(&shard.display().to_string()), "{e}");
    assert_eq!(code, 65, "{e}");
}

/// `infinity eval` measures checkpoints as training measures its validation set: on the run's own
/// `val.dir` it gives val.jsonl's losses exactly; another dataset and fewer rows are given on the command
/// line, the results appended to `--out`; a run without a validation set needs `--val`.
/// Bits of another tokenizer mean other images: `sample`, `export` and `eval` refuse a `--data` whose
/// tokenizer is not the one the checkpoint trained with (its data position records it), also once the
/// run's own dataset has moved away, where nothing else could tell.
#[test]
fn another_tokenizers_dataset_is_refused_by_sample_export_and_eval() {
    let (tmp, data, run, cfg) = class_run();
    assert!(infinity(&["train", path_str(&cfg)]));
    // the same rows' kind (d, classes, schedules) from another fitted tokenizer
    let other = tmp.path().join("other");
    let synth = ["data", "synth", "--out", path_str(&other), "--rows", "48", "--fit-rows", "32", "--budget", "demo4"];
    assert!(infinity(&[&synth[..], &["--seed", "7"]].concat()));
    let (png, export) = (tmp.path().join("grid.png"), tmp.path().join("export"));
    let refusals = |said: &str| {
        let e = err(&["sample", path_str(&run), "--data", path_str(&other), "--class", "0", "-o", path_str(&png)]);
        assert!(e.contains("is not the one the model trained with") && e.contains(said), "sample: {e}");
        let e =
            err(&["export", path_str(&run), "--data", path_str(&other), "-o", path_str(&export.join("m.safetensors"))]);
        assert!(e.contains("is not the one the model trained with") && e.contains(said), "export: {e}");
        assert!(!png.exists() && !export.join("m.safetensors").exists(), "a refused command wrote its output");
    };
    refusals("--data");
    let e = err(&["eval", path_str(&run), "--data", path_str(&other), "--val", path_str(&data)]);
    assert!(e.contains(&format!("--data {}: its tokenizer (", path_str(&other))), "eval: {e}");
    // the run's dataset moved: the checkpoint's record still tells
    std::fs::rename(&data, tmp.path().join("moved")).unwrap();
    refusals("its checkpoint says");
    // and the run's data.dir replaced by another tokenizer's dataset
    std::fs::rename(&other, &data).unwrap();
    let e = err(&["sample", path_str(&run), "--class", "0", "-o", path_str(&png)]);
    assert!(e.contains("(the run's data.dir: replaced since?): its tokenizer ("), "{e}");
}

/// A tokenizer file that does not read, with `--bits`: the bits are still written (said, with no image),
/// and an image an earlier sampling left at `-o` stays as it was; without `--bits`, an error.
#[test]
fn a_damaged_tokenizer_still_lets_the_bits_be_written() {
    let (tmp, data, run, cfg) = class_run();
    assert!(infinity(&["train", path_str(&cfg)]));
    let (png, bits) = (tmp.path().join("grid.png"), tmp.path().join("bits.safetensors"));
    assert!(infinity(&["sample", path_str(&run), "--class", "0", "-o", path_str(&png)]));
    let before = std::fs::read(&png).unwrap();
    std::fs::write(data.join("tokenizer.safetensors"), b"damaged").unwrap();
    let args = ["sample", path_str(&run), "--class", "0", "-o", path_str(&png)];
    assert!(infinity(&[&args[..], &["--bits", path_str(&bits)]].concat()));
    assert!(bits.is_file() && std::fs::read(&png).unwrap() == before);
    let e = err(&args);
    assert!(e.contains("tokenizer.safetensors") && e.contains("pass --bits FILE"), "{e}");
}

#[test]
fn eval_measures_checkpoints_as_training_validates() {
    let (tmp, data, run, cfg) = class_run();
    let val = tmp.path().join("val");
    let tokenizer = data.join("tokenizer.safetensors");
    let synth = ["data", "synth", "--out", path_str(&val), "--rows", "12", "--fit-rows", "32", "--budget", "demo4"];
    assert!(infinity(&[&synth[..], &["--tokenizer", path_str(&tokenizer), "--seed", "5"]].concat()));
    std::fs::create_dir_all(&run).unwrap();
    let e = err(&["eval", path_str(&run)]);
    assert!(e.contains("no complete checkpoint"), "{e}");
    let sets = ["--set", "checkpoint.keep_last=3", "--set", "run.steps=3"];
    assert!(infinity(&[&["train", path_str(&cfg)][..], &sets].concat()));
    let e = err(&["eval", path_str(&run)]);
    assert!(e.contains("the run has no validation set (val.dir): pass --val DIR"), "{e}");

    // a run validating on `val` every step: eval's losses are val.jsonl's
    let validated = tmp.path().join("validated");
    let val_sets =
        ["--set", &format!("run.dir={}", path_str(&validated)), "--set", &format!("val.dir={}", path_str(&val))];
    assert!(infinity(&[&["train", path_str(&cfg)][..], &sets, &val_sets, &["--set", "val.every=1"]].concat()));
    let out = tmp.path().join("eval.jsonl");
    assert!(infinity(&["eval", path_str(&validated), "--all", "--out", path_str(&out)]));
    let lines = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (evals, logged) = (lines(&out), lines(&validated.join("val.jsonl")));
    assert_eq!(evals.len(), 3, "{evals:?}");
    for e in &evals {
        let at = logged.iter().find(|l| l["step"] == e["step"]).unwrap();
        assert_eq!((&e["loss"], &e["bit_acc"], &e["rows"]), (&at["loss"], &at["bit_acc"], &at["rows"]), "{e} vs {at}");
        // (and what the run had seen there, as its log says)
        assert!(e["tokens_seen"].as_u64().is_some(), "{e}");
        for k in ["samples_seen", "tokens_seen", "flops_seen"] {
            assert_eq!(e[k], at[k], "{k}: {e} vs {at}");
        }
    }
    // the unvalidated run on `val`, its newest checkpoint, 5 rows
    assert!(infinity(&["eval", path_str(&run), "--val", path_str(&val), "--max-rows", "5", "--out", path_str(&out)]));
    let last = lines(&out).pop().unwrap();
    assert_eq!((last["step"].as_u64(), last["rows"].as_u64()), (Some(3), Some(5)), "{last}");
    assert!(last["set"].is_null(), "{last}");
    // named (for `infinity scaling --val-set`, from the run's eval.jsonl)
    let named = ["eval", path_str(&run), "--val", path_str(&val), "--name", "news", "--out"];
    assert!(infinity(&[&named[..], &[path_str(&run.join("eval.jsonl"))]].concat()));
    let last = lines(&run.join("eval.jsonl")).pop().unwrap();
    assert_eq!((last["set"].as_str(), last["step"].as_u64()), (Some("news"), Some(3)), "{last}");
    // (each line names the run whose weights it measured, which `infinity scaling` compares with the
    // folder it reads: another run's line is not this run's loss)
    let canonical = |p: &str| Path::new(p).canonicalize().unwrap();
    assert_eq!(canonical(last["run"].as_str().unwrap()), run.canonicalize().unwrap(), "{last}");
    let e = err(&["eval", path_str(&run), "--name", "news"]);
    assert!(e.contains("--val"), "--name without --val: {e}");
    let e = err(&["eval", path_str(&run), "--val", path_str(&tmp.path().join("nowhere"))]);
    assert!(e.contains("not a dataset (no manifest.json)"), "{e}");
    // a line a kill left torn stays a line of its own: the next result is whole
    let torn = tmp.path().join("torn.jsonl");
    std::fs::write(&torn, "{\"step\":1}\n{\"step\":2,\"lo").unwrap();
    assert!(infinity(&["eval", path_str(&run), "--val", path_str(&val), "--max-rows", "5", "--out", path_str(&torn)]));
    let text = std::fs::read_to_string(&torn).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(lines[2]).unwrap()["step"], 3, "{text}");
    // a folder that is not there, and a run whose validation set moved, say so
    let e = err(&["eval", path_str(&tmp.path().join("nowhere"))]);
    assert!(e.contains("no such run or checkpoint folder"), "{e}");
    let moved = tmp.path().join("val-moved");
    std::fs::rename(&val, &moved).unwrap();
    let e = err(&["eval", path_str(&validated)]);
    assert!(e.contains("the run's validation set is not there (moved? pass --val DIR)"), "{e}");
    std::fs::rename(&moved, &val).unwrap();
    // a moving average taken up on a resume: `--all --ema` measures the checkpoints that hold one
    let ema = ["--set", "optim.ema_decay=0.9", "--set", "run.steps=4", "--resume", "auto"];
    assert!(infinity(&[&["train", path_str(&cfg)][..], &sets[..2], &val_sets, &ema].concat()));
    let ema_out = tmp.path().join("ema.jsonl");
    assert!(infinity(&["eval", path_str(&validated), "--all", "--ema", "--out", path_str(&ema_out)]));
    let measured: Vec<(u64, bool)> = std::fs::read_to_string(&ema_out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| (l["step"].as_u64().unwrap(), l["ema"].as_bool().unwrap()))
        .collect();
    assert_eq!(measured, [(4, true)], "{measured:?}");
}

/// A run's newest checkpoint damaged: `sample`, `export` and `eval` of the run name the run's checkpoint
/// before it, as a resume does, and that one works.
#[test]
fn a_damaged_newest_checkpoint_names_the_one_before_it() {
    let (tmp, _data, run, cfg) = class_run();
    assert!(infinity(&["train", path_str(&cfg), "--set", "checkpoint.keep_last=3"]));
    let weights = run.join("checkpoints/step-00000002/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let before = run.join("checkpoints/step-00000001");
    let png = tmp.path().join("s.png");
    let out = tmp.path().join("e.safetensors");
    for args in
        [&["sample", path_str(&run), "-o", path_str(&png)][..], &["export", path_str(&run), "-o", path_str(&out)]]
    {
        let e = err(args);
        let want =
            format!("(corrupt checkpoint) (the run's checkpoint before it: {}; give its folder)", before.display());
        assert!(e.contains(&want), "{args:?}: {e}");
    }
    assert!(infinity(&["sample", path_str(&before), "-o", path_str(&png)]));
}
