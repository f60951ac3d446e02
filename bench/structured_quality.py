"""Perplexity of structured pruning at several shares of parameters removed, in one run:
FLAP (UL-UM and AL-AM, bias compensation on and off) against Wanda-sp and magnitude-sp.

Every variant prunes a fresh copy of the same dense model with the same calibration windows
and is measured on the docs' (findings) perplexity windows (SQuAD dev, 32 × 512). FLAP decides from
statistics of the dense model only, which are the same for all its variants: they are
gathered once and reused (the engine's dense pass is memoised for this run), so only Wanda-sp
pays a statistics pass per point. Each finished point is appended to `--out` at once.

    python bench/structured_quality.py [--model smollm2-135m] [--ratios 0.1 0.2 0.3 0.5]
        [--calib-samples 256] [--calib-seqlen 128] [--windows 32]
        [--out structured_quality.jsonl]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

VARIANTS = [
    ("flap", {"structure": "UL-UM", "bias": True}),
    ("flap", {"structure": "UL-UM", "bias": False}),
    ("flap", {"structure": "AL-AM", "bias": True}),
    ("flap", {"structure": "AL-AM", "bias": False}),
    ("wanda-sp", {}),
    ("magnitude-sp", {}),
]


def _label(method: str, options: dict) -> str:
    if method != "flap":
        return method
    return f"flap {options['structure']} bias={'on' if options['bias'] else 'off'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--calib-source", default="squadshifts-new_wiki")
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--windows", type=int, default=32, help="perplexity windows of 512")
    parser.add_argument("--out", type=Path, default=Path("structured_quality.jsonl"))
    args = parser.parse_args()

    import prunelab
    from prunelab import api, engine
    from prunelab.data.corpora import CalibrationConfig
    from prunelab.structure import model_size

    memo: dict = {}
    gather = engine._dense_statistics

    def dense_statistics_once(model, blocks, prefix, names, *rest, **kwargs):
        key = tuple(names)
        if key not in memo:
            memo[key] = gather(model, blocks, prefix, names, *rest, **kwargs)
        return memo[key]

    engine._dense_statistics = dense_statistics_once

    loaded = prunelab.load_model(args.model)
    pristine = copy.deepcopy(loaded.model)
    dense = api.dense_perplexity(loaded, n_windows=args.windows, progress=False).value
    size = model_size(loaded.model)
    calibration = CalibrationConfig(args.calib_source, args.calib_samples, args.calib_seqlen, 0)
    print(f"{args.model}: dense perplexity {dense:.2f} ({args.windows} x 512 squad-dev), "
          f"{size['parameters']:,} parameters; "
          f"calibration {args.calib_samples} x {args.calib_seqlen} of {args.calib_source}",
          flush=True)
    rows = []
    with open(args.out, "a") as out:
        for ratio in args.ratios:
            for method, options in VARIANTS:
                loaded.model = copy.deepcopy(pristine)
                start = time.perf_counter()
                result = prunelab.prune(loaded, method, ratio, calibration=calibration,
                                        progress=False, **options)
                seconds = time.perf_counter() - start
                ppl = api.perplexity(loaded, n_windows=args.windows)
                row = {"model": args.model, "ratio": ratio, "method": _label(method, options),
                       "perplexity": round(ppl, 3), "dense": round(dense, 3),
                       "block_share_removed": round(result.overall_sparsity, 4),
                       "parameters": result.model_size["after"]["parameters"],
                       "parameters_dense": size["parameters"],
                       "prune_seconds": round(seconds, 1),
                       "calibration": f"{args.calib_samples}x{args.calib_seqlen}",
                       "eval_windows": f"{args.windows}x512 squad-dev"}
                rows.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"{ratio:.0%} {row['method']:<26} ppl {ppl:9.2f}  removed "
                      f"{result.overall_sparsity:.3f} of block weights, "
                      f"{1 - row['parameters'] / size['parameters']:.3f} of the model "
                      f"({seconds:.0f} s)", flush=True)
                loaded.model = None
    print("\n| method | " + " | ".join(f"{r:.0%}" for r in args.ratios) + " |")
    print("|---|" + "---|" * len(args.ratios))
    for method, options in VARIANTS:
        label = _label(method, options)
        cells = [next(f"{x['perplexity']:.2f}" for x in rows
                      if x["method"] == label and x["ratio"] == r) for r in args.ratios]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"dense: {dense:.2f}")


if __name__ == "__main__":
    main()
