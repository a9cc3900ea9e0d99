// Twin of kernels/src/embedding.rs: rows of a table [V, C] by index, and the backward. The backward
// runs one thread per table entry summing the items that use its row in order (no atomics: bitwise
// reproducible; the tables here are small: the classes, the levels).

extern "C" __global__ void embedding_forward_f32(const float* __restrict__ table, const int* __restrict__ idx,
                                                 float* __restrict__ out, int n, int c, int accumulate) {
    const long total = (long)n * c;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const float v = table[(long)idx[i / c] * c + i % c];
        out[i] = accumulate ? out[i] + v : v;
    }
}

// dtable [V, C] += Σ_{i: idx[i] = v} dout[i].
extern "C" __global__ void embedding_backward_f32(const float* __restrict__ dout, const int* __restrict__ idx,
                                                  float* __restrict__ dtable, int n, int vocab, int c) {
    const long total = (long)vocab * c;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total; e += (long)gridDim.x * blockDim.x) {
        const int v = e / c, col = e % c;
        float s = 0.0f;
        for (int i = 0; i < n; ++i)
            if (idx[i] == v) s += dout[(long)i * c + col];
        dtable[e] += s;
    }
}
