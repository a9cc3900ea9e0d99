//! Self-attention's heads from its qkv projection on the device (twin of [`crate::qkv`], qkv.cu): one
//! pass over `qkv [N, 3C]` writes q, k and v in the precision the attention kernels read (bf16 alone
//! for the tensor-core kernels, [`Act::Bf16`]), and q_raw, k_raw and the norms for the backward; the
//! backward goes from the attention's gradients to `dqkv` in one pass too.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::attention::per_warp;
use super::device::{Act, Arg, Buf, CudaError, Device};
use super::layers::DeviceRope;
use super::ops::{act_to_host, act_zeros};
use crate::qkv::QkvHeadsOut;

/// The forward's outputs (`[N, C]` and `[N, H]`).
pub struct QkvHeadsDev {
    pub q_raw: CudaSlice<f32>,
    pub k_raw: CudaSlice<f32>,
    pub q: Act,
    pub k: Act,
    pub v: Act,
    pub q_norm: CudaSlice<f32>,
    pub k_norm: CudaSlice<f32>,
}

/// Largest head dim of qkv.cu (4 rotated pairs per lane).
pub const MAX_HEAD_DIM: usize = 256;

/// The heads of `qkv [N, 3C]` with biases `[C]`, `gain [H]` and the RoPE table (head dim 2·pairs,
/// `l` tokens per sample); q, k and v in bf16 alone when `bf16`.
#[allow(clippy::too_many_arguments)]
pub fn qkv_heads_dev(
    dev: &Device,
    qkv: &dyn Buf,
    q_bias: &dyn Buf,
    v_bias: &dyn Buf,
    gain: &dyn Buf,
    rope: &DeviceRope,
    (l, heads): (usize, usize),
    bf16: bool,
) -> Result<QkvHeadsDev, CudaError> {
    let c = 2 * rope.pairs;
    let w = heads * c;
    rope.check("qkv_heads", l, 0);
    if c > MAX_HEAD_DIM {
        return Err(CudaError::Driver(format!("qkv_heads: head dim {c} > {MAX_HEAD_DIM} is not supported by qkv.cu")));
    }
    assert!(
        qkv.count().is_multiple_of(3 * w) && q_bias.count() == w && v_bias.count() == w && gain.count() == heads,
        "qkv_heads: qkv [N, 3·H·c], biases [H·c], gain [H]"
    );
    let rows = qkv.count() / (3 * w);
    let s = &dev.stream;
    // SAFETY (allocations): the kernel writes every element of each output before anything reads it.
    let f32_buf = |n: usize| unsafe { s.alloc::<f32>(n.max(1)) };
    let act = |n: usize| -> Result<Act, CudaError> {
        Ok(if bf16 { Act::Bf16(unsafe { s.alloc::<u16>(n.max(1)) }?) } else { Act::F32(f32_buf(n)?) })
    };
    let mut o = QkvHeadsDev {
        q_raw: f32_buf(rows * w)?,
        k_raw: f32_buf(rows * w)?,
        q: act(rows * w)?,
        k: act(rows * w)?,
        v: act(rows * w)?,
        q_norm: f32_buf(rows * heads)?,
        k_norm: f32_buf(rows * heads)?,
    };
    let ins = [dev.arg(qkv), dev.arg(q_bias), dev.arg(v_bias), dev.arg(gain), dev.arg(&rope.cos), dev.arg(&rope.sin)];
    let raw = [Arg::Ptr(o.q_raw.device_ptr_mut(s).0), Arg::Ptr(o.k_raw.device_ptr_mut(s).0)];
    let qkv_out = [Arg::Ptr(o.q.out_addr(s)), Arg::Ptr(o.k.out_addr(s)), Arg::Ptr(o.v.out_addr(s))];
    let norms = [Arg::Ptr(o.q_norm.device_ptr_mut(s).0), Arg::Ptr(o.k_norm.device_ptr_mut(s).0)];
    let shape = [Arg::long(rows), Arg::int(l), Arg::int(heads), Arg::int(c)];
    let args = [&ins[..], &raw, &qkv_out, &norms, &shape].concat();
    let name = if bf16 { "qkv_heads_forward_bf16" } else { "qkv_heads_forward_f32" };
    // SAFETY: qkv_heads_forward_*(qkv, q_bias, v_bias, gain, cos, sin, q_raw, k_raw, q, k, v, q_norm,
    // k_norm, rows, l, heads, c); every output holds rows·H·c (norms rows·H) values; the table has the
    // rows' tokens (the caller's schedule).
    unsafe { dev.launch("qkv.cu", name, per_warp(rows * heads), &args) }?;
    Ok(o)
}

/// The backward of [`qkv_heads_dev`]: `dqkv [N, 3C]` (bf16 alone when it is [`Act::Bf16`]: the
/// projection's gradient GEMMs read nothing else) and `dq_raw [N, C]` (f32, for the q bias's gradient)
/// from the attention's `dq`, `dk`, `dv`; `udy [N, H]` = Σ (q_raw/n)·dŷ per (row, head), to be summed
/// over rows into the gain's gradient. `fwd` is the forward's output.
#[allow(clippy::too_many_arguments)]
pub fn qkv_heads_backward_dev(
    dev: &Device,
    (dq, dk, dv): (&dyn Buf, &dyn Buf, &dyn Buf),
    fwd: (&CudaSlice<f32>, &CudaSlice<f32>, &CudaSlice<f32>, &CudaSlice<f32>),
    gain: &dyn Buf,
    rope: &DeviceRope,
    (l, heads): (usize, usize),
    dqkv: &mut Act,
    dq_raw: &mut CudaSlice<f32>,
    udy: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (q_raw, k_raw, q_norm, k_norm) = fwd;
    let (c, s) = (2 * rope.pairs, &dev.stream);
    rope.check("qkv_heads_backward", l, 0);
    let n = q_raw.len();
    let rows = n / (heads * c);
    assert!(
        [dq.count(), dk.count(), dv.count(), k_raw.len(), dq_raw.len()].iter().all(|&x| x == n)
            && dqkv.count() == 3 * n
            && [q_norm.len(), k_norm.len(), udy.len()].iter().all(|&x| x == rows * heads),
        "qkv_heads_backward: dq, dk, dv, q_raw, k_raw, dq_raw [N, H·c], dqkv [N, 3·H·c], norms, udy [N, H]"
    );
    let ins = [dev.arg(dq), dev.arg(dk), dev.arg(dv)];
    let saved = [q_raw, k_raw, q_norm, k_norm].map(|b| Arg::Ptr(b.device_ptr(s).0));
    let table = [dev.arg(gain), dev.arg(&rope.cos), dev.arg(&rope.sin)];
    let outs = [Arg::Ptr(dqkv.out_addr(s)), Arg::Ptr(dq_raw.device_ptr_mut(s).0), Arg::Ptr(udy.device_ptr_mut(s).0)];
    let shape = [Arg::long(rows), Arg::int(l), Arg::int(heads), Arg::int(c)];
    let args = [&ins[..], &saved, &table, &outs, &shape].concat();
    let name = if matches!(dqkv, Act::Bf16(_)) { "qkv_heads_backward_bf16" } else { "qkv_heads_backward_f32" };
    // SAFETY: qkv_heads_backward_*(dq, dk, dv, q_raw, k_raw, q_norm, k_norm, gain, cos, sin, dqkv,
    // dq_raw, udy, rows, l, heads, c); sizes checked above; the table has the rows' tokens.
    unsafe { dev.launch("qkv.cu", name, per_warp(rows * heads), &args) }
}

/// Host-slice [`qkv_heads_dev`] for the equivalence test; bf16 outputs come back widened to f32.
#[allow(clippy::too_many_arguments)]
pub fn qkv_heads(
    dev: &Device,
    qkv: &[f32],
    q_bias: &[f32],
    v_bias: &[f32],
    gain: &[f32],
    table: &crate::rope::RopeTable,
    (l, heads): (usize, usize),
    bf16: bool,
) -> Result<QkvHeadsOut<f32>, CudaError> {
    let s = &dev.stream;
    let rope = DeviceRope::new(dev, table)?;
    let (x, qb, vb, g) = (s.clone_htod(qkv)?, s.clone_htod(q_bias)?, s.clone_htod(v_bias)?, s.clone_htod(gain)?);
    let o = qkv_heads_dev(dev, &x, &qb, &vb, &g, &rope, (l, heads), bf16)?;
    let host = |a: &Act| act_to_host(dev, a);
    Ok(QkvHeadsOut {
        q_raw: s.clone_dtoh(&o.q_raw)?,
        k_raw: s.clone_dtoh(&o.k_raw)?,
        v: host(&o.v)?,
        q: host(&o.q)?,
        k: host(&o.k)?,
        q_norm: s.clone_dtoh(&o.q_norm)?,
        k_norm: s.clone_dtoh(&o.k_norm)?,
    })
}

/// Host-slice [`qkv_heads_backward_dev`] for the equivalence test: `(dqkv, dq_raw, udy)`, a bf16 dqkv
/// widened to f32.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn qkv_heads_backward(
    dev: &Device,
    (dq, dk, dv): (&[f32], &[f32], &[f32]),
    fwd: &QkvHeadsOut<f32>,
    gain: &[f32],
    table: &crate::rope::RopeTable,
    (l, heads): (usize, usize),
    bf16: bool,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), CudaError> {
    let s = &dev.stream;
    let rope = DeviceRope::new(dev, table)?;
    let up = |x: &[f32]| s.clone_htod(x);
    let (dq, dk, dv, g) = (up(dq)?, up(dk)?, up(dv)?, up(gain)?);
    let saved = (up(&fwd.q_raw)?, up(&fwd.k_raw)?, up(&fwd.q_norm)?, up(&fwd.k_norm)?);
    let n = fwd.q_raw.len();
    let mut dqkv = act_zeros(dev, 3 * n, bf16)?;
    let (mut dq_raw, mut udy) = (s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(fwd.q_norm.len())?);
    let fwd = (&saved.0, &saved.1, &saved.2, &saved.3);
    qkv_heads_backward_dev(dev, (&dq, &dk, &dv), fwd, &g, &rope, (l, heads), &mut dqkv, &mut dq_raw, &mut udy)?;
    Ok((act_to_host(dev, &dqkv)?, s.clone_dtoh(&dq_raw)?, s.clone_dtoh(&udy)?))
}
