"""The import graph of the `lfp` package, read without importing anything: a module's imports,
the closure of a module (code and the package data files it reads by name), which params keys a
module reads, and stage modules that import each other.

Why its own module: the dvc.yaml checks (lfp_dev.dvc_stages) and the architecture tests both ask
these questions; neither needs DVC. Pure stdlib.
"""

from __future__ import annotations

import ast
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "lfp"
SRC_DIR = Path(__file__).resolve().parent.parent  # .../src
REPO_ROOT = SRC_DIR.parent
_DATA_SKIP_SUFFIXES = frozenset({".py", ".pyc", ".pyo"})


# --------------------------------------------------------------------------------------------
# imports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One package-internal module imported by a file (`module` is absolute, e.g. 'lfp.llm.client').
    `gate`: the method whose body holds the import, in a method-gated module (see GATED_MODULE)."""

    module: str
    lineno: int
    gate: str | None = None


# A task kind is one object whose methods import the kind's code lazily, one facet each (finetune,
# contrastive, measure, ablation, ...). Counting every method's imports for every stage that looks
# the kind up would make fine-tuning depend on the LLM client. So in these modules an import inside
# a method counts only when some module of the closure reads an attribute of that name
# (`kind.finetune(...)`, `kind.probe_form`): a stage depends on the facets it calls, and on no other.
GATED_MODULE = re.compile(r"^lfp\.tasks\.[a-z_]+\.kind$")


def module_file(module: str, src_dir: Path) -> Path | None:
    """`a/b/c/__init__.py` or `a/b/c.py` under src_dir (in that order, as Python's path finder:
    a regular package shadows a module of the same name), or None (not a module, or a namespace
    package)."""
    base = src_dir.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_name(base.name + ".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_module(module: str, src_dir: Path) -> bool:
    if module_file(module, src_dir) is not None:
        return True
    return src_dir.joinpath(*module.split(".")).is_dir()  # namespace package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_relative(current: str, is_package: bool, level: int, name: str | None) -> str | None:
    if level == 0:
        return name
    parts = current.split(".") if is_package else current.split(".")[:-1]
    drop = level - 1
    if drop >= len(parts):
        return None  # beyond the top-level package
    parts = parts[: len(parts) - drop]
    return ".".join(parts + ([name] if name else []))


def _literal_str(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, current: str, is_package: bool, package: str, src_dir: Path, skip_type_checking: bool):
        self.current, self.is_package, self.package = current, is_package, package
        self.src_dir, self.skip_type_checking = src_dir, skip_type_checking
        self.found: list[Import] = []
        self.gated = bool(GATED_MODULE.match(current))
        self.gate: str | None = None

    def _add(self, module: str | None, lineno: int) -> None:
        if module and (module == self.package or module.startswith(self.package + ".")):
            self.found.append(Import(module, lineno, self.gate))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for child in node.body:
            if self.gated and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.gate = child.name
                self.generic_visit(child)
                self.gate = None
            else:
                self.visit(child)
        for deco in node.decorator_list:
            self.visit(deco)

    def visit_If(self, node: ast.If) -> None:
        if self.skip_type_checking and _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve_relative(self.current, self.is_package, node.level, node.module)
        if base is None:
            return
        self._add(base, node.lineno)
        for alias in node.names:
            if alias.name != "*" and _is_module(f"{base}.{alias.name}", self.src_dir):
                self._add(f"{base}.{alias.name}", node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name in ("import_module", "__import__") and node.args:
            target = _literal_str(node.args[0])
            if target is not None:
                level = len(target) - len(target.lstrip("."))
                if level:
                    anchor = _literal_str(node.args[1]) if len(node.args) > 1 else None
                    anchor = anchor or next((_literal_str(k.value) for k in node.keywords if k.arg == "package"), None)
                    target = _resolve_relative(anchor, True, level, target[level:] or None) if anchor else None
                self._add(target, node.lineno)
        self.generic_visit(node)


# `params.finetune`, `p.measure`: a params section, named like a kind's method but not a call of it
_PARAMS_NAMES = frozenset({"params", "p"})


def _called_attributes(tree: ast.Module) -> set[str]:
    """Attribute names a module reads, a params section (`params.<section>`) aside (see GATED_MODULE)."""
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and not (isinstance(n.value, ast.Name) and n.value.id in _PARAMS_NAMES)}


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_name(path: Path, src_dir: Path) -> tuple[str, bool]:
    rel = path.resolve().relative_to(src_dir.resolve()).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def module_imports(path: Path, src_dir: Path, *, package: str | None = None, skip_type_checking: bool = True) -> list[Import]:
    """Package-internal modules that the file imports anywhere (top level, functions, classes).

    `from pkg import a, b` yields `pkg` and, for each of a/b that is a submodule, `pkg.a`/`pkg.b`;
    `from pkg.x import y` yields `pkg.x` and `pkg.x.y` when y is a submodule. Parent packages
    are not added here (see import_chains)."""
    current, is_package = module_name(path, src_dir)
    package = package or current.split(".")[0]
    collector = _ImportCollector(current, is_package, package, src_dir, skip_type_checking)
    collector.visit(_parse(path))
    return collector.found


def _parents(module: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c'] (importing a.b.c runs a/__init__ and a/b/__init__)."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _string_literals(tree: ast.Module) -> set[str]:
    """String constants the code uses (f-string pieces included; docstrings and other bare
    expression-statement strings left out)."""
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in bare}


def _data_files(package_dir: Path) -> list[Path]:
    out = []
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir)
        if not path.is_file() or path.suffix in _DATA_SKIP_SUFFIXES:
            continue
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        out.append(path)
    return out


def _mentions_folder(literals: set[str], folder: str) -> bool:
    return any(s.strip("/") == folder or s.startswith(folder + "/") for s in literals)


def _references(literal: str, rel: str, name: str) -> bool:
    return literal in (rel, name) or literal.endswith("/" + name)


def import_chains(
    module: str, *, src_dir: Path | None = None, repo_root: Path | None = None, skip_type_checking: bool = True
) -> dict[Path, tuple[str, ...]]:
    """Every file running `import module` executes or reads, mapped to a shortest import chain
    (module names from `module` to the module that is the file, or that reads the data file).

    Paths are relative to repo_root (default: src_dir's parent)."""
    src_dir = Path(src_dir) if src_dir is not None else SRC_DIR
    repo_root = Path(repo_root) if repo_root is not None else src_dir.parent
    package = module.split(".")[0]

    def rel(path: Path) -> Path:
        return Path(os.path.relpath(path, repo_root))

    chains: dict[str, tuple[str, ...]] = {}
    queue: deque[str] = deque()
    for name in _parents(module):
        chains[name] = (module,) if name == module else (module, name)  # parents: run first
        queue.append(name)
    files: dict[Path, tuple[str, ...]] = {}
    literals: dict[str, set[str]] = {}
    attributes: set[str] = set()  # attribute names read anywhere in the closure so far
    gated: dict[str, list[tuple[str, Import]]] = {}  # method -> imports waiting for a read of it
    while queue:
        current = queue.popleft()
        path = module_file(current, src_dir)
        if path is None:
            continue
        files.setdefault(rel(path), chains[current])
        tree = _parse(path)
        literals[current] = _string_literals(tree)
        new_attributes = _called_attributes(tree) - attributes
        attributes |= new_attributes
        found = module_imports(path, src_dir, package=package, skip_type_checking=skip_type_checking)
        for imp in found:
            if imp.gate is not None and imp.gate not in attributes:
                gated.setdefault(imp.gate, []).append((current, imp))
        opened = [pair for attr in new_attributes for pair in gated.pop(attr, [])]
        for importer, imp in [(current, i) for i in found if i.gate is None or i.gate in attributes] + opened:
            for name in _parents(imp.module):
                if name not in chains:
                    chains[name] = chains[importer] + (name,)
                    queue.append(name)

    # package data read by name
    package_dir = src_dir / package
    all_literals = set().union(*literals.values()) if literals else set()
    for data in _data_files(package_dir):
        data_rel = data.relative_to(package_dir).as_posix()
        folder = data.parent.relative_to(package_dir).as_posix()
        readers = [m for m, lits in literals.items() if any(_references(s, data_rel, data.name) for s in lits)]
        if not readers and folder != "." and _mentions_folder(all_literals, folder):
            by_stem = [m for m, lits in literals.items() if data.stem in lits]
            # prefer a module that names the folder itself (the loader); else any (a caller)
            readers = [m for m in by_stem if _mentions_folder(literals[m], folder)] or by_stem
        if readers:
            best = min(readers, key=lambda m: (len(chains[m]), m))
            files.setdefault(rel(data), chains[best] + (f"reads {data_rel}",))
    return files


def import_closure(module: str, *, src_dir: Path | None = None, repo_root: Path | None = None) -> set[Path]:
    """Files (relative to repo_root) that `import module` runs or reads by name: the module, every
    package-internal module it imports transitively (function-local imports included), the
    `__init__.py` of each package on the way, and package data files referenced by name."""
    return set(import_chains(module, src_dir=src_dir, repo_root=repo_root))


# --------------------------------------------------------------------------------------------
# params a module reads
# --------------------------------------------------------------------------------------------


def section_keys_read(path: Path, section: str, root: str = "params") -> set[str]:
    """Keys of params section `section` that the file reads: `params.<section>.key`, or `alias.key`
    where the same function bound `alias = params.<section>` (also `a, b = params.<section>, ...`).
    Why: a stage that lists a whole section in dvc.yaml `params` re-runs on any key of it; listing
    the keys it reads needs this list to be checked against the code (tests/test_dag_contracts.py)."""
    tree = _parse(Path(path))

    def is_section(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == section
                and isinstance(node.value, ast.Name) and node.value.id == root)

    keys: set[str] = set()
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    top_level = ast.Module(body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))],
                           type_ignores=[])
    for scope in [*functions, top_level]:  # an alias holds inside its function (closures included)
        aliases: set[str] = set()
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                             else [(target, node.value)])
                    aliases |= {t.id for t, v in pairs if isinstance(t, ast.Name) and is_section(v)}
        for node in ast.walk(scope):
            if isinstance(node, ast.Attribute) and (is_section(node.value) or (isinstance(node.value, ast.Name) and node.value.id in aliases)):
                keys.add(node.attr)
    return keys


# --------------------------------------------------------------------------------------------
# stage modules must not import each other
# --------------------------------------------------------------------------------------------


def stage_cross_imports(stages_dir: Path | None = None, src_dir: Path | None = None) -> dict[str, list[Import]]:
    """Stage module -> the other stage modules it imports anywhere in the file (function-local
    and `if TYPE_CHECKING:` imports included). Only offending modules are returned."""
    src_dir = Path(src_dir) if src_dir is not None else SRC_DIR
    stages_dir = Path(stages_dir) if stages_dir is not None else src_dir / PACKAGE / "stages"
    package_name, _ = module_name(stages_dir / "__init__.py", src_dir)
    out: dict[str, list[Import]] = {}
    for path in sorted(stages_dir.glob("*.py")):
        if path.name == "__init__.py":
            continue
        current, _ = module_name(path, src_dir)
        bad = [
            imp
            for imp in module_imports(path, src_dir, skip_type_checking=False)
            if imp.module.startswith(package_name + ".") and imp.module.split(".")[: len(current.split("."))] != current.split(".")
        ]
        if bad:
            out[current] = bad
    return out




# --------------------------------------------------------------------------------------------
# the module graph: cycles and floors
# --------------------------------------------------------------------------------------------


def module_graph(src_dir: Path | None = None, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (function-local included). An import of a
    parent package is left out: Python runs a package's `__init__` first, so it closes no cycle."""
    src_dir = Path(src_dir) if src_dir is not None else SRC_DIR
    graph: dict[str, set[str]] = {}
    for path in sorted((src_dir / package).rglob("*.py")):
        current, _ = module_name(path, src_dir)
        graph[current] = {imp.module for imp in module_imports(path, src_dir, skip_type_checking=False)
                          if imp.module != current and not current.startswith(imp.module + ".")
                          and module_file(imp.module, src_dir) is not None}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan): each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out
