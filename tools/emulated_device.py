#!/usr/bin/env python3
"""Build the emulated CUDA device: one library, named libcuda.so, libcublas.so and libnccl.so (links),
that runs our host code's CUDA, cuBLAS and NCCL calls on the CPU (kernels/emulator/device), with every
kernel of kernels/cuda compiled for the emulator.

    python3 tools/emulated_device.py [--out target/emulated-device]

Put OUT first on LD_LIBRARY_PATH (beside NVRTC, which stays real) and the gated GPU tests run on it:
scripts/test.sh does. Needs a C++17 compiler (CXX, default c++).
"""
import argparse
import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CUDA = ROOT / "kernels" / "cuda"
EMULATOR = ROOT / "kernels" / "emulator"
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-w", "-ffp-contract=off", "-fno-strict-aliasing"]


def kernel_names(cxx: str, source: pathlib.Path) -> list:
    """The `extern "C"` kernels `source` defines, macro-made ones included (from its preprocessed text;
    the kernel sources include only our own headers)."""
    defines = ["-DKERNEL_EMULATOR", "-D__global__=", "-D__launch_bounds__(...)=", "-D__restrict__=",
               "-D__device__=", "-D__forceinline__=", "-D__shared__=static", "-D__align__(n)="]
    out = subprocess.run([cxx, "-E", "-P", "-x", "c++", *defines, "-I", str(CUDA), str(source)],
                         check=True, capture_output=True, text=True).stdout
    return sorted(set(re.findall(r'extern\s+"C"\s+void\s+(\w+)\s*\(', out)))


def build_unit(cxx: str, out: pathlib.Path, cu: pathlib.Path) -> pathlib.Path:
    src_dir = out / "src"
    names = kernel_names(cxx, cu)
    if not names:
        sys.exit(f"{cu}: no extern \"C\" kernels found")
    unit = src_dir / f"{cu.stem}_unit.cpp"
    registrations = "\n".join(f'static emu::Register reg_{n}("{n}", &{n});' for n in names)
    # the kernel by its full path: a same-named file beside the unit (older builds left copies there)
    # must not shadow it
    unit.write_text(f'#include "cuda_emulator.h"\n#include "registry.h"\n#include "{cu.resolve()}"\n{registrations}\n')
    obj = src_dir / f"{cu.stem}.o"
    subprocess.run([cxx, *FLAGS, "-I", str(EMULATOR), "-I", str(EMULATOR / "device"), "-I", str(CUDA),
                    "-c", str(unit), "-o", str(obj)], check=True)
    return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "target" / "emulated-device"))
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    cxx = os.environ.get("CXX", "c++")
    out = pathlib.Path(args.out)
    (out / "src").mkdir(parents=True, exist_ok=True)
    sources = sorted(CUDA.glob("*.cu"))
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        objects = list(pool.map(lambda cu: build_unit(cxx, out, cu), sources))
    def stand_in(name):
        obj = out / "src" / f"{name}.o"
        subprocess.run([cxx, *FLAGS, "-I", str(EMULATOR), "-I", str(EMULATOR / "device"), "-c",
                        str(EMULATOR / "device" / f"{name}.cpp"), "-o", str(obj)], check=True)
        return obj

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        objects += list(pool.map(stand_in, ["driver", "cublas", "nccl"]))
    library = out / "libemulated-cuda.so"
    subprocess.run([cxx, "-shared", "-pthread", "-o", str(library), *map(str, objects)], check=True)
    for name in ["libcuda.so", "libcublas.so", "libnccl.so"]:
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(library.name)
    print(f"emulated CUDA device: {library} ({len(sources)} kernel files) as libcuda.so, libcublas.so, libnccl.so")

if __name__ == "__main__":
    main()
