//! Spatial patchify (upstream `apply_spatial_patchify`, the 8B model): the tokenizer's latent and its
//! bit labels live on a schedule of twice the transformer's sides, and each transformer token is the
//! 2×2 `pixel_unshuffle` of its scale (`d_vae` channels → `4·d_vae`). Self-correction runs on the
//! tokenizer's schedule; [`unshuffle_tokens`] then turns its labels and teacher-forcing inputs into
//! the transformer's tokens, and sampling [`shuffle_scale`]s each sampled scale back before it
//! accumulates the codes.
//!
//! Channel order as PyTorch's `pixel_unshuffle(x, 2)`: token `(y, x)` channel `c·4 + i·2 + j` is the
//! tokenizer's position `(2y + i, 2x + j)` channel `c`. Both layouts are token-major (`[tokens, ch]`),
//! and a scale holds as many values in either, so a scale starts at the same offset in both.
//!
//! Dims: `(h, w)` a transformer scale, `(2h, 2w)` the tokenizer's, `d` = `d_vae`, `B` samples.

/// The tokenizer's schedule of a transformer schedule: every side doubled.
pub fn tokenizer_scales(scales: &[(usize, usize)]) -> Vec<(usize, usize)> {
    scales.iter().map(|&(h, w)| (2 * h, 2 * w)).collect()
}

/// The transformer's schedule of a tokenizer schedule (every side halved), or the first scale with an
/// odd side.
pub fn transformer_scales(scales: &[(usize, usize)]) -> Result<Vec<(usize, usize)>, (usize, usize)> {
    match scales.iter().find(|&&(h, w)| h % 2 == 1 || w % 2 == 1) {
        Some(&odd) => Err(odd),
        None => Ok(scales.iter().map(|&(h, w)| (h / 2, w / 2)).collect()),
    }
}

/// One scale: `src [2h·2w, d]` (tokenizer layout) → `dst [h·w, 4d]` (transformer tokens).
pub fn unshuffle_scale<T: Copy>(src: &[T], (h, w): (usize, usize), d: usize, dst: &mut [T]) {
    assert!(src.len() == 4 * h * w * d && dst.len() == src.len(), "patchify: scale {h}×{w} of d = {d}");
    for y in 0..h {
        for x in 0..w {
            let tok = &mut dst[(y * w + x) * 4 * d..][..4 * d];
            for (ij, (i, j)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                let from = &src[((2 * y + i) * 2 * w + 2 * x + j) * d..][..d];
                for (c, &v) in from.iter().enumerate() {
                    tok[c * 4 + ij] = v;
                }
            }
        }
    }
}

/// The inverse of [`unshuffle_scale`] (upstream's `pixel_shuffle(2)` of sampled codes): `src [h·w, 4d]`
/// → `dst [2h·2w, d]`.
pub fn shuffle_scale<T: Copy>(src: &[T], (h, w): (usize, usize), d: usize, dst: &mut [T]) {
    assert!(src.len() == 4 * h * w * d && dst.len() == src.len(), "patchify: scale {h}×{w} of d = {d}");
    for y in 0..h {
        for x in 0..w {
            let tok = &src[(y * w + x) * 4 * d..][..4 * d];
            for (ij, (i, j)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                let to = &mut dst[((2 * y + i) * 2 * w + 2 * x + j) * d..][..d];
                for (c, v) in to.iter_mut().enumerate() {
                    *v = tok[c * 4 + ij];
                }
            }
        }
    }
}

/// A batch of self-correction outputs `[B, rows, d]` on the tokenizer's schedule → `[B, rows/4, 4d]`
/// transformer tokens, for the transformer scales `scales[first..]` (0 for labels, 1 for the
/// teacher-forcing inputs, which start at the second scale). Twin of `cuda::bsq::unshuffle_tokens`.
pub fn unshuffle_tokens<T: Copy + Default>(
    src: &[T],
    b: usize,
    d: usize,
    scales: &[(usize, usize)],
    first: usize,
) -> Vec<T> {
    let per: usize = scales[first..].iter().map(|&(h, w)| 4 * h * w * d).sum();
    assert_eq!(src.len(), b * per, "patchify: {} values are not [B={b}, {per}]", src.len());
    let mut dst = vec![T::default(); src.len()];
    for s in 0..b {
        let mut at = s * per;
        for &hw in &scales[first..] {
            let n = 4 * hw.0 * hw.1 * d;
            unshuffle_scale(&src[at..at + n], hw, d, &mut dst[at..at + n]);
            at += n;
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index map of PyTorch's `pixel_unshuffle(2)`: `x.view(d, h, 2, w, 2).permute(0, 2, 4, 1, 3)`
    /// of a channel-major plane, written out on a latent whose values name their position.
    #[test]
    fn unshuffle_is_pytorchs_pixel_unshuffle() {
        let (h, w, d) = (2, 3, 3);
        // token-major [2h·2w, d]: value = (row·100 + col)·10 + channel
        let src: Vec<u32> = (0..2 * h)
            .flat_map(|r| (0..2 * w).flat_map(move |c| (0..d).map(move |ch| (r * 100 + c) as u32 * 10 + ch as u32)))
            .collect();
        let mut dst = vec![0; src.len()];
        unshuffle_scale(&src, (h, w), d, &mut dst);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..d {
                    for i in 0..2 {
                        for j in 0..2 {
                            let want = ((2 * y + i) * 100 + 2 * x + j) as u32 * 10 + ch as u32;
                            assert_eq!(dst[(y * w + x) * 4 * d + ch * 4 + i * 2 + j], want, "token ({y},{x}) ch {ch}");
                        }
                    }
                }
            }
        }
        let mut back = vec![0; src.len()];
        shuffle_scale(&dst, (h, w), d, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn batches_unshuffle_scale_by_scale() {
        let scales = [(1, 1), (1, 2), (2, 2)];
        let (b, d) = (2, 2);
        let per: usize = scales[1..].iter().map(|&(h, w)| 4 * h * w * d).sum();
        let src: Vec<u16> = (0..(b * per) as u16).collect();
        let out = unshuffle_tokens(&src, b, d, &scales, 1);
        let mut want = Vec::new();
        for s in 0..b {
            let mut at = s * per;
            for &hw in &scales[1..] {
                let n = 4 * hw.0 * hw.1 * d;
                let mut one = vec![0; n];
                unshuffle_scale(&src[at..at + n], hw, d, &mut one);
                want.extend(one);
                at += n;
            }
        }
        assert_eq!(out, want);
        assert_eq!(transformer_scales(&tokenizer_scales(&scales)), Ok(scales.to_vec()));
        assert_eq!(transformer_scales(&[(2, 2), (3, 4)]), Err((3, 4)));
    }
}
