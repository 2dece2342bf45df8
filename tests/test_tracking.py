"""MLflow tracking: one run per stage instance, same numbers as the DVC metrics file, no secrets."""

import json

import mlflow
import pytest

from lfp.errors import BackendError
from lfp.tracking import numeric_metrics, stage_run


def _runs(uri: str, experiment: str = "lfp-test"):
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="list")


def test_stage_run_logs_tags_params_and_the_same_metrics(mlflow_store, tmp_path):
    metrics_path = tmp_path / "m.json"
    with stage_run("probe", experiment="lfp-test", model="tiny", task="vader",
                   params={"probe": {"alpha": 1.0}, "llm": {"api_key": "sk-SECRET", "api_key_env": "OPENAI_API_KEY"}},
                   tags={"explainer": "offline"}) as run:
        run.write_metrics(metrics_path, {"kendall_tau": 0.25, "n_words": 12, "note": "text", "beats_base": True})
    runs = {r.info.run_name: r for r in _runs(mlflow_store)}
    r = runs["probe@tiny-vader"]
    (parent,) = [x for name, x in runs.items() if name.startswith("pipeline@")]
    assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert r.data.tags["pipeline"] == parent.data.tags["pipeline"]
    assert r.data.tags["model"] == "tiny" and r.data.tags["task"] == "vader" and r.data.tags["stage"] == "probe"
    assert r.data.tags["explainer"] == "offline" and "git_commit" in r.data.tags
    assert r.data.params["probe.alpha"] == "1.0"
    assert "llm.api_key" not in r.data.params and r.data.params["llm.api_key_env"] == "OPENAI_API_KEY"
    on_disk = json.loads(metrics_path.read_text())
    assert r.data.metrics == numeric_metrics(on_disk) == {"kendall_tau": 0.25, "n_words": 12.0, "beats_base": 1.0}
    assert r.info.status == "FINISHED"


def test_failed_stage_marks_run_failed(mlflow_store):
    with pytest.raises(RuntimeError):
        with stage_run("sae", experiment="lfp-test", model="tiny", task="hh"):
            raise RuntimeError("boom")
    (r,) = [x for x in _runs(mlflow_store) if x.info.run_name == "sae@tiny-hh"]
    assert r.info.status == "FAILED"


def test_stage_runs_of_one_execution_share_one_parent(mlflow_store):
    for task in ("vader", "hh"):
        with stage_run("probe", experiment="lfp-test", model="tiny", task=task):
            pass
    runs = _runs(mlflow_store)
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    children = [r for r in runs if r.data.tags.get("kind") == "stage"]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}


def test_unreachable_server_fails_fast_naming_the_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(BackendError, match=r"MLflow at http://127.0.0.1:9"):
        with stage_run("sae", experiment="lfp-test"):
            pass
