//! Softmax attention over segments: one kernel for block-causal self-attention over the scale schedule,
//! variable-length cross-attention to text tokens, and the attention pool of the start token.
//!
//! Dims: `H` heads, `c` head dim, rows of `Q: [Nq, H·c]` and `K, V: [Nk, H·c]` (head `h` at columns
//! `h·c..(h+1)·c`). A [`Segment`] says which query rows see which contiguous key rows:
//! - self-attention, sample `b`, scale `s`: the queries of scale `s` see keys `[b·L, b·L + end_s)`, i.e.
//!   every token of scales `≤ s` (upstream's block-causal mask `d[q] ≥ d[k]`), computed without
//!   materialising masked entries;
//! - cross-attention, sample `b`: its `L` queries see its own `T_b` text tokens;
//! - attention pool: one query row per sample sees its text tokens.
//!
//! Forward keeps the per-row log-sum-exp `lse: [Nq, H]`; backward recomputes probabilities from it
//! (as flash attention does) instead of storing `L×L` matrices. Every query row must belong to exactly
//! one segment; `dQ` is written, `dK`, `dV` are accumulated over segments (keys are shared).

use rayon::prelude::*;

use crate::matmul::{matmul, Mat};
use crate::rows::rows_per_task;
use crate::wide::wide;
use crate::Real;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First query row and number of query rows.
    pub q0: usize,
    pub nq: usize,
    /// First key row and number of key rows.
    pub k0: usize,
    pub nk: usize,
}

/// Segments of block-causal self-attention for `b` samples of a schedule with `tokens_per_scale`.
pub fn block_causal_segments(b: usize, tokens_per_scale: &[usize]) -> Vec<Segment> {
    let l: usize = tokens_per_scale.iter().sum();
    let mut out = Vec::new();
    for bi in 0..b {
        let mut start = 0;
        for &n in tokens_per_scale {
            out.push(Segment { q0: bi * l + start, nq: n, k0: bi * l, nk: start + n });
            start += n;
        }
    }
    out
}

/// Segments of variable-length cross-attention: sample `b`'s `per_sample` query rows see its text tokens
/// `cu[b] .. cu[b+1]` (`cu`: `B + 1` offsets). `per_sample = L` for the blocks' cross-attention, `1` for
/// the attention pool of the start token.
pub fn cross_segments(per_sample: usize, cu: &[usize]) -> Vec<Segment> {
    cu.windows(2)
        .enumerate()
        .map(|(bi, w)| Segment { q0: bi * per_sample, nq: per_sample, k0: w[0], nk: w[1] - w[0] })
        .collect()
}

/// Shapes shared by forward and backward.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub heads: usize,
    pub head_dim: usize,
    /// Logit scale (1 for upstream's cosine self-attention, `1/√c` for cross-attention).
    pub scale: f64,
}

impl AttnDims {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// `x ← e^(x − m)` over a row of scores (inlined into [`wide`]'s loops).
#[inline(always)]
pub(crate) fn exp_minus<T: Real>(row: &mut [T], m: T) {
    for x in row {
        *x = (*x - m).exp_simd();
    }
}

/// `O = softmax(scale·Q Kᵀ) V` per segment and head. o: `[Nq, H·c]`, lse: `[Nq, H]`.
/// Heads run in parallel (each into its own buffer, then interleaved).
pub fn attention_forward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &mut [T],
    lse: &mut [T],
    segs: &[Segment],
    dims: AttnDims,
) {
    let (w, c, heads) = (dims.width(), dims.head_dim, dims.heads);
    let nq = o.len() / w;
    let per_head: Vec<(Vec<T>, Vec<T>)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            // a row in no segment attends to nothing, as one whose segment has no keys: O = 0, lse = −∞
            let (mut oh, mut lh, mut s) = (vec![T::zero(); nq * c], vec![T::neg_infinity(); nq], Vec::new());
            for seg in segs {
                s.resize(seg.nq * seg.nk, T::zero());
                scores(q, k, seg, h, dims, &mut s);
                for i in 0..seg.nq {
                    let row = &mut s[i * seg.nk..(i + 1) * seg.nk];
                    let m = row.iter().copied().fold(T::neg_infinity(), T::max);
                    // (the exponentials in a loop of their own, which vectorises; the sum in order after)
                    wide(|| exp_minus(row, m));
                    let sum = row.iter().fold(T::zero(), |s, &x| s + x);
                    for x in row.iter_mut() {
                        *x /= sum;
                    }
                    lh[seg.q0 + i] = m + sum.ln();
                }
                // O_seg,h = P · V_seg,h
                matmul(
                    seg.nq,
                    c,
                    seg.nk,
                    &mut oh,
                    Mat::rows(seg.q0 * c, c),
                    false,
                    &s,
                    Mat::rows(0, seg.nk),
                    v,
                    Mat::rows(seg.k0 * w + h * c, w),
                    T::one(),
                );
            }
            (oh, lh)
        })
        .collect();
    for (h, (oh, lh)) in per_head.iter().enumerate() {
        for r in 0..nq {
            o[r * w + h * c..r * w + (h + 1) * c].copy_from_slice(&oh[r * c..(r + 1) * c]);
            lse[r * heads + h] = lh[r];
        }
    }
}

/// `S = scale · Q_seg,h · K_seg,hᵀ` into `s: [nq, nk]`.
fn scores<T: Real>(q: &[T], k: &[T], seg: &Segment, h: usize, dims: AttnDims, s: &mut [T]) {
    let (w, c) = (dims.width(), dims.head_dim);
    matmul(
        seg.nq,
        seg.nk,
        c,
        s,
        Mat::rows(0, seg.nk),
        false,
        q,
        Mat::rows(seg.q0 * w + h * c, w),
        k,
        Mat::rows(seg.k0 * w + h * c, w).t(),
        T::of(dims.scale),
    );
}

/// Backward of [`attention_forward`]. `dq` written; `dk`, `dv` accumulated (zero them first: unlike
/// the CUDA twin, `cuda::attention::attention_backward_dev`, which writes all three).
/// Heads run in parallel, each into its own buffers.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    d_o: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    segs: &[Segment],
    dims: AttnDims,
) {
    let (w, c, heads) = (dims.width(), dims.head_dim, dims.heads);
    let (nq, nk) = (dq.len() / w, dk.len() / w);
    let per_head: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let (mut dqh, mut dkh, mut dvh) =
                (vec![T::zero(); nq * c], vec![T::zero(); nk * c], vec![T::zero(); nk * c]);
            let (mut p, mut dp) = (Vec::new(), Vec::new());
            for seg in segs {
                p.resize(seg.nq * seg.nk, T::zero());
                dp.resize(seg.nq * seg.nk, T::zero());
                scores(q, k, seg, h, dims, &mut p);
                for i in 0..seg.nq {
                    let m = lse[(seg.q0 + i) * heads + h];
                    wide(|| exp_minus(&mut p[i * seg.nk..(i + 1) * seg.nk], m));
                }
                // dV += Pᵀ dO ;  dP = dO Vᵀ
                let (qv, kv) = (Mat::rows(seg.q0 * w + h * c, w), Mat::rows(seg.k0 * w + h * c, w));
                matmul(
                    seg.nk,
                    c,
                    seg.nq,
                    &mut dvh,
                    Mat::rows(seg.k0 * c, c),
                    true,
                    &p,
                    Mat::rows(0, seg.nk).t(),
                    d_o,
                    qv,
                    T::one(),
                );
                matmul(seg.nq, seg.nk, c, &mut dp, Mat::rows(0, seg.nk), false, d_o, qv, v, kv.t(), T::one());
                // dS = P ⊙ (dP − rowsum(dO ⊙ O)) (the rowsum equals Σ_j P_ij dP_ij)
                for i in 0..seg.nq {
                    let r = (seg.q0 + i) * w + h * c;
                    let di: T = (0..c).map(|t| d_o[r + t] * o[r + t]).sum();
                    for j in 0..seg.nk {
                        let idx = i * seg.nk + j;
                        dp[idx] = p[idx] * (dp[idx] - di);
                    }
                }
                // dQ = scale · dS K ;  dK += scale · dSᵀ Q
                let sc = T::of(dims.scale);
                matmul(
                    seg.nq,
                    c,
                    seg.nk,
                    &mut dqh,
                    Mat::rows(seg.q0 * c, c),
                    false,
                    &dp,
                    Mat::rows(0, seg.nk),
                    k,
                    kv,
                    sc,
                );
                matmul(
                    seg.nk,
                    c,
                    seg.nq,
                    &mut dkh,
                    Mat::rows(seg.k0 * c, c),
                    true,
                    &dp,
                    Mat::rows(0, seg.nk).t(),
                    q,
                    qv,
                    sc,
                );
            }
            (dqh, dkh, dvh)
        })
        .collect();
    for (h, (dqh, dkh, dvh)) in per_head.iter().enumerate() {
        for r in 0..nq {
            dq[r * w + h * c..r * w + (h + 1) * c].copy_from_slice(&dqh[r * c..(r + 1) * c]);
        }
        for r in 0..nk {
            for t in 0..c {
                dk[r * w + h * c + t] += dkh[r * c + t];
                dv[r * w + h * c + t] += dvh[r * c + t];
            }
        }
    }
}

/// Norm floor of `F.normalize` (`x / max(‖x‖, eps)`).
const NORMALIZE_EPS: f64 = 1e-12;

/// Cosine-attention normalisation: `y = gain[h] · x / max(‖x‖, eps)` per head of `x: [N, H·c]`
/// (upstream `F.normalize(q, dim=-1).mul(exp(scale_mul))` and `F.normalize(k, dim=-1)`).
/// Returns the clamped norms `[N, H]` for the backward.
pub fn normalize_heads_forward<T: Real>(x: &[T], y: &mut [T], heads: usize, head_dim: usize, gain: &[T]) -> Vec<T> {
    assert!(
        gain.len() == heads && x.len().is_multiple_of(heads * head_dim) && y.len() == x.len(),
        "normalize_heads: shapes"
    );
    let mut norms = vec![T::zero(); x.len() / head_dim];
    let per = rows_per_task(head_dim); // head vectors per task
    y.par_chunks_mut(per * head_dim).zip(norms.par_chunks_mut(per)).enumerate().for_each(|(j, (y, norms))| {
        for (k, (yh, norm)) in y.chunks_exact_mut(head_dim).zip(norms).enumerate() {
            let i = j * per + k;
            let xh = &x[i * head_dim..(i + 1) * head_dim];
            let n = xh.iter().map(|&v| v * v).sum::<T>().sqrt().max(T::of(NORMALIZE_EPS));
            let g = gain[i % heads];
            for (o, &v) in yh.iter_mut().zip(xh) {
                *o = g * v / n;
            }
            *norm = n;
        }
    });
    norms
}

/// Backward of [`normalize_heads_forward`]: `dx` written, `dgain` added when given.
#[allow(clippy::too_many_arguments)]
pub fn normalize_heads_backward<T: Real>(
    dy: &[T],
    x: &[T],
    norms: &[T],
    gain: &[T],
    dx: &mut [T],
    dgain: Option<&mut [T]>,
    heads: usize,
    head_dim: usize,
) {
    assert!(dy.len() == x.len() && dx.len() == x.len() && norms.len() * head_dim == x.len(), "normalize_heads: shapes");
    // u·dy per head vector (u = x / n; y = g·u), kept for dgain's sums in row order
    let mut udys = vec![T::zero(); norms.len()];
    let per = rows_per_task(head_dim); // head vectors per task
    dx.par_chunks_mut(per * head_dim).zip(udys.par_chunks_mut(per)).enumerate().for_each(|(j, (dx, udys))| {
        for (k, (dxh, udy_out)) in dx.chunks_exact_mut(head_dim).zip(udys).enumerate() {
            let i = j * per + k;
            let (xh, dyh) = (&x[i * head_dim..(i + 1) * head_dim], &dy[i * head_dim..(i + 1) * head_dim]);
            let (n, g) = (norms[i], gain[i % heads]);
            let udy: T = xh.iter().zip(dyh).map(|(&a, &b)| a / n * b).sum();
            let clamped = n <= T::of(NORMALIZE_EPS);
            for ((o, &a), &b) in dxh.iter_mut().zip(xh).zip(dyh) {
                // below the floor the op is x/eps, linear in x
                *o = if clamped { g * b / n } else { g * (b - a / n * udy) / n };
            }
            *udy_out = udy;
        }
    });
    if let Some(dg) = dgain {
        for (i, &udy) in udys.iter().enumerate() {
            dg[i % heads] += udy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, dot, noise};

    /// Naive dense reference with an explicit mask: softmax(scale·QKᵀ + mask)·V.
    fn dense(q: &[f64], k: &[f64], v: &[f64], segs: &[Segment], dims: AttnDims, nq: usize) -> Vec<f64> {
        let (w, c) = (dims.heads * dims.head_dim, dims.head_dim);
        let mut o = vec![0.0; nq * w];
        for seg in segs {
            for h in 0..dims.heads {
                for i in seg.q0..seg.q0 + seg.nq {
                    let logits: Vec<f64> = (seg.k0..seg.k0 + seg.nk)
                        .map(|j| dims.scale * (0..c).map(|t| q[i * w + h * c + t] * k[j * w + h * c + t]).sum::<f64>())
                        .collect();
                    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = logits.iter().map(|x| (x - m).exp()).sum();
                    for (jj, j) in (seg.k0..seg.k0 + seg.nk).enumerate() {
                        let p = (logits[jj] - m).exp() / z;
                        for t in 0..c {
                            o[i * w + h * c + t] += p * v[j * w + h * c + t];
                        }
                    }
                }
            }
        }
        o
    }

    #[test]
    fn block_causal_sees_own_and_earlier_scales() {
        let segs = block_causal_segments(2, &[1, 4, 9]);
        assert_eq!(segs[1], Segment { q0: 1, nq: 4, k0: 0, nk: 5 });
        assert_eq!(segs[5], Segment { q0: 14 + 5, nq: 9, k0: 14, nk: 14 });
    }

    #[test]
    fn forward_matches_dense_and_backward_matches_finite_differences() {
        let dims = AttnDims { heads: 2, head_dim: 4, scale: 0.7 };
        let w = 8;
        // self-attention: 2 samples, scales of 1, 2, 3 tokens (L = 6)
        let sa = block_causal_segments(2, &[1, 2, 3]);
        // cross-attention: 12 query rows, sample 0 sees 3 text rows, sample 1 sees 2
        let ca = vec![Segment { q0: 0, nq: 6, k0: 0, nk: 3 }, Segment { q0: 6, nq: 6, k0: 3, nk: 2 }];
        for (segs, nk) in [(sa, 12), (ca, 5)] {
            let nq = 12;
            let (q, k, v, r) = (noise(nq * w, 1), noise(nk * w, 2), noise(nk * w, 3), noise(nq * w, 4));
            let run = |q: &[f64], k: &[f64], v: &[f64]| {
                let (mut o, mut lse) = (vec![0.0; nq * w], vec![0.0; nq * 2]);
                attention_forward(q, k, v, &mut o, &mut lse, &segs, dims);
                (o, lse)
            };
            let (o, lse) = run(&q, &k, &v);
            let want = dense(&q, &k, &v, &segs, dims, nq);
            assert!(o.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12));
            let (mut dq, mut dk, mut dv) = (vec![0.0; nq * w], vec![0.0; nk * w], vec![0.0; nk * w]);
            attention_backward(&r, &q, &k, &v, &o, &lse, &mut dq, &mut dk, &mut dv, &segs, dims);
            check("attn dq", &q, &dq, |x| dot(&run(x, &k, &v).0, &r), 1e-6, 1e-9);
            check("attn dk", &k, &dk, |x| dot(&run(&q, x, &v).0, &r), 1e-6, 1e-9);
            check("attn dv", &v, &dv, |x| dot(&run(&q, &k, x).0, &r), 1e-6, 1e-9);
        }
    }

    #[test]
    fn normalize_heads_gradient_and_unit_norm() {
        let (n, h, c) = (3, 2, 4);
        let (x, gain, r) = (noise(n * h * c, 1), vec![1.5, 0.5], noise(n * h * c, 2));
        let mut y = vec![0.0; x.len()];
        let norms = normalize_heads_forward(&x, &mut y, h, c, &gain);
        let n0: f64 = y[..c].iter().map(|v| v * v).sum();
        assert!((n0.sqrt() - 1.5).abs() < 1e-12);
        let (mut dx, mut dg) = (vec![0.0; x.len()], vec![0.0; h]);
        normalize_heads_backward(&r, &x, &norms, &gain, &mut dx, Some(&mut dg), h, c);
        let loss = |x: &[f64], g: &[f64]| {
            let mut y = vec![0.0; x.len()];
            normalize_heads_forward(x, &mut y, h, c, g);
            dot(&y, &r)
        };
        check("norm dx", &x, &dx, |v| loss(v, &gain), 1e-6, 1e-9);
        check("norm dgain", &gain, &dg, |v| loss(&x, v), 1e-6, 1e-9);
    }
}
