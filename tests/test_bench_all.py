"""`make bench` (bench/run_all.py): each bench's output read into one line per ratio, and a
bench that is missing or fails named in its line while the others go on."""

import json

from bench_helpers import BENCH, bench_module


def _run_all():
    return bench_module("run_all")


def test_every_bench_it_runs_is_in_this_folder():
    run_all = _run_all()
    for bench in run_all.BENCHES:
        script = bench.args(type("Args", (), {"slow": False, "calibration": None,
                                              "text": None})())[0]
        assert (BENCH / script).exists() or script == bench.needs, script


def test_the_prune_bench_gives_time_memory_and_gptq_lines():
    run_all = _run_all()
    record = {"model_fp32_gb": 0.54, "dtype": "fp32", "ratio": 2.1, "prune_s": 100.0,
              "rss_ratio": 2.6, "rss_ratio_net_of_activations": 1.27}
    out = "\n".join(json.dumps({**record, "method": m, "prune_s": s})
                    for m, s in (("wanda", 50.0), ("sparsegpt", 100.0), ("gptq", 110.0)))
    lines = run_all._prune_lines(out)
    assert [value for _, value, _ in lines] == ["2.10", "2.10", "1.27", "1.27", "1.10"]
    assert all(against for _, _, against in lines)


def test_no_gpu_is_a_line_not_a_failure():
    run_all = _run_all()
    [(what, value, against)] = run_all._gpu_lines("no GPU here: torch sees no CUDA device\n")
    assert value == "not measured" and against.startswith("no GPU here")


def test_a_missing_bench_is_skipped_and_a_failing_one_named(tmp_path, monkeypatch):
    run_all = _run_all()
    args = type("Args", (), {"slow": False, "calibration": None, "text": None,
                             "timeout": 60})()
    missing = run_all.Bench("x", False, lambda a: ["nope.py"], lambda out: [],
                            needs="no_such_bench.py")
    assert run_all.run_bench(missing, args)[1] == "bench/no_such_bench.py is not in this tree"
    (tmp_path / "broken.py").write_text("import sys\nsys.exit('it broke')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    broken = run_all.Bench("b", False, lambda a: ["broken.py"], lambda out: [])
    lines, problem, _ = run_all.run_bench(broken, args)
    assert lines == [] and problem == "exit 1: it broke"


def test_the_workers_bench_gives_its_ratio():
    run_all = _run_all()
    out = ("40 points (magnitude,wanda,sparsegpt at 0.5 and dense, 40 items per level): "
           "1 process x 2 threads 200.0 s, 2 processes x 1 thread 150.0 s\n"
           "study with 2 one-thread workers / one 2-thread process: 0.75 (largest relative "
           "score difference 1.0e-07; same points: True)\n")
    [(what, value, against)] = run_all._workers_lines(out)
    assert (what, value) == ("study in 2 one-thread workers / one process", "0.75") and against
