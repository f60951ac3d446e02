"""End-to-end tokens/s of pruned models, dense math against the CPU sparse runtime, in one
process: for each model directory, prefill and decode timed alternately dense and with every
block linear (or those past `--min-sparsity`) as a CSR matmul, and the logits checked equal.

    OMP_NUM_THREADS=1 python bench/bench_sparse_runtime.py DIR [DIR ...] [--min-sparsity 0]
        [--prefill-tokens 128] [--decode-tokens 16] [--repeats 3] [--threads 1]

Each DIR is a `prunelab prune --out` directory (e.g. smollm2-135m magnitude 50/70/90%).
`prunelab speed DIR --sparse-runtime` measures one directory the same way and records it.
"""

from __future__ import annotations

import argparse

import torch

from prunelab.sparse_runtime import measure_speed
from prunelab.zoo.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+")
    parser.add_argument("--min-sparsity", type=float, default=0.0)
    parser.add_argument("--prefill-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of "
          f"{args.repeats}; layers with >= {args.min_sparsity:.0%} zeros run as CSR", flush=True)
    print("| model | CSR layers | prefill tok/s dense | sparse | ratio | decode tok/s dense "
          "| sparse | ratio | max logit diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for directory in args.directories:
        model = load_model(directory).model
        r = measure_speed(model, min_sparsity=args.min_sparsity,
                          prefill_tokens=args.prefill_tokens, decode_tokens=args.decode_tokens,
                          repeats=args.repeats)
        print(f"| {directory} | {r.sparse_layers} | {r.prefill_tokens_per_s_dense:.1f} | "
              f"{r.prefill_tokens_per_s_sparse:.1f} | {r.speedup('prefill'):.2f} | "
              f"{r.decode_tokens_per_s_dense:.2f} | {r.decode_tokens_per_s_sparse:.2f} | "
              f"{r.speedup('decode'):.2f} | {r.max_abs_logit_difference:.1e}"
              f"{'' if r.outputs_match else ' MISMATCH'} |", flush=True)
        del model


if __name__ == "__main__":
    main()
