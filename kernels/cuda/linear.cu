// Bias pieces of the linear layer (the matmuls go through cuBLAS; twin: kernels/src/linear.rs).
// y [N, out] gets b [out] on every row; db [out] += Σ_rows dy.

extern "C" __global__ void bias_rows_f32(float* __restrict__ y, const float* __restrict__ b, int n, int out) {
    const long total = (long)n * out;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        y[i] = b[i % out];
    }
}

// One thread per output feature, summing its column (coalesced across threads).
extern "C" __global__ void bias_grad_f32(const float* __restrict__ dy, float* __restrict__ db, int n, int out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out) return;
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += dy[(long)i * out + j];
    db[j] += s;
}
