"""What every report section reads: the params, each model-task run's metrics files, the paper's
published numbers, and each task's kind report (`KindReport`). Section functions take one
`ReportInputs` and return their sections, so adding a section never changes another's signature."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from lfp.core import io, paths
from lfp.core.errors import ArtifactError
from lfp.core.params import Params
from lfp.report.document import Section

FIGURES = paths.REPORTS / "figures"

Run = dict[str, Any]  # one model-task run's metrics: {"finetune": {...}, "probe": {...}, ..., "measure": {...} | None}
Runs = dict[tuple[str, str], Run]


class KindReport(Protocol):
    """What a task kind contributes to the report (`TaskKind.report_sections()`): its sentences and
    table rows inside the shared sections, and its own sections. The shared sections never ask a
    kind's name; they ask this object."""

    probe_metric: str  # probe.json's main metric, the headline key (Kendall τ / accuracy)
    paper_tables_6_7: bool  # the paper publishes Tables 6 and 7 for this kind, so the sentences compare with it
    finetune_notes: tuple[str, ...]  # notes under the fine-tuning table when a run of this kind is in it

    def probe_sentence(self, probe: Mapping[str, Any], task: str, paper: Mapping[str, Any]) -> str:
        """'Does the probe read a learned feedback pattern?' for one run's probe.json."""

    def finetune_sentence(self, f: Mapping[str, Any]) -> str:
        """'Did fine-tuning beat the base model on its own objective?' for one run's finetune.json."""

    def finetune_rows(self, model: str, task: str, f: Mapping[str, Any]) -> list[list[Any]]:
        """Rows of the fine-tuning evidence table: model, task, objective, base, fine-tuned, KL, beats base."""

    def finetune_headline(self, f: Mapping[str, Any]) -> dict[str, float | None]:
        """The fine-tuning gain on the kind's own objective, for reports/headline.json."""

    def proxy_notes(self, params: Params, task: str) -> list[str]:
        """Where this task's fine-tuning, data and contrastive set deviate from the paper's."""

    def measurement_section(self, inputs: ReportInputs, model: str, task: str, run: Run) -> Section:
        """The validated measurement (stage `measure`'s lfp.json) of one run."""

    def sections(self, inputs: ReportInputs, runs: Runs) -> list[Section]:
        """This kind's paper tables over its runs (`runs`: only the runs of this kind)."""


def paper_results() -> dict[str, Any]:
    """The paper's published numbers (data/paper_results.json), printed beside ours."""
    return json.loads(resources.files("lfp").joinpath("data/paper_results.json").read_text(encoding="utf-8"))


def load_run(model: str, task: str) -> Run:
    """All metrics JSON of one model-task run; a missing file is an error (no silent gaps)."""
    run_dir = paths.report_dir(model, task)
    out = {}
    for name in ("finetune", "divergence", "probe", "explain", "validate"):
        out[name] = io.read_json(run_dir / f"{name}.json")
    out["sae"] = io.read_json(paths.sae_metrics_file(model, task, "finetuned"))
    out["sae_base"] = io.read_json(paths.sae_metrics_file(model, task, "base"))
    measured = run_dir / "lfp.json"  # stage `measure` (lexicon tasks in measure.tasks)
    out["measure"] = io.read_json(measured) if measured.exists() else None
    diffing = run_dir / "diffing.json"  # stage `diffing` (crosscoder); older runs have none
    out["diffing"] = io.read_json(diffing) if diffing.exists() else None
    latents = run_dir / "crosscoder_latents.jsonl"  # stage explain: the crosscoder's fine-tune-specific latents
    out["crosscoder_latents"] = io.read_jsonl(latents, allow_empty=True) if latents.exists() else []
    features = run_dir / "features.jsonl"
    out["features"] = io.read_jsonl(features, allow_empty=True) if features.exists() else []
    return out


def copy_figure(src: Path, name: str) -> str:
    """Copy a per-run figure into reports/figures so the report folder is self-contained."""
    if not src.exists():
        raise ArtifactError(f"{src}: figure missing (its stage did not produce it)")
    dst = FIGURES / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return str(Path("figures") / name)


def label(runs: Mapping[tuple[str, str], Any], m: str, t: str) -> str:
    """A run's name in the report: the task alone, or model-task when the runs span several models."""
    return t if len({model for model, _ in runs}) == 1 else f"{m}-{t}"


def proxy_data_note(params: Params, task: str) -> str | None:
    """How this task's data stands in for the paper's (`task_specs.<t>.proxy`), else None."""
    spec = params.task(task)
    if not spec.proxy:
        return None
    if spec.swap:
        return f"{task} data: {'/'.join(spec.subsets)} pairs with chosen/rejected swapped (proxy for the paper's data)"
    if spec.source == "hh-rlhf":
        return f"{task} data: the {'/'.join(spec.subsets)} pairs of HH-RLHF only (a subset standing in for the paper's data)"
    return f"{task} data: `{spec.source}` (proxy for the paper's data)"


@dataclass(frozen=True)
class ReportInputs:
    """The params, every (model, task) run's metrics in params order, and the paper's numbers."""

    params: Params
    runs: Runs
    paper: dict[str, Any]
    kinds: Mapping[str, KindReport]  # task -> its kind's report (lfp.tasks.report_kinds), given by the stage

    @classmethod
    def load(cls, params: Params, kinds: Mapping[str, KindReport]) -> ReportInputs:
        return cls(params, {(m, t): load_run(m, t) for m in params.models for t in params.tasks}, paper_results(), kinds)

    def label(self, m: str, t: str) -> str:
        return label(self.runs, m, t)

    def kind(self, task: str) -> KindReport:
        return self.kinds[task]

    def by_kind(self) -> list[tuple[KindReport, Runs]]:
        """The runs grouped by their kind's report, kinds in the order their first run appears."""
        groups: dict[int, tuple[KindReport, Runs]] = {}
        for (m, t), r in self.runs.items():
            k = self.kind(t)
            groups.setdefault(id(k), (k, {}))[1][(m, t)] = r
        return list(groups.values())
