"""The validated LFP measurement in words: one plain sentence per control, detected or not, and a
table with every τ beside its ceilings (from `reports/runs/{m}-{t}/lfp.json`, stage `measure`)."""

from __future__ import annotations

import math
from typing import Any

COLUMNS = ["quantity", "value", "95% CI", "beside it"]


def _n(m: dict[str, Any], key: str) -> float | None:
    v = m.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(m: dict[str, Any], key: str) -> str:
    lo, hi = _n(m, f"{key}_ci_low"), _n(m, f"{key}_ci_high")
    return "—" if lo is None or hi is None else f"[{_f(lo)}, {_f(hi)}]"


def _p(v: float | None) -> str:
    return "—" if v is None else "< 0.001" if v < 0.001 else _f(v, 3)


def _covers_zero(m: dict[str, Any], key: str) -> bool | None:
    lo, hi = _n(m, f"{key}_ci_low"), _n(m, f"{key}_ci_high")
    return None if lo is None or hi is None else lo <= 0 <= hi


def _ci_after(m: dict[str, Any], key: str) -> str:
    """' [lo, hi]' after a number, or nothing where the CI was not measured."""
    c = _ci(m, key)
    return "" if c == "—" else f" {c}"


def _split_seeds(m: dict[str, Any], key: str) -> str:
    """'mean τ x [lo, hi] over n word splits' (the split varies, not the fine-tune)."""
    seeds = m.get("probe_split_seeds") or []
    return f"mean {_f(_n(m, f'{key}_seed_mean'))} {_ci(m, f'{key}_seed')} over {len(seeds)} word splits"


def _difference_verdict(m: dict[str, Any]) -> str:
    """Is the difference probe's τ a learned pattern? Not if its CI covers 0, and not if the
    shuffled-reward fine-tune (which learned no valence) reaches an overlapping τ on the same probe."""
    key, null = "probe_tau_word_heldout_difference", "shuffled_probe_tau_word_heldout_difference"
    lo, null_hi = _n(m, f"{key}_ci_low"), _n(m, f"{null}_ci_high")
    if _covers_zero(m, key):
        return " — the CI covers 0: the change fine-tuning made to the representations shows no learned pattern."
    if _n(m, null) is None or lo is None or null_hi is None:
        return " (no shuffled-reward control of this probe in this run, so it cannot tell a learned pattern from an artefact)."
    null_text = f"the shuffled-reward fine-tune, which learned no valence, reaches τ {_f(_n(m, null))} {_ci(m, null)} on the same probe"
    if null_hi >= lo:
        return (f" — but {null_text}: the difference probe also reads something other than learned feedback, so this τ is "
                "no evidence of a learned pattern.")
    return f" — and {null_text}: the change fine-tuning made to the representations encodes the words' feedback."


def _difference_sentence(m: dict[str, Any]) -> str:
    key = "probe_tau_word_heldout_difference"
    planted = (f" (planted fine-tune: τ {_f(_n(m, f'planted_{key}'))} {_ci(m, f'planted_{key}')})"
               if _n(m, f"planted_{key}") is not None else "")
    return (f"**Probe on what fine-tuning changed (same tokens, one dictionary):** the fine-tuned model's codes minus the base "
            f"model's codes through the same (fine-tuned) SAEs predict held-out words' values with τ {_f(_n(m, key))} {_ci(m, key)} "
            f"(p {_p(_n(m, f'{key}_p'))}; {_split_seeds(m, key)}){planted}" + _difference_verdict(m))


def sentences(m: dict[str, Any], paper_tau: float | None) -> list[str]:
    """One sentence per measurement and control, in the order a skeptic asks."""
    out = []
    tau, p = _n(m, "learned_value_tau"), _n(m, "learned_value_tau_p")
    direction = "rose for positive and fell for negative words, as the reward asks" if (tau or 0) > 0 else "did not follow the lexicon"
    out.append(f"**Ground truth (behaviour):** fine-tuning changed each word's log-probability in its real review contexts; "
               f"those learned values track the VADER lexicon with τ {_f(tau)} {_ci(m, 'learned_value_tau')} (p {_f(p, 3) if p is not None and p >= 0.001 else '< 0.001' if p is not None else '—'}): "
               f"the model's preferences {direction}. Across {len(m.get('seeds') or [])} fine-tuning seeds: "
               f"mean τ {_f(_n(m, 'learned_value_tau_seed_mean'))} {_ci(m, 'learned_value_tau_seed')}.")
    detected = m.get("planted_detected") is True
    planted_task = f" (reported as its own task `{m['planted_control_task']}`)" if m.get("planted_control_task") else ""
    out.append(f"**Planted control — {'detected' if detected else 'NOT detected'}:** a fine-tune{planted_task} whose reward flips the sign of "
               f"{m.get('planted_n', '—')} positive words separates them from {m.get('planted_n_other', '—')} other positive words by "
               f"their learned values with AUC {_f(_n(m, 'planted_auc'), 2)} (permutation p {_f(_n(m, 'planted_p'), 4)}; mean learned value "
               f"{_f(_n(m, 'planted_mean_learned'))} vs {_f(_n(m, 'planted_mean_learned_other'))}); the same score on the "
               f"un-planted fine-tune gives AUC {_f(_n(m, 'planted_auc_base'), 2)}. Through the probe (the paper-method ridge probe on "
               f"the fine-tuned SAEs' codes of each word in context, planted model minus base): AUC {_f(_n(m, 'planted_probe_auc'), 2)} "
               f"(p {_f(_n(m, 'planted_probe_p'), 4)}; un-planted fine-tune {_f(_n(m, 'planted_probe_auc_base'), 2)}) — "
               + ("the probe sees the plant too." if (_n(m, "planted_probe_p") or 1) < 0.05 and (_n(m, "planted_probe_auc") or 0) > 0.5
                  else "the probe does not see the plant."))
    shuffled = m.get("shuffled_detected") is True
    out.append(f"**Shuffled-reward control — {'a pattern WAS found (the instrument is fooled)' if shuffled else 'no pattern found, as it should'}:** "
               f"a fine-tune on the lexicon with values permuted across words"
               + (f" (its own task `{m['shuffled_control_task']}`)" if m.get("shuffled_control_task") else "")
               + f" gives learned values with τ "
               f"{_f(_n(m, 'shuffled_learned_value_tau'))} {_ci(m, 'shuffled_learned_value_tau')} against the real lexicon "
               f"(and {_f(_n(m, 'shuffled_learned_value_tau_reward'))} against the shuffled reward it was trained on)"
               + (f"; through the probe its change tracks the lexicon with τ {_f(_n(m, 'shuffled_probe_shift_tau'))} "
                  f"{_ci(m, 'shuffled_probe_shift_tau')}"
                  + (" (a CI clear of 0: the probe's view of a change is not free of artefacts)"
                     if _covers_zero(m, "shuffled_probe_shift_tau") is False else "")
                  if _n(m, "shuffled_probe_shift_tau") is not None else "") + ".")
    ft, base, diff = _n(m, "probe_tau_word_heldout_finetuned"), _n(m, "probe_tau_word_heldout_base"), _n(m, "probe_tau_word_heldout_diff")
    lo, hi = _n(m, "probe_tau_word_heldout_diff_ci_low"), _n(m, "probe_tau_word_heldout_diff_ci_high")
    covers = lo is not None and hi is not None and lo <= 0 <= hi
    out.append(f"**Probe on words it never saw ({m.get('n_words_test', '—')} test words):** τ {_f(ft)}"
               f"{_ci_after(m, 'probe_tau_word_heldout_finetuned')} on the fine-tuned model's codes "
               f"and {_f(base)}{_ci_after(m, 'probe_tau_word_heldout_base')} on the base model's; difference {_f(diff)} [{_f(lo)}, {_f(hi)}]"
               + (" — the CI covers 0: the probe reads no more from the fine-tuned model than from the base (no learned pattern shown)."
                  if covers else (" — the fine-tuned model encodes more." if (diff or 0) > 0 else " — the base model encodes more."))
               + f" Ceilings on the same split: word identity {_f(_n(m, 'identity_ceiling_tau'))}, sign only {_f(_n(m, 'sign_ceiling_tau'))}."
               + (f" Over other word splits (split seeds, same models): fine-tuned {_split_seeds(m, 'probe_tau_word_heldout_finetuned')}, "
                  f"base {_split_seeds(m, 'probe_tau_word_heldout_base')}, difference {_split_seeds(m, 'probe_tau_word_heldout_diff')}."
                  if m.get("probe_seed_kind") == "word_split" else ""))
    if _n(m, "probe_tau_word_heldout_difference") is not None:
        out.append(_difference_sentence(m))
    if _n(m, "error_learned_value_tau") is not None:
        out.append(f"**Probe error vs what was learned (Fig. 4 with a full axis):** over {m.get('error_learned_value_n', '—')} held-out words, "
                   f"τ(|probe error|, learned value) = {_f(_n(m, 'error_learned_value_tau'))} (p {_p(_n(m, 'error_learned_value_tau_p'))}); "
                   "the paper's axis (times generated) is 0 for almost every word.")
    out.append(f"**What the paper's method says on this run:** Table 4's τ (split by triple) is {_f(paper_tau)}; on that split "
               f"{_f(_n(m, 'paper_split_test_words_seen_in_training') and 100 * _n(m, 'paper_split_test_words_seen_in_training'), 0)} % "
               f"of test words occur in training rows and a word-identity lookup with no model reaches τ "
               f"{_f(_n(m, 'paper_split_identity_ceiling_tau'))} (sign only: {_f(_n(m, 'paper_split_sign_ceiling_tau'))}).")
    return out


def table(m: dict[str, Any], paper_tau: float | None) -> list[list[str]]:
    return [
        ["learned-value τ vs lexicon (seed of params)", _f(_n(m, "learned_value_tau")), _ci(m, "learned_value_tau"), f"p {_f(_n(m, 'learned_value_tau_p'), 4)}"],
        ["learned-value τ, mean over seeds", _f(_n(m, "learned_value_tau_seed_mean")), _ci(m, "learned_value_tau_seed"), f"seeds {m.get('seeds')}"],
        ["probe τ, word-held-out, fine-tuned", _f(_n(m, "probe_tau_word_heldout_finetuned")), _ci(m, "probe_tau_word_heldout_finetuned"),
         f"within sign +/−: {_f(_n(m, 'probe_tau_word_heldout_finetuned_positive_words'))} / {_f(_n(m, 'probe_tau_word_heldout_finetuned_negative_words'))}"],
        ["probe τ, word-held-out, base", _f(_n(m, "probe_tau_word_heldout_base")), _ci(m, "probe_tau_word_heldout_base"),
         f"within sign +/−: {_f(_n(m, 'probe_tau_word_heldout_base_positive_words'))} / {_f(_n(m, 'probe_tau_word_heldout_base_negative_words'))}"],
        ["probe τ, fine-tuned − base (paired)", _f(_n(m, "probe_tau_word_heldout_diff")), _ci(m, "probe_tau_word_heldout_diff"), ""],
        ["probe τ on the difference of representations (ft − base, ft SAEs)", _f(_n(m, "probe_tau_word_heldout_difference")),
         _ci(m, "probe_tau_word_heldout_difference"), f"p {_p(_n(m, 'probe_tau_word_heldout_difference_p'))}; same tokens, one dictionary"],
        ["  same probe, shuffled-reward fine-tune − base (null)", _f(_n(m, "shuffled_probe_tau_word_heldout_difference")),
         _ci(m, "shuffled_probe_tau_word_heldout_difference"), "a learned pattern must beat this"],
        ["  same probe, planted fine-tune − base", _f(_n(m, "planted_probe_tau_word_heldout_difference")),
         _ci(m, "planted_probe_tau_word_heldout_difference"), ""],
        *[[f"probe τ, {label}, mean over word splits", _f(_n(m, f"probe_tau_word_heldout_{key}_seed_mean")),
           _ci(m, f"probe_tau_word_heldout_{key}_seed"), f"split seeds {m.get('probe_split_seeds')} (not fine-tuning seeds)"]
          for key, label in (("finetuned", "fine-tuned"), ("base", "base"), ("diff", "fine-tuned − base"), ("difference", "difference probe"))
          if m.get("probe_seed_kind") == "word_split"],
        ["identity-only ceiling (same split)", _f(_n(m, "identity_ceiling_tau")), "—", "one-hot word lookup, no model"],
        ["sign-only ceiling (same split)", _f(_n(m, "sign_ceiling_tau")), "—", "perfect sign, random order within sign"],
        ["planted control AUC", _f(_n(m, "planted_auc"), 2), "—", f"p {_f(_n(m, 'planted_p'), 4)}; un-planted fine-tune {_f(_n(m, 'planted_auc_base'), 2)}"],
        ["planted control AUC through the probe", _f(_n(m, "planted_probe_auc"), 2), "—",
         f"p {_f(_n(m, 'planted_probe_p'), 4)}; un-planted fine-tune {_f(_n(m, 'planted_probe_auc_base'), 2)}"],
        ["shuffled control τ vs lexicon", _f(_n(m, "shuffled_learned_value_tau")), _ci(m, "shuffled_learned_value_tau"), "must cover 0"],
        ["probe's view of the change, τ vs lexicon (fine-tuned / shuffled)", _f(_n(m, "probe_shift_tau")), _ci(m, "probe_shift_tau"),
         f"shuffled control {_f(_n(m, 'shuffled_probe_shift_tau'))} {_ci(m, 'shuffled_probe_shift_tau')}"],
        ["τ(|probe error|, learned value), held-out words", _f(_n(m, "error_learned_value_tau")), "—",
         f"p {_f(_n(m, 'error_learned_value_tau_p'), 4)}; n {m.get('error_learned_value_n', '—')}"],
        ["paper method: Table 4 τ (split by triple)", _f(paper_tau), "—",
         f"identity lookup on that split {_f(_n(m, 'paper_split_identity_ceiling_tau'))}; sign only {_f(_n(m, 'paper_split_sign_ceiling_tau'))}"],
    ]
