//! Host-slice entry points of the layer kernels (norm.cu, adaln.cu, rope.cu, embedding.cu), twins of
//! `norm`, `adaln`, `rope` and `embedding`. Optional parameters travel as null pointers.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::device::{elementwise, per_row, CudaError, Device};
use crate::rope::RopeTable;

fn upload(dev: &Device, v: Option<&[f32]>) -> Result<Option<CudaSlice<f32>>, CudaError> {
    Ok(match v {
        Some(v) => Some(dev.stream.clone_htod(v)?),
        None => None,
    })
}

/// Outputs of a row norm: `y [N, C]`, `mean [N]` (LayerNorm only), `rstd [N]`.
pub struct NormOut {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// LayerNorm forward (`w`, `b` optional).
pub fn layernorm(
    dev: &Device,
    x: &[f32],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    c: usize,
    eps: f32,
) -> Result<NormOut, CudaError> {
    let (s, n) = (&dev.stream, x.len() / c);
    let f = dev.function("norm.cu", "layernorm_forward_f32")?;
    let (xd, wd, bd) = (s.clone_htod(x)?, upload(dev, w)?, upload(dev, b)?);
    let (mut y, mut mean, mut rstd) =
        (s.alloc_zeros::<f32>(x.len())?, s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?);
    let (ni, ci, null) = (n as i32, c as i32, 0u64);
    let mut l = s.launch_builder(&f);
    l.arg(&xd);
    match &wd {
        Some(v) => l.arg(v),
        None => l.arg(&null),
    };
    match &bd {
        Some(v) => l.arg(v),
        None => l.arg(&null),
    };
    l.arg(&mut y).arg(&mut mean).arg(&mut rstd).arg(&ni).arg(&ci).arg(&eps);
    // SAFETY: argument list as declared in norm.cu.
    unsafe { l.launch(per_row(n, c)) }?;
    Ok(NormOut { y: s.clone_dtoh(&y)?, mean: s.clone_dtoh(&mean)?, rstd: s.clone_dtoh(&rstd)? })
}

/// LayerNorm backward: `dx`, and `dw`, `db` (from zero) when `w` is given.
#[allow(clippy::type_complexity)]
pub fn layernorm_backward(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    w: Option<&[f32]>,
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) -> Result<(Vec<f32>, Option<(Vec<f32>, Vec<f32>)>), CudaError> {
    let (s, n) = (&dev.stream, x.len() / c);
    let f = dev.function("norm.cu", "layernorm_backward_f32")?;
    let (dyd, xd, wd) = (s.clone_htod(dy)?, s.clone_htod(x)?, upload(dev, w)?);
    let (md, rd) = (s.clone_htod(mean)?, s.clone_htod(rstd)?);
    let mut dx = s.alloc_zeros::<f32>(x.len())?;
    let (mut dw, mut db) = (s.alloc_zeros::<f32>(c)?, s.alloc_zeros::<f32>(c)?);
    let (ni, ci, null) = (n as i32, c as i32, 0u64);
    let mut l = s.launch_builder(&f);
    l.arg(&dyd).arg(&xd);
    match &wd {
        Some(v) => l.arg(v),
        None => l.arg(&null),
    };
    l.arg(&md).arg(&rd).arg(&mut dx);
    if w.is_some() {
        l.arg(&mut dw).arg(&mut db);
    } else {
        l.arg(&null).arg(&null);
    }
    l.arg(&ni).arg(&ci);
    // SAFETY: argument list as declared in norm.cu.
    unsafe { l.launch(per_row(n, c)) }?;
    let params = if w.is_some() { Some((s.clone_dtoh(&dw)?, s.clone_dtoh(&db)?)) } else { None };
    Ok((s.clone_dtoh(&dx)?, params))
}

/// RMSNorm forward (`mean` of the result is empty).
pub fn rmsnorm(dev: &Device, x: &[f32], w: &[f32], c: usize, eps: f32) -> Result<NormOut, CudaError> {
    let (s, n) = (&dev.stream, x.len() / c);
    let f = dev.function("norm.cu", "rmsnorm_forward_f32")?;
    let (xd, wd) = (s.clone_htod(x)?, s.clone_htod(w)?);
    let (mut y, mut rstd) = (s.alloc_zeros::<f32>(x.len())?, s.alloc_zeros::<f32>(n)?);
    let (ni, ci) = (n as i32, c as i32);
    let mut l = s.launch_builder(&f);
    l.arg(&xd).arg(&wd).arg(&mut y).arg(&mut rstd).arg(&ni).arg(&ci).arg(&eps);
    // SAFETY: argument list as declared in norm.cu.
    unsafe { l.launch(per_row(n, c)) }?;
    Ok(NormOut { y: s.clone_dtoh(&y)?, mean: vec![], rstd: s.clone_dtoh(&rstd)? })
}

/// RMSNorm backward: `(dx, dw)`.
pub fn rmsnorm_backward(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    c: usize,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let (s, n) = (&dev.stream, x.len() / c);
    let f = dev.function("norm.cu", "rmsnorm_backward_f32")?;
    let (dyd, xd, wd, rd) = (s.clone_htod(dy)?, s.clone_htod(x)?, s.clone_htod(w)?, s.clone_htod(rstd)?);
    let (mut dx, mut dw) = (s.alloc_zeros::<f32>(x.len())?, s.alloc_zeros::<f32>(c)?);
    let (ni, ci) = (n as i32, c as i32);
    let mut l = s.launch_builder(&f);
    l.arg(&dyd).arg(&xd).arg(&wd).arg(&rd).arg(&mut dx).arg(&mut dw).arg(&ni).arg(&ci);
    // SAFETY: argument list as declared in norm.cu.
    unsafe { l.launch(per_row(n, c)) }?;
    Ok((s.clone_dtoh(&dx)?, s.clone_dtoh(&dw)?))
}

/// An adaln.cu kernel over `[B, L, C]` tensors: `inputs` are uploaded, `outputs` (lengths) are
/// zero-initialised (or uploaded when given as initial values) and returned, then `(b, l, c)`.
fn adaln(
    dev: &Device,
    kernel: &str,
    inputs: &[&[f32]],
    outputs: &[Result<&[f32], usize>],
    (b, l, c): (usize, usize, usize),
) -> Result<Vec<Vec<f32>>, CudaError> {
    let s = &dev.stream;
    let f = dev.function("adaln.cu", kernel)?;
    let ins: Vec<CudaSlice<f32>> = inputs.iter().map(|v| s.clone_htod(*v)).collect::<Result<_, _>>()?;
    let mut outs: Vec<CudaSlice<f32>> = outputs
        .iter()
        .map(|o| match o {
            Ok(init) => s.clone_htod(*init),
            Err(len) => s.alloc_zeros::<f32>(*len),
        })
        .collect::<Result<_, _>>()?;
    let dims = [b as i32, l as i32, c as i32];
    let mut lb = s.launch_builder(&f);
    for v in &ins {
        lb.arg(v);
    }
    for v in outs.iter_mut() {
        lb.arg(v);
    }
    for v in &dims {
        lb.arg(v);
    }
    // SAFETY: callers pass the argument order of the kernel's declaration in adaln.cu.
    unsafe { lb.launch(elementwise(b * l * c)) }?;
    Ok(outs.iter().map(|o| s.clone_dtoh(o)).collect::<Result<_, _>>()?)
}

/// `y = x·(1 + scale) + shift`.
pub fn modulate(
    dev: &Device,
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    l: usize,
    c: usize,
) -> Result<Vec<f32>, CudaError> {
    let b = scale.len() / c;
    Ok(adaln(dev, "modulate_forward_f32", &[x, scale, shift], &[Err(x.len())], (b, l, c))?.remove(0))
}

/// `(dx, dscale, dshift)` of [`modulate`].
pub fn modulate_backward(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    scale: &[f32],
    l: usize,
    c: usize,
) -> Result<Vec<Vec<f32>>, CudaError> {
    let b = scale.len() / c;
    adaln(dev, "modulate_backward_f32", &[dy, x, scale], &[Err(x.len()), Err(b * c), Err(b * c)], (b, l, c))
}

/// `res + y·gamma`.
pub fn gated_residual(
    dev: &Device,
    res: &[f32],
    y: &[f32],
    gamma: &[f32],
    l: usize,
    c: usize,
) -> Result<Vec<f32>, CudaError> {
    let b = gamma.len() / c;
    // the kernel updates `res` in place: it is the first argument, before the inputs
    let s = &dev.stream;
    let f = dev.function("adaln.cu", "gated_residual_forward_f32")?;
    let (mut rd, yd, gd) = (s.clone_htod(res)?, s.clone_htod(y)?, s.clone_htod(gamma)?);
    let dims = [b as i32, l as i32, c as i32];
    let mut lb = s.launch_builder(&f);
    lb.arg(&mut rd).arg(&yd).arg(&gd).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
    // SAFETY: argument list as declared in adaln.cu.
    unsafe { lb.launch(elementwise(b * l * c)) }?;
    Ok(s.clone_dtoh(&rd)?)
}

/// `(dy, dgamma)` of [`gated_residual`].
pub fn gated_residual_backward(
    dev: &Device,
    dres: &[f32],
    y: &[f32],
    gamma: &[f32],
    l: usize,
    c: usize,
) -> Result<Vec<Vec<f32>>, CudaError> {
    let b = gamma.len() / c;
    adaln(dev, "gated_residual_backward_f32", &[dres, y, gamma], &[Err(y.len()), Err(b * c)], (b, l, c))
}

/// RoPE of `x [rows, heads·2P]` (rows = B·L) with `table`, starting at table row `offset`.
pub fn rope(
    dev: &Device,
    x: &[f32],
    table: &RopeTable,
    l: usize,
    heads: usize,
    offset: usize,
    inverse: bool,
) -> Result<Vec<f32>, CudaError> {
    let s = &dev.stream;
    let f = dev.function("rope.cu", "rope_apply_f32")?;
    let p = table.pairs;
    let nrows = x.len() / (heads * 2 * p);
    let (mut xd, cd, sd) = (s.clone_htod(x)?, s.clone_htod(&table.cos)?, s.clone_htod(&table.sin)?);
    let args = [nrows as i32, l as i32, heads as i32, p as i32, offset as i32, inverse as i32];
    let mut lb = s.launch_builder(&f);
    lb.arg(&mut xd).arg(&cd).arg(&sd);
    for v in &args {
        lb.arg(v);
    }
    // SAFETY: argument list as declared in rope.cu.
    unsafe { lb.launch(elementwise(nrows * heads * p)) }?;
    Ok(s.clone_dtoh(&xd)?)
}

/// `table[idx]` rows (`accumulate` adds into `init`).
pub fn embedding(
    dev: &Device,
    table: &[f32],
    idx: &[i32],
    c: usize,
    init: Option<&[f32]>,
) -> Result<Vec<f32>, CudaError> {
    let s = &dev.stream;
    let f = dev.function("embedding.cu", "embedding_forward_f32")?;
    let (td, id) = (s.clone_htod(table)?, s.clone_htod(idx)?);
    let mut out = match init {
        Some(v) => s.clone_htod(v)?,
        None => s.alloc_zeros::<f32>(idx.len() * c)?,
    };
    let (n, ci, acc) = (idx.len() as i32, c as i32, init.is_some() as i32);
    let mut lb = s.launch_builder(&f);
    lb.arg(&td).arg(&id).arg(&mut out).arg(&n).arg(&ci).arg(&acc);
    // SAFETY: argument list as declared in embedding.cu.
    unsafe { lb.launch(elementwise(idx.len() * c)) }?;
    Ok(s.clone_dtoh(&out)?)
}

/// `dtable [V, C]` from zero: `dtable[idx[i]] += dout[i]`.
pub fn embedding_backward(
    dev: &Device,
    dout: &[f32],
    idx: &[i32],
    vocab: usize,
    c: usize,
) -> Result<Vec<f32>, CudaError> {
    let s = &dev.stream;
    let f = dev.function("embedding.cu", "embedding_backward_f32")?;
    let (dd, id) = (s.clone_htod(dout)?, s.clone_htod(idx)?);
    let mut dt = s.alloc_zeros::<f32>(vocab * c)?;
    let (n, ci) = (idx.len() as i32, c as i32);
    let mut lb = s.launch_builder(&f);
    lb.arg(&dd).arg(&id).arg(&mut dt).arg(&n).arg(&ci);
    // SAFETY: argument list as declared in embedding.cu.
    unsafe { lb.launch(elementwise(idx.len() * c)) }?;
    Ok(s.clone_dtoh(&dt)?)
}
