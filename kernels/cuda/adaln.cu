// Twins of kernels/src/adaln.rs: the gated residual res += y·gamma, forward and backward (the AdaLN
// modulation runs fused with its LayerNorm: norm.cu). x, y, res: [B, L, C]; gamma: rows of C values per
// sample, `ps` floats apart (C for a [B, C] buffer, 6C for a part of the blocks' [B, 6C] AdaLN output).
// Elementwise grid-stride loops; the per-sample parameter gradients are util.cu's group_dot. scale_gates:
// stochastic depth folded into the gates, in the forward and on their gradient in the backward.
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

// x[r·stride + j·c + i] *= factors[r·parts + j] for the first `parts` gates of each of the b rows.
extern "C" __global__ void scale_gates_f32(float* __restrict__ x, const float* __restrict__ factors, int b, int parts,
                                           int c, long stride) {
    const long width = (long)parts * c, total = (long)b * width;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long r = i / width, k = i % width;
        x[r * stride + k] *= factors[r * parts + k / c];
    }
}
