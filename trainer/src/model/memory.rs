//! Device memory of a training step on one GPU, counted from what `gpu::forward` and `gpu::backward`
//! allocate: the parameters and their gradients, AdamW's state, the activations the forward keeps for
//! the backward, and the most the forward or backward holds besides at one time. For `infinity train
//! --check` and `infinity model info` (no GPU needed), and checked against the allocator's own
//! high-water mark on the emulated device (trainer/tests/gpu_memory.rs), so a change to what the model
//! keeps or frees that is not counted here fails a test.
//!
//! Dims legend as in `model::forward`: `B` micro-batch, `L` tokens per sample, `N = B·L`, `C` width,
//! `H` heads, `Hf` FFN width, `d` bits, `T` text tokens of the micro-batch, `Ct` text width, `Hp`
//! pool heads. Sizes are bytes; each allocation is rounded up to 256 bytes as the allocator does.

use infinity_kernels::tensor_cores;

use super::ModelConfig;

/// What one GPU rank runs: the micro-batch's shape and the options that change what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuStep {
    /// Samples per micro-batch, tokens per sample (the longest schedule) and text tokens per sample
    /// (the longest caption; 0 for class conditioning).
    pub micro_batch: usize,
    pub tokens: usize,
    pub text_tokens: usize,
    /// Last scale's latent grid `(h, w)` (bitwise self-correction runs on the device from it).
    pub latent_hw: (usize, usize),
    /// bf16 matmuls, attention and head (`run.precision = "bf16"`).
    pub bf16: bool,
    /// `run.recompute`: each block keeps its input only and runs again in the backward.
    pub recompute: bool,
    /// AdamW on this GPU over `1/world` of the parameters (ZeRO-1 over NCCL when `world > 1`), or on
    /// the host (`None`: the host's ZeRO-1, or a GPU without its optimizer, as `model bench` runs).
    pub device_optimizer: Option<usize>,
    /// The weights' moving average next to the optimizer (`optim.ema_decay`).
    pub ema: bool,
}

/// A step's device memory by what holds it (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceMemory {
    /// Parameters (f32; under ZeRO-1 with bf16 matmuls, the shard's and those the kernels read in
    /// f32), their bf16 copy (bf16 matmuls) and gradients (under ZeRO-1 padded to `world` parts).
    pub model: u64,
    /// AdamW's moments and learning-rate groups, and the moving average: this rank's part.
    pub optimizer: u64,
    /// What the forward keeps for the backward: every block's activations (each block's input alone
    /// with recomputation), the head's, the condition's and the micro-batch's inputs.
    pub saved: u64,
    /// The most a step holds besides at one time: a block's gradients (and its activations again when
    /// recomputing), the text path's gradients, or the forward's f32 intermediates.
    pub transient: u64,
}

impl DeviceMemory {
    /// The step's peak: what `infinity train` logs as `gpu_mem_peak_gib` (the allocator's high-water
    /// mark).
    pub fn total(&self) -> u64 {
        self.model + self.optimizer + self.saved + self.transient
    }

    /// The part that grows with the micro-batch.
    pub fn activations(&self) -> u64 {
        self.saved + self.transient
    }
}

/// What a GPU holds besides the allocator's pool: the CUDA context, cuBLAS's workspace, NCCL's buffers
/// and the compiled kernels. A margin to keep (these take some 0.5–1 GiB on an H200), not a
/// measurement.
pub const RUNTIME_MARGIN: u64 = 1 << 30;

/// `g` GiB in bytes (a GPU size given on the command line).
pub fn gib_to_bytes(g: f64) -> u64 {
    (g * (1u64 << 30) as f64) as u64
}

/// Bytes as GiB with two decimals (MiB with one below a GiB).
pub fn gib(bytes: u64) -> String {
    match bytes >= 1 << 30 {
        true => format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64),
        false => format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64),
    }
}

impl std::fmt::Display for DeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = weights and gradients {} + optimizer {} + activations {}",
            gib(self.total()),
            gib(self.model),
            gib(self.optimizer),
            gib(self.activations())
        )
    }
}

/// The largest micro-batch up to `up_to` whose step fits in `budget` bytes, or None when not even one
/// sample does.
pub fn largest_micro_batch(
    cfg: &ModelConfig,
    numel: usize,
    step: &GpuStep,
    budget: u64,
    up_to: usize,
) -> Option<usize> {
    let fits = |b: usize| device_memory(cfg, numel, &GpuStep { micro_batch: b, ..step.clone() }).total() <= budget;
    // the total grows with the micro-batch: bisect
    let (mut lo, mut hi) = (0, up_to);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo > 0).then_some(lo)
}

/// A tally of allocations, each rounded up to the allocator's 256 bytes.
#[derive(Clone, Copy, Default)]
struct Tally(u64);

impl Tally {
    fn add(&mut self, count: usize, bytes_each: usize) -> &mut Self {
        self.0 += ((count.max(1) * bytes_each) as u64).div_ceil(256) * 256;
        self
    }
    fn f32(&mut self, count: usize) -> &mut Self {
        self.add(count, 4)
    }
}

/// The widths (bytes per value) of the buffers whose type follows the precision.
struct Widths {
    /// Matmul-only activations (LayerNorm outputs) and the branches' gradients: bf16 with bf16 GEMMs.
    mat: usize,
    /// The attentions' q, k, v, output and dO: bf16 on the tensor-core kernels.
    attn: usize,
    /// The head's input: bf16 on the tensor-core head.
    head: usize,
}

impl Widths {
    fn of(cfg: &ModelConfig, bf16: bool) -> Widths {
        let w = |tc: bool| if tc { 2 } else { 4 };
        // the kernels' own shape rules (bf16 needs sm_80+, whose shared memory holds every tile)
        let attn_tc = bf16 && tensor_cores::attention_takes(cfg.head_dim());
        let head_tc = bf16 && tensor_cores::head_takes(cfg.embed_dim, cfg.d);
        Widths { mat: w(bf16), attn: w(attn_tc), head: w(head_tc) }
    }
}

/// Device memory of a training step of `cfg` (`numel` parameters) as `step` runs it.
pub fn device_memory(cfg: &ModelConfig, numel: usize, step: &GpuStep) -> DeviceMemory {
    let p = numel as u64;
    let world = step.device_optimizer.unwrap_or(1).max(1) as u64;
    let (part, padded) = (p.div_ceil(world), p.div_ceil(world) * world);
    // the f32 masters (ZeRO-1 with bf16 matmuls: the shard's, and the values the kernels read in
    // f32, `model::f32_reads`), their bf16 copy and the gradients (a shard's padded to `world`
    // equal parts, as what the matmuls read)
    let model = match (world > 1, step.bf16) {
        (false, bf16) => 4 * p + if bf16 { 2 * p } else { 0 } + 4 * p,
        (true, false) => 4 * padded + 4 * padded,
        (true, true) => {
            let reads = super::f32_reads::f32_read_numel(&super::Layout::new(cfg)) as u64;
            4 * part + 4 * reads + 2 * padded + 4 * padded
        }
    };
    let optimizer = match step.device_optimizer {
        None => 0,
        Some(_) => {
            // m and v (f32), the moving average; the group bytes' runs (a run per tensor at most: a
            // start and a byte); a shard's reduced gradients
            let runs = super::Layout::new(cfg).specs.len();
            let groups = Tally::default().add(runs, 8).add(runs, 1).0;
            let shard = if world > 1 { 4 * part } else { 0 };
            8 * part + groups + if step.ema { 4 * part } else { 0 } + shard
        }
    };
    let w = Widths::of(cfg, step.bf16);
    let block = block_saved(cfg, step, &w);
    let kept = if step.recompute { Tally::default().f32(tokens(step) * cfg.embed_dim).0 } else { block };
    let saved = cfg.depth as u64 * kept + head_and_inputs(cfg, step, &w);
    // the backward of the first block it reaches holds all of that and its own gradients, plus
    // (recomputing) the block's activations again
    let mut blocks = block_backward_peak(cfg, step, &w) + held_through_backward(cfg, step);
    if step.recompute {
        blocks += block; // (its input a copy of the kept one)
    }
    let transient = blocks.max(tail_peak(cfg, step)).max(forward_peak(cfg, step));
    DeviceMemory { model, optimizer, saved, transient }
}

fn tokens(step: &GpuStep) -> usize {
    step.micro_batch * step.tokens
}

/// One block's `BlockBufs` with a gradient (gpu::forward::block_forward).
fn block_saved(cfg: &ModelConfig, step: &GpuStep, w: &Widths) -> u64 {
    let (b, n, c, h, hf) = (step.micro_batch, tokens(step), cfg.embed_dim, cfg.num_heads, cfg.ffn_hidden());
    let mut t = Tally::default();
    t.f32(n * c) // x_in
        .f32(b * 6 * c) // gss
        .f32(h) // gain
        .f32(n)
        .f32(n) // ln1 mean, rstd
        .add(n * c, w.mat) // h1
        .f32(n * c)
        .f32(n * c) // q_raw, k_raw
        .f32(n * h)
        .f32(n * h) // q_norm, k_norm
        .add(n * c, w.attn)
        .add(n * c, w.attn)
        .add(n * c, w.attn) // q, k, v
        .add(n * c, w.attn) // attn
        .f32(n * h) // lse
        .f32(n * c) // sa_out
        .f32(n * c) // x_ca (x_sa without text)
        .f32(n)
        .f32(n) // ln2
        .add(n * c, w.mat) // h2
        .add(n * hf, w.mat) // f1 (bf16 with bf16 GEMMs, as the GELU's input under autocast; gelu(f1) is made again)
        .f32(n * c); // f2
    if cfg.has_cross_attention() {
        let nt = b * step.text_tokens;
        t.f32(n * c) // x_sa
            .f32(n)
            .f32(n) // ca_ln
            .add(n * c, w.mat) // ca_in
            .add(n * c, w.attn) // ca_q
            .f32(nt * c)
            .f32(nt * c) // ca_k, ca_v
            .add(n * c, w.attn) // ca_attn
            .f32(n * h); // ca_lse
    }
    t.0
}

/// The head's, the condition's and the micro-batch's buffers (held from the forward to the end of
/// the backward), with the RoPE table and self-correction's latents.
fn head_and_inputs(cfg: &ModelConfig, step: &GpuStep, w: &Widths) -> u64 {
    let (b, l, n, c, d) = (step.micro_batch, step.tokens, tokens(step), cfg.embed_dim, cfg.d);
    let (hh, ww) = step.latent_hw;
    let mut t = Tally::default();
    t.f32(b * c).f32(b * c).f32(b * 6 * c).f32(b * 2 * c); // cond, its SiLU, shared_gss, head_ss
    t.f32(n * c).f32(n).f32(n).add(n * c, w.head); // x_out, the head LN's statistics, h_head
    t.f32(n).f32(n).f32(n * 2 * d).f32(n * c); // token loss, correct bits, dlogits, dh
    t.f32(b * d * hh * ww).add(b, 8).add(2 * 16, 4); // latents, flip keys, the schedule (≤ 16 scales)
    t.f32(b * (l - 1) * d).add(n * d, 1).f32(n).f32(n); // teacher-forcing inputs, labels, weights, scale index
    t.f32(n).f32(n).f32(n).f32(n); // self-attention ranges
    t.f32(l * cfg.head_dim() / 2).f32(l * cfg.head_dim() / 2); // RoPE cos, sin
    if cfg.has_cross_attention() {
        let (nt, ct, hp) = (b * step.text_tokens, cfg.text_channels, cfg.pool_heads());
        t.f32(nt * ct).f32(nt * ct).f32(nt).f32(nt * ct); // the features as uploaded, kv_in, kv_rstd, kv
        t.f32(b * c).f32(nt * c).f32(nt * c).f32(b * c).f32(b * hp); // pool q, k, v, output, lse
        t.f32(nt * c).f32(nt * c).f32(nt * c); // t1, t1g, kv_ca
        t.f32(n).f32(n).f32(nt).f32(nt).f32(b).f32(b).f32(nt).f32(nt); // cross-attention and pool ranges
    }
    t.0
}

/// What the backward holds from its start to its end besides the blocks' own buffers: the condition's
/// gradients, the text context's.
fn held_through_backward(cfg: &ModelConfig, step: &GpuStep) -> u64 {
    let (b, c) = (step.micro_batch, cfg.embed_dim);
    let mut t = Tally::default();
    t.f32(b * c).f32(b * c).f32(b * 2 * c).f32(b * 6 * c); // dhs, dhb, dhead_ss, dshared_gss
    if cfg.has_cross_attention() {
        t.f32(b * step.text_tokens * c); // dkv_ca
    }
    t.0
}

/// The most one block's backward (gpu::backward::block_backward) holds at once, by stage: the
/// residual's gradient (dx_out in the feed-forward's stages, then dx_ca, dx_sa) and the stage's own.
fn block_backward_peak(cfg: &ModelConfig, step: &GpuStep, w: &Widths) -> u64 {
    let (b, n, c, h, hf) = (step.micro_batch, tokens(step), cfg.embed_dim, cfg.num_heads, cfg.ffn_hidden());
    let parts = 6 * Tally::default().f32(b * c).0; // dγ1 … db2, [B, C] each
    let nc = Tally::default().f32(n * c).0; // the residual's gradient, held by every stage
    let mut stages = vec![
        Tally::default().add(n * c, w.mat).f32(n * hf).add(n * hf, w.mat).0, // fc2: df2, dg, gelu(f1) again
        Tally::default().f32(n * hf).add(n * hf, w.mat).0,                   // GELU: dg, df1
        Tally::default().add(n * hf, w.mat).f32(n * c).0,                    // fc1: df1, dh2
        Tally::default().f32(n * c).f32(n * c).0,                            // LayerNorm: dh2, dx_ca
        Tally::default().add(n * c, w.mat).add(n * c, w.attn).0,             // proj: dsa_out, dattn
        Tally::default().add(n * c, w.attn).f32(3 * n * c).f32(n * c).f32(n * h).0, // dattn, dq, dk, dv, delta
        Tally::default().f32(n * c).f32(n * c).f32(n * c).add(3 * n * c, w.mat).f32(n * c).f32(n * h).0, // dq, dk, dv, dqkv, dq_raw, udy
        Tally::default().add(3 * n * c, w.mat).f32(n * c).0, // mat_qkv: dqkv, dh1
        Tally::default().f32(n * c).f32(n * c).0,            // LayerNorm: dh1, dx_in
    ];
    if cfg.has_cross_attention() {
        let (nt, cp) = (b * step.text_tokens, copy(step));
        stages.extend([
            Tally::default().add(n * c, w.attn).add(n * c, cp).0, // ca.proj: dattn, dx_ca's bf16 copy
            Tally::default().add(n * c, w.attn).f32(n * c).f32(nt * c).f32(nt * c).f32(n * h).0, // dattn, dq, dk, dv, delta
            Tally::default().f32(n * c).f32(nt * c).f32(nt * c).f32(nt * 2 * c).0,               // dq, dk, dv into dckv
            Tally::default().f32(n * c).f32(nt * 2 * c).f32(nt * c).add(nt * 2 * c, cp).add(nt * c, cp).0, // mat_kv: dq, dckv, dctx, copies
            Tally::default().f32(n * c).f32(n * c).add(n * c, cp).0, // mat_q: dq, dca_in, dq's copy
            Tally::default().f32(n * c).f32(n * c).f32(n * c).0,     // dca_in, tmp, dx_sa
        ]);
    }
    parts + nc + stages.into_iter().max().unwrap_or(0)
}

/// Bytes per value of the bf16 copy a bf16 GEMM takes of an f32 operand for the call (0 in f32).
fn copy(step: &GpuStep) -> usize {
    if step.bf16 {
        2
    } else {
        0
    }
}

/// The most the backward holds after the blocks, by stage (gpu::backward::backward's tail, in f32
/// throughout: upstream's fp32 island, so its GEMMs take no bf16 copies): the input tokens' gradients,
/// then the text path's (whose `T·Ct` buffers can outgrow a block's with long captions and a short
/// schedule).
fn tail_peak(cfg: &ModelConfig, step: &GpuStep) -> u64 {
    let (b, l, n, c) = (step.micro_batch, step.tokens, tokens(step), cfg.embed_dim);
    let small = Tally::default().f32(b * c).f32(b * c).f32(b * c).0; // dcond, dhs, dhb
                                                                     // dshared_gss, dhead_ss, dx, dwe
    let mut stages = vec![Tally::default().f32(b * 6 * c).f32(b * 2 * c).f32(n * c).f32(b * (l - 1) * c).0];
    if cfg.has_cross_attention() {
        let (nt, ct, hp) = (b * step.text_tokens, cfg.text_channels, cfg.pool_heads());
        let dkv_ca = Tally::default().f32(nt * c).0;
        stages.extend([
            dkv_ca + Tally::default().f32(b * c).f32(b * c).f32(2 * nt * c).f32(b * hp).0, // pool: dpool, dq, dk, dv, delta
            dkv_ca + Tally::default().f32(b * c).f32(2 * nt * c).f32(nt * 2 * c).0,        // dq, dk, dv, dpkv
            dkv_ca + Tally::default().f32(nt * 2 * c).f32(nt * ct).0,                      // mat_kv: dpkv, dkv
            dkv_ca + Tally::default().f32(nt * ct).f32(nt * c).0,                          // ca.2: dkv, dt1g
            Tally::default().f32(nt * ct).f32(nt * c).f32(nt * c).0,                       // GELU: dkv, dt1g, dt1
            Tally::default().f32(nt * ct).f32(nt * c).f32(nt * ct).0,                      // ca.0: dkv, dt1, dkv2
            Tally::default().f32(nt * ct).f32(nt * ct).0,                                  // text_norm: dkv, dkv_in
        ]);
    }
    small + stages.into_iter().max().unwrap_or(0)
}

/// The forward's own peak over what it keeps: the qkv projection's `[N, 3C]`, the FFN's f32 `[N, Hf]`
/// before its bias and GELU (bf16 matmuls), the cross-attention's f32 q before it is kept in bf16 and
/// its `[T, 2C]` keys and values.
fn forward_peak(cfg: &ModelConfig, step: &GpuStep) -> u64 {
    let (n, c, hf) = (tokens(step), cfg.embed_dim, cfg.ffn_hidden());
    let mut stages = vec![Tally::default().f32(3 * n * c).0];
    if step.bf16 {
        stages.push(Tally::default().f32(n * hf).0);
    }
    if cfg.has_cross_attention() {
        let nt = step.micro_batch * step.text_tokens;
        stages.push(Tally::default().f32(n * c).f32(nt * 2 * c).add(nt * c, copy(step)).0);
    }
    stages.into_iter().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Conditioning, Layout, ModelConfig};

    fn layer12() -> (ModelConfig, usize) {
        let cfg = ModelConfig {
            conditioning: Conditioning::Class { num_classes: 1000 },
            ..ModelConfig::preset("layer12").unwrap()
        };
        let n = Layout::new(&cfg).numel;
        (cfg, n)
    }

    fn step(b: usize, bf16: bool, recompute: bool) -> GpuStep {
        GpuStep {
            micro_batch: b,
            tokens: 521,
            text_tokens: 0,
            latent_hw: (16, 16),
            bf16,
            recompute,
            device_optimizer: Some(1),
            ema: false,
        }
    }

    #[test]
    fn activations_grow_with_the_batch_and_recomputation_keeps_less() {
        let (cfg, n) = layer12();
        let (one, two) = (device_memory(&cfg, n, &step(1, true, false)), device_memory(&cfg, n, &step(2, true, false)));
        let ratio = two.activations() as f64 / one.activations() as f64;
        assert!((1.95..=2.05).contains(&ratio), "activations ×{ratio} for twice the batch");
        assert_eq!(one.model, two.model);
        let re = device_memory(&cfg, n, &step(2, true, true));
        assert!(re.activations() * 3 < two.activations(), "recomputation keeps {re:?} against {two:?}");
        let f32 = device_memory(&cfg, n, &step(2, false, false));
        assert!(f32.activations() > two.activations() && f32.model < two.model);
    }

    #[test]
    fn the_largest_micro_batch_is_the_last_that_fits() {
        let (cfg, n) = layer12();
        let s = step(1, true, false);
        let total = |b| device_memory(&cfg, n, &GpuStep { micro_batch: b, ..s.clone() }).total();
        let device = total(37); // exactly 37 fit
        assert_eq!(largest_micro_batch(&cfg, n, &s, device, 1000), Some(37));
        assert_eq!(largest_micro_batch(&cfg, n, &s, device - 1, 1000), Some(36));
        assert_eq!(largest_micro_batch(&cfg, n, &s, device, 8), Some(8));
        assert_eq!(largest_micro_batch(&cfg, n, &s, total(1), 8), Some(1));
        assert_eq!(largest_micro_batch(&cfg, n, &s, total(1) - 1, 8), None);
    }

    #[test]
    fn zero1_divides_the_optimizer_state() {
        let (cfg, n) = layer12();
        let whole = device_memory(&cfg, n, &GpuStep { ema: true, ..step(1, true, false) });
        let shard = device_memory(&cfg, n, &GpuStep { ema: true, device_optimizer: Some(8), ..step(1, true, false) });
        // m, v and the average (12 bytes a parameter) over 8, plus the shard's gradients; the group
        // runs take a few KB
        let want = 12.0 * n as f64 / 8.0 + 4.0 * n as f64 / 8.0;
        assert!((shard.optimizer as f64 / want - 1.0).abs() < 1e-3, "{} against {want}", shard.optimizer);
        let groups = whole.optimizer - 12 * n as u64;
        assert!((256..8192).contains(&groups), "group runs of {groups} bytes");
        let host = device_memory(&cfg, n, &GpuStep { device_optimizer: None, ..step(1, true, false) });
        assert_eq!(host.optimizer, 0);
    }

    #[test]
    fn zero1_with_bf16_matmuls_shards_the_f32_masters() {
        let (cfg, n) = layer12();
        let reads = crate::model::f32_reads::f32_read_numel(&crate::model::Layout::new(&cfg)) as f64;
        let on =
            |world, bf16| device_memory(&cfg, n, &GpuStep { device_optimizer: Some(world), ..step(1, bf16, false) });
        // one GPU: f32 masters, bf16 copy, gradients
        assert_eq!(on(1, true).model, 10 * n as u64);
        // 8 GPUs: bf16 copy and gradients whole (padded), the masters' shard and the f32 reads
        let want = 6.0 * n as f64 + 4.0 * n as f64 / 8.0 + 4.0 * reads;
        assert!((on(8, true).model as f64 / want - 1.0).abs() < 1e-4, "{} against {want}", on(8, true).model);
        // f32 matmuls read every f32 weight: the masters stay whole
        assert!(on(8, false).model >= 8 * n as u64);
    }
}
