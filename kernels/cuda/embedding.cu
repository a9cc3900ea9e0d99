// Twin of kernels/src/embedding.rs: rows of a table [V, C] by index, and the scatter-add backward.

extern "C" __global__ void embedding_forward_f32(const float* __restrict__ table, const int* __restrict__ idx,
                                                 float* __restrict__ out, int n, int c, int accumulate) {
    const long total = (long)n * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const float v = table[(long)idx[i / c] * c + i % c];
        out[i] = accumulate ? out[i] + v : v;
    }
}

extern "C" __global__ void embedding_backward_f32(const float* __restrict__ dout, const int* __restrict__ idx,
                                                  float* __restrict__ dtable, int n, int c) {
    const long total = (long)n * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        atomicAdd(&dtable[(long)idx[i / c] * c + i % c], dout[i]);
    }
}
