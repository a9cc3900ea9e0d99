// Data movement and small reductions the model needs between the real kernels (twins: the helpers of
// trainer/src/model/{forward,backward}.rs). Grid-stride loops; reductions run in a fixed order
// (common.cuh's two-stage column sums, one thread per output elsewhere), so results are bitwise
// reproducible (no atomics).

#include "common.cuh"

#define GRID_STRIDE(i, total) \
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (total); i += (long)gridDim.x * blockDim.x)

// dst [N, C] = part j of src [N, k·C] (+ bias [C] when given).
extern "C" __global__ void take_part_f32(const float* __restrict__ src, const float* __restrict__ bias,
                                         float* __restrict__ dst, long n, int k, int j, int c) {
    GRID_STRIDE(i, n * c) {
        const long r = i / c;
        const int col = i % c;
        dst[i] = src[(r * k + j) * c + col] + (bias ? bias[col] : 0.0f);
    }
}

// Part j of dst [N, k·C] = src [N, C].
extern "C" __global__ void put_part_f32(const float* __restrict__ src, float* __restrict__ dst, long n, int k, int j,
                                        int c) {
    GRID_STRIDE(i, n * c) {
        const long r = i / c;
        dst[(r * k + j) * c + i % c] = src[i];
    }
}

// dst += src.
extern "C" __global__ void add_f32(float* __restrict__ dst, const float* __restrict__ src, long n) {
    GRID_STRIDE(i, n) { dst[i] += src[i]; }
}

// out = a + b (a residual and a branch's gradient: one pass instead of a copy and an add).
extern "C" __global__ void sum_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out,
                                   long n) {
    GRID_STRIDE(i, n) { out[i] = a[i] + b[i]; }
}

// dst [R, W] = src [R, W] + row [W].
extern "C" __global__ void add_row_f32(const float* __restrict__ src, const float* __restrict__ row,
                                       float* __restrict__ dst, long rows, int w) {
    GRID_STRIDE(i, rows * w) { dst[i] = src[i] + row[i % w]; }
}

// Stage 1 of out [C] += Σ_r src[r·stride + col] over r < rows (stride ≥ C: columns of strided rows).
extern "C" __global__ void col_partials_f32(const float* __restrict__ src, long rows, int c, long stride,
                                            float* __restrict__ partial) {
    column_partials([=](long r, int col) { return src[r * stride + col]; }, rows, c, partial);
}

// The same over bf16 values (a bf16-only activation's gradient), summed in f32.
extern "C" __global__ void col_partials_bf16(const unsigned short* __restrict__ src, long rows, int c, long stride,
                                             float* __restrict__ partial) {
    column_partials([=](long r, int col) { return __uint_as_float((unsigned)src[r * stride + col] << 16); }, rows, c,
                    partial);
}

// Stage 2 of every column reduction: out[col] += Σ_k partial[k·C + col], chunks in order.
extern "C" __global__ void finish_columns_f32(const float* __restrict__ partial, int chunks, int c,
                                              float* __restrict__ out) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) s += partial[(long)k * c + col];
    out[col] += s;
}

// Per-sample parameter gradients of the AdaLN ops, out[g·ostride + col] += Σ_{t<L} a[g, t, col]·b[g, t, col]
// (b null: Σ a) for a, b [G, L, C], in common.cuh's two fixed-order stages: stage 1 here, grid
// (ceil(C / 32), G·chunks) with `chunks` 64-row chunks per sample; stage 2 finish_groups_f32.
// With mean and rstd (a LayerNorm's statistics, [rows]), b is that LayerNorm's input and the factor is
// its output x̂ = (b − mean)·rstd, recomputed as the forward computed it instead of kept.
extern "C" __global__ void group_dot_partials_f32(const float* __restrict__ a, const float* __restrict__ b,
                                                  const float* __restrict__ mean, const float* __restrict__ rstd,
                                                  int l, int c, int chunks, float* __restrict__ partial) {
    const long g = blockIdx.y / chunks, k = blockIdx.y % chunks;
    const long r0 = g * l + k * COL_CHUNK;
    const long r1 = r0 + COL_CHUNK < (g + 1) * l ? r0 + COL_CHUNK : (g + 1) * l;
    column_partials_range(
        [=](long r, int col) {
            if (!b) return a[r * c + col];
            const float f = mean ? (b[r * c + col] - mean[r]) * rstd[r] : b[r * c + col];
            return a[r * c + col] * f;
        },
        r0, r1, c, partial + (long)blockIdx.y * c);
}

// Stage 2: out[g·ostride + col] += Σ_k partial[(g·chunks + k)·C + col]; grid (ceil(C / 256), G).
extern "C" __global__ void finish_groups_f32(const float* __restrict__ partial, int chunks, int c,
                                             float* __restrict__ out, int ostride) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    const long g = blockIdx.y;
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) s += partial[(g * chunks + k) * c + col];
    out[g * ostride + col] += s;
}

// Input tokens: x[b, 0] = cond[b] + pos_start, x[b, 1..L] = word embeddings we [B, L − 1, C].
extern "C" __global__ void assemble_tokens_f32(const float* __restrict__ cond, const float* __restrict__ pos_start,
                                               const float* __restrict__ we, float* __restrict__ x, int b, int l,
                                               int c) {
    GRID_STRIDE(i, (long)b * l * c) {
        const int col = i % c;
        const long t = (i / c) % l, s = i / ((long)l * c);
        x[i] = t == 0 ? cond[s * c + col] + pos_start[col] : we[(s * (l - 1) + t - 1) * c + col];
    }
}

// Backward of assemble_tokens: dcond [B, C] += dx[b, 0]; dwe [B, L − 1, C] = dx[b, 1..L]. (pos_start's
// gradient is col_sum over the start rows.)
extern "C" __global__ void split_tokens_f32(const float* __restrict__ dx, float* __restrict__ dcond,
                                            float* __restrict__ dwe, int b, int l, int c) {
    GRID_STRIDE(i, (long)b * l * c) {
        const int col = i % c;
        const long t = (i / c) % l, s = i / ((long)l * c);
        if (t == 0) dcond[s * c + col] += dx[i];
        else dwe[(s * (l - 1) + t - 1) * c + col] = dx[i];
    }
}

// Cosine-attention logit gain per head: gain = exp(min(scale_mul, ln 100)).
extern "C" __global__ void attn_gain_f32(const float* __restrict__ scale_mul, float* __restrict__ gain, int h) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < h) gain[i] = expf(fminf(scale_mul[i], logf(100.0f)));
}

// dscale_mul += dgain·gain where scale_mul ≤ ln 100 (the clamp passes no gradient above it).
extern "C" __global__ void attn_gain_backward_f32(const float* __restrict__ scale_mul, const float* __restrict__ gain,
                                                  const float* __restrict__ dgain, float* __restrict__ dscale_mul,
                                                  int h) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < h && scale_mul[i] <= logf(100.0f)) dscale_mul[i] += dgain[i] * gain[i];
}

// dst[i] += src[first·C + i] for i < count·C: rows first..first + count of src onto dst's first
// `count` rows (cfg_uncond's gradient from a dropped caption: its text tokens' rows, onto the first
// rows of cfg_uncond).
extern "C" __global__ void add_rows_at_f32(const float* __restrict__ src, float* __restrict__ dst, long first,
                                           long count, int c) {
    GRID_STRIDE(i, count * c) { dst[i] += src[first * c + i]; }
}

// bf16 copy of x (common.cuh's bf16_bits): the inputs of bf16 GEMMs. Four values per thread (one
// 16-byte load, one 8-byte store) where x and y are aligned for it, one at a time otherwise.

extern "C" __global__ void to_bf16(const float* __restrict__ x, unsigned short* __restrict__ y, long n) {
    const bool vec = ((unsigned long long)x & 15) == 0 && ((unsigned long long)y & 7) == 0;
    const long quads = vec ? n / 4 : 0;
    GRID_STRIDE(i, quads) {
        const float4 v = reinterpret_cast<const float4*>(x)[i];
        const unsigned long long lo = bf16_bits(v.x) | ((unsigned long long)bf16_bits(v.y) << 16);
        const unsigned long long hi = bf16_bits(v.z) | ((unsigned long long)bf16_bits(v.w) << 16);
        reinterpret_cast<unsigned long long*>(y)[i] = lo | (hi << 32);
    }
    GRID_STRIDE(i, n - 4 * quads) { y[4 * quads + i] = bf16_bits(x[4 * quads + i]); }
}
