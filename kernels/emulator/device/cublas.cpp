// The emulated device's cuBLAS (libcublas.so): the GEMMs our host code calls (kernels/src/cuda/linear.rs),
// on the host memory the emulated driver hands out. Column-major, as cuBLAS: C = α·op(A)·op(B) + β·C
// with op(A) m×k, op(B) k×n. Products are summed in f64 and rounded once to the output type: the
// result a tensor core's wide accumulation approaches, not its order. bf16 or f16 inputs are read as
// stored (already rounded by whoever wrote them). Anything else is refused with the reason on stderr.
// A GEMM runs in its handle's stream order (streams.h): after the work queued there, or queued itself
// with INFINITY_EMULATED_LAZY=1.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cstdio>
#include <vector>

#include "streams.h"

typedef int cublasStatus_t;
enum : cublasStatus_t { OK = 0, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum { R_32F = 0, R_16F = 2, R_16BF = 14 };  // cudaDataType
enum { COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69 };

namespace {

struct Handle {
    void* stream = nullptr;
};

cublasStatus_t fail(cublasStatus_t code, const char* why) {
    fprintf(stderr, "emulated cuBLAS: %s\n", why);
    return code;
}

float half_to_float(uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023, s = h >> 15;
    const float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
    return s ? -v : v;
}

double load(const void* p, int type, size_t i) {
    switch (type) {
        case R_32F: return ((const float*)p)[i];
        case R_16BF: {
            const uint32_t u = (uint32_t)((const uint16_t*)p)[i] << 16;
            float f;
            memcpy(&f, &u, 4);
            return f;
        }
        default: return half_to_float(((const uint16_t*)p)[i]);
    }
}

void store(void* p, int type, size_t i, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    switch (type) {
        case R_32F: ((float*)p)[i] = v; break;
        case R_16BF:  // round to nearest even, NaN kept
            ((uint16_t*)p)[i] = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40)
                                                                 : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
            break;
        default: fprintf(stderr, "emulated cuBLAS: f16 outputs are not emulated\n"), abort();
    }
}

bool known(int type) { return type == R_32F || type == R_16BF || type == R_16F; }

void compute(int ta, int tb, int m, int n, int k, float alpha, const void* a, int atype, int lda, const void* b,
             int btype, int ldb, float beta, void* c, int ctype, int ldc) {
    std::vector<double> row(k);
    for (int i = 0; i < m; ++i) {
        for (int l = 0; l < k; ++l) row[l] = load(a, atype, ta ? (size_t)i * lda + l : (size_t)l * lda + i);
        for (int j = 0; j < n; ++j) {
            double acc = 0.0;
            for (int l = 0; l < k; ++l) acc += row[l] * load(b, btype, tb ? (size_t)l * ldb + j : (size_t)j * ldb + l);
            const size_t at = (size_t)j * ldc + i;
            // β = 0 ignores C (it may hold NaN), as cuBLAS does
            const double prior = beta == 0.0f ? 0.0 : (double)beta * load(c, ctype, at);
            store(c, ctype, at, (float)((double)alpha * acc + prior));
        }
    }
}

// Checks the call at once (as cuBLAS does), then computes it in `handle`'s stream order.
cublasStatus_t gemm(void* handle, int ta, int tb, int m, int n, int k, float alpha, const void* a, int atype,
                    int lda, const void* b, int btype, int ldb, float beta, void* c, int ctype, int ldc) {
    if (m < 0 || n < 0 || k < 0) return fail(INVALID_VALUE, "negative GEMM size");
    if (ta > 1 || tb > 1) return fail(NOT_SUPPORTED, "conjugate transposes are not emulated");
    if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || lda < 1 || ldb < 1 || ldc < 1)
        return fail(INVALID_VALUE, "a leading dimension smaller than its matrix's rows");
    if (!known(atype) || !known(btype) || (ctype != R_32F && ctype != R_16BF))
        return fail(NOT_SUPPORTED, "GEMM data types other than f32, bf16 and f16 inputs with f32 or bf16 output");
    emu_device::run_in_order(emu_device::resolve(((Handle*)handle)->stream), [=] {
        return compute(ta, tb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c, ctype, ldc), true;
    });
    return OK;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(void** h) { return *h = new Handle, OK; }
cublasStatus_t cublasDestroy_v2(void* h) { return delete (Handle*)h, OK; }
cublasStatus_t cublasSetStream_v2(void* h, void* s) { return ((Handle*)h)->stream = s, OK; }
cublasStatus_t cublasGetStream_v2(void* h, void** s) { return *s = ((Handle*)h)->stream, OK; }
cublasStatus_t cublasSetMathMode(void*, int) { return OK; }
cublasStatus_t cublasSetWorkspace_v2(void*, void*, size_t) { return OK; }

cublasStatus_t cublasSgemm_v2(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* a,
                              int lda, const float* b, int ldb, const float* beta, float* c, int ldc) {
    return gemm(h, ta, tb, m, n, k, *alpha, a, R_32F, lda, b, R_32F, ldb, *beta, c, R_32F, ldc);
}

cublasStatus_t cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* a, int atype,
                            int lda, const void* b, int btype, int ldb, const void* beta, void* c, int ctype, int ldc,
                            int compute, int /*algo*/) {
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_PEDANTIC)
        return fail(NOT_SUPPORTED, "compute types other than CUBLAS_COMPUTE_32F (α and β as f32)");
    return gemm(h, ta, tb, m, n, k, *(const float*)alpha, a, atype, lda, b, btype, ldb, *(const float*)beta, c, ctype,
                ldc);
}

}  // extern "C"
