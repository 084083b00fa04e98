"""The layers the twins share, named and laid out as the library's `lib/nn/layers.ts`:
linear weights `[in, out]` applied as `x @ w + b`, LayerNorm gain `g` and bias `b`, and the
post-LayerNorm Transformer block with exact (erf) GELU and a -1e9 additive mask."""

import math

import torch
from torch import nn
from torch.nn import functional as F


class Linear(nn.Module):
    """`x @ w + b`, w `[in, out]` (the library's layout)."""

    def __init__(self, d_in, d_out, std):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d_in, d_out) * std)
        self.b = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        return x @ self.w + self.b


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with gain `g` and bias `b` (biased variance)."""

    def __init__(self, d, eps):
        super().__init__()
        self.g = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.g, self.b, self.eps)


class Block(nn.Module):
    """One post-LayerNorm Transformer block; parameters named as the library names them."""

    def __init__(self, c):
        super().__init__()
        d, std = c["hidden"], c["initStd"]
        self.heads = c["heads"]
        self.drop = c["dropout"]
        self.attention_drop = c.get("attentionDropout", 0)
        self.attn = nn.ModuleDict({m: Linear(d, d, std) for m in ("q", "k", "v", "o")})
        self.ln1 = LayerNorm(d, c["layerNormEps"])
        self.ffn = nn.ModuleDict({"in": Linear(d, c["inner"], std), "out": Linear(c["inner"], d, std)})
        self.ln2 = LayerNorm(d, c["layerNormEps"])

    def forward(self, h, mask):  # h [B, L, d], mask [B, 1, L, L] additive
        b, length, d = h.shape
        dh = d // self.heads

        def split(t):  # [B, L, d] -> [B, heads, L, dh]
            return t.reshape(b, length, self.heads, dh).transpose(1, 2)

        q, k, v = (split(self.attn[m](h)) for m in ("q", "k", "v"))
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh) + mask  # [B, heads, L, L]
        probs = F.dropout(logits.softmax(-1), self.attention_drop, self.training)
        ctx = (probs @ v).transpose(1, 2).reshape(b, length, d)
        a = F.dropout(self.attn["o"](ctx), self.drop, self.training)
        h = self.ln1(h + a)
        f = self.ffn["out"](F.gelu(self.ffn["in"](h)))  # exact (erf) GELU
        return self.ln2(h + F.dropout(f, self.drop, self.training))


def causal_padding_mask(ids):
    """Additive mask `[B, 1, L, L]`: -1e9 on future keys and on padded keys (id 0)."""
    b, length = ids.shape
    future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ids.device), 1)
    blocked = future.unsqueeze(0) | (ids == 0).unsqueeze(1)  # [B, L, L]
    return torch.where(blocked, -1e9, 0.0).to(torch.float32).unsqueeze(1)


def transformer_blocks(c, output_bias=0.0):
    """`c["layers"]` blocks as a ModuleDict named block0, block1, ...; `output_bias` is the
    initial bias of the last LayerNorm (SIGMA's Enc_sigma starts at `logVarInit`)."""
    blocks = nn.ModuleDict({f"block{i}": Block(c) for i in range(c["layers"])})
    if output_bias:
        with torch.no_grad():
            blocks[f"block{c['layers'] - 1}"].ln2.b.fill_(output_bias)
    return blocks


def run_blocks(blocks, h, mask):
    for block in blocks.values():
        h = block(h, mask)
    return h
