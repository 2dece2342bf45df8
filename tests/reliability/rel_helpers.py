"""Helpers and fixtures for the reliability suite: run `lfp` / `dvc` as a user would, in
throwaway projects.

Why subprocesses: the guarantees under test (exit code, one-line stderr, files left on disk after a
kill) only exist at the process boundary.
Why not a conftest.py: tests/ has no __init__.py, so a second conftest.py would replace the module
`conftest` that tests/test_finetune.py imports from. Test modules import the fixtures they use from
here; the expensive ones are built once per process through `shared`.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LFP = BIN / "lfp"
MICRO = ROOT / "tests" / "micro_params.yaml"
PLANTED_KEY = "sk-PLANTED-0123456789abcdefRELIABILITY"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a user's shell: no test-runner MLflow/LFP/OpenAI settings, no hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LFP_", "OPENAI_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1",
               TOKENIZERS_PARALLELISM="false")
    env.update(extra or {})
    return env


def run_lfp(args: list[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`lfp ARGS` in `cwd`, as a user would type it."""
    return subprocess.run([str(LFP), *args], cwd=cwd, env=clean_env(env), capture_output=True, text=True, timeout=timeout, check=False)


def assert_user_error(proc: subprocess.CompletedProcess[str], stage: str, *needles: str) -> str:
    """Exit 2, no traceback, and exactly one `lfp STAGE: error: ...` line containing every needle.

    Warnings logged before the failure may precede it; the error itself is one line and the last.
    """
    err = proc.stderr
    assert proc.returncode == 2, f"rc={proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"lfp {stage}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def files_under(root: Path, skip: Iterable[str] = ()) -> dict[str, int]:
    """{relative path: size} of every file below root (the 'nothing new was written' check)."""
    skipped = tuple(skip)
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith(skipped)}


def snapshot_bytes(root: Path, *, hidden: bool = True) -> dict[str, bytes]:
    """Every file's bytes below root: to prove old outputs survived byte-for-byte.

    `hidden=False` leaves out dot-prefixed entries (the temps of an interrupted atomic write).
    """
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and (hidden or not any(part.startswith(".") for part in p.relative_to(root).parts))}


def write_params(dst: Path, mutate: Any = None) -> Path:
    """The micro profile as `dst/params.yaml`, optionally changed by `mutate(dict)`."""
    data = yaml.safe_load(MICRO.read_text())
    if mutate is not None:
        mutate(data)
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def dialogue(*turns: str) -> str:
    """The HH-RLHF format: alternating Human / Assistant turns, each after a blank line."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def write_raw(root: Path, *, hh_mismatched: bool = False, n: int = 30) -> None:
    """Small raw IMDB + HH files in the shipped layout; `hh_mismatched` makes every HH pair unusable."""
    for split in ("train", "test"):
        write_gz(root / f"data/raw/imdb/imdb_{split}.jsonl.gz",
                 [{"text": f"Review {i}: a {'good' if i % 2 else 'bad'} film, really.", "label": i % 2} for i in range(n)])
    for subset in ("helpful-base", "harmless-base"):
        rows = [{"chosen": dialogue(f"question {i}?", f"Helpful answer {i}."),
                 "rejected": dialogue(f"{'other ' if hh_mismatched else ''}question {i}?", f"Rude answer {i}.")} for i in range(n)]
        write_gz(root / f"data/raw/hh-rlhf/{subset}/test.jsonl.gz", rows)


def hh_pairs(n: int) -> list[dict[str, Any]]:
    """Prepared hh rows (the contract of data/prepared/hh/*.jsonl)."""
    prompt = dialogue("How do I bake bread?") + "\n\nAssistant:"
    return [{"id": f"hh-helpful-base-{i:05d}", "prompt": prompt, "chosen": f" Mix flour and water {i}.",
             "rejected": f" No. {i}", "subset": "helpful-base"} for i in range(n)]


_SHARED: dict[str, Any] = {}


def shared(name: str, build: Callable[[], Any]) -> Any:
    """Build once per test process, however many modules import the fixture that asks."""
    if name not in _SHARED:
        _SHARED[name] = build()
    return _SHARED[name]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for every CLI run of the suite: creating a store costs ~10 s on 2 cores."""
    return shared("mlflow_uri", lambda: f"sqlite:///{tmp_path_factory.mktemp('rel_mlflow') / 'mlflow.db'}")


@pytest.fixture()
def project(tmp_path: Path, mlflow_uri: str) -> tuple[Path, dict[str, str]]:
    """(an empty project dir with the micro params.yaml, the env pointing MLflow at the shared store)."""
    write_params(tmp_path)
    return tmp_path, {"MLFLOW_TRACKING_URI": mlflow_uri}


def sh(args: list[str], cwd: Path, timeout: float = 600, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=clean_env(env), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def copy_project(dst: Path) -> Path:
    """A fresh-clone-like copy (tracked + untracked-not-ignored files) with the micro params, as a
    new git repo — the same recipe as tests/test_e2e.py::copy_project."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\n")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    shutil.copy2(MICRO, dst / "params.yaml")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    sh(["git", "init", "-q"], dst)
    sh([*git, "add", "-A"], dst)
    sh([*git, "commit", "-qm", "init"], dst)
    return dst


CHEAP_TARGETS = ["contrastive@vader", "contrastive@hh"]  # + prepare@vader, prepare@hh, their upstream


class DvcProjects:
    """Two independent copies of the project (`a`, `b`), each after `dvc repro` of CHEAP_TARGETS.

    `lock` / `reports` hold each copy's dvc.lock and reports/runs/**.json as they were right after
    that repro (later tests may re-run stages in `a`).
    """

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.env = env
        # b is cloned from a before anything runs: the source tree may change while a runs
        self.a = copy_project(base / "a")
        self.b = Path(shutil.copytree(self.a, base / "b", symlinks=True))
        self.lock: dict[str, str] = {}
        self.reports: dict[str, dict[str, bytes]] = {}
        for name, proj in (("a", self.a), ("b", self.b)):
            self.repro(proj, CHEAP_TARGETS)
            self.lock[name] = (proj / "dvc.lock").read_text()
            self.reports[name] = {k: v for k, v in snapshot_bytes(proj / "reports" / "runs").items() if k.endswith(".json")}

    def repro(self, proj: Path, targets: list[str]) -> None:
        sh([str(BIN / "dvc"), "repro", *targets], proj, env=self.env)


@pytest.fixture(scope="session")
def dvc_projects(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> DvcProjects:
    def build() -> DvcProjects:
        base = tmp_path_factory.mktemp("rel_dvc")
        (base / "a").mkdir()
        return DvcProjects(base, {"MLFLOW_TRACKING_URI": mlflow_uri})

    return shared("dvc_projects", build)
