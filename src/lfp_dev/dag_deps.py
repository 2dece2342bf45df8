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
covered, except `src/lfp/__init__.py` (version string only). The import graph is
lfp_dev.imports; dvc.yaml's stages and their coverage lfp_dev.dvc_stages; this module is the CLI.

    python -m lfp_dev.dag_deps [--dvc-yaml dvc.yaml] [--repo-root .] [--write]

prints, per stage, the missing files (with the import chain that pulls each in) and a suggested
sorted list of code deps; exit status 1 if any stage misses one.

Pure stdlib + PyYAML: imports neither torch nor any stage.
"""


from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from lfp_dev.dvc_stages import (
    DEFAULT_IGNORE,
    ENTRY_MODULE,
    describe_chain,
    stage_chains,
    stage_modules,
    suggested_code_deps,
    uncovered,
    whole_folders,
)
from lfp_dev.imports import PACKAGE, REPO_ROOT, import_closure, stage_cross_imports

# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


WHOLE_FOLDERS = ("src/lfp/sae", "src/lfp/llm/prompts")  # listed as one dep each


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

    chains_by_stage = stage_chains(dvc_yaml, repo_root, src_dir, ENTRY_MODULE)
    missing: dict[str, list[Path]] = {}
    for stage, (module, chains, deps) in chains_by_stage.items():
        files = uncovered(chains, deps, set(DEFAULT_IGNORE))
        if files:
            missing[stage] = files
        stale = [d for d in deps if d.startswith("src/") and "${" not in d and not (repo_root / d).exists()]
        if not files and not stale:
            print(f"{stage} ({module}): ok")
            continue
        print(f"{stage} ({module}): {len(files)} missing")
        for path in files:
            print(f"  {path.as_posix()}  <- {describe_chain(chains[path])}")
        for dep in stale:
            print(f"  (listed but does not exist: {dep})")
        suggestion = suggested_code_deps(deps, files, repo_root=repo_root)
        print("  suggested code deps:")
        for dep in suggestion:
            print(f"    - {dep}")
        for folder in whole_folders(suggestion, repo_root):
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
