//! Attention over segments on the device (twin of `attention`), flash-style (attention.cu): the host
//! expands the segments into a key range per query row and a query range per key row once per
//! schedule ([`AttnRanges`]); forward, dq and dk/dv kernels stream tiles through shared memory.
//! Also the cosine-attention normalisation of q and k (twin of `normalize_heads_*`).

use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaFunction, CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::device::{CudaError, Device};
use crate::attention::{AttnDims, Segment};

/// Largest head dim of attention.cu (a lane owns 4 of them).
pub const MAX_HEAD_DIM: usize = 128;
/// Tile sizes of attention.cu: query rows per forward/dq block, key rows per tile; key rows per
/// dk/dv block, query rows per tile.
const FQ: usize = 16;
const FK: usize = 32;
const BK: usize = 32;
const BQ: usize = 32;

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

/// 128 threads, `(2·tile_a + 2·tile_b)`-row shared memory (rows padded to c + 1); opts the kernel into
/// more than 48 KiB of shared memory when a large head dim needs it.
fn config(
    f: &CudaFunction,
    rows: usize,
    blocks: usize,
    dims: AttnDims,
    smem_rows: usize,
) -> Result<LaunchConfig, CudaError> {
    if dims.head_dim > MAX_HEAD_DIM {
        return Err(CudaError::Driver(format!(
            "attention: head dim {} > {MAX_HEAD_DIM} is not supported by attention.cu",
            dims.head_dim
        )));
    }
    let bytes = (smem_rows * (dims.head_dim + 1) * 4) as u32;
    if bytes > 48 * 1024 {
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)?;
    }
    Ok(LaunchConfig {
        grid_dim: (rows.div_ceil(blocks).max(1) as u32, dims.heads as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: bytes,
    })
}

/// `o [Nq, H·c]` and `lse [Nq, H]` of `q [Nq, H·c]` against `k, v [Nk, H·c]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_device(
    dev: &Device,
    q: &CudaView<f32>,
    k: &CudaView<f32>,
    v: &CudaView<f32>,
    o: &mut CudaViewMut<f32>,
    lse: &mut CudaViewMut<f32>,
    r: &AttnRanges,
    dims: AttnDims,
) -> Result<(), CudaError> {
    let w = dims.heads * dims.head_dim;
    assert!(q.len() == r.nq * w && o.len() == q.len() && k.len() == r.nkeys * w && v.len() == k.len());
    let f = dev.function("attention.cu", "attention_forward_f32")?;
    let cfg = config(&f, r.nq, FQ, dims, 2 * FK + FQ)?;
    let (nq, nkeys, heads, c, scale) =
        (r.nq as i32, r.nkeys as i32, dims.heads as i32, dims.head_dim as i32, dims.scale as f32);
    let mut l = dev.stream.launch_builder(&f);
    l.arg(q).arg(k).arg(v).arg(o).arg(lse).arg(&r.k0).arg(&r.nk);
    l.arg(&nq).arg(&nkeys).arg(&heads).arg(&c).arg(&scale);
    // SAFETY: argument list as declared in attention.cu; ranges lie inside K and V (checked on the host).
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Gradients `dq, dk, dv` (all written) from `d_o`; `delta [Nq, H]` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_device(
    dev: &Device,
    d_o: &CudaView<f32>,
    q: &CudaView<f32>,
    k: &CudaView<f32>,
    v: &CudaView<f32>,
    o: &CudaView<f32>,
    lse: &CudaView<f32>,
    r: &AttnRanges,
    dims: AttnDims,
    (dq, dk, dv): (&mut CudaViewMut<f32>, &mut CudaViewMut<f32>, &mut CudaViewMut<f32>),
    delta: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let (nq, nkeys, heads, c, scale) =
        (r.nq as i32, r.nkeys as i32, dims.heads as i32, dims.head_dim as i32, dims.scale as f32);
    assert!(delta.len() >= r.nq * dims.heads && dq.len() == q.len() && dk.len() == k.len() && dv.len() == v.len());
    let f = dev.function("attention.cu", "attention_backward_dq_f32")?;
    let cfg = config(&f, r.nq, FQ, dims, 2 * FK + 2 * FQ)?;
    let mut l = dev.stream.launch_builder(&f);
    l.arg(q).arg(k).arg(v).arg(o).arg(d_o).arg(lse).arg(&r.k0).arg(&r.nk).arg(&mut *dq).arg(&mut *delta);
    l.arg(&nq).arg(&nkeys).arg(&heads).arg(&c).arg(&scale);
    // SAFETY: argument list as declared in attention.cu.
    unsafe { l.launch(cfg) }?;
    let f = dev.function("attention.cu", "attention_backward_dkdv_f32")?;
    let cfg = config(&f, r.nkeys, BK, dims, 2 * BK + 2 * BQ)?;
    let mut l = dev.stream.launch_builder(&f);
    l.arg(q).arg(k).arg(v).arg(d_o).arg(lse).arg(&mut *delta).arg(&r.k0).arg(&r.nk).arg(&r.q0).arg(&r.nqk);
    l.arg(&mut *dk).arg(&mut *dv).arg(&nq).arg(&nkeys).arg(&heads).arg(&c).arg(&scale);
    // SAFETY: argument list as declared in attention.cu; delta was written by the dq kernel above.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Host-buffer forward for the equivalence test: `(o, lse)`.
pub fn attention_forward(
    dev: &Device,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    segs: &[Segment],
    dims: AttnDims,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let w = dims.heads * dims.head_dim;
    let (nq, nkeys) = (q.len() / w, k.len() / w);
    let s = &dev.stream;
    let r = AttnRanges::new(dev, segs, nq, nkeys)?;
    let (qd, kd, vd) = (s.clone_htod(q)?, s.clone_htod(k)?, s.clone_htod(v)?);
    let (mut o, mut lse) = (s.alloc_zeros::<f32>(q.len())?, s.alloc_zeros::<f32>(nq * dims.heads)?);
    {
        let (mut ov, mut lv) = (o.slice_mut(..), lse.slice_mut(..));
        attention_forward_device(dev, &qd.slice(..), &kd.slice(..), &vd.slice(..), &mut ov, &mut lv, &r, dims)?;
    }
    Ok((s.clone_dtoh(&o)?, s.clone_dtoh(&lse)?))
}

/// Host-buffer backward for the equivalence test: `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn attention_backward(
    dev: &Device,
    d_o: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    segs: &[Segment],
    dims: AttnDims,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), CudaError> {
    let w = dims.heads * dims.head_dim;
    let (nq, nkeys) = (q.len() / w, k.len() / w);
    let s = &dev.stream;
    let r = AttnRanges::new(dev, segs, nq, nkeys)?;
    let up = |x: &[f32]| s.clone_htod(x);
    let (qd, kd, vd, od, dod, ld) = (up(q)?, up(k)?, up(v)?, up(o)?, up(d_o)?, up(lse)?);
    let (mut dq, mut dk, mut dv) =
        (s.alloc_zeros::<f32>(q.len())?, s.alloc_zeros::<f32>(k.len())?, s.alloc_zeros::<f32>(v.len())?);
    let mut delta = s.alloc_zeros::<f32>(nq * dims.heads)?;
    {
        let (mut a, mut b, mut c, mut dl) = (dq.slice_mut(..), dk.slice_mut(..), dv.slice_mut(..), delta.slice_mut(..));
        let views = (dod.slice(..), qd.slice(..), kd.slice(..), vd.slice(..), od.slice(..), ld.slice(..));
        attention_backward_device(
            dev,
            &views.0,
            &views.1,
            &views.2,
            &views.3,
            &views.4,
            &views.5,
            &r,
            dims,
            (&mut a, &mut b, &mut c),
            &mut dl,
        )?;
    }
    Ok((s.clone_dtoh(&dq)?, s.clone_dtoh(&dk)?, s.clone_dtoh(&dv)?))
}

/// Cosine normalisation per head: `(y, norms [N, H])` of `x [N, H·c]` with `gain [H]`.
pub fn normalize_heads(
    dev: &Device,
    x: &[f32],
    gain: &[f32],
    heads: usize,
    c: usize,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let rows = x.len() / (heads * c);
    let s = &dev.stream;
    let f = dev.function("attention.cu", "normalize_heads_forward_f32")?;
    let (xd, gd) = (s.clone_htod(x)?, s.clone_htod(gain)?);
    let (mut y, mut norms) = (s.alloc_zeros::<f32>(x.len())?, s.alloc_zeros::<f32>(rows * heads)?);
    let (r, h, ci) = (rows as i64, heads as i32, c as i32);
    let mut l = s.launch_builder(&f);
    l.arg(&xd).arg(&gd).arg(&mut y).arg(&mut norms).arg(&r).arg(&h).arg(&ci);
    // SAFETY: argument list as declared in attention.cu; one warp per (row, head).
    unsafe { l.launch(per_warp(rows * heads)) }?;
    Ok((s.clone_dtoh(&y)?, s.clone_dtoh(&norms)?))
}

/// Backward of [`normalize_heads`]: `(dx, dgain [H])`; dgain sums the rows in order (linear.cu).
pub fn normalize_heads_backward(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    norms: &[f32],
    gain: &[f32],
    heads: usize,
    c: usize,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let rows = x.len() / (heads * c);
    let s = &dev.stream;
    let f = dev.function("attention.cu", "normalize_heads_backward_f32")?;
    let (dyd, xd, nd, gd) = (s.clone_htod(dy)?, s.clone_htod(x)?, s.clone_htod(norms)?, s.clone_htod(gain)?);
    let (mut dx, mut udy) = (s.alloc_zeros::<f32>(x.len())?, s.alloc_zeros::<f32>(rows * heads)?);
    let (r, h, ci) = (rows as i64, heads as i32, c as i32);
    let mut l = s.launch_builder(&f);
    l.arg(&dyd).arg(&xd).arg(&nd).arg(&gd).arg(&mut dx).arg(&mut udy).arg(&r).arg(&h).arg(&ci);
    // SAFETY: argument list as declared in attention.cu; one warp per (row, head).
    unsafe { l.launch(per_warp(rows * heads)) }?;
    let mut dgain = s.alloc_zeros::<f32>(heads)?;
    super::linear::bias_grad(dev, &udy, &mut dgain, rows, heads)?;
    Ok((s.clone_dtoh(&dx)?, s.clone_dtoh(&dgain)?))
}

/// One warp per item, 8 warps per block.
fn per_warp(items: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (items.div_ceil(8).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}
