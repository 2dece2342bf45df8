"""Where every artifact lives: one place, so stages and dvc.yaml agree on the layout."""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
CONTRASTIVE = Path("data/contrastive")
ACTIVATIONS = Path("data/activations")
PROBE_DATA = Path("data/probe")
MODELS = Path("models")
REPORTS = Path("reports")
RUN_REPORTS = REPORTS / "runs"  # every per-run metrics file; the report stage depends on this folder


def run_id(model: str, task: str) -> str:
    """The `model-task` name used in directories and MLflow run names."""
    return f"{model}-{task}"


def base_model_dir(model: str) -> Path:
    return MODELS / "base" / model


def finetuned_dir(model: str, task: str) -> Path:
    return MODELS / "finetuned" / run_id(model, task)


def sae_dir(model: str, task: str) -> Path:
    return MODELS / "sae" / run_id(model, task)


def activations_dir(model: str, task: str) -> Path:
    return ACTIVATIONS / run_id(model, task)


def probe_data_dir(model: str, task: str) -> Path:
    return PROBE_DATA / run_id(model, task)


def report_dir(model: str, task: str) -> Path:
    return RUN_REPORTS / run_id(model, task)


def base_metrics_file(model: str) -> Path:
    """`reports/runs/base/{model}.json`: the base stage's DVC metrics."""
    return RUN_REPORTS / "base" / f"{model}.json"


def probe_plots_dir(model: str, task: str) -> Path:
    """probe_words.csv + fig4 (vader) and fig5_pca.png (all tasks): each task writes only what means something for it."""
    return report_dir(model, task) / "probe_plots"


def contrastive_file(task: str) -> Path:
    return CONTRASTIVE / f"{task}.jsonl"
