// norm.cu's modulated LayerNorm, forward (f32 and bf16 out) and backward, and its affine LayerNorm
// forward, on the emulator, with device.rs's per_row launch shape (`rows`) or layers.rs's rows4 one
// (`rows4 K BLOCK`: the row-in-registers kernels with K float4 per thread, BLOCK threads per row).
//   norm DIR B L C rows | norm DIR B L C rows4 K BLOCK
// reads DIR/{dy,x,scale,shift,mean,rstd,dres}.bin (f32; dy, x, dres [B·L, C], scale, shift [B, C],
// mean, rstd [B·L]); writes DIR/{y,mean_out,rstd_out}.bin (f32 forward, eps 1e-6) and DIR/y16.bin
// (the bf16 forward's bits), DIR/dx.bin (backward with the residual's gradient) and DIR/dx0.bin
// (dres null); and the affine LayerNorm of x with DIR/{lw,lb}.bin ([C]): DIR/ln.bin (f32) and
// DIR/ln16.bin (the bf16 variant's bits).
#include <algorithm>
#include <string>

#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    const bool rows4 = argc == 8 && std::string(argv[5]) == "rows4";
    if (!rows4 && !(argc == 6 && std::string(argv[5]) == "rows")) {
        fprintf(stderr, "usage: %s DIR B L C rows | %s DIR B L C rows4 K BLOCK\n", argv[0], argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const int b = atoi(argv[2]), l = atoi(argv[3]), c = atoi(argv[4]), n = b * l;
    auto dy = read_array<float>(dir, "dy"), x = read_array<float>(dir, "x"), scale = read_array<float>(dir, "scale");
    auto mean = read_array<float>(dir, "mean"), rstd = read_array<float>(dir, "rstd"), dres = read_array<float>(dir, "dres");
    auto shift = read_array<float>(dir, "shift");
    std::vector<float> y((size_t)n * c), mean_out(n), rstd_out(n), mean16(n), rstd16(n);
    std::vector<unsigned short> y16((size_t)n * c);
    std::vector<float> dx((size_t)n * c), dx0((size_t)n * c);
    const dim3 grid{(unsigned)n, 1, 1}, block{(unsigned)std::clamp((c + 31) / 32 * 32, 32, 1024), 1, 1};
    // the modulated kernels of the chosen shape: (backward f32, forward f32, forward bf16)
    // the kernels of the chosen shape: modulated backward, forward (f32, bf16), affine forward (f32, bf16)
    auto backward = modulated_layernorm_backward_f32;
    auto forward = modulated_layernorm_forward_f32;
    auto forward16 = modulated_layernorm_forward_bf16;
    auto ln_forward = layernorm_forward_f32;
    auto ln_forward16 = layernorm_forward_bf16;
    dim3 mod_block = block;
#define ROWS4_KERNELS(K)                                                                                   \
    backward = modulated_layernorm_backward4_f32_k##K, forward = modulated_layernorm_forward4_f32_k##K,    \
    forward16 = modulated_layernorm_forward4_bf16_k##K, ln_forward = layernorm_forward4_f32_k##K,           \
    ln_forward16 = layernorm_forward4_bf16_k##K
    if (rows4) {
        const int k = atoi(argv[6]);
        mod_block = {(unsigned)atoi(argv[7]), 1, 1};
        if (k == 1) ROWS4_KERNELS(1);
        else if (k == 2) ROWS4_KERNELS(2);
        else ROWS4_KERNELS(4);
    }
    emu::launch(grid, mod_block, 0, [&] {
        backward(dy.data(), x.data(), scale.data(), mean.data(), rstd.data(), dres.data(), dx.data(), n, l, c, c);
    });
    emu::launch(grid, mod_block, 0, [&] {
        backward(dy.data(), x.data(), scale.data(), mean.data(), rstd.data(), nullptr, dx0.data(), n, l, c, c);
    });
    emu::launch(grid, mod_block, 0, [&] {
        forward(x.data(), scale.data(), shift.data(), y.data(), mean_out.data(), rstd_out.data(), n, l, c, c, 1e-6f);
    });
    emu::launch(grid, mod_block, 0, [&] {
        forward16(x.data(), scale.data(), shift.data(), y16.data(), mean16.data(), rstd16.data(), n, l, c, c, 1e-6f);
    });
    if (mean16 != mean_out || rstd16 != rstd_out) {
        fprintf(stderr, "the bf16 forward's statistics differ from the f32 forward's\n");
        return 1;
    }
    auto lw = read_array<float>(dir, "lw"), lb = read_array<float>(dir, "lb");
    std::vector<float> ln((size_t)n * c), ln_mean(n), ln_rstd(n);
    std::vector<unsigned short> ln16((size_t)n * c);
    emu::launch(grid, mod_block, 0, [&] {
        ln_forward(x.data(), lw.data(), lb.data(), ln.data(), ln_mean.data(), ln_rstd.data(), n, c, 1e-6f);
    });
    emu::launch(grid, mod_block, 0, [&] {
        ln_forward16(x.data(), lw.data(), lb.data(), ln16.data(), ln_mean.data(), ln_rstd.data(), n, c, 1e-6f);
    });
    write_array(dir, "ln", ln);
    write_array(dir, "ln16", ln16);
    write_array(dir, "y", y);
    write_array(dir, "y16", y16);
    write_array(dir, "mean_out", mean_out);
    write_array(dir, "rstd_out", rstd_out);
    write_array(dir, "dx", dx);
    write_array(dir, "dx0", dx0);
    return 0;
}
