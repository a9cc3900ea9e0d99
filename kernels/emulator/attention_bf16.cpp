// attention_bf16.cu's forward, dq and dk/dv kernels on the emulator, launched as
// kernels/src/cuda/attention.rs launches them.
//   attention_bf16 DIR NQ NK HEADS C SCALE
// reads DIR/{q,k,v,do,o,lse}.bin (f32) and DIR/{k0,nk,q0,nqk}.bin (i32: attention::expand_segments),
// writes DIR/{o_out,lse_out,dq,delta,dk,dv}.bin. q, k, v and dO go in as bf16 (attention.rs rounds
// them the same way); the backward reads the given o and lse (the CPU twin's), so it is checked on its
// own.
#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

static std::vector<bf16> rounded(const std::vector<float>& x) {
    std::vector<bf16> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = to_bf16(x[i]);
    return y;
}

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
    const auto q16 = rounded(q), k16 = rounded(k), v16 = rounded(v), do16 = rounded(d_o);
    std::vector<float> o_out(q.size()), lse_out(lse.size()), dq(q.size()), delta(lse.size()), dk(k.size()), dv(v.size());
    // dynamic shared memory as attention.rs's bf16_smem: row-major bf16 tiles [64][c + 8] (4 for the
    // forward, 6 for dq; dk/dv adds two stages of 4 × 64 f32/i32 per-query values)
    const size_t tile = (size_t)64 * (c + 8) * 2;
    const dim3 block{128, 1, 1};
    const dim3 qgrid{(unsigned)((nq + 63) / 64), (unsigned)heads, 1}, kgrid{(unsigned)((nk + 63) / 64), (unsigned)heads, 1};
#define RUN(C)                                                                                                       \
    case C:                                                                                                          \
        emu::launch(qgrid, block, 4 * tile, [&] {                                                                    \
            attention_forward_bf16_c##C(q16.data(), k16.data(), v16.data(), o_out.data(), lse_out.data(), k0.data(), \
                                        nkr.data(), nq, nk, heads, c, scale);                                        \
        });                                                                                                          \
        emu::launch(qgrid, block, 6 * tile, [&] {                                                                    \
            attention_backward_dq_bf16_c##C(q16.data(), k16.data(), v16.data(), o.data(), d_o.data(),                \
                                            do16.data(), lse.data(), k0.data(), nkr.data(), dq.data(),               \
                                            delta.data(), nq, nk, heads, c, scale);                                  \
        });                                                                                                          \
        emu::launch(kgrid, block, 6 * tile + 2 * 4 * 64 * 4, [&] {                                                   \
            attention_backward_dkdv_bf16_c##C(q16.data(), k16.data(), v16.data(), do16.data(), lse.data(),           \
                                              delta.data(),                                                          \
                                              k0.data(), nkr.data(), q0.data(), nqk.data(), dk.data(), dv.data(),    \
                                              nq, nk, heads, c, scale);                                              \
        });                                                                                                          \
        break;
    switch (c) {
        RUN(32)
        RUN(64)
        RUN(128)
        default:
            fprintf(stderr, "head dim %d: the kernels take 32, 64 or 128\n", c);
            return 2;
    }
    write_array(dir, "o_out", o_out);
    write_array(dir, "lse_out", lse_out);
    write_array(dir, "dq", dq);
    write_array(dir, "delta", delta);
    write_array(dir, "dk", dk);
    write_array(dir, "dv", dv);
    return 0;
}
