// The head fused with the bitwise cross-entropy on tensor cores: the `Math::Bf16` twin of head_ce.cu
// (same inputs and outputs). h and W are rounded to bf16 for the logits product and dlogits for
// dh = dlogits · W, both with f32 accumulation (upstream's head under bf16 autocast); the logits, the
// loss, the correct bits and the dlogits written for the weight gradient are f32.
//
// Dims: N tokens, C width (a multiple of 64), TD = 2d logits (16, 32, 64 or 128: a template
// parameter). h [N, C] f32, or bf16 (the `_h16` entry points: the values the f32 variant rounds, so
// the same results bit for bit, from half the bytes); W in bf16, packed by head_weight_bf16 as the two products' B fragments in
// the order the warps read them (`wl` for the logits, `wd` for dh: one 8-byte load per lane and
// fragment pair, a warp's loads contiguous, so every L2 sector is used whole). A block of 4 warps takes 32
// tokens (two 16-row m-tiles); warp w takes the quarter [w·C/4, (w+1)·C/4) of the width, reading h
// straight from global memory into A fragments (each element read once). The partial logits of the
// four quarters are summed in shared memory in a fixed order: runs are bitwise reproducible.
#include "common.cuh"
#include "mma.cuh"

#define TOK 32

// The B fragment pair {b0, b1} of lane (g, t) for B[k][n] = at(k0 + k, n0 + n) (mma.cuh's layout).
template <class At>
__device__ __forceinline__ uint2 fragment_pair(At at, int k0, int n0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    return make_uint2(pack2(at(k0 + 2 * t, n0 + g), at(k0 + 2 * t + 1, n0 + g)),
                      pack2(at(k0 + 8 + 2 * t, n0 + g), at(k0 + 9 + 2 * t, n0 + g)));
}

// W [TD, C] f32 packed as bf16 B fragments, C·TD/4 pairs each:
//   wl [C/16 k-steps][TD/8 logit tiles][32 lanes]: B[k][n] = W[n][k] (logits = h · Wᵀ)
//   wd [C/8 width tiles][TD/16 k-steps][32 lanes]: B[k][n] = W[k][n] (dh = dlogits · W)
extern "C" __global__ void head_weight_bf16(const float* __restrict__ w, uint2* __restrict__ wl,
                                            uint2* __restrict__ wd, int td, int c) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)td * c / 4; i += (long)gridDim.x * blockDim.x) {
        const int lane = i % 32;
        const long f = i / 32;
        const auto wt = [&](int k, int n) { return w[(long)n * c + k]; };  // Wᵀ
        const auto wn = [&](int k, int n) { return w[(long)k * c + n]; };  // W
        wl[i] = fragment_pair(wt, (int)(f / (td / 8)) * 16, (int)(f % (td / 8)) * 8, lane);
        wd[i] = fragment_pair(wn, (int)(f % (td / 16)) * 16, (int)(f / (td / 16)) * 8, lane);
    }
}

// Columns col, col + 1 of h's row `row` as a bf16 pair (an A fragment register; 0 past the last row).
__device__ __forceinline__ unsigned h_pair(const float* h, long row, int col, int n, int c) {
    if (row >= n) return 0u;
    const float2 x = *reinterpret_cast<const float2*>(h + row * c + col);
    return pack2(x.x, x.y);
}

__device__ __forceinline__ unsigned h_pair(const bf16* h, long row, int col, int n, int c) {
    return row < n ? *reinterpret_cast<const unsigned*>(h + row * c + col) : 0u;
}

template <int TD, class H>
__device__ __forceinline__ void head_ce(const H* __restrict__ h, const uint2* __restrict__ wl,
                                        const uint2* __restrict__ wd, const float* __restrict__ bias,
                                        const unsigned char* __restrict__ labels, const float* __restrict__ weights,
                                        float label_smoothing, int n, int c, float* __restrict__ token_loss,
                                        unsigned int* __restrict__ correct, float* __restrict__ dlogits,
                                        float* __restrict__ dh) {
    constexpr int ZP = TD + 4, GP = TD + 8, D = TD / 2;
    DYNAMIC_SMEM(unsigned char, smem);
    float* zs = reinterpret_cast<float*>(smem);         // [4 quarters][TOK][ZP]: partial logits
    bf16* gs = reinterpret_cast<bf16*>(zs + 4 * TOK * ZP);  // [TOK][GP]: dlogits as bf16
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int t0 = blockIdx.x * TOK, quarter = c / 4, kbeg = warp * quarter;

    // ---- partial logits of this warp's quarter: [TOK][TD] ----
    float acc[2][TD / 8][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < TD / 8; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
#pragma unroll 2
    for (int k0 = kbeg; k0 < kbeg + quarter; k0 += 16) {
        unsigned a[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                a[mt][e] = h_pair(h, t0 + mt * 16 + g + (e & 1) * 8, k0 + 2 * t + (e >> 1) * 8, n, c);
        const uint2* wk = wl + (long)(k0 / 16) * (TD / 8) * 32 + lane;
#pragma unroll
        for (int nt = 0; nt < TD / 8; ++nt) {
            const uint2 b = wk[nt * 32];
            mma(acc[0][nt], a[0], b.x, b.y);
            mma(acc[1][nt], a[1], b.x, b.y);
        }
    }
    float* mine = zs + warp * TOK * ZP;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < TD / 8; ++nt) {
            const int r = mt * 16 + g, col = nt * 8 + 2 * t;
            *reinterpret_cast<float2*>(mine + r * ZP + col) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
            *reinterpret_cast<float2*>(mine + (r + 8) * ZP + col) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
        }
    __syncthreads();
    // logits = Σ quarters (in order) + bias, into quarter 0's slot
    for (int i = threadIdx.x; i < TOK * TD; i += blockDim.x) {
        const int r = i / TD, j = i % TD;
        float z = zs[r * ZP + j];
#pragma unroll
        for (int q = 1; q < 4; ++q) z += zs[q * TOK * ZP + r * ZP + j];
        zs[r * ZP + j] = z + bias[j];
    }
    __syncthreads();

    // ---- bitwise CE: warp w takes tokens w, w + 4, …; lanes stride over bits (head_ce.cu's math) ----
    for (int r = warp; r < TOK; r += 4) {
        const int tok = t0 + r;
        if (tok >= n) {  // padding rows: zero dlogits, so dh's products see zeros
            for (int j = lane; j < TD; j += 32) gs[r * GP + j] = 0;
            continue;
        }
        warp_token_ce(zs + r * ZP, labels + (long)tok * D, D, weights[tok], label_smoothing, token_loss + tok,
                      correct + tok, [&](int j, float g0, float g1) {
                          *reinterpret_cast<unsigned*>(gs + r * GP + 2 * j) = pack2(g0, g1);
                          if (dlogits) *reinterpret_cast<float2*>(dlogits + (long)tok * TD + 2 * j) = make_float2(g0, g1);
                      });
    }
    if (!dh) return;
    __syncthreads();

    // ---- dh = dlogits · W for this warp's quarter of the width ----
    unsigned ga[2][TD / 16][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int ks = 0; ks < TD / 16; ++ks) load_a(ga[mt][ks], gs, GP, mt * 16, ks * 16);
    for (int n0 = kbeg; n0 < kbeg + quarter; n0 += 8) {
        float o[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        const uint2* wn = wd + (long)(n0 / 8) * (TD / 16) * 32 + lane;
#pragma unroll
        for (int ks = 0; ks < TD / 16; ++ks) {
            const uint2 b = wn[ks * 32];
            mma(o[0], ga[0][ks], b.x, b.y);
            mma(o[1], ga[1][ks], b.x, b.y);
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = t0 + mt * 16 + g + half * 8;
                if (row < n)
                    *reinterpret_cast<float2*>(dh + (long)row * c + n0 + 2 * t) =
                        make_float2(o[mt][2 * half], o[mt][2 * half + 1]);
            }
    }
}

// ---- entry points: head_bitwise_ce_bf16_td{16,32,64,128} (h f32) and head_bitwise_ce_bf16_h16_td*
// (h bf16); grid ceil(N / 32), 128 threads ----
#define ENTRY_POINT(NAME, H, TD)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) NAME##TD(                                                    \
        const H* __restrict__ h, const uint2* __restrict__ wl, const uint2* __restrict__ wd,                       \
        const float* __restrict__ bias, const unsigned char* __restrict__ labels, const float* __restrict__ weights, \
        float label_smoothing, int n, int c, float* __restrict__ token_loss, unsigned int* __restrict__ correct,    \
        float* __restrict__ dlogits, float* __restrict__ dh) {                                                     \
        head_ce<TD>(h, wl, wd, bias, labels, weights, label_smoothing, n, c, token_loss, correct, dlogits, dh);     \
    }
#define ENTRY_POINTS(TD)                                   \
    ENTRY_POINT(head_bitwise_ce_bf16_td, float, TD)        \
    ENTRY_POINT(head_bitwise_ce_bf16_h16_td, bf16, TD)

ENTRY_POINTS(16)
ENTRY_POINTS(32)
ENTRY_POINTS(64)
ENTRY_POINTS(128)
