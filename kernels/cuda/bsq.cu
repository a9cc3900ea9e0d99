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

// The bilinear sample of one channel `s` (width sw) at the row and column taps ty, tx.
__device__ __forceinline__ float bilinear_tapped(const float* s, int sw, Tap ty, Tap tx) {
    const float top = s[ty.i0 * sw + tx.i0] * tx.w0 + s[ty.i0 * sw + tx.i1] * tx.w1;
    const float bottom = s[ty.i1 * sw + tx.i0] * tx.w0 + s[ty.i1 * sw + tx.i1] * tx.w1;
    return top * ty.w0 + bottom * ty.w1;
}

// Calls f(e, r, c) for the elements e = first, first + stride, … of an [h, w] grid with their row r and
// column c, stepping both instead of dividing per element.
template <class F>
__device__ __forceinline__ void for_grid(int h, int w, int first, int stride, F f) {
    const int dr = stride / w, dc = stride % w;
    int r = first / w, c = first % w;
    for (int e = first; e < h * w; e += stride) {
        f(e, r, c);
        r += dr;
        c += dc;
        if (c >= w) {
            c -= w;
            ++r;
        }
    }
}

// Bilinear sample (y, x) of a [dh, dw] resize of one channel `s` [sh, sw].
__device__ __forceinline__ float bilinear_at(const float* s, int sh, int sw, int dh, int dw, int y, int x) {
    if (sh == dh && sw == dw) return s[y * sw + x];
    return bilinear_tapped(s, sw, linear_tap(sh, dh, y), linear_tap(sw, dw, x));
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
// ever stored. Where a plane fits in shared memory, self_correct_planes_f32 (at the end) runs the
// same steps for every scale in one launch instead. The flips come from a counter-based generator
// keyed per sample, the twin of bsq::keyed_uniform.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// bsq::keyed_uniform(key, scale, index) = uniform_at(scale_base(key, scale), index).
__device__ __forceinline__ unsigned long long scale_base(unsigned long long key, int scale) {
    return mix64(key ^ mix64((unsigned long long)scale + 0x9e3779b97f4a7c15ull));
}

__device__ __forceinline__ double uniform_at(unsigned long long base, unsigned long long index) {
    return (double)(mix64(base ^ mix64(index)) >> 11) * (1.0 / 9007199254740992.0);
}

// The flips of one scale of one sample: each bit flips with probability p = k·0.01, k drawn uniform in
// {0, …, kmax} (kmax = bsq::flip_kmax(p_max): numpy's bound; 0: no flips), as bsq::keyed_flips.
struct Flips {
    unsigned long long base;
    double p;
};

__device__ __forceinline__ Flips flips_of(unsigned long long key, int scale, int kmax) {
    const unsigned long long base = scale_base(key, scale);
    if (kmax <= 0) return Flips{base, 0.0};
    const int k = (int)(uniform_at(base, ~0ull) * (double)(kmax + 1));
    return Flips{base, (double)min(k, kmax) * 0.01};
}

// Where scale `scale`'s labels and codes go: keys [B] (one per sample), kmax (see flips_of),
// gt [B, L, d] at tokens tok0 … tok0 + n, q [B, d, n].
struct Codes {
    const unsigned long long* keys;
    int scale, kmax;
    unsigned char* gt;
    int l, tok0;
    float* q;
    int d, n;
};

// The label of residual r at token t, channel c of sample smp (its clean sign bit) into gt; returns
// the bit its code uses: the label, flipped with the scale's probability (the draw of index t·d + c).
__device__ __forceinline__ int emit_label(float r, long smp, int t, int c, const Flips& fl, const Codes& o) {
    const int bit = r > 0.0f ? 1 : 0;
    o.gt[(smp * o.l + o.tok0 + t) * o.d + c] = (unsigned char)bit;
    return fl.p > 0.0 && uniform_at(fl.base, (unsigned long long)t * o.d + c) < fl.p ? bit ^ 1 : bit;
}

// ±1/√d for a bit (IEEE sqrt and division: the CPU twin's value exactly).
__device__ __forceinline__ float code_of(int bit, int d) {
    const float m = 1.0f / sqrtf((float)d);
    return bit ? m : -m;
}

// Output i of r [B, d, n] (value r): its clean bit into gt, the code of the (possibly flipped) bit into q.
__device__ __forceinline__ void emit_code(float r, long i, const Codes& o) {
    const int t = i % o.n, c = (i / o.n) % o.d;
    const long smp = i / ((long)o.n * o.d);
    o.q[i] = code_of(emit_label(r, smp, t, c, flips_of(o.keys[smp], o.scale, o.kmax), o), o.d);
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

// The sum of value(r, c) over elements first, first + stride, … of the window wy × wx in row-major
// order (first 0, stride 1: the CPU twin's serial sum).
template <class Value>
__device__ __forceinline__ float window_part(Value value, int2 wy, int2 wx, int first, int stride) {
    float sum = 0.0f;
    if (stride == 1 && first == 0) {
        for (int r = wy.x; r < wy.y; ++r)
            for (int c = wx.x; c < wx.y; ++c) sum += value(r, c);
    } else {
        for_grid(wy.y - wy.x, wx.y - wx.x, first, stride, [&](int, int r, int c) { sum += value(wy.x + r, wx.x + c); });
    }
    return sum;
}

// A window's mean from its sum: divided by its height, then its width (PyTorch's order).
__device__ __forceinline__ float window_mean(float sum, int2 wy, int2 wx) {
    return sum / (float)(wy.y - wy.x) / (float)(wx.y - wx.x);
}

// Output i = (channel, y, x) of a scale: its pooling window, the residual f − S_s of its elements
// (storing S_s at the elements it owns) and the Codes for its scale.
#define OUTPUT_WINDOW                                                                                 \
    const long ch = i / ((long)w * h);                                                                \
    const int y = (i / w) % h, x = i % w;                                                             \
    const RunningSum s = channel(old, prev, out, ph, pw, ch, H, W);                                   \
    const int2 wy = area_window(y, H, h), wx = area_window(x, W, w);                                  \
    const auto residual = [&](int r, int c) {                                                         \
        return residual_at(f + ch * H * W, s, H, W, r, c, owns(y, x, r, c, H, W, h, w));             \
    };

// One thread per output: the window summed in row-major order, as the CPU twin's area pooling.
extern "C" __global__ void residual_codes_f32(RESIDUAL_PARAMS) {
    const long total = (long)bd * h * w;
    const Codes o = CODES;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        OUTPUT_WINDOW
        emit_code(window_mean(window_part(residual, wy, wx, 0, 1), wy, wx), i, o);
    }
}

// For large windows (coarse scales), where one thread per output would sum thousands of values alone:
// a warp (`residual_codes_warp_f32`) or a block (`residual_codes_block_f32`) per output value, its
// threads striding over the window in row-major order, then a fixed reduction tree (bitwise
// reproducible; the order differs from the serial sum, so a bit may differ from the CPU twin's where
// the residual is within rounding of zero).
extern "C" __global__ void residual_codes_warp_f32(RESIDUAL_PARAMS) {
    const long total = (long)bd * h * w, warps = ((long)gridDim.x * blockDim.x) >> 5;
    const int lane = threadIdx.x & 31;
    const Codes o = CODES;
    for (long i = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5; i < total; i += warps) {
        OUTPUT_WINDOW
        const float sum = warp_sum(window_part(residual, wy, wx, lane, 32));
        if (lane == 0) emit_code(window_mean(sum, wy, wx), i, o);
    }
}

extern "C" __global__ void residual_codes_block_f32(RESIDUAL_PARAMS) {
    const long total = (long)bd * h * w;
    const Codes o = CODES;
    for (long i = blockIdx.x; i < total; i += gridDim.x) {
        OUTPUT_WINDOW
        const float sum = block_sum(window_part(residual, wy, wx, threadIdx.x, blockDim.x));
        if (threadIdx.x == 0) emit_code(window_mean(sum, wy, wx), i, o);
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

// ---- every scale in one launch: a block per (sample, channel) plane, in shared memory -------------
// The steps above, block-wide, for latents whose plane fits (host: bsq.rs planes_smem_bytes; every
// scale at most H × W). Per scale s of (h, w), after s − 1 of (ph, pw):
//   1. up(q_{s−1}) along the width: u [ph, W], each value q_{s−1}'s two taps of its row (bilinear_at
//      interpolates the width first, so u holds its `top` and `bottom` values exactly);
//   2. S_s = S_{s−1} + the height interpolation of u (S_1 = up(q_0); S_0 = 0 is never formed), four
//      columns per thread where rows allow;
//   3. f − S_s pooled by thread, warp or block per output as the window size picks residual_codes_*
//      (same windows and summation orders: the same labels and inputs bit for bit), labels and codes
//      emitted, S_s sampled at (h, w) as the scale's input.
// Taps and windows come from per-scale tables, made a step before they are read. Global memory sees
// the latent read once and the labels and inputs written once. sched [K][2] holds the scales (h, w).
// Launch: grid min(B·d, 65 535) (plane-stride), 256 threads, shared memory as planes_smem_bytes;
// at most 64 registers, so four blocks fit an SM's registers as they fit its shared memory.
extern "C" __global__ void __launch_bounds__(256, 4) self_correct_planes_f32(
    const float* __restrict__ f, const int* __restrict__ sched, int scales, int planes, int H, int W, int qmax,
    int umax, const unsigned long long* __restrict__ keys, int kmax, int apply_layers,
    unsigned char* __restrict__ gt, int l, float* __restrict__ x, int d) {
    DYNAMIC_SMEM(unsigned char, smem);
    Tap* up_cols = reinterpret_cast<Tap*>(smem);   // [W] up(q_{s−1}) from width pw
    Tap* up_rows = up_cols + W;                    // [H] from height ph
    Tap* down_cols = up_rows + H;                  // [w ≤ W] S_s sampled at width w
    Tap* down_rows = down_cols + W;                // [h ≤ H]
    int2* win_cols = reinterpret_cast<int2*>(down_rows + H);  // [w] pooling windows
    int2* win_rows = win_cols + W;                             // [h]
    float* fs = reinterpret_cast<float*>(win_rows + H);        // [H·W] the latent plane
    float* sum = fs + H * W;                                   // [H·W] S_s
    float* u = sum + H * W;                                    // [umax·W] step 1's rows
    // [qmax] q_{s−1}, then q_s, as its bits (1: +m, 0: −m): a byte each instead of a float keeps the
    // block at 51 KiB for 64 × 64 latents, so four blocks share an SM (at 58 KiB, three did)
    unsigned char* q = reinterpret_cast<unsigned char*>(u + umax * W);
    const int hw = H * W, n0 = sched[0] * sched[1], lane = threadIdx.x & 31;
    // rows of S and u as 16-byte quads where they are aligned: W % 4 == 0, and the tables before them
    // (40·(H + W) bytes) end at a multiple of 16
    const bool quads = W % 4 == 0 && (H + W) % 2 == 0;
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const float m = code_of(1, d);
    for (long plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const long smp = plane / d;
        const int c = plane % d;
        for (int e = threadIdx.x; e < hw; e += blockDim.x) fs[e] = f[plane * hw + e];
        int ph = 1, pw = 1, tok0 = 0;
        for (int si = 0; si < scales; ++si) {
            const int h = sched[2 * si], w = sched[2 * si + 1], n = h * w;
            // this scale's tables (read in step 3); step 1 when there is a q_{s−1}
            for (int i = threadIdx.x; i < h; i += blockDim.x) {
                down_rows[i] = linear_tap(H, h, i);
                win_rows[i] = area_window(i, H, h);
            }
            for (int i = threadIdx.x; i < w; i += blockDim.x) {
                down_cols[i] = linear_tap(W, w, i);
                win_cols[i] = area_window(i, W, w);
            }
            if (si > 0) {
                for_grid(ph, W, threadIdx.x, blockDim.x, [&](int e, int r, int cc) {
                    const Tap tx = up_cols[cc];
                    const float q0 = q[r * pw + tx.i0] ? m : -m, q1 = q[r * pw + tx.i1] ? m : -m;
                    u[e] = q0 * tx.w0 + q1 * tx.w1;
                });
                __syncthreads();  // u whole
                if (quads)  // four columns per thread: one row tap and 16-byte loads for four sums
                    for_grid(H, W / 4, threadIdx.x, blockDim.x, [&](int, int r, int c4) {
                        const Tap ty = up_rows[r];
                        const float4 a = reinterpret_cast<const float4*>(u + ty.i0 * W)[c4];
                        const float4 b = reinterpret_cast<const float4*>(u + ty.i1 * W)[c4];
                        float4 v = make_float4(a.x * ty.w0 + b.x * ty.w1, a.y * ty.w0 + b.y * ty.w1,
                                               a.z * ty.w0 + b.z * ty.w1, a.w * ty.w0 + b.w * ty.w1);
                        float4* at = reinterpret_cast<float4*>(sum + r * W) + c4;
                        if (si >= 2) {
                            const float4 old = *at;
                            v = make_float4(old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w);
                        }
                        *at = v;
                    });
                else
                    for_grid(H, W, threadIdx.x, blockDim.x, [&](int e, int r, int cc) {
                        const Tap ty = up_rows[r];
                        const float v = u[ty.i0 * W + cc] * ty.w0 + u[ty.i1 * W + cc] * ty.w1;
                        sum[e] = si >= 2 ? sum[e] + v : v;
                    });
            }
            __syncthreads();  // S_s, the tables (and, at the first scale, f) whole; q_{s−1} read
            const Codes o{keys, si, 0, gt, l, tok0, nullptr, d, n};
            const Flips fl = flips_of(keys[smp], si, si < apply_layers ? kmax : 0);
            const auto residual = [&](int r, int cc) { return si > 0 ? fs[r * W + cc] - sum[r * W + cc] : fs[r * W + cc]; };
            const auto emit = [&](int t, float mean) {
                const int bit = emit_label(mean, smp, t, c, fl, o);
                if (si + 1 < scales) q[t] = (unsigned char)bit;
            };
            const int window = ((H + h - 1) / h) * ((W + w - 1) / w);  // as bsq.rs picks the kernel
            if (n == hw) {  // windows of one element: mean = 0 + r (the sign of r)
                for (int t = threadIdx.x; t < n; t += blockDim.x) emit(t, si > 0 ? fs[t] - sum[t] : fs[t]);
            } else if (window < 16) {
                for_grid(h, w, threadIdx.x, blockDim.x, [&](int t, int y, int xx) {
                    const int2 wy = win_rows[y], wx = win_cols[xx];
                    emit(t, window_mean(window_part(residual, wy, wx, 0, 1), wy, wx));
                });
            } else if (window < 1024) {
                for_grid(h, w, warp, warps, [&](int t, int y, int xx) {
                    const int2 wy = win_rows[y], wx = win_cols[xx];
                    const float total = warp_sum(window_part(residual, wy, wx, lane, 32));
                    if (lane == 0) emit(t, window_mean(total, wy, wx));
                });
            } else {
                for_grid(h, w, 0, 1, [&](int t, int y, int xx) {
                    const int2 wy = win_rows[y], wx = win_cols[xx];
                    const float total = block_sum(window_part(residual, wy, wx, threadIdx.x, blockDim.x));
                    if (threadIdx.x == 0) emit(t, window_mean(total, wy, wx));
                });
            }
            if (si > 0)  // the scale's input: S_s at (h, w), token-major into x [B, L − n0, d]
                for_grid(h, w, threadIdx.x, blockDim.x, [&](int t, int y, int xx) {
                    x[(smp * (l - n0) + tok0 - n0 + t) * d + c] =
                        n == hw ? sum[t] : bilinear_tapped(sum, W, down_rows[y], down_cols[xx]);
                });
            if (si + 1 < scales) {  // the taps of up(q_s) for the next scale
                for (int i = threadIdx.x; i < H; i += blockDim.x) up_rows[i] = linear_tap(h, H, i);
                for (int i = threadIdx.x; i < W; i += blockDim.x) up_cols[i] = linear_tap(w, W, i);
            }
            __syncthreads();  // q_s and the up taps whole; S_s, f and the tables read
            ph = h;
            pw = w;
            tok0 += n;
        }
    }
}

// ---- spatial patchify (twin of kernels/src/patchify.rs) -----------------------------------------
// One transformer scale (h, w) of a batch: src holds the tokenizer's [2h·2w, d] values of each sample
// and dst its [h·w, 4d] tokens, both at element `off` of a sample's `per` values (a scale holds as many
// values in either layout). Token (y, x) channel c·4 + i·2 + j is position (2y + i, 2x + j) channel c,
// as PyTorch's pixel_unshuffle(2). One thread per output value.
template <typename T>
__device__ __forceinline__ void unshuffle_scale(const T* __restrict__ src, T* __restrict__ dst, int b, long per,
                                                long off, int h, int w, int d) {
    const long n = 4L * h * w * d;
    const long total = (long)b * n;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total; e += (long)gridDim.x * blockDim.x) {
        const long s = e / n, k = e % n;
        const int ch = k % (4 * d), t = k / (4 * d);
        const int c = ch / 4, i = (ch / 2) % 2, j = ch % 2;
        const int y = t / w, x = t % w;
        const long from = ((long)(2 * y + i) * 2 * w + 2 * x + j) * d + c;
        dst[s * per + off + k] = src[s * per + off + from];
    }
}

extern "C" __global__ void unshuffle_scale_f32(const float* __restrict__ src, float* __restrict__ dst, int b,
                                               long per, long off, int h, int w, int d) {
    unshuffle_scale(src, dst, b, per, off, h, w, d);
}

extern "C" __global__ void unshuffle_scale_u8(const unsigned char* __restrict__ src, unsigned char* __restrict__ dst,
                                              int b, long per, long off, int h, int w, int d) {
    unshuffle_scale(src, dst, b, per, off, h, w, d);
}
