#!/usr/bin/env python3
"""Checkpoints written by real PyTorch, for the tests of `trainer/src/model/torch_file/` (CI installs no
PyTorch, so the files are committed; `tests/reference/torch_save.py` writes stand-ins of the same format
without it, for the variations the tests build on the fly).

    python tests/reference/torch_files.py --out tests/torch-files        # needs torch

A small text model of the reference (`infinity_ref.Infinity`, random weights) trained two AdamW steps
with a moving average of its weights, then saved as upstream saves:

- `infinity_tiny.pth`: `torch.save(state_dict)`, as upstream's released weights (float32);
- `ar-ckpt-giter000K-ep0-iter2-last.pth`: a training checkpoint as upstream's trainer writes it under
  FSDP: `{'args': argparse.Namespace, 'epoch', 'iter', 'trainer': {'config', 'gpt_fsdp',
  'gpt_ema_fsdp', 'gpt_fsdp_opt' (the optimizer's own state_dict)}, 'acc_str', 'milestones'}`;
- `infinity_tiny_bf16.pth`: the weights in bfloat16, `word_embed.weight` stored transposed (a strided
  view) and `head.bias` a view into `head.weight`'s storage (shared, at an offset);
- safetensors twins with the same values: `infinity_tiny.safetensors` (the released and trained
  weights), `ema.safetensors` (the average), `infinity_tiny_bf16.safetensors` (bfloat16);
- `config.json`: the model's constructor arguments and how the files were made.
"""
import argparse
import json
import os
import sys

try:
    import torch
    from safetensors.torch import save_file
except ModuleNotFoundError as e:
    sys.exit(f"tests/reference/torch_files.py needs PyTorch: see tests/golden/README.md (no module {e.name!r})")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from infinity_ref import constructor_kwargs, random_model  # noqa: E402

KWARGS = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=8.0, norm_eps=1e-6, text_channels=16, text_maxlen=8)
D = 16


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch-files"))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(11)
    model = random_model(KWARGS, D).float()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    for _ in range(2):
        opt.zero_grad()
        loss = sum((prm ** 2).sum() for prm in model.parameters())
        loss.backward()
        opt.step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(0.9).add_(v, alpha=0.1)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}

    torch.save(sd, os.path.join(a.out, "infinity_tiny.pth"))
    args = argparse.Namespace(model="tiny", tlr=1e-2, pn="0.06M", use_fsdp_model_ema=1)
    trainer = {"config": {"tlr": 1e-2}, "gpt_fsdp": sd, "gpt_ema_fsdp": ema, "gpt_fsdp_opt": opt.state_dict()}
    ckpt = {"args": args, "epoch": 0, "iter": 2, "trainer": trainer, "acc_str": "[0.50]", "milestones": (1.5, {2, 3})}
    torch.save(ckpt, os.path.join(a.out, "ar-ckpt-giter000K-ep0-iter2-last.pth"))

    bf16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    bf16["word_embed.weight"] = bf16["word_embed.weight"].t().contiguous().t()       # strides (1, rows)
    head = torch.cat([bf16["head.weight"].reshape(-1), bf16["head.bias"]])
    bf16["head.weight"] = head[:bf16["head.weight"].numel()].view_as(bf16["head.weight"])
    bf16["head.bias"] = head[bf16["head.weight"].numel():]
    assert not bf16["word_embed.weight"].is_contiguous() and bf16["head.bias"].storage_offset() > 0
    torch.save(bf16, os.path.join(a.out, "infinity_tiny_bf16.pth"))

    contiguous = lambda d: {k: v.contiguous() for k, v in d.items()}
    save_file(contiguous(sd), os.path.join(a.out, "infinity_tiny.safetensors"))
    save_file(contiguous(ema), os.path.join(a.out, "ema.safetensors"))
    save_file(contiguous(bf16), os.path.join(a.out, "infinity_tiny_bf16.safetensors"))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump({"d": D, "constructor_kwargs": constructor_kwargs(KWARGS), "parameters": sum(prm.numel() for prm in model.parameters()),
                   "made_by": f"tests/reference/torch_files.py (torch {torch.__version__}, seed 11)"}, f, indent=1)
    print("wrote", os.path.abspath(a.out))


if __name__ == "__main__":
    main()
