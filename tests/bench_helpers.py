"""The scripts of `bench/` loaded as modules, for the tests that use them."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str) -> ModuleType:
    """bench/NAME.py as a module (registered under NAME: dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compare_runs(a: Path, b: Path) -> tuple[int, list[str]]:
    """bench/compare_runs.py's comparison of two run directories: (values compared,
    differences)."""
    return bench_module("compare_runs").compare(a, b)
