"""Verdicts on whether each fine-tune learned the reward it was given (a control must learn before
it can speak): the main fine-tune's held-out reward or implicit-reward accuracy, the planted and
shuffled fine-tunes' own held-out reward, and their learned values against that reward."""

from __future__ import annotations

from lfp.report.format import CHANCE, dec, dec_ci, dec_with_ci, num, with_ci
from lfp.report.verdict_base import FAILED, NOT_RUN, PASSED, Judged, Metrics, missing as _missing


def finetune_lexicon(f: Metrics) -> Judged:
    """RL on a lexicon reward learned if the held-out mean reward beats the base model's on the same
    prompts: the gain's paired-bootstrap CI above 0 (older finetune.json files without a CI: `beats_base`)."""
    if miss := _missing(f, "finetune.json", "reward_base", "reward_finetuned"):
        return miss
    assert f is not None
    rb, rf, lo = num(f, "reward_base"), num(f, "reward_finetuned"), num(f, "reward_gain_ci_low")
    assert rb is not None and rf is not None
    if lo is None:
        beats = f["beats_base"] if isinstance(f.get("beats_base"), bool) else rf > rb
        return (PASSED if beats else FAILED), f"held-out reward {dec(rb)} (base) → {dec(rf)} (fine-tuned), no CI recorded"
    return ((PASSED if lo > 0 else FAILED),
            f"held-out reward {dec(rb)} (base) → {dec(rf)} (fine-tuned), gain {dec_with_ci(f, 'reward_gain')}")


def planted_reward(m: Metrics) -> Judged:
    """The planted fine-tune raised its own (planted) reward on held-out prompts: gain CI above 0."""
    if miss := _missing(m, "lfp.json", "planted_reward_gain", "planted_reward_gain_ci_low"):
        return miss
    assert m is not None
    lo = num(m, "planted_reward_gain_ci_low")
    assert lo is not None
    return ((PASSED if lo > 0 else FAILED),
            f"held-out planted reward {dec(num(m, 'planted_reward_base'))} (base) → {dec(num(m, 'planted_reward_finetuned'))}, "
            f"gain {dec_with_ci(m, 'planted_reward_gain')}")


def shuffled_reward(m: Metrics) -> Judged:
    """Every shuffled arm raised its own permuted reward on held-out prompts (each gain's CI above 0);
    its gain under the real lexicon is shown beside it (the behavioural null)."""
    if m is None or not isinstance(m.get("shuffled_arms_reward_learned"), bool):
        return NOT_RUN, "`shuffled_arms_reward_learned` missing from lfp.json"
    own = zip(m.get("shuffled_arms_reward_gain") or [], m.get("shuffled_arms_reward_gain_ci_low") or [],
              m.get("shuffled_arms_reward_gain_ci_high") or [])
    arms = "; ".join(f"{dec(g)} [{dec(lo)}, {dec(hi)}]" for g, lo, hi in own)
    real = ", ".join(dec(g) for g in m.get("shuffled_arms_reward_lexicon_gain") or [])
    return ((PASSED if m.get("shuffled_arms_reward_learned") is True else FAILED),
            f"held-out own-reward gain per arm: {arms}; under the real lexicon: {real}")


def finetune_preference(measure: Metrics, f: Metrics) -> Judged:
    """DPO learned a preference that generalises only if DPO's implicit reward ranks the preferred
    reply higher on held-out pairs with a CI above 50% chance. Reads the larger of the two held-out
    evaluations: the measure stage's (lfp.json) and the fine-tune stage's (finetune.json). Both take a
    prefix of one seeded order of the held-out pairs, so the larger set holds the smaller one."""
    found = []
    if measure is not None and num(measure, "implicit_reward_acc_ci_low") is not None:
        found.append((measure, "implicit_reward_acc", measure.get("n_pairs"), "lfp.json"))
    if f is not None and num(f, "implicit_reward_accuracy_ci_low") is not None:
        found.append((f, "implicit_reward_accuracy", f.get("eval_pairs"), "finetune.json"))
    if not found:
        return NOT_RUN, "no implicit-reward accuracy with a CI in lfp.json or finetune.json"
    m, key, n, where = max(found, key=lambda e: e[2] if isinstance(e[2], int) else -1)  # a tie keeps lfp.json
    lo = num(m, f"{key}_ci_low")
    assert lo is not None
    pairs = f" on {n} held-out pairs" if isinstance(n, int) else ""
    return (PASSED if lo > CHANCE else FAILED), f"implicit-reward accuracy {with_ci(m, key)}{pairs} ({where}; chance 50%)"


def planted_learned(m: Metrics) -> Judged:
    """A control must learn before it can speak: the planted words' learned values fell in the
    planted run relative to the true-reward run (t-interval over the planted words below 0)."""
    if miss := _missing(m, "lfp.json", "planted_paired_mean_change", "planted_paired_mean_change_ci_high"):
        return miss
    assert m is not None
    hi = num(m, "planted_paired_mean_change_ci_high")
    assert hi is not None
    return ((PASSED if hi < 0 else FAILED),
            f"planted words' change vs the true-reward run {dec_with_ci(m, 'planted_paired_mean_change')} "
            f"(controls {dec(num(m, 'planted_paired_mean_change_other'))})")


def shuffled_learned(m: Metrics) -> Judged:
    """The shuffled arms' learned values track the reward they were given: τ against it, t-interval over arms above 0."""
    if miss := _missing(m, "lfp.json", "shuffled_arms_tau_reward_mean"):
        return miss
    assert m is not None
    return ((PASSED if m.get("shuffled_learned") is True else FAILED),
            f"τ vs own reward over {m.get('shuffled_arms', '—')} arms: mean {dec(num(m, 'shuffled_arms_tau_reward_mean'))} "
            f"{dec_ci(m, 'shuffled_arms_tau_reward')}")
