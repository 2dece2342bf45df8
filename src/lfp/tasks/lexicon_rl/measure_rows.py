"""The lexicon measurement's tables: the per-word CSV rows, the behavioural metrics of the measured
fine-tune, the controls' headline keys and one readout's values per run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lfp.core import paths
from lfp.measure.controls import tau_keys, tau_with_ci
from lfp.readouts import ReadoutRuns
from lfp.tasks.lexicon_rl.learned import LearnedValues
from lfp.tasks.lexicon_rl.measure_probes import seed_summary
from lfp.tasks.lexicon_rl.word_probes import HeldoutProbe

CSV_FIELDS = ("word", "lexicon_value", "reward_value", "learned_value", "learned_ci_low", "learned_ci_high",
              "n_contexts", "learned_value_planted_model", "learned_value_shuffled_model", "pred_finetuned",
              "pred_base", "pred_difference", "probe_shift", "split", "planted",
              "readout_logit_diff_lens", "readout_sae_diff_lens", "readout_crosscoder_diff_lens",
              "readout_sae_diff_lens_at_prediction", "readout_crosscoder_diff_lens_at_prediction", "readout_difference_probe", "readout_random_dictionary_probe", "readout_crosscoder_probe",
              "readout_probe_view")
# the controls' difference-probe keys repeated in the measured task's lfp.json (prefixed `planted_` / `shuffled_`)
DIFFERENCE_SUMMARY = ("probe_tau_word_heldout_difference", "probe_tau_word_heldout_difference_p",
                      "probe_tau_word_heldout_difference_ci_low", "probe_tau_word_heldout_difference_ci_high",
                      "probe_tau_word_heldout_difference_seed_mean")



def readout_runs(per_run: dict[Any, dict[str, float]], arm_rewards: list[dict[str, float]], seed: int) -> ReadoutRuns:
    """One readout's values keyed by run ("main", ("seed", s), "planted", "shuffled", ("arm", k)) as
    lfp.readouts.ReadoutRuns: arm 0 is the reported shuffled control."""
    arms = [per_run["shuffled"], *[per_run[("arm", k)] for k in range(1, len(arm_rewards))]]
    return ReadoutRuns(main=per_run["main"], seeds={k[1]: v for k, v in per_run.items() if isinstance(k, tuple) and k[0] == "seed"},
                       planted=per_run.get("planted"), arms=list(zip(arms, arm_rewards)))


def split_of(word: str, test_words: set[str], probe_words: set[str]) -> str:
    return "test" if word in test_words else ("train" if word in probe_words else "not_in_probe")


def main_rows(main: LearnedValues, lexicon: dict[str, float], planted: set[str], others: dict[str, dict[str, float]],
              probes: dict[str, HeldoutProbe], test_words: set[str], probe_words: set[str], shift: dict[str, float]) -> list[dict[str, Any]]:
    """One CSV row per word with a learned value (CSV_FIELDS); probe predictions for test words."""
    preds = {name: dict(zip(p.scores.words, p.scores.predicted.tolist())) for name, p in probes.items()}

    def pred(name: str, w: str) -> Any:
        return float(preds[name][w]) if w in preds.get(name, {}) else ""

    return [{"word": w, "lexicon_value": lexicon.get(w, 0.0), "reward_value": lexicon.get(w, 0.0), "learned_value": float(v),
             "learned_ci_low": float(lo), "learned_ci_high": float(hi), "n_contexts": int(n),
             "learned_value_planted_model": float(others["planted"].get(w, np.nan)),
             "learned_value_shuffled_model": float(others["shuffled"].get(w, np.nan)),
             "pred_finetuned": pred("finetuned", w), "pred_base": pred("base", w), "pred_difference": pred("difference", w),
             "probe_shift": float(shift.get(w, np.nan)), "split": split_of(w, test_words, probe_words), "planted": w in planted}
            for w, v, lo, hi, n in zip(main.words, main.value, main.ci_low, main.ci_high, main.n_contexts)]


def behaviour_metrics(main: LearnedValues, by_seed: dict[int, LearnedValues], lexicon: dict[str, float], shift: dict[str, float],
                      n_boot: int, seed: int) -> dict[str, Any]:
    """The measured fine-tune's learned-value τ (CI, seeds) and the probe's view of its change."""
    t = tau_with_ci(main.by_word(), lexicon, n_boot, seed)
    out: dict[str, Any] = {"n_words": len(main.words), "n_contexts": int(np.sum(main.n_contexts)), "seeds": sorted(by_seed)}
    out.update(tau_keys("learned_value_tau", t))
    out["learned_value_tau_reward"] = t["tau"]  # the main fine-tune's reward is the lexicon itself
    seed_taus = [tau_with_ci(lv.by_word(), lexicon, 0, seed)["tau"] for lv in by_seed.values()]
    s = seed_summary(seed_taus)
    out.update({"learned_value_tau_per_seed": seed_taus, "learned_value_tau_seed_mean": s["mean"],
                "learned_value_tau_seed_ci_low": s["ci_low"], "learned_value_tau_seed_ci_high": s["ci_high"]})
    out.update(tau_keys("probe_shift_tau", tau_with_ci(shift, lexicon, n_boot, seed)))
    return out


def control_summary(task: str, planted_m: dict[str, Any], shuffled_m: dict[str, Any]) -> dict[str, Any]:
    """The controls' headline keys in the measured task's lfp.json (the report reads them there)."""
    out: dict[str, Any] = {k: v for k, v in planted_m.items() if k.startswith("planted_")}
    out.update({"planted_control_task": paths.control_task(task, "planted"), "shuffled_control_task": paths.control_task(task, "shuffled"),
                "planted_learned_value_tau_reward": planted_m["learned_value_tau_reward"],
                "shuffled_learned_value_tau": shuffled_m["learned_value_tau"],
                "shuffled_learned_value_tau_ci_low": shuffled_m["learned_value_tau_ci_low"],
                "shuffled_learned_value_tau_ci_high": shuffled_m["learned_value_tau_ci_high"],
                "shuffled_learned_value_tau_reward": shuffled_m["learned_value_tau_reward"],
                "shuffled_detected": shuffled_m["shuffled_detected"]})
    for key in ("probe_shift_tau", "probe_shift_tau_ci_low", "probe_shift_tau_ci_high"):
        if key in shuffled_m:
            out[f"shuffled_{key}"] = shuffled_m[key]
    return out
