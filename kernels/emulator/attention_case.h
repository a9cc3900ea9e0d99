// One attention case for the attention drivers (attention_bf16.cpp, attention_f32.cpp,
// attention_tiled.cpp):
//   DRIVER DIR NQ NK HEADS C SCALE
// reads DIR/{q,k,v,do,o,lse}.bin (f32) and DIR/{k0,nk,q0,nqk}.bin (i32: attention::expand_segments);
// `write` stores DIR/{o_out,lse_out,dq,delta,dk,dv}.bin. The backward reads the given o and lse (the
// CPU twin's), so it is checked on its own.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "io.h"

struct AttentionCase {
    std::string dir;
    int nq, nk, heads, c;
    float scale;
    std::vector<float> q, k, v, d_o, o, lse;
    std::vector<int> k0, nkr, q0, nqk;  // per query: first key and count; per key: first query, count
    std::vector<float> o_out, lse_out, dq, delta, dk, dv;

    // The case named by the command line (exits with the usage when it is not one).
    static AttentionCase from_args(int argc, char** argv) {
        if (argc != 7) {
            fprintf(stderr, "usage: %s DIR NQ NK HEADS C SCALE\n", argv[0]);
            exit(2);
        }
        AttentionCase a;
        a.dir = argv[1];
        a.nq = atoi(argv[2]), a.nk = atoi(argv[3]), a.heads = atoi(argv[4]), a.c = atoi(argv[5]);
        a.scale = (float)atof(argv[6]);
        a.q = read_array<float>(a.dir, "q"), a.k = read_array<float>(a.dir, "k"), a.v = read_array<float>(a.dir, "v");
        a.d_o = read_array<float>(a.dir, "do"), a.o = read_array<float>(a.dir, "o");
        a.lse = read_array<float>(a.dir, "lse");
        a.k0 = read_array<int>(a.dir, "k0"), a.nkr = read_array<int>(a.dir, "nk");
        a.q0 = read_array<int>(a.dir, "q0"), a.nqk = read_array<int>(a.dir, "nqk");
        a.o_out.resize(a.q.size()), a.lse_out.resize(a.lse.size()), a.dq.resize(a.q.size());
        a.delta.resize(a.lse.size()), a.dk.resize(a.k.size()), a.dv.resize(a.v.size());
        return a;
    }

    void write() const {
        write_array(dir, "o_out", o_out);
        write_array(dir, "lse_out", lse_out);
        write_array(dir, "dq", dq);
        write_array(dir, "delta", delta);
        write_array(dir, "dk", dk);
        write_array(dir, "dv", dv);
    }
};
