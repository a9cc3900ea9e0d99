// util.cu's fixed-order column reductions on the emulator, launched as kernels/src/cuda/util.rs
// launches them (32 × 8 thread blocks over 32 columns and 64 rows, then the chunks in order):
// col_sum over f32 and bf16 values, and group_dot with no factor, kept values, and a LayerNorm's
// output recomputed from its input and statistics.
//   util DIR ROWS C L STRIDE_COLS
// reads DIR/{a,b}.bin (f32 [ROWS, C]) and DIR/{mean,rstd}.bin (f32 [ROWS]); writes, from zero:
// DIR/colsum.bin (Σ_r a, [C]), DIR/colsum16.bin (Σ_r of a rounded to bf16, [C]), DIR/colsum_strided.bin
// (Σ_r a over the first STRIDE_COLS columns of rows C apart), and for G = ROWS / L groups of L rows
// DIR/dot_one.bin (Σ a), DIR/dot_values.bin (Σ a·b) and DIR/dot_norm.bin (Σ a·(b − mean)·rstd), [G, C].
#include <algorithm>

#include "cuda_emulator.h"
#include "io.h"
#include "kernel.cu"

// util.rs column_reduce: stage 1 `partials` over rows × c, then finish_columns_f32 into `out`.
template <class Stage1>
static void column_reduce(long rows, int c, std::vector<float>& out, Stage1 stage1) {
    const int chunks = (int)std::max((rows + 63) / 64, 1L);
    std::vector<float> partial((size_t)chunks * c, std::nanf(""));
    emu::launch({(unsigned)((c + 31) / 32), (unsigned)chunks, 1}, {32, 8, 1}, 0, [&] { stage1(partial.data()); });
    emu::launch({(unsigned)((c + 255) / 256), 1, 1}, {256, 1, 1}, 0,
                [&] { finish_columns_f32(partial.data(), chunks, c, out.data()); });
}

// util.rs group_dot: group_dot_partials_f32 then finish_groups_f32 (ostride = c).
static std::vector<float> group_dot(const float* a, const float* b, const float* mean, const float* rstd, int g,
                                    int l, int c) {
    const int chunks = std::max((l + 63) / 64, 1);
    std::vector<float> partial((size_t)g * chunks * c, std::nanf("")), out((size_t)g * c, 0.0f);
    emu::launch({(unsigned)((c + 31) / 32), (unsigned)(g * chunks), 1}, {32, 8, 1}, 0,
                [&] { group_dot_partials_f32(a, b, mean, rstd, l, c, chunks, partial.data()); });
    emu::launch({(unsigned)((c + 255) / 256), (unsigned)g, 1}, {256, 1, 1}, 0,
                [&] { finish_groups_f32(partial.data(), chunks, c, out.data(), c); });
    return out;
}

int main(int argc, char** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s DIR ROWS C L STRIDE_COLS\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const long rows = atol(argv[2]);
    const int c = atoi(argv[3]), l = atoi(argv[4]), cs = atoi(argv[5]);
    auto a = read_array<float>(dir, "a"), b = read_array<float>(dir, "b");
    auto mean = read_array<float>(dir, "mean"), rstd = read_array<float>(dir, "rstd");
    std::vector<unsigned short> a16(a.size());
    for (size_t i = 0; i < a.size(); ++i) a16[i] = to_bf16(a[i]);
    std::vector<float> colsum(c, 0.0f), colsum16(c, 0.0f), strided(cs, 0.0f);
    column_reduce(rows, c, colsum, [&](float* p) { col_partials_f32(a.data(), rows, c, c, p); });
    column_reduce(rows, c, colsum16, [&](float* p) { col_partials_bf16(a16.data(), rows, c, c, p); });
    column_reduce(rows, cs, strided, [&](float* p) { col_partials_f32(a.data(), rows, cs, c, p); });
    const int g = (int)(rows / l);
    write_array(dir, "colsum", colsum);
    write_array(dir, "colsum16", colsum16);
    write_array(dir, "colsum_strided", strided);
    write_array(dir, "dot_one", group_dot(a.data(), nullptr, nullptr, nullptr, g, l, c));
    write_array(dir, "dot_values", group_dot(a.data(), b.data(), nullptr, nullptr, g, l, c));
    write_array(dir, "dot_norm", group_dot(a.data(), b.data(), mean.data(), rstd.data(), g, l, c));
    return 0;
}
