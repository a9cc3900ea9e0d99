// adamw.cu on the emulator, launched as kernels/src/cuda/ops.rs launches it: the fused AdamW step, the
// squared global norm (f64 block partials, then one block summing them in order).
//   adamw DIR N GRAD_SCALE [MAX_BLOCKS]
// (GRAD_SCALE: the step's factor on g; MAX_BLOCKS: the AdamW grid's cap, 65 535 as on a GPU, fewer to
// make the blocks stride over chunks) reads DIR/{p,g,m,v}.bin (f32 [N]), DIR/run_start.bin (i64 [R])
// and DIR/run_group.bin (u8 [R]: the group bytes' runs, adamw::GroupRuns), DIR/lr_mult.bin (f64: the
// multipliers they index), DIR/scalars.bin (f32: beta1, beta2, eps, bc2_sqrt, shrink) and DIR/lr.bin (f64: step_size); writes DIR/{p,m,v}_out.bin
// (after one step), DIR/p16_out.bin (u16 [N]: the updated parameters' bf16 bits, written by the same
// step) and DIR/sumsq.bin (f64 [1]: Σ g²).
#include <algorithm>

#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s DIR N GRAD_SCALE [MAX_BLOCKS]\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const long n = atol(argv[2]);
    const double grad_scale = atof(argv[3]);
    const long max_blocks = argc == 5 ? atol(argv[4]) : 65535L;
    auto p = read_array<float>(dir, "p"), g = read_array<float>(dir, "g");
    auto m = read_array<float>(dir, "m"), v = read_array<float>(dir, "v");
    auto run_start = read_array<long>(dir, "run_start");
    auto run_group = read_array<unsigned char>(dir, "run_group");
    auto lr_mult = read_array<double>(dir, "lr_mult"), lr = read_array<double>(dir, "lr");
    auto s = read_array<float>(dir, "scalars");
    // ops.rs adamw_dev: 256-thread blocks, one per ADAMW_CHUNK elements, at most 65 535 (grid-stride beyond)
    const unsigned chunks = (unsigned)std::clamp((n + ADAMW_CHUNK - 1) / ADAMW_CHUNK, 1L, max_blocks);
    std::vector<unsigned short> p16(n, 0xffff);
    emu::launch({chunks, 1, 1}, {256, 1, 1}, 0, [&] {
        adamw_f32(p.data(), p16.data(), g.data(), m.data(), v.data(), run_start.data(), run_group.data(),
                  (int)run_group.size(), lr_mult.data(), (int)lr_mult.size(), n, lr[0], s[0], s[1], s[2], s[3],
                  s[4], grad_scale);
    });
    // device.rs elementwise(n): 256-thread blocks, at most 65 535 (grid-stride beyond)
    const unsigned blocks = (unsigned)std::clamp((n + 255) / 256, 1L, 65535L);
    std::vector<double> partial(blocks, std::nan("")), total(1, std::nan(""));
    emu::launch({blocks, 1, 1}, {256, 1, 1}, 0, [&] { sum_squares_f32(g.data(), n, partial.data()); });
    emu::launch({1, 1, 1}, {256, 1, 1}, 0, [&] { sum_partials_f64(partial.data(), (int)blocks, total.data()); });
    write_array(dir, "p_out", p);
    write_array(dir, "p16_out", p16);
    write_array(dir, "m_out", m);
    write_array(dir, "v_out", v);
    write_array(dir, "sumsq", total);
    return 0;
}
