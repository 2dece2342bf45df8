"""MLflow tracking: one run per stage instance, named `stage@model-task[-source]`.

Why: the numbers a stage writes to its DVC metrics JSON and the numbers in MLflow must be the
same values, so `write_metrics` does both in one call. The tracking URI defaults to a local sqlite
file (offline); MLFLOW_TRACKING_URI overrides it. An unreachable server fails fast naming the URI
rather than silently dropping metrics.

Where the params go, and which never do: lfp.core.tracking_params. Where the store is and how a
local one stays sound: lfp.core.tracking_store. The `shared.*` aliases: lfp.core.shared_metrics.

Comparing one stage across models x tasks: every stage run is tagged `kind=stage`, `stage`,
`model`, `task`, `source` (and `pipeline`), so `tags.stage = 'probe'` in `mlflow.search_runs` or the
UI's search box lists those runs (docs/reliability.md, "Comparing one stage across runs").
Each run is named exactly as its DVC stage instance (tag `dvc_stage` too): `measure_pairs@tiny-hh`
runs the `lfp measure` command, so its `stage` tag says `measure` while its name says the DVC stage.

Shared metric names: where two task kinds measure the same quantity under different keys (the probe's
Kendall tau vs its accuracy), the run also gets `shared.<role>` aliases of the same values
(SHARED_METRICS; the DVC metrics files keep their keys), so one stage compares across tasks.

Artifact locations: a local sqlite store records its artifact folder as the relative path
`mlartifacts`, read against the folder holding `mlflow.db` (so a copied or moved project keeps
working); `mlflow ui` must be started in that folder. The `pipeline@<id>` run of an execution (tag
`pipeline_run_id` on each stage run; not MLflow's parent tag, which folds runs away in the UI) ends
FAILED while the newest run of any of its stage instances failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lfp.core import io
from lfp.core.errors import BackendError
from lfp.core.secrets import redact
from lfp.core.shared_metrics import shared_metrics, shared_sources
from lfp.core.tracking_params import (
    MAX_TAG_VALUE,
    clean_params,
    current_params_file,
    flatten,
    log_full_values,
    numeric_metrics,
    param_key,
    read_params_file,
    secret_values,
)
from lfp.core.tracking_store import (
    StoreGuard,
    experiment_id,
    forget_cached_store,
    log_artifact_to,
    project_root,
    shown_uri,
    sqlite_path,
    tracking_uri,
)

# A stage run names its execution's `pipeline@<id>` run by this tag (and `pipeline`), not by MLflow's
# `mlflow.parentRunId`: the UI folds child runs under their parent, even when a search matches only
# the children, so every stage run would sit collapsed. Flat, `Group by` tag `pipeline` regroups them.
PARENT_TAG = "pipeline_run_id"
# Seconds (wall and CPU) this process spent opening and closing its MLflow runs, import of mlflow
# included: the CLI reports them with its start-up timings when $LFP_TIMINGS names a file
# (benchmarks/pipeline.py).
RUN_OVERHEAD = {"mlflow_open_s": 0.0, "mlflow_open_cpu_s": 0.0, "mlflow_close_s": 0.0, "mlflow_close_cpu_s": 0.0}


def _add_overhead(what: str, since: tuple[float, float]) -> tuple[float, float]:
    """Add the wall and CPU seconds since `since` to RUN_OVERHEAD[what]; return now."""
    now = (time.perf_counter(), time.process_time())
    RUN_OVERHEAD[f"mlflow_{what}_s"] += now[0] - since[0]
    RUN_OVERHEAD[f"mlflow_{what}_cpu_s"] += now[1] - since[1]
    return now


def pipeline_id(params_file: str | os.PathLike[str] | None = None) -> str:
    """One pipeline execution = one code version x one params file content (x one DVC experiment).

    Every stage run of that execution becomes a child of the run named `pipeline@<id>`.
    """
    import hashlib

    path = Path(params_file or current_params_file())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8] if path.is_file() else "noparams"
    exp = os.environ.get("DVC_EXP_NAME", "")
    return f"{git_commit()[:8]}-{digest}" + (f"-{exp}" if exp else "")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def settle_parent(client: Any, experiment_id: str, parent_id: str, pid: str) -> str:
    """Set the parent run's status from its execution's stage runs: FAILED while the newest run of
    any stage instance (its `dvc_stage`, else its name) failed, FINISHED otherwise. Returns it."""
    children = client.search_runs([experiment_id], filter_string=f"tags.pipeline = '{pid}' and tags.kind = 'stage'",
                                  max_results=50000, order_by=["attributes.start_time DESC"])
    newest: dict[str, str] = {}
    for run in children:  # newest first
        newest.setdefault(run.data.tags.get("dvc_stage") or run.info.run_name, run.info.status)
    status = "FAILED" if "FAILED" in newest.values() else "FINISHED"
    if client.get_run(parent_id).info.status != status:
        client.set_terminated(parent_id, status)
    return status


class StageRun:
    """Handle to the active MLflow run of one stage instance."""

    def __init__(self, mlflow_module: Any, run: Any, guard: StoreGuard | None = None, secrets: set[str] | None = None) -> None:
        self._mlflow = mlflow_module
        self.run = run
        self.run_id: str = run.info.run_id
        self._guard = guard
        self._secrets = secrets or set()
        self.stage = ""  # the lfp command and the task kind: which SHARED_METRICS roles apply
        self.task_kind: str | None = None

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._guard is not None:
            self._guard.check()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any client failure becomes one clear line
            if self._guard is not None:
                self._guard.check()  # a deleted store explains the failure better than SQLAlchemy
            detail = redact(str(exc).splitlines()[0] if str(exc) else "", self._secrets)[:200]
            raise BackendError(f"MLflow at {shown_uri()}: {type(exc).__name__}: {detail}") from None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = numeric_metrics(metrics)
        if values:
            self._call(self._mlflow.log_metrics, values, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags as strings; URLs redacted and secret values replaced (e.g. `llm_base_url`)."""
        clean = {param_key(k): redact(str(v), self._secrets)[:MAX_TAG_VALUE] for k, v in tags.items()}
        self._call(self._mlflow.set_tags, clean)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._call(log_artifact_to, self._mlflow.MlflowClient(), self.run_id, path, artifact_path, self.run.info.artifact_uri)

    def write_metrics(self, path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
        """Log the numbers to MLflow, then write the same numbers to the DVC metrics JSON (in this
        order: a run that cannot be recorded leaves no metrics file claiming it succeeded). The
        run also gets the `shared.*` aliases of those numbers (SHARED_METRICS)."""
        self.log_metrics({**numeric_metrics(metrics), **shared_metrics(self.stage, self.task_kind, metrics)})
        io.write_json(path, dict(metrics))


def parent_run_id(client: Any, experiment_id: str, pid: str, params: Mapping[str, str] | None = None,
                   full: Mapping[str, str] | None = None) -> str:
    """Find or create the parent run `pipeline@<pid>` that groups this execution's stage runs.

    It carries `params` (every leaf of the params file); a parent made before a key existed
    gets the missing ones. Same pid = same params file content, so values never conflict.
    """
    from mlflow.entities import Param

    found = client.search_runs(
        [experiment_id], filter_string=f"tags.pipeline = '{pid}' and tags.kind = 'pipeline'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        have = found[0].data.params
    else:
        parent = client.create_run(
            experiment_id,
            run_name=f"pipeline@{pid}",
            tags={"pipeline": pid, "kind": "pipeline", "git_commit": git_commit(), "dvc_exp": os.environ.get("DVC_EXP_NAME", "")},
        )
        run_id, have = parent.info.run_id, {}
        client.set_terminated(run_id)
    missing = [Param(k, v) for k, v in (params or {}).items() if k not in have]
    if missing:
        client.log_batch(run_id, params=missing)
        log_full_values(client, run_id, {k: v for k, v in (full or {}).items() if k not in have})
    return run_id


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's own error logging (it prints SQLAlchemy tracebacks) for one call."""
    logger = logging.getLogger("mlflow")
    before = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(before)


def workspace_experiment_recovery() -> str:
    """Under `dvc exp run` in the workspace, DVC wrote the experiment's `-S` values into params.yaml
    before this stage ran and leaves them there when it fails; its git index then still matches
    the edited file, so `git status` looks clean and a plain `git checkout` restores nothing.
    Say how to get params.yaml back ('' outside a workspace experiment). `lfp mlflow-sync --check`
    before `dvc exp run` catches a store that is down before DVC edits anything."""
    if not os.environ.get("DVC_EXP_NAME") or Path.cwd().resolve() != project_root():
        return ""
    return ("; `dvc exp run` left its -S values in params.yaml: `touch params.yaml && git checkout -- params.yaml "
            "&& dvc checkout` restores it and the outputs (next time run `lfp mlflow-sync --check` first)")


def run_name(stage: str, model: str | None = None, task: str | None = None, source: str | None = None) -> str:
    """The DVC stage instance's name: `stage@model-task[-source]`, `prepare@task`, `base@model`, `report`."""
    name = stage + (f"@{model}-{task}" if model and task else f"@{model or task}" if (model or task) else "")
    return name + (f"-{source}" if source is not None else "")  # the base / fine-tuned branch: `sae@tiny-vader-base`


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
    dvc_stage: str | None = None,
) -> Iterator[StageRun]:
    """Open one MLflow run for a stage instance; tags stage/model/task/source/commit and logs params.

    The run is named as the DVC stage instance: `dvc_stage` (e.g. `measure_pairs`, whose command is
    `lfp measure`) replaces `stage` in the name. The stage's `params` go on its run; every leaf of the
    params file goes on the `pipeline@<id>` parent, which ends FAILED when this run fails.
    Failures of the store become one BackendError line naming it.
    """
    since = (time.perf_counter(), time.process_time())
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    uri = tracking_uri()
    root = project_root()
    name = run_name(dvc_stage or stage, model, task, source)
    file_flat = flatten(read_params_file())
    stage_flat = flatten(params or {})
    secrets = secret_values(file_flat, stage_flat)
    parent_params, parent_full = clean_params(file_flat, secrets)
    db = sqlite_path(uri)
    try:
        if db is not None and not db.exists():
            forget_cached_store(db)  # a store deleted since this process last used it: start afresh
        # what mlflow.set_tracking_uri sets too (so subprocesses inherit it); the API call itself is
        # skipped when it would change nothing, as it resets the tracer provider, which imports
        # OpenTelemetry's SDK (~0.2 s per stage process; lfp records no traces)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        if mlflow.get_tracking_uri() != uri:
            mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp_id = experiment_id(client, experiment, uri, root)
        mlflow.set_experiment(experiment_id=exp_id)
        pid = pipeline_id()
        parent = parent_run_id(client, exp_id, pid, parent_params, parent_full)
        run = mlflow.start_run(run_name=name, tags={PARENT_TAG: parent, "pipeline": pid, "dvc_stage": name})
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001
        detail = redact(str(exc).splitlines()[0] if str(exc) else "", secrets)[:200]
        raise BackendError(f"MLflow at {shown_uri()}: cannot start a run ({type(exc).__name__}: {detail})"
                           f"{workspace_experiment_recovery()}") from None
    guard = StoreGuard(uri)
    handle = StageRun(mlflow, run, guard, secrets)
    handle.stage = stage
    # the task's kind: what the stage tagged, else what the params file says (stages opened without
    # lfp.core.stage_context, e.g. finetune, tag none)
    handle.task_kind = str((tags or {}).get("task_kind") or (file_flat.get(f"task_specs.{task}.kind") if task else "") or "") or None
    status = "FAILED"
    try:
        base_tags = {
            "stage": stage,
            "model": model or "",
            "task": task or "",
            "source": source or "",
            "git_commit": git_commit(),
            "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
            "kind": "stage",
            "dvc_stage": name,
        }
        if handle.task_kind:
            base_tags["task_kind"] = handle.task_kind
        if shared := shared_sources(stage, handle.task_kind):
            base_tags["shared_from"] = shared
        all_tags = {**base_tags, **dict(tags or {})}
        if source is not None:  # the base / fine-tuned axis wins over a stage's own `source` tag
            all_tags["source"] = source
        handle.set_tags(all_tags)
        if stage_flat:
            logged, full = clean_params(stage_flat, secrets)
            handle._call(mlflow.log_params, logged)
            if full:
                handle._call(log_full_values, mlflow.MlflowClient(), handle.run_id, full)
        _add_overhead("open", since)
        with io.commit_check(guard.check):
            yield handle
        guard.check()  # the store vanished after the last write: the run was not recorded
        status = "FINISHED"
    finally:
        since = (time.perf_counter(), time.process_time())
        with contextlib.suppress(BackendError):
            guard.check()  # sets guard.lost
        with contextlib.suppress(Exception):
            if guard.lost:
                with _quiet_mlflow():  # only pops the active run: the store to close it in is gone
                    mlflow.end_run(status=status)
            else:
                mlflow.end_run(status=status)
        if not guard.lost:
            with contextlib.suppress(Exception), _quiet_mlflow():  # the stage's result stands either way
                settle_parent(client, exp_id, parent, pid)
        _add_overhead("close", since)
