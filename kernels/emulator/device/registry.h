// The emulated device's kernels by name: every `extern "C"` kernel of kernels/cuda, compiled for the
// emulator (one translation unit per .cu file, tools/emulated_device.py), registers a binder that
// copies cuLaunchKernel's parameter array into the kernel's own argument types (at the launch, as the
// driver does, so the kernel may run later in stream order).
#pragma once
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace emu {

// Copies the arguments from `params[i]`, each a pointer to one argument as the CUDA driver receives
// them, and returns the body that runs the kernel with them for the calling (emulated) thread.
using KernelBind = std::function<std::function<void()>(void** params)>;

inline std::map<std::string, KernelBind>& kernels() {
    static std::map<std::string, KernelBind> by_name;
    return by_name;
}

template <class... A, size_t... I>
std::function<void()> bind_with(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    std::tuple<std::remove_cv_t<std::remove_reference_t<A>>...> args{
        *static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...};
    return [kernel, args] { std::apply(kernel, args); };
}

struct Register {
    template <class... A>
    Register(const char* name, void (*kernel)(A...)) {
        kernels()[name] = [kernel](void** params) { return bind_with(kernel, params, std::index_sequence_for<A...>{}); };
    }
};

}  // namespace emu
