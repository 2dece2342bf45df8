"""MLflow tracking: one run per stage instance, named `stage@model-task[-source]`.

Why: the numbers a stage writes to its DVC metrics JSON and the numbers in MLflow must be the
same values, so `write_metrics` does both in one call. The tracking URI defaults to a local sqlite
file (offline); MLFLOW_TRACKING_URI overrides it. An unreachable server fails fast naming the URI
rather than silently dropping metrics.

Where the params go: the parent run `pipeline@<id>` of an execution holds every leaf of the params
file (flattened with dots: `finetune.vader.max_new_tokens`), and each stage run holds the sections
its stage reads. Secrets never go: not by name (`api_key`, `password`, `*token`, ...), not by value
(the value of the variable named by `llm.api_key_env`, or of any secret-looking environment
variable), and URLs are shown only through `lfp.llm.redact_url`.

Comparing one stage across models x tasks: every stage run is tagged `kind=stage`, `stage`,
`model`, `task`, `source` (and `pipeline`), so `tags.stage = 'probe'` in `mlflow.search_runs` or the
UI's search box lists those runs (docs/reliability.md, "Comparing one stage across runs").
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lfp import io
from lfp.errors import BackendError
from lfp.llm import redact, redact_url, url_secrets

# MLflow's limits (mlflow.utils.validation): a param value, a tag value, a key.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_ARTIFACT = "params/params.json"  # the full value of every param too long for MLflow
ARTIFACTS_DIR = "mlartifacts"  # local artifacts live at <project root>/mlartifacts
# Environment variables that hold keys whatever params say (plus the one `llm.api_key_env` names).
KNOWN_KEY_ENVS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN",
                  "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")
_SECRET_WORDS = ("secret", "password", "passwd", "passphrase", "authorization", "credential", "apikey",
                 "api_key", "private_key", "access_key", "bearer")
MIN_SECRET_LEN = 8  # shorter values ("1", "true") of secret-looking variables are not keys
_BAD_KEY_CHARS = re.compile(r"[^\w.\- :]")  # MLflow accepts [/\w.\- :]; '/' can make two keys alias
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


def project_root() -> Path:
    """The DVC project root: `dvc exp run` may execute stages in a temp copy, but sets DVC_ROOT
    to the real repo, so local MLflow data lands in one place for every experiment."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a local sqlite file `mlflow.db` at the project root (offline)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def shown_uri() -> str:
    """The tracking URI as it may appear in a message (a `user:pass@` or `?token=` redacted)."""
    return redact_url(tracking_uri())


def current_params_file() -> Path:
    """The params file of this execution: $LFP_PARAMS or ./params.yaml (what `pipeline_id` hashes)."""
    return Path(os.environ.get("LFP_PARAMS") or "params.yaml")


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


# --------------------------------------------------------------------------------------------
# secrets: by name and by value
# --------------------------------------------------------------------------------------------


def is_secret_name(name: str) -> bool:
    """True for a param (or environment variable) name that holds a credential.

    By what the name says, not by substring: `llm.api_key`, `hf_token`, `access_token`, `secret`,
    `db.password`, `authorization` are secrets; `max_new_tokens`, `context_tokens`,
    `tokenizer_texts` are not. A part ending in `_env` (`llm.api_key_env`) names an environment
    variable and is not itself a secret; its variable's value is (see `secret_values`).
    """
    for part in name.lower().replace("-", "_").split("."):
        if part.endswith("_env"):
            continue
        words = part.split("_")
        if part in ("key", "auth") or part.endswith("token") or "auth" in words:
            return True
        if any(word in part for word in _SECRET_WORDS):
            return True
    return False


_is_secret_name = is_secret_name  # the old private name


def secret_values(*flat_params: Mapping[str, Any]) -> set[str]:
    """Values that must never be logged: those of KNOWN_KEY_ENVS, of every environment variable
    named by a `*_env` param (e.g. `llm.api_key_env`), and of every secret-looking variable."""
    names = set(KNOWN_KEY_ENVS)
    for flat in flat_params:
        names.update(str(v) for k, v in flat.items() if k.lower().endswith("_env") and isinstance(v, str) and v)
    names.update(k for k in os.environ if is_secret_name(k))
    values = {os.environ.get(n, "").strip() for n in names}
    return {v for v in values if len(v) >= MIN_SECRET_LEN} | set(url_secrets(tracking_uri()))


def _param_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:MAX_KEY]


def clean_params(flat: Mapping[str, Any], secrets: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(params fit for MLflow, full values of the ones cut to MAX_PARAM_VALUE).

    Drops secret names and values equal to a secret; redacts URLs and secrets inside other values;
    a value longer than MLflow's cap (a long list) is cut, with a pointer to PARAMS_ARTIFACT.
    """
    out: dict[str, str] = {}
    full: dict[str, str] = {}
    for key, value in flat.items():
        text = str(value)
        if is_secret_name(key) or text.strip() in secrets:
            continue
        text = redact(text, secrets)
        name = _param_key(key)
        if len(text) > MAX_PARAM_VALUE:
            full[name] = text
            note = f" ...[{len(text)} chars; full value in artifact {PARAMS_ARTIFACT}]"
            text = text[: MAX_PARAM_VALUE - len(note)] + note
        out[name] = text
    return out, full


def _log_full_values(client: Any, run_id: str, full: Mapping[str, str]) -> None:
    """The untruncated values of cut params, as a JSON artifact of the run."""
    if not full:
        return
    with tempfile.TemporaryDirectory(prefix="lfp-params-") as tmp:
        path = Path(tmp) / Path(PARAMS_ARTIFACT).name
        path.write_text(json.dumps(dict(full), indent=2, sort_keys=True), encoding="utf-8")
        client.log_artifact(run_id, str(path), artifact_path=str(Path(PARAMS_ARTIFACT).parent))


def read_params_file(path: Path | None = None) -> dict[str, Any]:
    """The params file as plain data ({} when missing or unreadable: the CLI validated it already)."""
    import yaml

    p = path or current_params_file()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------
# the local store: deleted mid-run, copied to another folder
# --------------------------------------------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (None for servers, :memory: and other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///"):].partition("?")[0]
    if not raw or raw == ":memory:":
        return None
    return Path(unquote(raw)).resolve()


def _local_path(location: str) -> Path | None:
    """The folder of a local artifact location (`file:///...` or a plain path); None if remote."""
    if location.startswith("file:"):
        return Path(unquote(urlsplit(location).path))
    if "://" not in location:
        return Path(location)
    return None


def _forget_cached_store(db: Path) -> None:
    """MLflow keeps one engine (with pooled connections) per sqlite URI for the whole process; after
    the file vanished, that engine still points at the deleted file ("attempt to write a readonly
    database"). Drop it, and the cached store objects, so the next run opens (and creates) the
    file anew. Best effort: these caches are MLflow internals (MLflow 3: the store registry's
    lru_cache and SqlAlchemyStore._engine_map)."""
    with contextlib.suppress(Exception):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for key in [k for k in SqlAlchemyStore._engine_map if sqlite_path(k) == db]:
            SqlAlchemyStore._engine_map.pop(key).dispose()
    with contextlib.suppress(Exception):
        from mlflow.tracking._tracking_service import utils as service_utils

        service_utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()


class StoreGuard:
    """Notices that the sqlite file of the run's store was deleted or replaced during the stage.

    `check()` raises one BackendError line naming the store. It runs before every MLflow call of
    the stage and before every atomic output write (io.commit_check), so a stage whose history
    is gone fails without publishing (more) outputs; the next run creates a fresh store.
    """

    def __init__(self, uri: str) -> None:
        self.path = sqlite_path(uri)
        self.ident = self._ident()
        self.lost = False

    def _ident(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def check(self) -> None:
        if self.path is None or self.ident is None:
            return
        if self._ident() != self.ident:
            self.lost = True
            _forget_cached_store(self.path)
            raise BackendError(
                f"MLflow store {self.path}: deleted or replaced while the stage ran, so this run's history "
                f"is lost; the stage stopped before writing further outputs. Re-run it: a new store is created"
            )


def _relocate_copied_store(db: Path, experiment: str, root: Path) -> None:
    """A project copied (or moved) with its `mlflow.db` still points its artifact folder at the
    original project: MLflow stores absolute paths. Point the experiment and its runs at
    `<this root>/mlartifacts` instead, so a copy never writes into the original.

    Only for a sqlite store inside this project whose experiment uses our layout
    (`<some root>/mlartifacts`); any other location outside the project is refused in `_check_location`.
    """
    if not db.is_file():
        return
    new = (root / ARTIFACTS_DIR).as_uri()
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "experiments" not in tables:
                return
            row = con.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
            if row is None or not row[1]:
                return
            exp_id, old = row
            old_path = _local_path(old)
            if old_path is None or old_path.name != ARTIFACTS_DIR or old_path.resolve() == (root / ARTIFACTS_DIR).resolve():
                return
            if old_path.resolve().is_relative_to(root):
                return
            prefix = old.rstrip("/") + "/"
            with con:  # one transaction
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
                for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                    # names from this fixed list, never from input; skipped where a schema lacks them
                    columns = {r[1] for r in con.execute(f"PRAGMA table_info({table})")} if table in tables else set()
                    if {column, "experiment_id"} <= columns:
                        con.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE experiment_id = ? AND substr({column}, 1, ?) = ?",
                            (new + "/", len(prefix) + 1, exp_id, len(prefix), prefix),
                        )
    except sqlite3.Error as exc:
        raise BackendError(f"MLflow store {db}: cannot read it ({exc})") from None
    logging.getLogger(__name__).warning(
        "MLflow store %s was copied from another folder: its artifacts now go to %s, not %s", db, new, redact_url(old)
    )


def _check_location(uri: str, experiment: Any, root: Path) -> None:
    """Refuse a local store inside this project whose artifacts would land outside it."""
    db = sqlite_path(uri)
    if db is None or not db.is_relative_to(root):
        return  # a server, or a store the user shares on purpose: its artifact root is theirs
    where = _local_path(experiment.artifact_location or "")
    if where is not None and not where.resolve().is_relative_to(root):
        raise BackendError(
            f"MLflow store {db}: experiment '{experiment.name}' keeps its artifacts in {where}, outside this "
            f"project ({root}); move that store away or set MLFLOW_TRACKING_URI"
        )


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


class StageRun:
    """Handle to the active MLflow run of one stage instance."""

    def __init__(self, mlflow_module: Any, run: Any, guard: StoreGuard | None = None, secrets: set[str] | None = None) -> None:
        self._mlflow = mlflow_module
        self.run = run
        self.run_id: str = run.info.run_id
        self._guard = guard
        self._secrets = secrets or set()

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
        clean = {_param_key(k): redact(str(v), self._secrets)[:MAX_TAG_VALUE] for k, v in tags.items()}
        self._call(self._mlflow.set_tags, clean)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._call(self._mlflow.log_artifact, str(path), artifact_path=artifact_path)

    def write_metrics(self, path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
        """Log the numbers to MLflow, then write the same numbers to the DVC metrics JSON (in this
        order: a run that cannot be recorded leaves no metrics file claiming it succeeded)."""
        self.log_metrics(metrics)
        io.write_json(path, dict(metrics))


def _parent_run_id(client: Any, experiment_id: str, pid: str, params: Mapping[str, str] | None = None,
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
        _log_full_values(client, run_id, {k: v for k, v in (full or {}).items() if k not in have})
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
    """Open one MLflow run for a stage instance; tags stage/model/task/source/commit and logs params.

    The stage's `params` go on its run; every leaf of the params file goes on the `pipeline@<id>`
    parent. Failures of the store become one BackendError line naming it.
    """
    since = (time.perf_counter(), time.process_time())
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    uri = tracking_uri()
    root = project_root()
    name = stage + (f"@{model}-{task}" if model and task else f"@{model or task}" if (model or task) else "")
    if source is not None:  # the base / fine-tuned branch of a stage: `sae@tiny-vader-base`
        name += f"-{source}"
    file_flat = flatten(read_params_file())
    stage_flat = flatten(params or {})
    secrets = secret_values(file_flat, stage_flat)
    parent_params, parent_full = clean_params(file_flat, secrets)
    db = sqlite_path(uri)
    try:
        if db is not None and db.is_relative_to(root):
            _relocate_copied_store(db, experiment, root)
        if db is not None and not db.exists():
            _forget_cached_store(db)  # a store deleted since this process last used it: start afresh
        # what mlflow.set_tracking_uri sets too (so subprocesses inherit it); the API call itself is
        # skipped when it would change nothing, as it resets the tracer provider, which imports
        # OpenTelemetry's SDK (~0.2 s per stage process; lfp records no traces)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        if mlflow.get_tracking_uri() != uri:
            mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
                location = (root / ARTIFACTS_DIR).as_uri()
            client.create_experiment(experiment, artifact_location=location)
            exp = client.get_experiment_by_name(experiment)
        _check_location(uri, exp, root)
        exp_id = mlflow.set_experiment(experiment).experiment_id
        pid = pipeline_id()
        parent = _parent_run_id(client, exp_id, pid, parent_params, parent_full)
        run = mlflow.start_run(run_name=name, tags={"mlflow.parentRunId": parent, "pipeline": pid})
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001
        detail = redact(str(exc).splitlines()[0] if str(exc) else "", secrets)[:200]
        raise BackendError(f"MLflow at {shown_uri()}: cannot start a run ({type(exc).__name__}: {detail})") from None
    guard = StoreGuard(uri)
    handle = StageRun(mlflow, run, guard, secrets)
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
        }
        all_tags = {**base_tags, **dict(tags or {})}
        if source is not None:  # the base / fine-tuned axis wins over a stage's own `source` tag
            all_tags["source"] = source
        handle.set_tags(all_tags)
        if stage_flat:
            logged, full = clean_params(stage_flat, secrets)
            handle._call(mlflow.log_params, logged)
            if full:
                handle._call(_log_full_values, mlflow.MlflowClient(), handle.run_id, full)
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
        _add_overhead("close", since)
