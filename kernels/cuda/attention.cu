// Twin of kernels/src/attention.rs: softmax attention over segments (block-causal self-attention,
// varlen cross-attention, the attention pool), forward and backward, flash-style: scores live only in
// registers, keys and values stream through shared memory in tiles, the softmax is computed online,
// and lse [Nq, H] is kept for the backward, which recomputes the probabilities. No L×L buffer exists.
// Every sum runs in a fixed order (no atomics), so results are bitwise reproducible.
//
// Dims: H heads, c head dim (a lane owns dims lane, lane+32, …: DPL of them, 4 for c ≤ 128 — the
// `_f32` kernels — and 8 for c ≤ 256 — the `_wide_f32` ones, with fewer rows per block), Q [Nq, H·c],
// K, V [Nk, H·c].
// Query row r sees key rows [k0[r], k0[r] + nk[r]); key row j is seen by query rows
// [q0[j], q0[j] + nq[j]) (both expanded from the segments on the host). Rows are padded to c + 1
// floats in shared memory so lane-strided row reads hit distinct banks.
//
// Also here: the cosine-attention normalisation of q and k per head (twin of normalize_heads_*).
#include "common.cuh"
#include "attention.cuh"

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

__device__ __forceinline__ float dot(const float* a, const float* b, int c) {
    float s = 0.0f;
    for (int i = 0; i < c; ++i) s = fmaf(a[i], b[i], s);
    return s;
}

// Copy `rows` rows of one head (row stride w, starting at global row `first`) into shared `dst`
// [rows][c + 1]; rows at or beyond `end` become zeros.
__device__ __forceinline__ void load_rows(float* dst, const float* src, long first, int rows, long end, int w,
                                          int hc, int c) {
    const int cp = c + 1;
    for (int i = threadIdx.x; i < rows * c; i += blockDim.x) {
        const int r = i / c, col = i % c;
        const long g = first + r;
        dst[r * cp + col] = g < end ? src[g * w + hc + col] : 0.0f;
    }
}


// ---- forward: grid (ceil(Nq / FQ), H), 128 threads; warp w owns query rows w·RPW … (w+1)·RPW − 1 ----
#define FK 32

template <int DPL, int RPW>
__device__ __forceinline__ void attention_forward(const float* __restrict__ q, const float* __restrict__ k,
                                                 const float* __restrict__ v, float* __restrict__ o,
                                                 float* __restrict__ lse, const int* __restrict__ k0,
                                                 const int* __restrict__ nk, int nq, int nkeys, int heads, int c,
                                                 float scale) {
    constexpr int FQ = 4 * RPW;

    DYNAMIC_SMEM(float, sm);
    const int cp = c + 1, w = heads * c, hc = blockIdx.y * c;
    float* ks = sm;            // [FK][cp]
    float* vs = ks + FK * cp;  // [FK][cp]
    float* qs = vs + FK * cp;  // [FQ][cp]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = blockIdx.x * FQ;
    const int2 span = union_range(k0, nk, r0, FQ, nq);
    load_rows(qs, q, r0, FQ, nq, w, hc, c);

    float m[RPW], l[RPW], acc[RPW][DPL];
    int lo[RPW], hi[RPW];
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        const int r = r0 + warp * RPW + i;
        m[i] = NEG_INF;
        l[i] = 0.0f;
        lo[i] = r < nq ? k0[r] : 0;
        hi[i] = r < nq ? k0[r] + nk[r] : 0;
#pragma unroll
        for (int d = 0; d < DPL; ++d) acc[i][d] = 0.0f;
    }
    for (int t0 = span.x; t0 < span.y; t0 += FK) {
        __syncthreads();  // the previous tile is consumed (and qs is loaded on the first pass)
        load_rows(ks, k, t0, FK, min(span.y, nkeys), w, hc, c);
        load_rows(vs, v, t0, FK, min(span.y, nkeys), w, hc, c);
        __syncthreads();
        const int j = t0 + lane;
#pragma unroll
        for (int i = 0; i < RPW; ++i) {
            const bool valid = j >= lo[i] && j < hi[i];
            const float s = valid ? scale * dot(qs + (warp * RPW + i) * cp, ks + lane * cp, c) : NEG_INF;
            const float m_new = fmaxf(m[i], warp_max(s));
            if (m_new == NEG_INF) continue;  // warp-uniform: no valid key yet
            const float p = valid ? expf(s - m_new) : 0.0f;
            const float alpha = expf(m[i] - m_new);
            l[i] = l[i] * alpha + warp_sum(p);
#pragma unroll
            for (int d = 0; d < DPL; ++d) acc[i][d] *= alpha;
#pragma unroll 4
            for (int jj = 0; jj < FK; ++jj) {
                const float pj = __shfl_sync(FULL, p, jj);
#pragma unroll
                for (int d = 0; d < DPL; ++d) {
                    const int col = lane + 32 * d;
                    if (col < c) acc[i][d] = fmaf(pj, vs[jj * cp + col], acc[i][d]);
                }
            }
            m[i] = m_new;
        }
    }
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        const int r = r0 + warp * RPW + i;
        if (r >= nq) continue;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
#pragma unroll
        for (int d = 0; d < DPL; ++d) {
            const int col = lane + 32 * d;
            if (col < c) o[(long)r * w + hc + col] = acc[i][d] * inv;
        }
        if (lane == 0) lse[(long)r * heads + blockIdx.y] = l[i] > 0.0f ? m[i] + logf(l[i]) : NEG_INF;
    }
}

// ---- backward, part 1: dq (written) and delta = Σ dO·O per (row, head); same grid as the forward ----
template <int DPL, int RPW>
__device__ __forceinline__ void attention_backward_dq(const float* __restrict__ q, const float* __restrict__ k,
                                                     const float* __restrict__ v, const float* __restrict__ o,
                                                     const float* __restrict__ d_o, const float* __restrict__ lse,
                                                     const int* __restrict__ k0, const int* __restrict__ nk,
                                                     float* __restrict__ dq, float* __restrict__ delta, int nq,
                                                     int nkeys, int heads, int c, float scale) {
    constexpr int FQ = 4 * RPW;

    DYNAMIC_SMEM(float, sm);
    const int cp = c + 1, w = heads * c, hc = blockIdx.y * c;
    float* ks = sm;             // [FK][cp]
    float* vs = ks + FK * cp;   // [FK][cp]
    float* qs = vs + FK * cp;   // [FQ][cp]
    float* dos = qs + FQ * cp;  // [FQ][cp]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = blockIdx.x * FQ;
    const int2 span = union_range(k0, nk, r0, FQ, nq);
    load_rows(qs, q, r0, FQ, nq, w, hc, c);
    load_rows(dos, d_o, r0, FQ, nq, w, hc, c);
    __syncthreads();

    float dl[RPW], lr[RPW], acc[RPW][DPL];
    int lo[RPW], hi[RPW];
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        const int rl = warp * RPW + i, r = r0 + rl;
        float part = 0.0f;
#pragma unroll
        for (int d = 0; d < DPL; ++d) {
            const int col = lane + 32 * d;
            if (col < c && r < nq) part = fmaf(dos[rl * cp + col], o[(long)r * w + hc + col], part);
        }
        dl[i] = warp_sum(part);
        lr[i] = r < nq ? lse[(long)r * heads + blockIdx.y] : 0.0f;
        lo[i] = r < nq ? k0[r] : 0;
        hi[i] = r < nq ? k0[r] + nk[r] : 0;
        if (r < nq && lane == 0) delta[(long)r * heads + blockIdx.y] = dl[i];
#pragma unroll
        for (int d = 0; d < DPL; ++d) acc[i][d] = 0.0f;
    }
    for (int t0 = span.x; t0 < span.y; t0 += FK) {
        __syncthreads();
        load_rows(ks, k, t0, FK, min(span.y, nkeys), w, hc, c);
        load_rows(vs, v, t0, FK, min(span.y, nkeys), w, hc, c);
        __syncthreads();
        const int j = t0 + lane;
#pragma unroll
        for (int i = 0; i < RPW; ++i) {
            const int rl = warp * RPW + i;
            const bool valid = j >= lo[i] && j < hi[i];
            float ds = 0.0f;
            if (valid) {
                const float p = expf(scale * dot(qs + rl * cp, ks + lane * cp, c) - lr[i]);
                const float dp = dot(dos + rl * cp, vs + lane * cp, c);
                ds = p * (dp - dl[i]) * scale;
            }
#pragma unroll 4
            for (int jj = 0; jj < FK; ++jj) {
                const float dsj = __shfl_sync(FULL, ds, jj);
#pragma unroll
                for (int d = 0; d < DPL; ++d) {
                    const int col = lane + 32 * d;
                    if (col < c) acc[i][d] = fmaf(dsj, ks[jj * cp + col], acc[i][d]);
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        const int r = r0 + warp * RPW + i;
        if (r >= nq) continue;
#pragma unroll
        for (int d = 0; d < DPL; ++d) {
            const int col = lane + 32 * d;
            if (col < c) dq[(long)r * w + hc + col] = acc[i][d];
        }
    }
}

// ---- backward, part 2: dk, dv (written). Grid (ceil(Nk / BK), H), 128 threads; warp w owns key rows
// w·KPW … (w+1)·KPW − 1. Query rows stream through shared memory in tiles of 32: first lane i scores
// query i of the tile against each owned key, then lanes switch to head dims to accumulate. ----
#define BQ 32

template <int DPL, int KPW>
__device__ __forceinline__ void attention_backward_dkdv(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
    const int* __restrict__ k0, const int* __restrict__ nk, const int* __restrict__ q0, const int* __restrict__ nqk,
    float* __restrict__ dk, float* __restrict__ dv, int nq, int nkeys, int heads, int c, float scale) {
    constexpr int BK = 4 * KPW;

    DYNAMIC_SMEM(float, sm);
    const int cp = c + 1, w = heads * c, hc = blockIdx.y * c;
    float* ks = sm;             // [BK][cp]
    float* vs = ks + BK * cp;   // [BK][cp]
    float* qs = vs + BK * cp;   // [BQ][cp]
    float* dos = qs + BQ * cp;  // [BQ][cp]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, j0 = blockIdx.x * BK;
    const int2 span = union_range(q0, nqk, j0, BK, nkeys);
    load_rows(ks, k, j0, BK, nkeys, w, hc, c);
    load_rows(vs, v, j0, BK, nkeys, w, hc, c);

    float gk[KPW][DPL], gv[KPW][DPL];
#pragma unroll
    for (int t = 0; t < KPW; ++t)
#pragma unroll
        for (int d = 0; d < DPL; ++d) gk[t][d] = gv[t][d] = 0.0f;

    for (int i0 = span.x; i0 < span.y; i0 += BQ) {
        __syncthreads();
        load_rows(qs, q, i0, BQ, min(span.y, nq), w, hc, c);
        load_rows(dos, d_o, i0, BQ, min(span.y, nq), w, hc, c);
        __syncthreads();
        const int r = i0 + lane;  // the query row lane `lane` scores
        const bool row_ok = r < span.y && r < nq;
        const int rlo = row_ok ? k0[r] : 0, rhi = row_ok ? k0[r] + nk[r] : 0;
        const float rl = row_ok ? lse[(long)r * heads + blockIdx.y] : 0.0f;
        const float rd = row_ok ? delta[(long)r * heads + blockIdx.y] : 0.0f;
#pragma unroll
        for (int t = 0; t < KPW; ++t) {
            const int jl = warp * KPW + t, j = j0 + jl;
            float p = 0.0f, ds = 0.0f;
            if (j < nkeys && j >= rlo && j < rhi) {
                p = expf(scale * dot(qs + lane * cp, ks + jl * cp, c) - rl);
                const float dp = dot(dos + lane * cp, vs + jl * cp, c);
                ds = p * (dp - rd) * scale;
            }
#pragma unroll 4
            for (int ii = 0; ii < BQ; ++ii) {
                const float pi = __shfl_sync(FULL, p, ii), dsi = __shfl_sync(FULL, ds, ii);
#pragma unroll
                for (int d = 0; d < DPL; ++d) {
                    const int col = lane + 32 * d;
                    if (col < c) {
                        gv[t][d] = fmaf(pi, dos[ii * cp + col], gv[t][d]);
                        gk[t][d] = fmaf(dsi, qs[ii * cp + col], gk[t][d]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < KPW; ++t) {
        const int j = j0 + warp * KPW + t;
        if (j >= nkeys) continue;
#pragma unroll
        for (int d = 0; d < DPL; ++d) {
            const int col = lane + 32 * d;
            if (col < c) {
                dk[(long)j * w + hc + col] = gk[t][d];
                dv[(long)j * w + hc + col] = gv[t][d];
            }
        }
    }
}

// ---- entry points: head dims ≤ 128 and ≤ 256 ----
extern "C" __global__ void attention_forward_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                 const float* __restrict__ v, float* __restrict__ o,
                                                 float* __restrict__ lse, const int* __restrict__ k0,
                                                 const int* __restrict__ nk, int nq, int nkeys, int heads, int c,
                                                 float scale) {
    attention_forward<4, 4>(q, k, v, o, lse, k0, nk, nq, nkeys, heads, c, scale);
}

extern "C" __global__ void attention_forward_wide_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                 const float* __restrict__ v, float* __restrict__ o,
                                                 float* __restrict__ lse, const int* __restrict__ k0,
                                                 const int* __restrict__ nk, int nq, int nkeys, int heads, int c,
                                                 float scale) {
    attention_forward<8, 2>(q, k, v, o, lse, k0, nk, nq, nkeys, heads, c, scale);
}

extern "C" __global__ void attention_backward_dq_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                     const float* __restrict__ v, const float* __restrict__ o,
                                                     const float* __restrict__ d_o, const float* __restrict__ lse,
                                                     const int* __restrict__ k0, const int* __restrict__ nk,
                                                     float* __restrict__ dq, float* __restrict__ delta, int nq,
                                                     int nkeys, int heads, int c, float scale) {
    attention_backward_dq<4, 4>(q, k, v, o, d_o, lse, k0, nk, dq, delta, nq, nkeys, heads, c, scale);
}

extern "C" __global__ void attention_backward_dq_wide_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                     const float* __restrict__ v, const float* __restrict__ o,
                                                     const float* __restrict__ d_o, const float* __restrict__ lse,
                                                     const int* __restrict__ k0, const int* __restrict__ nk,
                                                     float* __restrict__ dq, float* __restrict__ delta, int nq,
                                                     int nkeys, int heads, int c, float scale) {
    attention_backward_dq<8, 2>(q, k, v, o, d_o, lse, k0, nk, dq, delta, nq, nkeys, heads, c, scale);
}

extern "C" __global__ void attention_backward_dkdv_f32(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
    const int* __restrict__ k0, const int* __restrict__ nk, const int* __restrict__ q0, const int* __restrict__ nqk,
    float* __restrict__ dk, float* __restrict__ dv, int nq, int nkeys, int heads, int c, float scale) {
    attention_backward_dkdv<4, 8>(q, k, v, d_o, lse, delta, k0, nk, q0, nqk, dk, dv, nq, nkeys, heads, c, scale);
}

extern "C" __global__ void attention_backward_dkdv_wide_f32(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
    const int* __restrict__ k0, const int* __restrict__ nk, const int* __restrict__ q0, const int* __restrict__ nqk,
    float* __restrict__ dk, float* __restrict__ dv, int nq, int nkeys, int heads, int c, float scale) {
    attention_backward_dkdv<8, 4>(q, k, v, d_o, lse, delta, k0, nk, q0, nqk, dk, dv, nq, nkeys, heads, c, scale);
}

// ---- cosine-attention normalisation: one warp per (row, head) ---------------------------------------
// y = gain[h] · x / max(‖x‖, 1e-12); norms [N, H] kept for the backward.
extern "C" __global__ void normalize_heads_forward_f32(const float* __restrict__ x, const float* __restrict__ gain,
                                                       float* __restrict__ y, float* __restrict__ norms, long rows,
                                                       int heads, int c) {
    const long seg = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (seg >= rows * heads) return;
    const float* xs = x + seg * c;
    float ss = 0.0f;
    for (int i = lane; i < c; i += 32) ss = fmaf(xs[i], xs[i], ss);
    const float n = fmaxf(sqrtf(warp_sum(ss)), 1e-12f);
    const float g = gain[seg % heads];
    for (int i = lane; i < c; i += 32) y[seg * c + i] = g * xs[i] / n;
    if (lane == 0) norms[seg] = n;
}

// dx written; udy [N, H] = Σ (x/n)·dy per (row, head), which the host sums over rows into dgain.
extern "C" __global__ void normalize_heads_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                        const float* __restrict__ norms,
                                                        const float* __restrict__ gain, float* __restrict__ dx,
                                                        float* __restrict__ udy, long rows, int heads, int c) {
    const long seg = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (seg >= rows * heads) return;
    const float n = norms[seg], g = gain[seg % heads];
    const float* xs = x + seg * c;
    const float* dys = dy + seg * c;
    float part = 0.0f;
    for (int i = lane; i < c; i += 32) part = fmaf(xs[i] / n, dys[i], part);
    const float u = warp_sum(part);
    const bool clamped = n <= 1e-12f;
    for (int i = lane; i < c; i += 32)
        dx[seg * c + i] = clamped ? g * dys[i] / n : g * (dys[i] - xs[i] / n * u) / n;
    if (lane == 0) udy[seg] = u;
}
