//! Elementwise loops compiled for the widest vectors the CPU has. The crate is built for baseline
//! x86-64 (SSE2: 4 f32 to a vector); a loop run through [`wide`] is compiled again for AVX-512 (16) and
//! AVX2 (8), and the CPU's best taken at run time (GELU's forward: 2.6 ns an element with SSE2, 1.1
//! with AVX-512). The operations are the same IEEE ones in every version (Rust never fuses a
//! multiply and an add unasked), so each gives the same bits: the choice changes no result.

/// Run `f`, its loops compiled for AVX-512 or AVX2 where this CPU has them (`f` is inlined into a
/// function compiled with those features; without them, `f` as it is).
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature `avx512` is compiled for.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature `avx2` is compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::wide;
    use crate::act::{gelu_backward, gelu_forward};
    use crate::gradcheck::noise;

    /// The wide loops give the baseline's bits (here on whatever this CPU has: AVX-512 on CI's).
    #[test]
    fn wide_loops_give_the_baseline_bits() {
        let x: Vec<f32> = noise(40_000, 1).iter().map(|&v| (v * 12.0) as f32).collect();
        let dy: Vec<f32> = noise(40_000, 2).iter().map(|&v| v as f32).collect();
        let (mut y, mut dx) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        gelu_forward(&x, &mut y);
        gelu_backward(&dy, &x, &mut dx);
        let gelu = |x: f32| {
            let k = (2.0 / std::f64::consts::PI).sqrt() as f32;
            let z = k * (x + 0.044715 * x * x * x);
            let s = 1.0 / (1.0 + crate::real::exp_f32(-(z + z)));
            (x * s, s + (x + x) * s * (1.0 - s) * k * (1.0 + 3.0 * 0.044715 * x * x))
        };
        for i in 0..x.len() {
            // (one element at a time: a call, not a vector loop)
            let (want_y, want_d) = std::hint::black_box(gelu)(x[i]);
            assert_eq!(
                (y[i].to_bits(), dx[i].to_bits()),
                (want_y.to_bits(), (dy[i] * want_d).to_bits()),
                "at {}",
                x[i]
            );
        }
        assert_eq!(wide(|| 7), 7);
    }
}
