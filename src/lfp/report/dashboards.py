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

from lfp.core import io, paths
from lfp.core.errors import ArtifactError

MISSING = "—"
INDEX = "index.html"  # reports/features/index.html: one row per run's dashboard
HIST_W, HIST_H, HIST_PAD = 320, 110, 18  # histogram size in CSS pixels
STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}"
    "section.feature{border-top:1px solid #bbb;padding:.5em 0}"
    "table.facts{border-collapse:collapse;font-size:90%}table.facts td,table.facts th{border:1px solid #ddd;padding:2px 6px;text-align:left}"
    "ol.contexts{font-family:monospace;font-size:90%}ol.contexts li{margin:.2em 0;white-space:pre-wrap}"
    "mark.peak{background:#f59e0b;outline:1px solid #b45309;font-weight:bold}"
    ".explanation{font-size:110%}.note{color:#555;font-size:90%}"
    "svg.histogram rect{fill:#3b82f6}svg.histogram text{font-size:10px;fill:#333}"
    "nav.features a{white-space:nowrap;margin-right:.3em}"
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


def display_units(ctx: dict[str, Any]) -> list[tuple[str, int | float, bool]]:
    """(text, activation, is_peak) per shown piece. A token stored as "" lies inside a multi-byte
    character (lfp.validation.explainers.decode_tokens puts the character on the token that completes it): it
    is shown with that token, at the larger activation, so no piece is an invisible highlight."""
    units: list[tuple[str, int | float, bool]] = []
    pending_act: int | float = 0
    pending_peak = False
    for i, (token, act) in enumerate(zip(ctx["tokens"], ctx["acts"])):
        act, peak = max(act, pending_act), pending_peak or i == ctx["peak"]
        if token == "" and i + 1 < len(ctx["tokens"]):
            pending_act, pending_peak = act, peak
            continue
        units.append((token, act, peak))
        pending_act, pending_peak = 0, False
    return units


def context_html(ctx: dict[str, Any]) -> str:
    """One context: tokens shaded by their 0..10 activation, the peak token in <mark class=peak>."""
    parts = []
    for token, act, peak in display_units(ctx):
        text = html.escape(token.replace("\n", "⏎"))
        if peak:
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


SATURATED = 0.995  # a feature active on at least this share of both row groups: frequency cannot differ


def _t7_split(t7: dict[str, Any], name: str, high: str) -> str:
    """One Table 7 split of held-out rows: activity frequency high vs low, and the mean code, which
    still differs where the feature is active on (nearly) every row of both groups."""
    f_hi, f_lo = t7.get(f"{name}_freq_high"), t7.get(f"{name}_freq_low")
    m_hi, m_lo = t7.get(f"{name}_mean_high"), t7.get(f"{name}_mean_low")
    if f_hi is None or f_lo is None:
        return f"{high}: not computed (no held-out rows on one side of the split)"
    saturated = all(isinstance(f, (int, float)) and f >= SATURATED for f in (f_hi, f_lo))
    if m_hi is None or m_lo is None:
        mean = " (mean code not stored: table7_features.jsonl predates it)" if saturated else ""
    else:
        ratio = f", ratio {m_hi / m_lo:.2f}" if isinstance(m_lo, (int, float)) and m_lo > 0 and isinstance(m_hi, (int, float)) else ""
        mean = f"; mean code {fmt(m_hi)} vs {fmt(m_lo)}{ratio}"
    if saturated:
        return f"{high}: active on every row of both groups ({fmt(f_hi, pct=True)} vs {fmt(f_lo, pct=True)}), so only its size can differ{mean}"
    return (f"{high}: active on {fmt(f_hi, pct=True)} of them vs {fmt(f_lo, pct=True)} of the rest "
            f"(contrast {fmt(t7.get(f'{name}_contrast'))}){mean}")


def table7_text(t7: dict[str, Any] | None, validate: dict[str, Any]) -> str:
    """This feature's Table 7 numbers on held-out rows, at the paper's threshold and the quantile."""
    if not t7:
        reason = validate.get("t7_reason")
        return f"not in table7_features.jsonl{f' ({reason})' if reason else ''}"
    th, q = validate.get("t7_threshold"), validate.get("t7_quantile")
    top = fmt(1 - q if isinstance(q, (int, float)) else None, pct=True)
    return (f"{_t7_split(t7, 'threshold', f'held-out rows with predicted feedback > {fmt(th, 2)}')}; "
            f"{_t7_split(t7, 'quantile', f'top {top} of predictions')}")


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


def feature_nav(run: RunInputs) -> str:
    """A jump list to every feature section (the page is tens of thousands of pixels tall)."""
    if not run.features:
        return ""
    items = "".join(f"<a href='#L{r['layer']}-F{r['feature']}' title='{html.escape(related_text(r.get('related')))}'>"
                    f"L{r['layer']}·F{r['feature']}{'*' if r.get('related') is True else ''}</a> " for r in run.features)
    return f"<nav class='features'><p class='note'>Jump to a feature (* related): {items}</p></nav>"


def build_html(run: RunInputs) -> str:
    """The whole page of one run: a summary line, a jump list, then one section per explained feature."""
    title = f"Feature dashboards — {run.name}"
    body = "".join(feature_section(r, run) for r in run.features) or "<p class='note'>features.jsonl lists no explained feature</p>"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><p class='note'><a href='{INDEX}'>all dashboards</a> · "
            f"<a href='../report.html'>report</a></p><h1>{html.escape(title)}</h1>{summary_html(run)}"
            f"<p class='note'>{len(run.features)} explained features. Contexts: the explainer's top-activating windows; "
            f"shading = activation 0..10.</p>{feature_nav(run)}{body}</body></html>\n")


def index_html(runs: Sequence[RunInputs]) -> str:
    """reports/features/index.html: one row per run's dashboard, with its headline numbers."""
    rows = []
    for run in runs:
        e, n = run.explain, len(run.features)
        related = sum(r.get("related") is True for r in run.features)
        unlabelled = sum(r.get("related") is None for r in run.features)
        cells = [f"<a href='{html.escape(run.name)}.html'>{html.escape(run.name)}</a>", str(n), f"{related} / {unlabelled}",
                 html.escape(str(e.get("explainer") or e.get("backend") or MISSING)),
                 html.escape(f"{fmt(e.get('explanation_score_mean'))} {ci(e, 'explanation_score')}".strip()),
                 html.escape(fmt(e.get("explanation_score_shuffled_mean")))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("run", "explained features", "related / unlabelled", "explainer",
                                             "mean detection score [95 % CI]", "shuffled-explanation baseline"))
    table = f"<table class='facts'><tr>{head}</tr>{''.join(rows)}</table>" if rows else "<p class='note'>no runs</p>"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Feature dashboards</title>"
            f"<style>{STYLE}</style></head><body><p class='note'><a href='../report.html'>report</a></p>"
            f"<h1>Feature dashboards</h1><p class='note'>One page per model × task: every explained feature with its "
            f"explanation, detection score, top-activating contexts, activation histogram and Tables 6/7. Detection "
            f"score: balanced accuracy on held-out contexts, 0.5 = chance.</p>{table}</body></html>\n")


# --------------------------------------------------------------------------------------------
# files and links
# --------------------------------------------------------------------------------------------


def write_dashboards(runs: Sequence[tuple[str, str]]) -> list[Path]:
    """Write every run's page and the index into reports/features/ (swapped in whole: no stale
    page survives); returns the runs' pages."""
    with io.atomic_dir(paths.FEATURE_DASHBOARDS) as tmp:
        loaded = []
        for model, task in runs:
            run = load_run(model, task)
            loaded.append(run)
            (tmp / paths.feature_dashboard_file(model, task).name).write_text(build_html(run), encoding="utf-8")
        (tmp / INDEX).write_text(index_html(loaded), encoding="utf-8")
    return [paths.feature_dashboard_file(m, t) for m, t in runs]


def _relative(page: Path) -> str:
    return page.relative_to(paths.REPORTS).as_posix()


def links_markdown(pages: Sequence[Path]) -> str:
    """A short Markdown section linking report.md to the dashboards' index and each dashboard."""
    items = "\n".join(f"- [{p.stem}]({_relative(p)})" for p in pages)
    index = _relative(paths.FEATURE_DASHBOARDS / INDEX)
    return f"\n## Feature dashboards\n\n[All dashboards]({index})\n\n{items}\n" if pages else ""


def links_html(page: str, pages: Sequence[Path]) -> str:
    """report.html with links to the dashboards' index and each dashboard added before </body>."""
    if not pages:
        return page
    items = "".join(f"<li><a href='{html.escape(_relative(p))}'>{html.escape(p.stem)}</a></li>" for p in pages)
    index = html.escape(_relative(paths.FEATURE_DASHBOARDS / INDEX))
    cut = page.rindex("</body>")
    return (f"{page[:cut]}<h2 id='feature-dashboards'>Feature dashboards</h2><p><a href='{index}'>All dashboards</a></p>"
            f"<ul>{items}</ul>\n{page[cut:]}")
