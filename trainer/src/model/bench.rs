//! `infinity model bench`: forward+backward throughput and peak memory of the model on the CPU or a GPU
//! (`--device cuda`), optionally side by side with the PyTorch reference (tests/reference/bench_model.py)
//! on the same device in the same run.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};
use infinity_data::Catalog;
use infinity_kernels::bsq::keyed_uniform;
use infinity_kernels::gradcheck::noise;
use infinity_kernels::rope::RopeTable;

use super::forward::forward_into;
use super::init::{init_params, InitConfig};
use super::{backward, token_weights, Condition, Layout, ModelConfig, ModelInput, Params};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub config: ModelConfig,
    pub label: String,
    pub batch: usize,
    pub template: String,
    pub budget: String,
    /// Text tokens per sample.
    pub text_tokens: usize,
    pub steps: usize,
    pub python: Option<String>,
    /// Run on GPU 0 (the PyTorch side too).
    pub cuda: bool,
    /// Peak dense TFLOP/s of the device, for MFU.
    pub peak_tflops: Option<f64>,
    /// GPU: recompute blocks in the backward.
    pub recompute: bool,
    /// GPU: bf16 matmul inputs.
    pub bf16: bool,
    /// GPU: profile one extra step per kernel (appended to the output).
    pub profile: bool,
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Model FLOPs per token of one training step (forward + backward = 3× forward): dense matmuls plus
/// attention scores and mixing for the block-causal context of `scales` and `text_tokens` of text.
pub fn train_flops_per_token(cfg: &ModelConfig, scales: &[(usize, usize)], text_tokens: usize) -> f64 {
    let c = cfg.embed_dim as f64;
    let hf = cfg.ffn_hidden() as f64;
    let l: usize = scales.iter().map(|&(h, w)| h * w).sum();
    // average number of visible keys per query under the block-causal mask
    let mut end = 0;
    let mut ctx = 0.0;
    for &(h, w) in scales {
        end += h * w;
        ctx += (h * w * end) as f64;
    }
    let ctx = ctx / l as f64;
    let per_block_dense =
        3.0 * c * c + c * c + hf * c * 2.0 + if cfg.has_cross_attention() { 2.0 * c * c } else { 0.0 };
    let per_block_attn = 2.0 * c * ctx + if cfg.has_cross_attention() { 2.0 * c * text_tokens as f64 } else { 0.0 };
    let head = 2.0 * cfg.d as f64 * c + cfg.d as f64 * c;
    3.0 * 2.0 * (cfg.depth as f64 * (per_block_dense + per_block_attn) + head)
}

pub fn run(o: &BenchOptions) -> Result<String> {
    let cfg = &o.config;
    cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
    let lay = Layout::new(cfg);
    let p = bench_params(cfg, &lay);
    let sched = Catalog::upstream().schedule(&o.template, &o.budget)?;
    let scales = sched.hw();
    let l = sched.num_tokens();
    let b = o.batch;
    let rope = RopeTable::new(cfg.head_dim(), &scales, Catalog::upstream().rope_frame(&o.template)?);
    let x: Vec<f32> = noise(b * (l - 1) * cfg.d, 1).iter().map(|&v| v as f32 * 0.5).collect();
    let gt: Vec<u8> = noise(b * l * cfg.d, 2).iter().map(|&v| (v > 0.0) as u8).collect();
    let kv: Vec<f32> = noise(b * o.text_tokens * cfg.text_channels, 3).iter().map(|&v| v as f32).collect();
    let cu: Vec<usize> = (0..=b).map(|i| i * o.text_tokens).collect();
    let dropped = vec![false; b];
    let w = token_weights(b, &scales, false);
    let inp = ModelInput {
        b,
        scales: &scales,
        rope: &rope,
        x_wo_prefix: &x,
        cond: Condition::Text { kv_compact: &kv, cu_seqlens: &cu, dropped: &dropped },
        gt_bits: &gt,
        token_weights: &w,
        label_smoothing: 0.0,
        drop_path: &[],
    };
    let (secs, mem, profile) =
        if o.cuda { time_cuda(o, cfg, &lay, &p, &inp)? } else { time_cpu(o, cfg, &lay, &p, &inp) };
    let tps = (b * l) as f64 / secs;
    let flops = train_flops_per_token(cfg, &scales, o.text_tokens);
    let threads = rayon_threads();
    let mfu = |tps: f64| o.peak_tflops.map_or("–".into(), |pk| format!("{:.1}%", 100.0 * tps * flops / (pk * 1e12)));
    let ours = match o.cuda {
        true => format!(
            "rust (this crate, cuda {}{})",
            if o.bf16 { "bf16 matmuls" } else { "f32" },
            if o.recompute { ", recompute" } else { "" }
        ),
        false => "rust (this crate)".into(),
    };
    let mut out = String::new();
    let mem = mem.map_or("?".into(), |m| format!("{m:.0}"));
    let row = |out: &mut String, who: &str, tps: f64, mem: &str| {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2e} | {who} | {threads} | {tps:.0} | {:.1} | {} | {mem} |",
            o.label,
            lay.numel,
            l,
            b,
            flops,
            tps * flops / 1e9,
            mfu(tps)
        );
    };
    row(&mut out, &ours, tps, &mem);
    if let Some(py) = &o.python {
        let (ptps, pmem) = python_bench(py, o, threads)?;
        let who = match (o.cuda, o.bf16) {
            (true, true) => "pytorch eager (cuda, bf16 autocast)",
            (true, false) => "pytorch eager (cuda f32)",
            _ => "pytorch eager (f32)",
        };
        row(&mut out, who, ptps, &format!("{pmem:.0}"));
        let _ = writeln!(out, "\nrust / pytorch tokens/s: {:.2}×", tps / ptps);
    }
    out.push_str(&profile.unwrap_or_default());
    Ok(out)
}

/// Parameters to time with: `init_params` up to 100 M parameters; above that, where its single stream
/// of truncated normals takes minutes on the host, uniform noise in ±0.02 (norm weights too: the step's
/// cost does not depend on the values), filled by every core.
fn bench_params(cfg: &ModelConfig, lay: &Layout) -> Params<f32> {
    if lay.numel < 100_000_000 {
        return init_params(cfg, lay, &InitConfig::default(), 0);
    }
    let mut p = Params::zeros(lay);
    let chunk = p.data.len().div_ceil(rayon_threads());
    std::thread::scope(|s| {
        for (i, part) in p.data.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (j, v) in part.iter_mut().enumerate() {
                    *v = ((keyed_uniform(0xbe7c, i, j as u64) - 0.5) * 0.04) as f32;
                }
            });
        }
    });
    p
}

/// Seconds per forward+backward on the CPU, and peak RSS.
fn time_cpu(
    o: &BenchOptions,
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<f32>,
    inp: &ModelInput<f32>,
) -> (f64, Option<f64>, Option<String>) {
    let mut grads = Params::zeros(lay);
    let mut acts = Default::default();
    let mut step = |grads: &mut Params<f32>| {
        grads.data.iter_mut().for_each(|g| *g = 0.0);
        forward_into(cfg, lay, p, inp, &mut acts);
        backward(cfg, lay, p, inp, &acts, grads);
        acts.ce.loss
    };
    step(&mut grads); // warm-up: allocates the activations once
    let t = Instant::now();
    for _ in 0..o.steps {
        std::hint::black_box(step(&mut grads));
    }
    (t.elapsed().as_secs_f64() / o.steps as f64, peak_rss_mib(), None)
}

/// Seconds per forward+backward on GPU 0 (each step ends with the loss on the host), the device
/// memory in use after the steps, and with `o.profile` the GPU time per kernel of one more step.
#[cfg(feature = "cuda")]
fn time_cuda(
    o: &BenchOptions,
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<f32>,
    inp: &ModelInput<f32>,
) -> Result<(f64, Option<f64>, Option<String>)> {
    let mut m = crate::gpu::GpuModel::new(cfg, lay, 0, o.bf16)?;
    console!("device: cuda:0 {} ({})", m.device_name(), m.arch());
    m.recompute = o.recompute;
    m.upload_params(p)?;
    m.zero_grads()?;
    m.step(inp, true)?; // warm-up: compiles the kernels, fills the allocator's pool
    let t = Instant::now();
    for _ in 0..o.steps {
        std::hint::black_box(m.step(inp, true)?);
    }
    let secs = t.elapsed().as_secs_f64() / o.steps as f64;
    let used = cudarc::driver::result::mem_get_info().ok().map(|(free, total)| (total - free) as f64 / 1048576.0);
    let mut extra = memory_line(&m, cfg, lay, inp, o)?;
    extra += &optimizer_line(&mut m, lay, o)?;
    if o.profile {
        m.device().start_profile();
        m.step(inp, true)?;
        extra.push_str(&profile_table(&m.device().profile_report()?, secs));
    }
    Ok((secs, used, Some(extra)))
}

/// The allocator's high-water mark over the steps so far (the parameters, their gradients and a step)
/// beside `model::memory`'s estimate of a training step, which also counts self-correction's latents
/// (a few MiB the bench's steps do not hold).
#[cfg(feature = "cuda")]
fn memory_line(
    m: &crate::gpu::GpuModel,
    cfg: &ModelConfig,
    lay: &Layout,
    inp: &ModelInput<f32>,
    o: &BenchOptions,
) -> Result<String> {
    use super::memory::{device_memory, gib, GpuStep};
    let step = GpuStep {
        micro_batch: inp.b,
        tokens: inp.scales.iter().map(|&(h, w)| h * w).sum(),
        text_tokens: o.text_tokens,
        latent_hw: *inp.scales.last().expect("a schedule has scales"),
        bf16: o.bf16,
        recompute: o.recompute,
        device_optimizer: None,
        ema: false,
    };
    let est = device_memory(cfg, lay.numel, &step);
    Ok(format!("\ndevice memory: the allocator's peak {} (model::memory's estimate {est})\n", gib(m.memory()?.peak)))
}

/// The device optimizer's step after the timed ones (not in tokens/s or MFU, which count forward and
/// backward): the gradients' global norm and the fused AdamW over every parameter, from fresh moments,
/// with the bytes they move and the rate.
#[cfg(feature = "cuda")]
fn optimizer_line(m: &mut crate::gpu::GpuModel, lay: &Layout, o: &BenchOptions) -> Result<String> {
    use infinity_kernels::adamw::AdamWScalars;
    m.attach_fresh_optimizer()?;
    let mut update = |t: u64| -> Result<()> {
        m.clip_grads(1.0, |_| Ok(()))?; // the norm comes back to the host: the stream is idle after it
        m.adamw_update(AdamWScalars::new(1e-4, 0.9, 0.97, 1e-8, 0.05, t))?;
        Ok(m.device().stream.synchronize()?)
    };
    update(1)?; // warm-up: compiles adamw.cu
    let t = Instant::now();
    for step in 0..o.steps {
        update(2 + step as u64)?;
    }
    let secs = t.elapsed().as_secs_f64() / o.steps as f64;
    // per parameter: the norm reads g; AdamW reads p, g, m, v and the decay flag, writes p, m, v (and
    // the bf16 weights with bf16 matmuls)
    let bytes = lay.numel as f64 * (4.0 + 16.0 + 1.0 + 12.0 + if o.bf16 { 2.0 } else { 0.0 });
    Ok(format!(
        "\ndevice optimizer step (global norm, clipping and fused AdamW over {} parameters; not in tokens/s): \
         {:.3} ms, {:.0} GB/s\n",
        lay.numel,
        secs * 1e3,
        bytes / secs / 1e9
    ))
}

/// Where a step's GPU time goes: the kernels (and GEMM kinds) taking 0.5 % or more, largest first.
#[cfg(feature = "cuda")]
fn profile_table(times: &[infinity_kernels::cuda::device::KernelTime], step_secs: f64) -> String {
    let total: f64 = times.iter().map(|t| t.ms).sum();
    let mut out = format!(
        "\nGPU time of one step: {total:.1} ms in kernels ({:.1} ms wall per timed step)\n| kernel | calls | ms | % |\n|---|---|---|---|\n",
        step_secs * 1e3
    );
    for t in times.iter().filter(|t| t.ms >= 0.005 * total) {
        let _ = writeln!(out, "| {} | {} | {:.2} | {:.1} |", t.name, t.calls, t.ms, 100.0 * t.ms / total);
    }
    out
}

#[cfg(not(feature = "cuda"))]
fn time_cuda(
    _: &BenchOptions,
    _: &ModelConfig,
    _: &Layout,
    _: &Params<f32>,
    _: &ModelInput<f32>,
) -> Result<(f64, Option<f64>, Option<String>)> {
    anyhow::bail!("--device cuda needs a build with the `cuda` feature (cargo build --release --features cuda)")
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn python_bench(python: &str, o: &BenchOptions, threads: usize) -> Result<(f64, f64)> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/bench_model.py");
    let c = &o.config;
    let args = [
        ("--depth", c.depth.to_string()),
        ("--embed-dim", c.embed_dim.to_string()),
        ("--num-heads", c.num_heads.to_string()),
        ("--mlp-ratio", c.mlp_ratio.to_string()),
        ("--d", c.d.to_string()),
        ("--text-channels", c.text_channels.to_string()),
        ("--text-tokens", o.text_tokens.to_string()),
        ("--batch", o.batch.to_string()),
        ("--template", o.template.clone()),
        ("--budget", o.budget.clone()),
        ("--steps", o.steps.to_string()),
        ("--threads", threads.to_string()),
        ("--device", if o.cuda { "cuda".into() } else { "cpu".into() }),
    ];
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script);
    if o.bf16 {
        cmd.arg("--bf16");
    }
    for (flag, value) in &args {
        cmd.arg(flag).arg(value);
    }
    let out = cmd.output().with_context(|| format!("running {python}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<f64>().ok());
    match (field("tokens_per_s="), field("peak_rss_mib=")) {
        (Some(t), Some(r)) if out.status.success() => Ok((t, r)),
        _ => anyhow::bail!("{} failed:\n{text}{}", script.display(), String::from_utf8_lossy(&out.stderr)),
    }
}
