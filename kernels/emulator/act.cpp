// act.cu's fused bias + GELU and the GELU's backward (f32, and bf16 alone) on the emulator, with
// device.rs's elementwise launch shape.
//   act DIR N COLS
// reads DIR/{f,b,dy}.bin (f32: f, dy [N·COLS], b [COLS]). Writes, from the f32 kernels: DIR/f_out.bin
// (f + b), DIR/g.bin (the GELU), DIR/dx.bin (dy · gelu'(f + b)); from the bf16 ones: DIR/x16.bin
// (f + b), DIR/g16.bin and DIR/dx16.bin (bits); and the f32 kernels run on the widened x16:
// DIR/gw.bin and DIR/dxw.bin (what the bf16 outputs must be the rounding of).
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
    auto f = read_array<float>(dir, "f"), b = read_array<float>(dir, "b"), dy = read_array<float>(dir, "dy");
    const auto f_in = f;  // the f32 variant adds the bias in place
    std::vector<float> g(n), dx(n), xw(n), gw(n), dxw(n);
    std::vector<unsigned short> x16(n), g16(n), dx16(n);
    const dim3 grid{(unsigned)std::clamp((n + 255) / 256, 1L, 65535L), 1, 1}, block{256, 1, 1};
    emu::launch(grid, block, 0, [&] { bias_gelu_forward_f32(f.data(), b.data(), g.data(), n, cols); });
    emu::launch(grid, block, 0, [&] { gelu_backward_f32(dy.data(), f.data(), dx.data(), n); });
    emu::launch(grid, block, 0, [&] { bias_gelu_forward_bf16(f_in.data(), b.data(), x16.data(), g16.data(), n, cols); });
    emu::launch(grid, block, 0, [&] { gelu_backward_bf16(dy.data(), x16.data(), dx16.data(), n); });
    for (long i = 0; i < n; ++i) {
        const unsigned bits = (unsigned)x16[i] << 16;
        memcpy(&xw[i], &bits, 4);
    }
    emu::launch(grid, block, 0, [&] { gelu_forward_f32(xw.data(), gw.data(), n); });
    emu::launch(grid, block, 0, [&] { gelu_backward_f32(dy.data(), xw.data(), dxw.data(), n); });
    write_array(dir, "f_out", f);
    write_array(dir, "g", g);
    write_array(dir, "dx", dx);
    write_array(dir, "x16", x16);
    write_array(dir, "g16", g16);
    write_array(dir, "dx16", dx16);
    write_array(dir, "gw", gw);
    write_array(dir, "dxw", dxw);
    return 0;
}
