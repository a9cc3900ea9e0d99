//! Our model, sampler and bitwise self-correction against the PyTorch reference
//! (tests/reference/infinity_ref.py) through the committed golden folders in tests/golden/.

use infinity_trainer::golden;

use crate::repo;

fn folders() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(repo().join("tests/golden"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn every_golden_folder_matches_the_reference() {
    let dirs = folders();
    assert!(dirs.iter().filter(|d| d.to_string_lossy().contains("model-")).count() >= 2, "model fixtures missing");
    assert!(dirs.iter().filter(|d| d.to_string_lossy().contains("bsq-")).count() >= 3, "bsq fixtures missing");
    assert!(dirs.iter().filter(|d| d.to_string_lossy().contains("sample-")).count() >= 2, "sample fixtures missing");
    for name in ["bsq-patchify", "sample-patchify"] {
        assert!(dirs.iter().any(|d| d.ends_with(name)), "{name} missing (upstream's 8B layout)");
    }
    for dir in dirs {
        let r = golden::check(&dir).unwrap();
        let worst = r.comparisons.iter().map(|c| c.rel / c.tol).fold(0.0, f64::max);
        assert!(r.ok(), "{}: failures {:?}, worst error at {worst:.2}× tolerance", dir.display(), r.failures);
        assert!(!r.comparisons.is_empty());
    }
}

#[test]
fn a_wrong_reference_fails_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_golden("model-tiny-square", &tmp.path().join("model"));
    // same expected values, but one weight nudged: logits and gradients move beyond tolerance
    nudge(&model.join("weights.safetensors"), "head.bias", 0.01);
    let r = golden::check(&model).unwrap();
    assert!(!r.ok(), "a perturbed weight must fail the golden check");
    assert!(r.comparisons.iter().any(|c| c.name == "logits" && !c.ok()));

    // sampling: one bit of the reference's flipped is named; a nudged weight moves the logits
    let sample = copy_golden("sample-tiny-square", &tmp.path().join("sample"));
    assert!(golden::check(&sample).unwrap().ok());
    rewrite_tensors(&sample.join("expected.safetensors"), |n, _, data| {
        if n == "bits" {
            data[17] ^= 1; // sample 0, token 1, bit 1 (d = 16)
        }
        Some(n.to_string())
    });
    let r = golden::check(&sample).unwrap();
    assert!(r.failures.iter().any(|f| f.contains("bits: 1 differ, the first bits[0, 1, 1]")), "{:?}", r.failures);
    nudge(&sample.join("weights.safetensors"), "blocks.1.sa.mat_qkv.weight", 0.05);
    let r = golden::check(&sample).unwrap();
    assert!(r.comparisons.iter().any(|c| c.name == "cond_logits" && !c.ok()), "{:?}", r.comparisons);
}

#[test]
fn the_golden_command_checks_a_folder_of_fixtures() {
    let dir = repo().join("tests/golden");
    assert!(crate::infinity(&["golden", "check", crate::path_str(&dir)]));
    let e = infinity_trainer::cli::run(["infinity", "golden", "check", crate::path_str(&dir.join("README.md"))])
        .unwrap_err();
    assert!(format!("{e:#}").contains("not a golden folder"), "{e:#}");
}

/// The committed golden folder `name` copied to the folder `to` (made), for a test to change.
fn copy_golden(name: &str, to: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(repo().join("tests/golden").join(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
    to.to_path_buf()
}

/// The first value of f32 tensor `tensor` in the safetensors file `path` moved by `by`.
fn nudge(path: &std::path::Path, tensor: &str, by: f32) {
    rewrite_tensors(path, |n, _, data| {
        if n == tensor {
            let v = f32::from_le_bytes(data[..4].try_into().unwrap()) + by;
            data[..4].copy_from_slice(&v.to_le_bytes());
        }
        Some(n.to_string())
    });
}

/// Rewrite a safetensors file, passing every tensor's name, shape and bytes through `edit`, which
/// returns the new name (`None` leaves the tensor out).
fn rewrite_tensors(
    path: &std::path::Path,
    mut edit: impl FnMut(&str, &mut Vec<usize>, &mut Vec<u8>) -> Option<String>,
) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| {
            let (mut shape, mut data) = (t.shape().to_vec(), t.data().to_vec());
            Some((edit(&n, &mut shape, &mut data)?, t.dtype(), shape, data))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dt, s, d)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn block_chunk_key_layout_loads_the_same_model() {
    let src = repo().join("tests/golden/model-tiny-square");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["weights.safetensors", "inputs.safetensors", "expected.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["constructor_kwargs"]["block_chunks"] = 2.into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    // depth 2 in 2 chunks: blocks.N → block_chunks.N.module.0 (upstream MultipleLayers)
    let chunk = |n: &str| infinity_trainer::model::params::chunked_name(n, 2, 2);
    rewrite_tensors(&tmp.path().join("weights.safetensors"), |n, _, _| Some(chunk(n)));
    rewrite_tensors(&tmp.path().join("expected.safetensors"), |n, _, _| match n.strip_prefix("grad.") {
        Some(rest) => Some(format!("grad.{}", chunk(rest))),
        None => Some(n.to_string()),
    });
    let names = std::fs::read(tmp.path().join("weights.safetensors")).unwrap();
    assert!(String::from_utf8_lossy(&names).contains("block_chunks.1.module.0.sa.mat_qkv.weight"));
    let r = golden::check(tmp.path()).unwrap();
    assert!(r.ok(), "{:?}", r.failures);
}

/// `tensor`'s first dimension halved (its values cut to match): a golden folder out of shape.
fn halve_tensor(path: &std::path::Path, tensor: &str) {
    rewrite_tensors(path, |n, shape, data| {
        if n == tensor {
            data.truncate(data.len() / shape[0] * (shape[0] / 2));
            shape[0] /= 2;
        }
        Some(n.to_string())
    });
}

/// Folders that are incomplete or out of shape fail, naming the file and tensor, without a panic (a
/// tensor of the wrong length panicked; one without gradients passed, checking nothing), and one
/// bad folder does not stop the command checking the others.
#[test]
fn an_incomplete_or_malformed_folder_fails_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |name: &str, to: &str| copy_golden(name, &tmp.path().join(to));
    let no_grads = copy("model-tiny-square", "a-no-grads");
    rewrite_tensors(&no_grads.join("expected.safetensors"), |n, _, _| (!n.starts_with("grad.")).then(|| n.to_string()));
    let r = golden::check(&no_grads).unwrap();
    assert!(
        !r.ok() && r.failures.iter().any(|f| f == "grad.head.weight: missing from expected.safetensors"),
        "{:?}",
        r.failures
    );

    let short_x = copy("model-tiny-square", "b-short-inputs");
    halve_tensor(&short_x.join("inputs.safetensors"), "x_blc_wo_prefix");
    let e = format!("{:#}", golden::check(&short_x).unwrap_err());
    assert!(
        e.contains("inputs.safetensors: tensor `x_blc_wo_prefix` has shape") && e.contains("expected [B, L − 1, d]"),
        "{e}"
    );

    let short_mask = copy("bsq-square-0.06M", "c-short-mask");
    halve_tensor(&short_mask.join("bsq.safetensors"), "flip_mask");
    let e = format!("{:#}", golden::check(&short_mask).unwrap_err());
    assert!(e.contains("bsq.safetensors: tensor `flip_mask` has shape") && e.contains("expected [B, L, d]"), "{e}");

    // upstream's 8B layout: the flip mask is the tokenizer's, [B, 4L, d/4], not the transformer's
    let mask_8b = copy("bsq-patchify", "e-transformer-mask");
    rewrite_tensors(&mask_8b.join("bsq.safetensors"), |n, shape, _| {
        if n == "flip_mask" {
            *shape = vec![shape[0], shape[1] / 4, shape[2] * 4];
        }
        Some(n.to_string())
    });
    let e = format!("{:#}", golden::check(&mask_8b).unwrap_err());
    assert!(e.contains("tensor `flip_mask` has shape [2, 173, 56], expected [B, Lv, dv] = [2, 692, 14]"), "{e}");
    // a caption longer than the model's text_maxlen (6) is named, not a panic in the forward
    let long = copy("sample-tiny-square", "f-long-caption");
    rewrite_tensors(&long.join("inputs.safetensors"), |n, _, data| {
        if n == "text_cu_seqlens" {
            data[4..8].copy_from_slice(&7i32.to_le_bytes());
        }
        Some(n.to_string())
    });
    let e = format!("{:#}", golden::check(&long).unwrap_err());
    assert!(e.contains("expected offsets from 0 of captions of 1 to text_maxlen = 6 tokens"), "{e}");
    std::fs::remove_dir_all(&mask_8b).unwrap();
    std::fs::remove_dir_all(&long).unwrap();
    // config.json's settings: what a folder leaves out, or says against its tensors, is named
    let settings = copy("sample-tiny-square", "g-settings");
    let original = std::fs::read_to_string(settings.join("config.json")).unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c: serde_json::Value = serde_json::from_str(&original).unwrap();
        edit(&mut c);
        std::fs::write(settings.join("config.json"), c.to_string()).unwrap();
        format!("{:#}", golden::check(&settings).unwrap_err())
    };
    let e = with(&|c| drop(c["constructor_kwargs"].as_object_mut().unwrap().remove("cos_attn")));
    assert!(e.contains("constructor_kwargs.cos_attn missing"), "{e}");
    let e = with(&|c| c["text_lens"] = serde_json::json!([4, 4]));
    assert!(e.contains("config.json: text_lens [4, 4] disagree with text_cu_seqlens"), "{e}");
    let e = with(&|c| c["cfg_insertion_layer"] = 0.into());
    assert!(e.contains("`cfg_insertion_layer` = 0: expected a list"), "{e}");
    let e = with(&|c| c["cfg_list"] = serde_json::json!([1.0, 2.0]));
    assert!(e.contains("config.json: cfg_list: 2 values for a schedule of 4 scales"), "{e}");
    // a longer list: its first values, as upstream's sampler reads it, and said
    let mut c: serde_json::Value = serde_json::from_str(&original).unwrap();
    c["cfg_list"].as_array_mut().unwrap().push(99.0.into());
    std::fs::write(settings.join("config.json"), c.to_string()).unwrap();
    let r = golden::check(&settings).unwrap();
    assert!(r.ok(), "{r:?}");
    assert!(r.notes.iter().any(|n| n == "cfg_list: 5 values for 4 scales: the first 4 used"), "{:?}", r.notes);
    let e = with(&|c| c["text_channels"] = 64.into());
    assert!(e.contains("text_channels = 64, constructor_kwargs.text_channels = 128"), "{e}");
    // Python's False is mode 0, not the mode 2 checked; a scale of no tokens; a key of a section named by it
    let e = with(&|c| c["constructor_kwargs"]["rope2d_normalized_by_hw"] = false.into());
    assert!(e.contains("constructor_kwargs.rope2d_normalized_by_hw = false: only 2 is implemented"), "{e}");
    let e = with(&|c| c["schedule"][0] = serde_json::json!([1, 0, 0]));
    assert!(e.contains("schedule entries are [1, h, w] with h, w ≥ 1, found [1,0,0]"), "{e}");
    let e = with(&|c| drop(c["constructor_kwargs"].as_object_mut().unwrap().remove("depth")));
    assert!(e.contains("config.json: `constructor_kwargs.depth` missing"), "{e}");
    // a setting with a default is that default only where absent (a string was read as 1e-6)
    let e = with(&|c| c["constructor_kwargs"]["norm_eps"] = "x".into());
    assert!(e.contains("constructor_kwargs.norm_eps = \"x\", expected a number"), "{e}");
    let e = with(&|c| c["constructor_kwargs"]["block_chunks"] = 1.5.into());
    assert!(e.contains("constructor_kwargs.block_chunks = 1.5, expected a whole number of at least 1"), "{e}");
    std::fs::remove_dir_all(&settings).unwrap();
    // gt_bits are bits (a 2 was read as 1)
    let bits = copy("model-tiny-square", "h-bits");
    rewrite_tensors(&bits.join("inputs.safetensors"), |n, _, data| {
        if n == "gt_bits" {
            data[3] = 2;
        }
        Some(n.to_string())
    });
    let e = format!("{:#}", golden::check(&bits).unwrap_err());
    assert!(e.contains("inputs.safetensors: gt_bits holds 2 at value 3: expected bits, 0 or 1"), "{e}");
    std::fs::remove_dir_all(&bits).unwrap();

    // the command checks every folder and fails at the end (an error at the first bad folder, as before,
    // would make `infinity()` panic instead of returning false)
    let good = copy("model-tiny-square", "d-good");
    assert!(golden::check(&good).unwrap().ok());
    assert!(!crate::infinity(&["golden", "check", crate::path_str(tmp.path())]));
}
