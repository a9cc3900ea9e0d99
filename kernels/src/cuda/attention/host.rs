//! Host-buffer wrappers of the attention kernels, for the equivalence tests and benchmarks: each copies
//! its inputs to the device, runs the device entry point of [`super`] and copies the outputs back.

use super::*;
use crate::cuda::ops::{act_to_host, act_zeros};

/// Host-buffer forward for the equivalence test: `(o, lse)`; `o` written in bf16 alone when
/// `bf16_out` (returned widened).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    dev: &Device,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    segs: &[Segment],
    dims: AttnDims,
    math: Math,
    bf16_out: bool,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let w = dims.heads * dims.head_dim;
    let (nq, nkeys) = (q.len() / w, k.len() / w);
    let s = &dev.stream;
    let r = AttnRanges::new(dev, segs, nq, nkeys)?;
    let (qd, kd, vd) = (s.clone_htod(q)?, s.clone_htod(k)?, s.clone_htod(v)?);
    let mut o = act_zeros(dev, q.len(), bf16_out)?;
    let mut lse = s.alloc_zeros::<f32>(nq * dims.heads)?;
    attention_forward_dev(dev, &qd, &kd, &vd, &mut o, &mut lse, &r, dims, math)?;
    Ok((act_to_host(dev, &o)?, s.clone_dtoh(&lse)?))
}

/// Host-buffer backward for the equivalence test: `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn attention_backward(
    dev: &Device,
    d_o: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    segs: &[Segment],
    dims: AttnDims,
    math: Math,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), CudaError> {
    let w = dims.heads * dims.head_dim;
    let (nq, nkeys) = (q.len() / w, k.len() / w);
    let s = &dev.stream;
    let r = AttnRanges::new(dev, segs, nq, nkeys)?;
    let up = |x: &[f32]| s.clone_htod(x);
    let (qd, kd, vd, od, dod, ld) = (up(q)?, up(k)?, up(v)?, up(o)?, up(d_o)?, up(lse)?);
    let (mut dq, mut dk, mut dv) =
        (s.alloc_zeros::<f32>(q.len())?, s.alloc_zeros::<f32>(k.len())?, s.alloc_zeros::<f32>(v.len())?);
    let mut delta = s.alloc_zeros::<f32>(nq * dims.heads)?;
    attention_backward_dev(
        dev,
        &dod,
        (&qd, &kd, &vd),
        &od,
        &ld,
        &r,
        dims,
        (&mut dq, &mut dk, &mut dv),
        &mut delta,
        math,
    )?;
    Ok((s.clone_dtoh(&dq)?, s.clone_dtoh(&dk)?, s.clone_dtoh(&dv)?))
}

/// Host-slice [`normalize_heads_dev`]: `(y, norms)`.
pub fn normalize_heads(
    dev: &Device,
    x: &[f32],
    gain: &[f32],
    heads: usize,
    c: usize,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let s = &dev.stream;
    let (xd, gd) = (s.clone_htod(x)?, s.clone_htod(gain)?);
    let (mut y, mut norms) = (s.alloc_zeros::<f32>(x.len())?, s.alloc_zeros::<f32>(x.len() / c)?);
    normalize_heads_dev(dev, &xd, &gd, &mut y, &mut norms, (heads, c))?;
    Ok((s.clone_dtoh(&y)?, s.clone_dtoh(&norms)?))
}

/// Host-slice [`normalize_heads_backward_dev`]: `(dx, dgain)`.
pub fn normalize_heads_backward(
    dev: &Device,
    dy: &[f32],
    x: &[f32],
    norms: &[f32],
    gain: &[f32],
    heads: usize,
    c: usize,
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let s = &dev.stream;
    let (dyd, xd, nd, gd) = (s.clone_htod(dy)?, s.clone_htod(x)?, s.clone_htod(norms)?, s.clone_htod(gain)?);
    let (mut dx, mut udy, mut dgain) =
        (s.alloc_zeros::<f32>(x.len())?, s.alloc_zeros::<f32>(x.len() / c)?, s.alloc_zeros::<f32>(heads)?);
    normalize_heads_backward_dev(dev, &dyd, &xd, &nd, &gd, &mut dx, &mut udy, Some(&mut dgain), (heads, c))?;
    Ok((s.clone_dtoh(&dx)?, s.clone_dtoh(&dgain)?))
}

/// One warp per item, 8 warps per block.
pub(crate) fn per_warp(items: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (items.div_ceil(8).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

#[cfg(test)]
mod tests {
    use super::expand_segments;
    use crate::attention::{block_causal_segments, cross_segments, Segment};

    #[test]
    fn block_causal_rows_see_earlier_scales_and_keys_are_seen_by_later_ones() {
        // 2 samples of scales with 1, 4 and 16 tokens (L = 21)
        let segs = block_causal_segments(2, &[1, 4, 16]);
        let [k0, nk, q0, nq] = expand_segments(&segs, 42, 42).unwrap();
        // sample 1, a query of the second scale: keys of scales 0 and 1 of sample 1
        assert_eq!((k0[21 + 2], nk[21 + 2]), (21, 5));
        // sample 0, a query of the last scale: the whole sample
        assert_eq!((k0[20], nk[20]), (0, 21));
        // a key of scale 1 of sample 0 is seen by the queries of scales 1 and 2 of sample 0
        assert_eq!((q0[3], nq[3]), (1, 20));
        // the start token is seen by its whole sample
        assert_eq!((q0[21], nq[21]), (21, 21));
    }

    #[test]
    fn cross_attention_and_the_pool_see_their_own_captions() {
        let cu = [0, 2, 5];
        let [k0, nk, q0, nq] = expand_segments(&cross_segments(3, &cu), 6, 5).unwrap();
        assert_eq!((k0, nk), (vec![0, 0, 0, 2, 2, 2], vec![2, 2, 2, 3, 3, 3]));
        assert_eq!((q0, nq), (vec![0, 0, 3, 3, 3], vec![3, 3, 3, 3, 3]));
        let [k0, nk, q0, nq] = expand_segments(&cross_segments(1, &cu), 2, 5).unwrap();
        assert_eq!((k0, nk, q0, nq), (vec![0, 2], vec![2, 3], vec![0, 0, 1, 1, 1], vec![1, 1, 1, 1, 1]));
    }

    #[test]
    fn segment_sets_the_kernels_cannot_run_are_refused() {
        let seg = |q0, nq, k0, nk| Segment { q0, nq, k0, nk };
        // a query row in two segments
        let e = expand_segments(&[seg(0, 2, 0, 1), seg(1, 1, 1, 1)], 2, 2).unwrap_err();
        assert!(e.contains("query row 1"), "{e}");
        // key 0 seen by queries 0 and 2 but not 1
        let e = expand_segments(&[seg(0, 1, 0, 1), seg(1, 1, 1, 1), seg(2, 1, 0, 1)], 3, 2).unwrap_err();
        assert!(e.contains("key row 0"), "{e}");
        // out of range
        assert!(expand_segments(&[seg(0, 3, 0, 1)], 2, 1).is_err());
    }
}
