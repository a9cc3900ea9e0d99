//! The linear layer on the device, PyTorch layout `y[N, out] = x[N, in]·W[out, in]ᵀ + b` (twin of
//! `linear`): products through cuBLAS SGEMM (row-major buffers read as transposed column-major
//! matrices), the bias through linear.cu. Device entry points (`*_dev`) for the GPU model; host-slice
//! wrappers for the equivalence test.

use cudarc::cublas::sys::cublasOperation_t::{self, CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::CudaBlas;

use super::device::{elementwise, per_column, Arg, Buf, BufMut, CudaError, Device};

pub(crate) fn blas_err(e: cudarc::cublas::result::CublasError) -> CudaError {
    CudaError::Driver(format!("cuBLAS: {e:?}"))
}

/// Column-major `C (m × n) = α·op(A)·op(B) + β·C` on raw device addresses.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    blas: &CudaBlas,
    (ta, tb): (cublasOperation_t, cublasOperation_t),
    (m, n, k): (usize, usize, usize),
    a: u64,
    lda: usize,
    b: u64,
    ldb: usize,
    beta: f32,
    c: u64,
    ldc: usize,
) -> Result<(), CudaError> {
    let alpha = 1.0f32;
    // SAFETY: callers check that the buffers behind the addresses hold the matrices the sizes describe.
    unsafe {
        cudarc::cublas::result::sgemm(
            *blas.handle(),
            ta,
            tb,
            m as i32,
            n as i32,
            k as i32,
            &alpha,
            a as *const f32,
            lda as i32,
            b as *const f32,
            ldb as i32,
            &beta,
            c as *mut f32,
            ldc as i32,
        )
    }
    .map_err(blas_err)
}

/// `y = x·Wᵀ (+ b)`, `y` written.
pub fn linear_dev(
    dev: &Device,
    blas: &CudaBlas,
    x: &dyn Buf,
    w: &dyn Buf,
    b: Option<&dyn Buf>,
    y: &mut dyn BufMut,
    (n, fin, fout): (usize, usize, usize),
) -> Result<(), CudaError> {
    assert!(
        x.count() >= n * fin && w.count() >= fout * fin && y.count() >= n * fout,
        "linear: x [{n}, {fin}], w [{fout}, {fin}], y [{n}, {fout}]"
    );
    let s = &dev.stream;
    let beta = match b {
        Some(b) => {
            let args = [Arg::Ptr(y.addr_mut(s)), Arg::Ptr(b.addr(s)), Arg::I32(n as i32), Arg::I32(fout as i32)];
            // SAFETY: bias_rows_f32(y, b, n, out) over y [n, fout].
            unsafe { dev.launch("linear.cu", "bias_rows_f32", elementwise(n * fout), &args) }?;
            1.0
        }
        None => 0.0,
    };
    // column-major: yᵀ (fout × n) = W (fout × fin, stored as its transpose) · xᵀ (fin × n)
    sgemm(blas, (CUBLAS_OP_T, CUBLAS_OP_N), (fout, n, fin), w.addr(s), fin, x.addr(s), fin, beta, y.addr_mut(s), fout)
}

/// Gradients of [`linear_dev`]: `dx` written (when given), `dW` and `db` added.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_dev(
    dev: &Device,
    blas: &CudaBlas,
    dy: &dyn Buf,
    x: &dyn Buf,
    w: &dyn Buf,
    dx: Option<&mut dyn BufMut>,
    dw: &mut dyn BufMut,
    db: Option<&mut dyn BufMut>,
    (n, fin, fout): (usize, usize, usize),
) -> Result<(), CudaError> {
    assert!(dy.count() >= n * fout && x.count() >= n * fin && w.count() >= fout * fin, "linear_backward: shapes");
    let s = &dev.stream;
    if let Some(dx) = dx {
        assert!(dx.count() >= n * fin, "linear_backward: dx is not [{n}, {fin}]");
        // dxᵀ (fin × n) = Wᵀ (fin × fout, W's storage read as is) · dyᵀ (fout × n)
        sgemm(
            blas,
            (CUBLAS_OP_N, CUBLAS_OP_N),
            (fin, n, fout),
            w.addr(s),
            fin,
            dy.addr(s),
            fout,
            0.0,
            dx.addr_mut(s),
            fin,
        )?;
    }
    weight_grad(blas, dev, dy, x, dw, (n, fin, fout))?;
    if let Some(db) = db {
        bias_grad(dev, dy, db, n, fout)?;
    }
    Ok(())
}

/// `dx [n, fin] = dy · W` (written).
pub fn input_grad(
    blas: &CudaBlas,
    dev: &Device,
    dy: &dyn Buf,
    w: &dyn Buf,
    dx: &mut dyn BufMut,
    (n, fin, fout): (usize, usize, usize),
) -> Result<(), CudaError> {
    assert!(dy.count() >= n * fout && w.count() >= fout * fin && dx.count() >= n * fin, "input_grad: shapes");
    let s = &dev.stream;
    // dxᵀ (fin × n) = Wᵀ (fin × fout, W's storage read as is) · dyᵀ (fout × n)
    sgemm(blas, (CUBLAS_OP_N, CUBLAS_OP_N), (fin, n, fout), w.addr(s), fin, dy.addr(s), fout, 0.0, dx.addr_mut(s), fin)
}

/// `dW [fout, fin] += dyᵀ · x` (`dy [n, fout]`, `x [n, fin]`).
pub fn weight_grad(
    blas: &CudaBlas,
    dev: &Device,
    dy: &dyn Buf,
    x: &dyn Buf,
    dw: &mut dyn BufMut,
    (n, fin, fout): (usize, usize, usize),
) -> Result<(), CudaError> {
    assert!(dy.count() >= n * fout && x.count() >= n * fin && dw.count() >= fout * fin, "weight_grad: shapes");
    let s = &dev.stream;
    // column-major: dWᵀ (fin × fout) += xᵀ (fin × n) · dy (n × fout, dy's storage transposed)
    sgemm(blas, (CUBLAS_OP_N, CUBLAS_OP_T), (fin, fout, n), x.addr(s), fin, dy.addr(s), fout, 1.0, dw.addr_mut(s), fin)
}

/// `db [fout] += Σ_rows dy` (one thread per column, rows in order).
pub fn bias_grad(dev: &Device, dy: &dyn Buf, db: &mut dyn BufMut, n: usize, fout: usize) -> Result<(), CudaError> {
    let s = &dev.stream;
    let args = [Arg::Ptr(dy.addr(s)), Arg::Ptr(db.addr_mut(s)), Arg::I32(n as i32), Arg::I32(fout as i32)];
    // SAFETY: bias_grad_f32(dy, db, n, out); dy holds n·fout values, db fout.
    unsafe { dev.launch("linear.cu", "bias_grad_f32", per_column(fout), &args) }
}

/// `y = x·Wᵀ + b` on host buffers.
pub fn linear_forward(
    dev: &Device,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    n: usize,
    fin: usize,
    fout: usize,
) -> Result<Vec<f32>, CudaError> {
    assert!(x.len() == n * fin && w.len() == fout * fin, "linear_forward: x [{n}, {fin}], w [{fout}, {fin}]");
    let s = &dev.stream;
    let blas = CudaBlas::new(s.clone()).map_err(blas_err)?;
    let (xd, wd) = (s.clone_htod(x)?, s.clone_htod(w)?);
    let bd = b.map(|b| s.clone_htod(b)).transpose()?;
    let mut y = s.alloc_zeros::<f32>(n * fout)?;
    linear_dev(dev, &blas, &xd, &wd, bd.as_ref().map(|v| v as &dyn Buf), &mut y, (n, fin, fout))?;
    Ok(s.clone_dtoh(&y)?)
}

/// Gradients of [`linear_forward`] from zero: `(dx, dW, db)`.
#[allow(clippy::type_complexity)]
pub fn linear_backward(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    fin: usize,
    fout: usize,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), CudaError> {
    assert!(dy.len() == n * fout && x.len() == n * fin && w.len() == fout * fin, "linear_backward: shapes");
    let s = &dev.stream;
    let blas = CudaBlas::new(s.clone()).map_err(blas_err)?;
    let (dyd, xd, wd) = (s.clone_htod(dy)?, s.clone_htod(x)?, s.clone_htod(w)?);
    let (mut dx, mut dw, mut db) =
        (s.alloc_zeros::<f32>(n * fin)?, s.alloc_zeros::<f32>(fout * fin)?, s.alloc_zeros::<f32>(fout)?);
    linear_backward_dev(dev, &blas, &dyd, &xd, &wd, Some(&mut dx), &mut dw, Some(&mut db), (n, fin, fout))?;
    Ok((s.clone_dtoh(&dx)?, s.clone_dtoh(&dw)?, s.clone_dtoh(&db)?))
}
