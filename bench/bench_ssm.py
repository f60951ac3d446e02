"""Pruning a state-space model and its transformer twin, measured in one run per model.

For one model (e.g. the Mamba-2 and the Llama that `prunelab train-tiny` trained on the same
tokens): perplexity after magnitude, Wanda and SparseGPT at each sparsity and 2:4, and after
structured removal (Mamba: SSM heads and state dimensions with ssm-flap; a transformer: FLAP);
each pruning's time relative to one dense forward pass over the calibration windows and its
peak memory above the loaded model; and, for the structured 50% models, tokens per second of
a forward pass and parameters against the dense model, the dense and the pruned model timed in
turn (best of three each) so that both see the same load.

    python bench/bench_ssm.py --model tiny-mamba2 --calib-source calib.txt \
        --eval-source eval.txt [--samples 16] [--seqlen 256] [--windows 8] [--out ssm.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prune import current_rss_bytes, peak_rss_bytes, reset_peak_rss  # noqa: E402

UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")
SPARSITIES = (0.3, 0.5, 0.7)


def grid(is_ssm: bool) -> list[tuple[str, float | None, str | None, dict]]:
    points = [(m, s, None, {}) for m in UNSTRUCTURED for s in SPARSITIES]
    points += [(m, None, "2:4", {}) for m in UNSTRUCTURED]
    if is_ssm:
        points += [("ssm-flap", s, None, {"unit": u}) for u in ("heads", "state")
                   for s in (0.2, 0.5)]
    else:
        points += [("flap", s, None, {}) for s in (0.2, 0.5)]
    return points


def tokens_per_second(models, windows, repeats: int = 3) -> list[float]:
    """Each model's tokens per second on `windows`, best of `repeats`, the models timed in
    turn within each repeat, so that a change in the machine's load reaches all of them."""
    import torch

    best = [float("inf")] * len(models)
    with torch.no_grad():
        for _ in range(repeats):
            for i, model in enumerate(models):
                start = time.perf_counter()
                model(input_ids=windows, use_cache=False)
                best[i] = min(best[i], time.perf_counter() - start)
    return [windows.numel() / b for b in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--calib-source", required=True)
    parser.add_argument("--eval-source", required=True)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--structured-only", action="store_true",
                        help="only the structured points (their speed and size)")
    args = parser.parse_args()

    import torch

    import prunelab
    from prunelab import ssm
    from prunelab.data.calibration import CalibrationConfig
    from prunelab.data.corpora import calibration_windows, eval_windows
    from prunelab.evaluate.perplexity import perplexity_of_windows
    from prunelab.structure import model_size

    loaded = prunelab.load_model(args.model)
    pristine = copy.deepcopy(loaded.model)
    calibration = CalibrationConfig(source=args.calib_source, n_samples=args.samples,
                                    seqlen=args.seqlen)
    calib = calibration_windows(loaded, calibration)
    evaluation = eval_windows(loaded, args.eval_source, args.seqlen, args.windows)
    is_ssm = ssm.is_ssm(loaded.model)

    base = current_rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in calib.split(8):  # the engine's batches
            loaded.model(input_ids=batch, use_cache=False)
    forward_s = time.perf_counter() - start
    forward_peak = peak_rss_bytes() - base
    dense = {"perplexity": perplexity_of_windows(loaded.model, evaluation),
             **model_size(loaded.model)}
    print(f"{args.model}: dense perplexity {dense['perplexity']:.2f}, one forward over the "
          f"calibration windows {forward_s:.2f} s, peak +{forward_peak / 1e6:.0f} MB",
          flush=True)
    rows = []
    for method, sparsity, pattern, options in grid(is_ssm):
        if args.structured_only and method not in ("ssm-flap", "flap"):
            continue
        loaded.model = copy.deepcopy(pristine)
        base = current_rss_bytes()
        reset_peak_rss()
        start = time.perf_counter()
        result = prunelab.prune(loaded, method, sparsity, pattern=pattern,
                                calibration=calibration, progress=False, **options)
        seconds = time.perf_counter() - start
        peak = peak_rss_bytes() - base
        row = {"method": method, "sparsity": sparsity, "pattern": pattern, **options,
               "overall_sparsity": round(result.overall_sparsity, 4),
               "perplexity": perplexity_of_windows(loaded.model, evaluation),
               "seconds": round(seconds, 2), "time_vs_forward": round(seconds / forward_s, 2),
               "peak_mb": round(peak / 1e6, 1), "peak_vs_forward": round(peak / forward_peak, 2)
               if forward_peak > 0 else None}
        if sparsity == 0.5 and method in ("ssm-flap", "flap"):
            size = model_size(loaded.model)
            dense_speed, pruned_speed = tokens_per_second([pristine, loaded.model], evaluation)
            row["tokens_per_s"] = round(pruned_speed, 1)
            row["dense_tokens_per_s"] = round(dense_speed, 1)
            row["tokens_per_s_vs_dense"] = round(pruned_speed / dense_speed, 3)
            row["parameters_vs_dense"] = round(size["parameters"] / dense["parameters"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"model": args.model, "calibration": vars(calibration) if hasattr(
        calibration, "__dict__") else str(calibration), "eval_source": args.eval_source,
        "seqlen": args.seqlen, "windows": args.windows, "dense": dense,
        "forward_seconds": forward_s, "forward_peak_mb": forward_peak / 1e6, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
