"""What every kind's fine-tuning shares: the base model's folder, one MLflow run on the main
process, the trainer's curves, the atomic save, the precision tags and the evidence warning.
The kinds' trainers (tasks/<kind>/finetune.py) call these; the finetune stage only dispatches.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from lfp.core import io, paths
from lfp.core.params import Params, section_dict
from lfp.core.errors import ArtifactError
from lfp.core.tracking import StageRun, stage_run

log = logging.getLogger(__name__)
STAGE = "finetune"
EVAL_BATCH = 32


def metrics_file(model: str, task: str) -> Path:
    return paths.report_dir(model, task) / "finetune.json"


AUTO_BF16_SPEEDUP = 1.5  # precision "auto" trains in bf16 only if its matmuls measure this much faster here


def bf16_supported() -> bool:
    """bf16 where the accelerator does it natively (a GPU with bf16)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(width: int) -> float:
    """fp32 time / bf16 time of a matmul of this model's width, best of 5, on this CPU. CPUs differ:
    with AVX512-BF16 (AMD EPYC Zen 4) bf16 matmuls at width 576 run 2.4x faster; without it bf16 is
    emulated (a DPO step once ran 4.4x slower), and a tiny width gains nothing from either."""
    a32, w32 = torch.randn(512, width), torch.randn(4 * width, width)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, w = a32.to(dtype), w32.to(dtype)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(4):
                a @ w.T
            best = min(best, time.perf_counter() - start)
        times[dtype] = best
    return times[torch.float32] / times[torch.bfloat16]


def use_bf16(precision: str, width: int) -> bool:
    """Train under bf16 autocast (weights stay fp32)? `fp32` never; `bf16` always (on CPU too); `auto`
    where the GPU has bf16, or where bf16 matmuls of this width measure >= AUTO_BF16_SPEEDUP faster
    on this CPU (chosen by measuring on the machine, not by a fixed rule; the choice is a tag)."""
    if precision == "fp32":
        return False
    if not on_cpu():
        return bf16_supported()
    return precision == "bf16" or cpu_bf16_speedup(width) >= AUTO_BF16_SPEEDUP


def on_cpu() -> bool:
    """Whether Accelerate placed this process on the CPU."""
    return PartialState().device.type == "cpu"


def precision_tags(bf16: bool, precision: str, width: int) -> dict[str, Any]:
    """What the run trained in, and why (the measured speed-up where `auto` chose on a CPU)."""
    tags: dict[str, Any] = {"precision": "bf16" if bf16 else "fp32", "precision_param": precision}
    if precision == "auto" and on_cpu():
        tags["cpu_bf16_matmul_speedup"] = round(cpu_bf16_speedup(width), 2)
    return tags


def base_dir(model: str) -> Path:
    path = paths.base_model_dir(model)
    if not (path / "config.json").is_file():
        raise ArtifactError(f"{path}: base model not found (run `lfp base --model {model}` first)")
    return path


@contextlib.contextmanager
def tracking(params: Params, model: str, task: str, section: Any, extra: dict[str, Any], tags: dict[str, Any]) -> Iterator[StageRun | None]:
    """One MLflow run on the main process; other `accelerate launch` ranks get None."""
    if not PartialState().is_main_process:
        yield None
        return
    logged = {"seed": params.seed, "model_spec": section_dict(params.spec(model)), "finetune": {task: section_dict(section)}, **extra}
    with stage_run(STAGE, experiment=params.tracking.experiment, model=model, task=task, params=logged, tags=tags) as tracker:
        yield tracker


def log_history(tracker: StageRun, history: list[dict[str, Any]]) -> None:
    """The trainer's per-step logs as MLflow curves (`train/<name>` at each step)."""
    for entry in history:
        step = int(entry.get("step", 0))
        tracker.log_metrics({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=step)


def history_mean(history: list[dict[str, Any]], key: str, first: bool) -> float | None:
    values = [e[key] for e in history if key in e]
    if not values:
        return None
    part = values[: max(1, len(values) // 4)] if first else values[-max(1, len(values) // 4) :]
    return float(sum(part) / len(part))


def save_finetuned(trainer: Any, tokenizer: Any, model: str, task: str) -> None:
    """save_pretrained (safetensors) + tokenizer, swapped in atomically."""
    with io.atomic_dir(paths.finetuned_dir(model, task)) as out:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def base_tags(params: Params, model: str) -> dict[str, Any]:
    source = params.spec(model).source
    return {"model_source": source, "base_is_proxy": source == "tiny"}


def warn_if_not_better(model: str, task: str, metrics: dict[str, Any]) -> None:
    if not metrics["beats_base"]:
        log.warning("finetune@%s: the fine-tuned model does NOT beat its base on held-out data (see finetune.json)",
                    paths.run_id(model, task))

