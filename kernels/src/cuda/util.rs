//! Entry points of util.cu: the data movement and small reductions between the model's real kernels
//! (splitting fused projections into parts, token assembly, column sums, the attention gain).
//! Reductions add (`+=`) into their outputs, in a fixed order.

use cudarc::driver::LaunchConfig;

use super::device::{elementwise, per_column, Act, Arg, Buf, BufMut, CudaError, Device};
use super::layers::AdaShape;

/// `dst [N, C]` = part `j` of `src [N, k·C]` (+ `bias [C]`).
pub fn take_part(
    dev: &Device,
    src: &dyn Buf,
    bias: Option<&dyn Buf>,
    dst: &mut dyn BufMut,
    (n, k, j, c): (usize, usize, usize, usize),
) -> Result<(), CudaError> {
    let b = Arg::Ptr(super::device::addr_or_null(bias, &dev.stream));
    let args = [dev.arg(src), b, dev.arg_mut(dst), Arg::long(n), Arg::int(k), Arg::int(j), Arg::int(c)];
    // SAFETY: take_part_f32(src, bias, dst, n, k, j, c).
    unsafe { dev.launch("util.cu", "take_part_f32", elementwise(n * c), &args) }
}

/// Part `j` of `dst [N, k·C]` = `src [N, C]`.
pub fn put_part(
    dev: &Device,
    src: &dyn Buf,
    dst: &mut dyn BufMut,
    (n, k, j, c): (usize, usize, usize, usize),
) -> Result<(), CudaError> {
    let args = [dev.arg(src), dev.arg_mut(dst), Arg::long(n), Arg::int(k), Arg::int(j), Arg::int(c)];
    // SAFETY: put_part_f32(src, dst, n, k, j, c).
    unsafe { dev.launch("util.cu", "put_part_f32", elementwise(n * c), &args) }
}

/// `dst += src` over `dst`'s length.
pub fn add(dev: &Device, dst: &mut dyn BufMut, src: &dyn Buf) -> Result<(), CudaError> {
    let n = dst.count();
    assert!(src.count() >= n, "util::add: source shorter than destination");
    let args = [dev.arg_mut(dst), dev.arg(src), Arg::long(n)];
    // SAFETY: add_f32(dst, src, n).
    unsafe { dev.launch("util.cu", "add_f32", elementwise(n), &args) }
}

/// `out = a + b` over `out`'s length.
pub fn sum(dev: &Device, a: &dyn Buf, b: &dyn Buf, out: &mut dyn BufMut) -> Result<(), CudaError> {
    let n = out.count();
    assert!(a.count() >= n && b.count() >= n, "util::sum: a source shorter than the output");
    let args = [dev.arg(a), dev.arg(b), dev.arg_mut(out), Arg::long(n)];
    // SAFETY: sum_f32(a, b, out, n); all hold n values.
    unsafe { dev.launch("util.cu", "sum_f32", elementwise(n), &args) }
}

/// `dst [R, W] = src [R, W] + row [W]`.
pub fn add_row(dev: &Device, src: &dyn Buf, row: &dyn Buf, dst: &mut dyn BufMut) -> Result<(), CudaError> {
    let w = row.count();
    let rows = src.count() / w;
    let args = [dev.arg(src), dev.arg(row), dev.arg_mut(dst), Arg::long(rows), Arg::int(w)];
    // SAFETY: add_row_f32(src, row, dst, rows, w).
    unsafe { dev.launch("util.cu", "add_row_f32", elementwise(rows * w), &args) }
}

/// `out [C] += Σ_r src[r·stride + ·]` over `rows` rows (a bf16-only source's bf16 values, summed in f32).
pub fn col_sum(dev: &Device, src: &dyn Buf, out: &mut dyn BufMut, rows: usize, stride: usize) -> Result<(), CudaError> {
    let c = out.count();
    assert!(rows == 0 || src.count() >= (rows - 1) * stride + c, "col_sum: source shorter than rows × stride");
    let (kernel, values) = match src.bf16_addr(&dev.stream) {
        Some(p) if src.bf16_only() => ("col_partials_bf16", p),
        _ => ("col_partials_f32", src.addr(&dev.stream)),
    };
    let prefix = [Arg::Ptr(values), Arg::long(rows), Arg::int(c), Arg::long(stride)];
    // SAFETY: col_partials_{f32,bf16}(src, rows, c, stride, partial); src holds (rows − 1)·stride + c values.
    unsafe { column_reduce(dev, ("util.cu", kernel), &prefix, (rows, c), out) }
}

/// Host-slice [`col_sum`] of `x [rows, c]` from zero; with `bf16`, of `x` stored as a bf16-only
/// activation (its values rounded).
pub fn column_sums(dev: &Device, x: &[f32], rows: usize, bf16: bool) -> Result<Vec<f32>, CudaError> {
    let s = &dev.stream;
    let src = super::ops::act_upload(dev, x, bf16)?;
    let mut out = s.alloc_zeros::<f32>(x.len() / rows.max(1))?;
    let c = out.len();
    col_sum(dev, &src, &mut out, rows, c)?;
    Ok(s.clone_dtoh(&out)?)
}

/// A column reduction in a fixed order: stage 1 `kernel` (common.cuh's `column_partials`, called with
/// `prefix` and then the partials buffer) over `rows` × `c`, then `finish_columns_f32` adds the
/// partials into `out`.
///
/// # Safety
/// `prefix` must be the stage-1 kernel's arguments before its `partial` pointer, with buffers holding
/// what `rows` and `c` make it read.
pub unsafe fn column_reduce(
    dev: &Device,
    (file, kernel): (&'static str, &str),
    prefix: &[Arg],
    (rows, c): (usize, usize),
    out: &mut dyn BufMut,
) -> Result<(), CudaError> {
    // common.cuh: 32 columns × 64 rows per block, 8 thread rows
    const TILE: usize = 32;
    const CHUNK: usize = 64;
    let chunks = rows.div_ceil(CHUNK).max(1);
    if chunks > 65_535 {
        return Err(CudaError::Driver(format!("column sum over {rows} rows: more than 65,535 chunks of {CHUNK}")));
    }
    let mut partial = dev.stream.alloc_zeros::<f32>(chunks * c)?;
    let stage1 = LaunchConfig {
        grid_dim: (c.div_ceil(TILE) as u32, chunks as u32, 1),
        block_dim: (TILE as u32, 8, 1),
        shared_mem_bytes: 0,
    };
    let args = [prefix, &[dev.arg_mut(&mut partial)]].concat();
    // SAFETY: the caller's contract; `partial` holds chunks × c values.
    unsafe { dev.launch(file, kernel, stage1, &args) }?;
    let args = [dev.arg(&partial), Arg::int(chunks), Arg::int(c), dev.arg_mut(out)];
    // SAFETY: finish_columns_f32(partial, chunks, c, out).
    unsafe { dev.launch("util.cu", "finish_columns_f32", per_column(c), &args) }
}

/// The second factor of a [`group_dot`].
#[derive(Clone, Copy)]
pub enum Factor<'a> {
    /// None: a plain sum of `a`.
    One,
    Values(&'a dyn Buf),
    /// A LayerNorm's output x̂ = (x − mean)·rstd recomputed from its input `x` and statistics `[rows]`
    /// (the values its forward computed, without keeping them).
    Normalized {
        x: &'a dyn Buf,
        mean: &'a dyn Buf,
        rstd: &'a dyn Buf,
    },
}

/// Per-sample parameter gradient of an AdaLN op: `out[g·ps + col] += Σ_t a[g, t, col]·b[g, t, col]`.
pub fn group_dot(dev: &Device, a: &dyn Buf, b: Factor, out: &mut dyn BufMut, sh: AdaShape) -> Result<(), CudaError> {
    let s = &dev.stream;
    let ptr = |x: &dyn Buf| Arg::Ptr(x.addr(s));
    let null = Arg::Ptr(0);
    let factor = match b {
        Factor::One => [null; 3],
        Factor::Values(x) => [ptr(x), null, null],
        Factor::Normalized { x, mean, rstd } => {
            assert!(mean.count() >= sh.b * sh.l && rstd.count() >= sh.b * sh.l, "group_dot: statistics [B·L]");
            [ptr(x), ptr(mean), ptr(rstd)]
        }
    };
    let chunks = sh.l.div_ceil(64).max(1);
    if sh.b * chunks > 65_535 {
        return Err(CudaError::Driver(format!("AdaLN gradient over {} × {} rows: too many 64-row chunks", sh.b, sh.l)));
    }
    let mut partial = dev.stream.alloc_zeros::<f32>(sh.b * chunks * sh.c)?;
    let stage1 = LaunchConfig {
        grid_dim: (sh.c.div_ceil(32) as u32, (sh.b * chunks) as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let args = [&[dev.arg(a)][..], &factor, &[Arg::int(sh.l), Arg::int(sh.c), Arg::int(chunks)]].concat();
    let args = [&args[..], &[dev.arg_mut(&mut partial)]].concat();
    // SAFETY: group_dot_partials_f32(a, b, mean, rstd, l, c, chunks, partial); a, b hold B·L·C values,
    // mean and rstd B·L.
    unsafe { dev.launch("util.cu", "group_dot_partials_f32", stage1, &args) }?;
    let stage2 = LaunchConfig {
        grid_dim: (sh.c.div_ceil(256) as u32, sh.b as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [dev.arg(&partial), Arg::int(chunks), Arg::int(sh.c), dev.arg_mut(out), Arg::int(sh.ps)];
    // SAFETY: finish_groups_f32(partial, chunks, c, out, ostride); out holds (B − 1)·ps + C values.
    unsafe { dev.launch("util.cu", "finish_groups_f32", stage2, &args) }
}

/// Input tokens `x [B, L, C]`: the start token `cond + pos_start`, then the word embeddings.
pub fn assemble_tokens(
    dev: &Device,
    cond: &dyn Buf,
    pos_start: &dyn Buf,
    we: &dyn Buf,
    x: &mut dyn BufMut,
    (b, len, c): (usize, usize, usize),
) -> Result<(), CudaError> {
    let args =
        [dev.arg(cond), dev.arg(pos_start), dev.arg(we), dev.arg_mut(x), Arg::int(b), Arg::int(len), Arg::int(c)];
    // SAFETY: assemble_tokens_f32(cond, pos_start, we, x, b, l, c).
    unsafe { dev.launch("util.cu", "assemble_tokens_f32", elementwise(b * len * c), &args) }
}

/// Backward of [`assemble_tokens`]: `dcond += dx[:, 0]`, `dwe = dx[:, 1..]`.
pub fn split_tokens(
    dev: &Device,
    dx: &dyn Buf,
    dcond: &mut dyn BufMut,
    dwe: &mut dyn BufMut,
    (b, len, c): (usize, usize, usize),
) -> Result<(), CudaError> {
    let args = [dev.arg(dx), dev.arg_mut(dcond), dev.arg_mut(dwe), Arg::int(b), Arg::int(len), Arg::int(c)];
    // SAFETY: split_tokens_f32(dx, dcond, dwe, b, l, c).
    unsafe { dev.launch("util.cu", "split_tokens_f32", elementwise(b * len * c), &args) }
}

/// `gain = exp(min(scale_mul, ln 100))` per head.
pub fn attn_gain(dev: &Device, scale_mul: &dyn Buf, gain: &mut dyn BufMut) -> Result<(), CudaError> {
    let h = gain.count();
    let args = [dev.arg(scale_mul), dev.arg_mut(gain), Arg::int(h)];
    // SAFETY: attn_gain_f32(scale_mul, gain, h).
    unsafe { dev.launch("util.cu", "attn_gain_f32", per_column(h), &args) }
}

/// `dscale_mul += dgain·gain` where the clamp passes gradient.
pub fn attn_gain_backward(
    dev: &Device,
    scale_mul: &dyn Buf,
    gain: &dyn Buf,
    dgain: &dyn Buf,
    dscale_mul: &mut dyn BufMut,
) -> Result<(), CudaError> {
    let h = gain.count();
    let args = [dev.arg(scale_mul), dev.arg(gain), dev.arg(dgain), dev.arg_mut(dscale_mul), Arg::int(h)];
    // SAFETY: attn_gain_backward_f32(scale_mul, gain, dgain, dscale_mul, h).
    unsafe { dev.launch("util.cu", "attn_gain_backward_f32", per_column(h), &args) }
}

/// `dst[..count·C] += src[first·C ..][..count·C]`.
pub fn add_rows_at(
    dev: &Device,
    src: &dyn Buf,
    dst: &mut dyn BufMut,
    (first, count, c): (usize, usize, usize),
) -> Result<(), CudaError> {
    let args = [dev.arg(src), dev.arg_mut(dst), Arg::long(first), Arg::long(count), Arg::int(c)];
    // SAFETY: add_rows_at_f32(src, dst, first, count, c).
    unsafe { dev.launch("util.cu", "add_rows_at_f32", elementwise(count * c), &args) }
}

/// `dst[..n] = src[..n]` for `n = dst.count()`.
pub fn copy(dev: &Device, src: &dyn Buf, dst: &mut dyn BufMut) -> Result<(), CudaError> {
    let n = dst.count();
    assert!(src.count() >= n, "util::copy: source shorter than destination");
    let s = &dev.stream;
    // SAFETY: both addresses hold at least n f32 values on this stream's device.
    unsafe { cudarc::driver::result::memcpy_dtod_async(dst.addr_mut(s), src.addr(s), n * 4, s.cu_stream()) }?;
    Ok(())
}

/// `dst[r·stride + at ..][..len] = src[r·len ..][..len]` for `rows` rows: a KV cache's append of a
/// scale's keys or values. Both f32, or both bf16 alone.
pub fn copy_rows(
    dev: &Device,
    src: &Act,
    dst: &mut Act,
    (rows, len): (usize, usize),
    stride: usize,
    at: usize,
) -> Result<(), CudaError> {
    assert!(
        src.bf16_only() == dst.bf16_only() && src.count() >= rows * len && at + len <= stride,
        "copy_rows: one dtype, rows of len values in src, each landing inside its row of dst"
    );
    assert!(rows == 0 || dst.count() >= (rows - 1) * stride + at + len, "copy_rows: dst shorter than rows × stride");
    let s = &dev.stream;
    let size = if src.bf16_only() { 2 } else { 4 };
    let from = src.bf16_addr(s).unwrap_or_else(|| src.addr(s));
    let to = dst.out_addr(s);
    for r in 0..rows {
        let (src_at, dst_at) = ((r * len * size) as u64, ((r * stride + at) * size) as u64);
        // SAFETY: both ranges lie inside their buffers (asserted above), on this stream's device.
        unsafe { cudarc::driver::result::memcpy_dtod_async(to + dst_at, from + src_at, len * size, s.cu_stream()) }?;
    }
    Ok(())
}

/// `dst = 0`.
pub fn zero(dev: &Device, dst: &mut dyn BufMut) -> Result<(), CudaError> {
    let s = &dev.stream;
    // SAFETY: the address holds dst.count() f32 values.
    unsafe { cudarc::driver::result::memset_d8_async(dst.addr_mut(s), 0, dst.count() * 4, s.cu_stream()) }?;
    Ok(())
}
