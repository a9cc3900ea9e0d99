//! Linear layers, PyTorch layout: `y[N, out] = x[N, in] · W[out, in]ᵀ + b[out]`.
//!
//! Gradient convention (as llm.c): input gradients are written (`=`), parameter gradients are added
//! (`+=`) so micro-batches accumulate.

use crate::matmul::{matmul, Mat};
use crate::Real;

/// `y = x·Wᵀ + b`. x: `[n, fin]`, w: `[fout, fin]`, b: `[fout]`, y: `[n, fout]`.
pub fn linear_forward<T: Real>(x: &[T], w: &[T], b: Option<&[T]>, y: &mut [T], n: usize, fin: usize, fout: usize) {
    assert_eq!(x.len(), n * fin, "linear_forward: x is not [{n}, {fin}]");
    assert_eq!(w.len(), fout * fin, "linear_forward: w is not [{fout}, {fin}]");
    assert_eq!(y.len(), n * fout, "linear_forward: y is not [{n}, {fout}]");
    match b {
        Some(b) => {
            assert_eq!(b.len(), fout, "linear_forward: b is not [{fout}]");
            for row in y.chunks_exact_mut(fout) {
                row.copy_from_slice(b);
            }
        }
        None => y.fill(T::zero()),
    }
    matmul(n, fout, fin, y, Mat::rows(0, fout), true, x, Mat::rows(0, fin), w, Mat::rows(0, fin).t(), T::one());
}

/// Backward of [`linear_forward`]: `dx = dy·W` (written), `dW += dyᵀ·x`, `db += Σ_n dy`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Real>(
    dy: &[T],
    x: &[T],
    w: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    n: usize,
    fin: usize,
    fout: usize,
) {
    assert_eq!(dy.len(), n * fout, "linear_backward: dy is not [{n}, {fout}]");
    assert_eq!(dw.len(), fout * fin, "linear_backward: dw is not [{fout}, {fin}]");
    if let Some(dx) = dx {
        assert_eq!(dx.len(), n * fin, "linear_backward: dx is not [{n}, {fin}]");
        matmul(n, fin, fout, dx, Mat::rows(0, fin), false, dy, Mat::rows(0, fout), w, Mat::rows(0, fin), T::one());
    }
    matmul(fout, fin, n, dw, Mat::rows(0, fin), true, dy, Mat::rows(0, fout).t(), x, Mat::rows(0, fin), T::one());
    if let Some(db) = db {
        for row in dy.chunks_exact(fout) {
            for (g, d) in db.iter_mut().zip(row) {
                *g += *d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, dot, noise};

    #[test]
    fn gradients_match_finite_differences() {
        let (n, fin, fout) = (5, 4, 3);
        let (x, w, b, r) = (noise(n * fin, 1), noise(fout * fin, 2), noise(fout, 3), noise(n * fout, 4));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; n * fout];
            linear_forward(x, w, Some(b), &mut y, n, fin, fout);
            dot(&y, &r)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; n * fin], vec![0.5; fout * fin], vec![0.25; fout]);
        linear_backward(&r, &x, &w, Some(&mut dx), &mut dw, Some(&mut db), n, fin, fout);
        // parameter gradients accumulate onto what was there
        dw.iter_mut().for_each(|g| *g -= 0.5);
        db.iter_mut().for_each(|g| *g -= 0.25);
        check("dx", &x, &dx, |v| loss(v, &w, &b), 1e-6, 1e-8);
        check("dw", &w, &dw, |v| loss(&x, v, &b), 1e-6, 1e-8);
        check("db", &b, &db, |v| loss(&x, &w, v), 1e-6, 1e-8);
    }
}
