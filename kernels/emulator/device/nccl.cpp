// The emulated device's NCCL (libnccl.so): the communicator calls launcher/src/comm/nccl.rs makes,
// between ranks that are threads of one process or separate processes on this machine. A
// communicator is a folder (named in its unique id, under /dev/shm or TMPDIR); collective number k
// is one file per rank, `k.RANK`, written whole and renamed into place. A collective is queued on its
// stream (streams.h): it posts this rank's file when it reaches the front, and finishes once every
// rank's file is there, reducing in rank order (a fixed order: runs repeat bit for bit). A rank
// deletes its file of collective k − 2 when it posts k: every peer is past k − 1 by then, so done
// reading k − 2. ncclCommAbort cancels the queued collectives (the watchdog's way out of a stall).
// The last rank to leave removes the folder; ncclGetUniqueId sweeps folders whose maker has died.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "streams.h"

namespace fs = std::filesystem;

typedef int ncclResult_t;
enum : ncclResult_t { ncclSuccess = 0, ncclSystemError = 2, ncclInvalidArgument = 4, ncclInvalidUsage = 5 };
enum { ncclInt8, ncclUint8, ncclInt32, ncclUint32, ncclInt64, ncclUint64, ncclFloat16, ncclFloat32, ncclFloat64 };
constexpr int ID_BYTES = 128;
struct ncclUniqueId {
    char internal[ID_BYTES];
};

namespace {

constexpr char ID_TAG[] = "emulated-nccl:";

struct Comm {
    fs::path dir;
    int rank, ranks, device;
    unsigned long long next = 0;  // the number of the next collective
    std::atomic<bool> aborted{false};
};

enum class Kind { AllReduce, Broadcast, AllGather, ReduceScatter, Reduce };

ncclResult_t fail(ncclResult_t code, const std::string& why) {
    fprintf(stderr, "emulated NCCL: %s\n", why.c_str());
    return code;
}

size_t width(int type) {
    switch (type) {
        case ncclInt8: case ncclUint8: return 1;
        case ncclFloat16: return 2;
        case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
        default: return 8;
    }
}

template <class T>
void add(void* into, const void* from, size_t n) {
    for (size_t i = 0; i < n; ++i) ((T*)into)[i] += ((const T*)from)[i];
}

// into[i] += from[i] for `n` values of `type` (sum is the only operation our code uses; the types
// were checked when the collective was queued).
void accumulate(int type, void* into, const void* from, size_t n) {
    switch (type) {
        case ncclInt8: add<int8_t>(into, from, n); break;
        case ncclUint8: add<uint8_t>(into, from, n); break;
        case ncclInt32: add<int32_t>(into, from, n); break;
        case ncclUint32: add<uint32_t>(into, from, n); break;
        case ncclInt64: add<int64_t>(into, from, n); break;
        case ncclUint64: add<uint64_t>(into, from, n); break;
        case ncclFloat32: add<float>(into, from, n); break;
        case ncclFloat64: add<double>(into, from, n); break;
    }
}

fs::path part(const Comm& c, unsigned long long k, int rank) { return c.dir / (std::to_string(k) + "." + std::to_string(rank)); }

void post(const Comm& c, unsigned long long k, const void* data, size_t bytes) {
    const fs::path file = part(c, k, c.rank), tmp = file.string() + ".tmp";
    std::ofstream(tmp, std::ios::binary).write((const char*)data, (std::streamsize)bytes);
    fs::rename(tmp, file);
    if (k >= 2) fs::remove(part(c, k - 2, c.rank));
}

// Rank `rank`'s part of collective `k`, which must hold at least `bytes` (a peer that called the
// collective with fewer values stops the process, named: a queued operation cannot return an error).
std::vector<char> read(const Comm& c, unsigned long long k, int rank, size_t bytes) {
    std::ifstream in(part(c, k, rank), std::ios::binary);
    std::vector<char> data(std::istreambuf_iterator<char>(in), {});
    if (data.size() < bytes) {
        fprintf(stderr, "emulated NCCL: rank %d's part of collective %llu has %zu bytes, rank %d expected %zu\n", rank,
                k, data.size(), c.rank, bytes);
        abort();
    }
    return data;
}

// Queues collective `kind` on `stream`: `count` values per rank's part (the whole buffer for
// all-reduce, reduce and broadcast; a reduce writes `recv` at `root` only).
ncclResult_t collective(Kind kind, const void* send, void* recv, size_t count, int type, int root, Comm* c,
                        void* stream) {
    if (!c) return fail(ncclInvalidArgument, "a null communicator");
    if (c->aborted) return fail(ncclInvalidUsage, "a collective on an aborted communicator");
    if (type == ncclFloat16 || type > ncclFloat64) return fail(ncclInvalidArgument, "this data type is not emulated");
    const size_t bytes = count * width(type);
    const unsigned long long k = c->next++;
    auto posted = std::make_shared<bool>(false);
    emu_device::enqueue(emu_device::resolve(stream), [=] {
        if (c->aborted) return true;  // cancelled: recv is left as it was
        if (!*posted) {
            const bool sends = kind != Kind::Broadcast || c->rank == root;
            post(*c, k, send, !sends ? 0 : kind == Kind::ReduceScatter ? bytes * c->ranks : bytes);
            *posted = true;
        }
        for (int r = 0; r < c->ranks; ++r)
            if (!fs::exists(part(*c, k, r))) return false;
        switch (kind) {
            case Kind::Broadcast: {
                memcpy(recv, read(*c, k, root, bytes).data(), bytes);
                break;
            }
            case Kind::AllGather:
                for (int r = 0; r < c->ranks; ++r) memcpy((char*)recv + r * bytes, read(*c, k, r, bytes).data(), bytes);
                break;
            case Kind::Reduce:
                if (c->rank != root) break;
                [[fallthrough]];
            case Kind::AllReduce:
            case Kind::ReduceScatter: {
                const size_t offset = kind == Kind::ReduceScatter ? c->rank * bytes : 0;
                std::vector<char> sum(bytes, 0);
                for (int r = 0; r < c->ranks; ++r)
                    accumulate(type, sum.data(), read(*c, k, r, offset + bytes).data() + offset, count);
                memcpy(recv, sum.data(), bytes);
                break;
            }
        }
        return true;
    });
    return ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* v) { return *v = 22800, ncclSuccess; }
const char* ncclGetErrorString(ncclResult_t r) { return r == ncclSuccess ? "no error" : "emulated NCCL error"; }

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    const char* shm = "/dev/shm";
    const char* tmp = getenv("TMPDIR");
    const fs::path base = fs::is_directory(shm) ? shm : tmp ? tmp : "/tmp";
    // folders whose maker is gone (a killed rank 0 never removes its own): swept here
    std::error_code ignored;
    for (const auto& entry : fs::directory_iterator(base, ignored)) {
        const std::string name = entry.path().filename().string();
        if (name.rfind("emulated-nccl-", 0) != 0) continue;
        const int maker = atoi(name.c_str() + strlen("emulated-nccl-"));
        if (maker > 0 && kill(maker, 0) != 0 && errno == ESRCH) fs::remove_all(entry.path(), ignored);
    }
    // The name is unique by construction, not by chance: the pid tells live processes apart, a
    // process-wide count this process's communicators, and the clock a reused pid from a stale
    // folder. (std::random_device is not enough: libstdc++ draws it from RDSEED first, whose 32-bit
    // form returns 0 far too often on some AMD CPUs, and a shared name would merge two groups.)
    static std::atomic<unsigned long long> made{0};
    const auto ns = std::chrono::steady_clock::now().time_since_epoch().count();
    const std::string name =
        "emulated-nccl-" + std::to_string(getpid()) + "-" + std::to_string(made++) + "-" + std::to_string(ns);
    const std::string text = ID_TAG + (base / name).string();
    if (text.size() >= ID_BYTES) return fail(ncclSystemError, "the folder name does not fit the unique id");
    memset(id->internal, 0, ID_BYTES);
    memcpy(id->internal, text.data(), text.size());
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(Comm** out, int ranks, ncclUniqueId id, int rank) {
    std::string text(id.internal, strnlen(id.internal, ID_BYTES));
    if (text.rfind(ID_TAG, 0) != 0) return fail(ncclInvalidArgument, "the unique id is not an emulated NCCL id");
    if (ranks < 1 || rank < 0 || rank >= ranks) return fail(ncclInvalidArgument, "rank outside the world");
    auto* c = new Comm{text.substr(sizeof ID_TAG - 1), rank, ranks, 0};
    c->device = emu_device::current ? emu_device::current->ordinal : 0;
    std::error_code ignored;
    fs::create_directories(c->dir, ignored);
    // every rank is there before anyone goes on (as ncclCommInitRank waits for its peers); a rank
    // that joined already means two communicators share the id: refused, never merged
    const fs::path joined = c->dir / ("joined." + std::to_string(rank));
    const int fd = open(joined.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0) {
        const int why = errno;
        const std::string dir = c->dir.string();
        delete c;
        return fail(why == EEXIST ? ncclInvalidUsage : ncclSystemError,
                    "rank " + std::to_string(rank) + " cannot join " + dir + ": " + strerror(why));
    }
    close(fd);
    for (int r = 0; r < ranks;)
        if (fs::exists(c->dir / ("joined." + std::to_string(r))))
            ++r;
        else
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
    *out = c;
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const Comm* c, int* n) { return *n = c->ranks, ncclSuccess; }
ncclResult_t ncclCommUserRank(const Comm* c, int* r) { return *r = c->rank, ncclSuccess; }
ncclResult_t ncclCommCuDevice(const Comm* c, int* d) { return *d = c->device, ncclSuccess; }
ncclResult_t ncclCommGetAsyncError(Comm*, ncclResult_t* state) { return *state = ncclSuccess, ncclSuccess; }
ncclResult_t ncclGroupStart() { return ncclSuccess; }
ncclResult_t ncclGroupEnd() { return ncclSuccess; }

// Queued collectives may still name the communicator: it is marked, never freed. A rank leaves by
// destroying or aborting its communicator; the last to leave removes the folder.
ncclResult_t ncclCommDestroy(Comm* c) {
    std::ofstream(c->dir / ("left." + std::to_string(c->rank))).put('1');
    bool last = true;
    for (int r = 0; r < c->ranks; ++r) last &= fs::exists(c->dir / ("left." + std::to_string(r)));
    std::error_code ignored;
    if (last) fs::remove_all(c->dir, ignored);
    return ncclSuccess;
}
ncclResult_t ncclCommAbort(Comm* c) { return c->aborted = true, ncclCommDestroy(c); }
ncclResult_t ncclCommFinalize(Comm*) { return ncclSuccess; }

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* c, void* stream) {
    if (op != 0) return fail(ncclInvalidArgument, "reductions other than sum are not emulated");
    return collective(Kind::AllReduce, send, recv, count, type, 0, c, stream);
}
ncclResult_t ncclReduce(const void* send, void* recv, size_t count, int type, int op, int root, Comm* c,
                        void* stream) {
    if (op != 0) return fail(ncclInvalidArgument, "reductions other than sum are not emulated");
    if (root < 0 || root >= c->ranks) return fail(ncclInvalidArgument, "reduce root outside the world");
    return collective(Kind::Reduce, send, recv, count, type, root, c, stream);
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, Comm* c, void* stream) {
    if (root < 0 || root >= c->ranks) return fail(ncclInvalidArgument, "broadcast root outside the world");
    return collective(Kind::Broadcast, send, recv, count, type, root, c, stream);
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, int type, Comm* c, void* stream) {
    return collective(Kind::AllGather, send, recv, count, type, 0, c, stream);
}
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, int type, int op, Comm* c,
                               void* stream) {
    if (op != 0) return fail(ncclInvalidArgument, "reductions other than sum are not emulated");
    return collective(Kind::ReduceScatter, send, recv, count, type, 0, c, stream);
}

}  // extern "C"
