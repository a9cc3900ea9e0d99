// Twins of kernels/src/adamw.rs: the fused AdamW update, the weights' moving average (EMA) and the
// squared global norm (for clipping).
// Scalars are precomputed per step on the host (AdamWScalars). Arithmetic in the CPU twin's order;
// compiled with --fmad=false so no multiply-add is contracted and results follow the twin to the ulp
// of sqrtf and division.
#include "common.cuh"

// p16, when not null, receives the updated parameters rounded to bf16 (util.cu's to_bf16 of p): the
// bf16 GEMMs' weights, written here instead of by a pass of their own that reads p again. The
// gradients are read times grad_scale (through f64: 1/world, the clipping coefficient), so neither
// factor takes a pass of its own. The group bytes come as runs (adamw::GroupRuns): run r starts at
// element run_start[r] and has byte run_group[r]; bit 0 = weight decay applies, the bits above index
// lr_mult, the learning-rate multipliers (μP's width groups; one multiplier, 1, without μP); each
// group's step size is taken in f64 and rounded once, as AdamWScalars::group_step_size does. A block
// takes ADAMW_CHUNK consecutive elements at a time (grid-stride over chunks), finds the run its chunk
// starts in, and walks the runs the chunk spans with each run's group fixed.
#define ADAMW_CHUNK 4096
extern "C" __global__ void adamw_f32(float* __restrict__ p, unsigned short* __restrict__ p16,
                                     const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                                     const long* __restrict__ run_start, const unsigned char* __restrict__ run_group,
                                     int n_runs, const double* __restrict__ lr_mult, int n_lr, long n,
                                     double step_size, float beta1, float beta2, float eps, float bc2_sqrt,
                                     float shrink, double grad_scale) {
    for (long lo = blockIdx.x * (long)ADAMW_CHUNK; lo < n; lo += (long)gridDim.x * ADAMW_CHUNK) {
        const long hi = lo + ADAMW_CHUNK < n ? lo + ADAMW_CHUNK : n;
        // the last run starting at or before lo (run 0 starts at 0)
        int r = 0;
        for (int span = n_runs; span > 1;) {
            const int half = span / 2;
            if (run_start[r + half] <= lo) r += half;
            span -= half;
        }
        for (; r < n_runs && run_start[r] < hi; ++r) {
            const long from = run_start[r] > lo ? run_start[r] : lo;
            const long to = r + 1 < n_runs && run_start[r + 1] < hi ? run_start[r + 1] : hi;
            const unsigned char gr = run_group[r];
            const int j = gr >> 1;  // (never past the table from optim::param_groups; clamped all the same)
            const float lr_step = (float)(step_size * lr_mult[j < n_lr ? j : n_lr - 1]);
            for (long i = from + threadIdx.x; i < to; i += blockDim.x) {
                const float gi = grad_scale == 1.0 ? g[i] : (float)((double)g[i] * grad_scale);
                float pi = p[i];
                if (gr & 1) pi *= shrink;
                const float mi = m[i] + (gi - m[i]) * (1.0f - beta1);
                const float vi = v[i] * beta2 + gi * gi * (1.0f - beta2);
                const float denom = sqrtf(vi) / bc2_sqrt + eps;
                const float pn = pi - lr_step * mi / denom;
                p[i] = pn;
                if (p16) p16[i] = bf16_bits(pn);
                m[i] = mi;
                v[i] = vi;
            }
        }
    }
}

// Twin of adamw::ema_update: the weights' moving average, ema = ema·decay + p·rest (rest = 1 − decay
// of the f32 decay, taken on the host).
extern "C" __global__ void ema_f32(float* __restrict__ ema, const float* __restrict__ p, long n, float decay,
                                   float rest) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        ema[i] = ema[i] * decay + p[i] * rest;
    }
}

// partial[block] = Σ x² over the block's grid-stride elements (f64). With sum_partials_f64 the total is
// summed in a fixed order for a given n and launch shape: bitwise reproducible (every rank of a
// data-parallel run gets the same clipping coefficient from the same gradients).
extern "C" __global__ void sum_squares_f32(const float* __restrict__ x, long n, double* __restrict__ partial) {
    double s = 0.0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const double xi = (double)x[i];
        s += xi * xi;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// out[0] = Σ partial[0..count], one block.
extern "C" __global__ void sum_partials_f64(const double* __restrict__ partial, int count, double* __restrict__ out) {
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) out[0] = s;
}
