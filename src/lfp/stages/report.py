"""report: reports/report.md + report.html + reports/figures/ — ours beside the paper's numbers.

Why a document model: the same sections render to Markdown (for git diffs and GitHub) and to
HTML (for a browser) without a hand-written Markdown converter; tables are pandas DataFrames.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from lfp import io, paths
from lfp.config import Params
from lfp.errors import ArtifactError
from lfp.tracking import stage_run

FIGURES = paths.REPORTS / "figures"
MISSING = "—"


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to reports/)


def paper_results() -> dict[str, Any]:
    return json.loads(resources.files("lfp").joinpath("data/paper_results.json").read_text(encoding="utf-8"))


def fmt(value: Any, digits: int = 3, pct: bool = False) -> str:
    """Numbers for humans; None/missing become an em dash, never a silent zero."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        v = float(value) * (100.0 if pct else 1.0)
        if pct:
            return f"{v:.1f}%"
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 10**5):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(value)


def ci(m: dict[str, Any], key: str, pct: bool = False) -> str:
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    if lo is None or hi is None:
        return MISSING
    return f"[{fmt(lo, pct=pct)}, {fmt(hi, pct=pct)}]"


def load_run(model: str, task: str) -> dict[str, dict[str, Any]]:
    """All metrics JSON of one model-task run; a missing file is an error (no silent gaps)."""
    run_dir = paths.report_dir(model, task)
    out = {}
    for name in ("finetune", "divergence", "sae", "probe", "explain", "validate"):
        out[name] = io.read_json(run_dir / f"{name}.json")
    features = run_dir / "features.jsonl"
    out["features"] = io.read_jsonl(features, allow_empty=True) if features.exists() else []
    return out


def proxies(params: Params, model: str, task: str) -> list[str]:
    """Every place where this run deviates from the paper, named next to its numbers."""
    notes = []
    spec = params.spec(model)
    if spec.source in ("tiny", "smollm2"):
        notes.append(f"model `{model}` = {spec.description or spec.source} (not one of the paper's models)")
    if task == "vader":
        notes.append("RL algorithm: GRPO (TRL >= 1.13 has no PPOTrainer) instead of PPO")
    if task == "toxic" and params.prepare.toxic_source == "proxy":
        notes.append("toxic data: harmless-base pairs with chosen/rejected swapped (proxy for toxic-dpo-v0.2)")
    if task in ("hh", "toxic") and getattr(params.contrastive, task).backend == "offline":
        notes.append("contrastive triples: preferred/dispreferred pair + fixed neutral reply (proxy for LLM rewrites)")
    if params.explain.backend == "offline":
        notes.append("feature explanations: offline lexicon explainer (proxy for GPT-4)")
    return notes


def build_sections(params: Params, runs: dict[tuple[str, str], dict[str, Any]]) -> list[Section]:
    paper = paper_results()
    secs: list[Section] = []

    overview = Section("What was measured")
    overview.text.append(
        f"Profile `{params.profile}`, seed {params.seed}, models {params.models}, tasks {params.tasks}. "
        "Each base model is fine-tuned on each task; the 5 (`divergence.top_k`) most-changed layers are "
        "selected; two tied sparse autoencoders (n, 2n) per layer are trained on the fine-tuned model's MLP "
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
        if t == "vader":
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

    # SAE quality + Table 11
    s = Section("Sparse autoencoders: quality (Table 11 style)")
    rows = []
    for (m, t), r in runs.items():
        q = r["sae"]
        for L in r["divergence"].get("chosen_layers", []):
            for ratio in params.sae.ratios:
                k = f"layer{L}_x{ratio}_"
                rows.append([m, t, L, f"{ratio}n", fmt(q.get(k + "mse"), 5), fmt(q.get(k + "fvu")), fmt(q.get(k + "l0"), 1),
                             fmt(q.get(k + "dead_fraction"), pct=True), fmt(q.get(k + "ce_recovered")), fmt(q.get(f"layer{L}_mmcs"))])
    s.tables.append(("ours", pd.DataFrame(rows, columns=["model", "task", "layer", "dict", "MSE", "FVU", "L0", "dead", "CE recovered", "MMCS"])))
    t11 = paper["table11_tied_untied"]
    prow = [[pm, tied, v["sparsity"], v["reconstruction"]] for pm, d in t11.items() if not pm.startswith("_") for tied, v in d.items()]
    s.tables.append(("paper Table 11 (normalized, 1 epoch)", pd.DataFrame(prow, columns=["model", "weights", "sparsity loss", "reconstruction loss"])))
    secs.append(s)

    vader_runs = {k: v for k, v in runs.items() if k[1] == "vader"}
    pair_runs = {k: v for k, v in runs.items() if k[1] != "vader"}

    if vader_runs:
        s = Section("LFP accuracy, VADER task: Kendall τ (Tables 4 and 10)")
        rows = []
        for (m, t), r in vader_runs.items():
            p = r["probe"]
            rows.append([f"{m} (ours)", fmt(p.get("kendall_tau")), fmt(p.get("kendall_p")), ci(p, "kendall_tau"),
                         fmt(p.get("kendall_tau_negative")), fmt(p.get("kendall_p_negative")), p.get("n_words", MISSING)])
            rows.append([f"{m} untrained Xavier probe (ours)", fmt(p.get("baseline_kendall_tau")), fmt(p.get("baseline_kendall_p")), MISSING, MISSING, MISSING, ""])
            rows.append([f"{m} base-model control (ours)", fmt(p.get("base_control_kendall_tau")), fmt(p.get("base_control_kendall_p")),
                         ci(p, "base_control_kendall_tau"), fmt(p.get("base_control_kendall_tau_negative")), fmt(p.get("base_control_kendall_p_negative")), ""])
            rows.append([f"{m} shuffled-label control (ours)", fmt(p.get("shuffled_kendall_tau")), fmt(p.get("shuffled_kendall_p")), MISSING, MISSING, MISSING, ""])
        t4, t10 = paper["table4_kendall_tau"], paper["table10_negative_kendall_tau"]
        for pm, v in t4.items():
            if pm.startswith("_"):
                continue
            neg = t10.get(pm, {})
            rows.append([f"{pm} (paper)", fmt(v["tau"]), fmt(v["p"]), MISSING, fmt(neg.get("tau")), fmt(neg.get("p")), ""])
        s.tables.append(("", pd.DataFrame(rows, columns=["model", "τ", "p", "95% CI", "τ (negative words)", "p (negative)", "words"])))
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
            rows.append([f"{m} (ours)", t, fmt(p.get("probe_accuracy"), pct=True), ci(p, "probe_accuracy", pct=True), p.get("n_test", MISSING),
                         fmt(p.get("base_control_probe_accuracy"), pct=True), fmt(p.get("shuffled_probe_accuracy"), pct=True)])
        for pm, v in paper["table3_probe_accuracy"].items():
            if pm.startswith("_"):
                continue
            for t in ("hh", "toxic"):
                rows.append([f"{pm} (paper)", t, f"{v[t]}%", MISSING, MISSING, MISSING, MISSING])
        s.tables.append(("", pd.DataFrame(rows, columns=["model", "task", "accuracy", "95% CI", "n test", "base-model control", "shuffled labels"])))
        for (m, t) in pair_runs:
            s.images.append((f"{m}-{t}: PCA of probe inputs (Fig. 5)", _copy_figure(paths.probe_plots_dir(m, t) / "fig5_pca.png", f"{m}-{t}-fig5.png")))
        secs.append(s)

    s = Section("Probe validation: feature frequency (Table 7) and zero-ablation (Table 6)")
    rows7, rows6 = [], []
    for (m, t), r in runs.items():
        v = r["validate"]
        rows7.append([f"{m} (ours)", t, fmt(v.get("freq_related"), pct=True), fmt(v.get("freq_all"), pct=True), v.get("n_high_delta_inputs", MISSING), v.get("n_related_features", MISSING)])
        rows6.append([f"{m} (ours)", t, v.get("ablation_metric", MISSING), fmt(v.get("ablation_no_hook")), fmt(v.get("ablation_reconstruction")),
                      fmt(v.get("ablation_related")), fmt(v.get("ablation_random"))])
    for pm, v in paper["table7_feature_frequency"].items():
        if not pm.startswith("_"):
            rows7.append([f"{pm} (paper)", "vader", f"{v['related']}%", f"{v['average']}%", MISSING, MISSING])
    for pm, v in paper["table6_ablation"].items():
        if not pm.startswith("_"):
            rows6.append([f"{pm} (paper)", "vader", "mean VADER reward", fmt(v["before"], 2), MISSING, fmt(v["after"], 2), MISSING])
    s.tables.append(("Table 7: activation frequency at predicted delta > threshold", pd.DataFrame(rows7, columns=["model", "task", "related features", "all features", "n inputs", "n related"])))
    s.tables.append(("Table 6: fine-tuning objective under ablation", pd.DataFrame(rows6, columns=["model", "task", "metric", "no hook", "SAE reconstruction", "related zeroed", "random zeroed (control)"])))
    secs.append(s)

    s = Section("Feature explanations (Tables 1 and 8)")
    for (m, t), r in runs.items():
        feats = r["features"][:15]
        if feats:
            df = pd.DataFrame([[f.get("layer"), f.get("feature"), fmt(f.get("similarity")), f.get("explanation", "")[:160],
                                fmt(f.get("related")), fmt(f.get("simulation_score"))] for f in feats],
                              columns=["layer", "feature", "cos sim", "explanation", "related", "simulation r"])
            backend = feats[0].get("backend", "?")
            s.tables.append((f"{m}-{t} (explainer: {backend})", df))
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


def render_markdown(sections: list[Section]) -> str:
    out = ["# Learned Feedback Patterns — report", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        for caption, df in s.tables:
            if caption:
                out += [f"*{caption}*", ""]
            out += [df.to_markdown(index=False), ""]
        for caption, img in s.images:
            out += [f"![{caption}]({img})", ""]
    return "\n".join(out)


def render_html(sections: list[Section]) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>LFP report</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:600px}</style></head><body>",
           "<h1>Learned Feedback Patterns — report</h1>"]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        for p in s.text:
            out.append(f"<p>{html.escape(p).replace('**', '')}</p>")
        for caption, df in s.tables:
            if caption:
                out.append(f"<p><em>{html.escape(caption)}</em></p>")
            out.append(df.to_html(index=False, escape=True))
        for caption, img in s.images:
            out.append(f"<figure><img src='{html.escape(img)}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def run(params: Params, model: str | None = None, task: str | None = None) -> None:
    runs = {(m, t): load_run(m, t) for m in params.models for t in params.tasks}
    sections = build_sections(params, runs)
    md_path, html_path = paths.REPORTS / "report.md", paths.REPORTS / "report.html"
    with stage_run("report", experiment=params.tracking.experiment, params={"models": params.models, "tasks": params.tasks, "profile": params.profile}) as mlrun:
        io.write_text(md_path, render_markdown(sections))
        io.write_text(html_path, render_html(sections))
        mlrun.log_artifact(md_path)
        mlrun.log_artifact(html_path)
        for fig in sorted(FIGURES.glob("*.png")):
            mlrun.log_artifact(fig, artifact_path="figures")
