"""What a study stores, exports and reports, and what its dry run estimates, stay exactly as
they were before the study's seams were reshaped (measures, axes and costs as registered
pieces). The fixture `identity_snapshot.json` was written by the code before that change:

    .venv/bin/python tests/test_store_identity.py WRITE   # only to re-take the snapshot

A difference here means a point key, a stored row, an export column, a report line or a
dry-run estimate changed for an existing recipe. Re-taken once since, on 2026-12-07, when runs
began to be read in the recipe's order instead of the order their points finished (stored
rows and estimates unchanged; exports and report reordered, and the bootstrap intervals of
arms with several seeds drawn in that order)."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import sys
from pathlib import Path

FIXTURE = Path(__file__).with_name("identity_snapshot.json")

# Every measure, both axes' special cases (band probe, bits removed), a calibration sweep,
# seeds and an N:M pattern, on the fake backend.
FULL = {
    "name": "identity", "models": ["fake-a", "smollm2-fake"], "tasks": ["digits", "shared",
                                                                         "objects"],
    "seeds": [0, 1],
    "compressions": [
        {"method": "magnitude", "sparsity": [0.3, 0.6]},
        {"method": "wanda", "sparsity": [0.5], "sweep": {"calibration.n_samples": [16, 32]}},
        {"method": "sparsegpt", "patterns": ["2:4"]}],
    "band_probe": {"starts": [0.0, 0.4]},
    "perplexity": {"n_windows": 2}, "divergence": {"n_windows": 2, "seqlen": 64},
    "refusal": {"judge": "fake-judge"},
    "eval": {"limit": 30}, "analysis": {"n_boot": 100}}
QUANT = {
    "name": "pvq", "models": ["m"], "tasks": ["digits", "flat"],
    "compressions": [
        {"method": "wanda", "sparsity": [0.4, 0.6], "x": "bits_removed_per_weight"},
        {"method": "rtn", "bits": [8, 4, 2], "x": "bits_removed_per_weight"}],
    "eval": {"limit": 40}, "analysis": {"n_boot": 100}}


def _quant_backend():
    from prunelab.study.testing import METHODS, FakeBackend

    class QuantFakeBackend(FakeBackend):
        def check(self, recipe):
            saved = dict(METHODS)
            METHODS.update(rtn=1.0, gptq=0.8)
            try:
                return super().check(recipe)
            finally:
                METHODS.clear()
                METHODS.update(saved)

        def keep(self, point, fragility, model):
            if point is not None and any(s.method in ("rtn", "gptq") for s in point.stages):
                return max(0.0, 1.0 - 0.5 * (8 - point.stages[-1].options["bits"]) / 8)
            return super().keep(point, fragility, model)

    return QuantFakeBackend()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_rows(run_dir: Path) -> dict:
    """Every stored row of a run, the wall-clock columns (finished, seconds) left out."""
    conn = sqlite3.connect(run_dir / "results.sqlite")
    conn.row_factory = sqlite3.Row
    clock = {"finished", "seconds"}
    out = {}
    for table, order in (("points", "key"), ("compressions", "key"), ("measures", "key, kind"),
                         ("examples", "point_key, idx"), ("meta", "key")):
        rows = [{k: r[k] for k in r.keys() if k not in clock}
                for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
        by_key: dict[str, list] = {}  # one digest per key (examples: per point)
        for r in rows:
            by_key.setdefault(str(r["point_key"] if "point_key" in r else r["key"]) + (
                "/" + r["kind"] if table == "measures" else ""), []).append(r)
        out[table] = {k: _sha(json.dumps(v, sort_keys=True, default=str))
                      for k, v in by_key.items()}
    conn.close()
    return out


def _report_text(run_dir: Path) -> dict:
    md = (run_dir / "report.md").read_text()
    md = md.replace(str(run_dir), "RUN_DIR")
    page = (run_dir / "report.html").read_text().replace(str(run_dir), "RUN_DIR")
    page = re.sub(r'src="data:image/png;base64,[^"]*"', 'src="PNG"', page)
    page = re.sub(r"Written by prunelab on [^.]*\.", "Written.", page)
    sections = re.split(r"(?m)^## ", md)
    return {"md": {s.split("\n", 1)[0]: _sha(s) for s in sections}, "html": _sha(page)}


def study_snapshot(recipe_data: dict, backend, run_dir: Path) -> dict:
    from prunelab.report import build_report
    from prunelab.study.export import render, table
    from prunelab.study.recipe import parse_recipe
    from prunelab.study.runner import dry_run, run_study

    recipe = parse_recipe(recipe_data)
    run_study(recipe, run_dir, backend=backend, progress=False)
    build_report(run_dir)
    exports = {}
    for name in ("points", "examples", "relative", "monotonicity", "verdicts", "thresholds"):
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in table(run_dir, name)]
        exports[name] = _sha(render(rows, "csv").decode())
        exports[name + "_columns"] = list(dict.fromkeys(k for r in rows for k in r))
    plan = dry_run(recipe, backend, run_dir)
    return {"fingerprint": recipe.fingerprint(), "store": store_rows(run_dir),
            "exports": exports, "report": _report_text(run_dir),
            "dry_run_pending": plan["pending_points"], "grid": plan["grid"]}


def estimate_snapshot() -> dict:
    """The dry run's time model on the real backend for every method (calibrated or not),
    wrappers on their default and another base, a transfer stage, each measure and each
    task kind."""
    from prunelab.methods.registry import METHODS
    from prunelab.study.plan import DENSE, CompressionPoint, TaskInfo
    from prunelab.study.recipe import parse_recipe
    from prunelab.study.stages import parse_stage

    import prunelab.methods  # noqa: F401  (registers the methods)
    import prunelab.study.backend as backend_module

    estimate = getattr(backend_module, "rough_estimate", None)
    if estimate is None:
        from prunelab.study.estimate import rough_estimate as estimate
    calibration = {"source": "x", "n_samples": 64, "seqlen": 256}
    stages = [({"method": name, "sparsity": 0.5}, cal)
              for name in sorted(METHODS) + ["not-a-method"] for cal in (None, calibration)]
    stages += [({"method": "owl", "sparsity": 0.5, "options": {"base": "sparsegpt"}},
                calibration),
               ({"method": "dsnot", "sparsity": 0.5, "options": {"base": "magnitude"}},
                calibration),
               ({"kind": "transfer", "setting": "sparse", "method": "wanda", "sparsity": 0.5,
                 "train_on": ["digits"], "train": {"max_steps": 40}}, calibration)]
    tasks = [TaskInfo("t-mc", "t", "d", 1, 0, 0.25, 300, "mc"),
             TaskInfo("t-gen", "t", "d", 2, 1, 0.0, None, "generate"),
             TaskInfo("t-roll", "t", "d", 3, 2, None, 50, "rolling"),
             TaskInfo("t-odd", "t", "d", 4, 3, None, 80, "other"),
             TaskInfo("finetune-x:50", "finetune-x", "adequacy", 50, 0, 0.5, 400, "finetune")]
    recipes = {
        "bare": parse_recipe({"name": "e", "models": ["smollm2-135m"], "tasks": ["x"],
                              "compressions": [{"method": "wanda", "sparsity": [0.5]}]}),
        "measured": parse_recipe({
            "name": "e", "models": ["smollm2-135m"], "tasks": ["x"],
            "compressions": [{"method": "wanda", "sparsity": [0.5]}],
            "eval": {"limit": 120, "finetune": {"epochs": 2}},
            "perplexity": {"n_windows": 4}, "divergence": {"n_windows": 3, "seqlen": 128},
            "refusal": {"max_new_tokens": 32}})}
    out = {}
    for recipe_name, recipe in recipes.items():
        for model in ("smollm2-135m", "qwen2.5-coder-0.5b"):
            for data, cal in stages:
                stage = parse_stage(data)
                point = CompressionPoint((stage,), (cal,), 0, "arm", 0.5,
                                         "stages[0].sparsity")
                label = json.dumps([recipe_name, model, data, cal is not None], sort_keys=True)
                out[label] = list(estimate(recipe, model, point, tasks))
            out[json.dumps([recipe_name, model, "dense"])] = list(
                estimate(recipe, model, DENSE, tasks))
    return out


def snapshot(tmp: Path) -> dict:
    from prunelab.study.testing import FakeBackend

    return {"full": study_snapshot(FULL, FakeBackend(), tmp / "full"),
            "quant": study_snapshot(QUANT, _quant_backend(), tmp / "quant"),
            "estimates": estimate_snapshot()}


def _differences(before, after, where="") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        out = [f"{where}.{k}: missing after" for k in before if k not in after]
        out += [f"{where}.{k}: new after" for k in after if k not in before]
        for k in before:
            if k in after:
                out += _differences(before[k], after[k], f"{where}.{k}")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after))
                for d in _differences(b, a, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


def test_stored_rows_exports_report_and_estimates_are_unchanged(tmp_path):
    before = json.loads(FIXTURE.read_text())
    after = json.loads(json.dumps(snapshot(tmp_path), default=str))
    differences = _differences(before, after)
    assert not differences, "\n".join(differences[:20])


if __name__ == "__main__" and sys.argv[1:] == ["WRITE"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = json.loads(json.dumps(snapshot(Path(tmp)), default=str))
    FIXTURE.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
