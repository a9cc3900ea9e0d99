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

// Output (y, x) of the area resize of one channel `a` [sh, sw] to [dh, dw]: the window summed in
// row-major order, then divided by its height and width.
__device__ __forceinline__ float area_at(const float* a, int sh, int sw, int dh, int dw, int y, int x) {
    const int2 wy = area_window(y, sh, dh), wx = area_window(x, sw, dw);
    float sum = 0.0f;
    for (int r = wy.x; r < wy.y; ++r)
        for (int c = wx.x; c < wx.y; ++c) sum += a[r * sw + c];
    return sum / (float)(wy.y - wy.x) / (float)(wx.y - wx.x);
}

// Area resize src [B, C, sh, sw] -> dst [B, C, dh, dw]; one thread per output value.
extern "C" __global__ void area_resize_f32(const float* __restrict__ src, float* __restrict__ dst,
                                           int bc, int sh, int sw, int dh, int dw) {
    const long total = (long)bc * dh * dw;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long ch = i / ((long)dw * dh);
        dst[i] = area_at(src + ch * sh * sw, sh, sw, dh, dw, (i / dw) % dh, i % dw);
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
// Latent f [B, d, H, W]; S_s = Σ_{j<s} up(q_j), the running sum of the codes of the scales before s
// (same shape). One kernel per scale s of (h, w), n = h·w (`residual_codes_*`): it forms S_s element
// by element as S_{s−1} + bilinear(q_{s−1}) (the CPU twin's order), writes it (each element once,
// by the window that owns it), and pools r = area(f − S_s) at (h, w); from r at once the labels
// (sign bits, into gt [B, L, d]) and the codes of the flipped bits, q_s [B, d, n]. Then `to_tokens`
// samples S_s at (h, w): scale s's teacher-forcing input. So a scale reads f and S_{s−1} and writes
// S_s once, S and q ping-pong between two buffers, and neither r nor S_K (after the last scale) is
// ever stored. The flips come from a counter-based generator keyed per sample, the twin of
// bsq::keyed_uniform.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ double keyed_uniform(unsigned long long key, int scale, unsigned long long index) {
    const unsigned long long base = mix64(key ^ mix64((unsigned long long)scale + 0x9e3779b97f4a7c15ull));
    return (double)(mix64(base ^ mix64(index)) >> 11) * (1.0 / 9007199254740992.0);
}

// Where scale `scale`'s labels and codes go: keys [B] (one per sample), kmax = round(100·p_max) (0:
// no flips), gt [B, L, d] at tokens tok0 … tok0 + n, q [B, d, n].
struct Codes {
    const unsigned long long* keys;
    int scale, kmax;
    unsigned char* gt;
    int l, tok0;
    float* q;
    int d, n;
};

// Output i of r [B, d, n] (value r): its clean bit into gt, ±1/√d of the (possibly flipped) bit into q.
__device__ __forceinline__ void emit_code(float r, long i, const Codes& o) {
    const float m = 1.0f / sqrtf((float)o.d);  // IEEE sqrt and division: the CPU twin's value exactly
    const int t = i % o.n, c = (i / o.n) % o.d;
    const long s = i / ((long)o.n * o.d);
    const int bit = r > 0.0f ? 1 : 0;
    o.gt[(s * o.l + o.tok0 + t) * o.d + c] = (unsigned char)bit;
    int used = bit;
    if (o.kmax > 0) {
        const unsigned long long key = o.keys[s];
        int k = (int)(keyed_uniform(key, o.scale, ~0ull) * (double)(o.kmax + 1));
        k = min(k, o.kmax);
        const double p = (double)k * 0.01;
        used ^= keyed_uniform(key, o.scale, (unsigned long long)t * o.d + c) < p ? 1 : 0;
    }
    o.q[i] = used ? m : -m;
}

// S_s of one channel, formed while pooling: `old` S_{s−1} [H, W] (null before the second scale: zeros),
// `prev` q_{s−1} [ph, pw] (null at the first scale: S_0 = 0), `out` S_s [H, W].
struct RunningSum {
    const float* old;
    const float* prev;
    float* out;
    int ph, pw;
};

__device__ __forceinline__ RunningSum channel(const float* old, const float* prev, float* out, int ph, int pw,
                                              long ch, int H, int W) {
    const long at = ch * H * W;
    return RunningSum{old ? old + at : nullptr, prev ? prev + ch * ph * pw : nullptr, prev ? out + at : nullptr, ph, pw};
}

// f − S_s at element (r, c) of a channel (f [H, W]); stores S_s there when `own`.
__device__ __forceinline__ float residual_at(const float* f, const RunningSum& s, int H, int W, int r, int c,
                                             bool own) {
    if (!s.prev) return f[r * W + c];
    float v = bilinear_at(s.prev, s.ph, s.pw, H, W, r, c);
    if (s.old) v = s.old[r * W + c] + v;
    if (own) s.out[r * W + c] = v;
    return f[r * W + c] - v;
}

// Whether window (y, x) of an (h, w) pooling owns element (r, c) of [H, W]: the first window holding it.
__device__ __forceinline__ bool owns(int y, int x, int r, int c, int H, int W, int h, int w) {
    return (r * h) / H == y && (c * w) / W == x;
}

// The residual kernels' arguments: latent, S_{s−1}, q_{s−1}, S_s, q_{s−1}'s size, the pooling, then
// the Codes fields.
#define RESIDUAL_PARAMS                                                                                        \
    const float *__restrict__ f, const float *__restrict__ old, const float *__restrict__ prev,                \
        float *__restrict__ out, int ph, int pw, int bd, int H, int W, int h, int w,                            \
        const unsigned long long *__restrict__ keys, int scale, int kmax, unsigned char *__restrict__ gt, int l, \
        int tok0, float *__restrict__ q, int d
#define CODES Codes{keys, scale, kmax, gt, l, tok0, q, d, h * w}

// One thread per output: the window summed in row-major order, as the CPU twin's area pooling.
extern "C" __global__ void residual_codes_f32(RESIDUAL_PARAMS) {
    const long total = (long)bd * h * w;
    const Codes o = CODES;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long ch = i / ((long)w * h);
        const int y = (i / w) % h, x = i % w;
        const RunningSum s = channel(old, prev, out, ph, pw, ch, H, W);
        const int2 wy = area_window(y, H, h), wx = area_window(x, W, w);
        float sum = 0.0f;
        for (int r = wy.x; r < wy.y; ++r)
            for (int c = wx.x; c < wx.y; ++c)
                sum += residual_at(f + ch * H * W, s, H, W, r, c, owns(y, x, r, c, H, W, h, w));
        emit_code(sum / (float)(wy.y - wy.x) / (float)(wx.y - wx.x), i, o);
    }
}

// For large windows (coarse scales), where one thread per output would sum thousands of values alone:
// a warp (`residual_codes_warp_f32`) or a block (`residual_codes_block_f32`) per output value, its
// threads striding over the window in row-major order, then a fixed reduction tree (bitwise
// reproducible; the order differs from the serial sum, so a bit may differ from the CPU twin's where
// the residual is within rounding of zero).
__device__ __forceinline__ float window_part(const float* f, const RunningSum& s, int H, int W, int h, int w, int y,
                                             int x, int2 wy, int2 wx, int first, int stride) {
    const int ww = wx.y - wx.x, cnt = (wy.y - wy.x) * ww;
    float sum = 0.0f;
    for (int e = first; e < cnt; e += stride) {
        const int r = wy.x + e / ww, c = wx.x + e % ww;
        sum += residual_at(f, s, H, W, r, c, owns(y, x, r, c, H, W, h, w));
    }
    return sum;
}

extern "C" __global__ void residual_codes_warp_f32(RESIDUAL_PARAMS) {
    const long total = (long)bd * h * w, warps = ((long)gridDim.x * blockDim.x) >> 5;
    const int lane = threadIdx.x & 31;
    const Codes o = CODES;
    for (long i = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5; i < total; i += warps) {
        const long ch = i / ((long)w * h);
        const int y = (i / w) % h, x = i % w;
        const RunningSum s = channel(old, prev, out, ph, pw, ch, H, W);
        const int2 wy = area_window(y, H, h), wx = area_window(x, W, w);
        float sum = window_part(f + ch * H * W, s, H, W, h, w, y, x, wy, wx, lane, 32);
        for (int k = 16; k > 0; k >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, k);
        if (lane == 0) emit_code(sum / (float)(wy.y - wy.x) / (float)(wx.y - wx.x), i, o);
    }
}

extern "C" __global__ void residual_codes_block_f32(RESIDUAL_PARAMS) {
    const long total = (long)bd * h * w;
    const Codes o = CODES;
    for (long i = blockIdx.x; i < total; i += gridDim.x) {
        const long ch = i / ((long)w * h);
        const int y = (i / w) % h, x = i % w;
        const RunningSum s = channel(old, prev, out, ph, pw, ch, H, W);
        const int2 wy = area_window(y, H, h), wx = area_window(x, W, w);
        const float sum = block_sum(window_part(f + ch * H * W, s, H, W, h, w, y, x, wy, wx, threadIdx.x, blockDim.x));
        if (threadIdx.x == 0) emit_code(sum / (float)(wy.y - wy.x) / (float)(wx.y - wx.x), i, o);
    }
}

// A scale's teacher-forcing input: bilinear(S_s [B, d, H, W]) at its (h, w), written token-major into
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
