"""report stage: the "What this run shows" sentences, blank-cell explanations, CE-recovered
denominators and reports/headline.json, on synthetic metrics (no model, no MLflow except one test)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from lfp.tasks.reports import report_kinds
from lfp.core import io, paths
from lfp.report import document, format, headline, inputs, sentences
from lfp.report.inputs import ReportInputs
from lfp.report.sections import build_sections, ce_cells
from lfp.stages import report
from lfp.tasks.lexicon_rl import report as lexicon_report
from lfp.tasks.preference_dpo import report as preference_report

KINDS = {"vader": "lexicon_rl", "hh": "preference_dpo", "toxic": "preference_dpo"}
PAPER = inputs.paper_results()


def fake_params(models=("tiny",), tasks=("vader", "hh", "toxic")) -> NS:
    """The attributes the report reads, with the config's task-kind API."""
    specs = {t: NS(kind=KINDS[t], proxy=t == "toxic", swap=t == "toxic", subsets=["harmless-base"], source="hh-rlhf") for t in tasks}
    return NS(
        models=list(models), tasks=list(tasks), profile="unit", seed=0,
        spec=lambda m: NS(source="tiny", description="a tiny test model"),
        kind=lambda t: specs[t].kind, task=lambda t: specs[t],
        sae=NS(ratios=[1, 2]), explain=NS(backend="offline"),
        contrastive=NS(**{t: NS(backend="offline") for t in tasks}),
        tracking=NS(experiment="lfp"),
    )


def vader_probe(**over) -> dict:
    p = {"kendall_tau": 0.284, "kendall_tau_ci_low": 0.254, "kendall_tau_ci_high": 0.313, "kendall_p": 1e-21, "n_words": 525,
         "shuffled_kendall_tau": -0.004, "shuffled_kendall_tau_sd": 0.03, "baseline_kendall_tau": 0.067,
         "base_control_kendall_tau": 0.286, "base_control_kendall_tau_ci_low": 0.259, "base_control_kendall_tau_ci_high": 0.316,
         "sign_acc_positive": 0.71, "sign_acc_negative": 0.74}
    p.update(over)
    return p


def pair_probe(**over) -> dict:
    p = {"probe_accuracy": 0.525, "probe_accuracy_ci_low": 0.46, "probe_accuracy_ci_high": 0.595, "n_test": 200,
         "shuffled_probe_accuracy": 0.485, "shuffled_probe_accuracy_sd": 0.04,
         "base_control_probe_accuracy": 0.525, "base_control_probe_accuracy_ci_low": 0.455, "base_control_probe_accuracy_ci_high": 0.595}
    p.update(over)
    return p


VALIDATE_NO_RELATED = {
    "ablation_metric": None, "ablation_n": 0, "ablation_no_hook": None, "ablation_reconstruction": None, "ablation_related": None,
    "ablation_random": None, "ablation_random_draws": [], "ablation_reason": "no feature is labelled related in features.jsonl",
    "delta_threshold": 3.0, "freq_all": None, "freq_related": None, "freq_ratio": None, "n_high_delta_inputs": 0, "n_inputs": 1000,
    "n_related_features": 0, "predicted_kind": "logistic_decision_function",
}


def validate_vader(**over) -> dict:
    v = {"ablation_metric": "vader_reward", "ablation_n": 1000, "ablation_no_hook": 0.304, "ablation_reconstruction": 0.298,
         "ablation_related": 0.317, "ablation_random": 0.297, "ablation_random_draws": [0.298, 0.296, 0.298], "ablation_reason": None,
         "delta_threshold": 3.0, "freq_all": 0.404, "freq_related": 0.684, "n_high_delta_inputs": 697, "n_inputs": 4000,
         "n_related_features": 14, "predicted_kind": "rescaled_delta"}
    v.update(over)
    return v


# ---------------------------------------------------------------------------- probe sentences


def test_vader_probe_matching_the_base_control_is_not_a_learned_pattern():
    s = lexicon_report.probe_sentence(vader_probe())
    assert "Kendall τ 0.284 [0.254, 0.313]" in s and "525 held-out words" in s
    assert "base-model control gives 0.286 [0.259, 0.316]" in s
    assert "word identity already in the base model, not a learned feedback pattern" in s
    assert "shuffled labels -0.004" in s and "e-0" not in s  # no scientific notation in prose


def test_vader_probe_above_the_base_control_is_credited_to_fine_tuning():
    s = lexicon_report.probe_sentence(vader_probe(base_control_kendall_tau=0.10, base_control_kendall_tau_ci_low=0.07,
                                                  base_control_kendall_tau_ci_high=0.13))
    assert "above the base-model control's 0.100 [0.070, 0.130]" in s and "consistent with a learned feedback pattern" in s


def test_vader_probe_whose_ci_reaches_zero_detects_nothing():
    s = lexicon_report.probe_sentence(vader_probe(kendall_tau=0.02, kendall_tau_ci_low=-0.01, kendall_tau_ci_high=0.05))
    assert "no feedback signal is detected" in s and "base-model control" not in s


def test_vader_probe_without_base_control_says_so():
    p = {k: v for k, v in vader_probe().items() if not k.startswith("base_control")}
    assert "no base-model control in this run" in lexicon_report.probe_sentence(p)


def test_missing_probe_metric_is_named_not_invented():
    assert "`kendall_tau` is missing" in lexicon_report.probe_sentence({})
    assert "`probe_accuracy` is missing" in preference_report.probe_sentence({}, "hh", PAPER)


def test_pair_probe_at_chance():
    s = preference_report.probe_sentence(pair_probe(), "hh", PAPER)
    assert "probe accuracy 52.5% [46.0%, 59.5%] on 200 held-out examples" in s
    assert "the CI includes 50% chance" in s and "shuffled labels 48.5%" in s and "base-model control 52.5% [45.5%, 59.5%]" in s
    assert "no learned feedback pattern is detected" in s and "paper: 99.9–100% on LLM-rewritten triples" in s


def test_pair_probe_above_chance_and_base():
    s = preference_report.probe_sentence(pair_probe(probe_accuracy=0.9, probe_accuracy_ci_low=0.86, probe_accuracy_ci_high=0.94), "toxic", PAPER)
    assert "above 50% chance" in s and "above the base-model control's 52.5%" in s and "consistent with a learned feedback pattern" in s


def test_pair_probe_above_chance_but_same_as_base():
    p = pair_probe(probe_accuracy=0.9, probe_accuracy_ci_low=0.86, probe_accuracy_ci_high=0.94, base_control_probe_accuracy=0.89,
                   base_control_probe_accuracy_ci_low=0.85, base_control_probe_accuracy_ci_high=0.93)
    assert "already in the base model" in preference_report.probe_sentence(p, "hh", PAPER)


# ---------------------------------------------------------------------------- fine-tuning, Table 7, Table 6


def test_finetune_sentences():
    s = lexicon_report.REPORT.finetune_sentence({"reward_base": 0.064, "reward_finetuned": 0.13, "kl_to_base": 0.026, "beats_base": True})
    assert s == "RL fine-tuning raised the held-out mean VADER reward from 0.064 to 0.130 (KL to base 0.026): it beat the base on its own objective."
    s = preference_report.REPORT.finetune_sentence({"dpo_loss_base": 0.693, "dpo_loss_finetuned": 0.70, "beats_base": False,
                                                    "reward_accuracy_base": 0.5, "reward_accuracy_finetuned": 0.5})
    assert "DPO raised the held-out DPO loss from 0.693 to 0.700" in s and "did not beat the base" in s and "stayed at 50.0%" in s
    assert "not available" in preference_report.REPORT.finetune_sentence({})


def test_frequency_reason_comes_from_validate_json():
    assert sentences.frequency_reason(validate_vader()) is None
    reason = sentences.frequency_reason(VALIDATE_NO_RELATED)
    assert "no probe input had predicted log-odds > 3.0 (0 of 1000)" in reason and "no feature is labelled related" in reason
    assert sentences.frequency_reason({**VALIDATE_NO_RELATED, "freq_reason": "explicit"}) == "explicit"


def test_frequency_sentence_states_the_direction_against_the_paper():
    s = sentences.frequency_sentence(validate_vader(), True, PAPER)
    assert "68.4% of the 697 probe inputs with predicted delta > 3.0, all features in 40.4%" in s and "as in the paper" in s
    assert "unlike the paper" in sentences.frequency_sentence(validate_vader(freq_related=0.3), True, PAPER)
    assert sentences.frequency_sentence(VALIDATE_NO_RELATED, False, PAPER).startswith("not computed: no probe input")


def test_ablation_raise_is_unlike_the_paper_and_beyond_random_draws():
    s = sentences.ablation_sentence(validate_vader(), True, PAPER)
    assert "zeroing the 14 related features raised the mean VADER reward" in s and "to 0.317 (SAE reconstruction alone: 0.298" in s
    assert "unlike the paper (the paper saw a drop for 2 of its 3 models and no change for gpt-neo-125m)" in s
    assert "larger than any of 3 random-feature draws (0.296 to 0.298)" in s


def test_ablation_drop_within_random_draws_is_called_noise():
    s = sentences.ablation_sentence(validate_vader(ablation_related=0.297), True, PAPER)
    assert "lowered" in s and "as in the paper" in s and "not distinguishable from zeroing random features" in s


def test_ablation_not_run_shows_the_recorded_reason():
    assert sentences.ablation_sentence(VALIDATE_NO_RELATED, False, PAPER) == "not run: no feature is labelled related in features.jsonl."


# ---------------------------------------------------------------------------- SAE CE recovered, headline


def test_ce_recovered_shows_its_denominator_and_flags_inert_layers():
    ok = {"x_ce_recovered": 0.98, "x_ce_zero": 6.2, "x_ce_clean": 5.4}
    assert ce_cells(ok, "x_") == ("0.980", "0.8000", False)
    inert = {"x_ce_recovered": 1.377, "x_ce_zero": 5.4007, "x_ce_clean": 5.4}
    rec, denom, shaky = ce_cells(inert, "x_")
    assert rec == "1.377 †" and denom == "0.0007" and shaky
    assert ce_cells({"x_ce_recovered": None, "x_ce_zero": 5.4, "x_ce_clean": 5.4}, "x_")[0] == format.MISSING


def _inputs(params, runs) -> ReportInputs:
    return ReportInputs(params, runs, {}, report_kinds(params))


def test_headline_is_flat_per_task_and_null_where_missing():
    runs = {("tiny", "vader"): {"probe": vader_probe(), "finetune": {"reward_base": 0.06, "reward_finetuned": 0.13}},
            ("tiny", "hh"): {"probe": {"probe_accuracy": 0.525}, "finetune": {"dpo_loss_base": 0.693, "dpo_loss_finetuned": 0.679}}}
    h = headline.headline_metrics(_inputs(fake_params(tasks=("vader", "hh")), runs))
    assert h["vader.kendall_tau"] == 0.284 and h["vader.base_control_kendall_tau"] == 0.286
    assert h["vader.finetune_reward_gain"] == pytest.approx(0.07) and h["hh.finetune_dpo_loss_drop"] == pytest.approx(0.014)
    assert h["hh.probe_accuracy"] == 0.525 and h["hh.base_control_probe_accuracy"] is None
    assert len(h) == 12 and all(isinstance(v, (float, type(None))) for v in h.values())
    two = headline.headline_metrics(_inputs(fake_params(models=("a", "b"), tasks=("hh",)),
                                            {("a", "hh"): runs[("tiny", "hh")], ("b", "hh"): runs[("tiny", "hh")]}))
    assert set(two) >= {"a-hh.probe_accuracy", "b-hh.probe_accuracy"}


# ---------------------------------------------------------------------------- the whole report on disk


def write_project(root: Path) -> None:
    """reports/runs/tiny-{vader,hh,toxic} with every file the report reads (tiny PNG stand-ins)."""
    png = b"\x89PNG\r\n\x1a\n"
    for t in ("vader", "hh", "toxic"):
        d = root / paths.report_dir("tiny", t)
        lexicon = t == "vader"
        q = {"ce_texts": 64}
        for L in (0, 1):
            q[f"layer{L}_mmcs"] = 0.4
            for r in (1, 2):
                zero = 6.2 if L == 0 else 5.4004
                q.update({f"layer{L}_x{r}_{k}": v for k, v in {"mse": 0.001, "fvu": 0.01, "l0": 10.0, "dead_fraction": 0.0,
                                                                 "ce_clean": 5.4, "ce_zero": zero, "ce_recovered": 0.99 if L == 0 else 1.08}.items()})
        for source in paths.SOURCES:  # `sae --source base|finetuned` each write their own quality file
            io.write_json(root / paths.sae_metrics_file("tiny", t, source), q)
        io.write_json(d / "divergence.json", {"chosen_layers": [0, 1], "block_l2": [0.5, 0.4], "top_k": 2})
        io.write_json(d / "finetune.json", {"reward_base": 0.06, "reward_finetuned": 0.13, "kl_to_base": 0.03, "beats_base": True} if lexicon
                      else {"dpo_loss_base": 0.693, "dpo_loss_finetuned": 0.68, "beats_base": True, "reward_accuracy_base": 0.5,
                            "reward_accuracy_finetuned": 0.5, "reward_margin_base": -1.0, "reward_margin_finetuned": -0.9})
        io.write_json(d / "probe.json", vader_probe() if lexicon else pair_probe())
        io.write_json(d / "explain.json", {"backend": "offline"})
        io.write_json(d / "validate.json", validate_vader() if lexicon else VALIDATE_NO_RELATED)
        io.write_jsonl(d / "features.jsonl", [{"layer": 0, "feature": 3, "similarity": 0.6, "explanation": "peaks on punctuation/whitespace",
                                              "related": None if t == "hh" else False, "backend": "offline", "simulation_score": None}])
        (d / "divergence.png").write_bytes(png)
        plots = root / paths.probe_plots_dir("tiny", t)
        plots.mkdir(parents=True, exist_ok=True)
        (plots / ("fig4_error_vs_frequency.png" if lexicon else "fig5_pca.png")).write_bytes(png)
        if lexicon:
            (plots / "probe_words.csv").write_text("word,predicted,true_value,count,generated_count\ngood,1.2,1.9,3,0\n")


def test_report_opens_with_the_verdict_and_explains_every_blank(in_tmp_project: Path):
    write_project(in_tmp_project)
    params = fake_params()
    sections = build_sections(ReportInputs.load(params, report_kinds(params)))
    md = document.render_markdown(sections)
    assert md.index("## What this run shows") < md.index("## What was measured")
    verdict = md[md.index("## What this run shows"): md.index("## What was measured")]
    assert verdict.count("- **vader**:") == verdict.count("- **hh**:") == verdict.count("- **toxic**:") == 4
    assert "nan" not in md.replace("nans", "") and "None" not in md
    assert "CE zero − clean (nats)" in md and "1.080 †" in md and "† (6 rows)" in md
    assert "no probe input had predicted log-odds > 3.0 (0 of 1000)" in md  # Table 7 why-blank
    assert "KL to base is — on the DPO rows" in md and "related —: not labelled" in md and "simulation r —: undefined" in md
    html = document.render_html(sections)
    assert "<ul><li><strong>vader</strong>:" in html and "**" not in html


def test_report_stage_writes_headline_json_and_logs_it(in_tmp_project: Path):
    write_project(in_tmp_project)
    report.run(fake_params())
    headline = json.loads((in_tmp_project / "reports" / "headline.json").read_text())
    assert headline["vader.kendall_tau"] == 0.284 and headline["toxic.probe_accuracy"] == 0.525
    md = (in_tmp_project / "reports" / "report.md").read_text()
    assert md.startswith("# Learned Feedback Patterns — report\n\n**Contents**\n\n- [Verdicts of the controls](#verdicts-of-the-controls)\n")
    assert re.search(r"^## .*", md, re.M).group(0) == "## Verdicts of the controls"  # the first section, after the contents
    assert md.rstrip().endswith("(features/tiny-toxic.html)") and "- [Feature dashboards](#feature-dashboards)" in md
    import mlflow

    run = mlflow.search_runs(experiment_names=["lfp"], output_format="list", filter_string="attributes.run_name = 'report'")[0]
    assert run.data.metrics["vader.kendall_tau"] == pytest.approx(0.284)


def test_table_of_contents_links_every_section(in_tmp_project: Path):
    """report.md / report.html open with a contents list whose anchors are the headings' ids
    (GitHub's anchor rule in Markdown, the same ids in HTML); repeated titles get -1, -2."""
    write_project(in_tmp_project)
    params = fake_params()
    sections = build_sections(ReportInputs.load(params, report_kinds(params)))
    md = document.render_markdown(sections)
    toc = re.findall(r"^- \[(.+)\]\(#(.+)\)$", md[: md.index("\n## ")], re.M)
    assert [t for t, _ in toc] == [s.title for s in sections] and len(toc) >= 10
    assert ("Sparse autoencoders: quality (Table 11 style)", "sparse-autoencoders-quality-table-11-style") in toc
    html = document.render_html(sections, ("Feature dashboards",))
    ids = re.findall(r"<h2 id='([^']+)'>", html)
    hrefs = re.findall(r"<li><a href='#([^']+)'>", html)
    assert ids == [a for _, a in toc] and hrefs == ids + ["feature-dashboards"]
    assert document.anchors(["A b", "A b", "Kendall τ (Tables 4 and 10)"]) == ["a-b", "a-b-1", "kendall-τ-tables-4-and-10"]


def test_lens_sentence_names_tokens_latents_and_how_many_top_crosscoder_latents_are_fine_tune_specific() -> None:
    from lfp.report.measure import lens_sentence

    m = {"logit_diff_lens_promoted": ["great", "love"], "logit_diff_lens_demoted": ["bad"],
         "sae_diff_lens_top_latents_positive": ["L1:5", "L2:9"], "sae_diff_lens_top_latents_negative": ["L1:3"],
         "crosscoder_diff_lens_top_latents_positive": ["L1:7", "L2:1", "L2:4"], "crosscoder_diff_lens_top_latents_positive_nu": [0.05, None, 0.9]}
    s = lens_sentence(m, 0.2)
    assert "`great`, `love`" in s and "`bad`" in s and "L1:5" in s
    assert "L1:7 (ν 0.05)" in s and "1 of the top 3 have |ν| < 0.2" in s
    assert lens_sentence({}, 0.2) is None


def test_proxy_data_note_names_a_subset_and_a_swap():
    """A task on part of HH-RLHF says which part; a swapped proxy says it is swapped; the paper's data says nothing."""
    def params(**spec):
        return NS(task=lambda t: NS(**{"proxy": True, "swap": False, "source": "hh-rlhf", "subsets": ["helpful-base"], **spec}))

    assert inputs.proxy_data_note(params(), "hh") == "hh data: the helpful-base pairs of HH-RLHF only (a subset standing in for the paper's data)"
    assert "swapped" in inputs.proxy_data_note(params(swap=True, subsets=["harmless-base"]), "toxic")
    assert inputs.proxy_data_note(params(source="data/raw/toxic.jsonl"), "toxic") == "toxic data: `data/raw/toxic.jsonl` (proxy for the paper's data)"
    assert inputs.proxy_data_note(params(proxy=False), "hh") is None
