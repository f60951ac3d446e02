"""Refusal rates of a chat model, dense and Wanda-pruned (all layers and attention only),
per jailbreak template, with Wilson intervals (prunelab's built-in sets):

    python bench/bench_refusal.py --model smollm2-135m --sparsities 0.1,0.2,0.3

Prints one Markdown table row per model, set and template.
"""

from __future__ import annotations

import argparse
import copy
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsities", default="0.1,0.2,0.3")
    parser.add_argument("--only", default="all,attention")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    args = parser.parse_args()

    from prunelab import api
    from prunelab.data.corpora import CalibrationConfig
    from prunelab.evaluate.refusal import evaluate_refusal
    from prunelab.zoo.models import load_model

    loaded = load_model(args.model)
    pristine = copy.deepcopy(loaded.model.state_dict())
    calibration = CalibrationConfig("squadshifts-new_wiki", args.calib_samples,
                                    args.calib_seqlen, 0)
    print("| model | set | template | n | refused | rate | 95% CI | s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    runs = [("dense", None, None)] + [(f"wanda {float(s):.0%}" + ("" if o == "all" else f" {o}"),
                                       float(s), o) for o in args.only.split(",")
                                      for s in args.sparsities.split(",") if s.strip()]
    for label, sparsity, only in runs:
        loaded.model.load_state_dict(pristine)
        if sparsity is not None:
            options = {} if only == "all" else {"only": only}
            api.prune(loaded, "wanda", sparsity, calibration=calibration, progress=False,
                      **options)
        start = time.perf_counter()
        result = evaluate_refusal(loaded, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        for s in result.summary:
            print(f"| {label} | {s['set']} | {s['template']} | {s['n']} | {s['refused']} | "
                  f"{s['rate']:.2f} | [{s['ci_low']:.2f}, {s['ci_high']:.2f}] | "
                  f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
