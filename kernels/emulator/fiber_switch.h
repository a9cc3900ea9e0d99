// Switching between the emulator's fibers (cuda_emulator.h). On x86-64: a dozen instructions that save
// the callee-saved registers and the floating-point control words on the old stack and restore them
// from the new one. Elsewhere: ucontext, whose swapcontext also saves and restores the signal mask, a
// system call per switch (on x86-64 that was most of the emulator's time).
#pragma once
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__)

extern "C" void emu_switch_stacks(void** save_sp, void* load_sp);
// A weak, hidden symbol in its own section group: every translation unit including this header
// emits it and the linker keeps one.
asm(R"(
    .pushsection .text.emu_switch_stacks,"axG",@progbits,emu_switch_stacks,comdat
    .weak emu_switch_stacks
    .hidden emu_switch_stacks
    .type emu_switch_stacks, @function
emu_switch_stacks:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stacks, .-emu_switch_stacks
    .popsection
)");

namespace emu {

struct Context {
    void* sp = nullptr;
};

// `c` starts `entry` (which must never return) on `stack` at its first switch_to.
inline void prepare(Context& c, char* stack, size_t bytes, void (*entry)()) {
    uint32_t mxcsr;
    uint16_t fpu_cw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu_cw));
    auto* top = (uint64_t*)(((uintptr_t)stack + bytes) & ~(uintptr_t)15);
    *--top = 0;                           // entry's return address (it never returns): keeps the ABI's alignment
    *--top = (uint64_t)(uintptr_t)entry;  // where emu_switch_stacks' `ret` goes
    for (int r = 0; r < 6; ++r) *--top = 0;  // rbp, rbx, r12–r15
    *--top = mxcsr | (uint64_t)fpu_cw << 32;
    c.sp = top;
}

inline void switch_to(Context& from, Context& to) { emu_switch_stacks(&from.sp, to.sp); }

}  // namespace emu

#else
#include <ucontext.h>

namespace emu {

struct Context {
    ucontext_t uc;
};

inline void prepare(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}

inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

}  // namespace emu
#endif
