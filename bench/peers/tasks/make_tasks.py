"""Writes the two small task families the lm-eval comparison uses (no download needed).

    python bench/peers/tasks/make_tasks.py     # rewrites sums_mc.jsonl and sums_gen.jsonl

- sums_mc: "What is a + b?" with four numeric choices (the sum, sum ± 1, sum + 10), 3 shots.
- sums_gen: the same questions answered by greedy generation (exact match), 3 shots.
Seeded, so the files are the same on every run.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = random.Random(31)
    mc, gen = [], []
    for i in range(300):
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        total = a + b
        choices = [total, total + 1, total - 1, total + 10]
        rng.shuffle(choices)
        question = f"What is {a} + {b}?"
        mc.append({"id": f"s{i}", "input": question, "choices": [str(c) for c in choices],
                   "answer": choices.index(total)})
        gen.append({"id": f"s{i}", "input": question, "targets": [str(total)]})
    for name, rows in (("sums_mc", mc), ("sums_gen", gen)):
        with open(HERE / f"{name}.jsonl", "w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
