//! Each CUDA kernel against its CPU twin on random and ragged shapes. Needs feature `cuda` and a device:
//! a GPU, or the emulated one (kernels/emulator/device, on the library path in scripts/test.sh, which
//! runs these in CI); says it skipped otherwise. Tolerances (docs/numerics.md, "CUDA twins"): f32 kernels within 1e-5
//! relative of the CPU twin (different `exp`/`log` implementations and summation order); bits exact
//! except where the residual is within 1e-6 of zero.
#![cfg(feature = "cuda")]

use infinity_kernels::cuda::device::device_present;
use infinity_kernels::cuda::Math::{self, Bf16, F32};
use infinity_kernels::cuda::{
    attention as cuda_attention, layers, linear as cuda_linear, ops, qkv as cuda_qkv, Device,
};
use infinity_kernels::qkv::{qkv_heads_backward, qkv_heads_forward, QkvHeads};
use infinity_kernels::{act, adaln, adamw, attention, bitwise_ce, bsq, embedding, linear, norm, resample, rope};
use rand::{Rng, SeedableRng};

fn device() -> Option<Device> {
    if !device_present() {
        println!("skipped: no CUDA device (a GPU, or the emulated one: tools/emulated_device.py)");
        return None;
    }
    let dev = Device::open(0).expect("opening CUDA device 0");
    println!("on {} ({})", dev.name, dev.arch);
    Some(dev)
}

fn rand_vec(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn close(name: &str, a: &[f32], b: &[f32], rtol: f32) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let worst = infinity_kernels::compare::max_rel_diff(a, b, 1e-30) as f32; // a NaN fails
    assert!(worst <= rtol, "{name}: max relative error {worst:e} > {rtol:e}");
    println!("{name}: max relative error {worst:.2e}");
}

#[test]
fn bitwise_ce_matches_its_cpu_twin() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (n, d) in [(1, 1), (37, 16), (521, 32), (300, 56), (7, 300)] {
        let logits = rand_vec(&mut rng, n * 2 * d, 4.0);
        let labels: Vec<u8> = (0..n * d).map(|_| rng.random_range(0..2)).collect();
        let weights: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
        let w64: Vec<f64> = weights.iter().map(|&w| w as f64).collect();
        let mut g_cpu = vec![0.0f32; n * 2 * d];
        let cpu = bitwise_ce::bitwise_ce(&logits, &labels, &w64, 0.1, d, Some(&mut g_cpu));
        let gpu = ops::bitwise_ce(&dev, &logits, &labels, &weights, 0.1, d, true).unwrap();
        let cpu_loss: Vec<f32> = cpu.token_loss.iter().map(|&v| v as f32).collect();
        close(&format!("bitwise_ce loss n={n} d={d}"), &gpu.token_loss, &cpu_loss, 1e-5);
        close(&format!("bitwise_ce dlogits n={n} d={d}"), &gpu.dlogits.unwrap(), &g_cpu, 1e-5);
        assert_eq!(gpu.correct_bits, cpu.correct_bits, "correct bits n={n} d={d}");
    }
}

/// The head fused with the loss against linear → bitwise CE → linear backward on the CPU.
#[test]
fn fused_head_and_loss_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for shape in [(1, 8, 1), (13, 64, 16), (517, 200, 32), (64, 1024, 64), (9, 33, 5)] {
        head_ce_case(&dev, &mut rng, shape, F32);
    }
}

/// The tensor-core head + loss (head_ce_bf16.cu) against the CPU twin run on the same bf16-rounded h
/// and W: logits, loss and dlogits then differ by summation order only (1e-5); dh also rounds dlogits
/// to bf16 before its product (2e-2 of the largest value). Widths a multiple of 64, d = 8 … 64.
#[test]
fn bf16_head_and_loss_on_tensor_cores_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    for shape in [(1, 64, 8), (45, 128, 16), (517, 256, 32), (100, 768, 64), (70, 2048, 32)] {
        head_ce_case(&dev, &mut rng, shape, Bf16);
    }
}

/// One shape of the fused head + loss against the CPU twin (on bf16-rounded h and W for `Bf16`), and
/// for `Bf16` two runs giving the same bytes.
fn head_ce_case(dev: &Device, rng: &mut impl Rng, (n, c, d): (usize, usize, usize), math: Math) {
    let bf16 = math == Bf16;
    let round = |v: Vec<f32>| if bf16 { bf16_round(&v) } else { v };
    let h = round(rand_vec(rng, n * c, 1.0));
    let w = round(rand_vec(rng, 2 * d * c, 0.2));
    let b = rand_vec(rng, 2 * d, 0.5);
    let labels: Vec<u8> = (0..n * d).map(|_| rng.random_range(0..2)).collect();
    let weights: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
    let w64: Vec<f64> = weights.iter().map(|&v| v as f64).collect();
    let mut logits = vec![0.0f32; n * 2 * d];
    linear::linear_forward(&h, &w, Some(&b), &mut logits, n, c, 2 * d);
    let mut dz = vec![0.0f32; n * 2 * d];
    let cpu = bitwise_ce::bitwise_ce(&logits, &labels, &w64, 0.05, d, Some(&mut dz));
    let (mut dh, mut dw, mut db) = (vec![0.0f32; n * c], vec![0.0f32; 2 * d * c], vec![0.0f32; 2 * d]);
    linear::linear_backward(&dz, &h, &w, Some(&mut dh), &mut dw, Some(&mut db), n, c, 2 * d);
    let run = |h_bf16| {
        infinity_kernels::cuda::head_ce::head_bitwise_ce(
            dev, &h, &w, &b, &labels, &weights, 0.05, d, true, math, h_bf16,
        )
        .unwrap()
    };
    let gpu = run(false);
    let tag = if bf16 { format!("bf16 n={n} c={c} d={d}") } else { format!("n={n} c={c} d={d}") };
    let cpu_loss: Vec<f32> = cpu.token_loss.iter().map(|&v| v as f32).collect();
    close(&format!("head+CE loss {tag}"), &gpu.token_loss, &cpu_loss, 1e-5);
    let (gdh, gdw, gdb) = gpu.grads.unwrap();
    close(&format!("head+CE dh {tag}"), &gdh, &dh, if bf16 { 2e-2 } else { 1e-5 });
    close(&format!("head+CE dW {tag}"), &gdw, &dw, 1e-5);
    close(&format!("head+CE db {tag}"), &gdb, &db, 1e-5);
    // a logit within rounding of its twin may flip an argmax: allow a handful
    let off = gpu.correct_bits.iter().zip(&cpu.correct_bits).filter(|(a, b)| a != b).count();
    assert!(off <= n / 100 + 1, "{tag}: {off} tokens count different correct bits");
    if bf16 {
        let again = run(false);
        assert!(again.token_loss == gpu.token_loss && again.grads.unwrap().0 == gdh, "{tag}: two runs differ");
        // h kept in bf16 alone (the GPU model's head input): the values the f32 entry point rounds, so
        // the same loss, correct bits and dh bit for bit; dW from the bf16 GEMM, which rounds dlogits
        // to bf16 too (as dh's product does: the same 2e-2)
        let h16 = run(true);
        assert!(h16.token_loss == gpu.token_loss && h16.correct_bits == gpu.correct_bits, "{tag}: h in bf16");
        let (dh16, dw16, _) = h16.grads.unwrap();
        assert!(dh16 == gdh, "{tag}: dh from h in bf16 differs");
        close(&format!("head+CE dW, h in bf16, {tag}"), &dw16, &dw, 2e-2);
    }
}

#[test]
fn activations_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for n in [1, 1000, 65_537] {
        let x = rand_vec(&mut rng, n, 6.0);
        let dy = rand_vec(&mut rng, n, 1.0);
        let (mut y, mut dx) = (vec![0.0f32; n], vec![0.0f32; n]);
        act::gelu_forward(&x, &mut y);
        act::gelu_backward(&dy, &x, &mut dx);
        close("gelu", &ops::activation(&dev, "gelu_forward_f32", &x).unwrap(), &y, 1e-5);
        close("gelu backward", &ops::activation_backward(&dev, "gelu_backward_f32", &dy, &x).unwrap(), &dx, 1e-5);
        // bf16 alone (the FFN's kept GELU input and dfc1): the twin on the rounded x, rounded
        let mut dx16 = vec![0.0f32; n];
        act::gelu_backward(&dy, &bf16_round(&x), &mut dx16);
        close("gelu backward, bf16", &ops::gelu_backward(&dev, &dy, &x, true).unwrap(), &bf16_round(&dx16), 1e-2);
        act::silu_forward(&x, &mut y);
        act::silu_backward(&dy, &x, &mut dx);
        close("silu", &ops::activation(&dev, "silu_forward_f32", &x).unwrap(), &y, 1e-5);
        close("silu backward", &ops::activation_backward(&dev, "silu_backward_f32", &dy, &x).unwrap(), &dx, 1e-5);
    }
    // the FFN's bias folded into its GELU: (f + b, gelu(f + b)) over rows of 96 columns
    let (rows, cols) = (37, 96);
    let f = rand_vec(&mut rng, rows * cols, 4.0);
    let b = rand_vec(&mut rng, cols, 1.0);
    let fb: Vec<f32> = f.iter().enumerate().map(|(i, v)| v + b[i % cols]).collect();
    let mut g = vec![0.0f32; fb.len()];
    act::gelu_forward(&fb, &mut g);
    let [gf, gg, again] = ops::bias_gelu(&dev, &f, &b, false).unwrap();
    close("bias + gelu: f + b", &gf, &fb, 1e-6);
    close("bias + gelu: gelu", &gg, &g, 1e-5);
    // the backward's gelu_act remakes g from the kept x bit for bit
    assert!(again == gg, "gelu_act(x) is not bias_gelu's g");
    // bf16 alone: x = f + b rounded, g = gelu(x) rounded (as under autocast)
    let [gx16, gg16, again16] = ops::bias_gelu(&dev, &f, &b, true).unwrap();
    close("bias + gelu: f + b in bf16", &gx16, &bf16_round(&fb), 1e-2);
    act::gelu_forward(&bf16_round(&fb), &mut g);
    close("bias + gelu: gelu in bf16", &gg16, &bf16_round(&g), 1e-2);
    assert!(again16 == gg16, "gelu_act(x) in bf16 is not bias_gelu's g");
    // column sums (bias gradients) of f32 and of bf16-only values, summed in f32, against f64 sums
    for bf16 in [false, true] {
        let vals = if bf16 { bf16_round(&f) } else { f.clone() };
        let want: Vec<f32> =
            (0..cols).map(|j| vals.iter().skip(j).step_by(cols).map(|&v| v as f64).sum::<f64>() as f32).collect();
        let got = infinity_kernels::cuda::util::column_sums(&dev, &f, rows, bf16).unwrap();
        close(&format!("column sums{}", if bf16 { ", bf16 source" } else { "" }), &got, &want, 1e-5);
    }
}

#[test]
fn resampling_and_quantisation_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for &((sh, sw), (dh, dw)) in
        &[((16, 16), (1, 1)), ((16, 16), (6, 6)), ((24, 36), (5, 7)), ((3, 5), (16, 16)), ((8, 8), (8, 8))]
    {
        let bc = 3 * 16;
        let src = rand_vec(&mut rng, bc * sh * sw, 1.0);
        let mut cpu = vec![0.0f32; bc * dh * dw];
        resample::area_resize(&src, bc, (sh, sw), &mut cpu, (dh, dw));
        close("area", &ops::resize(&dev, true, &src, bc, (sh, sw), (dh, dw)).unwrap(), &cpu, 1e-6);
        resample::bilinear_resize(&src, bc, (sh, sw), &mut cpu, (dh, dw));
        close("bilinear", &ops::resize(&dev, false, &src, bc, (sh, sw), (dh, dw)).unwrap(), &cpu, 1e-6);
    }
    let (b, d, n) = (3, 32, 36);
    let r = rand_vec(&mut rng, b * d * n, 1.0);
    let flips: Vec<u8> = (0..b * n * d).map(|_| (rng.random::<f32>() < 0.2) as u8).collect();
    let (bits, q) = ops::quantize(&dev, &r, Some(&flips), b, d, n).unwrap();
    for s in 0..b {
        let (mut cb, mut cq) = (vec![0u8; n * d], vec![0.0f32; d * n]);
        bsq::quantize(&r[s * d * n..(s + 1) * d * n], d, &mut cb, &mut cq);
        assert_eq!(&bits[s * n * d..(s + 1) * n * d], &cb[..], "clean bits of sample {s}");
        let flipped: Vec<u8> = cb.iter().zip(&flips[s * n * d..(s + 1) * n * d]).map(|(a, f)| a ^ f).collect();
        let mut fq = vec![0.0f32; d * n];
        bsq::bits_to_codes(&flipped, d, &mut fq);
        assert_eq!(&q[s * d * n..(s + 1) * d * n], &fq[..], "codes of the flipped bits of sample {s}");
    }
}

/// The whole batch's self-correction on the device against the CPU twin with the same keyed flips:
/// labels exact except where a residual is within 1e-6 of zero (a later scale may then differ too, so
/// the mismatch budget is small but not zero); teacher-forcing inputs within 1e-5. Both paths (one
/// launch per batch, two per scale) run the same windows in the same orders: their outputs are equal.
#[test]
fn batch_self_correction_matches_its_cpu_twin() {
    use infinity_kernels::cuda::bsq::{self_correct_batch_host, BsqPath};
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let square: Vec<(usize, usize)> = vec![(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)];
    let wide: Vec<(usize, usize)> = vec![(1, 1), (1, 2), (2, 3), (3, 5), (6, 10), (9, 15)];
    let big: Vec<(usize, usize)> = [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64].map(|s| (s, s)).to_vec();
    for (scales, b, d, p_max, layers) in
        [(&square, 5, 32, 0.3, 5), (&wide, 5, 16, 0.0, 13), (&wide, 5, 32, 0.1, 13), (&big, 3, 8, 0.3, 13)]
    {
        let (hh, ww) = *scales.last().unwrap();
        let latent = rand_vec(&mut rng, b * d * hh * ww, 1.0);
        let keys: Vec<u64> = (0..b).map(|_| rng.random()).collect();
        let run = |path| self_correct_batch_host(&dev, &latent, &keys, d, scales, p_max, layers, path).unwrap();
        let (bits, x) = run(BsqPath::Planes);
        let (scale_bits, scale_x) = run(BsqPath::PerScale);
        assert!(bits == scale_bits && x == scale_x, "{hh}x{ww}: the one-launch and per-scale paths differ");
        let (l, n0) = (bsq::num_tokens(scales), scales[0].0 * scales[0].1);
        let cpu = bsq::self_correct_keyed(&latent, &keys, d, scales, p_max, layers);
        let near_zero: usize = cpu.iter().map(|c| c.residual.iter().filter(|r| r.abs() < 1e-6).count()).sum();
        let cpu_bits: Vec<u8> = cpu.iter().flat_map(|c| c.bits.iter().copied()).collect();
        let cpu_x: Vec<f32> = cpu.iter().flat_map(|c| c.x_wo_prefix.iter().copied()).collect();
        assert_eq!((bits.len(), x.len()), (b * l * d, b * (l - n0) * d));
        let wrong = bits.iter().zip(&cpu_bits).filter(|(a, c)| a != c).count();
        assert!(wrong <= 4 * near_zero, "{wrong} labels differ ({near_zero} residuals within 1e-6 of 0)");
        if wrong == 0 {
            // a differing label changes the history, so inputs are compared when all labels agree
            close(&format!("self-correction inputs d={d} p_max={p_max}"), &x, &cpu_x, 1e-5);
        }
        println!("self-correction {hh}x{ww} d={d} p_max={p_max}: {wrong} of {} labels differ", bits.len());
    }
}

/// The 8B model's 2×2 unshuffle of self-correction outputs into transformer tokens: exact, labels
/// (`u8`, every scale) and inputs (`f32`, from the second scale), on square and wide schedules.
#[test]
fn patchify_unshuffle_matches_its_cpu_twin() {
    use infinity_kernels::cuda::bsq::unshuffle_tokens;
    use infinity_kernels::patchify;
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let s = &dev.stream;
    for (scales, b, d) in [(vec![(1, 1), (2, 2), (3, 3)], 3, 14), (vec![(1, 1), (1, 2), (2, 3), (3, 5)], 2, 5)] {
        let rows = |first: usize| b * scales[first..].iter().map(|&(h, w)| 4 * h * w * d).sum::<usize>();
        let bits: Vec<u8> = (0..rows(0)).map(|_| rng.random_range(0..2)).collect();
        let x = rand_vec(&mut rng, rows(1), 1.0);
        let (mut dbits, mut dx) = (s.alloc_zeros::<u8>(bits.len()).unwrap(), s.alloc_zeros::<f32>(x.len()).unwrap());
        unshuffle_tokens(&dev, &s.clone_htod(&bits).unwrap(), &mut dbits, (b, d), &scales, 0).unwrap();
        unshuffle_tokens(&dev, &s.clone_htod(&x).unwrap(), &mut dx, (b, d), &scales, 1).unwrap();
        assert_eq!(s.clone_dtoh(&dbits).unwrap(), patchify::unshuffle_tokens(&bits, b, d, &scales, 0));
        assert_eq!(s.clone_dtoh(&dx).unwrap(), patchify::unshuffle_tokens(&x, b, d, &scales, 1));
    }
}

#[test]
fn norms_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for (n, c) in [(1, 8), (37, 64), (300, 1536), (5, 2050)] {
        let (x, dy) = (rand_vec(&mut rng, n * c, 2.0), rand_vec(&mut rng, n * c, 1.0));
        let (w, b) = (rand_vec(&mut rng, c, 1.0), rand_vec(&mut rng, c, 1.0));
        for affine in [false, true] {
            let (wo, bo) = if affine { (Some(&w[..]), Some(&b[..])) } else { (None, None) };
            let (mut y, mut mean, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
            norm::layernorm_forward(&x, wo, bo, &mut y, &mut mean, &mut rstd, c, 1e-6);
            let gpu = layers::layernorm(&dev, &x, wo, bo, c, 1e-6, false).unwrap();
            close("layernorm", &gpu.y, &y, 1e-5);
            // in bf16 alone (a bf16 product's input): the twin's values rounded, the same statistics
            let gpu16 = layers::layernorm(&dev, &x, wo, bo, c, 1e-6, true).unwrap();
            close("layernorm, bf16", &gpu16.y, &bf16_round(&y), 1e-2);
            assert!(gpu16.mean == gpu.mean && gpu16.rstd == gpu.rstd, "layernorm bf16: statistics differ");
            let (mut dx, mut dw, mut db) = (vec![0.0f32; n * c], vec![0.0f32; c], vec![0.0f32; c]);
            let (dwo, dbo) = if affine { (Some(&mut dw[..]), Some(&mut db[..])) } else { (None, None) };
            norm::layernorm_backward(&dy, &x, wo, &mean, &rstd, &mut dx, dwo, dbo, c);
            let (gdx, gp) = layers::layernorm_backward(&dev, &dy, &x, wo, &mean, &rstd, c).unwrap();
            close("layernorm dx", &gdx, &dx, 1e-5);
            if let Some((gdw, gdb)) = gp {
                close("layernorm dw", &gdw, &dw, 1e-4);
                close("layernorm db", &gdb, &db, 1e-4);
            }
        }
        let (mut y, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n]);
        norm::rmsnorm_forward(&x, &w, &mut y, &mut rstd, c, 1e-6);
        close("rmsnorm", &layers::rmsnorm(&dev, &x, &w, c, 1e-6).unwrap().y, &y, 1e-5);
        let (mut dx, mut dw) = (vec![0.0f32; n * c], vec![0.0f32; c]);
        norm::rmsnorm_backward(&dy, &x, &w, &rstd, &mut dx, &mut dw, c);
        let (gdx, gdw) = layers::rmsnorm_backward(&dev, &dy, &x, &w, &rstd, c).unwrap();
        close("rmsnorm dx", &gdx, &dx, 1e-5);
        close("rmsnorm dw", &gdw, &dw, 1e-4);
    }
    // the blocks' pre-norm branches: LayerNorm (no affine) + modulation forward (f32, bf16 alone) and
    // backward into x, with and without the residual's gradient, and the modulation's parameter
    // gradients from x̂ recomputed (rows of 2 samples)
    for (l, c) in [(4, 64), (150, 1536), (3, 2050)] {
        let n = 2 * l;
        let (x, dy, dres) =
            (rand_vec(&mut rng, n * c, 2.0), rand_vec(&mut rng, n * c, 1.0), rand_vec(&mut rng, n * c, 1.0));
        let (scale, shift) = (rand_vec(&mut rng, 2 * c, 0.5), rand_vec(&mut rng, 2 * c, 0.5));
        let (mut y, mut mean, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
        adaln::modulated_layernorm_forward(&x, &scale, &shift, &mut y, &mut mean, &mut rstd, l, c, 1e-6);
        for bf16 in [false, true] {
            let tag = format!("modulated layernorm L={l} C={c}{}", if bf16 { " bf16" } else { "" });
            let (gy, gmean, grstd) = layers::modulated_layernorm(&dev, &x, &scale, &shift, l, c, 1e-6, bf16).unwrap();
            close(&tag, &gy, &if bf16 { bf16_round(&y) } else { y.clone() }, if bf16 { 1e-2 } else { 1e-5 });
            close(&format!("{tag} mean"), &gmean, &mean, 1e-5);
            close(&format!("{tag} rstd"), &grstd, &rstd, 1e-5);
        }
        let mut xhat = vec![0.0f32; n * c];
        norm::layernorm_forward(&x, None, None, &mut xhat, &mut mean, &mut rstd, c, 1e-6);
        let (mut dx_mod, mut dsc, mut dsh) = (vec![0.0f32; n * c], vec![0.0f32; 2 * c], vec![0.0f32; 2 * c]);
        adaln::modulate_backward(&dy, &xhat, &scale, &mut dx_mod, &mut dsc, &mut dsh, l, c);
        let (gds, gdh) = layers::modulate_param_grads_host(&dev, &dy, &x, Some((&mean, &rstd)), (2, l, c)).unwrap();
        close(&format!("modulation dscale from x̂ recomputed L={l} C={c}"), &gds, &dsc, 1e-5);
        close(&format!("modulation dshift L={l} C={c}"), &gdh, &dsh, 1e-5);
        for dres in [None, Some(&dres[..])] {
            let mut dx = vec![0.0f32; n * c];
            adaln::modulated_layernorm_backward(&dy, &x, &scale, &mean, &rstd, dres, &mut dx, l, c);
            let gdx = layers::modulated_layernorm_backward(&dev, &dy, &x, &scale, (&mean, &rstd), dres, l, c).unwrap();
            close(&format!("modulated layernorm dx L={l} C={c} residual={}", dres.is_some()), &gdx, &dx, 1e-5);
        }
    }
}

#[test]
fn adaln_rope_and_embeddings_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (b, l, c) = (3, 57, 96);
    let (x, dy) = (rand_vec(&mut rng, b * l * c, 1.0), rand_vec(&mut rng, b * l * c, 1.0));
    let scale = rand_vec(&mut rng, b * c, 0.5);
    let mut res = x.clone();
    adaln::gated_residual_forward(&mut res, &dy, &scale, l, c);
    close("gated residual", &layers::gated_residual(&dev, &x, &dy, &scale, l, c).unwrap(), &res, 1e-6);
    let (mut gy, mut gg) = (vec![0.0f32; b * l * c], vec![0.0f32; b * c]);
    adaln::gated_residual_backward(&dy, &x, &scale, &mut gy, &mut gg, l, c);
    let g = layers::gated_residual_backward(&dev, &dy, &x, &scale, l, c, false).unwrap();
    close("gated residual dy", &g[0], &gy, 1e-6);
    close("gated residual dgamma", &g[1], &gg, 1e-5);
    let g = layers::gated_residual_backward(&dev, &dy, &x, &scale, l, c, true).unwrap();
    close("gated residual dy, bf16", &g[0], &bf16_round(&gy), 1e-2);
    close("gated residual dgamma, bf16 dy", &g[1], &gg, 1e-5);
    // drop path on γ1, γ2 of a [B, 6C] AdaLN output: kept (1/(1−p)), dropped (0) and unscaled rows
    let gss = rand_vec(&mut rng, b * 6 * c, 1.0);
    let factors = [1.0 / 0.9, 0.0, 0.0, 1.0, 1.0, 1.0 / 0.9];
    let mut want = gss.clone();
    adaln::scale_gates(&mut want, &factors, 2, c, 6 * c);
    close("drop-path gates", &layers::scale_gates(&dev, &gss, &factors, 2, c, 6 * c).unwrap(), &want, 1e-7);
    assert_eq!(want[6 * c..7 * c], vec![0.0; c][..], "a dropped branch's gate is zero");
    assert_eq!(want[2 * c..6 * c], gss[2 * c..6 * c], "the shifts and scales are untouched");

    // RoPE on the 1.000/demo5 schedule in its 1M frame, with an offset (the KV-cache path) and inverse
    let scales = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)];
    let table = rope::RopeTable::new(32, &scales, (64, 64));
    let (heads, lt) = (3, 36);
    let q = rand_vec(&mut rng, 2 * lt * heads * 32, 1.0);
    for (offset, inverse) in [(0, false), (21, false), (21, true)] {
        let mut cpu = q.clone();
        rope::rope_apply(&mut cpu, &table, lt, heads, offset, inverse);
        close("rope", &layers::rope(&dev, &q, &table, lt, heads, offset, inverse).unwrap(), &cpu, 1e-6);
    }
    // a table of fewer tokens than are rotated (21 of 36) is refused as the twin refuses it, not read
    // past its end
    let short = rope::RopeTable::new(32, &scales[..3], (64, 64));
    let cpu = std::panic::catch_unwind(|| rope::rope_apply(&mut q.clone(), &short, lt, heads, 0, false));
    let gpu =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| layers::rope(&dev, &q, &short, lt, heads, 0, false)));
    assert!(cpu.is_err() && gpu.is_err(), "a RoPE table too short for the tokens must be refused");

    let (vocab, n) = (25, 40);
    let table = rand_vec(&mut rng, vocab * c, 1.0);
    let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..vocab)).collect();
    let idx32: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
    let init = rand_vec(&mut rng, n * c, 1.0);
    let mut out = init.clone();
    embedding::embedding_forward(&table, &idx, &mut out, c, true);
    close("embedding", &layers::embedding(&dev, &table, &idx32, c, Some(&init)).unwrap(), &out, 1e-6);
    let dout = rand_vec(&mut rng, n * c, 1.0);
    let mut dt = vec![0.0f32; vocab * c];
    embedding::embedding_backward(&dout, &idx, &mut dt, c);
    close("embedding backward", &layers::embedding_backward(&dev, &dout, &idx32, vocab, c).unwrap(), &dt, 1e-5);
    // the level embedding's shape: 15 rows over more items than one chunk of partial sums (4096), the
    // last chunk part-filled, the levels in runs as a schedule's tokens are
    // (16 rows: the most it takes; 200 columns: two blocks of 128 threads, the second part-filled)
    let (vocab, n, c) = (16, 3 * 4096 + 123, 200);
    let idx: Vec<usize> = (0..n).map(|i| (i / 97 + i % 3) % vocab).collect();
    let idx32: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
    let dout = rand_vec(&mut rng, n * c, 1.0);
    let mut dt = vec![0.0f32; vocab * c];
    embedding::embedding_backward(&dout, &idx, &mut dt, c);
    let gpu = layers::embedding_backward(&dev, &dout, &idx32, vocab, c).unwrap();
    close("embedding backward, chunked", &gpu, &dt, 1e-5);
    assert_eq!(gpu, layers::embedding_backward(&dev, &dout, &idx32, vocab, c).unwrap(), "bitwise the same twice");
}

#[test]
fn adamw_the_moving_average_and_the_global_norm_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let n = 100_003;
    let (mut p, g) = (rand_vec(&mut rng, n, 1.0), rand_vec(&mut rng, n, 0.1));
    let (mut m, mut v) = (rand_vec(&mut rng, n, 0.01), rand_vec(&mut rng, n, 0.001));
    v.iter_mut().for_each(|x| *x = x.abs());
    // weight decay on runs of 5 elements, two of three; three learning-rate groups (μP's: 1, hidden,
    // output) in runs of 4099 elements (across the kernel's 4096-element chunks)
    let bytes: Vec<u8> = (0..n).map(|i| adamw::group_byte((i / 5) % 3 != 0, (i / 4099) % 3)).collect();
    let groups = adamw::GroupRuns::from_bytes(&bytes);
    let lr_mult = [1.0, 0.25, 1.0 / 48.0];
    // gradients still to be averaged over 3 ranks and clipped: the step reads them times that factor
    let s = adamw::AdamWScalars::new(3e-4, 0.9, 0.97, 1e-8, 0.05, 7).with_grad_scale(0.81 / 3.0);
    let gpu = ops::adamw(&dev, &p, &g, &m, &v, (&groups, &lr_mult), &s).unwrap();
    adamw::adamw_update(&mut p, &g, &mut m, &mut v, &groups, &lr_mult, &s);
    close("adamw params", &gpu.params, &p, 1e-6);
    close("adamw m", &gpu.m, &m, 1e-6);
    close("adamw v", &gpu.v, &v, 1e-6);
    // the bf16 copy is the kernel's own f32 result rounded to nearest even, bit for bit
    let rounded: Vec<f32> = gpu.params16.iter().map(|&b| f32::from_bits((b as u32) << 16)).collect();
    assert!(rounded == bf16_round(&gpu.params), "adamw's bf16 weights are not its f32 weights rounded");
    let (cpu, gpu) = (adamw::sum_squares(&g), ops::sum_squares(&dev, &g).unwrap());
    assert!((cpu - gpu).abs() <= 1e-12 * cpu, "sum of squares {gpu} vs {cpu}");
    // the weights' moving average: the same products and sum (no contraction), bit for bit
    let mut ema = rand_vec(&mut rng, n, 1.0);
    let gpu = ops::ema(&dev, &ema, &p, 0.9999).unwrap();
    adamw::ema_update(&mut ema, &p, 0.9999);
    assert!(gpu == ema, "the moving average differs from its CPU twin");
}

/// bf16 rounding, round to nearest even (what util.cu's `to_bf16` does), back in f32.
fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| {
            let u = x.to_bits();
            f32::from_bits((u.wrapping_add(0x7fff + ((u >> 16) & 1))) & 0xffff_0000)
        })
        .collect()
}

/// The linear layer through cuBLAS in f32, and with bf16 inputs (f32 accumulation): the bf16 products
/// are compared with the CPU twin run on the same bf16-rounded inputs, so the tolerance stays an f32 one.
#[test]
fn linear_through_cublas_matches_its_cpu_twin() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (n, fin, fout) in [(1, 1, 1), (37, 64, 192), (521, 256, 1024), (33, 130, 7)] {
        let (x, w, b) =
            (rand_vec(&mut rng, n * fin, 1.0), rand_vec(&mut rng, fout * fin, 0.1), rand_vec(&mut rng, fout, 0.1));
        let dy = rand_vec(&mut rng, n * fout, 1.0);
        for bf16 in [false, true] {
            let tag = if bf16 { "linear bf16" } else { "linear" };
            let r = |v: &[f32]| if bf16 { bf16_round(v) } else { v.to_vec() };
            let (xr, wr, dyr) = (r(&x), r(&w), r(&dy));
            let mut y = vec![0.0f32; n * fout];
            linear::linear_forward(&xr, &wr, Some(&b), &mut y, n, fin, fout);
            let gy = cuda_linear::linear_forward(&dev, bf16, &x, &w, Some(&b), n, fin, fout).unwrap();
            close(tag, &gy, &y, 1e-5);
            let (mut dx, mut dw, mut db) = (vec![0.0f32; n * fin], vec![0.0f32; fout * fin], vec![0.0f32; fout]);
            linear::linear_backward(&dyr, &xr, &wr, Some(&mut dx), &mut dw, None, n, fin, fout);
            linear::linear_backward(&dy, &x, &w, None, &mut vec![0.0f32; fout * fin], Some(&mut db), n, fin, fout);
            let (gdx, gdw, gdb) = cuda_linear::linear_backward(&dev, bf16, &dy, &x, &w, n, fin, fout).unwrap();
            close(&format!("{tag} dx"), &gdx, &dx, 1e-5);
            close(&format!("{tag} dW"), &gdw, &dw, 1e-5);
            close(&format!("{tag} db"), &gdb, &db, 1e-5);
            if bf16 {
                // dx written by the GEMM in bf16 alone (an attention's dO): the f32 product rounded,
                // within a bf16 rounding (cuBLAS may pick another kernel, so another summation order)
                let bits = cuda_linear::input_grad_bf16(&dev, &dy, &w, (n, fin, fout)).unwrap();
                let gdx16: Vec<f32> = bits.iter().map(|&b| f32::from_bits((b as u32) << 16)).collect();
                close("linear bf16 dx written in bf16", &gdx16, &bf16_round(&dx), 1e-2);
            }
        }
    }
}

/// Flash-style attention against the CPU twin: block-causal self-attention over two schedules (one
/// longer than several tiles), varlen cross-attention, the one-query pool; head dims 32, 64, 128
/// (attention_tiled.cu's register-tiled kernels on sm_80+, with more than 48 KiB of shared memory), 48
/// (attention.cu's kernels for other head dims) and 224 (its wide kernels, as the widest presets'
/// attention pool); and two runs give the same bytes.
#[test]
fn attention_matches_its_cpu_twin() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let demo5 = [1usize, 4, 16, 36, 64];
    let longer = [1usize, 4, 16, 36, 64, 100, 169, 256];
    let cases =
        [(&demo5[..], 4, 32), (&longer[..], 2, 64), (&demo5[..], 2, 128), (&demo5[..], 2, 48), (&demo5[..], 1, 224)];
    for (per_scale, heads, c) in cases {
        let l: usize = per_scale.iter().sum();
        let w = heads * c;
        let text = [5usize, 9];
        let self_segs = attention::block_causal_segments(2, per_scale);
        let cross_segs = vec![
            attention::Segment { q0: 0, nq: l, k0: 0, nk: text[0] },
            attention::Segment { q0: l, nq: l, k0: text[0], nk: text[1] },
        ];
        let pool_segs = vec![
            attention::Segment { q0: 0, nq: 1, k0: 0, nk: text[0] },
            attention::Segment { q0: 1, nq: 1, k0: text[0], nk: text[1] },
        ];
        let cross = 1.0 / (c as f64).sqrt();
        let nt = text[0] + text[1];
        for (name, segs, nq, nk, scale) in [
            ("self", self_segs, 2 * l, 2 * l, 1.0),
            ("cross", cross_segs, 2 * l, nt, cross),
            ("pool", pool_segs, 2, nt, cross),
        ] {
            let tag = format!("{name} attention L={l} H={heads} c={c}");
            let dims = attention::AttnDims { heads, head_dim: c, scale };
            let q = rand_vec(&mut rng, nq * w, 1.0);
            let (k, v) = (rand_vec(&mut rng, nk * w, 1.0), rand_vec(&mut rng, nk * w, 1.0));
            let (mut o, mut lse) = (vec![0.0f32; nq * w], vec![0.0f32; nq * heads]);
            attention::attention_forward(&q, &k, &v, &mut o, &mut lse, &segs, dims);
            let (go, glse) = cuda_attention::attention_forward(&dev, &q, &k, &v, &segs, dims, F32, false).unwrap();
            close(&format!("{tag} out"), &go, &o, 1e-5);
            close(&format!("{tag} lse"), &glse, &lse, 1e-5);
            let d_o = rand_vec(&mut rng, nq * w, 1.0);
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.len()], vec![0.0f32; k.len()], vec![0.0f32; v.len()]);
            attention::attention_backward(&d_o, &q, &k, &v, &o, &lse, &mut dq, &mut dk, &mut dv, &segs, dims);
            let grads = cuda_attention::attention_backward(&dev, &d_o, &q, &k, &v, &o, &lse, &segs, dims, F32).unwrap();
            close(&format!("{tag} dq"), &grads.0, &dq, 1e-4);
            close(&format!("{tag} dk"), &grads.1, &dk, 1e-4);
            close(&format!("{tag} dv"), &grads.2, &dv, 1e-4);
            let again = cuda_attention::attention_backward(&dev, &d_o, &q, &k, &v, &o, &lse, &segs, dims, F32).unwrap();
            assert!(again == grads, "{tag}: two backward runs differ (the kernels must be deterministic)");
        }
    }
}

/// The tensor-core attention (attention_bf16.cu) against the CPU twin run on the same bf16-rounded
/// q, k, v and dO: what remains is the rounding of the probabilities (and of dS in the backward) to
/// bf16 before their products, within 1e-2 (outputs) and 2e-2 (gradients) of the largest value;
/// lse only differs by summation order. Head dims 32, 64, 128; schedules longer than one 64-row tile;
/// two runs give the same bytes.
#[test]
fn bf16_attention_on_tensor_cores_matches_its_cpu_twin() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let demo5 = [1usize, 4, 16, 36, 64];
    let longer = [1usize, 4, 16, 36, 64, 100, 169, 256];
    for (per_scale, heads, c) in [(&demo5[..], 4, 32), (&longer[..], 2, 64), (&longer[..], 2, 128)] {
        let dims = attention::AttnDims { heads, head_dim: c, scale: 1.0 / (c as f64).sqrt() };
        assert!(cuda_attention::runs_on_tensor_cores(&dev, dims, Bf16).unwrap(), "c={c}: no tensor-core kernel");
        let l: usize = per_scale.iter().sum();
        let w = heads * c;
        let text = [5usize, 70];
        let cross_segs = vec![
            attention::Segment { q0: 0, nq: l, k0: 0, nk: text[0] },
            attention::Segment { q0: l, nq: l, k0: text[0], nk: text[1] },
        ];
        let nt = text[0] + text[1];
        for (name, segs, nq, nk) in
            [("self", attention::block_causal_segments(2, per_scale), 2 * l, 2 * l), ("cross", cross_segs, 2 * l, nt)]
        {
            let tag = format!("bf16 {name} attention L={l} H={heads} c={c}");
            let q = bf16_round(&rand_vec(&mut rng, nq * w, 2.0));
            let k = bf16_round(&rand_vec(&mut rng, nk * w, 2.0));
            let v = bf16_round(&rand_vec(&mut rng, nk * w, 1.0));
            let (mut o, mut lse) = (vec![0.0f32; nq * w], vec![0.0f32; nq * heads]);
            attention::attention_forward(&q, &k, &v, &mut o, &mut lse, &segs, dims);
            let (go, glse) = cuda_attention::attention_forward(&dev, &q, &k, &v, &segs, dims, Bf16, false).unwrap();
            close(&format!("{tag} out"), &go, &o, 1e-2);
            close(&format!("{tag} lse"), &glse, &lse, 1e-4);
            // O in bf16 alone (what the model keeps): the f32 output rounded, the same lse
            let (go16, glse16) = cuda_attention::attention_forward(&dev, &q, &k, &v, &segs, dims, Bf16, true).unwrap();
            assert!(go16 == bf16_round(&go) && glse16 == glse, "{tag}: the bf16 output is not the f32 one rounded");
            let d_o = bf16_round(&rand_vec(&mut rng, nq * w, 1.0));
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.len()], vec![0.0f32; k.len()], vec![0.0f32; v.len()]);
            attention::attention_backward(&d_o, &q, &k, &v, &o, &lse, &mut dq, &mut dk, &mut dv, &segs, dims);
            let grads =
                cuda_attention::attention_backward(&dev, &d_o, &q, &k, &v, &o, &lse, &segs, dims, Bf16).unwrap();
            close(&format!("{tag} dq"), &grads.0, &dq, 2e-2);
            close(&format!("{tag} dk"), &grads.1, &dk, 2e-2);
            close(&format!("{tag} dv"), &grads.2, &dv, 2e-2);
            let again =
                cuda_attention::attention_backward(&dev, &d_o, &q, &k, &v, &o, &lse, &segs, dims, Bf16).unwrap();
            assert!(again == grads, "{tag}: two backward runs differ (the kernels must be deterministic)");
        }
    }
}

#[test]
fn cosine_normalisation_matches_its_cpu_twin() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for (rows, heads, c) in [(1, 1, 8), (77, 4, 32), (300, 3, 128)] {
        let mut x = rand_vec(&mut rng, rows * heads * c, 1.0);
        x[..c].iter_mut().for_each(|v| *v = 0.0); // a zero head: the clamped branch
        let gain = rand_vec(&mut rng, heads, 2.0);
        let mut y = vec![0.0f32; x.len()];
        let norms = attention::normalize_heads_forward(&x, &mut y, heads, c, &gain);
        let (gy, gn) = cuda_attention::normalize_heads(&dev, &x, &gain, heads, c).unwrap();
        close("normalize heads y", &gy, &y, 1e-6);
        close("normalize heads norms", &gn, &norms, 1e-6);
        let dy = rand_vec(&mut rng, x.len(), 1.0);
        let (mut dx, mut dg) = (vec![0.0f32; x.len()], vec![0.0f32; heads]);
        attention::normalize_heads_backward(&dy, &x, &norms, &gain, &mut dx, Some(&mut dg), heads, c);
        let (gdx, gdg) = cuda_attention::normalize_heads_backward(&dev, &dy, &x, &norms, &gain, heads, c).unwrap();
        close("normalize heads dx", &gdx, &dx, 1e-5);
        close("normalize heads dgain", &gdg, &dg, 1e-5);
    }
}

/// qkv.cu against the CPU twins: the biased parts exact, q, k, the norms and the backward's dqkv and
/// gain gradient within 1e-5 (summation order), and with bf16 outputs (the tensor-core attention's
/// inputs, the bf16 GEMMs' dqkv) the twin's values rounded, up to a rounding-boundary tie. Head dims
/// 20 to 256, two samples (RoPE token = row mod L).
#[test]
fn qkv_heads_match_their_cpu_twin() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(44);
    let scales = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)];
    let l: usize = scales.iter().map(|(h, w)| h * w).sum();
    for (heads, c) in [(3, 20), (4, 64), (2, 128), (1, 256)] {
        let (n, w) = (2 * l, heads * c);
        let table = rope::RopeTable::new(c, &scales, (8, 8));
        let (qkv, qb, vb) =
            (rand_vec(&mut rng, n * 3 * w, 2.0), rand_vec(&mut rng, w, 0.5), rand_vec(&mut rng, w, 0.5));
        let gain: Vec<f32> = (0..heads).map(|_| rng.random_range(0.5..2.0)).collect();
        let p = QkvHeads { q_bias: &qb, v_bias: &vb, gain: &gain, rope: &table, l, heads };
        let cpu = qkv_heads_forward(&qkv, &p);
        let (dq, dk, dv) =
            (rand_vec(&mut rng, n * w, 1.0), rand_vec(&mut rng, n * w, 1.0), rand_vec(&mut rng, n * w, 1.0));
        let (mut cdq, mut cdk, mut dqkv, mut dgain) =
            (dq.clone(), dk.clone(), vec![0.0f32; 3 * n * w], vec![0.0f32; heads]);
        qkv_heads_backward(&mut cdq, &mut cdk, &dv, &cpu, &p, &mut dqkv, &mut dgain);
        for bf16 in [false, true] {
            let gpu = cuda_qkv::qkv_heads(&dev, &qkv, &qb, &vb, &gain, &table, (l, heads), bf16).unwrap();
            let tag = format!("qkv heads H={heads} c={c}{}", if bf16 { " bf16" } else { "" });
            close(&format!("{tag} q_raw"), &gpu.q_raw, &cpu.q_raw, 0.0);
            close(&format!("{tag} k_raw"), &gpu.k_raw, &cpu.k_raw, 0.0);
            close(&format!("{tag} q norms"), &gpu.q_norm, &cpu.q_norm, 1e-6);
            close(&format!("{tag} k norms"), &gpu.k_norm, &cpu.k_norm, 1e-6);
            let want = |v: &[f32]| if bf16 { bf16_round(v) } else { v.to_vec() };
            let tol = if bf16 { 1e-2 } else { 1e-5 };
            close(&format!("{tag} q"), &gpu.q, &want(&cpu.q), tol);
            close(&format!("{tag} k"), &gpu.k, &want(&cpu.k), tol);
            close(&format!("{tag} v"), &gpu.v, &want(&cpu.v), if bf16 { 1e-2 } else { 0.0 });
            let (gdqkv, gdq_raw, udy) =
                cuda_qkv::qkv_heads_backward(&dev, (&dq, &dk, &dv), &cpu, &gain, &table, (l, heads), bf16).unwrap();
            close(&format!("{tag} dqkv"), &gdqkv, &want(&dqkv), tol);
            let part0: Vec<f32> = dqkv.chunks_exact(3 * w).flat_map(|r| r[..w].to_vec()).collect();
            close(&format!("{tag} dq_raw"), &gdq_raw, &part0, 1e-5);
            let gain_grad: Vec<f32> = (0..heads).map(|h| udy.iter().skip(h).step_by(heads).sum()).collect();
            close(&format!("{tag} dgain"), &gain_grad, &dgain, 1e-5);
        }
    }
}
