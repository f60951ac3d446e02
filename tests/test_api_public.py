"""The public names: `prunelab.X` is `prunelab.api.X`, the same object whatever was imported
before, never a subpackage's name; the façade holds no logic; `import prunelab` loads no torch."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import prunelab
from prunelab import api

API_FILE = Path(api.__file__)


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_prunelab_loads_neither_torch_nor_transformers():
    code = ("import sys, prunelab; "
            "print([m for m in ('torch', 'transformers', 'prunelab.api') if m in sys.modules])")
    assert _fresh(code) == "[]"


def test_every_public_name_is_the_facades():
    assert set(prunelab.__all__) <= set(api.__all__)
    for name in prunelab.__all__:
        assert getattr(prunelab, name) is getattr(api, name), name


def test_no_public_name_is_a_subpackage_or_module():
    package = Path(prunelab.__file__).parent
    modules = {p.stem for p in package.glob("*.py")}
    modules |= {p.parent.name for p in package.glob("*/__init__.py")}
    assert not set(prunelab.__all__) & modules


def test_public_names_are_the_same_before_and_after_every_module_is_imported():
    # In a fresh process: `prunelab.evaluate` used to be the function until something imported
    # `prunelab.evaluate.runner`, and the package from then on.
    code = """
import importlib, json, pkgutil, prunelab
names = prunelab.__all__ + ["evaluate", "study", "data"]
def ids():
    return {n: id(getattr(prunelab, n)) for n in names}
before = ids()
for info in pkgutil.walk_packages(prunelab.__path__, "prunelab."):
    importlib.import_module(info.name)
after = ids()
print(json.dumps({"changed": sorted(n for n in names if before[n] != after[n]),
                  "evaluate": type(prunelab.evaluate).__name__}))
"""
    result = json.loads(_fresh(code))
    assert result == {"changed": [], "evaluate": "module"}


def test_evaluate_tasks_is_the_task_runner():
    from prunelab.evaluate.runner import evaluate

    assert prunelab.evaluate_tasks is evaluate


def test_the_facade_only_gathers_names():
    tree = ast.parse(API_FILE.read_text(encoding="utf-8"))
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds  # docstring, imports, __all__
    for name in api.__all__:
        assert getattr(getattr(api, name), "__module__", None) != "prunelab.api", name
