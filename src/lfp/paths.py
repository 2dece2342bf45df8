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
    return REPORTS / run_id(model, task)


def base_report_dir(model: str) -> Path:
    return REPORTS / "base" / model


def base_metrics_file(model: str) -> Path:
    """`reports/runs/base/{model}.json`: the base stage's DVC metrics."""
    return REPORTS / "runs" / "base" / f"{model}.json"


def contrastive_file(task: str) -> Path:
    return CONTRASTIVE / f"{task}.jsonl"
