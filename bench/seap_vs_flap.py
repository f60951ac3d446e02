"""FLAP against SEAP at the same size on the task suite: does a task's own mask help its task,
and at what cost to the others?

For one model and target share of parameters removed, prunes (each from the dense model):
- `flap` calibrated on general text (squadshifts-new_wiki), as FLAP's paper does;
- `seap` general: calibrated on all the families' held-out prompts together;
- `seap` per family: calibrated on that family's held-out prompts only;
- `seap` routed: the per-family models behind `prunelab.routing`'s router;
and scores every one on every family (the items the evaluation selects; calibration prompts
are the others). Prints the mean score per family (the matrix's diagonal is "own mask") and
the dense model's, and appends every row to `--log` as JSON.

    python bench/seap_vs_flap.py --families arithmetic,options --sparsity 0.2 --limit 100
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path


def mean_score(results) -> float:
    summary = results.summary()
    return sum(s["score"] for s in summary) / len(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--families", default="arithmetic,options")
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--log", default="seap_vs_flap.jsonl")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import prunelab
    from prunelab.data.corpora import CalibrationConfig
    from prunelab.evaluate.runner import evaluate
    from prunelab.routing import build_seap_router
    from prunelab.tasks.calibration import task_text
    from prunelab.zoo.models import LoadedModel

    families = [f.strip() for f in args.families.split(",")]
    dense = prunelab.load_model(args.model)

    def calibration(source):
        return CalibrationConfig(source=source, n_samples=args.samples, seqlen=args.seqlen)

    def held_out(family):
        return f"task:{family}?limit={args.limit}&seed=0"

    def scores(loaded) -> dict[str, float]:
        return {f: mean_score(evaluate(loaded, [f], limit=args.limit, progress=False))
                for f in families}

    def pruned(method, source):
        copy_ = LoadedModel(copy.deepcopy(dense.model), dense.tokenizer, dense.name)
        prunelab.prune(copy_, method, args.sparsity, calibration=calibration(source),
                       progress=False)
        return copy_

    rows = {"dense": scores(dense)}
    rows["flap (general text)"] = scores(pruned("flap", "squadshifts-new_wiki"))
    with tempfile.TemporaryDirectory() as tmp:
        mixed = Path(tmp) / "all_prompts.txt"
        mixed.write_text("\n\n".join(task_text(held_out(f)) for f in families))
        rows["seap general (all families' prompts)"] = scores(pruned("seap", str(mixed)))
    for family in families:
        rows[f"seap {family} mask"] = scores(pruned("seap", held_out(family)))
    routed, fitted = build_seap_router(dense, families, args.sparsity, eval_limit=args.limit,
                                       n_samples=args.samples, seqlen=args.seqlen)
    rows["seap routed"] = scores(routed)
    print(f"\n{args.model}, {args.sparsity:.0%} of parameters removed, {args.limit} items per "
          f"level, calibration {args.samples} x {args.seqlen}; router on held-out prompts: "
          + ", ".join(f"{f} {a:.2f}" for f, a in fitted.items()))
    print("| model | " + " | ".join(families) + " |")
    print("|---|" + "---|" * len(families))
    with open(args.log, "a") as log:
        for name, by_family in rows.items():
            print(f"| {name} | " + " | ".join(f"{by_family[f]:.3f}" for f in families) + " |")
            log.write(json.dumps({"model": args.model, "sparsity": args.sparsity,
                                  "limit": args.limit, "row": name, **by_family}) + "\n")


if __name__ == "__main__":
    main()
