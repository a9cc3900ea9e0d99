//! The head fused with the bitwise cross-entropy: loss, correct bits, `dh` and the head's weight
//! gradients without materialising the logits, in f32 (head_ce.cu) or on tensor cores with bf16
//! inputs (head_ce_bf16.cu, [`Math::Bf16`]). Twin: `linear::linear_forward` → `bitwise_ce::bitwise_ce`
//! → `linear::linear_backward`.
//!
//! Dims: `N` tokens, `C` width, `d` bits (`2d ≤ 128`).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use super::device::{elementwise, Arg, Buf, BufMut, CudaError, Device};
use super::linear::{bias_grad, weight_grad, Gemm};
use super::ops::act_upload;
use super::Math;

/// Tokens per block, K tile and dh chunk of head_ce.cu.
const TOK: usize = 64;
const KT: usize = 32;
const CW: usize = 64;
/// The kernel keeps a block's logits in shared memory: at most 128 (`d ≤ 64`, upstream uses 32).
pub const MAX_BITS: usize = 64;

/// Device outputs of [`head_bitwise_ce_device`]: every element is written by each call given them.
pub struct HeadCeDevice {
    /// `[N]` mean bit cross-entropy and bits predicted right per token.
    pub token_loss: CudaSlice<f32>,
    pub correct: CudaSlice<u32>,
    /// `[N, 2d]` and `[N, C]` when a gradient was asked for.
    pub dlogits: Option<CudaSlice<f32>>,
    pub dh: Option<CudaSlice<f32>>,
}

impl HeadCeDevice {
    /// Outputs for `n` tokens of width `c` and `d` bits; `grad` adds `dlogits` and `dh`.
    pub fn new(dev: &Device, (n, c, d): (usize, usize, usize), grad: bool) -> Result<HeadCeDevice, CudaError> {
        let s = &dev.stream;
        Ok(HeadCeDevice {
            token_loss: s.alloc_zeros(n)?,
            correct: s.alloc_zeros(n)?,
            dlogits: if grad { Some(s.alloc_zeros(n * 2 * d)?) } else { None },
            dh: if grad { Some(s.alloc_zeros(n * c)?) } else { None },
        })
    }
}

/// Logits per token as head_ce.cu's tiles hold them: 2d rounded up to 32 (its kernel name's `l…`).
fn padded_logits(d: usize) -> usize {
    (2 * d).div_ceil(32) * 32
}

/// Dynamic shared memory of head_ce.cu's kernel for `lp` padded logits (its `work_floats` area, then
/// the dlogits [lp][64 + 4]).
pub fn head_f32_smem_bytes(lp: usize) -> usize {
    let work = ((TOK + lp) * (KT + 4)).max(TOK * (lp + 1)).max(lp * (CW + 4));
    4 * (work + lp * (TOK + 4))
}

/// Whether `Math::Bf16` runs the head on tensor cores (head_ce_bf16.cu) for width `c` and `d` bits
/// ([`crate::tensor_cores::head_takes`]). Only then may `h` be bf16 alone ([`super::device::Act::Bf16`]).
pub fn head_on_tensor_cores(math: Math, c: usize, d: usize) -> bool {
    math == Math::Bf16 && crate::tensor_cores::head_takes(c, d)
}

/// Loss (and `dlogits`, `dh` when `out` has them) of `h [N, C]` through the head `w [2d, C]`, `b [2d]`.
/// Every element of `out` is written. `Math::Bf16` runs head_ce_bf16.cu where it applies
/// ([`head_on_tensor_cores`], h 16-byte aligned), head_ce.cu otherwise; `h` in bf16 alone takes the
/// tensor-core kernel (an error where it does not apply).
#[allow(clippy::too_many_arguments)]
pub fn head_bitwise_ce_device(
    dev: &Device,
    h: &dyn Buf,
    w: &dyn Buf,
    b: &dyn Buf,
    labels: &CudaSlice<u8>,
    weights: &dyn Buf,
    label_smoothing: f32,
    (n, c, d): (usize, usize, usize),
    out: &mut HeadCeDevice,
    math: Math,
) -> Result<(), CudaError> {
    if d > MAX_BITS {
        return Err(CudaError::Driver(format!("head_bitwise_ce: d = {d} > {MAX_BITS} bits is not supported")));
    }
    assert!(
        h.count() >= n * c
            && w.count() >= 2 * d * c
            && b.count() >= 2 * d
            && labels.len() >= n * d
            && weights.count() >= n,
        "head_bitwise_ce: h [N, C], w [2d, C], b [2d], labels [N, d], weights [N]"
    );
    assert!(
        out.token_loss.len() >= n
            && out.dlogits.as_ref().is_none_or(|g| g.len() >= n * 2 * d)
            && out.dh.as_ref().is_none_or(|g| g.len() >= n * c),
        "head_bitwise_ce: outputs made for fewer tokens"
    );
    let s = &dev.stream;
    let grads = match (&mut out.dlogits, &mut out.dh) {
        (Some(g), Some(dh)) => [g.addr_mut(s), dh.addr_mut(s)],
        _ => [0, 0],
    };
    let tensor_cores = head_on_tensor_cores(math, c, d);
    if h.bf16_only() {
        if !tensor_cores {
            return Err(CudaError::Driver(format!(
                "head_bitwise_ce: h in bf16 needs the tensor-core head (bf16 math, d of 8–64, C a multiple of 64; \
                 got {math:?}, d = {d}, C = {c})"
            )));
        }
        let h16 = h.bf16_addr(s).expect("a bf16-only buffer has a bf16 address");
        if !h16.is_multiple_of(16) {
            return Err(CudaError::Driver("head_bitwise_ce: h in bf16 must start 16-byte aligned (cp.async)".into()));
        }
        return head_bf16(dev, (h16, true), (w, b, labels, weights), label_smoothing, (n, c, d), grads, out);
    }
    if tensor_cores && h.addr(s).is_multiple_of(16) {
        return head_bf16(dev, (h.addr(s), false), (w, b, labels, weights), label_smoothing, (n, c, d), grads, out);
    }
    let i = |v: usize| Arg::I32(v as i32);
    let args = [
        Arg::Ptr(h.addr(s)),
        Arg::Ptr(w.addr(s)),
        Arg::Ptr(b.addr(s)),
        Arg::Ptr(labels.device_ptr(s).0),
        Arg::Ptr(weights.addr(s)),
        Arg::F32(label_smoothing),
        i(n),
        i(c),
        i(d),
        Arg::Ptr(out.token_loss.addr_mut(s)),
        Arg::Ptr(out.correct.device_ptr_mut(s).0),
        Arg::Ptr(grads[0]),
        Arg::Ptr(grads[1]),
    ];
    if n == 0 {
        return Ok(()); // (an empty grid is not a launch)
    }
    let lp = padded_logits(d);
    let name = format!("head_bitwise_ce_f32_l{lp}");
    let bytes = head_f32_smem_bytes(lp);
    dev.function_with_shared("head_ce.cu", &name, bytes, 0)?;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(TOK) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: bytes as u32,
    };
    // SAFETY: argument list as declared in head_ce.cu; sizes asserted above; shared memory sized for d.
    unsafe { dev.launch("head_ce.cu", &name, cfg, &args) }
}

/// Dynamic shared memory of head_ce_bf16.cu's kernel for `td` = 2d logits, h in bf16 when `h16`: its
/// STAGES buffers (8, or as many as fit in 64 KiB) of KC = 32 columns of the block's 32 rows of h and
/// of W's logit fragments, which after the logits also hold the logits [32][2d + 4] (f32) and dlogits
/// [32][2d + 8] (bf16).
pub fn head_bf16_smem_bytes(td: usize, h16: bool) -> usize {
    let (kc, tok) = (32, 32);
    let stage = tok * kc * if h16 { 2 } else { 4 } + kc * td * 2;
    let stages = if stage <= 8192 { 8 } else { 65536 / stage };
    (stages * stage).max(tok * (td + 4) * 4 + tok * (td + 8) * 2)
}

/// head_ce_bf16.cu: W packed as bf16 fragments for both products, then 32 tokens per block of 128
/// threads; `h` at address `h_addr`, bf16 when `h16`.
#[allow(clippy::too_many_arguments)]
fn head_bf16(
    dev: &Device,
    (h_addr, h16): (u64, bool),
    (w, b, labels, weights): (&dyn Buf, &dyn Buf, &CudaSlice<u8>, &dyn Buf),
    label_smoothing: f32,
    (n, c, d): (usize, usize, usize),
    [dlogits, dh]: [u64; 2],
    out: &mut HeadCeDevice,
) -> Result<(), CudaError> {
    let (s, td) = (&dev.stream, 2 * d);
    // W's two fragment packings, C·2d/4 pairs of bf16 pairs (8 bytes) each
    // SAFETY: head_weight_bf16 writes every element of both before the head kernel reads them.
    let (mut wl, mut wd) = unsafe { (s.alloc::<u16>(td * c)?, s.alloc::<u16>(td * c)?) };
    let args = [
        Arg::Ptr(w.addr(s)),
        Arg::Ptr(wl.device_ptr_mut(s).0),
        Arg::Ptr(wd.device_ptr_mut(s).0),
        Arg::int(td),
        Arg::int(c),
    ];
    // SAFETY: head_weight_bf16(w [2d, C], wl, wd, 2d, C): one thread per pair (C·2d/4), fresh 16-byte
    // aligned allocations.
    unsafe { dev.launch("head_ce_bf16.cu", "head_weight_bf16", elementwise(td * c / 4), &args) }?;
    let name = format!("head_bitwise_ce_bf16_{}td{td}", if h16 { "h16_" } else { "" });
    let bytes = head_bf16_smem_bytes(td, h16);
    dev.function_with_shared("head_ce_bf16.cu", &name, bytes, 0)?;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(32) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: bytes as u32,
    };
    let args = [
        Arg::Ptr(h_addr),
        Arg::Ptr(wl.device_ptr(s).0),
        Arg::Ptr(wd.device_ptr(s).0),
        Arg::Ptr(b.addr(s)),
        Arg::Ptr(labels.device_ptr(s).0),
        Arg::Ptr(weights.addr(s)),
        Arg::F32(label_smoothing),
        Arg::int(n),
        Arg::int(c),
        Arg::Ptr(out.token_loss.addr_mut(s)),
        Arg::Ptr(out.correct.device_ptr_mut(s).0),
        Arg::Ptr(dlogits),
        Arg::Ptr(dh),
    ];
    // SAFETY: argument list as declared in head_ce_bf16.cu; sizes checked by the caller, C a multiple
    // of 64 and h 16-byte aligned (its cp.async copies).
    unsafe { dev.launch("head_ce_bf16.cu", &name, cfg, &args) }
}

/// Host results: per-token loss and correct bits, and with `grad` `(dh, dW, db)`.
pub struct HeadCeOut {
    pub token_loss: Vec<f32>,
    pub correct_bits: Vec<u32>,
    pub grads: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

/// Host-buffer entry point for the equivalence test and benchmarks; the weight gradients go through
/// cuBLAS from the kernel's `dlogits`. `h_bf16`: h is rounded to bf16 on the device and kept in bf16
/// alone, as the GPU model keeps it for the tensor-core head (the weight gradient then runs in bf16).
#[allow(clippy::too_many_arguments)]
pub fn head_bitwise_ce(
    dev: &Device,
    h: &[f32],
    w: &[f32],
    b: &[f32],
    labels: &[u8],
    weights: &[f32],
    label_smoothing: f32,
    d: usize,
    grad: bool,
    math: Math,
    h_bf16: bool,
) -> Result<HeadCeOut, CudaError> {
    let (n, c) = (weights.len(), w.len() / (2 * d).max(1));
    assert!(h.len() == n * c && w.len() == 2 * d * c, "head_bitwise_ce: h [N, C] and w [2d, C]");
    let s = &dev.stream;
    let (hd, wd, bd) = (act_upload(dev, h, h_bf16)?, s.clone_htod(w)?, s.clone_htod(b)?);
    let (yd, wtd) = (s.clone_htod(labels)?, s.clone_htod(weights)?);
    let mut out = HeadCeDevice::new(dev, (n, c, d), grad)?;
    head_bitwise_ce_device(dev, &hd, &wd, &bd, &yd, &wtd, label_smoothing, (n, c, d), &mut out, math)?;
    let grads = match (&out.dlogits, &out.dh) {
        (Some(g), Some(dh)) => {
            let gemm = Gemm::new(dev, h_bf16)?;
            let (mut dw, mut db) = (s.alloc_zeros::<f32>(2 * d * c)?, s.alloc_zeros::<f32>(2 * d)?);
            weight_grad(&gemm, dev, g, &hd, &mut dw, (n, c, 2 * d))?;
            bias_grad(dev, g, &mut db, n, 2 * d)?;
            Some((s.clone_dtoh(dh)?, s.clone_dtoh(&dw)?, s.clone_dtoh(&db)?))
        }
        _ => None,
    };
    Ok(HeadCeOut { token_loss: s.clone_dtoh(&out.token_loss)?, correct_bits: s.clone_dtoh(&out.correct)?, grads })
}
