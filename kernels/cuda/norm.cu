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
