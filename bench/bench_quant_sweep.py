"""GPTQ's sweep against SparseGPT's on the same layer and Hessian, in one process.

Both methods collect the same Hessian in the same block passes, so the cost they do not
share is the column sweep: SparseGPT's rule is one multiplication per column, GPTQ's rounds
the column onto its grid (about ten small operations). This prints each sweep's time on
smollm2-135m-shaped layers (576 → 1536 and 1536 → 576) and their ratio; `bench/quant_ppl.py`
measures the ratio of whole runs on the real model.

    python bench/bench_quant_sweep.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from prunelab.methods.gptq import gptq_quantize
from prunelab.methods.sparsegpt import sparsegpt_prune


def layer(rows: int, cols: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(4096, cols, generator=gen) * torch.rand(cols, generator=gen)
    return torch.randn(rows, cols, generator=gen), 2 * X.t() @ X / X.shape[0]


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    total = {"sparsegpt": 0.0, "gptq": 0.0}
    for rows, cols in ((1536, 576), (576, 1536)):
        W, H = layer(rows, cols)
        sgpt = best_of(args.repeat, lambda: sparsegpt_prune(W, H, 0.5))
        gptq = best_of(args.repeat, lambda: gptq_quantize(W, H, 4, 64))
        total["sparsegpt"] += sgpt
        total["gptq"] += gptq
        print(f"{rows}x{cols}: SparseGPT 50% {sgpt:.3f} s, GPTQ 4-bit g64 {gptq:.3f} s, "
              f"ratio {gptq / sgpt:.2f}", flush=True)
    print(f"sweep time ratio GPTQ / SparseGPT: {total['gptq'] / total['sparsegpt']:.2f}")


if __name__ == "__main__":
    main()
