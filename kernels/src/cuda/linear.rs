//! The linear layer on the device, PyTorch layout `y[N, out] = x[N, in]·W[out, in]ᵀ + b` (twin of
//! `linear`): products through cuBLAS (row-major buffers read as transposed column-major matrices), in
//! f32 (SGEMM) or with bf16 inputs and f32 accumulation and output (GemmEx on tensor cores; the inputs
//! are rounded to bf16 by util.cu's `to_bf16` on the way), the bias through linear.cu. Device entry
//! points (`*_dev`) for the GPU model; host-slice wrappers for the equivalence test.

use cudarc::cublas::sys::cublasOperation_t::{self, CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceSlice};

use super::device::{elementwise, Act, Arg, Buf, BufMut, CudaError, Device};

pub(crate) fn blas_err(e: cudarc::cublas::result::CublasError) -> CudaError {
    CudaError::Driver(format!("cuBLAS: {e:?}"))
}

/// cuBLAS on the device's stream, and the precision its products run in.
pub struct Gemm {
    pub blas: CudaBlas,
    /// bf16 inputs, f32 accumulation and output (tensor cores); otherwise f32 throughout.
    pub bf16: bool,
}

impl Gemm {
    pub fn new(dev: &Device, bf16: bool) -> Result<Gemm, CudaError> {
        // SAFETY: only tries to open the library (cudarc would panic on first use without it).
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "libcublas not found (install the CUDA toolkit or `pip install nvidia-cublas` and put its lib \
                 folder on LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        if bf16 && dev.compute < (8, 0) {
            let (major, minor) = dev.compute;
            return Err(CudaError::Unsupported(format!(
                "bf16 matmuls need an NVIDIA GPU of compute capability 8.0 or newer (Ampere, Hopper, Blackwell); \
                 {} is {major}.{minor}",
                dev.name
            )));
        }
        Ok(Gemm { blas: CudaBlas::new(dev.stream.clone()).map_err(blas_err)?, bf16 })
    }
}

/// `x` rounded to bf16 into `y` (`x.count()` values).
pub fn to_bf16_dev<Y>(dev: &Device, x: &dyn Buf, y: &mut Y) -> Result<(), CudaError>
where
    Y: DevicePtrMut<u16> + DeviceSlice<u16>,
{
    let (n, s) = (x.count(), &dev.stream);
    assert!(y.len() >= n, "to_bf16: y holds fewer values than x");
    let args = [Arg::Ptr(x.addr(s)), Arg::Ptr(y.device_ptr_mut(s).0), Arg::I64(n as i64)];
    // SAFETY: to_bf16(x, y, n); both hold n values. Four per thread (util.cu).
    unsafe { dev.launch("util.cu", "to_bf16", elementwise(n.div_ceil(4)), &args) }
}

/// `x` for several bf16 products: its bf16 copy is made once, here (freed in stream order with this
/// value), instead of once per product. Just `x` when the products run in f32.
pub struct Rounded<'a> {
    values: &'a dyn Buf,
    bf16: Option<u64>,
    _copy: Option<CudaSlice<u16>>,
}

/// [`Rounded`] `x` for `gemm`'s products.
pub fn rounded<'a>(gemm: &Gemm, dev: &Device, x: &'a dyn Buf) -> Result<Rounded<'a>, CudaError> {
    if !gemm.bf16 {
        return Ok(Rounded { values: x, bf16: None, _copy: None });
    }
    let (p, copy) = bf16_of(dev, x)?;
    Ok(Rounded { values: x, bf16: Some(p), _copy: copy })
}

impl Buf for Rounded<'_> {
    fn addr(&self, s: &cudarc::driver::CudaStream) -> u64 {
        self.values.addr(s)
    }
    fn count(&self) -> usize {
        self.values.count()
    }
    fn bf16_addr(&self, s: &cudarc::driver::CudaStream) -> Option<u64> {
        self.bf16.or_else(|| self.values.bf16_addr(s))
    }
    fn bf16_only(&self) -> bool {
        self.values.bf16_only()
    }
}

/// The bf16 values of `x`: its kept copy, or a fresh one (`None` then; the slice owns it).
pub(crate) fn bf16_of(dev: &Device, x: &dyn Buf) -> Result<(u64, Option<CudaSlice<u16>>), CudaError> {
    if let Some(p) = x.bf16_addr(&dev.stream) {
        return Ok((p, None));
    }
    // SAFETY: to_bf16 writes all n elements before anything reads them (same stream).
    let mut y = unsafe { dev.stream.alloc::<u16>(x.count().max(1)) }?;
    to_bf16_dev(dev, x, &mut y)?;
    let p = y.device_ptr_mut(&dev.stream).0;
    Ok((p, Some(y)))
}

/// Column-major `C (m × n) = op(A)·op(B) + β·C`; `A` and `B` in f32, or rounded to bf16 first when
/// `gemm.bf16`; `C` at `c` in f32, or in bf16 when `c_bf16` (only with bf16 inputs and β = 0: the
/// f32 accumulation rounded as it is stored).
#[allow(clippy::too_many_arguments)]
fn product(
    gemm: &Gemm,
    dev: &Device,
    (ta, tb): (cublasOperation_t, cublasOperation_t),
    (m, n, k): (usize, usize, usize),
    (a, lda): (&dyn Buf, usize),
    (b, ldb): (&dyn Buf, usize),
    beta: f32,
    (c, c_bf16): (u64, bool),
    ldc: usize,
) -> Result<(), CudaError> {
    assert!(!c_bf16 || (gemm.bf16 && beta == 0.0), "a bf16 product output needs bf16 inputs and β = 0");
    let (alpha, s) = (1.0f32, &dev.stream);
    let h = *gemm.blas.handle();
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    if !gemm.bf16 {
        // SAFETY: callers check that the buffers hold the matrices the sizes describe.
        return dev.timed("cublas sgemm", || unsafe {
            cudarc::cublas::result::sgemm(
                h,
                ta,
                tb,
                mi,
                ni,
                ki,
                &alpha,
                a.addr(s) as *const f32,
                lda as i32,
                b.addr(s) as *const f32,
                ldb as i32,
                &beta,
                c as *mut f32,
                ldc as i32,
            )
            .map_err(blas_err)
        });
    }
    // the copies (when made here) live until the GEMM is queued; the pool frees them in stream order
    let ((pa, _a16), (pb, _b16)) = (bf16_of(dev, a)?, bf16_of(dev, b)?);
    let c_type = if c_bf16 { cudaDataType::CUDA_R_16BF } else { cudaDataType::CUDA_R_32F };
    // SAFETY: the bf16 copies have the f32 buffers' shapes; C's type is as declared.
    dev.timed("cublas gemm bf16", || unsafe {
        cudarc::cublas::result::gemm_ex(
            h,
            ta,
            tb,
            mi,
            ni,
            ki,
            &alpha as *const f32 as *const _,
            pa as *const _,
            cudaDataType::CUDA_R_16BF,
            lda as i32,
            pb as *const _,
            cudaDataType::CUDA_R_16BF,
            ldb as i32,
            &beta as *const f32 as *const _,
            c as *mut _,
            c_type,
            ldc as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(blas_err)
    })
}

/// `y = x·Wᵀ (+ b)`, `y` written.
pub fn linear_dev(
    dev: &Device,
    gemm: &Gemm,
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
    let y = (y.addr_mut(s), false);
    product(gemm, dev, (CUBLAS_OP_T, CUBLAS_OP_N), (fout, n, fin), (w, fin), (x, fin), beta, y, fout)
}

/// Gradients of [`linear_dev`]: `dx` written (when given), `dW` and `db` added.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_dev(
    dev: &Device,
    gemm: &Gemm,
    dy: &dyn Buf,
    x: &dyn Buf,
    w: &dyn Buf,
    dx: Option<&mut dyn BufMut>,
    dw: &mut dyn BufMut,
    db: Option<&mut dyn BufMut>,
    (n, fin, fout): (usize, usize, usize),
) -> Result<(), CudaError> {
    assert!(dy.count() >= n * fout && x.count() >= n * fin && w.count() >= fout * fin, "linear_backward: shapes");
    let dy = &rounded(gemm, dev, dy)?; // one bf16 copy for both products
    if let Some(dx) = dx {
        input_grad(gemm, dev, dy, w, dx, (n, fin, fout))?;
    }
    weight_grad(gemm, dev, dy, x, dw, (n, fin, fout))?;
    if let Some(db) = db {
        bias_grad(dev, dy, db, n, fout)?;
    }
    Ok(())
}

/// `dx [n, fin] = dy · W` (written).
pub fn input_grad(
    gemm: &Gemm,
    dev: &Device,
    dy: &dyn Buf,
    w: &dyn Buf,
    dx: &mut dyn BufMut,
    shape: (usize, usize, usize),
) -> Result<(), CudaError> {
    let out = (dx.count(), dx.addr_mut(&dev.stream), false);
    input_product(gemm, dev, dy, w, out, shape)
}

/// [`input_grad`] into an activation: in bf16 alone, written by the GEMM itself (the f32 accumulation
/// rounded as it is stored, no f32 copy and no cast) when `dx` is, else in f32.
pub fn input_grad_act(
    gemm: &Gemm,
    dev: &Device,
    dy: &dyn Buf,
    w: &dyn Buf,
    dx: &mut Act,
    shape: (usize, usize, usize),
) -> Result<(), CudaError> {
    let out = (dx.count(), dx.out_addr(&dev.stream), dx.bf16_only());
    input_product(gemm, dev, dy, w, out, shape)
}

/// `dy · W` into `count` values at `addr`, in bf16 when `bf16`.
fn input_product(
    gemm: &Gemm,
    dev: &Device,
    dy: &dyn Buf,
    w: &dyn Buf,
    (count, addr, bf16): (usize, u64, bool),
    (n, fin, fout): (usize, usize, usize),
) -> Result<(), CudaError> {
    assert!(dy.count() >= n * fout && w.count() >= fout * fin && count >= n * fin, "input_grad: shapes");
    // dxᵀ (fin × n) = Wᵀ (fin × fout, W's storage read as is) · dyᵀ (fout × n)
    product(gemm, dev, (CUBLAS_OP_N, CUBLAS_OP_N), (fin, n, fout), (w, fin), (dy, fout), 0.0, (addr, bf16), fin)
}

/// `dW [fout, fin] += dyᵀ · x` (`dy [n, fout]`, `x [n, fin]`).
pub fn weight_grad(
    gemm: &Gemm,
    dev: &Device,
    dy: &dyn Buf,
    x: &dyn Buf,
    dw: &mut dyn BufMut,
    (n, fin, fout): (usize, usize, usize),
) -> Result<(), CudaError> {
    assert!(dy.count() >= n * fout && x.count() >= n * fin && dw.count() >= fout * fin, "weight_grad: shapes");
    // column-major: dWᵀ (fin × fout) += xᵀ (fin × n) · dy (n × fout, dy's storage transposed)
    let dw = (dw.addr_mut(&dev.stream), false);
    product(gemm, dev, (CUBLAS_OP_N, CUBLAS_OP_T), (fin, fout, n), (x, fin), (dy, fout), 1.0, dw, fin)
}

/// `db [fout] += Σ_rows dy` (util.cu's fixed-order column sum).
pub fn bias_grad(dev: &Device, dy: &dyn Buf, db: &mut dyn BufMut, n: usize, fout: usize) -> Result<(), CudaError> {
    assert!(db.count() >= fout, "bias_grad: db is not [{fout}]");
    super::util::col_sum(dev, dy, &mut ViewOf(db, fout), n, fout)
}

/// The first `n` values of a buffer, as a buffer (column sums size their output by its length).
struct ViewOf<'a>(&'a mut dyn BufMut, usize);

impl super::device::Buf for ViewOf<'_> {
    fn addr(&self, s: &cudarc::driver::CudaStream) -> u64 {
        self.0.addr(s)
    }
    fn count(&self) -> usize {
        self.1
    }
}

impl BufMut for ViewOf<'_> {
    fn addr_mut(&mut self, s: &cudarc::driver::CudaStream) -> u64 {
        self.0.addr_mut(s)
    }
}

/// `y = x·Wᵀ + b` on host buffers (bf16 products when `bf16`).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    dev: &Device,
    bf16: bool,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    n: usize,
    fin: usize,
    fout: usize,
) -> Result<Vec<f32>, CudaError> {
    assert!(x.len() == n * fin && w.len() == fout * fin, "linear_forward: x [{n}, {fin}], w [{fout}, {fin}]");
    let s = &dev.stream;
    let gemm = Gemm::new(dev, bf16)?;
    let (xd, wd) = (s.clone_htod(x)?, s.clone_htod(w)?);
    let bd = b.map(|b| s.clone_htod(b)).transpose()?;
    let mut y = s.alloc_zeros::<f32>(n * fout)?;
    linear_dev(dev, &gemm, &xd, &wd, bd.as_ref().map(|v| v as &dyn Buf), &mut y, (n, fin, fout))?;
    Ok(s.clone_dtoh(&y)?)
}

/// Gradients of [`linear_forward`] from zero: `(dx, dW, db)`.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn linear_backward(
    dev: &Device,
    bf16: bool,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    fin: usize,
    fout: usize,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), CudaError> {
    assert!(dy.len() == n * fout && x.len() == n * fin && w.len() == fout * fin, "linear_backward: shapes");
    let s = &dev.stream;
    let gemm = Gemm::new(dev, bf16)?;
    let (dyd, xd, wd) = (s.clone_htod(dy)?, s.clone_htod(x)?, s.clone_htod(w)?);
    let (mut dx, mut dw, mut db) =
        (s.alloc_zeros::<f32>(n * fin)?, s.alloc_zeros::<f32>(fout * fin)?, s.alloc_zeros::<f32>(fout)?);
    linear_backward_dev(dev, &gemm, &dyd, &xd, &wd, Some(&mut dx), &mut dw, Some(&mut db), (n, fin, fout))?;
    Ok((s.clone_dtoh(&dx)?, s.clone_dtoh(&dw)?, s.clone_dtoh(&db)?))
}

/// `dy · W` in bf16 alone as [`input_grad_act`] writes it (bf16 inputs), as bits.
pub fn input_grad_bf16(
    dev: &Device,
    dy: &[f32],
    w: &[f32],
    (n, fin, fout): (usize, usize, usize),
) -> Result<Vec<u16>, CudaError> {
    let s = &dev.stream;
    let gemm = Gemm::new(dev, true)?;
    let (dyd, wd) = (s.clone_htod(dy)?, s.clone_htod(w)?);
    let mut dx = Act::Bf16(s.alloc_zeros::<u16>(n * fin)?);
    input_grad_act(&gemm, dev, &dyd, &wd, &mut dx, (n, fin, fout))?;
    match dx {
        Act::Bf16(v) => Ok(s.clone_dtoh(&v)?),
        Act::F32(_) => unreachable!("made bf16 above"),
    }
}
