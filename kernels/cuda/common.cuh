// Shared helpers of the CUDA twins (included by every .cu through NVRTC's include path).
#pragma once

// The block's dynamic shared memory as `T name[]` (`T* name` on the CPU emulator, which gives each
// emulated block its own buffer): one spelling, so no tool rewrites kernel sources.
#ifdef KERNEL_EMULATOR
#define DYNAMIC_SMEM(T, name) T* name = (T*)emu::dynamic_smem()
#else
#define DYNAMIC_SMEM(T, name) extern __shared__ __align__(16) T name[]
#endif

// x rounded to bf16 (round to nearest even; NaN stays a quiet NaN), as its bits: util.cu's casts and
// the kernels that write bf16 activations, without cuda_bf16.h so sources compile with NVRTC alone.
__device__ __forceinline__ unsigned short bf16_bits(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// Four floats from 16-byte-aligned memory in one load.
__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }

// Sum of `v` over the warp by a butterfly (every lane gets the same, bitwise reproducible total).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of `v` over the block; every thread gets the result. blockDim.x must be a multiple of 32, ≤ 1024.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
    __shared__ T partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < warps) ? partial[threadIdx.x] : T(0);
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    __shared__ T total;
    if (threadIdx.x == 0) total = v;
    __syncthreads();
    const T out = total;
    __syncthreads();  // `partial` and `total` are reused by the next call
    return out;
}

// Maximum of `v` over the block; every thread gets the result (same constraints as block_sum).
__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < warps) ? partial[threadIdx.x] : __int_as_float(0xff800000);
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    __shared__ float total;
    if (threadIdx.x == 0) total = v;
    __syncthreads();
    const float out = total;
    __syncthreads();
    return out;
}

// Column sums in a fixed order, parallel over rows (bitwise reproducible; no atomics). Stage 1, this
// helper: launch grid (ceil(C / 32), ceil(rows / 64)), block (32, 8). Block (x, k) owns columns
// 32x … 32x+31 and rows 64k … 64k+63; thread (tx, ty) adds rows ty, ty+8, … of them, then the eight
// partial sums are added in ty order into partial[k·C + col]. Stage 2 is util.cu's finish_columns_f32.
#define COL_TILE 32
#define COL_ROWS 8
#define COL_CHUNK 64

// Rows [r0, r1) of the block's 32 columns into out_row[col].
template <class F>
__device__ __forceinline__ void column_partials_range(F f, long r0, long r1, int c, float* __restrict__ out_row) {
    __shared__ float part[COL_ROWS][COL_TILE];
    const int col = blockIdx.x * COL_TILE + threadIdx.x;
    float s = 0.0f;
    if (col < c)
        for (long r = r0 + threadIdx.y; r < r1; r += COL_ROWS) s += f(r, col);
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        float t = 0.0f;
        for (int y = 0; y < COL_ROWS; ++y) t += part[y][threadIdx.x];
        out_row[col] = t;
    }
}

template <class F>
__device__ __forceinline__ void column_partials(F f, long rows, int c, float* __restrict__ partial) {
    const long r0 = (long)blockIdx.y * COL_CHUNK;
    const long r1 = r0 + COL_CHUNK < rows ? r0 + COL_CHUNK : rows;
    column_partials_range(f, r0, r1, c, partial + (long)blockIdx.y * c);
}

// One bit of the bitwise cross-entropy: logits z0 (class 0), z1 (class 1), the label, the smoothed
// targets (q_hit for the label's class, q_miss for the other). Returns the CE, ∂CE/∂z0 and ∂CE/∂z1
// (before the token's weight), and whether the argmax (ties → class 0) is right.
struct BitCe {
    float loss, g0, g1;
    unsigned int hit;
};

__device__ __forceinline__ BitCe bit_ce(float z0, float z1, int label, float q_hit, float q_miss) {
    const float m = fmaxf(z0, z1);
    const float lse = m + logf(expf(z0 - m) + expf(z1 - m));
    const float lp0 = z0 - lse, lp1 = z1 - lse;
    const float q0 = label ? q_miss : q_hit, q1 = label ? q_hit : q_miss;
    BitCe r;
    r.loss = -(q0 * lp0 + q1 * lp1);
    r.g0 = expf(lp0) - q0;
    r.g1 = expf(lp1) - q1;
    r.hit = ((z1 > z0) == (label == 1)) ? 1u : 0u;
    return r;
}

// One token's bitwise CE by one warp (the fused head kernels): lanes stride over its d bits of logits
// z [2d] and labels y [d]; `put(j, g0, g1)` takes bit j's dlogits scaled by weight / d; lane 0 writes
// the token's mean loss and its correct bits (sums in a fixed shuffle order).
template <typename Put>
__device__ __forceinline__ void warp_token_ce(const float* z, const unsigned char* y, int d, float weight,
                                              float label_smoothing, float* loss, unsigned int* correct, Put put) {
    const float q_hit = 1.0f - 0.5f * label_smoothing, q_miss = 0.5f * label_smoothing;
    const float scale = weight / (float)d;
    const int lane = threadIdx.x & 31;
    float sum = 0.0f;
    unsigned int hits = 0;
    for (int j = lane; j < d; j += 32) {
        const BitCe b = bit_ce(z[2 * j], z[2 * j + 1], y[j], q_hit, q_miss);
        sum += b.loss;
        hits += b.hit;
        put(j, scale * b.g0, scale * b.g1);
    }
    for (int o = 16; o > 0; o >>= 1) {
        sum += __shfl_down_sync(0xffffffffu, sum, o);
        hits += __shfl_down_sync(0xffffffffu, hits, o);
    }
    if (lane == 0) {
        *loss = sum / (float)d;
        *correct = hits;
    }
}
