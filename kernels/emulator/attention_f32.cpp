// attention.cu's f32 forward, dq and dk/dv kernels on the emulator, launched as
// kernels/src/cuda/attention.rs launches them (its `tiles`: head dims ≤ 128 and the wide ≤ 256 ones);
// arguments and files as attention_case.h says.
#include "cuda_emulator.h"
#include "attention_case.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    AttentionCase a = AttentionCase::from_args(argc, argv);
    const int nq = a.nq, nk = a.nk, heads = a.heads, c = a.c;
    // attention.rs's tiles: query rows per forward/dq block, key rows per tile; key rows per dk/dv
    // block, query rows per tile; shared memory in rows of c + 1 floats
    const bool wide = c > 128;
    const int fq = wide ? 8 : 16, fk = 32, bk = wide ? 16 : 32, bq = 32;
    const auto grid = [&](int rows, int per_block) { return dim3{(unsigned)((rows + per_block - 1) / per_block), (unsigned)heads, 1}; };
    const auto smem = [&](int rows) { return (size_t)rows * (c + 1) * 4; };
    const dim3 block{128, 1, 1};
    emu::launch(grid(nq, fq), block, smem(2 * fk + fq), [&] {
        (wide ? attention_forward_wide_f32 : attention_forward_f32)(a.q.data(), a.k.data(), a.v.data(), a.o_out.data(),
                                                                      a.lse_out.data(), a.k0.data(), a.nkr.data(), nq,
                                                                      nk, heads, c, a.scale);
    });
    emu::launch(grid(nq, fq), block, smem(2 * fk + 2 * fq), [&] {
        (wide ? attention_backward_dq_wide_f32 : attention_backward_dq_f32)(
            a.q.data(), a.k.data(), a.v.data(), a.o.data(), a.d_o.data(), a.lse.data(), a.k0.data(), a.nkr.data(),
            a.dq.data(), a.delta.data(), nq, nk, heads, c, a.scale);
    });
    emu::launch(grid(nk, bk), block, smem(2 * bk + 2 * bq), [&] {
        (wide ? attention_backward_dkdv_wide_f32 : attention_backward_dkdv_f32)(
            a.q.data(), a.k.data(), a.v.data(), a.d_o.data(), a.lse.data(), a.delta.data(), a.k0.data(), a.nkr.data(),
            a.q0.data(), a.nqk.data(), a.dk.data(), a.dv.data(), nq, nk, heads, c, a.scale);
    });
    a.write();
    return 0;
}
