"""Where every artifact lives: one place, so stages and dvc.yaml agree on the layout.

Layout (docs/artifacts.md): a model's activations and SAEs exist once per *source*, the base model
or the fine-tuned one, so the probe can compare them without training anything itself:
  data/activations/{model}-{task}/{source}/   models/sae/{model}-{task}/{source}/layer{L}-x{r}/
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
CONTRASTIVE = Path("data/contrastive")
ACTIVATIONS = Path("data/activations")
PROBE_DATA = Path("data/probe")
MODELS = Path("models")
REPORTS = Path("reports")
RUN_REPORTS = REPORTS / "runs"  # every per-run metrics file; the report stage depends on this folder
FEATURE_DASHBOARDS = REPORTS / "features"  # report stage: one self-contained HTML page per run

Source = Literal["base", "finetuned"]
SOURCES: tuple[str, ...] = ("base", "finetuned")


def run_id(model: str, task: str) -> str:
    """The `model-task` name used in directories and MLflow run names."""
    return f"{model}-{task}"


def base_model_dir(model: str) -> Path:
    return MODELS / "base" / model


def finetuned_dir(model: str, task: str) -> Path:
    return MODELS / "finetuned" / run_id(model, task)


def model_dir(model: str, task: str, source: str) -> Path:
    """The weights whose activations a `source` branch reads: the base model or its fine-tune on `task`."""
    return base_model_dir(model) if source == "base" else finetuned_dir(model, task)


def sae_dir(model: str, task: str, source: str = "finetuned") -> Path:
    return MODELS / "sae" / run_id(model, task) / source


def sae_path(model: str, task: str, layer: int, ratio: int, source: str = "finetuned") -> Path:
    """One SAE: a folder with SAELens's `cfg.json` + `sae_weights.safetensors`."""
    return sae_dir(model, task, source) / f"layer{layer}-x{ratio}"


def matching_file(model: str, task: str, source: str = "finetuned") -> Path:
    return sae_dir(model, task, source) / "matching.json"


def activations_dir(model: str, task: str, source: str = "finetuned") -> Path:
    return ACTIVATIONS / run_id(model, task) / source


def probe_data_dir(model: str, task: str) -> Path:
    return PROBE_DATA / run_id(model, task)


def report_dir(model: str, task: str) -> Path:
    return RUN_REPORTS / run_id(model, task)


# the measure stage's control fine-tunes, each reported as its own task `{task}-{control}`
CONTROLS: tuple[str, ...] = ("planted", "shuffled")


def control_task(task: str, control: str) -> str:
    """The name a control of `task` is reported under (`vader-planted`): its files sit in
    `reports/runs/{model}-{task}-{control}/` like a task's, written by `measure@{model}-{task}`."""
    if control not in CONTROLS:
        raise ValueError(f"unknown control '{control}' (one of {CONTROLS})")
    return f"{task}-{control}"


def lfp_file(model: str, task: str) -> Path:
    """The measure stage's DVC metrics (`task` may be a control task name)."""
    return report_dir(model, task) / "lfp.json"


def lfp_words_file(model: str, task: str) -> Path:
    return report_dir(model, task) / "lfp_words.csv"


def lfp_learned_plot(model: str, task: str) -> Path:
    return report_dir(model, task) / "lfp_learned_values.png"


def lfp_error_plot(model: str, task: str) -> Path:
    """|word-held-out probe error| per test word vs its learned value (Fig. 4 with a full x axis)."""
    return report_dir(model, task) / "lfp_error_vs_learned.png"


def sae_metrics_file(model: str, task: str, source: str = "finetuned") -> Path:
    """`reports/runs/{m}-{t}/sae-finetuned.json` and `sae-base.json`."""
    return report_dir(model, task) / f"sae-{source}.json"


def divergence_file(model: str, task: str) -> Path:
    return report_dir(model, task) / "divergence.json"


def base_metrics_file(model: str) -> Path:
    """`reports/runs/base/{model}.json`: the base stage's DVC metrics."""
    return RUN_REPORTS / "base" / f"{model}.json"


def probe_plots_dir(model: str, task: str) -> Path:
    """probe_words.csv + fig4 (vader) and fig5_pca.png (all tasks): each task writes only what means something for it."""
    return report_dir(model, task) / "probe_plots"


def table7_features_file(model: str, task: str) -> Path:
    """validate: per explained feature, its frequency on high vs low held-out rows (Table 7)."""
    return report_dir(model, task) / "table7_features.jsonl"


def feature_dashboard_file(model: str, task: str) -> Path:
    """report: the run's feature dashboards (explanations, scores, contexts, histograms, Tables 6/7)."""
    return FEATURE_DASHBOARDS / f"{run_id(model, task)}.html"


def table6_samples_file(model: str, task: str) -> Path:
    """validate: per sample (prefix or pair), its score under every ablation condition (Table 6)."""
    return report_dir(model, task) / "table6_samples.csv"


def contrastive_file(task: str) -> Path:
    return CONTRASTIVE / f"{task}.jsonl"


def prepared_file(task: str, split: str) -> Path:
    """`data/prepared/{task}/{split}.jsonl` (lexicon tasks: train/test; preference tasks: finetune/heldout)."""
    return PREPARED / task / f"{split}.jsonl"
