//! The element types kernels run in. Training runs f32; gradient checks run the same code in f64, so a
//! finite-difference check measures the calculus, not float rounding.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use num_traits::{Float, FloatConst};

pub trait Real:
    Float + FloatConst + Default + Debug + Sum + AddAssign + SubAssign + MulAssign + DivAssign + Send + Sync + 'static
{
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    /// `e^self` for the kernels' elementwise loops (GELU, SiLU, softmax): f32's is [`exp_f32`], which
    /// the compiler vectorises; f64's is the standard library's (gradient checks run it).
    fn exp_simd(self) -> Self;
}

impl Real for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_simd(self) -> f32 {
        exp_f32(self)
    }
}

impl Real for f64 {
    fn of(x: f64) -> f64 {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_simd(self) -> f64 {
        self.exp()
    }
}

/// `e^x` in f32 without a call (the standard library's `expf` is a call per element, which keeps a
/// loop from vectorising: GELU and softmax were a fifth of a small model's training step).
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by Cephes' `expf` polynomial, `2^n` written into the
/// exponent in two halves (each a normal float). Within 1 ulp of `e^x` where that is a normal float
/// (0.99 at worst over every f32 there, against f64's `exp`; a test samples it), `+∞` above, `0` below
/// (where `e^x` is subnormal), NaN kept. Branch-free and made of `+`, `×` and bit moves, so its value
/// is the same on every machine and vector width.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.72283; // ln(f32::MAX)
    const LO: f32 = -87.33654; // ln(f32::MIN_POSITIVE)
    const SHIFTER: f32 = 12_582_912.0; // 1.5·2²³: a sum with it is rounded to an integer, kept in the low bits
    let xc = x.clamp(LO, HI); // (NaN stays NaN)
    let t = xc * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    // r = x − n·ln 2, ln 2 in two parts so that n·ln2_hi is exact
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let half = ni >> 1;
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    let y = er * pow2(half) * pow2(ni.wrapping_sub(half));
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    /// The error in ulps: units of the f32 spacing in the binade of the exact value.
    fn ulps(got: f32, exact: f64) -> f64 {
        let spacing = 2f64.powi(exact.abs().log2().floor() as i32 - 23);
        (got as f64 - exact).abs() / spacing
    }

    #[test]
    fn exp_f32_is_within_1_ulp_on_the_normal_range_and_exact_at_the_ends() {
        let (lo, hi) = (-87.33654f32, 88.72283f32);
        let mut worst = (0.0, 0.0f32);
        // every 2^-12 of the range, and the bits either side of each integer multiple of ln 2
        let steps = ((hi - lo) as f64 * 4096.0) as usize;
        let grid = (0..=steps).map(|i| lo + (i as f64 / 4096.0) as f32);
        let near_n = (-126..=127).flat_map(|n| {
            let x = (n as f64 * std::f64::consts::LN_2) as f32;
            [x.next_down(), x, x.next_up()]
        });
        for x in grid.chain(near_n).filter(|x| (lo..=hi).contains(x)) {
            let e = ulps(exp_f32(x), (x as f64).exp());
            if e > worst.0 {
                worst = (e, x);
            }
        }
        assert!(worst.0 <= 1.0, "exp_f32 is {} ulp off at {}", worst.0, worst.1);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(hi).is_finite());
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan() && exp_f32(-f32::NAN).is_nan());
    }
}
