"""The report's verdict on the committed metrics (reports/runs/ of the last full run): every task gets
a sentence per question, every claim agrees with the numbers it rests on, every blank table cell
says why, and reports/headline.json carries the probe numbers. Reads only; renders in memory.

Why property checks and not fixed sentences: the committed metrics change with every full run; a
sentence saying "already in the base model" must hold for whatever numbers are committed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lfp.core import io, paths
from lfp.core.params_load import load_params
from lfp.report import inputs
from lfp.report.document import render_markdown
from lfp.report.format import MISSING, fmt, pr
from lfp.report.headline import HEADLINE, headline_metrics
from lfp.report.inputs import ReportInputs
from lfp.tasks import kind_of
from lfp.tasks.reports import report_kinds
from lfp.report.inputs import label as run_label
from lfp.report.sections import build_sections

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)  # lfp.core.paths are relative to the project root
    mp.setattr(inputs, "FIGURES", tmp_path_factory.mktemp("figures"))  # leave reports/figures alone
    try:
        params = load_params(ROOT / "params.yaml")
        loaded = ReportInputs.load(params, report_kinds(params))
        runs = loaded.runs
        sections = build_sections(loaded)
        yield params, runs, sections, render_markdown(sections), headline_metrics(loaded)
    finally:
        mp.undo()


def bullets(md: str, question: str) -> dict[str, str]:
    """task label -> sentence, under one bold question of "What this run shows"."""
    block = md.split(f"**{question}", 1)[1].split("\n\n", 2)[1]
    return dict(re.findall(r"^- \*\*(.+?)\*\*: (.+)$", block, flags=re.M))


def test_verdict_opens_the_report_with_one_sentence_per_task_and_question(rendered):
    params, runs, sections, md, _ = rendered
    # the verdict table of every control opens the report, then the verdict in sentences
    assert [sec.title for sec in sections[:2]] == ["Verdicts of the controls", "What this run shows"]
    labels = {run_label(runs, m, t) for m, t in runs}
    for question in ("Does the probe read", "Did fine-tuning beat", "Are the task-related features", "Does zeroing the task-related"):
        got = bullets(md, question)
        assert set(got) == labels, question
        assert all(s.endswith(".") and "None" not in s and "nan" not in s for s in got.values()), got


def test_probe_claims_agree_with_the_numbers(rendered):
    params, runs, _, md, _ = rendered
    got = bullets(md, "Does the probe read")
    for (m, t), r in runs.items():
        s, p = got[run_label(runs, m, t)], r["probe"]
        key = kind_of(params, t).report_sections().probe_metric
        lo, hi = p.get(f"{key}_ci_low"), p.get(f"{key}_ci_high")
        blo, bhi = p.get(f"base_control_{key}_ci_low"), p.get(f"base_control_{key}_ci_high")
        shown = pr(p[key]) if key == "kendall_tau" else fmt(p[key], pct=True)
        assert shown in s, (s, shown)
        if "already in the base model" in s:
            assert not (lo > bhi or hi < blo), s  # the CIs overlap
        if "above the base-model control" in s:
            assert lo > bhi, s
        if "includes 50% chance" in s:
            assert lo <= 0.5 <= hi, s
        if "no base-model control" in s:
            assert f"base_control_{key}" not in p


def test_ablation_and_frequency_claims_agree_with_validate_json(rendered):
    params, runs, _, md, _ = rendered
    abl, freq = bullets(md, "Does zeroing the task-related"), bullets(md, "Are the task-related features")
    for (m, t), r in runs.items():
        v, label = r["validate"], run_label(runs, m, t)
        if v.get("ablation_related") is None:
            assert abl[label].startswith("not run: ") and (v.get("ablation_reason") or "missing") in abl[label]
        else:
            word = "raised" if v["ablation_related"] > v["ablation_reconstruction"] else "lowered"
            assert word in abl[label], abl[label]
            if kind_of(params, t).report_sections().paper_tables_6_7:
                assert ("as in the paper" if word == "lowered" else "unlike the paper") in abl[label]
        if v.get("freq_related") is None:
            assert freq[label].startswith("not computed: ")
        elif kind_of(params, t).report_sections().paper_tables_6_7:
            assert ("as in the paper" in freq[label]) == (v["freq_related"] > v["freq_all"]), freq[label]


def test_every_blank_validation_row_gives_its_reason(rendered):
    *_, sections, _md, _ = rendered
    validation = next(s for s in sections if s.title.startswith("Probe validation"))
    for caption, df in validation.tables:
        ours = df[df["model"].str.endswith("(ours)")]
        blank = ours.drop(columns=["why blank"]).eq(MISSING).any(axis=1)
        assert (ours.loc[blank, "why blank"].str.len() > 0).all(), caption
        assert not ours.astype(str).isin(["nan", "None"]).any().any(), caption


def test_ce_recovered_above_one_is_flagged_with_its_denominator(rendered):
    *_, sections, md, _ = rendered
    sae = next(s for s in sections if s.title.startswith("Sparse autoencoders"))
    df = sae.tables[0][1]
    assert "CE zero − clean (nats)" in df.columns
    values = df["CE recovered"].str.replace(" †", "", regex=False)
    odd = values.ne(MISSING) & ~values.where(values.ne(MISSING), "0").astype(float).between(0, 1)
    assert df.loc[odd, "CE recovered"].str.endswith("†").all()
    if df["CE recovered"].str.endswith("†").any():
        assert any(n.startswith("† (") for n in sae.notes)


# headline keys from reports/runs/{m}-{t}/lfp.json (stage `measure`), for the runs that have one
MEASURE_KEYS = ("learned_value_tau", "learned_value_tau_seed_mean", "probe_tau_word_heldout_diff", "planted_auc",
                "shuffled_learned_value_tau")


def test_headline_carries_the_probe_numbers_and_controls(rendered):
    params, runs, *_, headline = rendered
    for (m, t), r in runs.items():
        key = kind_of(params, t).report_sections().probe_metric
        label = run_label(runs, m, t)
        for name in (key, f"{key}_ci_low", f"{key}_ci_high", f"base_control_{key}", f"shuffled_{key}"):
            assert headline[f"{label}.{name}"] == r["probe"].get(name)
        gain = "finetune_reward_gain" if key == "kendall_tau" else "finetune_dpo_loss_drop"
        assert isinstance(headline[f"{label}.{gain}"], float)
        for name in MEASURE_KEYS if r.get("measure") else ():  # runs the `measure` stage validated
            assert headline[f"{label}.{name}"] == r["measure"].get(name)
    assert len(headline) == sum(6 + (len(MEASURE_KEYS) if r.get("measure") else 0) for r in runs.values())


def test_committed_report_has_the_current_verdict(rendered):
    """reports/report.md was regenerated after the report code changed (`lfp report` is cheap)."""
    *_, md, _ = rendered
    committed = (ROOT / paths.REPORTS / "report.md").read_text(encoding="utf-8")
    # from the verdicts on: the table of contents also lists the dashboards section the stage appends
    start = "## Verdicts of the controls"
    verdict = md.split("## What was measured", 1)[0]
    verdict = verdict[verdict.index(start):]
    assert committed[committed.index(start):].startswith(verdict), "reports/report.md is stale: run `lfp report`"
    headline = ROOT / HEADLINE
    if headline.exists():  # written by the report stage; the lead declares it in dvc.yaml
        assert io.read_json(headline) == rendered[-1]
