// Twins of kernels/src/bsq.rs and kernels/src/resample.rs: the pieces of multi-scale BSQ with bitwise
// self-correction, for a whole batch on the device. Every buffer is channel-major per sample:
// [B, C, H, W] for maps, token-major [B, n, d] for bits (n = h·w).
//
// Resampling has PyTorch's exact semantics (area = adaptive average pooling, summed in row-major order
// in f32 then divided by the window height and width; bilinear with align_corners=False, the width axis
// interpolated first), so bits agree with the CPU twin except where a residual is within rounding of 0.
#include "common.cuh"

// Source window [lo, hi) of output index o when resizing `src` values to `dst` by area (PyTorch's
// adaptive average pooling).
__device__ __forceinline__ int2 area_window(int o, int src, int dst) {
    return make_int2((o * src) / dst, ((o + 1) * src + dst - 1) / dst);
}

// Output (y, x) of the area resize of one channel `a` [sh, sw] (minus `b` element by element when
// given: the residual is formed per element, then summed in the same row-major order) to [dh, dw].
__device__ __forceinline__ float area_at(const float* a, const float* b, int sh, int sw, int dh, int dw, int y,
                                         int x) {
    const int2 wy = area_window(y, sh, dh), wx = area_window(x, sw, dw);
    float sum = 0.0f;
    for (int r = wy.x; r < wy.y; ++r)
        for (int c = wx.x; c < wx.y; ++c) sum += b ? a[r * sw + c] - b[r * sw + c] : a[r * sw + c];
    return sum / (float)(wy.y - wy.x) / (float)(wx.y - wx.x);
}

// Area resize src [B, C, sh, sw] -> dst [B, C, dh, dw]; one thread per output value.
extern "C" __global__ void area_resize_f32(const float* __restrict__ src, float* __restrict__ dst,
                                           int bc, int sh, int sw, int dh, int dw) {
    const long total = (long)bc * dh * dw;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long ch = i / ((long)dw * dh);
        dst[i] = area_at(src + ch * sh * sw, nullptr, sh, sw, dh, dw, (i / dw) % dh, i % dw);
    }
}

struct Tap { int i0, i1; float w0, w1; };

__device__ __forceinline__ Tap linear_tap(int src, int dst, int o) {
    const float scale = (float)src / (float)dst;
    const float real = fmaxf(scale * ((float)o + 0.5f) - 0.5f, 0.0f);
    const int i0 = min((int)floorf(real), src - 1);
    const float lambda = fminf(fmaxf(real - (float)i0, 0.0f), 1.0f);
    Tap t;
    t.i0 = i0;
    t.i1 = i0 < src - 1 ? i0 + 1 : i0;
    t.w0 = 1.0f - lambda;
    t.w1 = lambda;
    return t;
}

// Bilinear sample (y, x) of a [dh, dw] resize of one channel `s` [sh, sw].
__device__ __forceinline__ float bilinear_at(const float* s, int sh, int sw, int dh, int dw, int y, int x) {
    if (sh == dh && sw == dw) return s[y * sw + x];
    const Tap ty = linear_tap(sh, dh, y), tx = linear_tap(sw, dw, x);
    const float top = s[ty.i0 * sw + tx.i0] * tx.w0 + s[ty.i0 * sw + tx.i1] * tx.w1;
    const float bottom = s[ty.i1 * sw + tx.i0] * tx.w0 + s[ty.i1 * sw + tx.i1] * tx.w1;
    return top * ty.w0 + bottom * ty.w1;
}

// Bilinear resize src [B, C, sh, sw] -> dst [B, C, dh, dw]; `accumulate` adds into dst.
extern "C" __global__ void bilinear_resize_f32(const float* __restrict__ src, float* __restrict__ dst,
                                               int bc, int sh, int sw, int dh, int dw, int accumulate) {
    const long total = (long)bc * dh * dw;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int x = i % dw, y = (i / dw) % dh;
        const long ch = i / ((long)dw * dh);
        const float v = bilinear_at(src + ch * sh * sw, sh, sw, dh, dw, y, x);
        dst[i] = accumulate ? dst[i] + v : v;
    }
}

// Sign quantisation with optional flips: r [B, d, n] -> bits [B, n, d] (the clean signs: labels) and
// codes q [B, d, n] = ±1/√d of the (possibly flipped) bits, which feed the next scale.
extern "C" __global__ void quantize_f32(const float* __restrict__ r, const unsigned char* __restrict__ flips,
                                        unsigned char* __restrict__ bits, float* __restrict__ q,
                                        int b, int d, int n) {
    const float m = 1.0f / sqrtf((float)d);  // IEEE sqrt and division: the CPU twin's value exactly
    const long total = (long)b * d * n;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int t = i % n, c = (i / n) % d;
        const long s = i / ((long)n * d);
        const int bit = r[i] > 0.0f ? 1 : 0;
        const long at = (s * n + t) * d + c;
        bits[at] = (unsigned char)bit;
        const int used = flips ? bit ^ (flips[at] & 1) : bit;
        q[i] = used ? m : -m;
    }
}

// ---- bitwise self-correction for a whole batch ---------------------------------------------------
// Per scale s of (h, w), n = h·w, with latent f [B, d, H, W] and the running sum of codes S (same
// shape, starts at 0):
//   residual_area:   r = area(f − S) at (h, w)                                      [B, d, n]
//   quantize_keyed:  labels = sign bits of r (into gt [B, L, d]); codes of the flipped bits   [B, d, n]
//   bilinear_resize (accumulate): S += up(codes)
//   to_tokens:       next scale's teacher-forcing input = bilinear(S) at (h', w'), token-major
// The flips come from a counter-based generator keyed per sample, the twin of bsq::keyed_uniform.

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ double keyed_uniform(unsigned long long key, int scale, unsigned long long index) {
    const unsigned long long base = mix64(key ^ mix64((unsigned long long)scale + 0x9e3779b97f4a7c15ull));
    return (double)(mix64(base ^ mix64(index)) >> 11) * (1.0 / 9007199254740992.0);
}

// r [B, d, h, w] = area((f − S) [B, d, H, W]); the difference is formed per element, then summed in
// area_resize's order, so the result equals resizing the materialised residual.
extern "C" __global__ void residual_area_f32(const float* __restrict__ f, const float* __restrict__ sum,
                                             float* __restrict__ r, int bd, int H, int W, int h, int w) {
    const long total = (long)bd * h * w;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long ch = i / ((long)w * h);
        r[i] = area_at(f + ch * H * W, sum + ch * H * W, H, W, h, w, (i / w) % h, i % w);
    }
}

// The same for large windows (coarse scales), where one thread per output would sum thousands of values
// alone: a warp (`residual_area_warp_f32`) or a block (`residual_area_block_f32`) per output value, its
// threads striding over the window in row-major order, then a fixed reduction tree (bitwise
// reproducible; the order differs from the serial sum, so a bit may differ from the CPU twin's where
// the residual is within rounding of zero).
__device__ __forceinline__ float residual_window_part(const float* a, const float* b, int W, int2 wy, int2 wx,
                                                      int first, int stride) {
    const int ww = wx.y - wx.x, cnt = (wy.y - wy.x) * ww;
    float s = 0.0f;
    for (int e = first; e < cnt; e += stride) {
        const int at = (wy.x + e / ww) * W + wx.x + e % ww;
        s += a[at] - b[at];
    }
    return s;
}

extern "C" __global__ void residual_area_warp_f32(const float* __restrict__ f, const float* __restrict__ sum,
                                                  float* __restrict__ r, int bd, int H, int W, int h, int w) {
    const long total = (long)bd * h * w, warps = ((long)gridDim.x * blockDim.x) >> 5;
    const int lane = threadIdx.x & 31;
    for (long i = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5; i < total; i += warps) {
        const long ch = i / ((long)w * h);
        const int2 wy = area_window((i / w) % h, H, h), wx = area_window(i % w, W, w);
        float s = residual_window_part(f + ch * H * W, sum + ch * H * W, W, wy, wx, lane, 32);
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) r[i] = s / (float)(wy.y - wy.x) / (float)(wx.y - wx.x);
    }
}

extern "C" __global__ void residual_area_block_f32(const float* __restrict__ f, const float* __restrict__ sum,
                                                   float* __restrict__ r, int bd, int H, int W, int h, int w) {
    const long total = (long)bd * h * w;
    for (long i = blockIdx.x; i < total; i += gridDim.x) {
        const long ch = i / ((long)w * h);
        const int2 wy = area_window((i / w) % h, H, h), wx = area_window(i % w, W, w);
        const float s = block_sum(residual_window_part(f + ch * H * W, sum + ch * H * W, W, wy, wx, threadIdx.x, blockDim.x));
        if (threadIdx.x == 0) r[i] = s / (float)(wy.y - wy.x) / (float)(wx.y - wx.x);
    }
}

// Labels and codes of scale `scale`: r [B, d, n] -> gt [B, L, d] at tokens tok0..tok0+n (clean bits)
// and q [B, d, n] = ±1/√d of the bits after the keyed flips (kmax = round(100·p_max), 0: no flips).
extern "C" __global__ void quantize_keyed_f32(const float* __restrict__ r, const unsigned long long* __restrict__ keys,
                                              int scale, int kmax, unsigned char* __restrict__ gt, int l, int tok0,
                                              float* __restrict__ q, int b, int d, int n) {
    const float m = 1.0f / sqrtf((float)d);  // IEEE sqrt and division: the CPU twin's value exactly
    const long total = (long)b * d * n;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int t = i % n, c = (i / n) % d;
        const long s = i / ((long)n * d);
        const int bit = r[i] > 0.0f ? 1 : 0;
        gt[(s * l + tok0 + t) * d + c] = (unsigned char)bit;
        int used = bit;
        if (kmax > 0) {
            const unsigned long long key = keys[s];
            int k = (int)(keyed_uniform(key, scale, ~0ull) * (double)(kmax + 1));
            k = min(k, kmax);
            const double p = (double)k * 0.01;
            used ^= keyed_uniform(key, scale, (unsigned long long)t * d + c) < p ? 1 : 0;
        }
        q[i] = used ? m : -m;
    }
}

// The next scale's teacher-forcing input: bilinear(S [B, d, H, W]) at (h, w), written token-major into
// x [B, L − n0, d] at tokens tok0..tok0+h·w.
extern "C" __global__ void to_tokens_f32(const float* __restrict__ sum, float* __restrict__ x, int b, int d,
                                         int H, int W, int h, int w, int lx, int tok0) {
    const int n = h * w;
    const long total = (long)b * n * d;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int c = i % d, t = (i / d) % n;
        const long s = i / ((long)d * n);
        const float v = bilinear_at(sum + (s * d + c) * H * W, H, W, h, w, t / w, t % w);
        x[(s * lx + tok0 + t) * d + c] = v;
    }
}
