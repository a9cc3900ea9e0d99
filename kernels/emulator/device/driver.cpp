// An emulated CUDA device behind the driver API (libcuda.so): the subset cudarc calls for our host
// code, so the GPU path (kernels/src/cuda, trainer/src/gpu) and its tests run on a machine without a
// GPU. Device memory is host memory; streams run their work in order (streams.h: kernels and copies
// at once, collectives when their peers are there); modules are the PTX NVRTC made (checked for the
// kernel's entry) paired with the kernel's own source compiled for the CPU emulator (cuda_emulator.h,
// registry.h). Built by tools/emulated_device.py with cublas.cpp and nccl.cpp into one library.
//
// What a real device would refuse is refused here too, with the reason on stderr: a block over 1024
// threads or not whole warps, a grid beyond 2^31 − 1 × 65535 × 65535, dynamic plus static shared
// memory above 48 KiB without cuFuncSetAttribute, a kernel missing from the loaded PTX (registers per
// thread are ptxas's business: not checked). Every allocation ends at
// a guard page (an access past its last 256-byte unit faults, and the fault names the kernel) and
// starts filled with 0xff bytes (NaN in f32 and bf16), so a read of memory never written shows. The
// device says it is compute capability 9.0, or what INFINITY_EMULATED_COMPUTE says ("7.5"), so the host's
// handling of older and newer GPUs can be tried; it has 16 GiB, or INFINITY_EMULATED_MEMORY ("64M"; "1G,2G" per
// device), beyond which allocations fail as on a full GPU; INFINITY_EMULATED_DRIVER ("12.2") makes its
// driver older than NVRTC, refusing PTX of a newer ISA; and INFINITY_EMULATED_ALLOC_LOG=1 logs every
// allocation and free.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>
#include <mutex>
#include <sstream>
#include <string>

#include "cuda_emulator.h"
#include "registry.h"
#include "streams.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUmodule;
typedef void (*CUhostFn)(void*);

enum : CUresult {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    UNSUPPORTED_PTX_VERSION = 222,
    NOT_FOUND = 500,
    NOT_READY = 600,
    NOT_SUPPORTED = 801,
};

namespace {

// H200-like figures (sm_90), so the host code takes the tensor-core paths it takes there.
constexpr int SMS = 132, SMEM_PER_SM = 233472, DEFAULT_SMEM = 48 * 1024;

// Shared memory a block may opt into: an H200's, or INFINITY_EMULATED_OPTIN_SMEM bytes (65536 plays a T4).
int optin_smem() {
    static const int bytes = [] {
        const char* s = getenv("INFINITY_EMULATED_OPTIN_SMEM");
        return s ? atoi(s) : 232448;
    }();
    return bytes;
}

// The physical device behind a visible ordinal: CUDA_VISIBLE_DEVICES's entry (the launcher's agent
// gives each rank one), else the ordinal itself.
int physical_device(int ordinal) {
    const char* s = getenv("CUDA_VISIBLE_DEVICES");
    for (int i = 0; s && *s; ++i) {
        if (i == ordinal) return isdigit((unsigned char)*s) ? atoi(s) : ordinal;
        s = strchr(s, ',');
        if (s) s++;
    }
    return ordinal;
}

// Device memory: 16 GiB, or INFINITY_EMULATED_MEMORY ("64M", "2G", bytes), so running out can be tried;
// a list ("1064M,2G") gives physical device i the i-th size (the last one past its end), so the ranks
// of a group can differ (the bytes in use are one count per process: a rank uses one device).
size_t total_memory(int ordinal) {
    static const std::vector<size_t> sizes = [] {
        std::vector<size_t> out;
        const char* s = getenv("INFINITY_EMULATED_MEMORY");
        while (s && *s) {
            char* unit = nullptr;
            const double n = strtod(s, &unit);
            const int shift = *unit == 'G' ? 30 : *unit == 'M' ? 20 : *unit == 'K' ? 10 : 0;
            out.push_back((size_t)(n * (double)((size_t)1 << shift)));
            s = strchr(unit, ',');
            if (s) s++;
        }
        if (out.empty()) out.push_back((size_t)16 << 30);
        return out;
    }();
    return sizes[std::min((size_t)std::max(physical_device(ordinal), 0), sizes.size() - 1)];
}

// The device of the calling thread's context (the first without one).
int current_ordinal() { return emu_device::current ? emu_device::current->ordinal : 0; }

struct Module {
    std::string ptx;
};
struct Function {
    std::string name;
    const emu::KernelBind* bind;
    int static_smem;       // bytes of the module's `.shared` variables the kernel's body names
    int max_dynamic_smem;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: 48 KiB − static until raised
};
using emu_device::Event;
using emu_device::Stream;

std::mutex device_lock;  // one launch at a time: the emulator's block state is global
struct Allocation {
    void* mapping;
    size_t span;   // the mapping's length: the body, rounded to pages, and the guard page
    size_t bytes;  // what was asked for, in 256-byte units: what a memory pool counts as used
};
std::map<uintptr_t, Allocation> allocations;  // user pointer → its mapping
size_t bytes_in_use = 0;  // spans: what cuMemGetInfo reports and the limit applies to
// The default memory pool's figures (CU_MEMPOOL_ATTR_USED_MEM_CURRENT and _HIGH), so the host's peak
// memory accounting reads what it reads on a GPU: bytes the program holds, and their high-water mark
// since the last reset.
size_t pool_used = 0, pool_used_high = 0;
const char* running_kernel = nullptr;
struct sigaction previous_segv;

CUresult fail(CUresult code, const std::string& why) {
    fprintf(stderr, "emulated CUDA device: %s\n", why.c_str());
    return code;
}

void on_segv(int sig, siginfo_t* info, void* uc) {
    if (running_kernel) {
        char msg[256];
        const int n = snprintf(msg, sizeof msg, "emulated CUDA device: kernel %s touched %p, outside its buffers\n",
                               running_kernel, info->si_addr);
        const ssize_t written = write(2, msg, n);  // async-signal-safe, unlike fprintf
        (void)written;
    }
    sigaction(SIGSEGV, &previous_segv, nullptr);  // the runtime's own handler, or the default, next
    raise(sig);
    (void)uc;
}

// Bytes of the module-scope `.shared` variables (a kernel's `__shared__` arrays land there) that the
// body of `.entry name` refers to.
int static_shared_bytes(const std::string& ptx, const std::string& name) {
    const size_t at = ptx.find(".entry " + name + "(");
    const size_t end = std::min(ptx.find(".entry ", at + 1), ptx.find(".func ", at + 1));
    const std::string body = ptx.substr(at, end == std::string::npos ? std::string::npos : end - at);
    int bytes = 0;
    for (size_t line = 0; line < ptx.size();) {
        const size_t eol = std::min(ptx.find('\n', line), ptx.size());
        const std::string text = ptx.substr(line, eol - line);
        line = eol + 1;
        if (text.rfind(".shared", 0) != 0) continue;  // `.extern .shared` (dynamic) does not start the line
        // `.shared [.align A] .TYPE NAME[COUNT];` with TYPE one of b8 … f64 (its width in bits last)
        std::istringstream tokens(text.substr(0, text.find(';')));
        std::string token, type, var;
        while (tokens >> token) (token[0] == '.' ? type : var) = token;
        const size_t bracket = var.find('[');
        const int count = bracket == std::string::npos ? 1 : atoi(var.c_str() + bracket + 1);
        var = var.substr(0, bracket);
        const int width = atoi(type.c_str() + type.find_first_of("0123456789")) / 8;
        if (body.find(var) != std::string::npos) bytes += count * width;
    }
    return bytes;
}

// INFINITY_EMULATED_ALLOC_LOG=1: every allocation and free on stderr with the bytes then in use, to
// find what a step holds at its peak.
bool log_allocations() {
    static const bool on = getenv("INFINITY_EMULATED_ALLOC_LOG") != nullptr;
    return on;
}

CUresult allocate(CUdeviceptr* out, size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t body = (bytes + 255) / 256 * 256 + (bytes == 0 ? 256 : 0);
    const size_t span = (body + page - 1) / page * page + page;
    {
        std::lock_guard<std::mutex> g(device_lock);
        if (bytes_in_use + span > total_memory(current_ordinal())) return OUT_OF_MEMORY;  // as a full GPU says
    }
    void* base = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return OUT_OF_MEMORY;
    char* guard = (char*)base + span - page;
    mprotect(guard, page, PROT_NONE);
    char* p = guard - body;
    memset(p, 0xff, body);
    std::lock_guard<std::mutex> g(device_lock);
    allocations[(uintptr_t)p] = {base, span, body};
    bytes_in_use += span;
    pool_used += body;
    pool_used_high = std::max(pool_used_high, pool_used);
    if (log_allocations()) fprintf(stderr, "emulated CUDA device: +%zu bytes at %p, %zu in use\n", body, (void*)p, pool_used);
    *out = (CUdeviceptr)(uintptr_t)p;
    return SUCCESS;
}

CUresult release(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(device_lock);
    auto it = allocations.find((uintptr_t)p);
    if (it == allocations.end()) return fail(INVALID_VALUE, "cuMemFree of " + std::to_string(p) + ", not an allocation");
    munmap(it->second.mapping, it->second.span);
    bytes_in_use -= it->second.span;
    pool_used -= it->second.bytes;
    if (log_allocations())
        fprintf(stderr, "emulated CUDA device: -%zu bytes at %p, %zu in use\n", it->second.bytes, (void*)p, pool_used);
    allocations.erase(it);
    return SUCCESS;
}

}  // namespace

extern "C" {

CUresult cuInit(unsigned) { return SUCCESS; }
// The driver's CUDA version as INFINITY_EMULATED_DRIVER says ("12.2"), so a driver older than NVRTC can
// be tried (cuModuleLoadData then refuses PTX of a newer ISA, as a real one does); 0 without it: a
// driver as new as any NVRTC, which says 13.0.
int driver_version() {
    static const int version = [] {
        int major = 0, minor = 0;
        if (const char* v = getenv("INFINITY_EMULATED_DRIVER")) sscanf(v, "%d.%d", &major, &minor);
        return 1000 * major + 10 * minor;
    }();
    return version;
}
CUresult cuDriverGetVersion(int* v) { return *v = driver_version() ? driver_version() : 13000, SUCCESS; }
CUresult cuDeviceGetCount(int* n) { return *n = emu_device::device_count(), SUCCESS; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    return ordinal >= 0 && ordinal < emu_device::device_count() ? (*d = ordinal, SUCCESS) : INVALID_DEVICE;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "Emulated CUDA device (kernels/emulator)");
    return SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) { return *bytes = total_memory(d), SUCCESS; }
CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *v = 1024; break;                   // max threads per block
        case 2: *v = 1024; break;                   // max block x
        case 3: case 4: *v = attribute == 3 ? 1024 : 64; break;
        case 5: *v = 0x7fffffff; break;             // max grid x
        case 6: case 7: *v = 65535; break;
        case 8: *v = DEFAULT_SMEM; break;           // shared memory per block
        case 10: *v = 32; break;                    // warp size
        case 12: *v = 65536; break;                 // registers per block
        case 13: *v = 1980000; break;               // clock (kHz)
        case 16: *v = SMS; break;
        case 75: case 76: {  // compute capability: 9.0, or INFINITY_EMULATED_COMPUTE ("7.5", "10.0", …)
            int major = 9, minor = 0;
            if (const char* cc = getenv("INFINITY_EMULATED_COMPUTE")) sscanf(cc, "%d.%d", &major, &minor);
            *v = attribute == 75 ? major : minor;
            break;
        }
        case 81: *v = SMEM_PER_SM; break;
        case 97: *v = optin_smem(); break;
        case 115: *v = 1; break;                    // memory pools (cuMemAllocAsync)
        default: *v = 0;
    }
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    if (d < 0 || d >= emu_device::device_count()) return INVALID_DEVICE;
    return *c = emu_device::contexts()[d].get(), SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* c) { return *c = emu_device::current, SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext c) { return emu_device::current = (emu_device::Context*)c, SUCCESS; }
CUresult cuCtxSynchronize() {
    auto* ctx = emu_device::current ? emu_device::current : emu_device::contexts()[0].get();
    emu_device::drain(&ctx->default_stream);
    for (Stream* s : ctx->streams) emu_device::drain(s);
    return SUCCESS;
}
CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return SUCCESS;
}
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(device_lock);
    *total = total_memory(current_ordinal());
    *free_bytes = *total > bytes_in_use ? *total - bytes_in_use : 0;
    return SUCCESS;
}

// The default memory pool (what cuMemAllocAsync draws from): one per device, whose used bytes and their
// high-water mark are the allocations' (all devices of the process share the count, as they share
// bytes_in_use). Setting USED_MEM_HIGH (to 0, the only value a driver accepts) restarts the mark at
// the bytes in use; the release threshold is taken and ignored (memory is returned at once).
enum : int { RELEASE_THRESHOLD = 4, RESERVED_MEM_CURRENT = 5, RESERVED_MEM_HIGH = 6, USED_MEM_CURRENT = 7, USED_MEM_HIGH = 8 };
CUresult cuDeviceGetDefaultMemPool(void** pool, CUdevice d) {
    if (d < 0 || d >= emu_device::device_count()) return INVALID_DEVICE;
    return *pool = (void*)(uintptr_t)(0x9001 + d), SUCCESS;
}
CUresult cuMemPoolGetAttribute(void*, int attr, void* value) {
    std::lock_guard<std::mutex> g(device_lock);
    switch (attr) {
        case RELEASE_THRESHOLD: *(uint64_t*)value = 0; break;
        case RESERVED_MEM_CURRENT: case USED_MEM_CURRENT: *(uint64_t*)value = pool_used; break;
        case RESERVED_MEM_HIGH: case USED_MEM_HIGH: *(uint64_t*)value = pool_used_high; break;
        default: return fail(INVALID_VALUE, "cuMemPoolGetAttribute: attribute " + std::to_string(attr) + " not emulated");
    }
    return SUCCESS;
}
CUresult cuMemPoolSetAttribute(void*, int attr, void* value) {
    std::lock_guard<std::mutex> g(device_lock);
    switch (attr) {
        case RELEASE_THRESHOLD: return SUCCESS;
        case RESERVED_MEM_HIGH: case USED_MEM_HIGH:
            if (*(uint64_t*)value != 0) return fail(INVALID_VALUE, "a pool's high-water mark can only be reset (to 0)");
            pool_used_high = pool_used;
            return SUCCESS;
        default: return fail(INVALID_VALUE, "cuMemPoolSetAttribute: attribute " + std::to_string(attr) + " not emulated");
    }
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case SUCCESS: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case UNSUPPORTED_PTX_VERSION: *s = "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"; break;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case NOT_READY: *s = "CUDA_ERROR_NOT_READY"; break;
        default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return SUCCESS;
}
CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

// ---- streams and events (streams.h) ----
CUresult cuStreamCreate(CUstream* s, unsigned) {
    auto* ctx = emu_device::current ? emu_device::current : emu_device::contexts()[0].get();
    std::lock_guard<std::recursive_mutex> g(emu_device::queue_lock);
    ctx->streams.push_back(new Stream);
    return *s = ctx->streams.back(), SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int) { return cuStreamCreate(s, flags); }
CUresult cuStreamDestroy_v2(CUstream) { return SUCCESS; }  // kept: queued work may still name it
CUresult cuStreamSynchronize(CUstream s) { return emu_device::drain(emu_device::resolve(s)), SUCCESS; }
CUresult cuStreamQuery(CUstream s) {
    emu_device::progress(emu_device::resolve(s));
    return emu_device::idle(emu_device::resolve(s)) ? SUCCESS : NOT_READY;
}
CUresult cuStreamWaitEvent(CUstream s, void* e, unsigned) {
    const Event mark = *(Event*)e;  // the event as recorded now
    emu_device::enqueue(emu_device::resolve(s), [mark] { return emu_device::reached(mark); });
    return SUCCESS;
}
CUresult cuLaunchHostFunc(CUstream s, CUhostFn f, void* user) {
    emu_device::enqueue(emu_device::resolve(s), [f, user] { return f(user), true; });
    return SUCCESS;
}
CUresult cuEventCreate(void** e, unsigned) { return *e = new Event, SUCCESS; }
CUresult cuEventDestroy_v2(void* e) { return delete (Event*)e, SUCCESS; }
CUresult cuEventRecord(void* e, CUstream s) {
    Event& ev = *(Event*)e;
    ev.stream = emu_device::resolve(s);
    std::lock_guard<std::recursive_mutex> g(emu_device::queue_lock);
    ev.position = ev.stream->issued;
    ev.at = std::chrono::steady_clock::now();
    return SUCCESS;
}
CUresult cuEventQuery(void* e) { return emu_device::reached(*(Event*)e) ? SUCCESS : NOT_READY; }
CUresult cuEventSynchronize(void* e) {
    while (!emu_device::reached(*(Event*)e)) std::this_thread::sleep_for(std::chrono::microseconds(50));
    return SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) {
    *ms = std::chrono::duration<float, std::milli>(((Event*)b)->at - ((Event*)a)->at).count();
    return SUCCESS;
}
CUresult cuEventElapsedTime(float* ms, void* a, void* b) { return cuEventElapsedTime_v2(ms, a, b); }

// ---- memory: copies and sets wait for the stream's queued work, then run ----
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { return allocate(p, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return allocate(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) { return cuCtxSynchronize(), release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {  // in stream order: not under queued work
    emu_device::enqueue(emu_device::resolve(s), [p] { return release(p), true; });
    return SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s) {
    emu_device::drain(emu_device::resolve(s));
    return memset((void*)p, v, n), SUCCESS;
}
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return cuMemsetD8Async(p, v, n, nullptr); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, CUstream s) {
    emu_device::drain(emu_device::resolve(s));
    return memcpy((void*)d, h, n), SUCCESS;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { return cuMemcpyHtoDAsync_v2(d, h, n, nullptr); }
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, CUstream s) {
    emu_device::drain(emu_device::resolve(s));
    return memcpy(h, (const void*)d, n), SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { return cuMemcpyDtoHAsync_v2(h, d, n, nullptr); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr src, size_t n, CUstream s) {
    emu_device::drain(emu_device::resolve(s));
    return memmove((void*)d, (const void*)src, n), SUCCESS;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { return cuMemcpyDtoDAsync_v2(d, s, n, nullptr); }

// ---- modules and launches ----
CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    const char* ptx = (const char*)image;
    if (!strstr(ptx, ".entry")) return fail(INVALID_IMAGE, "cuModuleLoadData: not PTX with kernels");
    // PTX ISA x.y by CUDA version: 12.y writes 8.y, 13.y writes 9.y (close enough for the check)
    int isa_major = 0, isa_minor = 0;
    if (const char* v = strstr(ptx, ".version ")) sscanf(v + 9, "%d.%d", &isa_major, &isa_minor);
    const int driver = driver_version(), newest = 10 * (driver / 1000 - 4) + driver % 1000 / 10;
    if (driver && 10 * isa_major + isa_minor > newest)
        return fail(UNSUPPORTED_PTX_VERSION, "cuModuleLoadData: PTX ISA " + std::to_string(isa_major) + "." +
                                                 std::to_string(isa_minor) + " is newer than this driver's");
    return *m = new Module{ptx}, SUCCESS;
}
CUresult cuModuleUnload(CUmodule m) { return delete (Module*)m, SUCCESS; }
CUresult cuModuleGetFunction(void** f, CUmodule m, const char* name) {
    const std::string entry = std::string(".entry ") + name + "(";
    if (((Module*)m)->ptx.find(entry) == std::string::npos)
        return fail(NOT_FOUND, std::string("cuModuleGetFunction: no kernel ") + name + " in the module's PTX");
    auto it = emu::kernels().find(name);
    if (it == emu::kernels().end())
        return fail(NOT_FOUND, std::string("kernel ") + name +
                                   " is in the PTX but not in this emulated device (rebuild it: tools/emulated_device.py)");
    const int static_smem = static_shared_bytes(((Module*)m)->ptx, name);
    return *f = new Function{name, &it->second, static_smem, DEFAULT_SMEM - static_smem}, SUCCESS;
}
CUresult cuFuncSetAttribute(void* f, int attribute, int value) {
    if (attribute == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value + ((Function*)f)->static_smem > optin_smem())
            return fail(INVALID_VALUE, ((Function*)f)->name + ": dynamic and static shared memory above the " +
                                           "device's opt-in (" + std::to_string(optin_smem()) + " bytes)");
        ((Function*)f)->max_dynamic_smem = value;
    }
    return SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int attribute, void* f) {
    *v = attribute == 0 ? 1024 : attribute == 8 ? ((Function*)f)->max_dynamic_smem : 0;
    return SUCCESS;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream stream, void** params, void** extra) {
    const Function& fn = *(const Function*)f;
    const std::string& name = fn.name;
    const unsigned long threads = (unsigned long)bx * by * bz;
    if (extra) return fail(NOT_SUPPORTED, name + ": launch `extra` arguments are not emulated");
    if (threads == 0 || threads > 1024 || bz > 64 || gx == 0 || gy == 0 || gz == 0 || gx > 0x7fffffffu ||
        gy > 65535 || gz > 65535)
        return fail(INVALID_VALUE, name + ": launch shape out of range (" + std::to_string(gx) + "×" +
                                       std::to_string(gy) + "×" + std::to_string(gz) + " blocks of " +
                                       std::to_string(bx) + "×" + std::to_string(by) + "×" + std::to_string(bz) + ")");
    if (threads % 32) return fail(NOT_SUPPORTED, name + ": the emulator runs blocks of whole warps only");
    if ((int)smem > fn.max_dynamic_smem)
        return fail(INVALID_VALUE, name + ": " + std::to_string(smem) +
                                       " bytes of dynamic shared memory, above the kernel's limit (cuFuncSetAttribute)");
    const std::function<void()> body = (*fn.bind)(params);  // the arguments copied now, as the driver does
    const dim3 grid{gx, gy, gz}, block{bx, by, bz};
    auto run = [name, grid, block, smem, body] {
        std::lock_guard<std::mutex> g(device_lock);
        static bool handler = false;
        if (!handler) {
            struct sigaction sa = {};
            sa.sa_sigaction = on_segv;
            sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
            sigaction(SIGSEGV, &sa, &previous_segv);
            handler = true;
        }
        running_kernel = name.c_str();
        emu::launch(grid, block, smem, body);
        running_kernel = nullptr;
        return true;
    };
    emu_device::run_in_order(emu_device::resolve(stream), run);
    return SUCCESS;
}

}  // extern "C"
