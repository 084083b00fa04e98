"""SIGMA, the PyTorch twin of `lib/models/sigma.ts`: the same config fields and defaults
(the authors'-code options included), parameter names, shapes and order, loss and scores.

Two VAEs share the item embeddings. MIE-VAE: k category embeddings G score every item,
soft interests are assignment-weighted running sums, hard interests a gated GRU over the
items each category wins by a straight-through Gumbel-softmax; their mean m (Eq. 5), a
log-variance MLP over [g || m] (Eq. 6), intensities alpha as running means of the
assignment. SGM-VAE: Transformers for mu and log sigma^2, z = mu + sigma eps, a Transformer
decoder scoring the next item. Loss per position with a target, averaged:
`recon_SGM + lambda KL_SGM + beta1 boost (recon_MIE + gamma KL_MIE)`, plus
`beta2 boost L_orth`; KL_SGM is one-sample against the mixture sum_j alpha_j N(m_j, omega_j).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .layers import LayerNorm, Linear, causal_padding_mask, run_blocks, transformer_blocks
from .sasrec import LOSSES

DEFAULTS = {
    "maxLength": 100, "hidden": 128, "heads": 4, "inner": 256, "dropout": 0.3,
    "layerNormEps": 1e-12, "initStd": 0.02, "seed": 42,
    "layers": 1,  # blocks per Transformer (Enc_mu, Enc_sigma, decoder)
    "interests": 4,  # k
    "categoryTemperature": 0.1,  # tau of the item-to-category softmax
    "gumbelTemperature": 1.0,  # of the hard assignment
    "gruLayers": 2,
    "lambda": 1e-4,  # mixture-prior KL weight
    "beta1": 0.01,  # MIE-VAE's ELBO weight
    "beta2": 0.01,  # orthogonality weight
    "mieKlWeight": 1.0,  # gamma
    "mieKlWarmup": 0,  # Adam steps over which gamma rises from 0
    "priorGradient": True,  # SGM's KL also trains the prior
    "interestNorm": False,  # standardise interest means (not in the paper)
    "prior": "mixture",  # or "standard" (SIGMA_uni)
    "lambdaUni": 1.0,
    "orthogonality": True,
    "ranking": "sgm",  # or "mie"
    "loss": "softmax",
    "negatives": 100,
    "reconTemperature": 1.0,
    "interestTemperature": 1.0,
    "logVarInit": 0.0,
    "attentionDropout": 0.0,
    "mieInput": "raw",  # or "normed" (authors' code)
    "interestLayerNorm": False,
    "mieRecon": "sample",  # or "mean"
    "mieKlReduce": "sum",  # or "mean"
    "mieBoostEpochs": 0,
    "hardInterestsFrom": 0,
    "scoreAt": "mu",  # or "mu+sigma"
    "interestLogVarBound": 0.0,  # B > 0: log omega^2 = B tanh(raw / B); 0: unbounded
}

CHOICES = {
    "prior": ("mixture", "standard"), "ranking": ("sgm", "mie"), "loss": LOSSES,
    "mieInput": ("raw", "normed"), "mieRecon": ("sample", "mean"),
    "mieKlReduce": ("sum", "mean"), "scoreAt": ("mu", "mu+sigma"),
}


def full_config(config):
    """`config` over the defaults, checked; `numItems` is required (earlier files'
    `categories` is read as `interests`)."""
    config = dict(config)
    if "categories" in config and "interests" not in config:
        config["interests"] = config.pop("categories")
    c = {**DEFAULTS, **config}
    if not isinstance(c.get("numItems"), int) or c["numItems"] < 1:
        raise ValueError(f"numItems must be a positive integer, got {c.get('numItems')!r}")
    if c["hidden"] % c["heads"] != 0:
        raise ValueError(f"hidden ({c['hidden']}) must be divisible by heads ({c['heads']})")
    bound = c["interestLogVarBound"]
    if not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound < 0:
        raise ValueError(f"interestLogVarBound must be a finite number >= 0, got {bound!r}")
    for key, allowed in CHOICES.items():
        if c[key] not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {c[key]!r}")
    return c


class StraightThrough(torch.autograd.Function):
    """The one-hot of `soft`'s argmax, with `soft`'s gradient passed through unchanged."""

    @staticmethod
    def forward(ctx, soft):
        return F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def l2_normalise(x, eps=1e-12):
    return x / torch.sqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps * eps))


def gaussian_log_density(x, mean, log_var):
    per_dim = (x - mean) ** 2 * torch.exp(-log_var) + log_var + math.log(2 * math.pi)
    return -0.5 * per_dim.sum(-1)


def standard_normal_kl(mean, log_var):
    return 0.5 * (torch.exp(log_var) + mean * mean - 1 - log_var).sum(-1)


class GruWeights(nn.Module):
    """One layer of the gated GRU: `wi`, `wh` `[d, 3d]` (gates r, z, n), `bi`, `bh` `[3d]`."""

    def __init__(self, d, std):
        super().__init__()
        self.wi = nn.Parameter(torch.randn(d, 3 * d) * std)
        self.wh = nn.Parameter(torch.randn(d, 3 * d) * std)
        self.bi = nn.Parameter(torch.zeros(3 * d))
        self.bh = nn.Parameter(torch.zeros(3 * d))


def gated_category_gru(cells, items, gates):
    """k category-specific subsequences through one stacked GRU (PyTorch's cell): the state
    of category j moves at step t only where `gates[b, t, j]` is 1; upper layers read the
    gated state below. items `[B, L, d]`, gates `[B, L, k]` -> top states `[B, L, k, d]`."""
    b, length, d = items.shape
    k = gates.shape[2]
    layers = list(cells.values())
    states = [items.new_zeros(b, k, d) for _ in layers]
    xi0 = items @ layers[0].wi + layers[0].bi  # [B, L, 3d]
    outputs = []
    for t in range(length):
        gate = gates[:, t].unsqueeze(-1)  # [B, k, 1]
        xi = xi0[:, t].unsqueeze(1)  # [B, 1, 3d]: the same input for every category
        for i, w in enumerate(layers):
            if i > 0:
                xi = states[i - 1] @ w.wi + w.bi  # [B, k, 3d]
            h = states[i]
            xr, xz, xn = xi.chunk(3, -1)
            hr, hz, hn = (h @ w.wh + w.bh).chunk(3, -1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            moved = (1 - z) * torch.tanh(xn + r * hn) + z * h
            states[i] = h + gate * (moved - h)
        outputs.append(states[-1])
    return torch.stack(outputs, 1)


#: Most logits (positions x interests x items) one piece of the full softmax holds, as the
#: library's `logitBudget`: larger batches are cut into pieces whose logits are recomputed
#: in the backward pass instead of kept.
LOGIT_BUDGET = 1 << 23


def max_interest_cross_entropy(q, table, rows):
    """Per-position cross-entropy `[P]` where an item's logit is the max over the k vectors
    of `q` `[P, k, d]` against `table` `[N, d]`, the target given as a row of the table."""
    p, k, d = q.shape

    def piece(qp, rp):
        # max over interests by .max (its gradient is a gather), not .amax (a mask)
        logits = (qp.reshape(-1, d) @ table.T).reshape(qp.shape[0], k, -1).max(1).values
        return F.cross_entropy(logits, rp, reduction="none")

    size = max(1, LOGIT_BUDGET // (k * table.shape[0]))
    if p <= size:
        return piece(q, rows)
    return torch.cat([
        checkpoint(piece, q[i:i + size], rows[i:i + size], use_reentrant=False)
        for i in range(0, p, size)
    ])


class Sigma(nn.Module):
    """SIGMA with the library's parameter names; `config` as the library's SigmaConfig."""

    name = "sigma"
    DEFAULTS = DEFAULTS

    def __init__(self, config):
        super().__init__()
        c = full_config(config)
        self.config = c
        torch.manual_seed(c["seed"])
        d, std, k = c["hidden"], c["initStd"], c["interests"]
        # Creation order = the library's parameter order.
        self.item = nn.Parameter(torch.randn(c["numItems"] + 1, d) * std)
        self.position = nn.Parameter(torch.randn(c["maxLength"], d) * std)
        self.embed = nn.ModuleDict({"ln": LayerNorm(d, c["layerNormEps"])})
        self.category = nn.Parameter(torch.randn(k, d) * std)
        self.gru = nn.ModuleDict({f"l{i}": GruWeights(d, std) for i in range(c["gruLayers"])})
        self.omega = nn.ModuleDict({"l1": Linear(2 * d, d, std), "l2": Linear(d, d, std)})
        with torch.no_grad():
            self.omega["l2"].b.fill_(c["logVarInit"])
        self.interest = nn.ModuleDict({"l1": Linear(d, d, std), "l2": Linear(d, d, std)})
        self.enc_mu = transformer_blocks(c)
        self.enc_sigma = transformer_blocks(c, c["logVarInit"])
        self.dec = transformer_blocks(c)
        if c["interestLayerNorm"]:  # last in the library's order (see named_tensors)
            self.interest["ln"] = LayerNorm(d, c["layerNormEps"])

    # ------------------------------------------------------------------ embedding
    def _embed(self, ids):
        c = self.config
        length = ids.shape[1]
        real = (ids != 0).to(torch.float32).unsqueeze(-1)  # [B, L, 1]
        items = self.item[ids]
        x = self.embed["ln"](items + self.position[c["maxLength"] - length:])
        inputs = F.dropout(x, c["dropout"], self.training)
        if c["mieInput"] == "normed":
            items = F.dropout(self.embed["ln"](items), c["dropout"], self.training)
        return real, items * real, inputs, causal_padding_mask(ids)

    # ------------------------------------------------------------------ MIE-VAE
    def _interests(self, items, real, with_hard=True, gumbel=None):
        c = self.config
        logits = l2_normalise(items) @ l2_normalise(self.category).T / c["categoryTemperature"]
        assignment = logits.softmax(-1) * real  # [B, L, k]
        soft = torch.cumsum(assignment.unsqueeze(-1) * items.unsqueeze(2), 1)  # [B, L, k, d]
        seen = torch.clamp(torch.cumsum(real, 1), min=1)
        intensity = torch.cumsum(assignment, 1) / seen
        raw = soft
        if with_hard:
            log_a = logits.log_softmax(-1)
            if self.training:
                if gumbel is None:
                    u = torch.rand_like(log_a).clamp(1e-10, 1 - 1e-7)
                    gumbel = -torch.log(-torch.log(u))
                noisy = (log_a + gumbel) / c["gumbelTemperature"]
                one_hot = StraightThrough.apply(noisy.softmax(-1))
            else:
                one_hot = StraightThrough.apply(log_a)
            hard = gated_category_gru(self.gru, items, one_hot * real)
            raw = (soft + hard) / 2
        if c["interestNorm"]:
            centred = raw - raw.mean(-1, keepdim=True)
            raw = centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + 1e-6)
        return assignment, intensity, raw

    def _interest_log_var(self, mean):  # [P, k, d]
        d = self.config["hidden"]
        w1 = self.omega["l1"].w
        pre = mean @ w1[d:] + l2_normalise(self.category) @ w1[:d] + self.omega["l1"].b
        raw = self.omega["l2"](F.gelu(pre))
        bound = self.config["interestLogVarBound"]
        return bound * torch.tanh(raw / bound) if bound > 0 else raw

    def _interest_decoder(self, x):
        return self.interest["l2"](F.gelu(self.interest["l1"](x)))

    def _shown_mean(self, mean):
        return self.interest["ln"](mean) if self.config["interestLayerNorm"] else mean

    # ------------------------------------------------------------------ loss
    def _item_loss(self, queries, targets, temperature, generator):
        """Per-position loss `[P]` of queries `[P, k, d]` (max over k) for targets 1..N."""
        c = self.config
        q = queries / temperature
        if c["loss"] == "softmax":
            return max_interest_cross_entropy(q, self.item[1:], targets - 1)
        n = 1 if c["loss"] == "bce" else c["negatives"]
        neg_ids = torch.randint(1, c["numItems"] + 1, (len(targets), n),
                                generator=generator).to(targets.device)
        pos = torch.einsum("pkd,pd->pk", q, self.item[targets]).amax(1)
        neg = torch.einsum("pkd,pnd->pnk", q, self.item[neg_ids]).amax(-1)  # [P, n]
        if c["loss"] == "bce":
            return F.softplus(-pos) + F.softplus(neg).sum(-1)
        return torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], 1), 1) - pos

    def loss(self, ids, targets, generator=None, step=math.inf, epoch=math.inf, parts=None,
             noise=None):
        """Mean loss over the positions with a target; `parts` (a dict) receives the means of
        recon, kl, recon_mie, kl_mie and orth, as the library names them. `noise` (tests)
        passes the training draws in instead of drawing them: `z` `[B, L, d]` for z's
        epsilon, `gumbel` `[B, L, k]`, `x` `[P, k, d]` for the sampled interests."""
        noise = noise or {}
        c = self.config
        b, length = ids.shape
        k, d = c["interests"], c["hidden"]
        at = (targets != 0).reshape(-1)
        y = targets.reshape(-1)[at]

        def pick(t, *tail):  # rows of [B, L, ...] at the positions with a target
            return t.reshape(b * length, *tail)[at]

        real, items, inputs, mask = self._embed(ids)
        mu = run_blocks(self.enc_mu, inputs, mask)
        log_var = run_blocks(self.enc_sigma, inputs, mask)
        eps = noise["z"] if "z" in noise else torch.randn_like(mu)
        z = mu + torch.exp(0.5 * log_var) * eps if self.training else mu
        decoded = pick(run_blocks(self.dec, z, mask), d).unsqueeze(1)  # [P, 1, d]
        recon = self._item_loss(decoded, y, c["reconTemperature"], generator)

        _, intensity, raw_all = self._interests(
            items, real, epoch >= c["hardInterestsFrom"], noise.get("gumbel"))
        raw = pick(raw_all, k, d)
        weights = pick(intensity, k)
        log_omega = self._interest_log_var(raw)
        mean = raw
        if c["interestLayerNorm"]:
            mean = F.dropout(self.interest["ln"](raw), c["dropout"], self.training)
        if c["mieRecon"] == "mean":
            recon_from = mean
        else:
            eps_x = noise["x"] if "x" in noise else torch.randn_like(mean)
            x = mean + torch.exp(0.5 * log_omega) * eps_x if self.training else mean
            recon_from = self._interest_decoder(x)
        recon_mie = self._item_loss(recon_from, y, c["interestTemperature"], generator)
        kl_k = standard_normal_kl(mean, log_omega)  # [P, k]
        kl_mie = kl_k.sum(1) if c["mieKlReduce"] == "sum" else kl_k.mean(1)

        z_p, mu_p, log_var_p = pick(z, d), pick(mu, d), pick(log_var, d)
        if c["prior"] == "mixture":
            prior = (lambda t: t) if c["priorGradient"] else (lambda t: t.detach())
            components = gaussian_log_density(z_p.unsqueeze(1), prior(mean), prior(log_omega))
            w = prior(weights)  # a weight of exactly 0 never counts (as the library)
            log_w = torch.where(w > 0, torch.log(torch.clamp(w, min=1e-30)), -1e9)
            kl = gaussian_log_density(z_p, mu_p, log_var_p) - torch.logsumexp(components + log_w, -1)
            kl_weight = c["lambda"]
        else:
            kl = standard_normal_kl(mu_p, log_var_p)
            kl_weight = c["lambdaUni"]

        gamma = c["mieKlWeight"] * min(1.0, step / c["mieKlWarmup"] if c["mieKlWarmup"] > 0 else 1.0)
        boost = max(1.0, c["mieBoostEpochs"] - (epoch - 1)) if c["mieBoostEpochs"] > 0 else 1.0
        g = l2_normalise(self.category)
        gram = g @ g.T
        orth = (gram * gram * (1 - torch.eye(k, device=g.device))).sum()
        per_position = recon + kl * kl_weight + (recon_mie + kl_mie * gamma) * (c["beta1"] * boost)
        total = per_position.mean()
        if c["orthogonality"]:
            total = total + orth * (c["beta2"] * boost)
        if parts is not None:
            parts.update(recon=recon.mean(), kl=kl.mean(), recon_mie=recon_mie.mean(),
                         kl_mie=kl_mie.mean(), orth=orth)
        return total

    def forward(self, ids, targets, generator=None, step=math.inf, epoch=math.inf):
        """The training loss (what DistributedDataParallel wraps)."""
        return self.loss(ids, targets, generator, step, epoch)

    # ------------------------------------------------------------------ scores
    def scores(self, ids):
        """Scores `[B, N + 1]` after each history, at the newest position."""
        c = self.config
        real, items, inputs, mask = self._embed(ids)
        if c["ranking"] == "mie":
            _, _, raw = self._interests(items, real)
            mean = self._shown_mean(raw[:, -1])  # [B, k, d]
            u = mean if c["mieRecon"] == "mean" else self._interest_decoder(mean)
            b, k, d = u.shape
            return (u.reshape(b * k, d) @ self.item.T).reshape(b, k, -1).max(1).values
        z = run_blocks(self.enc_mu, inputs, mask)
        if c["scoreAt"] == "mu+sigma":
            z = z + torch.exp(0.5 * run_blocks(self.enc_sigma, inputs, mask))
        return run_blocks(self.dec, z, mask)[:, -1] @ self.item.T

    def named_tensors(self):
        """(name, tensor) in the library's parameter order, for the model file (PyTorch's
        state_dict lists a module's own parameters before its submodules', and the library
        creates `interest.ln` last)."""
        named = dict(self.state_dict())
        first = ["item", "position", "embed.ln.g", "embed.ln.b", "category"]
        last = [n for n in named if n.startswith("interest.ln.")]
        middle = [n for n in named if n not in first and n not in last]
        return [(n, named[n]) for n in first + middle + last]
