"""A fake backend for tests: no model, no data, instant, deterministic.

Each fake task family has levels with a known dense accuracy and chance; a compression at
sparsity s lowers every level's above-chance skill by a factor that depends on s and, for the
"digits" family, on the level (harder falls faster), so the statistics have a known answer:

- digits   (levels 1-4, chance 0.25): harder drops more
- flat     (levels a-c, chance 0.25): every level drops alike (no evidence either way)
- reverse  (levels 1-3, chance 0.25): easier drops more (the opposite)
- objects  (levels 3/5/7, chance 1/n): the 7-object level is at chance when dense
- shared   (levels a-c, chance 0.25): harder drops a little more; its levels ask the same
           items (a paired family, like the options or language levels of the real suite)

Whether an example is answered correctly is `u < p`, with `u` a fixed hash of the example
(of the family's item, for a paired family), so dense and pruned results pair example by
example, as in a real run. Each record also holds choice scores whose gold probability
falls with `u` and averages about `p`, for the continuous item measure.
"""

from __future__ import annotations

import hashlib
import math
import time

from prunelab.errors import PrunelabError
from prunelab.study.plan import CompressionPoint, TaskInfo
from prunelab.study.recipe import Recipe

FAMILIES = {
    # family: [(level, rank, chance, dense accuracy, fragility)]
    "digits": [(d, d - 1, 0.25, 0.95, 0.6 + 0.5 * (d - 1)) for d in (1, 2, 3, 4)],
    "flat": [(x, r, 0.25, 0.9, 1.0) for r, x in enumerate("abc")],
    "reverse": [(d, d - 1, 0.25, 0.9, 2.0 - 0.6 * (d - 1)) for d in (1, 2, 3)],
    "objects": [(n, r, 1 / n, acc, 1.0) for r, (n, acc) in enumerate([(3, 0.9), (5, 0.7), (7, 0.14)])],
    "shared": [(x, r, 0.25, 0.9 - 0.05 * r, 1.0 + 0.25 * r) for r, x in enumerate("abc")],
}
PAIRED = {"shared"}
METHODS = {"magnitude": 1.3, "magnitude-global": 1.4, "wanda": 1.0, "sparsegpt": 0.9,
           "magnitude-band": 1.0}
SIZE = 60


# A compression calibrated on a family's own prompts (`task:FAMILY`) does this share of the
# damage to that family (and the usual damage to the others).
TASK_CALIBRATION_DAMAGE = 0.5


def _calibrated_on(point: CompressionPoint | None, family: str) -> bool:
    if point is None:
        return False
    return any(str((c or {}).get("source", "")).split("?")[0] in (f"task:{family}",)
               for c in point.calibration)


def _u(*parts) -> float:
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


class FakeModel:
    def __init__(self, name: str):
        self.name = name
        self.point: CompressionPoint | None = None


class FakeBackend:
    def __init__(self, eval_sleep: float = 0.0, compress_sleep: float = 0.0,
                 versions: dict | None = None, size: int = SIZE,
                 marker_dir: str | None = None):
        self.eval_sleep, self.compress_sleep = eval_sleep, compress_sleep
        # Each evaluation first leaves a file there naming its process and task: a test of
        # a distributed executor finds a worker to kill by it, and counts what was computed.
        self.marker_dir = marker_dir
        self._versions = versions or {"prunelab": "test", "fake": "1"}
        self.size = size
        self.calls: list[tuple] = []  # what was done, for tests to assert on

    def versions(self) -> dict:
        return dict(self._versions)

    def check(self, recipe: Recipe) -> list[tuple[str, str]]:
        from prunelab.study.plan import check_compressions

        problems = check_compressions(recipe)
        for i, comp in enumerate(recipe.compressions):
            methods = [s.get("method") for s in comp.stages] or [comp.method]
            for method in methods:
                if method is None and comp.stages:  # a stage that prunes nothing (dense transfer)
                    continue
                if method not in METHODS:
                    problems.append((f"compressions[{i}].method", f"unknown method {method!r}"))
            for j, p in enumerate(comp.patterns):
                n, _, m = p.partition(":")
                if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
                    problems.append((f"compressions[{i}].patterns[{j}]", f"bad pattern {p!r}"))
        for i, sel in enumerate(recipe.tasks):
            if sel.split(":")[0] not in FAMILIES:
                problems.append((f"tasks[{i}]", f"unknown task {sel!r}"))
        return problems

    def describe_tasks(self, selectors: list[str]) -> list[TaskInfo]:
        out = []
        for sel in selectors:
            family, _, level = sel.partition(":")
            if family not in FAMILIES:
                raise PrunelabError(f"unknown task {sel!r}", "use a fake family")
            for lv, rank, chance, _, _ in FAMILIES[family]:
                if not level or str(lv) == level:
                    out.append(TaskInfo(f"{family}:{lv}", family, "difficulty", lv, rank, chance,
                                        self.size, "mc", paired=family in PAIRED))
        return out

    def uses_calibration(self, stage) -> bool:
        return stage.method in ("wanda", "sparsegpt")

    def load(self, model: str, dtype: str = "fp32") -> FakeModel:
        self.calls.append(("load", model) if dtype == "fp32" else ("load", model, dtype))
        return FakeModel(model)

    def model_info(self, handle: FakeModel) -> dict:
        return {"name": handle.name, "dequantized": handle.name.startswith("smollm2"),
                "parameters": 1000, "architecture": "Fake",
                "caveat": "weights are dequantized 4-bit GGUF codes"
                if handle.name.startswith("smollm2") else None}

    def reset(self, handle: FakeModel) -> None:
        handle.point = None

    def compress(self, handle: FakeModel, point: CompressionPoint) -> dict:
        self.calls.append(("compress", handle.name, point.label))
        time.sleep(self.compress_sleep)
        handle.point = point
        first = point.first
        record = {"method": first["method"], "sparsity": first["sparsity"],
                  "overall_sparsity": first["sparsity"], "seconds": self.compress_sleep}
        stage = point.stages[0].model_dump() if point.stages else {}
        if stage.get("kind") == "transfer":  # PERP's subsets train a sliver of the model
            record["trainable_fraction"] = 1.0 if stage["trainable"] == ["all"] else 0.0042
        return record

    def measure(self, handle, measure, config, work=None):
        """A registered measure's fake (`Measure.fake`): the methods below for the built-in
        ones; a toy measure brings its own."""
        return measure.fake(self, handle, config, work)

    def perplexity(self, handle, source, seqlen, n_windows) -> float:
        s = handle.point.first["sparsity"] if handle.point else 0.0
        return 10.0 * (1 + 5 * s**3)

    def divergence(self, handle, source, seqlen, n_windows) -> dict:
        """Grows with the damage the compression does to an average level (so it tracks the
        task drop across methods, which the fake perplexity, a function of sparsity alone,
        does not), plus a little per-compression noise."""
        self.calls.append(("divergence", handle.name, handle.point.label if handle.point
                           else "dense"))
        damage = 1.0 - self.keep(handle.point, 1.0, handle.name)
        noise = 0.01 * _u(handle.name, handle.point.label if handle.point else "dense", "div")
        jsd = min(0.02 + 0.3 * damage + noise, math.log(2))
        return {"jsd": jsd, "kl_dense_compressed": 3 * jsd, "kl_compressed_dense": 2.5 * jsd,
                "top1_agreement": 1.0 - jsd, "tokens": n_windows * (seqlen - 1),
                "jsd_quantiles": {"q50": jsd / 2, "q95": 3 * jsd}, "units": "nats"}

    def refusal(self, handle, config) -> dict:
        """Refusal rates that rise to 20% sparsity and fall after (the paper's shape), lower
        under the role-play template; over-refusal of benign requests stays low."""
        self.calls.append(("refusal", handle.name, handle.point.label if handle.point
                           else "dense"))
        s = handle.point.first["sparsity"] if handle.point else 0.0
        base = 0.6 + 0.5 * s - 1.6 * max(0.0, s - 0.2)
        from prunelab.evaluate.metrics import wilson

        summary = []
        for kind, template, rate in (("harmful", "direct", base), ("harmful", "role-play",
                                     base - 0.3), ("benign", "direct", 0.05)):
            k = round(min(max(rate, 0.0), 1.0) * 15)
            low, high = wilson(k, 15)
            entry = {"set": kind, "template": template, "n": 15, "refused": k,
                     "rate": k / 15, "ci_low": low, "ci_high": high}
            if config.judge is not None:  # a judge that sees one refusal more than the rule
                kj = min(k + 1, 15)
                low, high = wilson(kj, 15)
                entry.update(judge_refused=kj, judge_rate=kj / 15, judge_ci_low=low,
                             judge_ci_high=high, agreement=(15 - (kj - k)) / 15)
            summary.append(entry)
        return {"summary": summary, "rows": []}

    def keep(self, point: CompressionPoint | None, fragility: float, model: str) -> float:
        """Fraction of above-chance skill a level keeps under this compression (its stages'
        damage adds up)."""
        if point is None or point.is_dense:
            return 1.0
        jitter = 0.03 * (_u(model, point.seed, "seed") - 0.5) if point.seed is not None else 0.0
        damage = 0.0
        for stage in point.stages:
            s = stage.sparsity or 0.0
            # fine-tuning after pruning: sparse transfer keeps the damage, regrowing gives a
            # little back, freezing the small weights keeps most of the skill
            s *= {"sparse-to-dense": 0.8, "freeze": 0.2}.get(getattr(stage, "setting", ""), 1.0)
            if "band_low" in stage.options:  # bands of larger weights hurt more
                s = 0.3 + 1.2 * stage.options["band_low"]
            damage += METHODS.get(stage.method, 1.0) * fragility * max(0.0, s - 0.2 + jitter) * 1.6
        return max(0.0, 1.0 - damage)

    def evaluate(self, handle: FakeModel, task: TaskInfo, limit, seed, batch_size):
        self.calls.append(("evaluate", handle.name, task.name))
        if self.marker_dir is not None:
            self._mark(handle, task)
        time.sleep(self.eval_sleep)
        family, _, _ = task.name.partition(":")
        _, _, chance, dense_acc, fragility = next(
            lv for lv in FAMILIES[family] if str(lv[0]) == str(task.level))
        keep = self.keep(handle.point, fragility, handle.name)
        if _calibrated_on(handle.point, family):  # its own prompts: half the damage
            keep = 1.0 - (1.0 - keep) * TASK_CALIBRATION_DAMAGE
        p = chance + (dense_acc - chance) * keep
        n = min(limit or self.size, self.size)
        examples = []
        choices = [f"c{k}" for k in range(round(1 / chance))]
        for i in range(n):
            u = _u(handle.name, task.name, seed, i)
            if family in PAIRED:  # mostly the item's own difficulty, shared by its levels
                u = 0.8 * _u(handle.name, family, seed, i) + 0.2 * u
            correct = float(u < p)
            gold = min(max(chance + (p - chance) * 2 * (1 - u), 0.01), 0.99)
            rest = math.log((1 - gold) / (len(choices) - 1))
            examples.append({"example_id": f"ex{i}", "value": correct, "weight": 1.0,
                             "margin": None,
                             "data": {"example_id": f"ex{i}", "correct": correct,
                                      "prediction": "<b>&fake</b>", "target": choices[0],
                                      "choices": choices, "choice_scores":
                                      [math.log(gold)] + [rest] * (len(choices) - 1)}})
        score = sum(e["value"] for e in examples) / n
        from prunelab.evaluate.metrics import wilson

        low, high = wilson(score * n, n)
        return examples, {"metric": "accuracy", "n": n, "score": score, "ci_low": low,
                          "ci_high": high, "chance": chance, "at_chance": low <= chance}

    def _mark(self, handle: FakeModel, task: TaskInfo) -> None:
        import os
        import uuid
        from pathlib import Path

        from prunelab.paths import write_json_atomic

        label = handle.point.label if handle.point else "dense"
        # Renamed into place: a test that lists the markers while a worker writes one, or
        # after it was killed mid-write, never reads an empty file.
        path = Path(self.marker_dir) / f"{uuid.uuid4().hex}.json"
        write_json_atomic(path, {"pid": os.getpid(), "point": [label, task.name]})

    def estimate(self, recipe, model, point, tasks) -> tuple[float, float]:
        return (0.0 if point.is_dense else self.compress_sleep), self.eval_sleep * len(tasks)
