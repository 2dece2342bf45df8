"""Static check that every dvc.yaml stage lists the code it runs in its `deps`.

DVC re-runs a stage only when one of its listed deps changes, so a module a stage imports but
does not list gives stale results when it is edited. This module computes, without importing
anything, the files a stage runs:

- the import closure of `lfp.cli` (the `lfp` entry point) and of the stage module
  `lfp.stages.<name>`: every `lfp.*` import, top-level or function-local (`if TYPE_CHECKING:`
  blocks are skipped: they never run), `from lfp import a` where `a` is a submodule,
  relative imports, `importlib.import_module("lfp.x")` / `__import__` with a literal name, and
  the `__init__.py` of every package on the way (importing `lfp.a.b` runs `lfp/a/__init__.py`);
- the package data files those modules read by name (`src/lfp/llm/prompts/*.txt`,
  `src/lfp/data/*.json`, ...): a string literal equal to the file's name or its path inside the
  package ("paper_results.json", "data/paper_results.json"), or equal to its stem
  ("contrastive_grade") when some module of the closure also names the file's folder
  ("prompts", as in `resources.files("lfp").joinpath("prompts", f"{name}.txt")`).

A dep covers a file when it is that file or a folder above it. Strict: every file must be
covered, except `src/lfp/__init__.py` (version string only).

    python -m lfp_dev.dag_deps [--dvc-yaml dvc.yaml] [--repo-root .] [--write]

prints, per stage, the missing files (with the import chain that pulls each in) and a suggested
sorted list of code deps; exit status 1 if any stage misses one.

Pure stdlib + PyYAML: imports neither torch nor any stage.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import os
import re
import shlex
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

PACKAGE = "lfp"
SRC_DIR = Path(__file__).resolve().parent.parent  # .../src
REPO_ROOT = SRC_DIR.parent
ENTRY_MODULE = "lfp.cli"  # what `lfp <stage>` runs before importing lfp.stages.<stage>
DEFAULT_IGNORE = frozenset({"src/lfp/__init__.py"})
# top-level options of `lfp` that take a value (`lfp --params P <stage>`)
_CLI_VALUE_OPTIONS = frozenset({"--params"})
_DATA_SKIP_SUFFIXES = frozenset({".py", ".pyc", ".pyo"})

__all__ = [
    "Import",
    "import_closure",
    "import_chains",
    "module_imports",
    "module_file",
    "stage_modules",
    "stage_deps",
    "missing_deps",
    "missing_dep_messages",
    "stage_cross_imports",
    "suggested_code_deps",
    "main",
]


# --------------------------------------------------------------------------------------------
# imports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One package-internal module imported by a file (`module` is absolute, e.g. 'lfp.llm.client')."""

    module: str
    lineno: int


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

    def _add(self, module: str | None, lineno: int) -> None:
        if module and (module == self.package or module.startswith(self.package + ".")):
            self.found.append(Import(module, lineno))

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


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _module_name(path: Path, src_dir: Path) -> tuple[str, bool]:
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
    current, is_package = _module_name(path, src_dir)
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
    while queue:
        current = queue.popleft()
        path = module_file(current, src_dir)
        if path is None:
            continue
        files.setdefault(rel(path), chains[current])
        tree = _parse(path)
        literals[current] = _string_literals(tree)
        for imp in module_imports(path, src_dir, package=package, skip_type_checking=skip_type_checking):
            for name in _parents(imp.module):
                if name not in chains:
                    chains[name] = chains[current] + (name,)
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
# dvc.yaml
# --------------------------------------------------------------------------------------------

_INTERP = re.compile(r"\$\{\s*([^}]+?)\s*\}")


def _lookup(ctx: dict[str, Any], key: str) -> Any:
    value: Any = ctx
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(key)
    return value


def _interpolate(value: Any, ctx: dict[str, Any]) -> Any:
    """${a.b} substitution; a string that is exactly one ${...} keeps the value's type; unknown
    names are left as they are."""
    if isinstance(value, str):
        whole = _INTERP.fullmatch(value)
        if whole:
            try:
                return _lookup(ctx, whole.group(1))
            except KeyError:
                return value

        def sub(m: re.Match[str]) -> str:
            try:
                return str(_lookup(ctx, m.group(1)))
            except KeyError:
                return m.group(0)

        return _INTERP.sub(sub, value)
    if isinstance(value, list):
        return [_interpolate(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, ctx) for k, v in value.items()}
    return value


def _load_dvc(dvc_yaml: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stages, global vars): vars = params.yaml beside dvc.yaml (DVC's default) + `vars:`."""
    dvc_yaml = Path(dvc_yaml)
    doc = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}
    ctx: dict[str, Any] = {}
    default_params = dvc_yaml.parent / "params.yaml"
    if default_params.is_file():
        ctx.update(yaml.safe_load(default_params.read_text(encoding="utf-8")) or {})
    for entry in doc.get("vars") or []:
        if isinstance(entry, dict):
            ctx.update(entry)
        elif isinstance(entry, str):
            file, _, keys = entry.partition(":")
            path = dvc_yaml.parent / file
            if path.is_file():
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                if keys:
                    data = {k: data[k] for k in keys.split(",") if k in data}
                ctx.update(data)
    return doc.get("stages") or {}, ctx


def _instances(name: str, stage: dict[str, Any], ctx: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(instance name, stage body, context) for each foreach/matrix instance, as DVC names them."""
    if "foreach" in stage:
        items = _interpolate(stage["foreach"], ctx)
        body = stage.get("do") or {}
        if isinstance(items, dict):
            for key, item in items.items():
                yield f"{name}@{key}", body, {**ctx, "key": key, "item": item}
        elif isinstance(items, list):
            for i, item in enumerate(items):
                label = item if isinstance(item, (str, int, float, bool)) else i
                yield f"{name}@{label}", body, {**ctx, "item": item}
        return
    matrix = {k: _interpolate(v, ctx) for k, v in (stage.get("matrix") or {}).items()}
    keys = list(matrix)
    for combo in itertools.product(*(v if isinstance(v, list) else [v] for v in matrix.values())):
        labels = [str(v) if isinstance(v, (str, int, float, bool)) else f"{k}{i}" for i, (k, v) in enumerate(zip(keys, combo))]
        yield f"{name}@{'-'.join(labels)}", stage, {**ctx, "item": dict(zip(keys, combo))}


def _body(stage: dict[str, Any]) -> dict[str, Any]:
    return (stage.get("do") or {}) if "foreach" in stage else stage


def _module_from_cmd(cmd: Any) -> str | None:
    """`lfp [--params P] <stage> ...`, `python -m lfp[.cli] <stage> ...` or
    `python -m lfp.stages.<name>` -> 'lfp.stages.<stage>' (first matching command of a list)."""
    for line in cmd if isinstance(cmd, list) else [cmd]:
        if not isinstance(line, str):
            continue
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                tokens = shlex.split(part)
            except ValueError:
                tokens = part.split()
            module = _module_from_tokens(tokens)
            if module:
                return module
    return None


def _module_from_tokens(tokens: list[str]) -> str | None:
    start = None
    for i, tok in enumerate(tokens):
        if os.path.basename(tok) == PACKAGE:
            start = i + 1
            break
        if tok == "-m" and i + 1 < len(tokens):
            target = tokens[i + 1]
            if target.startswith(f"{PACKAGE}.stages."):
                return target
            if target in (PACKAGE, f"{PACKAGE}.cli"):
                start = i + 2
                break
    if start is None:
        return None
    i = start
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-"):
            i += 2 if (tok in _CLI_VALUE_OPTIONS and "=" not in tok) else 1
            continue
        return f"{PACKAGE}.stages.{tok}"
    return None


def _expanded(dvc_yaml: Path | str) -> dict[str, tuple[str | None, list[str], str]]:
    """stage -> (module, deps, wdir). foreach/matrix stages stay one entry under their dvc.yaml
    name unless the stage name in their cmd is itself interpolated (then one entry per instance)."""
    stages, ctx = _load_dvc(dvc_yaml)
    out: dict[str, tuple[str | None, list[str], str]] = {}
    for name, stage in stages.items():
        stage = stage or {}
        body = _body(stage)
        module = _module_from_cmd(_interpolate(body.get("cmd"), ctx))
        generated = "foreach" in stage or "matrix" in stage
        if generated and module is not None and "${" in module:
            for inst, inst_body, inst_ctx in _instances(name, stage, ctx):
                out[inst] = (
                    _module_from_cmd(_interpolate(inst_body.get("cmd"), inst_ctx)),
                    _flat_deps(_interpolate(inst_body.get("deps"), inst_ctx)),
                    str(_interpolate(inst_body.get("wdir", "."), inst_ctx)),
                )
            continue
        out[name] = (module, _flat_deps(_interpolate(body.get("deps"), ctx)), str(_interpolate(body.get("wdir", "."), ctx)))
    return out


def _flat_deps(deps: Any) -> list[str]:
    out: list[str] = []
    for dep in deps if isinstance(deps, list) else ([deps] if deps else []):
        if isinstance(dep, list):  # a YAML alias of a list inside the list
            out.extend(_flat_deps(dep))
        elif isinstance(dep, dict):  # `- path: {...}` form
            out.extend(str(k) for k in dep)
        elif dep is not None:
            out.append(str(dep))
    return out


def stage_modules(dvc_yaml: Path | str) -> dict[str, str]:
    """dvc.yaml stage name -> the module its `lfp <stage> ...` cmd runs ('lfp.stages.<stage>').
    Stages whose cmd does not run lfp are left out."""
    return {name: module for name, (module, _, _) in _expanded(dvc_yaml).items() if module and "${" not in module}


def stage_deps(dvc_yaml: Path | str, repo_root: Path | str | None = None) -> dict[str, list[str]]:
    """dvc.yaml stage name -> its deps as repo-relative posix paths (wdir applied, trailing '/'
    dropped; deps still holding an unresolved ${...} are kept as written)."""
    dvc_yaml = Path(dvc_yaml)
    repo_root = Path(repo_root) if repo_root is not None else dvc_yaml.parent
    out = {}
    for name, (_, deps, wdir) in _expanded(dvc_yaml).items():
        base = dvc_yaml.parent / wdir
        out[name] = [Path(os.path.relpath(os.path.normpath(base / d), repo_root)).as_posix() for d in deps]
    return out


def _covered(path: str, deps: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _stage_chains(
    dvc_yaml: Path | str, repo_root: Path | str, src_dir: Path | None, entry: str | None
) -> dict[str, tuple[str, dict[Path, tuple[str, ...]], list[str]]]:
    repo_root = Path(repo_root)
    src_dir = Path(src_dir) if src_dir is not None else repo_root / "src"
    modules = stage_modules(dvc_yaml)
    deps = stage_deps(dvc_yaml, repo_root)
    entry_chains = import_chains(entry, src_dir=src_dir, repo_root=repo_root) if entry else {}
    out = {}
    for stage, module in modules.items():
        chains = dict(entry_chains)
        chains.update(import_chains(module, src_dir=src_dir, repo_root=repo_root))  # prefer the stage's chain
        out[stage] = (module, chains, deps.get(stage, []))
    return out


def _uncovered(chains: dict[Path, tuple[str, ...]], deps: list[str], ignored: set[str]) -> list[Path]:
    return sorted(p for p in chains if p.as_posix() not in ignored and not _covered(p.as_posix(), deps))


def missing_deps(
    dvc_yaml_path: Path | str,
    repo_root: Path | str | None = None,
    *,
    src_dir: Path | None = None,
    entry: str | None = ENTRY_MODULE,
    ignore: Iterable[str] = DEFAULT_IGNORE,
) -> dict[str, list[Path]]:
    """Stage -> sorted files (repo-relative) that `lfp <stage>` runs or reads by name but that no
    dep of the stage covers (a dep covers itself and, if a folder, everything under it). Only
    stages missing something are returned. The closure is that of `entry` (the CLI, which every
    `lfp <stage>` runs first; None to leave it out) plus the stage module's."""
    dvc_yaml_path = Path(dvc_yaml_path)
    repo_root = Path(repo_root) if repo_root is not None else dvc_yaml_path.parent
    ignored = set(ignore)
    out: dict[str, list[Path]] = {}
    for stage, (_, chains, deps) in _stage_chains(dvc_yaml_path, repo_root, src_dir, entry).items():
        missing = _uncovered(chains, deps, ignored)
        if missing:
            out[stage] = missing
    return out


def _describe(chain: tuple[str, ...]) -> str:
    modules = [c for c in chain if not c.startswith("reads ")]
    return " -> ".join(modules) + (f" ({chain[-1]})" if chain[-1].startswith("reads ") else "")


def missing_dep_messages(
    dvc_yaml_path: Path | str,
    repo_root: Path | str | None = None,
    *,
    src_dir: Path | None = None,
    entry: str | None = ENTRY_MODULE,
    ignore: Iterable[str] = DEFAULT_IGNORE,
) -> list[str]:
    """One actionable line per missing (stage, file), e.g. "stage 'validate' imports
    src/lfp/llm/client.py (via lfp.stages.validate -> lfp.validation.explainers -> lfp.llm.client) but dvc.yaml does not
    list it in deps"."""
    dvc_yaml_path = Path(dvc_yaml_path)
    repo_root = Path(repo_root) if repo_root is not None else dvc_yaml_path.parent
    ignored = set(ignore)
    lines = []
    for stage, (_, chains, deps) in _stage_chains(dvc_yaml_path, repo_root, src_dir, entry).items():
        for path in _uncovered(chains, deps, ignored):
            chain = chains[path]
            verb = "reads" if chain[-1].startswith("reads ") else "imports"
            lines.append(
                f"stage '{stage}' {verb} {path.as_posix()} (via {_describe(chain)}) but dvc.yaml does not list it in deps"
            )
    return lines


def suggested_code_deps(
    stage_deps_: Iterable[str], missing: Iterable[Path | str], code_prefix: str = "src/", repo_root: Path | str | None = None
) -> list[str]:
    """The stage's current code deps (those under code_prefix) plus the missing files, sorted;
    with repo_root, current deps that no longer exist there are dropped."""
    current = {d for d in stage_deps_ if d.startswith(code_prefix)}
    if repo_root is not None:
        current = {d for d in current if (Path(repo_root) / d).exists()}
    return sorted(current | {Path(m).as_posix() for m in missing})


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
    package_name, _ = _module_name(stages_dir / "__init__.py", src_dir)
    out: dict[str, list[Import]] = {}
    for path in sorted(stages_dir.glob("*.py")):
        if path.name == "__init__.py":
            continue
        current, _ = _module_name(path, src_dir)
        bad = [
            imp
            for imp in module_imports(path, src_dir, skip_type_checking=False)
            if imp.module.startswith(package_name + ".") and imp.module.split(".")[: len(current.split("."))] != current.split(".")
        ]
        if bad:
            out[current] = bad
    return out


def _whole_folders(paths: list[str], repo_root: Path) -> list[str]:
    """Folders (other than the top package) all of whose files are in paths."""
    wanted = set(paths)
    folders = sorted({Path(p).parent.as_posix() for p in paths if (repo_root / p).is_file()})
    out = []
    for folder in folders:
        if folder.count("/") < 2 or folder in wanted:  # src/lfp itself, or already listed
            continue
        files = [f.relative_to(repo_root).as_posix() for f in _data_files_or_code(repo_root / folder)]
        if len(files) > 1 and all(f in wanted for f in files):
            out.append(folder)
    return out


def _data_files_or_code(folder: Path) -> list[Path]:
    return [
        p for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix not in {".pyc", ".pyo"}
        and not any(part == "__pycache__" or part.startswith(".") for part in p.relative_to(folder).parts)
    ]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


WHOLE_FOLDERS = ("src/lfp/sae", "src/lfp/tasks", "src/lfp/llm/prompts")  # listed as one dep each


def code_deps_of(stage_module: str, repo_root: Path) -> list[str]:
    """The sorted `src/` deps a stage needs: its closure and the CLI's, whole folders collapsed."""
    files = {p.as_posix() for p in import_closure(ENTRY_MODULE, repo_root=repo_root)}
    files |= {p.as_posix() for p in import_closure(stage_module, repo_root=repo_root)}
    files -= set(DEFAULT_IGNORE)
    return sorted({next((d for d in WHOLE_FOLDERS if f.startswith(d + "/")), f) for f in files})


def write_code_deps(dvc_yaml: Path, repo_root: Path) -> None:
    """Replace the `- src/...` lines of every stage's deps with `code_deps_of` (text edit: the
    file's comments, order and templating stay as they are)."""
    modules = stage_modules(dvc_yaml)
    out: list[str] = []
    stage, in_deps = None, False
    for line in dvc_yaml.read_text(encoding="utf-8").split("\n"):
        m = re.match(r"^  ([\w-]+):$", line)
        if m:
            stage = m.group(1)
        if in_deps and re.match(r"^\s+- src/", line):
            continue
        if in_deps and not re.match(r"^\s+- ", line):
            in_deps = False
        out.append(line)
        if re.match(r"^\s+deps:$", line) and stage in modules:
            indent = re.match(r"^(\s+)", line).group(1) + "  "
            out.extend(f"{indent}- {d}" for d in code_deps_of(modules[stage], repo_root))
            in_deps = True
    dvc_yaml.write_text("\n".join(out), encoding="utf-8")


def dag_lines(repo_root: Path, instances: bool = False) -> list[str]:
    """The stage DAG as one line per stage, `stage (n) <- upstream, ...`, upstream reduced to the
    direct parents (an edge implied by a longer path is left out). Why: `dvc dag` draws the 37
    instances in ~3,400-column ASCII art (561 with --collapse-foreach-matrix: report reads every
    stage's metrics); this fits 100 columns. instances=True lists `finetune@tiny-vader` etc."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        graph = repo.index.graph  # edges: stage -> a stage it depends on
        name = (lambda s: s.addressing) if instances else (lambda s: s.addressing.split("@")[0])
        dag = nx.DiGraph()
        counts: dict[str, int] = {}
        for stage in graph.nodes:
            dag.add_node(name(stage))
            counts[name(stage)] = counts.get(name(stage), 0) + 1
        dag.add_edges_from((name(up), name(down)) for down, up in graph.edges if name(up) != name(down))
    reduced = nx.transitive_reduction(dag) if nx.is_directed_acyclic_graph(dag) else dag
    order = list(nx.lexicographical_topological_sort(reduced)) if nx.is_directed_acyclic_graph(reduced) else sorted(reduced)
    labels = {n: n + (f" ({counts[n]})" if counts[n] > 1 else "") for n in order}
    width = max(map(len, labels.values()))
    return [f"{labels[n]:<{width}} <- {', '.join(sorted(reduced.predecessors(n))) or '(raw data and code only)'}" for n in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lfp_dev.dag_deps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dvc-yaml", type=Path, default=None, help="default: <repo-root>/dvc.yaml")
    parser.add_argument("--repo-root", type=Path, default=None, help="default: the folder above src/ (or the cwd's if it has dvc.yaml)")
    parser.add_argument("--write", action="store_true",
                        help="rewrite every stage's src/ deps in dvc.yaml as its import closure (folders whole)")
    parser.add_argument("--dag", action="store_true",
                        help="print the stage DAG, one line per stage with its direct upstream stages (readable `dvc dag`), and exit")
    parser.add_argument("--instances", action="store_true", help="with --dag: one line per stage instance (prepare@vader, ...)")
    args = parser.parse_args(argv)
    repo_root = args.repo_root or (Path.cwd() if (Path.cwd() / "dvc.yaml").is_file() else REPO_ROOT)
    if args.dag:
        print("\n".join(dag_lines(repo_root, args.instances)))
        return 0
    dvc_yaml = args.dvc_yaml or repo_root / "dvc.yaml"
    src_dir = repo_root / "src"
    if args.write:
        write_code_deps(dvc_yaml, repo_root)

    chains_by_stage = _stage_chains(dvc_yaml, repo_root, src_dir, ENTRY_MODULE)
    missing: dict[str, list[Path]] = {}
    for stage, (module, chains, deps) in chains_by_stage.items():
        files = _uncovered(chains, deps, set(DEFAULT_IGNORE))
        if files:
            missing[stage] = files
        stale = [d for d in deps if d.startswith("src/") and "${" not in d and not (repo_root / d).exists()]
        if not files and not stale:
            print(f"{stage} ({module}): ok")
            continue
        print(f"{stage} ({module}): {len(files)} missing")
        for path in files:
            print(f"  {path.as_posix()}  <- {_describe(chains[path])}")
        for dep in stale:
            print(f"  (listed but does not exist: {dep})")
        suggestion = suggested_code_deps(deps, files, repo_root=repo_root)
        print("  suggested code deps:")
        for dep in suggestion:
            print(f"    - {dep}")
        for folder in _whole_folders(suggestion, repo_root):
            print(f"  (every file of {folder}/ is needed: the folder as one dep covers them and future ones;"
                  f" add __pycache__/ to .dvcignore first)")
    cross = stage_cross_imports(src_dir / PACKAGE / "stages", src_dir)
    if cross:
        print("\nstage modules importing other stage modules (move the shared code out of lfp.stages):")
        for module, imports in cross.items():
            for imp in imports:
                print(f"  {module} imports {imp.module} (line {imp.lineno})")
    total = sum(len(v) for v in missing.values())
    print(f"\n{total} missing code dep(s) in {len(missing)} stage(s)" if missing else "\nall stages list their code deps")
    return 1 if missing else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
