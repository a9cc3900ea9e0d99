#!/usr/bin/env python3
"""PyTorch reference of the Infinity transformer, its training math and its sampling, written from the
specification (../shared/docs/infinity-reference.md §1-5, §9), used to export golden folders for the
Rust tests.

    python tests/reference/infinity_ref.py --out tests/golden        # all fixtures (needs torch)

Each fixture is a folder in the golden format (docs/golden-format.md):
  config.json, weights.safetensors, inputs.safetensors, expected.safetensors   (modes "model", "sample")
  config.json, bsq.safetensors                                              (mode "bsq-only")

Numerics: bitwise self-correction runs in float32 exactly as upstream (its bits depend on f32
rounding); the transformer, loss and gradients run in float64 with autograd and are stored as float32,
so the fixtures are the mathematically exact values up to f32 storage.
"""
import argparse
import json
import math
import os
import sys

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from safetensors.torch import save_file
except ModuleNotFoundError as e:  # PyTorch is not in tools/requirements.txt: CI never installs it
    sys.exit(f"tests/reference/infinity_ref.py needs PyTorch: see tests/golden/README.md (no module {e.name!r})")

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEDULES = os.path.join(HERE, "..", "..", "data", "schedules", "upstream.json")


# ----------------------------------------------------------------------------------------------
# schedules and 2-D RoPE (mode 2)
# ----------------------------------------------------------------------------------------------
def template_scales(template, budget):
    with open(SCHEDULES) as f:
        cat = json.load(f)
    n = cat["pixel_budgets"][budget]
    hws = next(t["scales"] for t in cat["templates"] if t["h_div_w"] == template)
    return [(1, h, w) for h, w in hws[:n]]


def rope_table(head_dim, schedule, frame):
    """cos, sin of shape (L, head_dim/2): pair p rotates (2p, 2p+1); the first half of the pairs use the
    token's row coordinate, the second half its column, both in the template's 1M frame."""
    pairs = head_dim // 2
    quarter = pairs // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, pairs, 2, dtype=torch.int64).float() / pairs))
    fh, fw = frame
    rows = []
    for _, h, w in schedule:
        ys = (torch.arange(h) * (fh / h)).round()
        xs = (torch.arange(w) * (fw / w)).round()
        yy = ys.reshape(h, 1).expand(h, w).reshape(-1)
        xx = xs.reshape(1, w).expand(h, w).reshape(-1)
        ang = torch.cat([torch.outer(yy.float(), inv_freq), torch.outer(xx.float(), inv_freq)], dim=1)
        rows.append(ang)
    ang = torch.cat(rows, 0)
    assert ang.shape[1] == pairs and quarter * 2 == pairs
    return torch.cos(ang), torch.sin(ang)


def rotate(x, cos, sin):
    """x (B, H, L, c); rotate adjacent pairs."""
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.stack([cos * a - sin * b, sin * a + cos * b], dim=-1)
    return out.flatten(-2)


# ----------------------------------------------------------------------------------------------
# bitwise self-correction (float32, like upstream)
# ----------------------------------------------------------------------------------------------
def self_correct(latent, schedule, flip_mask=None):
    """latent (B, d, 1, H, W) float32; flip_mask (B, L, d) uint8 or None.
    Returns gt_bits (B, L, d) uint8 and x_wo_prefix (B, L-1, d) float32."""
    B, d, _, H, W = latent.shape
    cum = torch.zeros_like(latent)
    labels, inputs = [], []
    off = 0
    for si, (t, h, w) in enumerate(schedule):
        r = latent - cum
        if si != len(schedule) - 1:
            r = F.interpolate(r, size=(t, h, w), mode="area")
        bits = (r > 0).to(torch.uint8)                          # (B, d, 1, h, w)
        tok = bits.permute(0, 2, 3, 4, 1).reshape(B, h * w, d)  # token-major
        labels.append(tok)
        used = tok if flip_mask is None else tok ^ flip_mask[:, off:off + h * w]
        q = (used.float() * 2 - 1) / math.sqrt(d)               # ±1/√d
        q = q.reshape(B, 1, h, w, d).permute(0, 4, 1, 2, 3)
        cum = cum + F.interpolate(q, size=(1, H, W), mode="trilinear")
        off += h * w
        if si < len(schedule) - 1:
            nt, nh, nw = schedule[si + 1]
            nxt = F.interpolate(cum, size=(nt, nh, nw), mode="trilinear")
            inputs.append(nxt.permute(0, 2, 3, 4, 1).reshape(B, nh * nw, d))
    return torch.cat(labels, 1), torch.cat(inputs, 1)


def vae_schedule(schedule, patchify):
    """The tokenizer's schedule: the transformer's, or with spatial patchify every side doubled."""
    return [(t, 2 * h, 2 * w) for t, h, w in schedule] if patchify else list(schedule)


def unshuffle_tokens(tokens, schedule):
    """(B, Σ 4hw, dv) tokens on the tokenizer's schedule (2h, 2w) → (B, Σ hw, 4dv) transformer tokens of
    `schedule` (h, w): each scale's 2×2 pixel_unshuffle (upstream's apply_spatial_patchify)."""
    B, _, dv = tokens.shape
    out, at = [], 0
    for _, h, w in schedule:
        plane = tokens[:, at:at + 4 * h * w].reshape(B, 2 * h, 2 * w, dv).permute(0, 3, 1, 2)
        out.append(F.pixel_unshuffle(plane, 2).permute(0, 2, 3, 1).reshape(B, h * w, 4 * dv))
        at += 4 * h * w
    return torch.cat(out, 1)


# ----------------------------------------------------------------------------------------------
# the transformer
# ----------------------------------------------------------------------------------------------
class Pool(nn.Module):
    """Attention pool of the text features into one vector per sample (start token, AdaLN condition)."""

    def __init__(self, ct, c, heads):
        super().__init__()
        self.heads = heads
        self.mat_q = nn.Parameter(torch.randn(1, heads, c // heads) * 0.2)
        self.mat_kv = nn.Linear(ct, 2 * c, bias=False)
        self.v_bias = nn.Parameter(torch.randn(c) * 0.1)
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.proj = nn.Linear(c, c)

    def forward(self, kv, lens):
        c = self.proj.weight.shape[0]
        hd = c // self.heads
        k, v = (self.mat_kv(kv) + torch.cat([self.zero_k_bias, self.v_bias])).split(c, dim=-1)
        outs, start = [], 0
        for n in lens:
            kk = k[start:start + n].reshape(n, self.heads, hd).transpose(0, 1)   # H, n, hd
            vv = v[start:start + n].reshape(n, self.heads, hd).transpose(0, 1)
            q = self.mat_q[0].unsqueeze(1)                                        # H, 1, hd
            att = torch.softmax(q @ kk.transpose(1, 2) / math.sqrt(hd), dim=-1)
            outs.append((att @ vv).reshape(c))
            start += n
        return self.proj(torch.stack(outs))


class PoolWrap(nn.Module):
    def __init__(self, ct, c, heads):
        super().__init__()
        self.ca = Pool(ct, c, heads)

    def forward(self, kv, lens):
        return self.ca(kv, lens)


class RMSNorm(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SelfAttn(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.mat_qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.randn(c) * 0.1)
        self.v_bias = nn.Parameter(torch.randn(c) * 0.1)
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)) + 0.1 * torch.randn(1, heads, 1, 1))
        self.proj = nn.Linear(c, c)

    def forward(self, x, mask, cos, sin):
        B, L, C = x.shape
        hd = C // self.heads
        qkv = F.linear(x, self.mat_qkv.weight, torch.cat([self.q_bias, self.zero_k_bias, self.v_bias]))
        q, k, v = qkv.view(B, L, 3, self.heads, hd).permute(2, 0, 3, 1, 4)   # each B, H, L, hd
        q = F.normalize(q, dim=-1, eps=1e-12) * self.scale_mul_1H11.clamp_max(math.log(100.0)).exp()
        k = F.normalize(k, dim=-1, eps=1e-12)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        att = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)         # scale 1 (cosine attention)
        return self.proj((att @ v).transpose(1, 2).reshape(B, L, C))


class CrossAttn(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.mat_q = nn.Linear(c, c)
        self.mat_kv = nn.Linear(c, 2 * c, bias=False)
        self.v_bias = nn.Parameter(torch.randn(c) * 0.1)
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.proj = nn.Linear(c, c)

    def forward(self, x, ctx, lens):
        B, L, C = x.shape
        hd = C // self.heads
        q = self.mat_q(x).view(B, L, self.heads, hd).transpose(1, 2)
        k, v = (self.mat_kv(ctx) + torch.cat([self.zero_k_bias, self.v_bias])).split(C, dim=-1)
        outs, start = [], 0
        for b, n in enumerate(lens):     # each image attends to its own caption only
            kk = k[start:start + n].view(n, self.heads, hd).transpose(0, 1)
            vv = v[start:start + n].view(n, self.heads, hd).transpose(0, 1)
            att = torch.softmax(q[b] @ kk.transpose(-1, -2) / math.sqrt(hd), dim=-1)
            outs.append((att @ vv).transpose(0, 1).reshape(L, C))
            start += n
        return self.proj(torch.stack(outs))


class FFN(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, c, heads, hidden, eps):
        super().__init__()
        self.eps = eps
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, c) * 0.3)
        self.sa = SelfAttn(c, heads)
        self.ca = CrossAttn(c, heads)
        self.ca_norm = nn.LayerNorm(c, eps=eps)
        self.ffn = FFN(c, hidden)

    def forward(self, x, shared_gss, ctx, lens, mask, cos, sin):
        C = x.shape[-1]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + shared_gss).unbind(2)
        ln = lambda t: F.layer_norm(t, (C,), eps=self.eps)
        x = x + self.sa(ln(x) * (1 + scale1) + shift1, mask, cos, sin) * gamma1
        x = x + self.ca(self.ca_norm(x), ctx, lens)
        x = x + self.ffn(ln(x) * (1 + scale2) + shift2) * gamma2
        return x


class HeadNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 2 * c))


class Infinity(nn.Module):
    def __init__(self, d, embed_dim, depth, num_heads, mlp_ratio, norm_eps, text_channels, text_maxlen, **_):
        super().__init__()
        c = embed_dim
        self.eps = norm_eps
        hidden = round(c * mlp_ratio / 256) * 256
        pool_heads = max(1, text_channels // (64 if c > 4096 else 128))
        self.cfg_uncond = nn.Parameter(torch.randn(text_maxlen, text_channels) * 0.2)
        self.pos_start = nn.Parameter(torch.randn(1, 1, c) * 0.3)
        self.text_norm = RMSNorm(text_channels, norm_eps)
        self.text_proj_for_sos = PoolWrap(text_channels, c, pool_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(text_channels, c), nn.GELU(approximate="tanh"), nn.Linear(c, c))
        self.lvl_embed = nn.Embedding(15, c)
        self.word_embed = nn.Linear(d, c)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.blocks = nn.ModuleList([Block(c, num_heads, hidden, norm_eps) for _ in range(depth)])
        self.head_nm = HeadNorm(c)
        self.head = nn.Linear(c, 2 * d)
        self.num_heads = num_heads

    def forward(self, kv_compact, lens, x_wo_prefix, schedule, cos, sin, hidden_mix=None):
        """hidden_mix: sampling's guidance on the hidden states, `(after, g)`: after each block in `after`
        the first half of the rows (conditional) becomes `g·cond + (1 − g)·uncond` and the second half a
        copy of it, `g (L,)` each token's guidance (1: left as it is)."""
        B = len(lens)
        C = self.pos_start.shape[-1]
        kv = self.text_norm(kv_compact)
        cond = self.text_proj_for_sos(kv, lens)                           # B, C
        ctx = self.text_proj_for_ca(kv)                                   # T, C
        shared = self.shared_ada_lin(cond).view(B, 1, 6, C)
        x = torch.cat([(cond + self.pos_start[0]).unsqueeze(1), self.word_embed(x_wo_prefix)], dim=1)
        scale_of = torch.cat([torch.full((h * w,), s) for s, (_, h, w) in enumerate(schedule)]).to(x.device)
        x = x + self.lvl_embed(scale_of).unsqueeze(0)                    # only before the first block
        mask = torch.where(scale_of[:, None] >= scale_of[None, :], 0.0, -math.inf).to(x.dtype)
        for i, blk in enumerate(self.blocks):
            x = blk(x, shared, ctx, lens, mask, cos, sin)
            if hidden_mix is not None and i in hidden_mix[0]:
                g = hidden_mix[1].to(x.dtype).view(1, -1, 1)
                half = B // 2
                c, u = x[:half], x[half:]
                mixed = torch.where(g != 1, g * c + (1 - g) * u, c)
                x = torch.cat([mixed, torch.where(g != 1, mixed, u)])
        scale, shift = self.head_nm.ada_lin(cond).view(B, 1, 2, C).unbind(2)
        return self.head(F.layer_norm(x, (C,), eps=self.eps) * (1 + scale) + shift)


def bitwise_loss(logits, gt_bits, schedule, reweight):
    """Mean over bits of the 2-class CE per token, weighted over tokens, mean over samples."""
    B, L, _ = logits.shape
    d = gt_bits.shape[-1]
    ce = F.cross_entropy(logits.view(B, L, d, 2).permute(0, 3, 1, 2), gt_bits.long(), reduction="none").mean(-1)
    if reweight:
        _, hk, wk = schedule[-1]
        lw = torch.cat([torch.full((h * w,), math.sqrt(hk * wk) / math.sqrt(h * w)) for _, h, w in schedule])
        lw = lw / lw.sum()
    else:
        lw = torch.full((L,), 1.0 / L)
    return (ce * lw.to(ce.device, ce.dtype)).sum(-1).mean()


# ----------------------------------------------------------------------------------------------
# sampling (§5), greedy
# ----------------------------------------------------------------------------------------------
def sample_greedy(model, kv, lens, schedule, cos, sin, cfg_list, insertion, patchify=False):
    """Next-scale sampling with classifier-free guidance, each bit the likelier class of the guided
    logits (no random numbers, so any implementation must draw the same bits). Written without a KV
    cache: each scale runs the training forward over the whole prefix (start token and every earlier
    scale's input) under the block-causal mask, which is what a cache across scales computes.
    `insertion`: upstream's cfg_insertion_layer, 0 on the logits, -k on the hidden states after block
    depth - k. The unconditional rows take cfg_uncond[:len] for each sample's text. With `patchify`
    each scale's bits are pixel_shuffled to the tokenizer's doubled grid (d/4 channels) before their
    codes accumulate, and each input pixel_unshuffled from it.
    Returns bits (B, L, d), the conditional rows' logits (B, L, 2d), the summed codes (B, dv, H, W) on
    the tokenizer's last scale, each scale's input (B, L-1, d), and the smallest |logit1 - logit0| of a
    guided bit."""
    B, d = len(lens), model.word_embed.in_features
    dv, vae = (d // 4 if patchify else d), vae_schedule(schedule, patchify)
    depth = len(model.blocks)
    kv2 = torch.cat([kv, torch.cat([model.cfg_uncond[:n] for n in lens])])
    lens2 = list(lens) + list(lens)
    after = [depth + k for k in insertion if k < 0]
    _, H, W = vae[-1]
    cum = torch.zeros(B, dv, 1, H, W, dtype=kv.dtype)
    x = torch.zeros(B, 0, d, dtype=kv.dtype)
    bits_all, cond_logits, margin, off = [], [], math.inf, 0
    token_cfg = torch.cat([torch.full((h * w,), float(cfg_list[si])) for si, (_, h, w) in enumerate(schedule)])
    for si, (t, h, w) in enumerate(schedule):
        n, g = h * w, cfg_list[si]
        upto = off + n
        mix_h = (after, token_cfg[:upto]) if after else None
        logits = model(kv2, lens2, torch.cat([x, x]), schedule[:si + 1], cos[:upto], sin[:upto], mix_h)[:, off:upto]
        lc, lu = logits[:B], logits[B:]
        mix = (g * lc + (1 - g) * lu) if 0 in insertion else lc
        mix = mix.view(B, n, d, 2)
        bits = (mix[..., 1] > mix[..., 0]).to(torch.uint8)
        margin = min(margin, (mix[..., 1] - mix[..., 0]).abs().min().item())
        bits_all.append(bits)
        cond_logits.append(lc)
        plane = bits.to(kv.dtype).reshape(B, h, w, d).permute(0, 3, 1, 2)       # (B, d, h, w)
        if patchify:
            plane = F.pixel_shuffle(plane, 2)                                      # (B, dv, 2h, 2w)
        q = ((plane * 2 - 1) / math.sqrt(dv)).unsqueeze(2)
        cum = cum + F.interpolate(q, size=(1, H, W), mode="trilinear")
        if si < len(schedule) - 1:
            nxt = F.interpolate(cum, size=vae[si + 1], mode="trilinear")[:, :, 0]  # (B, dv, nh, nw)
            if patchify:
                nxt = F.pixel_unshuffle(nxt, 2)
            x = torch.cat([x, nxt.permute(0, 2, 3, 1).reshape(B, -1, d)], 1)
        off = upto
    return torch.cat(bits_all, 1), torch.cat(cond_logits, 1), cum[:, :, 0], x, margin


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
def random_model(kwargs, d):
    """The reference model in float64 with random (not upstream-init) weights, so every path carries
    signal."""
    model = Infinity(d=d, **kwargs)
    with torch.no_grad():
        for pname, prm in model.named_parameters():
            if "scale_mul" not in pname:
                prm.copy_(torch.randn_like(prm) * (0.5 / math.sqrt(prm.shape[-1]) if prm.dim() > 1 else 0.2))
    return model.double()


def constructor_kwargs(kwargs):
    return dict(kwargs, cos_attn=True, shared_aln=True, rope2d_each_sa_layer=1, rope2d_normalized_by_hw=2,
                add_lvl_embeding_only_first_block=1, use_bit_label=1)


def make_model_fixture(out, name, template, budget, kwargs, d, B, seed, flips):
    torch.manual_seed(seed)
    schedule = template_scales(template, budget)
    L = sum(h * w for _, h, w in schedule)
    _, H, W = schedule[-1]
    frame = template_scales(template, "1M")[-1][1:]
    model = random_model(kwargs, d)
    latent = torch.randn(B, d, 1, H, W) * 0.6
    mask = (torch.rand(B, L, d) < 0.15).to(torch.uint8) if flips else None
    gt_bits, x_wo_prefix = self_correct(latent, schedule, mask)
    lens = [int(v) for v in torch.randint(1, kwargs["text_maxlen"] + 1, (B,))]
    kv = torch.randn(sum(lens), kwargs["text_channels"])
    cos, sin = rope_table(kwargs["embed_dim"] // kwargs["num_heads"], schedule, frame)
    logits = model(kv.double(), lens, x_wo_prefix.double(), schedule, cos.double(), sin.double())
    loss = bitwise_loss(logits, gt_bits, schedule, reweight=False)
    loss_rw = bitwise_loss(logits, gt_bits, schedule, reweight=True)
    loss.backward()
    os.makedirs(os.path.join(out, name), exist_ok=True)
    f32 = lambda t: t.detach().float().contiguous()
    save_file({k: f32(v) for k, v in model.state_dict().items()}, os.path.join(out, name, "weights.safetensors"))
    cu = torch.tensor([0] + list(torch.cumsum(torch.tensor(lens), 0)), dtype=torch.int32)
    save_file({"text_kv_compact": f32(kv), "text_lens": torch.tensor(lens, dtype=torch.int32), "text_cu_seqlens": cu,
               "latent": f32(latent), "x_blc_wo_prefix": f32(x_wo_prefix), "gt_bits": gt_bits.contiguous()},
              os.path.join(out, name, "inputs.safetensors"))
    expected = {"logits": f32(logits), "loss": f32(loss), "loss_reweighted": f32(loss_rw)}
    # parameters the loss does not reach (cfg_uncond without dropout) have gradient 0
    expected.update({f"grad.{k}": f32(p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()})
    save_file(expected, os.path.join(out, name, "expected.safetensors"))
    cfg = {"mode": "model", "B": B, "L": L, "d": d, "schedule": [list(s) for s in schedule], "h_div_w_template": template,
           "text_channels": kwargs["text_channels"], "text_lens": lens,
           "constructor_kwargs": constructor_kwargs(kwargs),
           "made_by": f"tests/reference/infinity_ref.py (torch {torch.__version__}, seed {seed}, flips {flips})"}
    with open(os.path.join(out, name, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def make_sample_fixture(out, name, template, budget, kwargs, d, B, seed, cfg_list, insertion, require_margin=2e-3,
                        patchify=False):
    """Greedy sampling (`sample_greedy`) of a random model; the first seed from `seed` on whose guided
    logits keep every bit at least `require_margin` from a tie, so that float32 rounding cannot flip one
    (config.json's `min_margin` is the margin it has)."""
    schedule = template_scales(template, budget)
    L = sum(h * w for _, h, w in schedule)
    frame = template_scales(template, "1M")[-1][1:]
    cos, sin = rope_table(kwargs["embed_dim"] // kwargs["num_heads"], schedule, frame)
    for s in range(seed, seed + 100):
        torch.manual_seed(s)
        model = random_model(kwargs, d)
        lens = [int(v) for v in torch.randint(1, kwargs["text_maxlen"] + 1, (B,))]
        kv = torch.randn(sum(lens), kwargs["text_channels"]).double()
        with torch.no_grad():
            bits, logits, codes, x, margin = sample_greedy(model, kv, lens, schedule, cos.double(), sin.double(),
                                                           cfg_list, insertion, patchify)
        if margin >= require_margin:
            break
    else:
        sys.exit(f"{name}: no seed in {seed}..{seed + 99} keeps every bit {require_margin} from a tie")
    os.makedirs(os.path.join(out, name), exist_ok=True)
    f32 = lambda t: t.detach().float().contiguous()
    save_file({k: f32(v) for k, v in model.state_dict().items()}, os.path.join(out, name, "weights.safetensors"))
    cu = torch.tensor([0] + list(torch.cumsum(torch.tensor(lens), 0)), dtype=torch.int32)
    save_file({"text_kv_compact": f32(kv), "text_cu_seqlens": cu}, os.path.join(out, name, "inputs.safetensors"))
    save_file({"bits": bits.contiguous(), "cond_logits": f32(logits), "summed_codes": f32(codes),
               "x_blc_wo_prefix": f32(x)}, os.path.join(out, name, "expected.safetensors"))
    cfg = {"mode": "sample", "B": B, "L": L, "d": d, "schedule": [list(t) for t in schedule],
           "h_div_w_template": template, "text_channels": kwargs["text_channels"], "text_lens": lens,
           "cfg_list": list(cfg_list), "cfg_insertion_layer": list(insertion), "min_margin": margin,
           "constructor_kwargs": dict(constructor_kwargs(kwargs), **({"apply_spatial_patchify": 1} if patchify else {})),
           "made_by": f"tests/reference/infinity_ref.py (torch {torch.__version__}, seed {s}, greedy)"}
    with open(os.path.join(out, name, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def make_bsq_fixture(out, name, template, budget, d, B, seed, patchify=False):
    """With `patchify`, `d` is the transformer's bits per token: self-correction runs with d/4 channels on
    the tokenizer's doubled schedule (`latent` and `flip_mask` are there), and the labels and inputs are
    the transformer's tokens (each scale pixel_unshuffled)."""
    torch.manual_seed(seed)
    schedule = template_scales(template, budget)
    L = sum(h * w for _, h, w in schedule)
    vae, dv = vae_schedule(schedule, patchify), (d // 4 if patchify else d)
    _, H, W = vae[-1]
    Lv = sum(h * w for _, h, w in vae)
    latent = torch.randn(B, dv, 1, H, W) * 0.6
    mask = (torch.rand(B, Lv, dv) < 0.2).to(torch.uint8)
    gt, x = self_correct(latent, vae, mask)
    gt0, x0 = self_correct(latent, vae, None)
    pred = gt ^ mask
    if patchify:
        gt, x, gt0, x0 = [unshuffle_tokens(t, sch) for t, sch in [(gt, schedule), (x, schedule[1:]),
                                                                  (gt0, schedule), (x0, schedule[1:])]]
        pred = unshuffle_tokens(pred, schedule)
    os.makedirs(os.path.join(out, name), exist_ok=True)
    save_file({"latent": latent.contiguous(), "flip_mask": mask, "gt_bits": gt.contiguous(), "pred_bits": pred.contiguous(),
               "x_blc_wo_prefix": x.contiguous(), "noflip.gt_bits": gt0.contiguous(), "noflip.x_blc_wo_prefix": x0.contiguous()},
              os.path.join(out, name, "bsq.safetensors"))
    cfg = {"mode": "bsq-only", "B": B, "L": L, "d": d, "schedule": [list(s) for s in schedule], "h_div_w_template": template,
           **({"apply_spatial_patchify": 1} if patchify else {}), "made_by": f"tests/reference/infinity_ref.py (torch {torch.__version__}, seed {seed})"}
    with open(os.path.join(out, name, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def write_state_dict_listing(path):
    """Names and shapes of the reference model for the shapes `infinity export` is tested with."""
    models = []
    for kwargs, d in [(dict(embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, norm_eps=1e-6, text_channels=32,
                            text_maxlen=8), 16),
                      (dict(embed_dim=128, depth=4, num_heads=4, mlp_ratio=4.0, norm_eps=1e-6, text_channels=32,
                            text_maxlen=8), 16)]:
        sd = Infinity(d=d, **kwargs).state_dict()
        models.append({"constructor_kwargs": kwargs, "d": d, "state_dict": {k: list(v.shape) for k, v in sd.items()}})
    with open(path, "w") as f:
        json.dump({"made_by": f"tests/reference/infinity_ref.py --state-dict (torch {torch.__version__})",
                   "models": models}, f, indent=1)
    print("wrote", path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "..", "golden"))
    p.add_argument("--state-dict", metavar="JSON", help="only list the state_dict names and shapes of the models "
                   "tests/export checks (tools/check_export.py --expect)")
    a = p.parse_args()
    if a.state_dict:
        write_state_dict_listing(a.state_dict)
        return
    tiny = dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, norm_eps=1e-6, text_channels=128, text_maxlen=6)
    make_model_fixture(a.out, "model-tiny-square", "1.000", "demo4", tiny, d=16, B=2, seed=1, flips=True)
    make_model_fixture(a.out, "model-tiny-wide", "0.500", "demo5", dict(tiny, num_heads=2), d=8, B=2, seed=2, flips=False)
    make_sample_fixture(a.out, "sample-tiny-square", "1.000", "demo4", tiny, d=16, B=2, seed=6,
                        cfg_list=[1.0, 2.0, 3.0, 4.0], insertion=[0])
    make_sample_fixture(a.out, "sample-tiny-hidden", "0.500", "demo5", dict(tiny, depth=3, num_heads=2), d=8, B=2,
                        seed=7, cfg_list=[3.0, 1.0, 3.0, 2.0, 3.0], insertion=[-2, 0])
    make_bsq_fixture(a.out, "bsq-square-0.06M", "1.000", "0.06M", d=16, B=2, seed=3)
    make_bsq_fixture(a.out, "bsq-portrait", "1.333", "demo5", d=32, B=3, seed=4)
    make_bsq_fixture(a.out, "bsq-wide-0.06M", "0.333", "0.06M", d=8, B=2, seed=5)
    make_bsq_fixture(a.out, "bsq-patchify", "0.750", "demo5", d=56, B=2, seed=8, patchify=True)
    make_sample_fixture(a.out, "sample-patchify", "1.000", "demo4", tiny, d=16, B=2, seed=9,
                        cfg_list=[2.0, 3.0, 3.0, 3.0], insertion=[0], patchify=True)
    print("wrote fixtures to", os.path.abspath(a.out))


if __name__ == "__main__":
    main()
