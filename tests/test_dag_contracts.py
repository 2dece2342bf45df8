"""DAG contracts: dvc.yaml lists every code file a stage runs, and stage modules stay independent.

The repo-level tests read the real dvc.yaml and src/lfp statically (nothing is imported, nothing
is run); the rest check lfp_dev.imports and lfp_dev.dvc_stages on a tiny synthetic package. `python -m lfp_dev.dag_deps` prints
the missing deps per stage with a suggested deps list.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lfp_dev.dvc_stages import missing_dep_messages, missing_deps, stage_deps, stage_modules, suggested_code_deps
from lfp_dev.imports import import_chains, import_closure, module_file, section_keys_read, stage_cross_imports

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


# --------------------------------------------------------------------------------------------
# the repository
# --------------------------------------------------------------------------------------------


def test_every_stage_runs_an_lfp_stage_module() -> None:
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    modules = stage_modules(ROOT / "dvc.yaml")
    problems = [f"stage '{s}': cmd does not run `lfp <stage>`, so its code deps cannot be checked" for s in stages if s not in modules]
    problems += [f"stage '{s}': cmd runs {m}, which does not exist under src/" for s, m in modules.items() if module_file(m, SRC) is None]
    assert not problems, "\n".join(problems)


def test_every_stage_lists_its_code_deps() -> None:
    messages = missing_dep_messages(ROOT / "dvc.yaml", ROOT, src_dir=SRC)
    if messages:
        missing = missing_deps(ROOT / "dvc.yaml", ROOT, src_dir=SRC)
        deps = stage_deps(ROOT / "dvc.yaml", ROOT)
        hint = "\n".join(
            f"  {stage}:\n" + "\n".join(f"    - {d}" for d in suggested_code_deps(deps[stage], files))
            for stage, files in missing.items()
        )
        pytest.fail(
            f"{len(messages)} code file(s) missing from dvc.yaml deps (editing them would not re-run the stage):\n"
            + "\n".join(messages)
            + "\n\nsuggested code deps per stage (or run `python -m lfp_dev.dag_deps`):\n"
            + hint
        )


def test_no_stage_imports_another_stage() -> None:
    cross = stage_cross_imports(SRC / "lfp" / "stages", SRC)
    lines = [
        f"src/{module.replace('.', '/')}.py:{imp.lineno} imports {imp.module}: "
        f"move the shared code out of lfp.stages (e.g. into lfp/<topic>.py) and import it from there"
        for module, imports in cross.items()
        for imp in imports
    ]
    assert not lines, "stage modules must not import each other:\n" + "\n".join(lines)


def test_measure_pairs_lists_exactly_the_params_it_reads() -> None:
    """measure_pairs once listed the whole `measure` section: a bad planted word (a lexicon-task key)
    re-ran it for minutes before `measure` failed. It lists the keys lfp.tasks.preference_dpo.measure reads, no more
    (a stale key only costs re-runs) and no fewer (a missing one gives stale results)."""
    import yaml

    listed = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["measure_pairs"]["params"]
    code = ROOT / "src" / "lfp" / "tasks" / "preference_dpo" / "measure.py"
    for section in ("measure", "probe"):
        assert section not in listed, f"measure_pairs lists the whole '{section}' section"
        keys = {p for p in listed if isinstance(p, str) and p.startswith(section + ".")}
        assert keys == {f"{section}.{k}" for k in section_keys_read(code, section)}, section


def test_dag_view_is_readable() -> None:
    """`python -m lfp_dev.dag_deps --dag`: the DAG in lines that fit a terminal (`dvc dag` draws ~3,400 columns)."""
    from lfp_dev.dag_deps import dag_lines

    lines = dag_lines(ROOT)
    assert max(map(len, lines)) <= 100, lines
    by_stage = {line.split()[0]: line.split("<-")[1].strip() for line in lines}
    assert by_stage["prepare"] == "(raw data and code only)" and by_stage["sae"] == "activations"
    # direct parents only: diffing reaches the report through measure (its crosscoders are a readout)
    assert set(by_stage["report"].split(", ")) == {"measure", "measure_pairs", "validate"}
    assert "diffing" in by_stage["measure"]
    assert [line.split()[0] for line in lines].index("prepare") < [line.split()[0] for line in lines].index("report")


def test_section_keys_read_follows_aliases_per_function(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(textwrap.dedent("""
        def a(params):
            cfg, ft = params.measure, params.finetune
            return cfg.pairs + params.measure.bootstrap + ft.beta

        def b(params):
            cfg = params.probe  # another function's `cfg`: not a measure key
            def inner():
                return cfg.ridge_alpha
            return inner() + params.measure.batch_size
        """), encoding="utf-8")
    assert section_keys_read(path, "measure") == {"pairs", "bootstrap", "batch_size"}
    assert section_keys_read(path, "probe") == {"ridge_alpha"}


# --------------------------------------------------------------------------------------------
# the closure, on a synthetic package
# --------------------------------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def closure(tmp_path: Path, module: str) -> set[str]:
    return {p.as_posix() for p in import_closure(module, src_dir=tmp_path / "src", repo_root=tmp_path)}


def test_closure_follows_function_local_imports(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/pkg/__init__.py": "",
        "src/pkg/main.py": """
            import os

            def run():
                import numpy
                from pkg.late import thing
                return thing
            """,
        "src/pkg/late.py": "def thing(): ...\n",
        "src/pkg/unused.py": "",
    })
    assert closure(tmp_path, "pkg.main") == {"src/pkg/__init__.py", "src/pkg/main.py", "src/pkg/late.py"}


def test_closure_from_package_import_submodule_or_name(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/pkg/__init__.py": "VERSION = 1\n",
        "src/pkg/main.py": "from pkg import helpers, VERSION\nfrom pkg.sub import leaf, NAME\n",
        "src/pkg/helpers.py": "",
        "src/pkg/sub/__init__.py": "NAME = 'x'\n",
        "src/pkg/sub/leaf.py": "",
        "src/pkg/sub/other.py": "",
    })
    assert closure(tmp_path, "pkg.main") == {
        "src/pkg/__init__.py", "src/pkg/main.py", "src/pkg/helpers.py",
        "src/pkg/sub/__init__.py", "src/pkg/sub/leaf.py",
    }


def test_closure_includes_the_init_of_every_package_on_the_path(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/pkg/__init__.py": "",
        "src/pkg/a/__init__.py": "",
        "src/pkg/a/b/__init__.py": "from pkg import side\n",
        "src/pkg/a/b/c.py": "",
        "src/pkg/side.py": "",
        "src/pkg/main.py": "import pkg.a.b.c\n",
    })
    assert closure(tmp_path, "pkg.main") == {
        "src/pkg/__init__.py", "src/pkg/main.py", "src/pkg/a/__init__.py",
        "src/pkg/a/b/__init__.py", "src/pkg/a/b/c.py", "src/pkg/side.py",
    }
    # the root module's own parent packages run too
    assert "src/pkg/a/__init__.py" in closure(tmp_path, "pkg.a.b.c")


def test_closure_package_shadows_module_and_module_shadows_namespace_dir(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/pkg/__init__.py": "",
        "src/pkg/sae.py": "",  # shadowed by the package sae/ (as Python's import system does)
        "src/pkg/sae/__init__.py": "",
        "src/pkg/data.py": "",  # shadows the namespace folder data/
        "src/pkg/data/table.json": "{}",
        "src/pkg/main.py": "from pkg import sae, data\n",
    })
    assert closure(tmp_path, "pkg.main") == {
        "src/pkg/__init__.py", "src/pkg/main.py", "src/pkg/sae/__init__.py", "src/pkg/data.py",
    }


def test_closure_relative_importlib_and_type_checking(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/pkg/__init__.py": "",
        "src/pkg/sub/__init__.py": "",
        "src/pkg/sub/main.py": """
            from typing import TYPE_CHECKING
            import importlib
            from . import sibling
            from ..top import f

            if TYPE_CHECKING:
                from pkg.typing_only import T

            def load():
                return importlib.import_module("pkg.dynamic"), importlib.import_module(".rel", "pkg")
            """,
        "src/pkg/sub/sibling.py": "",
        "src/pkg/top.py": "def f(): ...\n",
        "src/pkg/dynamic.py": "",
        "src/pkg/rel.py": "",
        "src/pkg/typing_only.py": "",
    })
    assert closure(tmp_path, "pkg.sub.main") == {
        "src/pkg/__init__.py", "src/pkg/sub/__init__.py", "src/pkg/sub/main.py", "src/pkg/sub/sibling.py",
        "src/pkg/top.py", "src/pkg/dynamic.py", "src/pkg/rel.py",
    }


def test_closure_finds_data_files_referenced_by_name(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/pkg/__init__.py": "",
        "src/pkg/main.py": """
            '''Docstrings do not count: other.txt'''
            from importlib import resources
            from pkg.loader import load_prompt

            def run():
                table = resources.files("pkg").joinpath("data/table.json").read_text()
                return load_prompt("grade"), table
            """,
        "src/pkg/loader.py": """
            from importlib import resources

            def load_prompt(name):
                return resources.files("pkg").joinpath("prompts", f"{name}.txt").read_text()

            def simulate():
                return load_prompt("simulate")
            """,
        "src/pkg/prompts/grade.txt": "g",
        "src/pkg/prompts/simulate.txt": "s",
        "src/pkg/prompts/other.txt": "o",
        "src/pkg/data/table.json": "{}",
        "src/pkg/data/unused.json": "{}",
    })
    assert closure(tmp_path, "pkg.main") == {
        "src/pkg/__init__.py", "src/pkg/main.py", "src/pkg/loader.py",
        "src/pkg/prompts/grade.txt", "src/pkg/prompts/simulate.txt", "src/pkg/data/table.json",
    }
    chains = import_chains("pkg.main", src_dir=tmp_path / "src", repo_root=tmp_path)
    assert chains[Path("src/pkg/prompts/simulate.txt")] == ("pkg.main", "pkg.loader", "reads prompts/simulate.txt")
    # a module that names no prompt and does not reach the loader reads none
    write(tmp_path, {"src/pkg/plain.py": "STAGE = 'grade'\n"})
    assert closure(tmp_path, "pkg.plain") == {"src/pkg/__init__.py", "src/pkg/plain.py"}


# --------------------------------------------------------------------------------------------
# dvc.yaml: stage -> module, coverage, messages
# --------------------------------------------------------------------------------------------


SYNTHETIC_LFP = {
    "src/lfp/__init__.py": "",
    "src/lfp/cli.py": "from lfp.errors import LfpError\n\ndef main():\n    from lfp.config import load\n",
    "src/lfp/errors.py": "class LfpError(Exception): ...\n",
    "src/lfp/config.py": "from lfp.errors import LfpError\n",
    "src/lfp/llm.py": "",
    "src/lfp/explainers.py": "from lfp.llm import Client\n",
    "src/lfp/sae/__init__.py": "",
    "src/lfp/sae/train.py": "",
    "src/lfp/prompts/explain.txt": "p",
    "src/lfp/stages/__init__.py": "",
    "src/lfp/stages/explain.py": """
        from importlib import resources
        from lfp.sae import train

        def run():
            from lfp.explainers import explain
            return resources.files("lfp").joinpath("prompts", "explain.txt").read_text()
        """,
    "src/lfp/stages/validate.py": "def run():\n    from lfp.explainers import explain\n",
}

COMMON_DEPS = ["src/lfp/cli.py", "src/lfp/errors.py", "src/lfp/config.py", "src/lfp/stages/__init__.py"]


def test_a_dep_directory_covers_its_files_and_missing_deps_are_reported(tmp_path: Path) -> None:
    import yaml

    dvc_doc = {"stages": {
        "explain": {
            "matrix": {"model": "${models}", "task": "${tasks}"},
            "cmd": "lfp --params params.yaml explain --model ${item.model} --task ${item.task}",
            "deps": COMMON_DEPS + [
                "src/lfp/stages/explain.py", "src/lfp/explainers.py", "src/lfp/llm.py",
                "src/lfp/sae/",  # folders cover the files under them
                "src/lfp/prompts",
                "data/${item.task}",
            ],
        },
        "validate": {
            "foreach": "${tasks}",
            "do": {
                "cmd": "lfp validate --task ${item}",
                "deps": COMMON_DEPS + ["src/lfp/stages/validate.py", "src/lfp/explainers.py"],
            },
        },
    }}
    write(tmp_path, {**SYNTHETIC_LFP, "params.yaml": "models: [m1, m2]\ntasks: [t1]\n", "dvc.yaml": yaml.safe_dump(dvc_doc)})
    dvc = tmp_path / "dvc.yaml"
    assert stage_modules(dvc) == {"explain": "lfp.stages.explain", "validate": "lfp.stages.validate"}
    missing = missing_deps(dvc, tmp_path)
    assert missing == {"validate": [Path("src/lfp/llm.py")]}
    assert missing_dep_messages(dvc, tmp_path) == [
        "stage 'validate' imports src/lfp/llm.py (via lfp.stages.validate -> lfp.explainers -> lfp.llm) "
        "but dvc.yaml does not list it in deps"
    ]
    assert suggested_code_deps(stage_deps(dvc)["validate"], missing["validate"]) == sorted(
        COMMON_DEPS + ["src/lfp/stages/validate.py", "src/lfp/explainers.py", "src/lfp/llm.py"]
    )
    # deps that no longer exist are dropped from the suggestion
    assert suggested_code_deps(["src/lfp/gone.py", "data/x"], [Path("src/lfp/llm.py")], repo_root=tmp_path) == ["src/lfp/llm.py"]


def test_strict_about_everything_but_the_top_init(tmp_path: Path) -> None:
    write(tmp_path, {
        **SYNTHETIC_LFP,
        "dvc.yaml": """
            stages:
              explain:
                cmd: lfp explain --model m --task t
                deps:
                  - src/lfp/stages/explain.py
            """,
    })
    missing = {p.as_posix() for p in missing_deps(tmp_path / "dvc.yaml", tmp_path)["explain"]}
    assert missing == {
        "src/lfp/cli.py", "src/lfp/errors.py", "src/lfp/config.py", "src/lfp/stages/__init__.py",
        "src/lfp/sae/__init__.py", "src/lfp/sae/train.py", "src/lfp/explainers.py", "src/lfp/llm.py",
        "src/lfp/prompts/explain.txt",
    }
    messages = missing_dep_messages(tmp_path / "dvc.yaml", tmp_path)
    assert (
        "stage 'explain' reads src/lfp/prompts/explain.txt (via lfp.stages.explain (reads prompts/explain.txt)) "
        "but dvc.yaml does not list it in deps"
    ) in messages
    # without the CLI entry point, only the stage's own closure counts
    no_cli = {p.as_posix() for p in missing_deps(tmp_path / "dvc.yaml", tmp_path, entry=None)["explain"]}
    assert "src/lfp/cli.py" not in no_cli and "src/lfp/errors.py" not in no_cli


def test_stage_modules_parses_cmd_forms(tmp_path: Path) -> None:
    write(tmp_path, {
        "params.yaml": "steps: [prepare, report]\n",
        "dvc.yaml": """
            stages:
              a:
                cmd: lfp prepare
              b:
                cmd: python -m lfp.cli --params=p.yaml base --model tiny
              c:
                cmd:
                  - mkdir -p out
                  - lfp contrastive --task vader
              d:
                cmd: echo not lfp
              e:
                foreach: ${steps}
                do:
                  cmd: lfp ${item}
            """,
    })
    assert stage_modules(tmp_path / "dvc.yaml") == {
        "a": "lfp.stages.prepare",
        "b": "lfp.stages.base",
        "c": "lfp.stages.contrastive",
        "e@prepare": "lfp.stages.prepare",
        "e@report": "lfp.stages.report",
    }


def test_stage_cross_imports_anywhere_in_the_file(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/lfp/__init__.py": "",
        "src/lfp/stages/__init__.py": "",
        "src/lfp/stages/a.py": "from lfp import io\n",
        "src/lfp/stages/b.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from lfp.stages.a import X

            def f():
                from lfp.stages import a
                from . import c
            """,
        "src/lfp/stages/c.py": "import lfp.stages\nfrom lfp.stages import c as itself\n",
        "src/lfp/io.py": "",
    })
    cross = stage_cross_imports(tmp_path / "src/lfp/stages", tmp_path / "src")
    assert {m: [(i.module, i.lineno) for i in imps] for m, imps in cross.items()} == {
        "lfp.stages.b": [("lfp.stages.a", 4), ("lfp.stages.a", 7), ("lfp.stages.c", 8)],
    }


# --------------------------------------------------------------------------------------------
# the house: no import cycle, floors that imports only go down, small modules
# --------------------------------------------------------------------------------------------

# floor -> the lfp packages it may import (besides itself); everything may import lfp.core
FLOORS = {
    "lfp.core": {"lfp.models.loading"},  # only the stage opener's `StageContext.load` (lazily)
    "lfp.sae": {"lfp.models"},
    "lfp.report": {"lfp.measure", "lfp.readouts"},
}


def test_no_import_cycle_in_the_package() -> None:
    from lfp_dev.imports import import_cycles, module_graph

    assert import_cycles(module_graph()) == []


def test_imports_only_go_down_a_floor() -> None:
    from lfp_dev.imports import module_graph

    bad = []
    for module, imported in module_graph().items():
        for floor, allowed in FLOORS.items():
            if module == floor or module.startswith(floor + "."):
                ok = {floor, "lfp.core", *allowed}
                bad += [f"{module} imports {m}" for m in imported
                        if not any(m == a or m.startswith(a + ".") for a in ok)]
        if not module.startswith("lfp.stages.") and module != "lfp.cli":
            bad += [f"{module} imports the stage {m}" for m in imported if m.startswith("lfp.stages.")]
    assert bad == []


def test_editing_the_llm_client_reruns_only_the_stages_that_call_an_llm() -> None:
    """A task kind's methods import their facet lazily and lfp_dev counts a facet only for a stage that
    calls it: fine-tuning must not depend on the OpenAI client."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    with_llm = sorted(name for name, stage in stages.items()
                      if any(d.startswith("src/lfp/llm/client.py") for d in stage.get("do", stage)["deps"]))
    assert with_llm == ["contrastive", "explain"]


def test_modules_stay_small() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in (ROOT / "src").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 400} == {}
    assert {p: n for p, n in sizes.items() if "/stages/" in p and n > 150} == {}
