"""The local MLflow store (`mlflow.db` + `mlartifacts/` at the project root) goes wrong: it is
deleted while a stage runs, or the project is copied with it.

Deleted: the stage stops with one line naming the store before it publishes any (further)
output, prints no SQLAlchemy traceback, and the next run creates a fresh store.
Copied: the copy's runs write their artifacts inside the copy, never into the original folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from rel_helpers import assert_user_error, clean_env, snapshot_bytes, write_params, write_raw

from lfp.core import io
from lfp.core.errors import BackendError
from lfp.core.tracking import stage_run

# `lfp prepare --task vader`, with the store deleted just before the stage writes its outputs
# (prepare reads and validates everything first, then opens its run, then writes).
DELETE_THEN_PREPARE = """
import sys
from pathlib import Path
from lfp import cli
from lfp.core import io

real = io.write_jsonl

def write_jsonl(*args, **kwargs):
    Path("mlflow.db").unlink(missing_ok=True)
    return real(*args, **kwargs)

io.write_jsonl = write_jsonl
sys.exit(cli.main(["prepare", "--task", "vader"]))
"""


def test_store_deleted_while_a_stage_runs_is_one_line_and_no_outputs(tmp_path):
    """Before: the outputs were written, then a SQLAlchemy traceback, exit 2, history lost."""
    root = tmp_path
    write_params(root)
    write_raw(root)
    env = clean_env()
    proc = subprocess.run([sys.executable, "-c", DELETE_THEN_PREPARE], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    db = root / "mlflow.db"
    line = assert_user_error(proc, "prepare", f"MLflow store {db.resolve()}", "deleted or replaced while the stage ran")
    assert "sqlalchemy" not in proc.stderr.lower(), proc.stderr[-3000:]
    assert not (root / "data/prepared/vader").exists() and not (root / "reports").exists(), line
    assert not [p for p in root.rglob(".*.tmp")]
    # the next run creates a new store and records a finished run
    again = subprocess.run([str(Path(sys.executable).parent / "lfp"), "prepare", "--task", "vader"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (root / "data/prepared/vader/train.jsonl").is_file() and (root / "reports/runs/prepare/vader.json").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["lfp"], filter_string="tags.stage = 'prepare'", output_format="list")
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_store_deleted_before_write_metrics_leaves_no_metrics_file(tmp_path, monkeypatch, capfd):
    """In-process: the metrics JSON and every atomic output after the deletion are refused; the
    earlier file stays as it was; MLflow prints no traceback; the same process can start afresh."""
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    io.write_json(tmp_path / "out" / "old.json", {"v": "old"})
    with pytest.raises(BackendError) as info:
        with stage_run("probe", experiment="lfp", model="tiny", task="vader") as run:
            io.write_json(tmp_path / "out" / "before.json", {"v": 1})
            db.unlink()
            with pytest.raises(BackendError):
                io.write_json(tmp_path / "out" / "old.json", {"v": "new"})
            run.write_metrics(tmp_path / "out" / "metrics.json", {"kendall_tau": 0.5})
    msg = str(info.value)
    assert msg.startswith(f"MLflow store {db}: deleted or replaced") and "\n" not in msg
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["before.json", "old.json"]
    assert io.read_json(tmp_path / "out" / "old.json") == {"v": "old"}
    err = capfd.readouterr().err
    assert "Traceback" not in err and "sqlalchemy" not in err.lower(), err[-3000:]
    with stage_run("probe", experiment="lfp", model="tiny", task="vader") as run:
        run.write_metrics(tmp_path / "out" / "metrics.json", {"kendall_tau": 0.5})
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    (r,) = mlflow.search_runs(experiment_names=["lfp"], filter_string="tags.stage = 'probe'", output_format="list")
    assert r.info.status == "FINISHED" and r.data.metrics == {"kendall_tau": 0.5}


def _artifact_run(project: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> str:
    """A stage run in `project` with its default store (no MLFLOW_TRACKING_URI) that logs one artifact."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    monkeypatch.chdir(project)
    (project / "note.txt").write_text(text)
    with stage_run("report", experiment="lfp") as run:
        run.log_artifact(project / "note.txt")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.get_run(run.run_id).info.artifact_uri


@pytest.fixture()
def default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "LFP_PARAMS"):
        monkeypatch.delenv(var, raising=False)


def test_a_copied_project_writes_its_artifacts_inside_the_copy(tmp_path, monkeypatch, default_store):
    """Before: mlflow.db kept `file:///<A>/mlartifacts`, so runs in the copy B wrote into A."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    write_params(a)
    uri_a = _artifact_run(a, monkeypatch, "from A")
    assert uri_a.startswith("mlartifacts/")  # stored relative to the folder of mlflow.db
    assert (a / uri_a / "note.txt").read_text() == "from A"
    shutil.copytree(a, b)
    before = snapshot_bytes(a)
    uri_b = _artifact_run(b, monkeypatch, "from B")
    assert snapshot_bytes(a) == before  # nothing under A was written or changed
    assert (b / uri_b / "note.txt").read_text() == "from B"
    # the runs made in A before the copy now point at the copy's artifacts too
    mlflow.set_tracking_uri(f"sqlite:///{b / 'mlflow.db'}")
    old = [r for r in mlflow.search_runs(experiment_names=["lfp"], output_format="list")
           if r.data.tags.get("stage") == "report" and r.info.artifact_uri != uri_b]
    assert len(old) == 1 and old[0].info.artifact_uri == uri_a and (b / uri_a / "note.txt").read_text() == "from A"
    assert mlflow.get_experiment_by_name("lfp").artifact_location == "mlartifacts"


def test_a_store_whose_artifacts_live_outside_the_project_is_refused(tmp_path, monkeypatch, default_store):
    """An experiment in the project's store whose artifact folder is elsewhere (not our layout):
    one line, nothing written there."""
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{proj / 'mlflow.db'}")
    mlflow.MlflowClient().create_experiment("lfp", artifact_location=elsewhere.as_uri())
    monkeypatch.chdir(proj)
    with pytest.raises(BackendError) as info:
        with stage_run("report", experiment="lfp"):
            pass
    msg = str(info.value)
    assert f"keeps its artifacts in {elsewhere}, outside this project ({proj})" in msg and "\n" not in msg
    assert not elsewhere.exists()


def test_a_shared_store_outside_the_project_keeps_its_artifact_root(tmp_path, monkeypatch, default_store):
    """MLFLOW_TRACKING_URI pointing at another folder's store is a choice: its artifacts stay there."""
    shared, proj = tmp_path / "shared", tmp_path / "proj"
    shared.mkdir()
    proj.mkdir()
    monkeypatch.chdir(shared)
    with stage_run("report", experiment="lfp"):
        pass
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{shared / 'mlflow.db'}")
    monkeypatch.chdir(proj)
    (proj / "note.txt").write_text("x")
    with stage_run("report", experiment="lfp") as run:
        run.log_artifact(proj / "note.txt")
    assert (shared / mlflow.get_run(run.run_id).info.artifact_uri / "note.txt").is_file()  # relative to the store's folder
    assert not os.path.exists(proj / "mlartifacts")
