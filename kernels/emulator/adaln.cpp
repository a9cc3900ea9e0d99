// adaln.cu's gated residual (its backward f32 and bf16 out) on the emulator, with device.rs's
// elementwise launch shape.
//   adaln DIR B L C
// reads DIR/{x,y,gamma}.bin (f32; x, y [B, L, C], gamma [B, C]); writes DIR/res.bin (f32:
// x + y·gamma), and the gated residual's dy from dres = x: DIR/dy.bin (f32) and DIR/dy16.bin (bf16 bits).
#include <algorithm>

#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DIR B L C\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const int b = atoi(argv[2]), l = atoi(argv[3]), c = atoi(argv[4]);
    auto x = read_array<float>(dir, "x"), y = read_array<float>(dir, "y"), gamma = read_array<float>(dir, "gamma");
    const long n = (long)b * l * c;
    std::vector<float> res(n);
    const dim3 grid{(unsigned)std::clamp((n + 255) / 256, 1L, 65535L), 1, 1}, block{256, 1, 1};
    emu::launch(grid, block, 0, [&] { gated_residual_forward_f32(x.data(), y.data(), gamma.data(), res.data(), b, l, c, c); });
    std::vector<float> dy(n);
    std::vector<unsigned short> dy16(n);
    emu::launch(grid, block, 0, [&] { gated_residual_backward_f32(x.data(), gamma.data(), dy.data(), b, l, c, c); });
    emu::launch(grid, block, 0, [&] { gated_residual_backward_bf16(x.data(), gamma.data(), dy16.data(), b, l, c, c); });
    write_array(dir, "dy", dy);
    write_array(dir, "dy16", dy16);
    write_array(dir, "res", res);
    return 0;
}
