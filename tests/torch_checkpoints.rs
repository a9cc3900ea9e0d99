//! PyTorch checkpoints as `model.init_from` sources, read without PyTorch: a state dict written as
//! `torch.save` writes it (tests/reference/torch_save.py, whose stand-ins pickle under torch's names)
//! loads value for value as the same weights in safetensors, with shared storages, strided views and
//! bf16 storages; upstream's training checkpoint layout (`trainer.gpt_fsdp`, and its moving average
//! `trainer.gpt_ema_fsdp`) too; broken files are named.
//! Weights sharded over several files with an index load as one file.

use infinity_trainer::model::io::{init_from_weights, weight_tensors, SaveDtype, StateDict};
use infinity_trainer::model::{init, Layout, ModelConfig, Params};

use crate::{python, python_fails};

fn model() -> (ModelConfig, Layout, Params<f32>) {
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    (cfg.d, cfg.depth) = (8, 2);
    let lay = Layout::new(&cfg);
    let mut p = init::init_params(&cfg, &lay, &init::InitConfig::default(), 3);
    // every parameter non-zero and distinct, so that a value read from the wrong place shows
    p.data.iter_mut().enumerate().for_each(|(i, v)| *v += 1e-3 * ((i % 997) as f32 + 1.0));
    (cfg, lay, p)
}

/// `p`'s weights read back from `file` into a fresh model.
fn loaded(file: &std::path::Path, cfg: &ModelConfig, lay: &Layout) -> anyhow::Result<Params<f32>> {
    loaded_state(file, StateDict::Weights, cfg, lay)
}

/// `which` of `file`'s state dicts read into a fresh model.
fn loaded_state(
    file: &std::path::Path,
    which: StateDict,
    cfg: &ModelConfig,
    lay: &Layout,
) -> anyhow::Result<Params<f32>> {
    let mut q = init::init_params(cfg, lay, &init::InitConfig::default(), 99);
    let notes = init_from_weights(file, which, cfg, lay, &mut q)?;
    assert!(notes.is_empty(), "{notes:?}");
    Ok(q)
}

#[test]
fn a_torch_save_state_dict_loads_as_its_safetensors_twin() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, lay, p) = model();
    let st = dir.path().join("w.safetensors");
    let tensors = weight_tensors(&cfg, &lay, &p, SaveDtype::F32, 1).unwrap();
    std::fs::write(&st, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let pth = dir.path().join("infinity_tiny.pth");
    let bf16 = "blocks.1.ffn.fc1.weight";
    python(&[&"tests/reference/torch_save.py", &"--weights", &st, &"--out", &pth, &"--bf16", &bf16]);
    let q = loaded(&pth, &cfg, &lay).unwrap();
    for s in &lay.specs {
        let (want, got) = (&p.data[s.offset..s.offset + s.numel()], &q.data[s.offset..s.offset + s.numel()]);
        if s.name == bf16 {
            let rounded: Vec<f32> = want.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
            assert_eq!(got, &rounded[..], "{}: a bf16 storage", s.name);
        } else {
            assert_eq!(got, want, "{}", s.name);
        }
    }

    // upstream's training checkpoint: the weights under trainer.gpt_fsdp, beside its arguments object,
    // optimiser state and other values the reader keeps opaque
    let ckpt = dir.path().join("ar-ckpt-giter000K-ep0-iter100-last.pth");
    python(&[&"tests/reference/torch_save.py", &"--weights", &st, &"--out", &ckpt, &"--nested"]);
    assert!(loaded(&ckpt, &cfg, &lay).unwrap().data == p.data, "trainer.gpt_fsdp's weights");
    // with its moving average (trainer.gpt_ema_fsdp): model.init_from_ema takes that, the default the
    // trained weights; files that keep none say so
    let mut avg = p.clone();
    avg.data.iter_mut().for_each(|v| *v = 0.5 * *v + 0.25);
    let avg_st = dir.path().join("avg.safetensors");
    std::fs::write(
        &avg_st,
        safetensors::serialize(weight_tensors(&cfg, &lay, &avg, SaveDtype::F32, 1).unwrap(), None).unwrap(),
    )
    .unwrap();
    let with_ema = dir.path().join("ar-ckpt-giter001K-ep0-iter1000-last.pth");
    python(&[&"tests/reference/torch_save.py", &"--weights", &st, &"--out", &with_ema, &"--nested", &"--ema", &avg_st]);
    assert!(loaded(&with_ema, &cfg, &lay).unwrap().data == p.data, "trainer.gpt_fsdp beside an average");
    let ema = loaded_state(&with_ema, StateDict::MovingAverage, &cfg, &lay).unwrap();
    assert!(ema.data == avg.data, "trainer.gpt_ema_fsdp's weights");
    let weights_file = infinity_trainer::train::checkpoint::weights_file;
    assert_eq!(weights_file(&with_ema, true).unwrap(), (with_ema.clone(), StateDict::MovingAverage));
    let e = format!("{:#}", loaded_state(&ckpt, StateDict::MovingAverage, &cfg, &lay).unwrap_err());
    assert!(e.contains("`trainer` holds no gpt_ema_fsdp") && e.contains("--use_fsdp_model_ema was 0"), "{e}");
    let e = format!("{:#}", loaded_state(&pth, StateDict::MovingAverage, &cfg, &lay).unwrap_err());
    assert!(e.contains("a state dict (released weights) holds one set of weights"), "{e}");
    // (a plain safetensors file is left to the reader, which refuses it naming the file)
    assert_eq!(weights_file(&st, true).unwrap(), (st.clone(), StateDict::MovingAverage));
    let e = format!("{:#}", loaded_state(&st, StateDict::MovingAverage, &cfg, &lay).unwrap_err());
    assert!(e.contains("w.safetensors: a safetensors file holds one set of weights, taken as it is"), "{e}");
    // where a fresh run with its own average (optim.ema_decay) starts that average: the source's
    let average_of = |f: &std::path::Path| infinity_trainer::train::checkpoint::moving_average_of(f).unwrap();
    assert_eq!(average_of(&with_ema), Some((with_ema.clone(), StateDict::MovingAverage)));
    assert_eq!([average_of(&ckpt), average_of(&pth), average_of(&st)], [None, None, None]);
    // under DDP (trainer.gpt_wo_ddp), tensors pickled as Parameters, half and double storages
    let (f16, f64) = ("blocks.0.ffn.fc2.weight", "blocks.1.sa.mat_qkv.weight");
    let ddp = dir.path().join("ddp.pth");
    let variant = ["--nested", "--ddp", "--parameters", "--f16", f16, "--f64", f64];
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"tests/reference/torch_save.py", &"--weights", &st];
    args.extend([&"--out" as &dyn AsRef<std::ffi::OsStr>, &ddp]);
    args.extend(variant.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    python(&args);
    let q = loaded(&ddp, &cfg, &lay).unwrap();
    for s in &lay.specs {
        let (want, got) = (&p.data[s.offset..s.offset + s.numel()], &q.data[s.offset..s.offset + s.numel()]);
        let want: Vec<f32> = match s.name == f16 {
            true => want.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
            false => want.to_vec(),
        };
        assert_eq!(got, &want[..], "{} (trainer.gpt_wo_ddp)", s.name);
    }

    // broken files are named with what is wrong
    let cut = dir.path().join("cut.pth");
    let bytes = std::fs::read(&pth).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", loaded(&cut, &cfg, &lay).unwrap_err());
    assert!(e.contains("cut.pth: not a complete zip file") && e.contains("truncated?"), "{e}");
    // torch.save's format before torch 1.6 (a pickle opening with torch's magic number)
    let legacy = dir.path().join("legacy.pth");
    let magic = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02M\xe9\x03.";
    std::fs::write(&legacy, magic).unwrap();
    let e = format!("{:#}", loaded(&legacy, &cfg, &lay).unwrap_err());
    assert!(
        e.contains("legacy.pth: a PyTorch file in the format before torch 1.6") && e.contains("torch.save("),
        "{e}"
    );
    let other = dir.path().join("other.pth");
    python(&[&"-c", &"import zipfile,sys; zipfile.ZipFile(sys.argv[1], 'w').writestr('x/y.txt', 'hi')", &other]);
    let e = format!("{:#}", loaded(&other, &cfg, &lay).unwrap_err());
    assert!(e.contains("without ARCHIVE/data.pkl: not a PyTorch checkpoint"), "{e}");
    let neither = dir.path().join("neither.bin");
    std::fs::write(&neither, b"not weights at all").unwrap();
    let e = format!("{:#}", loaded(&neither, &cfg, &lay).unwrap_err());
    assert!(e.contains("not a safetensors file") && e.contains("nor a PyTorch checkpoint"), "{e}");
    // another model's weights: the usual mismatch report
    let (mut wide, _, _) = model();
    wide.embed_dim *= 2;
    let wide_lay = Layout::new(&wide);
    let e = format!("{:#}", loaded(&pth, &wide, &wide_lay).unwrap_err());
    assert!(e.contains("infinity_tiny.pth: does not match the model config"), "{e}");
    // the fixture writer refuses what it cannot write (no silent success)
    let out = python_fails(&[&"tests/reference/torch_save.py", &"--weights", &neither, &"--out", &other]);
    assert!(!out.is_empty());
}

/// Files written by real PyTorch (committed: tests/reference/torch_files.py made them with torch
/// 2.15): released weights, upstream's training checkpoint with its moving average and optimizer state,
/// and bf16 weights with a strided view and a shared storage each load value for value as their
/// safetensors twins.
#[test]
fn files_written_by_real_pytorch_load_as_their_safetensors_twins() {
    use infinity_trainer::model::io::load_weights;
    let dir = crate::repo().join("tests/torch-files");
    let made: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = infinity_trainer::golden::model_config(&made, made["d"].as_u64().unwrap() as usize).unwrap();
    let lay = Layout::new(&cfg);
    assert_eq!(lay.numel as u64, made["parameters"].as_u64().unwrap(), "the model is the files'");
    let twin = |name: &str| load_weights(&dir.join(name), &cfg, &lay).unwrap().data;
    let (trained, ema) = (twin("infinity_tiny.safetensors"), twin("ema.safetensors"));
    assert!(trained != ema);
    let released = loaded(&dir.join("infinity_tiny.pth"), &cfg, &lay).unwrap();
    assert!(released.data == trained, "infinity_tiny.pth");
    let ckpt = dir.join("ar-ckpt-giter000K-ep0-iter2-last.pth");
    assert!(loaded(&ckpt, &cfg, &lay).unwrap().data == trained, "trainer.gpt_fsdp");
    let average = loaded_state(&ckpt, StateDict::MovingAverage, &cfg, &lay).unwrap();
    assert!(average.data == ema, "trainer.gpt_ema_fsdp");
    let bf16 = loaded(&dir.join("infinity_tiny_bf16.pth"), &cfg, &lay).unwrap();
    assert!(bf16.data == twin("infinity_tiny_bf16.safetensors"), "bf16, a strided view and a shared storage");
    assert!(bf16.data != trained, "the bf16 file holds rounded weights");
}

/// Weights in several files with an index (Hugging Face's `*.index.json`, as upstream's 8B loads):
/// a PyTorch shard and a safetensors shard load as the one file would, from the index or its folder;
/// an index naming a tensor its file lacks, or a file that is not there, is named.
#[test]
fn sharded_weights_with_an_index_load_as_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, lay, p) = model();
    let tensors = weight_tensors(&cfg, &lay, &p, SaveDtype::F32, 1).unwrap();
    let half = tensors.len() / 2;
    let names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    let (first, second): (Vec<_>, Vec<_>) = tensors.into_iter().enumerate().partition(|(i, _)| *i < half);
    let strip = |v: Vec<(usize, _)>| v.into_iter().map(|(_, t)| t).collect::<Vec<_>>();
    let weights = dir.path().join("weights");
    std::fs::create_dir(&weights).unwrap();
    let part1 = dir.path().join("part1.safetensors");
    std::fs::write(&part1, safetensors::serialize(strip(first), None).unwrap()).unwrap();
    let bin = weights.join("pytorch_model-00001-of-00002.bin");
    python(&[&"tests/reference/torch_save.py", &"--weights", &part1, &"--out", &bin]);
    let st = "model-00002-of-00002.safetensors";
    std::fs::write(weights.join(st), safetensors::serialize(strip(second), None).unwrap()).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), if i < half { "pytorch_model-00001-of-00002.bin".into() } else { st.into() }))
        .collect();
    let index = weights.join("model.index.json");
    let write_index = |map: &serde_json::Map<String, serde_json::Value>| {
        std::fs::write(&index, serde_json::json!({ "metadata": {}, "weight_map": map }).to_string()).unwrap()
    };
    write_index(&map);
    assert!(loaded(&index, &cfg, &lay).unwrap().data == p.data, "from the index");
    let found = infinity_trainer::train::checkpoint::weights_file(&weights, false).unwrap();
    assert_eq!(found, (index.clone(), StateDict::Weights), "a folder's one index");

    let mut wrong = map.clone();
    wrong.insert(names[0].clone(), st.into());
    write_index(&wrong);
    let e = format!("{:#}", loaded(&index, &cfg, &lay).unwrap_err());
    assert!(e.contains(&format!("maps `{}` to", names[0])) && e.contains("which lacks it"), "{e}");
    let mut gone = map.clone();
    gone.insert(names[0].clone(), "missing.safetensors".into());
    write_index(&gone);
    let e = format!("{:#}", loaded(&index, &cfg, &lay).unwrap_err());
    assert!(e.contains("missing.safetensors, which does not exist"), "{e}");
    let mut outside = map.clone();
    outside.insert(names[0].clone(), "../part1.safetensors".into());
    write_index(&outside);
    let e = format!("{:#}", loaded(&index, &cfg, &lay).unwrap_err());
    assert!(e.contains("expected a file name beside the index"), "{e}");
    // a tensor a shard holds that the index does not map to it
    let mut fewer = map.clone();
    fewer.remove(&names[half]);
    write_index(&fewer);
    let e = format!("{:#}", loaded(&index, &cfg, &lay).unwrap_err());
    assert!(e.contains(&format!("holds `{}`, which the index does not map to it", names[half])), "{e}");
    // two indexes: Hugging Face's safetensors one is taken, as transformers takes it; two others are refused
    write_index(&map);
    std::fs::copy(&index, weights.join("model.safetensors.index.json")).unwrap();
    let found = infinity_trainer::train::checkpoint::weights_file(&weights, false).unwrap();
    assert_eq!(found.0, weights.join("model.safetensors.index.json"));
    // (an index's files hold one set of weights: no moving average to take)
    let e = format!("{:#}", infinity_trainer::train::checkpoint::weights_file(&weights, true).unwrap_err());
    assert!(e.contains("a folder of weight files with an index holds one set of weights"), "{e}");
    std::fs::rename(weights.join("model.safetensors.index.json"), weights.join("other.index.json")).unwrap();
    let e = format!("{:#}", infinity_trainer::train::checkpoint::weights_file(&weights, false).unwrap_err());
    assert!(e.contains("several weight indexes"), "{e}");
}
