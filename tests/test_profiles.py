"""Every shipped profile parses with lfp's loader AND resolves as a whole DVC DAG.

Why: `cp params/paper.yaml params.yaml && dvc repro` once failed in 1.5 s on keys that dvc.yaml
interpolates or lists as params (`measure.preference_tasks`, ...) but the profile lacked; lfp's own
loader fills defaults, so only DVC saw the hole. `dvc repro --dry` cannot be the check in a fresh
copy: it stops at the first stage whose input another (not run) stage would have written. This
does what a dry run checks, through DVC's own API, in a temp project with the profile as
params.yaml (about a second per profile):
- dvc.yaml resolves (foreach / matrix / ${...} interpolation) and the stage graph builds (no
  cycle, no output claimed twice);
- every `params:` key of every stage exists in the profile (what `dvc repro` fails on when it
  saves a stage);
- every dep is produced by a stage or exists in the project (data/raw, src/...);
- every stage's cmd parses with lfp's CLI and names a model / task of the profile.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from lfp.cli import build_parser
from lfp.core.params_load import load_params

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["params.yaml", "tests/micro_params.yaml"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "params").glob("*.yaml"))


def _dag_problems(profile: Path, tmp: Path) -> list[str]:
    """Problems `dvc repro` would stop on, for dvc.yaml with `profile` as params.yaml."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    Repo.init(tmp, no_scm=True)
    shutil.copy2(ROOT / "dvc.yaml", tmp / "dvc.yaml")
    shutil.copy2(profile, tmp / "params.yaml")
    params = load_params(profile)
    problems: list[str] = []
    with Repo(tmp) as repo:
        try:
            stages = repo.index.stages  # resolves foreach/matrix/interpolation: fails on a missing key
            repo.index.graph  # noqa: B018 - builds the DAG: fails on a cycle or an output claimed twice
        except Exception as exc:  # DVC's ResolveError, CyclicGraphError, OverlappingOutputPathsError, ...
            return [f"{profile.name}: dvc.yaml does not resolve: {str(exc).replace(str(tmp), '<tmp>')}"]
        outs = [o.def_path.rstrip("/") for s in stages for o in s.outs]
        for stage in stages:
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    present = dep.read_params()
                    missing = [k for k in dep.params if k not in present]
                    if missing:
                        problems.append(f"{profile.name}: stage '{stage.addressing}' lists params missing from the profile: {', '.join(missing)}")
                    continue
                path = dep.def_path.rstrip("/")
                made = any(path == o or path.startswith(o + "/") or o.startswith(path + "/") for o in outs)
                if not made and not (ROOT / path).exists():
                    problems.append(f"{profile.name}: stage '{stage.addressing}' depends on '{path}', which no stage writes and the project lacks")
            problems += _cmd_problems(profile.name, stage.addressing, stage.cmd, params)
    return problems


def _cmd_problems(profile: str, stage: str, cmd: str | list[str], params: object) -> list[str]:
    out = []
    for line in cmd if isinstance(cmd, list) else [cmd]:
        tokens = shlex.split(line)
        if not tokens or tokens[0] != "lfp":
            out.append(f"{profile}: stage '{stage}' runs {line!r}, not `lfp <stage>`")
            continue
        try:
            args = build_parser().parse_args(tokens[1:])
        except SystemExit:
            out.append(f"{profile}: stage '{stage}': `{line}` does not parse with lfp's CLI")
            continue
        if getattr(args, "model", None) is not None and args.model not in params.models:  # type: ignore[attr-defined]
            out.append(f"{profile}: stage '{stage}': --model {args.model} is not in `models`")
        known = params.task_specs if args.stage == "prepare" else params.tasks  # type: ignore[attr-defined]
        if getattr(args, "task", None) is not None and args.task not in known:
            out.append(f"{profile}: stage '{stage}': --task {args.task} is not in `{'task_specs' if args.stage == 'prepare' else 'tasks'}`")
    return out


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_parses_and_its_dag_resolves(profile: str, tmp_path: Path) -> None:
    params = load_params(ROOT / profile)
    assert params.models and params.tasks
    problems = _dag_problems(ROOT / profile, tmp_path)
    assert not problems, "\n".join(problems)


def test_a_missing_param_key_is_caught(tmp_path: Path) -> None:
    """The check itself: a profile without a key a stage lists fails, naming stage and key."""
    import yaml

    data = yaml.safe_load((ROOT / "tests" / "micro_params.yaml").read_text(encoding="utf-8"))
    del data["probe"]["shuffled_repeats"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    (tmp_path / "proj").mkdir()
    problems = _dag_problems(bad, tmp_path / "proj")
    assert any("measure_pairs@" in p and "probe.shuffled_repeats" in p for p in problems), problems


def test_an_uninterpolatable_profile_is_caught(tmp_path: Path) -> None:
    """paper.yaml's old fault: dvc.yaml's matrix reads `measure.preference_tasks`."""
    import yaml

    data = yaml.safe_load((ROOT / "tests" / "micro_params.yaml").read_text(encoding="utf-8"))
    del data["measure"]["preference_tasks"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    (tmp_path / "proj").mkdir()
    problems = _dag_problems(bad, tmp_path / "proj")
    assert len(problems) == 1 and "measure_pairs.matrix" in problems[0] and "measure.preference_tasks" in problems[0], problems


def test_each_prepare_depends_on_its_own_raw_data_only(tmp_path: Path) -> None:
    """A bad byte in the HH files must not re-run prepare@vader (it used to depend on all of data/raw)."""
    from dvc.repo import Repo

    Repo.init(tmp_path, no_scm=True)
    shutil.copy2(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    with Repo(tmp_path) as repo:
        data = {s.name: [d.def_path for d in s.deps if not d.def_path.startswith("src/") and not d.def_path.endswith(".yaml")]
                for s in repo.index.stages if s.name.startswith("prepare@")}
    assert data == {"prepare@vader": ["data/raw/imdb"], "prepare@hh": ["data/raw/hh-rlhf"],
                    "prepare@toxic": ["data/raw/hh-rlhf/harmless-base"]}
