// attention_tiled.cu's forward, dq and dk/dv kernels (f32, register tiles) on the emulator, launched as
// kernels/src/cuda/attention.rs launches them; arguments and files as attention_case.h says.
#include "cuda_emulator.h"
#include "attention_case.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    AttentionCase a = AttentionCase::from_args(argc, argv);
    const int nq = a.nq, nk = a.nk, heads = a.heads, c = a.c;
    // dynamic shared memory as attention.rs's tiled_smem: f32 rows of c + 4; the forward holds 64 + 4 × 32
    // of them, dq 2 × 64 + 4 × 32, dk/dv as many plus two stages of 4 × 32 per-query values
    const size_t row = (size_t)(c + 4) * 4;
    const dim3 block{128, 1, 1};
    const dim3 qgrid{(unsigned)((nq + 63) / 64), (unsigned)heads, 1}, kgrid{(unsigned)((nk + 63) / 64), (unsigned)heads, 1};
#define RUN(C)                                                                                                       \
    case C:                                                                                                          \
        emu::launch(qgrid, block, (64 + 4 * 32) * row, [&] {                                                         \
            attention_forward_tiled_c##C(a.q.data(), a.k.data(), a.v.data(), a.o_out.data(), a.lse_out.data(),      \
                                         a.k0.data(), a.nkr.data(), nq, nk, heads, c, a.scale);                      \
        });                                                                                                          \
        emu::launch(qgrid, block, (2 * 64 + 4 * 32) * row, [&] {                                                     \
            attention_backward_dq_tiled_c##C(a.q.data(), a.k.data(), a.v.data(), a.o.data(), a.d_o.data(),          \
                                             a.lse.data(), a.k0.data(), a.nkr.data(), a.dq.data(), a.delta.data(),  \
                                             nq, nk, heads, c, a.scale);                                             \
        });                                                                                                          \
        emu::launch(kgrid, block, (2 * 64 + 4 * 32) * row + 2 * 4 * 32 * 4, [&] {                                    \
            attention_backward_dkdv_tiled_c##C(a.q.data(), a.k.data(), a.v.data(), a.d_o.data(), a.lse.data(),      \
                                               a.delta.data(), a.k0.data(), a.nkr.data(), a.q0.data(),               \
                                               a.nqk.data(), a.dk.data(), a.dv.data(), nq, nk, heads, c, a.scale);   \
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
    a.write();
    return 0;
}
