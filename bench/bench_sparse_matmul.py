"""Sparse against dense matmul on CPU, on the linear shapes of smollm2-135m and
qwen2.5-coder-0.5b: where (if anywhere) does a sparse weight pay?

For each shape (out × in, read from the cached models' config.json, or the built-in
dimensions when a model is not cached), each token batch (1 = decode, 512 = prefill) and each
sparsity, it times y = x Wᵀ with W dense and W stored as torch CSR (random unstructured mask)
and BSR (a random mask of whole 16×16 blocks, the only kind of mask BSR can skip), fp32, and
bf16 where torch's CPU kernels take it (CSR/BSR bf16 are not implemented on CPU in torch 2.13:
the bench says so once and goes on). Every timing is the median of `--repeat` runs of
`--inner` calls each, dense and sparse timed in turn within each run, all with the same
thread count. It prints one row per case with
time ratios dense / sparse (above 1 means the sparse one is faster) and, per shape and
batch, the crossover: the lowest sparsity from which the sparse kernel is faster at every
sparsity measured above it.

    OMP_NUM_THREADS=1 python bench/bench_sparse_matmul.py [--threads 1] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
BATCHES = (1, 512)
BLOCK = 16

# hidden, intermediate, attention heads, key/value heads (when the model is not cached)
BUILT_IN = {"smollm2-135m": (576, 1536, 9, 3), "qwen2.5-coder-0.5b": (896, 4864, 14, 2)}


def linear_shapes(model: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each kind of linear in one decoder block of `model`."""
    config_file = Path.home() / ".cache" / "prunelab" / "models" / model / "config.json"
    if config_file.exists():
        cfg = json.loads(config_file.read_text())
        hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
        heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", 0)
        kv = kv or heads
        head_dim = cfg.get("head_dim") or hidden // heads
    else:
        hidden, inter, heads, kv = BUILT_IN[model]
        head_dim = hidden // heads
    return {"q/o": (heads * head_dim, hidden), "k/v": (kv * head_dim, hidden),
            "gate/up": (inter, hidden), "down": (hidden, inter)}


def random_mask(shape, sparsity: float, block: int | None, gen) -> torch.Tensor:
    """Keep-mask with `sparsity` zeros: elementwise, or whole block×block tiles."""
    if block is None:
        return torch.rand(shape, generator=gen) >= sparsity
    tiles = torch.rand(shape[0] // block, shape[1] // block, generator=gen) >= sparsity
    return tiles.repeat_interleave(block, 0).repeat_interleave(block, 1)


def interleaved_medians(kernels: dict, repeat: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each kernel, timed in turn within every repeat so that a
    shared machine's changing load falls on all of them alike."""
    for fn in kernels.values():
        fn()  # warm-up: first-call allocations and kernel selection
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(repeat):
        for name, fn in kernels.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def sparse_kernel(weight: torch.Tensor, layout: str):
    """A callable x -> x Wᵀ through the sparse layout, or None when torch has no CPU kernel
    for this layout and dtype."""
    stored = weight.to_sparse_csr() if layout == "csr" else weight.to_sparse_bsr((BLOCK, BLOCK))

    def run(x):  # (W xᵀ)ᵀ: the sparse operand must come first
        return (stored @ x.t()).t()
    try:
        run(torch.zeros(1, weight.shape[1], dtype=weight.dtype))
    except (NotImplementedError, RuntimeError):
        return None
    return run


def crossover(ratios: dict[float, float]) -> str:
    """The lowest sparsity from which sparse is faster at every higher one measured."""
    found = None
    for sparsity in sorted(ratios, reverse=True):
        if ratios[sparsity] > 1.0:
            found = sparsity
        else:
            break
    return f"{found:.0%}" if found is not None else f"none up to {max(ratios):.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--inner", type=int, default=0, help="calls per timing (0: by size)")
    parser.add_argument("--models", nargs="*", default=list(BUILT_IN))
    parser.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    parser.add_argument("--sparsities", nargs="*", type=float, default=list(SPARSITIES))
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of "
          f"{args.repeat}; ratio = dense time / sparse time (> 1: sparse faster)", flush=True)
    summary = []
    warned = set()
    for model in args.models:
        for kind, (rows, cols) in linear_shapes(model).items():
            for dtype_name in args.dtypes:
                dtype = getattr(torch, dtype_name)
                for batch in args.batches:
                    x = torch.randn(batch, cols, generator=gen).to(dtype)
                    inner = args.inner or max(1, int(2e7 // (rows * cols * batch)))
                    dense_w = torch.randn(rows, cols, generator=gen).to(dtype)
                    ratios = {"csr": {}, "bsr": {}}
                    for sparsity in args.sparsities:
                        kernels = {"dense": lambda: x @ dense_w.t()}
                        for layout, block in (("csr", None), ("bsr", BLOCK)):
                            mask = random_mask((rows, cols), sparsity, block, gen)
                            run = sparse_kernel(dense_w * mask, layout)
                            if run is None:
                                if (layout, dtype_name) not in warned:
                                    print(f"  ({layout} {dtype_name}: no CPU kernel in this "
                                          "torch; skipped)", flush=True)
                                    warned.add((layout, dtype_name))
                                continue
                            kernels[layout] = (lambda r: lambda: r(x))(run)
                        if len(kernels) == 1:
                            continue
                        t = interleaved_medians(kernels, args.repeat, inner)
                        cells = []
                        for layout in ("csr", "bsr"):
                            if layout in t:
                                ratios[layout][sparsity] = t["dense"] / t[layout]
                                cells.append(f"{layout} {t[layout] * 1e3:8.3f} ms "
                                             f"({t['dense'] / t[layout]:5.2f}x)")
                        print(f"{model:18s} {kind:7s} {rows:4d}x{cols:<4d} {dtype_name:8s} "
                              f"batch {batch:3d} {sparsity:4.0%}: dense "
                              f"{t['dense'] * 1e3:8.3f} ms | " + " | ".join(cells), flush=True)
                    for layout, by_sparsity in ratios.items():
                        if by_sparsity:
                            summary.append((model, kind, f"{rows}x{cols}", dtype_name, batch,
                                            layout, crossover(by_sparsity),
                                            max(by_sparsity.values())))
    print("\ncrossover (sparse faster from this sparsity on), best ratio dense/sparse:")
    for model, kind, shape, dtype_name, batch, layout, cross, best in summary:
        print(f"  {model:18s} {kind:7s} {shape:9s} {dtype_name:8s} batch {batch:3d} "
              f"{layout}: {cross:>16s}  best {best:5.2f}x")


if __name__ == "__main__":
    main()
