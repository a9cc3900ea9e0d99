// Self-attention's heads from its qkv projection in one pass (twin of kernels/src/qkv.rs): split
// qkv [N, 3C] into q, k, v, add the q and v biases, normalise q (times its head's gain) and k per
// head (cosine attention), rotate both with 2-D RoPE (rope.cu's table: token t of a row is row % L),
// and write what the attention kernels read: q, k, v in f32, or in bf16 alone for the tensor-core
// kernels. q_raw, k_raw (before normalisation) and the norms are kept for the backward. In place of
// three part copies, two normalisations, two rotations and three bf16 casts: qkv is read once. The
// backward goes from the attention's dq, dk, dv to dqkv (the projection's output gradient, in bf16
// alone for bf16 GEMMs) in one pass too.
//
// Dims: N rows, H heads of c (even, ≤ 256), C = H·c. One warp per (row, head); lane j owns the
// rotated pairs (2p, 2p + 1), p = j + 32·i.
#include "common.cuh"

#define MAX_PAIRS_PER_LANE 4  // c ≤ 256

__device__ __forceinline__ void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }

__device__ __forceinline__ void store2(unsigned short* p, float a, float b) {
    *reinterpret_cast<unsigned*>(p) = (unsigned)bf16_bits(a) | ((unsigned)bf16_bits(b) << 16);
}

template <class Out>
__device__ __forceinline__ void qkv_heads(const float* __restrict__ qkv, const float* __restrict__ q_bias,
                                          const float* __restrict__ v_bias, const float* __restrict__ gain,
                                          const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                          float* __restrict__ q_raw, float* __restrict__ k_raw, Out* __restrict__ q,
                                          Out* __restrict__ k, Out* __restrict__ v, float* __restrict__ q_norm,
                                          float* __restrict__ k_norm, long rows, int l, int heads, int c) {
    const long seg = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5;  // (row, head)
    const int lane = threadIdx.x & 31;
    if (seg >= rows * heads) return;
    const long r = seg / heads;
    const int h = (int)(seg % heads), w = heads * c, pairs = c / 2, hc = h * c;
    const float* src = qkv + r * 3 * w + hc;  // q; k at + w, v at + 2w
    const long out = r * w + hc;
    float qa[MAX_PAIRS_PER_LANE][2], ka[MAX_PAIRS_PER_LANE][2], ssq = 0.0f, ssk = 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_PAIRS_PER_LANE; ++i) {
        const int e = 2 * (lane + 32 * i);
        if (e >= c) break;
        const float2 xq = *reinterpret_cast<const float2*>(src + e);
        const float2 xk = *reinterpret_cast<const float2*>(src + w + e);
        const float2 xv = *reinterpret_cast<const float2*>(src + 2 * w + e);
        qa[i][0] = xq.x + q_bias[hc + e];
        qa[i][1] = xq.y + q_bias[hc + e + 1];
        ka[i][0] = xk.x;
        ka[i][1] = xk.y;
        store2(q_raw + out + e, qa[i][0], qa[i][1]);
        store2(k_raw + out + e, ka[i][0], ka[i][1]);
        store2(v + out + e, xv.x + v_bias[hc + e], xv.y + v_bias[hc + e + 1]);
        ssq = fmaf(qa[i][0], qa[i][0], fmaf(qa[i][1], qa[i][1], ssq));
        ssk = fmaf(ka[i][0], ka[i][0], fmaf(ka[i][1], ka[i][1], ssk));
    }
    // F.normalize's floor; q carries its head's gain
    const float nq = fmaxf(sqrtf(warp_sum(ssq)), 1e-12f), nk = fmaxf(sqrtf(warp_sum(ssk)), 1e-12f);
    const float g = gain[h];
    const float* co_t = cos_t + (long)(r % l) * pairs;
    const float* si_t = sin_t + (long)(r % l) * pairs;
#pragma unroll
    for (int i = 0; i < MAX_PAIRS_PER_LANE; ++i) {
        const int p = lane + 32 * i, e = 2 * p;
        if (e >= c) break;
        const float co = co_t[p], s = si_t[p];
        const float a = g * qa[i][0] / nq, b = g * qa[i][1] / nq;
        store2(q + out + e, co * a - s * b, s * a + co * b);
        const float ak = ka[i][0] / nk, bk = ka[i][1] / nk;
        store2(k + out + e, co * ak - s * bk, s * ak + co * bk);
    }
    if (lane == 0) {
        q_norm[seg] = nq;
        k_norm[seg] = nk;
    }
}

// One head's normalisation backward for this lane's pairs: dx = g·(dy − x/n·u)/n with u = Σ (x/n)·dy
// over the head (below F.normalize's floor the op is linear: g·dy/n). Returns u.
__device__ __forceinline__ float normalize_backward(float (&dy)[MAX_PAIRS_PER_LANE][2],
                                                    const float (&x)[MAX_PAIRS_PER_LANE][2], int lane, int c,
                                                    float n, float g) {
    float part = 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_PAIRS_PER_LANE; ++i) {
        if (2 * (lane + 32 * i) >= c) break;
        part = fmaf(x[i][0] / n, dy[i][0], part);
        part = fmaf(x[i][1] / n, dy[i][1], part);
    }
    const float u = warp_sum(part);
    const bool clamped = n <= 1e-12f;
#pragma unroll
    for (int i = 0; i < MAX_PAIRS_PER_LANE; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) dy[i][e] = clamped ? g * dy[i][e] / n : g * (dy[i][e] - x[i][e] / n * u) / n;
    return u;
}

// dqkv [N, 3C] written from dq, dk (gradients of the rotated, normalised q and k) and dv; dq_raw
// [N, C] (f32: the rows the q bias's gradient sums) and udy [N, H] = Σ (q_raw/n)·dŷ per (row, head),
// which the host sums over rows into the gain's gradient.
template <class Out>
__device__ __forceinline__ void qkv_heads_back(const float* __restrict__ dq, const float* __restrict__ dk,
                                               const float* __restrict__ dv, const float* __restrict__ q_raw,
                                               const float* __restrict__ k_raw, const float* __restrict__ q_norm,
                                               const float* __restrict__ k_norm, const float* __restrict__ gain,
                                               const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                               Out* __restrict__ dqkv, float* __restrict__ dq_raw,
                                               float* __restrict__ udy, long rows, int l, int heads, int c) {
    const long seg = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (seg >= rows * heads) return;
    const long r = seg / heads;
    const int h = (int)(seg % heads), w = heads * c, pairs = c / 2;
    const long at = r * w + h * c;
    const float* co_t = cos_t + (long)(r % l) * pairs;
    const float* si_t = sin_t + (long)(r % l) * pairs;
    float gq[MAX_PAIRS_PER_LANE][2], gk[MAX_PAIRS_PER_LANE][2], xq[MAX_PAIRS_PER_LANE][2], xk[MAX_PAIRS_PER_LANE][2];
#pragma unroll
    for (int i = 0; i < MAX_PAIRS_PER_LANE; ++i) {
        const int p = lane + 32 * i, e = 2 * p;
        if (e >= c) break;
        const float co = co_t[p], s = si_t[p];  // the inverse rotation (by −angle)
        const float2 a = *reinterpret_cast<const float2*>(dq + at + e);
        const float2 b = *reinterpret_cast<const float2*>(dk + at + e);
        gq[i][0] = co * a.x + s * a.y;
        gq[i][1] = co * a.y - s * a.x;
        gk[i][0] = co * b.x + s * b.y;
        gk[i][1] = co * b.y - s * b.x;
        const float2 x = *reinterpret_cast<const float2*>(q_raw + at + e);
        const float2 y = *reinterpret_cast<const float2*>(k_raw + at + e);
        xq[i][0] = x.x;
        xq[i][1] = x.y;
        xk[i][0] = y.x;
        xk[i][1] = y.y;
    }
    const float u = normalize_backward(gq, xq, lane, c, q_norm[seg], gain[h]);
    normalize_backward(gk, xk, lane, c, k_norm[seg], 1.0f);
    Out* out = dqkv + r * 3 * w + h * c;  // q; k at + w, v at + 2w
#pragma unroll
    for (int i = 0; i < MAX_PAIRS_PER_LANE; ++i) {
        const int e = 2 * (lane + 32 * i);
        if (e >= c) break;
        const float2 gv = *reinterpret_cast<const float2*>(dv + at + e);
        store2(out + e, gq[i][0], gq[i][1]);
        store2(out + w + e, gk[i][0], gk[i][1]);
        store2(out + 2 * w + e, gv.x, gv.y);
        store2(dq_raw + at + e, gq[i][0], gq[i][1]);
    }
    if (lane == 0) udy[seg] = u;
}

#define QKV_HEADS(NAME, OUT)                                                                                   \
    extern "C" __global__ void NAME(const float* __restrict__ qkv, const float* __restrict__ q_bias,            \
                                    const float* __restrict__ v_bias, const float* __restrict__ gain,           \
                                    const float* __restrict__ cos_t, const float* __restrict__ sin_t,           \
                                    float* __restrict__ q_raw, float* __restrict__ k_raw, OUT* __restrict__ q,  \
                                    OUT* __restrict__ k, OUT* __restrict__ v, float* __restrict__ q_norm,       \
                                    float* __restrict__ k_norm, long rows, int l, int heads, int c) {           \
        qkv_heads<OUT>(qkv, q_bias, v_bias, gain, cos_t, sin_t, q_raw, k_raw, q, k, v, q_norm, k_norm, rows, l, \
                       heads, c);                                                                               \
    }

QKV_HEADS(qkv_heads_forward_f32, float)
QKV_HEADS(qkv_heads_forward_bf16, unsigned short)

#define QKV_HEADS_BACKWARD(NAME, OUT)                                                                           \
    extern "C" __global__ void NAME(const float* __restrict__ dq, const float* __restrict__ dk,                  \
                                    const float* __restrict__ dv, const float* __restrict__ q_raw,               \
                                    const float* __restrict__ k_raw, const float* __restrict__ q_norm,           \
                                    const float* __restrict__ k_norm, const float* __restrict__ gain,            \
                                    const float* __restrict__ cos_t, const float* __restrict__ sin_t,            \
                                    OUT* __restrict__ dqkv, float* __restrict__ dq_raw, float* __restrict__ udy, \
                                    long rows, int l, int heads, int c) {                                        \
        qkv_heads_back<OUT>(dq, dk, dv, q_raw, k_raw, q_norm, k_norm, gain, cos_t, sin_t, dqkv, dq_raw, udy, rows, \
                            l, heads, c);                                                                        \
    }

QKV_HEADS_BACKWARD(qkv_heads_backward_f32, float)
QKV_HEADS_BACKWARD(qkv_heads_backward_bf16, unsigned short)
