// Twin of kernels/src/bitwise_ce.rs: the bitwise cross-entropy of the 2·d-logit head, loss and
// dlogits in one pass.
//
// Dims: N tokens, d bits. logits [N, 2d] (bit j: logit 2j is class 0, 2j+1 class 1), labels [N, d]
// (0/1), weights [N] (mean over samples and per-scale reweighting, from the caller).
// Per bit CE with label smoothing ls over 2 classes; a token's loss is the mean over its bits.
// One block per token, threads over bits; the block sums the loss and the correct bits.
#include "common.cuh"

extern "C" __global__ void bitwise_ce_f32(
    const float* __restrict__ logits,        // [N, 2d]
    const unsigned char* __restrict__ labels,  // [N, d]
    const float* __restrict__ weights,       // [N]
    float label_smoothing,
    int n, int d,
    float* __restrict__ token_loss,          // [N] mean CE over the token's bits
    unsigned int* __restrict__ correct,      // [N] bits predicted right (argmax, ties -> class 0)
    float* __restrict__ dlogits)             // [N, 2d] or null: d loss / d logits
{
    const int t = blockIdx.x;
    if (t >= n) return;
    const float q_hit = 1.0f - 0.5f * label_smoothing, q_miss = 0.5f * label_smoothing;
    const float scale = weights[t] / (float)d;
    const float* z = logits + (size_t)t * 2 * d;
    const unsigned char* y = labels + (size_t)t * d;
    float sum = 0.0f;
    unsigned int hits = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const BitCe b = bit_ce(z[2 * j], z[2 * j + 1], y[j], q_hit, q_miss);
        sum += b.loss;
        hits += b.hit;
        if (dlogits) {
            float* g = dlogits + (size_t)t * 2 * d;
            g[2 * j] = scale * b.g0;
            g[2 * j + 1] = scale * b.g1;
        }
    }
    sum = block_sum(sum);
    hits = block_sum(hits);
    if (threadIdx.x == 0) {
        token_loss[t] = sum / (float)d;
        correct[t] = hits;
    }
}
