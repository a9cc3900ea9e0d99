//! Shared by the tests that train on a small synthetic dataset (each test binary uses part of it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use infinity_data::synth::{synth, SynthOptions};
use infinity_data::writer::WriterOptions;
use infinity_trainer::optim::Decay;
use infinity_trainer::train::config::{
    BscSection, CheckpointSection, DataSection, LossSection, MicroBatchSize, ModelSection, OptimSection, PeakTflops,
    RunConfig, SampleSection, TrainConfig,
};

/// The small dataset of the multi-process tests: 128 synthetic rows on the `demo4` schedule (37 tokens).
pub fn small_options() -> SynthOptions {
    SynthOptions {
        rows: 128,
        fit_rows: 48,
        budget: "demo4".into(),
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    }
}

/// [`small_options`] written to `dir`.
pub fn small_dataset(dir: &Path) {
    synth(dir, &small_options()).unwrap();
}

/// `rows` synthetic rows (the default budget) written to `dir`, for runs trained in the test's process.
pub fn tiny_dataset(dir: &Path, rows: u64) {
    let opts = SynthOptions {
        rows,
        fit_rows: rows as usize / 2,
        writer: WriterOptions { overwrite: true, ..Default::default() },
        ..Default::default()
    };
    synth(dir, &opts).unwrap();
}

/// A tiny class-conditioned run on `data` into `run`: two blocks, 6 steps of 8 samples (one
/// micro-batch), warm-up 2 then cosine, checkpoints every 3 steps (keeping 5), no sample grids (their
/// settings ready for `sample.every`), no validation.
pub fn tiny_config(data: &Path, run: PathBuf) -> TrainConfig {
    TrainConfig {
        run: RunConfig {
            dir: run,
            seed: 7,
            steps: 6,
            log_every: 100,
            peak_tflops: PeakTflops::Tflops(1.0),
            device: Default::default(),
            recompute: false,
            precision: Default::default(),
            gpu_memory_check: true,
            stall_timeout_s: 0.0,
        },
        model: ModelSection {
            preset: "tiny".into(),
            depth: Some(2),
            embed_dim: None,
            num_heads: None,
            mlp_ratio: None,
            conditioning: "class".into(),
            cond_drop_rate: 0.25,
            drop_path_rate: None,
            apply_spatial_patchify: None,
            init_from: None,
            init_from_ema: false,
            init: Default::default(),
            mup_base_width: None,
            mup_base_heads: None,
        },
        data: DataSection {
            dir: data.to_path_buf(),
            global_batch: 8,
            micro_batch: MicroBatchSize::Samples(8),
            workers: 1,
            short_cap_prob: 0.0,
            weight: None,
            mix: Vec::new(),
            phases: Vec::new(),
        },
        optim: OptimSection {
            lr: Some(3e-3),
            lr_per_256: None,
            warmup_steps: 2,
            decay: Decay::Cosine { min_ratio: 0.1 },
            adamw: Default::default(),
            clip: 1.0,
            clip_decay: false,
            max_nonfinite: 3,
            ema_decay: 0.0,
            skip_loss_z: 0.0,
            skip_grad_z: 0.0,
            spike_window: 128,
        },
        bsc: BscSection { p_max: 0.3, apply_layers: 13 },
        loss: LossSection { reweight_by_scale: true, label_smoothing: 0.05, ..Default::default() },
        checkpoint: CheckpointSection { every: 3, keep_last: 5, ..Default::default() },
        sample: SampleSection { every: 0, n: 3, per_condition: 1, cfg: 2.0, tau: 0.7, top_p: 0.9, seed: 1 },
        dist: Default::default(),
        val: Default::default(),
    }
}

/// `cfg` as a config file in `dir` (named after its run folder), for the `infinity` binary.
pub fn config_file(cfg: &TrainConfig, dir: &Path) -> PathBuf {
    let path = dir.join(format!("train-{}.toml", cfg.run.dir.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    path
}

/// A port free on the loopback interface now (for a rank 0 that hosts the store).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits (up to 60 s) until something listens at `addr`: the store a rank 0 or an agent hosts;
/// `context` says what failed otherwise.
pub fn wait_until_listening(addr: &str, context: &dyn Fn() -> String) {
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(t0.elapsed().as_secs() < 60, "nothing listens at {addr} after 60 s\n{}", context());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `BIN train CONFIG ARGS` in `dir` as rank `rank` of 2 without an agent (as a Kubernetes pod: rank 0
/// hosts the store at 127.0.0.1:`port`), with `env` and its output piped.
pub fn rank_process(
    bin: &Path,
    dir: &Path,
    cfg: &Path,
    (rank, port): (usize, u16),
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let mut c = Command::new(bin);
    c.current_dir(dir).arg("train").arg(cfg).args(args).envs(env.iter().copied());
    c.envs([("WORLD_SIZE", "2"), ("RANK", &rank.to_string()), ("MASTER_ADDR", "127.0.0.1")]);
    c.env("MASTER_PORT", port.to_string()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // (a binary written just before may still be open in a child forked meanwhile: ETXTBSY for a moment)
    for _ in 0..50 {
        match c.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(20)),
            r => return r.unwrap(),
        }
    }
    panic!("{} stays busy", bin.display())
}

/// Whether a CUDA device is there (a GPU, or the emulated one); where not, says the test skipped.
#[cfg(feature = "cuda")]
pub fn gpu_or_skip() -> bool {
    if !infinity_trainer::gpu::cuda_available() {
        println!("skipped: no CUDA device (a GPU, or the emulated one: tools/emulated_device.py)");
        return false;
    }
    true
}

/// Edits the `state.json` of checkpoint folder `dir` with `edit` and writes its `DONE` marker again
/// with the new file's checksum: a checkpoint as a hand (or an earlier build) left it, not damage the
/// marker finds.
pub fn reseal_state(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    edit(&mut state);
    let text = serde_json::to_string_pretty(&state).unwrap();
    std::fs::write(dir.join("state.json"), &text).unwrap();
    std::fs::write(dir.join("DONE"), format!("state.json crc32c {:08x}\n", crc32c::crc32c(text.as_bytes()))).unwrap();
}
