"""Task registry, selection, demonstrations, local task files and their validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunelab.errors import PrunelabError
from prunelab.tasks.base import Item, Task, Template, split_whitespace
from prunelab.tasks.local import load_task_file
from prunelab.tasks.registry import get_tasks, list_tasks
from prunelab.tasks.suite import builtin_tasks, restrict_options


def needs_bigbench(test):
    """Reads BIG-bench data: slow where it must be extracted, skipped where it cannot be had."""
    return pytest.mark.integration(pytest.mark.needs_bigbench(test))


def toy_task(n: int = 20, shots: int = 0, **kw) -> Task:
    items = [Item(id=str(i), input=f"question {i}", choices=("yes", "no"), gold=(i % 2,))
             for i in range(n)]
    return Task(name="toy:1", family="toy", axis="none", level=1, level_rank=0, kind="mc",
                loader=lambda: items, shots=shots, **kw)


# --- registry ---------------------------------------------------------------------------
def test_every_builtin_task_declares_its_place_on_an_axis():
    tasks = list_tasks()
    names = [t.name for t in tasks]
    assert len(names) == len(set(names))
    for family in ("arithmetic", "logical_deduction", "tracking_shuffled_objects", "squad_book",
                   "squad_context", "arithmetic_shots", "options", "multiemo", "multiemo_ppl",
                   "wikidata", "synth_arithmetic", "synth_arithmetic_shots", "synth_options",
                   "ui_ppl"):
        levels = [t for t in tasks if t.family == family]
        assert len(levels) >= 2, family
        assert len({t.level_rank for t in levels}) > 1
        for t in levels:
            assert t.name == f"{family}:{t.level}"
            assert t.axis and t.license and t.source and t.kind in ("mc", "generate", "rolling")


def test_selectors_family_level_and_full_name():
    assert [t.name for t in get_tasks(["arithmetic"])] == [f"arithmetic:{d}" for d in range(1, 6)]
    assert [t.name for t in get_tasks("arithmetic:3")] == ["arithmetic:3"]
    assert [t.name for t in get_tasks("arithmetic:3,arithmetic,logical_deduction:7")][:3] == [
        "arithmetic:3", "arithmetic:1", "arithmetic:2"]
    # hardest-last order within a family: level_rank increases
    ranks = [t.level_rank for t in get_tasks("arithmetic_shots")]
    assert ranks == sorted(ranks) and get_tasks("arithmetic_shots")[-1].level == 0


@pytest.mark.parametrize("selector, words", [
    ("arithmetc", "unknown task"), ("arithmetic:9", "no level '9'"),
    ("missing.yaml", "does not exist"), ("", "no task selected")])
def test_bad_selectors_raise_one_line_errors(selector, words):
    with pytest.raises(PrunelabError, match=words) as info:
        get_tasks(selector)
    assert "\n" not in str(info.value) and info.value.fix


# --- selection and demonstrations ---------------------------------------------------------
def test_limit_larger_than_task_is_an_error():
    with pytest.raises(PrunelabError, match="larger than task toy:1"):
        toy_task(5).select(6, seed=0)
    assert len(toy_task(5).select(5, seed=0)) == 5


def test_selection_is_seeded_and_shared_across_levels():
    a, b = toy_task(50), toy_task(50).with_(name="toy:2", level=2)
    assert [i.id for i in a.select(10, 0)] == [i.id for i in b.select(10, 0)]
    assert [i.id for i in a.select(10, 0)] != [i.id for i in a.select(10, 1)]
    # a smaller limit picks a subset of a larger one
    assert {i.id for i in a.select(5, 0)} <= {i.id for i in a.select(10, 0)}


def test_demonstrations_never_include_the_test_item_and_nest_across_shots():
    task8 = toy_task(12, shots=8)
    task2 = task8.with_(shots=2)
    for item in task8.items:
        demos = task8.demos(item, seed=3)
        assert len(demos) == 8 and item.id not in {d.id for d in demos}
        assert len({d.id for d in demos}) == 8
        assert [d.id for d in task2.demos(item, seed=3)] == [d.id for d in demos[:2]]
        prompt = task8.prompt(item, seed=3)
        assert prompt.count(f"question {item.id}\n") == 1  # only as the final query
        assert prompt.endswith(f"Q: question {item.id}\nA:")
    # same input text (several questions on one paragraph) is excluded too
    items = [Item(id=str(i), input="same" if i < 3 else f"q{i}", choices=("a", "b"), gold=(0,))
             for i in range(6)]
    task = Task(name="t:1", family="t", axis="x", level=1, level_rank=0, kind="mc",
                loader=lambda: items, shots=3)
    assert all(d.input != "same" for d in task.demos(items[0], 0))
    with pytest.raises(PrunelabError, match="wants 4 demonstrations"):
        task.with_(shots=4).demos(items[0], 0)


def test_template_moves_trailing_space_to_the_continuation():
    assert split_whitespace("Alice has the ", "pink ball.") == ("Alice has the", " pink ball.")
    t = Template()
    item = Item(id="0", input="What is 1 plus 1?", choices=("2", "3"), gold=(0,))
    assert t.prompt(item, []) + t.continuation("2") == "Q: What is 1 plus 1?\nA: 2"


def test_fewer_options_keep_the_answer_and_nest():
    items = (Item(id="x", input="?", choices=tuple("abcdefg"), gold=(4,)),)
    two, four, full = (restrict_options(items, k)[0] for k in (2, 4, None))
    assert len(two.choices) == 2 and len(four.choices) == 4 and full == items[0]
    for it in (two, four):
        assert it.choices[it.gold[0]] == "e"
    assert set(two.choices) <= set(four.choices)


# --- local task files ----------------------------------------------------------------------
def write_spec(tmp_path: Path, rows: list[dict], **spec) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": "mine", "kind": "mc", "data": "data.jsonl", **spec}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec))
    return path


MC_ROWS = [{"question": "2+2?", "options": ["4", "5"], "answer": "4"},
           {"question": "3+3?", "options": ["5", "6", "7"], "answer": 1}]


def test_local_spec_builds_a_task(tmp_path):
    path = write_spec(tmp_path, MC_ROWS, fields={"input": "question", "choices": "options"})
    (task,) = load_task_file(path)
    assert task.name == "mine" and task.size == 2
    assert [it.gold for it in task.items] == [(0,), (1,)]
    assert task.chance == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert [t.name for t in get_tasks([str(path)])] == ["mine"]


def test_local_spec_with_levels_and_bigbench_rows(tmp_path):
    (tmp_path / "easy.jsonl").write_text(json.dumps(
        {"input": "x", "target_scores": {"a": 1, "b": 0}}) + "\n")
    (tmp_path / "hard.jsonl").write_text(json.dumps(
        {"input": "y", "target_scores": {"a": 0, "b": 0, "c": 1}}) + "\n")
    spec = tmp_path / "fam.yaml"
    spec.write_text("name: fam\nkind: mc\naxis: size\nlevels:\n"
                    "  - {level: easy, data: easy.jsonl}\n  - {level: hard, data: hard.jsonl}\n")
    tasks = load_task_file(spec)
    assert [(t.name, t.level_rank, t.axis) for t in tasks] == [("fam:easy", 0, "size"),
                                                               ("fam:hard", 1, "size")]
    assert tasks[1].items[0].gold == (2,)
    assert not tasks[0].paired_levels
    spec.write_text(spec.read_text() + "paired_levels: true\n")
    paired = load_task_file(spec)
    assert all(t.paired_levels for t in paired)
    # declared paired: part of what the study keys a point by
    assert paired[0].content_digest != tasks[0].content_digest


def test_builtin_families_that_ask_the_same_items_are_paired():
    paired = {t.family for t in builtin_tasks() if t.paired_levels}
    assert paired == {"arithmetic_shots", "options", "multiemo", "multiemo_ppl", "wikidata",
                      "squad_book", "squad_context", "synth_arithmetic_shots", "synth_options",
                      "ui_ppl"}
    from prunelab.tasks.classification import finetune_tasks

    # the encoder track's adequacy levels test the same held-out split
    assert all(t.paired_levels and t.kind == "finetune" for t in finetune_tasks())


@pytest.mark.parametrize("rows, spec, words", [
    ([{"input": "q", "choices": [], "answer": 0}], {}, "empty or missing choices"),
    ([{"input": "q", "choices": ["a", "b"], "answer": "c"}], {}, "no correct answer"),
    ([{"input": "q", "choices": ["a", "b"]}], {}, "no correct answer"),
    ([{"choices": ["a", "b"], "answer": 0}], {}, "missing 'input'"),
    ([{"input": "q"}], {"kind": "generate"}, "no target answer"),
    ([{"input": "q", "choices": ["a", "a"], "answer": 0}], {}, "duplicate choices"),
    ([], {}, "has no rows"),
    ([{"input": "q", "targets": "x"}], {"kind": "nonsense"}, "kind 'nonsense'"),
    ([{"input": "q", "targets": "x"}], {"kind": "generate", "metric": "bleu"}, "metric 'bleu'"),
    ([{"input": "q", "choices": ["a", "b"], "answer": 0}], {"colour": "red"}, "unknown key"),
    ([{"input": "q", "choices": ["a", "b"], "answer": 0}], {"paired_levels": "yes"},
     "'paired_levels' must be true or false"),
])
def test_malformed_task_files_raise(tmp_path, rows, spec, words):
    path = write_spec(tmp_path, rows, **spec)
    with pytest.raises(PrunelabError, match=words):
        load_task_file(path)


def test_spec_missing_required_field_and_bad_json(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"name": "x", "data": "d.jsonl"}))
    with pytest.raises(PrunelabError, match="no 'kind'"):
        load_task_file(path)
    path.write_text("{not json")
    with pytest.raises(PrunelabError, match="not a valid task spec"):
        load_task_file(path)
    (tmp_path / "d.jsonl").write_text('{"input": "q"\n')
    path.write_text(json.dumps({"name": "x", "kind": "generate", "data": "d.jsonl"}))
    with pytest.raises(PrunelabError, match="d.jsonl:1 is not valid JSON"):
        load_task_file(path)


# --- the real data (skipped where BIG-bench is not in the cache) ------------------------------
@needs_bigbench
def test_arithmetic_levels_are_digits_of_three_operations():
    task = get_tasks("arithmetic:3")[0]
    assert task.size == 3000 and task.kind == "mc"
    ops = {it.id.split("-")[0] for it in task.items}
    assert ops == {"add", "sub", "mul"}
    item = next(it for it in task.items if it.id.startswith("add"))
    a, b = (int(x) for x in item.input.replace("What is ", "").rstrip("?").split(" plus "))
    assert item.choices[item.gold[0]] == str(a + b) and len(item.choices) in (6, 7)
    assert task.chance == pytest.approx(1 / 7, abs=1e-3)  # a few items lost a duplicate distractor


@needs_bigbench
def test_object_counts_and_same_items_across_levels():
    for family in ("logical_deduction", "tracking_shuffled_objects"):
        for task in get_tasks(family):
            assert {len(it.choices) for it in task.items} == {task.level}
    en, de = get_tasks("multiemo:en")[0], get_tasks("multiemo:de")[0]
    assert [i.id for i in en.select(20, 0)] == [i.id for i in de.select(20, 0)]
    assert [i.gold for i in en.select(20, 0)] == [i.gold for i in de.select(20, 0)]


@needs_bigbench
def test_wikidata_mc_and_generation_share_facts_and_squad_levels_nest():
    mc, gen = get_tasks("wikidata")
    assert [i.id for i in mc.select(30, 0)] == [i.id for i in gen.select(30, 0)]
    for item in mc.items[:200]:
        assert len(item.choices) == 4 and item.choices[item.gold[0]] in item.targets
    closed, = get_tasks("squad_book:closed")
    k1, k4 = get_tasks("squad_context:1") + get_tasks("squad_context:4")
    q = closed.items[0]
    assert q.context == "" and k1.items[0].id == q.id
    gold = get_tasks("squad_context:0")[0].items[0].context
    assert gold in k1.items[0].context and gold in k4.items[0].context
    assert set(k1.items[0].context.split("\n\n")) <= set(k4.items[0].context.split("\n\n"))
    assert any(q.targets[0] in gold for q in [q])


def test_task_objects_pass_through_selectors():
    task = toy_task(3)
    assert get_tasks([task, "arithmetic:1"])[0] is task
    assert [t.name for t in get_tasks(task)] == ["toy:1"]
