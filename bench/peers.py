"""prunelab beside its peers, in one run: llm-compressor, the reference repositories, Model Optimizer.

Every (system, method) compresses in its own fresh process (bench/peers/worker.py) with the
same thread count, the same model and the very same calibration tokens (drawn once by
prunelab from --calib-source and written to a file the peers read). Each process reports the
wall time and CPU time of the compression call alone and its peak RSS net of its own
baseline (taken after imports and model load). Perplexity is computed by ONE evaluator, prunelab's, in this process,
on each system's compressed weights and the same evaluation windows, so only the compression
differs. Systems of one method run back to back.

    bash bench/peers/setup.sh                 # the peers' own venv and the reference repos
    python bench/peers.py --model smollm2-135m \
        --calib-source python-ref-a --eval-source python-ref-b

A peer that is not installed or fails prints one row saying why; the bench goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
sys.path.insert(0, str(PEERS))
from worker import METHODS  # noqa: E402

SYSTEMS = ("prunelab", "reference", "llmcompressor", "modelopt")
# Model Optimizer's sparsity offers 2:4 only: its rows exist for these methods alone.
OFFERS = {"modelopt": {"sparsegpt24", "magnitude24"}}
PEER_VENV_SYSTEMS = {"llmcompressor", "modelopt"}


def run_worker(python: str, system: str, method: str, model_dir: str, calib: Path, args,
               work: Path) -> dict:
    out, result = work / f"{system}-{method}.safetensors", work / f"{system}-{method}.json"
    for stale in (out, result):
        stale.unlink(missing_ok=True)
    command = [python, str(PEERS / "worker.py"), "--system", system, "--method", method,
               "--model-dir", model_dir, "--calib", str(calib), "--calib-source",
               args.calib_source, "--calib-seed", str(args.calib_seed), "--out", str(out),
               "--result", str(result), "--threads", str(args.threads)]
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    env = {**os.environ, **env}
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {args.timeout} s"}
    row = json.loads(result.read_text()) if result.exists() else {
        "error": f"worker exited {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}"}
    row["process_seconds"] = time.perf_counter() - start
    if "error" not in row:
        row["weights"] = str(out)
    else:
        (work / f"{system}-{method}.log").write_text(proc.stdout + proc.stderr)
    return row


def check_args(args) -> str | None:
    """The problem with the arguments and its fix, in one line; None when they are fine."""
    for name in args.methods.split(","):
        if name not in METHODS:
            return f"unknown method {name!r}; use some of {', '.join(METHODS)}"
    for name in args.systems.split(","):
        if name not in SYSTEMS:
            return f"unknown system {name!r}; use some of {', '.join(SYSTEMS)}"
    for flag in ("calib_samples", "calib_seqlen", "eval_windows", "eval_seqlen", "threads",
                 "timeout"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} is {getattr(args, flag)}; give 1 or more"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--calib-source", required=True, help="text source or file for calibration")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--calib-seed", type=int, default=0)
    parser.add_argument("--eval-source", required=True, help="text source or file for perplexity")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per worker")
    parser.add_argument("--peers-python", default=str(PEERS / ".venv/bin/python"))
    parser.add_argument("--work", default=str(PEERS / "work"))
    parser.add_argument("--out", default="", help="write every row as JSON here")
    args = parser.parse_args()
    refusal = check_args(args)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        sys.exit(2)

    import torch
    from safetensors.torch import load_file, save_file

    import prunelab
    from prunelab.data.corpora import CalibrationConfig, calibration_windows, eval_windows
    from prunelab.evaluate.perplexity import perplexity_of_windows
    from prunelab.zoo.models import resolve

    torch.set_num_threads(args.threads)
    model_dir, _ = resolve(args.model)
    loaded = prunelab.load_model(args.model)
    work = Path(args.work) / args.model
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calibration.safetensors"
    windows = calibration_windows(loaded, CalibrationConfig(
        source=args.calib_source, n_samples=args.calib_samples, seqlen=args.calib_seqlen,
        seed=args.calib_seed))
    save_file({"input_ids": windows.contiguous()}, str(calib))
    evals = eval_windows(loaded, args.eval_source, args.eval_seqlen, args.eval_windows)
    layers = loaded.model.model.layers
    dense = {k: v.clone() for k, v in layers.state_dict().items()}
    dense_ppl = perplexity_of_windows(loaded.model, evals)
    print(f"model {args.model} ({model_dir}); calibration {len(windows)} x {windows.shape[1]} "
          f"tokens of {args.calib_source}; perplexity on {len(evals)} x {evals.shape[1]} of "
          f"{args.eval_source}; {args.threads} threads per process; dense ppl {dense_ppl:.3f}",
          flush=True)
    results = {"model": args.model, "dense_ppl": dense_ppl, "calib": [len(windows), windows.shape[1]],
               "eval": [len(evals), evals.shape[1]], "threads": args.threads, "rows": {}}

    def evaluate(path: str) -> tuple[float, dict]:
        weights = load_file(path)
        layers.load_state_dict(dense)
        missing = set(weights) - set(dense)
        if missing:
            raise KeyError(f"weights not in the model: {sorted(missing)[:3]}")
        layers.load_state_dict(weights, strict=False)
        ppl = perplexity_of_windows(loaded.model, evals)
        return ppl, {k: v == 0 for k, v in weights.items()}

    header = (f"{'method':<12} {'system':<14} {'seconds':>8} {'CPU s':>7} {'peak MB':>8} "
              f"{'ppl':>9} {'time/ours':>9} {'CPU/ours':>8} {'RSS/ours':>8} {'ppl vs ours':>11} "
              f"{'mask same':>9}")
    print(header, flush=True)
    for method in args.methods.split(","):
        ours_masks, ours = None, None
        for system in args.systems.split(","):
            if method not in OFFERS.get(system, {method}):
                continue
            python = args.peers_python if system in PEER_VENV_SYSTEMS else sys.executable
            if not Path(python).exists():
                row = {"error": "peer environment not built (bash bench/peers/setup.sh)"}
            else:
                row = run_worker(python, system, method, model_dir, calib, args, work)
            if "error" not in row:
                row["ppl"], masks = evaluate(row["weights"])
                # Its masks are held in memory now: the file (the whole model's decoder
                # weights, GBs for the larger models) goes.
                Path(row.pop("weights")).unlink(missing_ok=True)
                if system == "prunelab":
                    ours_masks, ours = masks, row
                elif ours_masks is not None and METHODS[method][0] != "gptq":
                    same = sum(int((masks[k] == ours_masks[k]).sum()) for k in masks)
                    row["mask_agreement"] = same / sum(v.numel() for v in masks.values())
            results["rows"][f"{method}/{system}"] = row
            if "error" in row:
                why = "not offered" if row.get("not_offered") else "FAILED"
                print(f"{method:<12} {system:<14} {why}: {row['error']}", flush=True)
            else:
                ratio = (lambda key: f"{row[key] / ours[key]:.2f}x" if ours else "-")
                vs = f"{100 * (row['ppl'] / ours['ppl'] - 1):+.2f}%" if ours else "-"
                same = f"{100 * row['mask_agreement']:.2f}%" if "mask_agreement" in row else "-"
                print(f"{method:<12} {system:<14} {row['seconds']:>8.1f} "
                      f"{row['cpu_seconds']:>7.1f} {row['peak_rss_net_bytes'] / 2**20:>8.0f} "
                      f"{row['ppl']:>9.3f} {ratio('seconds'):>9} {ratio('cpu_seconds'):>8} "
                      f"{ratio('peak_rss_net_bytes'):>8} {vs:>11} {same:>9}", flush=True)
            if args.out:
                partial = Path(args.out + ".partial")
                partial.write_text(json.dumps(results, indent=2))
                partial.replace(args.out)
    print("\nper method: the fastest peer that ran, and prunelab's speed-up over it "
          "(goal >= 1.3x, ppl within 1%, peak RSS no higher)")
    for method in args.methods.split(","):
        ours = results["rows"].get(f"{method}/prunelab", {})
        peers = [(name.split("/")[1], row) for name, row in results["rows"].items()
                 if name.startswith(method + "/") and not name.endswith("/prunelab")
                 and "error" not in row]
        if "error" in ours or not ours or not peers:
            print(f"{method:<12} no comparison (prunelab or every peer missing)")
            continue
        name, fastest = min(peers, key=lambda p: p[1]["seconds"])
        speedup = fastest["seconds"] / ours["seconds"]
        cpu = fastest["cpu_seconds"] / ours["cpu_seconds"]
        ppl = 100 * (ours["ppl"] / fastest["ppl"] - 1)
        rss = ours["peak_rss_net_bytes"] / max(fastest["peak_rss_net_bytes"], 1)
        met = speedup >= 1.3 and ppl <= 1.0 and rss <= 1.0
        print(f"{method:<12} fastest peer {name}: speed-up {speedup:.2f}x (CPU time {cpu:.2f}x), "
              f"ppl {ppl:+.2f}%, "
              f"peak RSS {rss:.2f}x of the peer's -> goal {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
