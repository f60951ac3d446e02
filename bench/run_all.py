"""Every ratio prunelab tracks, one line each with what it is compared against.

Runs each bench of this folder as a subprocess (small settings by default, the findings'
settings with `--slow`), reads its output and prints one line per ratio:

    python bench/run_all.py [--slow] [--calibration FILE] [--text FILE] [--only prune,cli]

`make bench` runs the fast set, `make bench-all` (or `make bench BENCH=slow`) all of them at
full size. A bench that fails prints its line with FAILED and the reason, and the others go
on; the exit status is 1 if any failed. Every figure is a ratio of two things measured in the
same run on the same machine, so it stays comparable when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Bench:
    name: str
    slow_only: bool  # run only with --slow
    args: Callable[[argparse.Namespace], list[str]]  # the script and its arguments
    lines: Callable[[str], list[tuple[str, str, str]]]  # stdout -> (what, value, against)
    needs: str | None = None  # a file this bench needs; absent: a line says so


def _search(pattern: str, text: str) -> re.Match:
    found = re.search(pattern, text, re.MULTILINE)
    if found is None:
        raise ValueError(f"no line matching {pattern!r} in its output")
    return found


def _source_args(args, calibration: str = "--calibration", text: str = "--text") -> list[str]:
    out = []
    if args.calibration:
        out += [calibration, args.calibration]
    if args.text:
        out += [text, args.text]
    return out


def _prune_args(args) -> list[str]:
    size = ["--samples", "128", "--seqlen", "512"] if args.slow else ["--samples", "16",
                                                                      "--seqlen", "256"]
    return ["bench_prune.py", "--json", "--no-ppl", "--methods", "wanda,sparsegpt,gptq",
            *size, *_source_args(args)]


def _prune_lines(out: str) -> list[tuple[str, str, str]]:
    rows = {r["method"]: r for r in (json.loads(line) for line in out.splitlines()
                                     if line.startswith("{"))}
    wanda, sparsegpt, gptq = rows["wanda"], rows["sparsegpt"], rows["gptq"]
    size = (f"{wanda['model_fp32_gb']:.2f} GB {wanda['dtype']} model, "
            f"calibration as in its command")
    return [
        ("Wanda pruning time / one dense forward", f"{wanda['ratio']:.2f}",
         f"the dense forward over the same windows (aim <= 2.5; {size})"),
        ("SparseGPT pruning time / one dense forward", f"{sparsegpt['ratio']:.2f}",
         "the dense forward over the same windows (aim <= 6)"),
        ("peak RSS while pruning / model size, Wanda", f"{wanda['rss_ratio_net_of_activations']:.2f}",
         f"the model's bytes, net of libraries and activations (aim <= 1.5; gross "
         f"{wanda['rss_ratio']:.2f})"),
        ("peak RSS while pruning / model size, SparseGPT",
         f"{sparsegpt['rss_ratio_net_of_activations']:.2f}",
         f"the model's bytes, net of libraries and activations (aim <= 1.5; gross "
         f"{sparsegpt['rss_ratio']:.2f})"),
        ("GPTQ 4-bit / SparseGPT 50% pruning time", f"{gptq['prune_s'] / sparsegpt['prune_s']:.2f}",
         "SparseGPT's whole run on the same windows (aim <= 1.2)"),
    ]


def _sweep_lines(out: str) -> list[tuple[str, str, str]]:
    ratio = _search(r"sweep time ratio GPTQ / SparseGPT: ([\d.]+)", out).group(1)
    return [("GPTQ / SparseGPT column sweep time", ratio,
             "SparseGPT's sweep on the same layers and Hessians")]


def _cli_lines(out: str) -> list[tuple[str, str, str]]:
    return [("`prunelab --help` time", _search(r"^ratio ([\d.]+)", out).group(1),
             "`python -c 'import typer'` (1.0: the CLI costs nothing beyond typer)")]


def _structured_lines(out: str) -> list[tuple[str, str, str]]:
    row = _search(r"^\| \S+ 50% \|.*\| [\d.]+ \(([\d.]+)x\) \| [\d.]+ \(([\d.]+)x\) \|$", out)
    return [("structured 50%: prefill tokens/s speed-up", row.group(1),
             "the dense model's prefill tokens/s"),
            ("structured 50%: generation tokens/s speed-up", row.group(2),
             "the dense model's generation tokens/s")]


def _stream_lines(out: str) -> list[tuple[str, str, str]]:
    line = _search(r"^wanda: peak RSS.*$", out).group(0)
    ratio = _search(r"= ([\d.]+);", line).group(1)  # "peak ... / model ... = R; wall ..."
    return [("streamed Wanda: peak RSS / model size", ratio,
             f"the model's size on disk ({line.strip()})")]


def _eval_lines(out: str) -> list[tuple[str, str, str]]:
    speed = _search(r"^speed-up: ([\d.]+)x", out).group(1)
    same = _search(r"^identical per-item choices: (\d+/\d+)", out).group(1)
    return [("evaluation throughput, prunelab / lm-eval", speed,
             f"lm-evaluation-harness's HF backend on the same items ({same} same choices)")]


def _divergence_lines(out: str) -> list[tuple[str, str, str]]:
    ratio = _search(r"^time: .* ratio ([\d.]+)", out).group(1)
    return [("divergence pass / perplexity pass time", ratio,
             "one perplexity pass of the dense model on the same windows (aim <= 2.2)")]


def _transfer_lines(out: str) -> list[tuple[str, str, str]]:
    step = _search(r"sparse: whole step vs dense ([+-][\d.]+%)", out).group(1)
    peak = _search(r"peak RSS [\d.]+ GB = ([\d.]+) x", out).group(1)
    return [("sparse fine-tuning step / dense step", step,
             "a dense step on the same batches (aim < +10%)"),
            ("fine-tuning peak RSS / fp32 weights", peak, "the fp32 weights (AdamW: about 4)")]


def _gpu_lines(out: str) -> list[tuple[str, str, str]]:
    if out.startswith("no GPU here"):
        return [("GPU / CPU pruning speed-up", "not measured", out.strip())]
    found = re.findall(r"^(\w+): CPU .* speed-up ([\d.]+)x", out, re.MULTILINE)
    if not found:
        raise ValueError("no method line in its output")
    return [(f"{method}: GPU speed-up over the CPU", ratio, "the same method on the CPU in fp32")
            for method, ratio in found]


def _demo_eval_lines(out: str) -> list[tuple[str, str, str]]:
    ratio = _search(r"^together / one by one: ([\d.]+)", out).group(1)
    return [("demo levels scored together / one by one", ratio,
             "the same levels evaluated one at a time, same run (lower is better)")]


def _workers_lines(out: str) -> list[tuple[str, str, str]]:
    found = _search(r"^study with (\d+) one-thread workers / one \d+-thread process: ([\d.]+)",
                    out)
    return [(f"study in {found.group(1)} one-thread workers / one process", found.group(2),
             "the same cut-down demo in one process of every core's thread (lower is better)")]


def _dtype_lines(out: str) -> list[tuple[str, str, str]]:
    found = re.findall(r"^(\w+): masks agree on ([\d.]+%).*\(([+-][\d.]+%)\)", out, re.MULTILINE)
    if not found:
        raise ValueError("no method line in its output")
    return [(f"{method} bf16: masks agreeing, pruned perplexity", f"{agree}, {ppl}",
             "the same method in fp32") for method, agree, ppl in found]


BENCHES = [
    Bench("prune", False, _prune_args, _prune_lines),
    Bench("quant-sweep", False, lambda a: ["bench_quant_sweep.py", "--repeat", "1"],
          _sweep_lines),
    Bench("cli", False, lambda a: ["bench_cli.py", "--repeats", "3" if not a.slow else "7"],
          _cli_lines),
    Bench("structured", False,
          lambda a: ["bench_structured.py", "--ratios", "0.5",
                     *(["--rounds", "5"] if a.slow else ["--rounds", "2", "--prompt", "128",
                                                         "--new-tokens", "16"]),
                     *_source_args(a)],
          _structured_lines),
    # The streaming bench (bench_stream.py) when this tree has it: quick, two 7B-shaped blocks.
    Bench("stream", False,
          lambda a: ["bench_stream.py", "--methods", "wanda",
                     *([] if a.slow else ["--layers", "2"]),
                     *(["--text", a.calibration] if a.calibration else [])],
          _stream_lines, needs="bench_stream.py"),
    Bench("eval", True, lambda a: ["bench_eval.py", "--limit", "200"], _eval_lines),
    Bench("demo-eval", False,
          lambda a: ["bench_demo_eval.py", *(["--limit", "20", "--repeats", "1"]
                                             if not a.slow else [])],
          _demo_eval_lines),
    Bench("workers", True, lambda a: ["bench_workers.py"], _workers_lines),
    Bench("divergence", True,
          lambda a: ["bench_divergence.py", "--timing-only", *_source_args(a)],
          _divergence_lines),
    Bench("transfer", True, lambda a: ["bench_transfer.py"], _transfer_lines),
    Bench("gpu", True, lambda a: ["bench_gpu.py", *_source_args(a)], _gpu_lines),
    Bench("dtype", True, lambda a: ["dtype_agreement.py", *_source_args(a)], _dtype_lines),
]


def run_bench(bench: Bench, args) -> tuple[list[tuple[str, str, str]], str | None, float]:
    """(its lines, why it failed or None, seconds)."""
    if bench.needs and not (HERE / bench.needs).exists():
        return [], f"bench/{bench.needs} is not in this tree", 0.0
    command = [sys.executable, *bench.args(args)]
    command[1] = str(HERE / command[1])
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return [], f"took longer than {args.timeout} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        return [], f"exit {done.returncode}: {last[-1].strip()[:300]}", seconds
    try:
        return bench.lines(done.stdout), None, seconds
    except (ValueError, KeyError) as exc:
        return [], f"could not read its output: {exc}", seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="all benches, full size")
    parser.add_argument("--only", default="", help="comma-separated bench names")
    parser.add_argument("--calibration", default=None, help="calibration text: name or file "
                        "(default: each bench's)")
    parser.add_argument("--text", default=None, help="evaluation text: name or file "
                        "(default: each bench's)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per bench")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if (args.slow or not b.slow_only)
              and (not args.only or b.name in args.only.split(","))]
    print(f"# {'every' if args.slow else 'the fast'} bench, one line per ratio "
          f"({'full size' if args.slow else 'small settings; make bench-all for the full set'})",
          flush=True)
    failed = 0
    for bench in chosen:
        lines, problem, seconds = run_bench(bench, args)
        if problem is not None:
            broken = problem.startswith(("exit", "took", "could not"))
            failed += broken
            print(f"{bench.name + ':':<48} {'FAILED' if broken else 'skipped'}  ({problem})",
                  flush=True)
            continue
        for what, value, against in lines:
            print(f"{what + ':':<48} {value:>8}  vs {against}", flush=True)
        print(f"{'':<48} ({bench.name}: {seconds:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
