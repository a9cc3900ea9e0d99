// attention_bf16.cu's forward (f32 and bf16 O), dq and dk/dv kernels on the emulator, launched as
// kernels/src/cuda/attention.rs launches them; arguments and files as attention_case.h says, plus
// DIR/o16_out.bin (the bf16-O forward's bits). q, k, v, dO and the backward's O go in as bf16
// (attention.rs rounds them the same way).
#include "cuda_emulator.h"
#include "attention_case.h"
#include "kernel.cu"

static std::vector<bf16> rounded(const std::vector<float>& x) {
    std::vector<bf16> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = to_bf16(x[i]);
    return y;
}

int main(int argc, char** argv) {
    AttentionCase a = AttentionCase::from_args(argc, argv);
    const int nq = a.nq, nk = a.nk, heads = a.heads, c = a.c;
    const auto q16 = rounded(a.q), k16 = rounded(a.k), v16 = rounded(a.v), do16 = rounded(a.d_o), o16 = rounded(a.o);
    std::vector<bf16> o16_out(a.o.size());
    std::vector<float> lse16(a.lse.size());
    // dynamic shared memory as attention.rs's bf16_smem: row-major bf16 tiles [64][c + 8] (4 for the
    // forward, 6 for dq; dk/dv adds two stages of 4 × 64 f32/i32 per-query values)
    const size_t tile = (size_t)64 * (c + 8) * 2;
    const dim3 block{128, 1, 1};
    const dim3 qgrid{(unsigned)((nq + 63) / 64), (unsigned)heads, 1}, kgrid{(unsigned)((nk + 63) / 64), (unsigned)heads, 1};
#define RUN(C)                                                                                                       \
    case C:                                                                                                          \
        emu::launch(qgrid, block, 4 * tile, [&] {                                                                    \
            attention_forward_bf16_c##C(q16.data(), k16.data(), v16.data(), a.o_out.data(), a.lse_out.data(),        \
                                        a.k0.data(), a.nkr.data(), nq, nk, heads, c, a.scale);                       \
        });                                                                                                          \
        emu::launch(qgrid, block, 4 * tile, [&] {                                                                    \
            attention_forward_bf16_o16_c##C(q16.data(), k16.data(), v16.data(), o16_out.data(), lse16.data(),        \
                                            a.k0.data(), a.nkr.data(), nq, nk, heads, c, a.scale);                   \
        });                                                                                                          \
        emu::launch(qgrid, block, 6 * tile, [&] {                                                                    \
            attention_backward_dq_bf16_c##C(q16.data(), k16.data(), v16.data(), o16.data(), do16.data(),             \
                                            a.lse.data(), a.k0.data(), a.nkr.data(), a.dq.data(),                    \
                                            a.delta.data(), nq, nk, heads, c, a.scale);                              \
        });                                                                                                          \
        emu::launch(kgrid, block, 6 * tile + 2 * 4 * 64 * 4, [&] {                                                   \
            attention_backward_dkdv_bf16_c##C(q16.data(), k16.data(), v16.data(), do16.data(), a.lse.data(),         \
                                              a.delta.data(), a.k0.data(), a.nkr.data(), a.q0.data(), a.nqk.data(),  \
                                              a.dk.data(), a.dv.data(), nq, nk, heads, c, a.scale);                  \
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
    if (lse16 != a.lse_out) {
        fprintf(stderr, "the bf16-O forward's lse differs from the f32-O forward's\n");
        return 1;
    }
    a.write();
    write_array(a.dir, "o16_out", o16_out);
    return 0;
}
