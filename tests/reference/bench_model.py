#!/usr/bin/env python3
"""PyTorch eager side of `infinity model bench`: the reference model (infinity_ref.py) in float32,
forward + backward of the bitwise loss on random inputs, on the CPU or a GPU (--device cuda; TF32 off,
as our kernels compute in f32; --bf16 autocasts the forward as upstream does). Prints tokens_per_s=… peak_rss_mib=… (on a GPU: peak allocated
device memory)."""
import argparse
import resource
import time

import torch

from infinity_ref import Infinity, bitwise_loss, rope_table, template_scales

p = argparse.ArgumentParser()
for k in ["depth", "embed-dim", "num-heads", "d", "text-channels", "text-tokens", "batch", "steps", "threads"]:
    p.add_argument(f"--{k}", type=int, required=True)
p.add_argument("--mlp-ratio", type=float, default=4.0)
p.add_argument("--template", required=True)
p.add_argument("--budget", required=True)
p.add_argument("--device", default="cpu")
p.add_argument("--bf16", action="store_true", help="autocast the forward to bf16 (as upstream trains)")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.backends.cuda.matmul.allow_tf32 = False
torch.manual_seed(0)
dev = torch.device(a.device)
schedule = template_scales(a.template, a.budget)
frame = template_scales(a.template, "1M")[-1][1:]
L = sum(h * w for _, h, w in schedule)
model = Infinity(d=a.d, embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads, mlp_ratio=a.mlp_ratio,
                 norm_eps=1e-6, text_channels=a.text_channels, text_maxlen=a.text_tokens).to(dev)
cos, sin = (t.to(dev) for t in rope_table(a.embed_dim // a.num_heads, schedule, frame))
x = torch.randn(a.batch, L - 1, a.d, device=dev) * 0.5
gt = (torch.rand(a.batch, L, a.d, device=dev) > 0.5).to(torch.uint8)
kv = torch.randn(a.batch * a.text_tokens, a.text_channels, device=dev)
lens = [a.text_tokens] * a.batch


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step():
    model.zero_grad(set_to_none=False)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
        logits = model(kv, lens, x, schedule, cos, sin)
    loss = bitwise_loss(logits.float(), gt, schedule, reweight=False)
    loss.backward()


step()
sync()
t = time.perf_counter()
for _ in range(a.steps):
    step()
sync()
s = (time.perf_counter() - t) / a.steps
if dev.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"tokens_per_s={a.batch * L / s:.1f} peak_rss_mib={peak:.1f}")
