"""The measure stage's controls reported as their own tasks, and the scores they share with it.

Why separate files: a control that lives only as keys inside the measured task's lfp.json cannot be
read, diffed or plotted like a task. The planted and the shuffled fine-tune (trained in memory by
`measure@{m}-{t}`, never a DVC-less artifact another stage reads) each get
`reports/runs/{m}-{t}-{control}/lfp.json` + `lfp_words.csv` with the same kind of keys as the
measured task: learned-value τ against the lexicon and against the reward actually used, with CIs,
the probe's view of the change, and whether the control was detected — plus `control_of` and
`reward`. Pure functions here; the stage only trains, encodes and calls them.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lfp.core import io, paths
from lfp.measure import metrics
from lfp.tasks.lexicon_rl.learned import LearnedValues
from lfp.tasks.lexicon_rl.word_probes import auc, permutation_p

CONTROL_CSV_FIELDS = ("word", "lexicon_value", "reward_value", "learned_value", "learned_ci_low", "learned_ci_high",
                      "n_contexts", "learned_value_main_model", "probe_shift", "planted")


class MetricsRun(Protocol):
    """What a control needs of the stage's MLflow run (lfp.core.tracking.StageRun)."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


def tau_with_ci(per_word: Mapping[str, float], target: Mapping[str, float], n_boot: int, seed: int) -> dict[str, float]:
    """τ(per-word value, target value) over the words of `per_word` that `target` values, p, and a
    percentile CI resampling words."""
    words = sorted(w for w in per_word if w in target)  # a planted neutral word has no lexicon value
    x = np.array([per_word[w] for w in words], dtype=float)
    y = np.array([target[w] for w in words], dtype=float)
    tau, p = metrics.kendall(x, y)
    rng = np.random.default_rng(seed)
    boots = [metrics.kendall(x[i], y[i])[0] for i in (rng.integers(0, len(x), len(x)) for _ in range(n_boot))] if len(x) else []
    finite = [b for b in boots if np.isfinite(b)]
    lo, hi = np.percentile(finite, [2.5, 97.5]) if finite else (np.nan, np.nan)
    return {"tau": tau, "p": p, "ci_low": float(lo), "ci_high": float(hi)}


def tau_keys(key: str, t: Mapping[str, float]) -> dict[str, float]:
    """`key`, `key_p`, `key_ci_low`, `key_ci_high`: the naming every lfp.json uses."""
    return {key: t["tau"], f"{key}_p": t["p"], f"{key}_ci_low": t["ci_low"], f"{key}_ci_high": t["ci_high"]}


def ci_clear_of_zero(lo: float, hi: float) -> bool:
    """A finite CI that does not cover 0: the pattern is there."""
    return bool(np.isfinite([lo, hi]).all() and not lo <= 0.0 <= hi)


def planted_detection(per_word: Mapping[str, float], planted: Collection[str], lexicon: Mapping[str, float], n_perm: int, seed: int,
                      controls: Collection[str] | None = None) -> dict[str, float]:
    """Planted words vs their controls (by default the other positive words): AUC of −(per-word
    change) (the plant taught the model to avoid them) and its permutation p."""
    from lfp.measure.control_stats import compared_words

    words = compared_words(per_word, planted, lexicon, controls)
    values = np.array([per_word[w] for w in words])
    labels = np.array([w in planted for w in words], dtype=bool)
    return {"auc": auc(-values, labels), "p": permutation_p(-values, labels, n_perm, seed),
            "n_planted": int(labels.sum()), "n_other": int((~labels).sum()),
            "mean_planted": float(values[labels].mean()) if labels.any() else float("nan"),
            "mean_other": float(values[~labels].mean()) if (~labels).any() else float("nan")}


def planted_summary(planted_lv: Mapping[str, float], main_lv: Mapping[str, float], planted_shift: Mapping[str, float] | None,
                    main_shift: Mapping[str, float] | None, planted: Collection[str], lexicon: Mapping[str, float],
                    n_perm: int, seed: int, controls: Collection[str] | None = None) -> dict[str, Any]:
    """The planted control's detection, behavioural and through the probe, beside the same scores
    on the un-planted fine-tune (`_base`: where nothing was planted, nothing should separate)."""
    d = planted_detection(planted_lv, planted, lexicon, n_perm, seed, controls)
    d_base = planted_detection(main_lv, planted, lexicon, n_perm, seed, controls)
    out: dict[str, Any] = {
        "planted_auc": d["auc"], "planted_p": d["p"], "planted_n": d["n_planted"], "planted_n_other": d["n_other"],
        "planted_mean_learned": d["mean_planted"], "planted_mean_learned_other": d["mean_other"],
        "planted_auc_base": d_base["auc"], "planted_p_base": d_base["p"],
        "planted_detected": bool(np.isfinite(d["auc"]) and d["p"] < 0.05 and d["auc"] > 0.5)}
    for shift, key in ((planted_shift, "planted_probe_auc"), (main_shift, "planted_probe_auc_base")):
        if shift is not None:
            pd_ = planted_detection(shift, planted, lexicon, n_perm, seed, controls)
            out.update({key: pd_["auc"], key.replace("_auc", "_p"): pd_["p"]})
    return out


def control_metrics(control: str, task: str, lv: LearnedValues, lexicon: Mapping[str, float], reward_values: Mapping[str, float],
                    probe_shift: Mapping[str, float] | None, n_boot: int, seed: int) -> dict[str, Any]:
    """The keys every control's lfp.json shares with the measured task's: learned-value τ against
    the lexicon and against the reward it was trained on (p, CI), and the same two τ for the
    probe's view of the change (`probe_shift_tau`)."""
    by_word = lv.by_word()
    out: dict[str, Any] = {"control_of": task, "reward": control, "task": paths.control_task(task, control),
                           "n_words": len(lv.words), "n_contexts": int(np.sum(lv.n_contexts)), "seeds": [seed]}
    out.update(tau_keys("learned_value_tau", tau_with_ci(by_word, lexicon, n_boot, seed)))
    out.update(tau_keys("learned_value_tau_reward", tau_with_ci(by_word, reward_values, n_boot, seed)))
    if probe_shift is not None:
        out.update(tau_keys("probe_shift_tau", tau_with_ci(probe_shift, lexicon, n_boot, seed)))
        out.update(tau_keys("probe_shift_tau_reward", tau_with_ci(probe_shift, reward_values, n_boot, seed)))
    return out


def shuffled_verdict(m: Mapping[str, Any]) -> dict[str, bool]:
    """The shuffled control is 'detected' (the instrument is fooled) if the learned values of a
    fine-tune on a permuted lexicon still track the real lexicon: a τ CI clear of 0."""
    found = ci_clear_of_zero(m["learned_value_tau_ci_low"], m["learned_value_tau_ci_high"])
    return {"detected": found, "shuffled_detected": found}


def control_rows(lv: LearnedValues, lexicon: Mapping[str, float], reward_values: Mapping[str, float], planted: set[str],
                 main_lv: Mapping[str, float], probe_shift: Mapping[str, float] | None) -> list[dict[str, Any]]:
    """One CSV row per word the control's learned values cover (CONTROL_CSV_FIELDS)."""
    shift = probe_shift or {}
    return [{"word": w, "lexicon_value": float(lexicon.get(w, 0.0)), "reward_value": float(reward_values.get(w, 0.0)), "learned_value": float(v),
             "learned_ci_low": float(lo), "learned_ci_high": float(hi), "n_contexts": int(n),
             "learned_value_main_model": float(main_lv.get(w, np.nan)), "probe_shift": float(shift.get(w, np.nan)),
             "planted": w in planted}
            for w, v, lo, hi, n in zip(lv.words, lv.value, lv.ci_low, lv.ci_high, lv.n_contexts)]


def write_words_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Per-word CSV (floats to 6 significant digits, NaN as empty), written atomically."""
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not np.isfinite(v) else f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def write_control(run: MetricsRun, model: str, task: str, control: str, m: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """lfp.json + lfp_words.csv of one control task; its numbers go to the measuring stage's MLflow
    run under the prefix `{task}-{control}.` (the same values as the file), the files as artifacts."""
    name = paths.control_task(task, control)
    files = [paths.lfp_file(model, name), paths.lfp_words_file(model, name)]
    run.log_metrics({name: dict(m)})
    io.write_json(files[0], dict(m))
    write_words_csv(files[1], rows, CONTROL_CSV_FIELDS)
    for f in files:
        run.log_artifact(f, artifact_path=name)
    return files


# ------------------------------------------------------------------ issue #27: within sign, paired, nulls over runs


def within_sign_metrics(main: Mapping[str, float], by_seed: Mapping[int, Mapping[str, float]], lexicon: Mapping[str, float],
                        n_boot: int, seed: int) -> dict[str, Any]:
    """The primary statistic: learned-value τ within sign (CI resampling words within each sign),
    the between-sign gap apart, and the within-sign τ of every fine-tuning seed (mean, t-interval:
    run-to-run variance, which a word bootstrap cannot see)."""
    from lfp.measure.control_stats import _aligned, within_sign_keys, within_sign_stats, within_sign_tau

    out: dict[str, Any] = within_sign_keys("learned_value_tau", within_sign_stats(main, lexicon, n_boot, seed))
    per_seed = [within_sign_tau(*_aligned(lv, lexicon))[0] for _, lv in sorted(by_seed.items())]
    mean, lo, hi = metrics.mean_t_interval(per_seed)
    out.update({"learned_value_tau_within_sign_per_seed": per_seed, "learned_value_tau_within_sign_seed_mean": mean,
                "learned_value_tau_within_sign_seed_ci_low": lo, "learned_value_tau_within_sign_seed_ci_high": hi})
    return out


def planted_paired(planted_lv: Mapping[str, float], main_lv: Mapping[str, float], seed_lvs: Mapping[int, Mapping[str, float]],
                   planted: Collection[str], lexicon: Mapping[str, float], n_perm: int, seed: int, alpha: float = 0.01,
                   controls: Collection[str] | None = None) -> dict[str, Any]:
    """The paired planted test (planted run − run with the true reward, same data and seed), the
    plant's own learning (the planted words' paired change, t-interval over those words: below 0
    means the plant was learned), and the same test on main seed k − main seed 0, where nothing was
    planted (its AUC should sit near 0.5)."""
    from lfp.measure.control_stats import paired_change, paired_planted_detection

    d = paired_planted_detection(planted_lv, main_lv, planted, lexicon, n_perm, seed, controls)
    change = paired_change(planted_lv, main_lv)
    mean, lo, hi = metrics.mean_t_interval([change[w] for w in sorted(planted) if w in change])
    nulls = [paired_planted_detection(lv, main_lv, planted, lexicon, n_perm, seed, controls)["auc"] for s, lv in sorted(seed_lvs.items())]
    return {"planted_paired_auc": d["auc"], "planted_paired_p": d["p"], "planted_paired_n": d["n_planted"],
            "planted_paired_n_other": d["n_other"], "planted_paired_mean_change": mean,
            "planted_paired_mean_change_ci_low": lo, "planted_paired_mean_change_ci_high": hi,
            "planted_paired_mean_change_other": d["mean_other"],
            "planted_learned": bool(np.isfinite(hi) and hi < 0),
            "planted_paired_auc_seed_null": nulls,
            "planted_paired_auc_seed_null_mean": float(np.mean(nulls)) if nulls else float("nan"),
            "planted_paired_alpha": alpha,
            "planted_paired_detected": bool(np.isfinite(d["auc"]) and d["auc"] > 0.5 and d["p"] < alpha)}


def shuffled_null(main_lv: Mapping[str, float], arms: Sequence[tuple[Mapping[str, float], Mapping[str, float]]],
                  lexicon: Mapping[str, float]) -> dict[str, Any]:
    """The null as a distribution over shuffled-reward fine-tunes (each arm: its learned values and
    the permuted reward it was trained on). Reports per arm τ against the real lexicon (all words and
    within sign) and against its own reward; whether the arms learned their own reward (t-interval
    of that τ above 0); whether the null is centred (arms' τ vs the lexicon: t-interval covering 0);
    and where the measured run's τ and within-sign τ fall in it."""
    from lfp.measure.control_stats import _aligned, null_keys, run_null, within_sign_tau

    def tau(lv: Mapping[str, float], target: Mapping[str, float], within: bool) -> float:
        x, y = _aligned(lv, target)
        return (within_sign_tau(x, y) if within else metrics.kendall(x, y))[0]

    lex_all = [tau(lv, lexicon, False) for lv, _ in arms]
    lex_within = [tau(lv, lexicon, True) for lv, _ in arms]
    own = [tau(lv, rew, False) for lv, rew in arms]
    out: dict[str, Any] = {"shuffled_arms": len(arms), "shuffled_arms_tau_lexicon": lex_all,
                           "shuffled_arms_tau_lexicon_within_sign": lex_within, "shuffled_arms_tau_reward": own}
    own_mean, own_lo, own_hi = metrics.mean_t_interval(own) if len(own) > 1 else (own[0], float("nan"), float("nan"))
    out.update({"shuffled_arms_tau_reward_mean": own_mean, "shuffled_arms_tau_reward_ci_low": own_lo,
                "shuffled_arms_tau_reward_ci_high": own_hi, "shuffled_learned": bool(np.isfinite(own_lo) and own_lo > 0)})
    main_all, main_within = tau(main_lv, lexicon, False), tau(main_lv, lexicon, True)
    out.update(null_keys("learned_value_tau", run_null(main_all, lex_all)))
    out.update(null_keys("learned_value_tau_within_sign", run_null(main_within, lex_within)))
    lo, hi = out["learned_value_tau_null_ci_low"], out["learned_value_tau_null_ci_high"]
    out["shuffled_null_centred"] = bool(np.isfinite([lo, hi]).all() and lo <= 0.0 <= hi)
    return out
