// qkv.cu's heads and their backward (f32 and bf16 out) on the emulator, with attention.rs's per_warp
// launch shape.
//   qkv DIR N L H C
// reads DIR/{qkv,qb,vb,gain,cos,sin}.bin (f32: qkv [N·3·H·C], biases [H·C], gain [H], RoPE table
// [L, C/2] each) and DIR/{dq,dk,dv}.bin ([N·H·C] each); writes DIR/{q_raw,k_raw,q,k,v,qn,kn}.bin (f32
// forward) and DIR/{q16,k16,v16}.bin (the bf16 forward's bits), then from the f32 forward's outputs
// DIR/{dqkv,dq_raw,udy}.bin (f32 backward) and DIR/dqkv16.bin (the bf16 backward's bits).
#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

int main(int argc, char** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s DIR N L H C\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const long n = atol(argv[2]);
    const int l = atoi(argv[3]), heads = atoi(argv[4]), c = atoi(argv[5]);
    auto qkv = read_array<float>(dir, "qkv"), qb = read_array<float>(dir, "qb"), vb = read_array<float>(dir, "vb");
    auto gain = read_array<float>(dir, "gain"), co = read_array<float>(dir, "cos"), si = read_array<float>(dir, "sin");
    const long nw = n * heads * c, nh = n * heads;
    std::vector<float> q_raw(nw), k_raw(nw), q(nw), k(nw), v(nw), qn(nh), kn(nh);
    std::vector<float> q_raw2(nw), k_raw2(nw), qn2(nh), kn2(nh);
    std::vector<unsigned short> q16(nw), k16(nw), v16(nw);
    const dim3 grid{(unsigned)((nh + 7) / 8), 1, 1}, block{256, 1, 1};
    emu::launch(grid, block, 0, [&] {
        qkv_heads_forward_f32(qkv.data(), qb.data(), vb.data(), gain.data(), co.data(), si.data(), q_raw.data(),
                              k_raw.data(), q.data(), k.data(), v.data(), qn.data(), kn.data(), n, l, heads, c);
    });
    emu::launch(grid, block, 0, [&] {
        qkv_heads_forward_bf16(qkv.data(), qb.data(), vb.data(), gain.data(), co.data(), si.data(), q_raw2.data(),
                               k_raw2.data(), q16.data(), k16.data(), v16.data(), qn2.data(), kn2.data(), n, l, heads,
                               c);
    });
    if (q_raw2 != q_raw || k_raw2 != k_raw || qn2 != qn || kn2 != kn) {
        fprintf(stderr, "qkv_heads_forward_bf16's f32 outputs differ from qkv_heads_forward_f32's\n");
        return 1;
    }
    for (const auto& [name, x] : {std::pair{"q_raw", &q_raw}, {"k_raw", &k_raw}, {"q", &q}, {"k", &k}, {"v", &v},
                                  {"qn", &qn}, {"kn", &kn}})
        write_array(dir, name, *x);
    auto dq = read_array<float>(dir, "dq"), dk = read_array<float>(dir, "dk"), dv = read_array<float>(dir, "dv");
    std::vector<float> dqkv(3 * nw), dq_raw(nw), udy(nh), dq_raw2(nw), udy2(nh);
    std::vector<unsigned short> dqkv16(3 * nw);
    emu::launch(grid, block, 0, [&] {
        qkv_heads_backward_f32(dq.data(), dk.data(), dv.data(), q_raw.data(), k_raw.data(), qn.data(), kn.data(),
                               gain.data(), co.data(), si.data(), dqkv.data(), dq_raw.data(), udy.data(), n, l, heads,
                               c);
    });
    emu::launch(grid, block, 0, [&] {
        qkv_heads_backward_bf16(dq.data(), dk.data(), dv.data(), q_raw.data(), k_raw.data(), qn.data(), kn.data(),
                                gain.data(), co.data(), si.data(), dqkv16.data(), dq_raw2.data(), udy2.data(), n, l,
                                heads, c);
    });
    if (dq_raw2 != dq_raw || udy2 != udy) {
        fprintf(stderr, "qkv_heads_backward_bf16's f32 outputs differ from qkv_heads_backward_f32's\n");
        return 1;
    }
    write_array(dir, "dqkv", dqkv);
    write_array(dir, "dq_raw", dq_raw);
    write_array(dir, "udy", udy);
    write_array(dir, "dqkv16", dqkv16);
    write_array(dir, "q16", q16);
    write_array(dir, "k16", k16);
    write_array(dir, "v16", v16);
    return 0;
}
