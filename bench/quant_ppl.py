"""Perplexity of weight quantization on one model, RTN against GPTQ, in one process.

Loads the model once, then for each run restores its original weights, compresses with the
registered method (the same `prunelab.prune` the CLI calls) and measures perplexity on the
windows of the docs' (findings) pruning table (32 × 512 tokens of SQuAD dev; calibration 128 × 512 of
squadshifts-new_wiki, seed 0). Each finished row is printed and appended to `--log` as JSON,
so a long table survives a kill. A `sparsegpt` run in the same process gives the time ratio
GPTQ / SparseGPT (same Hessians, similar sweep).

    python bench/quant_ppl.py --runs rtn:4:128,gptq:4:128,sparsegpt:0.5 [--model smollm2-135m]

A run is METHOD:BITS:GROUP (GROUP "pc" for per-channel) or sparsegpt:SPARSITY.
"""

from __future__ import annotations

import argparse
import json
import time


def parse_run(text: str) -> tuple[str, dict, float | None]:
    parts = text.strip().split(":")
    if parts[0] == "sparsegpt":
        return "sparsegpt", {}, float(parts[1])
    method, bits, group = parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "128"
    options = {"bits": bits, "group_size": None if group == "pc" else int(group)}
    for extra in parts[3:]:
        key, _, value = extra.partition("=")
        options[key] = value
    return method, options, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", required=True)
    parser.add_argument("--log", default="quant_ppl.jsonl")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import prunelab
    from prunelab import api
    from prunelab.data.corpora import CalibrationConfig

    loaded = prunelab.load_model(args.model)
    original = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    dense = api.dense_perplexity(loaded, "squad-dev", 512, 32).value
    print(f"dense perplexity {dense:.3f}", flush=True)
    calibration = CalibrationConfig(n_samples=args.samples, seqlen=args.seqlen, seed=args.seed)
    times: dict[str, float] = {}
    for text in args.runs.split(","):
        method, options, sparsity = parse_run(text)
        loaded.model.load_state_dict(original)
        start = time.perf_counter()
        result = prunelab.prune(loaded, method, sparsity, calibration=calibration,
                                progress=False, **options)
        seconds = time.perf_counter() - start
        ppl = prunelab.perplexity(loaded, "squad-dev", 512, 32)
        times[text] = result.seconds
        row = {"run": text, "method": method, "options": options, "sparsity": sparsity,
               "ppl": round(ppl, 3), "dense": round(dense, 3),
               "vs_dense": round(ppl / dense - 1, 5), "prune_seconds": round(result.seconds, 1),
               "seconds_with_calibration": round(seconds, 1), "model": args.model,
               "calibration": result.calibration, "torch_threads": torch.get_num_threads()}
        print(json.dumps(row), flush=True)
        with open(args.log, "a") as log:
            log.write(json.dumps(row) + "\n")
    gptq = [t for t in times if t.startswith("gptq:")]
    sgpt = [t for t in times if t.startswith("sparsegpt:")]
    if gptq and sgpt:
        for run in gptq:
            print(f"time ratio {run} / {sgpt[0]}: {times[run] / times[sgpt[0]]:.2f} "
                  f"({times[run]:.1f} s / {times[sgpt[0]]:.1f} s, one process)", flush=True)


if __name__ == "__main__":
    main()
