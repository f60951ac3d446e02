"""The encoder track's grid (the Junk DNA paper's GLUE side) until the study runs encoders:
settings x sparsities x data adequacy x seeds on one classification task, each run appended
to a JSONL file (a rerun skips what is there), then each setting as % of Dense Transfer with
a bootstrap interval over test items and seeds.

    .venv/bin/python bench/encoder_transfer_grid.py --task multiemo-en --out runs/enc.jsonl \\
        --sparsities 0.5,0.9 --adequacy 1.0 --seeds 42 --epochs 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from prunelab.recover.encoder import encoder_transfer
from prunelab.recover.loop import TrainConfig

SETTINGS = ("sparse", "sparse-to-dense", "freeze")


def _key(task, setting, sparsity, adequacy, seed) -> str:
    return f"{task}|{setting}|{sparsity:g}|{adequacy:g}|{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--task", default="multiemo-en")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sparsities", default="0.5,0.9")
    parser.add_argument("--adequacy", default="1.0")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    sparsities = [float(s) for s in args.sparsities.split(",")]
    adequacies = [float(a) for a in args.adequacy.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    done = {}
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    runs = [("dense", 0.0, a, s) for a in adequacies for s in seeds]
    runs += [(setting, x, a, s) for setting in args.settings.split(",") for x in sparsities
             for a in adequacies for s in seeds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for setting, sparsity, adequacy, seed in runs:
        key = _key(args.task, setting, sparsity, adequacy, seed)
        if key in done:
            continue
        record = encoder_transfer(args.model, args.task, setting, sparsity=sparsity,
                                  adequacy=adequacy, n_train=args.n_train, n_test=args.n_test,
                                  train=TrainConfig(lr=args.lr, epochs=args.epochs,
                                                    batch_size=args.batch_size, seed=seed))
        record["key"] = key
        done[key] = record
        with args.out.open("a") as handle:  # one line per finished run: a kill loses one run
            handle.write(json.dumps(record) + "\n")
        print(f"{key}: accuracy {record['accuracy']:.3f} ({record['seconds']:.0f} s)",
              flush=True)
    rng = np.random.default_rng(0)
    print(f"\n{args.task}: % of Dense Transfer (95% bootstrap over test items and seeds)")
    for adequacy in adequacies:
        dense = np.array([done[_key(args.task, "dense", 0.0, adequacy, s)]["correct"]
                          for s in seeds])  # [seeds, items]
        n = dense.shape[1]
        idx = rng.integers(0, n, size=(2000, n))
        pick = rng.integers(0, len(seeds), size=(2000, len(seeds)))

        def boot(rows):
            per_seed = rows[:, idx].mean(axis=-1)  # [seeds, B]
            return per_seed[pick, np.arange(2000)[:, None]].mean(axis=1)

        dense_boot = boot(dense)
        print(f"adequacy {adequacy:.0%}: dense transfer accuracy {dense.mean():.3f}")
        for setting in args.settings.split(","):
            for sparsity in sparsities:
                rows = np.array([done[_key(args.task, setting, sparsity, adequacy, s)]["correct"]
                                 for s in seeds])
                share = boot(rows) / dense_boot
                low, high = np.quantile(share, [0.025, 0.975])
                print(f"  {setting:16s} {sparsity:4.0%}: accuracy {rows.mean():.3f}, "
                      f"{rows.mean() / dense.mean():6.1%} of dense transfer "
                      f"[{low:.1%}, {high:.1%}]")


if __name__ == "__main__":
    main()
