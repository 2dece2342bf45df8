"""`lfp prepare --task T`: raw data -> validated, normalized JSONL in data/prepared/T/.

Why: every later stage reads the same small, clean files instead of re-parsing raw data. One stage
instance per task, so adding a task prepares only that task. The task's kind (lfp/tasks/) reads and
validates every raw row *before* anything is written, so a malformed line stops the stage with
`file:line: what` and leaves the previous outputs untouched.

Splits and limits rank ids by a seeded hash, so a row's side of a split depends only on
(seed, id): stable when other rows are added or dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from lfp.core import io, paths
from lfp.core.params import Params, section_dict
from lfp.core.data import prepared_file
from lfp.core.errors import LfpError
from lfp.tasks import kind_of
from lfp.core.tracking import stage_run

log = logging.getLogger(__name__)


def metrics_file(task: str) -> Any:
    return paths.RUN_REPORTS / "prepare" / f"{task}.json"


def run(params: Params, model: str | None = None, task: str | None = None) -> None:
    """Validate the task's raw data and write data/prepared/{task}/ + reports/runs/prepare/{task}.json.

    Validation runs before the MLflow run opens: bad raw data fails in seconds and leaves no run.
    """
    if task is None:
        raise LfpError("prepare needs --task")
    spec = params.task(task)
    if spec.proxy:
        log.warning("prepare: task '%s' uses a PROXY data set (task_specs.%s: source %s, swap %s)",
                    task, task, spec.source, spec.swap)
    outputs, metrics, tags = kind_of(params, task).prepare(params, task)
    for split, rows in outputs.items():
        metrics[split] = len(rows)
    with stage_run("prepare", experiment=params.tracking.experiment, task=task,
                   params={"seed": params.seed, "prepare": section_dict(params.prepare),
                           "task_spec": section_dict(spec)}, tags=tags) as tracker:
        with io.atomic_dir(paths.PREPARED / task) as tmp:
            for split, rows in outputs.items():
                io.write_jsonl(tmp / prepared_file(task, split).name, rows)
        tracker.write_metrics(metrics_file(task), metrics)
