// Attention over segments in f32 on CUDA cores with register tiles: the `Math::F32` kernels for head
// dims 32, 64 and 128 on sm_80+ (attention.cu's serve other head dims and older GPUs), with its
// outputs and row ranges. Flash attention 2's structure (scores only in registers, online softmax, lse
// kept, the backward recomputes P) with an SGEMM's register blocking, so that fused multiply-adds,
// not shared-memory loads, fill the issue slots: a thread forms a 4 × 4 block of each score tile from
// 16-byte shared loads (8 per 64 FMAs; attention.cu's kernels load two floats per FMA), and 4 rows ×
// C/8 columns of each output product from its 8-lane group's probabilities (shuffled: no trip through
// shared memory) and 16-byte loads of the tile's rows (one per 16 FMAs at C = 128). Exponentials are
// 2^x on the special-function unit of scores scaled by scale·log2(e), as in attention_bf16.cu. Sums
// run in a fixed order (no atomics): bitwise reproducible.
//
// Dims: C head dim (a template parameter), Q [Nq, H·C], K, V [Nk, H·C], lse and delta [Nq, H].
// A block of 128 threads owns 64 rows (queries in the forward and dq kernels, keys in dk/dv); tiles of
// 32 rows of the other side stream through shared memory as f32 [32][C + 4] (the pad puts the 8 rows
// a quarter warp reads in distinct banks), two stages deep (mma.cuh's stream_tiles). Thread layout
// (`own_row`, `lane_x`): lane bits 1–3 are the column x, lane bits 0 and 4 with the warp pick the
// thread's 4 rows 16·warp + 4·ry + i (i < 4: each warp owns 16 consecutive rows, so a warp whose rows
// see none of a tile skips it); its tile columns are x + 8j (j < 4), its output columns 4x + 32m …
// 4x + 32m + 3 (m < C/32). The 8 lanes that share rows differ in lane bits 1–3. Lanes n and n ^ 1 read
// the same tile row and n, n ^ 2 the same own row, so each 16-byte shared load takes 2 wavefronts, not 4.
#include "common.cuh"
#include "attention.cuh"
#include "mma.cuh"

#define TR 64   // rows a block owns: 4 warps × 16
#define TS 32   // rows per streamed tile: 8 lanes × 4
#define NT 128  // threads per block
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// This thread's column x (lane bits 1–3) and its i-th row within the block's 64 (see the layout above).
__device__ __forceinline__ int lane_x() { return (threadIdx.x >> 1) & 7; }
__device__ __forceinline__ int own_row(int i) {
    const int lane = threadIdx.x & 31;
    return ((threadIdx.x >> 5) << 4) | (((lane & 1) | ((lane >> 3) & 2)) << 2) | i;
}

// Starts copying rows [first, first + ROWS) of one head of N matrices into consecutive shared tiles
// dst [N][ROWS][C + 4] (mma.cuh's cp_async_rows).
template <int C, int ROWS, int N>
__device__ __forceinline__ void load_rows(float* dst, const float* const (&src)[N], long first, long end, int w,
                                          int hc) {
    cp_async_rows<float, C, 4, ROWS, N>(dst, src, first, end, w, hc);
}

// s[i][j] = a[own_row(i)] · b[x + 8j], C deep: rows of two shared tiles with row stride C + 4, summed in
// column order.
template <int C>
__device__ __forceinline__ void scores(float (&s)[4][4], const float* a, const float* b) {
    const int x = lane_x();
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
#pragma unroll 8
    for (int d = 0; d < C; d += 4) {
        float4 av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = ld4(a + own_row(i) * (C + 4) + d);
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = ld4(b + (x + 8 * j) * (C + 4) + d);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                s[i][j] = fmaf(av[i].x, bv[j].x, s[i][j]);
                s[i][j] = fmaf(av[i].y, bv[j].y, s[i][j]);
                s[i][j] = fmaf(av[i].z, bv[j].z, s[i][j]);
                s[i][j] = fmaf(av[i].w, bv[j].w, s[i][j]);
            }
    }
}

// acc[i][m] (rows own_row(i), columns 4x + 32m …) += Σ_t p[row][t] · yt[t], t over the tile's TS rows in
// order: p[i][j] is this thread's block of the row-by-tile matrix (tile row x + 8j), so the group's 8
// lanes hold their rows' whole tile and each value comes by a shuffle from the lane that has it.
template <int C>
__device__ __forceinline__ void accumulate(float (&acc)[4][C / 32][4], const float (&p)[4][4], const float* yt) {
    const int lane = threadIdx.x & 31, x = lane_x(), rows = lane & 0x11;  // the lanes that share rows: rows | x << 1
#pragma unroll
    for (int t = 0; t < TS; ++t) {
        float pt[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) pt[i] = __shfl_sync(FULL, p[i][t >> 3], rows | (t & 7) << 1);
#pragma unroll
        for (int m = 0; m < C / 32; ++m) {
            const float4 r = ld4(yt + t * (C + 4) + 4 * x + 32 * m);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                acc[i][m][0] = fmaf(pt[i], r.x, acc[i][m][0]);
                acc[i][m][1] = fmaf(pt[i], r.y, acc[i][m][1]);
                acc[i][m][2] = fmaf(pt[i], r.z, acc[i][m][2]);
                acc[i][m][3] = fmaf(pt[i], r.w, acc[i][m][3]);
            }
        }
    }
}

template <int C>
__device__ __forceinline__ void zero_rows(float (&acc)[4][C / 32][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int m = 0; m < C / 32; ++m) acc[i][m][0] = acc[i][m][1] = acc[i][m][2] = acc[i][m][3] = 0.0f;
}

// Writes this thread's rows (row0 + own_row(i), those below `rows`) of acc into out [rows, w] at column
// offset hc, times f[i].
template <int C>
__device__ __forceinline__ void store_rows(float* out, const float (&acc)[4][C / 32][4], const float (&f)[4], int row0,
                                           int rows, int w, int hc) {
    const int x = lane_x();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = row0 + own_row(i);
        if (r >= rows) continue;
#pragma unroll
        for (int m = 0; m < C / 32; ++m)
            *reinterpret_cast<float4*>(out + (long)r * w + hc + 4 * x + 32 * m) =
                make_float4(acc[i][m][0] * f[i], acc[i][m][1] * f[i], acc[i][m][2] * f[i], acc[i][m][3] * f[i]);
    }
}

// v over the 8 lanes that share rows (lane bits 1–3; butterfly: every lane gets the same total).
__device__ __forceinline__ float group_sum(float v) {
    v += __shfl_xor_sync(FULL, v, 2);
    v += __shfl_xor_sync(FULL, v, 4);
    return v + __shfl_xor_sync(FULL, v, 8);
}

__device__ __forceinline__ float group_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL, v, 2));
    v = fmaxf(v, __shfl_xor_sync(FULL, v, 4));
    return fmaxf(v, __shfl_xor_sync(FULL, v, 8));
}

// This thread's query rows (r0 + own_row(i)): the keys [lo, hi) each sees (none past nq).
__device__ __forceinline__ void key_ranges(int (&lo)[4], int (&hi)[4], const int* k0, const int* nk, int r0, int nq) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = r0 + own_row(i);
        lo[i] = r < nq ? k0[r] : 0;
        hi[i] = r < nq ? k0[r] + nk[r] : 0;
    }
}

// Whether some row of this warp sees a key of [t0, t0 + TS): a warp whose rows see none skips the tile
// (the shuffles stay inside 8-lane groups, so skipping is per warp).
__device__ __forceinline__ bool warp_sees(const int (&lo)[4], const int (&hi)[4], int t0) {
    bool sees = false;
#pragma unroll
    for (int i = 0; i < 4; ++i) sees |= lo[i] < t0 + TS && hi[i] > t0;
    return __any_sync(FULL, sees);
}

// Scores of keys (tile columns t0 + x + 8j) outside their row's [lo, hi) become −∞.
__device__ __forceinline__ void mask_keys(float (&s)[4][4], const int (&lo)[4], const int (&hi)[4], int t0) {
    const int x = lane_x();
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int key = t0 + x + 8 * j;
            if (key < lo[i] || key >= hi[i]) s[i][j] = NEG_INF;
        }
}

// ---- forward: grid (ceil(Nq / 64), H); o and lse written ----
template <int C>
__device__ __forceinline__ void forward(const float* __restrict__ q, const float* __restrict__ k,
                                        const float* __restrict__ v, float* __restrict__ o, float* __restrict__ lse,
                                        const int* __restrict__ k0, const int* __restrict__ nk, int nq, int nkeys,
                                        int heads, float scale) {
    constexpr int CP = C + 4;
    DYNAMIC_SMEM(float, smem);
    float* qs = smem;           // [64][CP]
    float* kv = qs + TR * CP;   // [2 stages][K, V][32][CP]
    const int w = heads * C, hc = blockIdx.y * C, r0 = blockIdx.x * TR;
    const int2 span = union_range(k0, nk, r0, TR, nq);
    load_rows<C, TR, 1>(qs, {q}, r0, nq, w, hc);  // lands with the first key tile

    int lo[4], hi[4];
    key_ranges(lo, hi, k0, nk, r0, nq);
    const float scale2 = scale * LOG2E;  // exp(x·scale) = 2^(x·scale2)
    // m: a row's max of x·scale2 so far (the same in the group's 8 lanes); l: this lane's part of the
    // row sum of 2^(x·scale2 − m)
    float m[4], l[4], acc[4][C / 32][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = NEG_INF, l[i] = 0.0f;
    zero_rows<C>(acc);

    const int end = min(span.y, nkeys);
    auto issue = [&](int i, int st) { load_rows<C, TS, 2>(kv + 2 * st * TS * CP, {k, v}, span.x + i * TS, end, w, hc); };
    stream_tiles(tile_count(span, TS), issue, [&](int i, int st) {
        const float *ks = kv + 2 * st * TS * CP, *vs = ks + TS * CP;
        const int t0 = span.x + i * TS;
        if (!warp_sees(lo, hi, t0)) return;
        float s[4][4];  // S = Q·Kᵀ, then P
        scores<C>(s, qs, ks);
        mask_keys(s, lo, hi, t0);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float mx = fmaxf(fmaxf(s[i][0], s[i][1]), fmaxf(s[i][2], s[i][3]));
            const float m_new = fmaxf(m[i], group_max(mx) * scale2);  // scale2 > 0 keeps the order
            const float alpha = m_new == NEG_INF ? 1.0f : ex2(m[i] - m_new);
            const float base = m_new == NEG_INF ? 0.0f : m_new;
            m[i] = m_new;
            l[i] *= alpha;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                s[i][j] = ex2(fmaf(s[i][j], scale2, -base));  // masked: 2^−∞ = 0
                l[i] += s[i][j];
            }
#pragma unroll
            for (int n = 0; n < C / 32; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][n][e] *= alpha;
        }
        accumulate<C>(acc, s, vs);  // O += P·V
    });
    float inv[4];
    const int x = lane_x();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        l[i] = group_sum(l[i]);
        inv[i] = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        const int r = r0 + own_row(i);
        if (x == 0 && r < nq) lse[(long)r * heads + blockIdx.y] = l[i] > 0.0f ? fmaf(m[i], LN2, logf(l[i])) : NEG_INF;
    }
    store_rows<C>(o, acc, inv, r0, nq, w, hc);
}

// ---- backward, part 1: dq and delta = Σ dO·O per (row, head), both written; the forward's grid ----
template <int C>
__device__ __forceinline__ void backward_dq(const float* __restrict__ q, const float* __restrict__ k,
                                            const float* __restrict__ v, const float* __restrict__ o,
                                            const float* __restrict__ d_o, const float* __restrict__ lse,
                                            const int* __restrict__ k0, const int* __restrict__ nk,
                                            float* __restrict__ dq, float* __restrict__ delta, int nq, int nkeys,
                                            int heads, float scale) {
    constexpr int CP = C + 4;
    DYNAMIC_SMEM(float, smem);
    float* qs = smem;             // [64][CP]
    float* dos = qs + TR * CP;    // [64][CP]
    float* kv = dos + TR * CP;    // [2 stages][K, V][32][CP]
    const int x = lane_x();
    const int w = heads * C, hc = blockIdx.y * C, r0 = blockIdx.x * TR;
    const int2 span = union_range(k0, nk, r0, TR, nq);
    load_rows<C, TR, 2>(qs, {q, d_o}, r0, nq, w, hc);  // Q and dO (dos follows qs); land with the first key tile

    int lo[4], hi[4];
    key_ranges(lo, hi, k0, nk, r0, nq);
    const float scale2 = scale * LOG2E;
    float lr2[4], dl[4];  // lse·log2(e) (0 for a row that sees no key: all its keys are masked), delta
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = r0 + own_row(i);
        float part = 0.0f;  // this lane's columns 4x + 32m … of dO·O
        if (r < nq)
#pragma unroll
            for (int m = 0; m < C / 32; ++m) {
                const long at = (long)r * w + hc + 4 * x + 32 * m;
                const float4 a = ld4(d_o + at), b = ld4(o + at);
                part = fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, part))));
            }
        dl[i] = group_sum(part);
        if (r < nq && x == 0) delta[(long)r * heads + blockIdx.y] = dl[i];
        const float lse_r = r < nq ? lse[(long)r * heads + blockIdx.y] : NEG_INF;
        lr2[i] = lse_r > NEG_INF ? lse_r * LOG2E : 0.0f;
    }
    float acc[4][C / 32][4];
    zero_rows<C>(acc);

    const int end = min(span.y, nkeys);
    auto issue = [&](int i, int st) { load_rows<C, TS, 2>(kv + 2 * st * TS * CP, {k, v}, span.x + i * TS, end, w, hc); };
    stream_tiles(tile_count(span, TS), issue, [&](int i, int st) {
        const float *ks = kv + 2 * st * TS * CP, *vs = ks + TS * CP;
        const int t0 = span.x + i * TS;
        if (!warp_sees(lo, hi, t0)) return;
        float p[4][4], dp[4][4];  // S and dP = dO·Vᵀ, then P and dS
        scores<C>(p, qs, ks);
        scores<C>(dp, dos, vs);
        mask_keys(p, lo, hi, t0);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float pr = ex2(fmaf(p[i][j], scale2, -lr2[i]));  // masked: 0
                p[i][j] = pr * (dp[i][j] - dl[i]) * scale;               // dS
            }
        accumulate<C>(acc, p, ks);  // dQ += dS·K
    });
    const float one[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    store_rows<C>(dq, acc, one, r0, nq, w, hc);
}

// ---- backward, part 2: dk, dv (written). Grid (ceil(Nk / 64), H): a thread keeps its 4 keys' dk, dv
// in registers while query tiles, with their lse, delta and key ranges, stream through shared memory ----
template <int C>
__device__ __forceinline__ void backward_dkdv(const float* __restrict__ q, const float* __restrict__ k,
                                              const float* __restrict__ v, const float* __restrict__ d_o,
                                              const float* __restrict__ lse, const float* __restrict__ delta,
                                              const int* __restrict__ k0, const int* __restrict__ nk,
                                              const int* __restrict__ q0, const int* __restrict__ nqk,
                                              float* __restrict__ dk, float* __restrict__ dv, int nq, int nkeys,
                                              int heads, float scale) {
    constexpr int CP = C + 4;
    DYNAMIC_SMEM(float, smem);
    float* stats = smem;                                     // [2 stages][lse, delta][32]
    int* bounds = reinterpret_cast<int*>(stats + 2 * 2 * TS);  // [2 stages][k0, nk][32]
    float* ks = reinterpret_cast<float*>(bounds + 2 * 2 * TS);  // [64][CP]
    float* vs = ks + TR * CP;                                  // [64][CP]
    float* qdo = vs + TR * CP;                                 // [2 stages][Q, dO][32][CP]
    const int x = lane_x();
    const int w = heads * C, hc = blockIdx.y * C, j0 = blockIdx.x * TR;
    const int2 span = union_range(q0, nqk, j0, TR, nkeys);
    load_rows<C, TR, 2>(ks, {k, v}, j0, nkeys, w, hc);  // K and V (vs follows ks); land with the first query tile
    const float scale2 = scale * LOG2E;
    float gk[4][C / 32][4], gv[4][C / 32][4];
    zero_rows<C>(gk);
    zero_rows<C>(gv);

    const int end = min(span.y, nq);
    auto issue = [&](int i, int st) {
        const int i0 = span.x + i * TS;
        load_rows<C, TS, 2>(qdo + 2 * st * TS * CP, {q, d_o}, i0, end, w, hc);
        if (threadIdx.x < TS) {  // the per-query values as 4-byte copies (zeros past the end: no keys seen)
            const int r = i0 + threadIdx.x;
            const bool ok = r < end;
            const long at = ok ? (long)r * heads + blockIdx.y : 0;
            cp_async4(stats + 2 * st * TS + threadIdx.x, lse + at, ok);
            cp_async4(stats + (2 * st + 1) * TS + threadIdx.x, delta + at, ok);
            cp_async4(bounds + 2 * st * TS + threadIdx.x, k0 + (ok ? r : 0), ok);
            cp_async4(bounds + (2 * st + 1) * TS + threadIdx.x, nk + (ok ? r : 0), ok);
        }
    };
    stream_tiles(tile_count(span, TS), issue, [&](int, int st) {
        const float *qs = qdo + 2 * st * TS * CP, *dos = qs + TS * CP;
        const float *lse_s = stats + 2 * st * TS, *delta_s = lse_s + TS;
        const int *lo_s = bounds + 2 * st * TS, *n_s = lo_s + TS;
        bool seen[4][4], any = false;  // key own_row(i) seen by the tile's query x + 8j
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int lo = lo_s[x + 8 * j], hi = lo + n_s[x + 8 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int key = j0 + own_row(i);
                seen[i][j] = key >= lo && key < hi;
                any |= seen[i][j];
            }
        }
        if (!__any_sync(FULL, any)) return;  // none of this warp's keys is seen by the tile's queries
        float p[4][4], dp[4][4];  // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ, then Pᵀ and dSᵀ
        scores<C>(p, ks, qs);
        scores<C>(dp, vs, dos);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float lr2 = lse_s[x + 8 * j] * LOG2E, dl = delta_s[x + 8 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                // a query that sees no key has lse = −∞: its 2^∞ is selected away
                const float pr = seen[i][j] ? ex2(fmaf(p[i][j], scale2, -lr2)) : 0.0f;
                p[i][j] = pr;
                dp[i][j] = seen[i][j] ? pr * (dp[i][j] - dl) * scale : 0.0f;  // (a NaN dP of an unseen key stays out)
            }
        }
        accumulate<C>(gv, p, dos);  // dV += Pᵀ·dO
        accumulate<C>(gk, dp, qs);  // dK += dSᵀ·Q
    });
    const float one[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    store_rows<C>(dk, gk, one, j0, nkeys, w, hc);
    store_rows<C>(dv, gv, one, j0, nkeys, w, hc);
}

// ---- entry points: attention_{forward,backward_dq,backward_dkdv}_tiled_c{32,64,128} (the argument
// lists of attention.cu's kernels) ----
#define ENTRY_POINTS(C)                                                                                          \
    extern "C" __global__ void __launch_bounds__(NT) attention_forward_tiled_c##C(                               \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,                    \
        float* __restrict__ o, float* __restrict__ lse, const int* __restrict__ k0, const int* __restrict__ nk,   \
        int nq, int nkeys, int heads, int c, float scale) {                                                      \
        forward<C>(q, k, v, o, lse, k0, nk, nq, nkeys, heads, scale);                                            \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(NT) attention_backward_dq_tiled_c##C(                           \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,                    \
        const float* __restrict__ o, const float* __restrict__ d_o, const float* __restrict__ lse,               \
        const int* __restrict__ k0, const int* __restrict__ nk, float* __restrict__ dq, float* __restrict__ delta, \
        int nq, int nkeys, int heads, int c, float scale) {                                                      \
        backward_dq<C>(q, k, v, o, d_o, lse, k0, nk, dq, delta, nq, nkeys, heads, scale);                        \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(NT) attention_backward_dkdv_tiled_c##C(                         \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,                    \
        const float* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,           \
        const int* __restrict__ k0, const int* __restrict__ nk, const int* __restrict__ q0,                      \
        const int* __restrict__ nqk, float* __restrict__ dk, float* __restrict__ dv, int nq, int nkeys, int heads, \
        int c, float scale) {                                                                                    \
        backward_dkdv<C>(q, k, v, d_o, lse, delta, k0, nk, q0, nqk, dk, dv, nq, nkeys, heads, scale);            \
    }

ENTRY_POINTS(32)
ENTRY_POINTS(64)
ENTRY_POINTS(128)
