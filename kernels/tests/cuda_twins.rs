//! Each CUDA kernel against its CPU twin on random and ragged shapes. Needs feature `cuda` and a device;
//! says it skipped otherwise. Tolerances (docs/numerics.md, "CUDA twins"): f32 kernels within 1e-5
//! relative of the CPU twin (different `exp`/`log` implementations and summation order); bits exact
//! except where the residual is within 1e-6 of zero.
#![cfg(feature = "cuda")]

use infinity_kernels::cuda::device::device_present;
use infinity_kernels::cuda::{ops, Device};
use infinity_kernels::{act, bitwise_ce, bsq, resample};
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
