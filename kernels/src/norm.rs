//! LayerNorm (with or without affine) and RMSNorm over the last axis of `[N, C]` rows.
//!
//! Forward saves per-row statistics (`mean`, `rstd`) for the backward. Input gradients are written,
//! parameter gradients added. Rows run in parallel ([`crate::rows`]: the same bits on any core count);
//! the parameter gradients' sums over rows are one task beside them, in row order.

use rayon::prelude::*;

use crate::rows::{for_row_runs, rows_per_task};
use crate::Real;

/// LayerNorm: `y = (x − μ)·rstd·w + b`, `rstd = 1/√(var + eps)` (biased variance, as `nn.LayerNorm`).
/// `w`/`b` absent means no affine (upstream `ln_wo_grad`). mean, rstd: `[N]`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Real>(
    x: &[T],
    w: Option<&[T]>,
    b: Option<&[T]>,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    c: usize,
    eps: f64,
) {
    let n = x.len() / c;
    assert!(x.len() == n * c && y.len() == x.len() && mean.len() == n && rstd.len() == n, "layernorm_forward: shapes");
    let cf = T::of(c as f64);
    let rows = rows_per_task(c);
    let stats = mean.par_chunks_mut(rows).zip(rstd.par_chunks_mut(rows));
    y.par_chunks_mut(rows * c).zip(stats).enumerate().for_each(|(j, (y, (mean, rstd)))| {
        for (k, yr) in y.chunks_exact_mut(c).enumerate() {
            let r = j * rows + k;
            let xr = &x[r * c..(r + 1) * c];
            let mu = xr.iter().copied().sum::<T>() / cf;
            let var = xr.iter().map(|&v| (v - mu) * (v - mu)).sum::<T>() / cf;
            let rs = T::one() / (var + T::of(eps)).sqrt();
            mean[k] = mu;
            rstd[k] = rs;
            for i in 0..c {
                let xh = (xr[i] - mu) * rs;
                yr[i] = match (w, b) {
                    (Some(w), Some(b)) => xh * w[i] + b[i],
                    (Some(w), None) => xh * w[i],
                    _ => xh,
                };
            }
        }
    });
}

/// Backward of [`layernorm_forward`]: `dx` written; `dw`, `db` added when present.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Real>(
    dy: &[T],
    x: &[T],
    w: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    dx: &mut [T],
    mut dw: Option<&mut [T]>,
    mut db: Option<&mut [T]>,
    c: usize,
) {
    let n = x.len() / c;
    assert!(
        dy.len() == n * c && dx.len() == dy.len() && mean.len() == n && rstd.len() == n,
        "layernorm_backward: shapes"
    );
    let cf = T::of(c as f64);
    // (dw, db: one task through the rows in order beside the dx tasks, the serial loop's sums)
    let with_params = dw.is_some() || db.is_some();
    let param_grads = || {
        for r in 0..n {
            let (xr, dyr, mu, rs) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c], mean[r], rstd[r]);
            if let Some(dw) = dw.as_deref_mut() {
                for ((s, &g), &v) in dw.iter_mut().zip(dyr).zip(xr) {
                    *s += g * ((v - mu) * rs);
                }
            }
            if let Some(db) = db.as_deref_mut() {
                for (s, &g) in db.iter_mut().zip(dyr) {
                    *s += g;
                }
            }
        }
    };
    let mut dx_rows = || {
        for_row_runs(dx, c, |first, dx| {
            for (k, dxr) in dx.chunks_exact_mut(c).enumerate() {
                let r = first + k;
                let (xr, dyr) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
                let (mu, rs) = (mean[r], rstd[r]);
                let mut sum_g = T::zero();
                let mut sum_gx = T::zero();
                for i in 0..c {
                    let xh = (xr[i] - mu) * rs;
                    let g = dyr[i] * w.map_or(T::one(), |w| w[i]);
                    sum_g += g;
                    sum_gx += g * xh;
                }
                let (mg, mgx) = (sum_g / cf, sum_gx / cf);
                for i in 0..c {
                    let xh = (xr[i] - mu) * rs;
                    let g = dyr[i] * w.map_or(T::one(), |w| w[i]);
                    dxr[i] = rs * (g - mg - xh * mgx);
                }
            }
        })
    };
    if with_params {
        rayon::join(dx_rows, param_grads);
    } else {
        dx_rows();
    }
}

/// RMSNorm: `y = x·rstd·w`, `rstd = 1/√(mean(x²) + eps)` (upstream `FastRMSNorm`). rstd: `[N]`.
pub fn rmsnorm_forward<T: Real>(x: &[T], w: &[T], y: &mut [T], rstd: &mut [T], c: usize, eps: f64) {
    let n = x.len() / c;
    assert!(x.len() == n * c && y.len() == x.len() && rstd.len() == n && w.len() == c, "rmsnorm_forward: shapes");
    let cf = T::of(c as f64);
    let rows = rows_per_task(c);
    y.par_chunks_mut(rows * c).zip(rstd.par_chunks_mut(rows)).enumerate().for_each(|(j, (y, rstd))| {
        for (k, yr) in y.chunks_exact_mut(c).enumerate() {
            let xr = &x[(j * rows + k) * c..(j * rows + k + 1) * c];
            let rs = T::one() / (xr.iter().map(|&v| v * v).sum::<T>() / cf + T::of(eps)).sqrt();
            rstd[k] = rs;
            for i in 0..c {
                yr[i] = xr[i] * rs * w[i];
            }
        }
    });
}

/// Backward of [`rmsnorm_forward`]: `dx` written, `dw` added.
pub fn rmsnorm_backward<T: Real>(dy: &[T], x: &[T], w: &[T], rstd: &[T], dx: &mut [T], dw: &mut [T], c: usize) {
    let n = x.len() / c;
    assert!(dy.len() == n * c && dx.len() == dy.len() && rstd.len() == n && w.len() == c, "rmsnorm_backward: shapes");
    let cf = T::of(c as f64);
    // (dw: one task through the rows in order beside the dx tasks, the serial loop's sums)
    let param_grads = || {
        for r in 0..n {
            let (xr, dyr, rs) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c], rstd[r]);
            for ((s, &g), &v) in dw.iter_mut().zip(dyr).zip(xr) {
                *s += g * (v * rs);
            }
        }
    };
    let dx_rows = || {
        for_row_runs(dx, c, |first, dx| {
            for (k, dxr) in dx.chunks_exact_mut(c).enumerate() {
                let r = first + k;
                let (xr, dyr, rs) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c], rstd[r]);
                let mut sum_gx = T::zero();
                for i in 0..c {
                    sum_gx += dyr[i] * w[i] * (xr[i] * rs);
                }
                let m = sum_gx / cf;
                for i in 0..c {
                    dxr[i] = rs * (dyr[i] * w[i] - xr[i] * rs * m);
                }
            }
        })
    };
    rayon::join(dx_rows, param_grads);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, dot, noise};

    #[test]
    fn layernorm_gradients_affine_and_plain() {
        let (n, c) = (3, 8);
        let (x, w, b, r) = (noise(n * c, 1), noise(c, 2), noise(c, 3), noise(n * c, 4));
        for affine in [true, false] {
            let (wo, bo) = if affine { (Some(&w[..]), Some(&b[..])) } else { (None, None) };
            let loss = |x: &[f64], w: &[f64], b: &[f64]| {
                let (mut y, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
                let (wo, bo) = if affine { (Some(w), Some(b)) } else { (None, None) };
                layernorm_forward(x, wo, bo, &mut y, &mut m, &mut s, c, 1e-6);
                dot(&y, &r)
            };
            let (mut y, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&x, wo, bo, &mut y, &mut m, &mut s, c, 1e-6);
            let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
            let (dwo, dbo) = if affine { (Some(&mut dw[..]), Some(&mut db[..])) } else { (None, None) };
            layernorm_backward(&r, &x, wo, &m, &s, &mut dx, dwo, dbo, c);
            check("ln dx", &x, &dx, |v| loss(v, &w, &b), 1e-5, 1e-8);
            if affine {
                check("ln dw", &w, &dw, |v| loss(&x, v, &b), 1e-5, 1e-8);
                check("ln db", &b, &db, |v| loss(&x, &w, v), 1e-5, 1e-8);
            }
        }
    }

    #[test]
    fn rmsnorm_gradients() {
        let (n, c) = (4, 6);
        let (x, w, r) = (noise(n * c, 5), noise(c, 6), noise(n * c, 7));
        let loss = |x: &[f64], w: &[f64]| {
            let (mut y, mut s) = (vec![0.0; n * c], vec![0.0; n]);
            rmsnorm_forward(x, w, &mut y, &mut s, c, 1e-6);
            dot(&y, &r)
        };
        let (mut y, mut s) = (vec![0.0; n * c], vec![0.0; n]);
        rmsnorm_forward(&x, &w, &mut y, &mut s, c, 1e-6);
        let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
        rmsnorm_backward(&r, &x, &w, &s, &mut dx, &mut dw, c);
        check("rms dx", &x, &dx, |v| loss(v, &w), 1e-5, 1e-8);
        check("rms dw", &w, &dw, |v| loss(&x, v), 1e-5, 1e-8);
    }
}
