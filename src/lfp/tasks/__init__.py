"""Task kinds: what a task *is* lives in params (`task_specs.<name>`: kind + data source); what a
kind *does* lives in one module here. A stage never branches on a task's name: it asks the kind.

Each kind implements `TaskKind`: its prepared data (from raw), the corpus whose activations are
cached, its default rule for judging a feature's peak words task-related, and the names of its fine-tuning / probe / ablation methods (the stages pick their implementation by them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from lfp.core.config import Params
from lfp.core.errors import ConfigError


class TaskKind(Protocol):
    name: str
    splits: tuple[str, str]  # prepared files: (the one fine-tuning reads, the held-out one)
    finetune_method: str  # "grpo" | "dpo"
    probe_method: str  # "ridge" (signed delta, Kendall τ) | "logistic" (positive vs negative)
    ablation_metric: str  # what validate's zero-ablation scores
    measure_method: str  # "lexicon" (learned values per word) | "preference" (implicit reward per pair)

    def prepare(self, params: Params, task: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
        """(split -> rows, metrics, MLflow tags) from the raw data; writes nothing."""

    def activation_corpus(self, params: Params, task: str) -> tuple[list[str], list[str], Path]:
        """(ids, texts, source file) whose activations are cached, in corpus order."""

    default_related_words: str  # the offline relatedness rule when task_specs.<t>.related_words is ""


def related_rule(params: Params, task: str) -> str:
    """The offline explainer's relatedness rule: `task_specs.<t>.related_words` or the kind's default."""
    return params.task(task).related_words or kind_of(params, task).default_related_words


def kind_of(params: Params, task: str) -> TaskKind:
    """The module object implementing `task`'s kind."""
    from lfp.tasks.lexicon_rl import kind as lexicon_rl
    from lfp.tasks.preference_dpo import kind as preference_dpo

    kinds: dict[str, TaskKind] = {"lexicon_rl": lexicon_rl.KIND, "preference_dpo": preference_dpo.KIND}
    name = params.kind(task)
    if name not in kinds:
        raise ConfigError(f"params: 'task_specs.{task}.kind' is '{name}'; known kinds: {', '.join(kinds)}")
    return kinds[name]
