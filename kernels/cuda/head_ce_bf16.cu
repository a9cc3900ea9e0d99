// The head fused with the bitwise cross-entropy on tensor cores: the `Math::Bf16` twin of head_ce.cu
// (same inputs and outputs). h and W are rounded to bf16 for the logits product and dlogits for
// dh = dlogits · W, both with f32 accumulation (upstream's head under bf16 autocast); the logits, the
// loss, the correct bits and the dlogits written for the weight gradient are f32.
//
// Dims: N tokens, C width (a multiple of 64), TD = 2d logits (16, 32, 64 or 128: a template
// parameter). h [N, C] f32, w16 [TD, C] and w16t [C, TD]: W in bf16 and transposed (made by
// head_weight_bf16, so both products read their B fragments as pairs). A block of 4 warps takes 32
// tokens (two 16-row m-tiles); warp w takes the quarter [w·C/4, (w+1)·C/4) of the width, reading h
// straight from global memory into A fragments (each element read once). The partial logits of the
// four quarters are summed in shared memory in a fixed order: runs are bitwise reproducible.
#include "common.cuh"
#include "mma.cuh"

#define TOK 32

// W [TD, C] f32 as bf16 twice: w16 [TD, C] and w16t [C, TD].
extern "C" __global__ void head_weight_bf16(const float* __restrict__ w, bf16* __restrict__ w16,
                                            bf16* __restrict__ w16t, int td, int c) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)td * c; i += (long)gridDim.x * blockDim.x) {
        const int j = i / c, k = i % c;
        const bf16 v = to_bf16(w[i]);
        w16[i] = v;
        w16t[(long)k * td + j] = v;
    }
}

template <int TD>
__device__ __forceinline__ void head_ce(const float* __restrict__ h, const bf16* __restrict__ w16,
                                        const bf16* __restrict__ w16t, const float* __restrict__ bias,
                                        const unsigned char* __restrict__ labels, const float* __restrict__ weights,
                                        float label_smoothing, int n, int c, float* __restrict__ token_loss,
                                        unsigned int* __restrict__ correct, float* __restrict__ dlogits,
                                        float* __restrict__ dh) {
    constexpr int ZP = TD + 4, GP = TD + 8, D = TD / 2;
    extern __shared__ __align__(16) unsigned char smem[];
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
            for (int e = 0; e < 4; ++e) {
                const int row = t0 + mt * 16 + g + (e & 1) * 8, col = k0 + 2 * t + (e >> 1) * 8;
                const float2 x =
                    row < n ? *reinterpret_cast<const float2*>(h + (long)row * c + col) : make_float2(0.0f, 0.0f);
                a[mt][e] = pack2(x.x, x.y);
            }
#pragma unroll
        for (int nt = 0; nt < TD / 8; ++nt) {
            unsigned b0, b1;
            load_bt(b0, b1, w16, c, nt * 8, k0);
            mma(acc[0][nt], a[0], b0, b1);
            mma(acc[1][nt], a[1], b0, b1);
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
#pragma unroll
        for (int ks = 0; ks < TD / 16; ++ks) {
            unsigned b0, b1;
            load_bt(b0, b1, w16t, TD, n0, ks * 16);
            mma(o[0], ga[0][ks], b0, b1);
            mma(o[1], ga[1][ks], b0, b1);
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

// ---- entry points: head_bitwise_ce_bf16_td{16,32,64,128}; grid ceil(N / 32), 128 threads ----
#define ENTRY_POINT(TD)                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) head_bitwise_ce_bf16_td##TD(                               \
        const float* __restrict__ h, const bf16* __restrict__ w16, const bf16* __restrict__ w16t,                \
        const float* __restrict__ bias, const unsigned char* __restrict__ labels, const float* __restrict__ weights, \
        float label_smoothing, int n, int c, float* __restrict__ token_loss, unsigned int* __restrict__ correct,  \
        float* __restrict__ dlogits, float* __restrict__ dh) {                                                   \
        head_ce<TD>(h, w16, w16t, bias, labels, weights, label_smoothing, n, c, token_loss, correct, dlogits, dh); \
    }

ENTRY_POINT(16)
ENTRY_POINT(32)
ENTRY_POINT(64)
ENTRY_POINT(128)
