"""Task kinds: what a task *is* lives in params (`task_specs.<name>`: kind + data source); what a
kind *does* lives in its folder here (`tasks/<kind>/`). A stage never branches on a task's name or
kind: it asks the kind object (`kind_of(params, task)`) and calls its methods.

Each kind implements `TaskKind`: its prepared data (from raw), the corpus whose activations are
cached, its fine-tuning, contrastive triples, probe form and measurement, and its default rule for
judging a feature's peak words task-related. Heavy imports (torch, TRL, sklearn) stay inside the
methods, so `import lfp.tasks` is light. `register_kind` adds a kind (a test's toy kind, a new
kind's module); its param sections are registered in `lfp.core.params.KIND_SECTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lfp.core.params import Params
from lfp.core.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from lfp.validation.objective import AblationObjective


@dataclass(frozen=True)
class ContrastiveBackend:
    """How a task's contrastive triples are made, as the stage logs it."""

    name: str  # the `contrastive_backend` MLflow tag
    proxy_note: str = ""  # non-empty: a proxy for the paper's LLM rewrites (warned and tagged `proxy`)
    uses_llm: bool = False  # the `llm` params section is logged


class ProbeForm(Protocol):
    """What the probe stage needs of a kind's probe on activation deltas (lexicon: ridge on the
    signed delta scored by Kendall τ; preference: logistic positive vs negative element)."""

    tags: dict[str, str]  # `probe` and `rescale` MLflow tags
    predicted_note: str  # what `predicted` holds in inputs.json
    predicted_kind: str  # the same, as validate's `predicted_kind` value
    words_in_rows: bool  # rows carry the substituted word and its lexicon value

    def load_triples(self, task: str) -> Any:
        """data/contrastive/{task}.jsonl, every field this form uses checked (lfp.measure.triples.Triples)."""

    def rows(self, codes: dict[str, np.ndarray], triples: Any) -> Any:
        """lfp.measure.probes.ProbeRows of one source's codes."""

    def fit_main(self, rows: Any, is_test: np.ndarray, params: Params, task: str, triples: Any, lm: Any,
                 tokenizer: Any) -> tuple[dict[str, Any], np.ndarray, Any]:
        """(metrics, predictions for all rows, state for `write_figures`) of the fine-tuned model's probe
        with its form-specific controls (the fine-tuned `lm` is still loaded)."""

    def fit_control(self, rows: Any, is_test: np.ndarray, params: Params, prefix: str) -> dict[str, Any]:
        """Metrics (keys prefixed) of the same probe on another source's rows (the base-model control)."""

    def write_figures(self, folder: Path, state: Any, run_id: str) -> None:
        """The form's own figures / tables into the probe's plot folder."""


class TaskKind(Protocol):
    name: str
    splits: tuple[str, str]  # prepared files: (the one fine-tuning reads, the held-out one)
    probe_form: ProbeForm
    default_related_words: str  # the offline relatedness rule when task_specs.<t>.related_words is ""

    def prepare(self, params: Params, task: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, Any]]:
        """(split -> rows, metrics, MLflow tags) from the raw data; writes nothing."""

    def activation_corpus(self, params: Params, task: str) -> tuple[list[str], list[str], Path]:
        """(ids, texts, source file) whose activations are cached, in corpus order."""

    def finetune(self, params: Params, model: str, task: str) -> None:
        """Fine-tune the base model, save it and write finetune.json (the finetune stage)."""

    def contrastive_backend(self, params: Params, task: str) -> ContrastiveBackend:
        """How `contrastive_triples` makes this task's triples (for the stage's tags and logs)."""

    def contrastive_triples(self, params: Params, task: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(triples, counts logged to MLflow); writes nothing."""

    def measure(self, params: Params, model: str, task: str) -> None:
        """The validated LFP measurement (the measure stage): opens its stage run and writes its outputs."""

    def ablation(self) -> AblationObjective:
        """validate's Table 6 objective: the task score zero-ablation is judged by (tasks/<kind>/ablation.py)."""

    def report_sections(self) -> Any:
        """The kind's part of the report (an lfp.report.inputs.KindReport, tasks/<kind>/report.py)."""


KINDS: dict[str, TaskKind] = {}
"""name -> kind object; the built-in kinds are added on first lookup. Tests extend it (monkeypatch.setitem)."""


def register_kind(kind: TaskKind) -> TaskKind:
    """Make `kind` available under `kind.name` (returns it, so a module can write `KIND = register_kind(...)`)."""
    KINDS[kind.name] = kind
    return kind


def _builtin_kinds() -> None:
    from lfp.tasks.lexicon_rl import kind as lexicon_rl
    from lfp.tasks.preference_dpo import kind as preference_dpo

    for kind in (lexicon_rl.KIND, preference_dpo.KIND):
        KINDS.setdefault(kind.name, kind)


def kind_of(params: Params, task: str) -> TaskKind:
    """The object implementing `task`'s kind."""
    _builtin_kinds()
    name = params.kind(task)
    if name not in KINDS:
        raise ConfigError(f"params: 'task_specs.{task}.kind' is '{name}'; known kinds: {', '.join(KINDS)}")
    return KINDS[name]


def related_rule(params: Params, task: str) -> str:
    """The offline explainer's relatedness rule: `task_specs.<t>.related_words` or the kind's default."""
    return params.task(task).related_words or kind_of(params, task).default_related_words
