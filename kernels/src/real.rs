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
}

impl Real for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(x: f64) -> f64 {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}
