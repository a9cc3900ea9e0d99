//! Strided matrix multiply through the `gemm` crate (no hand-written GEMM): the building block of
//! linear layers and attention on the CPU.

use crate::Real;

/// A matrix view: element `(i, j)` is at `off + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Mat {
    /// Row-major `[rows, cols]` starting at `off`, consecutive rows `ld` apart.
    pub fn rows(off: usize, ld: usize) -> Mat {
        Mat { off, rs: ld, cs: 1 }
    }

    /// The transpose of a row-major view.
    pub fn t(self) -> Mat {
        Mat { off: self.off, rs: self.cs, cs: self.rs }
    }

    /// Index one past the last element of an `m×n` view (for bounds checks).
    fn end(&self, m: usize, n: usize) -> usize {
        if m == 0 || n == 0 {
            self.off
        } else {
            self.off + (m - 1) * self.rs + (n - 1) * self.cs + 1
        }
    }
}

/// Matrices smaller than this many multiply-adds run single-threaded (threads cost more than they save).
const PARALLEL_MIN_FLOPS: usize = 1 << 21;

/// `C[m,n] = (accumulate ? C : 0) + α·A[m,k]·B[k,n]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    cv: Mat,
    accumulate: bool,
    a: &[T],
    av: Mat,
    b: &[T],
    bv: Mat,
    alpha: T,
) {
    assert!(cv.end(m, n) <= c.len(), "matmul: C view exceeds its buffer");
    assert!(av.end(m, k) <= a.len(), "matmul: A view exceeds its buffer");
    assert!(bv.end(k, n) <= b.len(), "matmul: B view exceeds its buffer");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[cv.off + i * cv.rs + j * cv.cs] = T::zero();
                }
            }
        }
        return;
    }
    let par = if m * n * k >= PARALLEL_MIN_FLOPS { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the three views were bounds-checked above; C does not alias A or B (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(cv.off),
            cv.cs as isize,
            cv.rs as isize,
            accumulate,
            a.as_ptr().add(av.off),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.off),
            bv.cs as isize,
            bv.rs as isize,
            T::one(),
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_naive_loops() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect(); // stored as [n, k]
        let mut c = vec![1.0f64; m * n];
        matmul(m, n, k, &mut c, Mat::rows(0, n), true, &a, Mat::rows(0, k), &b, Mat::rows(0, k).t(), 2.0);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((c[i * n + j] - (1.0 + 2.0 * dot)).abs() < 1e-12);
            }
        }
    }
}
