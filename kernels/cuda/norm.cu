// Twins of kernels/src/norm.rs: LayerNorm (affine or not) and RMSNorm over rows [N, C], forward and
// backward. One block per row; the block sums with common.cuh's reduction. Input gradients are written;
// parameter gradients are column sums in a fixed order (common.cuh's two stages; no atomics: runs are
// bitwise reproducible).
#include "common.cuh"

// A row's mean and 1/√(variance + eps) (two block sums), written to *mean and *rstd by thread 0.
__device__ __forceinline__ float2 row_stats(const float* xr, int c, float eps, float* mean, float* rstd) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += xr[i];
    const float mu = block_sum(s) / (float)c;
    float v = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) v += (xr[i] - mu) * (xr[i] - mu);
    const float rs = 1.0f / sqrtf(block_sum(v) / (float)c + eps);
    if (threadIdx.x == 0) {
        *mean = mu;
        *rstd = rs;
    }
    return make_float2(mu, rs);
}

// A row's LayerNorm input gradient from its output gradient g(i) (x̂ recomputed from x, μ, rstd):
// out(i, rstd·(g − mean(g) − x̂·mean(g·x̂))).
template <class G, class Out>
__device__ __forceinline__ void layernorm_row_backward(const float* xr, float mu, float rs, int c, G g, Out out) {
    float sg = 0.0f, sgx = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float xh = (xr[i] - mu) * rs, gi = g(i);
        sg += gi;
        sgx += gi * xh;
    }
    const float mg = block_sum(sg) / (float)c, mgx = block_sum(sgx) / (float)c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float xh = (xr[i] - mu) * rs;
        out(i, rs * (g(i) - mg - xh * mgx));
    }
}

__device__ __forceinline__ void store_value(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_value(unsigned short* p, float v) { *p = bf16_bits(v); }

// y = (x − μ)·rstd·w + b in f32 or in bf16 alone (Out: a bf16 product's input); w, b may be null (no
// affine). mean, rstd: [N].
template <class Out>
__device__ __forceinline__ void layernorm_forward(const float* __restrict__ x, const float* __restrict__ w,
                                                  const float* __restrict__ b, Out* __restrict__ y,
                                                  float* __restrict__ mean, float* __restrict__ rstd, int n, int c,
                                                  float eps) {
    const int r = blockIdx.x;
    if (r >= n) return;
    const float* xr = x + (size_t)r * c;
    const float2 st = row_stats(xr, c, eps, mean + r, rstd + r);
    const float mu = st.x, rs = st.y;
    Out* yr = y + (size_t)r * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float xh = (xr[i] - mu) * rs;
        store_value(yr + i, w ? (b ? xh * w[i] + b[i] : xh * w[i]) : xh);
    }
}

#define LAYERNORM_FORWARD(NAME, OUT)                                                                            \
    extern "C" __global__ void NAME(const float* __restrict__ x, const float* __restrict__ w,                    \
                                    const float* __restrict__ b, OUT* __restrict__ y, float* __restrict__ mean,  \
                                    float* __restrict__ rstd, int n, int c, float eps) {                         \
        layernorm_forward<OUT>(x, w, b, y, mean, rstd, n, c, eps);                                              \
    }
LAYERNORM_FORWARD(layernorm_forward_f32, float)
LAYERNORM_FORWARD(layernorm_forward_bf16, unsigned short)

// A LayerNorm without affine followed by AdaLN modulation: y = x̂·(1 + scale) + shift, x̂ = (x − μ)·rstd,
// in f32 or in bf16 alone (Out); mean and rstd [N] kept, x̂ not (the backward recomputes it). One
// pass in place of writing x̂ and reading it again. Row r is a token of sample r / l; scale and shift
// rows are `ps` floats apart.
template <class Out>
__device__ __forceinline__ void modulated_layernorm(const float* __restrict__ x, const float* __restrict__ scale,
                                                    const float* __restrict__ shift, Out* __restrict__ y,
                                                    float* __restrict__ mean, float* __restrict__ rstd, int n, int l,
                                                    int c, int ps, float eps) {
    const int r = blockIdx.x;
    if (r >= n) return;
    const float* xr = x + (size_t)r * c;
    const float *sc = scale + (size_t)(r / l) * ps, *sh = shift + (size_t)(r / l) * ps;
    const float2 st = row_stats(xr, c, eps, mean + r, rstd + r);
    const float mu = st.x, rs = st.y;
    for (int i = threadIdx.x; i < c; i += blockDim.x) store_value(y + (size_t)r * c + i, (xr[i] - mu) * rs * (1.0f + sc[i]) + sh[i]);
}

#define MODULATED_LAYERNORM(NAME, OUT)                                                                         \
    extern "C" __global__ void NAME(const float* __restrict__ x, const float* __restrict__ scale,                \
                                    const float* __restrict__ shift, OUT* __restrict__ y, float* __restrict__ mean, \
                                    float* __restrict__ rstd, int n, int l, int c, int ps, float eps) {         \
        modulated_layernorm<OUT>(x, scale, shift, y, mean, rstd, n, l, c, ps, eps);                            \
    }
MODULATED_LAYERNORM(modulated_layernorm_forward_f32, float)
MODULATED_LAYERNORM(modulated_layernorm_forward_bf16, unsigned short)

// dx written (w may be null).
extern "C" __global__ void layernorm_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                  const float* __restrict__ w, const float* __restrict__ mean,
                                                  const float* __restrict__ rstd, float* __restrict__ dx, int n,
                                                  int c) {
    const int r = blockIdx.x;
    if (r >= n) return;
    const float* dyr = dy + (size_t)r * c;
    float* dxr = dx + (size_t)r * c;
    layernorm_row_backward(
        x + (size_t)r * c, mean[r], rstd[r], c, [=](int i) { return dyr[i] * (w ? w[i] : 1.0f); },
        [=](int i, float d) { dxr[i] = d; });
}

// Backward of a LayerNorm without affine followed by AdaLN modulation, into x, plus a residual's
// gradient: g = dy·(1 + scale) is the LayerNorm's output gradient, dx = rstd·(g − mean(g) − x̂·mean(g·x̂))
// + dres (dres may be null). One pass in place of the modulation's dx, layernorm_backward_f32 and the
// residual sum. Row r is a token of sample r / l; scale rows are `ps` floats apart.
extern "C" __global__ void modulated_layernorm_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                            const float* __restrict__ scale,
                                                            const float* __restrict__ mean,
                                                            const float* __restrict__ rstd,
                                                            const float* __restrict__ dres, float* __restrict__ dx,
                                                            int n, int l, int c, int ps) {
    const int r = blockIdx.x;
    if (r >= n) return;
    const size_t o = (size_t)r * c;
    const float* sc = scale + (size_t)(r / l) * ps;
    layernorm_row_backward(
        x + o, mean[r], rstd[r], c, [=](int i) { return dy[o + i] * (1.0f + sc[i]); },
        [=](int i, float d) { dx[o + i] = dres ? dres[o + i] + d : d; });
}

// ---- rows in registers, 16 bytes at a time ---------------------------------------------------------
// The LayerNorms above for C a multiple of 4 with every row and operand 16-byte aligned (the host
// checks: layers.rs rows4): a block of ⌈C/4/K⌉ threads (whole warps) per row, thread t holding
// float4s t, t + blockDim, … (K of them). A row is read from global memory once, 16 bytes per load,
// where the kernels above read it 4 bytes per load and again for each statistic; the sums are
// block_sum over per-thread partials, as above, in another order. Both forms share y = x̂·a + b per
// column (a LayerNorm's weight and bias, or the modulation's 1 + scale and shift) and its backward
// g = dy·a.

__device__ __forceinline__ bool mine4(int k, int c4) { return threadIdx.x + k * blockDim.x < c4; }

template <int K>
__device__ __forceinline__ void load_row4(const float* row, int c4, float4 (&v)[K]) {
#pragma unroll
    for (int k = 0; k < K; ++k)
        v[k] = mine4(k, c4) ? reinterpret_cast<const float4*>(row)[threadIdx.x + k * blockDim.x]
                            : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(unsigned short* p, float4 v) {
    *reinterpret_cast<uint2*>(p) = make_uint2(bf16_bits(v.x) | ((unsigned)bf16_bits(v.y) << 16),
                                              bf16_bits(v.z) | ((unsigned)bf16_bits(v.w) << 16));
}

// Float4 j of a row of per-column factors, or `fill` without one.
__device__ __forceinline__ float4 col4(const float* row, int j, float fill) {
    return row ? reinterpret_cast<const float4*>(row)[j] : make_float4(fill, fill, fill, fill);
}

// Row r of y = x̂·a + b (a, b: float4 j of the columns' factors, as `factors(j, a, b)` sets them);
// mean and rstd [N] written.
template <int K, class Out, class Factors>
__device__ __forceinline__ void layernorm_row4(const float* __restrict__ x, Out* __restrict__ y,
                                               float* __restrict__ mean, float* __restrict__ rstd, int r, int c,
                                               float eps, Factors factors) {
    const int c4 = c / 4;
    float4 v[K];
    load_row4(x + (size_t)r * c, c4, v);
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) s += (v[k].x + v[k].y) + (v[k].z + v[k].w);  // zeros past the row
    const float mu = block_sum(s) / (float)c;
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k)
        if (mine4(k, c4)) {
            const float d0 = v[k].x - mu, d1 = v[k].y - mu, d2 = v[k].z - mu, d3 = v[k].w - mu;
            q += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
    const float rs = 1.0f / sqrtf(block_sum(q) / (float)c + eps);
    if (threadIdx.x == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
#pragma unroll
    for (int k = 0; k < K; ++k)
        if (mine4(k, c4)) {
            const int j = threadIdx.x + k * blockDim.x;
            float4 a, b;
            factors(j, a, b);
            const float4 xv = v[k];
            store4(y + (size_t)r * c + 4 * j,
                   make_float4((xv.x - mu) * rs * a.x + b.x, (xv.y - mu) * rs * a.y + b.y,
                               (xv.z - mu) * rs * a.z + b.z, (xv.w - mu) * rs * a.w + b.w));
        }
}

// Row r's input gradient from dy (g = dy·a, a as `gain(j)` gives it), plus dres when not null.
template <int K, class Gain>
__device__ __forceinline__ void layernorm_backward_row4(const float* __restrict__ dy, const float* __restrict__ x,
                                                        float mu, float rs, const float* __restrict__ dres,
                                                        float* __restrict__ dx, int r, int c, Gain gain) {
    const int c4 = c / 4;
    const size_t o = (size_t)r * c;
    float4 xh[K], g[K];
    load_row4(x + o, c4, xh);
    load_row4(dy + o, c4, g);
    float sg = 0.0f, sgx = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k)
        if (mine4(k, c4)) {
            const float4 a = gain(threadIdx.x + k * blockDim.x);
            g[k] = make_float4(g[k].x * a.x, g[k].y * a.y, g[k].z * a.z, g[k].w * a.w);
            xh[k] = make_float4((xh[k].x - mu) * rs, (xh[k].y - mu) * rs, (xh[k].z - mu) * rs, (xh[k].w - mu) * rs);
            sg += (g[k].x + g[k].y) + (g[k].z + g[k].w);
            sgx += (g[k].x * xh[k].x + g[k].y * xh[k].y) + (g[k].z * xh[k].z + g[k].w * xh[k].w);
        }
    const float mg = block_sum(sg) / (float)c, mgx = block_sum(sgx) / (float)c;
#pragma unroll
    for (int k = 0; k < K; ++k)
        if (mine4(k, c4)) {
            const int j = threadIdx.x + k * blockDim.x;
            float4 d = make_float4(rs * (g[k].x - mg - xh[k].x * mgx), rs * (g[k].y - mg - xh[k].y * mgx),
                                   rs * (g[k].z - mg - xh[k].z * mgx), rs * (g[k].w - mg - xh[k].w * mgx));
            if (dres) {
                const float4 e = reinterpret_cast<const float4*>(dres + o)[j];
                d = make_float4(e.x + d.x, e.y + d.y, e.z + d.z, e.w + d.w);
            }
            store4(dx + o + 4 * j, d);
        }
}

// Entry points, K float4 per thread (arguments as the per_row kernels of the same name without `4`;
// grid N, block ⌈C/4/K⌉ rounded up to whole warps, at most 1024: the bounds keep every variant
// within the registers a 1024-thread block has):
//   layernorm_forward4_{f32,bf16}_kK, modulated_layernorm_forward4_{f32,bf16}_kK,
//   layernorm_backward4_f32_kK, modulated_layernorm_backward4_f32_kK
#define ROWS4_FORWARD(K, OUT, NAME)                                                                               \
    extern "C" __global__ void __launch_bounds__(1024, 1) layernorm_forward4_##NAME##_k##K(                                                 \
        const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,                   \
        OUT* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, int n, int c, float eps) {       \
        if (blockIdx.x >= n) return;                                                                              \
        layernorm_row4<K>(x, y, mean, rstd, blockIdx.x, c, eps, [=](int j, float4& a, float4& bb) {              \
            a = col4(w, j, 1.0f);                                                                                 \
            bb = col4(w ? b : nullptr, j, 0.0f); /* as layernorm_forward: no weight, no bias */                   \
        });                                                                                                       \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(1024, 1) modulated_layernorm_forward4_##NAME##_k##K(                                       \
        const float* __restrict__ x, const float* __restrict__ scale, const float* __restrict__ shift,           \
        OUT* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, int n, int l, int c, int ps,    \
        float eps) {                                                                                              \
        const int r = blockIdx.x;                                                                                 \
        if (r >= n) return;                                                                                       \
        const float *sc = scale + (size_t)(r / l) * ps, *sh = shift + (size_t)(r / l) * ps;                     \
        layernorm_row4<K>(x, y, mean, rstd, r, c, eps, [=](int j, float4& a, float4& bb) {                       \
            const float4 s = col4(sc, j, 0.0f);                                                                   \
            a = make_float4(1.0f + s.x, 1.0f + s.y, 1.0f + s.z, 1.0f + s.w);                                     \
            bb = col4(sh, j, 0.0f);                                                                               \
        });                                                                                                       \
    }
#define ROWS4(K)                                                                                                  \
    ROWS4_FORWARD(K, float, f32)                                                                                  \
    ROWS4_FORWARD(K, unsigned short, bf16)                                                                        \
    extern "C" __global__ void __launch_bounds__(1024, 1) layernorm_backward4_f32_k##K(                                                     \
        const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ w,                  \
        const float* __restrict__ mean, const float* __restrict__ rstd, float* __restrict__ dx, int n, int c) {  \
        const int r = blockIdx.x;                                                                                 \
        if (r >= n) return;                                                                                       \
        layernorm_backward_row4<K>(dy, x, mean[r], rstd[r], nullptr, dx, r, c,                                  \
                                   [=](int j) { return col4(w, j, 1.0f); });                                      \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(1024, 1) modulated_layernorm_backward4_f32_k##K(                                           \
        const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ scale,              \
        const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ dres,          \
        float* __restrict__ dx, int n, int l, int c, int ps) {                                                    \
        const int r = blockIdx.x;                                                                                 \
        if (r >= n) return;                                                                                       \
        const float* sc = scale + (size_t)(r / l) * ps;                                                           \
        layernorm_backward_row4<K>(dy, x, mean[r], rstd[r], dres, dx, r, c, [=](int j) {                         \
            const float4 s = col4(sc, j, 0.0f);                                                                   \
            return make_float4(1.0f + s.x, 1.0f + s.y, 1.0f + s.z, 1.0f + s.w);                                 \
        });                                                                                                       \
    }
ROWS4(1)
ROWS4(2)
ROWS4(4)

// Stage 1 of LayerNorm's dw = Σ_r dy·x̂ (db is util.cu's column sum of dy).
extern "C" __global__ void layernorm_dw_partials_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                     const float* __restrict__ mean, const float* __restrict__ rstd,
                                                     long n, int c, float* __restrict__ partial) {
    column_partials([=](long r, int i) { return dy[r * c + i] * ((x[r * c + i] - mean[r]) * rstd[r]); }, n, c, partial);
}

// y = x·rstd·w, rstd = 1/√(mean(x²) + eps).
extern "C" __global__ void rmsnorm_forward_f32(const float* __restrict__ x, const float* __restrict__ w,
                                               float* __restrict__ y, float* __restrict__ rstd,
                                               int n, int c, float eps) {
    const int r = blockIdx.x;
    if (r >= n) return;
    const float* xr = x + (size_t)r * c;
    float s = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += xr[i] * xr[i];
    const float rs = 1.0f / sqrtf(block_sum(s) / (float)c + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int i = threadIdx.x; i < c; i += blockDim.x) y[(size_t)r * c + i] = xr[i] * rs * w[i];
}

// dx written.
extern "C" __global__ void rmsnorm_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                const float* __restrict__ w, const float* __restrict__ rstd,
                                                float* __restrict__ dx, int n, int c) {
    const int r = blockIdx.x;
    if (r >= n) return;
    const float* xr = x + (size_t)r * c;
    const float* dyr = dy + (size_t)r * c;
    const float rs = rstd[r];
    float sgx = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float xn = xr[i] * rs;
        sgx += dyr[i] * w[i] * xn;
    }
    const float m = block_sum(sgx) / (float)c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) dx[(size_t)r * c + i] = rs * (dyr[i] * w[i] - xr[i] * rs * m);
}

// Stage 1 of RMSNorm's dw = Σ_r dy·x·rstd.
extern "C" __global__ void rmsnorm_dw_partials_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                   const float* __restrict__ rstd, long n, int c,
                                                   float* __restrict__ partial) {
    column_partials([=](long r, int i) { return dy[r * c + i] * (x[r * c + i] * rstd[r]); }, n, c, partial);
}
