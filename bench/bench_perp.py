"""PERP on a pruned model: perplexity before and after retraining a few parameters, against
full sparse fine-tuning at the same number of steps.

    .venv/bin/python bench/bench_perp.py [--methods wanda,magnitude] [--steps 50]
        [--retraining "full sparse"]

For each method at 50%: prune once (the docs' (findings) calibration), measure perplexity (the
docs' (findings) 32 x 512 windows of squad-dev), then from that same pruned model retrain, each for
`--steps` steps of language modelling on calibration-source text (squadshifts-new_wiki; never
the evaluation text): biases + norms, LoRA r=16, MaskLoRA r=16, and every weight with the
mask held (full sparse fine-tuning), and measure perplexity and the sparsity that remains.
"""

from __future__ import annotations

import argparse
import copy
import time

from prunelab.api import perplexity, prune
from prunelab.data.corpora import CalibrationConfig
from prunelab.recover.loop import TrainConfig
from prunelab.recover.run import TransferPlan, transfer
from prunelab.zoo.models import load_model

RETRAINING = {  # name -> TransferPlan fields
    "biases+norms": dict(trainable=["biases", "norms"], lr=5e-4),
    "LoRA r=16": dict(trainable=[], lora_rank=16, lr=5e-4),
    "MaskLoRA r=16": dict(trainable=[], lora_rank=16, masked_lora=True, lr=5e-4),
    "full sparse": dict(trainable=["all"], lr=2e-5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="wanda,magnitude")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--windows", type=int, default=32, help="perplexity windows of 512")
    parser.add_argument("--retraining", default=",".join(RETRAINING),
                        help="comma-separated rows to run, of: " + ", ".join(RETRAINING))
    args = parser.parse_args()
    chosen = args.retraining.split(",")
    unknown = sorted(set(chosen) - set(RETRAINING))
    if unknown:
        parser.error(f"unknown retraining {unknown}: choose from {', '.join(RETRAINING)}")
    rows = []
    for method in args.methods.split(","):
        loaded = load_model(args.model)
        dense_ppl = perplexity(loaded, "squad-dev", 512, args.windows)
        result = prune(loaded, method, args.sparsity, keep_masks=True, progress=False,
                       calibration=CalibrationConfig("squadshifts-new_wiki", 128, 512, 0))
        pruned_ppl = perplexity(loaded, "squad-dev", 512, args.windows)
        rows.append((method, "none (pruned)", "0.00%", dense_ppl, pruned_ppl, "-", "-"))
        print(rows[-1], flush=True)  # each row as it comes: a long run may be stopped
        pruned_state = copy.deepcopy(loaded.model.state_dict())
        for name in chosen:
            fields = RETRAINING[name]
            loaded.model.load_state_dict(pruned_state)
            fields = dict(fields)
            lr = fields.pop("lr")
            plan = TransferPlan("sparse", train_on=["text:squadshifts-new_wiki"],
                                max_items=args.steps * args.batch,
                                train=TrainConfig(lr=lr, epochs=1, batch_size=args.batch,
                                                  warmup=0.06, seed=0), **fields)
            started = time.perf_counter()
            record = transfer(loaded, plan, masks=result.masks, progress=False)
            seconds = time.perf_counter() - started
            after = perplexity(loaded, "squad-dev", 512, args.windows)
            regrown = record["masked_nonzero"] / max(record["masked_weights"], 1)
            rows.append((method, name, f"{record['trainable_fraction']:.2%}", dense_ppl,
                         after, f"{regrown:.1%}", f"{seconds:.0f}"))
            print(rows[-1], flush=True)
    print(f"\n{args.model}, {args.sparsity:.0%}, {args.steps} steps x {args.batch} windows of "
          "256 tokens; perplexity on squad-dev 32 x 512")
    print("| method | retrained | trainable | dense ppl | ppl after | pruned weights nonzero "
          "| seconds |")
    print("|---|---|---|---|---|---|---|")
    for method, name, share, dense, after, regrown, seconds in rows:
        print(f"| {method} | {name} | {share} | {dense:.2f} | {after:.2f} | {regrown} | "
              f"{seconds} |")


if __name__ == "__main__":
    main()
