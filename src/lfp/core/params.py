"""Params: the whole params.yaml as one frozen dataclass, and the per-kind section types.

Why: stages read every knob through one object; its lookups (a model's SAE overrides, a task's
kind) live here so no stage re-derives them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from lfp.core.errors import ConfigError
from lfp.core.sections import (
    Activations,
    ContrastivePairs,
    ContrastiveVader,
    Diffing,
    Divergence,
    DpoFinetune,
    Explain,
    GrpoFinetune,
    Llm,
    Measure,
    ModelSpec,
    Prepare,
    Probe,
    Sae,
    TaskSpec,
    TinyBase,
    Tracking,
    Validate,
)

# built by the base stage (tiny) or a GGUF unpacked from PyPI wheels (the others; one entry each in
# lfp.stages.base.GGUF_SOURCES)
BUILTIN_MODELS = ("tiny", "smollm2", "gemma3-270m")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# The kinds of task lfp knows; one module each in lfp/tasks/. A task is data: a name in `tasks`
# with a `task_specs.<name>` entry whose kind picks the code and whose source picks the data.
TASK_KINDS = ("lexicon_rl", "preference_dpo")


@dataclass(frozen=True)
class Params:
    seed: int
    models: list[str]
    tasks: list[str]
    model_specs: dict[str, ModelSpec]
    task_specs: dict[str, TaskSpec]
    tiny_base: TinyBase = field(default_factory=TinyBase)
    prepare: Prepare = field(default_factory=Prepare)
    # task name -> section; its type is chosen by the task's kind when params are loaded
    finetune: dict[str, Any] = field(default_factory=dict)
    divergence: Divergence = field(default_factory=Divergence)
    activations: Activations = field(default_factory=Activations)
    sae: Sae = field(default_factory=Sae)
    contrastive: dict[str, Any] = field(default_factory=dict)
    probe: Probe = field(default_factory=Probe)
    measure: Measure = field(default_factory=Measure)
    diffing: Diffing = field(default_factory=Diffing)
    llm: Llm = field(default_factory=Llm)
    explain: Explain = field(default_factory=Explain)
    validate: Validate = field(default_factory=Validate)
    tracking: Tracking = field(default_factory=Tracking)
    profile: str = "offline-default"

    def spec(self, model: str) -> ModelSpec:
        if model not in self.model_specs:
            raise ConfigError(f"params: model '{model}' has no entry under model_specs")
        return self.model_specs[model]

    def sae_for(self, model: str) -> "Sae":
        """`sae` with the model's overrides (`model_specs.<m>.sae_l1 / sae_architecture / sae_k / sae_tied`)."""
        spec = self.spec(model)
        changes = {name: value for name, value in (("l1", spec.sae_l1), ("architecture", spec.sae_architecture),
                                                   ("k", spec.sae_k), ("tied", spec.sae_tied)) if value is not None}
        return dataclasses.replace(self.sae, **changes) if changes else self.sae

    def task(self, task: str) -> TaskSpec:
        if task not in self.task_specs:
            raise ConfigError(f"params: task '{task}' has no entry under task_specs")
        return self.task_specs[task]

    def kind(self, task: str) -> str:
        """The task's kind (`lexicon_rl`, `preference_dpo`): what code runs for it."""
        return self.task(task).kind


# per kind: (finetune section type, contrastive section type)
KIND_SECTIONS: dict[str, tuple[type, type]] = {
    "lexicon_rl": (GrpoFinetune, ContrastiveVader),
    "preference_dpo": (DpoFinetune, ContrastivePairs),
}



def section_dict(obj: Any) -> Any:
    """A dataclass section as plain data (for logging to MLflow)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj

