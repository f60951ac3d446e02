"""Fingerprints of what each compression method computes on a real model, to prove a refactoring
changed nothing: `--save FILE` before, `--compare FILE` after (exit 1 on any difference).

For every method the fingerprint is the SHA-256 of every tensor of the compressed model's state
dict (so masks, SparseGPT's and GPTQ's weight updates and FLAP's rebuilt shapes are all covered
bit for bit), the config's shapes, and the achieved sparsity. One thread, so that float
reductions run in one order on any machine load.

    python bench/identity_masks.py --save runs/identity-before.json
    python bench/identity_masks.py --compare runs/identity-before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

CASES = [  # (label, kind, method, arguments)
    ("wanda-50", "prune", "wanda", {"sparsity": 0.5}),
    ("sparsegpt-50", "prune", "sparsegpt", {"sparsity": 0.5}),
    ("sparsegpt-2:4", "prune", "sparsegpt", {"pattern": "2:4"}),
    ("magnitude-global-50", "prune", "magnitude-global", {"sparsity": 0.5}),
    ("owl-wanda-70", "prune", "owl", {"sparsity": 0.7}),
    ("flap-20", "prune", "flap", {"sparsity": 0.2}),
    ("gptq-4bit-g64", "quantize", "gptq", {"bits": 4, "group_size": 64}),
]


def fingerprint(model) -> dict:
    tensors = {}
    for name, tensor in model.state_dict().items():
        data = tensor.detach().contiguous().cpu()
        digest = hashlib.sha256(data.view(torch.uint8).numpy().tobytes()
                                if data.dtype != torch.bool else data.numpy().tobytes())
        tensors[name] = f"{tuple(data.shape)} {data.dtype} {digest.hexdigest()[:32]}"
    return tensors


def run(model_name: str, samples: int, seqlen: int, only: list[str] | None) -> dict:
    from prunelab import api
    from prunelab.data.corpora import CalibrationConfig
    from prunelab.zoo.models import load_model

    calibration = CalibrationConfig(n_samples=samples, seqlen=seqlen)
    out = {}
    for label, kind, method, args in CASES:
        if only and label not in only:
            continue
        loaded = load_model(model_name)
        start = time.perf_counter()
        if kind == "prune":
            result = api.prune(loaded, method, args.get("sparsity"), pattern=args.get("pattern"),
                               calibration=calibration, progress=False)
        else:
            result = api.quantize(loaded, method, calibration=calibration, progress=False, **args)
        seconds = time.perf_counter() - start
        out[label] = {"overall_sparsity": result.overall_sparsity,
                      "tensors": fingerprint(loaded.model)}
        print(f"{label}: sparsity {result.overall_sparsity:.6f}, {len(out[label]['tensors'])} "
              f"tensors, {seconds:.1f} s", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path)
    group.add_argument("--compare", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--only", nargs="*", help="case labels to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fresh = run(args.model, args.samples, args.seqlen, args.only)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(fresh, indent=1))
        print(f"saved {len(fresh)} fingerprints to {args.save}")
        return 0
    before = json.loads(args.compare.read_text())
    differ = 0
    for label, record in fresh.items():
        old = before.get(label)
        if old is None:
            print(f"{label}: not in {args.compare}")
            differ += 1
            continue
        changed = [n for n in set(old["tensors"]) | set(record["tensors"])
                   if old["tensors"].get(n) != record["tensors"].get(n)]
        same_sparsity = old["overall_sparsity"] == record["overall_sparsity"]
        print(f"{label}: {len(record['tensors']) - len(changed)}/{len(record['tensors'])} tensors "
              f"identical, sparsity {'identical' if same_sparsity else 'DIFFERS'}"
              + (f"; differ: {sorted(changed)[:4]}" if changed else ""))
        differ += bool(changed) or not same_sparsity
    print("IDENTICAL" if not differ else f"{differ} case(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
