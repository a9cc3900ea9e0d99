#!/usr/bin/env python3
"""PyTorch eager side of `infinity model bench`: the reference model (infinity_ref.py) in float32,
forward + backward of the bitwise loss on random inputs. Prints tokens_per_s=… peak_rss_mib=…"""
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
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
schedule = template_scales(a.template, a.budget)
frame = template_scales(a.template, "1M")[-1][1:]
L = sum(h * w for _, h, w in schedule)
model = Infinity(d=a.d, embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads, mlp_ratio=a.mlp_ratio,
                 norm_eps=1e-6, text_channels=a.text_channels, text_maxlen=a.text_tokens)
cos, sin = rope_table(a.embed_dim // a.num_heads, schedule, frame)
x = torch.randn(a.batch, L - 1, a.d) * 0.5
gt = (torch.rand(a.batch, L, a.d) > 0.5).to(torch.uint8)
kv = torch.randn(a.batch * a.text_tokens, a.text_channels)
lens = [a.text_tokens] * a.batch


def step():
    model.zero_grad(set_to_none=False)
    loss = bitwise_loss(model(kv, lens, x, schedule, cos, sin), gt, schedule, reweight=False)
    loss.backward()


step()
t = time.perf_counter()
for _ in range(a.steps):
    step()
s = (time.perf_counter() - t) / a.steps
print(f"tokens_per_s={a.batch * L / s:.1f} peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
