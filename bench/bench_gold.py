"""Generation tasks: the gold answer's log-probability scored from generation's cache, against
a separate scoring pass over prompt and answer (the engine's way before, and its way still
for models whose cache keeps sliding windows).

    python bench/bench_gold.py --model smollm2-135m --task squad_context:2 --limit 32

Same model object and items, one process, rounds interleaved after a warm-up round; prints
the best time of each way, their ratio, and the largest difference in `gold_logprob`.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="squad_context:2", help="a generation task level")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()

    import torch

    import prunelab.evaluate.runner as runner
    from prunelab.zoo.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    cached_way = runner.generate_and_score

    def apart_way(*positional, **keywords):
        tokens, _ = cached_way(*positional, **keywords)
        return tokens, [None] * len(tokens)

    def timed(way):
        runner.generate_and_score = way
        try:
            start = time.perf_counter()
            examples = runner.evaluate(loaded, [args.task], limit=args.limit, progress=False,
                                       batch_size=args.batch_size).examples
            return time.perf_counter() - start, examples
        finally:
            runner.generate_and_score = cached_way

    timed(cached_way)  # warm-up: tokenizer tables, first allocations
    best = {"cached": float("inf"), "apart": float("inf")}
    results = {}
    for _ in range(args.rounds):
        for name, way in (("cached", cached_way), ("apart", apart_way)):
            seconds, results[name] = timed(way)
            best[name] = min(best[name], seconds)
    difference = max(abs(a.gold_logprob - b.gold_logprob)
                     for a, b in zip(results["cached"], results["apart"]))
    same = all(a.prediction == b.prediction for a, b in zip(results["cached"], results["apart"]))
    prompt_tokens = sum(e.prompt_tokens for e in results["cached"]) / len(results["cached"])
    print(f"{args.model}, {args.task}, {args.limit} items (mean prompt {prompt_tokens:.0f} "
          f"tokens), torch threads {torch.get_num_threads()}, best of {args.rounds}")
    print(f"gold from the cache: {best['cached']:.1f} s; separate pass: {best['apart']:.1f} s; "
          f"ratio {best['apart'] / best['cached']:.2f} x")
    print(f"largest |gold_logprob difference| {difference:.1e}; same predictions: {same}")


if __name__ == "__main__":
    main()
