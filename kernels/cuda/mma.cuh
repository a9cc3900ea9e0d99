// Tensor-core helpers of the `*_bf16.cu` kernels: bf16 rounding, m16n8k16 mma.sync and its fragments
// (sm_80+). Included through NVRTC's include path, like common.cuh.
//
// Fragments of m16n8k16 (g = lane / 4, t = lane % 4): A (16×16, row) holds (g, 2t..2t+1),
// (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..); B (16×8, col) holds (k = 2t..2t+1, n = g) and
// (k = 2t + 8.., n = g); C/D (16×8) holds (g, 2t..2t+1) and (g + 8, 2t..2t+1).
#pragma once

typedef unsigned short bf16;  // bf16 bits

// Two floats as bf16 (round to nearest even) in one register, `lo` in the low half.
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ bf16 to_bf16(float x) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ unsigned ld32(const bf16* p) { return *reinterpret_cast<const unsigned*>(p); }

// d += a·b on tensor cores (m16n8k16, bf16 inputs, f32 accumulation).
__device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment of rows r0.., cols k0.. of a row-major bf16 tile with row stride `ld`.
__device__ __forceinline__ void load_a(unsigned (&a)[4], const bf16* x, int ld, int r0, int k0) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    a[0] = ld32(x + (r0 + g) * ld + k0 + 2 * t);
    a[1] = ld32(x + (r0 + g + 8) * ld + k0 + 2 * t);
    a[2] = ld32(x + (r0 + g) * ld + k0 + 8 + 2 * t);
    a[3] = ld32(x + (r0 + g + 8) * ld + k0 + 8 + 2 * t);
}

// B fragment with B[k][n] = y[n0 + n][k0 + k] (y row-major, stride `ld`): a product with yᵀ.
__device__ __forceinline__ void load_bt(unsigned& b0, unsigned& b1, const bf16* y, int ld, int n0, int k0) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    b0 = ld32(y + (n0 + g) * ld + k0 + 2 * t);
    b1 = ld32(y + (n0 + g) * ld + k0 + 8 + 2 * t);
}

