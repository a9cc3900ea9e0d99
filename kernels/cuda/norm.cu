// Twins of kernels/src/norm.rs: LayerNorm (affine or not) and RMSNorm over rows [N, C], forward and
// backward. One block per row; the block sums with common.cuh's reduction. Input gradients are written;
// parameter gradients are added by separate kernels, one thread per column summing the rows in order
// (no atomics: runs are bitwise reproducible).
#include "common.cuh"

// y = (x − μ)·rstd·w + b; w, b may be null (no affine). mean, rstd: [N].
extern "C" __global__ void layernorm_forward_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                 const float* __restrict__ b, float* __restrict__ y,
                                                 float* __restrict__ mean, float* __restrict__ rstd,
                                                 int n, int c, float eps) {
    const int r = blockIdx.x;
    if (r >= n) return;
    const float* xr = x + (size_t)r * c;
    float s = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) s += xr[i];
    const float mu = block_sum(s) / (float)c;
    float v = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) v += (xr[i] - mu) * (xr[i] - mu);
    const float rs = 1.0f / sqrtf(block_sum(v) / (float)c + eps);
    if (threadIdx.x == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
    float* yr = y + (size_t)r * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float xh = (xr[i] - mu) * rs;
        yr[i] = w ? (b ? xh * w[i] + b[i] : xh * w[i]) : xh;
    }
}

// dx written (w may be null).
extern "C" __global__ void layernorm_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                  const float* __restrict__ w, const float* __restrict__ mean,
                                                  const float* __restrict__ rstd, float* __restrict__ dx, int n,
                                                  int c) {
    const int r = blockIdx.x;
    if (r >= n) return;
    const float* xr = x + (size_t)r * c;
    const float* dyr = dy + (size_t)r * c;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float xh = (xr[i] - mu) * rs;
        const float g = dyr[i] * (w ? w[i] : 1.0f);
        sg += g;
        sgx += g * xh;
    }
    const float mg = block_sum(sg) / (float)c, mgx = block_sum(sgx) / (float)c;
    float* dxr = dx + (size_t)r * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float xh = (xr[i] - mu) * rs;
        const float g = dyr[i] * (w ? w[i] : 1.0f);
        dxr[i] = rs * (g - mg - xh * mgx);
    }
}

// dw += Σ_r dy·x̂, db += Σ_r dy (LayerNorm's affine parameters); one thread per column.
extern "C" __global__ void layernorm_param_grad_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                                   float* __restrict__ dw, float* __restrict__ db, int n, int c) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= c) return;
    float sw = 0.0f, sb = 0.0f;
    for (int r = 0; r < n; ++r) {
        const float g = dy[(size_t)r * c + i];
        sw += g * ((x[(size_t)r * c + i] - mean[r]) * rstd[r]);
        sb += g;
    }
    dw[i] += sw;
    db[i] += sb;
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

// dw += Σ_r dy·x·rstd (RMSNorm's weight); one thread per column.
extern "C" __global__ void rmsnorm_param_grad_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                                 const float* __restrict__ rstd, float* __restrict__ dw, int n,
                                                 int c) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= c) return;
    float s = 0.0f;
    for (int r = 0; r < n; ++r) s += dy[(size_t)r * c + i] * (x[(size_t)r * c + i] * rstd[r]);
    dw[i] += s;
}
