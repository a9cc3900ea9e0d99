// Twin of kernels/src/embedding.rs: rows of a table [V, C] by index, and the backward. The backward
// uses no atomics (bitwise reproducible): one thread per table entry summing the items that use its
// row in order (the classes: a large table, a batch of items), or, for a small table over many items
// (the levels: 15 rows, every token), partial sums per chunk of items and then over the chunks in order.

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

// The most table rows the partial sums keep in registers (the level embedding's 15 scales fit); equal
// to SMALL_VOCAB in kernels/src/cuda/layers.rs, which picks this path.
#define SMALL_VOCAB 16

// partial [chunks, vocab, C]: the sums over chunk k's `chunk_rows` rows of dout for each table row.
// Grid (columns / block, chunks); a thread walks its column down the chunk.
extern "C" __global__ void embedding_backward_partial_f32(const float* __restrict__ dout,
                                                          const int* __restrict__ idx,
                                                          float* __restrict__ partial, int n, int vocab, int c,
                                                          int chunk_rows) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    float acc[SMALL_VOCAB];
#pragma unroll
    for (int v = 0; v < SMALL_VOCAB; ++v) acc[v] = 0.0f;
    const long lo = (long)blockIdx.y * chunk_rows;
    const long hi = min((long)n, lo + chunk_rows);
    for (long i = lo; i < hi; ++i) {
        const int row = idx[i];
        const float g = dout[i * c + col];
        // a compare per register: indexing acc by row would put it in local memory
#pragma unroll
        for (int v = 0; v < SMALL_VOCAB; ++v)
            if (v == row) acc[v] += g;
    }
    for (int v = 0; v < vocab; ++v) partial[((long)blockIdx.y * vocab + v) * c + col] = acc[v];
}

// dtable [V, C] += Σ_k partial[k] over the chunks in order.
extern "C" __global__ void embedding_backward_reduce_f32(const float* __restrict__ partial,
                                                         float* __restrict__ dtable, int chunks, int vocab, int c) {
    const long total = (long)vocab * c;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total; e += (long)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < chunks; ++k) s += partial[k * total + e];
        dtable[e] += s;
    }
}
