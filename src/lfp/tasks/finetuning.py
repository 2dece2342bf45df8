"""What every kind's fine-tuning shares: the base model's folder, one MLflow run on the main
process, the trainer's curves, the atomic save, the precision tags and the evidence warning.
The kinds' trainers (tasks/<kind>/finetune.py) call these; the finetune stage only dispatches.
"""

from __future__ import annotations

import contextlib
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


AUTO_BF16_SPEEDUP = 1.2  # precision "auto" trains in bf16 only if a training step of the model measures this much faster here (a margin over timing noise)
STEP_PROBE_SHAPE = (8, 32)  # sequences x tokens of the timed step (GRPO: 32 x ~28; DPO: 4-8 x 128)
_STEP_SPEEDUPS: dict[tuple[Any, ...], float] = {}


def bf16_supported() -> bool:
    """bf16 where the accelerator does it natively (a GPU with bf16)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _step_seconds(model: Any, ids: torch.Tensor, bf16: bool, repeats: int) -> float:
    """Best-of-`repeats` seconds of one forward + backward (after one uncounted warm-up pass)."""
    best = float("inf")
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits = model(input_ids=ids, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids.reshape(-1)).backward()
        if i:
            best = min(best, time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return best


def bf16_step_speedup(model: Any, repeats: int = 2) -> float:
    """fp32 time / bf16-autocast time of one training step (forward + backward) of THIS model on
    this CPU, measured once per model shape and process. Why a real step, not a matmul of the
    model's width: at tiny's width a matmul measured 1.63x faster in bf16 while its training step
    ran 0.67x (slower: the casts cost more than the small matmuls save); at SmolLM2's shape both
    agree (2.2x / 1.8x; benchmarks/precision.py). The RNG state is restored, so the timing leaves
    training bit-identical."""
    cfg = model.config
    key = (type(model).__name__, cfg.hidden_size, getattr(cfg, "num_hidden_layers", None), getattr(cfg, "vocab_size", None))
    if key not in _STEP_SPEEDUPS:
        ids = torch.randint(0, int(cfg.vocab_size), STEP_PROBE_SHAPE, generator=torch.Generator().manual_seed(0))
        was_training = model.training
        with torch.random.fork_rng(devices=[]):
            model.train()
            fp32, bf16 = _step_seconds(model, ids, False, repeats), _step_seconds(model, ids, True, repeats)
        model.train(was_training)
        _STEP_SPEEDUPS[key] = fp32 / bf16
    return _STEP_SPEEDUPS[key]


def use_bf16(precision: str, model: Any) -> bool:
    """Train under bf16 autocast (weights stay fp32)? `fp32` never; `bf16` always (on CPU too); `auto`
    where the GPU has bf16, or where a training step of this model measures >= AUTO_BF16_SPEEDUP
    faster in bf16 on this CPU (chosen by measuring on the machine, not by a fixed rule; the choice
    and the measured speed-up are tags)."""
    if precision == "fp32":
        return False
    if not on_cpu():
        return bf16_supported()
    return precision == "bf16" or bf16_step_speedup(model) >= AUTO_BF16_SPEEDUP


def on_cpu() -> bool:
    """Whether Accelerate placed this process on the CPU."""
    return PartialState().device.type == "cpu"


def precision_tags(bf16: bool, precision: str, model: Any) -> dict[str, Any]:
    """What the run trained in, and why (the measured step speed-up where `auto` chose on a CPU)."""
    tags: dict[str, Any] = {"precision": "bf16" if bf16 else "fp32", "precision_param": precision}
    if precision == "auto" and on_cpu():
        tags["cpu_bf16_step_speedup"] = round(bf16_step_speedup(model), 2)
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

