"""End-to-end: the real `dvc repro` on the micro profile in a temp copy of the project.

Checks every stage's outputs, that a second `dvc repro` re-runs nothing, that MLflow holds one
finished run per stage instance with the same numbers as the DVC metrics files, and that
`dvc push` + `dvc pull` through a loopback SFTP server (tests/test_remote.py) into a fresh
clone restores everything so `dvc repro` re-runs nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lfp.core import paths
from lfp.core.tracking_params import numeric_metrics

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LFP_", "OPENAI_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def sh(args: list[str], cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


# A second task of an existing kind adds no DAG coverage (unit tests hold toxic's swap / proxy / label
# rule), only ~11 stage instances of process start-up: the end-to-end run leaves it out.
E2E_DROPPED_TASKS = ("toxic",)


def e2e_params() -> dict:
    """The micro profile without E2E_DROPPED_TASKS: every section keyed by task loses those keys."""
    data = yaml.safe_load((ROOT / "tests" / "micro_params.yaml").read_text(encoding="utf-8"))
    data["tasks"] = [t for t in data["tasks"] if t not in E2E_DROPPED_TASKS]
    for section in ("task_specs", "finetune", "contrastive"):
        data[section] = {k: v for k, v in data[section].items() if k not in E2E_DROPPED_TASKS}
    data["explain"]["task_descriptions"] = {k: v for k, v in data["explain"]["task_descriptions"].items()
                                            if k not in E2E_DROPPED_TASKS}
    return data


E2E_TASKS = tuple(e2e_params()["tasks"])


def copy_project(dst: Path) -> Path:
    """A fresh-clone-like copy: tracked + untracked-not-ignored files, micro params, new git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "params.yaml").write_text(yaml.safe_dump(e2e_params(), sort_keys=False), encoding="utf-8")
    sh(["git", "init", "-q"], dst)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dst)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], dst)
    return dst


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    proj = copy_project(tmp_path_factory.mktemp("e2e"))
    sh([str(BIN / "dvc"), "repro"], proj)
    return proj


SOURCES = paths.SOURCES  # activations and SAEs exist once per source (dvc.yaml's `source` axis)


def run_names(proj: Path) -> list[str]:
    """The MLflow run name of every stage instance: `stage@model-task[-source]`, `prepare@task`, ..."""
    params = yaml.safe_load((proj / "params.yaml").read_text())
    models, tasks = params["models"], params["tasks"]
    out = ["report"]
    out += [f"base@{m}" for m in models]
    out += [f"{stage}@{t}" for stage in ("prepare", "contrastive") for t in tasks]
    for stage in ("finetune", "divergence", "probe", "explain", "validate"):
        out += [f"{stage}@{m}-{t}" for m in models for t in tasks]
    for stage in ("activations", "sae"):
        out += [f"{stage}@{m}-{t}-{s}" for m in models for t in tasks for s in SOURCES]
    return out


def test_every_stage_wrote_its_outputs(project):
    for t in E2E_TASKS:
        assert (project / "reports" / "runs" / "prepare" / f"{t}.json").is_file()
    for m_t in (f"tiny-{t}" for t in E2E_TASKS):
        run = project / "reports" / "runs" / m_t
        for name in ("finetune.json", "divergence.json", "divergence.png", "sae-base.json", "sae-finetuned.json", "probe.json",
                     "features.jsonl", "explain.json", "validate.json"):
            assert (run / name).is_file(), f"missing {run / name}"
        assert (project / "models" / "finetuned" / m_t / "model.safetensors").is_file()
        for source in SOURCES:
            saes = list((project / "models" / "sae" / m_t / source).glob("layer*-x1"))
            assert saes and all((d / "cfg.json").is_file() and (d / "sae_weights.safetensors").is_file() for d in saes)
            assert (project / "models" / "sae" / m_t / source / "matching.json").is_file()
            assert (project / "data" / "activations" / m_t / source / "index.json").is_file()
    assert (project / "reports" / "runs" / "tiny-vader" / "probe_plots" / "probe_words.csv").is_file()
    from lfp.report.measure import READOUT_LABELS

    lfp = json.loads((project / "reports" / "runs" / "tiny-vader" / "lfp.json").read_text())
    header = (project / "reports" / "runs" / "tiny-vader" / "lfp_words.csv").read_text().splitlines()[0].split(",")
    for name in READOUT_LABELS:  # every readout the report names: its controls in lfp.json, its column in the CSV
        assert name in lfp["readouts"] and f"readout_{name}_tau" in lfp
        assert name == "learned_value" or f"readout_{name}" in header
    report = (project / "reports" / "report.md").read_text()
    for title in ("Kendall", "Sign accuracy", "Probe accuracy", "ablation", "Feature explanations", "(paper)"):
        assert title in report
    assert (project / "reports" / "report.html").is_file()
    assert (project / "reports" / "headline.json").is_file()


def test_second_repro_reruns_nothing(project):
    out = sh([str(BIN / "dvc"), "repro"], project).stdout
    assert "Running stage" not in out, out
    status = sh([str(BIN / "dvc"), "status"], project).stdout
    assert "up to date" in status


def test_mlflow_has_one_finished_run_per_stage_with_the_dvc_numbers(project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("lfp")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    for name in run_names(project):
        assert name in by_name, f"no MLflow run {name}"
        assert by_name[name].info.status == "FINISHED"
    for m_t in (f"tiny-{t}" for t in E2E_TASKS):
        pairs = [(f"{stage}.json", f"{stage}@{m_t}") for stage in ("finetune", "probe", "validate")]
        pairs += [(f"sae-{s}.json", f"sae@{m_t}-{s}") for s in SOURCES]
        for file_name, run_name in pairs:
            on_disk = numeric_metrics(json.loads((project / "reports" / "runs" / m_t / file_name).read_text()))
            logged = by_name[run_name].data.metrics
            # every DVC metric is in MLflow with the same value (MLflow may hold extra step curves)
            assert {k: logged.get(k) for k in on_disk} == pytest.approx(on_disk), f"{run_name}: MLflow differs from {file_name}"


def test_push_then_pull_into_fresh_clone_reruns_nothing(project, tmp_path):
    """Over SSH/SFTP: a loopback asyncssh server, dvc-ssh, a key set with `dvc remote modify --local`."""
    from test_remote import round_trip

    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], project)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "pipeline outputs"], project)
    times = round_trip(project, tmp_path)  # push, fresh clone, pull, `dvc status` clean, `dvc repro` re-runs nothing
    assert (tmp_path / "clone" / "models" / "finetuned" / "tiny-vader" / "model.safetensors").is_file()
    print(f"loopback SFTP round trip (micro DAG): {times}")


def test_dvc_experiment_sweep_tags_its_mlflow_runs(project):
    """`dvc exp run -S` (the Appendix F l1 sweep) logs to the project's MLflow store, tagged with
    the experiment name. Runs last: it changes params.yaml in the workspace."""
    import mlflow

    sh([str(BIN / "dvc"), "exp", "run", "-n", "l1-sweep-2e-3", "-S", "sae.l1=0.002", "sae@tiny-vader-finetuned"], project)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("lfp")
    runs = mlflow.search_runs([exp.experiment_id], filter_string="tags.dvc_exp = 'l1-sweep-2e-3'", output_format="list")
    names = {r.info.run_name for r in runs}
    assert "sae@tiny-vader-finetuned" in names, names
    (sae_run,) = [r for r in runs if r.info.run_name == "sae@tiny-vader-finetuned"]
    assert sae_run.data.params["sae.l1"] == "0.002"
    shown = sh([str(BIN / "dvc"), "exp", "show", "--no-pager", "--csv"], project).stdout
    assert "l1-sweep-2e-3" in shown
