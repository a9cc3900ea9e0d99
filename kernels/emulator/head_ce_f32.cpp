// head_ce.cu (the f32 fused head + bitwise CE) on the emulator, launched as kernels/src/cuda/head_ce.rs
// launches it. Same arguments and files as head_ce_bf16.cpp.
#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s DIR N C D LABEL_SMOOTHING\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const int n = atoi(argv[2]), c = atoi(argv[3]), d = atoi(argv[4]);
    const float smoothing = (float)atof(argv[5]);
    auto h = read_array<float>(dir, "h"), w = read_array<float>(dir, "w"), b = read_array<float>(dir, "b");
    auto weights = read_array<float>(dir, "weights");
    auto labels = read_array<unsigned char>(dir, "labels");
    std::vector<float> loss(n), dlogits((size_t)n * 2 * d), dh((size_t)n * c);
    std::vector<unsigned> correct(n);
    // head_ce.rs's launch: TOK tokens per 256-thread block, the kernel for 2d rounded up to 32 logits,
    // its work area and the dlogits [lp][TOK + 4] in shared memory
    const int lp = (2 * d + 31) / 32 * 32;
    const size_t bytes = 4 * ((size_t)work_floats(lp) + (size_t)lp * (TOK + 4));
    const dim3 grid{(unsigned)((n + TOK - 1) / TOK), 1, 1};
#define RUN(LP)                                                                                                   \
    case LP:                                                                                                      \
        emu::launch(grid, {256, 1, 1}, bytes, [&] {                                                               \
            head_bitwise_ce_f32_l##LP(h.data(), w.data(), b.data(), labels.data(), weights.data(), smoothing, n, c, d, \
                                      loss.data(), correct.data(), dlogits.data(), dh.data());                    \
        });                                                                                                       \
        break;
    switch (lp) {
        RUN(32)
        RUN(64)
        RUN(96)
        RUN(128)
        default:
            fprintf(stderr, "d = %d: the kernels take 2d ≤ 128 logits\n", d);
            return 2;
    }
    write_array(dir, "loss", loss);
    write_array(dir, "correct", correct);
    write_array(dir, "dlogits", dlogits);
    write_array(dir, "dh", dh);
    return 0;
}
