"""The preference (DPO) measurement in words and one table (Table 3 with its controls), from
`reports/runs/{m}-{t}/lfp.json` (stage `measure`, lfp.tasks.preference_dpo.measure) and probe.json (paper method)."""

from __future__ import annotations

import math
from typing import Any

COLUMNS = ["probe", "fine-tuned", "base", "fine-tuned − base", "bag-of-words (text only)", "shuffled labels"]
CHANCE = 0.5


def _n(m: dict[str, Any], key: str) -> float | None:
    v = m.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _with_ci(m: dict[str, Any], key: str, pct: bool = True) -> str:
    v, lo, hi = _n(m, key), _n(m, f"{key}_ci_low"), _n(m, f"{key}_ci_high")
    show = _pct if pct else (lambda x: "—" if x is None else f"{x:+.3f}")
    if v is None:
        return "—"
    return show(v) + ("" if lo is None or hi is None else f" [{show(lo)}, {show(hi)}]")


def _above(m: dict[str, Any], key: str, level: float) -> bool | None:
    lo = _n(m, f"{key}_ci_low")
    return None if lo is None else lo > level


def table(m: dict[str, Any], probe: dict[str, Any]) -> list[list[str]]:
    """Rows: the paper's probe on triples, then the three probe forms on real held-out pairs."""
    def diff_pp(key: str) -> str:  # fine-tuned − base, in accuracy points, paired CI
        return _with_ci(m, f"{key}_diff", pct=False)

    return [
        ["paper method: pointwise logistic on contrastive triples (probe.json)", _with_ci(probe, "probe_accuracy"),
         _with_ci(probe, "base_control_probe_accuracy"), "—", _with_ci(probe, "bow_baseline_accuracy"), _pct(_n(probe, "shuffled_probe_accuracy"))],
        ["pointwise: chosen vs rejected reply, real held-out pairs", _with_ci(m, "probe_accuracy_finetuned"), _with_ci(m, "probe_accuracy_base"),
         diff_pp("probe_accuracy"), _with_ci(m, "bow_baseline_accuracy"), "—"],
        ["pairwise: A(chosen) − A(rejected)", _with_ci(m, "pairwise_accuracy_finetuned"), _with_ci(m, "pairwise_accuracy_base"),
         diff_pp("pairwise_accuracy"), _with_ci(m, "pairwise_accuracy_bow"), _pct(_n(m, "pairwise_shuffled_accuracy_finetuned"))],
        ["implicit-reward probe: sign of predicted margin = sign of DPO's margin", _with_ci(m, "reward_probe_margin_accuracy_finetuned"),
         _with_ci(m, "reward_probe_margin_accuracy_base"), diff_pp("reward_probe_margin_accuracy"),
         _with_ci(m, "reward_probe_margin_accuracy_bow"), "—"],
        ["(difference activations: fine-tuned − base, one dictionary) pairwise", _with_ci(m, "pairwise_accuracy_difference"), "", "", "", ""],
    ]


def sentences(m: dict[str, Any], probe: dict[str, Any]) -> list[str]:
    """One sentence per question: did DPO learn, does the probe beat text, does it beat the base."""
    out = []
    learned = _above(m, "implicit_reward_acc", CHANCE)
    out.append(f"**Did DPO learn a preference that generalises?** On {m.get('n_pairs', '—')} held-out pairs (never trained on; "
               f"{m.get('n_pairs_cut_to_context', '—')} cut to the {m.get('context_tokens', '—')}-token context), DPO's implicit reward "
               f"β·log π_ft/π_base ranks the preferred reply higher in {_with_ci(m, 'implicit_reward_acc')} of pairs — "
               + (("above 50% chance (the CI excludes it)" + (": a weak learned preference, but one a probe could find."
                   if (_n(m, "implicit_reward_acc_ci_low") or 0) < 0.55 else ": a learned preference exists to be found."))
                  if learned else "not clearly above 50% chance: there is little learned preference for any probe to find."))
    pair, bow = _n(m, "pairwise_accuracy_finetuned"), _n(m, "pairwise_accuracy_bow")
    pair_lo = _n(m, "pairwise_accuracy_finetuned_ci_low")
    beats_text = pair is not None and bow is not None and pair_lo is not None and pair_lo > bow
    out.append(f"**Does the probe read more than the text?** The pairwise probe on the fine-tuned model's codes tells the preferred reply "
               f"in {_with_ci(m, 'pairwise_accuracy_finetuned')} of held-out pairs; a bag-of-words classifier on the same replies, no model, "
               f"gets {_with_ci(m, 'pairwise_accuracy_bow')} — "
               + ("the probe is above the text-only baseline." if beats_text else "the probe does not beat the text-only baseline."))
    d, lo, hi = _n(m, "pairwise_accuracy_diff"), _n(m, "pairwise_accuracy_diff_ci_low"), _n(m, "pairwise_accuracy_diff_ci_high")
    if d is not None and lo is not None and hi is not None:
        verdict = ("fine-tuning added preference information to the activations" if lo > 0 else
                   "fine-tuning removed some" if hi < 0 else "no difference that the CI can tell from zero: the base model's codes carry the same information")
        out.append(f"**Fine-tuned vs base (the LFP question):** pairwise accuracy fine-tuned − base = {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                   f"(paired bootstrap over test pairs): {verdict}. Predicting DPO's own implicit reward from the codes: "
                   f"τ {(_n(m, 'reward_probe_tau_finetuned') or float('nan')):.3f} fine-tuned, "
                   f"{(_n(m, 'reward_probe_tau_base') or float('nan')):.3f} base, "
                   f"{(_n(m, 'reward_probe_tau_bow') or float('nan')):.3f} bag-of-words.")
    pa, pb = _n(probe, "probe_accuracy"), _n(probe, "bow_baseline_accuracy")
    if pa is not None and pb is not None:
        out.append(f"**The paper's probe on contrastive triples ({m.get('triples_backend', '—')} backend):** {_pct(pa)} vs {_pct(pb)} for "
                   "bag-of-words on the same triples — "
                   + ("the triples are separable from their text alone, so this accuracy measures how different the triples are, "
                      "not a learned feedback pattern." if pb >= pa - 0.02 else "the probe beats the text of the triples."))
    return out
