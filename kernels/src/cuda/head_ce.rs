//! The head fused with the bitwise cross-entropy: loss, correct bits, `dh` and the head's weight
//! gradients without materialising the logits, in f32 (head_ce.cu) or on tensor cores with bf16
//! inputs (head_ce_bf16.cu, [`Math::Bf16`]). Twin: `linear::linear_forward` → `bitwise_ce::bitwise_ce`
//! → `linear::linear_backward`.
//!
//! Dims: `N` tokens, `C` width, `d` bits (`2d ≤ 128`).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;

use super::device::{elementwise, Arg, Buf, BufMut, CudaError, Device};
use super::linear::{bias_grad, weight_grad, Gemm};
use super::Math;

/// Tokens per block and K tile of head_ce.cu.
const TOK: usize = 8;
const KT: usize = 64;
/// The kernel keeps a block's logits in shared memory: at most 128 (`d ≤ 64`, upstream uses 32).
pub const MAX_BITS: usize = 64;

/// Device outputs of [`head_bitwise_ce_device`], allocated once and overwritten by every call.
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

fn launch_config(n: usize, d: usize) -> LaunchConfig {
    let floats = 2 * d * (KT + 1) + TOK * KT + 2 * TOK * 2 * d;
    LaunchConfig {
        grid_dim: (n.div_ceil(TOK) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: (floats * 4) as u32,
    }
}

/// Loss (and `dlogits`, `dh` when `out` has them) of `h [N, C]` through the head `w [2d, C]`, `b [2d]`.
/// Every element of `out` is written. `Math::Bf16` runs head_ce_bf16.cu where it applies (d of 8, 16, 32
/// or 64, C a multiple of 64, h 16-byte aligned), head_ce.cu otherwise.
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
    if math == Math::Bf16 && [8, 16, 32, 64].contains(&d) && c % 64 == 0 && h.addr(s).is_multiple_of(16) {
        return head_bf16(dev, (h, w, b, labels, weights), label_smoothing, (n, c, d), grads, out);
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
    // SAFETY: argument list as declared in head_ce.cu; sizes asserted above; shared memory sized for d.
    unsafe { dev.launch("head_ce.cu", "head_bitwise_ce_f32", launch_config(n, d), &args) }
}

/// head_ce_bf16.cu: W packed as bf16 fragments for both products, then 32 tokens per block of 128
/// threads.
fn head_bf16(
    dev: &Device,
    (h, w, b, labels, weights): (&dyn Buf, &dyn Buf, &dyn Buf, &CudaSlice<u8>, &dyn Buf),
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
    // SAFETY: head_weight_bf16(w [2d, C], wl, wd, 2d, C): one thread per pair (C·2d/4), fresh 8-byte
    // aligned allocations.
    unsafe { dev.launch("head_ce_bf16.cu", "head_weight_bf16", elementwise(td * c / 4), &args) }?;
    let name = format!("head_bitwise_ce_bf16_td{td}");
    let bytes = 4 * 32 * (td + 4) * 4 + 32 * (td + 8) * 2;
    let f = dev.function("head_ce_bf16.cu", &name)?;
    if bytes > 48 * 1024 {
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)?;
    }
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(32) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: bytes as u32,
    };
    let args = [
        Arg::Ptr(h.addr(s)),
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
    // of 64 and h 16-byte aligned (its float2 loads).
    unsafe { dev.launch("head_ce_bf16.cu", &name, cfg, &args) }
}

/// Host results: per-token loss and correct bits, and with `grad` `(dh, dW, db)`.
pub struct HeadCeOut {
    pub token_loss: Vec<f32>,
    pub correct_bits: Vec<u32>,
    pub grads: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

/// Host-buffer entry point for the equivalence test and benchmarks; the weight gradients go through
/// cuBLAS from the kernel's `dlogits`.
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
) -> Result<HeadCeOut, CudaError> {
    let (n, c) = (weights.len(), w.len() / (2 * d).max(1));
    assert!(h.len() == n * c && w.len() == 2 * d * c, "head_bitwise_ce: h [N, C] and w [2d, C]");
    let s = &dev.stream;
    let (hd, wd, bd) = (s.clone_htod(h)?, s.clone_htod(w)?, s.clone_htod(b)?);
    let (yd, wtd) = (s.clone_htod(labels)?, s.clone_htod(weights)?);
    let mut out = HeadCeDevice::new(dev, (n, c, d), grad)?;
    head_bitwise_ce_device(dev, &hd, &wd, &bd, &yd, &wtd, label_smoothing, (n, c, d), &mut out, math)?;
    let grads = match (&out.dlogits, &out.dh) {
        (Some(g), Some(dh)) => {
            let gemm = Gemm::new(dev, false)?;
            let (mut dw, mut db) = (s.alloc_zeros::<f32>(2 * d * c)?, s.alloc_zeros::<f32>(2 * d)?);
            weight_grad(&gemm, dev, g, &hd, &mut dw, (n, c, 2 * d))?;
            bias_grad(dev, g, &mut db, n, 2 * d)?;
            Some((s.clone_dtoh(dh)?, s.clone_dtoh(&dw)?, s.clone_dtoh(&db)?))
        }
        _ => None,
    };
    Ok(HeadCeOut { token_loss: s.clone_dtoh(&out.token_loss)?, correct_bits: s.clone_dtoh(&out.correct)?, grads })
}
