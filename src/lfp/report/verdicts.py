"""Verdicts of the controls: one table row per control and task, passed / failed / not run / n/a.

Why: the report's prose and tables give every number, but a reader should see first, in one glance,
which of the instrument's controls behaved as a sound instrument needs (the fine-tune learned, the
planted pattern is found, the shuffled reward is not, the probe beats the base model and trivial
predictors, Tables 7 and 6 come out as the paper claims) — before any claim about a learned feedback
pattern is read. Each verdict is computed from the metrics JSON files under `reports/runs/`, with
the keys the stages already write (finetune.json, lfp.json, validate.json); a missing file or key
is reported as "not run", never as a crash or a silent pass.

Verdict words:
- passed: the control behaved as a sound instrument needs;
- failed: it did not (the evidence says how);
- not run: the stage's file or key is missing (the stage did not run, or wrote an older format);
- n/a: the stage ran but recorded why this test cannot apply (e.g. no feature is labelled related).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lfp.core import paths
from lfp.report.format import covers_zero, dec, dec_ci, dec_with_ci, num, pval, with_ci
from lfp.report.learning_verdicts import (finetune_lexicon, finetune_preference, planted_learned, planted_reward, shuffled_learned,
                                          shuffled_reward)
from lfp.report.verdict_base import FAILED, NA, NOT_RUN, PASSED, Judged, Metrics, missing as _missing

COLUMNS = ["task", "control", "verdict", "evidence"]
ALPHA = 0.05  # the significance level of the p-value tests (planted control, Table 7)
LEXICON_KIND = "lexicon_rl"  # every other kind is judged as a preference (DPO) task, as in the report

NOTE = ("**passed**: the control behaved as a sound instrument needs; **failed**: it did not; **not run**: its metrics "
        "file or key is missing; **n/a**: the stage ran but recorded why the test cannot apply. A CI passes only if the "
        "whole 95% CI clears its reference (0, 50% chance, the trivial predictor or the shuffled null); a p passes below "
        "0.05 (0.01 for the paired planted tests); a readout 'beyond sign and shuffled null' needs its within-sign τ CI above 0 "
        "and above every shuffled arm; a fine-tune 'learned its reward' when its held-out reward gain over the base model (paired "
        "bootstrap over prompts) has a CI above 0 (a run recorded without that CI passes on the point difference). The sections "
        "below give every number.")



@dataclass(frozen=True)
class Verdict:
    """One row of the table: which task, which control, its verdict word and the evidence."""

    task: str
    control: str
    verdict: str
    evidence: str


def read_metrics(path: Path) -> dict[str, Any] | None:
    """A metrics JSON object, or None where the file is missing, unreadable or not an object: the
    verdict table must say "not run" for a stage that has not produced its file, not crash."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------- the measure stage's controls


def planted(measure: Metrics, control: Metrics) -> Judged:
    """A fine-tune whose reward flips a few positive words must be found by the measurement: its
    planted words separate from the others by learned value (the stage's `planted_detected` flag:
    AUC > 0.5 with permutation p < 0.05). Read from the measured task's lfp.json, else the control's own."""
    if measure is not None and num(measure, "planted_paired_auc") is not None:
        return planted_paired(measure)
    m = measure if measure is not None and num(measure, "planted_auc") is not None else control
    if miss := _missing(m, "lfp.json", "planted_auc"):
        return miss
    assert m is not None
    auc, p = num(m, "planted_auc"), num(m, "planted_p")
    assert auc is not None
    flag = m.get("planted_detected")
    detected = flag if isinstance(flag, bool) else p is not None and p < ALPHA and auc > 0.5
    return (PASSED if detected else FAILED), f"planted words' AUC {dec(auc, 2)}, p {pval(p)}"


def planted_paired(m: Mapping[str, Any]) -> Judged:
    """The paired planted test (planted run − true-reward run, same data and seed): AUC > 0.5 with
    permutation p below the stage's alpha (0.01), the unpaired AUC and the seed-vs-seed null beside it."""
    auc, p = num(m, "planted_paired_auc"), num(m, "planted_paired_p")
    flag = m.get("planted_paired_detected")
    detected = flag if isinstance(flag, bool) else auc is not None and p is not None and auc > 0.5 and p < 0.01
    return ((PASSED if detected else FAILED),
            f"paired AUC {dec(auc, 2)}, p {pval(p)} (seed-vs-seed null {dec(num(m, 'planted_paired_auc_seed_null_mean'), 2)}; "
            f"unpaired AUC {dec(num(m, 'planted_auc'), 2)})")


def shuffled_null_centred(m: Metrics) -> Judged:
    """The shuffled-reward fine-tunes (centred permutations) taught no valence: their learned-value τ
    against the real lexicon, over arms, has a t-interval covering 0."""
    if miss := _missing(m, "lfp.json", "learned_value_tau_null_mean"):
        return miss
    assert m is not None
    centred = m.get("shuffled_null_centred") is True
    return ((PASSED if centred else FAILED),
            f"τ vs lexicon over {m.get('shuffled_arms', '—')} arms: mean {dec(num(m, 'learned_value_tau_null_mean'))} "
            f"{dec_ci(m, 'learned_value_tau_null')} (range {dec(num(m, 'learned_value_tau_null_min'))} to {dec(num(m, 'learned_value_tau_null_max'))})")


def beyond_null(m: Metrics) -> Judged:
    """The measured fine-tune learned more than the sign: its within-sign τ CI lies above 0 and above
    every shuffled arm's within-sign τ."""
    key = "learned_value_tau_within_sign"
    if miss := _missing(m, "lfp.json", key, f"{key}_ci_low", f"{key}_null_max"):
        return miss
    assert m is not None
    lo = num(m, f"{key}_ci_low")
    assert lo is not None
    ok = lo > 0 and m.get(f"{key}_vs_null_outside") is True
    return ((PASSED if ok else FAILED),
            f"within-sign τ {dec_with_ci(m, key)} vs null {dec(num(m, f'{key}_null_min'))} to {dec(num(m, f'{key}_null_max'))} "
            f"(rank p {dec(num(m, f'{key}_vs_null_rank_p'), 2)}); gap {dec_with_ci(m, 'learned_value_sign_gap')}")


def readout_plant(m: Mapping[str, Any], r: str) -> Judged:
    """A readout sees the plant: its per-word values, planted run − true-reward run, separate the
    planted words (paired AUC > 0.5, p < 0.01)."""
    k = f"readout_{r}_"
    if m.get(k + "planted_paired_n") == 0:
        return NA, "no planted word among the words this readout reads (a neutral plant's words are not probe words)"
    if num(m, k + "planted_paired_auc") is None:
        return NOT_RUN, f"`{k}planted_paired_auc` missing from lfp.json"
    return ((PASSED if m.get(k + "planted_paired_detected") is True else FAILED),
            f"paired AUC {dec(num(m, k + 'planted_paired_auc'), 2)}, p {pval(num(m, k + 'planted_paired_p'))} "
            f"(seed-vs-seed null {dec(num(m, k + 'planted_paired_auc_seed_null_mean'), 2)}; "
            f"{m.get(k + 'planted_paired_n', '?')} planted words read)")


def readout_beyond_null(m: Mapping[str, Any], r: str) -> Judged:
    """A readout sees a learned pattern beyond the sign: within-sign τ CI above 0 and above every
    shuffled arm's."""
    k = f"readout_{r}_tau_within_sign"
    if num(m, k) is None or num(m, k + "_null_max") is None:
        return NOT_RUN, f"`{k}` or its null missing from lfp.json"
    lo = num(m, k + "_ci_low")
    ok = lo is not None and lo > 0 and m.get(k + "_vs_null_outside") is True
    return ((PASSED if ok else FAILED),
            f"within-sign τ {dec_with_ci(m, k)} vs null {dec(num(m, k + '_null_min'))} to {dec(num(m, k + '_null_max'))}")


def shuffled(measure: Metrics, control: Metrics) -> Judged:
    """A fine-tune on the lexicon with values permuted across words learned no valence, so its
    learned values must not track the real lexicon: τ CI covering 0 (the stage's `shuffled_detected`
    flag False). Read from the measured task's lfp.json, else the control's own."""
    if measure is not None and num(measure, "shuffled_learned_value_tau") is not None:
        m, key = measure, "shuffled_learned_value_tau"
    elif control is not None and num(control, "learned_value_tau") is not None:
        m, key = control, "learned_value_tau"
    else:
        return _missing(measure if measure is not None else control, "lfp.json", "shuffled_learned_value_tau") or (NOT_RUN, "no lfp.json")
    flag = m.get("shuffled_detected", m.get("detected"))
    covers = covers_zero(m, key)
    if isinstance(flag, bool):
        fooled = flag
    elif covers is not None:
        fooled = not covers
    else:
        return NOT_RUN, f"`{key}_ci_low`/`_ci_high` missing from lfp.json"
    return (FAILED if fooled else PASSED), f"τ vs lexicon {dec_with_ci(m, key)}" + (" (clear of 0)" if fooled else " (covers 0)")


def probe_vs_base_lexicon(m: Metrics) -> Judged:
    """The LFP question: on words the probe never saw, does it read more from the fine-tuned model's
    codes than from the base model's? Only a paired τ difference with a CI above 0 credits fine-tuning."""
    if miss := _missing(m, "lfp.json", "probe_tau_word_heldout_diff", "probe_tau_word_heldout_diff_ci_low",
                        "probe_tau_word_heldout_diff_ci_high"):
        return miss
    assert m is not None
    lo = num(m, "probe_tau_word_heldout_diff_ci_low")
    assert lo is not None
    words = f", {m['n_words_test']} held-out words" if isinstance(m.get("n_words_test"), int) else ""
    return (PASSED if lo > 0 else FAILED), f"τ fine-tuned − base {dec_with_ci(m, 'probe_tau_word_heldout_diff')}{words}"


def over_splits(m: Mapping[str, Any], *keys: str) -> tuple[Mapping[str, Any], str] | None:
    """`keys` as their mean and t-interval over the dialogue split seeds, where measure recorded them for
    every key (`<key>_split_mean`, `<key>_split_ci_low/high`), in the shape `with_ci` reads, and the
    phrase that says so. Why: one split's CI holds only its test pairs; a lucky or unlucky split
    (hh's 42 % was the lowest of 40) passes or fails a verdict that the splits' spread does not."""
    view: dict[str, Any] = {}
    for key in keys:
        mean, lo, hi = (num(m, f"{key}_split_{part}") for part in ("mean", "ci_low", "ci_high"))
        if mean is None or lo is None or hi is None:
            return None
        view.update({key: mean, f"{key}_ci_low": lo, f"{key}_ci_high": hi})
    seeds = m.get("pair_split_seeds")
    return view, f"mean over {len(seeds) if isinstance(seeds, list) else 'several'} dialogue splits"


def probe_vs_base_preference(m: Metrics) -> Judged:
    """The LFP question for preference pairs: pairwise accuracy on the fine-tuned model's codes minus
    the base model's must have a CI above 0: over the dialogue split seeds where measured, else
    the paired bootstrap over one split's test pairs."""
    if miss := _missing(m, "lfp.json", "pairwise_accuracy_diff", "pairwise_accuracy_diff_ci_low", "pairwise_accuracy_diff_ci_high"):
        return miss
    assert m is not None
    view, where = over_splits(m, "pairwise_accuracy_diff") or (m, "one split")
    lo = num(view, "pairwise_accuracy_diff_ci_low")
    assert lo is not None
    return ((PASSED if lo > 0 else FAILED),
            f"pairwise accuracy fine-tuned − base {with_ci(view, 'pairwise_accuracy_diff', pct=False)} ({where})")


def probe_vs_trivial_lexicon(m: Metrics) -> Judged:
    """A probe that predicts held-out words' values no better than a word-identity lookup or a
    perfect sign with random order within sign (ceilings on the same split) has not shown it reads
    more than the words' identity or sign: its τ CI must clear both."""
    if miss := _missing(m, "lfp.json", "probe_tau_word_heldout_finetuned", "probe_tau_word_heldout_finetuned_ci_low"):
        return miss
    assert m is not None
    ceilings = {name: num(m, key) for name, key in (("identity", "identity_ceiling_tau"), ("sign-only", "sign_ceiling_tau"))}
    known = {name: v for name, v in ceilings.items() if v is not None}
    if not known:
        return NOT_RUN, "`identity_ceiling_tau`/`sign_ceiling_tau` missing from lfp.json"
    lo = num(m, "probe_tau_word_heldout_finetuned_ci_low")
    assert lo is not None
    versus = ", ".join(f"{name} {dec(v)}" for name, v in known.items())
    return (PASSED if lo > max(known.values()) else FAILED), f"probe τ {dec_with_ci(m, 'probe_tau_word_heldout_finetuned')} vs {versus}"


def probe_vs_bow(m: Metrics) -> Judged:
    """A probe on the model's codes must read more than the replies' text: its pairwise accuracy's
    CI must lie above a bag-of-words classifier's on the same pairs (the report's criterion), over
    the dialogue split seeds where measured."""
    if miss := _missing(m, "lfp.json", "pairwise_accuracy_finetuned_ci_low", "pairwise_accuracy_bow"):
        return miss
    assert m is not None
    view, where = over_splits(m, "pairwise_accuracy_finetuned", "pairwise_accuracy_bow") or (m, "one split")
    lo, bow = num(view, "pairwise_accuracy_finetuned_ci_low"), num(view, "pairwise_accuracy_bow")
    assert lo is not None and bow is not None
    return ((PASSED if lo > bow else FAILED),
            f"pairwise {with_ci(view, 'pairwise_accuracy_finetuned')} vs bag-of-words {with_ci(view, 'pairwise_accuracy_bow')} ({where})")


def difference_vs_null(m: Metrics) -> Judged:
    """The probe on fine-tuned − base codes counts as reading learned feedback only if its τ CI
    clears 0 and lies above the same probe on the shuffled-reward fine-tune (which learned no
    valence); as in measure_report's sentence."""
    key, null = "probe_tau_word_heldout_difference", "shuffled_probe_tau_word_heldout_difference"
    if miss := _missing(m, "lfp.json", key, f"{key}_ci_low", f"{key}_ci_high"):
        return miss
    assert m is not None
    if num(m, f"{null}_ci_high") is None:
        return NOT_RUN, f"difference probe τ {dec_with_ci(m, key)}; its shuffled-reward null is missing"
    lo, null_hi = num(m, f"{key}_ci_low"), num(m, f"{null}_ci_high")
    assert lo is not None and null_hi is not None
    ok = covers_zero(m, key) is False and null_hi < lo
    return (PASSED if ok else FAILED), f"τ {dec_with_ci(m, key)} vs shuffled null {dec_with_ci(m, null)}"


# ------------------------------------------------------------------------- Tables 7 and 6 (validate)


def _signed(v: float | None) -> str:
    return "—" if v is None else f"{v:+.3f}"


def table7(v: Metrics) -> Judged:
    """Table 7 that can fail: related features' frequency must rise from low- to high-prediction
    held-out rows more than unrelated features' does (permutation p < 0.05)."""
    if v is None:
        return NOT_RUN, "no validate.json"
    p = num(v, "t7_p")
    if p is None:
        reason = v.get("t7_reason") or v.get("t7_quantile_reason")
        return (NA, str(reason)) if reason else (NOT_RUN, "`t7_p` missing from validate.json")
    contrast = f"related {_signed(num(v, 't7_related_contrast'))} vs unrelated {_signed(num(v, 't7_unrelated_contrast'))}"
    return (PASSED if p < ALPHA else FAILED), f"p {pval(p)}; high − low frequency: {contrast}"


def table6(v: Metrics) -> Judged:
    """Table 6 that can fail: zeroing the related features must lower the fine-tuning objective vs
    the SAE reconstruction (paired CI below 0) and more than zeroing frequency-matched random
    features (related − random CI below 0)."""
    if v is None:
        return NOT_RUN, "no validate.json"
    if num(v, "t6_related_ci_high") is None:
        reason = v.get("ablation_reason")
        return (NA, str(reason)) if reason else (NOT_RUN, "`t6_related_*` missing from validate.json")
    hi = num(v, "t6_related_ci_high")
    assert hi is not None
    related = f"related zeroed − reconstruction {dec(num(v, 't6_related_delta'))} {dec_ci(v, 't6_related')}"
    vs_hi = num(v, "t6_related_vs_random_ci_high")
    if vs_hi is None:
        return (FAILED if hi >= 0 else NOT_RUN), f"{related}; random-feature control missing"
    return ((PASSED if hi < 0 and vs_hi < 0 else FAILED),
            f"{related}; related − random {dec(num(v, 't6_related_vs_random_delta'))} {dec_ci(v, 't6_related_vs_random')}")


# ------------------------------------------------------------------------- rows and table


def run_verdicts(runs_dir: Path, model: str, task: str, kind: str, label: str | None = None) -> list[Verdict]:
    """Every control of one model-task run, read from `runs_dir/{model}-{task}/` (and the measure
    stage's control runs `{model}-{task}-planted|shuffled/`); lexicon tasks get the measure stage's
    word controls, preference tasks the pair controls."""
    run_dir = runs_dir / paths.run_id(model, task)
    f, m, v = (read_metrics(run_dir / name) for name in ("finetune.json", "lfp.json", "validate.json"))
    name = label or task
    if kind == LEXICON_KIND:
        control = {c: read_metrics(runs_dir / paths.run_id(model, paths.control_task(task, c)) / "lfp.json") for c in paths.CONTROLS}
        paired = m is not None and num(m, "planted_paired_auc") is not None
        judged = [("fine-tuning learned its reward", finetune_lexicon(f)),
                  *([("learned values beyond the sign and the shuffled null (within sign)", beyond_null(m)),
                     *([("planted fine-tune raised its own held-out reward", planted_reward(m))]
                       if m is not None and "planted_reward_gain" in m else []),
                     ("planted fine-tune learned its plant", planted_learned(m))] if paired else []),
                  ("planted control detected" + (" (paired)" if paired else ""), planted(m, control["planted"])),
                  *([*([("shuffled fine-tunes raised their own held-out reward", shuffled_reward(m))]
                       if "shuffled_arms_reward_learned" in m else []),
                     ("shuffled fine-tunes' learned values track their own reward", shuffled_learned(m)),
                     ("shuffled-reward null centred on 0 (over arms)", shuffled_null_centred(m))]
                    if m is not None and num(m, "learned_value_tau_null_mean") is not None
                    else [("shuffled-reward control not detected", shuffled(m, control["shuffled"]))]),
                  ("probe beats the base model", probe_vs_base_lexicon(m)),
                  ("probe beats trivial predictors", probe_vs_trivial_lexicon(m)),
                  ("difference probe beats its shuffled null", difference_vs_null(m))]
        for r in (m or {}).get("readouts") or []:
            if r != "learned_value" and m is not None:
                judged += [(f"readout `{r}` sees the plant (paired)", readout_plant(m, r)),
                           (f"readout `{r}` beyond sign and shuffled null", readout_beyond_null(m, r))]
    else:
        judged = [("fine-tuning learned the preference", finetune_preference(m, f)),
                  ("probe beats the base model", probe_vs_base_preference(m)),
                  ("probe beats trivial predictors (bag-of-words)", probe_vs_bow(m))]
    judged += [("Table 7: related features track predicted feedback", table7(v)),
               ("Table 6: zeroing related features lowers the objective", table6(v))]
    return [Verdict(name, control_name, verdict, evidence) for control_name, (verdict, evidence) in judged]


def collect(runs_dir: Path, runs: Sequence[tuple[str, str, str]]) -> list[Verdict]:
    """Rows for every (model, task, kind) run; the task column names the model too only when the
    runs span several models (as the report's labels do)."""
    several = len({model for model, _, _ in runs}) > 1
    return [row for model, task, kind in runs
            for row in run_verdicts(runs_dir, model, task, kind, paths.run_id(model, task) if several else task)]


def table(rows: Sequence[Verdict]) -> pd.DataFrame:
    """The Markdown/HTML table: verdict words in bold (render_html turns ** into <strong>)."""
    return pd.DataFrame([[r.task, r.control, f"**{r.verdict}**", r.evidence] for r in rows], columns=COLUMNS)


def markdown(rows: Sequence[Verdict]) -> str:
    return table(rows).to_markdown(index=False)


def discover(runs_dir: Path, model: str, kinds: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(model, task, kind) for each task of `kinds` that has a run folder under `runs_dir`: for
    checking a partial run without its params file."""
    return [(model, t, k) for t, k in kinds.items() if (runs_dir / paths.run_id(model, t)).is_dir()]
