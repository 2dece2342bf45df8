"""Shared metric names across task kinds: `shared.<role>` aliases of a stage's own keys.

Why: where two task kinds measure the same quantity under different keys (the probe's Kendall tau
vs its accuracy), a run also gets `shared.<role>` aliases of the same values (the DVC metrics files
keep their keys), so one stage compares across tasks in MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lfp.core.tracking_params import numeric_metrics

SHARED_PREFIX = "shared."


def _with_ci(alias: str, key: str) -> dict[str, str]:
    return {alias: key, f"{alias}_ci_low": f"{key}_ci_low", f"{alias}_ci_high": f"{key}_ci_high"}


# (stage, task kind) -> {shared role: the kind's own key}. A role is listed only where both kinds
# compute the same quantity; the tag `shared_from` of each run names the keys it was read from.
SHARED_METRICS: dict[tuple[str, str], dict[str, str]] = {
    # the fine-tuning's held-out evidence: sample counts
    ("finetune", "lexicon_rl"): {"eval_n": "eval_prompts", "train_n": "train_prompts"},
    ("finetune", "preference_dpo"): {"eval_n": "eval_pairs", "train_n": "train_pairs"},
    # the probe on triples (the paper's Table 4 / 5 number): score with CI, base-model control,
    # shuffled-label null; the score is Kendall tau (lexicon) or accuracy (preference)
    ("probe", "lexicon_rl"): {
        **_with_ci("probe_score", "kendall_tau"), **_with_ci("probe_score_base_model", "base_control_kendall_tau"),
        "probe_score_shuffled": "shuffled_kendall_tau", "probe_score_shuffled_sd": "shuffled_kendall_tau_sd"},
    ("probe", "preference_dpo"): {
        **_with_ci("probe_score", "probe_accuracy"), **_with_ci("probe_score_base_model", "base_control_probe_accuracy"),
        "probe_score_shuffled": "shuffled_probe_accuracy", "probe_score_shuffled_sd": "shuffled_probe_accuracy_sd"},
    # the validated measurement: how well the fine-tune learned the feedback (learned-value tau vs
    # the lexicon; DPO implicit-reward accuracy), and Kendall tau of held-out probes against that
    # ground truth per source (word-held-out probes; implicit-reward probes)
    ("measure", "lexicon_rl"): {
        **_with_ci("ground_truth_score", "learned_value_tau"),
        **{f"probe_tau_{src}": f"probe_tau_word_heldout_{src}" for src in ("finetuned", "base", "difference")},
        "n_test": "n_words_test", "n_train": "n_words_train"},
    ("measure", "preference_dpo"): {
        **_with_ci("ground_truth_score", "implicit_reward_acc"),
        **{f"probe_tau_{src}": f"reward_probe_tau_{src}" for src in ("finetuned", "base", "difference")},
        "n_test": "n_test", "n_train": "n_train"},
}


def shared_metrics(stage: str, kind: str | None, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The `shared.<role>` aliases of `metrics` for a stage of a task kind (same values, one name
    across kinds); {} for a stage or kind without shared roles."""
    values = numeric_metrics(metrics)
    roles = SHARED_METRICS.get((stage, kind or ""), {})
    return {SHARED_PREFIX + role: values[key] for role, key in roles.items() if key in values}


def shared_sources(stage: str, kind: str | None) -> str:
    """`role=key,...`: what the `shared_from` tag says about a run's aliases ('' without any)."""
    return ",".join(f"{role}={key}" for role, key in SHARED_METRICS.get((stage, kind or ""), {}).items())
