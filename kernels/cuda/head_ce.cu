// The head fused with the bitwise cross-entropy (twin of linear_forward + bitwise_ce + the dx part of
// linear_backward): per block of TOK tokens, the 2·d logits are computed in shared memory, never
// written out; the loss, correct bits and dlogits follow (bitwise_ce.cu's arithmetic), then
// dh = dlogits · W. dlogits [N, 2d] is written for the weight gradient (cuBLAS, 2d ≪ C columns).
//
// Dims: N tokens, C width, d bits (2d ≤ 128 logits). h [N, C], W [2d, C] (PyTorch layout), b [2d],
// labels [N, d], weights [N]. Launch: grid ceil(N / TOK), 256 threads (8 warps: warp t reduces token
// t, so sums are in a fixed order and runs are bitwise reproducible), dynamic shared memory
// (2d·(KT+1) + TOK·KT + 2·TOK·2d) floats.
#include "common.cuh"

#define TOK 8
#define KT 64

extern "C" __global__ void head_bitwise_ce_f32(
    const float* __restrict__ h,              // [N, C]
    const float* __restrict__ w,              // [2d, C]
    const float* __restrict__ bias,           // [2d]
    const unsigned char* __restrict__ labels, // [N, d]
    const float* __restrict__ weights,        // [N]
    float label_smoothing,
    int n, int c, int d,
    float* __restrict__ token_loss,           // [N]
    unsigned int* __restrict__ correct,       // [N]
    float* __restrict__ dlogits,              // [N, 2d] or null (no gradient)
    float* __restrict__ dh)                   // [N, C] or null
{
    DYNAMIC_SMEM(float, smem);
    const int two_d = 2 * d;
    float* ws = smem;                          // [2d][KT+1] (padded: no bank conflicts on the j axis)
    float* hs = ws + two_d * (KT + 1);         // [TOK][KT]
    float* zs = hs + TOK * KT;                 // [TOK][2d] logits
    float* gs = zs + TOK * two_d;              // [TOK][2d] dlogits
    const int t0 = blockIdx.x * TOK;
    const int ntok = min(TOK, n - t0);
    const int outputs = TOK * two_d;           // ≤ 1024: at most 4 per thread

    // ---- logits = h·Wᵀ + b, K-tiled through shared memory -----------------------------------------
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < c; k0 += KT) {
        const int kt = min(KT, c - k0);
        for (int i = threadIdx.x; i < two_d * KT; i += blockDim.x) {
            const int j = i / KT, kk = i % KT;
            ws[j * (KT + 1) + kk] = kk < kt ? w[(size_t)j * c + k0 + kk] : 0.0f;
        }
        for (int i = threadIdx.x; i < TOK * KT; i += blockDim.x) {
            const int t = i / KT, kk = i % KT;
            hs[i] = (t < ntok && kk < kt) ? h[(size_t)(t0 + t) * c + k0 + kk] : 0.0f;
        }
        __syncthreads();
        for (int r = 0; r < 4; ++r) {
            const int o = threadIdx.x + r * blockDim.x;
            if (o < outputs) {
                const int t = o / two_d, j = o % two_d;
                const float* hr = hs + t * KT;
                const float* wr = ws + j * (KT + 1);
                float a = acc[r];
                for (int kk = 0; kk < KT; ++kk) a = fmaf(hr[kk], wr[kk], a);
                acc[r] = a;
            }
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; ++r) {
        const int o = threadIdx.x + r * blockDim.x;
        if (o < outputs) zs[o] = acc[r] + bias[o % two_d];
    }
    __syncthreads();

    // ---- bitwise CE: warp t owns token t; lanes stride over bits --------------------------------
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp < ntok) {
        const int t = t0 + warp;
        float* g = gs + warp * two_d;
        warp_token_ce(zs + warp * two_d, labels + (size_t)t * d, d, weights[t], label_smoothing, token_loss + t,
                      correct + t, [&](int j, float g0, float g1) {
                          g[2 * j] = g0;
                          g[2 * j + 1] = g1;
                      });
        __syncwarp();  // lanes read each other's dlogits from shared memory
        if (dlogits)
            for (int j = lane; j < two_d; j += 32) dlogits[(size_t)t * two_d + j] = g[j];
    }
    if (!dh) return;
    __syncthreads();

    // ---- dh = dlogits · W: threads over the width, each W column reused for the block's tokens ------
    for (int k = threadIdx.x; k < c; k += blockDim.x) {
        float out[TOK];
        for (int t = 0; t < TOK; ++t) out[t] = 0.0f;
        for (int j = 0; j < two_d; ++j) {
            const float wj = w[(size_t)j * c + k];
            for (int t = 0; t < TOK; ++t) out[t] = fmaf(gs[t * two_d + j], wj, out[t]);
        }
        for (int t = 0; t < ntok; ++t) dh[(size_t)(t0 + t) * c + k] = out[t];
    }
}
