"""Kind `preference_dpo` in the report: its sentences and fine-tuning rows inside the shared sections,
its validated measurement (DPO's implicit reward as ground truth, from `reports/runs/{m}-{t}/lfp.json`,
stage `measure`, lfp.tasks.preference_dpo.measure) and the paper's Table 3 with its controls. The
report reaches this module only through the kind object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lfp.core import paths
from lfp.core.params import Params
from lfp.report.document import Section
from lfp.report.format import CHANCE, MISSING, change_verb, ci, fmt, num, paper_models, percent, pr, span, versus, with_ci
from lfp.report.inputs import ReportInputs, Runs, copy_figure, proxy_data_note

COLUMNS = ["probe", "fine-tuned", "base", "fine-tuned − base", "bag-of-words (text only)", "shuffled labels"]
SPLIT_SOURCES = {"finetuned": "fine-tuned", "base": "base", "difference": "difference", "bow": "bag-of-words", "diff": "fine-tuned − base"}
SPLIT_COLUMNS = ["trained → tested", "test pairs per split", *SPLIT_SOURCES.values()]


class PreferenceReport:
    """DPO on preference pairs (the paper's HH and toxic tasks): logistic probe scored by accuracy."""

    probe_metric = "probe_accuracy"
    paper_tables_6_7 = False  # the paper reports Tables 6 and 7 for VADER only
    finetune_notes = ("KL to base is — on the DPO rows: the DPO stage measures no KL; its loss and margins are already "
                      "relative to the base model, which is DPO's reference model.",
                      "*beats base* is judged on each task's own objective (its first row) only; the rows below it are context, "
                      "so that cell is empty.")

    def probe_sentence(self, probe: Mapping[str, Any], task: str, paper: Mapping[str, Any]) -> str:
        return probe_sentence(probe, task, paper)

    def finetune_sentence(self, f: Mapping[str, Any]) -> str:
        lb, lf = num(f, "dpo_loss_base"), num(f, "dpo_loss_finetuned")
        if lb is None or lf is None:
            return "not available (`dpo_loss_base`/`dpo_loss_finetuned` missing from finetune.json)."
        beats = f["beats_base"] if isinstance(f.get("beats_base"), bool) else lf < lb
        s = (f"DPO {change_verb(lb, lf, 'raised', 'lowered')} the held-out DPO loss from {pr(lb)} to {pr(lf)} (lower is better): "
             + ("it beat the base on its own objective" if beats else "it did not beat the base on its own objective"))
        ab, af = num(f, "reward_accuracy_base"), num(f, "reward_accuracy_finetuned")
        if ab is not None and af is not None:
            s += (f"; the stricter absolute preference accuracy stayed at {fmt(af, pct=True)}" if ab == af
                  else f"; the stricter absolute preference accuracy went from {fmt(ab, pct=True)} to {fmt(af, pct=True)}")
        return s + "."

    def finetune_rows(self, model: str, task: str, f: Mapping[str, Any]) -> list[list[Any]]:
        m, t = model, task
        return [[m, t, "held-out DPO loss (own objective; base = ln 2)", fmt(f.get("dpo_loss_base")),
                 fmt(f.get("dpo_loss_finetuned")), MISSING, fmt(f.get("beats_base"))],
                [m, t, "absolute preference accuracy (stricter)", fmt(f.get("reward_accuracy_base"), pct=True),
                 fmt(f.get("reward_accuracy_finetuned"), pct=True), MISSING, ""],
                [m, t, "preference margin", fmt(f.get("reward_margin_base")),
                 fmt(f.get("reward_margin_finetuned")), MISSING, ""]]

    def finetune_headline(self, f: Mapping[str, Any]) -> dict[str, float | None]:
        """Held-out DPO loss, base − fine-tuned (the base scores ln 2; positive = better)."""
        lb, lf = num(f, "dpo_loss_base"), num(f, "dpo_loss_finetuned")
        return {"finetune_dpo_loss_drop": lb - lf if lb is not None and lf is not None else None}

    def proxy_notes(self, params: Params, task: str) -> list[str]:
        data_note = proxy_data_note(params, task)
        notes = [data_note] if data_note else []
        backend = getattr(getattr(params.contrastive, task, None), "backend", None)
        if backend == "pairs":
            notes.append("contrastive triples: preferred/dispreferred pair + fixed neutral reply (proxy for LLM rewrites)")
        elif backend == "substitution":
            notes.append("contrastive triples: one helpful / neutral / dismissive phrase substituted into the chosen reply "
                         "(offline proxy for the paper's LLM rewrites)")
        return notes

    def measurement_section(self, inputs: ReportInputs, model: str, task: str, run: dict[str, Any]) -> Section:
        r = run
        sec = Section(f"The validated measurement: {inputs.label(model, task)} (DPO's implicit reward as ground truth)")
        sec.text.extend(sentences(r["measure"], r["probe"]))
        sec.tables.append(("", pd.DataFrame(table(r["measure"], r["probe"]), columns=COLUMNS)))
        sec.notes.append("Accuracies with 95% bootstrap CIs over held-out test pairs (split by dialogue); fine-tuned − base "
                         "is a paired difference. Per-pair implicit rewards in `reports/runs/<run>/lfp_pairs.csv`.")
        if num(r["measure"], "pairwise_accuracy_finetuned_split_mean") is not None:
            sec.text.append(split_sentence(r["measure"]))
            sec.tables.append(("Pairwise probe over dialogue splits: pooled, within each subset, across subsets",
                               pd.DataFrame(split_table(r["measure"]), columns=SPLIT_COLUMNS)))
            sec.notes.append(f"Over dialogue splits: mean [95% t-interval] over {len(r['measure'].get('pair_split_seeds') or [])} splits "
                             "(seeds `seed`, `seed`+1, ...; features reused, probes refitted). The splits share pairs, so the interval "
                             "says how much the number moves with the split, not how it would move on new dialogues. A → B: trained on "
                             "A's training pairs, tested on B's test pairs (the same pairs as 'within B'). Pointwise accuracies: "
                             "`probe_accuracy_*_split_*` in lfp.json.")
        return sec

    def sections(self, inputs: ReportInputs, runs: Runs) -> list[Section]:
        return [table3_section(inputs, runs)]


REPORT = PreferenceReport()


def probe_sentence(p: Mapping[str, Any], task: str, paper: Mapping[str, Any]) -> str:
    """Accuracy of the paper-method probe against 50% chance and its controls, above all the base-model control."""
    acc = num(p, "probe_accuracy")
    if acc is None:
        return "probe accuracy not available (`probe_accuracy` is missing from probe.json)."
    lo, hi = num(p, "probe_accuracy_ci_low"), num(p, "probe_accuracy_ci_high")
    n = f" on {p['n_test']} held-out examples" if isinstance(p.get("n_test"), int) else ""
    shuffled, base = num(p, "shuffled_probe_accuracy"), num(p, "base_control_probe_accuracy")
    published = [v[task] for v in paper_models(paper["table3_probe_accuracy"]).values() if task in v]
    tail = f" (paper: {span(published, pct=True)} on LLM-rewritten triples)" if published else ""
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
    rel = versus(lo, hi, base, num(p, "base_control_probe_accuracy_ci_low"), num(p, "base_control_probe_accuracy_ci_high"))
    return head + {
        "same": f" — but the base-model control gives {bs}: the signal is already in the base model, not a learned feedback pattern",
        "above": f" — and above the base-model control's {bs}: consistent with a learned feedback pattern",
        "below": f" — but below the base-model control's {bs}: fine-tuning weakened a signal the base model already had",
        "unknown": f"; base-model control {bs}",
    }[rel] + f"{tail}."


def table3_section(inputs: ReportInputs, runs: Runs) -> Section:
    """Table 3: the paper-method probe's accuracy with its controls and bag-of-words, beside the paper's, with Fig. 5."""
    s = Section("Probe accuracy, HH and toxic tasks (Table 3)")
    rows = []
    for (m, t), r in runs.items():
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
    for pm, v in inputs.paper["table3_probe_accuracy"].items():
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
    for (m, t) in runs:
        s.images.append((f"{m}-{t}: PCA of probe inputs (Fig. 5)", copy_figure(paths.probe_plots_dir(m, t) / "fig5_pca.png", f"{m}-{t}-fig5.png")))
    return s


def _above(m: dict[str, Any], key: str, level: float) -> bool | None:
    lo = num(m, f"{key}_ci_low")
    return None if lo is None else lo > level


def table(m: dict[str, Any], probe: dict[str, Any]) -> list[list[str]]:
    """Rows: the paper's probe on triples, then the three probe forms on real held-out pairs."""
    def diff_pp(key: str) -> str:  # fine-tuned − base, in accuracy points, paired CI
        return with_ci(m, f"{key}_diff", pct=False)

    return [
        ["paper method: pointwise logistic on contrastive triples (probe.json)", with_ci(probe, "probe_accuracy"),
         with_ci(probe, "base_control_probe_accuracy"), "—", with_ci(probe, "bow_baseline_accuracy"), percent(num(probe, "shuffled_probe_accuracy"))],
        ["pointwise: chosen vs rejected reply, real held-out pairs", with_ci(m, "probe_accuracy_finetuned"), with_ci(m, "probe_accuracy_base"),
         diff_pp("probe_accuracy"), with_ci(m, "bow_baseline_accuracy"), "—"],
        ["pairwise: A(chosen) − A(rejected)", with_ci(m, "pairwise_accuracy_finetuned"), with_ci(m, "pairwise_accuracy_base"),
         diff_pp("pairwise_accuracy"), with_ci(m, "pairwise_accuracy_bow"), percent(num(m, "pairwise_shuffled_accuracy_finetuned"))],
        ["implicit-reward probe: sign of predicted margin = sign of DPO's margin", with_ci(m, "reward_probe_margin_accuracy_finetuned"),
         with_ci(m, "reward_probe_margin_accuracy_base"), diff_pp("reward_probe_margin_accuracy"),
         with_ci(m, "reward_probe_margin_accuracy_bow"), "—"],
        ["(difference activations: fine-tuned − base, one dictionary) pairwise", with_ci(m, "pairwise_accuracy_difference"), "", "", "", ""],
    ]


def sentences(m: dict[str, Any], probe: dict[str, Any]) -> list[str]:
    """One sentence per question: did DPO learn, does the probe beat text, does it beat the base."""
    out = []
    learned = _above(m, "implicit_reward_acc", CHANCE)
    out.append(f"**Did DPO learn a preference that generalises?** On {m.get('n_pairs', '—')} held-out pairs (never trained on; "
               f"{m.get('n_pairs_cut_to_context', '—')} cut to the {m.get('context_tokens', '—')}-token context), DPO's implicit reward "
               f"β·log π_ft/π_base ranks the preferred reply higher in {with_ci(m, 'implicit_reward_acc')} of pairs — "
               + (("above 50% chance (the CI excludes it)" + (": a weak learned preference, but one a probe could find."
                   if (num(m, "implicit_reward_acc_ci_low") or 0) < 0.55 else ": a learned preference exists to be found."))
                  if learned else "not clearly above 50% chance: there is little learned preference for any probe to find."))
    pair, bow = num(m, "pairwise_accuracy_finetuned"), num(m, "pairwise_accuracy_bow")
    pair_lo = num(m, "pairwise_accuracy_finetuned_ci_low")
    beats_text = pair is not None and bow is not None and pair_lo is not None and pair_lo > bow
    out.append(f"**Does the probe read more than the text?** The pairwise probe on the fine-tuned model's codes tells the preferred reply "
               f"in {with_ci(m, 'pairwise_accuracy_finetuned')} of held-out pairs; a bag-of-words classifier on the same replies, no model, "
               f"gets {with_ci(m, 'pairwise_accuracy_bow')} — "
               + ("the probe is above the text-only baseline." if beats_text else "the probe does not beat the text-only baseline."))
    d, lo, hi = num(m, "pairwise_accuracy_diff"), num(m, "pairwise_accuracy_diff_ci_low"), num(m, "pairwise_accuracy_diff_ci_high")
    if d is not None and lo is not None and hi is not None:
        verdict = ("fine-tuning added preference information to the activations" if lo > 0 else
                   "fine-tuning removed some" if hi < 0 else "no difference that the CI can tell from zero: the base model's codes carry the same information")
        out.append(f"**Fine-tuned vs base (the LFP question):** pairwise accuracy fine-tuned − base = {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                   f"(paired bootstrap over test pairs): {verdict}. Predicting DPO's own implicit reward from the codes: "
                   f"τ {(num(m, 'reward_probe_tau_finetuned') or float('nan')):.3f} fine-tuned, "
                   f"{(num(m, 'reward_probe_tau_base') or float('nan')):.3f} base, "
                   f"{(num(m, 'reward_probe_tau_bow') or float('nan')):.3f} bag-of-words.")
    pa, pb = num(probe, "probe_accuracy"), num(probe, "bow_baseline_accuracy")
    if pa is not None and pb is not None:
        out.append(f"**The paper's probe on contrastive triples ({m.get('triples_backend', '—')} backend):** {percent(pa)} vs {percent(pb)} for "
                   "bag-of-words on the same triples — "
                   + ("the triples are separable from their text alone, so this accuracy measures how different the triples are, "
                      "not a learned feedback pattern." if pb >= pa - 0.02 else "the probe beats the text of the triples."))
    return out


# ------------------------------------------------------------------------- over dialogue splits and subsets


def split_cell(m: Mapping[str, Any], key: str, pct: bool = True) -> str:
    """'50.2% [48.1%, 52.3%]': mean over split seeds with its t-interval (points for a difference)."""
    show = percent if pct else (lambda x: MISSING if x is None else f"{x:+.3f}")
    v, lo, hi = num(m, f"{key}_split_mean"), num(m, f"{key}_split_ci_low"), num(m, f"{key}_split_ci_high")
    if v is None:
        return MISSING
    return show(v) + ("" if lo is None or hi is None else f" [{show(lo)}, {show(hi)}]")


def _scopes(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(row label, key prefix): pooled, each subset measured apart, each ordered pair of them."""
    subs, names = list(m.get("pair_subsets") or []), m.get("pair_subset_names") or {}
    name = {a: names.get(a, a) for a in subs}
    return ([("pooled (all subsets)", "")] + [(f"within {name[a]}", f"subset_{a}_") for a in subs]
            + [(f"{name[a]} → {name[b]}", f"transfer_{a}_to_{b}_") for a in subs for b in subs if a != b])


def split_table(m: Mapping[str, Any]) -> list[list[str]]:
    """Rows: pooled, within each subset, each transfer; columns: pairwise accuracy per source over split seeds."""
    rows = []
    for label, prefix in _scopes(m):
        n = num(m, f"{prefix}n_test_split_mean")
        rows.append([label, MISSING if n is None else f"{n:.0f}",
                     *(split_cell(m, f"{prefix}pairwise_accuracy_{src}", pct=src != "diff") for src in SPLIT_SOURCES)])
    return rows


def _rank_words(m: Mapping[str, Any], src: str, n: int) -> str:
    r = num(m, f"pairwise_accuracy_{src}_reported_split_rank")
    if r is None:
        return MISSING
    where = "the lowest: not typical" if r <= 1 else "the highest: not typical" if r >= n else "typical"
    return f"rank {r:g} of {n} ({where})"


def transfer_direction(m: Mapping[str, Any], src: str = "finetuned") -> str:
    """'same', 'opposite' or 'unclear': do the subsets' probes agree when one is trained and the other tested?"""
    verdicts = []
    for _, prefix in _scopes(m)[1:]:
        if not prefix.startswith("transfer_"):
            continue
        lo, hi = num(m, f"{prefix}pairwise_accuracy_{src}_split_ci_low"), num(m, f"{prefix}pairwise_accuracy_{src}_split_ci_high")
        verdicts.append("unclear" if lo is None or hi is None else "same" if lo > CHANCE else "opposite" if hi < CHANCE else "unclear")
    if not verdicts:
        return "none"
    return "opposite" if "opposite" in verdicts else "same" if all(v == "same" for v in verdicts) else "unclear"


def split_sentence(m: Mapping[str, Any]) -> str:
    """Is the reported split typical (its rank among split seeds), and do the subsets point the same way?"""
    n = len(m.get("pair_split_seeds") or [])
    s = (f"**Is the reported split typical, and do the subsets agree?** Over {n} dialogue splits the fine-tuned pairwise probe "
         f"averages {split_cell(m, 'pairwise_accuracy_finetuned')} (bag-of-words {split_cell(m, 'pairwise_accuracy_bow')}, "
         f"fine-tuned − base {split_cell(m, 'pairwise_accuracy_diff', pct=False)}); the reported split (seed "
         f"{m.get('pair_split_reported_seed', MISSING)}) is at {_rank_words(m, 'finetuned', n)} for the fine-tuned codes and "
         f"{_rank_words(m, 'bow', n)} for bag-of-words (1 = lowest). ")
    skipped = m.get("pair_subsets_skipped") or {}
    direction = transfer_direction(m)
    if direction == "none":
        names = m.get("pair_subset_names") or {}
        why = "; ".join(f"{names.get(k, k)}: {v}" for k, v in skipped.items()) or "no subset recorded"
        return s + f"No two subsets are measured apart ({why})."
    pairs = ", ".join(f"{label} {split_cell(m, prefix + 'pairwise_accuracy_finetuned')}" for label, prefix in _scopes(m)[1:])
    return s + f"Per subset (fine-tuned codes): {pairs} — " + {
        "same": "trained on one subset the probe works on the other: the subsets point the same way.",
        "opposite": ("trained on one subset the probe falls below chance on another: the subsets point opposite ways, so the "
                     "pooled accuracy averages two opposed directions."),
        "unclear": "transfer between subsets is not clearly above or below chance: the interval cannot tell whether they point the same way.",
    }[direction]
