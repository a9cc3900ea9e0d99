// Runs the CUDA kernels' own source on the CPU, for tests on machines without a GPU
// (kernels/tests/emulated_kernels.rs). Each thread of a block is a fiber (fiber_switch.h) on one OS thread;
// blocks run one after another. __syncthreads and the warp collectives (shuffles, votes, ldmatrix,
// mma.sync) are barriers over the block or the warp, with their data exchanged through per-warp
// slots, so the fragment layouts, masks and index arithmetic of a kernel run exactly as written.
// Emulated: bf16 rounding (round to nearest even), m16n8k16 bf16 mma with f32 accumulation (products
// summed in f64, then added: a tensor core's wide accumulation, not its exact order), ldmatrix .x4
// with and without .trans, and cp.async at its latest: a copy completes at the issuing thread's
// wait_group that covers its group and becomes visible (is written) when that thread next arrives at
// __syncthreads, so a missing wait or barrier reads stale shared memory here too (a thread reading
// its own copies right after the wait, legal on a GPU, would also see them late: our kernels don't).
// Shared memory starts as NaN bytes (0xff), so a read of something never written shows, and ends at
// an inaccessible page, so a read or write past the launch's dynamic shared memory faults. Warp
// collectives need all 32 lanes; ldmatrix and cp.async must stay inside the block's dynamic shared
// memory. Not emulated: timing, memory models beyond barriers and cp.async groups, atomics.
//
// The kernel file is compiled as C++ after this header, with mma.cuh's PTX primitives left out
// (KERNEL_EMULATOR) and common.cuh's DYNAMIC_SMEM declaring a pointer to `emu::dynamic_smem()`.
#pragma once
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#include "fiber_switch.h"

#define KERNEL_EMULATOR 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct int2 { int x, y; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}

inline float __uint_as_float(unsigned i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }

// The running fiber's coordinates (set by the scheduler before every switch into a fiber).
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

struct Barrier {
    int expected = 0, arrived = 0;
    unsigned generation = 0;
};

struct Warp {
    Barrier bar;
    uint64_t slot[32][8];  // each lane's operands of the collective in progress
    // an mma's products for every lane, made by the first lane to read them (at generation `made_at`)
    unsigned made_at = ~0u;
    float products[32][4];
};

// One cp.async: `bytes` from `src` (zeros when !valid) into `dst`.
struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes;
    bool valid;
};

struct Fiber {
    Context ctx;
    dim3 tid;
    bool done = false;
    std::vector<std::vector<AsyncCopy>> committed;  // oldest first
    std::vector<AsyncCopy> open;                     // issued since the last commit
    std::vector<AsyncCopy> landed;                   // waited for, written at the next __syncthreads
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    Barrier sync;
    Context scheduler;
    int current = 0;
    unsigned char* smem = nullptr;  // the launch's dynamic shared memory (shared_arena)
    size_t smem_bytes = 0;
    std::function<void()> body;
};

// Dynamic shared memory, ending at an inaccessible page and filled with 0xff (NaN in f32 and bf16,
// so unwritten reads show): a kernel that reaches past what its launch gave (or a host formula that
// gives too little) faults at once instead of reading other bytes. The end is rounded up to 16 bytes
// (kernels take the base as 16-byte aligned), so an overrun within that rounding reads NaN bytes
// instead of faulting. One arena, grown as launches need: blocks run one at a time.
inline unsigned char* shared_arena(size_t bytes) {
    static unsigned char* base = nullptr;
    static size_t span = 0;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), body = (bytes + 15) / 16 * 16;
    const size_t need = (body + page - 1) / page * page + page;
    if (need > span) {
        if (base) munmap(base, span);
        void* p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "emulator: cannot map %zu bytes of shared memory\n", need);
            exit(2);
        }
        base = (unsigned char*)p;
        span = need;
        if (mprotect(base + span - page, page, PROT_NONE) != 0) {
            fprintf(stderr, "emulator: cannot protect the page after shared memory\n");
            exit(2);
        }
    }
    unsigned char* smem = base + span - page - body;
    memset(smem, 0xff, body);
    return smem;
}

inline Block* block = nullptr;

// Fiber stacks, allocated once and reused by every block (uninitialised: a kernel's locals start as
// garbage, as on a GPU).
constexpr size_t STACK_BYTES = 64 * 1024;
inline std::vector<std::unique_ptr<char[]>> stacks;
inline unsigned long events = 0;  // arrivals and exits: no change over a whole round is a deadlock

inline unsigned char* dynamic_smem() { return block->smem; }

inline void yield() { switch_to(block->fibers[block->current].ctx, block->scheduler); }

inline void release_if_complete(Barrier& b) {
    if (b.arrived > 0 && b.arrived == b.expected) {
        b.arrived = 0;
        ++b.generation;
    }
}

inline void wait(Barrier& b) {
    const unsigned gen = b.generation;
    ++b.arrived;
    ++events;
    release_if_complete(b);
    while (b.generation == gen) yield();
}

// The thread's index in its block, x fastest (CUDA's order, which groups threads into warps).
inline int linear_tid() { return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }
inline int lane() { return linear_tid() & 31; }
inline Warp& warp() { return block->warps[linear_tid() >> 5]; }

inline void fiber_main() {
    block->body();
    Fiber& f = block->fibers[block->current];
    f.done = true;
    ++events;
    // an exited thread no longer takes part in barriers
    Barrier& wb = warp().bar;
    --wb.expected;
    release_if_complete(wb);
    --block->sync.expected;
    release_if_complete(block->sync);
}

inline void fiber_entry() {
    fiber_main();
    yield();  // to the scheduler, which never switches back to a finished fiber
}

// Run `body` as every thread of every block of `grid` × `block_dim` (blocks of whole warps, warps
// made of consecutive linear thread indices as on a GPU), with `smem_bytes` of dynamic shared memory
// per block.
inline void launch(dim3 grid, dim3 block_dim, size_t smem_bytes, std::function<void()> body) {
    const int n = block_dim.x * block_dim.y * block_dim.z;
    if (n % 32 != 0) {
        fprintf(stderr, "emulator: blocks of whole warps only (%u × %u × %u threads)\n", block_dim.x, block_dim.y,
                block_dim.z);
        exit(2);
    }
    gridDim = grid;
    blockDim = block_dim;
    while ((int)stacks.size() < n) stacks.emplace_back(new char[STACK_BYTES]);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                Block b;
                block = &b;
                b.body = body;
                b.smem = shared_arena(smem_bytes);
                b.smem_bytes = smem_bytes;
                b.fibers.resize(n);
                b.warps.resize(n / 32);
                for (auto& w : b.warps) w.bar.expected = 32;
                b.sync.expected = n;
                for (int i = 0; i < n; ++i) {
                    Fiber& f = b.fibers[i];
                    f.tid.x = i % block_dim.x;
                    f.tid.y = (i / block_dim.x) % block_dim.y;
                    f.tid.z = i / (block_dim.x * block_dim.y);
                    prepare(f.ctx, stacks[i].get(), STACK_BYTES, fiber_entry);
                }
                blockIdx.x = bx, blockIdx.y = by, blockIdx.z = bz;
                for (int live = n; live > 0;) {
                    const unsigned long before = events;
                    live = 0;
                    for (int i = 0; i < n; ++i) {
                        if (b.fibers[i].done) continue;
                        b.current = i;
                        threadIdx = b.fibers[i].tid;
                        switch_to(b.scheduler, b.fibers[i].ctx);
                        live += !b.fibers[i].done;
                    }
                    if (live > 0 && events == before) {
                        fprintf(stderr, "emulator: block (%u, %u, %u) deadlocked: %d threads wait at a barrier others never reach\n",
                                bx, by, bz, live);
                        exit(4);
                    }
                }
                block = nullptr;
            }
}

// Every lane posts `words` words into its slot; after the barrier all slots are readable, and `read`
// runs; a second barrier keeps the slots until every lane has read.
template <class Read>
inline void exchange(const uint64_t* words, int count, Read read) {
    Warp& w = warp();
    if (w.bar.expected != 32) {
        fprintf(stderr, "emulator: a warp collective in block (%u, %u) after some of the warp's lanes exited\n",
                blockIdx.x, blockIdx.y);
        exit(5);
    }
    memcpy(w.slot[lane()], words, count * sizeof(uint64_t));
    wait(w.bar);
    read(w.slot);
    wait(w.bar);
}

template <class T>
inline uint64_t bits_of(T v) {
    static_assert(sizeof(T) <= 8, "collective value of at most 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    return u;
}

template <class T>
inline T from_bits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof(T));
    return v;
}

inline float bf16_to_float(unsigned short h) { return __int_as_float((int)((unsigned)h << 16)); }

}  // namespace emu

namespace emu {
// This thread's cp.async copies that a wait completed, written where the barrier that follows makes
// them visible to the other threads (of the block, or of the warp for __syncwarp).
inline void land_copies() {
    for (const auto& c : block->fibers[block->current].landed) {
        if (c.valid)
            memcpy(c.dst, c.src, c.bytes);
        else
            memset(c.dst, 0, c.bytes);
    }
    block->fibers[block->current].landed.clear();
}
}  // namespace emu

inline void __syncthreads() {
    emu::land_copies();
    emu::wait(emu::block->sync);
}

inline void __syncwarp(unsigned = 0xffffffffu) {
    emu::land_copies();
    emu::wait(emu::warp().bar);
}

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
    const uint64_t mine = emu::bits_of(v);
    T r;
    emu::exchange(&mine, 1, [&](uint64_t (*s)[8]) { r = emu::from_bits<T>(s[emu::lane() ^ o][0]); });
    return r;
}

template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
    const uint64_t mine = emu::bits_of(v);
    T r;
    emu::exchange(&mine, 1, [&](uint64_t (*s)[8]) { r = emu::from_bits<T>(s[src & 31][0]); });
    return r;
}

template <class T>
inline T __shfl_down_sync(unsigned, T v, int o) {
    const uint64_t mine = emu::bits_of(v);
    T r;
    emu::exchange(&mine, 1, [&](uint64_t (*s)[8]) {
        const int src = emu::lane() + o;
        r = src < 32 ? emu::from_bits<T>(s[src][0]) : v;
    });
    return r;
}

inline int __any_sync(unsigned, int pred) {
    const uint64_t mine = pred != 0;
    int any = 0;
    emu::exchange(&mine, 1, [&](uint64_t (*s)[8]) {
        for (int l = 0; l < 32; ++l) any |= (int)s[l][0];
    });
    return any;
}

inline int __all_sync(unsigned, int pred) {
    const uint64_t mine = pred != 0;
    int all = 1;
    emu::exchange(&mine, 1, [&](uint64_t (*s)[8]) {
        for (int l = 0; l < 32; ++l) all &= (int)s[l][0];
    });
    return all;
}

// ---- mma.cuh's PTX primitives ----
typedef unsigned short bf16;

inline bf16 to_bf16(float x) {  // cvt.rn.bf16.f32: round to nearest even; NaN stays a (quiet) NaN
    unsigned u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40);
    return (bf16)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

inline float ex2(float x) {  // ex2.approx.ftz.f32, as exact 2^x with subnormal results flushed
    const float r = exp2f(x);
    return fabsf(r) < FLT_MIN ? 0.0f : r;
}

inline unsigned pack2(float lo, float hi) { return (unsigned)to_bf16(lo) | ((unsigned)to_bf16(hi) << 16); }

inline void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    const uint64_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
    float out[4];
    emu::exchange(mine, 6, [&](uint64_t (*s)[8]) {
        emu::Warp& w = emu::warp();
        if (w.made_at != w.bar.generation) {
            // A[r][k] (16×16) and B[k][n] (16×8) from every lane's fragment (mma.cuh's layouts)
            float A[16][16], B[16][8];
            for (int l = 0; l < 32; ++l) {
                const int g = l >> 2, t = l & 3;
                for (int half = 0; half < 2; ++half) {
                    const int k = 2 * t + half, sh = 16 * half;
                    A[g][k] = emu::bf16_to_float((bf16)(s[l][0] >> sh));
                    A[g + 8][k] = emu::bf16_to_float((bf16)(s[l][1] >> sh));
                    A[g][k + 8] = emu::bf16_to_float((bf16)(s[l][2] >> sh));
                    A[g + 8][k + 8] = emu::bf16_to_float((bf16)(s[l][3] >> sh));
                    B[k][g] = emu::bf16_to_float((bf16)(s[l][4] >> sh));
                    B[k + 8][g] = emu::bf16_to_float((bf16)(s[l][5] >> sh));
                }
            }
            for (int l = 0; l < 32; ++l) {
                const int g = l >> 2, t = l & 3;
                for (int e = 0; e < 4; ++e) {
                    const int r = g + 8 * (e >> 1), n = 2 * t + (e & 1);
                    double acc = 0.0;
                    for (int k = 0; k < 16; ++k) acc += (double)A[r][k] * (double)B[k][n];
                    w.products[l][e] = (float)acc;
                }
            }
            w.made_at = w.bar.generation;
        }
        for (int e = 0; e < 4; ++e) out[e] = d[e] + w.products[emu::lane()][e];
    });
    for (int e = 0; e < 4; ++e) d[e] = out[e];
}

inline emu::Fiber& me() { return emu::block->fibers[emu::block->current]; }

// [p, p + bytes) inside the block's dynamic shared memory, or the emulator stops naming `what`.
inline void check_shared(const void* p, int bytes, const char* what) {
    const auto* base = emu::block->smem;
    const auto* q = static_cast<const unsigned char*>(p);
    if (q < base || q + bytes > base + emu::block->smem_bytes) {
        fprintf(stderr, "emulator: %s at %p is outside the block's %zu bytes of dynamic shared memory\n", what, p,
                emu::block->smem_bytes);
        exit(3);
    }
}

// ldmatrix .x4: lanes 8i … 8i + 7 give the rows of matrix i; r[i] gets row g, columns 2t, 2t + 1
// (trans: rows 2t, 2t + 1 of column g).
inline void ldsm_emulated(unsigned (&r)[4], const bf16* row, bool trans) {
    const uint64_t mine = (uint64_t)(uintptr_t)row;
    if (mine % 16 != 0) {
        fprintf(stderr, "emulator: ldmatrix row address %p is not 16-byte aligned\n", (const void*)row);
        exit(3);
    }
    check_shared(row, 16, "an ldmatrix row");
    emu::exchange(&mine, 1, [&](uint64_t (*s)[8]) {
        const int g = emu::lane() >> 2, t = emu::lane() & 3;
        for (int i = 0; i < 4; ++i) {
            const bf16* m[8];
            for (int j = 0; j < 8; ++j) m[j] = (const bf16*)(uintptr_t)s[8 * i + j][0];
            r[i] = trans ? (unsigned)m[2 * t][g] | ((unsigned)m[2 * t + 1][g] << 16)
                         : (unsigned)m[g][2 * t] | ((unsigned)m[g][2 * t + 1] << 16);
        }
    });
}

inline void ldsm_x4(unsigned (&r)[4], const bf16* row) { ldsm_emulated(r, row, false); }
inline void ldsm_x4_trans(unsigned (&r)[4], const bf16* row) { ldsm_emulated(r, row, true); }

inline void cp_async(void* dst, const void* src, int bytes, bool valid) {
    if ((uintptr_t)dst % bytes != 0 || (valid && (uintptr_t)src % bytes != 0)) {
        fprintf(stderr, "emulator: cp.async of %d bytes needs %d-byte-aligned addresses (%p <- %p)\n", bytes, bytes,
                dst, src);
        exit(3);
    }
    check_shared(dst, bytes, "a cp.async destination");
    me().open.push_back({dst, src, bytes, valid});
}

inline void cp_async16(void* dst, const void* src, bool valid) { cp_async(dst, src, 16, valid); }
inline void cp_async4(void* dst, const void* src, bool valid) { cp_async(dst, src, 4, valid); }

inline void cp_async_commit() {
    me().committed.push_back(std::move(me().open));
    me().open.clear();
}

template <int N>
inline void cp_async_wait() {
    auto& groups = me().committed;
    while ((int)groups.size() > N) {
        me().landed.insert(me().landed.end(), groups.front().begin(), groups.front().end());
        groups.erase(groups.begin());
    }
}
