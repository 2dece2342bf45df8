"""dvc.yaml's stages against the import graph: each stage instance's module and deps (templating
and `foreach`/`matrix` expanded), and the code files a stage runs that its deps do not cover.

A dep covers a file when it is that file or a folder above it. Strict: every file must be
covered, except `src/lfp/__init__.py` (version string only).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from lfp_dev.imports import PACKAGE, import_chains

ENTRY_MODULE = "lfp.cli"  # what `lfp <stage>` runs before importing lfp.stages.<stage>
DEFAULT_IGNORE = frozenset({"src/lfp/__init__.py"})
# top-level options of `lfp` that take a value (`lfp --params P <stage>`)
_CLI_VALUE_OPTIONS = frozenset({"--params"})


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


def stage_chains(
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


def uncovered(chains: dict[Path, tuple[str, ...]], deps: list[str], ignored: set[str]) -> list[Path]:
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
    for stage, (_, chains, deps) in stage_chains(dvc_yaml_path, repo_root, src_dir, entry).items():
        missing = uncovered(chains, deps, ignored)
        if missing:
            out[stage] = missing
    return out


def describe_chain(chain: tuple[str, ...]) -> str:
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
    for stage, (_, chains, deps) in stage_chains(dvc_yaml_path, repo_root, src_dir, entry).items():
        for path in uncovered(chains, deps, ignored):
            chain = chains[path]
            verb = "reads" if chain[-1].startswith("reads ") else "imports"
            lines.append(
                f"stage '{stage}' {verb} {path.as_posix()} (via {describe_chain(chain)}) but dvc.yaml does not list it in deps"
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



def whole_folders(paths: list[str], repo_root: Path) -> list[str]:
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


