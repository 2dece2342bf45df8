"""Feature dashboards: `reports/features/{model}-{task}.html`, one self-contained page per run.

Why: a table of means hides what a feature does. Per explained feature the page shows its
explanation and detection score (beside the shuffled-explanation baseline), the top-activating
contexts with the peak token highlighted, a histogram of its activations over the explanation
corpus, its related label, its Table 7 frequencies on held-out rows, and Table 6's ablation effect
(a condition-level number: every related feature of the run is zeroed together). The page has no
script and no external resource (the machine is offline): CSS inline, the histogram an inline SVG,
every text through `html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfp import io, paths
from lfp.errors import ArtifactError

MISSING = "—"
HIST_W, HIST_H, HIST_PAD = 320, 110, 18  # histogram size in CSS pixels
STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}"
    "section.feature{border-top:1px solid #bbb;padding:.5em 0}"
    "table.facts{border-collapse:collapse;font-size:90%}table.facts td,table.facts th{border:1px solid #ddd;padding:2px 6px;text-align:left}"
    "ol.contexts{font-family:monospace;font-size:90%}ol.contexts li{margin:.2em 0;white-space:pre-wrap}"
    "mark.peak{background:#f59e0b;outline:1px solid #b45309;font-weight:bold}"
    ".explanation{font-size:110%}.note{color:#555;font-size:90%}"
    "svg.histogram rect{fill:#3b82f6}svg.histogram text{font-size:10px;fill:#333}"
)


@dataclass
class RunInputs:
    """What one run's dashboard reads: features.jsonl, table7_features.jsonl, validate/explain.json."""

    name: str
    features: list[dict[str, Any]]
    table7: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    validate: dict[str, Any] = field(default_factory=dict)
    explain: dict[str, Any] = field(default_factory=dict)
    source: str = "features.jsonl"


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def _optional_json(path: Path) -> dict[str, Any]:
    return io.read_json(path) if path.exists() else {}


def load_run(model: str, task: str) -> RunInputs:
    """A run's inputs; features.jsonl may be empty, the other files absent (shown as missing)."""
    run_dir = paths.report_dir(model, task)
    source = run_dir / "features.jsonl"
    features = io.read_jsonl(source, {"layer": int, "feature": int}, allow_empty=True) if source.exists() else []
    t7_file = paths.table7_features_file(model, task)
    table7 = ({(r["layer"], r["feature"]): r for r in io.read_jsonl(t7_file, {"layer": int, "feature": int}, allow_empty=True)}
              if t7_file.exists() else {})
    return RunInputs(paths.run_id(model, task), features, table7, _optional_json(run_dir / "validate.json"),
                     _optional_json(run_dir / "explain.json"), str(source))


def checked_contexts(row: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The row's `contexts`, each {tokens: [str], acts: [int], peak: int} of one length; an error
    naming the file, feature and field otherwise."""
    where = f"{source}: layer {row['layer']} feature {row['feature']}"
    contexts = row.get("contexts", [])
    if not isinstance(contexts, list):
        raise ArtifactError(f"{where}: field 'contexts' must be a list")
    for k, ctx in enumerate(contexts):
        tokens, acts, peak = (ctx.get(key) if isinstance(ctx, dict) else None for key in ("tokens", "acts", "peak"))
        if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
                and isinstance(acts, list) and len(acts) == len(tokens)
                and all(isinstance(a, (int, float)) for a in acts)
                and isinstance(peak, int) and 0 <= peak < len(tokens)):
            raise ArtifactError(f"{where}: field 'contexts[{k}]' needs tokens (strings), acts of the same length and a peak index inside them")
    return contexts


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3, pct: bool = False) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING
    return f"{value:.1%}" if pct else f"{value:.{digits}f}"


def ci(m: dict[str, Any], prefix: str, digits: int = 3) -> str:
    lo, hi = m.get(f"{prefix}_ci_low"), m.get(f"{prefix}_ci_high")
    return f"[{fmt(lo, digits)}, {fmt(hi, digits)}]" if lo is not None and hi is not None else ""


def related_text(value: Any) -> str:
    return "related" if value is True else "unrelated" if value is False else "unlabelled"


def context_html(ctx: dict[str, Any]) -> str:
    """One context: tokens shaded by their 0..10 activation, the peak token in <mark class=peak>."""
    parts = []
    for i, (token, act) in enumerate(zip(ctx["tokens"], ctx["acts"])):
        text = html.escape(token.replace("\n", "⏎"))
        if i == ctx["peak"]:
            parts.append(f"<mark class='peak' title='activation {act}/10'>{text}</mark>")
        elif act > 0:
            parts.append(f"<span style='background:rgba(245,158,11,{min(act, 10) / 12:.2f})' title='activation {act}/10'>{text}</span>")
        else:
            parts.append(text)
    return "<li>" + "".join(parts) + "</li>"


def histogram_svg(hist: Any) -> str:
    """Inline SVG bars of the activation histogram (tokens with activation > 0); a note if absent."""
    if not isinstance(hist, dict) or not hist.get("counts") or len(hist.get("edges", [])) != len(hist["counts"]) + 1:
        return "<p class='note histogram-missing'>no activation histogram stored for this feature</p>"
    counts, edges = hist["counts"], hist["edges"]
    top = max(max(counts), 1)
    width = (HIST_W - 2 * HIST_PAD) / len(counts)
    bars = []
    for k, c in enumerate(counts):
        h = (HIST_H - 2 * HIST_PAD) * c / top
        bars.append(f"<rect x='{HIST_PAD + k * width:.1f}' y='{HIST_H - HIST_PAD - h:.1f}' width='{max(width - 1, 1):.1f}' "
                    f"height='{h:.1f}'><title>{html.escape(f'{edges[k]:.3g}–{edges[k + 1]:.3g}: {c} tokens')}</title></rect>")
    n_tok, n_act = hist.get("n_tokens"), hist.get("n_active")
    share = f"{n_act} of {n_tok} tokens active" if isinstance(n_tok, int) and isinstance(n_act, int) and n_tok else ""
    label = html.escape(f"Activation histogram: {share}")
    axis = (f"<text x='{HIST_PAD}' y='{HIST_H - 4}'>0</text>"
            f"<text x='{HIST_W - HIST_PAD}' y='{HIST_H - 4}' text-anchor='end'>{html.escape(f'{edges[-1]:.3g}')}</text>"
            f"<text x='{HIST_PAD}' y='12'>{html.escape(f'max {top} tokens/bin; {share}')}</text>")
    return (f"<svg class='histogram' role='img' aria-label='{label}' width='{HIST_W}' height='{HIST_H}' "
            f"viewBox='0 0 {HIST_W} {HIST_H}'><title>{label}</title>{''.join(bars)}{axis}</svg>")


def table7_text(t7: dict[str, Any] | None, validate: dict[str, Any]) -> str:
    """This feature's Table 7 frequencies on held-out rows, at the paper's threshold and the quantile."""
    if not t7:
        reason = validate.get("t7_reason")
        return f"not in table7_features.jsonl{f' ({reason})' if reason else ''}"
    th, q = validate.get("t7_threshold"), validate.get("t7_quantile")
    return (f"active on {fmt(t7.get('threshold_freq_high'), pct=True)} of held-out rows with predicted feedback > {fmt(th, 2)} "
            f"vs {fmt(t7.get('threshold_freq_low'), pct=True)} of rows ≤ it (contrast {fmt(t7.get('threshold_contrast'))}); "
            f"top {fmt(1 - q if isinstance(q, (int, float)) else None, pct=True)} of predictions: "
            f"{fmt(t7.get('quantile_freq_high'), pct=True)} vs {fmt(t7.get('quantile_freq_low'), pct=True)} "
            f"(contrast {fmt(t7.get('quantile_contrast'))})")


def ablation_text(related: Any, validate: dict[str, Any]) -> str:
    """Table 6 for this feature: the condition it belongs to (related features are ablated together)."""
    if related is not True:
        return "not ablated (Table 6 zeroes the related features only)"
    if validate.get("t6_related_delta") is None:
        return f"not measured: {validate.get('ablation_reason') or 't6_related_delta missing from validate.json'}"
    metric = validate.get("t6_metric", "score")
    text = (f"all {validate.get('n_related_features', MISSING)} related features zeroed together: {metric} "
            f"{fmt(validate.get('t6_related_delta'))} {ci(validate, 't6_related')} vs the SAE reconstruction")
    if validate.get("t6_random_delta") is not None:
        text += (f"; frequency-matched random features {fmt(validate.get('t6_random_delta'))} {ci(validate, 't6_random')}; "
                 f"related − random {fmt(validate.get('t6_related_vs_random_delta'))} {ci(validate, 't6_related_vs_random')}")
    return text + " (condition-level, not this feature alone)"


def feature_section(row: dict[str, Any], run: RunInputs) -> str:
    layer, feature = row["layer"], row["feature"]
    contexts = checked_contexts(row, run.source)
    facts = [
        ("related label", related_text(row.get("related"))),
        ("detection score", f"{fmt(row.get('detection_score'))} (shuffled explanation {fmt(row.get('detection_score_shuffled'))}; "
                            f"{row.get('detection_n_active', MISSING)} active / {row.get('detection_n_inactive', MISSING)} inactive held-out contexts)"),
        ("simulation score", fmt(row.get("simulation_score"))),
        ("cross-dictionary cosine", fmt(row.get("similarity"))),
        ("max activation", fmt(row.get("max_activation"))),
        ("Table 7 frequency", table7_text(run.table7.get((layer, feature)), run.validate)),
        ("Table 6 ablation effect", ablation_text(row.get("related"), run.validate)),
    ]
    if row.get("detection_score_offline") is not None:
        facts.insert(2, ("lexicon detection score", fmt(row.get("detection_score_offline"))))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    ctx_html = ("<ol class='contexts'>" + "".join(context_html(c) for c in contexts) + "</ol>" if contexts
                else "<p class='note'>no top-activating contexts stored</p>")
    return (f"<section class='feature' id='L{layer}-F{feature}' data-layer='{layer}' data-feature='{feature}'>"
            f"<h2>Layer {layer} · feature {feature}</h2>"
            f"<p class='explanation'>{html.escape(str(row.get('explanation', MISSING)))}</p>"
            f"<table class='facts'>{rows}</table>"
            f"{histogram_svg(row.get('activation_histogram'))}"
            f"<h3>Top-activating contexts (peak token highlighted)</h3>{ctx_html}</section>")


def summary_html(run: RunInputs) -> str:
    e = run.explain
    name = e.get("explainer") or e.get("backend") or MISSING
    text = (f"Explainer: {name}. Mean detection score {fmt(e.get('explanation_score_mean'))} "
            f"{ci(e, 'explanation_score')} over {e.get('explanation_score_n', MISSING)} features; "
            f"shuffled-explanation baseline {fmt(e.get('explanation_score_shuffled_mean'))} {ci(e, 'explanation_score_shuffled')} "
            f"(balanced accuracy on held-out contexts, 0.5 = chance).")
    if e.get("explanation_score_offline_mean") is not None and name != "offline":
        text += f" Lexicon explainer on the same contexts: {fmt(e.get('explanation_score_offline_mean'))} {ci(e, 'explanation_score_offline')}."
    return f"<p class='summary'>{html.escape(text)}</p>"


def build_html(run: RunInputs) -> str:
    """The whole page of one run: a summary line, then one section per explained feature."""
    title = f"Feature dashboards — {run.name}"
    body = "".join(feature_section(r, run) for r in run.features) or "<p class='note'>features.jsonl lists no explained feature</p>"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{summary_html(run)}"
            f"<p class='note'>{len(run.features)} explained features. Contexts: the explainer's top-activating windows; "
            f"shading = activation 0..10.</p>{body}</body></html>\n")


# --------------------------------------------------------------------------------------------
# files and links
# --------------------------------------------------------------------------------------------


def write_dashboards(runs: Sequence[tuple[str, str]]) -> list[Path]:
    """Write every run's page into reports/features/ (swapped in whole: no stale page survives)."""
    with io.atomic_dir(paths.FEATURE_DASHBOARDS) as tmp:
        for model, task in runs:
            page = build_html(load_run(model, task))
            (tmp / paths.feature_dashboard_file(model, task).name).write_text(page, encoding="utf-8")
    return [paths.feature_dashboard_file(m, t) for m, t in runs]


def _relative(page: Path) -> str:
    return page.relative_to(paths.REPORTS).as_posix()


def links_markdown(pages: Sequence[Path]) -> str:
    """A short Markdown section linking report.md to each dashboard."""
    items = "\n".join(f"- [{p.stem}]({_relative(p)})" for p in pages)
    return f"\n## Feature dashboards\n\n{items}\n" if pages else ""


def links_html(page: str, pages: Sequence[Path]) -> str:
    """report.html with a link list to each dashboard added before </body>."""
    if not pages:
        return page
    items = "".join(f"<li><a href='{html.escape(_relative(p))}'>{html.escape(p.stem)}</a></li>" for p in pages)
    cut = page.rindex("</body>")
    return f"{page[:cut]}<h2>Feature dashboards</h2><ul>{items}</ul>\n{page[cut:]}"
