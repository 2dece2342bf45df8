"""One way to open a stage: its MLflow run, the device Accelerate picks, and models moved there.

Why: every model-reading stage did these three steps by hand, each slightly differently; here
they happen once, in the same order, so a new stage gets tracking and device placement right.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfp.core.params import Params
from lfp.core.tracking import StageRun, stage_run


@dataclass
class StageContext:
    run: StageRun
    device: Any

    def load(self, directory: str | Path) -> tuple[Any, Any]:
        """(model on this stage's device, tokenizer) from a saved model folder."""
        from lfp.models.loading import load_model

        model, tokenizer = load_model(directory)
        return model.to(self.device), tokenizer


@contextmanager
def open_stage(
    stage: str, params: Params, *, model: str | None = None, task: str | None = None, source: str | None = None,
    log_params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None, dvc_stage: str | None = None,
) -> Iterator[StageContext]:
    """The stage's MLflow run (`stage@model-task[-source]`) with the device Accelerate picks.

    `dvc_stage`: the DVC stage's name where it differs from the lfp command (`measure_pairs` runs
    `lfp measure`); the run is named after it, as in dvc.yaml."""
    from accelerate import Accelerator

    tags = dict(tags or {})
    if model is not None:
        tags.setdefault("model_source", params.spec(model).source)
    if task is not None and task in params.task_specs:
        tags.setdefault("task_kind", params.kind(task))
    with stage_run(stage, experiment=params.tracking.experiment, model=model, task=task, params=log_params,
                   tags=tags, source=source, dvc_stage=dvc_stage) as run:
        yield StageContext(run, Accelerator().device)
