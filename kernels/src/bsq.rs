//! Binary spherical quantisation (BSQ) and multi-scale residual BSQ, as upstream Infinity does it.
//!
//! Dims legend: `d` bits per token (= latent channels), `(H, W)` the latent (= last scale) size,
//! `(h_s, w_s)` the size of scale `s`, `K` scales, `L = Σ h_s·w_s` tokens over all scales.
//!
//! Layouts:
//! - latents, residuals and summed codes are channel-major `[d, H, W]` (upstream `(B, d, 1, H, W)`);
//! - bits are token-major `[L, d]`, one `u8` (0 or 1) per bit, tokens of scale `s` in row-major order
//!   after all tokens of scales `< s` (upstream `gt_BL` of shape `(B, L, d)`);
//! - teacher-forcing inputs are token-major `[L − h_0·w_0, d]` (upstream `x_BLC_wo_prefix`).
//!
//! BSQ of one token `z ∈ R^d`: `bit_i = [z_i > 0]` (L2 normalisation first does not change signs; an exact
//! zero gives bit 0), `code_i = ±1/√d`, so every code has unit norm.
//!
//! Multi-scale residual encoding (zero flips; bitwise self-correction adds flips on top of this loop):
//! ```text
//! cum = 0
//! for s in 0..K:
//!     r = F − cum;  if s < K−1: r = area(r, (h_s, w_s))
//!     bits_s, q_s = BSQ(r)
//!     cum += bilinear(q_s, (H, W))
//!     if s < K−1: x_wo_prefix_s+1 = bilinear(cum, (h_{s+1}, w_{s+1}))
//! ```

use crate::resample::{area_resize, bilinear_resize};

/// Magnitude of every code entry: `1/√d`.
pub fn code_magnitude(d: usize) -> f32 {
    1.0 / (d as f32).sqrt()
}

/// Number of tokens `L` of a schedule of `(h, w)` scales.
pub fn num_tokens(scales: &[(usize, usize)]) -> usize {
    scales.iter().map(|&(h, w)| h * w).sum()
}

/// Sign-quantise a channel-major residual `r: [d, h·w]` into token-major bits `[h·w, d]` and the
/// channel-major codes `q: [d, h·w]`.
pub fn quantize(r: &[f32], d: usize, bits: &mut [u8], q: &mut [f32]) {
    let n = r.len() / d;
    assert_eq!(r.len(), d * n, "bsq::quantize: residual is not [d={d}, n]");
    assert_eq!(bits.len(), n * d, "bsq::quantize: bits is not [n={n}, d={d}]");
    assert_eq!(q.len(), d * n, "bsq::quantize: codes is not [d={d}, n={n}]");
    let m = code_magnitude(d);
    for c in 0..d {
        for t in 0..n {
            let positive = r[c * n + t] > 0.0;
            bits[t * d + c] = positive as u8;
            q[c * n + t] = if positive { m } else { -m };
        }
    }
}

/// Codes `[d, n]` of token-major bits `[n, d]` (upstream `indices_to_codes(bits, 'bit_label')`).
pub fn bits_to_codes(bits: &[u8], d: usize, q: &mut [f32]) {
    let n = bits.len() / d;
    assert_eq!(q.len(), d * n, "bsq::bits_to_codes: codes is not [d={d}, n={n}]");
    let m = code_magnitude(d);
    for t in 0..n {
        for c in 0..d {
            q[c * n + t] = if bits[t * d + c] != 0 { m } else { -m };
        }
    }
}

/// Output of [`encode_multiscale`].
#[derive(Clone, Debug, Default)]
pub struct MultiScaleCodes {
    /// `[L, d]` labels, 0/1.
    pub bits: Vec<u8>,
    /// `[L − h_0·w_0, d]` teacher-forcing inputs for scales 1..K.
    pub x_wo_prefix: Vec<f32>,
    /// `[d, H, W]` the sum of all up-sampled codes, flipped ones included (what the decoder sees).
    pub summed_codes: Vec<f32>,
    /// `[L, d]` the residual each bit is the sign of: a bit whose residual is within rounding of 0 may
    /// legitimately differ between two faithful implementations.
    pub residual: Vec<f32>,
}

/// Multi-scale residual BSQ of one latent `[d, H, W]` with `(H, W)` = the last scale.
pub fn encode_multiscale(latent: &[f32], d: usize, scales: &[(usize, usize)]) -> MultiScaleCodes {
    self_correct(latent, d, scales, None)
}

/// Bitwise self-correction (upstream `BitwiseSelfCorrection`): multi-scale residual BSQ where, after
/// each scale is quantised, the bits set in `flips: [L, d]` are flipped and the flipped bits are
/// re-quantised into the running sum (`noise_apply_requant=1`). The labels stay the clean bits of each
/// (corrupted-history) residual, so later scales learn to correct earlier mistakes; the teacher-forcing
/// inputs follow the corrupted sum. `flips = None` is plain multi-scale BSQ.
pub fn self_correct(latent: &[f32], d: usize, scales: &[(usize, usize)], flips: Option<&[u8]>) -> MultiScaleCodes {
    self_correct_with(latent, d, scales, flips, None)
}

/// [`self_correct`] for a sample stored as bits alone (`[L, d]`, no latent): the latent is rebuilt
/// from them ([`latent_from_bits`]). Each channel's stored bits are its labels up to its first flipped
/// bit, so without flips the labels and teacher-forcing inputs are exactly the stored ones; after it,
/// that channel's labels are the rebuilt latent's residual's (the stored latent's is not there).
/// Every step of the multi-scale quantisation (difference, area and bilinear resizes, sign) works
/// channel by channel, so a flip changes only its own channel's later labels: the channels no flip has
/// reached keep the stored bits, as upstream's self-correction of the true latent keeps them.
pub fn self_correct_stored(bits: &[u8], d: usize, scales: &[(usize, usize)], flips: Option<&[u8]>) -> MultiScaleCodes {
    self_correct_with(&latent_from_bits(bits, d, scales), d, scales, flips, Some(bits))
}

/// The residual each of a row's bits `[L, d]` is the sign of in a multi-scale BSQ of `latent` that took
/// those bits at every scale (each scale's residual is the latent less the codes of the given bits of
/// the scales before it): `[L, d]`. A faithful encoder's bits are the signs of these, except where a
/// residual is within rounding of zero: another encoder's summation order may send that bit either way,
/// and its later scales follow from the bit it took (what `infinity data verify` allows for).
pub fn residuals_given_bits(latent: &[f32], d: usize, scales: &[(usize, usize)], bits: &[u8]) -> Vec<f32> {
    assert_eq!(bits.len(), num_tokens(scales) * d, "bsq::residuals_given_bits: bits is not [L, d={d}]");
    self_correct_with(latent, d, scales, None, Some(bits)).residual
}

fn self_correct_with(
    latent: &[f32],
    d: usize,
    scales: &[(usize, usize)],
    flips: Option<&[u8]>,
    stored: Option<&[u8]>,
) -> MultiScaleCodes {
    let (hh, ww) = *scales.last().expect("bsq::encode_multiscale: empty schedule");
    assert_eq!(latent.len(), d * hh * ww, "bsq::encode_multiscale: latent is not [d={d}, {hh}, {ww}]");
    let l = num_tokens(scales);
    if let Some(f) = flips {
        assert_eq!(f.len(), l * d, "bsq::self_correct: flips is not [L={l}, d={d}]");
    }
    let mut out = MultiScaleCodes {
        bits: vec![0; l * d],
        x_wo_prefix: vec![0.0; (l - scales[0].0 * scales[0].1) * d],
        summed_codes: vec![0.0; d * hh * ww],
        residual: vec![0.0; l * d],
    };
    let full = d * hh * ww;
    let mut residual = vec![0.0f32; full];
    let mut scratch = vec![0.0f32; full];
    let mut q = vec![0.0f32; full];
    let mut up = vec![0.0f32; full];
    let mut bit_off = 0;
    let mut inp_off = 0;
    // [d]: whether an earlier scale had a bit of the channel flipped
    let mut flipped_before = vec![false; d];
    for (s, &(h, w)) in scales.iter().enumerate() {
        let n = h * w;
        for ((r, f), c) in residual.iter_mut().zip(latent).zip(&out.summed_codes) {
            *r = f - c;
        }
        let r_s: &[f32] = if s + 1 < scales.len() {
            area_resize(&residual, d, (hh, ww), &mut scratch[..d * n], (h, w));
            &scratch[..d * n]
        } else {
            &residual
        };
        let labels = bit_off..bit_off + n * d;
        match stored {
            Some(st) => {
                let bits = &mut out.bits[labels.clone()];
                if flipped_before.iter().any(|&f| f) {
                    quantize(r_s, d, bits, &mut q[..d * n]);
                }
                for (b, (st, c)) in bits.iter_mut().zip(st[labels.clone()].iter().zip((0..d).cycle())) {
                    if !flipped_before[c] {
                        *b = *st;
                    }
                }
                bits_to_codes(bits, d, &mut q[..d * n]);
            }
            None => quantize(r_s, d, &mut out.bits[labels.clone()], &mut q[..d * n]),
        }
        transpose_into(&r_s[..d * n], d, &mut out.residual[labels.clone()]);
        if let Some(f) = flips {
            let bits = &out.bits[labels.clone()];
            let flipped: Vec<u8> = bits.iter().zip(&f[labels.clone()]).map(|(b, m)| b ^ (m & 1)).collect();
            bits_to_codes(&flipped, d, &mut q[..d * n]);
            for (m, c) in f[labels].iter().zip((0..d).cycle()) {
                flipped_before[c] |= m & 1 != 0;
            }
        }
        bit_off += n * d;
        bilinear_resize(&q[..d * n], d, (h, w), &mut up, (hh, ww));
        for (c, u) in out.summed_codes.iter_mut().zip(&up) {
            *c += u;
        }
        if let Some(&(nh, nw)) = scales.get(s + 1) {
            let nn = nh * nw;
            bilinear_resize(&out.summed_codes, d, (hh, ww), &mut scratch[..d * nn], (nh, nw));
            transpose_into(&scratch[..d * nn], d, &mut out.x_wo_prefix[inp_off..inp_off + nn * d]);
            inp_off += nn * d;
        }
    }
    out
}

/// The latent to self-correct from when a dataset stores only bits: the sum of the up-sampled codes of
/// all scales (`[d, H, W]`), i.e. the tokenizer's quantised latent.
pub fn latent_from_bits(bits: &[u8], d: usize, scales: &[(usize, usize)]) -> Vec<f32> {
    decode_multiscale(bits, d, scales)
}

/// SplitMix64's finaliser: a bijective 64-bit mix (the device RNG of bsq.cu uses the same one).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform in [0, 1) that depends only on `(key, scale, index)`: a counter-based generator, so the
/// host and the device (bsq.cu `keyed_uniform`) draw exactly the same numbers in any order.
pub fn keyed_uniform(key: u64, scale: usize, index: u64) -> f64 {
    let base = mix64(key ^ mix64((scale as u64).wrapping_add(0x9e37_79b9_7f4a_7c15)));
    (mix64(base ^ mix64(index)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The largest `k` of a flip probability `k·0.01`: upstream draws `np.random.randint(0, 100·p_max + 1)`,
/// whose float bound numpy truncates, so 0.3 gives 30 (100·0.3 + 1 = 31.000000000000004) and 0.29
/// gives 28 (29.999999999999996).
pub fn flip_kmax(p_max: f64) -> usize {
    ((100.0 * p_max + 1.0) as usize).saturating_sub(1)
}

/// Upstream's random flips for self-correction (`noise_apply_strength = p_max`,
/// `noise_apply_layers = apply_layers`): each scale `s < apply_layers` draws one probability
/// `p_s = k·0.01`, `k` uniform in `{0, …, `[`flip_kmax`]`}`, and flips each of its bits with probability
/// `p_s`. Returns the mask `[L, d]` for [`self_correct`]. The draws are counter-based
/// ([`keyed_uniform`]): `p_s` from index `u64::MAX`, bit `(t, c)` of the scale from index `t·d + c`, so
/// the device twin (bsq.cu) draws the same mask for the same `key`.
pub fn keyed_flips(key: u64, scales: &[(usize, usize)], d: usize, p_max: f64, apply_layers: usize) -> Vec<u8> {
    let kmax = flip_kmax(p_max);
    let mut mask = Vec::with_capacity(num_tokens(scales) * d);
    for (s, &(h, w)) in scales.iter().enumerate() {
        let n = (h * w * d) as u64;
        if s >= apply_layers || kmax == 0 {
            mask.extend(std::iter::repeat_n(0u8, n as usize));
            continue;
        }
        let k = ((keyed_uniform(key, s, u64::MAX) * (kmax + 1) as f64) as usize).min(kmax);
        let p = k as f64 * 0.01;
        mask.extend((0..n).map(|i| (keyed_uniform(key, s, i) < p) as u8));
    }
    mask
}

/// Self-correction of a batch `latents [B, d, H, W]`, each sample with the [`keyed_flips`] of its key
/// in `keys [B]`: the CPU twin of the device's whole-batch kernels (`cuda::bsq::self_correct_batch`),
/// one [`MultiScaleCodes`] per sample.
pub fn self_correct_keyed(
    latents: &[f32],
    keys: &[u64],
    d: usize,
    scales: &[(usize, usize)],
    p_max: f64,
    apply_layers: usize,
) -> Vec<MultiScaleCodes> {
    let (hh, ww) = *scales.last().expect("bsq::self_correct_keyed: empty schedule");
    let per = d * hh * ww;
    assert_eq!(latents.len(), keys.len() * per, "bsq::self_correct_keyed: latents are not [B, d={d}, {hh}, {ww}]");
    keys.iter()
        .enumerate()
        .map(|(s, &key)| {
            let flips = keyed_flips(key, scales, d, p_max, apply_layers);
            self_correct(&latents[s * per..(s + 1) * per], d, scales, Some(&flips))
        })
        .collect()
}

/// Sum of the up-sampled codes of token-major bits `[L, d]`: `[d, H, W]`, the decoder's input.
pub fn decode_multiscale(bits: &[u8], d: usize, scales: &[(usize, usize)]) -> Vec<f32> {
    let (hh, ww) = *scales.last().expect("bsq::decode_multiscale: empty schedule");
    assert_eq!(bits.len(), num_tokens(scales) * d, "bsq::decode_multiscale: bits is not [L, d={d}]");
    let mut summed = vec![0.0f32; d * hh * ww];
    let mut q = vec![0.0f32; d * hh * ww];
    let mut up = vec![0.0f32; d * hh * ww];
    let mut off = 0;
    for &(h, w) in scales {
        let n = h * w;
        bits_to_codes(&bits[off * d..(off + n) * d], d, &mut q[..d * n]);
        bilinear_resize(&q[..d * n], d, (h, w), &mut up, (hh, ww));
        for (c, u) in summed.iter_mut().zip(&up) {
            *c += u;
        }
        off += n;
    }
    summed
}

/// Channel-major `[d, n]` → token-major `[n, d]`.
fn transpose_into(src: &[f32], d: usize, dst: &mut [f32]) {
    let n = src.len() / d;
    for c in 0..d {
        for t in 0..n {
            dst[t * d + c] = src[c * n + t];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_latent(d: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..d * h * w).map(|_| rng.random_range(-1.5f32..1.5)).collect()
    }

    const SQUARE: [(usize, usize); 5] = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)];
    const WIDE: [(usize, usize); 5] = [(1, 1), (2, 2), (2, 3), (4, 6), (6, 9)];

    #[test]
    fn codes_have_unit_norm_and_round_trip_through_bits() {
        for d in [16usize, 32, 56] {
            let r = random_latent(d, 3, 5, d as u64);
            let n = 15;
            let (mut bits, mut q, mut q2) = (vec![0u8; n * d], vec![0.0; n * d], vec![0.0; n * d]);
            quantize(&r, d, &mut bits, &mut q);
            for t in 0..n {
                let norm: f32 = (0..d).map(|c| q[c * n + t] * q[c * n + t]).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "token {t}: |code| = {norm}");
            }
            bits_to_codes(&bits, d, &mut q2);
            assert_eq!(q, q2, "bits → codes must reproduce the quantised codes exactly");
        }
    }

    #[test]
    fn zero_residual_gives_zero_bits() {
        let d = 8;
        let (mut bits, mut q) = (vec![1u8; 4 * d], vec![0.0; 4 * d]);
        quantize(&vec![0.0; 4 * d], d, &mut bits, &mut q);
        assert!(bits.iter().all(|&b| b == 0));
        assert!(q.iter().all(|&v| v == -code_magnitude(d)));
    }

    #[test]
    fn decode_of_encoded_bits_equals_encoder_sum() {
        for scales in [&SQUARE[..], &WIDE[..]] {
            let (hh, ww) = *scales.last().unwrap();
            let latent = random_latent(16, hh, ww, 7);
            let enc = encode_multiscale(&latent, 16, scales);
            assert_eq!(enc.bits.len(), num_tokens(scales) * 16);
            assert_eq!(decode_multiscale(&enc.bits, 16, scales), enc.summed_codes);
        }
    }

    /// Given the encoder's own bits, the residuals are the encoder's; given bits that went the other way
    /// at a zero residual, the later scales' residuals follow that choice, and re-deriving each scale's
    /// bits from them gives a faithful encoding whose bits are all signs of their residuals but the tie.
    #[test]
    fn residuals_given_bits_follow_the_bits_history() {
        let d = 4;
        let (hh, ww) = *SQUARE.last().unwrap();
        let mut latent = random_latent(d, hh, ww, 3);
        // channel 0: ±0.5 in equal numbers, so scale 0 (the mean) is exactly 0 and its bit 0
        latent[..hh * ww].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { 0.5 } else { -0.5 });
        let enc = encode_multiscale(&latent, d, &SQUARE);
        assert_eq!(residuals_given_bits(&latent, d, &SQUARE, &enc.bits), enc.residual);
        assert_eq!((enc.residual[0], enc.bits[0]), (0.0, 0));
        let mut bits = enc.bits.clone();
        bits[0] = 1;
        let mut start = 1;
        for &(h, w) in &SQUARE[1..] {
            let r = residuals_given_bits(&latent, d, &SQUARE, &bits);
            let scale = start * d..(start + h * w) * d;
            bits[scale.clone()].iter_mut().zip(&r[scale]).for_each(|(b, r)| *b = (*r > 0.0) as u8);
            start += h * w;
        }
        assert_ne!(bits[d..], enc.bits[d..], "the tie's other bit moves later scales");
        let r = residuals_given_bits(&latent, d, &SQUARE, &bits);
        let unsigned: Vec<usize> = (0..bits.len()).filter(|&i| bits[i] != (r[i] > 0.0) as u8).collect();
        assert_eq!(unsigned, [0]);
    }

    #[test]
    fn flips_corrupt_the_history_and_later_labels_correct_it() {
        let d = 8;
        let latent = random_latent(d, 8, 8, 21);
        let clean = encode_multiscale(&latent, d, &SQUARE);
        let l = num_tokens(&SQUARE);
        // no flips set: identical to plain encoding
        assert_eq!(self_correct(&latent, d, &SQUARE, Some(&vec![0; l * d])).bits, clean.bits);
        // flip every bit of scale 1 (tokens 1..5)
        let mut flips = vec![0u8; l * d];
        flips[d..5 * d].iter_mut().for_each(|f| *f = 1);
        let sc = self_correct(&latent, d, &SQUARE, Some(&flips));
        assert_eq!(sc.bits[..5 * d], clean.bits[..5 * d], "labels of flipped scales stay the clean bits");
        assert_ne!(sc.bits[5 * d..], clean.bits[5 * d..], "later labels see the corrupted history");
        assert_eq!(sc.x_wo_prefix[..4 * d], clean.x_wo_prefix[..4 * d], "the input of scale 1 precedes the flip");
        assert_ne!(sc.x_wo_prefix[4 * d..], clean.x_wo_prefix[4 * d..]);
        // decoding the bits actually accumulated (labels xor flips) reproduces the corrupted sum
        let used: Vec<u8> = sc.bits.iter().zip(&flips).map(|(b, f)| b ^ f).collect();
        assert_eq!(decode_multiscale(&used, d, &SQUARE), sc.summed_codes);
    }

    #[test]
    fn latent_rebuilt_from_bits_re_encodes_to_mostly_the_same_bits() {
        // The rebuilt latent is the quantised one, not the original: re-encoding it is not exact (a
        // channel whose area mean sits near zero can change sign), but most bits survive.
        let d = 16;
        let latent = random_latent(d, 8, 8, 9);
        let enc = encode_multiscale(&latent, d, &SQUARE);
        let rebuilt = latent_from_bits(&enc.bits, d, &SQUARE);
        assert_eq!(rebuilt, enc.summed_codes);
        let again = encode_multiscale(&rebuilt, d, &SQUARE);
        let same = again.bits.iter().zip(&enc.bits).filter(|(a, b)| a == b).count() as f64 / enc.bits.len() as f64;
        assert!(same > 0.7, "only {same:.2} of the bits survive a re-encode");

        // self-correcting the stored bits keeps them as labels, and the inputs, where nothing flipped
        let clean = self_correct_stored(&enc.bits, d, &SQUARE, None);
        assert_eq!((clean.bits == enc.bits, clean.x_wo_prefix == enc.x_wo_prefix), (true, true));
        // flips from scale 2 on: scales 0..=2 keep the stored labels, the inputs to scale 2 too
        let l: usize = SQUARE.iter().map(|&(h, w)| h * w).sum();
        let first2 = SQUARE[..2].iter().map(|&(h, w)| h * w).sum::<usize>();
        let upto2 = first2 + SQUARE[2].0 * SQUARE[2].1;
        let mut flips = vec![0u8; l * d];
        flips[first2 * d..].iter_mut().step_by(3).for_each(|m| *m = 1);
        let sc = self_correct_stored(&enc.bits, d, &SQUARE, Some(&flips));
        assert_eq!(sc.bits[..upto2 * d], enc.bits[..upto2 * d]);
        assert_eq!(sc.x_wo_prefix[..(upto2 - 1) * d], enc.x_wo_prefix[..(upto2 - 1) * d]);
        assert_ne!(sc.x_wo_prefix, enc.x_wo_prefix, "the flipped codes reach the inputs");
    }

    /// A flip changes only its own channel's later labels: self-correcting stored bits gives upstream's
    /// labels (those of the true latent's self-correction) in every other channel, at every scale.
    #[test]
    fn a_flip_in_stored_bits_leaves_the_other_channels_labels_as_upstreams() {
        let d = 8;
        let latent = random_latent(d, 8, 8, 21);
        let enc = encode_multiscale(&latent, d, &SQUARE);
        let l: usize = SQUARE.iter().map(|&(h, w)| h * w).sum();
        // scale 0's only token, channel 0
        let mut flips = vec![0u8; l * d];
        flips[0] = 1;
        let upstream = self_correct(&latent, d, &SQUARE, Some(&flips));
        let stored = self_correct_stored(&enc.bits, d, &SQUARE, Some(&flips));
        for (t, (a, b)) in upstream.bits.chunks(d).zip(stored.bits.chunks(d)).enumerate() {
            assert_eq!(a[1..], b[1..], "token {t}: channels 1.. differ from upstream's labels");
        }
        // (channel 0's later labels follow the corrupted history: upstream's change too)
        let ch0 = |bits: &[u8]| bits.chunks(d).map(|t| t[0]).collect::<Vec<_>>();
        assert_ne!(ch0(&upstream.bits), ch0(&enc.bits), "the flip changed no later label of channel 0");
    }

    #[test]
    fn keyed_flips_follow_the_upstream_distribution() {
        let scales = [(1, 1), (2, 2), (4, 4), (8, 8)];
        let d = 16;
        // per scale: the flip rate of a draw is k/100 with k uniform in 0..=10 → mean 5 %
        let mut rates = vec![0.0f64; scales.len()];
        let draws = 400u64;
        for key in 0..draws {
            let m = keyed_flips(key, &scales, d, 0.1, 3);
            let mut off = 0;
            for (s, &(h, w)) in scales.iter().enumerate() {
                let n = h * w * d;
                rates[s] += m[off..off + n].iter().map(|&b| b as f64).sum::<f64>() / n as f64;
                off += n;
            }
        }
        for r in &mut rates {
            *r /= draws as f64;
        }
        assert_eq!(rates[3], 0.0, "scales from apply_layers on never flip");
        for r in &rates[..3] {
            assert!((r - 0.05).abs() < 0.01, "mean flip rate {r} (expected 0.05)");
        }
        assert!(keyed_flips(3, &scales, d, 0.0, 13).iter().all(|&b| b == 0), "p_max 0 never flips");
        let kmax: Vec<usize> = [0.0, 0.001, 0.1, 0.29, 0.3, 0.57, 0.999].map(flip_kmax).to_vec();
        assert_eq!(kmax, [0, 0, 10, 28, 30, 56, 99], "numpy's randint(0, 100·p + 1) bounds");
        // the same key gives the same mask; another key another one
        assert_eq!(keyed_flips(7, &scales, d, 0.1, 3), keyed_flips(7, &scales, d, 0.1, 3));
        assert_ne!(keyed_flips(7, &scales, d, 0.1, 3), keyed_flips(8, &scales, d, 0.1, 3));
    }

    #[test]
    fn multiscale_codes_approximate_the_latent() {
        // Each scale adds ±1/√d per channel; with latents of that order the residual must shrink well
        // below the latent's own energy.
        let d = 16;
        let latent: Vec<f32> = random_latent(d, 8, 8, 3).iter().map(|v| v / 3.0).collect();
        let enc = encode_multiscale(&latent, d, &SQUARE);
        let energy: f32 = latent.iter().map(|v| v * v).sum();
        let err: f32 = latent.iter().zip(&enc.summed_codes).map(|(a, b)| (a - b).powi(2)).sum();
        assert!(err < 0.5 * energy, "residual energy {err} vs latent energy {energy}");
    }

    #[test]
    fn teacher_forcing_input_is_resized_cumulative_sum() {
        let d = 4;
        let latent = random_latent(d, 6, 9, 11);
        let enc = encode_multiscale(&latent, d, &WIDE);
        // the last input (scale K−1 = 6×9 = the latent size) is the cumulative sum of scales < K−1
        let partial = &enc.bits;
        let l_prev = num_tokens(&WIDE[..4]);
        let mut cum = vec![0.0f32; d * 54];
        let mut q = vec![0.0f32; d * 54];
        let mut up = vec![0.0f32; d * 54];
        let mut off = 0;
        for &(h, w) in &WIDE[..4] {
            bits_to_codes(&partial[off * d..(off + h * w) * d], d, &mut q[..d * h * w]);
            bilinear_resize(&q[..d * h * w], d, (h, w), &mut up, (6, 9));
            cum.iter_mut().zip(&up).for_each(|(c, u)| *c += u);
            off += h * w;
        }
        let last_inp = &enc.x_wo_prefix[(l_prev - 1) * d..];
        for t in 0..54 {
            for c in 0..d {
                assert_eq!(last_inp[t * d + c], cum[c * 54 + t]);
            }
        }
    }
}
