"""The OBS column sweep (SparseGPT, GPTQ) by slice width: time and agreement.

    OMP_NUM_THREADS=1 python bench/bench_sweep.py [--shapes 1536x576,576x1536,576x576]

For each layer shape, SparseGPT's 50% rule is swept over a random layer with a correlated
Hessian, with the column updates reaching the whole rest of the block (the textbook sweep,
"whole") and in slices of 8, 16, 32 and 64 columns (`prunelab.methods.obs.INNER`). Prints the
best of three times in ms, and for each slice width the largest weight difference from the
textbook sweep and the share of mask decisions that differ.
"""

from __future__ import annotations

import argparse
import time

import torch

from prunelab.methods import obs
from prunelab.methods.sparsegpt import _PruneUnstructured


def textbook_sweep(W, U, rule, blocksize):
    cols = W.shape[1]
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        W1, U1 = W[:, start:end].clone(), U[start:end, start:end]
        errors = torch.zeros_like(W1)
        rule.begin_block(W1, torch.diag(U1), slice(start, end))
        for i in range(end - start):
            rule.column_error(i, W1, errors[:, i])
            W1[:, i:].addr_(errors[:, i], U1[i, i:], alpha=-1)
        rule.end_block(W1, slice(start, end))
        W[:, start:end] = W1
        W[:, end:].addmm_(errors, U[start:end, end:], alpha=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1536x576,576x1536,576x576")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    widths = (8, 16, 32, 64)
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        X = torch.randn(4096, cols, generator=generator)
        U, _ = obs.inverse_hessian_factor(X.T @ X / 4096, 0.01, 6)
        W0 = torch.randn(rows, cols, generator=generator)
        results = {}
        for width in ("whole", *widths):
            best = float("inf")
            for _ in range(args.repeats):
                W = W0.clone()
                rule = _PruneUnstructured(torch.zeros(W.shape, dtype=torch.bool), 0.5)
                start = time.perf_counter()
                if width == "whole":
                    textbook_sweep(W, U, rule, 128)
                else:
                    obs.INNER = width
                    obs.sweep_columns(W, U, rule, 128)
                best = min(best, time.perf_counter() - start)
            results[width] = (best, W, rule.pruned)
        _, W_ref, mask_ref = results["whole"]
        line = ", ".join(
            f"{w}: {1e3 * t:.1f} ms" + ("" if w == "whole" else
                                        f" (max |dW| {float((W - W_ref).abs().max()):.1e}, "
                                        f"masks differ {float((m != mask_ref).float().mean()):.2%})")
            for w, (t, W, m) in results.items())
        print(f"{rows} x {cols}: {line}", flush=True)


if __name__ == "__main__":
    main()
