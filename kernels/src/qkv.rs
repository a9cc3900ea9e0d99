//! Self-attention's heads from its qkv projection: split `qkv [N, 3C]` into q, k and v, add the q
//! and v biases, normalise q (times its head's gain) and k per head (cosine attention), and rotate
//! both with 2-D RoPE: upstream's steps between `mat_qkv` and the attention kernel, as one op so the
//! device does them in one pass over qkv (qkv.cu). Composed of the CPU ops the model runs
//! ([`crate::attention::normalize_heads_forward`], [`crate::rope::rope_apply`]), so it is their
//! specification too; [`qkv_heads_backward`] is theirs, in reverse order.
//!
//! Dims: `N = B·L` rows, `H` heads of `c`, `C = H·c`.

use crate::attention::{normalize_heads_backward, normalize_heads_forward};
use crate::rope::{rope_apply, RopeTable};
use crate::Real;

/// The op's parameters and shape.
pub struct QkvHeads<'a, T> {
    /// `[C]` each; `gain [H]` multiplies the normalised q.
    pub q_bias: &'a [T],
    pub v_bias: &'a [T],
    pub gain: &'a [T],
    pub rope: &'a RopeTable,
    /// Tokens per sample (row `r` is token `r % l`) and heads.
    pub l: usize,
    pub heads: usize,
}

/// What the forward writes: the attention inputs and what the backward reads.
pub struct QkvHeadsOut<T> {
    /// `[N, C]`: q and k before normalisation (biased), v (biased), and q, k normalised and rotated.
    pub q_raw: Vec<T>,
    pub k_raw: Vec<T>,
    pub v: Vec<T>,
    pub q: Vec<T>,
    pub k: Vec<T>,
    /// `[N, H]` clamped norms of q_raw and k_raw.
    pub q_norm: Vec<T>,
    pub k_norm: Vec<T>,
}

/// Part `j` of the three of each `[3C]` row of `qkv`, plus `bias` when given.
fn part<T: Real>(qkv: &[T], j: usize, c: usize, bias: Option<&[T]>) -> Vec<T> {
    let mut out = Vec::with_capacity(qkv.len() / 3);
    for row in qkv.chunks_exact(3 * c) {
        let p = &row[j * c..(j + 1) * c];
        match bias {
            Some(b) => out.extend(p.iter().zip(b).map(|(&x, &y)| x + y)),
            None => out.extend_from_slice(p),
        }
    }
    out
}

/// The forward of `qkv [N, 3C]`.
pub fn qkv_heads_forward<T: Real>(qkv: &[T], p: &QkvHeads<T>) -> QkvHeadsOut<T> {
    let c = p.q_bias.len();
    assert!(
        qkv.len().is_multiple_of(3 * c) && p.v_bias.len() == c && p.gain.len() == p.heads && c.is_multiple_of(p.heads),
        "qkv_heads: qkv [N, 3C], biases [C], gain [H]"
    );
    let hd = c / p.heads;
    let (q_raw, k_raw, v) = (part(qkv, 0, c, Some(p.q_bias)), part(qkv, 1, c, None), part(qkv, 2, c, Some(p.v_bias)));
    let (mut q, mut k) = (vec![T::zero(); q_raw.len()], vec![T::zero(); k_raw.len()]);
    let q_norm = normalize_heads_forward(&q_raw, &mut q, p.heads, hd, p.gain);
    let k_norm = normalize_heads_forward(&k_raw, &mut k, p.heads, hd, &vec![T::one(); p.heads]);
    rope_apply(&mut q, p.rope, p.l, p.heads, 0, false);
    rope_apply(&mut k, p.rope, p.l, p.heads, 0, false);
    QkvHeadsOut { q_raw, k_raw, v, q, k, q_norm, k_norm }
}

/// The backward: from the gradients of the attention's inputs (`dq`, `dk` of the rotated q and k,
/// rotated back in place, and `dv`), the gradient of qkv `[N, 3C]` (written: parts q, k, v; the q and
/// v biases' gradients are the row sums of parts 0 and 2), and the gain's gradient added to `dgain`.
/// `fwd` is the forward's output (q_raw, k_raw and the norms are read).
pub fn qkv_heads_backward<T: Real>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &[T],
    fwd: &QkvHeadsOut<T>,
    p: &QkvHeads<T>,
    dqkv: &mut [T],
    dgain: &mut [T],
) {
    let c = p.q_bias.len();
    let hd = c / p.heads;
    assert!(dq.len() == fwd.q_raw.len() && dqkv.len() == 3 * dq.len(), "qkv_heads_backward: shapes");
    rope_apply(dq, p.rope, p.l, p.heads, 0, true);
    rope_apply(dk, p.rope, p.l, p.heads, 0, true);
    let (mut dq_raw, mut dk_raw) = (vec![T::zero(); dq.len()], vec![T::zero(); dk.len()]);
    normalize_heads_backward(dq, &fwd.q_raw, &fwd.q_norm, p.gain, &mut dq_raw, Some(dgain), p.heads, hd);
    normalize_heads_backward(dk, &fwd.k_raw, &fwd.k_norm, &vec![T::one(); p.heads], &mut dk_raw, None, p.heads, hd);
    for (r, row) in dqkv.chunks_exact_mut(3 * c).enumerate() {
        for (j, part) in [&dq_raw, &dk_raw, dv].into_iter().enumerate() {
            row[j * c..(j + 1) * c].copy_from_slice(&part[r * c..(r + 1) * c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check, dot, noise};

    /// The backward of the composed op (the model's: inverse rotation, then the normalisations'
    /// backward) against finite differences of the forward, for qkv, both biases and the gain.
    #[test]
    fn qkv_heads_gradient_matches_finite_differences() {
        let (b, l, heads, hd) = (2, 5, 2, 8);
        let (n, c) = (b * l, heads * hd);
        let rope = RopeTable::new(hd, &[(1, 1), (2, 2)], (2, 2));
        let (qkv, qb, vb) = (noise(n * 3 * c, 1), noise(c, 2), noise(c, 3));
        let gain = vec![1.5, 0.75];
        let (rq, rk, rv) = (noise(n * c, 4), noise(n * c, 5), noise(n * c, 6));
        let loss = |qkv: &[f64], qb: &[f64], vb: &[f64], gain: &[f64]| {
            let o = qkv_heads_forward(qkv, &QkvHeads { q_bias: qb, v_bias: vb, gain, rope: &rope, l, heads });
            dot(&o.q, &rq) + dot(&o.k, &rk) + dot(&o.v, &rv)
        };
        let p = QkvHeads { q_bias: &qb, v_bias: &vb, gain: &gain, rope: &rope, l, heads };
        let o = qkv_heads_forward(&qkv, &p);
        let (mut dq, mut dk, mut dqkv, mut dgain) = (rq.clone(), rk.clone(), vec![0.0; n * 3 * c], vec![0.0; heads]);
        qkv_heads_backward(&mut dq, &mut dk, &rv, &o, &p, &mut dqkv, &mut dgain);
        // the biases' gradients: column sums of parts 0 (q) and 2 (v)
        let part_sum =
            |j: usize| (0..c).map(|i| dqkv.iter().skip(j * c + i).step_by(3 * c).sum()).collect::<Vec<f64>>();
        check("qkv", &qkv, &dqkv, |x| loss(x, &qb, &vb, &gain), 1e-6, 1e-9);
        check("q_bias", &qb, &part_sum(0), |x| loss(&qkv, x, &vb, &gain), 1e-6, 1e-9);
        check("v_bias", &vb, &part_sum(2), |x| loss(&qkv, &qb, x, &gain), 1e-6, 1e-9);
        check("gain", &gain, &dgain, |x| loss(&qkv, &qb, &vb, x), 1e-6, 1e-9);
    }
}
