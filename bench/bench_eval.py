"""Multiple-choice throughput: prunelab's packed scorer vs lm-evaluation-harness's HF backend.

Same model object, same items, same prompt strings, same machine, one process:

    python bench/bench_eval.py --model smollm2-135m --task arithmetic:2 --limit 200

Prints examples/s and tokens/s for each (tokens = context + continuation of every choice,
what a scorer without prefix sharing processes, so the ratio is a like-for-like speed-up),
the ratio, and whether the two pick the same choice for every item (both by summed
log-prob, lm-eval's `acc`). lm-eval is timed on its `loglikelihood` calls only, not on
its task loading. Needs the optional extra: pip install 'prunelab[lmeval]'.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="arithmetic:2", help="a multiple-choice task level")
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
    if task.kind != "mc":
        sys.exit(f"{args.task} is not a multiple-choice task")

    # warm up both paths once (allocator, kernels) on a few items
    evaluate(loaded, [task.name], limit=4, progress=False, batch_size=args.batch_size)

    ours, ours_s = None, float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = evaluate(loaded, [task.name], limit=args.limit, progress=False,
                        batch_size=args.batch_size, mc_score="sum")
        ours_s = min(ours_s, time.perf_counter() - start)

    from lm_eval.models.huggingface import HFLM

    timing = {"s": 0.0}
    original = HFLM.loglikelihood

    def timed(self, requests, *a, **kw):
        start = time.perf_counter()
        try:
            return original(self, requests, *a, **kw)
        finally:
            timing["s"] += time.perf_counter() - start

    HFLM.loglikelihood = timed
    theirs, theirs_s = None, float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        export_tasks([task], tmp, limit=args.limit)
        run_lmeval(loaded, [lmeval_name(task)], include_path=tmp, limit=4, batch_size=args.batch_size)
        for _ in range(args.repeats):
            timing["s"] = 0.0
            theirs = run_lmeval(loaded, [lmeval_name(task)], include_path=tmp,
                                batch_size=args.batch_size, log_samples=True)
            theirs_s = min(theirs_s, timing["s"])
    HFLM.loglikelihood = original

    # like-for-like token count: every choice as its own context + continuation sequence
    plan_tokens = 0
    packed_tokens = 0
    for ex in ours.examples:
        plan_tokens += sum(ex.prompt_tokens + n for n in ex.choice_tokens)
        packed_tokens += ex.prompt_tokens + sum(ex.choice_tokens)
    samples = {s["doc"]["id"]: s for s in theirs["samples"][lmeval_name(task)]}
    same, worst = 0, 0.0
    for ex in ours.examples:
        lls = [float(r[0][0]) for r in samples[ex.example_id]["resps"]]
        ours_pick = max(range(len(lls)), key=lambda i: (ex.choice_scores_sum[i], -i))
        their_pick = max(range(len(lls)), key=lambda i: (lls[i], -i))
        same += ours_pick == their_pick
        worst = max(worst, max(abs(a - b) for a, b in zip(ex.choice_scores_sum, lls)))
    n = len(ours.examples)
    print(f"model {args.model}, task {task.name}, {n} items, batch size {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'':<12} {'seconds':>8} {'examples/s':>11} {'tokens/s':>9}")
    for name, secs in (("prunelab", ours_s), ("lm-eval HF", theirs_s)):
        print(f"{name:<12} {secs:>8.2f} {n / secs:>11.2f} {plan_tokens / secs:>9.0f}")
    print(f"speed-up: {theirs_s / ours_s:.2f}x  (prunelab ran {packed_tokens} packed tokens "
          f"for {plan_tokens} request tokens)")
    print(f"identical per-item choices: {same}/{n}; max |log-lik difference| {worst:.2e}")


if __name__ == "__main__":
    main()
