"""Perplexity and pruning time of every unstructured method, time as a ratio to Wanda's.

Each spec runs in a fresh process: load the model, prune with the docs' (findings) calibration
(128 windows × 512 tokens of squadshifts-new_wiki, seed 0, batch 8), measure perplexity on
squad-dev (32 windows × 512). Times are ratios to Wanda at 50% measured in the same run,
so they stay comparable when the machine is shared. Finished specs are appended to
`--results` (JSON lines) and skipped when the bench is started again.

    python bench/bench_methods.py [--model smollm2-135m] [--specs "wanda@0.5,owl@0.7,..."]

A spec is METHOD[+OPTION=VALUE...]@SPARSITY or METHOD[+...]@N:M, e.g.
`owl+base=sparsegpt@0.7`, `dsnot@0.5`, `gblm@2:4`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SPECS = ",".join([
    "wanda@0.7", "owl@0.7", "wanda@0.5", "gblm@0.5", "dsnot@0.5", "owl@0.5", "gblm@0.7",
    "dsnot@0.7", "besa@0.5", "besa@0.7", "owl+base=sparsegpt@0.7", "sparsegpt@0.7",
    "owl+base=sparsegpt@0.5", "sparsegpt@0.5", "magnitude@0.5", "magnitude@0.7",
    "random@0.5", "random@0.7", "wanda-variant@0.5", "wanda-variant@0.7", "wanda@2:4",
    "gblm@2:4", "dsnot@2:4", "sparsegpt@2:4", "magnitude@2:4", "random@2:4",
])


def parse_spec(spec: str) -> tuple[str, dict, float | None, str | None]:
    head, _, amount = spec.partition("@")
    method, *pairs = head.split("+")
    options = dict(pair.split("=", 1) for pair in pairs)
    if ":" in amount:
        return method, options, None, amount
    return method, options, float(amount), None


def child(model_name: str, spec: str, samples: int, seqlen: int, batch_size: int) -> dict:
    import prunelab
    from prunelab.data.corpora import CalibrationConfig

    method, options, sparsity, pattern = parse_spec(spec)
    loaded = prunelab.load_model(model_name)
    config = CalibrationConfig(n_samples=samples, seqlen=seqlen, seed=0)
    start = time.perf_counter()
    result = prunelab.prune(loaded, method, sparsity, pattern=pattern, calibration=config,
                            batch_size=batch_size, progress=False, **options)
    wall = time.perf_counter() - start
    ppl = prunelab.perplexity(loaded, "squad-dev", 512, 32)
    by_block: dict[int, list] = {}
    for r in result.layers:
        block = int(r.name.split(".")[2]) if r.name.split(".")[2].isdigit() else -1
        by_block.setdefault(block, []).append(r)
    block_sparsity = {b: round(sum(r.zeros_after for r in rs) / sum(r.numel for r in rs), 4)
                      for b, rs in by_block.items()}
    return {"spec": spec, "ppl": ppl, "prune_s": result.seconds, "wall_s": wall,
            "sparsity": result.overall_sparsity, "block_sparsity": block_sparsity}


def _read(results: Path) -> dict:
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done[row["spec"]] = row
    return done


def _claim(path: Path) -> bool:
    try:
        path.open("x").close()
        return True
    except FileExistsError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--specs", default=DEFAULT_SPECS)
    parser.add_argument("--results", default="bench_methods.jsonl")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child, args.samples, args.seqlen,
                               args.batch_size)))
        return
    results = Path(args.results)
    done = _read(results)
    for spec in args.specs.split(","):
        # Re-read and claim each spec, so that two benches may share one results file.
        done = _read(results)
        claim = results.with_name(f"{results.name}.{spec.replace('/', '_')}.claim")
        if spec in done or not _claim(claim):
            continue
        cmd = [sys.executable, __file__, "--child", spec, "--model", args.model,
               "--samples", str(args.samples), "--seqlen", str(args.seqlen),
               "--batch-size", str(args.batch_size)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{spec}: failed: {run.stderr.strip().splitlines()[-1:]}", flush=True)
            claim.unlink()
            continue
        row = json.loads(run.stdout.strip().splitlines()[-1])
        done[spec] = row
        with results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{spec:28} ppl {row['ppl']:9.2f}  prune {row['prune_s']:7.1f} s  "
              f"sparsity {row['sparsity']:.4f}", flush=True)
    done = _read(results)
    print("\n| method | sparsity | ppl | prune s | time / Wanda's (same sparsity) |")
    print("|---|---|---|---|---|")
    for spec, row in done.items():
        # Wanda at the same sparsity or pattern, else at 50%.
        wanda = done.get("wanda@" + spec.partition("@")[2]) or done.get("wanda@0.5")
        ratio = f"{row['prune_s'] / wanda['prune_s']:.2f}" if wanda else "—"
        print(f"| {spec} | {row['sparsity']:.4f} | {row['ppl']:.2f} | {row['prune_s']:.1f} | "
              f"{ratio} |")
    print(f"# {args.model}, {args.samples} x {args.seqlen} calibration tokens "
          f"(squadshifts-new_wiki, seed 0), batch {args.batch_size}; ppl squad-dev 32 x 512")


if __name__ == "__main__":
    main()
