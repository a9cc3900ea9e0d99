// An emulated CUDA device behind the driver API (libcuda.so): the subset cudarc calls for our host
// code, so the GPU path (kernels/src/cuda, trainer/src/gpu) and its tests run on a machine without a
// GPU. Device memory is host memory; streams and events are synchronous; modules are the PTX NVRTC
// made (checked for the kernel's entry) paired with the kernel's own source compiled for the CPU
// emulator (cuda_emulator.h, registry.h). Built by tools/emulated_device.py.
//
// What a real device would refuse is refused here too, with the reason on stderr: a block over 1024
// threads or not whole warps, a grid beyond 2^31 − 1 × 65535 × 65535, dynamic shared memory above
// 48 KiB without cuFuncSetAttribute, a kernel missing from the loaded PTX. Every allocation ends at
// a guard page (an access past its last 256-byte unit faults, and the fault names the kernel) and
// starts filled with 0xff bytes (NaN in f32 and bf16), so a read of memory never written shows.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

#include "cuda_emulator.h"
#include "registry.h"

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
    NOT_FOUND = 500,
    LAUNCH_OUT_OF_RESOURCES = 701,
    NOT_SUPPORTED = 801,
};

namespace {

// H200-like figures (sm_90), so the host code takes the tensor-core paths it takes there.
constexpr int SMS = 132, OPTIN_SMEM = 232448, SMEM_PER_SM = 233472, DEFAULT_SMEM = 48 * 1024;
constexpr size_t TOTAL_MEMORY = 16ull << 30;

struct Module {
    std::string ptx;
};
struct Function {
    std::string name;
    const emu::KernelCall* call;
    int static_smem;       // bytes of the module's `.shared` variables the kernel's body names
    int max_dynamic_smem;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: 48 KiB − static until raised
};
struct Event {
    std::chrono::steady_clock::time_point at;
};

std::mutex device_lock;  // one launch at a time: the emulator's block state is global
std::map<uintptr_t, std::pair<void*, size_t>> allocations;  // user pointer → (mapping, its length)
size_t bytes_in_use = 0;
const char* running_kernel = nullptr;
struct sigaction previous_segv;
int context_token, stream_token;

CUresult fail(CUresult code, const std::string& why) {
    fprintf(stderr, "emulated CUDA device: %s\n", why.c_str());
    return code;
}

void on_segv(int sig, siginfo_t* info, void* uc) {
    if (running_kernel) {
        char msg[256];
        const int n = snprintf(msg, sizeof msg, "emulated CUDA device: kernel %s touched %p, outside its buffers\n",
                               running_kernel, info->si_addr);
        if (write(2, msg, n) < 0) {
        }
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

CUresult allocate(CUdeviceptr* out, size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t body = (bytes + 255) / 256 * 256 + (bytes == 0 ? 256 : 0);
    const size_t span = (body + page - 1) / page * page + page;
    void* base = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return OUT_OF_MEMORY;
    char* guard = (char*)base + span - page;
    mprotect(guard, page, PROT_NONE);
    char* p = guard - body;
    memset(p, 0xff, body);
    std::lock_guard<std::mutex> g(device_lock);
    allocations[(uintptr_t)p] = {base, span};
    bytes_in_use += span;
    *out = (CUdeviceptr)(uintptr_t)p;
    return SUCCESS;
}

CUresult release(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(device_lock);
    auto it = allocations.find((uintptr_t)p);
    if (it == allocations.end()) return fail(INVALID_VALUE, "cuMemFree of " + std::to_string(p) + ", not an allocation");
    munmap(it->second.first, it->second.second);
    bytes_in_use -= it->second.second;
    allocations.erase(it);
    return SUCCESS;
}

}  // namespace

extern "C" {

CUresult cuInit(unsigned) { return SUCCESS; }
CUresult cuDriverGetVersion(int* v) { return *v = 13000, SUCCESS; }
CUresult cuDeviceGetCount(int* n) { return *n = 1, SUCCESS; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) { return ordinal == 0 ? (*d = 0, SUCCESS) : INVALID_DEVICE; }
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "Emulated CUDA device (kernels/emulator)");
    return SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) { return *bytes = TOTAL_MEMORY, SUCCESS; }
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
        case 75: *v = 9; break;                     // compute capability 9.0
        case 76: *v = 0; break;
        case 81: *v = SMEM_PER_SM; break;
        case 97: *v = OPTIN_SMEM; break;
        case 115: *v = 1; break;                    // memory pools (cuMemAllocAsync)
        default: *v = 0;
    }
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) { return *c = &context_token, SUCCESS; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* c) { return *c = &context_token, SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext) { return SUCCESS; }
CUresult cuCtxSynchronize() { return SUCCESS; }
CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return SUCCESS;
}
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(device_lock);
    *total = TOTAL_MEMORY;
    *free_bytes = TOTAL_MEMORY > bytes_in_use ? TOTAL_MEMORY - bytes_in_use : 0;
    return SUCCESS;
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case SUCCESS: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return SUCCESS;
}
CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

// ---- streams and events: everything has finished when its call returns ----
CUresult cuStreamCreate(CUstream* s, unsigned) { return *s = &stream_token, SUCCESS; }
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned, int) { return *s = &stream_token, SUCCESS; }
CUresult cuStreamDestroy_v2(CUstream) { return SUCCESS; }
CUresult cuStreamSynchronize(CUstream) { return SUCCESS; }
CUresult cuStreamQuery(CUstream) { return SUCCESS; }
CUresult cuStreamWaitEvent(CUstream, void*, unsigned) { return SUCCESS; }
CUresult cuLaunchHostFunc(CUstream, CUhostFn f, void* user) { return f(user), SUCCESS; }
CUresult cuEventCreate(void** e, unsigned) { return *e = new Event{std::chrono::steady_clock::now()}, SUCCESS; }
CUresult cuEventDestroy_v2(void* e) { return delete (Event*)e, SUCCESS; }
CUresult cuEventRecord(void* e, CUstream) { return ((Event*)e)->at = std::chrono::steady_clock::now(), SUCCESS; }
CUresult cuEventQuery(void*) { return SUCCESS; }
CUresult cuEventSynchronize(void*) { return SUCCESS; }
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) {
    *ms = std::chrono::duration<float, std::milli>(((Event*)b)->at - ((Event*)a)->at).count();
    return SUCCESS;
}
CUresult cuEventElapsedTime(float* ms, void* a, void* b) { return cuEventElapsedTime_v2(ms, a, b); }

// ---- memory ----
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { return allocate(p, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return allocate(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) { return release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return release(p); }
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return memset((void*)p, v, n), SUCCESS; }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) { return cuMemsetD8_v2(p, v, n); }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { return memcpy((void*)d, h, n), SUCCESS; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, CUstream) { return cuMemcpyHtoD_v2(d, h, n); }
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { return memcpy(h, (const void*)d, n), SUCCESS; }
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, CUstream) { return cuMemcpyDtoH_v2(h, d, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { return memmove((void*)d, (const void*)s, n), SUCCESS; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream) { return cuMemcpyDtoD_v2(d, s, n); }

// ---- modules and launches ----
CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    const char* ptx = (const char*)image;
    if (!strstr(ptx, ".entry")) return fail(INVALID_IMAGE, "cuModuleLoadData: not PTX with kernels");
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
        if (value + ((Function*)f)->static_smem > OPTIN_SMEM)
            return fail(INVALID_VALUE, ((Function*)f)->name + ": dynamic and static shared memory above the " +
                                           "device's opt-in (" + std::to_string(OPTIN_SMEM) + " bytes)");
        ((Function*)f)->max_dynamic_smem = value;
    }
    return SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int attribute, void* f) {
    *v = attribute == 0 ? 1024 : attribute == 8 ? ((Function*)f)->max_dynamic_smem : 0;
    return SUCCESS;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream, void** params, void** extra) {
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
    emu::launch({gx, gy, gz}, {bx, by, bz}, smem, [&] { (*fn.call)(params); });
    running_kernel = nullptr;
    return SUCCESS;
}

}  // extern "C"
