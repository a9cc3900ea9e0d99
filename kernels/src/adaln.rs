//! AdaLN modulation and gated residuals, the conditioning of every block and of the head.
//!
//! Dims: `B` batch, `L` tokens, `C` channels. Conditions are per sample: `[B, C]`, broadcast over `L`.
//! - modulate: `y = x·(1 + scale) + shift` (upstream `LN(x)·(1+scale1) + shift1`)
//! - gated residual: `res += y·gamma` (upstream `x + drop_path(SA(...)·gamma1)`; the drop path is
//!   [`scale_gates`] on gamma)
//!
//! Rows run in parallel, the backward's a sample a task (its sums over `L` in row order): the same
//! bits on any core count.

use rayon::prelude::*;

use crate::rows::for_row_runs;
use crate::Real;

/// x, y: `[B, L, C]`; scale, shift: `[B, C]`.
pub fn modulate_forward<T: Real>(x: &[T], scale: &[T], shift: &[T], y: &mut [T], l: usize, c: usize) {
    let b = scale.len() / c;
    assert!(x.len() == b * l * c && y.len() == x.len() && shift.len() == b * c, "modulate_forward: shapes");
    for_row_runs(y, c, |first, y| {
        for (k, yr) in y.chunks_exact_mut(c).enumerate() {
            let (r, bi) = (first + k, (first + k) / l);
            let (sc, sh) = (&scale[bi * c..(bi + 1) * c], &shift[bi * c..(bi + 1) * c]);
            for i in 0..c {
                yr[i] = x[r * c + i] * (T::one() + sc[i]) + sh[i];
            }
        }
    });
}

/// `dx` written; `dscale`, `dshift` (`[B, C]`) added.
#[allow(clippy::too_many_arguments)]
pub fn modulate_backward<T: Real>(
    dy: &[T],
    x: &[T],
    scale: &[T],
    dx: &mut [T],
    dscale: &mut [T],
    dshift: &mut [T],
    l: usize,
    c: usize,
) {
    let b = scale.len() / c;
    assert!(dy.len() == b * l * c && x.len() == dy.len() && dx.len() == dy.len(), "modulate_backward: shapes");
    let sums = dscale.par_chunks_mut(c).zip(dshift.par_chunks_mut(c));
    dx.par_chunks_mut((l * c).max(1)).zip(sums).enumerate().for_each(|(bi, (dx, (dscale, dshift)))| {
        let (dy, x, scale) =
            (&dy[bi * l * c..(bi + 1) * l * c], &x[bi * l * c..(bi + 1) * l * c], &scale[bi * c..(bi + 1) * c]);
        for o in (0..l * c).step_by(c) {
            for i in 0..c {
                let g = dy[o + i];
                dx[o + i] = g * (T::one() + scale[i]);
                dscale[i] += g * x[o + i];
                dshift[i] += g;
            }
        }
    });
}

/// `y = modulate(LayerNorm(x))` with a LayerNorm without affine (the blocks' pre-norm branches):
/// `y` and the statistics `mean`, `rstd` `[B·L]` written; the device does it in one pass (norm.cu's
/// `modulated_layernorm_forward_*`) and keeps no x̂ (its backward recomputes x̂ from x and the
/// statistics).
#[allow(clippy::too_many_arguments)]
pub fn modulated_layernorm_forward<T: Real>(
    x: &[T],
    scale: &[T],
    shift: &[T],
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    l: usize,
    c: usize,
    eps: f64,
) {
    let mut xhat = vec![T::zero(); x.len()];
    crate::norm::layernorm_forward(x, None, None, &mut xhat, mean, rstd, c, eps);
    modulate_forward(&xhat, scale, shift, y, l, c);
}

/// The backward of `modulate(LayerNorm(x))` (a LayerNorm without affine, then `·(1 + scale) + shift`)
/// into `x`, plus a residual's gradient: `dx = dres + layernorm_backward(dy·(1 + scale))` (written). The
/// blocks' pre-norm branches end here; the device does it in one pass (norm.cu's
/// `modulated_layernorm_backward_f32`). `scale`'s and `shift`'s gradients are [`modulate_backward`]'s.
#[allow(clippy::too_many_arguments)]
pub fn modulated_layernorm_backward<T: Real>(
    dy: &[T],
    x: &[T],
    scale: &[T],
    mean: &[T],
    rstd: &[T],
    dres: Option<&[T]>,
    dx: &mut [T],
    l: usize,
    c: usize,
) {
    let mut dxhat = vec![T::zero(); dy.len()];
    for (i, (o, &g)) in dxhat.iter_mut().zip(dy).enumerate() {
        *o = g * (T::one() + scale[(i / (l * c)) * c + i % c]);
    }
    crate::norm::layernorm_backward(&dxhat, x, None, mean, rstd, dx, None, None, c);
    if let Some(r) = dres {
        for (o, &v) in dx.iter_mut().zip(r) {
            *o = v + *o;
        }
    }
}

/// `res += y·gamma`. res, y: `[B, L, C]`; gamma: `[B, C]`.
pub fn gated_residual_forward<T: Real>(res: &mut [T], y: &[T], gamma: &[T], l: usize, c: usize) {
    let b = gamma.len() / c;
    assert!(res.len() == b * l * c && y.len() == res.len(), "gated_residual_forward: shapes");
    for_row_runs(res, c, |first, res| {
        for (k, rr) in res.chunks_exact_mut(c).enumerate() {
            let (r, bi) = (first + k, (first + k) / l);
            for i in 0..c {
                rr[i] += y[r * c + i] * gamma[bi * c + i];
            }
        }
    });
}

/// Given `dres` (gradient of the residual stream, which passes through unchanged): `dy = dres·gamma`
/// written, `dgamma += Σ_L dres·y`.
pub fn gated_residual_backward<T: Real>(
    dres: &[T],
    y: &[T],
    gamma: &[T],
    dy: &mut [T],
    dgamma: &mut [T],
    l: usize,
    c: usize,
) {
    let b = gamma.len() / c;
    assert!(
        dres.len() == b * l * c && y.len() == dres.len() && dy.len() == dres.len(),
        "gated_residual_backward: shapes"
    );
    dy.par_chunks_mut((l * c).max(1)).zip(dgamma.par_chunks_mut(c)).enumerate().for_each(|(bi, (dy, dgamma))| {
        let (dres, y, gamma) =
            (&dres[bi * l * c..(bi + 1) * l * c], &y[bi * l * c..(bi + 1) * l * c], &gamma[bi * c..(bi + 1) * c]);
        for o in (0..l * c).step_by(c) {
            for i in 0..c {
                dy[o + i] = dres[o + i] * gamma[i];
                dgamma[i] += dres[o + i] * y[o + i];
            }
        }
    });
}

/// Stochastic depth (upstream's `drop_path` on the gated branches, timm's `DropPath`) folded into the
/// gates: part `j < parts` of sample `b`'s row is scaled by `factors[b, j]` (`keep / (1 − p)`: 0 for a
/// dropped branch). x: `[B, stride]` rows whose first `parts · C` values are the gates; factors:
/// `[B, parts]`. The backward is the same call on the gates' gradient (∂gate = ∂gate_eff · factor).
pub fn scale_gates<T: Real>(x: &mut [T], factors: &[T], parts: usize, c: usize, stride: usize) {
    assert!(parts * c <= stride && x.len() == factors.len() / parts * stride, "scale_gates: shapes");
    for (row, f) in x.chunks_exact_mut(stride).zip(factors.chunks_exact(parts)) {
        for (part, &fj) in row[..parts * c].chunks_exact_mut(c).zip(f) {
            part.iter_mut().for_each(|v| *v *= fj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, dot, noise};

    #[test]
    fn modulate_and_gate_gradients() {
        let (b, l, c) = (2, 3, 4);
        let (x, sc, sh, r) = (noise(b * l * c, 1), noise(b * c, 2), noise(b * c, 3), noise(b * l * c, 4));
        let loss = |x: &[f64], sc: &[f64], sh: &[f64]| {
            let mut y = vec![0.0; b * l * c];
            modulate_forward(x, sc, sh, &mut y, l, c);
            dot(&y, &r)
        };
        let (mut dx, mut dsc, mut dsh) = (vec![0.0; b * l * c], vec![0.0; b * c], vec![0.0; b * c]);
        modulate_backward(&r, &x, &sc, &mut dx, &mut dsc, &mut dsh, l, c);
        check("mod dx", &x, &dx, |v| loss(v, &sc, &sh), 1e-6, 1e-9);
        check("mod dscale", &sc, &dsc, |v| loss(&x, v, &sh), 1e-6, 1e-9);
        check("mod dshift", &sh, &dsh, |v| loss(&x, &sc, v), 1e-6, 1e-9);

        let base = noise(b * l * c, 5);
        let gl = |y: &[f64], g: &[f64]| {
            let mut res = base.clone();
            gated_residual_forward(&mut res, y, g, l, c);
            dot(&res, &r)
        };
        let (mut dy, mut dg) = (vec![0.0; b * l * c], vec![0.0; b * c]);
        gated_residual_backward(&r, &x, &sc, &mut dy, &mut dg, l, c);
        check("gate dy", &x, &dy, |v| gl(v, &sc), 1e-6, 1e-9);
        check("gate dgamma", &sc, &dg, |v| gl(&x, v), 1e-6, 1e-9);

        // drop path on 2 of 3 parts per row: its backward is itself, applied to the gradient
        let (parts, stride) = (2, 3 * c);
        let (gates, rg, factors) = (noise(b * stride, 6), noise(b * stride, 7), [1.0 / 0.9, 0.0, 1.0, 1.0 / 0.8]);
        let sl = |g: &[f64]| {
            let mut g = g.to_vec();
            scale_gates(&mut g, &factors, parts, c, stride);
            dot(&g, &rg)
        };
        let mut dgates = rg.clone();
        scale_gates(&mut dgates, &factors, parts, c, stride);
        check("drop-path gates", &gates, &dgates, sl, 1e-6, 1e-9);
        assert!(dgates[c..2 * c].iter().all(|&v| v == 0.0) && dgates[2 * c..3 * c] == rg[2 * c..3 * c]);
    }

    /// The pre-norm branch's backward: x → LayerNorm → modulate, loss `Σ y·r + Σ x·dres` (the residual
    /// passes x through), against finite differences in x.
    #[test]
    fn modulated_layernorm_gradient() {
        let (b, l, c) = (2, 3, 8);
        let (x, sc, sh, r, dres) =
            (noise(b * l * c, 6), noise(b * c, 7), noise(b * c, 8), noise(b * l * c, 9), noise(b * l * c, 10));
        let forward = |x: &[f64]| {
            let (mut y, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; b * l], vec![0.0; b * l]);
            modulated_layernorm_forward(x, &sc, &sh, &mut y, &mut mean, &mut rstd, l, c, 1e-6);
            (y, mean, rstd)
        };
        let (_, mean, rstd) = forward(&x);
        let mut dx = vec![0.0; x.len()];
        modulated_layernorm_backward(&r, &x, &sc, &mean, &rstd, Some(&dres), &mut dx, l, c);
        check("modulated layernorm dx", &x, &dx, |v| dot(&forward(v).0, &r) + dot(v, &dres), 1e-6, 1e-9);
    }
}
