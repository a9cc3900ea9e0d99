#!/usr/bin/env python3
"""Instruction mix of a kernel's loops, from SASS, without a GPU.

A tensor-core kernel issues one instruction per cycle per warp scheduler, and an HMMA.16816 keeps
the tensor core of its SM sub-partition busy for several cycles: when a loop body carries many
other instructions per HMMA (softmax exponentials, masks, address arithmetic), the loop is bound by
issue, not by the tensor cores. This prints, per basic block that holds an HMMA or a MUFU (the
special-function unit: exponentials, logarithms), its size and opcode counts, so a change to a
kernel's inner loop can be weighed before a GPU run.

    INFINITY_PTX_DIR=/tmp/ptx cargo test -p infinity-kernels --features cuda --test cuda_compile
    ptxas -arch=sm_90 /tmp/ptx/attention_bf16.cu.compute_90.ptx -o /tmp/a.cubin
    nvdisasm /tmp/a.cubin > /tmp/a.sass
    python3 tools/sass_mix.py /tmp/a.sass attention_forward_bf16_c128 [--all]

ptxas and nvdisasm come with the CUDA toolkit, or the `nvidia-cuda-nvcc` and `nvidia-cuda-nvdisasm`
wheels on PyPI. A block's count is static (instructions in the listing), not how often it runs: a
loop's body is the chain of blocks between its label and its backward branch.
"""
import collections
import re
import sys


def blocks_of(listing, kernel):
    """[(label, [opcode, ...])] of `kernel` in an nvdisasm listing, in order."""
    lines = listing.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f".text.{kernel}:")]
    if not starts:
        names = [l[6:-1] for l in lines if l.startswith(".text.") and l.endswith(":")]
        sys.exit(f"no kernel {kernel!r} in the listing; it has: {', '.join(names)}")
    blocks, label, ops = [], "entry", []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("//----") or line.startswith("\t.section"):
            break
        m = re.match(r"(\.L_x_\d+):", line)
        if m:
            blocks.append((label, ops))
            label, ops = m.group(1), []
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            ops.append(m.group(1).split(".")[0])
    blocks.append((label, ops))
    return blocks


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__)
    show_all = "--all" in sys.argv
    with open(args[0]) as f:
        blocks = blocks_of(f.read(), args[1])
    total = collections.Counter()
    for label, ops in blocks:
        count = collections.Counter(ops)
        total += count
        if count["HMMA"] or count["MUFU"] or show_all:
            hmma = count["HMMA"]
            per = f"{(len(ops) - hmma) / hmma:5.2f}" if hmma else "    –"
            top = ", ".join(f"{k} {v}" for k, v in count.most_common(10))
            print(f"{label:10} {len(ops):5} instr  HMMA {hmma:4}  MUFU {count['MUFU']:3}  other/HMMA {per}  | {top}")
    print(f"total {sum(total.values())} instr: " + ", ".join(f"{k} {v}" for k, v in total.most_common(16)))


if __name__ == "__main__":
    main()
