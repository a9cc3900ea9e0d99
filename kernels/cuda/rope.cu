// Twin of kernels/src/rope.rs: 2-D RoPE applied in place to x [B·L, H·c] with a precomputed table
// (cos, sin: [T, P], P = c/2 pairs; token t of a row uses table row offset + t % L). `inverse` rotates by
// −angle: the backward of the forward rotation. One thread per rotated pair.

extern "C" __global__ void rope_apply_f32(float* __restrict__ x, const float* __restrict__ cos_t,
                                          const float* __restrict__ sin_t, int rows, int l, int heads,
                                          int pairs, int offset, int inverse) {
    const long total = (long)rows * heads * pairs;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int k = i % pairs;
        const long row = i / ((long)pairs * heads);
        const int t = offset + (int)(row % l);
        const float co = cos_t[(long)t * pairs + k];
        const float s = inverse ? -sin_t[(long)t * pairs + k] : sin_t[(long)t * pairs + k];
        float* p = x + 2 * i;  // pairs are contiguous: (row, head, k) → 2·i
        const float a = p[0], b = p[1];
        p[0] = co * a - s * b;
        p[1] = s * a + co * b;
    }
}
