// The head fused with the bitwise cross-entropy in f32 (twin of linear_forward + bitwise_ce + the dx
// part of linear_backward): per block of 64 tokens, the 2d logits are formed in registers and kept in
// shared memory, never written out; the loss, correct bits and dlogits follow (bitwise_ce.cu's
// arithmetic), then dh = dlogits · W. dlogits [N, 2d] is written for the weight gradient (cuBLAS, 2d ≪
// C columns). An SGEMM's register blocking, so that fused multiply-adds fill the issue slots and W is
// read once per 64 tokens: a thread forms 4 tokens × LP/16 logits from 16-byte shared loads of h and W
// tiles, and 4 tokens × 4 columns of dh from the dlogits and a shared W chunk.
//
// Dims: N tokens, C width (any), d bits (2d ≤ 128 logits, padded to LP, a multiple of 32, in the
// tiles). h [N, C], W [2d, C] (PyTorch layout), b [2d], labels [N, d], weights [N]. Launch: grid
// ceil(N / 64), 256 threads, head_ce.rs's shared memory. Thread layout: x = lane bits 1–4 (16 values),
// y = 2·warp + lane bit 0; logits: tokens y + 16i (i < 4), logits x + 16j (j < LP/16); dh: tokens
// 4y … 4y + 3, columns 4x … 4x + 3 of each 64-column chunk. Lanes n and n ^ 1 read the same W row (or
// W chunk columns) and n, n ^ 2 the same h row (or dlogits), so a 16-byte shared load takes 2
// wavefronts, not 4. Every sum runs in a fixed order: bitwise reproducible.
#include "common.cuh"

#define TOK 64  // tokens per block
#define KT 32   // columns of h and W per step of the logits
#define CW 64   // columns of dh (and of the W chunk) per step
#define NT 256

// Copies rows [0, rows) × columns [c0, c0 + cols) of a row-major [rows_total, c] matrix (rows at or
// beyond `valid_rows`, columns at or beyond c, read as 0) into shared dst [rows][ld], coalesced.
__device__ __forceinline__ void load_tile(float* dst, int ld, const float* src, long row0, int rows, int valid_rows,
                                          int c0, int cols, int c) {
    for (int i = threadIdx.x; i < rows * cols; i += NT) {
        const int r = i / cols, k = i % cols;
        dst[r * ld + k] = (r < valid_rows && c0 + k < c) ? src[(row0 + r) * c + c0 + k] : 0.0f;
    }
}

// Floats of the shared `work` area for LP logits (the largest of its three uses) and of the whole
// dynamic shared memory (work, then gt); head_ce.rs's head_f32_smem_bytes computes the same.
__device__ constexpr int imax(int a, int b) { return a > b ? a : b; }
__device__ constexpr int work_floats(int lp) {
    return imax(imax((TOK + lp) * (KT + 4), TOK * (lp + 1)), lp * (CW + 4));
}

template <int LP>
__device__ __forceinline__ void head_ce(const float* __restrict__ h, const float* __restrict__ w,
                                        const float* __restrict__ bias, const unsigned char* __restrict__ labels,
                                        const float* __restrict__ weights, float label_smoothing, int n, int c, int d,
                                        float* __restrict__ token_loss, unsigned int* __restrict__ correct,
                                        float* __restrict__ dlogits, float* __restrict__ dh) {
    constexpr int NJ = LP / 16;  // logits per thread
    DYNAMIC_SMEM(float, smem);
    // phase 1: hs [64][KT+4] and ws [LP][KT+4]; then the logits zs [64][LP+1]; phase 3: the W chunk
    // wc [LP][CW+4]; all in `work`. gt [LP][64+4]: dlogits, logit-major (4 tokens are one 16-byte load)
    float* work = smem;
    float* gt = smem + work_floats(LP);
    const int two_d = 2 * d, y = (threadIdx.x >> 4 & ~1) | (threadIdx.x & 1), x = threadIdx.x >> 1 & 15;
    const long t0 = (long)blockIdx.x * TOK;
    const int ntok = (int)min((long)TOK, n - t0);

    // ---- logits = h·Wᵀ + b, K-tiled through shared memory -----------------------------------------
    float* hs = work;
    float* ws = work + TOK * (KT + 4);
    float acc[4][NJ];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < c; k0 += KT) {
        __syncthreads();  // the previous tile is consumed
        load_tile(hs, KT + 4, h, t0, TOK, ntok, k0, KT, c);
        load_tile(ws, KT + 4, w, 0, LP, two_d, k0, KT, c);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < KT; kk += 4) {
            float4 a[4], b[NJ];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = ld4(hs + (y + 16 * i) * (KT + 4) + kk);
#pragma unroll
            for (int j = 0; j < NJ; ++j) b[j] = ld4(ws + (x + 16 * j) * (KT + 4) + kk);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    acc[i][j] = fmaf(a[i].x, b[j].x, acc[i][j]);
                    acc[i][j] = fmaf(a[i].y, b[j].y, acc[i][j]);
                    acc[i][j] = fmaf(a[i].z, b[j].z, acc[i][j]);
                    acc[i][j] = fmaf(a[i].w, b[j].w, acc[i][j]);
                }
        }
    }
    __syncthreads();  // the tiles are consumed: zs takes their place
    float* zs = work;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            const int l = x + 16 * j;
            if (l < two_d) zs[(y + 16 * i) * (LP + 1) + l] = acc[i][j] + bias[l];
        }
    __syncthreads();

    // ---- bitwise CE: warp w owns tokens w, w + 8, …; lanes stride over bits ------------------------
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int t = warp; t < ntok; t += NT / 32) {
        const long tok = t0 + t;
        warp_token_ce(zs + t * (LP + 1), labels + tok * d, d, weights[tok], label_smoothing, token_loss + tok,
                      correct + tok, [&](int j, float g0, float g1) {
                          gt[(2 * j) * (TOK + 4) + t] = g0;
                          gt[(2 * j + 1) * (TOK + 4) + t] = g1;
                      });
        __syncwarp();  // lanes read each other's dlogits from shared memory
        if (dlogits)
            for (int j = lane; j < two_d; j += 32) dlogits[tok * two_d + j] = gt[j * (TOK + 4) + t];
    }
    if (!dh) return;

    // ---- dh = dlogits · W, 64 columns at a time through shared memory ------------------------------
    float* wc = work;
    const bool vec = (c & 3) == 0;  // rows of dh are 16-byte aligned
    for (int c0 = 0; c0 < c; c0 += CW) {
        __syncthreads();  // zs (first pass) or the previous chunk is consumed, the dlogits are in gt
        load_tile(wc, CW + 4, w, 0, two_d, two_d, c0, CW, c);
        __syncthreads();
        float out[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) out[i][0] = out[i][1] = out[i][2] = out[i][3] = 0.0f;
        for (int j = 0; j < two_d; ++j) {
            const float4 g = ld4(gt + j * (TOK + 4) + 4 * y), r = ld4(wc + j * (CW + 4) + 4 * x);
            const float gv[4] = {g.x, g.y, g.z, g.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                out[i][0] = fmaf(gv[i], r.x, out[i][0]);
                out[i][1] = fmaf(gv[i], r.y, out[i][1]);
                out[i][2] = fmaf(gv[i], r.z, out[i][2]);
                out[i][3] = fmaf(gv[i], r.w, out[i][3]);
            }
        }
        const int col = c0 + 4 * x;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int t = 4 * y + i;
            if (t >= ntok || col >= c) continue;
            float* row = dh + (t0 + t) * c;
            if (vec) {
                *reinterpret_cast<float4*>(row + col) = make_float4(out[i][0], out[i][1], out[i][2], out[i][3]);
            } else {
                for (int e = 0; e < 4 && col + e < c; ++e) row[col + e] = out[i][e];
            }
        }
    }
}

// ---- entry points: head_bitwise_ce_f32_l{32,64,96,128} (LP = 2d rounded up to 32) ----------------
#define ENTRY_POINT(LP)                                                                                          \
    extern "C" __global__ void __launch_bounds__(NT) head_bitwise_ce_f32_l##LP(                                 \
        const float* __restrict__ h, const float* __restrict__ w, const float* __restrict__ bias,                \
        const unsigned char* __restrict__ labels, const float* __restrict__ weights, float label_smoothing,      \
        int n, int c, int d, float* __restrict__ token_loss, unsigned int* __restrict__ correct,                 \
        float* __restrict__ dlogits, float* __restrict__ dh) {                                                   \
        head_ce<LP>(h, w, bias, labels, weights, label_smoothing, n, c, d, token_loss, correct, dlogits, dh);    \
    }

ENTRY_POINT(32)
ENTRY_POINT(64)
ENTRY_POINT(96)
ENTRY_POINT(128)
