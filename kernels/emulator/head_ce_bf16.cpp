// head_ce_bf16.cu (W's bf16 fragment packings, then the fused head + bitwise CE) on the emulator, launched as
// kernels/src/cuda/head_ce.rs launches it.
//   head_ce_bf16 DIR N C D LABEL_SMOOTHING SMEM [h16]
// (SMEM: the kernel's shared memory bytes from head_ce.rs's head_bf16_smem_bytes, passed in so the
// host's formula is what runs; h16: h rounded to bf16 here and read by the `_h16` entry point) reads DIR/{h,w,b,weights}.bin (f32) and DIR/labels.bin (u8 [N, D]); writes DIR/{loss,dlogits,dh}.bin
// (f32) and DIR/correct.bin (u32).
#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: %s DIR N C D LABEL_SMOOTHING SMEM [h16]\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const int n = atoi(argv[2]), c = atoi(argv[3]), d = atoi(argv[4]), td = 2 * d;
    const float smoothing = (float)atof(argv[5]);
    auto h = read_array<float>(dir, "h"), w = read_array<float>(dir, "w"), b = read_array<float>(dir, "b");
    auto weights = read_array<float>(dir, "weights");
    auto labels = read_array<unsigned char>(dir, "labels");
    const bool h16 = argc == 8 && std::string(argv[7]) == "h16";
    std::vector<bf16> h_bf16(h.size());
    for (size_t i = 0; i < h.size(); ++i) h_bf16[i] = to_bf16(h[i]);
    std::vector<uint2> wl(td * c / 4), wd(td * c / 4);  // W's fragment packings
    std::vector<float> loss(n), dlogits((size_t)n * td), dh((size_t)n * c);
    std::vector<unsigned> correct(n);
    emu::launch({1, 1, 1}, {256, 1, 1}, 0, [&] { head_weight_bf16(w.data(), wl.data(), wd.data(), td, c); });
    const size_t bytes = (size_t)atol(argv[6]);
    const dim3 grid{(unsigned)((n + 31) / 32), 1, 1}, block{128, 1, 1};
#define RUN(TD)                                                                                                 \
    case TD:                                                                                                    \
        emu::launch(grid, block, bytes, [&] {                                                                   \
            if (h16)                                                                                            \
                head_bitwise_ce_bf16_h16_td##TD(h_bf16.data(), wl.data(), wd.data(), b.data(), labels.data(),  \
                                                weights.data(), smoothing, n, c, loss.data(), correct.data(),  \
                                                dlogits.data(), dh.data());                                    \
            else                                                                                                \
                head_bitwise_ce_bf16_td##TD(h.data(), wl.data(), wd.data(), b.data(), labels.data(),           \
                                            weights.data(), smoothing, n, c, loss.data(), correct.data(),      \
                                            dlogits.data(), dh.data());                                        \
        });                                                                                                     \
        break;
    switch (td) {
        RUN(16)
        RUN(32)
        RUN(64)
        RUN(128)
        default:
            fprintf(stderr, "2d = %d: the kernels take 16, 32, 64 or 128\n", td);
            return 2;
    }
    write_array(dir, "loss", loss);
    write_array(dir, "correct", correct);
    write_array(dir, "dlogits", dlogits);
    write_array(dir, "dh", dh);
    return 0;
}
