//! 2-D rotary position embedding, upstream mode 2 ("star style", `rope2d_normalized_by_hw=2`).
//!
//! Dims: `c` head dim (a multiple of 4), `P = c/2` rotated pairs. Pair `p` rotates elements `(2p, 2p+1)`
//! of a head by an angle: `y·θ_p` for `p < P/2`, `x·θ_{p−P/2}` otherwise, with
//! `θ_j = 1/10000^(2j/P)`. Token `(i, j)` of a scale `h×w` sits at grid coordinates
//! `(round(i·H/h), round(j·W/w))` (f32 arithmetic, round half to even) in the frame `(H, W)` = the last
//! scale of its aspect-ratio template's `1M` schedule, so every scale and resolution shares one frame.
//! The table is computed in f32 exactly as upstream does; the SOS token (scale 0, 1×1) gets angle 0.

use crate::rows::for_row_runs;
use crate::Real;

/// `cos`/`sin` of every token's angles: `[L, P]` each, tokens in schedule order.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    pub pairs: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, scales: &[(usize, usize)], frame: (usize, usize)) -> RopeTable {
        assert!(head_dim.is_multiple_of(4), "rope: head dim {head_dim} must be a multiple of 4");
        let pairs = head_dim / 2;
        let quarter = pairs / 2;
        let inv_freq: Vec<f32> = (0..quarter).map(|j| 1.0 / 10000f32.powf((2 * j) as f32 / pairs as f32)).collect();
        let (fh, fw) = frame;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for &(h, w) in scales {
            let (sy, sx) = ((fh as f64 / h as f64) as f32, (fw as f64 / w as f64) as f32);
            for i in 0..h {
                for j in 0..w {
                    let y = (i as f32 * sy).round_ties_even();
                    let x = (j as f32 * sx).round_ties_even();
                    for p in 0..pairs {
                        let a = if p < quarter { y * inv_freq[p] } else { x * inv_freq[p - quarter] };
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        RopeTable { pairs, cos, sin }
    }

    pub fn num_tokens(&self) -> usize {
        self.cos.len() / self.pairs
    }
}

/// Rotate in place every head of `x: [B·L, H·c]` (token `t = row % L` uses table row `offset + t`).
/// `inverse` applies the transposed rotation: the backward of the forward rotation.
pub fn rope_apply<T: Real>(x: &mut [T], table: &RopeTable, l: usize, heads: usize, offset: usize, inverse: bool) {
    let p = table.pairs;
    let c = 2 * p;
    assert_eq!(x.len() % (heads * c), 0, "rope_apply: rows are not H·c wide");
    assert!(offset + l <= table.num_tokens(), "rope_apply: the table has fewer than {} tokens", offset + l);
    for_row_runs(x, heads * c, |first, x| {
        for (row, v) in x.chunks_exact_mut(heads * c).enumerate() {
            let t = offset + (first + row) % l;
            let (cs, sn) = (&table.cos[t * p..(t + 1) * p], &table.sin[t * p..(t + 1) * p]);
            for h in 0..heads {
                let head = &mut v[h * c..(h + 1) * c];
                for k in 0..p {
                    let (co, s) = (T::of(cs[k] as f64), T::of(sn[k] as f64));
                    let s = if inverse { -s } else { s };
                    let (a, b) = (head[2 * k], head[2 * k + 1]);
                    head[2 * k] = co * a - s * b;
                    head[2 * k + 1] = s * a + co * b;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, dot, noise};

    #[test]
    fn coordinates_live_in_the_1m_frame() {
        // 16×16 scale in the 64×64 frame: rows 0, 4, …, 60; the 1×1 scale sits at the origin
        let t = RopeTable::new(8, &[(1, 1), (16, 16)], (64, 64));
        assert_eq!(t.num_tokens(), 257);
        assert!(t.cos[..4].iter().all(|&c| c == 1.0) && t.sin[..4].iter().all(|&s| s == 0.0));
        // token (1, 0) of the 16×16 scale: y = 4, pair 0 angle = 4·θ_0 = 4
        let row = 1 + 16;
        assert!((t.sin[row * 4] - 4f32.sin()).abs() < 1e-6);
        // x pairs of that token are unrotated (x = 0)
        assert_eq!(t.sin[row * 4 + 2], 0.0);
        // 3×3 in a 64 frame: 64/3 = 21.33 → rows 0, 21, 43 (42.67 rounds up)
        let t = RopeTable::new(4, &[(3, 3)], (64, 64));
        let y_of = |i: usize| t.sin[(i * 3) * 2].asin();
        assert!((y_of(2) - 43f32.sin().asin()).abs() < 1e-5);
    }

    #[test]
    fn rotation_preserves_norm_and_inverse_is_the_gradient() {
        let scales = [(1, 1), (2, 3)];
        let t = RopeTable::new(8, &scales, (52, 78));
        let (l, h) = (7, 2);
        let x = noise(2 * l * h * 8, 1);
        let mut y = x.clone();
        rope_apply(&mut y, &t, l, h, 0, false);
        let n0: f64 = x.iter().map(|v| v * v).sum();
        let n1: f64 = y.iter().map(|v| v * v).sum();
        // the table is f32, so cos² + sin² = 1 only to f32 precision
        assert!((n0 - n1).abs() < 1e-6 * n0);
        let r = noise(x.len(), 2);
        let mut g = r.clone();
        rope_apply(&mut g, &t, l, h, 0, true);
        check(
            "rope",
            &x,
            &g,
            |v| {
                let mut y = v.to_vec();
                rope_apply(&mut y, &t, l, h, 0, false);
                dot(&y, &r)
            },
            1e-6,
            1e-9,
        );
        let mut back = y.clone();
        rope_apply(&mut back, &t, l, h, 0, true);
        assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
