#!/usr/bin/env python3
"""PyTorch eager doing the same math as our two headline CUDA kernels, for side-by-side benchmarks.

Called by `cargo bench -p infinity-kernels --features cuda --bench cuda_kernels` with the same shapes;
prints one JSON line {"case": ..., "ms": median milliseconds per call, "device": ...}.

  head_ce  the head (h·Wᵀ + b) fused with the bitwise cross-entropy, forward and backward (dh, dW, db)
  bsq      multi-scale BSQ with bitwise self-correction for a batch (area down, sign, random flips,
           bilinear up and accumulate, next-scale inputs)

f32 throughout with TF32 off, as our f32 kernels compute; `--bf16` runs head_ce under bf16 autocast,
beside our tensor-core kernel. Runs on the CPU too (for checking the script); the figures that matter
come from a GPU.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def timed(fn, dev, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def head_ce(args, dev):
    n, c, d, ls = args.n, args.c, args.d, 0.0
    g = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(n, c, device=dev, generator=g).requires_grad_()
    w = (0.02 * torch.randn(2 * d, c, device=dev, generator=g)).requires_grad_()
    b = torch.zeros(2 * d, device=dev).requires_grad_()
    labels = torch.randint(0, 2, (n, d), device=dev, generator=g)
    weights = torch.full((n,), 1.0 / n, device=dev)
    target = F.one_hot(labels, 2).float() * (1 - ls) + ls / 2

    def step():
        for p in (h, w, b):
            p.grad = None
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = F.linear(h, w, b).view(n, d, 2).float()
        token_loss = -(target * logits.log_softmax(-1)).sum(-1).mean(-1)
        (token_loss * weights).sum().backward()
        # the bit accuracy our kernel also returns
        return (logits.argmax(-1) == labels).sum(-1)

    return timed(step, dev, args.warmup, args.iters)


def bsq(args, dev):
    b, d = args.b, args.d
    scales = [tuple(map(int, s.split("x"))) for s in args.scales.split(",")]
    hh, ww = scales[-1]
    kmax = int(100 * args.p_max + 1) - 1  # numpy's randint(0, 100·p_max + 1) bound, as bsq::flip_kmax
    g = torch.Generator(device=dev).manual_seed(0)
    f = torch.randn(b, d, hh, ww, device=dev, generator=g)
    m = 1.0 / math.sqrt(d)

    def step():
        s = torch.zeros_like(f)
        labels, inputs = [], []
        for si, (h, w) in enumerate(scales):
            r = f - s
            r_s = F.interpolate(r, size=(h, w), mode="area") if (h, w) != (hh, ww) else r
            bits = r_s > 0
            labels.append(bits.flatten(2).transpose(1, 2))
            used = bits
            if si < args.apply_layers and kmax > 0:
                p = torch.randint(0, kmax + 1, (b, 1, 1, 1), device=dev, generator=g) * 0.01
                used = bits ^ (torch.rand(bits.shape, device=dev, generator=g) < p)
            q = torch.where(used, m, -m)
            s = s + (F.interpolate(q, size=(hh, ww), mode="bilinear") if (h, w) != (hh, ww) else q)
            if si + 1 < len(scales):
                x = F.interpolate(s, size=scales[si + 1], mode="bilinear")
                inputs.append(x.flatten(2).transpose(1, 2))
        return torch.cat(labels, 1), torch.cat(inputs, 1)

    with torch.no_grad():
        return timed(step, dev, args.warmup, args.iters)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=["head_ce", "bsq"])
    ap.add_argument("--n", type=int, default=1024, help="head_ce: tokens")
    ap.add_argument("--c", type=int, default=768, help="head_ce: width")
    ap.add_argument("--d", type=int, default=32, help="bits")
    ap.add_argument("--b", type=int, default=16, help="bsq: batch")
    ap.add_argument("--scales", default="1x1,2x2,4x4,8x8,16x16", help="bsq: schedule, HxW,...")
    ap.add_argument("--p-max", type=float, default=0.3)
    ap.add_argument("--apply-layers", type=int, default=13)
    ap.add_argument("--bf16", action="store_true", help="head_ce: under bf16 autocast")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)
    ms = {"head_ce": head_ce, "bsq": bsq}[args.case](args, dev)
    print(json.dumps({"case": args.case, "ms": ms, "device": str(dev), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
