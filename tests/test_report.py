"""The report: self-contained, escaped, atomic, rebuilt from the store; tidy exports; the CLI."""

import base64
import csv
import io
import json
import re

import pytest

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.report import build_report
from prunelab.study.export import export, render, table
from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import run_study
from prunelab.study.testing import FakeBackend

EVIL = "smollm2-<script>alert(1)</script>"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    recipe = parse_recipe({
        "name": "rep", "models": [EVIL], "tasks": ["digits", "objects"],
        "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.6]},
                         {"method": "wanda", "sparsity": [0.5]}],
        "band_probe": {"starts": [0.0, 0.5]}, "perplexity": {},
        "eval": {"limit": 30}, "analysis": {"n_boot": 100}})
    run_study(recipe, path, backend=FakeBackend(), progress=False)
    assert set(build_report(path)) == {"html", "md", "json"}
    return path


def test_html_is_self_contained_and_escaped(run_dir):
    page = (run_dir / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from anywhere
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # relative-vs-sparsity and band probe
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    for text in ("harder drops more", "Spearman", "Kendall", "dequantized", "Band probe",
                 "Breaking points", "name: rep", "7 (at chance)"):
        assert text in page, text


def test_markdown_and_images(run_dir):
    md = (run_dir / "report.md").read_text()
    assert "| model | method | family | verdict |" in md
    for name in re.findall(r"\]\((report_files/fig\d+\.png)\)", md):
        assert (run_dir / name).read_bytes().startswith(b"\x89PNG")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["points"] == summary["total_points"] == 6 * 7


def test_report_rebuilds_from_store_and_leaves_no_temp_files(run_dir):
    (run_dir / "report.html").unlink()
    paths = build_report(run_dir)
    assert paths["html"].is_file()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_partial_run_report_says_so(tmp_path):
    class Stop(Exception):
        pass

    class Half(FakeBackend):
        def evaluate(self, *a, **k):
            if sum(c[0] == "evaluate" for c in self.calls) >= 10:
                raise Stop
            return super().evaluate(*a, **k)

    recipe = parse_recipe({"name": "half", "models": ["m"], "tasks": ["digits"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.6]}],
                           "analysis": {"n_boot": 50}})
    with pytest.raises(Stop):
        run_study(recipe, tmp_path, backend=Half(), progress=False)
    build_report(tmp_path)
    assert "10 of 12 points finished (a partial report" in (tmp_path / "report.md").read_text()


def test_exports_are_tidy(run_dir):
    points = table(run_dir, "points")
    assert len(points) == 42 and {"model", "method", "sparsity", "level", "score"} <= set(points[0])
    rows = list(csv.DictReader(io.StringIO(render(points, "csv").decode())))
    assert len(rows) == 42
    examples = table(run_dir, "examples")
    assert len(examples) == 42 * 30 and examples[0]["value"] in (0.0, 1.0)
    path = export(run_dir, "json", "verdicts")
    verdicts = json.loads(path.read_text())
    assert {"slope_ci_low", "slope_ci_high", "p_holm", "verdict"} <= set(verdicts[0])
    pq = pytest.importorskip("pyarrow.parquet")
    path = export(run_dir, "parquet", "relative", run_dir / "rel.parquet")
    assert pq.read_table(path).num_rows == len(table(run_dir, "relative"))
    with pytest.raises(PrunelabError, match="unknown format"):
        render(points, "xlsx")


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_results_report_and_errors(run_dir, tmp_path, capsys):
    main(["results", str(run_dir), "--format", "csv", "--out", "-"])
    assert capsys.readouterr().out.startswith("model,arm,x,x_field,method,sparsity")
    main(["report", str(run_dir)])
    assert "report.html" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: []\ntasks: [synth_arithmetic]\ncompressions:\n"
                   "  - {method: wanda, sparsity: [1.5]}\nwhat: 1\n")
    code, _, err = _cli(["study", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "compressions[0].sparsity[0]" in err and "what: unknown key" in err
    code, _, err = _cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "not a prunelab run directory" in err


def test_dry_run_without_a_pilot_says_how_to_get_one(tmp_path, capsys):
    rows = "".join(json.dumps({"input": f"q{i}", "choices": ["a", "b"], "answer": i % 2}) + "\n"
                   for i in range(20))
    (tmp_path / "easy.jsonl").write_text(rows)
    (tmp_path / "hard.jsonl").write_text(rows)
    (tmp_path / "fam.yaml").write_text(
        "name: fam\nkind: mc\npaired_levels: true\nlevels:\n"
        "  - {level: easy, data: easy.jsonl}\n  - {level: hard, data: hard.jsonl}\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nmodels: [smollm2-135m]\ntasks: ['{tmp_path / 'fam.yaml'}']\n"
                      "compressions:\n  - {method: magnitude, sparsity: [0.5]}\n"
                      "analysis: {item_measure: continuous}\n")
    main(["study", str(recipe), "--dry-run", "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "needs a dense pilot" in out and "dry-run again with that --run-dir" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
