//! Pointwise activations: GELU (tanh approximation; upstream FFN and `text_proj_for_ca`) and SiLU
//! (upstream AdaLN MLPs). Backward writes `dx = dy · f'(x)`.

use rayon::prelude::*;

use crate::rows::CHUNK;
use crate::wide::wide;
use crate::Real;

/// GELU-tanh and its derivative, through `0.5·(1 + tanh z) = σ(2z)` (one `exp` instead of `tanh`):
/// `y = x·σ(2z)`, `y' = σ(2z) + 2x·σ(2z)(1 − σ(2z))·k(1 + 3a·x²)` with `z = k(x + a·x³)`.
#[inline(always)] // (into the loops below, which then vectorise)
pub(crate) fn gelu_parts<T: Real>(x: T) -> (T, T) {
    let k = T::of((2.0 / std::f64::consts::PI).sqrt());
    let a = T::of(0.044715);
    let z = k * (x + a * x * x * x);
    let s = T::one() / (T::one() + (-(z + z)).exp_simd());
    let y = x * s;
    let dy = s + (x + x) * s * (T::one() - s) * k * (T::one() + T::of(3.0) * a * x * x);
    (y, dy)
}

pub fn gelu_forward<T: Real>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| wide(|| gelu_forward_run(x, y)));
}

// (the loops in functions inlined into `wide`'s: a closure of their size is not)
#[inline(always)]
pub(crate) fn gelu_forward_run<T: Real>(x: &[T], y: &mut [T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = gelu_parts(v).0;
    }
}

pub fn gelu_backward<T: Real>(dy: &[T], x: &[T], dx: &mut [T]) {
    let chunks = dx.par_chunks_mut(CHUNK).zip(dy.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)));
    chunks.for_each(|(dx, (dy, x))| wide(|| gelu_backward_run(dy, x, dx)));
}

#[inline(always)]
pub(crate) fn gelu_backward_run<T: Real>(dy: &[T], x: &[T], dx: &mut [T]) {
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        *o = g * gelu_parts(v).1;
    }
}

pub fn silu_forward<T: Real>(x: &[T], y: &mut [T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v / (T::one() + (-v).exp_simd());
    }
}

pub fn silu_backward<T: Real>(dy: &[T], x: &[T], dx: &mut [T]) {
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        let s = T::one() / (T::one() + (-v).exp_simd());
        *o = g * s * (T::one() + v * (T::one() - s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, dot, noise};

    #[test]
    fn gelu_matches_reference_values_and_gradient() {
        // torch.nn.functional.gelu(torch.tensor([-1., 0.5, 2.]), approximate='tanh')
        let mut y = [0.0f64; 3];
        gelu_forward(&[-1.0, 0.5, 2.0], &mut y);
        for (a, b) in y.iter().zip([-0.15880800939172324, 0.34571400982514394, 1.954597694087775]) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let (x, r) = (noise(16, 1).iter().map(|v| v * 3.0).collect::<Vec<_>>(), noise(16, 2));
        let mut dx = vec![0.0; 16];
        gelu_backward(&r, &x, &mut dx);
        check(
            "gelu",
            &x,
            &dx,
            |v| {
                let mut y = vec![0.0; 16];
                gelu_forward(v, &mut y);
                dot(&y, &r)
            },
            1e-6,
            1e-9,
        );
        silu_backward(&r, &x, &mut dx);
        check(
            "silu",
            &x,
            &dx,
            |v| {
                let mut y = vec![0.0; 16];
                silu_forward(v, &mut y);
                dot(&y, &r)
            },
            1e-6,
            1e-9,
        );
    }
}
