// Shared by attention.cu, attention_bf16.cu and attention_tiled.cu (inlined by compile.rs before NVRTC).
#pragma once

#define FULL 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

// The union [lo, hi) of `ranges` (start, count) over rows [r0, r0 + rows) ∩ [0, n): the span of keys
// (or queries) a block of rows needs. Every thread of the (1-D, whole-warp) block calls it: each
// loads rows of its own, then warp and block minima and maxima (order-free, so exact).
__device__ __forceinline__ int2 union_range(const int* start, const int* count, int r0, int rows, int n) {
    __shared__ int2 part[32];
    __shared__ int2 range;
    int lo = 0x7fffffff, hi = 0;
    for (int r = r0 + threadIdx.x; r < min(r0 + rows, n); r += blockDim.x) {
        if (count[r] == 0) continue;
        lo = min(lo, start[r]);
        hi = max(hi, start[r] + count[r]);
    }
    for (int o = 16; o > 0; o >>= 1) {
        lo = min(lo, __shfl_xor_sync(FULL, lo, o));
        hi = max(hi, __shfl_xor_sync(FULL, hi, o));
    }
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = make_int2(lo, hi);
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {
            lo = min(lo, part[w].x);
            hi = max(hi, part[w].y);
        }
        range = make_int2(lo, hi);
    }
    __syncthreads();
    const int2 out = range;
    return out;
}

// Tiles of `rows` rows covering [span.x, span.y).
__device__ __forceinline__ int tile_count(int2 span, int rows) { return span.y > span.x ? (span.y - span.x + rows - 1) / rows : 0; }
