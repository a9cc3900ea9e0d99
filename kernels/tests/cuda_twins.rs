//! Each CUDA kernel against its CPU twin on random and ragged shapes. Needs feature `cuda` and a device;
//! says it skipped otherwise. Tolerances (docs/numerics.md, "CUDA twins"): f32 kernels within 1e-5
//! relative of the CPU twin (different `exp`/`log` implementations and summation order); bits exact
//! except where the residual is within 1e-6 of zero.
#![cfg(feature = "cuda")]

use infinity_kernels::cuda::device::device_present;
use infinity_kernels::cuda::{attention as cuda_attention, layers, linear as cuda_linear, ops, Device};
use infinity_kernels::{act, adaln, adamw, attention, bitwise_ce, bsq, embedding, linear, norm, resample, rope};
use rand::{Rng, SeedableRng};

fn device() -> Option<Device> {
    if !device_present() {
        println!("skipped: no CUDA device (build with --features cuda on a GPU machine)");
        return None;
    }
    Some(Device::open(0).expect("opening CUDA device 0"))
}

fn rand_vec(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn close(name: &str, a: &[f32], b: &[f32], rtol: f32) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale;
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
        act::silu_forward(&x, &mut y);
        act::silu_backward(&dy, &x, &mut dx);
        close("silu", &ops::activation(&dev, "silu_forward_f32", &x).unwrap(), &y, 1e-5);
        close("silu backward", &ops::activation_backward(&dev, "silu_backward_f32", &dy, &x).unwrap(), &dx, 1e-5);
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
            let gpu = layers::layernorm(&dev, &x, wo, bo, c, 1e-6).unwrap();
            close("layernorm", &gpu.y, &y, 1e-5);
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
}

#[test]
fn adaln_rope_and_embeddings_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (b, l, c) = (3, 57, 96);
    let (x, dy) = (rand_vec(&mut rng, b * l * c, 1.0), rand_vec(&mut rng, b * l * c, 1.0));
    let (scale, shift) = (rand_vec(&mut rng, b * c, 0.5), rand_vec(&mut rng, b * c, 0.5));
    let mut y = vec![0.0f32; b * l * c];
    adaln::modulate_forward(&x, &scale, &shift, &mut y, l, c);
    close("modulate", &layers::modulate(&dev, &x, &scale, &shift, l, c).unwrap(), &y, 1e-6);
    let (mut dx, mut ds, mut dh) = (vec![0.0f32; b * l * c], vec![0.0f32; b * c], vec![0.0f32; b * c]);
    adaln::modulate_backward(&dy, &x, &scale, &mut dx, &mut ds, &mut dh, l, c);
    let g = layers::modulate_backward(&dev, &dy, &x, &scale, l, c).unwrap();
    close("modulate dx", &g[0], &dx, 1e-6);
    close("modulate dscale", &g[1], &ds, 1e-5);
    close("modulate dshift", &g[2], &dh, 1e-5);
    let mut res = x.clone();
    adaln::gated_residual_forward(&mut res, &dy, &scale, l, c);
    close("gated residual", &layers::gated_residual(&dev, &x, &dy, &scale, l, c).unwrap(), &res, 1e-6);
    let (mut gy, mut gg) = (vec![0.0f32; b * l * c], vec![0.0f32; b * c]);
    adaln::gated_residual_backward(&dy, &x, &scale, &mut gy, &mut gg, l, c);
    let g = layers::gated_residual_backward(&dev, &dy, &x, &scale, l, c).unwrap();
    close("gated residual dy", &g[0], &gy, 1e-6);
    close("gated residual dgamma", &g[1], &gg, 1e-5);

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
}

#[test]
fn adamw_and_the_global_norm_match_their_cpu_twins() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let n = 100_003;
    let (mut p, g) = (rand_vec(&mut rng, n, 1.0), rand_vec(&mut rng, n, 0.1));
    let (mut m, mut v) = (rand_vec(&mut rng, n, 0.01), rand_vec(&mut rng, n, 0.001));
    v.iter_mut().for_each(|x| *x = x.abs());
    let decay: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
    let s = adamw::AdamWScalars::new(3e-4, 0.9, 0.97, 1e-8, 0.05, 7);
    let gpu = ops::adamw(&dev, &p, &g, &m, &v, &decay, &s).unwrap();
    adamw::adamw_update(&mut p, &g, &mut m, &mut v, &decay, &s);
    close("adamw params", &gpu.params, &p, 1e-6);
    close("adamw m", &gpu.m, &m, 1e-6);
    close("adamw v", &gpu.v, &v, 1e-6);
    let (cpu, gpu) = (adamw::sum_squares(&g), ops::sum_squares(&dev, &g).unwrap());
    assert!((cpu - gpu).abs() <= 1e-12 * cpu, "sum of squares {gpu} vs {cpu}");
}

#[test]
fn linear_through_cublas_matches_its_cpu_twin() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (n, fin, fout) in [(1, 1, 1), (37, 64, 192), (521, 256, 1024), (33, 130, 7)] {
        let (x, w, b) =
            (rand_vec(&mut rng, n * fin, 1.0), rand_vec(&mut rng, fout * fin, 0.1), rand_vec(&mut rng, fout, 0.1));
        let mut y = vec![0.0f32; n * fout];
        linear::linear_forward(&x, &w, Some(&b), &mut y, n, fin, fout);
        close("linear", &cuda_linear::linear_forward(&dev, &x, &w, Some(&b), n, fin, fout).unwrap(), &y, 1e-5);
        let dy = rand_vec(&mut rng, n * fout, 1.0);
        let (mut dx, mut dw, mut db) = (vec![0.0f32; n * fin], vec![0.0f32; fout * fin], vec![0.0f32; fout]);
        linear::linear_backward(&dy, &x, &w, Some(&mut dx), &mut dw, Some(&mut db), n, fin, fout);
        let (gdx, gdw, gdb) = cuda_linear::linear_backward(&dev, &dy, &x, &w, n, fin, fout).unwrap();
        close("linear dx", &gdx, &dx, 1e-5);
        close("linear dW", &gdw, &dw, 1e-5);
        close("linear db", &gdb, &db, 1e-5);
    }
}

#[test]
fn attention_matches_its_cpu_twin() {
    let Some(dev) = device() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    // block-causal self-attention over the 1.000/demo5 schedule (2 samples), and varlen cross-attention
    let per_scale = [1usize, 4, 16, 36, 64];
    let l: usize = per_scale.iter().sum();
    let (heads, c) = (4, 32);
    let w = heads * c;
    let self_segs = attention::block_causal_segments(2, &per_scale);
    let text = [5usize, 9];
    let cross_segs = vec![
        attention::Segment { q0: 0, nq: l, k0: 0, nk: text[0] },
        attention::Segment { q0: l, nq: l, k0: text[0], nk: text[1] },
    ];
    for (segs, nk, scale) in [(self_segs, 2 * l, 1.0), (cross_segs, text[0] + text[1], 1.0 / (c as f64).sqrt())] {
        let dims = attention::AttnDims { heads, head_dim: c, scale };
        let q = rand_vec(&mut rng, 2 * l * w, 1.0);
        let (k, v) = (rand_vec(&mut rng, nk * w, 1.0), rand_vec(&mut rng, nk * w, 1.0));
        let (mut o, mut lse) = (vec![0.0f32; 2 * l * w], vec![0.0f32; 2 * l * heads]);
        attention::attention_forward(&q, &k, &v, &mut o, &mut lse, &segs, dims);
        let (go, glse) = cuda_attention::attention_forward(&dev, &q, &k, &v, &segs, dims).unwrap();
        close("attention out", &go, &o, 1e-5);
        close("attention lse", &glse, &lse, 1e-5);
        let d_o = rand_vec(&mut rng, 2 * l * w, 1.0);
        let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.len()], vec![0.0f32; k.len()], vec![0.0f32; v.len()]);
        attention::attention_backward(&d_o, &q, &k, &v, &o, &lse, &mut dq, &mut dk, &mut dv, &segs, dims);
        let (gq, gk, gv) = cuda_attention::attention_backward(&dev, &d_o, &q, &k, &v, &o, &lse, &segs, dims).unwrap();
        close("attention dq", &gq, &dq, 1e-4);
        close("attention dk", &gk, &dk, 1e-4);
        close("attention dv", &gv, &dv, 1e-4);
    }
}
