"""PyTorch's rate on the item-logits GEMM of the reference step, [2048, 128] x [128, 12000],
single-threaded by default: what the PyTorch anchor's BLAS delivers on this host, beside
bench/gemm.ts's rates for the library's BLAS and wasm kernels. Prints one line: torch's
version and BLAS (its build configuration), the threads, and the GFLOP/s (median of 5 runs of
10 products) into one preallocated output and with a fresh 98 MB output per product (what a
training step's allocations cost on top of the kernel).

    python3 bench/torch_gemm.py                 # pip's torch (MKL linked in)
    python3 bench/torch_gemm.py --threads 2
    /usr/bin/python3 bench/torch_gemm.py        # Debian's python3-torch
"""
import argparse
import re
import statistics
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    a = torch.randn(2048, 128)
    b = torch.randn(128, 12000)
    c = torch.empty(2048, 12000)

    def rate(product):
        for _ in range(3):
            product()
        rates = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(10):
                product()
            rates.append(2 * 2048 * 128 * 12000 * 10 / (time.perf_counter() - t0) / 1e9)
        return statistics.median(rates)

    into = rate(lambda: torch.mm(a, b, out=c))
    fresh = rate(lambda: a @ b)
    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    blas = found.group(1) if found else "unknown"
    print(f"torch {torch.__version__}, BLAS {blas}, {args.threads} thread(s): {into:.1f} GFLOP/s "
          f"into a preallocated output, {fresh:.1f} with a fresh output per product")


if __name__ == "__main__":
    main()
