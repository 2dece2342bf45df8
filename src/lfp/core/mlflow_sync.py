"""`lfp mlflow-sync`: after `dvc repro`, give every DVC stage instance a finished MLflow run.

Why: DVC skips a stage whose outputs are committed and reproduce, so a fresh clone's `dvc repro`
logs nothing for it, and its numbers (learned-value tau, the control verdicts, Tables 6/7) would
be missing from MLflow. For each stage instance of dvc.yaml with no FINISHED run in this
execution's parent (`pipeline@<id>`, tracking.pipeline_id), this logs one run from what dvc.lock
recorded: the metrics files (only where their bytes still match dvc.lock), the stage's params, its
plots and small outputs as artifacts. It is named as the DVC stage, tagged `restored=true` with
the git commit, and belongs to the same `pipeline@<id>` run (tags `pipeline`, `pipeline_run_id`). A second call logs nothing new.

Restored runs hold the final numbers only (no per-step curves: those exist where a stage ran).
`--check` only tells whether the tracking store answers (run it before `dvc exp run -S ...`, which
edits params.yaml before any stage can fail).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfp.core import tracking, tracking_params, tracking_store
from lfp.core.errors import BackendError, LfpError
from lfp.core.secrets import redact
from lfp.core.shared_metrics import shared_metrics, shared_sources

MAX_ARTIFACT_BYTES = 20 * 1024 * 1024  # plots and tables; models and caches stay in DVC
MLFLOW_BATCH = 500  # metrics per log_batch call (MLflow accepts 1000)
PARAMS_BATCH = 100  # params per log_batch call (MLflow's limit)
# folder outs whose files the live stage logs at the artifact root (MLflow's compare page compares
# only root-level files); other folders keep their name
ROOT_LEVEL_FOLDERS = ("probe_plots",)


@dataclass
class StageInstance:
    """One DVC stage instance as dvc.yaml + dvc.lock describe it."""

    name: str  # `measure_pairs@tiny-hh`
    command: str  # the lfp subcommand: `measure`
    model: str | None
    task: str | None
    source: str | None
    metrics: list[tuple[Path, str | None]] = field(default_factory=list)  # (file, md5 in dvc.lock)
    artifacts: list[Path] = field(default_factory=list)  # plots and non-cached outs
    params: dict[str, Any] = field(default_factory=dict)  # the params dvc.lock recorded
    locked: bool = False
    task_kind: str | None = None
    model_source: str | None = None


def parse_command(cmd: str, stage: str = "") -> tuple[str, dict[str, str]]:
    """`lfp measure --model tiny --task hh` -> ("measure", {"model": "tiny", "task": "hh"}); a command
    that is not `lfp <stage>` -> (the DVC stage's name before `@`, {})."""
    words = shlex.split(cmd)
    if len(words) < 2 or Path(words[0]).name != "lfp":
        return stage.partition("@")[0], {}
    opts: dict[str, str] = {}
    rest = words[2:]
    for i, word in enumerate(rest):
        if word.startswith("--") and i + 1 < len(rest):
            opts[word[2:]] = rest[i + 1]
    return words[1], opts


def stage_instances(root: Path) -> list[StageInstance]:
    """Every stage instance of the DVC project at `root`, in dvc.yaml order."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return [_instance(stage, root) for stage in repo.index.stages if getattr(stage, "cmd", None)]
    except LfpError:
        raise
    except Exception as exc:  # noqa: BLE001 - DVC's own errors (bad dvc.yaml, no project) become one line
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise LfpError(f"{root / 'dvc.yaml'}: cannot read the stages ({type(exc).__name__}: {detail})") from None


def _instance(stage: Any, root: Path) -> StageInstance:
    command, opts = parse_command(stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd), stage.addressing)
    inst = StageInstance(stage.addressing, command, opts.get("model"), opts.get("task"), opts.get("source"))
    for dep in stage.deps:
        if type(dep).__name__ == "ParamsDependency" and isinstance(dep.hash_info.value, dict):
            inst.params.update(dep.hash_info.value)
    for o in stage.outs:
        path = root / str(o.def_path)
        inst.locked = inst.locked or bool(o.hash_info.value)
        if o.metric:
            inst.metrics.append((path, o.hash_info.value))
        elif o.plot or not o.use_cache:
            inst.artifacts.append(path)
    return inst


def _md5(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()  # noqa: S324 - DVC's content hash, not security
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metric_prefix(path: Path, inst: StageInstance) -> str:
    """Where the live stage logs a metrics file: its own run folder unprefixed, a control's folder
    (`reports/runs/tiny-vader-planted/`) under `vader-planted.` as lfp.measure.controls does."""
    folder = path.parent.name
    if inst.model and inst.task and folder != f"{inst.model}-{inst.task}" and folder.startswith(f"{inst.model}-"):
        return folder[len(inst.model) + 1:] + "."
    return ""


def restored_metrics(inst: StageInstance) -> tuple[dict[str, float], list[str]]:
    """(metrics to log, problems): each metrics file must exist and match dvc.lock byte for byte."""
    values: dict[str, float] = {}
    problems = []
    for path, md5 in inst.metrics:
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if md5 and _md5(path) != md5:
            problems.append(f"{path}: differs from dvc.lock")
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: unreadable ({exc})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path}: not a JSON object")
            continue
        prefix = metric_prefix(path, inst)
        values.update({prefix + k: v for k, v in tracking_params.numeric_metrics(data).items()})
        if not prefix:
            values.update(shared_metrics(inst.command, inst.task_kind, data))
    return values, problems


def describe(inst: StageInstance, params: Mapping[str, Any]) -> None:
    """Fill in the task's kind and the model's source from the params file (tags of the live runs)."""
    task_spec = (params.get("task_specs") or {}).get(inst.task) if inst.task else None
    model_spec = (params.get("model_specs") or {}).get(inst.model) if inst.model else None
    if isinstance(task_spec, dict) and task_spec.get("kind"):
        inst.task_kind = str(task_spec["kind"])
    if isinstance(model_spec, dict) and "source" in model_spec:
        inst.model_source = str(model_spec["source"])


def _artifact_files(inst: StageInstance) -> Iterator[tuple[Path, str | None]]:
    """(file, artifact folder) of the stage's plots and non-cached outs, as the live stage logs them."""
    for path in [*inst.artifacts, *(p for p, _ in inst.metrics)]:
        prefix = metric_prefix(path, inst).rstrip(".") or None
        if path.is_file():
            if path.stat().st_size <= MAX_ARTIFACT_BYTES:
                yield path, prefix
        elif path.is_dir():
            folder = Path("" if path.name in ROOT_LEVEL_FOLDERS else path.name)
            for f in sorted(p for p in path.rglob("*") if p.is_file() and p.stat().st_size <= MAX_ARTIFACT_BYTES):
                sub = str(folder / f.parent.relative_to(path))
                yield f, None if sub == "." else sub


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _logged(client: Any, exp_id: str, pid: str) -> tuple[set[str], set[str]]:
    """(stage instances with a FINISHED run in this execution, those whose newest run FAILED)."""
    runs = client.search_runs([exp_id], filter_string=f"tags.pipeline = '{pid}' and tags.kind = 'stage'",
                              max_results=50000, order_by=["attributes.start_time DESC"])
    newest: dict[str, str] = {}
    finished = set()
    for r in runs:  # newest first
        name = r.data.tags.get("dvc_stage") or r.info.run_name
        newest.setdefault(name, r.info.status)
        if r.info.status == "FINISHED":
            finished.add(name)
    return finished, {n for n, status in newest.items() if status == "FAILED"}


def restore(client: Any, exp_id: str, parent: str, pid: str, inst: StageInstance, values: Mapping[str, float],
            secrets: set[str]) -> str:
    """Log one finished run for `inst` from its committed files; returns its run id."""
    from mlflow.entities import Metric, Param

    commit = tracking.git_commit()
    tags = {
        tracking.PARENT_TAG: parent, "pipeline": pid, "kind": "stage", "stage": inst.command,
        "model": inst.model or "", "task": inst.task or "", "source": inst.source or "", "dvc_stage": inst.name,
        "git_commit": commit, "dvc_exp": os.environ.get("DVC_EXP_NAME", ""), "restored": "true",
        "restored_from": f"dvc.lock + committed outputs at {commit[:12]}",
    }
    if inst.task_kind:
        tags["task_kind"] = inst.task_kind
    if inst.model_source:
        tags["model_source"] = inst.model_source
    if shared := shared_sources(inst.command, inst.task_kind):
        tags["shared_from"] = shared
    run = client.create_run(exp_id, run_name=inst.name, tags=tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        logged, full = tracking_params.clean_params(tracking_params.flatten(inst.params), secrets)
        for chunk in _batches([Param(k, v) for k, v in logged.items()], PARAMS_BATCH):
            client.log_batch(run_id, params=chunk)
        if full:
            tracking_params.log_full_values(client, run_id, full)
        for chunk in _batches([Metric(k, v, now, 0) for k, v in values.items()], MLFLOW_BATCH):
            client.log_batch(run_id, metrics=chunk)
        for path, folder in _artifact_files(inst):
            tracking_store.log_artifact_to(client, run_id, path, folder, run.info.artifact_uri)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


@dataclass
class SyncResult:
    restored: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: why"
    parent_status: str = ""
    experiment_id: str = ""


def sync(root: Path | None = None, dry_run: bool = False) -> SyncResult:
    """Restore a run for every stage instance this execution's parent lacks (see the module doc)."""
    import mlflow

    root = (root or tracking_store.project_root()).resolve()
    params_file = tracking_params.current_params_file()
    params = tracking_params.read_params_file(params_file if params_file.is_absolute() else root / params_file)
    experiment = str(((params.get("tracking") or {}).get("experiment")) or "lfp")
    instances = stage_instances(root)
    for inst in instances:
        describe(inst, params)
    uri = tracking_store.tracking_uri()
    secrets = tracking_params.secret_values(tracking_params.flatten(params))
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    result = SyncResult()
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp_id = tracking_store.experiment_id(client, experiment, uri, root)
        result.experiment_id = exp_id
        pid = tracking.pipeline_id(params_file if params_file.is_absolute() else root / params_file)
        have, failed = _logged(client, exp_id, pid)
        todo = []
        for inst in instances:
            if inst.name in failed:  # this execution's own result: committed files would hide it
                result.skipped.append(f"{inst.name}: its newest run in this execution FAILED (fix it, then `dvc repro`)")
            elif inst.name in have:
                result.present.append(inst.name)
            elif not inst.locked:
                result.skipped.append(f"{inst.name}: not in dvc.lock (never ran)")
            else:
                values, problems = restored_metrics(inst)
                if problems:
                    result.skipped.append(f"{inst.name}: {problems[0]} (run `dvc repro`)")
                else:
                    todo.append((inst, values))
        if dry_run:
            result.restored = [inst.name for inst, _ in todo]
            return result
        parent_params, parent_full = tracking_params.clean_params(tracking_params.flatten(params), secrets)
        parent = tracking.parent_run_id(client, exp_id, pid, parent_params, parent_full)
        for inst, values in todo:
            restore(client, exp_id, parent, pid, inst, values, secrets)
            result.restored.append(inst.name)
        result.parent_status = tracking.settle_parent(client, exp_id, parent, pid)
    except LfpError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        detail = redact(str(exc).splitlines()[0] if str(exc) else "", secrets)[:200]
        raise BackendError(f"MLflow at {tracking_store.shown_uri()}: {type(exc).__name__}: {detail}") from None
    return result


def check_store(timeout_s: float = 10.0) -> str:
    """Raise BackendError unless the tracking store answers a search within about `timeout_s`.

    Run before `dvc exp run -S ...`: DVC writes the new params into params.yaml before the first
    stage opens its MLflow run, and a failed workspace experiment leaves them there."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))
    uri = tracking_store.tracking_uri()
    if tracking_store.sqlite_path(uri) is not None:
        return f"MLflow store {tracking_store.shown_uri()}: local sqlite file"
    logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    import mlflow

    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise BackendError(f"MLflow at {tracking_store.shown_uri()} does not answer ({type(exc).__name__}: {detail}); "
                           f"start it or unset MLFLOW_TRACKING_URI") from None
    return f"MLflow at {tracking_store.shown_uri()}: answers"


def ui_hint(experiment_id: str) -> str:
    """How to open the experiment on its runs: MLflow 3.x's UI opens every experiment in its GenAI
    view unless the URL (or the sidebar's switch, remembered by the browser) asks for machine learning."""
    uri = tracking_store.tracking_uri()
    db = tracking_store.sqlite_path(uri)
    serve = (f"cd {db.parent} && {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri sqlite:///{db.name}" if db is not None
             else f"the server at {tracking_store.shown_uri()}")
    return f"open: {serve}, then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lfp mlflow-sync", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that the tracking store answers")
    ap.add_argument("--dry-run", action="store_true", help="list what would be restored; log nothing")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.check:
            print(check_store())
            return 0
        result = sync(dry_run=args.dry_run)
    except LfpError as exc:
        print(f"lfp mlflow-sync: error: {exc}", file=sys.stderr)
        return 2
    verb = "would restore" if args.dry_run else "restored"
    print(f"lfp mlflow-sync: {verb} {len(result.restored)} stage run(s), {len(result.present)} already logged, "
          f"{len(result.skipped)} skipped" + (f"; parent {result.parent_status}" if result.parent_status else ""))
    for line in result.skipped:
        print(f"  skipped {line}")
    if result.experiment_id:
        print(ui_hint(result.experiment_id))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
