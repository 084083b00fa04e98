"""PyTorch reference for one SASRec or SIGMA training step, timed on CPU (or a CUDA GPU).

The same step bench/throughput.ts times for this project's SASRec: 2 post-LayerNorm
Transformer blocks (d 128, 4 heads, feed-forward 256, GELU, dropout 0.3), learned
position embeddings, causal attention, full-softmax cross-entropy over the whole
catalogue at every position, one Adam step (lr 1e-3). Random item ids, a target at every
position, so both sides do identical work.

Prints one JSON line: {"seconds_per_step": ..., "blas": ..., "threads": ..., ...}.
Exit code 3 with a message on stderr when torch is not installed.

The BLAS reported is torch's own (its build configuration; pip's wheels link MKL in), with
the kernels it runs where that can be told and its rate on the step's item-logits GEMM, into a
preallocated output and with a fresh output per product;
`mapped_blas` lists the BLAS libraries the process mapped (numpy's OpenBLAS among them,
which torch does not use).

Fair-reference notes (measured on this project's machines): Debian's python3-torch
falls back to a generic reference BLAS unless OpenBLAS is installed
(`apt-get install python3-torch libopenblas0-pthread`), and OpenBLAS 0.3.21 picks AVX2
kernels on AVX-512 CPUs unless OPENBLAS_CORETYPE=SkylakeX is set. This script sets it
itself, before torch loads OpenBLAS, only when the CPU has AVX-512 and the variable is not
already set: forcing SkylakeX kernels on a CPU without AVX-512 dies with an illegal
instruction. ATen uses every logical CPU, as the project's wasm backend does.

    python3 bench/torch_reference.py --steps 3
    python3 bench/torch_reference.py --steps 20 --device cuda   # the anchor on a GPU
    python3 bench/torch_reference.py --model sigma              # SIGMA's step, by its twin

SIGMA's step is the PyTorch twin's (interop/torch: the library's SIGMA, paper defaults, 1
block per Transformer, k = 4, a 2-layer gated GRU) on the same batch shape, a target at
every position, full softmax, Adam.
"""

import argparse
import json
import os
import re
import statistics
import sys
import time


def has_avx512():
    """Whether /proc/cpuinfo lists avx512f (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return any(line.startswith("flags") and " avx512f" in line for line in info)
    except OSError:
        return False


# Decided before torch (and OpenBLAS) load: OpenBLAS reads it once, at load.
if "OPENBLAS_CORETYPE" not in os.environ and has_avx512():
    os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"

try:
    import torch
    from torch import nn
except ImportError:
    print("torch is not installed (apt-get install python3-torch libopenblas0-pthread)",
          file=sys.stderr)
    sys.exit(3)


def torch_blas():
    """Torch's own BLAS, from its build configuration (BLAS_INFO, and MKL's version)."""
    config = torch.__config__.show()
    found = re.search(r"BLAS_INFO=([^,\s]+)", config)
    info = found.group(1) if found else "unknown"
    mkl = re.search(r"Math Kernel Library Version (\S+)", config)
    return f"mkl {mkl.group(1)}" if info == "mkl" and mkl else info


def cpu_vendor():
    """The CPU's vendor_id from /proc/cpuinfo, or "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def torch_kernels(blas):
    """Which kernels torch's BLAS runs. OpenBLAS's are named by OPENBLAS_CORETYPE or its own
    choice. MKL runs its Intel code paths only where mkl_serv_intel_cpu_true() says the CPU
    is Intel's: on this project's AMD EPYC hosts (AVX-512) the item-logits GEMM does 80
    GFLOP/s single-threaded without the preloaded shim that says so, 206-216 with it
    (bench/torch_gemm.py). bench/throughput.ts preloads the shim where it can build it."""
    if blas.startswith("mkl"):
        if "mkl_shim" in os.environ.get("LD_PRELOAD", ""):
            return "MKL's Intel code paths (mkl_serv_intel_cpu_true shim preloaded)"
        vendor = cpu_vendor()
        return "MKL's own choice" + ("" if vendor == "GenuineIntel" else
                                     f" on a {vendor} CPU: its slower non-Intel paths")
    return os.environ.get("OPENBLAS_CORETYPE", "OpenBLAS's own choice")


def gemm_gflops(device, fresh):
    """Torch's rate on the item-logits product of the step, [2048, 128] x [128, 12000]:
    into one preallocated output (the BLAS kernel's rate), or with a fresh output for every
    product (`fresh`, as a training step allocates its tensors: on these hosts each fresh
    98 MB output costs its page faults, several times the product)."""
    a = torch.randn(2048, 128, device=device)
    b = torch.randn(128, 12000, device=device)
    c = torch.empty(2048, 12000, device=device)

    def product():
        return a @ b if fresh else torch.mm(a, b, out=c)

    for _ in range(2):
        product()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        product()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 2048 * 128 * 12000 * 5 / (time.perf_counter() - t0) / 1e9


def loaded_blas():
    """The BLAS shared objects this process mapped, read from /proc/self/maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            names = {line.split()[-1] for line in maps if "blas" in line.lower()}
    except OSError:
        return "unknown"
    return ", ".join(sorted(n for n in names if n.startswith("/"))) or "none mapped"


class SasRec(nn.Module):
    def __init__(self, num_items, length, hidden, heads, inner, layers, dropout):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.positions = nn.Embedding(length, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(hidden, heads, inner, dropout, activation="gelu",
                                           batch_first=True, norm_first=False,
                                           layer_norm_eps=1e-12)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
        self.register_buffer("causal", mask)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):  # ids [B, L]
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.drop(self.norm(self.items(ids) + self.positions(pos)))  # [B, L, d]
        return self.blocks(h, mask=self.causal)  # [B, L, d]


def sasrec_step(args, device):
    """One SASRec training step on the reference shape, as a function."""
    model = SasRec(args.items, args.length, args.hidden, args.heads, args.inner, args.layers,
                   0.3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ids = torch.randint(1, args.items + 1, (args.batch, args.length), device=device)
    targets = torch.randint(1, args.items + 1, (args.batch * args.length,), device=device)

    def step():
        optimizer.zero_grad()
        h = model(ids).reshape(-1, args.hidden)  # [B*L, d]
        logits = h @ model.items.weight[1:].T  # [B*L, N]
        loss = nn.functional.cross_entropy(logits, targets - 1)
        loss.backward()
        optimizer.step()
        return loss.item()  # .item() waits for the GPU, so a step's time is its whole work

    return step


def sigma_step(args, device):
    """One SIGMA training step on the reference shape, by the PyTorch twin."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "interop", "torch"))
    from sigmarec_torch.sigma import Sigma  # noqa: PLC0415 - only for --model sigma

    model = Sigma({"numItems": args.items, "maxLength": args.length, "hidden": args.hidden,
                   "heads": args.heads, "inner": args.inner}).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ids = torch.randint(1, args.items + 1, (args.batch, args.length), device=device)
    targets = torch.randint(1, args.items + 1, (args.batch, args.length), device=device)

    def step():
        optimizer.zero_grad()
        loss = model.loss(ids, targets)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main():
    torch.set_num_threads(os.cpu_count() or 1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--items", type=int, default=12000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--inner", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    parser.add_argument("--model", choices=("sasrec", "sigma"), default="sasrec")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    step = sigma_step(args, device) if args.model == "sigma" else sasrec_step(args, device)

    step()  # warm-up: allocator, Adam's slots
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "seconds_per_step": statistics.median(times),
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "coretype": torch_kernels(torch_blas()),
        "blas": torch_blas(),
        "mapped_blas": loaded_blas(),
        "gemm_gflops": gemm_gflops(device, fresh=False),
        "gemm_fresh_gflops": gemm_gflops(device, fresh=True),
        "model": args.model,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": {k: getattr(args, k) for k in
                  ("batch", "length", "items", "hidden", "heads", "inner")
                  + (("layers",) if args.model == "sasrec" else ())},
    }))


if __name__ == "__main__":
    main()
