"""Data flows one way: no import cycle between prunelab's parts, lazy imports included; nothing
below the command line imports it, and no part reaches the public façade (`prunelab.api`)
instead of the module that does the work."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _imports() -> dict[str, set[str]]:
    """Module -> the prunelab modules it imports anywhere (inside functions too)."""
    out: dict[str, set[str]] = {}
    for path in (SRC / "prunelab").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = out.setdefault(name, set())
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("prunelab"):
                    found.add(node.module)
                    # `from prunelab import api`, `from prunelab.data import corpora`
                    found.update(f"{node.module}.{a.name}" for a in node.names
                                 if _is_module(f"{node.module}.{a.name}"))
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("prunelab"))
    return out


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _runtime_nodes(tree: ast.AST):
    """Every node, less what sits under `if TYPE_CHECKING:` (never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _part(module: str) -> str:
    """prunelab.study.plan -> study; prunelab.api -> api; prunelab -> the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "prunelab"


def test_no_cycle_between_parts():
    edges: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        for target in targets:
            a, b = _part(module), _part(target)
            if a != b and "prunelab" not in (a, b):  # the package root only re-exports
                edges.setdefault(a, set()).add(b)
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_no_cycle_between_modules():
    edges = {m: {t for t in targets if t != m and t != "prunelab"}
             for m, targets in _imports().items()}
    # A package's __init__ may import its own modules (e.g. so that the methods register).
    for module in list(edges):
        edges[module] = {t for t in edges[module] if not t.startswith(module + ".")}
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def _is_cli(module: str) -> bool:
    """The command line: the `prunelab.cli` package and every older `cli*` module."""
    last = module.split(".")[-1]
    return (module == "prunelab.cli" or module.startswith("prunelab.cli.")
            or last == "cli" or last.startswith("cli_"))


def test_nothing_below_the_command_line_imports_it():
    offenders = sorted(f"{m} -> {t}" for m, targets in _imports().items() if not _is_cli(m)
                       for t in targets if _is_cli(t))
    assert not offenders, offenders


# Inside prunelab only the command line (a user of the public API like any other) and the
# package's own lazy `prunelab.X` names go through the façade; every other part imports the
# module that does the work.
def _may_use_the_facade(module: str) -> bool:
    return module == "prunelab" or _is_cli(module)


def test_no_part_of_prunelab_imports_the_facade():
    offenders = sorted(m for m, targets in _imports().items()
                       if "prunelab.api" in targets and not _may_use_the_facade(m))
    assert not offenders, f"import the module that does the work, not prunelab.api: {offenders}"
