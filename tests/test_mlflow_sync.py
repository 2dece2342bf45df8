"""`lfp mlflow-sync`: every DVC stage instance gets a finished MLflow run, restored from dvc.lock and
the committed metrics where DVC skipped the stage; a second call logs nothing new.

A small DVC project (the real dvc.yaml shapes: matrix, foreach, metrics, plots folder, a control's
metrics folder, a cached out) is committed with `dvc commit` without running any stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from lfp.core import mlflow_sync
from lfp.core.errors import BackendError
from lfp.core.tracking import stage_run
from lfp.core.tracking_params import numeric_metrics
from lfp.core.tracking_store import forget_cached_store

BIN = Path(sys.executable).parent

PARAMS = {
    "seed": 0, "models": ["tiny"], "tasks": ["vader", "hh"],
    "model_specs": {"tiny": {"source": "tiny"}},
    "task_specs": {"vader": {"kind": "lexicon_rl", "source": "imdb"}, "hh": {"kind": "preference_dpo", "source": "hh-rlhf"}},
    "probe": {"ridge_alpha": 1.0}, "tracking": {"experiment": "lfp"},
}
DVC_YAML = {
    "stages": {
        "contrastive": {"foreach": "${tasks}", "do": {
            "cmd": "lfp contrastive --task ${item}", "params": ["seed"], "outs": ["data/contrastive/${item}.jsonl"]}},
        "probe": {"matrix": {"model": "${models}", "task": "${tasks}"},
                  "cmd": "lfp probe --model ${item.model} --task ${item.task}", "params": ["seed", "probe"],
                  "metrics": [{"reports/runs/${item.model}-${item.task}/probe.json": {"cache": False}}],
                  "plots": [{"reports/runs/${item.model}-${item.task}/probe_plots": {"cache": False}}]},
        "measure": {"matrix": {"model": "${models}", "task": ["vader"]},
                    "cmd": "lfp measure --model ${item.model} --task ${item.task}", "params": ["seed"],
                    "metrics": [{"reports/runs/${item.model}-${item.task}/lfp.json": {"cache": False}},
                                {"reports/runs/${item.model}-${item.task}-planted/lfp.json": {"cache": False}}]},
    }
}
METRICS = {
    "tiny-vader/probe.json": {"kendall_tau": 0.3, "kendall_tau_ci_low": 0.2, "kendall_tau_ci_high": 0.4, "n_test": 8},
    "tiny-hh/probe.json": {"probe_accuracy": 0.8, "probe_accuracy_ci_low": 0.7, "probe_accuracy_ci_high": 0.9, "n_test": 4},
    "tiny-vader/lfp.json": {"learned_value_tau": 0.06, "planted_detected": True, "planted_words": ["good"]},
    "tiny-vader-planted/lfp.json": {"learned_value_tau": 0.5},
}
NAMES = {"contrastive@vader", "contrastive@hh", "probe@tiny-vader", "probe@tiny-hh", "measure@tiny-vader"}


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def committed_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project with dvc.lock written by `dvc commit` (no stage ran) and everything in git."""
    root = tmp_path_factory.mktemp("sync")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    for rel, data in METRICS.items():
        (root / "reports" / "runs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "reports" / "runs" / rel).write_text(json.dumps(data))
    for m_t in ("tiny-vader", "tiny-hh"):
        (root / "reports" / "runs" / m_t / "probe_plots").mkdir(parents=True, exist_ok=True)
        (root / "reports" / "runs" / m_t / "probe_plots" / "fig5_pca.png").write_bytes(b"\x89PNG fake")
    for task in ("vader", "hh"):
        (root / "data" / "contrastive").mkdir(parents=True, exist_ok=True)
        (root / "data" / "contrastive" / f"{task}.jsonl").write_text('{"a": 1}\n')
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run([str(BIN / "dvc"), "commit", "-f", "-q"], root)
    _run([*git, "add", "-A"], root)
    _run([*git, "commit", "-qm", "outputs"], root)
    return root


@pytest.fixture()
def project(committed_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """That project as the working directory, with a fresh MLflow store inside it."""
    store = committed_project / "mlflow.db"
    for leftover in (store, *committed_project.glob("mlartifacts")):
        if leftover.is_file():
            leftover.unlink()
        elif leftover.is_dir():
            import shutil

            shutil.rmtree(leftover)
    forget_cached_store(store)  # MLflow keeps an engine per sqlite URI: the next call opens the new file
    monkeypatch.chdir(committed_project)
    for var in ("LFP_PARAMS", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(committed_project))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    return committed_project


def _runs(project: Path) -> dict:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("lfp")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    return {r.info.run_name: r for r in runs}


def test_every_stage_instance_gets_a_restored_run_and_a_second_call_logs_nothing(project):
    first = mlflow_sync.sync()
    assert set(first.restored) == NAMES and not first.skipped and first.parent_status == "FINISHED"
    runs = _runs(project)
    (parent,) = [r for n, r in runs.items() if n.startswith("pipeline@")]
    stage_runs = {n: r for n, r in runs.items() if not n.startswith("pipeline@")}
    assert set(stage_runs) == NAMES
    for name, r in stage_runs.items():
        assert r.info.status == "FINISHED" and r.data.tags["restored"] == "true"
        assert r.data.tags["pipeline_run_id"] == parent.info.run_id and r.data.tags["dvc_stage"] == name
        assert len(r.data.tags["git_commit"]) == 40 and r.data.params["seed"] == "0"
    probe = stage_runs["probe@tiny-vader"]
    assert probe.data.tags["stage"] == "probe" and probe.data.tags["task_kind"] == "lexicon_rl"
    assert {k: probe.data.metrics[k] for k in METRICS["tiny-vader/probe.json"]} == numeric_metrics(METRICS["tiny-vader/probe.json"])
    assert probe.data.params["probe.ridge_alpha"] == "1.0"
    # the shared names fill one column across task kinds
    hh = stage_runs["probe@tiny-hh"]
    assert (probe.data.metrics["shared.probe_score"], hh.data.metrics["shared.probe_score"]) == (0.3, 0.8)
    # a control's metrics go under its task's prefix, as lfp.measure.controls logs them
    measure = stage_runs["measure@tiny-vader"]
    assert measure.data.metrics["vader-planted.learned_value_tau"] == 0.5 and measure.data.metrics["planted_detected"] == 1.0
    arts = [f.path for f in mlflow.MlflowClient().list_artifacts(probe.info.run_id)]
    assert arts == ["fig5_pca.png", "probe.json"]  # at the root, as MLflow's compare page needs
    assert mlflow.get_experiment_by_name("lfp").artifact_location == "mlartifacts"

    second = mlflow_sync.sync()
    assert second.restored == [] and set(second.present) == NAMES
    assert len(_runs(project)) == len(runs)


def test_a_stage_that_ran_is_not_restored(project):
    with stage_run("probe", experiment="lfp", model="tiny", task="hh"):
        pass
    result = mlflow_sync.sync()
    assert "probe@tiny-hh" in result.present and "probe@tiny-hh" not in result.restored
    runs = mlflow.search_runs(experiment_names=["lfp"], filter_string="tags.dvc_stage = 'probe@tiny-hh'", output_format="list")
    assert len(runs) == 1 and "restored" not in runs[0].data.tags


def test_a_metrics_file_that_differs_from_dvc_lock_is_not_restored(project):
    path = project / "reports" / "runs" / "tiny-hh" / "probe.json"
    before = path.read_text()
    try:
        path.write_text(json.dumps({"probe_accuracy": 0.1}))
        result = mlflow_sync.sync()
    finally:
        path.write_text(before)
    assert "probe@tiny-hh" not in result.restored, result
    assert any(s.startswith("probe@tiny-hh: ") and "differs from dvc.lock" in s for s in result.skipped)


def test_a_failed_stage_run_fails_the_parent_until_it_reruns(project):
    with pytest.raises(RuntimeError):
        with stage_run("probe", experiment="lfp", model="tiny", task="vader"):
            raise RuntimeError("boom")
    result = mlflow_sync.sync()  # the committed outputs do not hide this execution's failure
    assert result.parent_status == "FAILED" and "probe@tiny-vader" not in result.restored
    assert any(s.startswith("probe@tiny-vader: its newest run in this execution FAILED") for s in result.skipped)
    time.sleep(0.01)
    with stage_run("probe", experiment="lfp", model="tiny", task="vader"):
        pass
    (parent,) = [r for n, r in _runs(project).items() if n.startswith("pipeline@")]
    assert parent.info.status == "FINISHED"


def test_cli_prints_a_summary(project, capsys):
    from lfp.cli import main

    assert main(["mlflow-sync", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would restore {len(NAMES)} stage run(s)" in out and "workflowType=machine_learning" in out
    assert main(["mlflow-sync"]) == 0 and main(["mlflow-sync"]) == 0
    assert "restored 0 stage run(s), 5 already logged" in capsys.readouterr().out


def test_check_fails_fast_on_a_server_that_is_down(monkeypatch, capsys):
    """What `make repro` runs first, and what to run before `dvc exp run -S` (which edits params.yaml)."""
    from lfp.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"MLflow at http://127.0.0.1:9 does not answer"):
        mlflow_sync.check_store()
    assert main(["mlflow-sync", "--check"]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not answer" in err


def test_parse_command():
    assert mlflow_sync.parse_command("lfp sae --model tiny --task hh --source base") == (
        "sae", {"model": "tiny", "task": "hh", "source": "base"})
    assert mlflow_sync.parse_command("lfp report") == ("report", {})
    assert mlflow_sync.parse_command("python bench.py --model x", "bench@x") == ("bench", {})


def test_dvc_exp_run_against_a_server_that_is_down_and_the_documented_recovery(tmp_path):
    """`dvc exp run -S` writes the new value into params.yaml, the stage fails on the MLflow server,
    DVC leaves params.yaml edited (and git's index blind to it); the stage's error names the recovery,
    which restores params.yaml. `lfp mlflow-sync --check` fails first, before DVC edits anything."""
    root = tmp_path / "exp"
    root.mkdir()
    (root / "params.yaml").write_text("seed: 0\n")
    (root / "stage.py").write_text("from lfp.core.tracking import stage_run\nwith stage_run('prepare', experiment='lfp'):\n    pass\n")
    cmd = f"{sys.executable} stage.py"
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {"cmd": cmd, "params": ["seed"], "outs": ["o.txt"]}}}))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run([*git, "add", "-A"], root)
    _run([*git, "commit", "-qm", "init"], root)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    env.pop("DVC_ROOT", None)
    check = subprocess.run([str(BIN / "lfp"), "mlflow-sync", "--check"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 2 and "does not answer" in check.stderr
    proc = subprocess.run([str(BIN / "dvc"), "exp", "run", "-S", "seed=7"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "cannot start a run" in out, out[-2000:]
    assert (root / "params.yaml").read_text() == "seed: 7\n"  # what DVC leaves behind
    assert "touch params.yaml && git checkout -- params.yaml && dvc checkout" in out
    subprocess.run("touch params.yaml && git checkout -- params.yaml", shell=True, cwd=root, check=True, timeout=60)
    assert (root / "params.yaml").read_text() == "seed: 0\n"


def test_a_folder_without_a_dvc_project_is_one_line(tmp_path, monkeypatch, capsys):
    from lfp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["mlflow-sync"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lfp mlflow-sync: error: {tmp_path / 'dvc.yaml'}: cannot read the stages") and err.count("\n") == 1
