"""Against a real `mlflow server` on 127.0.0.1 (sqlite backend): a stage run through the CLI logs
its metrics, and they read back over REST equal to the DVC metrics file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lfp.core.tracking_params import numeric_metrics

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, payload: dict | None = None) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read().decode()
    return json.loads(body) if body.strip().startswith("{") else {"text": body}


LOCAL_SCRIPT = """
from pathlib import Path
from lfp.core.tracking import stage_run
Path("note.txt").write_text("from a local run")
with stage_run("report", experiment="lfp-local") as run:
    run.log_artifact("note.txt")
print(run.run_id)
"""


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's folder: its sqlite store already holds a run lfp logged locally (artifact paths
    stored relative to this folder, as in a project's mlflow.db), started from that folder."""
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def local_run_id(server_dir: Path) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{server_dir / 'server.db'}", "DVC_ROOT": str(server_dir)}
    proc = subprocess.run([sys.executable, "-c", LOCAL_SCRIPT], cwd=server_dir, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def mlflow_server(server_dir, local_run_id):
    """One `mlflow server` for this module (its start costs ~30 s on 2 cores)."""
    tmp_path = server_dir
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--default-artifact-root", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,  # setsid: own process group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if "OK" in _get(f"{url}/health").get("text", ""):
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("mlflow server did not answer /health within 120 s")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server leaves worker processes otherwise
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_stage_metrics_read_back_over_rest(mlflow_server, tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "data" / "raw", proj / "data" / "raw")
    shutil.copy2(ROOT / "tests" / "micro_params.yaml", proj / "params.yaml")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(BIN / "lfp"), "prepare", "--task", "vader"], cwd=proj, env=env, check=True, capture_output=True, timeout=300)
    on_disk = json.loads((proj / "reports" / "runs" / "prepare" / "vader.json").read_text())

    exps = _get(f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lfp")
    exp_id = exps["experiment"]["experiment_id"]
    found = _get(f"{mlflow_server}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "filter": "tags.stage = 'prepare'"})
    (run,) = found["runs"]
    logged = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    expected = numeric_metrics(on_disk)
    assert logged == pytest.approx(expected) and logged
    assert run["info"]["status"] == "FINISHED"


def test_a_local_stores_relative_artifact_paths_are_served_from_its_folder(mlflow_server, local_run_id):
    """`mlflow ui` / `mlflow server` started in the folder of a store lfp wrote (artifact paths stored
    as `mlartifacts/...`) lists and serves the run's artifacts."""
    listed = _get(f"{mlflow_server}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={local_run_id}")
    assert listed["root_uri"].startswith("mlartifacts/")
    assert [f["path"] for f in listed["files"]] == ["note.txt"]
    body = _get(f"{mlflow_server}/get-artifact?path=note.txt&run_uuid={local_run_id}")
    assert body == {"text": "from a local run"}
