//! Attention over segments on the device (twin of `attention`), flash-style: the host expands the
//! segments into a key range per query row and a query range per key row once per schedule
//! ([`AttnRanges`]); forward, dq and dk/dv kernels stream tiles through shared memory, in f32 on CUDA
//! cores or on tensor cores with bf16 inputs (attention_bf16.cu), see [`Math`]. The f32 kernels are
//! register-tiled (attention_tiled.cu) for head dims 32, 64 and 128 on sm_80+, and attention.cu's
//! (any head dim up to 256, any GPU) otherwise.
//! Also the cosine-attention normalisation of q and k (twin of `normalize_heads_*`). Host-buffer
//! wrappers for the equivalence tests and benches are in [`host`] (re-exported here).

use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};

use super::device::{Act, Arg, Buf, BufMut, CudaError, Device};
use super::linear::bf16_of;
use super::Math;
use crate::attention::{AttnDims, Segment};

mod host;
pub use host::*;

/// Largest head dim of attention.cu (the `_wide_f32` kernels: a lane owns 8 dims).
pub const MAX_HEAD_DIM: usize = 256;

/// Static shared memory of the attention kernels (`union_range`'s 33 int2, rounded up): dynamic shared
/// memory beyond 48 KiB minus this needs the opt-in.
const STATIC_SMEM: usize = 320;

/// Dynamic shared memory of attention_bf16.cu's (forward, dq, dk/dv) kernels for head dim `c`.
fn bf16_smem(c: usize) -> [usize; 3] {
    let rows = 64 * (c + 8) * 2; // a row-major bf16 tile [64][c + 8]
                                 // two stages of K, V (Q in the second stage's K slot); Q, dO and two stages of K, V; K, V, two
                                 // stages of Q, dO and of four f32/i32 values per query
    [4 * rows, 6 * rows, 6 * rows + 2 * 4 * 64 * 4]
}

/// Dynamic shared memory of attention_tiled.cu's (forward, dq, dk/dv) kernels for head dim `c`.
fn tiled_smem(c: usize) -> [usize; 3] {
    let row = (c + 4) * 4; // an f32 row padded to c + 4
                           // Q and two stages of K, V (32 rows); Q, dO and two stages of K, V; K, V, two stages of Q, dO and
                           // of four f32/i32 values per query
    [(64 + 4 * 32) * row, (2 * 64 + 4 * 32) * row, (2 * 64 + 4 * 32) * row + 2 * 4 * 32 * 4]
}

/// Whether the device can run a family of 64-row attention kernels with `smem` bytes of dynamic
/// shared memory: sm_80 or later (cp.async) and the shared memory within the opt-in limit.
fn tile_kernels_fit(dev: &Device, smem: [usize; 3]) -> Result<bool, CudaError> {
    let optin = dev.ctx.attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
    Ok(dev.compute >= (8, 0) && smem.iter().all(|&b| b + STATIC_SMEM <= optin))
}

/// `Some(c)` when attention_tiled.cu's f32 kernels for head dim `c` (32, 64 or 128) can run on `dev`
/// with buffers at `addrs` (16-byte aligned: they are copied and read 16 bytes at a time) and a
/// positive logit scale (they mask scores with −∞ before scaling).
fn tiled_dim(dev: &Device, dims: AttnDims, math: Math, addrs: &[u64]) -> Result<Option<usize>, CudaError> {
    let c = dims.head_dim;
    let usable = math == Math::F32 && !dev.untiled_attention() && dims.scale > 0.0 && dims.scale.is_finite();
    if !usable || ![32, 64, 128].contains(&c) || addrs.iter().any(|a| a % 16 != 0) {
        return Ok(None);
    }
    Ok(tile_kernels_fit(dev, tiled_smem(c))?.then_some(c))
}

/// `Some(c)` when attention_bf16.cu's kernels (head dims 32, 64 and 128, sm_80 or later with the shared
/// memory, 16-byte-aligned buffers) for head dim `c` can run on `dev` with buffers at `addrs`.
fn tensor_core_dim(dev: &Device, dims: AttnDims, math: Math, addrs: &[u64]) -> Result<Option<usize>, CudaError> {
    let c = dims.head_dim;
    if math == Math::F32 || !crate::tensor_cores::attention_takes(c) || addrs.iter().any(|a| a % 16 != 0) {
        return Ok(None);
    }
    Ok(tile_kernels_fit(dev, bf16_smem(c))?.then_some(c))
}

/// Whether `math` runs on attention_bf16.cu's tensor-core kernels for `dims` on `dev` (given
/// 16-byte-aligned buffers, as every allocation is).
pub fn runs_on_tensor_cores(dev: &Device, dims: AttnDims, math: Math) -> Result<bool, CudaError> {
    Ok(tensor_core_dim(dev, dims, math, &[])?.is_some())
}

/// 128 threads over blocks of 64 rows (attention_bf16.cu and attention_tiled.cu), `bytes` of shared
/// memory (opted into above 48 KiB) for kernel `name` of `file`.
fn tile_config(
    dev: &Device,
    (file, name): (&'static str, &str),
    rows: usize,
    heads: usize,
    bytes: usize,
) -> Result<LaunchConfig, CudaError> {
    dev.function_with_shared(file, name, bytes, STATIC_SMEM)?;
    Ok(LaunchConfig {
        grid_dim: (rows.div_ceil(64).max(1) as u32, heads as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: bytes as u32,
    })
}

/// One instantiation of attention.cu's kernels: name suffix and tiles (query rows per forward/dq
/// block, key rows per tile; key rows per dk/dv block, query rows per tile).
struct Tiles {
    suffix: &'static str,
    fq: usize,
    fk: usize,
    bk: usize,
    bq: usize,
}

/// Head dims ≤ 128 (4 per lane) or ≤ 256 (8 per lane, fewer rows per block to bound registers; the
/// attention pool of the widest presets needs it).
fn tiles(dims: AttnDims) -> Result<Tiles, CudaError> {
    match dims.head_dim {
        0..=128 => Ok(Tiles { suffix: "f32", fq: 16, fk: 32, bk: 32, bq: 32 }),
        129..=MAX_HEAD_DIM => Ok(Tiles { suffix: "wide_f32", fq: 8, fk: 32, bk: 16, bq: 32 }),
        c => {
            Err(CudaError::Driver(format!("attention: head dim {c} > {MAX_HEAD_DIM} is not supported by attention.cu")))
        }
    }
}

/// Per-row ranges of a segment set on the device: query row r sees keys `k0[r] .. k0[r] + nk[r]`, key
/// row j is seen by queries `q0[j] .. q0[j] + nq[j]`.
pub struct AttnRanges {
    pub nq: usize,
    pub nkeys: usize,
    k0: CudaSlice<i32>,
    nk: CudaSlice<i32>,
    q0: CudaSlice<i32>,
    nqk: CudaSlice<i32>,
}

/// The host side of [`AttnRanges`]: `(k0, nk)` per query row and `(q0, nq)` per key row. Each query
/// row must be in one segment and the queries of each key contiguous (true of block-causal
/// self-attention, cross-attention and the pool).
pub fn expand_segments(segs: &[Segment], nq: usize, nkeys: usize) -> Result<[Vec<i32>; 4], String> {
    let (mut k0, mut nk) = (vec![0i32; nq], vec![0i32; nq]);
    let (mut lo, mut hi, mut count) = (vec![usize::MAX; nkeys], vec![0usize; nkeys], vec![0usize; nkeys]);
    for s in segs {
        if s.q0 + s.nq > nq || s.k0 + s.nk > nkeys {
            return Err(format!("segment {s:?} exceeds {nq} query rows or {nkeys} key rows"));
        }
        for r in s.q0..s.q0 + s.nq {
            if nk[r] != 0 {
                return Err(format!("query row {r} belongs to two segments"));
            }
            (k0[r], nk[r]) = (s.k0 as i32, s.nk as i32);
        }
        for j in s.k0..s.k0 + s.nk {
            lo[j] = lo[j].min(s.q0);
            hi[j] = hi[j].max(s.q0 + s.nq);
            count[j] += s.nq;
        }
    }
    let mut q0 = vec![0i32; nkeys];
    let mut nqk = vec![0i32; nkeys];
    for j in 0..nkeys {
        if count[j] == 0 {
            continue;
        }
        if hi[j] - lo[j] != count[j] {
            return Err(format!("the queries of key row {j} are not contiguous"));
        }
        (q0[j], nqk[j]) = (lo[j] as i32, count[j] as i32);
    }
    Ok([k0, nk, q0, nqk])
}

impl AttnRanges {
    pub fn new(dev: &Device, segs: &[Segment], nq: usize, nkeys: usize) -> Result<AttnRanges, CudaError> {
        let [k0, nk, q0, nqk] = expand_segments(segs, nq, nkeys).map_err(CudaError::Driver)?;
        let s = &dev.stream;
        Ok(AttnRanges {
            nq,
            nkeys,
            k0: s.clone_htod(&k0)?,
            nk: s.clone_htod(&nk)?,
            q0: s.clone_htod(&q0)?,
            nqk: s.clone_htod(&nqk)?,
        })
    }
}

/// 128 threads, `smem_rows` rows of shared memory (padded to c + 1) for attention.cu's kernel `name`;
/// opts the kernel into more than 48 KiB of shared memory when a large head dim needs it.
fn config(
    dev: &Device,
    name: &str,
    rows: usize,
    blocks: usize,
    dims: AttnDims,
    smem_rows: usize,
) -> Result<LaunchConfig, CudaError> {
    let bytes = (smem_rows * (dims.head_dim + 1) * 4) as u32;
    dev.function_with_shared("attention.cu", name, bytes as usize, STATIC_SMEM)?;
    Ok(LaunchConfig {
        grid_dim: (rows.div_ceil(blocks).max(1) as u32, dims.heads as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: bytes,
    })
}

/// `o [Nq, H·c]` and `lse [Nq, H]` of `q [Nq, H·c]` against `k, v [Nk, H·c]`; `o` in f32, or in bf16
/// alone (the tensor-core kernels only: an error otherwise) when only bf16 products and the backward
/// read it.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_dev(
    dev: &Device,
    q: &dyn Buf,
    k: &dyn Buf,
    v: &dyn Buf,
    o: &mut Act,
    lse: &mut dyn BufMut,
    r: &AttnRanges,
    dims: AttnDims,
    math: Math,
) -> Result<(), CudaError> {
    let w = dims.heads * dims.head_dim;
    assert!(
        q.count() >= r.nq * w && o.count() >= r.nq * w && k.count() >= r.nkeys * w && v.count() >= r.nkeys * w,
        "attention: q, o [Nq, H·c], k, v [Nk, H·c]"
    );
    let s = &dev.stream;
    let p = Arg::Ptr;
    let (o16, oa, la) = (o.bf16_only(), o.out_addr(s), lse.addr_mut(s));
    let (k0, nk) = (p(ranges_addr(dev, &r.k0)), p(ranges_addr(dev, &r.nk)));
    if let Some(c) = tensor_core_dim(dev, dims, math, &[oa])? {
        // q, k, v rounded to bf16 once: the kernel streams them as bf16 tiles (the copies are freed in
        // stream order after the launch)
        let ((q16, _q), (k16, _k), (v16, _v)) = (bf16_of(dev, q)?, bf16_of(dev, k)?, bf16_of(dev, v)?);
        tile_aligned(&[q16, k16, v16]);
        let name = format!("attention_forward_bf16_{}c{c}", if o16 { "o16_" } else { "" });
        let cfg = tile_config(dev, ("attention_bf16.cu", &name), r.nq, dims.heads, bf16_smem(c)[0])?;
        let args = [p(q16), p(k16), p(v16), p(oa), p(la), k0, nk];
        // SAFETY: argument list as declared in attention_bf16.cu; ranges lie inside K and V (checked on
        // the host); the bf16 inputs and o are 16-byte aligned (checked above).
        return unsafe { dev.launch("attention_bf16.cu", &name, cfg, &[&args[..], &scalars(r, dims)].concat()) };
    }
    if o16 || [q, k, v].iter().any(|x| x.bf16_only()) {
        return Err(bf16_needs_tensor_cores(dims));
    }
    let (qa, ka, va) = (q.addr(s), k.addr(s), v.addr(s));
    if let Some(c) = tiled_dim(dev, dims, math, &[qa, ka, va, oa])? {
        let name = format!("attention_forward_tiled_c{c}");
        let cfg = tile_config(dev, ("attention_tiled.cu", &name), r.nq, dims.heads, tiled_smem(c)[0])?;
        let args = [p(qa), p(ka), p(va), p(oa), p(la), k0, nk];
        // SAFETY: argument list as declared in attention_tiled.cu; ranges lie inside K and V (checked on
        // the host); q, k, v and o are 16-byte aligned (checked above).
        return unsafe { dev.launch("attention_tiled.cu", &name, cfg, &[&args[..], &scalars(r, dims)].concat()) };
    }
    let t = tiles(dims)?;
    let name = format!("attention_forward_{}", t.suffix);
    let cfg = config(dev, &name, r.nq, t.fq, dims, 2 * t.fk + t.fq)?;
    let args = [p(qa), p(ka), p(va), p(oa), p(la), k0, nk];
    // SAFETY: argument list as declared in attention.cu; ranges lie inside K and V (checked on the host).
    unsafe { dev.launch("attention.cu", &name, cfg, &[&args[..], &scalars(r, dims)].concat()) }
}

/// Gradients `dq, dk, dv` (all written) from `d_o`; `delta [Nq, H]` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_dev(
    dev: &Device,
    d_o: &dyn Buf,
    (q, k, v): (&dyn Buf, &dyn Buf, &dyn Buf),
    o: &dyn Buf,
    lse: &dyn Buf,
    r: &AttnRanges,
    dims: AttnDims,
    (dq, dk, dv): (&mut dyn BufMut, &mut dyn BufMut, &mut dyn BufMut),
    delta: &mut dyn BufMut,
    math: Math,
) -> Result<(), CudaError> {
    let w = dims.heads * dims.head_dim;
    assert!(
        delta.count() >= r.nq * dims.heads
            && dq.count() >= r.nq * w
            && dk.count() >= r.nkeys * w
            && dv.count() >= r.nkeys * w,
        "attention backward: dq [Nq, H·c], dk, dv [Nk, H·c], delta [Nq, H]"
    );
    let s = &dev.stream;
    let p = Arg::Ptr;
    let (k0, nk) = (p(ranges_addr(dev, &r.k0)), p(ranges_addr(dev, &r.nk)));
    let (q0, nqk) = (p(ranges_addr(dev, &r.q0)), p(ranges_addr(dev, &r.nqk)));
    let la = lse.addr(s);
    let (dqa, dka, dva, da) = (dq.addr_mut(s), dk.addr_mut(s), dv.addr_mut(s), delta.addr_mut(s));
    if let Some(c) = tensor_core_dim(dev, dims, math, &[dqa, dka, dva])? {
        // q, k, v and dO rounded to bf16 once for both kernels' tiles (none of them when they come in
        // bf16 alone, as O and dO do from the GPU model); delta reads the bf16 dO and O
        let ((q16, _q), (k16, _k)) = (bf16_of(dev, q)?, bf16_of(dev, k)?);
        let ((v16, _v), (do16, _do), (o16, _o)) = (bf16_of(dev, v)?, bf16_of(dev, d_o)?, bf16_of(dev, o)?);
        tile_aligned(&[q16, k16, v16, do16]);
        assert!(o16 % 4 == 0, "attention: O's bf16 values are read in pairs");
        let [_, dq_bytes, dkdv_bytes] = bf16_smem(c);
        let name = format!("attention_backward_dq_bf16_c{c}");
        let cfg = tile_config(dev, ("attention_bf16.cu", &name), r.nq, dims.heads, dq_bytes)?;
        let args = [p(q16), p(k16), p(v16), p(o16), p(do16), p(la), k0, nk, p(dqa), p(da)];
        // SAFETY: argument list as declared in attention_bf16.cu; the bf16 inputs and the f32 buffers
        // are 16-byte aligned (checked above).
        unsafe { dev.launch("attention_bf16.cu", &name, cfg, &[&args[..], &scalars(r, dims)].concat()) }?;
        let name = format!("attention_backward_dkdv_bf16_c{c}");
        let cfg = tile_config(dev, ("attention_bf16.cu", &name), r.nkeys, dims.heads, dkdv_bytes)?;
        let args = [p(q16), p(k16), p(v16), p(do16), p(la), p(da), k0, nk, q0, nqk, p(dka), p(dva)];
        // SAFETY: as above; delta was written by the dq kernel.
        return unsafe { dev.launch("attention_bf16.cu", &name, cfg, &[&args[..], &scalars(r, dims)].concat()) };
    }
    if [q, k, v, o, d_o].iter().any(|x| x.bf16_only()) {
        return Err(bf16_needs_tensor_cores(dims));
    }
    let (qa, ka, va, oa, doa) = (q.addr(s), k.addr(s), v.addr(s), o.addr(s), d_o.addr(s));
    let (file, [dq_name, dkdv_name], [dq_cfg, dkdv_cfg]) =
        match tiled_dim(dev, dims, math, &[qa, ka, va, oa, doa, dqa, dka, dva])? {
            Some(c) => {
                let names = ["dq", "dkdv"].map(|part| format!("attention_backward_{part}_tiled_c{c}"));
                let [_, dq_bytes, dkdv_bytes] = tiled_smem(c);
                let file = "attention_tiled.cu";
                let cfgs = [
                    tile_config(dev, (file, &names[0]), r.nq, dims.heads, dq_bytes)?,
                    tile_config(dev, (file, &names[1]), r.nkeys, dims.heads, dkdv_bytes)?,
                ];
                ("attention_tiled.cu", names, cfgs)
            }
            None => {
                let t = tiles(dims)?;
                let names = ["dq", "dkdv"].map(|part| format!("attention_backward_{part}_{}", t.suffix));
                let cfgs = [
                    config(dev, &names[0], r.nq, t.fq, dims, 2 * t.fk + 2 * t.fq)?,
                    config(dev, &names[1], r.nkeys, t.bk, dims, 2 * t.bk + 2 * t.bq)?,
                ];
                ("attention.cu", names, cfgs)
            }
        };
    let args = [p(qa), p(ka), p(va), p(oa), p(doa), p(la), k0, nk, p(dqa), p(da)];
    // SAFETY: argument list as declared in attention.cu and attention_tiled.cu (the tiled kernels' buffers
    // are 16-byte aligned, checked above).
    unsafe { dev.launch(file, &dq_name, dq_cfg, &[&args[..], &scalars(r, dims)].concat()) }?;
    let args = [p(qa), p(ka), p(va), p(doa), p(la), p(da), k0, nk, q0, nqk, p(dka), p(dva)];
    // SAFETY: as above; delta was written by the dq kernel.
    unsafe { dev.launch(file, &dkdv_name, dkdv_cfg, &[&args[..], &scalars(r, dims)].concat()) }
}

fn bf16_needs_tensor_cores(dims: AttnDims) -> CudaError {
    CudaError::Driver(format!(
        "attention: bf16-only inputs or outputs need the tensor-core kernels (head dim 32, 64 or 128 on sm_80+; got {})",
        dims.head_dim
    ))
}

/// The bf16 inputs are copied to shared memory 16 bytes at a time (cp.async): fresh copies are
/// aligned, and a kept copy (`Buf::bf16_addr`) must be too.
fn tile_aligned(addrs: &[u64]) {
    assert!(addrs.iter().all(|a| a % 16 == 0), "attention: a bf16 input is not 16-byte aligned");
}

fn scalars(r: &AttnRanges, dims: AttnDims) -> [Arg; 5] {
    let i = |v: usize| Arg::I32(v as i32);
    [i(r.nq), i(r.nkeys), i(dims.heads), i(dims.head_dim), Arg::F32(dims.scale as f32)]
}

fn ranges_addr(dev: &Device, v: &CudaSlice<i32>) -> u64 {
    v.device_ptr(&dev.stream).0
}

/// Cosine normalisation per head of `x [N, H·c]` with `gain [H]`: `y`, `norms [N, H]`.
pub fn normalize_heads_dev(
    dev: &Device,
    x: &dyn Buf,
    gain: &dyn Buf,
    y: &mut dyn BufMut,
    norms: &mut dyn BufMut,
    (heads, c): (usize, usize),
) -> Result<(), CudaError> {
    let rows = x.count() / (heads * c);
    let s = &dev.stream;
    let args = [x.addr(s), gain.addr(s), y.addr_mut(s), norms.addr_mut(s)].map(Arg::Ptr);
    let args = [&args[..], &[Arg::I64(rows as i64), Arg::I32(heads as i32), Arg::I32(c as i32)]].concat();
    // SAFETY: normalize_heads_forward_f32(x, gain, y, norms, rows, heads, c); one warp per (row, head).
    unsafe { dev.launch("attention.cu", "normalize_heads_forward_f32", per_warp(rows * heads), &args) }
}

/// Backward of [`normalize_heads_dev`]: `dx` written; with `dgain`, `Σ_rows udy` added (`udy [N, H]` is
/// scratch).
#[allow(clippy::too_many_arguments)]
pub fn normalize_heads_backward_dev(
    dev: &Device,
    dy: &dyn Buf,
    x: &dyn Buf,
    norms: &dyn Buf,
    gain: &dyn Buf,
    dx: &mut dyn BufMut,
    udy: &mut dyn BufMut,
    dgain: Option<&mut dyn BufMut>,
    (heads, c): (usize, usize),
) -> Result<(), CudaError> {
    let rows = x.count() / (heads * c);
    let s = &dev.stream;
    let args = [dy.addr(s), x.addr(s), norms.addr(s), gain.addr(s), dx.addr_mut(s), udy.addr_mut(s)].map(Arg::Ptr);
    let args = [&args[..], &[Arg::I64(rows as i64), Arg::I32(heads as i32), Arg::I32(c as i32)]].concat();
    // SAFETY: normalize_heads_backward_f32(dy, x, norms, gain, dx, udy, rows, heads, c).
    unsafe { dev.launch("attention.cu", "normalize_heads_backward_f32", per_warp(rows * heads), &args) }?;
    match dgain {
        Some(dg) => super::linear::bias_grad(dev, udy, dg, rows, heads),
        None => Ok(()),
    }
}
