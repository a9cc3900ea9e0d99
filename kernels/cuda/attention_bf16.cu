// Attention over segments on tensor cores: the `Math::Bf16` twin of attention.cu (same outputs and
// row ranges), flash-attention-2 style. q, k, v and dO come in bf16 (attention.rs rounds them once
// per call), and the probabilities and dS fed back into products are rounded to bf16, for
// `mma.sync.m16n8k16` with f32 accumulation, as upstream's flash attention under bf16 autocast; the
// softmax statistics (max, sum, lse, delta = Σ dO·O from the bf16 dO and O, summed in f32), O and
// every gradient stay f32. Exponentials are 2^x on the special-function unit (mma.cuh's ex2) of scores scaled by
// scale·log2(e): one FFMA and one MUFU per score; lse stays a natural logarithm. Keys are masked
// only in tiles that some row of the warp does not see whole. No atomics: bitwise reproducible.
//
// Dims: C head dim (a template parameter: 32, 64 or 128), Q [Nq, H·C], K, V [Nk, H·C]. Blocks
// of 4 warps; a warp owns 16 rows (queries in the forward and dq kernels, keys in dk/dv) and 64-row
// tiles of the other side stream through shared memory as row-major bf16 [64][C + 8] (the pad keeps
// ldmatrix free of bank conflicts), double-buffered: cp.async copies tile i + 1 while tile i is used
// (`stream_tiles`). Fragments come from shared memory through ldmatrix, the transposed one for
// products with a tile (P·V, dS·K, Pᵀ·dO, dSᵀ·Q), so every tile is loaded once. The f32 scores of
// two adjacent 8-column tiles are, packed in pairs, the A fragment of the next product (mma.cuh's
// fragment layouts).
#include "common.cuh"
#include "attention.cuh"
#include "mma.cuh"

#define T64 64   // rows per block (4 warps × 16) and per streamed tile
#define NT 128   // threads per block
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// The A fragment of keys (or queries) 16·kk … 16·kk + 15 from f32 accumulators of 8-wide tiles.
__device__ __forceinline__ void pack_a(unsigned (&a)[4], const float (&s)[T64 / 8][4], int kk) {
    a[0] = pack2(s[2 * kk][0], s[2 * kk][1]);
    a[1] = pack2(s[2 * kk][2], s[2 * kk][3]);
    a[2] = pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// One 16-deep step (columns 16·kk …) of s [16 × 64] += x · yᵀ for this warp's 16 rows (their A
// fragment `a`) against all 64 rows of the tile y [64][C + 8].
template <int C>
__device__ __forceinline__ void score_step(float (&s)[T64 / 8][4], const unsigned (&a)[4], const bf16* y, int kk) {
#pragma unroll
    for (int jp = 0; jp < T64 / 16; ++jp) {
        unsigned b[4];
        ldsm_bt2(b, y, C + 8, jp * 16, kk * 16);
        mma(s[2 * jp], a, b[0], b[1]);
        mma(s[2 * jp + 1], a, b[2], b[3]);
    }
}

__device__ __forceinline__ void zero_tile(float (&s)[T64 / 8][4]) {
#pragma unroll
    for (int j = 0; j < T64 / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
}

// The backward's two score products for this warp's 16 rows against a 64-row tile: p = x1·y1ᵀ and
// dp = x2·y2ᵀ, C deep, all tiles bf16 [64][C + 8] (S and dP for dq; Sᵀ and dPᵀ for dk, dv).
template <int C>
__device__ __forceinline__ void score_pair(float (&p)[T64 / 8][4], float (&dp)[T64 / 8][4], const bf16* x1,
                                           const bf16* y1, const bf16* x2, const bf16* y2) {
    const int r0 = (threadIdx.x >> 5) * 16;
    zero_tile(p);
    zero_tile(dp);
#pragma unroll
    for (int kk = 0; kk < C / 16; ++kk) {
        unsigned a[4];
        ldsm_a(a, x1, C + 8, r0, kk * 16);
        score_step<C>(p, a, y1, kk);
        ldsm_a(a, x2, C + 8, r0, kk * 16);
        score_step<C>(dp, a, y2, kk);
    }
}

// acc [16 × C] += s · y over the 64-row tile: s the f32 accumulators of this warp's 16 rows × 64
// columns (packed to bf16 A fragments), y [64][C + 8] bf16 row-major.
template <int C>
__device__ __forceinline__ void accumulate_product(float (&acc)[C / 8][4], const float (&s)[T64 / 8][4],
                                                   const bf16* y) {
#pragma unroll
    for (int kk = 0; kk < T64 / 16; ++kk) {
        unsigned a[4];
        pack_a(a, s, kk);
#pragma unroll
        for (int np = 0; np < C / 16; ++np) {
            unsigned b[4];
            ldsm_b2(b, y, C + 8, kk * 16, np * 16);
            mma(acc[2 * np], a, b[0], b[1]);
            mma(acc[2 * np + 1], a, b[2], b[3]);
        }
    }
}

// Starts copying rows [first, first + 64) of one head of N matrices into consecutive tiles dst
// [N][64][C + 8] (mma.cuh's cp_async_rows).
template <int C, int N>
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* const (&src)[N], long first, long end, int w,
                                          int hc) {
    cp_async_rows<bf16, C, 8, T64, N>(dst, src, first, end, w, hc);
}

// Starts copying key rows [first, first + 64) of K and V into stage `st` of kv [2][K, V][64][C + 8].
template <int C>
__device__ __forceinline__ void load_kv(bf16* kv, const bf16* k, const bf16* v, long first, long end, int st, int w,
                                        int hc) {
    load_rows<C, 2>(kv + (2 * st) * T64 * (C + 8), {k, v}, first, end, w, hc);
}

// Whether any of this warp's query rows (a lane's two: keys [lo, hi) each) sees keys [t0, t0 + 64).
__device__ __forceinline__ bool warp_sees(const int (&lo)[2], const int (&hi)[2], int t0) {
    return __any_sync(FULL, (lo[0] < t0 + T64 && hi[0] > t0) || (lo[1] < t0 + T64 && hi[1] > t0));
}

// Whether every one of this warp's query rows sees all of keys [t0, t0 + 64): no masking needed.
__device__ __forceinline__ bool warp_sees_all(const int (&lo)[2], const int (&hi)[2], int t0) {
    return __all_sync(FULL, lo[0] <= t0 && hi[0] >= t0 + T64 && lo[1] <= t0 && hi[1] >= t0 + T64);
}

// Scores of keys outside a row's range [lo, hi) become −∞ (a lane's rows h = 0, 1 and keys
// t0 + 8j + 2t + (e & 1): the C fragment layout).
__device__ __forceinline__ void mask_keys(float (&s)[T64 / 8][4], const int (&lo)[2], const int (&hi)[2], int t0) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < T64 / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = t0 + j * 8 + 2 * t + (e & 1), h = e >> 1;
            if (key < lo[h] || key >= hi[h]) s[j][e] = NEG_INF;
        }
}

// Two adjacent output values: f32, or bf16 (the output only a bf16 product reads).
__device__ __forceinline__ void store_pair(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store_pair(bf16* p, float a, float b) { *reinterpret_cast<unsigned*>(p) = pack2(a, b); }


// ---- forward: grid (ceil(Nq / 64), H); o (f32 or bf16: Out), lse written ----
template <int C, class Out>
__device__ __forceinline__ void forward(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                        const bf16* __restrict__ v, Out* __restrict__ o, float* __restrict__ lse,
                                        const int* __restrict__ k0, const int* __restrict__ nk, int nq, int nkeys,
                                        int heads, float scale) {
    constexpr int CP = C + 8;
    DYNAMIC_SMEM(unsigned char, smem);
    bf16* kv = reinterpret_cast<bf16*>(smem);  // [2 stages][K, V][64][CP]
    bf16* qs = kv + 2 * T64 * CP;              // [64][CP]: stage 1's K, free until tile 1 is issued
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int w = heads * C, hc = blockIdx.y * C, r0 = blockIdx.x * T64;
    const int2 span = union_range(k0, nk, r0, T64, nq);
    load_rows<C, 1>(qs, {q}, r0, nq, w, hc);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned qa[C / 16][4];
#pragma unroll
    for (int kk = 0; kk < C / 16; ++kk) ldsm_a(qa[kk], qs, CP, warp * 16, kk * 16);
    // tile 1 (into qs) is issued after stream_tiles' first barrier: every warp holds its Q fragments

    const int ra = r0 + warp * 16 + g, rows[2] = {ra, ra + 8};
    const float scale2 = scale * LOG2E;  // exp(x·scale) = 2^(x·scale2)
    int lo[2], hi[2];
    // m: the row max of x·scale2 so far; l: this lane's part of the row sum of 2^(x·scale2 − m)
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        lo[h] = rows[h] < nq ? k0[rows[h]] : 0;
        hi[h] = rows[h] < nq ? k0[rows[h]] + nk[rows[h]] : 0;
    }
    float acc[C / 8][4];
#pragma unroll
    for (int n = 0; n < C / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    const int end = min(span.y, nkeys);
    auto issue = [&](int i, int st) { load_kv<C>(kv, k, v, span.x + i * T64, end, st, w, hc); };
    stream_tiles(tile_count(span, T64), issue, [&](int i, int st) {
        const bf16 *ks = kv + (2 * st) * T64 * CP, *vs = ks + T64 * CP;
        const int t0 = span.x + i * T64;
        if (!warp_sees(lo, hi, t0)) return;  // none of this warp's rows sees this tile
        auto tile = [&](bool masked) {  // inlined twice: the flag is a constant in each copy
            float s[T64 / 8][4];  // S = Q·Kᵀ
            zero_tile(s);
#pragma unroll
            for (int kk = 0; kk < C / 16; ++kk) score_step<C>(s, qa[kk], ks, kk);
            if (masked) mask_keys(s, lo, hi, t0);
            float mx[2] = {NEG_INF, NEG_INF};  // of the raw scores: scale2 > 0 keeps the order
#pragma unroll
            for (int j = 0; j < T64 / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
            float alpha[2], base[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL, mx[h], 1));
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL, mx[h], 2));
                const float m_new = fmaxf(m[h], mx[h] * scale2);
                alpha[h] = m_new == NEG_INF ? 1.0f : ex2(m[h] - m_new);
                base[h] = m_new == NEG_INF ? 0.0f : m_new;
                m[h] = m_new;
                l[h] *= alpha[h];
            }
#pragma unroll
            for (int j = 0; j < T64 / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[j][e] = ex2(fmaf(s[j][e], scale2, -base[e >> 1]));  // masked: 2^−∞ = 0
                    l[e >> 1] += s[j][e];
                }
            if (__any_sync(FULL, alpha[0] != 1.0f || alpha[1] != 1.0f))  // a row max moved: rescale O
#pragma unroll
                for (int n = 0; n < C / 8; ++n) {
                    acc[n][0] *= alpha[0];
                    acc[n][1] *= alpha[0];
                    acc[n][2] *= alpha[1];
                    acc[n][3] *= alpha[1];
                }
            accumulate_product<C>(acc, s, vs);  // O += P·V
        };
        if (warp_sees_all(lo, hi, t0)) tile(false); else tile(true);
    });
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(FULL, l[h], 1);
        l[h] += __shfl_xor_sync(FULL, l[h], 2);
        if (rows[h] >= nq) continue;
        const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
#pragma unroll
        for (int n = 0; n < C / 8; ++n)
            store_pair(o + (long)rows[h] * w + hc + n * 8 + 2 * t, acc[n][2 * h] * inv, acc[n][2 * h + 1] * inv);
        if (t == 0) lse[(long)rows[h] * heads + blockIdx.y] = l[h] > 0.0f ? fmaf(m[h], LN2, logf(l[h])) : NEG_INF;
    }
}

// ---- backward, part 1: dq and delta = Σ dO·O per (row, head) (bf16 dO and O: the dO of the dP
// product, as flash attention's bf16 backward), both written; the forward's grid ----
template <int C>
__device__ __forceinline__ void backward_dq(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                            const bf16* __restrict__ v, const bf16* __restrict__ o16,
                                            const bf16* __restrict__ do16,
                                            const float* __restrict__ lse,
                                            const int* __restrict__ k0, const int* __restrict__ nk,
                                            float* __restrict__ dq, float* __restrict__ delta, int nq, int nkeys,
                                            int heads, float scale) {
    constexpr int CP = C + 8;
    DYNAMIC_SMEM(unsigned char, smem);
    bf16* qs = reinterpret_cast<bf16*>(smem);  // [64][CP]
    bf16* dos = qs + T64 * CP;                 // [64][CP]
    bf16* kv = dos + T64 * CP;                 // [2 stages][K, V][64][CP]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int w = heads * C, hc = blockIdx.y * C, r0 = blockIdx.x * T64;
    const int2 span = union_range(k0, nk, r0, T64, nq);
    load_rows<C, 2>(qs, {q, do16}, r0, nq, w, hc);  // Q and dO (dos follows qs); land with the first key tile
    cp_async_commit();

    const int ra = r0 + warp * 16 + g, rows[2] = {ra, ra + 8};
    const float scale2 = scale * LOG2E;
    int lo[2], hi[2];
    float lr2[2], dl[2];  // lse·log2(e) (0 for a row that sees no key: all its keys are masked), delta
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = rows[h];
        float part = 0.0f;  // this lane's columns n·8 + 2t, + 1 of dO·O, in f32
        if (r < nq)
#pragma unroll
            for (int n = 0; n < C / 8; ++n) {
                const float2 a = unpack2(ld32(do16 + (long)r * w + hc + n * 8 + 2 * t));
                const float2 b = unpack2(ld32(o16 + (long)r * w + hc + n * 8 + 2 * t));
                part = fmaf(a.x, b.x, fmaf(a.y, b.y, part));
            }
        part += __shfl_xor_sync(FULL, part, 1);
        part += __shfl_xor_sync(FULL, part, 2);
        dl[h] = part;
        if (r < nq && t == 0) delta[(long)r * heads + blockIdx.y] = part;
        const float lse_r = r < nq ? lse[(long)r * heads + blockIdx.y] : NEG_INF;
        lr2[h] = lse_r > NEG_INF ? lse_r * LOG2E : 0.0f;
        lo[h] = r < nq ? k0[r] : 0;
        hi[h] = r < nq ? k0[r] + nk[r] : 0;
    }
    float acc[C / 8][4];
#pragma unroll
    for (int n = 0; n < C / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    const int end = min(span.y, nkeys);
    auto issue = [&](int i, int st) { load_kv<C>(kv, k, v, span.x + i * T64, end, st, w, hc); };
    stream_tiles(tile_count(span, T64), issue, [&](int i, int st) {
        const bf16 *ks = kv + (2 * st) * T64 * CP, *vs = ks + T64 * CP;
        const int t0 = span.x + i * T64;
        if (!warp_sees(lo, hi, t0)) return;

        auto tile = [&](bool masked) {  // inlined twice: the flag is a constant in each copy
            float p[T64 / 8][4], dp[T64 / 8][4];  // S, dP
            score_pair<C>(p, dp, qs, ks, dos, vs);
            if (masked) mask_keys(p, lo, hi, t0);
#pragma unroll
            for (int j = 0; j < T64 / 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int h = e >> 1;
                    const float pr = ex2(fmaf(p[j][e], scale2, -lr2[h]));  // masked: 0
                    p[j][e] = pr * (dp[j][e] - dl[h]) * scale;           // dS
                }
            }
            accumulate_product<C>(acc, p, ks);  // dQ += dS·K
        };
        if (warp_sees_all(lo, hi, t0)) tile(false); else tile(true);
    });
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (rows[h] >= nq) continue;
#pragma unroll
        for (int n = 0; n < C / 8; ++n)
            *reinterpret_cast<float2*>(dq + (long)rows[h] * w + hc + n * 8 + 2 * t) =
                make_float2(acc[n][2 * h], acc[n][2 * h + 1]);
    }
}

// dk/dv's Pᵀ and dSᵀ in place of Sᵀ and dPᵀ (this warp's keys × a query tile): P = exp(S·scale − lse),
// dS = P·(dP − delta)·scale, from the tile's per-query lse and delta in shared memory; `Masked`: a
// key outside the query's range [lo_s, lo_s + n_s) gets P = dS = 0 (a query that sees no key has
// lse = −∞: its 2^∞ is selected away).
template <bool Masked>
__device__ __forceinline__ void key_grads(float (&p)[T64 / 8][4], float (&dp)[T64 / 8][4], const float* lse_s,
                                          const float* delta_s, const int* lo_s, const int* n_s, const int (&keys)[2],
                                          float scale) {
    const int t = threadIdx.x & 3;
    const float scale2 = scale * LOG2E;
#pragma unroll
    for (int j = 0; j < T64 / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int qi = j * 8 + 2 * t + (e & 1), key = keys[e >> 1];
            float pr = ex2(fmaf(p[j][e], scale2, -lse_s[qi] * LOG2E));
            if (Masked) pr = key >= lo_s[qi] && key < lo_s[qi] + n_s[qi] ? pr : 0.0f;
            p[j][e] = pr;
            dp[j][e] = pr * (dp[j][e] - delta_s[qi]) * scale;
        }
    }
}

// ---- backward, part 2: dk, dv (written). Grid (ceil(Nk / 64), H); a warp owns 16 keys and keeps
// their dk, dv accumulators in registers; query tiles stream through shared memory. ----
template <int C>
__device__ __forceinline__ void backward_dkdv(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                              const bf16* __restrict__ v, const bf16* __restrict__ d_o,
                                              const float* __restrict__ lse, const float* __restrict__ delta,
                                              const int* __restrict__ k0, const int* __restrict__ nk,
                                              const int* __restrict__ q0, const int* __restrict__ nqk,
                                              float* __restrict__ dk, float* __restrict__ dv, int nq, int nkeys,
                                              int heads, float scale) {
    constexpr int CP = C + 8;
    DYNAMIC_SMEM(unsigned char, smem);
    // per stage, per query of its tile: lse, delta, and the first key it sees and how many
    float* stats = reinterpret_cast<float*>(smem);               // [2 stages][lse, delta][64]
    int* bounds = reinterpret_cast<int*>(stats + 2 * 2 * T64);  // [2 stages][k0, nk][64]
    bf16* ks = reinterpret_cast<bf16*>(bounds + 2 * 2 * T64);   // [64][CP]
    bf16* vs = ks + T64 * CP;                                    // [64][CP]
    bf16* qdo = vs + T64 * CP;                                   // [2 stages][Q, dO][64][CP]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int w = heads * C, hc = blockIdx.y * C, j0 = blockIdx.x * T64;
    const int2 span = union_range(q0, nqk, j0, T64, nkeys);
    load_rows<C, 2>(ks, {k, v}, j0, nkeys, w, hc);  // K and V (vs follows ks); land with the first query tile
    cp_async_commit();
    const int keys[2] = {j0 + warp * 16 + g, j0 + warp * 16 + g + 8};  // this lane's key rows
    float gk[C / 8][4], gv[C / 8][4];
#pragma unroll
    for (int n = 0; n < C / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) gk[n][e] = gv[n][e] = 0.0f;

    const int end = min(span.y, nq);
    auto issue = [&](int i, int st) {
        const int i0 = span.x + i * T64;
        load_rows<C, 2>(qdo + (2 * st) * T64 * CP, {q, d_o}, i0, end, w, hc);
        // the per-query values as 4-byte copies too (zeros past the end: no keys seen)
        if (threadIdx.x < T64) {
            const int j = threadIdx.x, r = i0 + j;
            const bool ok = r < end;
            const long at = ok ? (long)r * heads + blockIdx.y : 0;
            cp_async4(stats + (2 * st) * T64 + j, lse + at, ok);
            cp_async4(stats + (2 * st + 1) * T64 + j, delta + at, ok);
            cp_async4(bounds + (2 * st) * T64 + j, k0 + (ok ? r : 0), ok);
            cp_async4(bounds + (2 * st + 1) * T64 + j, nk + (ok ? r : 0), ok);
        }
    };
    stream_tiles(tile_count(span, T64), issue, [&](int, int st) {
        const bf16 *qs = qdo + (2 * st) * T64 * CP, *dos = qs + T64 * CP;
        const float *lse_s = stats + (2 * st) * T64, *delta_s = lse_s + T64;
        const int *lo_s = bounds + (2 * st) * T64, *n_s = lo_s + T64;
        // skip a tile none of whose queries sees this warp's keys; mask only one that some query
        // does not see whole
        const int kl = j0 + warp * 16, kh = min(kl + 16, nkeys);
        bool sees = false, whole = kl + 16 <= nkeys;
        for (int i = lane; i < T64; i += 32) {
            sees |= lo_s[i] < kh && lo_s[i] + n_s[i] > kl;
            whole &= lo_s[i] <= kl && lo_s[i] + n_s[i] >= kl + 16;
        }
        if (!__any_sync(FULL, sees)) return;

        float p[T64 / 8][4], dp[T64 / 8][4];  // Sᵀ and dPᵀ, then Pᵀ and dSᵀ: [this warp's keys][the tile's queries]
        score_pair<C>(p, dp, ks, qs, vs, dos);
        if (__all_sync(FULL, whole))
            key_grads<false>(p, dp, lse_s, delta_s, lo_s, n_s, keys, scale);
        else
            key_grads<true>(p, dp, lse_s, delta_s, lo_s, n_s, keys, scale);
        // dV += Pᵀ·dO and dK += dSᵀ·Q: accumulate_product's loop for both at once (two calls schedule
        // worse at 255 registers: more spills at C = 128)
#pragma unroll
        for (int kk = 0; kk < T64 / 16; ++kk) {
            unsigned pa[4], da[4];
            pack_a(pa, p, kk);
            pack_a(da, dp, kk);
#pragma unroll
            for (int np = 0; np < C / 16; ++np) {
                unsigned b[4];
                ldsm_b2(b, dos, CP, kk * 16, np * 16);
                mma(gv[2 * np], pa, b[0], b[1]);
                mma(gv[2 * np + 1], pa, b[2], b[3]);
                ldsm_b2(b, qs, CP, kk * 16, np * 16);
                mma(gk[2 * np], da, b[0], b[1]);
                mma(gk[2 * np + 1], da, b[2], b[3]);
            }
        }
    });
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (keys[h] >= nkeys) continue;
#pragma unroll
        for (int n = 0; n < C / 8; ++n) {
            const long out = (long)keys[h] * w + hc + n * 8 + 2 * t;
            *reinterpret_cast<float2*>(dk + out) = make_float2(gk[n][2 * h], gk[n][2 * h + 1]);
            *reinterpret_cast<float2*>(dv + out) = make_float2(gv[n][2 * h], gv[n][2 * h + 1]);
        }
    }
}

// ---- entry points: attention_{forward,backward_dq,backward_dkdv}_bf16_c{32,64,128} ----
// The forward's blocks per SM, as many as shared memory allows at C = 128 (3 × 68 KiB) and as
// registers allowed before the masked and unmasked tile copies (4 at C ≤ 64): ptxas keeps the
// registers under the bound (C = 128: 168, with a few bytes spilled outside the products). A tuning
// knob (Device::set_defines): FWD_BLOCKS_128=2 lets ptxas use more registers instead (no spills).
#ifndef FWD_BLOCKS_128
#define FWD_BLOCKS_128 3
#endif
#define FWD_BLOCKS(C) ((C) == 128 ? FWD_BLOCKS_128 : 4)
#define ENTRY_POINTS(C)                                                                                          \
    extern "C" __global__ void __launch_bounds__(128, FWD_BLOCKS(C)) attention_forward_bf16_c##C(                            \
        const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, float* __restrict__ o,    \
        float* __restrict__ lse, const int* __restrict__ k0, const int* __restrict__ nk, int nq, int nkeys,      \
        int heads, int c, float scale) {                                                                         \
        forward<C, float>(q, k, v, o, lse, k0, nk, nq, nkeys, heads, scale);                                     \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128, FWD_BLOCKS(C)) attention_forward_bf16_o16_c##C(            \
        const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, bf16* __restrict__ o,     \
        float* __restrict__ lse, const int* __restrict__ k0, const int* __restrict__ nk, int nq, int nkeys,      \
        int heads, int c, float scale) {                                                                         \
        forward<C, bf16>(q, k, v, o, lse, k0, nk, nq, nkeys, heads, scale);                                      \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128) attention_backward_dq_bf16_c##C(                          \
        const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,                       \
        const bf16* __restrict__ o16, const bf16* __restrict__ do16,                                             \
        const float* __restrict__ lse,                                                                           \
        const int* __restrict__ k0, const int* __restrict__ nk, float* __restrict__ dq, float* __restrict__ delta, \
        int nq, int nkeys, int heads, int c, float scale) {                                                      \
        backward_dq<C>(q, k, v, o16, do16, lse, k0, nk, dq, delta, nq, nkeys, heads, scale);                     \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128) attention_backward_dkdv_bf16_c##C(                        \
        const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,                       \
        const bf16* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,            \
        const int* __restrict__ k0, const int* __restrict__ nk, const int* __restrict__ q0,                      \
        const int* __restrict__ nqk, float* __restrict__ dk, float* __restrict__ dv, int nq, int nkeys, int heads, \
        int c, float scale) {                                                                                    \
        backward_dkdv<C>(q, k, v, d_o, lse, delta, k0, nk, q0, nqk, dk, dv, nq, nkeys, heads, scale);            \
    }

ENTRY_POINTS(32)
ENTRY_POINTS(64)
ENTRY_POINTS(128)
