//! Sampling on the device (feature `cuda`, gated on a device): the KV-cached scale-by-scale transformer
//! on the GPU gives the CPU sampler's logits and, drawing the same keyed numbers, its bits, for class
//! and text conditions, with guidance per scale or none (or on the hidden states), a negative prompt, and with spatial patchify; bf16 sampling moves
//! the logits by rounding only. Runs on a GPU or on the emulated device (tools/emulated_device.py, as
//! scripts/test.sh does in CI); prints what it skipped without either.
#![cfg(feature = "cuda")]

mod common;

use common::gpu_or_skip;
use infinity_kernels::compare::max_abs_diff;
use infinity_kernels::rope::RopeTable;
use infinity_trainer::gpu::GpuModel;
use infinity_trainer::model::init::{init_params, InitConfig};
use infinity_trainer::model::sample::{sample, SampleCondition, SampleOptions, Sampled};
use infinity_trainer::model::{Conditioning, Layout, ModelConfig, Params};
use rand::{Rng, SeedableRng};

/// A tiny model (d = 16, two blocks) whose zero-initialised parts (gates, head, AdaLN biases) are
/// perturbed, so every path reaches the logits.
fn model(conditioning: Conditioning, patchify: bool) -> (ModelConfig, Layout, Params<f32>) {
    let mut mc = ModelConfig::preset("tiny").unwrap();
    (mc.d, mc.depth, mc.conditioning, mc.apply_spatial_patchify) = (16, 2, conditioning, patchify);
    mc.validate().unwrap();
    let lay = Layout::new(&mc);
    let mut p: Params<f32> = init_params(&mc, &lay, &InitConfig::default(), 5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    p.data.iter_mut().for_each(|v| *v += rng.random_range(-0.08..0.08));
    (mc, lay, p)
}

/// The tokenizer's schedule, the transformer's RoPE table, and both samplers' outputs.
fn both(
    (mc, lay, p): &(ModelConfig, Layout, Params<f32>),
    cond: &SampleCondition,
    tokenizer: &[(usize, usize)],
    o: &SampleOptions,
    bf16: bool,
) -> (Sampled, Sampled) {
    let scales = mc.token_scales(tokenizer);
    let rope = RopeTable::new(mc.head_dim(), &scales, *scales.last().unwrap());
    let cpu = sample(mc, lay, p, cond, tokenizer, &rope, o).unwrap();
    let mut m = GpuModel::for_sampling(mc, lay, 0, bf16).unwrap();
    m.upload_params(p).unwrap();
    let gpu = m.sample(cond, tokenizer, &rope, o).unwrap();
    let again = m.sample(cond, tokenizer, &rope, o).unwrap();
    assert!(gpu.cond_logits == again.cond_logits && gpu.bits == again.bits, "two device samplings differ");
    (cpu, gpu)
}

#[test]
fn device_sampling_matches_the_cpu_sampler() {
    if !gpu_or_skip() {
        return;
    }
    let plain = [(1usize, 1usize), (2, 2), (3, 3), (4, 4), (4, 6)];
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut features = |tokens: usize, ct: usize| (0..tokens * ct).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut text = |mc: &ModelConfig, negative: bool| SampleCondition::Text {
        kv: features(7, mc.text_channels),
        lens: vec![4, 3],
        negative: negative.then(|| features(2, mc.text_channels)),
    };
    let class = Conditioning::Class { num_classes: 7 };
    let text_model = model(Conditioning::Text, false);
    let cases = [
        ("class, guided", model(class.clone(), false), SampleCondition::Class(vec![2, 6]), &plain[..], vec![3.0]),
        (
            "text, guided on the hidden states after the last block and on the logits",
            text_model.clone(),
            text(&text_model.0, false),
            &plain[..],
            vec![3.0],
        ),
        (
            "text, guided per scale",
            text_model.clone(),
            text(&text_model.0, false),
            &plain[..],
            vec![1.0, 2.0, 3.0, 3.0, 4.0],
        ),
        ("text, negative prompt", text_model.clone(), text(&text_model.0, true), &plain[..], vec![3.0]),
        ("text, unguided", text_model.clone(), text(&text_model.0, false), &plain[..], vec![1.0]),
        (
            "class, patchify",
            model(class, true),
            SampleCondition::Class(vec![0, 5]),
            &[(2, 2), (4, 4), (6, 6), (8, 8)][..],
            vec![2.0],
        ),
    ];
    for (tag, m, cond, tokenizer, cfg) in cases {
        // (upstream's negative cfg_insertion_layer: −1 is after the last block)
        let places = if tag.contains("hidden states") { vec![-1, 0] } else { vec![0] };
        let o = SampleOptions {
            cfg,
            tau: vec![0.7],
            cfg_insertion_layer: places,
            ..SampleOptions::uniform(1.0, 1.0, 0.9, 4)
        };
        let (cpu, gpu) = both(&m, &cond, tokenizer, &o, false);
        let (lc, lg) = (cpu.cond_logits.concat(), gpu.cond_logits.concat());
        let worst = max_abs_diff(&lc, &lg);
        let scale = lc.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
        println!("{tag}: logits within {worst:.2e} (largest |logit| {scale:.2})");
        assert!(worst <= 1e-4 * scale.max(1.0), "{tag}: device logits differ from the CPU's by {worst}");
        assert_eq!(gpu.bits, cpu.bits, "{tag}: the device sampled other bits");
        assert_eq!(gpu.tokenizer_bits, cpu.tokenizer_bits, "{tag}: tokenizer layout");
        assert!(max_abs_diff(&gpu.summed_codes.concat(), &cpu.summed_codes.concat()) <= 1e-6, "{tag}: codes");
        assert!(max_abs_diff(&gpu.x_wo_prefix.concat(), &cpu.x_wo_prefix.concat()) <= 1e-6, "{tag}: inputs");
    }
}

/// With bf16 matmuls, a head the tensor cores do not take (d = 12) samples in f32, as training computes
/// it: with the blocks' outputs zeroed, every logit is the CPU sampler's up to summation order (a bf16
/// head would move them by bf16 rounding).
#[test]
fn a_head_off_the_tensor_cores_samples_in_f32() {
    if !gpu_or_skip() {
        return;
    }
    let mut mc = ModelConfig::preset("tiny").unwrap();
    (mc.d, mc.depth, mc.conditioning) = (12, 2, Conditioning::Class { num_classes: 10 });
    mc.validate().unwrap();
    let lay = Layout::new(&mc);
    let mut p: Params<f32> = init_params(&mc, &lay, &InitConfig::default(), 5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    p.data.iter_mut().for_each(|v| *v += rng.random_range(-0.08..0.08));
    for n in 0..mc.depth {
        for part in ["sa.proj.weight", "sa.proj.bias", "ffn.fc2.weight", "ffn.fc2.bias"] {
            p.get_mut(&lay, &format!("blocks.{n}.{part}")).fill(0.0);
        }
    }
    let cond = SampleCondition::Class(vec![3, 7]);
    let o = SampleOptions::uniform(1.0, 1.0, 0.0, 1);
    let (cpu, gpu) = both(&(mc, lay, p), &cond, &[(1, 1), (2, 2), (3, 3)], &o, true);
    let (lc, lg) = (cpu.cond_logits.concat(), gpu.cond_logits.concat());
    let worst = max_abs_diff(&lc, &lg);
    let scale = lc.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
    println!("bf16 run, f32 head: logits within {worst:.2e} (largest |logit| {scale:.2})");
    assert!(worst <= 1e-4 * scale.max(1.0), "the head's logits moved by {worst}: not computed in f32");
}

/// bf16 matmuls and the tensor-core attention over a bf16 cache: the first scale's logits (the same
/// input on both) move by bf16 rounding only, and every later one is finite.
#[test]
fn bf16_device_sampling_rounds_like_bf16() {
    if !gpu_or_skip() {
        return;
    }
    let m = model(Conditioning::Text, false);
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let kv = (0..5 * m.0.text_channels).map(|_| rng.random_range(-1.0..1.0)).collect();
    let cond = SampleCondition::Text { kv, lens: vec![2, 3], negative: None };
    let o = SampleOptions::uniform(3.0, 1.0, 0.0, 1);
    let (cpu, gpu) = both(&m, &cond, &[(1, 1), (2, 2), (3, 3), (4, 4)], &o, true);
    let d2 = 2 * m.0.d;
    for (c, g) in cpu.cond_logits.iter().zip(&gpu.cond_logits) {
        let worst = max_abs_diff(&c[..d2], &g[..d2]);
        let scale = c[..d2].iter().fold(0f64, |a, v| a.max(v.abs() as f64));
        println!("bf16: scale-0 logits within {worst:.2e} (largest |logit| {scale:.2})");
        assert!(worst <= 3e-2 * scale.max(1.0), "bf16 scale-0 logits differ from the CPU's by {worst}");
        assert!(g.iter().all(|v| v.is_finite()) && g.len() == c.len(), "bf16 logits: finite, [L, 2d]");
    }
}
