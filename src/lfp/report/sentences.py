"""The sentences of "What this run shows" that every task kind shares: Table 7 (are the task-related
features more active where the probe predicts strong feedback?) and Table 6 (does zeroing them lower
the fine-tuning objective?), each computed from validate.json, never written by hand. `in_paper`:
the paper publishes these tables for the run's kind (VADER), so the sentence says whether we agree."""

from __future__ import annotations

import math
from typing import Any

from lfp.report.format import MISSING, fmt, num, paper_models, pci, pr, span

ABLATION_METRICS = {
    "vader_reward": "mean VADER reward of sampled completions",
    "dpo_implicit_reward_margin": "DPO implicit reward margin on held-out pairs",
}


def _predicted(v: dict[str, Any]) -> str:
    kind = v.get("predicted_kind")
    what = "predicted log-odds" if kind == "logistic_decision_function" else "predicted delta" if kind == "rescaled_delta" else "predicted value"
    return f"{what} > {fmt(v.get('delta_threshold'), 1)}"


def frequency_reason(v: dict[str, Any]) -> str | None:
    """Why Table 7 has no numbers for this run, from validate.json (None when it has them)."""
    if num(v, "freq_related") is not None and num(v, "freq_all") is not None:
        return None
    if v.get("freq_reason"):
        return str(v["freq_reason"])
    reasons = []
    if v.get("n_high_delta_inputs") == 0:
        reasons.append(f"no probe input had {_predicted(v)} (0 of {v.get('n_inputs', MISSING)})")
    if v.get("n_related_features") == 0:
        reasons.append(str(v.get("ablation_reason") or "no feature is labelled related in features.jsonl"))
    return "; ".join(reasons) or "`freq_related`/`freq_all` missing from validate.json"


def _contrast(v: dict[str, Any], prefix: str) -> str:
    """'related +0.021 vs unrelated +0.013' (freq on high − low rows), with the rows counted."""
    rel, unrel = num(v, f"{prefix}related_contrast"), num(v, f"{prefix}unrelated_contrast")
    return (f"related {'+' if (rel or 0) >= 0 else ''}{pr(rel)} vs unrelated {'+' if (unrel or 0) >= 0 else ''}{pr(unrel)} "
            f"over {v.get(f'{prefix}n_high', MISSING)} high / {v.get(f'{prefix}n_low', MISSING)} low rows")


def heldout_frequency_sentence(v: dict[str, Any]) -> str | None:
    """Table 7 that can fail, in words: on held-out rows, is a related feature's frequency on high-
    vs low-feedback rows (the within-feature contrast) larger than an unrelated one's? None for a
    validate.json without the `t7_*` keys."""
    if "t7_p" not in v and "t7_quantile_p" not in v:
        return None
    split = [(pfx, label) for pfx, label in (("t7_", _predicted(v)),
                                             ("t7_quantile_", f"top {fmt(1 - (num(v, 't7_quantile') or 0.75), pct=True)} of predictions"))
             if num(v, f"{pfx}p") is not None]
    unlabelled = f", {v['t7_n_unlabelled']} unlabelled" if isinstance(v.get("t7_n_unlabelled"), int) and v["t7_n_unlabelled"] else ""
    n = (f"on {v.get('t7_n_test', MISSING)} held-out rows ({v.get('t7_n_related', MISSING)} related vs "
         f"{v.get('t7_n_unrelated', MISSING)} unrelated explained features{unlabelled})")
    if not split:
        reasons = list(dict.fromkeys(str(v[k]) for k in ("t7_reason", "t7_quantile_reason") if v.get(k)))
        return f"{n}, Table 7's comparison is not possible: {'; '.join(reasons) or 'no p in validate.json'}"
    (pfx, label), rest = split[0], split[1:]
    p = num(v, f"{pfx}p")
    assert p is not None
    verdict = "are" if p < 0.05 else "are not"
    s = (f"{n}, related features {verdict} more frequent on high-feedback held-out rows than unrelated ones, "
         f"p = {pr(p)} (high = {label}; frequency on high − low rows, {_contrast(v, pfx)})")
    for pfx2, label2 in rest:
        s += f"; at the {label2}: p = {pr(num(v, f'{pfx2}p'))} ({_contrast(v, pfx2)})"
    ph = num(v, f"{pfx}p_high_only")
    if ph is not None and ph < 0.05 <= p:
        s += (f"; comparing frequencies on high rows alone (the paper's comparison) gives p = {pr(ph)}: "
              "a base-rate difference, not an association with the predicted feedback")
    lb, ll = num(v, f"{pfx}live_baseline_high"), num(v, f"{pfx}live_baseline_low")
    if lb is not None and ll is not None:
        s += f"; live-feature baseline {fmt(lb, pct=True)} on high vs {fmt(ll, pct=True)} on low rows ({v.get('t7_n_live', MISSING)} live features)"
    return s


def frequency_sentence(v: dict[str, Any], in_paper: bool, paper: dict[str, Any]) -> str:
    heldout = heldout_frequency_sentence(v)
    reason = frequency_reason(v)
    if reason:
        return f"not computed: {reason}." + (f" {heldout[0].upper()}{heldout[1:]}." if heldout else "")
    fr, fa = num(v, "freq_related"), num(v, "freq_all")
    assert fr is not None and fa is not None
    s = ("Paper method (all probe rows, all features): " if heldout else "")
    s += (f"the related features were active in {fmt(fr, pct=True)} of the {v.get('n_high_delta_inputs', MISSING)} probe inputs "
          f"with {_predicted(v)}, all features in {fmt(fa, pct=True)}")
    s += f" ({fr / fa:.2g}×)" if fa > 0 else ""
    published = paper_models(paper["table7_feature_frequency"])
    if in_paper and published:
        direction = "as in the paper" if fr > fa else "unlike the paper"
        s += (f" — {direction} (related {span([x['related'] for x in published.values()], pct=True)} "
              f"vs all {span([x['average'] for x in published.values()], pct=True)})")
    elif not in_paper:
        s += " — related features are " + ("more" if fr > fa else "not more") + " active (the paper reports Table 7 for VADER only)"
    return f"{heldout[0].upper()}{heldout[1:]}. {s}." if heldout else s + "."


def _paired_change(v: dict[str, Any], key: str, what: str) -> tuple[str, str]:
    """('lowered' | 'raised' | 'no change', clause) for a paired delta of validate.json: 'lowered
    the completion reward by 0.012 (95% CI of the change [-0.020, -0.004])', or 'changed … by
    -0.001 (95% CI [-0.010, 0.008], which includes 0: no detectable change)'."""
    delta, lo, hi = num(v, f"{key}_delta"), num(v, f"{key}_ci_low"), num(v, f"{key}_ci_high")
    if delta is None or lo is None or hi is None:
        return "unknown", f"changed {what} by {pr(delta)}"
    if hi < 0:
        return "lowered", f"lowered {what} by {pr(-delta)} (95% CI of the change {pci(v, key)})"
    if lo > 0:
        return "raised", f"raised {what} by {pr(delta)} (95% CI {pci(v, key)})"
    return "no change", f"changed {what} by {pr(delta)} (95% CI {pci(v, key)}, which includes 0: no detectable change)"


def paired_ablation_sentence(v: dict[str, Any], in_paper: bool) -> str | None:
    """Table 6 that can fail, in words: the direction and paired CI of zeroing the related features
    (completion reward only for VADER) vs the SAE reconstruction, against the frequency-matched
    random control. None for a validate.json without the `t6_*` deltas."""
    if num(v, "t6_related_delta") is None:
        return None
    what = "completion reward" if v.get("t6_metric") == "vader_reward_of_completion" else "DPO implicit reward margin"
    d, clause = _paired_change(v, "t6_related", f"the {what}")
    s = f"zero-ablating the related features {clause}"
    if in_paper:
        s += ", as in the paper" if d == "lowered" else ", unlike the paper" + ("" if d == "raised" else "'s drop")
    else:
        s += " (no paper number for this task)"
    if num(v, "t6_random_delta") is not None:
        n = len(v.get("t6_random_draw_deltas") or [])
        fr, fq = num(v, "t6_related_token_freq"), num(v, "t6_random_token_freq")
        freq = f", active on {fmt(fq, pct=True)} of tokens vs {fmt(fr, pct=True)} for the related ones" if fr is not None and fq is not None else ""
        s += f"; zeroing frequency-matched random features ({n} draws{freq}) {_paired_change(v, 't6_random', 'it')[1]}"
        rr, _ = _paired_change(v, "t6_related_vs_random", "it")
        s += (f"; related − random: {pr(num(v, 't6_related_vs_random_delta'))} (95% CI {pci(v, 't6_related_vs_random')}), so "
              + ("the related features matter no more than random ones of the same frequency" if rr in ("no change", "unknown")
                 else f"zeroing the related features {rr} it more than zeroing random ones of the same frequency"))
    if num(v, "t6_prefix_reward") is not None:
        s += (f". Per sample, over {v.get('t6_n', MISSING)} completions; the prefix's own reward ({pr(num(v, 't6_prefix_reward'))}, "
              "the same in every condition) is left out")
    return s


def ablation_sentence(v: dict[str, Any], in_paper: bool, paper: dict[str, Any]) -> str:
    rel, rec = num(v, "ablation_related"), num(v, "ablation_reconstruction")
    if rel is None or rec is None:
        return f"not run: {v.get('ablation_reason') or '`ablation_related`/`ablation_reconstruction` missing from validate.json'}."
    metric = ABLATION_METRICS.get(str(v.get("ablation_metric")), str(v.get("ablation_metric") or "the task score"))
    verb = "raised" if rel > rec else "lowered" if rel < rec else "did not change"
    n_rel = v.get("n_related_features", MISSING)
    nohook = num(v, "ablation_no_hook")
    paired = paired_ablation_sentence(v, in_paper)
    s = ("Paper method (" + ("reward of prefix + completion" if v.get("ablation_metric") == "vader_reward" else "means") + "): "
         if paired else "")
    s += (f"zeroing the {n_rel} related features {verb} the {metric} to {pr(rel)} "
         f"(SAE reconstruction alone: {pr(rec)}" + (f"; no hook: {pr(nohook)})" if nohook is not None else ")"))
    published = paper_models(paper["table6_ablation"])
    if in_paper and published:
        drops = [m for m, x in published.items() if x["after"] < x["before"]]
        flat = [m for m, x in published.items() if x["after"] == x["before"]]
        saw = f"the paper saw a drop for {len(drops)} of its {len(published)} models" + (f" and no change for {', '.join(flat)}" if flat else "")
        s += f", {'as in the paper' if rel < rec else 'unlike the paper'} ({saw})"
    draws = [float(d) for d in v.get("ablation_random_draws") or [] if isinstance(d, (int, float)) and math.isfinite(d)]
    if draws:
        spread = f"{len(draws)} random-feature draws ({pr(min(draws))} to {pr(max(draws))})"
        if abs(rel - rec) > max(abs(d - rec) for d in draws):
            s += f"; the change is larger than any of {spread}"
        else:
            s += f"; the change is within the range of {spread}, so it is not distinguishable from zeroing random features"
    elif num(v, "ablation_random") is not None:
        s += f"; random features zeroed: {pr(num(v, 'ablation_random'))}"
    s += "." if in_paper else ". No paper number: the paper ablates on the VADER task only."
    return f"{paired[0].upper()}{paired[1:]}. {s}" if paired else s
