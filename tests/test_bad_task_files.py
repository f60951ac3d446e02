"""Bad local task files: refused in one line when the task is selected, before any model
loads; and, generated at random, never a traceback and never accepted when unusable."""

import json
import random
import string
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_user_error, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunelab.errors import PrunelabError
from prunelab.tasks.base import GENERATE_METRICS
from prunelab.tasks.local import MAX_FIELD_CHARS, load_task_file

ROWS = [{"question": f"{n} + 1 = ?", "options": [str(n + 1), str(n + 2)], "answer": 0}
        for n in range(4)]
SPEC = {"name": "sums", "kind": "mc", "data": "sums.jsonl",
        "fields": {"input": "question", "choices": "options"}}


@pytest.fixture
def model_never_loaded(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("prunelab.zoo.models.load_model", refuse)
    return calls


def write_task(directory: Path, spec: dict | bytes = SPEC, rows: list | bytes = ROWS,
               spec_name: str = "sums.yaml", data_name: str = "sums.jsonl") -> Path:
    data = rows if isinstance(rows, bytes) else "".join(
        json.dumps(row) + "\n" for row in rows).encode()
    (directory / data_name).write_bytes(data)
    path = directory / spec_name
    path.write_bytes(spec if isinstance(spec, bytes) else yaml.safe_dump(spec).encode())
    return path


def _with(**changes):
    return {**SPEC, **changes}


def _rows_with(number, **changes):
    rows = [dict(row) for row in ROWS]
    rows[number].update(changes)
    return rows


LATIN1 = "".join(json.dumps(r) + "\n" for r in ROWS).replace("1 = ?", "1 = ¿").encode("latin-1")

# case: (spec, rows, fragment of the one line)
CASES = {
    "data not UTF-8": (SPEC, LATIN1, "sums.jsonl is not UTF-8 text: byte 0xbf on line 1"),
    "spec not UTF-8": (yaml.safe_dump(SPEC).encode() + b"description: caf\xe9\n", ROWS,
                       "sums.yaml is not UTF-8 text: byte 0xe9 on line 7"),
    "shots negative": (_with(shots=-3), ROWS, "'shots' is -3; it must be 0 or more"),
    "shots a fraction": (_with(shots=2.5), ROWS, "'shots' must be a whole number, got 2.5"),
    "shots a word": (_with(shots="two"), ROWS, "'shots' must be a whole number"),
    "shots beyond the rows": (_with(shots=4), ROWS, "shots 4 needs 4 other items per item to "
                                                    "draw demonstrations from, but item '0' has 3"),
    "shots among one question": (_with(shots=1), [dict(r, question="same?") for r in ROWS],
                                 "has 0 (lower shots to 0 or fewer"),
    "shots on a rolling task": (_with(kind="rolling", shots=1), [{"text": "abc"}],
                                "shots 1 for a rolling task"),
    "template names a missing field": (
        _with(template={"input_format": "Q: {question}\nA:"}), ROWS,
        "template input_format names {question}, but only {input} and {context} are filled in "
        "(use {input} and {context}; to fill {input} from a row's 'question', write fields: "
        "{input: question})"),
    "template positional field": (_with(template={"input_format": "{}"}), ROWS, "names {}"),
    "template unbalanced brace": (_with(template={"input_format": "Q: {input"}), ROWS,
                                  "is not a format string"),
    "template attribute": (_with(template={"input_format": "{input.upper}"}), ROWS,
                           "names {input.upper}"),
    "template format spec": (_with(template={"input_format": "{input:d}"}), ROWS,
                             "does not format"),
    "template conversion": (_with(template={"input_format": "{input!x}"}), ROWS,
                            "has a format it cannot take"),
    "template not a string": (_with(template={"prefix": 3}), ROWS,
                              "template prefix must be a string"),
    "answer never shown": (_with(template={"answer_format": " yes"}), ROWS,
                           "never shows the answer"),
    "item never shown": (_with(template={"input_format": "Q:"}), ROWS, "never shows the item"),
    "a 10 MB field": (SPEC, _rows_with(2, question="x" * 10_000_000),
                      "row 3: 'question' holds 10,000,000 characters, more than any prompt "
                      "can take"),
    "context not a string": (SPEC, _rows_with(0, context=["a"]), "'context' must be a string"),
    "max_new_tokens zero": (_with(kind="generate", max_new_tokens=0),
                            [{"question": "q", "targets": "a"}], "'max_new_tokens' is 0"),
    "level_rank a word": (_with(level_rank="hard"), ROWS, "'level_rank' must be a whole number"),
    "metric of another kind": (_with(metric="f1"), ROWS, "metric 'f1' is not one of ['accuracy']"),
    "fields a list": (_with(fields=["question"]), ROWS, "'fields' must be a mapping"),
    "fields unknown key": (_with(fields={"prompt": "question"}), ROWS,
                           "unknown key(s) ['prompt'] in fields"),
    "fields value a number": (_with(fields={"input": 3}), ROWS,
                              "fields: input must name a key of the data rows"),
    "level unknown key": (_with(levels=[{"level": "a", "dataa": "x.jsonl"}]), ROWS,
                          "unknown key(s) ['dataa'] in levels[0]"),
    "non-string keys": (b"name: x\nkind: mc\ndata: sums.jsonl\n1: 2\nnull: 3\n", ROWS,
                        "unknown key(s) ['1', 'None'] in the spec"),
    "name a list": (_with(name=["a", "b"]), ROWS, "'name' must be a single value, got a list"),
    "target_scores not numbers": (_with(fields={}), [{"input": "q", "target_scores": {
        "a": "high", "b": 0}}], "target_scores must map each choice to a number"),
    "target_scores empty choice": (_with(fields={}), [{"input": "q", "target_scores": {
        "": 1, "b": 0}}], "every choice must be a non-empty string"),
    "generate targets a mapping": (_with(kind="generate"), [{"question": "q", "targets": {
        "a": 1}}], "no target answer"),
    "a line not an object": (SPEC, b'[1, 2]\n', "sums.jsonl:1 is not a JSON object"),
    "data under an unknown user": (_with(data="~no-such-user-here/rows.jsonl"), ROWS,
                                   "~no-such-user-here/rows.jsonl does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_task_file_is_refused_before_any_model_loads(case, tmp_path, tiny_dir,
                                                         model_never_loaded):
    spec, rows, fragment = CASES[case]
    path = write_task(tmp_path, spec, rows if isinstance(rows, bytes) else list(rows))
    started = time.perf_counter()
    result = run("eval", str(tiny_dir), "--tasks", str(path))
    assert_user_error(result, fragment)
    assert time.perf_counter() - started < 3  # the 10 MB field included: no tokenising
    assert not model_never_loaded


def test_unreadable_paths_are_one_line(tmp_path, tiny_dir, model_never_loaded):
    (tmp_path / "dir.yaml").mkdir()
    assert_user_error(run("eval", str(tiny_dir), "--tasks", str(tmp_path / "dir.yaml")),
                      "cannot read task spec file")
    (tmp_path / "data.jsonl").mkdir()
    path = write_task(tmp_path, _with(data="data.jsonl"), ROWS, data_name="rows.jsonl")
    assert_user_error(run("eval", str(tiny_dir), "--tasks", str(path)),
                      "cannot read task data file")


def test_a_valid_file_still_gives_the_same_task(tmp_path):
    (task,) = load_task_file(write_task(tmp_path, _with(shots=3, template={
        "input_format": "Q: {input}\nA:", "answer_format": " {answer}"})))
    assert task.shots == 3 and [i.gold for i in task.items] == [(0,)] * 4
    assert task.prompt(task.items[0], seed=0).count("Q: ") == 4


# --- generated at random ----------------------------------------------------------------------
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 10),
                   st.floats(allow_nan=True, allow_infinity=True), TEXT)
ANY = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(TEXT, inner, max_size=3)),
                   max_leaves=6)
FORMATS = st.one_of(st.sampled_from([
    "Q: {input}\nA:", " {answer}", "{answer}", "{context}\n{input}", "{question}", "{}", "{0}",
    "{input", "}", "{input:d}", "{input!r}", "{input:>4}", "{{x}} {input}", "{input.upper}",
    "{input[0]}", "{answer!s}", "", "{input:{w}}"]), TEXT, SCALAR)
ROW_KEYS = ["id", "input", "question", "choices", "options", "answer", "targets", "target",
            "text", "context"]
FIELD_NAMES = st.sampled_from(["id", "input", "choices", "answer", "targets", "text", "context",
                               "bogus"])


def _maybe(strategy):
    return st.one_of(strategy, ANY)


LEVEL = st.dictionaries(st.sampled_from(["level", "data", "shots", "kind", "template", "name",
                                         "levels", "bogus"]),
                        _maybe(st.sampled_from(["easy", "hard", "data.jsonl", 1, -1])),
                        max_size=3)
SPECS = st.fixed_dictionaries(
    {"name": _maybe(st.sampled_from(["t", "task"])),
     "kind": _maybe(st.sampled_from(["mc", "generate", "rolling", "finetune"])),
     "data": _maybe(st.sampled_from(["data.jsonl", "data.json", "missing.jsonl"]))},
    optional={
        "fields": _maybe(st.dictionaries(FIELD_NAMES, _maybe(st.sampled_from(ROW_KEYS)),
                                         max_size=3)),
        "shots": _maybe(st.integers(-3, 6)),
        "template": _maybe(st.dictionaries(
            st.sampled_from(["input_format", "answer_format", "prefix", "separator", "x"]),
            FORMATS, max_size=3)),
        "metric": _maybe(st.sampled_from(["accuracy", "bits_per_byte", *GENERATE_METRICS])),
        "max_new_tokens": _maybe(st.integers(-2, 40)),
        "level_rank": _maybe(st.integers(-2, 5)),
        "mc_score": _maybe(st.sampled_from(["mean", "sum", "max"])),
        "paired_levels": _maybe(st.booleans()),
        "levels": _maybe(st.lists(LEVEL, max_size=3)),
        "family": ANY, "axis": ANY, "level": ANY, "description": ANY, "license": ANY,
        "bogus": ANY,
    })
ROW = st.fixed_dictionaries({}, optional={
    "id": _maybe(st.integers(0, 4)),
    "input": _maybe(TEXT), "question": _maybe(TEXT), "text": _maybe(TEXT),
    "context": _maybe(TEXT),
    "choices": _maybe(st.lists(TEXT, max_size=4)), "options": _maybe(st.lists(TEXT, max_size=4)),
    "answer": _maybe(st.one_of(st.integers(-1, 4), TEXT, st.lists(st.integers(-1, 4)))),
    "targets": _maybe(st.lists(TEXT, max_size=3)), "target": _maybe(TEXT),
    "target_scores": _maybe(st.dictionaries(TEXT, SCALAR, max_size=4)),
})
DATA = st.one_of(
    st.lists(ROW, max_size=6).map(lambda rows: ("jsonl", rows)),
    st.lists(ROW, max_size=6).map(lambda rows: ("json", rows)),
    st.binary(max_size=40).map(lambda raw: ("bytes", raw)),
)
WORD = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Z", "C")), min_size=1,
               max_size=6)


@st.composite
def plausible_tasks(draw):
    """A task file that is valid as drawn, then, most of the time, one or two of its values
    replaced by anything at all or dropped: near misses, which random structures seldom are."""
    kind = draw(st.sampled_from(["mc", "generate", "rolling"]))
    n = draw(st.integers(1, 6))
    rows = []
    for _ in range(n):
        if kind == "mc":
            choices = draw(st.lists(WORD, min_size=2, max_size=4, unique=True))
            answer = draw(st.one_of(st.integers(0, len(choices) - 1), st.sampled_from(choices)))
            row = {"input": draw(TEXT), "choices": choices, "answer": answer}
        elif kind == "generate":
            row = {"input": draw(TEXT), "targets": draw(st.lists(WORD, min_size=1, max_size=2))}
        else:
            row = {"text": draw(WORD)}
        if kind != "rolling" and draw(st.booleans()):
            row["context"] = draw(TEXT)
        rows.append(row)
    spec = {"name": draw(st.sampled_from(["t", "task-1"])), "kind": kind, "data": "data.jsonl"}
    if kind != "rolling":
        spec["shots"] = draw(st.integers(0, max(0, n - 1)))
        spec["template"] = draw(st.fixed_dictionaries({}, optional={
            "input_format": st.sampled_from(["Q: {input}\nA:", "{context}\n{input}", "{input!r}",
                                             "{input:>4}", "{{x}} {input}"]),
            "answer_format": st.sampled_from([" {answer}", "{answer}", " {answer!s}."]),
            "prefix": TEXT, "separator": TEXT}))
    if kind == "generate":
        spec["metric"] = draw(st.sampled_from(GENERATE_METRICS))
        spec["max_new_tokens"] = draw(st.integers(1, 40))
    for key, value in draw(st.dictionaries(st.sampled_from(
            ["level_rank", "mc_score", "paired_levels", "axis", "family", "license"]),
            st.just(None), max_size=3)).items():
        spec[key] = draw({"level_rank": st.integers(-2, 5), "mc_score": st.sampled_from(
            ["mean", "sum"]), "paired_levels": st.booleans()}.get(key, WORD))
    for _ in range(draw(st.integers(0, 2))):  # the near misses
        target = draw(st.sampled_from(["spec", "row"]))
        mapping = spec if target == "spec" or not rows else rows[draw(
            st.integers(0, len(rows) - 1))]
        key = draw(st.sampled_from(sorted(mapping) + ["shots", "input", "template"]))
        if draw(st.booleans()):
            mapping.pop(key, None)
        else:
            mapping[key] = draw(ANY)
    return spec, ("jsonl", rows)
PROPERTY = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _write(directory: Path, spec, data, spec_format: str) -> Path:
    form, content = data
    if form == "bytes":
        (directory / "data.jsonl").write_bytes(content)
    else:
        text = ("".join(json.dumps(r) + "\n" for r in content) if form == "jsonl"
                else json.dumps(content))
        (directory / f"data.{form}").write_text(text)
    path = directory / f"spec.{spec_format}"
    if spec_format == "json":
        path.write_text(json.dumps(spec))
    else:
        path.write_text(yaml.safe_dump(spec))
    return path


def _usable(task) -> None:
    """What the evaluation engine relies on, for every item of an accepted task."""
    from prunelab.evaluate.metrics import get_metric

    assert task.items and task.kind in ("mc", "generate", "rolling")
    assert isinstance(task.shots, int) and task.shots >= 0
    assert isinstance(task.max_new_tokens, int) and task.max_new_tokens >= 1
    assert isinstance(task.level_rank, int)
    get_metric(task.metric)
    for item in task.items:
        for value in (item.input, item.context, *item.choices, *item.targets):
            assert isinstance(value, str) and len(value) <= MAX_FIELD_CHARS
        if task.kind == "rolling":
            assert item.text
            continue
        prompt = task.prompt(item, seed=0)  # demonstrations and template, as evaluation does
        assert isinstance(prompt, str)
        if task.kind == "mc":
            assert len(set(item.choices)) == len(item.choices) >= 2 and item.gold
            assert all(0 <= g < len(item.choices) for g in item.gold)
            assert all(task.template.continuation(c) for c in item.choices)
        else:
            assert task.metric in GENERATE_METRICS
            assert item.targets and all(t.strip() for t in item.targets)
            task.template.continuation(item.targets[0])
    assert task.content_digest and (task.chance is None or 0 <= task.chance <= 1)


@PROPERTY
@given(drawn=st.one_of(st.tuples(SPECS, DATA), plausible_tasks()),
       spec_format=st.sampled_from(["json", "yaml"]))
def test_random_task_files_are_refused_in_one_line_or_usable(drawn, spec_format):
    spec, data = drawn
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), spec, data, spec_format)
        try:
            tasks = load_task_file(path)
        except PrunelabError as exc:
            assert "\n" not in str(exc)
            return
        for task in tasks:
            _usable(task)


def _valid_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": f"q{i} {rng.random():.3f}", "options": ["a", "b", "c"],
             "answer": rng.randrange(3)} for i in range(n)]


def _identifier(seed: int) -> str:
    rng = random.Random(seed)
    return "f" + "".join(rng.choice(string.ascii_lowercase) for _ in range(5))


# Each breaks a valid task file in one way that makes it unusable; all must be refused.
MUTATIONS = {
    "shots negative": lambda s, r, k: ({**s, "shots": -1 - k % 5}, r),
    "shots beyond the rows": lambda s, r, k: ({**s, "shots": len(r) + k % 3}, r),
    "shots not whole": lambda s, r, k: ({**s, "shots": 0.5 + k % 3}, r),
    "unknown template field": lambda s, r, k: (
        {**s, "template": {"input_format": "{" + _identifier(k) + "}"}}, r),
    "answer not in answer_format": lambda s, r, k: (
        {**s, "template": {"answer_format": f" answer {k}"}}, r),
    "unknown key": lambda s, r, k: ({**s, _identifier(k): k}, r),
    "kind unknown": lambda s, r, k: ({**s, "kind": _identifier(k)}, r),
    "metric of generation": lambda s, r, k: ({**s, "metric": GENERATE_METRICS[k % 3]}, r),
    "max_new_tokens below one": lambda s, r, k: ({**s, "max_new_tokens": -(k % 3)}, r),
    "row without input": lambda s, r, k: (s, [*r[:-1], {"options": ["a", "b"], "answer": 0}]),
    "answer out of range": lambda s, r, k: (s, [*r[:-1], {**r[-1], "answer": 3 + k % 4}]),
    "duplicate choices": lambda s, r, k: (s, [*r[:-1], {**r[-1], "options": ["a", "a"]}]),
    "context not text": lambda s, r, k: (s, [*r[:-1], {**r[-1], "context": k}]),
    "a field too long": lambda s, r, k: (s, [*r[:-1], {**r[-1], "question": "y" * (
        MAX_FIELD_CHARS + 1 + k)}]),
    "field map not text": lambda s, r, k: ({**s, "fields": {**s["fields"], "input": k}}, r),
}


@PROPERTY
@given(mutation=st.sampled_from(sorted(MUTATIONS)), n=st.integers(2, 6),
       seed=st.integers(0, 10_000), bad_byte=st.booleans(), spec_format=st.sampled_from(
           ["json", "yaml"]))
def test_a_valid_file_broken_in_one_way_is_never_accepted(mutation, n, seed, bad_byte,
                                                          spec_format):
    spec = {"name": "t", "kind": "mc", "data": "data.jsonl",
            "fields": {"input": "question", "choices": "options"}}
    spec, rows = MUTATIONS[mutation](spec, _valid_rows(n, seed), seed)
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), spec, ("jsonl", rows), spec_format)
        if bad_byte:  # and, half the time, a byte that is not UTF-8 where the rows are
            data = Path(folder) / "data.jsonl"
            raw = data.read_bytes()
            cut = random.Random(seed).randrange(len(raw))
            data.write_bytes(raw[:cut] + b"\xff" + raw[cut:])
        with pytest.raises(PrunelabError) as refused:
            load_task_file(path)
        assert "\n" not in str(refused.value)


@PROPERTY
@given(drawn=st.one_of(st.tuples(SPECS, DATA), plausible_tasks()))
def test_random_task_files_through_the_cli_exit_0_or_2_in_one_line(drawn):
    spec, data = drawn
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), spec, data, "yaml")
        result = run("tasks", str(path))
        assert result.returncode in (0, 2), result.stderr
        assert "Traceback" not in result.stderr
        if result.returncode == 2:
            assert len(result.stderr.strip().splitlines()) == 1
