//! Spatial resampling of channel-major feature maps, with PyTorch's semantics.
//!
//! Dims legend: `C` channels (d for BSQ latents), `(sh, sw)` source height/width, `(dh, dw)` destination
//! height/width. Every buffer is channel-major `[C, H, W]`, the layout of upstream's `(B, d, 1, H, W)`
//! with the batch and the singleton time axis dropped.
//!
//! Upstream resizes with `F.interpolate(x, size=(1, h, w), mode=...)` on 5-D tensors:
//! - `mode='area'` is `adaptive_avg_pool3d`: output cell `i` averages input rows
//!   `[floor(i·sh/dh), ceil((i+1)·sh/dh))`, the sum taken in f32 in row-major order, then divided by the
//!   window height and then by its width (`sum / kh / kw`, as ATen's CPU kernel does). The one
//!   exception: for a 1×1 output ATen takes `input.mean()`, another summation order, so a scale-0
//!   residual may differ from upstream's in its last bits (a bit whose residual is within rounding of
//!   zero may then go either way: `infinity data verify` allows for it).
//! - `mode='trilinear'` with `align_corners=False` and `t = 1 → 1` is bilinear in (H, W). ATen computes
//!   `scale = (f32)in / out`, `src = scale·(dst + 0.5) − 0.5` clamped at 0, `i0 = min(floor(src), in−1)`,
//!   `λ = clamp(src − i0, 0, 1)`, `i1 = i0 + (i0 < in−1)`, then interpolates the width axis first:
//!   `out = (x[h0,w0]·μ0 + x[h0,w1]·μ1)·λ0 + (x[h1,w0]·μ0 + x[h1,w1]·μ1)·λ1`.
//!
//! These ops have no backward: they act on BSQ latents and codes, which carry no gradient (upstream runs
//! bitwise self-correction under `no_grad`).

/// One output coordinate of a 1-D linear resize: the two source taps and their weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

/// Taps for resizing an axis of length `src` to length `dst` (`align_corners=False`, no scale factor).
pub fn linear_taps(src: usize, dst: usize) -> Vec<LinearTap> {
    assert!(src > 0 && dst > 0, "linear_taps: empty axis ({src} -> {dst})");
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|o| {
            let real = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(src - 1);
            let lambda = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < src - 1 { i0 + 1 } else { i0 };
            LinearTap { i0, i1, w0: 1.0 - lambda, w1: lambda }
        })
        .collect()
}

/// Bilinear resize (upstream `trilinear` on `(B,C,1,H,W)`). `src`: `[C, sh, sw]`, `dst`: `[C, dh, dw]`.
pub fn bilinear_resize(src: &[f32], c: usize, (sh, sw): (usize, usize), dst: &mut [f32], (dh, dw): (usize, usize)) {
    assert_eq!(src.len(), c * sh * sw, "bilinear_resize: src is not [C={c}, {sh}, {sw}]");
    assert_eq!(dst.len(), c * dh * dw, "bilinear_resize: dst is not [C={c}, {dh}, {dw}]");
    if (sh, sw) == (dh, dw) {
        // λ = 0 on every tap: the formula reduces to x·1 + x'·0, i.e. a copy for finite inputs.
        dst.copy_from_slice(src);
        return;
    }
    let ty = linear_taps(sh, dh);
    let tx = linear_taps(sw, dw);
    for ch in 0..c {
        let s = &src[ch * sh * sw..(ch + 1) * sh * sw];
        let o = &mut dst[ch * dh * dw..(ch + 1) * dh * dw];
        for (y, ly) in ty.iter().enumerate() {
            let r0 = &s[ly.i0 * sw..(ly.i0 + 1) * sw];
            let r1 = &s[ly.i1 * sw..(ly.i1 + 1) * sw];
            for (x, lx) in tx.iter().enumerate() {
                let top = r0[lx.i0] * lx.w0 + r0[lx.i1] * lx.w1;
                let bottom = r1[lx.i0] * lx.w0 + r1[lx.i1] * lx.w1;
                o[y * dw + x] = top * ly.w0 + bottom * ly.w1;
            }
        }
    }
}

/// Window `[start, end)` of adaptive average pooling for output index `i`.
fn area_window(i: usize, src: usize, dst: usize) -> (usize, usize) {
    let start = (i * src) / dst;
    let end = ((i + 1) * src).div_ceil(dst);
    (start, end)
}

/// Area resize (upstream `area` = adaptive average pooling). `src`: `[C, sh, sw]`, `dst`: `[C, dh, dw]`.
pub fn area_resize(src: &[f32], c: usize, (sh, sw): (usize, usize), dst: &mut [f32], (dh, dw): (usize, usize)) {
    assert_eq!(src.len(), c * sh * sw, "area_resize: src is not [C={c}, {sh}, {sw}]");
    assert_eq!(dst.len(), c * dh * dw, "area_resize: dst is not [C={c}, {dh}, {dw}]");
    let wy: Vec<_> = (0..dh).map(|y| area_window(y, sh, dh)).collect();
    let wx: Vec<_> = (0..dw).map(|x| area_window(x, sw, dw)).collect();
    for ch in 0..c {
        let s = &src[ch * sh * sw..(ch + 1) * sh * sw];
        let o = &mut dst[ch * dh * dw..(ch + 1) * dh * dw];
        for (y, &(y0, y1)) in wy.iter().enumerate() {
            for (x, &(x0, x1)) in wx.iter().enumerate() {
                let mut sum = 0.0f32;
                for row in s[y0 * sw..y1 * sw].chunks_exact(sw) {
                    for v in &row[x0..x1] {
                        sum += v;
                    }
                }
                o[y * dw + x] = sum / (y1 - y0) as f32 / (x1 - x0) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_taps_match_pytorch_for_2_to_4() {
        // torch: F.interpolate(torch.tensor([[[0., 1.]]]), size=4, mode='linear') = [0, .25, .75, 1]
        let src = [0.0f32, 1.0];
        let mut dst = [0.0f32; 4];
        bilinear_resize(&src, 1, (1, 2), &mut dst, (1, 4));
        assert_eq!(dst, [0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn bilinear_downsample_3_to_2() {
        // scale = 1.5: src = 0.25 and 1.75 → [0.75·a + 0.25·b, 0.25·b + 0.75·c]
        let src = [0.0f32, 4.0, 8.0];
        let mut dst = [0.0f32; 2];
        bilinear_resize(&src, 1, (1, 3), &mut dst, (1, 2));
        assert_eq!(dst, [1.0, 7.0]);
    }

    #[test]
    fn area_windows_overlap_like_adaptive_pool() {
        // 5 → 3: windows [0,2), [1,4), [3,5)
        assert_eq!(area_window(0, 5, 3), (0, 2));
        assert_eq!(area_window(1, 5, 3), (1, 4));
        assert_eq!(area_window(2, 5, 3), (3, 5));
        let src = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        let mut dst = [0.0f32; 3];
        area_resize(&src, 1, (1, 5), &mut dst, (1, 3));
        assert_eq!(dst, [1.5, 3.0, 4.5]);
    }

    #[test]
    fn area_of_constant_is_constant_and_identity_is_copy() {
        let src = vec![0.3f32; 2 * 7 * 5];
        let mut dst = vec![0.0f32; 2 * 3 * 2];
        area_resize(&src, 2, (7, 5), &mut dst, (3, 2));
        assert!(dst.iter().all(|&v| (v - 0.3).abs() < 1e-7));
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut same = vec![0.0f32; 12];
        area_resize(&src, 1, (3, 4), &mut same, (3, 4));
        assert_eq!(same, src);
        bilinear_resize(&src, 1, (3, 4), &mut same, (3, 4));
        assert_eq!(same, src);
    }
}
