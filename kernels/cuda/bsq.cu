// Twins of kernels/src/bsq.rs and kernels/src/resample.rs: the pieces of multi-scale BSQ with bitwise
// self-correction, for a whole batch on the device. Every buffer is channel-major per sample:
// [B, C, H, W] for maps, token-major [B, n, d] for bits (n = h·w).
//
// Resampling has PyTorch's exact semantics (area = adaptive average pooling, summed in row-major order
// in f32 then divided by the window height and width; bilinear with align_corners=False, the width axis
// interpolated first), so bits agree with the CPU twin except where a residual is within rounding of 0.

// Area resize src [B, C, sh, sw] -> dst [B, C, dh, dw]; one thread per output value.
extern "C" __global__ void area_resize_f32(const float* __restrict__ src, float* __restrict__ dst,
                                           int bc, int sh, int sw, int dh, int dw) {
    const long total = (long)bc * dh * dw;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int x = i % dw, y = (i / dw) % dh;
        const long ch = i / ((long)dw * dh);
        const int y0 = (y * sh) / dh, y1 = ((y + 1) * sh + dh - 1) / dh;
        const int x0 = (x * sw) / dw, x1 = ((x + 1) * sw + dw - 1) / dw;
        const float* s = src + ch * sh * sw;
        float sum = 0.0f;
        for (int r = y0; r < y1; ++r)
            for (int c = x0; c < x1; ++c) sum += s[r * sw + c];
        dst[i] = sum / (float)(y1 - y0) / (float)(x1 - x0);
    }
}

struct Tap { int i0, i1; float w0, w1; };

__device__ __forceinline__ Tap linear_tap(int src, int dst, int o) {
    const float scale = (float)src / (float)dst;
    const float real = fmaxf(scale * ((float)o + 0.5f) - 0.5f, 0.0f);
    const int i0 = min((int)floorf(real), src - 1);
    const float lambda = fminf(fmaxf(real - (float)i0, 0.0f), 1.0f);
    Tap t;
    t.i0 = i0;
    t.i1 = i0 < src - 1 ? i0 + 1 : i0;
    t.w0 = 1.0f - lambda;
    t.w1 = lambda;
    return t;
}

// Bilinear resize src [B, C, sh, sw] -> dst [B, C, dh, dw]; `accumulate` adds into dst.
extern "C" __global__ void bilinear_resize_f32(const float* __restrict__ src, float* __restrict__ dst,
                                               int bc, int sh, int sw, int dh, int dw, int accumulate) {
    const long total = (long)bc * dh * dw;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int x = i % dw, y = (i / dw) % dh;
        const long ch = i / ((long)dw * dh);
        const float* s = src + ch * sh * sw;
        float v;
        if (sh == dh && sw == dw) {
            v = s[y * sw + x];
        } else {
            const Tap ty = linear_tap(sh, dh, y), tx = linear_tap(sw, dw, x);
            const float top = s[ty.i0 * sw + tx.i0] * tx.w0 + s[ty.i0 * sw + tx.i1] * tx.w1;
            const float bottom = s[ty.i1 * sw + tx.i0] * tx.w0 + s[ty.i1 * sw + tx.i1] * tx.w1;
            v = top * ty.w0 + bottom * ty.w1;
        }
        dst[i] = accumulate ? dst[i] + v : v;
    }
}

// Sign quantisation with optional flips: r [B, d, n] -> bits [B, n, d] (the clean signs: labels) and
// codes q [B, d, n] = ±1/√d of the (possibly flipped) bits, which feed the next scale.
extern "C" __global__ void quantize_f32(const float* __restrict__ r, const unsigned char* __restrict__ flips,
                                        unsigned char* __restrict__ bits, float* __restrict__ q,
                                        int b, int d, int n) {
    const float m = rsqrtf((float)d);
    const long total = (long)b * d * n;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int t = i % n, c = (i / n) % d;
        const long s = i / ((long)n * d);
        const int bit = r[i] > 0.0f ? 1 : 0;
        const long at = (s * n + t) * d + c;
        bits[at] = (unsigned char)bit;
        const int used = flips ? bit ^ (flips[at] & 1) : bit;
        q[i] = used ? m : -m;
    }
}
