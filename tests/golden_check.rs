//! Our model and bitwise self-correction against the PyTorch reference (tests/reference/infinity_ref.py)
//! through the committed golden folders in tests/golden/.

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
    for dir in dirs {
        let r = golden::check(&dir).unwrap();
        let worst = r.comparisons.iter().map(|c| c.rel / c.tol).fold(0.0, f64::max);
        assert!(r.ok(), "{}: failures {:?}, worst error at {worst:.2}× tolerance", dir.display(), r.failures);
        assert!(!r.comparisons.is_empty());
    }
}

#[test]
fn a_wrong_reference_fails_the_check() {
    let src = repo().join("tests/golden/model-tiny-square");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "weights.safetensors", "inputs.safetensors", "expected.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    // same expected values, but one weight nudged: logits and gradients move beyond tolerance
    let bytes = std::fs::read(tmp.path().join("weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec())).collect();
    let head = tensors.iter_mut().find(|t| t.0 == "head.bias").unwrap();
    let v = f32::from_le_bytes(head.2[..4].try_into().unwrap()) + 0.01;
    head.2[..4].copy_from_slice(&v.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(tmp.path().join("weights.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let r = golden::check(tmp.path()).unwrap();
    assert!(!r.ok(), "a perturbed weight must fail the golden check");
    assert!(r.comparisons.iter().any(|c| c.name == "logits" && !c.ok()));
}

#[test]
fn the_golden_command_checks_a_folder_of_fixtures() {
    let dir = repo().join("tests/golden");
    assert!(crate::infinity(&["golden", "check", crate::path_str(&dir)]));
    let e = infinity_trainer::cli::run(["infinity", "golden", "check", crate::path_str(&dir.join("README.md"))]).unwrap_err();
    assert!(format!("{e:#}").contains("not a golden folder"), "{e:#}");
}
