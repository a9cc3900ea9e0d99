//! The device memory estimate (`model::memory`, what `infinity train --check` prints) against the
//! allocator's own high-water mark over a training step: class and text, f32 and bf16, with and without
//! block recomputation. A buffer the model starts keeping (or stops freeing) without the estimate
//! counting it fails here. Runs on a GPU or on the emulated device (kernels/emulator/device, whose pool
//! counts what the program holds as a GPU's does); prints that it skipped without either. And
//! `infinity model info`'s table of the same, which needs no GPU.

#[cfg(feature = "cuda")]
mod common;

/// `infinity model info` adds the GPU memory of a training step per precision and recomputation, and
/// the largest micro-batch a GPU's memory holds.
#[test]
fn model_info_tells_the_gpu_memory_a_step_needs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
        .args(["model", "info", "--preset", "2b", "--batch", "8", "--gpu-gib", "80"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| f32 |") || l.starts_with("| bf16 |")).collect();
    assert_eq!(rows.len(), 4, "{text}");
    // the f32 weights, gradients and moments of 2.2 B parameters: 16 bytes each, 32.9 GiB (the groups'
    // runs take a few KB)
    assert!(rows[0].starts_with("| f32 | no | 16.43 GiB | 16.43 GiB |"), "{}", rows[0]);
    let largest = |row: &str| row.trim_end_matches(" |").rsplit("| ").next().unwrap().parse::<usize>().unwrap();
    assert!(largest(rows[1]) > 4 * largest(rows[0]), "recomputation fits more: {text}");
}

/// The GPU's name (the emulated device's starts with "Emulated"), or None, saying the test skipped,
/// without a device.
#[cfg(feature = "cuda")]
fn device_name() -> Option<String> {
    if !common::gpu_or_skip() {
        return None;
    }
    Some(infinity_kernels::cuda::Device::open(0).map(|d| d.name).unwrap_or_default())
}

#[cfg(feature = "cuda")]
#[test]
fn the_memory_estimate_matches_the_allocators_peak() {
    use infinity_kernels::rope::RopeTable;
    use infinity_trainer::gpu::GpuModel;
    use infinity_trainer::model::init::{init_params, InitConfig};
    use infinity_trainer::model::memory::{device_memory, GpuStep};
    use infinity_trainer::model::{token_weights, Condition, Conditioning, Layout, ModelConfig, ModelInput, Params};
    use rand::{Rng, SeedableRng};

    let Some(name) = device_name() else { return };
    // the emulated pool rounds each allocation to 256 bytes as the estimate does; a GPU's own
    // granularity may add a little to this test's many small buffers
    let tolerance = if name.starts_with("Emulated") { 0.01 } else { 0.05 };
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let scales: &[(usize, usize)] = &[(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)];
    // 5 tokens a sample against 64 text tokens: the text path's gradients outgrow a block's
    let short: &[(usize, usize)] = &[(1, 1), (2, 2)];
    let class = Conditioning::Class { num_classes: 5 };
    let cases = [
        (class.clone(), false, false, scales),
        (class.clone(), true, false, scales),
        (class, true, true, scales),
        (Conditioning::Text, true, false, scales),
        (Conditioning::Text, false, true, scales),
        (Conditioning::Text, true, false, short),
        (Conditioning::Text, false, false, short),
    ];
    for (conditioning, bf16, recompute, scales) in cases {
        let l: usize = scales.iter().map(|&(h, w)| h * w).sum();
        let (hh, ww) = *scales.last().unwrap();
        let mut mc = ModelConfig::preset("tiny").unwrap();
        (mc.d, mc.conditioning) = (16, conditioning.clone());
        if l == 5 {
            mc.text_maxlen = 64;
        }
        let lay = Layout::new(&mc);
        let p: Params<f32> = init_params(&mc, &lay, &InitConfig::default(), 1);
        let (b, d) = (3, mc.d);
        let latents: Vec<f32> = (0..b * d * hh * ww).map(|_| rng.random_range(-1.0..1.0)).collect();
        let keys: Vec<u64> = (0..b).map(|_| rng.random()).collect();
        // (the teacher-forcing inputs and labels come from the latents on the device)
        let (x, gt) = (vec![0f32; b * (l - 1) * d], vec![0u8; b * l * d]);
        let labels = vec![0usize, 3, 5];
        // every caption at text_maxlen tokens, the length the estimate assumes
        let m = mc.text_maxlen;
        let cu: Vec<usize> = (0..=b).map(|i| i * m).collect();
        let kv: Vec<f32> = (0..b * m * mc.text_channels).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dropped = vec![false, true, false];
        let cond = match conditioning {
            Conditioning::Class { .. } => Condition::Class { labels: &labels },
            Conditioning::Text => Condition::Text { kv_compact: &kv, cu_seqlens: &cu, dropped: &dropped },
        };
        let rope = RopeTable::new(mc.head_dim(), scales, (hh, ww));
        let weights = token_weights(b, scales, false);
        let inp = ModelInput {
            b,
            scales,
            rope: &rope,
            x_wo_prefix: &x,
            cond,
            gt_bits: &gt,
            token_weights: &weights,
            label_smoothing: 0.0,
            drop_path: &[],
        };

        let mut gpu = GpuModel::new(&mc, &lay, 0, bf16).unwrap();
        gpu.recompute = recompute;
        gpu.upload_params(&p).unwrap();
        gpu.attach_fresh_optimizer().unwrap();
        let held = gpu.memory().unwrap().used;
        gpu.reset_peak_memory().unwrap();
        gpu.step_latents(&inp, (&latents, &keys), (0.3, 13), true).unwrap();
        let peak = gpu.memory().unwrap().peak - held;

        let text_tokens = if mc.has_cross_attention() { m } else { 0 };
        let step = GpuStep {
            micro_batch: b,
            tokens: l,
            text_tokens,
            latent_hw: (hh, ww),
            bf16,
            recompute,
            device_optimizer: Some(1),
            ema: false,
        };
        let est = device_memory(&mc, lay.numel, &step);
        let tag = format!("{conditioning:?}, L {l}, bf16 {bf16}, recompute {recompute}");
        println!(
            "{tag}: parameters, gradients and AdamW {held} bytes (estimate {}); step {peak} bytes (estimate {}, {:+.1} %)",
            est.model + est.optimizer,
            est.activations(),
            100.0 * (est.activations() as f64 / peak as f64 - 1.0)
        );
        // the model's buffers to the allocator's rounding (a few hundred bytes each)
        let model = (est.model + est.optimizer) as f64;
        assert!((held as f64 / model - 1.0).abs() <= tolerance, "{tag}: model state {held} bytes");
        let ratio = est.activations() as f64 / peak as f64;
        assert!(
            (ratio - 1.0).abs() <= tolerance,
            "{tag}: estimate {} bytes, the step's peak {peak}",
            est.activations()
        );
    }
}

/// The config of a tiny class run (10 steps, 64 samples a step) on the emulated device, written in `tmp`
/// beside its dataset; None, saying the test skipped, on a real GPU (whose memory cannot be chosen) or
/// without a device.
#[cfg(feature = "cuda")]
fn emulated_run_config(tmp: &std::path::Path) -> Option<std::path::PathBuf> {
    use infinity_data::synth::{synth, SynthOptions};
    let name = device_name()?;
    if !name.starts_with("Emulated") {
        println!("skipped: {name} is not the emulated device");
        return None;
    }
    synth(&tmp.join("data"), &SynthOptions { rows: 64, fit_rows: 32, ..Default::default() }).unwrap();
    let cfg = tmp.join("check.toml");
    let text = format!(
        "[run]\ndir = \"{}\"\nseed = 1\nsteps = 10\ndevice = \"cuda\"\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n\
         [data]\ndir = \"{}\"\nglobal_batch = 64\nmicro_batch = 64\n[optim]\nlr = 1e-3\n[checkpoint]\nevery = 100\n",
        tmp.join("run").display(),
        tmp.join("data").display()
    );
    std::fs::write(&cfg, text).unwrap();
    Some(cfg)
}

/// `infinity train --check` on a GPU too small for the micro-batch (the emulated device with 1 GiB and
/// 40 MiB, of which the check keeps 1 GiB for the runtime) stops with the micro-batches that fit; with
/// one that fits it passes and says how far it could go. `infinity train` on a GPU whose memory the
/// step exceeds (64 MiB) stops before its first step with exit code 2 (not restarted by the launcher)
/// and the same advice. On a real GPU this says it skipped.
#[cfg(feature = "cuda")]
#[test]
fn the_check_names_the_micro_batch_a_gpu_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(cfg) = emulated_run_config(tmp.path()) else { return };
    let check = |micro: usize| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
            .args(["train", cfg.to_str().unwrap(), "--check"])
            .args(["--set", &format!("data.micro_batch={micro}"), "--set", &format!("data.global_batch={micro}")])
            .env("INFINITY_EMULATED_MEMORY", "1064M")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, _, stderr) = check(64);
    assert!(!ok, "64 samples a micro-batch do not fit in 40 MiB");
    assert!(stderr.contains("more than the GPU's 1.04 GiB") && stderr.contains("Micro-batches: up to "), "{stderr}");
    let most: usize = stderr.split("Micro-batches: up to ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((4..64).contains(&most), "{stderr}");
    let (ok, stdout, stderr) = check(most);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("(micro-batches up to {most} fit)")), "{stdout}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
        .args(["train", cfg.to_str().unwrap()])
        .env("INFINITY_EMULATED_MEMORY", "64M")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("more than the GPU's 64.0 MiB. Micro-batches: up to "), "{stderr}");
    assert!(!stderr.contains("ran out of memory") && !stderr.contains("panicked"), "{stderr}");
    assert!(!tmp.path().join("run").join("metrics.jsonl").exists(), "no step ran");
}

/// `data.micro_batch = "auto"` on a GPU of 1 GiB and 40 MiB: `train --check` and `train` take the largest
/// divisor of a rank's 40 samples whose step fits the 40 MiB left after the 1 GiB kept for the runtime,
/// keep the global batch by accumulation, and the step's measured peak stays within those 40 MiB.
#[cfg(feature = "cuda")]
#[test]
fn micro_batch_auto_takes_the_most_the_gpu_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(cfg) = emulated_run_config(tmp.path()) else { return };
    let train = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinity"))
            .args(["train", cfg.to_str().unwrap()])
            .args(extra)
            .args(["--set", "data.micro_batch=auto", "--set", "data.global_batch=40", "--set", "run.steps=1"])
            .env("INFINITY_EMULATED_MEMORY", "1064M")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let stdout = train(&["--check"]);
    let line =
        stdout.lines().find(|l| l.starts_with("data.micro_batch = auto: ")).unwrap_or_else(|| panic!("{stdout}"));
    let number =
        |after: &str| -> usize { line.split(after).nth(1).unwrap().split([' ', ',']).next().unwrap().parse().unwrap() };
    let (micro, most) = (number("auto: "), number("; up to "));
    assert!((4..40).contains(&most), "{line}");
    assert_eq!(micro, (1..=most).rev().find(|b| 40 % b == 0).unwrap(), "{line}");
    assert!(
        stdout.contains(&format!("40 samples per step = 1 rank × {} micro-steps × {micro};", 40 / micro)),
        "{stdout}"
    );

    train(&[]);
    let run = tmp.path().join("run");
    let derived: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("derived.json")).unwrap()).unwrap();
    assert_eq!(derived["micro_batch"].as_u64(), Some(micro as u64));
    assert_eq!(derived["grad_accumulation"].as_u64(), Some(40 / micro as u64));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let step: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let peak = step["gpu_mem_peak_gib"].as_f64().unwrap() * (1u64 << 30) as f64;
    println!(
        "auto: micro-batch {micro} of 40 ({most} fit); the step's peak {:.1} MiB of 40 MiB",
        peak / (1 << 20) as f64
    );
    assert!(peak <= (40 << 20) as f64, "peak {peak} bytes");
}
