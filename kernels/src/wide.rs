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
    use std::hint::black_box;

    use crate::act::{gelu_backward_run, gelu_forward_run, gelu_parts};
    use crate::attention::exp_minus;
    use crate::gradcheck::noise;
    use crate::Real;

    /// GELU (forward, backward) and softmax's exponentials, each loop as a width compiled it.
    fn loops(x: &[f32], dy: &[f32], width: &str) -> [Vec<f32>; 3] {
        let (mut y, mut dx, mut e) = (vec![0f32; x.len()], vec![0f32; x.len()], x.to_vec());
        let mut run = || {
            gelu_forward_run(x, &mut y);
            gelu_backward_run(dy, x, &mut dx);
            exp_minus(&mut e, 3.5);
        };
        match width {
            // SAFETY (both): called only where the CPU has the feature
            #[cfg(target_arch = "x86_64")]
            "avx512f" => unsafe { super::avx512(run) },
            #[cfg(target_arch = "x86_64")]
            "avx2" => unsafe { super::avx2(run) },
            _ => run(),
        }
        [y, dx, e]
    }

    /// Every width this CPU has gives the bits of the scalar code, element by element (the kernels
    /// crate is built at opt-level 3 in tests too, so its loops are vectorised here as in a run).
    #[test]
    fn every_width_gives_the_scalar_bits() {
        let mut x: Vec<f32> = noise(40_000, 1).iter().map(|&v| (v * 12.0) as f32).collect();
        x.extend([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 95.0, -95.0, f32::INFINITY, f32::NEG_INFINITY]);
        let dy: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        // (black_box makes each element its own scalar call)
        let scalar: [Vec<f32>; 3] = [
            x.iter().map(|&v| gelu_parts(black_box(v)).0).collect(),
            x.iter().zip(&dy).map(|(&v, &g)| g * gelu_parts(black_box(v)).1).collect(),
            x.iter().map(|&v| (black_box(v) - 3.5).exp_simd()).collect(),
        ];
        let mut widths = vec!["baseline"];
        #[cfg(target_arch = "x86_64")]
        for w in ["avx2", "avx512f"] {
            let has = match w {
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                _ => std::arch::is_x86_feature_detected!("avx512f"),
            };
            match has {
                true => widths.push(w),
                false => eprintln!("skipped {w}: this CPU does not have it"),
            }
        }
        for w in widths {
            let got = loops(&x, &dy, w);
            for (k, name) in ["gelu forward", "gelu backward", "softmax exp"].iter().enumerate() {
                for i in 0..x.len() {
                    let (a, b) = (got[k][i], scalar[k][i]);
                    assert!(
                        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                        "{w} {name} at {}: {a} vs {b}",
                        x[i]
                    );
                }
            }
        }
        assert_eq!(super::wide(|| 7), 7);
    }
}
