"""Where the MLflow store is, and keeping a local sqlite store sound: deleted mid-run, copied to
another folder, its artifacts kept beside it.

Why its own module: these are the store's facts (a path, an experiment's artifact location), not
a run's; `lfp mlflow-sync` and the stage runs (lfp.core.tracking) both need them.

A local sqlite store records its artifact folder as the relative path `mlartifacts`, read against
the folder holding `mlflow.db` (so a copied or moved project keeps working); `mlflow ui` must be
started in that folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lfp.core.errors import BackendError
from lfp.core.secrets import redact_url

ARTIFACTS_DIR = "mlartifacts"  # local artifacts live at <folder of mlflow.db>/mlartifacts
# Marks the experiment as classic ML (not GenAI) for MLflow UIs that choose the view by this tag.
# MLflow 3.17's UI ignores it and opens the GenAI view unless the URL says
# `?workflowType=machine_learning` (or the sidebar's "Model training" switch): lfp.core.mlflow_sync.ui_hint.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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


def forget_cached_store(db: Path) -> None:
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
            forget_cached_store(self.path)
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
