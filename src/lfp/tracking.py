"""MLflow tracking: one run per stage instance, named `stage@model-task`.

Why: the numbers a stage writes to its DVC metrics JSON and the numbers in MLflow must be the
same values, so `write_metrics` does both in one call. The tracking URI defaults to a local sqlite
file (offline); MLFLOW_TRACKING_URI overrides it. An unreachable server fails fast naming the URI
rather than silently dropping metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lfp import io
from lfp.errors import BackendError

_SECRET_MARKERS = ("key", "token", "secret", "password")


def project_root() -> Path:
    """The DVC project root: `dvc exp run` may execute stages in a temp copy, but sets DVC_ROOT
    to the real repo, so local MLflow data lands in one place for every experiment."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a local sqlite file `mlflow.db` at the project root (offline)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def pipeline_id(params_file: str | os.PathLike[str] | None = None) -> str:
    """One pipeline execution = one code version x one params file content (x one DVC experiment).

    Every stage run of that execution becomes a child of the run named `pipeline@<id>`.
    """
    import hashlib

    path = Path(params_file or os.environ.get("LFP_PARAMS") or "params.yaml")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8] if path.is_file() else "noparams"
    exp = os.environ.get("DVC_EXP_NAME", "")
    return f"{git_commit()[:8]}-{digest}" + (f"-{exp}" if exp else "")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a (possibly nested) metrics mapping, flattened."""
    out = {}
    for key, value in flatten(metrics).items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def _is_secret_name(name: str) -> bool:
    low = name.lower()
    # `api_key_env` holds the *name* of an environment variable, not a secret.
    return any(m in low for m in _SECRET_MARKERS) and not low.endswith("_env")


class StageRun:
    """Handle to the active MLflow run of one stage instance."""

    def __init__(self, mlflow_module: Any, run: Any) -> None:
        self._mlflow = mlflow_module
        self.run = run
        self.run_id: str = run.info.run_id

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any client failure becomes one clear line
            raise BackendError(f"MLflow at {tracking_uri()}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = numeric_metrics(metrics)
        if values:
            self._call(self._mlflow.log_metrics, values, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call(self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._call(self._mlflow.log_artifact, str(path), artifact_path=artifact_path)

    def write_metrics(self, path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
        """Write the DVC metrics JSON and log the same numbers to MLflow."""
        io.write_json(path, dict(metrics))
        self.log_metrics(metrics)


def _parent_run_id(client: Any, experiment_id: str, pid: str) -> str:
    """Find or create the parent run `pipeline@<pid>` that groups this execution's stage runs."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.pipeline = '{pid}' and tags.kind = 'pipeline'", max_results=1
    )
    if found:
        return found[0].info.run_id
    parent = client.create_run(
        experiment_id,
        run_name=f"pipeline@{pid}",
        tags={"pipeline": pid, "kind": "pipeline", "git_commit": git_commit(), "dvc_exp": os.environ.get("DVC_EXP_NAME", "")},
    )
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    experiment: str,
    model: str | None = None,
    task: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> Iterator[StageRun]:
    """Open one MLflow run for a stage instance; tags model/task/stage/commit and logs params."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    uri = tracking_uri()
    name = stage + (f"@{model}-{task}" if model and task else f"@{model or task}" if (model or task) else "")
    if source is not None:  # the base / fine-tuned branch of a stage: `sae@tiny-vader-base`
        name += f"-{source}"
        tags = {**(tags or {}), "source": source}
    try:
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
                location = (project_root() / "mlartifacts").as_uri()
            client.create_experiment(experiment, artifact_location=location)
        exp_id = mlflow.set_experiment(experiment).experiment_id
        parent = _parent_run_id(client, exp_id, pipeline_id())
        run = mlflow.start_run(run_name=name, tags={"mlflow.parentRunId": parent, "pipeline": pipeline_id()})
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"MLflow at {uri}: cannot start a run ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    handle = StageRun(mlflow, run)
    status = "FAILED"
    try:
        base_tags = {
            "stage": stage,
            "model": model or "",
            "task": task or "",
            "git_commit": git_commit(),
            "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
            "kind": "stage",
        }
        handle.set_tags({**base_tags, **dict(tags or {})})
        if params:
            flat = {k: v for k, v in flatten(params).items() if not _is_secret_name(k)}
            # MLflow caps param values at 6000 characters.
            handle._call(mlflow.log_params, {k: str(v)[:6000] for k, v in flat.items()})
        yield handle
        status = "FINISHED"
    finally:
        with contextlib.suppress(Exception):
            mlflow.end_run(status=status)
