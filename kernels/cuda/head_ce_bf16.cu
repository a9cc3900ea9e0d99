// The head fused with the bitwise cross-entropy on tensor cores: the `Math::Bf16` twin of head_ce.cu
// (same inputs and outputs). h and W are rounded to bf16 for the logits product and dlogits for
// dh = dlogits · W, both with f32 accumulation (upstream's head under bf16 autocast); the logits, the
// loss, the correct bits and the dlogits written for the weight gradient are f32.
//
// Dims: N tokens, C width (a multiple of 64), TD = 2d logits (16, 32, 64 or 128: a template
// parameter). h [N, C] f32, or bf16 (the `_h16` entry points: the values the f32 variant rounds, so
// the same results bit for bit, from half the bytes), 16-byte aligned; W in bf16, packed by
// head_weight_bf16 as the two products' B fragments in the order the kernel reads them.
//
// A block of 4 warps takes TOK = 32 tokens (two 16-row m-tiles) through three phases:
//  1. logits [TOK, TD] = h · Wᵀ + b. The width goes in chunks of KC = 32 columns; cp.async copies each
//     chunk of h and of W's fragments into a ring of STAGES shared buffers (8, or as many as fit in
//     64 KiB: at least three blocks per SM), STAGES − 1 chunks ahead of the tensor cores. The kernel moves
//     bytes and does little arithmetic, so its speed is the loads it keeps in flight: up to 56 KiB per
//     block at every step, whatever the occupancy (at 2b training shapes, about one block per SM).
//     Each warp owns a fixed set of logit tiles over the whole width: no partial sums cross warps.
//  2. the bitwise CE, a warp per token: loss, correct bits, dlogits (f32 out, bf16 kept in shared memory).
//  3. dh [TOK, C] = dlogits · W: warp w takes the quarter [w·C/4, (w+1)·C/4) of the width, 16 columns at
//     a time, streaming W's fragments through a cp.async ring of its own (up to 8 deep) in the shared
//     memory the stages left, each lane storing 16 bytes per row.
//
// Column orders: within a k-step of the logits and a pair of n-tiles of dh, both products permute the
// 16 indices (perm16) so that each lane's four values are adjacent columns. Lane t's A elements (k =
// 2t, 2t+1, 2t+8, 2t+9 in mma.cuh's layout) are h's columns 4t … 4t+3 (one 16-byte shared load for f32
// h, 8 bytes for bf16), and its dh outputs (n = 2t, 2t+1 of the two n-tiles) are columns 4t … 4t+3.
// Sums over a permuted k are the same sums; head_weight_bf16 packs W in the matching orders. Every
// sum runs in a fixed order: runs are bitwise reproducible.
#include "common.cuh"
#include "mma.cuh"

#define TOK 32
#define THREADS 128
#define KC 32

// Physical column of logical index i (0 … 15) of a k-step, or of an n-tile pair (8j + n).
__device__ __forceinline__ int perm16(int i) { return 4 * ((i & 7) >> 1) + 2 * (i >> 3) + (i & 1); }

// The B fragment pair {b0, b1} of lane (g, t) for a 16×8 tile B[k][n] = at(k, n) (mma.cuh's layout).
template <class At>
__device__ __forceinline__ uint2 fragment_pair(At at, int lane) {
    const int g = lane >> 2, t = lane & 3;
    return make_uint2(pack2(at(2 * t, g), at(2 * t + 1, g)), pack2(at(2 * t + 8, g), at(2 * t + 9, g)));
}

// W [TD, C] f32 packed as bf16 B fragments, C·TD/4 pairs each:
//   wl [C/16 k-steps][TD/8 logit tiles][32 lanes]: B[k][n] = W[n][perm16(k)] (logits = h · Wᵀ)
//   wd [C/16 column pairs][TD/16 k-steps][2 n-tiles][32 lanes]: B[k][n] = W[k][perm16(8j + n)] (dh = dlogits · W)
extern "C" __global__ void head_weight_bf16(const float* __restrict__ w, uint2* __restrict__ wl,
                                            uint2* __restrict__ wd, int td, int c) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (long)td * c / 4; i += (long)gridDim.x * blockDim.x) {
        const int lane = i % 32;
        const long f = i / 32;
        const long k0 = f / (td / 8) * 16, n0 = f % (td / 8) * 8;
        wl[i] = fragment_pair([&](int k, int n) { return w[(n0 + n) * c + k0 + perm16(k)]; }, lane);
        const int j = f % 2;
        const long ks = f / 2 % (td / 16), p = f / 2 / (td / 16);
        wd[i] = fragment_pair([&](int k, int n) { return w[(ks * 16 + k) * c + p * 16 + perm16(8 * j + n)]; }, lane);
    }
}

// A stage of h holds TOK rows of KC values as 16-byte chunks, swizzled so that the A-fragment loads
// hit every bank once: chunk c of row r sits at chunk index h_chunk(r, c) of the stage.
__device__ __forceinline__ int h_chunk(const float*, int r, int c) { return r * 8 + (c ^ ((r & 1) << 2)); }
__device__ __forceinline__ int h_chunk(const bf16*, int r, int c) { return r * 4 + (c ^ (((r >> 1) & 1) << 1)); }

// Row r's columns 16ks + 4t … 4t+3 of a stage as two bf16 pairs (x: the first two columns).
__device__ __forceinline__ uint2 h_quad(const float* hs, int r, int ks, int t) {
    const float4 v = reinterpret_cast<const float4*>(hs)[h_chunk(hs, r, 4 * ks + t)];
    return make_uint2(pack2(v.x, v.y), pack2(v.z, v.w));
}
__device__ __forceinline__ uint2 h_quad(const bf16* hs, int r, int ks, int t) {
    return reinterpret_cast<const uint2*>(hs)[2 * h_chunk(hs, r, 2 * ks + (t >> 1)) + (t & 1)];
}

// This thread's share of the cp.async copies of a chunk (KC columns of the block's TOK rows of h, and
// the chunk's KC/16 k-steps of wl), worked out once: chunk ch only moves the sources by ch·KC values.
template <int TD, class H>
struct ChunkCopies {
    static constexpr int PER = 16 / sizeof(H), CHUNKS = KC / PER;  // values per 16-byte copy, copies per row
    static constexpr int HCOPIES = TOK * CHUNKS / THREADS;         // h: 2 (f32) or 1 (bf16) per thread
    static constexpr int WCOPIES = KC * TD * 2 / 16;               // wl: KC·TD bf16 per chunk
    static_assert(TOK * CHUNKS % THREADS == 0, "h's copies split evenly over the threads");
    const H* src[HCOPIES];  // row t0 + r, column q·PER (h itself past N: nothing is read)
    int dst[HCOPIES];       // offset in the stage's h, in values
    bool valid[HCOPIES];

    __device__ __forceinline__ ChunkCopies(const H* h, long t0, int n, int c) {
#pragma unroll
        for (int i = 0; i < HCOPIES; ++i) {
            const int k = threadIdx.x + i * THREADS, r = k / CHUNKS, q = k % CHUNKS;
            valid[i] = t0 + r < n;
            src[i] = valid[i] ? h + (t0 + r) * c + q * PER : h;
            dst[i] = h_chunk(h, r, q) * PER;
        }
    }

    // Starts chunk ch's copies into stage buffers hs, ws as one commit group.
    __device__ __forceinline__ void issue(int ch, const uint2* wl, H* hs, uint2* ws) const {
#pragma unroll
        for (int i = 0; i < HCOPIES; ++i) cp_async16(hs + dst[i], valid[i] ? src[i] + ch * KC : src[i], valid[i]);
        const uint2* w = wl + (long)ch * WCOPIES * 2;
#pragma unroll
        for (int i = 0; i < (WCOPIES + THREADS - 1) / THREADS; ++i) {
            const int k = threadIdx.x + i * THREADS;
            if (WCOPIES % THREADS == 0 || k < WCOPIES) cp_async16(ws + 2 * k, w + 2 * k, true);
        }
        cp_async_commit();
    }
};

template <int TD, class H>
__device__ __forceinline__ void head_ce(const H* __restrict__ h, const uint2* __restrict__ wl,
                                        const uint2* __restrict__ wd, const float* __restrict__ bias,
                                        const unsigned char* __restrict__ labels, const float* __restrict__ weights,
                                        float label_smoothing, int n, int c, float* __restrict__ token_loss,
                                        unsigned int* __restrict__ correct, float* __restrict__ dlogits,
                                        float* __restrict__ dh) {
    constexpr int ZP = TD + 4, GP = TD + 8, D = TD / 2;
    // the logit tiles (2 m-tiles × TD/8 n-tiles) split over 4 warps: NWN warps across n, the rest across m
    constexpr int NWN = TD / 8 < 4 ? TD / 8 : 4, MTW = 2 / (4 / NWN), NTW = TD / 8 / NWN;
    // a stage: h's chunk [TOK][KC] (HB bytes), then wl's [KC/16][TD/8][32] pairs; head_ce.rs's
    // head_bf16_smem_bytes sizes the block's shared memory as STAGES of these
    constexpr int HB = TOK * KC * (int)sizeof(H), SB = HB + KC * TD * 2, STAGES = SB <= 8192 ? 8 : 65536 / SB;
    static_assert(TOK * ZP * 4 + TOK * GP * 2 <= STAGES * SB, "the logits and dlogits fit where the stages were");
    DYNAMIC_SMEM(unsigned char, smem);  // [STAGES][SB]; after phase 1, zs and gs
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const long t0 = (long)blockIdx.x * TOK;
    const int mt0 = warp / NWN * MTW, nt0 = warp % NWN * NTW;
    const auto hs = [&](int s) { return reinterpret_cast<H*>(smem + s * SB); };
    const auto ws = [&](int s) { return reinterpret_cast<uint2*>(smem + s * SB + HB); };

    // ---- phase 1: logits of this warp's tiles, over the whole width ----
    float acc[MTW][NTW][4];
#pragma unroll
    for (int i = 0; i < MTW; ++i)
#pragma unroll
        for (int j = 0; j < NTW; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    const int chunks = c / KC;
    const ChunkCopies<TD, H> copies(h, t0, n, c);
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
        if (s < chunks) copies.issue(s, wl, hs(s), ws(s));
        else cp_async_commit();
    // chunk ch sits in stage `st`; chunk ch + STAGES − 1 goes to the stage chunk ch − 1 left (`free`)
    for (int ch = 0, st = 0, free = STAGES - 1; ch < chunks; ++ch, free = st, st = st + 1 < STAGES ? st + 1 : 0) {
        cp_async_wait<STAGES - 2>();  // this thread's copies of chunk ch have landed …
        __syncthreads();              // … and everyone's; chunk ch − 1's stage is free again
        if (ch + STAGES - 1 < chunks) copies.issue(ch + STAGES - 1, wl, hs(free), ws(free));
        else cp_async_commit();  // an empty group keeps the count the wait above relies on
        const H* hc = hs(st);
        const uint2* wc = ws(st);
#pragma unroll
        for (int ks = 0; ks < KC / 16; ++ks) {
            unsigned a[MTW][4];
#pragma unroll
            for (int i = 0; i < MTW; ++i) {
                const int r = (mt0 + i) * 16 + g;
                const uint2 lo = h_quad(hc, r, ks, t), hi = h_quad(hc, r + 8, ks, t);
                a[i][0] = lo.x, a[i][1] = hi.x, a[i][2] = lo.y, a[i][3] = hi.y;
            }
#pragma unroll
            for (int j = 0; j < NTW; ++j) {
                const uint2 b = wc[(ks * (TD / 8) + nt0 + j) * 32 + lane];
#pragma unroll
                for (int i = 0; i < MTW; ++i) mma(acc[i][j], a[i], b.x, b.y);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the stages are free: zs and gs take their place
    float* zs = reinterpret_cast<float*>(smem);         // [TOK][ZP]: logits
    bf16* gs = reinterpret_cast<bf16*>(zs + TOK * ZP);  // [TOK][GP]: dlogits as bf16
#pragma unroll
    for (int i = 0; i < MTW; ++i)
#pragma unroll
        for (int j = 0; j < NTW; ++j) {
            const int r = (mt0 + i) * 16 + g, col = (nt0 + j) * 8 + 2 * t;
            const float b0 = bias[col], b1 = bias[col + 1];
            *reinterpret_cast<float2*>(zs + r * ZP + col) = make_float2(acc[i][j][0] + b0, acc[i][j][1] + b1);
            *reinterpret_cast<float2*>(zs + (r + 8) * ZP + col) = make_float2(acc[i][j][2] + b0, acc[i][j][3] + b1);
        }
    __syncthreads();

    // ---- phase 2: bitwise CE, warp w takes tokens w, w + 4, …; lanes stride over bits (head_ce.cu's math) ----
    for (int r = warp; r < TOK; r += 4) {
        const long tok = t0 + r;
        if (tok >= n) {  // padding rows: zero dlogits, so dh's products see zeros
            for (int j = lane; j < TD; j += 32) gs[r * GP + j] = 0;
            continue;
        }
        warp_token_ce(zs + r * ZP, labels + tok * D, D, weights[tok], label_smoothing, token_loss + tok,
                      correct + tok, [&](int j, float g0, float g1) {
                          *reinterpret_cast<unsigned*>(gs + r * GP + 2 * j) = pack2(g0, g1);
                          if (dlogits) *reinterpret_cast<float2*>(dlogits + tok * TD + 2 * j) = make_float2(g0, g1);
                      });
    }
    if (!dh) return;
    __syncthreads();

    // ---- phase 3: dh = dlogits · W for this warp's quarter of the width, 16 columns at a time ----
    unsigned ga[2][TD / 16][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int ks = 0; ks < TD / 16; ++ks) load_a(ga[mt][ks], gs, GP, mt * 16, ks * 16);
    __syncthreads();  // every warp holds its dlogits: the shared memory is free again
    // Each warp streams its quarter's W fragments through a ring of its own in a quarter of the shared
    // memory (cp.async, RING − 1 column pairs ahead; a warp barrier per pair, no block barrier).
    constexpr int PAIR = TD * 32 / 16, SLICE = STAGES * SB / 4;  // 16-byte pieces per pair; bytes per warp
    constexpr int RING = SLICE / (PAIR * 16) < 8 ? SLICE / (PAIR * 16) : 8;
    static_assert(RING >= 2 && PAIR % 32 == 0, "dh's ring holds two pairs, whole pieces per lane");
    uint4* ring = reinterpret_cast<uint4*>(smem + warp * SLICE);  // [RING][PAIR]
    const int pairs = c / 64, p0 = warp * pairs;  // column pairs per quarter, this warp's first
    const uint4* wsrc = reinterpret_cast<const uint4*>(wd) + (long)p0 * PAIR;
    const auto issue = [&](int i, int slot) {  // pair p0 + i into ring slot `slot`
#pragma unroll
        for (int k = lane; k < PAIR; k += 32) cp_async16(ring + slot * PAIR + k, wsrc + (long)i * PAIR + k, true);
    };
#pragma unroll
    for (int i = 0; i < RING - 1; ++i) {
        if (i < pairs) issue(i, i);
        cp_async_commit();
    }
    float* out[2][2];  // [m-tile][half]: this lane's row of dh at column 4t, or null past N
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const long row = t0 + mt * 16 + g + half * 8;
            out[mt][half] = row < n ? dh + row * c + 4 * t : nullptr;
        }
    for (int i = 0, slot = 0, free = RING - 1; i < pairs; ++i, free = slot, slot = slot + 1 < RING ? slot + 1 : 0) {
        cp_async_wait<RING - 2>();  // this lane's pieces of pair i have landed …
        __syncwarp();               // … and the warp's; pair i − 1's slot is free again
        if (i + RING - 1 < pairs) issue(i + RING - 1, free);
        cp_async_commit();
        const uint2* wp = reinterpret_cast<const uint2*>(ring + slot * PAIR) + lane;
        float o[2][2][4] = {};  // [m-tile][n-tile]
#pragma unroll
        for (int ks = 0; ks < TD / 16; ++ks)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const uint2 b = wp[(ks * 2 + j) * 32];
                mma(o[0][j], ga[0][ks], b.x, b.y);
                mma(o[1][j], ga[1][ks], b.x, b.y);
            }
        const int col = (p0 + i) * 16;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int half = 0; half < 2; ++half)
                if (out[mt][half])
                    *reinterpret_cast<float4*>(out[mt][half] + col) =
                        make_float4(o[mt][0][2 * half], o[mt][0][2 * half + 1], o[mt][1][2 * half], o[mt][1][2 * half + 1]);
    }
    cp_async_wait<0>();  // nothing in flight when the warp exits
}

// ---- entry points: head_bitwise_ce_bf16_td{16,32,64,128} (h f32) and head_bitwise_ce_bf16_h16_td*
// (h bf16); grid ceil(N / 32), 128 threads, STAGES · SB bytes of dynamic shared memory (head_bf16_smem_bytes) ----
#define ENTRY_POINT(NAME, H, TD)                                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS) NAME##TD(                                                    \
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
