// act.cu's fused bias + GELU and the GELU's backward (f32 and bf16 out) on the emulator, with
// device.rs's elementwise launch shape.
//   act DIR N COLS
// reads DIR/{f,b,dy}.bin (f32: f, dy [N·COLS], b [COLS]); writes DIR/f_out.bin (f + b), DIR/g.bin
// (f32 GELU) and DIR/g16.bin (its bf16 bits), DIR/dx.bin (dy · gelu'(f + b), f32) and DIR/dx16.bin
// (the bf16 variant's bits).
#include <algorithm>

#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s DIR N COLS\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const long n = atol(argv[2]);
    const int cols = atoi(argv[3]);
    auto f = read_array<float>(dir, "f"), b = read_array<float>(dir, "b");
    auto f16 = f;  // the bf16 variant adds the bias in place too
    std::vector<float> g(n);
    std::vector<unsigned short> g16(n);
    const dim3 grid{(unsigned)std::clamp((n + 255) / 256, 1L, 65535L), 1, 1}, block{256, 1, 1};
    emu::launch(grid, block, 0, [&] { bias_gelu_forward_f32(f.data(), b.data(), g.data(), n, cols); });
    emu::launch(grid, block, 0, [&] { bias_gelu_forward_bf16(f16.data(), b.data(), g16.data(), n, cols); });
    if (f16 != f) {
        fprintf(stderr, "bias_gelu_forward_bf16 left f different from bias_gelu_forward_f32\n");
        return 1;
    }
    auto dy = read_array<float>(dir, "dy");
    std::vector<float> dx(n);
    std::vector<unsigned short> dx16(n);
    emu::launch(grid, block, 0, [&] { gelu_backward_f32(dy.data(), f.data(), dx.data(), n); });
    emu::launch(grid, block, 0, [&] { gelu_backward_bf16(dy.data(), f.data(), dx16.data(), n); });
    write_array(dir, "dx", dx);
    write_array(dir, "dx16", dx16);
    write_array(dir, "f_out", f);
    write_array(dir, "g", g);
    write_array(dir, "g16", g16);
    return 0;
}
