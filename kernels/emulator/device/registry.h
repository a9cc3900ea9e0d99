// The emulated device's kernels by name: every `extern "C"` kernel of kernels/cuda, compiled for the
// emulator (one translation unit per .cu file, tools/emulated_device.py), registers a call that
// unpacks cuLaunchKernel's parameter array into the kernel's own argument types.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

namespace emu {

// Runs the kernel for the calling (emulated) thread with arguments read from `params[i]`, each a
// pointer to one argument, as the CUDA driver receives them.
using KernelCall = std::function<void(void** params)>;

inline std::map<std::string, KernelCall>& kernels() {
    static std::map<std::string, KernelCall> by_name;
    return by_name;
}

template <class... A, size_t... I>
void call_with(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

struct Register {
    template <class... A>
    Register(const char* name, void (*kernel)(A...)) {
        kernels()[name] = [kernel](void** params) { call_with(kernel, params, std::index_sequence_for<A...>{}); };
    }
};

}  // namespace emu
