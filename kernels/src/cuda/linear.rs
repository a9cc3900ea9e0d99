//! The linear layer on the device, PyTorch layout `y[N, out] = x[N, in]·W[out, in]ᵀ + b` (twin of
//! `linear`): the products through cuBLAS (f32, row-major buffers read as transposed column-major
//! matrices), the bias through linear.cu.

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::device::{elementwise, CudaError, Device};

pub(crate) fn blas_err(e: cudarc::cublas::result::CublasError) -> CudaError {
    CudaError::Driver(format!("cuBLAS: {e:?}"))
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
    let mut y = s.alloc_zeros::<f32>(n * fout)?;
    let beta = match b {
        Some(b) => {
            let bd = s.clone_htod(b)?;
            let f = dev.function("linear.cu", "bias_rows_f32")?;
            let (ni, oi) = (n as i32, fout as i32);
            let mut l = s.launch_builder(&f);
            l.arg(&mut y).arg(&bd).arg(&ni).arg(&oi);
            // SAFETY: argument list as declared in linear.cu.
            unsafe { l.launch(elementwise(n * fout)) }?;
            1.0
        }
        None => 0.0,
    };
    // column-major: yᵀ (fout × n) = W (fout × fin, stored as its transpose) · xᵀ (fin × n)
    let cfg = GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m: fout as i32,
        n: n as i32,
        k: fin as i32,
        alpha: 1.0f32,
        lda: fin as i32,
        ldb: fin as i32,
        beta,
        ldc: fout as i32,
    };
    // SAFETY: buffer sizes match the configuration (asserted above).
    unsafe { blas.gemm(cfg, &wd, &xd, &mut y) }.map_err(blas_err)?;
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
    // dxᵀ (fin × n) = Wᵀ (fin × fout, W's storage read as is) · dyᵀ (fout × n)
    let dx_cfg = GemmConfig {
        transa: CUBLAS_OP_N,
        transb: CUBLAS_OP_N,
        m: fin as i32,
        n: n as i32,
        k: fout as i32,
        alpha: 1.0f32,
        lda: fin as i32,
        ldb: fout as i32,
        beta: 0.0,
        ldc: fin as i32,
    };
    // SAFETY: buffer sizes match the configuration (asserted above).
    unsafe { blas.gemm(dx_cfg, &wd, &dyd, &mut dx) }.map_err(blas_err)?;
    weight_grad(&blas, &dyd, &xd, &mut dw, n, fin, fout)?;
    bias_grad(dev, &dyd, &mut db, n, fout)?;
    Ok((s.clone_dtoh(&dx)?, s.clone_dtoh(&dw)?, s.clone_dtoh(&db)?))
}

/// `dW [fout, fin] += dyᵀ · x` on device buffers (`dy [n, fout]`, `x [n, fin]`).
pub fn weight_grad(
    blas: &CudaBlas,
    dy: &CudaSlice<f32>,
    x: &CudaSlice<f32>,
    dw: &mut CudaSlice<f32>,
    n: usize,
    fin: usize,
    fout: usize,
) -> Result<(), CudaError> {
    assert!(dy.len() >= n * fout && x.len() >= n * fin && dw.len() >= fout * fin, "weight_grad: shapes");
    // column-major: dWᵀ (fin × fout) += xᵀ (fin × n) · dy (n × fout, dy's storage transposed)
    let cfg = GemmConfig {
        transa: CUBLAS_OP_N,
        transb: CUBLAS_OP_T,
        m: fin as i32,
        n: fout as i32,
        k: n as i32,
        alpha: 1.0f32,
        lda: fin as i32,
        ldb: fout as i32,
        beta: 1.0,
        ldc: fin as i32,
    };
    // SAFETY: buffer sizes checked above.
    unsafe { blas.gemm(cfg, x, dy, dw) }.map_err(blas_err)
}

/// `db [fout] = Σ_rows dy` on device buffers (linear.cu, one thread per column, rows in order).
pub fn bias_grad(
    dev: &Device,
    dy: &CudaSlice<f32>,
    db: &mut CudaSlice<f32>,
    n: usize,
    fout: usize,
) -> Result<(), CudaError> {
    let f = dev.function("linear.cu", "bias_grad_f32")?;
    let (ni, oi) = (n as i32, fout as i32);
    let mut l = dev.stream.launch_builder(&f);
    l.arg(dy).arg(db).arg(&ni).arg(&oi);
    // SAFETY: argument list as declared in linear.cu; dy holds n·fout values, db fout.
    unsafe { l.launch(elementwise(fout)) }?;
    Ok(())
}
