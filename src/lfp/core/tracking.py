"""MLflow tracking: one run per stage instance, named `stage@model-task[-source]`.

Why: the numbers a stage writes to its DVC metrics JSON and the numbers in MLflow must be the
same values, so `write_metrics` does both in one call. The tracking URI defaults to a local sqlite
file (offline); MLFLOW_TRACKING_URI overrides it. An unreachable server fails fast naming the URI
rather than silently dropping metrics.

Where the params go: the parent run `pipeline@<id>` of an execution holds every leaf of the params
file (flattened with dots: `finetune.vader.max_new_tokens`), and each stage run holds the sections
its stage reads. Secrets never go: not by name (`api_key`, `password`, `*token`, ...), not by value
(the value of the variable named by `llm.api_key_env`, or of any secret-looking environment
variable), and URLs are shown only through `lfp.llm.client.redact_url`.

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

from lfp.core import io
from lfp.core.errors import BackendError
from lfp.core.secrets import redact, redact_url, url_secrets

# MLflow's limits (mlflow.utils.validation): a param value, a tag value, a key.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_ARTIFACT = "params/params.json"  # the full value of every param too long for MLflow
ARTIFACTS_DIR = "mlartifacts"  # local artifacts live at <folder of mlflow.db>/mlartifacts
# Marks the experiment as classic ML (not GenAI) for MLflow UIs that choose the view by this tag.
# MLflow 3.17's UI ignores it and opens the GenAI view unless the URL says
# `?workflowType=machine_learning` (or the sidebar's "Model training" switch): lfp.core.mlflow_sync.ui_hint.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A stage run names its execution's `pipeline@<id>` run by this tag (and `pipeline`), not by MLflow's
# `mlflow.parentRunId`: the UI folds child runs under their parent, even when a search matches only
# the children, so every stage run would sit collapsed. Flat, `Group by` tag `pipeline` regroups them.
PARENT_TAG = "pipeline_run_id"
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
# shared metric names across task kinds
# --------------------------------------------------------------------------------------------

SHARED_PREFIX = "shared."


def _with_ci(alias: str, key: str) -> dict[str, str]:
    return {alias: key, f"{alias}_ci_low": f"{key}_ci_low", f"{alias}_ci_high": f"{key}_ci_high"}


# (stage, task kind) -> {shared role: the kind's own key}. A role is listed only where both kinds
# compute the same quantity; the tag `shared_from` of each run names the keys it was read from.
SHARED_METRICS: dict[tuple[str, str], dict[str, str]] = {
    # the fine-tuning's held-out evidence: sample counts
    ("finetune", "lexicon_rl"): {"eval_n": "eval_prompts", "train_n": "train_prompts"},
    ("finetune", "preference_dpo"): {"eval_n": "eval_pairs", "train_n": "train_pairs"},
    # the probe on triples (the paper's Table 4 / 5 number): score with CI, base-model control,
    # shuffled-label null; the score is Kendall tau (lexicon) or accuracy (preference)
    ("probe", "lexicon_rl"): {
        **_with_ci("probe_score", "kendall_tau"), **_with_ci("probe_score_base_model", "base_control_kendall_tau"),
        "probe_score_shuffled": "shuffled_kendall_tau", "probe_score_shuffled_sd": "shuffled_kendall_tau_sd"},
    ("probe", "preference_dpo"): {
        **_with_ci("probe_score", "probe_accuracy"), **_with_ci("probe_score_base_model", "base_control_probe_accuracy"),
        "probe_score_shuffled": "shuffled_probe_accuracy", "probe_score_shuffled_sd": "shuffled_probe_accuracy_sd"},
    # the validated measurement: how well the fine-tune learned the feedback (learned-value tau vs
    # the lexicon; DPO implicit-reward accuracy), and Kendall tau of held-out probes against that
    # ground truth per source (word-held-out probes; implicit-reward probes)
    ("measure", "lexicon_rl"): {
        **_with_ci("ground_truth_score", "learned_value_tau"),
        **{f"probe_tau_{src}": f"probe_tau_word_heldout_{src}" for src in ("finetuned", "base", "difference")},
        "n_test": "n_words_test", "n_train": "n_words_train"},
    ("measure", "preference_dpo"): {
        **_with_ci("ground_truth_score", "implicit_reward_acc"),
        **{f"probe_tau_{src}": f"reward_probe_tau_{src}" for src in ("finetuned", "base", "difference")},
        "n_test": "n_test", "n_train": "n_train"},
}


def shared_metrics(stage: str, kind: str | None, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The `shared.<role>` aliases of `metrics` for a stage of a task kind (same values, one name
    across kinds); {} for a stage or kind without shared roles."""
    values = numeric_metrics(metrics)
    roles = SHARED_METRICS.get((stage, kind or ""), {})
    return {SHARED_PREFIX + role: values[key] for role, key in roles.items() if key in values}


def shared_sources(stage: str, kind: str | None) -> str:
    """`role=key,...`: what the `shared_from` tag says about a run's aliases ('' without any)."""
    return ",".join(f"{role}={key}" for role, key in SHARED_METRICS.get((stage, kind or ""), {}).items())


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
        log_artifact_to(client, run_id, path, str(Path(PARAMS_ARTIFACT).parent))


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


def resolve_location(location: str, uri: str | None = None) -> str:
    """An artifact location as MLflow's artifact repositories need it: a relative local path (what
    lfp stores) is read against the folder holding the sqlite store, never the working directory."""
    path = _local_path(location)
    db = sqlite_path(uri or tracking_uri())
    if path is not None and not path.is_absolute() and db is not None:
        return str(db.parent / path)
    return location


def log_artifact_to(client: Any, run_id: str, path: str | os.PathLike[str], artifact_path: str | None = None,
                    artifact_uri: str | None = None) -> None:
    """`client.log_artifact`, with a relative artifact location resolved as `resolve_location` says
    (`artifact_uri`: the run's, when the caller knows it)."""
    stored = artifact_uri or client.get_run(run_id).info.artifact_uri
    where = resolve_location(stored)
    if where == stored:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(where).log_artifact(str(path), artifact_path)


def _relocate_copied_store(db: Path, experiment: str, root: Path) -> None:
    """Store the experiment's artifact folder, and its runs', as the relative path `mlartifacts`
    (read against the folder of `mlflow.db`), so a copied or moved project keeps working.

    Rewritten: a location `<folder of mlflow.db>/mlartifacts` (stores made before locations were
    relative), and, for a store inside this project, `<another root>/mlartifacts` outside it (a
    project copied with its store: MLflow stored absolute paths, so runs in the copy wrote into the
    original). Any other location is left alone; `_check_location` refuses one outside the project.
    """
    if not db.is_file():
        return
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
            if old_path is None or not old_path.is_absolute() or old_path.name != ARTIFACTS_DIR:
                return
            own = old_path.resolve() == (db.parent / ARTIFACTS_DIR).resolve()
            copied = db.is_relative_to(root) and not old_path.resolve().is_relative_to(root)
            if not (own or copied):
                return
            prefix = old.rstrip("/") + "/"
            with con:  # one transaction
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (ARTIFACTS_DIR, exp_id))
                for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                    # names from this fixed list, never from input; skipped where a schema lacks them
                    columns = {r[1] for r in con.execute(f"PRAGMA table_info({table})")} if table in tables else set()
                    if {column, "experiment_id"} <= columns:
                        con.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE experiment_id = ? AND substr({column}, 1, ?) = ?",
                            (ARTIFACTS_DIR + "/", len(prefix) + 1, exp_id, len(prefix), prefix),
                        )
    except sqlite3.Error as exc:
        raise BackendError(f"MLflow store {db}: cannot read it ({exc})") from None
    if not own:
        logging.getLogger(__name__).warning(
            "MLflow store %s was copied from another folder: its artifacts now go to %s, not %s",
            db, db.parent / ARTIFACTS_DIR, redact_url(old))


def _check_location(uri: str, experiment: Any, root: Path) -> None:
    """Refuse a local store inside this project whose artifacts would land outside it."""
    db = sqlite_path(uri)
    if db is None or not db.is_relative_to(root):
        return  # a server, or a store the user shares on purpose: its artifact root is theirs
    where = _local_path(resolve_location(experiment.artifact_location or "", uri))
    if where is not None and not where.resolve().is_relative_to(root):
        raise BackendError(
            f"MLflow store {db}: experiment '{experiment.name}' keeps its artifacts in {where}, outside this "
            f"project ({root}); move that store away or set MLFLOW_TRACKING_URI"
        )


def experiment_id(client: Any, experiment: str, uri: str, root: Path) -> str:
    """The id of `experiment` in the store at `uri`, created if missing (a local store keeps its
    artifacts in `mlartifacts` beside it, stored relative), tagged as a classic ML experiment so
    MLflow's UI opens it on its runs; refused if its artifacts would land outside the project."""
    db = sqlite_path(uri)
    if db is not None:
        _relocate_copied_store(db, experiment, root)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if db is not None:
            location = (db.parent / ARTIFACTS_DIR).as_uri()
        elif uri.startswith("file:") or "://" not in uri:
            location = (root / ARTIFACTS_DIR).as_uri()
        client.create_experiment(experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if db is not None:
            _relocate_copied_store(db, experiment, root)
        exp = client.get_experiment_by_name(experiment)
    _check_location(uri, exp, root)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


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
        clean = {_param_key(k): redact(str(v), self._secrets)[:MAX_TAG_VALUE] for k, v in tags.items()}
        self._call(self._mlflow.set_tags, clean)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._call(log_artifact_to, self._mlflow.MlflowClient(), self.run_id, path, artifact_path, self.run.info.artifact_uri)

    def write_metrics(self, path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
        """Log the numbers to MLflow, then write the same numbers to the DVC metrics JSON (in this
        order: a run that cannot be recorded leaves no metrics file claiming it succeeded). The
        run also gets the `shared.*` aliases of those numbers (SHARED_METRICS)."""
        self.log_metrics({**numeric_metrics(metrics), **shared_metrics(self.stage, self.task_kind, metrics)})
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
            _forget_cached_store(db)  # a store deleted since this process last used it: start afresh
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
        parent = _parent_run_id(client, exp_id, pid, parent_params, parent_full)
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
        if not guard.lost:
            with contextlib.suppress(Exception), _quiet_mlflow():  # the stage's result stands either way
                settle_parent(client, exp_id, parent, pid)
        _add_overhead("close", since)
