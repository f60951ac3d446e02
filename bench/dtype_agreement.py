"""bf16 (or fp16) against fp32 on a real model: Wanda's and SparseGPT's masks, and perplexity.

Each method prunes the model loaded in fp32 and again loaded in the lower precision, with the
same calibration windows; the statistics are fp32 either way, so what differs is the weights'
rounding and the activations' arithmetic. Printed: the share of weights whose keep/prune
decision agrees, the lowest agreement of any layer, perplexity (dense and pruned) in each
precision, and the time each run took (the CPU's bf16/fp16 kernels may be slower than fp32).

    python bench/dtype_agreement.py [--model smollm2-135m] [--dtype bf16]
        [--calibration FILE] [--text FILE]

Without `--calibration` and `--text`, Python's own reference text (pydoc_data.topics, always
installed) is split in two halves by topic: the first calibrates, the second is evaluated.
"""

from __future__ import annotations

import argparse
import time


def measure(model: str, dtype: str, method: str, calibration, text: str, seqlen: int,
            windows: int) -> dict:
    import prunelab

    loaded = prunelab.load_model(model, dtype=dtype)
    dense = prunelab.perplexity(loaded, text, seqlen, windows)
    start = time.perf_counter()
    result = prunelab.prune(loaded, method, 0.5, calibration=calibration, progress=False,
                            keep_masks=True)
    seconds = time.perf_counter() - start
    pruned = prunelab.perplexity(loaded, text, seqlen, windows)
    return {"masks": result.masks, "dense": dense, "pruned": pruned, "seconds": seconds}


def pydoc_halves() -> tuple[str, str]:
    """Two temporary files: the first and second half (by sorted topic) of pydoc's topics."""
    import tempfile
    from pathlib import Path

    from pydoc_data.topics import topics

    parts = [topics[k] for k in sorted(topics)]
    folder = Path(tempfile.mkdtemp(prefix="dtype_agreement_"))
    first, second = folder / "calibration.txt", folder / "evaluation.txt"
    first.write_text("\n\n".join(parts[:len(parts) // 2]))
    second.write_text("\n\n".join(parts[len(parts) // 2:]))
    return str(first), str(second)


def agreement(a: dict, b: dict) -> tuple[float, float, str]:
    """(share of all weights deciding alike, lowest share of one layer, that layer)."""
    same = total = 0
    worst, worst_name = 1.0, ""
    for name, mask in a.items():
        equal = int((mask == b[name]).sum())
        same, total = same + equal, total + mask.numel()
        if equal / mask.numel() < worst:
            worst, worst_name = equal / mask.numel(), name
    return same / total, worst, worst_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--calibration", default=None, help="calibration text: name or file")
    parser.add_argument("--text", default=None, help="perplexity text: name or file")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    from prunelab.data.corpora import CalibrationConfig

    if args.calibration is None or args.text is None:
        halves = pydoc_halves()
        args.calibration = args.calibration or halves[0]
        args.text = args.text or halves[1]
    calibration = CalibrationConfig(args.calibration, args.samples, args.seqlen, 0)
    print(f"{args.model}: {args.dtype} against fp32, 50% unstructured, calibration "
          f"{args.samples} x {args.seqlen} tokens of {args.calibration}, perplexity on "
          f"{args.windows} x {args.seqlen} tokens of {args.text}")
    for method in args.methods.split(","):
        runs = {d: measure(args.model, d, method, calibration, args.text, args.seqlen,
                           args.windows) for d in ("fp32", args.dtype)}
        share, worst, where = agreement(runs["fp32"]["masks"], runs[args.dtype]["masks"])
        low = runs[args.dtype]
        high = runs["fp32"]
        print(f"{method}: masks agree on {share:.4%} of weights (lowest layer {worst:.4%}, "
              f"{where}); perplexity dense fp32 {high['dense']:.3f} / {args.dtype} "
              f"{low['dense']:.3f}, pruned fp32 {high['pruned']:.3f} / {args.dtype} "
              f"{low['pruned']:.3f} ({low['pruned'] / high['pruned'] - 1:+.2%}); "
              f"prune time fp32 {high['seconds']:.1f} s, {args.dtype} {low['seconds']:.1f} s")


if __name__ == "__main__":
    main()
