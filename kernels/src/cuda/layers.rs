//! The layer kernels (norm.cu, adaln.cu, rope.cu, embedding.cu), twins of `norm`, `adaln`, `rope` and
//! `embedding`. Device entry points (`*_dev`) take device buffers and views ([`Buf`], [`BufMut`]) and
//! are what the GPU model calls; the host-slice wrappers ([`host`], re-exported here) copy in and out
//! for the equivalence tests. Parameter gradients are added (`+=`), input gradients written.

use cudarc::driver::{CudaSlice, DevicePtrMut, LaunchConfig};

use super::device::{addr_or_null, elementwise, per_row, Act, Arg, Buf, BufMut, CudaError, Device};
use super::util::{self, Factor};
use crate::rope::RopeTable;

mod host;
pub use host::*;

/// LayerNorm of `x [N, C]` (affine when `w`, `b` are given): `y`, `mean [N]`, `rstd [N]`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_dev(
    dev: &Device,
    x: &dyn Buf,
    w: Option<&dyn Buf>,
    b: Option<&dyn Buf>,
    y: &mut dyn BufMut,
    mean: &mut dyn BufMut,
    rstd: &mut dyn BufMut,
    (n, c): (usize, usize),
    eps: f32,
) -> Result<(), CudaError> {
    let ya = y.addr_mut(&dev.stream);
    layernorm_launch(dev, "f32", (x, w, b), ya, (mean, rstd), (n, c), eps)
}

/// [`layernorm_dev`] into an activation: f32, or bf16 alone (a bf16 product's input).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_act(
    dev: &Device,
    x: &dyn Buf,
    w: Option<&dyn Buf>,
    b: Option<&dyn Buf>,
    y: &mut Act,
    (mean, rstd): (&mut dyn BufMut, &mut dyn BufMut),
    (n, c): (usize, usize),
    eps: f32,
) -> Result<(), CudaError> {
    let out = if y.bf16_only() { "bf16" } else { "f32" };
    let ya = y.out_addr(&dev.stream);
    layernorm_launch(dev, out, (x, w, b), ya, (mean, rstd), (n, c), eps)
}

/// norm.cu's `layernorm_forward{,4}_{out}` with `y` (in `out`: f32 or bf16) at `y_addr`.
fn layernorm_launch(
    dev: &Device,
    out: &str,
    (x, w, b): (&dyn Buf, Option<&dyn Buf>, Option<&dyn Buf>),
    y_addr: u64,
    (mean, rstd): (&mut dyn BufMut, &mut dyn BufMut),
    (n, c): (usize, usize),
    eps: f32,
) -> Result<(), CudaError> {
    let s = &dev.stream;
    let (xa, wa, ba) = (x.addr(s), addr_or_null(w, s), addr_or_null(b, s));
    let args = [Arg::Ptr(xa), Arg::Ptr(wa), Arg::Ptr(ba), Arg::Ptr(y_addr)];
    let args = [&args[..], &[dev.arg_mut(mean), dev.arg_mut(rstd), Arg::int(n), Arg::int(c), Arg::F32(eps)]].concat();
    let (kernel, cfg) = norm_kernel("layernorm_forward", out, (n, c), &[xa, wa, ba, y_addr], true);
    // SAFETY: layernorm_forward{,4}_{f32,bf16}[_kK](x, w, b, y, mean, rstd, n, c, eps) over [n, c] rows;
    // rows4 checked the alignment.
    unsafe { dev.launch("norm.cu", &kernel, cfg, &args) }
}

/// LayerNorm backward: `dx` written; with `params`, `(dw, db)` added.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_dev(
    dev: &Device,
    dy: &dyn Buf,
    x: &dyn Buf,
    w: Option<&dyn Buf>,
    mean: &dyn Buf,
    rstd: &dyn Buf,
    dx: &mut dyn BufMut,
    params: Option<(&mut dyn BufMut, &mut dyn BufMut)>,
    (n, c): (usize, usize),
) -> Result<(), CudaError> {
    let s = &dev.stream;
    let (dya, xa, wa, dxa) = (dy.addr(s), x.addr(s), addr_or_null(w, s), dx.addr_mut(s));
    let args = [Arg::Ptr(dya), Arg::Ptr(xa), Arg::Ptr(wa), dev.arg(mean), dev.arg(rstd), Arg::Ptr(dxa)];
    let args = [&args[..], &[Arg::int(n), Arg::int(c)]].concat();
    let (kernel, cfg) = norm_kernel("layernorm_backward", "f32", (n, c), &[dya, xa, wa, dxa], true);
    // SAFETY: layernorm_backward{,4}_f32[_kK](dy, x, w, mean, rstd, dx, n, c); rows4 checked the
    // alignment.
    unsafe { dev.launch("norm.cu", &kernel, cfg, &args) }?;
    if let Some((dw, db)) = params {
        let prefix = [dev.arg(dy), dev.arg(x), dev.arg(mean), dev.arg(rstd), Arg::I64(n as i64), Arg::int(c)];
        // SAFETY: layernorm_dw_partials_f32(dy, x, mean, rstd, n, c, partial) over [n, c] buffers.
        unsafe { util::column_reduce(dev, ("norm.cu", "layernorm_dw_partials_f32"), &prefix, (n, c), dw) }?;
        util::col_sum(dev, dy, db, n, c)?;
    }
    Ok(())
}

/// RMSNorm of `x [N, C]`: `y`, `rstd [N]`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_dev(
    dev: &Device,
    x: &dyn Buf,
    w: &dyn Buf,
    y: &mut dyn BufMut,
    rstd: &mut dyn BufMut,
    (n, c): (usize, usize),
    eps: f32,
) -> Result<(), CudaError> {
    let args = [dev.arg(x), dev.arg(w), dev.arg_mut(y), dev.arg_mut(rstd), Arg::int(n), Arg::int(c), Arg::F32(eps)];
    // SAFETY: rmsnorm_forward_f32(x, w, y, rstd, n, c, eps).
    unsafe { dev.launch("norm.cu", "rmsnorm_forward_f32", per_row(n, c), &args) }
}

/// RMSNorm backward: `dx` written, `dw` added.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward_dev(
    dev: &Device,
    dy: &dyn Buf,
    x: &dyn Buf,
    w: &dyn Buf,
    rstd: &dyn Buf,
    dx: &mut dyn BufMut,
    dw: &mut dyn BufMut,
    (n, c): (usize, usize),
) -> Result<(), CudaError> {
    let args = [dev.arg(dy), dev.arg(x), dev.arg(w), dev.arg(rstd), dev.arg_mut(dx), Arg::int(n), Arg::int(c)];
    // SAFETY: rmsnorm_backward_f32(dy, x, w, rstd, dx, n, c).
    unsafe { dev.launch("norm.cu", "rmsnorm_backward_f32", per_row(n, c), &args) }?;
    let prefix = [dev.arg(dy), dev.arg(x), dev.arg(rstd), Arg::I64(n as i64), Arg::int(c)];
    // SAFETY: rmsnorm_dw_partials_f32(dy, x, rstd, n, c, partial) over [n, c] buffers.
    unsafe { util::column_reduce(dev, ("norm.cu", "rmsnorm_dw_partials_f32"), &prefix, (n, c), dw) }
}

/// Shape of an AdaLN op: `B` samples of `L` rows of `C`; per-sample parameters `ps` floats apart.
#[derive(Clone, Copy, Debug)]
pub struct AdaShape {
    pub b: usize,
    pub l: usize,
    pub c: usize,
    pub ps: usize,
}

impl AdaShape {
    fn args(&self) -> [Arg; 4] {
        [Arg::int(self.b), Arg::int(self.l), Arg::int(self.c), Arg::int(self.ps)]
    }
}

/// The per-sample gradients of a modulation `y = x·(1 + scale) + shift`'s scale and shift (added):
/// `Σ_t dy·x` and `Σ_t dy`, `x` the modulation's input (kept, or a LayerNorm's output recomputed:
/// [`Factor::Normalized`]).
pub fn modulate_param_grads(
    dev: &Device,
    dy: &dyn Buf,
    x: Factor,
    (dscale, dshift): (&mut dyn BufMut, &mut dyn BufMut),
    sh: AdaShape,
    grad_stride: usize,
) -> Result<(), CudaError> {
    let gsh = AdaShape { ps: grad_stride, ..sh };
    util::group_dot(dev, dy, x, dscale, gsh)?;
    util::group_dot(dev, dy, Factor::One, dshift, gsh)
}

/// `y = modulate(LayerNorm(x))` (no affine; twin of `adaln::modulated_layernorm_forward`): `y` in f32
/// or bf16 alone, `mean` and `rstd` `[B·L]` written. x̂ is not kept: the backward recomputes it
/// ([`Factor::Normalized`], [`modulated_layernorm_backward_dev`]).
#[allow(clippy::too_many_arguments)]
pub fn modulated_layernorm_dev(
    dev: &Device,
    x: &dyn Buf,
    scale: &dyn Buf,
    shift: &dyn Buf,
    y: &mut Act,
    (mean, rstd): (&mut dyn BufMut, &mut dyn BufMut),
    sh: AdaShape,
    eps: f32,
) -> Result<(), CudaError> {
    let n = sh.b * sh.l;
    assert!(
        x.count() >= n * sh.c && y.count() >= n * sh.c && mean.count() >= n && rstd.count() >= n,
        "modulated_layernorm: x, y [B·L, C], mean, rstd [B·L]"
    );
    let s = &dev.stream;
    let out = if y.bf16_only() { "bf16" } else { "f32" };
    let (xa, sca, sha, ya) = (x.addr(s), scale.addr(s), shift.addr(s), y.out_addr(s));
    let args = [Arg::Ptr(xa), Arg::Ptr(sca), Arg::Ptr(sha), Arg::Ptr(ya), dev.arg_mut(mean), dev.arg_mut(rstd)];
    let args = [&args[..], &[Arg::int(n), Arg::int(sh.l), Arg::int(sh.c), Arg::int(sh.ps), Arg::F32(eps)]].concat();
    let addrs = [xa, sca, sha, ya];
    let (kernel, cfg) = norm_kernel("modulated_layernorm_forward", out, (n, sh.c), &addrs, sh.ps.is_multiple_of(4));
    // SAFETY: modulated_layernorm_forward{,4}_{f32,bf16}[_kK](x, scale, shift, y, mean, rstd, n, l, c, ps,
    // eps) over [n, c] rows; scale and shift hold B rows ps apart; rows4 checked the alignment.
    unsafe { dev.launch("norm.cu", &kernel, cfg, &args) }
}

/// norm.cu's kernel `{stem}4_{out}_kK` with its launch where [`rows4`] applies (and `fits`: what else
/// the caller's operands need, such as 16-byte-aligned modulation rows), else `{stem}_{out}`, a row
/// per block ([`per_row`]).
fn norm_kernel(stem: &str, out: &str, (n, c): (usize, usize), addrs: &[u64], fits: bool) -> (String, LaunchConfig) {
    match rows4(n, c, addrs).filter(|_| fits) {
        Some((k, cfg)) => (format!("{stem}4_{out}_{k}"), cfg),
        None => (format!("{stem}_{out}"), per_row(n, c)),
    }
}

/// norm.cu's row-in-registers kernels (`*4_kK`) for `n` rows of width `c`: the name's `kK` and the
/// launch (a row per block of ⌈C/4/K⌉ threads, whole warps), or None where they do not apply (C zero,
/// not a multiple of 4 or over 16 384, an operand not 16-byte aligned; null ones are): the per_row
/// kernels run then.
pub fn rows4(n: usize, c: usize, addrs: &[u64]) -> Option<(&'static str, LaunchConfig)> {
    let c4 = c / 4;
    if c4 == 0 || !c.is_multiple_of(4) || c4 > 4 * 1024 || addrs.iter().any(|a| !a.is_multiple_of(16)) {
        return None;
    }
    let (k, name) = match c4.div_ceil(1024) {
        1 => (1, "k1"),
        2 => (2, "k2"),
        _ => (4, "k4"),
    };
    let block = (c4.div_ceil(k).div_ceil(32) * 32) as u32;
    Some((name, LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }))
}

/// Backward of `modulate(LayerNorm(x))` (no affine) into `x`, plus a residual's gradient `dres`: `dx`
/// written (twin of `adaln::modulated_layernorm_backward`). The scale's and shift's gradients are
/// [`modulate_param_grads`].
#[allow(clippy::too_many_arguments)]
pub fn modulated_layernorm_backward_dev(
    dev: &Device,
    dy: &dyn Buf,
    x: &dyn Buf,
    scale: &dyn Buf,
    (mean, rstd): (&dyn Buf, &dyn Buf),
    dres: Option<&dyn Buf>,
    dx: &mut dyn BufMut,
    sh: AdaShape,
) -> Result<(), CudaError> {
    let n = sh.b * sh.l;
    assert!(
        dy.count() >= n * sh.c && x.count() >= n * sh.c && dx.count() >= n * sh.c && mean.count() >= n,
        "modulated_layernorm_backward: dy, x, dx [B·L, C], mean, rstd [B·L]"
    );
    let s = &dev.stream;
    let (dya, xa, sca, dra, dxa) = (dy.addr(s), x.addr(s), scale.addr(s), addr_or_null(dres, s), dx.addr_mut(s));
    let args = [Arg::Ptr(dya), Arg::Ptr(xa), Arg::Ptr(sca), dev.arg(mean), dev.arg(rstd), Arg::Ptr(dra)];
    let args = [&args[..], &[Arg::Ptr(dxa), Arg::int(n), Arg::int(sh.l), Arg::int(sh.c), Arg::int(sh.ps)]].concat();
    let addrs = [dya, xa, sca, dra, dxa];
    let (kernel, cfg) = norm_kernel("modulated_layernorm_backward", "f32", (n, sh.c), &addrs, sh.ps.is_multiple_of(4));
    // SAFETY: modulated_layernorm_backward{,4}_f32[_kK](dy, x, scale, mean, rstd, dres, dx, n, l, c, ps)
    // over [n, c] rows; scale holds B rows ps apart; rows4 checked the alignment (dres null: 0).
    unsafe { dev.launch("norm.cu", &kernel, cfg, &args) }
}

/// `out = x + y·gamma` (the residual stream after a gated branch; `out` written).
pub fn gated_residual_dev(
    dev: &Device,
    x: &dyn Buf,
    y: &dyn Buf,
    gamma: &dyn Buf,
    out: &mut dyn BufMut,
    sh: AdaShape,
) -> Result<(), CudaError> {
    let args = [&[dev.arg(x), dev.arg(y), dev.arg(gamma), dev.arg_mut(out)][..], &sh.args()].concat();
    // SAFETY: gated_residual_forward_f32(x, y, gamma, out, b, l, c, ps); all [B, L, C].
    unsafe { dev.launch("adaln.cu", "gated_residual_forward_f32", elementwise(sh.b * sh.l * sh.c), &args) }
}

/// Twin of [`crate::adaln::scale_gates`]: the first `parts` `[C]` gates of each `[stride]` row of `x`
/// scaled in place by `factors [B, parts]`.
pub fn scale_gates_dev(
    dev: &Device,
    x: &mut dyn BufMut,
    factors: &dyn Buf,
    parts: usize,
    c: usize,
    stride: usize,
) -> Result<(), CudaError> {
    let b = factors.count() / parts;
    assert!(parts * c <= stride && x.count() >= b * stride, "scale_gates: x [B, stride], factors [B, parts]");
    let args = [dev.arg_mut(x), dev.arg(factors), Arg::int(b), Arg::int(parts), Arg::int(c), Arg::long(stride)];
    // SAFETY: scale_gates_f32(x, factors, b, parts, c, stride); x holds b rows of stride values.
    unsafe { dev.launch("adaln.cu", "scale_gates_f32", elementwise(b * parts * c), &args) }
}

/// Backward of [`gated_residual_dev`] for the branch: `dy` written, `dgamma` added (rows
/// `grad_stride` apart).
#[allow(clippy::too_many_arguments)]
pub fn gated_residual_backward_dev(
    dev: &Device,
    dres: &dyn Buf,
    y: &dyn Buf,
    gamma: &dyn Buf,
    dy: &mut dyn BufMut,
    dgamma: &mut dyn BufMut,
    sh: AdaShape,
    grad_stride: usize,
) -> Result<(), CudaError> {
    let args = [&[dev.arg(dres), dev.arg(gamma), dev.arg_mut(dy)][..], &sh.args()].concat();
    // SAFETY: gated_residual_backward_f32(dres, gamma, dy, b, l, c, ps).
    unsafe { dev.launch("adaln.cu", "gated_residual_backward_f32", elementwise(sh.b * sh.l * sh.c), &args) }?;
    util::group_dot(dev, dres, Factor::Values(y), dgamma, AdaShape { ps: grad_stride, ..sh })
}

/// [`gated_residual_backward_dev`] with `dy` an activation: f32, or bf16 alone (the branch's output
/// gradient when only its projection's bf16 GEMMs and bias sum read it).
#[allow(clippy::too_many_arguments)]
pub fn gated_residual_backward_act(
    dev: &Device,
    dres: &dyn Buf,
    y: &dyn Buf,
    gamma: &dyn Buf,
    dy: &mut Act,
    dgamma: &mut dyn BufMut,
    sh: AdaShape,
    grad_stride: usize,
) -> Result<(), CudaError> {
    let dy16 = match dy {
        Act::F32(v) => return gated_residual_backward_dev(dev, dres, y, gamma, v, dgamma, sh, grad_stride),
        Act::Bf16(v) => Arg::Ptr(v.device_ptr_mut(&dev.stream).0),
    };
    let args = [&[dev.arg(dres), dev.arg(gamma), dy16][..], &sh.args()].concat();
    // SAFETY: gated_residual_backward_bf16(dres, gamma, dy16, b, l, c, ps); dy16 holds B·L·C values.
    unsafe { dev.launch("adaln.cu", "gated_residual_backward_bf16", elementwise(sh.b * sh.l * sh.c), &args) }?;
    util::group_dot(dev, dres, Factor::Values(y), dgamma, AdaShape { ps: grad_stride, ..sh })
}

/// A RoPE table on the device: `cos`, `sin` `[T, P]`, T = `tokens`.
pub struct DeviceRope {
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
    pub pairs: usize,
    pub tokens: usize,
}

impl DeviceRope {
    pub fn new(dev: &Device, t: &RopeTable) -> Result<DeviceRope, CudaError> {
        let (cos, sin) = (dev.stream.clone_htod(&t.cos)?, dev.stream.clone_htod(&t.sin)?);
        Ok(DeviceRope { cos, sin, pairs: t.pairs, tokens: t.num_tokens() })
    }

    /// Panics, as its CPU twin [`crate::rope::rope_apply`] does, where tokens `offset..offset + l` are
    /// not all in the table (a kernel would read past its end).
    pub fn check(&self, what: &str, l: usize, offset: usize) {
        assert!(
            offset + l <= self.tokens,
            "{what}: the RoPE table has {} tokens, fewer than {}",
            self.tokens,
            offset + l
        );
    }
}

/// RoPE in place on `x [rows, H·2P]` (rows = B·L), starting at table row `offset`; `inverse` rotates
/// back (the backward).
pub fn rope_dev(
    dev: &Device,
    x: &mut dyn BufMut,
    table: &DeviceRope,
    (l, heads): (usize, usize),
    offset: usize,
    inverse: bool,
) -> Result<(), CudaError> {
    table.check("rope_dev", l, offset);
    let rows = x.count() / (heads * 2 * table.pairs);
    let args = [
        dev.arg_mut(x),
        dev.arg(&table.cos),
        dev.arg(&table.sin),
        Arg::int(rows),
        Arg::int(l),
        Arg::int(heads),
        Arg::int(table.pairs),
    ];
    let args = [&args[..], &[Arg::int(offset), Arg::int(inverse as usize)]].concat();
    // SAFETY: rope_apply_f32(x, cos, sin, rows, l, heads, pairs, offset, inverse); x holds rows·H·2P.
    unsafe { dev.launch("rope.cu", "rope_apply_f32", elementwise(rows * heads * table.pairs), &args) }
}

/// `out = table[idx]` rows (`accumulate`: `out += …`).
pub fn embedding_dev(
    dev: &Device,
    table: &dyn Buf,
    idx: &CudaSlice<i32>,
    out: &mut dyn BufMut,
    c: usize,
    accumulate: bool,
) -> Result<(), CudaError> {
    let n = idx.len();
    let args = [
        dev.arg(table),
        Arg::Ptr(idx_addr(dev, idx)),
        dev.arg_mut(out),
        Arg::int(n),
        Arg::int(c),
        Arg::int(accumulate as usize),
    ];
    // SAFETY: embedding_forward_f32(table, idx, out, n, c, accumulate); indices are checked by callers.
    unsafe { dev.launch("embedding.cu", "embedding_forward_f32", elementwise(n * c), &args) }
}

/// The chunked embedding backward's rows per partial sum, and the most table rows it keeps in registers
/// (`SMALL_VOCAB` in embedding.cu).
const CHUNK_ROWS: usize = 4096;
const SMALL_VOCAB: usize = 16;

/// `dtable [V, C] += Σ_{i: idx[i] = v} dout[i]`. A small table over many items (the level embedding:
/// 15 rows, every token of the micro-batch) takes partial sums per chunk of [`CHUNK_ROWS`] items, then
/// sums them in order: a thread per table entry walking all the items would leave the GPU nearly idle
/// (30k threads for 2048 channels, each walking up to 250k tokens).
pub fn embedding_backward_dev(
    dev: &Device,
    dout: &dyn Buf,
    idx: &CudaSlice<i32>,
    dtable: &mut dyn BufMut,
    c: usize,
) -> Result<(), CudaError> {
    let (n, vocab) = (idx.len(), dtable.count() / c);
    let chunks = n.div_ceil(CHUNK_ROWS);
    if vocab <= SMALL_VOCAB && chunks > 1 && chunks <= 65_535 {
        // partial [chunks, vocab, C], every entry written
        let mut partial = dev.stream.alloc_zeros::<f32>(chunks * vocab * c)?;
        let block = 128;
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(block) as u32, chunks as u32, 1),
            block_dim: (block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (idx, ints) = (Arg::Ptr(idx_addr(dev, idx)), [Arg::int(n), Arg::int(vocab), Arg::int(c)]);
        let args = [dev.arg(dout), idx, dev.arg_mut(&mut partial), ints[0], ints[1], ints[2], Arg::int(CHUNK_ROWS)];
        // SAFETY: embedding_backward_partial_f32(dout, idx, partial, n, vocab, c, chunk_rows), partial
        // [chunks, vocab, c] with chunks = ⌈n / chunk_rows⌉ (the grid's y) and vocab ≤ SMALL_VOCAB.
        unsafe { dev.launch("embedding.cu", "embedding_backward_partial_f32", cfg, &args)? };
        let args = [dev.arg(&partial), dev.arg_mut(dtable), Arg::int(chunks), ints[1], ints[2]];
        // SAFETY: embedding_backward_reduce_f32(partial, dtable, chunks, vocab, c).
        return unsafe { dev.launch("embedding.cu", "embedding_backward_reduce_f32", elementwise(vocab * c), &args) };
    }
    let args =
        [dev.arg(dout), Arg::Ptr(idx_addr(dev, idx)), dev.arg_mut(dtable), Arg::int(n), Arg::int(vocab), Arg::int(c)];
    // SAFETY: embedding_backward_f32(dout, idx, dtable, n, vocab, c).
    unsafe { dev.launch("embedding.cu", "embedding_backward_f32", elementwise(vocab * c), &args) }
}

fn idx_addr(dev: &Device, idx: &CudaSlice<i32>) -> u64 {
    use cudarc::driver::DevicePtr;
    idx.device_ptr(&dev.stream).0
}
