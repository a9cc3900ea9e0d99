// Twins of kernels/src/adaln.rs: the gated residual res += y·gamma, forward and backward (the AdaLN
// modulation runs fused with its LayerNorm: norm.cu). x, y, res: [B, L, C]; gamma: rows of C values per
// sample, `ps` floats apart (C for a [B, C] buffer, 6C for a part of the blocks' [B, 6C] AdaLN output).
// Elementwise grid-stride loops; the per-sample parameter gradients are util.cu's group_dot.
#include "common.cuh"

extern "C" __global__ void gated_residual_forward_f32(const float* __restrict__ x, const float* __restrict__ y,
                                                      const float* __restrict__ gamma, float* __restrict__ out, int b,
                                                      int l, int c, int ps) {
    const long total = (long)b * l * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        out[i] = x[i] + y[i] * gamma[(i / ((long)l * c)) * ps + i % c];
    }
}

// dy written.
extern "C" __global__ void gated_residual_backward_f32(const float* __restrict__ dres, const float* __restrict__ gamma,
                                                       float* __restrict__ dy, int b, int l, int c, int ps) {
    const long total = (long)b * l * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        dy[i] = dres[i] * gamma[(i / ((long)l * c)) * ps + i % c];
    }
}

// The same, dy stored only in bf16: the gated branch's output gradient, which only its projection's
// bf16 GEMMs and bias sum read.
extern "C" __global__ void gated_residual_backward_bf16(const float* __restrict__ dres,
                                                        const float* __restrict__ gamma,
                                                        unsigned short* __restrict__ dy, int b, int l, int c, int ps) {
    const long total = (long)b * l * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        dy[i] = bf16_bits(dres[i] * gamma[(i / ((long)l * c)) * ps + i % c]);
    }
}
