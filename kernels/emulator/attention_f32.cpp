// attention.cu's f32 forward, dq and dk/dv kernels on the emulator, launched as
// kernels/src/cuda/attention.rs launches them (its `tiles`: head dims ≤ 128 and the wide ≤ 256 ones).
//   attention_f32 DIR NQ NK HEADS C SCALE
// reads and writes the files attention_bf16.cpp does (all f32).
#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s DIR NQ NK HEADS C SCALE\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const int nq = atoi(argv[2]), nk = atoi(argv[3]), heads = atoi(argv[4]), c = atoi(argv[5]);
    const float scale = (float)atof(argv[6]);
    auto q = read_array<float>(dir, "q"), k = read_array<float>(dir, "k"), v = read_array<float>(dir, "v");
    auto d_o = read_array<float>(dir, "do"), o = read_array<float>(dir, "o"), lse = read_array<float>(dir, "lse");
    auto k0 = read_array<int>(dir, "k0"), nkr = read_array<int>(dir, "nk");
    auto q0 = read_array<int>(dir, "q0"), nqk = read_array<int>(dir, "nqk");
    std::vector<float> o_out(q.size()), lse_out(lse.size()), dq(q.size()), delta(lse.size()), dk(k.size()), dv(v.size());
    // attention.rs's tiles: query rows per forward/dq block, key rows per tile; key rows per dk/dv
    // block, query rows per tile; shared memory in rows of c + 1 floats
    const bool wide = c > 128;
    const int fq = wide ? 8 : 16, fk = 32, bk = wide ? 16 : 32, bq = 32;
    const auto grid = [&](int rows, int per_block) { return dim3{(unsigned)((rows + per_block - 1) / per_block), (unsigned)heads, 1}; };
    const auto smem = [&](int rows) { return (size_t)rows * (c + 1) * 4; };
    const dim3 block{128, 1, 1};
    emu::launch(grid(nq, fq), block, smem(2 * fk + fq), [&] {
        (wide ? attention_forward_wide_f32 : attention_forward_f32)(q.data(), k.data(), v.data(), o_out.data(),
                                                                      lse_out.data(), k0.data(), nkr.data(), nq, nk,
                                                                      heads, c, scale);
    });
    emu::launch(grid(nq, fq), block, smem(2 * fk + 2 * fq), [&] {
        (wide ? attention_backward_dq_wide_f32 : attention_backward_dq_f32)(
            q.data(), k.data(), v.data(), o.data(), d_o.data(), lse.data(), k0.data(), nkr.data(), dq.data(),
            delta.data(), nq, nk, heads, c, scale);
    });
    emu::launch(grid(nk, bk), block, smem(2 * bk + 2 * bq), [&] {
        (wide ? attention_backward_dkdv_wide_f32 : attention_backward_dkdv_f32)(
            q.data(), k.data(), v.data(), d_o.data(), lse.data(), delta.data(), k0.data(), nkr.data(), q0.data(),
            nqk.data(), dk.data(), dv.data(), nq, nk, heads, c, scale);
    });
    write_array(dir, "o_out", o_out);
    write_array(dir, "lse_out", lse_out);
    write_array(dir, "dq", dq);
    write_array(dir, "delta", delta);
    write_array(dir, "dk", dk);
    write_array(dir, "dv", dv);
    return 0;
}
