// Tensor-core helpers of the `*_bf16.cu` kernels: bf16 rounding, m16n8k16 mma.sync and its fragments,
// ldmatrix; and cp.async with its two-stage tile stream (sm_80+; attention_tiled.cu's f32 kernels use
// those and ex2). Included through NVRTC's include path, like common.cuh.
//
// Fragments of m16n8k16 (g = lane / 4, t = lane % 4): A (16×16, row) holds (g, 2t..2t+1),
// (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..); B (16×8, col) holds (k = 2t..2t+1, n = g) and
// (k = 2t + 8.., n = g); C/D (16×8) holds (g, 2t..2t+1) and (g + 8, 2t..2t+1).
//
// load_a reads an A fragment from any memory, two bf16 per load; the ldsm_* helpers read fragments
// from shared memory with ldmatrix (four 8×8 matrices per instruction; each lane gives the address of
// one 16-byte matrix row, so tiles need 16-byte-aligned rows: strides and column offsets multiples of
// 8), and with .trans they read the B fragments of a product with a row-major tile directly.
#pragma once

typedef unsigned short bf16;  // bf16 bits

// The PTX primitives (kernels/emulator/cuda_emulator.h defines them on the CPU for tests).
#ifndef KERNEL_EMULATOR
// Two floats as bf16 (round to nearest even) in one register, `lo` in the low half.
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// 2^x on the special-function unit (ex2.approx.ftz: within 2 ulp, subnormal results flushed to 0,
// 2^−∞ = 0): the softmax exponentials, which feed bf16 products, need no more.
__device__ __forceinline__ float ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ bf16 to_bf16(float x) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

// d += a·b on tensor cores (m16n8k16, bf16 inputs, f32 accumulation).
__device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8×8 bf16 matrices from shared memory: lanes 8i … 8i + 7 give the row addresses of matrix i, and
// r[i] receives row g, columns 2t, 2t + 1 of matrix i (`trans`: rows 2t, 2t + 1 of column g).
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const bf16* row) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned (&r)[4], const bf16* row) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// Starts a 16-byte copy global → shared that bypasses registers (cp.async, sm_80+; `valid` false:
// the 16 bytes become zeros and nothing is read). Copies issued since the last cp_async_commit form a
// group; cp_async_wait<N> waits until at most the N newest groups are still in flight (the copies are
// visible to the block's other threads after a __syncthreads that follows, to the warp's other lanes
// after a __syncwarp).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}

// The same for 4 bytes (cp.async.ca: through L1).
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

__device__ __forceinline__ unsigned ld32(const bf16* p) { return *reinterpret_cast<const unsigned*>(p); }

// The two values of a pack2 register (x from the low half), widened exactly.
__device__ __forceinline__ float2 unpack2(unsigned r) {
    return make_float2(__uint_as_float(r << 16), __uint_as_float(r & 0xffff0000u));
}

// A fragment of rows r0.., cols k0.. of a row-major bf16 tile with row stride `ld`.
__device__ __forceinline__ void load_a(unsigned (&a)[4], const bf16* x, int ld, int r0, int k0) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    a[0] = ld32(x + (r0 + g) * ld + k0 + 2 * t);
    a[1] = ld32(x + (r0 + g + 8) * ld + k0 + 2 * t);
    a[2] = ld32(x + (r0 + g) * ld + k0 + 8 + 2 * t);
    a[3] = ld32(x + (r0 + g + 8) * ld + k0 + 8 + 2 * t);
}

// load_a's fragment from a shared tile: matrices (r0, k0), (r0 + 8, k0), (r0, k0 + 8), (r0 + 8, k0 + 8).
__device__ __forceinline__ void ldsm_a(unsigned (&a)[4], const bf16* x, int ld, int r0, int k0) {
    const int lane = threadIdx.x & 31;
    ldsm_x4(a, x + (r0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8);
}

// The B fragments of two n-tiles of a product with yᵀ, from a shared tile y (B[k][n] = y[n][k]):
// b[0], b[1] for columns n0 … n0 + 7 and b[2], b[3] for n0 + 8 … n0 + 15.
__device__ __forceinline__ void ldsm_bt2(unsigned (&b)[4], const bf16* y, int ld, int n0, int k0) {
    const int lane = threadIdx.x & 31;
    ldsm_x4(b, y + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + ((lane >> 3) & 1) * 8);
}

// The B fragments of two n-tiles of a product with a row-major shared tile y (B[k][n] = y[k][n]):
// b[0], b[1] for columns n0 … n0 + 7 and b[2], b[3] for n0 + 8 … n0 + 15, rows k0 … k0 + 15.
__device__ __forceinline__ void ldsm_b2(unsigned (&b)[4], const bf16* y, int ld, int k0, int n0) {
    const int lane = threadIdx.x & 31;
    ldsm_x4_trans(b, y + (k0 + (lane & 15)) * ld + n0 + (lane >> 4) * 8);
}

// Starts copying rows [first, first + ROWS) of one head (row stride w elements, column offset hc) of N
// row-major matrices src[0 … N−1] of element type T into consecutive shared tiles dst [N][ROWS][C +
// PAD]; rows at or beyond `end` become zeros. For blocks of 128 threads: thread i copies the 16 bytes
// at piece i mod P of rows i / P + k·STEP (P = 16-byte pieces per row), the pieces of a loop over all
// of them, with one offset step per row (a rolled loop: few registers). The copies land at a later
// cp_async_wait.
template <class T, int C, int PAD, int ROWS, int N>
__device__ __forceinline__ void cp_async_rows(T* dst, const T* const (&src)[N], long first, long end, int w, int hc) {
    constexpr int E = 16 / sizeof(T), P = C / E, STEP = 128 / P;  // elements per piece; pieces per row
    const int r0 = threadIdx.x / P, col = threadIdx.x % P * E;
    const long step = (long)STEP * w;
    long from = (first + r0) * w + hc + col;  // element offset, read only while rows are left
    T* to = dst + r0 * (C + PAD) + col;
    int left = (int)max(min(end - first, (long)ROWS), 0L) - r0;  // rows from this thread's next row to `end`
#pragma unroll 1
    for (int r = r0; r < ROWS; r += STEP, from += step, to += STEP * (C + PAD), left -= STEP)
#pragma unroll
        for (int m = 0; m < N; ++m) cp_async16(to + m * ROWS * (C + PAD), src[m] + (left > 0 ? from : 0), left > 0);
}

// Streams `n` tiles through two stages: issue(i, stage) starts tile i's copies (cp.async only) into
// `stage` = i & 1, use(i, stage) runs once they have landed, while tile i + 1 is in flight. Copies
// committed before the call land by the first use. One barrier per tile: after it, tile i is visible
// to every thread and every warp is done with tile i − 1, so tile i + 1 may overwrite its stage.
// Every thread of the block calls this.
template <class Issue, class Use>
__device__ __forceinline__ void stream_tiles(int n, Issue issue, Use use) {
    if (n > 0) issue(0, 0);
    cp_async_commit();
    for (int i = 0; i < n; ++i) {
        cp_async_wait<0>();  // tile i (nothing newer is in flight yet)
        __syncthreads();
        if (i + 1 < n) issue(i + 1, (i + 1) & 1);
        cp_async_commit();
        use(i, i & 1);
    }
    cp_async_wait<0>();  // nothing in flight when the block exits (copies issued before a 0-tile stream)
}
