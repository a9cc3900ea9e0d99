//! Attention over segments on the device (twin of `attention`): the host expands the segments into a
//! key range per query row; attention.cu runs one block per (row, head).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{CudaError, Device};
use crate::attention::{AttnDims, Segment};

/// `(k0, nk)` per query row, from segments that cover every one of `nq` rows once.
fn key_ranges(segs: &[Segment], nq: usize) -> (Vec<i32>, Vec<i32>) {
    let (mut k0, mut nk) = (vec![0i32; nq], vec![0i32; nq]);
    for s in segs {
        for r in s.q0..s.q0 + s.nq {
            k0[r] = s.k0 as i32;
            nk[r] = s.nk as i32;
        }
    }
    (k0, nk)
}

fn config(nq: usize, dims: AttnDims) -> Result<LaunchConfig, CudaError> {
    if dims.head_dim > 256 {
        return Err(CudaError::Driver(format!("attention: head dim {} > 256 is not supported", dims.head_dim)));
    }
    Ok(LaunchConfig { grid_dim: (nq as u32, dims.heads as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 })
}

/// Output `[Nq, H·c]` and log-sum-exp `[Nq, H]`.
pub fn attention_forward(
    dev: &Device,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    segs: &[Segment],
    dims: AttnDims,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let w = dims.heads * dims.head_dim;
    let nq = q.len() / w;
    let s = &dev.stream;
    let f = dev.function("attention.cu", "attention_forward_f32")?;
    let (k0, nk) = key_ranges(segs, nq);
    let (qd, kd, vd, k0d, nkd) =
        (s.clone_htod(q)?, s.clone_htod(k)?, s.clone_htod(v)?, s.clone_htod(&k0)?, s.clone_htod(&nk)?);
    let (mut o, mut lse) = (s.alloc_zeros::<f32>(q.len())?, s.alloc_zeros::<f32>(nq * dims.heads)?);
    let (heads, c, scale) = (dims.heads as i32, dims.head_dim as i32, dims.scale as f32);
    let mut l = s.launch_builder(&f);
    l.arg(&qd).arg(&kd).arg(&vd).arg(&mut o).arg(&mut lse).arg(&k0d).arg(&nkd).arg(&heads).arg(&c).arg(&scale);
    // SAFETY: argument list as declared in attention.cu; key ranges lie inside K and V.
    unsafe { l.launch(config(nq, dims)?) }?;
    Ok((s.clone_dtoh(&o)?, s.clone_dtoh(&lse)?))
}

/// `(dq, dk, dv)` from zero.
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
    let nq = q.len() / w;
    let s = &dev.stream;
    let f = dev.function("attention.cu", "attention_backward_f32")?;
    let (k0, nk) = key_ranges(segs, nq);
    let (qd, kd, vd, od, dod) =
        (s.clone_htod(q)?, s.clone_htod(k)?, s.clone_htod(v)?, s.clone_htod(o)?, s.clone_htod(d_o)?);
    let (ld, k0d, nkd) = (s.clone_htod(lse)?, s.clone_htod(&k0)?, s.clone_htod(&nk)?);
    let (mut dq, mut dk, mut dv) =
        (s.alloc_zeros::<f32>(q.len())?, s.alloc_zeros::<f32>(k.len())?, s.alloc_zeros::<f32>(v.len())?);
    let (heads, c, scale) = (dims.heads as i32, dims.head_dim as i32, dims.scale as f32);
    let mut l = s.launch_builder(&f);
    l.arg(&qd).arg(&kd).arg(&vd).arg(&od).arg(&dod).arg(&ld).arg(&k0d).arg(&nkd);
    l.arg(&mut dq).arg(&mut dk).arg(&mut dv).arg(&heads).arg(&c).arg(&scale);
    // SAFETY: argument list as declared in attention.cu; key ranges lie inside K and V.
    unsafe { l.launch(config(nq, dims)?) }?;
    Ok((s.clone_dtoh(&dq)?, s.clone_dtoh(&dk)?, s.clone_dtoh(&dv)?))
}
