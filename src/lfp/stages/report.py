"""report: reports/report.md + report.html + reports/figures/ — ours beside the paper's numbers.

The report opens with "Verdicts of the controls" (lfp.report.verdicts: one passed / failed / not run / n/a
row per control and task), then "What this run shows": one plain sentence per task and question (probe vs
its controls, fine-tuning, Table 7, Table 6), each computed from the metrics files, never written
by hand. Every blank cell of a table is explained under it (the reason comes from the metrics
files where a stage recorded one). The sections are lfp.report.sections (one function per section,
a task kind's own from its `report_sections()`); this stage loads the runs, renders the sections to
Markdown and HTML (lfp.report.document), links the feature dashboards and writes
`reports/headline.json` (lfp.report.headline) for `dvc metrics show`.
"""

from __future__ import annotations

from lfp.core import io, paths
from lfp.core.params import Params
from lfp.core.tracking import stage_run
from lfp.report import dashboards
from lfp.report.document import render_html, render_markdown
from lfp.report.headline import HEADLINE, headline_metrics
from lfp.report.inputs import FIGURES, ReportInputs
from lfp.report.sections import build_sections
from lfp.tasks.reports import report_kinds


def run(params: Params, model: str | None = None, task: str | None = None) -> None:
    inputs = ReportInputs.load(params, report_kinds(params))
    runs = inputs.runs
    sections = build_sections(inputs)
    headline = headline_metrics(inputs)
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
