"""Data that needs no BIG-bench (Python's reference text, generated arithmetic, Django's
translated messages) and how BIG-bench is detected and refused where it is missing."""

import io
import re
import zipfile

import pytest

from cli_helpers import assert_user_error, run
from prunelab.data import bigbench
from prunelab.data.po import parse_po
from prunelab.data.sources import TEXT_SOURCES, check_text_source, load_text
from prunelab.errors import PrunelabError
from prunelab.tasks.registry import get_tasks, list_tasks
from prunelab.tasks.synthetic_arithmetic import (ITEMS_PER_OPERATION, generate_item,
                                                 synthetic_arithmetic_items)
from prunelab.tasks.ui_messages import parallel_messages

# --- BIG-bench: available or refused in one line ------------------------------------------


@pytest.fixture
def no_bigbench(isolated_home, monkeypatch):
    """No local copy, nothing cached, and a registry that does not serve the archive."""
    monkeypatch.delenv(bigbench.ENV_VAR, raising=False)
    monkeypatch.setattr(bigbench, "registry_serves_archive", lambda: False)


def test_missing_bigbench_is_detected_without_network(no_bigbench):
    found = bigbench.availability()
    assert not found.available and "does not serve bigbench==1.0.0" in found.reason
    with pytest.raises(PrunelabError) as err:
        bigbench.task_dir("arithmetic")
    assert "needs BIG-bench data" in err.value.problem and "PRUNELAB_BIGBENCH" in err.value.fix


def test_bigbench_found_in_registry_cache_or_local_copy(no_bigbench, isolated_home, tmp_path,
                                                       monkeypatch):
    monkeypatch.setattr(bigbench, "registry_serves_archive", lambda: True)
    assert bigbench.availability().where == "package registry"
    monkeypatch.setattr(bigbench, "registry_serves_archive", lambda: False)
    (isolated_home / "downloads").mkdir(parents=True, exist_ok=True)
    (isolated_home / "downloads" / "bigbench-1.0.0.tar.gz").write_bytes(b"")
    assert bigbench.availability().where == "downloaded archive"
    # a git checkout of google/BIG-bench: read in place, nothing extracted
    tasks = tmp_path / "BIG-bench" / "bigbench" / "benchmark_tasks"
    (tasks / "arithmetic" / "1_digit_addition").mkdir(parents=True)
    monkeypatch.setenv(bigbench.ENV_VAR, str(tmp_path / "BIG-bench"))
    assert bigbench.availability().where == f"local copy {tasks}"
    assert bigbench.task_dir("arithmetic") == tasks / "arithmetic"
    with pytest.raises(PrunelabError, match="has no task named 'nope'"):
        bigbench.task_dir("nope")


def test_env_var_naming_no_bigbench_copy_is_refused(no_bigbench, tmp_path, monkeypatch):
    monkeypatch.setenv(bigbench.ENV_VAR, str(tmp_path))
    found = bigbench.availability()
    assert not found.available and "is not a BIG-bench copy" in found.reason
    with pytest.raises(PrunelabError, match="is not a BIG-bench copy"):
        bigbench.task_dir("arithmetic")


def test_cli_refuses_bigbench_tasks_and_sources_in_one_line(no_bigbench):
    assert_user_error(run("eval", "smollm2-135m", "--tasks", "arithmetic:1", "--limit", "5"),
                      "needs BIG-bench data")
    assert_user_error(run("ppl", "smollm2-135m", "--source", "squad-dev"),
                      "needs BIG-bench data")


def test_recipe_needing_bigbench_is_refused_as_one_problem(no_bigbench):
    from prunelab.study.checks import check_recipe
    from prunelab.study.recipe import parse_recipe

    recipe = parse_recipe({"name": "r", "models": ["smollm2-135m"],
                           "tasks": ["arithmetic:1", "multiemo_ppl:en", "synth_arithmetic:1"],
                           "compressions": [{"method": "magnitude", "sparsity": [0.5]}],
                           "calibration": {"source": "squadshifts-nyt"}}, "test")
    (problem,) = check_recipe(recipe)
    assert problem[0] == "recipe"
    assert "arithmetic, multiemo_ppl, squadshifts-nyt need BIG-bench data" in problem[1]


def test_task_listing_marks_bigbench_tasks_without_loading_them(no_bigbench):
    result = run("tasks", "--no-sizes")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^arithmetic:1\*\s", result.stdout, re.M)
    assert re.search(r"^synth_arithmetic:1\s", result.stdout, re.M)
    assert "* needs BIG-bench data (not available here" in result.stdout
    marked = {t.family for t in list_tasks() if t.needs_bigbench}
    assert marked >= {"arithmetic", "options", "multiemo_ppl", "squad_book", "wikidata"}
    assert not marked & {"synth_arithmetic", "synth_options", "synth_arithmetic_shots", "ui_ppl"}


# --- text sources that ship with Python ---------------------------------------------------


def test_python_reference_halves_are_disjoint_and_need_nothing(no_bigbench):
    a, b = load_text("python-ref-a"), load_text("python-ref-b")
    assert len(a) > 100_000 and len(b) > 100_000
    # topics repeat one another's paragraphs: each is kept once, in one half only
    assert not set(a.split("\n\n")) & set(b.split("\n\n"))
    for name in ("python-ref-a", "python-ref-b"):
        check_text_source(name, "calibration")
        assert not TEXT_SOURCES[name].needs_bigbench and TEXT_SOURCES[name].license
    with pytest.raises(PrunelabError, match="needs BIG-bench data"):
        check_text_source("squadshifts-new_wiki", "calibration")


def test_defaults_need_no_bigbench():
    from prunelab import defaults

    for name in (defaults.CALIBRATION_SOURCE, defaults.EVAL_SOURCE):
        assert not TEXT_SOURCES[name].needs_bigbench
    assert defaults.CALIBRATION_SOURCE != defaults.EVAL_SOURCE


# --- generated arithmetic -----------------------------------------------------------------

QUESTION = re.compile(r"^What is (-?\d+) (plus|minus|times) (-?\d+)\?$")
APPLY = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


@pytest.mark.parametrize("digits", [1, 2, 3, 5])
def test_generated_arithmetic_has_bigbench_format_and_correct_gold(digits):
    items = synthetic_arithmetic_items(digits)
    assert len(items) == 3 * ITEMS_PER_OPERATION and len({i.id for i in items}) == len(items)
    for item in items:
        a, word, b = QUESTION.match(item.input).groups()
        low = 0 if digits == 1 else 10 ** (digits - 1)
        assert low <= int(a) < 10 ** digits and low <= int(b) < 10 ** digits
        assert len(item.choices) == 7 == len(set(item.choices))
        assert {"banana", "house"} <= set(item.choices)
        (gold,) = item.gold
        assert item.choices[gold] == str(APPLY[word](int(a), int(b)))


def test_generated_arithmetic_is_deterministic():
    first = generate_item("subtraction", 3, 41)
    synthetic_arithmetic_items.cache_clear()
    assert synthetic_arithmetic_items(3)[ITEMS_PER_OPERATION + 41] == first
    assert first.id == "sub-41"
    assert generate_item("subtraction", 3, 42) != first


def test_generated_families_keep_their_own_names_and_nest_options():
    options = {t.level: t for t in get_tasks("synth_options")}
    two, four, every = options[2].items, options[4].items, options["all"].items
    for a, b, c in zip(two[:50], four[:50], every[:50]):
        assert a.answer == b.answer == c.answer
        assert set(a.choices) < set(b.choices) < set(c.choices)
    shots = get_tasks("synth_arithmetic_shots")
    assert [t.shots for t in shots] == [8, 4, 2, 1, 0]
    assert all("generated by prunelab" in t.source for t in shots + list(options.values()))
    # never the BIG-bench task's content under a BIG-bench name
    assert get_tasks("synth_arithmetic:1")[0].content_digest != \
        get_tasks("synth_options:all")[0].content_digest


# --- gettext catalogues -------------------------------------------------------------------

PO = r'''# header comment
msgid ""
msgstr ""
"Language: de\n"

#: somewhere.py:1
msgid "Enter a valid value."
msgstr "Bitte einen gültigen Wert eingeben."

msgid ""
"A long message that "
"spans lines with a \"quote\"."
msgstr ""
"Eine lange Nachricht, die "
"über Zeilen geht, mit \"Zitat\"."

#, fuzzy
msgid "Not reviewed yet at all."
msgstr "Noch nicht geprüft."

msgid "One item was deleted here."
msgid_plural "%(count)s items were deleted here."
msgstr[0] "Ein Eintrag."
msgstr[1] "%(count)s Einträge."

msgid "Not translated in this language."
msgstr ""

msgctxt "month name"
msgid "May"
msgstr "Mai"

#~ msgid "Obsolete message here."
#~ msgstr "Veraltet."
'''


def test_po_reader_keeps_translated_singular_messages():
    messages = parse_po(PO, "de.po")
    assert [(m.msgctxt, m.msgid, m.msgstr) for m in messages] == [
        ("", "Enter a valid value.", "Bitte einen gültigen Wert eingeben."),
        ("", 'A long message that spans lines with a "quote".',
         'Eine lange Nachricht, die über Zeilen geht, mit "Zitat".'),
        ("month name", "May", "Mai"),
    ]


@pytest.mark.parametrize("text, words", [
    ('msgid "x"\nmsgstr x\n', "expected a quoted string"),
    ('"dangling"\n', "continues no msgid"),
    ('msgid "x"\nmsgfoo "y"\n', "unknown keyword"),
])
def test_po_reader_refuses_malformed_lines(text, words):
    with pytest.raises(PrunelabError, match=words):
        parse_po(text, "bad.po")


def _wheel(catalogues: dict[str, str]) -> zipfile.ZipFile:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for lang, text in catalogues.items():
            archive.writestr(f"django/conf/locale/{lang}/LC_MESSAGES/django.po", text)
    return zipfile.ZipFile(buffer)


def test_parallel_messages_are_those_translated_in_every_language():
    pl = PO.replace("Bitte einen gültigen Wert eingeben.", "Wprowadź poprawną wartość.") \
        .replace('msgid ""\n"A long message', 'msgid ""\n"A longer message')
    messages = parallel_messages(_wheel({"de": PO, "pl": pl}), ("en", "de", "pl"), min_words=3)
    assert list(messages.values()) == [{"en": "Enter a valid value.",
                                        "de": "Bitte einen gültigen Wert eingeben.",
                                        "pl": "Wprowadź poprawną wartość."}]
    same = parallel_messages(_wheel({"de": PO, "pl": pl}), ("en", "de", "pl"), min_words=3)
    assert list(same) == list(messages)  # ids are stable


def test_ui_family_pairs_languages_by_message():
    tasks = get_tasks("ui_ppl")
    assert tasks[0].level == "en" and tasks[0].level_rank == 0
    assert {t.level_rank for t in tasks[1:]} == {1}
    assert all(t.paired_levels and t.kind == "rolling" and "BSD-3" in t.license for t in tasks)
