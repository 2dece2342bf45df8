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
    out.append(f"**Planted control — {'detected' if detected else 'NOT detected'}:** a fine-tune whose reward flips the sign of "
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
               f"a fine-tune on the lexicon with values permuted across words gives learned values with τ "
               f"{_f(_n(m, 'shuffled_learned_value_tau'))} {_ci(m, 'shuffled_learned_value_tau')} against the real lexicon "
               f"(and {_f(_n(m, 'shuffled_learned_value_tau_reward'))} against the shuffled reward it was trained on).")
    ft, base, diff = _n(m, "probe_tau_word_heldout_finetuned"), _n(m, "probe_tau_word_heldout_base"), _n(m, "probe_tau_word_heldout_diff")
    lo, hi = _n(m, "probe_tau_word_heldout_diff_ci_low"), _n(m, "probe_tau_word_heldout_diff_ci_high")
    covers = lo is not None and hi is not None and lo <= 0 <= hi
    out.append(f"**Probe on words it never saw ({m.get('n_words_test', '—')} test words):** τ {_f(ft)} on the fine-tuned model's codes "
               f"and {_f(base)} on the base model's; difference {_f(diff)} [{_f(lo)}, {_f(hi)}]"
               + (" — the CI covers 0: the probe reads no more from the fine-tuned model than from the base (no learned pattern shown)."
                  if covers else (" — the fine-tuned model encodes more." if (diff or 0) > 0 else " — the base model encodes more."))
               + f" Ceilings on the same split: word identity {_f(_n(m, 'identity_ceiling_tau'))}, sign only {_f(_n(m, 'sign_ceiling_tau'))}.")
    out.append(f"**What the paper's method says on this run:** Table 4's τ (split by triple) is {_f(paper_tau)}; on that split "
               f"{_f(_n(m, 'paper_split_test_words_seen_in_training') and 100 * _n(m, 'paper_split_test_words_seen_in_training'), 0)} % "
               f"of test words occur in training rows and a word-identity lookup with no model reaches τ "
               f"{_f(_n(m, 'paper_split_identity_ceiling_tau'))} (sign only: {_f(_n(m, 'paper_split_sign_ceiling_tau'))}).")
    return out


def table(m: dict[str, Any], paper_tau: float | None) -> list[list[str]]:
    return [
        ["learned-value τ vs lexicon (seed of params)", _f(_n(m, "learned_value_tau")), _ci(m, "learned_value_tau"), f"p {_f(_n(m, 'learned_value_tau_p'), 4)}"],
        ["learned-value τ, mean over seeds", _f(_n(m, "learned_value_tau_seed_mean")), _ci(m, "learned_value_tau_seed"), f"seeds {m.get('seeds')}"],
        ["probe τ, word-held-out, fine-tuned", _f(_n(m, "probe_tau_word_heldout_finetuned")), "—",
         f"within sign +/−: {_f(_n(m, 'probe_tau_word_heldout_finetuned_positive_words'))} / {_f(_n(m, 'probe_tau_word_heldout_finetuned_negative_words'))}"],
        ["probe τ, word-held-out, base", _f(_n(m, "probe_tau_word_heldout_base")), "—",
         f"within sign +/−: {_f(_n(m, 'probe_tau_word_heldout_base_positive_words'))} / {_f(_n(m, 'probe_tau_word_heldout_base_negative_words'))}"],
        ["probe τ, fine-tuned − base (paired)", _f(_n(m, "probe_tau_word_heldout_diff")), _ci(m, "probe_tau_word_heldout_diff"), ""],
        ["identity-only ceiling (same split)", _f(_n(m, "identity_ceiling_tau")), "—", "one-hot word lookup, no model"],
        ["sign-only ceiling (same split)", _f(_n(m, "sign_ceiling_tau")), "—", "perfect sign, random order within sign"],
        ["planted control AUC", _f(_n(m, "planted_auc"), 2), "—", f"p {_f(_n(m, 'planted_p'), 4)}; un-planted fine-tune {_f(_n(m, 'planted_auc_base'), 2)}"],
        ["planted control AUC through the probe", _f(_n(m, "planted_probe_auc"), 2), "—",
         f"p {_f(_n(m, 'planted_probe_p'), 4)}; un-planted fine-tune {_f(_n(m, 'planted_probe_auc_base'), 2)}"],
        ["shuffled control τ vs lexicon", _f(_n(m, "shuffled_learned_value_tau")), _ci(m, "shuffled_learned_value_tau"), "must cover 0"],
        ["paper method: Table 4 τ (split by triple)", _f(paper_tau), "—",
         f"identity lookup on that split {_f(_n(m, 'paper_split_identity_ceiling_tau'))}; sign only {_f(_n(m, 'paper_split_sign_ceiling_tau'))}"],
    ]
