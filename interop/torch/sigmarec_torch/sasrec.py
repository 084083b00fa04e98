"""SASRec, the PyTorch twin of `lib/models/sasrec.ts`.

The same architecture, config fields, defaults, parameter names and shapes, and losses as
the library's SASRec, so that a model file written by either side loads in the other and
ranks the same (tested from `tests/torch_twin_test.ts`). Parameters are stored as the
library stores them: linear weights `[in, out]` (applied as `x @ w + b`), LayerNorm gain
`g` and bias `b`, the item table `[N + 1, d]` with row 0 for padding.

Forward pass, as the library's (post-LayerNorm blocks, as in the reference code):
`x = Dropout(LN(item[ids] + position[maxLength - L .. maxLength - 1]))` (positions count
from the right), then per block `h = LN1(h + Drop(Attn(h)))`, `h = LN2(h + Drop(FFN(h)))`
with FFN = Linear-GELU(erf)-Linear and an additive mask of -1e9 on future and padded keys.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .layers import LayerNorm, causal_padding_mask, run_blocks, transformer_blocks

DEFAULTS = {
    "maxLength": 100,  # longest history read; older items dropped
    "hidden": 128,  # embedding and hidden width d
    "heads": 4,  # attention heads, divides hidden
    "inner": 256,  # feed-forward width
    "dropout": 0.3,  # dropout rate
    "layerNormEps": 1e-12,  # LayerNorm epsilon
    "initStd": 0.02,  # standard deviation of the normal initialisation
    "seed": 42,  # seed of the initial parameters
    "layers": 2,  # Transformer blocks
    "loss": "softmax",  # softmax (full catalogue) | bce (1 negative) | sampled
    "negatives": 100,  # negatives per position for loss "sampled"
}

LOSSES = ("softmax", "bce", "sampled")


def full_config(config):
    """`config` over the defaults, checked; `numItems` is required."""
    c = {**DEFAULTS, **config}
    if not isinstance(c.get("numItems"), int) or c["numItems"] < 1:
        raise ValueError(f"numItems must be a positive integer, got {c.get('numItems')!r}")
    for key in ("maxLength", "hidden", "heads", "inner", "layers", "negatives"):
        if not isinstance(c[key], int) or c[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {c[key]!r}")
    if c["hidden"] % c["heads"] != 0:
        raise ValueError(f"hidden ({c['hidden']}) must be divisible by heads ({c['heads']})")
    if c["loss"] not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {c['loss']!r}")
    if not 0 <= c["dropout"] < 1:
        raise ValueError(f"dropout must be in [0, 1), got {c['dropout']!r}")
    return c


class SasRec(nn.Module):
    """SASRec with the library's parameter names; `config` as the library's SasRecConfig."""

    name = "sasrec"
    DEFAULTS = DEFAULTS

    def __init__(self, config):
        super().__init__()
        c = full_config(config)
        self.config = c
        torch.manual_seed(c["seed"])
        std, d = c["initStd"], c["hidden"]
        # Creation order = the library's parameter order (and the model file's).
        self.item = nn.Parameter(torch.randn(c["numItems"] + 1, d) * std)  # row 0 = padding
        self.position = nn.Parameter(torch.randn(c["maxLength"], d) * std)
        self.embed = nn.ModuleDict({"ln": LayerNorm(d, c["layerNormEps"])})
        self.enc = transformer_blocks(c)

    def encode(self, ids):
        """Hidden states `[B, L, d]` of left-padded item ids `[B, L]` (int64)."""
        c = self.config
        length = ids.shape[1]
        pos = self.position[c["maxLength"] - length:]  # [L, d], counted from the right
        x = self.embed["ln"](self.item[ids] + pos)
        h = F.dropout(x, c["dropout"], self.training)
        return run_blocks(self.enc, h, causal_padding_mask(ids))

    def scores(self, ids):
        """Scores `[B, N + 1]` of every item after each history (column 0 = padding)."""
        return self.encode(ids)[:, -1] @ self.item.T

    def loss(self, ids, targets, generator=None):
        """Mean loss over every position with a target (`targets` 0 = none), `[B, L]` each."""
        c = self.config
        h = self.encode(ids)
        at = targets != 0
        queries = h[at]  # [P, d]
        y = targets[at]  # [P], ids 1..N
        real = self.item[1:]  # [N, d]: padding is never a candidate
        if c["loss"] == "softmax":
            return F.cross_entropy(queries @ real.T, y - 1)
        n = 1 if c["loss"] == "bce" else c["negatives"]
        negatives = torch.randint(1, c["numItems"] + 1, (len(y), n),
                                  generator=generator).to(y.device)
        pos = (queries * self.item[y]).sum(-1)  # [P]
        neg = torch.einsum("pd,pnd->pn", queries, self.item[negatives])  # [P, n]
        if c["loss"] == "bce":
            return (F.softplus(-pos) + F.softplus(neg[:, 0])).mean()
        logits = torch.cat([pos.unsqueeze(1), neg], 1)
        return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=y.device))

    def forward(self, ids, targets, generator=None, step=None, epoch=None):
        """The training loss (what DistributedDataParallel wraps); SASRec has no schedule."""
        return self.loss(ids, targets, generator)

    def named_tensors(self):
        """(name, tensor) in the library's parameter order, for the model file."""
        return list(self.state_dict().items())
