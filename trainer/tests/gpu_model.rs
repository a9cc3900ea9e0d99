//! The model on the GPU (feature `cuda`, gated on a device): the golden folders pass on CUDA; forward
//! and backward equal the CPU model's within docs/numerics.md's tolerances for the class and text
//! paths; two runs give the same bytes, with or without block recomputation; and a short training run with `run.device = "cuda"` stays
//! close to the same run on the CPU. Runs on a GPU or on the emulated device (kernels/emulator/device,
//! as scripts/test.sh does in CI); prints what it skipped without either.
#![cfg(feature = "cuda")]

mod common;

use std::path::Path;

use common::gpu_or_skip;
use infinity_kernels::attention::block_causal_segments;
use infinity_kernels::rope::RopeTable;
use infinity_trainer::gpu::GpuModel;
use infinity_trainer::model::init::{init_params, InitConfig};
use infinity_trainer::model::{
    backward, forward, token_weights, Condition, Conditioning, Layout, ModelConfig, ModelInput, Params,
};
use rand::{Rng, SeedableRng};

/// Largest |a − b| over each parameter, relative to that parameter's largest |b|; the worst one.
fn worst_rel(lay: &Layout, a: &[f32], b: &[f32]) -> (f32, String) {
    let mut worst = (0.0f32, String::new());
    for spec in &lay.specs {
        let r = spec.offset..spec.offset + spec.numel();
        let diff = infinity_kernels::compare::max_rel_diff(&a[r.clone()], &b[r], 1e-8) as f32;
        if diff > worst.0 {
            worst = (diff, spec.name.clone());
        }
    }
    worst
}

#[test]
fn golden_folders_pass_on_cuda() {
    if !gpu_or_skip() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden");
    for name in ["model-tiny-square", "model-tiny-wide", "sample-tiny-square", "sample-tiny-hidden", "sample-patchify"]
    {
        let r = infinity_trainer::golden::check_on(&root.join(name), true).unwrap();
        for c in &r.comparisons {
            println!("{name} on cuda: {} rel {:.2e} (tol {:.0e})", c.name, c.rel, c.tol);
        }
        assert!(r.ok(), "{name} on cuda: {:?}", r.failures);
    }
}

#[test]
fn forward_and_backward_match_the_cpu_model() {
    if !gpu_or_skip() {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let scales = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6)];
    let l: usize = scales.iter().map(|&(h, w)| h * w).sum();
    for conditioning in [Conditioning::Class { num_classes: 7 }, Conditioning::Text] {
        let mut mc = ModelConfig::preset("tiny").unwrap();
        (mc.d, mc.depth, mc.conditioning) = (16, 2, conditioning.clone());
        let lay = Layout::new(&mc);
        let p: Params<f32> = init_params(&mc, &lay, &InitConfig::default(), 5);
        let b = 3;
        let x: Vec<f32> = (0..b * (l - 1) * mc.d).map(|_| rng.random_range(-0.3..0.3)).collect();
        let gt: Vec<u8> = (0..b * l * mc.d).map(|_| rng.random_range(0..2)).collect();
        let labels = vec![1usize, 7, 4];
        let cu = vec![0usize, 3, 3 + mc.text_maxlen.min(5), 3 + mc.text_maxlen.min(5) + 2];
        let kv: Vec<f32> = (0..cu[b] * mc.text_channels).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dropped = vec![false, true, false];
        let cond = match conditioning {
            Conditioning::Class { .. } => Condition::Class { labels: &labels },
            Conditioning::Text => Condition::Text { kv_compact: &kv, cu_seqlens: &cu, dropped: &dropped },
        };
        let rope = RopeTable::new(mc.head_dim(), &scales, (6, 6));
        let weights = token_weights(b, &scales, true);
        // text: with drop path ([depth, B, 2]; block 1 drops two of its six gated branches)
        let drop_path = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.25, 0.0, 1.25, 1.25, 0.0, 1.25];
        let drop_path: &[f32] = if mc.has_cross_attention() { &drop_path } else { &[] };
        let inp = ModelInput {
            b,
            scales: &scales,
            rope: &rope,
            x_wo_prefix: &x,
            cond,
            gt_bits: &gt,
            token_weights: &weights,
            label_smoothing: 0.05,
            drop_path,
        };
        let acts = forward(&mc, &lay, &p, &inp);
        let mut cpu = Params::zeros(&lay);
        backward(&mc, &lay, &p, &inp, &acts, &mut cpu);

        let mut m = GpuModel::new(&mc, &lay, 0, false).unwrap();
        m.upload_params(&p).unwrap();
        let mut runs = Vec::new();
        for recompute in [false, false, true] {
            m.recompute = recompute;
            m.zero_grads().unwrap();
            let ce = m.step(&inp, true).unwrap();
            let mut g = Params::zeros(&lay);
            m.add_grads_into(&mut g.data).unwrap();
            runs.push((ce, g.data));
        }
        let tag = format!("{conditioning:?}");
        let (ce, g) = &runs[0];
        assert!((ce.loss - acts.ce.loss).abs() <= 1e-5 * acts.ce.loss, "{tag}: loss {} vs {}", ce.loss, acts.ce.loss);
        assert_eq!(ce.correct_bits.len(), acts.ce.correct_bits.len());
        let (rel, name) = worst_rel(&lay, g, &cpu.data);
        println!("{tag}: loss {:.6} vs {:.6}; worst gradient {name} rel {rel:.2e}", ce.loss, acts.ce.loss);
        assert!(rel <= 1e-3, "{tag}: gradient of {name} differs by {rel:e} (relative to its largest value)");
        assert!(runs[0].1 == runs[1].1, "{tag}: two GPU backward passes differ (must be deterministic)");
        assert!(runs[0].1 == runs[2].1, "{tag}: recomputing the blocks changed the gradients");
        // bf16 (matmul inputs, tensor-core attention at head dim 32 and head): the loss and the gradients
        // move by bf16 rounding only; a wrong buffer or fragment would move them by O(1)
        let mut m16 = GpuModel::new(&mc, &lay, 0, true).unwrap();
        m16.upload_params(&p).unwrap();
        let mut runs16 = Vec::new();
        for recompute in [false, true] {
            m16.recompute = recompute;
            m16.zero_grads().unwrap();
            let ce16 = m16.step(&inp, true).unwrap();
            let mut g16 = Params::zeros(&lay);
            m16.add_grads_into(&mut g16.data).unwrap();
            runs16.push((ce16.loss, g16.data));
        }
        let (loss16, g16) = &runs16[0];
        let (rel16, name16) = worst_rel(&lay, g16, &cpu.data);
        println!("{tag}: bf16 loss {loss16:.6}; worst gradient {name16} rel {rel16:.2e}");
        assert!((loss16 - acts.ce.loss).abs() <= 1e-2 * acts.ce.loss, "{tag}: bf16 loss {loss16}");
        assert!(rel16 <= 1e-1, "{tag}: bf16 gradient of {name16} differs by {rel16:e} (relative to its largest value)");
        assert!(runs16[0].1 == runs16[1].1, "{tag}: bf16 gradients change with recomputation");
        let _ = block_causal_segments; // the GPU builds its segments the same way
    }
}

/// With bf16 matmuls, a head the tensor cores do not take (d = 12) stays in f32, as upstream keeps it:
/// its weight gradient too. The blocks' outputs are zeroed, so the head's input is the f32 islands'
/// alone and the GPU's gradient of `head.weight` is the CPU's up to summation order; a bf16 product
/// would move it by bf16 rounding (2e-3 on the emulated device).
#[test]
fn a_head_off_the_tensor_cores_keeps_its_gradient_in_f32() {
    if !gpu_or_skip() {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let scales = [(1, 1), (2, 2), (3, 3)];
    let l: usize = scales.iter().map(|&(h, w)| h * w).sum();
    let mut mc = ModelConfig::preset("tiny").unwrap();
    (mc.d, mc.depth, mc.conditioning) = (12, 2, Conditioning::Class { num_classes: 7 });
    let lay = Layout::new(&mc);
    let mut p: Params<f32> = init_params(&mc, &lay, &InitConfig::default(), 5);
    p.data.iter_mut().for_each(|v| *v += rng.random_range(-0.05..0.05));
    for n in 0..mc.depth {
        for part in ["sa.proj.weight", "sa.proj.bias", "ffn.fc2.weight", "ffn.fc2.bias"] {
            p.get_mut(&lay, &format!("blocks.{n}.{part}")).fill(0.0);
        }
    }
    let b = 2;
    let x: Vec<f32> = (0..b * (l - 1) * mc.d).map(|_| rng.random_range(-0.3..0.3)).collect();
    let gt: Vec<u8> = (0..b * l * mc.d).map(|_| rng.random_range(0..2)).collect();
    let labels = vec![1usize, 4];
    let rope = RopeTable::new(mc.head_dim(), &scales, (3, 3));
    let weights = token_weights(b, &scales, true);
    let inp = ModelInput {
        b,
        scales: &scales,
        rope: &rope,
        x_wo_prefix: &x,
        cond: Condition::Class { labels: &labels },
        gt_bits: &gt,
        token_weights: &weights,
        label_smoothing: 0.0,
        drop_path: &[],
    };
    let acts = forward(&mc, &lay, &p, &inp);
    let mut cpu = Params::zeros(&lay);
    backward(&mc, &lay, &p, &inp, &acts, &mut cpu);
    let mut m16 = GpuModel::new(&mc, &lay, 0, true).unwrap();
    m16.upload_params(&p).unwrap();
    m16.zero_grads().unwrap();
    m16.step(&inp, true).unwrap();
    let mut g16 = Params::zeros(&lay);
    m16.add_grads_into(&mut g16.data).unwrap();
    let (ours, want) = (g16.get(&lay, "head.weight"), cpu.get(&lay, "head.weight"));
    let largest = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    let worst = ours.iter().zip(want).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / largest;
    println!("bf16 run, f32 head: head.weight gradient within {worst:.2e} of the CPU's (relative to its largest)");
    assert!(largest > 0.0 && worst <= 1e-4, "head.weight's gradient moved by {worst:e}: not computed in f32");
}

fn train_config(
    tmp: &Path,
    name: &str,
    (device, precision): (&str, &str),
    every: u64,
) -> infinity_trainer::train::config::TrainConfig {
    let text = format!(
        "[run]\ndir = \"{}\"\nseed = 3\nsteps = 4\nlog_every = 100\ndevice = \"{device}\"\n\
         precision = \"{precision}\"\n\
         [model]\npreset = \"tiny\"\nconditioning = \"class\"\nmup_base_width = 48\ndrop_path_rate = 0.2\n\
         [data]\ndir = \"{}\"\nglobal_batch = 8\nmicro_batch = 4\n\
         [optim]\nlr = 1e-3\nema_decay = 0.9\n[checkpoint]\nevery = {every}\nkeep_last = 10\n\
         [sample]\nevery = 4\nn = 2\nper_condition = 1\n",
        tmp.join(name).display(),
        tmp.join("data").display()
    );
    let p = tmp.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    infinity_trainer::train::config::TrainConfig::load(&p, &[]).unwrap()
}

fn small_data(tmp: &Path) {
    use infinity_data::synth::{synth, SynthOptions};
    synth(&tmp.join("data"), &SynthOptions { rows: 64, fit_rows: 32, ..Default::default() }).unwrap();
}

/// The device optimizer (AdamW and clipping on the GPU; μP at base width 48, so learning-rate
/// multipliers 1 and 0.75, the hidden and output weights') against the CPU run, and a resumed GPU
/// run against an uninterrupted one (its moments go through the checkpoint), in f32 and with bf16
/// matmuls (there the uninterrupted run's bf16 weights come from the AdamW kernel, the resumed run's
/// from rounding the loaded weights: the two must agree bit for bit).
#[test]
fn training_on_cuda_stays_close_to_the_cpu_run_and_resumes_exactly() {
    if !gpu_or_skip() {
        return;
    }
    use infinity_trainer::train::{latest_checkpoint, train, TrainOptions};
    let tmp = tempfile::tempdir().unwrap();
    small_data(tmp.path());
    let mut losses = Vec::new();
    for device in ["cpu", "cuda"] {
        let cfg = train_config(tmp.path(), device, (device, "f32"), 2);
        losses.push(train(&cfg, &TrainOptions::default()).unwrap().last_loss);
    }
    println!("4 steps: loss {:.6} on the CPU, {:.6} on CUDA", losses[0], losses[1]);
    assert!((losses[0] - losses[1]).abs() <= 1e-3 * losses[0], "losses {losses:?}");
    // the last step's sample grid, drawn on the device in the CUDA run
    for run in ["cpu", "cuda"] {
        let grid = tmp.path().join(run).join("samples/step-00000004.png");
        assert!(image::open(&grid).is_ok_and(|g| g.width() > 0), "{run}: no sample grid {}", grid.display());
    }

    // the moving average of the weights (on the device with its optimizer) follows the CPU's
    let load = |run: &str, file: &str| {
        let dir = tmp.path().join(run).join("checkpoints/step-00000004");
        let ck = infinity_trainer::train::checkpoint::load_model(&dir, false).unwrap();
        let lay = Layout::new(&ck.model);
        infinity_trainer::model::io::load_weights(&dir.join(file), &ck.model, &lay).unwrap().data
    };
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let (cpu_ema, cuda_ema) = (load("cpu", "ema.safetensors"), load("cuda", "ema.safetensors"));
    let (apart, lag) = (max_diff(&cpu_ema, &cuda_ema), max_diff(&cpu_ema, &load("cpu", "model.safetensors")));
    println!("moving average: CPU vs CUDA max |Δ| {apart:.3e}; behind the weights by up to {lag:.3e}");
    assert!(apart <= 0.01 * lag, "the device's moving average is {apart} from the CPU's (it lags by {lag})");

    let file = |run: &str| {
        let dir = tmp.path().join(run).join("checkpoints/step-00000004");
        [std::fs::read(dir.join("model.safetensors")).unwrap(), std::fs::read(dir.join("ema.safetensors")).unwrap()]
    };
    for precision in ["f32", "bf16"] {
        // the uninterrupted run: in f32, the one compared with the CPU above
        let whole = match precision {
            "f32" => "cuda".to_string(),
            _ => {
                let name = format!("cuda-{precision}");
                train(&train_config(tmp.path(), &name, ("cuda", precision), 2), &TrainOptions::default()).unwrap();
                name
            }
        };
        let split = train_config(tmp.path(), &format!("cuda-{precision}-split"), ("cuda", precision), 2);
        train(&split, &TrainOptions { stop_after: Some(3), ..Default::default() }).unwrap();
        let resume = latest_checkpoint(&split.run.dir);
        assert!(resume.as_ref().is_some_and(|p| p.ends_with("step-00000002")), "{resume:?}");
        train(&split, &TrainOptions { resume, ..Default::default() }).unwrap();
        let resumed = format!("cuda-{precision}-split");
        assert!(file(&whole) == file(&resumed), "a resumed GPU run ({precision}) differs from an uninterrupted one");
    }
}

/// Self-correction on the device (`step_latents`) gives the loss and gradients of the host's
/// self-correction fed through `step`: the flips are the same keyed draws. With spatial patchify too
/// (latents at twice the sides, unshuffled into tokens on the device and on the host).
#[test]
fn device_self_correction_matches_the_host_one() {
    if !gpu_or_skip() {
        return;
    }
    use infinity_kernels::{bsq, patchify};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let scales = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)];
    for patchify in [false, true] {
        let mut mc = ModelConfig::preset("tiny").unwrap();
        (mc.d, mc.conditioning, mc.apply_spatial_patchify) = (16, Conditioning::Class { num_classes: 5 }, patchify);
        let lay = Layout::new(&mc);
        let p: Params<f32> = init_params(&mc, &lay, &InitConfig::default(), 2);
        let tokenizer = if patchify { patchify::tokenizer_scales(&scales) } else { scales.to_vec() };
        let (b, d, (hh, ww)) = (4, mc.d_vae(), *tokenizer.last().unwrap());
        let latents: Vec<f32> = (0..b * d * hh * ww).map(|_| rng.random_range(-1.0..1.0)).collect();
        let keys: Vec<u64> = (0..b).map(|_| rng.random()).collect();
        let cpu = bsq::self_correct_keyed(&latents, &keys, d, &tokenizer, 0.3, 13);
        let mut x: Vec<f32> = cpu.iter().flat_map(|c| c.x_wo_prefix.iter().copied()).collect();
        let mut gt: Vec<u8> = cpu.iter().flat_map(|c| c.bits.iter().copied()).collect();
        if patchify {
            (x, gt) =
                (patchify::unshuffle_tokens(&x, b, d, &scales, 1), patchify::unshuffle_tokens(&gt, b, d, &scales, 0));
        }
        let labels = vec![0usize, 3, 5, 1];
        let rope = RopeTable::new(mc.head_dim(), &scales, (8, 8));
        let weights = token_weights(b, &scales, true);
        let inp = ModelInput {
            b,
            scales: &scales,
            rope: &rope,
            x_wo_prefix: &x,
            cond: Condition::Class { labels: &labels },
            gt_bits: &gt,
            token_weights: &weights,
            label_smoothing: 0.0,
            drop_path: &[],
        };
        let mut m = GpuModel::new(&mc, &lay, 0, false).unwrap();
        m.upload_params(&p).unwrap();
        let mut out = Vec::new();
        for device in [false, true] {
            m.zero_grads().unwrap();
            let ce = if device {
                m.step_latents(&inp, (&latents, &keys), (0.3, 13), true).unwrap()
            } else {
                m.step(&inp, true).unwrap()
            };
            let mut g = Params::zeros(&lay);
            m.add_grads_into(&mut g.data).unwrap();
            out.push((ce.loss, g.data));
        }
        // (an empty schedule is an error, not an index out of bounds)
        let empty = ModelInput { scales: &[], ..inp };
        let e = m.step_latents(&empty, (&latents, &keys), (0.3, 13), true).unwrap_err();
        assert!(format!("{e:#}").contains("schedules start with a 1×1 scale, found none"), "{e:#}");
        println!("patchify {patchify}: loss with host self-correction {:.7}, on the device {:.7}", out[0].0, out[1].0);
        assert!((out[0].0 - out[1].0).abs() <= 1e-6 * out[0].0, "losses {} vs {}", out[0].0, out[1].0);
        let (rel, name) = worst_rel(&lay, &out[1].1, &out[0].1);
        assert!(rel <= 1e-5, "patchify {patchify}: gradient of {name} differs by {rel:e}");
    }
}

/// A folder with `small_data` in it, on the emulated device only (the tests that make it play another
/// GPU through its environment variables); None, saying why, on a real GPU or without a device.
fn emulated_with_data() -> Option<tempfile::TempDir> {
    if !gpu_or_skip() {
        return None;
    }
    let name = infinity_kernels::cuda::Device::open(0).map(|d| d.name).unwrap_or_default();
    if !name.starts_with("Emulated") {
        println!("skipped: {name} is not the emulated device");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    small_data(tmp.path());
    Some(tmp)
}

/// A GPU without bf16 tensor cores (compute capability 7.5, played by the emulated device): with
/// `precision = "bf16"`, `device = "auto"` trains on the CPU and says why, and `device = "cuda"` stops
/// with the reason and the way out. On a real GPU this says it skipped (it cannot play another one).
#[test]
fn a_gpu_without_bf16_tensor_cores_is_named_or_passed_over() {
    let Some(tmp) = emulated_with_data() else { return };
    let run = |device: &str| {
        train_config(tmp.path(), device, (device, "bf16"), 100); // writes {device}.toml
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
            .args(["train", tmp.path().join(format!("{device}.toml")).to_str().unwrap()])
            .env("INFINITY_EMULATED_COMPUTE", "7.5")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, stdout, stderr) = run("auto");
    assert!(ok, "device = auto on a 7.5 GPU with bf16 must train on the CPU: {stderr}");
    assert!(
        stdout.contains("device: cpu (run.device = \"auto\": cuda:0 cannot run it:") && stdout.contains("8.0 or newer"),
        "the fallback names its reason: {stdout}"
    );
    let (ok, _, stderr) = run("cuda");
    assert!(!ok, "device = cuda with bf16 on a 7.5 GPU must stop");
    assert!(
        stderr.contains("run.precision = \"bf16\"")
            && stderr.contains("compute capability 8.0")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// Running out of GPU memory (the emulated device with a few MiB) stops training with what ran out and
/// what to change: holding the model, or a step's activations (with `run.gpu_memory_check = false`:
/// otherwise the run stops before its first step, trainer/tests/gpu_memory.rs). On a real GPU this
/// says it skipped.
#[test]
fn running_out_of_gpu_memory_says_what_to_change() {
    let Some(tmp) = emulated_with_data() else { return };
    train_config(tmp.path(), "oom", ("cuda", "f32"), 100); // writes oom.toml
    let path = tmp.path().join("oom.toml");
    // one micro-batch of 32 rows: the tiny model (about 2.3 MiB with AdamW's moments) fits in
    // 8 MiB, its activations do not
    let text = std::fs::read_to_string(&path).unwrap().replace("micro_batch = 4", "micro_batch = 32");
    std::fs::write(&path, text.replace("global_batch = 8", "global_batch = 32")).unwrap();
    for (memory, advice) in [("1M", "need a GPU with more memory"), ("8M", "a smaller data.micro_batch")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
            .args(["train", path.to_str().unwrap(), "--set", "run.gpu_memory_check=false"])
            .env("INFINITY_EMULATED_MEMORY", memory)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{memory}: training must stop");
        assert!(
            stderr.contains("the GPU ran out of memory") && stderr.contains(advice) && stderr.contains("MiB in use"),
            "{memory}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
