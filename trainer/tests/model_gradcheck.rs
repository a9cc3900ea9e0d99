//! The whole model's hand-written backward against f64 finite differences: every parameter tensor,
//! text and class conditioning, a non-square schedule, CFG dropout, drop path, uniform and reweighted
//! loss.

use infinity_kernels::gradcheck::{check, noise};
use infinity_kernels::rope::RopeTable;
use infinity_trainer::model::{
    backward, forward, token_weights, Condition, Conditioning, Layout, ModelConfig, ModelInput, Params,
};

fn tiny(conditioning: Conditioning) -> ModelConfig {
    ModelConfig {
        depth: 2,
        embed_dim: 16,
        num_heads: 2,
        mlp_ratio: 16.0, // 16·16/256 = 1 → FFN width 256
        d: 4,
        text_channels: 8,
        text_maxlen: 6,
        norm_eps: 1e-6,
        cond_drop_rate: 0.1,
        drop_path_rate: 0.0,
        apply_spatial_patchify: false,
        conditioning,
        block_chunks: 1,
    }
}

fn random_params(lay: &Layout, seed: u64) -> Params<f64> {
    let mut p = Params::zeros(lay);
    let v = noise(lay.numel, seed);
    for spec in &lay.specs {
        for (i, x) in p.data[spec.offset..spec.offset + spec.numel()].iter_mut().enumerate() {
            let r = v[spec.offset + i];
            *x = if spec.name.ends_with("scale_mul_1H11") { 4f64.ln() + 0.3 * r } else { 0.4 * r };
        }
        // one head's above ln 100, where exp(clamp_max(·, ln 100)) passes no gradient
        if spec.name == "blocks.0.sa.scale_mul_1H11" {
            p.data[spec.offset] = 5.0;
        }
    }
    assert!(lay.specs.iter().any(|s| s.name == "blocks.0.sa.scale_mul_1H11"), "the clamped head is set");
    p
}

fn run(conditioning: Conditioning, reweight: bool) {
    let cfg = tiny(conditioning.clone());
    cfg.validate().unwrap();
    let lay = Layout::new(&cfg);
    let p = random_params(&lay, 1);
    let scales = [(1usize, 1usize), (2, 2), (2, 3)];
    let l = 11;
    let b = 2;
    let rope = RopeTable::new(8, &scales, (52, 78));
    let x_wo_prefix = noise(b * (l - 1) * cfg.d, 2);
    let gt_bits: Vec<u8> = noise(b * l * cfg.d, 3).iter().map(|v| (*v > 0.0) as u8).collect();
    let weights = token_weights(b, &scales, reweight);
    let kv = noise(5 * cfg.text_channels, 4);
    let cu = [0usize, 3, 5];
    let dropped = [false, true];
    let labels = [3usize, 7];
    let cond = match conditioning {
        Conditioning::Text => Condition::Text { kv_compact: &kv, cu_seqlens: &cu, dropped: &dropped },
        Conditioning::Class { .. } => Condition::Class { labels: &labels },
    };
    let inp = ModelInput {
        b,
        scales: &scales,
        rope: &rope,
        x_wo_prefix: &x_wo_prefix,
        cond,
        gt_bits: &gt_bits,
        token_weights: &weights,
        label_smoothing: if reweight { 0.1 } else { 0.0 },
        drop_path: &[],
    };
    // text: with drop path ([depth, B, 2]: block 1 drops sample 0's FFN and sample 1's self-attention)
    let drop_path = [1.0, 1.0, 1.0, 1.0, 1.0 / 0.9, 0.0, 0.0, 1.0 / 0.9];
    let inp = match cfg.conditioning {
        Conditioning::Text => {
            let with = ModelInput { drop_path: &drop_path, ..inp };
            let (a, b) = (forward(&cfg, &lay, &p, &inp).ce.loss, forward(&cfg, &lay, &p, &with).ce.loss);
            assert!((a - b).abs() > 1e-6, "drop path changes the loss ({a} vs {b})");
            with
        }
        Conditioning::Class { .. } => inp,
    };
    let acts = forward(&cfg, &lay, &p, &inp);
    let mut grads = Params::zeros(&lay);
    backward(&cfg, &lay, &p, &inp, &acts, &mut grads);
    let loss = |q: &Params<f64>| forward(&cfg, &lay, q, &inp).ce.loss;
    for spec in &lay.specs {
        let range = spec.offset..spec.offset + spec.numel();
        let mut q = p.clone();
        check(
            &spec.name,
            &p.data[range.clone()],
            &grads.data[range.clone()],
            |v| {
                q.data[range.clone()].copy_from_slice(v);
                loss(&q)
            },
            1e-4,
            1e-8,
        );
    }
}

#[test]
fn text_conditioned_model_gradients() {
    run(Conditioning::Text, false);
}

#[test]
fn class_conditioned_model_gradients_with_reweighting() {
    run(Conditioning::Class { num_classes: 9 }, true);
}

/// The KV-cached, scale-by-scale sampler computes the same logits as the training forward fed the
/// sampled history: block-causal attention, RoPE offsets and the cache agree.
#[test]
fn cached_sampling_matches_the_training_forward() {
    use infinity_trainer::model::sample::{sample, SampleCondition, SampleOptions};
    for conditioning in [Conditioning::Class { num_classes: 5 }, Conditioning::Text] {
        let cfg = tiny(conditioning.clone());
        let lay = Layout::new(&cfg);
        let p64 = random_params(&lay, 9);
        let p: Params<f32> = p64.cast();
        let scales = [(1usize, 1usize), (2, 2), (2, 3)];
        let rope = RopeTable::new(8, &scales, (52, 78));
        let kv: Vec<f32> = noise(5 * cfg.text_channels, 4).iter().map(|&v| v as f32).collect();
        let cond = match conditioning {
            Conditioning::Class { .. } => SampleCondition::Class(vec![1, 4]),
            Conditioning::Text => SampleCondition::Text { kv: kv.clone(), lens: vec![3, 2], negative: None },
        };
        let out = sample(&cfg, &lay, &p, &cond, &scales, &rope, &SampleOptions::uniform(1.0, 1.0, 0.0, 3)).unwrap();
        let x: Vec<f32> = out.x_wo_prefix.concat();
        let bits: Vec<u8> = out.bits.concat();
        let weights = token_weights(2, &scales, false);
        let (labels, cu, dropped) = ([1usize, 4], [0usize, 3, 5], [false, false]);
        let c = match conditioning {
            Conditioning::Class { .. } => Condition::Class { labels: &labels },
            Conditioning::Text => Condition::Text { kv_compact: &kv, cu_seqlens: &cu, dropped: &dropped },
        };
        let inp = ModelInput {
            b: 2,
            scales: &scales,
            rope: &rope,
            x_wo_prefix: &x,
            cond: c,
            gt_bits: &bits,
            token_weights: &weights,
            label_smoothing: 0.0,
            drop_path: &[],
        };
        let acts = forward(&cfg, &lay, &p, &inp);
        let sampled: Vec<f32> = out.cond_logits.concat();
        let worst = infinity_kernels::compare::max_abs_diff(&acts.logits, &sampled);
        assert!(worst < 1e-4, "{conditioning:?}: sampler logits differ from the training forward by {worst}");
        assert_eq!(acts.logits.len(), sampled.len());
    }
}

/// Spatial patchify (upstream's 8B): the sampler shuffles each sampled scale back to the tokenizer's
/// twice-as-large grid and unshuffles its inputs from it, exactly as training unshuffles
/// self-correction's: the sampled bits, shuffled back and self-corrected as stored bits (no flips),
/// give the inputs the sampler fed; and the training forward on them gives the sampler's logits.
#[test]
fn patchified_sampling_matches_the_training_inputs() {
    use infinity_kernels::{bsq, patchify};
    use infinity_trainer::model::sample::{sample, SampleCondition, SampleOptions};
    let cfg = ModelConfig { d: 16, apply_spatial_patchify: true, ..tiny(Conditioning::Class { num_classes: 5 }) };
    cfg.validate().unwrap();
    let lay = Layout::new(&cfg);
    let p: Params<f32> = random_params(&lay, 10).cast();
    let tokenizer = [(2usize, 2usize), (4, 4), (4, 6)];
    let scales = cfg.token_scales(&tokenizer);
    assert_eq!(scales, [(1, 1), (2, 2), (2, 3)]);
    let rope = RopeTable::new(8, &scales, (52, 78));
    let o = SampleOptions::uniform(1.0, 1.0, 0.0, 5);
    let out = sample(&cfg, &lay, &p, &SampleCondition::Class(vec![2, 3]), &tokenizer, &rope, &o).unwrap();
    assert_eq!(out.summed_codes[0].len(), 4 * 4 * 6, "summed codes are the tokenizer's [d/4, 2H, 2W]");
    for ((bits, x), tokenizer_bits) in out.bits.iter().zip(&out.x_wo_prefix).zip(&out.tokenizer_bits) {
        // token bits [L, 16] → the tokenizer's [4L, 4], scale by scale
        let mut stored = vec![0u8; bits.len()];
        let mut at = 0;
        for &(h, w) in &scales {
            let n = h * w * cfg.d;
            patchify::shuffle_scale(&bits[at..at + n], (h, w), cfg.d_vae(), &mut stored[at..at + n]);
            at += n;
        }
        assert_eq!(stored, *tokenizer_bits, "the bits in the tokenizer's layout");
        let sc = bsq::self_correct_stored(&stored, cfg.d_vae(), &tokenizer, None);
        assert_eq!(patchify::unshuffle_tokens(&sc.bits, 1, cfg.d_vae(), &scales, 0), *bits, "labels");
        let want = patchify::unshuffle_tokens(&sc.x_wo_prefix, 1, cfg.d_vae(), &scales, 1);
        let worst = infinity_kernels::compare::max_abs_diff(&want, x);
        assert!(worst < 1e-6, "the sampler's inputs differ from training's by {worst}");
    }
    let (x, bits): (Vec<f32>, Vec<u8>) = (out.x_wo_prefix.concat(), out.bits.concat());
    let weights = token_weights(2, &scales, false);
    let inp = ModelInput {
        b: 2,
        scales: &scales,
        rope: &rope,
        x_wo_prefix: &x,
        cond: Condition::Class { labels: &[2, 3] },
        gt_bits: &bits,
        token_weights: &weights,
        label_smoothing: 0.0,
        drop_path: &[],
    };
    let acts = forward(&cfg, &lay, &p, &inp);
    let worst = infinity_kernels::compare::max_abs_diff(&acts.logits, &out.cond_logits.concat());
    assert!(worst < 1e-4, "sampler logits differ from the training forward by {worst}");
}

/// Weights that give non-finite logits (a diverged run's) make sampling an error, not bits of 0.
#[test]
fn sampling_from_broken_weights_is_an_error() {
    use infinity_trainer::model::sample::{sample, SampleCondition, SampleOptions};
    let cfg = tiny(Conditioning::Class { num_classes: 5 });
    let lay = Layout::new(&cfg);
    let mut p: Params<f32> = random_params(&lay, 10).cast();
    p.data.iter_mut().for_each(|w| *w = f32::NAN);
    let tokenizer = [(1usize, 1usize), (2, 2)];
    let scales = cfg.token_scales(&tokenizer);
    let rope = RopeTable::new(8, &scales, (52, 78));
    let o = SampleOptions::uniform(3.0, 1.0, 0.0, 5);
    let Err(e) = sample(&cfg, &lay, &p, &SampleCondition::Class(vec![2]), &tokenizer, &rope, &o) else {
        panic!("sampled from NaN weights")
    };
    let e = e.to_string();
    assert!(e.contains("the model's logits at scale 0 are not finite"), "{e}");
}

/// A negative prompt takes the unconditional rows: at cfg 0 (the unconditional logits alone) sampling
/// with negative N draws the bits of sampling N itself without guidance. A negative prompt without
/// guidance, or longer than `text_maxlen`, is refused.
/// Two captions (3 and 2 tokens of width `ct`, noise of `seed`) with a negative prompt of 4 tokens
/// (noise of `seed + 1`), and that negative prompt alone for both samples, unguided.
fn prompts_with_a_negative(
    ct: usize,
    seed: u64,
) -> (infinity_trainer::model::sample::SampleCondition, infinity_trainer::model::sample::SampleCondition) {
    use infinity_trainer::model::sample::SampleCondition;
    let kv: Vec<f32> = noise(5 * ct, seed).iter().map(|&v| v as f32).collect();
    let neg: Vec<f32> = noise(4 * ct, seed + 1).iter().map(|&v| v as f32).collect();
    let plain = SampleCondition::Text { kv: [neg.clone(), neg.clone()].concat(), lens: vec![4, 4], negative: None };
    (SampleCondition::Text { kv, lens: vec![3, 2], negative: Some(neg) }, plain)
}

#[test]
fn negative_prompts_replace_the_unconditional_rows() {
    use infinity_trainer::model::sample::{sample, SampleCondition, SampleOptions};
    let cfg = tiny(Conditioning::Text);
    let lay = Layout::new(&cfg);
    let p: Params<f32> = random_params(&lay, 11).cast();
    let scales = [(1usize, 1usize), (2, 2), (3, 3)];
    let rope = RopeTable::new(8, &scales, (3, 3));
    let ct = cfg.text_channels;
    let (with_negative, plain) = prompts_with_a_negative(ct, 5);
    let o = |cfg_scale: f64| SampleOptions::uniform(cfg_scale, 0.8, 0.0, 7);
    let guided = sample(&cfg, &lay, &p, &with_negative, &scales, &rope, &o(0.0)).unwrap();
    let alone = sample(&cfg, &lay, &p, &plain, &scales, &rope, &o(1.0)).unwrap();
    assert_eq!(guided.bits, alone.bits, "cfg 0 with a negative prompt samples the negative prompt");
    // and it differs from cfg 0 without one (cfg_uncond's rows)
    let SampleCondition::Text { kv, lens, .. } = with_negative.clone() else { unreachable!() };
    let uncond = SampleCondition::Text { kv, lens, negative: None };
    let dropped = sample(&cfg, &lay, &p, &uncond, &scales, &rope, &o(0.0)).unwrap();
    assert_ne!(dropped.bits, guided.bits);

    let err = sample(&cfg, &lay, &p, &with_negative, &scales, &rope, &o(1.0)).err().unwrap().to_string();
    assert!(err.contains("negative prompt needs guidance"), "{err}");
    let long = SampleCondition::Text {
        kv: noise(5 * ct, 5).iter().map(|&v| v as f32).collect(),
        lens: vec![3, 2],
        negative: Some(vec![0.1; 7 * ct]),
    };
    let err = sample(&cfg, &lay, &p, &long, &scales, &rope, &o(3.0)).err().unwrap().to_string();
    assert!(err.contains("negative prompt's 56 values are not [tokens ≤ 6, 8]"), "{err}");
}

/// Guidance on the hidden states (upstream's negative `cfg_insertion_layer`): at cfg 0 after the last
/// block, the conditional rows carry the unconditional rows' tokens into the head; with the head's
/// AdaLN made the same for every row, that samples the unconditional condition (here a negative
/// prompt) itself. At cfg 2 it differs from guidance on the logits, and places outside the model are
/// refused.
#[test]
fn guidance_on_the_hidden_states_carries_the_mix_into_the_blocks_after() {
    use infinity_trainer::model::sample::{sample, SampleOptions};
    let cfg = tiny(Conditioning::Text);
    let lay = Layout::new(&cfg);
    let mut p: Params<f32> = random_params(&lay, 14).cast();
    let w = lay.range("head_nm.ada_lin.1.weight");
    p.data[w].iter_mut().for_each(|v| *v = 0.0);
    let scales = [(1usize, 1usize), (2, 2), (3, 3)];
    let rope = RopeTable::new(8, &scales, (3, 3));
    let (with_negative, plain) = prompts_with_a_negative(cfg.text_channels, 15);
    let at = |g: f64, places: Vec<i64>| SampleOptions {
        cfg_insertion_layer: places,
        ..SampleOptions::uniform(g, 0.8, 0.0, 7)
    };
    let last = -1;
    let hidden = sample(&cfg, &lay, &p, &with_negative, &scales, &rope, &at(0.0, vec![last])).unwrap();
    let alone = sample(&cfg, &lay, &p, &plain, &scales, &rope, &at(1.0, vec![0])).unwrap();
    assert_eq!(hidden.bits, alone.bits, "cfg 0 after the last block samples the unconditional rows");
    // the conditional rows' own logits at scale 0 are the mix's, not the condition's
    let on_logits = sample(&cfg, &lay, &p, &with_negative, &scales, &rope, &at(2.0, vec![0])).unwrap();
    let on_hidden = sample(&cfg, &lay, &p, &with_negative, &scales, &rope, &at(2.0, vec![last])).unwrap();
    assert_ne!(on_logits.cond_logits[0][..2 * cfg.d], on_hidden.cond_logits[0][..2 * cfg.d]);
    // after the mix both halves carry it: guidance on the logits then adds nothing (cfg·m + (1−cfg)·m)
    let wide = [(1usize, 1usize), (2, 2), (3, 3), (4, 4)];
    let rope_wide = RopeTable::new(8, &wide, (4, 4));
    let both = sample(&cfg, &lay, &p, &with_negative, &wide, &rope_wide, &at(2.0, vec![last, 0])).unwrap();
    let hidden_only = sample(&cfg, &lay, &p, &with_negative, &wide, &rope_wide, &at(2.0, vec![last])).unwrap();
    assert_eq!(both.bits, hidden_only.bits, "the unconditional half is not the mix");
    for (places, why) in [
        (vec![1], "--cfg-insertion-layer 1: expected 0 (the logits) or −1 (after the last of the 2 blocks)"),
        (vec![-2], "--cfg-insertion-layer -2: expected"),
        (vec![], "no place for guidance"),
        (vec![-1, 0, -1], "-1 is given twice"),
    ] {
        let e = sample(&cfg, &lay, &p, &with_negative, &scales, &rope, &at(2.0, places)).err().unwrap().to_string();
        assert!(e.contains(why), "{e}");
    }
}

/// Keyed by condition ([`SampleCondition::keys`]), a condition's samples do not depend on what is drawn
/// beside them: class 3's two samples alone equal its two in a batch of classes 1 and 3, and the same
/// caption at another place in the batch draws the same bits. Keyed by index (no keys), they do not.
#[test]
fn samples_keyed_by_condition_do_not_depend_on_the_batch() {
    use infinity_trainer::model::sample::{sample, SampleCondition, SampleOptions};
    let cfg = tiny(Conditioning::Class { num_classes: 5 });
    let lay = Layout::new(&cfg);
    let p: Params<f32> = random_params(&lay, 12).cast();
    let scales = [(1usize, 1usize), (2, 2), (3, 3)];
    let rope = RopeTable::new(8, &scales, (3, 3));
    let draw = |ids: Vec<usize>, keyed: bool| {
        let cond = SampleCondition::Class(ids).repeat(2, 0);
        let keys = if keyed { cond.keys(0) } else { Vec::new() };
        let o = SampleOptions { keys, ..SampleOptions::uniform(2.0, 1.0, 0.0, 9) };
        sample(&cfg, &lay, &p, &cond, &scales, &rope, &o).unwrap().bits
    };
    let (alone, beside) = (draw(vec![3], true), draw(vec![1, 3], true));
    assert_eq!(alone[..], beside[2..], "class 3 drew other bits beside class 1");
    assert_ne!(beside[0], beside[1], "two copies of one class drew the same bits");
    assert_ne!(draw(vec![3], false)[..], draw(vec![1, 3], false)[2..], "keyed by index the batch matters");
    // `--class 3,3 --n 1` is `--class 3 --n 2`
    let twice = SampleCondition::Class(vec![3, 3]);
    assert_eq!(twice.keys(0), [[3, 0], [3, 1]]);

    let text = tiny(Conditioning::Text);
    let (lay, ct) = (Layout::new(&text), text.text_channels);
    let p: Params<f32> = random_params(&lay, 13).cast();
    let (a, b): (Vec<f32>, Vec<f32>) = (vec![0.25; 3 * ct], vec![-0.5; 2 * ct]);
    let draw = |kv: Vec<f32>, lens: Vec<usize>| {
        let cond = SampleCondition::Text { kv, lens, negative: None };
        let o = SampleOptions { keys: cond.keys(ct), ..SampleOptions::uniform(1.0, 1.0, 0.0, 9) };
        sample(&text, &lay, &p, &cond, &scales, &rope, &o).unwrap().bits
    };
    let (ab, ba) = (draw([a.clone(), b.clone()].concat(), vec![3, 2]), draw([b, a].concat(), vec![2, 3]));
    assert_eq!((&ab[0], &ab[1]), (&ba[1], &ba[0]), "a caption's bits depend on its place in the batch");
}

/// Per-bit top-k 1 (upstream's `top_k=1`) takes each bit's likelier class: no random number decides a
/// bit, so every seed draws the bits greedy sampling does; top-k 2 (a bit's two classes) filters nothing.
#[test]
fn top_k_one_is_greedy_per_bit_and_two_keeps_both_classes() {
    use infinity_trainer::model::sample::{sample, SampleCondition, SampleOptions};
    let cfg = tiny(Conditioning::Class { num_classes: 5 });
    let lay = Layout::new(&cfg);
    let p: Params<f32> = random_params(&lay, 14).cast();
    let scales = [(1usize, 1usize), (2, 2), (3, 3)];
    let rope = RopeTable::new(8, &scales, (3, 3));
    let cond = SampleCondition::Class(vec![1, 4]);
    let draw = |o: SampleOptions| sample(&cfg, &lay, &p, &cond, &scales, &rope, &o).unwrap().bits;
    let greedy = draw(SampleOptions::greedy());
    for seed in [1, 2] {
        assert_eq!(draw(SampleOptions { top_k: 1, ..SampleOptions::uniform(1.0, 1.0, 0.0, seed) }), greedy);
    }
    let two = |seed| draw(SampleOptions { top_k: 2, ..SampleOptions::uniform(1.0, 1.0, 0.0, seed) });
    assert_eq!(two(3), draw(SampleOptions::uniform(1.0, 1.0, 0.0, 3)));
    assert_ne!(two(3), greedy, "top-k 2 filtered");
    // a temperature so low the logits over it overflow is greedy still (not every bit 0)
    assert_eq!(draw(SampleOptions::uniform(1.0, 1e-310, 0.0, 3)), greedy);
    // a tie (every logit 0: the head zeroed) keeps both classes, as upstream's filter by value does
    let mut flat = p.clone();
    for name in ["head.weight", "head.bias"] {
        flat.data[lay.range(name)].iter_mut().for_each(|v| *v = 0.0);
    }
    let o = SampleOptions { top_k: 1, ..SampleOptions::uniform(1.0, 1.0, 0.0, 5) };
    let tied = sample(&cfg, &lay, &flat, &cond, &scales, &rope, &o).unwrap().bits;
    let all: Vec<u8> = tied.concat();
    let ones = all.iter().filter(|&&b| b == 1).count() as f64 / all.len() as f64;
    assert!((0.3..0.7).contains(&ones), "a tie drew {ones:.2} ones at top-k 1");
}
