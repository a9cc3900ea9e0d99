// Twin of kernels/src/attention.rs: softmax attention over segments (block-causal self-attention,
// varlen cross-attention, the attention pool), forward and backward, without materialising scores.
//
// Dims: H heads, c head dim (≤ 256), Q [Nq, H·c], K, V [Nk, H·c]. Query row r sees key rows
// [k0[r], k0[r] + nk[r]) (the host expands the segments). One block per (row, head): scores are
// recomputed per pass, the output / dQ vector is accumulated in shared memory. lse [Nq, H] is kept
// for the backward (as flash attention does). dK, dV are accumulated with atomics (keys are shared).
#include "common.cuh"

#define MAX_HEAD_DIM 256

__device__ __forceinline__ float dot(const float* a, const float* b, int c) {
    float s = 0.0f;
    for (int i = 0; i < c; ++i) s += a[i] * b[i];
    return s;
}

extern "C" __global__ void attention_forward_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                 const float* __restrict__ v, float* __restrict__ o,
                                                 float* __restrict__ lse, const int* __restrict__ k0,
                                                 const int* __restrict__ nk, int heads, int c, float scale) {
    const int r = blockIdx.x, h = blockIdx.y, w = heads * c;
    const float* qr = q + (long)r * w + h * c;
    const int first = k0[r], count = nk[r];
    __shared__ float acc[MAX_HEAD_DIM];
    for (int i = threadIdx.x; i < c; i += blockDim.x) acc[i] = 0.0f;
    float m = __int_as_float(0xff800000);  // −∞ (NVRTC has no math.h INFINITY)
    for (int j = threadIdx.x; j < count; j += blockDim.x)
        m = fmaxf(m, scale * dot(qr, k + (long)(first + j) * w + h * c, c));
    m = block_max(m);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < count; j += blockDim.x) {
        const long kr = (long)(first + j) * w + h * c;
        const float p = expf(scale * dot(qr, k + kr, c) - m);
        sum += p;
        for (int i = 0; i < c; ++i) atomicAdd(&acc[i], p * v[kr + i]);
    }
    sum = block_sum(sum);
    __syncthreads();
    for (int i = threadIdx.x; i < c; i += blockDim.x) o[(long)r * w + h * c + i] = acc[i] / sum;
    if (threadIdx.x == 0) lse[(long)r * heads + h] = m + logf(sum);
}

// dq written; dk, dv accumulated (zero them first).
extern "C" __global__ void attention_backward_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                  const float* __restrict__ v, const float* __restrict__ o,
                                                  const float* __restrict__ d_o, const float* __restrict__ lse,
                                                  const int* __restrict__ k0, const int* __restrict__ nk,
                                                  float* __restrict__ dq, float* __restrict__ dk,
                                                  float* __restrict__ dv, int heads, int c, float scale) {
    const int r = blockIdx.x, h = blockIdx.y, w = heads * c;
    const long at = (long)r * w + h * c;
    const float* qr = q + at;
    const float* dor = d_o + at;
    const int first = k0[r], count = nk[r];
    const float l = lse[(long)r * heads + h];
    // D = Σ_i dO_i · O_i
    float part = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) part += dor[i] * o[at + i];
    const float big_d = block_sum(part);
    __shared__ float dqs[MAX_HEAD_DIM];
    for (int i = threadIdx.x; i < c; i += blockDim.x) dqs[i] = 0.0f;
    __syncthreads();
    for (int j = threadIdx.x; j < count; j += blockDim.x) {
        const long kr = (long)(first + j) * w + h * c;
        const float p = expf(scale * dot(qr, k + kr, c) - l);
        const float dp = dot(dor, v + kr, c);
        const float ds = p * (dp - big_d) * scale;
        for (int i = 0; i < c; ++i) {
            atomicAdd(&dqs[i], ds * k[kr + i]);
            atomicAdd(&dk[kr + i], ds * qr[i]);
            atomicAdd(&dv[kr + i], p * dor[i]);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < c; i += blockDim.x) dq[at + i] = dqs[i];
}
