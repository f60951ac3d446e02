"""The documentation keeps its promises: its examples run, its reference pages cover the
code, the README stays a front door, and every measurement sits on a dated findings page.

A Python block preceded by the line `<!-- test: runs -->` is run here, the blocks of one page
in order in one namespace (like a notebook), in an empty working directory, with the default
model's name replaced by a tiny random model of the same architecture family.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARK = "<!-- test: runs -->"
DEFAULT_MODEL = '"smollm2-135m"'
RUNNABLE_PAGES = ["README.md", "docs/getting-started.md", "docs/guides/pruning.md",
                  "docs/extending/method.md",
                  "docs/extending/statistic.md", "docs/extending/stage.md",
                  "docs/extending/metric.md", "docs/extending/task.md",
                  "docs/extending/measure.md", "docs/extending/report-section.md"]
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def marked_blocks(path: Path) -> list[str]:
    """The code of every Python block preceded by the marker line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        assert lines[i + 1].strip() == "```python", f"{path}:{i + 2}: the marker must precede ```python"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        blocks.append("\n".join(lines[i + 2:end]))
    return blocks


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama whose context holds the default 512-token windows."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunelab.testing import TINY_CONFIGS, tiny_tokenizer

    spec = dict(TINY_CONFIGS["llama"], max_position_embeddings=1024)
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, vocab_size=260, bos_token_id=1, eos_token_id=2,
                                  pad_token_id=0, **spec)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _registries() -> list[dict]:
    """Every registry an extending example adds to; restored after each page, so that what a
    page registers never leaks into another test's study or report."""
    from prunelab.evaluate.metrics import METRICS
    from prunelab.methods.registry import METHODS
    from prunelab.methods.statistics import STATISTICS
    from prunelab.report.sections import SECTIONS
    from prunelab.study.axis import AXES
    from prunelab.study.measures import MEASURES
    from prunelab.study.stages import STAGE_KINDS
    from prunelab.tasks.registry import _EXTRA

    return [METRICS, METHODS, STATISTICS, SECTIONS, AXES, MEASURES, STAGE_KINDS, _EXTRA]


@pytest.fixture
def restored_registries():
    saved = [(registry, dict(registry)) for registry in _registries()]
    yield
    for registry, content in saved:
        registry.clear()
        registry.update(content)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_the_marked_examples_run(page, tiny_model_dir, tmp_path, monkeypatch,
                                 restored_registries):
    blocks = marked_blocks(ROOT / page)
    assert blocks, f"{page} has no block marked {MARK!r}"
    monkeypatch.chdir(tmp_path)
    # a real module, so that dataclasses and pydantic can resolve the examples' annotations
    module = types.ModuleType(f"docs_example_{Path(page).stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, code in enumerate(blocks, 1):
        code = code.replace(DEFAULT_MODEL, repr(str(tiny_model_dir)))
        exec(compile(code, f"{page} (example {number})", "exec"), module.__dict__)


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert not DATE.search(text), "dated measurements belong on a findings page"
    shown = re.sub(r"<!--.*?-->", "", text, flags=re.S)  # a TODO note's link is not shown
    for target in re.findall(r"\]\((docs/[^)#]+)", shown):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def _nav_files(nav) -> list[str]:
    files = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        files += _nav_files(value) if isinstance(value, list) else [value]
    return files


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    from gen_reference import PAGES

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!", ""))
    nav = _nav_files(config["nav"])
    written = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert set(nav) == written | set(PAGES)
    assert not written & set(PAGES), "a generated page must not also be written by hand"


def test_user_pages_hold_no_dated_measurements():
    user_pages = [DOCS / "index.md", DOCS / "getting-started.md",
                  *(DOCS / "guides").glob("*.md"), *(DOCS / "extending").glob("*.md")]
    dated = [str(p.relative_to(DOCS)) for p in user_pages if DATE.search(p.read_text("utf-8"))]
    assert not dated, f"move the dated figures of {dated} to a findings page"


def test_every_findings_page_says_when_where_and_how():
    pages = [p for p in (DOCS / "findings").glob("*.md") if p.name != "index.md"]
    assert pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert re.search(r'!!! info "Measured 20\d\d-\d\d-\d\d on .+"', text), page.name
        assert "Reproduce with:" in text, page.name


# -- the reference pages are generated from the code: they cover all of it

sys.path.insert(0, str(DOCS))


def test_the_cli_reference_lists_every_command_and_option():
    import gen_reference

    page = gen_reference.cli_page()
    for path, command, ctx in gen_reference.cli_commands()[1:]:
        assert f"`{path}`" in page
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in page, f"{path} {opt}"


def test_the_methods_reference_lists_every_method_and_option():
    import gen_reference
    from prunelab.methods import list_methods, option_help

    page = gen_reference.methods_page()
    for cls in list_methods():
        assert f"## `{cls.name}`" in page
        for name, *_ in option_help(cls):
            assert f"| `{name}` |" in page, f"{cls.name}.{name}"


def test_the_recipe_reference_lists_every_field():
    import gen_reference
    from prunelab.study.recipe import Recipe

    page = gen_reference.recipe_page()
    for name, field in Recipe.model_fields.items():
        assert f"| `{name}` |" in page, name
        nested = field.annotation
        for sub in getattr(nested, "model_fields", {}):
            assert f"| `{sub}` |" in page, f"{name}.{sub}"
    assert "Stage `prune`" in page


def test_the_tasks_reference_lists_every_family():
    import gen_reference
    from prunelab.tasks.registry import families

    page = gen_reference.tasks_page()
    for family in families():
        assert f"`{family}`" in page, family
