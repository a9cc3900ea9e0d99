// Bias pieces of the linear layer (the matmuls go through cuBLAS; twin: kernels/src/linear.rs).
// y [N, out] gets b [out] on every row (db is util.cu's column sum of dy).

extern "C" __global__ void bias_rows_f32(float* __restrict__ y, const float* __restrict__ b, int n, int out) {
    const long total = (long)n * out;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        y[i] = b[i % out];
    }
}

