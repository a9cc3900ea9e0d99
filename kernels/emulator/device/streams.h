// Devices, contexts, streams and events of the emulated CUDA device (driver.cpp, nccl.cpp).
//
// Work on a stream runs in order. A kernel, copy or memset runs at once on the calling thread after
// everything queued before it has finished (the call waits for that: the emulated device does its
// own work synchronously). What cannot finish at once, a collective waiting for its peers (nccl.cpp)
// and whatever is queued behind it, waits in the stream's queue and moves on whenever the stream is
// used, queried or synchronised, so events and the NCCL watchdog see work in flight as on a GPU.
//
// With INFINITY_EMULATED_LAZY=1 kernels and GEMMs wait in their stream's queue until something needs
// them: a copy, set or synchronisation of their stream, or another stream waiting for an event behind
// them; collectives and event waits still start at once. A collective that reads what another
// stream's kernels write, without waiting for them, then reads it stale, as a GPU running the two
// streams at once may: a missing cross-stream wait fails a test instead of passing by luck.
#pragma once
#include <chrono>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace emu_device {

// One try at a queued operation: true once it is done (it never waits).
using Step = std::function<bool()>;

struct Stream {
    std::deque<Step> queue;
    unsigned long long issued = 0, finished = 0;  // operations queued, and done, so far
};

struct Context {
    int ordinal;
    Stream default_stream;
    std::vector<Stream*> streams;  // made by cuStreamCreate
};

struct Event {
    Stream* stream = nullptr;  // none until recorded
    unsigned long long position = 0;
    std::chrono::steady_clock::time_point at;
};

// Guards every queue; recursive because a step may move another stream on (cuStreamWaitEvent).
inline std::recursive_mutex queue_lock;

// Devices: one per entry of CUDA_VISIBLE_DEVICES when it is set, else INFINITY_EMULATED_GPUS (2).
inline int device_count() {
    static const int n = [] {
        const char* visible = getenv("CUDA_VISIBLE_DEVICES");
        if (visible && *visible) {
            int entries = 1;
            for (const char* c = visible; *c; ++c) entries += *c == ',';
            return entries;
        }
        const char* wanted = getenv("INFINITY_EMULATED_GPUS");
        return wanted ? std::max(atoi(wanted), 1) : 2;
    }();
    return n;
}

inline std::vector<std::unique_ptr<Context>>& contexts() {
    static std::vector<std::unique_ptr<Context>> all = [] {
        std::vector<std::unique_ptr<Context>> v;
        for (int i = 0; i < device_count(); ++i) v.emplace_back(new Context{i, {}, {}});
        return v;
    }();
    return all;
}

inline thread_local Context* current = nullptr;

// INFINITY_EMULATED_LAZY=1: nothing runs at its launch (above).
inline bool lazy() {
    static const bool on = [] {
        const char* v = getenv("INFINITY_EMULATED_LAZY");
        return v && *v && *v != '0';
    }();
    return on;
}

// The stream a handle names: the current context's own for the null (legacy default) handle.
inline Stream* resolve(void* handle) {
    if (handle) return (Stream*)handle;
    return &(current ? current : contexts()[0].get())->default_stream;
}

// Moves `s` on as far as it goes without waiting.
inline void progress(Stream* s) {
    std::lock_guard<std::recursive_mutex> g(queue_lock);
    while (!s->queue.empty() && s->queue.front()()) {
        s->queue.pop_front();
        ++s->finished;
    }
}

inline bool idle(Stream* s) {
    std::lock_guard<std::recursive_mutex> g(queue_lock);
    return s->queue.empty();
}

// Waits until everything queued on `s` has finished.
inline void drain(Stream* s) {
    for (progress(s); !idle(s); progress(s)) std::this_thread::sleep_for(std::chrono::microseconds(50));
}

// Queues `step` on `s`; it runs at once when nothing waits before it.
inline void enqueue(Stream* s, Step step) {
    std::lock_guard<std::recursive_mutex> g(queue_lock);
    ++s->issued;
    if (s->queue.empty() && step()) {
        ++s->finished;
        return;
    }
    s->queue.push_back(std::move(step));
}

// Runs `work` (a kernel or GEMM) in `s`'s order: at once after the work queued before it, or under
// lazy() queued until something needs it.
inline void run_in_order(Stream* s, Step work) {
    if (!lazy()) {
        drain(s);
        work();
        return;
    }
    std::lock_guard<std::recursive_mutex> g(queue_lock);
    ++s->issued;
    s->queue.push_back(std::move(work));
}

// Whether `e`'s stream has finished the work queued before `e` was recorded, moving it on only that
// far: work queued later is not waited for, and may itself wait on the caller's stream (a step of one
// stream waiting on another that waits back would recurse without end).
inline bool reached(const Event& e) {
    if (!e.stream) return true;
    std::lock_guard<std::recursive_mutex> g(queue_lock);
    Stream* s = e.stream;
    while (s->finished < e.position && !s->queue.empty() && s->queue.front()()) {
        s->queue.pop_front();
        ++s->finished;
    }
    return s->finished >= e.position;
}

}  // namespace emu_device
