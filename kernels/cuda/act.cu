// Twins of kernels/src/act.rs: GELU (tanh form through x·σ(2z)) and SiLU, forward and backward.
// Elementwise over n values; a grid-stride loop.
#include "common.cuh"

__device__ __forceinline__ void gelu_parts(float x, float* y, float* dy) {
    const float k = 0.7978845608028654f, a = 0.044715f;
    const float z = k * (x + a * x * x * x);
    const float s = 1.0f / (1.0f + expf(-2.0f * z));
    *y = x * s;
    *dy = s + 2.0f * x * s * (1.0f - s) * k * (1.0f + 3.0f * a * x * x);
}

extern "C" __global__ void gelu_forward_f32(const float* __restrict__ x, float* __restrict__ y, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v, dv;
        gelu_parts(x[i], &v, &dv);
        y[i] = v;
    }
}

// gelu_forward_f32 from bf16 x to bf16 y (rounded): the FFN's second GEMM's input again in the backward
// from bias_gelu_forward_bf16's x, bit for bit the g that kernel wrote.
extern "C" __global__ void gelu_forward_bf16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y,
                                             long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v, dv;
        gelu_parts(__uint_as_float((unsigned)x[i] << 16), &v, &dv);
        y[i] = bf16_bits(v);
    }
}

// The FFN's first layer after its bias-free GEMM: f [n, cols] += b [cols] (kept for the backward),
// g = gelu(f). One pass instead of writing the bias rows before the GEMM and reading f again.
__device__ __forceinline__ float bias_gelu(float* f, const float* b, long i, int cols) {
    const float x = f[i] + b[i % cols];
    float v, dv;
    gelu_parts(x, &v, &dv);
    f[i] = x;
    return v;
}

extern "C" __global__ void bias_gelu_forward_f32(float* __restrict__ f, const float* __restrict__ b,
                                                 float* __restrict__ g, long n, int cols) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        g[i] = bias_gelu(f, b, i, cols);
}

// The same in bf16 alone, as under autocast (the first layer's output is bf16): x = f + b rounded to
// bf16 (the GELU's input, kept for its backward) and g = gelu(x) rounded (the second FFN GEMM's
// input). f is only read.
extern "C" __global__ void bias_gelu_forward_bf16(const float* __restrict__ f, const float* __restrict__ b,
                                                  unsigned short* __restrict__ x16, unsigned short* __restrict__ g,
                                                  long n, int cols) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const unsigned short x = bf16_bits(f[i] + b[i % cols]);
        float v, dv;
        gelu_parts(__uint_as_float((unsigned)x << 16), &v, &dv);
        x16[i] = x;
        g[i] = bf16_bits(v);
    }
}

extern "C" __global__ void gelu_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                             float* __restrict__ dx, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v, dv;
        gelu_parts(x[i], &v, &dv);
        dx[i] = dy[i] * dv;
    }
}

// The same from bias_gelu_forward_bf16's x, dx stored only in bf16: the FFN's first layer's output
// gradient, which its bf16 GEMMs and the bias's column sum read (as under autocast, where that
// gradient is bf16).
extern "C" __global__ void gelu_backward_bf16(const float* __restrict__ dy, const unsigned short* __restrict__ x,
                                              unsigned short* __restrict__ dx, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v, dv;
        gelu_parts(__uint_as_float((unsigned)x[i] << 16), &v, &dv);
        dx[i] = bf16_bits(dy[i] * dv);
    }
}

extern "C" __global__ void silu_forward_f32(const float* __restrict__ x, float* __restrict__ y, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        y[i] = x[i] / (1.0f + expf(-x[i]));
    }
}

extern "C" __global__ void silu_backward_f32(const float* __restrict__ dy, const float* __restrict__ x,
                                             float* __restrict__ dx, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float s = 1.0f / (1.0f + expf(-x[i]));
        dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}
