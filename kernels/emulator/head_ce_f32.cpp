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
    // head_ce.rs's launch_config: TOK tokens per 256-thread block; W, h and logit tiles in shared memory
    const size_t floats = (size_t)2 * d * (KT + 1) + TOK * KT + 2 * TOK * 2 * d;
    emu::launch({(unsigned)((n + TOK - 1) / TOK), 1, 1}, {256, 1, 1}, floats * 4, [&] {
        head_bitwise_ce_f32(h.data(), w.data(), b.data(), labels.data(), weights.data(), smoothing, n, c, d, loss.data(),
                            correct.data(), dlogits.data(), dh.data());
    });
    write_array(dir, "loss", loss);
    write_array(dir, "correct", correct);
    write_array(dir, "dlogits", dlogits);
    write_array(dir, "dh", dh);
    return 0;
}
