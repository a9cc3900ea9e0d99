//! Host-slice wrappers of the layer kernels, for the equivalence tests and benchmarks: each copies its
//! inputs to the device, runs the device entry point of [`super`] and copies the outputs back.

use cudarc::driver::CudaSlice;

use super::*;
use crate::cuda::device::{Buf, BufMut, CudaError, Device};
use crate::cuda::ops::{act_to_host, act_zeros};

fn up(dev: &Device, v: &[f32]) -> Result<CudaSlice<f32>, CudaError> {
    Ok(dev.stream.clone_htod(v)?)
}

fn zeros(dev: &Device, n: usize) -> Result<CudaSlice<f32>, CudaError> {
    Ok(dev.stream.alloc_zeros::<f32>(n.max(1))?)
}

fn down(dev: &Device, v: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>, CudaError> {
    let mut out = dev.stream.clone_dtoh(v)?;
    out.truncate(n);
    Ok(out)
}

fn up_opt(dev: &Device, v: Option<&[f32]>) -> Result<Option<CudaSlice<f32>>, CudaError> {
    v.map(|v| up(dev, v)).transpose()
}

/// Outputs of a row norm: `y [N, C]`, `mean [N]` (LayerNorm only), `rstd [N]`.
pub struct NormOut {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// Host-slice [`layernorm_act`]: y in bf16 alone when `bf16` (returned widened).
pub fn layernorm(
    dev: &Device,
    x: &[f32],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    c: usize,
    eps: f32,
    bf16: bool,
) -> Result<NormOut, CudaError> {
    let n = x.len() / c;
    let (xd, wd, bd) = (up(dev, x)?, up_opt(dev, w)?, up_opt(dev, b)?);
    let mut y = act_zeros(dev, x.len(), bf16)?;
    let (mut mean, mut rstd) = (zeros(dev, n)?, zeros(dev, n)?);
    let (wr, br) = (wd.as_ref().map(|v| v as &dyn Buf), bd.as_ref().map(|v| v as &dyn Buf));
    layernorm_act(dev, &xd, wr, br, &mut y, (&mut mean, &mut rstd), (n, c), eps)?;
    Ok(NormOut { y: act_to_host(dev, &y)?, mean: down(dev, &mean, n)?, rstd: down(dev, &rstd, n)? })
}

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
    let n = x.len() / c;
    let (dyd, xd, wd, md, rd) = (up(dev, dy)?, up(dev, x)?, up_opt(dev, w)?, up(dev, mean)?, up(dev, rstd)?);
    let (mut dx, mut dw, mut db) = (zeros(dev, x.len())?, zeros(dev, c)?, zeros(dev, c)?);
    let params = wd.as_ref().map(|_| (&mut dw as &mut dyn BufMut, &mut db as &mut dyn BufMut));
    layernorm_backward_dev(dev, &dyd, &xd, wd.as_ref().map(|v| v as &dyn Buf), &md, &rd, &mut dx, params, (n, c))?;
    let params = if w.is_some() { Some((down(dev, &dw, c)?, down(dev, &db, c)?)) } else { None };
    Ok((down(dev, &dx, x.len())?, params))
}

pub fn rmsnorm(dev: &Device, x: &[f32], w: &[f32], c: usize, eps: f32) -> Result<NormOut, CudaError> {
    let n = x.len() / c;
    let (xd, wd) = (up(dev, x)?, up(dev, w)?);
    let (mut y, mut rstd) = (zeros(dev, x.len())?, zeros(dev, n)?);
    rmsnorm_dev(dev, &xd, &wd, &mut y, &mut rstd, (n, c), eps)?;
    Ok(NormOut { y: down(dev, &y, x.len())?, mean: vec![], rstd: down(dev, &rstd, n)? })
}

pub fn rmsnorm_backward(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    c: usize,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let n = x.len() / c;
    let (dyd, xd, wd, rd) = (up(dev, dy)?, up(dev, x)?, up(dev, w)?, up(dev, rstd)?);
    let (mut dx, mut dw) = (zeros(dev, x.len())?, zeros(dev, c)?);
    rmsnorm_backward_dev(dev, &dyd, &xd, &wd, &rd, &mut dx, &mut dw, (n, c))?;
    Ok((down(dev, &dx, x.len())?, down(dev, &dw, c)?))
}

fn shape(params: &[f32], l: usize, c: usize) -> AdaShape {
    AdaShape { b: params.len() / c, l, c, ps: c }
}

/// Host-slice [`modulated_layernorm_dev`]: `(y, mean, rstd)`, y in bf16 alone when `bf16` (widened).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn modulated_layernorm(
    dev: &Device,
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    l: usize,
    c: usize,
    eps: f32,
    bf16: bool,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), CudaError> {
    let (xd, sd, hd) = (up(dev, x)?, up(dev, scale)?, up(dev, shift)?);
    let mut y = act_zeros(dev, x.len(), bf16)?;
    let rows = x.len() / c;
    let (mut mean, mut rstd) = (zeros(dev, rows)?, zeros(dev, rows)?);
    modulated_layernorm_dev(dev, &xd, &sd, &hd, &mut y, (&mut mean, &mut rstd), shape(scale, l, c), eps)?;
    Ok((act_to_host(dev, &y)?, down(dev, &mean, rows)?, down(dev, &rstd, rows)?))
}

/// Host-slice [`modulate_param_grads`] from zero: `(dscale, dshift)`; with `stats` (mean, rstd), `x`
/// is a LayerNorm's input and its output is recomputed.
pub fn modulate_param_grads_host(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    stats: Option<(&[f32], &[f32])>,
    (b, l, c): (usize, usize, usize),
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let (dyd, xd) = (up(dev, dy)?, up(dev, x)?);
    let stats = stats.map(|(m, r)| Ok::<_, CudaError>((up(dev, m)?, up(dev, r)?))).transpose()?;
    let factor = match &stats {
        Some((mean, rstd)) => Factor::Normalized { x: &xd, mean, rstd },
        None => Factor::Values(&xd),
    };
    let (mut ds, mut dh) = (zeros(dev, b * c)?, zeros(dev, b * c)?);
    modulate_param_grads(dev, &dyd, factor, (&mut ds, &mut dh), AdaShape { b, l, c, ps: c }, c)?;
    Ok((down(dev, &ds, b * c)?, down(dev, &dh, b * c)?))
}

/// Host-slice [`modulated_layernorm_backward_dev`]: `dx` (with `dres` added when given).
#[allow(clippy::too_many_arguments)]
pub fn modulated_layernorm_backward(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    scale: &[f32],
    (mean, rstd): (&[f32], &[f32]),
    dres: Option<&[f32]>,
    l: usize,
    c: usize,
) -> Result<Vec<f32>, CudaError> {
    let (dyd, xd, sd, md, rd) = (up(dev, dy)?, up(dev, x)?, up(dev, scale)?, up(dev, mean)?, up(dev, rstd)?);
    let dresd = up_opt(dev, dres)?;
    let mut dx = zeros(dev, x.len())?;
    let dres = dresd.as_ref().map(|v| v as &dyn Buf);
    modulated_layernorm_backward_dev(dev, &dyd, &xd, &sd, (&md, &rd), dres, &mut dx, shape(scale, l, c))?;
    down(dev, &dx, x.len())
}

pub fn gated_residual(
    dev: &Device,
    res: &[f32],
    y: &[f32],
    gamma: &[f32],
    l: usize,
    c: usize,
) -> Result<Vec<f32>, CudaError> {
    let (rd, yd, gd) = (up(dev, res)?, up(dev, y)?, up(dev, gamma)?);
    let mut out = zeros(dev, res.len())?;
    gated_residual_dev(dev, &rd, &yd, &gd, &mut out, shape(gamma, l, c))?;
    down(dev, &out, res.len())
}

/// [`scale_gates_dev`] on host slices.
pub fn scale_gates(
    dev: &Device,
    x: &[f32],
    factors: &[f32],
    parts: usize,
    c: usize,
    stride: usize,
) -> Result<Vec<f32>, CudaError> {
    let (mut xd, fd) = (up(dev, x)?, up(dev, factors)?);
    scale_gates_dev(dev, &mut xd, &fd, parts, c, stride)?;
    down(dev, &xd, x.len())
}

/// `[dy, dgamma]` of [`gated_residual`]; dy stored in bf16 alone when `bf16` (returned widened).
pub fn gated_residual_backward(
    dev: &Device,
    dres: &[f32],
    y: &[f32],
    gamma: &[f32],
    l: usize,
    c: usize,
    bf16: bool,
) -> Result<Vec<Vec<f32>>, CudaError> {
    let (dd, yd, gd) = (up(dev, dres)?, up(dev, y)?, up(dev, gamma)?);
    let mut dy = act_zeros(dev, y.len(), bf16)?;
    let mut dg = zeros(dev, gamma.len())?;
    gated_residual_backward_act(dev, &dd, &yd, &gd, &mut dy, &mut dg, shape(gamma, l, c), c)?;
    Ok(vec![act_to_host(dev, &dy)?, down(dev, &dg, gamma.len())?])
}

pub fn rope(
    dev: &Device,
    x: &[f32],
    table: &RopeTable,
    l: usize,
    heads: usize,
    offset: usize,
    inverse: bool,
) -> Result<Vec<f32>, CudaError> {
    let mut xd = up(dev, x)?;
    rope_dev(dev, &mut xd, &DeviceRope::new(dev, table)?, (l, heads), offset, inverse)?;
    down(dev, &xd, x.len())
}

/// `table[idx]` rows (added into `init` when given).
pub fn embedding(
    dev: &Device,
    table: &[f32],
    idx: &[i32],
    c: usize,
    init: Option<&[f32]>,
) -> Result<Vec<f32>, CudaError> {
    let (td, id) = (up(dev, table)?, dev.stream.clone_htod(idx)?);
    let mut out = match init {
        Some(v) => up(dev, v)?,
        None => zeros(dev, idx.len() * c)?,
    };
    embedding_dev(dev, &td, &id, &mut out, c, init.is_some())?;
    down(dev, &out, idx.len() * c)
}

/// `dtable [V, C]` from zero.
pub fn embedding_backward(
    dev: &Device,
    dout: &[f32],
    idx: &[i32],
    vocab: usize,
    c: usize,
) -> Result<Vec<f32>, CudaError> {
    let (dd, id) = (up(dev, dout)?, dev.stream.clone_htod(idx)?);
    let mut dt = zeros(dev, vocab * c)?;
    embedding_backward_dev(dev, &dd, &id, &mut dt, c)?;
    down(dev, &dt, vocab * c)
}
