// bsq.cu's multi-scale BSQ with keyed self-correction for a batch on the emulator, launched as
// kernels/src/cuda/bsq.rs's self_correct_batch launches it (same kernels, order and launch shapes):
// PATH `planes` is the one-launch kernel with SMEM bytes of dynamic shared memory (bsq.rs's
// planes_smem_bytes, passed in so the host's formula is what runs), `scales` the two launches per scale.
//   bsq DIR B D P_MAX APPLY_LAYERS SCALES planes SMEM | scales      (SCALES like 1x1,2x2,4x4)
// reads DIR/latent.bin (f32 [B, d, H, W]) and DIR/keys.bin (u64 [B]); writes DIR/gt_bits.bin
// (u8 [B, L, d]) and DIR/x_wo_prefix.bin (f32 [B, L − n0, d]).
#include <algorithm>
#include <cmath>
#include <utility>

#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

// device.rs's elementwise(): 256-thread blocks covering n, at most 65 535 of them (grid-stride).
static dim3 elementwise(long n) { return {(unsigned)std::clamp((n + 255) / 256, 1L, 65535L), 1, 1}; }

int main(int argc, char** argv) {
    const bool planes = argc == 9 && std::string(argv[7]) == "planes";
    if (!planes && !(argc == 8 && std::string(argv[7]) == "scales")) {
        fprintf(stderr, "usage: %s DIR B D P_MAX APPLY_LAYERS SCALES planes SMEM | scales\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const int b = atoi(argv[2]), d = atoi(argv[3]), layers = atoi(argv[5]);
    const double p_max = atof(argv[4]);
    std::vector<std::pair<int, int>> scales;
    for (const char* p = argv[6]; *p;) {
        int h = 0, w = 0, used = 0;
        if (sscanf(p, "%dx%d%n", &h, &w, &used) != 2) {
            fprintf(stderr, "scales: expected HxW,HxW,… at `%s`\n", p);
            return 2;
        }
        scales.push_back({h, w});
        p += used;
        if (*p == ',') ++p;
    }
    const auto [hh, ww] = scales.back();
    const int n0 = scales[0].first * scales[0].second;
    int l = 0;
    for (auto [h, w] : scales) l += h * w;
    const long full = (long)b * d * hh * ww;
    auto latent = read_array<float>(dir, "latent");
    auto keys = read_array<unsigned long long>(dir, "keys");
    // scratch starts as NaN (as stale device memory may be): a read of a sum or code never written shows
    const float nan = std::nanf("");
    std::vector<float> sums[2] = {std::vector<float>(full, nan), std::vector<float>(full, nan)};
    std::vector<float> codes[2] = {std::vector<float>(full, nan), std::vector<float>(full, nan)};
    std::vector<float> x((size_t)b * (l - n0) * d);
    std::vector<unsigned char> gt((size_t)b * l * d);
    const int kmax_all = (int)std::lround(100.0 * p_max);
    const dim3 block{256, 1, 1};
    if (planes) {  // bsq.rs planes()
        std::vector<int> sched;
        int qmax = 0, umax = 0;
        for (size_t i = 0; i < scales.size(); ++i) {
            sched.push_back(scales[i].first);
            sched.push_back(scales[i].second);
            if (i + 1 < scales.size()) {
                qmax = std::max(qmax, scales[i].first * scales[i].second);
                umax = std::max(umax, scales[i].first);
            }
        }
        const size_t smem = (size_t)atol(argv[8]);
        emu::launch({(unsigned)std::min(b * d, 65535), 1, 1}, block, smem, [&] {
            self_correct_planes_f32(latent.data(), sched.data(), (int)scales.size(), b * d, hh, ww, qmax, umax, keys.data(),
                                    kmax_all, layers, gt.data(), l, x.data(), d);
        });
        write_array(dir, "gt_bits", gt);
        write_array(dir, "x_wo_prefix", x);
        return 0;
    }
    int tok0 = 0;
    for (int si = 0; si < (int)scales.size(); ++si) {
        const auto [h, w] = scales[si];
        const int n = h * w, kmax = si < layers ? kmax_all : 0;
        const long outs = (long)b * d * n;
        // S_s and q_s into slot `cur`, S_{s−1} and q_{s−1} from the other (none before scales 2 and 1)
        const int cur = si % 2, prev = (si + 1) % 2;
        const auto [ph, pw] = si > 0 ? scales[si - 1] : std::pair<int, int>{1, 1};
        const float* old = si >= 2 ? sums[prev].data() : nullptr;
        const float* prev_codes = si >= 1 ? codes[prev].data() : nullptr;
        float *out = sums[cur].data(), *q = codes[cur].data();
        const auto* k = keys.data();
        // a thread, a warp or a block per output value, by the size of its window
        const int window = ((hh + h - 1) / h) * ((ww + w - 1) / w);
        if (window < 16)
            emu::launch(elementwise(outs), block, 0, [&] {
                residual_codes_f32(latent.data(), old, prev_codes, out, ph, pw, b * d, hh, ww, h, w, k, si, kmax,
                                   gt.data(), l, tok0, q, d);
            });
        else if (window < 1024)
            emu::launch(elementwise(32 * outs), block, 0, [&] {
                residual_codes_warp_f32(latent.data(), old, prev_codes, out, ph, pw, b * d, hh, ww, h, w, k, si,
                                        kmax, gt.data(), l, tok0, q, d);
            });
        else
            emu::launch({(unsigned)std::min(outs, 65535L), 1, 1}, block, 0, [&] {
                residual_codes_block_f32(latent.data(), old, prev_codes, out, ph, pw, b * d, hh, ww, h, w, k, si,
                                         kmax, gt.data(), l, tok0, q, d);
            });
        if (si > 0)
            emu::launch(elementwise((long)b * n * d), block, 0, [&] {
                to_tokens_f32(out, x.data(), b, d, hh, ww, h, w, l - n0, tok0 - n0);
            });
        tok0 += n;
    }
    write_array(dir, "gt_bits", gt);
    write_array(dir, "x_wo_prefix", x);
    return 0;
}
