//! The CUDA kernels on the GPU: the two headline kernels side by side with PyTorch eager doing the same
//! math in the same run (tools/bench_torch_kernels.py), the other families' GB/s or TFLOP/s (matmuls
//! in f32 and bf16, flash attention, LayerNorm, AdamW), and a device copy as the bandwidth reference.
//!
//!   cargo bench -p infinity-kernels --features cuda --bench cuda_kernels
//!
//! `INFINITY_BENCH_PYTHON` names the Python with PyTorch (default `python3`; `none` skips it).
//! `INFINITY_BENCH_SMOKE=1` runs every row once at small shapes: scripts/test.sh does so on the emulated
//! CUDA device to check the bench's own code in CI (the figures mean nothing there).
//! Bandwidth figures use a byte model stated per case (bytes the math must move at least once), and
//! are given against the GPU's nominal peak (its datasheet's, by name: [`nominal_gbs`]) and the copy
//! measured here (on an H200 about 4.3 TB/s, the figure issue 6 states its goals against).

use std::process::Command;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use infinity_kernels::attention::{block_causal_segments, AttnDims};
use infinity_kernels::cuda::attention::{attention_backward_dev, attention_forward_dev, AttnRanges};
use infinity_kernels::cuda::bsq::{self_correct_batch, BsqBatch, BsqPath, BsqScratch};
use infinity_kernels::cuda::device::{device_present, Act, Buf, BufMut};
use infinity_kernels::cuda::head_ce::{head_bitwise_ce_device, HeadCeDevice};
use infinity_kernels::cuda::layers::{
    embedding_backward_dev, layernorm_dev, modulated_layernorm_backward_dev, modulated_layernorm_dev, AdaShape,
};
use infinity_kernels::cuda::linear::{bias_grad, input_grad, rounded, to_bf16_dev, weight_grad};
use infinity_kernels::cuda::linear::{linear_dev, Gemm};
use infinity_kernels::cuda::ops::{adamw_dev, bitwise_ce_dev};
use infinity_kernels::cuda::{Device, Math};
use rand::{Rng, SeedableRng};

/// The GPU's nominal memory bandwidth, set once from its name (none: not in [`nominal_gbs`]'s table).
static NOMINAL_GBS: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();

/// The datasheet memory bandwidth (GB/s) of the GPU named `name`, where this table knows it.
fn nominal_gbs(name: &str) -> Option<f64> {
    let has = |s: &str| name.contains(s);
    match () {
        _ if has("H200") && !has("GH200") => Some(4800.0),
        _ if has("H100") && has("PCIe") => Some(2000.0),
        _ if has("H100") && has("NVL") => Some(3900.0),
        _ if has("H100") => Some(3350.0),
        _ if has("A100") && has("80GB") && has("PCIe") => Some(1935.0),
        _ if has("A100") && has("80GB") => Some(2039.0),
        _ if has("A100") => Some(1555.0),
        _ => None,
    }
}

/// `gbs` as a percentage of the nominal bandwidth (`  n/a` where it is not known).
fn of_nominal(gbs: f64) -> String {
    match NOMINAL_GBS.get().copied().flatten() {
        Some(peak) => format!("{:5.1}%", 100.0 * gbs / peak),
        None => "  n/a ".into(),
    }
}

/// The shapes timed: the head at widths 768 and 2048 over 16 samples of the 256 px schedule (646
/// tokens), BSQ on the 1024 px latent schedule (13 scales to 64²), the other families at a width-2048
/// model's 256 px sizes; or, for a smoke run, small ones.
struct Shapes {
    smoke: bool,
    copy_values: usize,
    head_tokens: usize,
    head_widths: [usize; 2],
    bsq_batches: [usize; 2],
    bsq_scales: &'static [usize],
    samples: usize,
    per_scale: &'static [usize],
    width: usize,
    adamw_params: usize,
}

impl Shapes {
    fn from_env() -> Shapes {
        match std::env::var("INFINITY_BENCH_SMOKE").is_ok_and(|v| v == "1") {
            false => Shapes {
                smoke: false,
                copy_values: 1 << 28,
                head_tokens: 16 * 646,
                head_widths: [768, 2048],
                bsq_batches: [16, 64],
                bsq_scales: &[1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64],
                samples: 16,
                per_scale: &[1, 4, 16, 36, 64, 100, 169, 256],
                width: 2048,
                adamw_params: 1 << 28,
            },
            true => Shapes {
                smoke: true,
                copy_values: 1 << 16,
                head_tokens: 70,
                head_widths: [64, 128],
                bsq_batches: [1, 2],
                bsq_scales: &[1, 2, 3, 5],
                samples: 1,
                per_scale: &[1, 4, 16, 36],
                width: 256,
                adamw_params: 1 << 12,
            },
        }
    }

    /// Timed calls per row (after the warm-ups): one in a smoke run.
    fn iters(&self, n: usize) -> usize {
        if self.smoke {
            1
        } else {
            n
        }
    }
}

/// Median milliseconds of `f` over `iters` calls timed with CUDA events (after 3 warm-up calls, 1 if
/// `iters` is 1).
fn time_ms(dev: &Device, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.min(3) {
        f();
    }
    dev.stream.synchronize().unwrap();
    let mut ms: Vec<f64> = (0..iters)
        .map(|_| {
            let a = dev.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
            f();
            let b = dev.stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
            a.elapsed_ms(&b).unwrap() as f64
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// PyTorch eager's median milliseconds for the same case, or None (no Python/PyTorch, or told not to).
fn torch_ms(args: &[String]) -> Option<f64> {
    let python = std::env::var("INFINITY_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    if python == "none" {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/bench_torch_kernels.py");
    let out = Command::new(&python).arg(script).args(args).output().ok()?;
    if !out.status.success() {
        eprintln!("PyTorch side failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("\"ms\":").nth(1)?;
    rest.split([',', '}']).next()?.trim().parse().ok()
}

fn upload<T: cudarc::driver::DeviceRepr>(dev: &Device, v: &[T]) -> CudaSlice<T> {
    dev.stream.clone_htod(v).unwrap()
}

fn row(name: &str, ms: f64, bytes: f64, flops: f64, copy_gbs: f64, torch: Option<f64>) {
    let gbs = bytes / ms / 1e6;
    let vs = torch.map(|t| format!("{t:9.3} ms  {:5.2}×", t / ms)).unwrap_or_else(|| "        n/a".into());
    println!(
        "{name:<44} {ms:8.3} ms {gbs:8.0} GB/s {} nominal {:5.1}% copy {:7.2} TFLOP/s | torch {vs}",
        of_nominal(gbs),
        100.0 * gbs / copy_gbs,
        flops / ms / 1e9,
    );
}

fn main() {
    if !device_present() {
        println!("skipped: no CUDA device (run on a GPU machine with --features cuda)");
        return;
    }
    let dev = Device::open(0).expect("opening CUDA device 0");
    let sh = Shapes::from_env();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    println!("device {} ({}); PyTorch eager side by side (ratio = torch time / ours)", dev.name, dev.arch);
    let nominal = *NOMINAL_GBS.get_or_init(|| nominal_gbs(&dev.name));
    match nominal {
        Some(gbs) => println!("nominal memory bandwidth {gbs:.0} GB/s (the datasheet's for this GPU)"),
        None => println!("nominal memory bandwidth: not known for this GPU (n/a); the copy below is the reference"),
    }

    // the bandwidth reference: a 1 GiB device-to-device copy (read + write)
    let n = sh.copy_values;
    let src = dev.stream.alloc_zeros::<f32>(n).unwrap();
    let mut dst = dev.stream.alloc_zeros::<f32>(n).unwrap();
    let copy_ms = time_ms(&dev, sh.iters(10), || dev.stream.memcpy_dtod(&src, &mut dst).unwrap());
    let copy_gbs = 8.0 * n as f64 / copy_ms / 1e6;
    println!(
        "{:<44} {copy_ms:8.3} ms {copy_gbs:8.0} GB/s {} nominal",
        format!("device copy {} MiB", (n * 4) >> 20),
        of_nominal(copy_gbs)
    );
    drop((src, dst));

    // head + bitwise CE, forward and backward: 256 px schedule (646 tokens) × 16 samples, d = 32; f32
    // (head_ce.cu, PyTorch f32) and bf16 tensor cores (head_ce_bf16.cu, PyTorch under bf16 autocast)
    let [c0, c1] = sh.head_widths;
    for (c, math) in [(c0, Math::F32), (c1, Math::F32), (c0, Math::Bf16), (c1, Math::Bf16)] {
        let gemm = infinity_kernels::cuda::linear::Gemm::new(&dev, math == Math::Bf16).unwrap();
        let (n, d) = (sh.head_tokens, 32);
        let h = upload(&dev, &(0..n * c).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>());
        let w = upload(&dev, &(0..2 * d * c).map(|_| rng.random_range(-0.02f32..0.02)).collect::<Vec<_>>());
        let b = upload(&dev, &vec![0.0f32; 2 * d]);
        let y = upload(&dev, &(0..n * d).map(|_| rng.random_range(0..2u8)).collect::<Vec<_>>());
        let wt = upload(&dev, &vec![1.0f32 / n as f32; n]);
        let mut out = HeadCeDevice::new(&dev, (n, c, d), true).unwrap();
        let (mut dw, mut db) =
            (dev.stream.alloc_zeros::<f32>(2 * d * c).unwrap(), dev.stream.alloc_zeros::<f32>(2 * d).unwrap());
        let ms = time_ms(&dev, sh.iters(20), || {
            head_bitwise_ce_device(&dev, &h, &w, &b, &y, &wt, 0.0, (n, c, d), &mut out, math).unwrap();
            let g = out.dlogits.as_ref().unwrap();
            weight_grad(&gemm, &dev, g, &h, &mut dw, (n, c, 2 * d)).unwrap();
            bias_grad(&dev, g, &mut db, n, 2 * d).unwrap();
        });
        let kernel_ms = time_ms(&dev, sh.iters(20), || {
            head_bitwise_ce_device(&dev, &h, &w, &b, &y, &wt, 0.0, (n, c, d), &mut out, math).unwrap();
        });
        // bytes: h read, dh written (kernel); h read again for dW (GEMM); dlogits out and back
        let (hb, gb) = ((n * c * 4) as f64, (n * 2 * d * 4 * 2) as f64);
        let flops = 2.0 * (n * c * 2 * d) as f64 * 3.0;
        let mut args: Vec<String> =
            ["head_ce", "--n", &n.to_string(), "--c", &c.to_string(), "--d", &d.to_string()].map(String::from).to_vec();
        let kind = if math == Math::Bf16 { "bf16" } else { "f32" };
        if math == Math::Bf16 {
            args.push("--bf16".into());
        }
        row(&format!("head+CE {kind} fwd+bwd N={n} C={c} d={d}"), ms, 3.0 * hb + gb, flops, copy_gbs, torch_ms(&args));
        row(
            "  fused kernel only (loss, dlogits, dh)",
            kernel_ms,
            2.0 * hb + gb / 2.0,
            flops * 2.0 / 3.0,
            copy_gbs,
            None,
        );
        if math == Math::Bf16 {
            // h kept in bf16 alone, as the GPU model keeps the head's input: h read at 2 bytes by the
            // kernel and by the dW GEMM (no cast before it), dh written in f32
            let mut h16 = dev.stream.alloc_zeros::<u16>(n * c).unwrap();
            to_bf16_dev(&dev, &h, &mut h16).unwrap();
            let h16 = Act::Bf16(h16);
            let ms = time_ms(&dev, sh.iters(20), || {
                head_bitwise_ce_device(&dev, &h16, &w, &b, &y, &wt, 0.0, (n, c, d), &mut out, math).unwrap();
                let g = out.dlogits.as_ref().unwrap();
                weight_grad(&gemm, &dev, g, &h16, &mut dw, (n, c, 2 * d)).unwrap();
                bias_grad(&dev, g, &mut db, n, 2 * d).unwrap();
            });
            row("  h in bf16 (as training keeps it), fwd+bwd", ms, 2.0 * hb + gb, flops, copy_gbs, None);
            // the same math unfused: cuBLAS logits and dh around bitwise_ce.cu (what the fusion gains
            // over the plain composition on this GPU; the logits' round trip is N·2d values)
            let s = &dev.stream;
            let (mut logits, mut dlog) =
                (s.alloc_zeros::<f32>(n * 2 * d).unwrap(), s.alloc_zeros::<f32>(n * 2 * d).unwrap());
            let (mut loss, mut correct) = (s.alloc_zeros::<f32>(n).unwrap(), s.alloc_zeros::<u32>(n).unwrap());
            let mut dh = s.alloc_zeros::<f32>(n * c).unwrap();
            let ms = time_ms(&dev, sh.iters(20), || {
                linear_dev(&dev, &gemm, &h16, &w, Some(&b), &mut logits, (n, c, 2 * d)).unwrap();
                let ce_out = (&mut loss, &mut correct);
                bitwise_ce_dev(&dev, &logits, &y, &wt, 0.0, (n, d), ce_out, Some(&mut dlog)).unwrap();
                let g = rounded(&gemm, &dev, &dlog).unwrap();
                input_grad(&gemm, &dev, &g, &w, &mut dh, (n, c, 2 * d)).unwrap();
                weight_grad(&gemm, &dev, &g, &h16, &mut dw, (n, c, 2 * d)).unwrap();
                bias_grad(&dev, &dlog, &mut db, n, 2 * d).unwrap();
            });
            row("  unfused: cuBLAS GEMMs + bitwise_ce.cu, h bf16", ms, 2.0 * hb + gb, flops, copy_gbs, None);
        }
    }

    // BSQ with self-correction: the 1M square schedule up to 64×64 (1024 px), 13 scales
    let scales: Vec<(usize, usize)> = sh.bsq_scales.iter().map(|&s| (s, s)).collect();
    let (side, ns) = (scales[scales.len() - 1].0, scales.len());
    for b in sh.bsq_batches {
        let d = 32;
        let full = b * d * side * side;
        let lat = upload(&dev, &(0..full).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>());
        let keys = upload(&dev, &(0..b).map(|_| rng.random::<u64>()).collect::<Vec<_>>());
        let mut out = BsqBatch::new(&dev, b, d, &scales).unwrap();
        let l: usize = scales.iter().map(|&(h, w)| h * w).sum();
        let sched = scales.iter().map(|&(h, w)| format!("{h}x{w}")).collect::<Vec<_>>().join(",");
        let args: Vec<String> =
            ["bsq", "--b", &b.to_string(), "--d", &d.to_string(), "--scales", &sched, "--p-max", "0.3"]
                .map(String::from)
                .to_vec();
        // bytes the math must move: the latent read once, the labels (1 byte) and inputs (4) written
        // once; the per-scale path also moves the latent and running sum at every scale (3·13 − 3
        // passes), but the row states the same minimum for both, so their GB/s compare as times do
        let bytes = (full * 4) as f64 + (b * l * d * 5) as f64;
        for (path, label) in [(BsqPath::Planes, "one launch"), (BsqPath::PerScale, "two launches per scale")] {
            let mut scratch = BsqScratch::new(b, d, (side, side));
            scratch.path = path;
            let mut call =
                || self_correct_batch(&dev, &lat, &keys, b, d, &scales, 0.3, ns, &mut out, &mut scratch).unwrap();
            let ms = time_ms(&dev, sh.iters(20), &mut call);
            let torch = if path == BsqPath::Planes { torch_ms(&args) } else { None };
            let name = format!("BSQ self-correction B={b} d={d} {ns} scales→{side}², {label}");
            row(&name, ms, bytes, 0.0, copy_gbs, torch);
            profile(&dev, ms, call);
        }
    }

    other_kernels(&dev, &sh, &mut rng, copy_gbs);
}

/// One more run of `f` with every launch timed (CUDA events): GPU time per kernel, largest first, and
/// what the kernels add up to against the `total_ms` timed without events (the rest: launch gaps).
fn profile(dev: &Device, total_ms: f64, f: impl FnOnce()) {
    dev.start_profile();
    f();
    let kernels = dev.profile_report().unwrap();
    let sum: f64 = kernels.iter().map(|k| k.ms).sum();
    for k in &kernels {
        println!("    {:<40} {:4} calls {:8.3} ms", k.name, k.calls, k.ms);
    }
    println!("    kernels add up to {sum:.3} ms of {total_ms:.3} ms (event-timed, one run)");
}

/// The families the model spends its time in, at the sizes of a width-2048 model at 256 px.
fn other_kernels(dev: &Device, sh: &Shapes, rng: &mut impl Rng, copy_gbs: f64) {
    let (per_scale, b, c) = (sh.per_scale, sh.samples, sh.width);
    let l: usize = per_scale.iter().sum();
    let n = b * l;
    let rand = |rng: &mut dyn rand::RngCore, len: usize, scale: f32| -> Vec<f32> {
        (0..len).map(|_| (rng.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale).collect()
    };
    let x = upload(dev, &rand(rng, n * c, 1.0));

    // matmuls: the FFN's first projection, N × C → 4C, f32 and bf16 inputs
    let w = upload(dev, &rand(rng, 4 * c * c, 0.02));
    let mut y = dev.stream.alloc_zeros::<f32>(n * 4 * c).unwrap();
    for bf16 in [false, true] {
        let gemm = Gemm::new(dev, bf16).unwrap();
        let ms = time_ms(dev, sh.iters(10), || linear_dev(dev, &gemm, &x, &w, None, &mut y, (n, c, 4 * c)).unwrap());
        let flops = 2.0 * (n * c * 4 * c) as f64;
        let bytes = 4.0 * (n * c + 4 * c * c + n * 4 * c) as f64;
        let label = if bf16 { "bf16 inputs" } else { "f32" };
        row(&format!("linear N×{c}→{}, {label} (N={n})", 4 * c), ms, bytes, flops, copy_gbs, None);
    }
    drop((w, y));

    // flash attention, block-causal over the 256 px schedule, 16 heads of 128
    let dims = AttnDims { heads: c / 128, head_dim: 128, scale: 1.0 };
    let r = AttnRanges::new(dev, &block_causal_segments(b, per_scale), n, n).unwrap();
    let (q, k, v) =
        (upload(dev, &rand(rng, n * c, 1.0)), upload(dev, &rand(rng, n * c, 1.0)), upload(dev, &rand(rng, n * c, 1.0)));
    // O as training keeps it: f32, or bf16 alone with the tensor-core kernels; dO in f32
    let (mut o32, mut o16) = (
        Act::F32(dev.stream.alloc_zeros::<f32>(n * c).unwrap()),
        Act::Bf16(dev.stream.alloc_zeros::<u16>(n * c).unwrap()),
    );
    let d_o = upload(dev, &rand(rng, n * c, 1.0));
    let mut lse = dev.stream.alloc_zeros::<f32>(n * dims.heads).unwrap();
    let pairs: usize = {
        let mut end = 0;
        per_scale
            .iter()
            .map(|&t| {
                end += t;
                t * end
            })
            .sum::<usize>()
            * b
    };
    let (mut dq, mut dk, mut dv, mut delta) = (
        dev.stream.alloc_zeros::<f32>(n * c).unwrap(),
        dev.stream.alloc_zeros::<f32>(n * c).unwrap(),
        dev.stream.alloc_zeros::<f32>(n * c).unwrap(),
        dev.stream.alloc_zeros::<f32>(n * dims.heads).unwrap(),
    );
    let runs = [
        (Math::F32, "f32 register tiles", false),
        (Math::F32, "f32 attention.cu", true),
        (Math::Bf16, "bf16 tensor cores", false),
    ];
    for (math, label, untiled) in runs {
        dev.set_untiled_attention(untiled);
        let o = if math == Math::Bf16 { &mut o16 } else { &mut o32 };
        let ms =
            time_ms(dev, sh.iters(10), || attention_forward_dev(dev, &q, &k, &v, o, &mut lse, &r, dims, math).unwrap());
        let name = format!("attention forward {label}, {b} × {l} tokens, {} × 128", dims.heads);
        row(&name, ms, 4.0 * 4.0 * (n * c) as f64, 4.0 * (pairs * c) as f64, copy_gbs, None);
        let ms = time_ms(dev, sh.iters(10), || {
            let grads: (&mut dyn BufMut, &mut dyn BufMut, &mut dyn BufMut) = (&mut dq, &mut dk, &mut dv);
            attention_backward_dev(dev, &d_o, (&q, &k, &v), o, &lse, &r, dims, grads, &mut delta, math).unwrap()
        });
        let name = format!("attention backward {label} (dq; dk, dv)");
        row(&name, ms, 8.0 * 4.0 * (n * c) as f64, 10.0 * (pairs * c) as f64, copy_gbs, None);
        profile(dev, ms, || {
            let grads: (&mut dyn BufMut, &mut dyn BufMut, &mut dyn BufMut) = (&mut dq, &mut dk, &mut dv);
            attention_backward_dev(dev, &d_o, (&q, &k, &v), o, &lse, &r, dims, grads, &mut delta, math).unwrap()
        });
    }
    // a tuning knob: the C = 128 forward held to 3 blocks per SM (168 registers, a few bytes spilled,
    // the default) or allowed 2 (211 registers, none spilled)
    dev.set_defines("attention_bf16.cu", &["FWD_BLOCKS_128=2"]);
    let ms = time_ms(dev, sh.iters(10), || {
        attention_forward_dev(dev, &q, &k, &v, &mut o16, &mut lse, &r, dims, Math::Bf16).unwrap()
    });
    let name = "attention forward bf16 tensor cores, FWD_BLOCKS_128=2 (2 blocks per SM)";
    row(name, ms, 4.0 * 4.0 * (n * c) as f64, 4.0 * (pairs * c) as f64, copy_gbs, None);
    dev.set_defines("attention_bf16.cu", &[]);
    drop((q, k, v, o32, o16, d_o, lse, dq, dk, dv, delta));

    // LayerNorm forward over the residual stream
    let (mut xh, mut mean, mut rstd) = (
        dev.stream.alloc_zeros::<f32>(n * c).unwrap(),
        dev.stream.alloc_zeros::<f32>(n).unwrap(),
        dev.stream.alloc_zeros::<f32>(n).unwrap(),
    );
    let ms = time_ms(dev, sh.iters(10), || {
        layernorm_dev(dev, &x, None, None, &mut xh, &mut mean, &mut rstd, (n, c), 1e-6).unwrap()
    });
    row(&format!("LayerNorm forward N × {c}"), ms, 2.0 * 4.0 * (n * c) as f64, 0.0, copy_gbs, None);

    // the level embedding's gradient: each token's dx into its scale's row (a small table over every
    // token: partial sums per chunk of tokens, then over the chunks)
    let levels: Vec<i32> = (0..b)
        .flat_map(|_| per_scale.iter().enumerate().flat_map(|(s, &k)| std::iter::repeat_n(s as i32, k)))
        .collect();
    let levels = upload(dev, &levels);
    let mut dtable = dev.stream.alloc_zeros::<f32>(per_scale.len() * c).unwrap();
    let ms = time_ms(dev, sh.iters(10), || embedding_backward_dev(dev, &x, &levels, &mut dtable, c).unwrap());
    let name = format!("level embedding backward N × {c} → {} rows", per_scale.len());
    row(&name, ms, 4.0 * (n * c) as f64, (n * c) as f64, copy_gbs, None);

    // the blocks' pre-norm branch as training runs it: LayerNorm + modulation into bf16, and its
    // backward with the residual's gradient; through the row-in-registers kernels (layers.rs rows4)
    // and, reading x one float past 16-byte alignment, through the per_row ones they replace
    let ada = AdaShape { b, l, c, ps: 6 * c };
    let (gss, dy) = (upload(dev, &rand(rng, b * 6 * c, 0.5)), upload(dev, &rand(rng, n * c, 1.0)));
    let x_off = upload(dev, &rand(rng, n * c + 1, 1.0));
    let mut h16 = Act::Bf16(dev.stream.alloc_zeros::<u16>(n * c).unwrap());
    let mut dx = dev.stream.alloc_zeros::<f32>(n * c).unwrap();
    for (path, xs) in [("rows4", x.slice(..)), ("per_row", x_off.slice(1..))] {
        let ms = time_ms(dev, sh.iters(10), || {
            let (scale, shift) = (gss.slice(2 * c..), gss.slice(4 * c..));
            modulated_layernorm_dev(dev, &xs, &scale, &shift, &mut h16, (&mut mean, &mut rstd), ada, 1e-6).unwrap()
        });
        let bytes = (4 + 2) as f64 * (n * c) as f64;
        row(&format!("LN + modulation → bf16, N × {c} ({path})"), ms, bytes, 0.0, copy_gbs, None);
        let ms = time_ms(dev, sh.iters(10), || {
            let stats = (&mean as &dyn Buf, &rstd as &dyn Buf);
            let scale = gss.slice(2 * c..);
            modulated_layernorm_backward_dev(dev, &dy, &xs, &scale, stats, Some(&dy), &mut dx, ada).unwrap()
        });
        row(&format!("LN + modulation backward, N × {c} ({path})"), ms, 16.0 * (n * c) as f64, 0.0, copy_gbs, None);
    }
    drop((x, x_off, xh, mean, rstd, gss, dy, h16, dx));

    // fused AdamW over 256 M parameters: reads p, g, m, v; writes p, m, v. Groups as a model's: a
    // weight of 4 M values (decayed), then a bias of 2048 (not), and so on
    let np = sh.adamw_params;
    let (mut p, g) = (dev.stream.alloc_zeros::<f32>(np).unwrap(), dev.stream.alloc_zeros::<f32>(np).unwrap());
    let (mut m, mut vv) = (dev.stream.alloc_zeros::<f32>(np).unwrap(), dev.stream.alloc_zeros::<f32>(np).unwrap());
    let mut runs = infinity_kernels::adamw::GroupRuns::default();
    while runs.len() < np {
        runs.push((4 << 20).min(np - runs.len()), 1);
        runs.push(2048.min(np - runs.len()), 0);
    }
    let groups = infinity_kernels::cuda::ops::DeviceGroupRuns::upload(dev, &runs).unwrap();
    let lr_mult = dev.stream.clone_htod(&[1.0f64]).unwrap();
    let sc = infinity_kernels::adamw::AdamWScalars::new(1e-4, 0.9, 0.97, 1e-8, 0.005, 10);
    let ms = time_ms(dev, sh.iters(10), || {
        adamw_dev(dev, &mut p, None::<&mut CudaSlice<u16>>, &g, &mut m, &mut vv, &groups, &lr_mult, &sc).unwrap()
    });
    row(&format!("fused AdamW, {} M parameters", np >> 20), ms, (np * 7 * 4) as f64, 0.0, copy_gbs, None);
    // as bf16 training runs it: the weights' bf16 copy written by the same pass (2 bytes more each)
    let mut p16 = dev.stream.alloc_zeros::<u16>(np).unwrap();
    let ms = time_ms(dev, sh.iters(10), || {
        adamw_dev(dev, &mut p, Some(&mut p16), &g, &mut m, &mut vv, &groups, &lr_mult, &sc).unwrap()
    });
    let what = format!("fused AdamW + bf16 weights, {} M parameters", np >> 20);
    row(&what, ms, (np * (7 * 4 + 2)) as f64, 0.0, copy_gbs, None);
}
