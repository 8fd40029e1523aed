"""The package's shape, read from its source (nothing is imported): no import circles, short modules and
functions, and every module-level name defined in one module only."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tdlib"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60  # not counting the docstring
IGNORED_NAMES = {"__all__", "__version__", "logger", "log"}
SUBCOMMAND_PROTOCOL = {"add_arguments", "run"}  # every `tdlib.cli.NAME` module defines these two (see tdlib.cli)


def _modules() -> dict[str, ast.Module]:
    """Dotted module name -> parsed source, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return found


MODULES = _modules()


def _imported(module: str, tree: ast.Module) -> set[str]:
    """The package's modules that ``module`` imports anywhere (inside functions and TYPE_CHECKING too)."""
    package = module if (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py").exists() else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from tdlib import runlog`
    return {t for t in targets if t in MODULES and t != module and t != "tdlib"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    graph = {name: _imported(name, tree) for name, tree in MODULES.items()}
    circles = _cycles(graph)
    detail = [" <-> ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c)
              for c in circles]
    assert not circles, "import circles among tdlib modules (lazy imports count):\n" + "\n".join(detail)


def test_no_module_is_too_long():
    lengths = {name: len((PACKAGE.parent / (tree.body and _path(name))).read_text().splitlines())
               for name, tree in MODULES.items()}
    long = {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: " + ", ".join(f"{k} ({v})" for k, v in sorted(long.items()))


def _path(module: str) -> Path:
    parts = module.split(".")
    package = Path(*parts)
    return package / "__init__.py" if (PACKAGE.parent / package).is_dir() else package.with_suffix(".py")


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function from its ``def`` to its end, without its docstring."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_too_long():
    long = []
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{name}:{node.lineno} {node.name} ({_body_lines(node)})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (docstring not counted):\n" + "\n".join(long)


def _defined(tree: ast.Module) -> set[str]:
    """Names a module defines at its top level: functions, classes, assigned constants (imports excluded)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return {n for n in names if n not in IGNORED_NAMES and not (n.startswith("__") and n.endswith("__"))}


def test_no_name_is_defined_in_two_modules():
    where = defaultdict(list)
    for name, tree in MODULES.items():
        for defined in _defined(tree):
            where[defined].append(name)
    twice = {n: mods for n, mods in where.items() if len(mods) > 1
             and not (n in SUBCOMMAND_PROTOCOL and all(m.startswith("tdlib.cli.") for m in mods))}
    assert not twice, "module-level names defined in more than one module:\n" + "\n".join(
        f"{n}: {', '.join(mods)}" for n, mods in sorted(twice.items()))
