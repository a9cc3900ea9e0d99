//! Entry points of the smaller CUDA twins (bitwise CE unfused, activations and their `Act` buffers,
//! resize and one scale's quantisation (`bsq.rs` does a whole batch's scales), AdamW, EMA, sum of
//! squares): `*_dev` on device buffers, which the training path calls, and host-slice ones (copy in,
//! launch, copy out) that mirror the CPU twins' signatures so the equivalence tests read side by side.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceSlice, PushKernelArg};

use super::device::{elementwise, per_row, Act, Arg, Buf, BufMut, CudaError, Device};

/// What [`bitwise_ce`] returns: per-token loss `[N]`, correct bits `[N]`, `dlogits [N, 2d]` if asked.
pub struct BitwiseCeOut {
    pub token_loss: Vec<f32>,
    pub correct_bits: Vec<u32>,
    pub dlogits: Option<Vec<f32>>,
}

/// Twin of `bitwise_ce::bitwise_ce` (the weighted total is `Σ weights · token_loss`).
pub fn bitwise_ce(
    dev: &Device,
    logits: &[f32],
    labels: &[u8],
    weights: &[f32],
    label_smoothing: f32,
    d: usize,
    grad: bool,
) -> Result<BitwiseCeOut, CudaError> {
    let n = weights.len();
    assert!(logits.len() == n * 2 * d && labels.len() == n * d, "bitwise_ce: logits [N, 2d] and labels [N, d]");
    let s = &dev.stream;
    let (z, y, w) = (s.clone_htod(logits)?, s.clone_htod(labels)?, s.clone_htod(weights)?);
    let (mut loss, mut correct) = (s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<u32>(n)?);
    let mut dz = if grad { Some(s.alloc_zeros::<f32>(n * 2 * d)?) } else { None };
    let dz_out = dz.as_mut().map(|g| g as &mut dyn BufMut);
    bitwise_ce_dev(dev, &z, &y, &w, label_smoothing, (n, d), (&mut loss, &mut correct), dz_out)?;
    let dlogits = dz.map(|g| s.clone_dtoh(&g)).transpose()?;
    Ok(BitwiseCeOut { token_loss: s.clone_dtoh(&loss)?, correct_bits: s.clone_dtoh(&correct)?, dlogits })
}

/// The bitwise CE of device `logits [N, 2d]` (bitwise_ce.cu): per-token loss and correct bits written,
/// and `dlogits [N, 2d]` when given.
#[allow(clippy::too_many_arguments)]
pub fn bitwise_ce_dev(
    dev: &Device,
    logits: &dyn Buf,
    labels: &CudaSlice<u8>,
    weights: &dyn Buf,
    label_smoothing: f32,
    (n, d): (usize, usize),
    (token_loss, correct): (&mut CudaSlice<f32>, &mut CudaSlice<u32>),
    dlogits: Option<&mut dyn BufMut>,
) -> Result<(), CudaError> {
    assert!(
        logits.count() >= n * 2 * d
            && labels.len() >= n * d
            && weights.count() >= n
            && token_loss.len() >= n
            && correct.len() >= n
            && dlogits.as_ref().is_none_or(|g| g.count() >= n * 2 * d),
        "bitwise_ce: logits, dlogits [N, 2d], labels [N, d], weights, token_loss, correct [N]"
    );
    let s = &dev.stream;
    let args = [
        dev.arg(logits),
        Arg::Ptr(labels.device_ptr(s).0),
        dev.arg(weights),
        Arg::F32(label_smoothing),
        Arg::int(n),
        Arg::int(d),
        dev.arg_mut(token_loss),
        Arg::Ptr(correct.device_ptr_mut(s).0),
        Arg::Ptr(dlogits.map_or(0, |g| g.addr_mut(s))),
    ];
    // SAFETY: bitwise_ce_f32(logits, labels, weights, ls, n, d, token_loss, correct, dlogits or null):
    // sizes asserted above; one block per token, bits per thread beyond 256 loop.
    unsafe { dev.launch("bitwise_ce.cu", "bitwise_ce_f32", per_row(n, d.min(256)), &args) }
}

/// `y = f(x)` for `kernel` in act.cu (`gelu_forward_f32`, `silu_forward_f32`) on device buffers.
pub fn activation_dev(dev: &Device, kernel: &str, x: &dyn Buf, y: &mut dyn BufMut) -> Result<(), CudaError> {
    let n = x.count();
    let args = [Arg::Ptr(x.addr(&dev.stream)), Arg::Ptr(y.addr_mut(&dev.stream)), Arg::I64(n as i64)];
    // SAFETY: (const float*, float*, long) as declared in act.cu; y holds n values.
    unsafe { dev.launch("act.cu", kernel, elementwise(n), &args) }
}

/// The FFN's first layer after its bias-free GEMM `f [N, cols]`: `(x, g)` with x = f + b (the GELU's
/// input, kept for its backward) and g = gelu(x). In f32, x is f itself (the bias added in place);
/// with `bf16`, both are bf16 alone, g the GELU of the rounded x (as under autocast), and f is freed
/// after the launch (in stream order).
pub fn bias_gelu_dev(dev: &Device, mut f: CudaSlice<f32>, b: &dyn Buf, bf16: bool) -> Result<(Act, Act), CudaError> {
    let (n, cols) = (f.len(), b.count());
    assert!(cols > 0 && n % cols == 0, "bias_gelu: f [N, cols], b [cols]");
    let s = &dev.stream;
    let (fa, ba, shape) = (Arg::Ptr(f.device_ptr_mut(s).0), Arg::Ptr(b.addr(s)), [Arg::long(n), Arg::int(cols)]);
    // SAFETY (allocations): the kernel writes all n values before anything reads them.
    if bf16 {
        let (mut x, mut g) = unsafe { (Act::Bf16(s.alloc::<u16>(n.max(1))?), Act::Bf16(s.alloc::<u16>(n.max(1))?)) };
        let args = [fa, ba, Arg::Ptr(x.out_addr(s)), Arg::Ptr(g.out_addr(s)), shape[0], shape[1]];
        // SAFETY: bias_gelu_forward_bf16(f, b, x16, g16, n, cols); f, x16, g16 hold n values, b cols.
        unsafe { dev.launch("act.cu", "bias_gelu_forward_bf16", elementwise(n), &args) }?;
        return Ok((x, g));
    }
    let mut g = unsafe { s.alloc::<f32>(n.max(1)) }?;
    let args = [fa, ba, Arg::Ptr(g.device_ptr_mut(s).0), shape[0], shape[1]];
    // SAFETY: bias_gelu_forward_f32(f, b, g, n, cols); f and g hold n values, b cols.
    unsafe { dev.launch("act.cu", "bias_gelu_forward_f32", elementwise(n), &args) }?;
    Ok((Act::F32(f), Act::F32(g)))
}

/// `g = gelu(x)` from [`bias_gelu_dev`]'s x, as that call computed it (bit for bit): f32, or bf16 alone
/// (act.cu's `gelu_forward_*`). The backward remakes the FFN's second GEMM's input this way rather than
/// keep it.
pub fn gelu_act(dev: &Device, x: &Act) -> Result<Act, CudaError> {
    let (n, s) = (x.count(), &dev.stream);
    // SAFETY (allocations): the kernel writes all n values before anything reads them.
    let (kernel, xa, mut g) = match x {
        Act::F32(v) => ("gelu_forward_f32", v.device_ptr(s).0, Act::F32(unsafe { s.alloc::<f32>(n.max(1)) }?)),
        Act::Bf16(v) => ("gelu_forward_bf16", v.device_ptr(s).0, Act::Bf16(unsafe { s.alloc::<u16>(n.max(1)) }?)),
    };
    let args = [Arg::Ptr(xa), Arg::Ptr(g.out_addr(s)), Arg::long(n)];
    // SAFETY: gelu_forward_{f32,bf16}(x, y, n); both hold n values.
    unsafe { dev.launch("act.cu", kernel, elementwise(n), &args) }?;
    Ok(g)
}

/// `dx = dy · gelu'(x)` from [`bias_gelu_dev`]'s x: f32 in and out, or bf16 x and dx alone
/// (act.cu's `gelu_backward_*`).
pub fn gelu_backward_act(dev: &Device, dy: &dyn Buf, x: &Act, dx: &mut Act) -> Result<(), CudaError> {
    let n = x.count();
    assert!(dy.count() >= n && dx.count() >= n, "gelu_backward: dy, x, dx [n]");
    assert_eq!(x.bf16_only(), dx.bf16_only(), "gelu_backward: x and dx are both bf16 or both f32");
    let s = &dev.stream;
    let (kernel, xa) = match x {
        Act::F32(v) => ("gelu_backward_f32", v.device_ptr(s).0),
        Act::Bf16(v) => ("gelu_backward_bf16", v.device_ptr(s).0),
    };
    let args = [Arg::Ptr(dy.addr(s)), Arg::Ptr(xa), Arg::Ptr(dx.out_addr(s)), Arg::long(n)];
    // SAFETY: gelu_backward_{f32,bf16}(dy, x, dx, n); all hold n values.
    unsafe { dev.launch("act.cu", kernel, elementwise(n), &args) }
}

/// `dx = dy · f'(x)` for `kernel` in act.cu (`gelu_backward_f32`, `silu_backward_f32`), `dx` written.
pub fn activation_backward_dev(
    dev: &Device,
    kernel: &str,
    dy: &dyn Buf,
    x: &dyn Buf,
    dx: &mut dyn BufMut,
) -> Result<(), CudaError> {
    let n = x.count();
    let s = &dev.stream;
    let args = [Arg::Ptr(dy.addr(s)), Arg::Ptr(x.addr(s)), Arg::Ptr(dx.addr_mut(s)), Arg::I64(n as i64)];
    // SAFETY: (const float*, const float*, float*, long) as declared in act.cu.
    unsafe { dev.launch("act.cu", kernel, elementwise(n), &args) }
}

/// Host-slice [`activation_dev`].
pub fn activation(dev: &Device, kernel: &str, x: &[f32]) -> Result<Vec<f32>, CudaError> {
    let s = &dev.stream;
    let xd = s.clone_htod(x)?;
    let mut y = s.alloc_zeros::<f32>(x.len())?;
    activation_dev(dev, kernel, &xd, &mut y)?;
    Ok(s.clone_dtoh(&y)?)
}

/// Host-slice [`bias_gelu_dev`]: `[f + b, gelu(f + b), gelu_act(f + b)]` for `f [N, cols]`, `b [cols]`
/// (the last what the backward remakes); with `bf16` the bf16 outputs, widened.
pub fn bias_gelu(dev: &Device, f: &[f32], b: &[f32], bf16: bool) -> Result<[Vec<f32>; 3], CudaError> {
    let s = &dev.stream;
    let (x, g) = bias_gelu_dev(dev, s.clone_htod(f)?, &s.clone_htod(b)?, bf16)?;
    let again = gelu_act(dev, &x)?;
    Ok([act_to_host(dev, &x)?, act_to_host(dev, &g)?, act_to_host(dev, &again)?])
}

/// `n` zeros as an activation: f32, or bf16 alone when `bf16` (host wrappers' outputs).
pub fn act_zeros(dev: &Device, n: usize, bf16: bool) -> Result<Act, CudaError> {
    let s = &dev.stream;
    Ok(if bf16 { Act::Bf16(s.alloc_zeros(n)?) } else { Act::F32(s.alloc_zeros(n)?) })
}

/// `x` kept as an activation: its values rounded to bf16 alone when `bf16` (x is freed in stream
/// order after the cast), x itself otherwise.
pub fn act_from(dev: &Device, x: CudaSlice<f32>, bf16: bool) -> Result<Act, CudaError> {
    if !bf16 {
        return Ok(Act::F32(x));
    }
    let mut y = dev.stream.alloc_zeros::<u16>(x.len())?;
    super::linear::to_bf16_dev(dev, &x, &mut y)?;
    Ok(Act::Bf16(y))
}

/// Host values as an activation ([`act_from`] of their upload).
pub fn act_upload(dev: &Device, x: &[f32], bf16: bool) -> Result<Act, CudaError> {
    act_from(dev, dev.stream.clone_htod(x)?, bf16)
}

/// The values of an activation, bf16 ones widened to f32.
pub fn act_to_host(dev: &Device, a: &Act) -> Result<Vec<f32>, CudaError> {
    Ok(match a {
        Act::F32(v) => dev.stream.clone_dtoh(v)?,
        Act::Bf16(v) => dev.stream.clone_dtoh(v)?.into_iter().map(|h| f32::from_bits((h as u32) << 16)).collect(),
    })
}

/// Host-slice [`activation_backward_dev`].
pub fn activation_backward(dev: &Device, kernel: &str, dy: &[f32], x: &[f32]) -> Result<Vec<f32>, CudaError> {
    let s = &dev.stream;
    let (dyd, xd) = (s.clone_htod(dy)?, s.clone_htod(x)?);
    let mut dx = s.alloc_zeros::<f32>(x.len())?;
    activation_backward_dev(dev, kernel, &dyd, &xd, &mut dx)?;
    Ok(s.clone_dtoh(&dx)?)
}

/// Host-slice [`gelu_backward_act`]: `dy · gelu'(x)`; with `bf16`, of x rounded to bf16 and rounded
/// itself (returned widened).
pub fn gelu_backward(dev: &Device, dy: &[f32], x: &[f32], bf16: bool) -> Result<Vec<f32>, CudaError> {
    let (dyd, mut dx) = (dev.stream.clone_htod(dy)?, act_zeros(dev, x.len(), bf16)?);
    gelu_backward_act(dev, &dyd, &act_upload(dev, x, bf16)?, &mut dx)?;
    act_to_host(dev, &dx)
}

/// Area or bilinear resize of `[bc, sh, sw]` maps to `[bc, dh, dw]` (twins of `resample::*`).
pub fn resize(
    dev: &Device,
    area: bool,
    src: &[f32],
    bc: usize,
    (sh, sw): (usize, usize),
    (dh, dw): (usize, usize),
) -> Result<Vec<f32>, CudaError> {
    assert_eq!(src.len(), bc * sh * sw, "resize: src is not [{bc}, {sh}, {sw}]");
    let s = &dev.stream;
    let srcd = s.clone_htod(src)?;
    let mut dst = s.alloc_zeros::<f32>(bc * dh * dw)?;
    let dims = [bc as i32, sh as i32, sw as i32, dh as i32, dw as i32];
    let f = dev.function("bsq.cu", if area { "area_resize_f32" } else { "bilinear_resize_f32" })?;
    let mut b = s.launch_builder(&f);
    b.arg(&srcd).arg(&mut dst);
    for v in &dims {
        b.arg(v);
    }
    let accumulate = 0i32;
    if !area {
        b.arg(&accumulate);
    }
    // SAFETY: argument lists as declared in bsq.cu.
    unsafe { b.launch(elementwise(bc * dh * dw)) }?;
    Ok(s.clone_dtoh(&dst)?)
}

/// Sign quantisation of `r [b, d, n]` with optional flips `[b, n, d]`: clean bits `[b, n, d]` and the
/// codes of the flipped bits `[b, d, n]` (twin of `bsq::quantize` plus self-correction's flip).
pub fn quantize(
    dev: &Device,
    r: &[f32],
    flips: Option<&[u8]>,
    b: usize,
    d: usize,
    n: usize,
) -> Result<(Vec<u8>, Vec<f32>), CudaError> {
    assert_eq!(r.len(), b * d * n, "quantize: r is not [{b}, {d}, {n}]");
    assert!(flips.is_none_or(|f| f.len() == b * n * d), "quantize: flips are not [{b}, {n}, {d}]");
    let s = &dev.stream;
    let f = dev.function("bsq.cu", "quantize_f32")?;
    let rd = s.clone_htod(r)?;
    let fl = match flips {
        Some(x) => Some(s.clone_htod(x)?),
        None => None,
    };
    let mut bits = s.alloc_zeros::<u8>(b * n * d)?;
    let mut q = s.alloc_zeros::<f32>(b * d * n)?;
    let (bi, di, ni) = (b as i32, d as i32, n as i32);
    let null = 0u64;
    let mut l = s.launch_builder(&f);
    l.arg(&rd);
    match &fl {
        Some(x) => l.arg(x),
        None => l.arg(&null),
    };
    l.arg(&mut bits).arg(&mut q).arg(&bi).arg(&di).arg(&ni);
    // SAFETY: argument list as declared in bsq.cu; `flips` may be null.
    unsafe { l.launch(elementwise(b * d * n)) }?;
    Ok((s.clone_dtoh(&bits)?, s.clone_dtoh(&q)?))
}

/// A parameter range's group runs (`adamw::GroupRuns`) on the device, as `adamw_dev` reads them.
pub struct DeviceGroupRuns {
    /// `[runs]` each run's first element.
    starts: CudaSlice<i64>,
    /// `[runs]` each run's group byte.
    bytes: CudaSlice<u8>,
    len: usize,
}

impl DeviceGroupRuns {
    pub fn upload(dev: &Device, runs: &crate::adamw::GroupRuns) -> Result<DeviceGroupRuns, CudaError> {
        assert!(!runs.is_empty(), "adamw: no parameters grouped");
        assert!(runs.bytes().len() <= i32::MAX as usize, "adamw: more group runs than adamw.cu counts");
        let s = &dev.stream;
        Ok(DeviceGroupRuns {
            starts: s.clone_htod(runs.starts())?,
            bytes: s.clone_htod(runs.bytes())?,
            len: runs.len(),
        })
    }

    /// The elements covered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Elements a block of adamw.cu's `adamw_f32` takes at a time (`ADAMW_CHUNK`).
const ADAMW_CHUNK: usize = 4096;

/// One AdamW step on device buffers (twin of `adamw::adamw_update`): `params`, `m`, `v` updated in
/// place from `grads`; `groups` the elements' group bytes (`adamw::group_byte`: weight decay and an
/// index into `lr_mult`, the learning-rate multipliers). `params16`, when given, receives the updated
/// parameters rounded to bf16 (as `linear::to_bf16_dev` would): a buffer, or the part of one that a
/// ZeRO-1 shard updates.
#[allow(clippy::too_many_arguments)]
pub fn adamw_dev<P16: DevicePtrMut<u16> + DeviceSlice<u16>>(
    dev: &Device,
    params: &mut dyn BufMut,
    params16: Option<&mut P16>,
    grads: &dyn Buf,
    m: &mut dyn BufMut,
    v: &mut dyn BufMut,
    groups: &DeviceGroupRuns,
    lr_mult: &CudaSlice<f64>,
    s: &crate::adamw::AdamWScalars,
) -> Result<(), CudaError> {
    let n = params.count();
    assert!(grads.count() >= n && m.count() >= n && v.count() >= n && groups.len() == n, "adamw: lengths");
    assert!(!lr_mult.is_empty(), "adamw: no learning-rate multipliers");
    assert!(params16.as_ref().is_none_or(|p16| p16.len() >= n), "adamw: params16 holds fewer values than params");
    let st = &dev.stream;
    let args = [
        Arg::Ptr(params.addr_mut(st)),
        Arg::Ptr(params16.map_or(0, |p16| p16.device_ptr_mut(st).0)),
        Arg::Ptr(grads.addr(st)),
        Arg::Ptr(m.addr_mut(st)),
        Arg::Ptr(v.addr_mut(st)),
        Arg::Ptr(groups.starts.device_ptr(st).0),
        Arg::Ptr(groups.bytes.device_ptr(st).0),
        Arg::int(groups.bytes.len()),
        Arg::Ptr(lr_mult.device_ptr(st).0),
        Arg::int(lr_mult.len()),
        Arg::I64(n as i64),
        Arg::F64(s.step_size),
        Arg::F32(s.beta1),
        Arg::F32(s.beta2),
        Arg::F32(s.eps),
        Arg::F32(s.bc2_sqrt),
        Arg::F32(s.shrink),
        Arg::F64(s.grad_scale),
    ];
    // 256 threads per block, a chunk of ADAMW_CHUNK elements at a time (grid-stride over chunks)
    let blocks = n.div_ceil(ADAMW_CHUNK).clamp(1, 65_535) as u32;
    let cfg = cudarc::driver::LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: argument list as declared in adamw.cu; lengths asserted above, the runs cover exactly n
    // elements from 0 (GroupRuns' invariant; the kernel clamps a group byte's index to `lr_mult`).
    unsafe { dev.launch("adamw.cu", "adamw_f32", cfg, &args) }
}

/// The weights' moving average on device buffers (twin of `adamw::ema_update`): `ema` updated in place
/// towards `params`.
pub fn ema_dev(dev: &Device, ema: &mut dyn BufMut, params: &dyn Buf, decay: f64) -> Result<(), CudaError> {
    let n = ema.count();
    assert!(params.count() >= n, "ema: params holds fewer values than the average");
    let st = &dev.stream;
    let args = [
        Arg::Ptr(ema.addr_mut(st)),
        Arg::Ptr(params.addr(st)),
        Arg::I64(n as i64),
        Arg::F32(decay as f32),
        Arg::F32(1.0 - decay as f32), // (as the twin: of the f32 decay)
    ];
    // SAFETY: argument list as declared in adamw.cu; lengths asserted above.
    unsafe { dev.launch("adamw.cu", "ema_f32", elementwise(n), &args) }
}

/// The moving average of host values through the device (tests).
pub fn ema(dev: &Device, ema: &[f32], params: &[f32], decay: f64) -> Result<Vec<f32>, CudaError> {
    let st = &dev.stream;
    let (mut e, p) = (st.clone_htod(ema)?, st.clone_htod(params)?);
    ema_dev(dev, &mut e, &p, decay)?;
    Ok(st.clone_dtoh(&e)?)
}

/// `Σ x²` of a device buffer, accumulated in f64 (twin of `adamw::sum_squares`).
pub fn sum_squares_dev(dev: &Device, x: &dyn Buf) -> Result<f64, CudaError> {
    let st = &dev.stream;
    let n = x.count();
    let cfg = elementwise(n);
    let blocks = cfg.grid_dim.0 as usize;
    let (mut partial, mut out) = (st.alloc_zeros::<f64>(blocks)?, st.alloc_zeros::<f64>(1)?);
    let args = [Arg::Ptr(x.addr(st)), Arg::I64(n as i64), Arg::Ptr(partial.device_ptr_mut(st).0)];
    // SAFETY: sum_squares_f32(x, n, partial) writes one f64 per block of `cfg`.
    unsafe { dev.launch("adamw.cu", "sum_squares_f32", cfg, &args) }?;
    let args = [Arg::Ptr(partial.device_ptr(st).0), Arg::I32(blocks as i32), Arg::Ptr(out.device_ptr_mut(st).0)];
    // SAFETY: sum_partials_f64(partial, count, out), one block of 256 threads.
    unsafe { dev.launch("adamw.cu", "sum_partials_f64", per_row(1, 256), &args) }?;
    Ok(st.clone_dtoh(&out)?[0])
}

/// Parameters and moments after an AdamW step.
pub struct AdamWOut {
    pub params: Vec<f32>,
    /// The updated parameters' bf16 copy, as the kernel wrote it.
    pub params16: Vec<u16>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// One AdamW step on host buffers (the equivalence test's entry point to [`adamw_dev`]); the
/// parameters' group bytes and the learning-rate multipliers they index come as a pair.
pub fn adamw(
    dev: &Device,
    params: &[f32],
    grads: &[f32],
    m: &[f32],
    v: &[f32],
    (groups, lr_mult): (&crate::adamw::GroupRuns, &[f64]),
    s: &crate::adamw::AdamWScalars,
) -> Result<AdamWOut, CudaError> {
    assert!(groups.bytes().iter().all(|&g| ((g >> 1) as usize) < lr_mult.len()), "adamw: a group byte past lr_mult");
    let st = &dev.stream;
    let (mut p, g, mut md, mut vd) =
        (st.clone_htod(params)?, st.clone_htod(grads)?, st.clone_htod(m)?, st.clone_htod(v)?);
    let (gd, kd) = (DeviceGroupRuns::upload(dev, groups)?, st.clone_htod(lr_mult)?);
    let mut p16 = st.alloc_zeros::<u16>(params.len())?;
    adamw_dev(dev, &mut p, Some(&mut p16), &g, &mut md, &mut vd, &gd, &kd, s)?;
    Ok(AdamWOut {
        params: st.clone_dtoh(&p)?,
        params16: st.clone_dtoh(&p16)?,
        m: st.clone_dtoh(&md)?,
        v: st.clone_dtoh(&vd)?,
    })
}

/// `Σ x²` of a host buffer on the device.
pub fn sum_squares(dev: &Device, x: &[f32]) -> Result<f64, CudaError> {
    sum_squares_dev(dev, &dev.stream.clone_htod(x)?)
}
