"""Kind `lexicon_rl` in the report: its sentences and fine-tuning rows inside the shared sections,
its validated measurement (learned values per word, lfp.report.measure), and the paper's VADER tables
(Tables 4/10, 5, 2/9 with Fig. 4). The report reaches this module only through the kind object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lfp.core import paths
from lfp.core.params import Params
from lfp.report import measure as measure_report
from lfp.report.document import Section
from lfp.report.format import MISSING, change_verb, ci, fmt, num, pci, pr, versus
from lfp.report.inputs import ReportInputs, Runs, copy_figure, proxy_data_note


class LexiconReport:
    """RL on a lexicon reward (the paper's VADER task): ridge probe scored by Kendall τ."""

    probe_metric = "kendall_tau"
    paper_tables_6_7 = True
    finetune_notes: tuple[str, ...] = ()

    def probe_sentence(self, probe: Mapping[str, Any], task: str, paper: Mapping[str, Any]) -> str:
        return probe_sentence(probe)

    def finetune_sentence(self, f: Mapping[str, Any]) -> str:
        rb, rf, kl = num(f, "reward_base"), num(f, "reward_finetuned"), num(f, "kl_to_base")
        if rb is None or rf is None:
            return "not available (`reward_base`/`reward_finetuned` missing from finetune.json)."
        beats = f["beats_base"] if isinstance(f.get("beats_base"), bool) else rf > rb
        s = f"RL fine-tuning {change_verb(rb, rf, 'raised', 'lowered')} the held-out mean VADER reward from {pr(rb)} to {pr(rf)}"
        lo, hi = num(f, "reward_gain_ci_low"), num(f, "reward_gain_ci_high")
        if lo is not None and hi is not None:  # paired bootstrap over prompts
            s += f" (gain {pr(rf - rb)}, 95% CI [{pr(lo)}, {pr(hi)}] over prompts)"
            beats = lo > 0
        s += f" (KL to base {pr(kl)})" if kl is not None else ""
        return s + (": it beat the base on its own objective." if beats else ": it did not clearly beat the base on its own objective.")

    def finetune_rows(self, model: str, task: str, f: Mapping[str, Any]) -> list[list[Any]]:
        return [[model, task, "mean VADER reward", fmt(f.get("reward_base")), fmt(f.get("reward_finetuned")),
                 fmt(f.get("kl_to_base")), fmt(f.get("beats_base"))]]

    def finetune_headline(self, f: Mapping[str, Any]) -> dict[str, float | None]:
        """Mean reward, fine-tuned − base (higher is better)."""
        rb, rf = num(f, "reward_base"), num(f, "reward_finetuned")
        return {"finetune_reward_gain": rf - rb if rb is not None and rf is not None else None}

    def proxy_notes(self, params: Params, task: str) -> list[str]:
        data_note = proxy_data_note(params, task)
        return ["RL algorithm: GRPO (TRL >= 1.13 has no PPOTrainer) instead of PPO", *([data_note] if data_note else [])]

    def measurement_section(self, inputs: ReportInputs, model: str, task: str, run: dict[str, Any]) -> Section:
        m, t, r = model, task, run
        sec = Section(f"The validated measurement: {inputs.label(m, t)} (controls that can fail)")
        tau = num(r["probe"], "kendall_tau")
        sec.text.extend(measure_report.sentences(r["measure"], tau))
        sec.tables.append(("", pd.DataFrame(measure_report.table(r["measure"], tau), columns=measure_report.COLUMNS)))
        if readout_rows := measure_report.readout_table(r["measure"]):
            if sentence := measure_report.readout_sentence(r["measure"]):
                sec.text.append(sentence)
            sec.tables.append(("Readouts × controls", pd.DataFrame(readout_rows, columns=measure_report.READOUT_COLUMNS)))
        if lenses := measure_report.lens_sentence(r["measure"], inputs.params.diffing.specific_nu):
            sec.text.append(lenses)
        figure = paths.report_dir(m, t) / "lfp_learned_values.png"
        if figure.exists():
            sec.images.append((f"{m}-{t}: learned value vs lexicon value, every word (replaces Fig. 4's empty axis)",
                               copy_figure(figure, f"{m}-{t}-learned-values.png")))
        sec.notes.append("Learned value of a word = mean over its real review contexts of log π_ft(word | context) − "
                         "log π_base(word | context); per-word values and CIs in `reports/runs/<run>/lfp_words.csv`.")
        return sec

    def sections(self, inputs: ReportInputs, runs: Runs) -> list[Section]:
        return [kendall_section(inputs, runs), sign_section(inputs, runs), word_values_section(inputs, runs)]


REPORT = LexiconReport()


def probe_sentence(p: Mapping[str, Any]) -> str:
    """Kendall τ of the paper-method probe against its controls, above all the base-model control."""
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
    rel = versus(lo, hi, base, num(p, "base_control_kendall_tau_ci_low"), num(p, "base_control_kendall_tau_ci_high"))
    return head + {
        "same": f" — but the base-model control gives {bs}: the signal is word identity already in the base model, not a learned feedback pattern.",
        "above": f" — above the base-model control's {bs}: fine-tuning added signal, consistent with a learned feedback pattern.",
        "below": f" — below the base-model control's {bs}: fine-tuning weakened a signal the base model already had.",
        "unknown": f"; base-model control {bs} (no CI to compare them).",
    }[rel]


def kendall_section(inputs: ReportInputs, runs: Runs) -> Section:
    """Tables 4 and 10: the paper-method probe's τ beside its controls and the paper's models."""
    s = Section("LFP accuracy, VADER task: Kendall τ (Tables 4 and 10)")
    rows, sds = [], []
    for (m, t), r in runs.items():
        p = r["probe"]
        rows.append([f"{m} (ours)", fmt(p.get("kendall_tau")), fmt(p.get("kendall_p")), ci(p, "kendall_tau"),
                     fmt(p.get("kendall_tau_negative")), fmt(p.get("kendall_p_negative")), p.get("n_words", MISSING)])
        rows.append([f"{m} untrained Xavier probe (ours)", fmt(p.get("baseline_kendall_tau")), fmt(p.get("baseline_kendall_p")), MISSING, MISSING, MISSING, ""])
        rows.append([f"{m} base-model control (ours)", fmt(p.get("base_control_kendall_tau")), fmt(p.get("base_control_kendall_p")),
                     ci(p, "base_control_kendall_tau"), fmt(p.get("base_control_kendall_tau_negative")), fmt(p.get("base_control_kendall_p_negative")), ""])
        rows.append([f"{m} shuffled-label control (ours)", fmt(p.get("shuffled_kendall_tau")), MISSING, MISSING, MISSING, MISSING, ""])
        if num(p, "shuffled_kendall_tau_sd") is not None:
            sds.append(fmt(p["shuffled_kendall_tau_sd"]))
    t4, t10 = inputs.paper["table4_kendall_tau"], inputs.paper["table10_negative_kendall_tau"]
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
    return s


def sign_section(inputs: ReportInputs, runs: Runs) -> Section:
    """Table 5: how often the probe gets a word's sign right, ours beside the paper's."""
    s = Section("Sign accuracy (Table 5)")
    rows = []
    for (m, t), r in runs.items():
        p = r["probe"]
        rows.append([f"{m} (ours)", fmt(p.get("sign_acc_positive"), pct=True), fmt(p.get("sign_acc_negative"), pct=True)])
        rows.append([f"{m} base-model control (ours)", fmt(p.get("base_control_sign_acc_positive"), pct=True), fmt(p.get("base_control_sign_acc_negative"), pct=True)])
    for pm, v in inputs.paper["table5_sign_accuracy"].items():
        if not pm.startswith("_"):
            rows.append([f"{pm} (paper)", f"{v['positive']}%", f"{v['negative']}%"])
    s.tables.append(("", pd.DataFrame(rows, columns=["model", "positive words correct", "negative words correct"])))
    return s


def word_values_section(inputs: ReportInputs, runs: Runs) -> Section:
    """Tables 2 and 9 with Fig. 4: predicted vs true value of the most frequent words."""
    s = Section("Predicted vs true word values (Tables 2 and 9)")
    for m, t in runs:
        csv = paths.probe_plots_dir(m, t) / "probe_words.csv"
        if csv.exists():
            words = pd.read_csv(csv)
            top = words.sort_values("count", ascending=False).head(30) if "count" in words else words.head(30)
            s.tables.append((f"{m}-{t} (ours, 30 most frequent words)", top.round(3)))
            if top.isna().any().any():
                s.notes.append(f"{m}-{t}: empty cells are words the probe stage left without a value (NaN in probe_words.csv).")
        else:
            s.notes.append(f"{m}-{t}: no word table ({csv} is missing).")
    t2 = inputs.paper["table2_word_values"]
    s.tables.append((f"paper Table 2 ({t2['model']})", pd.DataFrame(t2["rows"], columns=["word", "predicted", "true_value"])))
    for (m, t) in runs:
        s.images.append((f"{m}-{t}: |predicted − true| vs generation frequency (Fig. 4)",
                         copy_figure(paths.probe_plots_dir(m, t) / "fig4_error_vs_frequency.png", f"{m}-{t}-fig4.png")))
    return s
