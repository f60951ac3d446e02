"""Evaluation throughput: prunelab's scorer vs lm-evaluation-harness's HF backend.

Same model object, same items, same prompt strings, same machine, one process:

    python bench/bench_eval.py --model smollm2-135m --task arithmetic:2 --limit 200
    python bench/bench_eval.py --task bench/peers/tasks/sums_mc.yaml    # a local task file
    python bench/bench_eval.py --task bench/peers/tasks/sums_gen.yaml   # greedy generation

Multiple choice (loglikelihood):
Prints examples/s and tokens/s for each (tokens = context + continuation of every choice,
what a scorer without prefix sharing processes, so the ratio is a like-for-like speed-up),
the ratio, and whether the two pick the same choice for every item (both by summed
log-prob, lm-eval's `acc`). lm-eval is timed on its `loglikelihood` calls only, not on
its task loading. Generation: both decode greedily, stop at the first newline, and the
outputs are compared item by item (stripped), timed on lm-eval's `generate_until` calls.
Each side's peak RSS is measured over its timed runs, net of the RSS just before them (the
model is loaded once, before either). Needs the optional extra: pip install 'prunelab[lmeval]'.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def start_peak() -> int:
    """Restart VmHWM from the current RSS (Linux) and return that RSS."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_bytes("VmRSS")


def peak_since(base: int) -> int:
    return _status_bytes("VmHWM") - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="arithmetic:2",
                        help="a multiple-choice or generation task level, or a task spec file")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings for each")
    args = parser.parse_args()

    import torch

    from prunelab.evaluate.lmeval import export_tasks, lmeval_name, require_lm_eval, run_lmeval
    from prunelab.evaluate.runner import evaluate
    from prunelab.tasks.registry import get_tasks
    from prunelab.zoo.models import load_model

    require_lm_eval()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    (task,) = get_tasks(args.task)
    if task.kind not in ("mc", "generate"):
        sys.exit(f"{args.task} is neither a multiple-choice nor a generation task")
    generate = task.kind == "generate"
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())

    # warm up both paths once (allocator, kernels) on a few items
    evaluate(loaded, [task], limit=4, progress=False, batch_size=args.batch_size)

    ours, ours_s = None, float("inf")
    base = start_peak()
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = evaluate(loaded, [task], limit=args.limit, progress=False,
                        batch_size=args.batch_size, mc_score="sum")
        ours_s = min(ours_s, time.perf_counter() - start)
    ours_peak = peak_since(base)

    from lm_eval.models.huggingface import HFLM

    timing = {"s": 0.0}
    timed_call = "generate_until" if generate else "loglikelihood"
    original = getattr(HFLM, timed_call)

    def timed(self, requests, *a, **kw):
        start = time.perf_counter()
        try:
            return original(self, requests, *a, **kw)
        finally:
            timing["s"] += time.perf_counter() - start

    setattr(HFLM, timed_call, timed)
    # What lm-eval actually runs: it shares one forward among the choices of an item whose
    # tokens differ only in the last one, so its tokens are fewer than the requests'.
    original_call = HFLM._model_call
    ran = {"tokens": 0}

    def counted(self, inputs, *a, **kw):
        ran["tokens"] += inputs.numel()
        return original_call(self, inputs, *a, **kw)

    HFLM._model_call = counted
    theirs, theirs_s = None, float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        export_tasks([task], tmp, limit=args.limit)
        run_lmeval(loaded, [lmeval_name(task)], include_path=tmp, limit=4, batch_size=args.batch_size)
        base = start_peak()
        for _ in range(args.repeats):
            timing["s"] = 0.0
            ran["tokens"] = 0
            theirs = run_lmeval(loaded, [lmeval_name(task)], include_path=tmp,
                                batch_size=args.batch_size, log_samples=True)
            theirs_s = min(theirs_s, timing["s"])
        theirs_peak = peak_since(base)
    setattr(HFLM, timed_call, original)
    HFLM._model_call = original_call
    samples = {s["doc"]["id"]: s for s in theirs["samples"][lmeval_name(task)]}
    n = len(ours.examples)
    header = (f"model {args.model} ({model_bytes / 2**20:.0f} MB of weights), task {task.name}, "
              f"{n} items, batch size {args.batch_size}, torch threads {torch.get_num_threads()}")
    if generate:
        same = sum(str(ex.prediction).strip() == str(samples[ex.example_id]["resps"][0][0]).strip()
                   for ex in ours.examples)
        print(header)
        print(f"{'':<12} {'seconds':>8} {'examples/s':>11} {'peak MB':>8}")
        for name, secs, peak in (("prunelab", ours_s, ours_peak), ("lm-eval HF", theirs_s, theirs_peak)):
            print(f"{name:<12} {secs:>8.2f} {n / secs:>11.2f} {peak / 2**20:>8.0f}")
        print(f"speed-up: {theirs_s / ours_s:.2f}x")
        print(f"identical per-item generations: {same}/{n}")
        return

    # like-for-like token count: every choice as its own context + continuation sequence
    plan_tokens = 0
    packed_tokens = 0
    for ex in ours.examples:
        plan_tokens += sum(ex.prompt_tokens + n for n in ex.choice_tokens)
        packed_tokens += ex.prompt_tokens + sum(ex.choice_tokens)
    same, worst = 0, 0.0
    for ex in ours.examples:
        lls = [float(r[0][0]) for r in samples[ex.example_id]["resps"]]
        ours_pick = max(range(len(lls)), key=lambda i: (ex.choice_scores_sum[i], -i))
        their_pick = max(range(len(lls)), key=lambda i: (lls[i], -i))
        same += ours_pick == their_pick
        worst = max(worst, max(abs(a - b) for a, b in zip(ex.choice_scores_sum, lls)))
    print(header)
    print(f"{'':<12} {'seconds':>8} {'examples/s':>11} {'tokens/s':>9} {'peak MB':>8}")
    for name, secs, peak in (("prunelab", ours_s, ours_peak), ("lm-eval HF", theirs_s, theirs_peak)):
        print(f"{name:<12} {secs:>8.2f} {n / secs:>11.2f} {plan_tokens / secs:>9.0f} "
              f"{peak / 2**20:>8.0f}")
    print(f"speed-up: {theirs_s / ours_s:.2f}x  (prunelab ran {packed_tokens} packed tokens, "
          f"lm-eval {ran['tokens']} padded tokens, for {plan_tokens} request tokens)")
    print(f"identical per-item choices: {same}/{n}; max |log-lik difference| {worst:.2e}")


if __name__ == "__main__":
    main()
