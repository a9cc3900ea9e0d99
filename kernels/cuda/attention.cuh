// Shared by attention.cu and attention_bf16.cu (included through NVRTC's include path).
#pragma once

#define FULL 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

// The union [lo, hi) of `ranges` (start, count) over rows [r0, r0 + rows) ∩ [0, n): the span of keys
// (or queries) a block of rows needs.
__device__ __forceinline__ int2 union_range(const int* start, const int* count, int r0, int rows, int n) {
    __shared__ int2 range;
    if (threadIdx.x == 0) {
        int lo = 0x7fffffff, hi = 0;
        for (int r = r0; r < min(r0 + rows, n); ++r) {
            if (count[r] == 0) continue;
            lo = min(lo, start[r]);
            hi = max(hi, start[r] + count[r]);
        }
        range = make_int2(lo, hi);
    }
    __syncthreads();
    const int2 out = range;
    return out;
}
