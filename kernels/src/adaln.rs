//! AdaLN modulation and gated residuals, the conditioning of every block and of the head.
//!
//! Dims: `B` batch, `L` tokens, `C` channels. Conditions are per sample: `[B, C]`, broadcast over `L`.
//! - modulate: `y = x·(1 + scale) + shift` (upstream `LN(x)·(1+scale1) + shift1`)
//! - gated residual: `res += y·gamma` (upstream `x + drop_path(SA(...)·gamma1)`)

use crate::Real;

/// x, y: `[B, L, C]`; scale, shift: `[B, C]`.
pub fn modulate_forward<T: Real>(x: &[T], scale: &[T], shift: &[T], y: &mut [T], l: usize, c: usize) {
    let b = scale.len() / c;
    assert!(x.len() == b * l * c && y.len() == x.len() && shift.len() == b * c, "modulate_forward: shapes");
    for bi in 0..b {
        let (sc, sh) = (&scale[bi * c..(bi + 1) * c], &shift[bi * c..(bi + 1) * c]);
        for t in 0..l {
            let o = (bi * l + t) * c;
            for i in 0..c {
                y[o + i] = x[o + i] * (T::one() + sc[i]) + sh[i];
            }
        }
    }
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
    for bi in 0..b {
        for t in 0..l {
            let o = (bi * l + t) * c;
            for i in 0..c {
                let g = dy[o + i];
                dx[o + i] = g * (T::one() + scale[bi * c + i]);
                dscale[bi * c + i] += g * x[o + i];
                dshift[bi * c + i] += g;
            }
        }
    }
}

/// `res += y·gamma`. res, y: `[B, L, C]`; gamma: `[B, C]`.
pub fn gated_residual_forward<T: Real>(res: &mut [T], y: &[T], gamma: &[T], l: usize, c: usize) {
    let b = gamma.len() / c;
    assert!(res.len() == b * l * c && y.len() == res.len(), "gated_residual_forward: shapes");
    for bi in 0..b {
        for t in 0..l {
            let o = (bi * l + t) * c;
            for i in 0..c {
                res[o + i] += y[o + i] * gamma[bi * c + i];
            }
        }
    }
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
    for bi in 0..b {
        for t in 0..l {
            let o = (bi * l + t) * c;
            for i in 0..c {
                dy[o + i] = dres[o + i] * gamma[bi * c + i];
                dgamma[bi * c + i] += dres[o + i] * y[o + i];
            }
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
    }
}
