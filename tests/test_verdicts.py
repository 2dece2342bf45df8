"""lfp.report.verdicts: the report's opening table of control verdicts (passed / failed / not run / n/a),
on small fake metrics dicts and run folders — no model, no stage."""

from __future__ import annotations

import json
from pathlib import Path

from lfp.tasks.reports import report_kinds
from lfp.report import verdicts
from lfp.report.document import render_html, render_markdown
from lfp.report.inputs import ReportInputs
from lfp.report.sections import build_sections
from lfp.report.verdicts import FAILED, NA, NOT_RUN, PASSED

LEXICON, PREFERENCE = "lexicon_rl", "preference_dpo"


def lexicon_lfp(**over) -> dict:
    """A measured lexicon task's lfp.json where every control behaves as a sound instrument needs."""
    m = {"planted_auc": 0.82, "planted_p": 0.001, "planted_detected": True,
         "shuffled_learned_value_tau": 0.01, "shuffled_learned_value_tau_ci_low": -0.03, "shuffled_learned_value_tau_ci_high": 0.05,
         "shuffled_detected": False, "n_words_test": 240,
         "probe_tau_word_heldout_diff": 0.08, "probe_tau_word_heldout_diff_ci_low": 0.02, "probe_tau_word_heldout_diff_ci_high": 0.14,
         "probe_tau_word_heldout_finetuned": 0.7, "probe_tau_word_heldout_finetuned_ci_low": 0.6,
         "probe_tau_word_heldout_finetuned_ci_high": 0.8, "identity_ceiling_tau": 0.0, "sign_ceiling_tau": 0.51,
         "probe_tau_word_heldout_difference": 0.4, "probe_tau_word_heldout_difference_ci_low": 0.3,
         "probe_tau_word_heldout_difference_ci_high": 0.5, "shuffled_probe_tau_word_heldout_difference": 0.05,
         "shuffled_probe_tau_word_heldout_difference_ci_low": -0.02, "shuffled_probe_tau_word_heldout_difference_ci_high": 0.1}
    m.update(over)
    return m


def pair_lfp(**over) -> dict:
    m = {"implicit_reward_acc": 0.6, "implicit_reward_acc_ci_low": 0.56, "implicit_reward_acc_ci_high": 0.64, "n_pairs": 1000,
         "pairwise_accuracy_diff": 0.05, "pairwise_accuracy_diff_ci_low": 0.01, "pairwise_accuracy_diff_ci_high": 0.09,
         "pairwise_accuracy_finetuned": 0.7, "pairwise_accuracy_finetuned_ci_low": 0.65, "pairwise_accuracy_finetuned_ci_high": 0.75,
         "pairwise_accuracy_bow": 0.55, "pairwise_accuracy_bow_ci_low": 0.5, "pairwise_accuracy_bow_ci_high": 0.6}
    m.update(over)
    return m


def validate(**over) -> dict:
    v = {"t7_p": 0.01, "t7_related_contrast": 0.1, "t7_unrelated_contrast": 0.0, "t7_reason": None,
         "t6_related_delta": -0.03, "t6_related_ci_low": -0.05, "t6_related_ci_high": -0.01,
         "t6_related_vs_random_delta": -0.02, "t6_related_vs_random_ci_low": -0.04, "t6_related_vs_random_ci_high": -0.005,
         "ablation_reason": None}
    v.update(over)
    return v


def write(d: Path, name: str, data: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(data), encoding="utf-8")


# ---------------------------------------------------------------------------- one control at a time


def test_lexicon_finetune_passes_only_when_it_beats_the_base():
    assert verdicts.finetune_lexicon({"reward_base": 0.1, "reward_finetuned": 0.3, "beats_base": True})[0] == PASSED
    verdict, evidence = verdicts.finetune_lexicon({"reward_base": 0.3, "reward_finetuned": 0.1})
    assert verdict == FAILED and "0.300 (base) → 0.100" in evidence
    assert verdicts.finetune_lexicon(None) == (NOT_RUN, "no finetune.json")
    assert verdicts.finetune_lexicon({"reward_base": 0.1})[0] == NOT_RUN


def test_lexicon_finetune_with_a_ci_passes_only_when_the_ci_clears_zero():
    f = {"reward_base": 0.1, "reward_finetuned": 0.3, "beats_base": True, "reward_gain": 0.2}
    verdict, evidence = verdicts.finetune_lexicon({**f, "reward_gain_ci_low": 0.05, "reward_gain_ci_high": 0.35})
    assert verdict == PASSED and "gain 0.200 [0.050, 0.350]" in evidence
    assert verdicts.finetune_lexicon({**f, "reward_gain_ci_low": -0.01, "reward_gain_ci_high": 0.4})[0] == FAILED


def test_planted_and_shuffled_runs_must_raise_their_own_heldout_reward():
    m = {"planted_reward_gain": 0.1, "planted_reward_gain_ci_low": 0.02, "planted_reward_gain_ci_high": 0.2,
         "planted_reward_base": 0.0, "planted_reward_finetuned": 0.1}
    assert verdicts.planted_reward(m)[0] == PASSED
    assert verdicts.planted_reward({**m, "planted_reward_gain_ci_low": -0.02})[0] == FAILED
    assert verdicts.planted_reward({})[0] == NOT_RUN
    arms = {"shuffled_arms_reward_gain": [0.1, 0.2], "shuffled_arms_reward_gain_ci_low": [0.01, 0.05],
            "shuffled_arms_reward_gain_ci_high": [0.2, 0.3], "shuffled_arms_reward_lexicon_gain": [0.01, -0.02],
            "shuffled_arms_reward_learned": True}
    verdict, evidence = verdicts.shuffled_reward(arms)
    assert verdict == PASSED and "0.100 [0.010, 0.200]; 0.200 [0.050, 0.300]" in evidence and "0.010, -0.020" in evidence
    assert verdicts.shuffled_reward({**arms, "shuffled_arms_reward_learned": False})[0] == FAILED


def test_preference_finetune_needs_a_ci_above_chance_and_falls_back_to_finetune_json():
    verdict, evidence = verdicts.finetune_preference(pair_lfp(), None)
    assert verdict == PASSED and "60.0% [56.0%, 64.0%] on 1000 held-out pairs" in evidence
    assert verdicts.finetune_preference(pair_lfp(implicit_reward_acc_ci_low=0.49), None)[0] == FAILED
    f = {"implicit_reward_accuracy": 0.45, "implicit_reward_accuracy_ci_low": 0.36, "implicit_reward_accuracy_ci_high": 0.53,
         "eval_pairs": 128}
    verdict, evidence = verdicts.finetune_preference(None, f)
    assert verdict == FAILED and "128 held-out pairs" in evidence
    assert verdicts.finetune_preference(None, {"implicit_reward_accuracy": 0.6})[0] == NOT_RUN


def test_preference_finetune_reads_the_larger_held_out_evaluation():
    small = pair_lfp(n_pairs=120, implicit_reward_acc=0.55, implicit_reward_acc_ci_low=0.46, implicit_reward_acc_ci_high=0.64)
    large = {"implicit_reward_accuracy": 0.59, "implicit_reward_accuracy_ci_low": 0.53, "implicit_reward_accuracy_ci_high": 0.65,
             "eval_pairs": 256}
    verdict, evidence = verdicts.finetune_preference(small, large)
    assert verdict == PASSED and "256 held-out pairs (finetune.json; chance 50%)" in evidence
    assert "1000 held-out pairs (lfp.json; chance 50%)" in verdicts.finetune_preference(pair_lfp(), large)[1]


def test_planted_control_uses_the_flag_else_p_and_reads_the_control_run():
    assert verdicts.planted(lexicon_lfp(), None)[0] == PASSED
    assert verdicts.planted(lexicon_lfp(planted_detected=False), None)[0] == FAILED
    no_flag = {"planted_auc": 0.7, "planted_p": 0.2}
    assert verdicts.planted(no_flag, None)[0] == FAILED
    assert verdicts.planted(None, {"planted_auc": 0.7, "planted_p": 0.01})[0] == PASSED  # the control's own lfp.json
    assert verdicts.planted({}, None)[0] == NOT_RUN


def test_shuffled_control_passes_when_not_detected():
    verdict, evidence = verdicts.shuffled(lexicon_lfp(), None)
    assert verdict == PASSED and "covers 0" in evidence
    assert verdicts.shuffled(lexicon_lfp(shuffled_detected=True), None)[0] == FAILED
    no_flag = {"shuffled_learned_value_tau": 0.2, "shuffled_learned_value_tau_ci_low": 0.1, "shuffled_learned_value_tau_ci_high": 0.3}
    assert verdicts.shuffled(no_flag, None)[0] == FAILED  # CI clear of 0: the instrument is fooled
    control = {"learned_value_tau": 0.0, "learned_value_tau_ci_low": -0.04, "learned_value_tau_ci_high": 0.04, "detected": False}
    assert verdicts.shuffled(None, control)[0] == PASSED
    assert verdicts.shuffled(None, None)[0] == NOT_RUN


def test_probe_vs_base_needs_a_paired_ci_above_zero():
    assert verdicts.probe_vs_base_lexicon(lexicon_lfp())[0] == PASSED
    verdict, evidence = verdicts.probe_vs_base_lexicon(lexicon_lfp(probe_tau_word_heldout_diff_ci_low=-0.01))
    assert verdict == FAILED and "240 held-out words" in evidence
    assert verdicts.probe_vs_base_preference(pair_lfp())[0] == PASSED
    assert verdicts.probe_vs_base_preference(pair_lfp(pairwise_accuracy_diff_ci_low=-0.02))[0] == FAILED
    assert verdicts.probe_vs_base_preference(None) == (NOT_RUN, "no lfp.json")


def test_probe_vs_trivial_predictors():
    verdict, evidence = verdicts.probe_vs_trivial_lexicon(lexicon_lfp())
    assert verdict == PASSED and "identity 0.000, sign-only 0.510" in evidence
    assert verdicts.probe_vs_trivial_lexicon(lexicon_lfp(probe_tau_word_heldout_finetuned_ci_low=0.2))[0] == FAILED  # below sign-only
    no_ceilings = {k: v for k, v in lexicon_lfp().items() if not k.endswith("ceiling_tau")}
    assert verdicts.probe_vs_trivial_lexicon(no_ceilings)[0] == NOT_RUN
    assert verdicts.probe_vs_bow(pair_lfp())[0] == PASSED
    assert verdicts.probe_vs_bow(pair_lfp(pairwise_accuracy_finetuned_ci_low=0.5))[0] == FAILED


def test_difference_probe_must_beat_its_shuffled_null():
    assert verdicts.difference_vs_null(lexicon_lfp())[0] == PASSED
    overlapping = lexicon_lfp(shuffled_probe_tau_word_heldout_difference_ci_high=0.35)
    assert verdicts.difference_vs_null(overlapping)[0] == FAILED
    no_null = {k: v for k, v in lexicon_lfp().items() if not k.startswith("shuffled_probe_tau")}
    assert verdicts.difference_vs_null(no_null)[0] == NOT_RUN


def test_tables_7_and_6():
    assert verdicts.table7(validate())[0] == PASSED
    assert verdicts.table7(validate(t7_p=0.4))[0] == FAILED
    assert verdicts.table7(validate(t7_p=None, t7_reason="0 related features")) == (NA, "0 related features")
    assert verdicts.table7({})[0] == NOT_RUN and verdicts.table7(None)[0] == NOT_RUN
    assert verdicts.table6(validate())[0] == PASSED
    assert verdicts.table6(validate(t6_related_ci_high=0.02))[0] == FAILED  # CI covers 0
    assert verdicts.table6(validate(t6_related_vs_random_ci_high=0.01))[0] == FAILED  # no more than random features
    assert verdicts.table6(validate(t6_related_ci_high=None, ablation_reason="no related feature")) == (NA, "no related feature")
    assert verdicts.table6({})[0] == NOT_RUN


# ---------------------------------------------------------------------------- run folders


def test_collect_reads_run_folders_and_says_not_run_for_missing_files(tmp_path: Path):
    runs = tmp_path / "runs"
    write(runs / "tiny-vader", "finetune.json", {"reward_base": 0.1, "reward_finetuned": 0.2, "beats_base": True})
    write(runs / "tiny-vader", "lfp.json", lexicon_lfp())
    write(runs / "tiny-vader", "validate.json", validate())
    write(runs / "tiny-hh", "finetune.json", {"dpo_loss_base": 0.69, "dpo_loss_finetuned": 0.7})
    (runs / "tiny-hh" / "validate.json").write_text("{not json", encoding="utf-8")  # unreadable: not run, no crash
    found = verdicts.discover(runs, "tiny", {"vader": LEXICON, "hh": PREFERENCE, "toxic": PREFERENCE})
    assert found == [("tiny", "vader", LEXICON), ("tiny", "hh", PREFERENCE)]
    rows = verdicts.collect(runs, found)
    by = {(r.task, r.control): r.verdict for r in rows}
    assert [r.verdict for r in rows if r.task == "vader"] == [PASSED] * 8
    assert {v for (t, _), v in by.items() if t == "hh"} == {NOT_RUN}
    assert len([r for r in rows if r.task == "hh"]) == 5
    md = verdicts.markdown(rows)
    assert md.startswith("| task") and "**not run**" in md and "nan" not in md and "None" not in md


def test_collect_labels_runs_by_model_when_several(tmp_path: Path):
    rows = verdicts.collect(tmp_path, [("a", "hh", PREFERENCE), ("b", "hh", PREFERENCE)])
    assert {r.task for r in rows} == {"a-hh", "b-hh"} and all(r.verdict == NOT_RUN for r in rows)


def test_lexicon_controls_fall_back_to_the_control_runs(tmp_path: Path):
    write(tmp_path / "m-vader-planted", "lfp.json", {"planted_auc": 0.4, "planted_p": 0.7, "planted_detected": False})
    write(tmp_path / "m-vader-shuffled", "lfp.json", {"learned_value_tau": 0.0, "learned_value_tau_ci_low": -0.1,
                                                      "learned_value_tau_ci_high": 0.1, "shuffled_detected": False})
    rows = {r.control: r.verdict for r in verdicts.run_verdicts(tmp_path, "m", "vader", LEXICON)}
    assert rows["planted control detected"] == FAILED and rows["shuffled-reward control not detected"] == PASSED


def test_report_opens_with_the_verdict_table_in_markdown_and_html(in_tmp_project: Path):
    from test_report import fake_params, write_project

    write_project(in_tmp_project)
    params = fake_params()
    sections = build_sections(ReportInputs.load(params, report_kinds(params)))
    md = render_markdown(sections)
    assert md.startswith("# Learned Feedback Patterns — report\n\n")
    # only the table of contents comes before the verdicts
    assert "\n## " not in md[: md.index("## Verdicts of the controls")]
    assert md.index("## Verdicts of the controls") < md.index("## What this run shows")
    table = md[: md.index("## What this run shows")]
    assert "| vader  | fine-tuning learned its reward" in table and "**passed**" in table and "**not run**" in table
    html = render_html(sections)
    assert "<td><strong>passed</strong></td>" in html and "**" not in html


def test_a_readout_that_reads_no_planted_word_is_not_applicable_not_failed():
    """A neutral-only plant (SmolLM2's profile) has no probe word: the probe readouts read none of it."""
    from lfp.report.verdicts import readout_plant

    nan = float("nan")
    assert readout_plant({"readout_x_planted_paired_n": 0, "readout_x_planted_paired_auc": nan}, "x")[0] == NA
    assert readout_plant({"readout_x_planted_paired_n": 6, "readout_x_planted_paired_auc": 0.9, "readout_x_planted_paired_p": 0.001,
                          "readout_x_planted_paired_detected": True}, "x")[0] == PASSED


def test_preference_verdicts_read_the_split_seeds_where_measured():
    """A lucky reported split (80.6 % vs bag-of-words 47.2 %) must not carry the verdict: the mean and
    t-interval over the dialogue split seeds do, and the evidence says which was read."""
    splits = {"pair_split_seeds": list(range(10)),
              "pairwise_accuracy_finetuned_split_mean": 0.63, "pairwise_accuracy_finetuned_split_ci_low": 0.50,
              "pairwise_accuracy_finetuned_split_ci_high": 0.70, "pairwise_accuracy_bow_split_mean": 0.55,
              "pairwise_accuracy_bow_split_ci_low": 0.50, "pairwise_accuracy_bow_split_ci_high": 0.60,
              "pairwise_accuracy_diff_split_mean": 0.006, "pairwise_accuracy_diff_split_ci_low": -0.024,
              "pairwise_accuracy_diff_split_ci_high": 0.035}
    verdict, evidence = verdicts.probe_vs_bow(pair_lfp(**splits))
    assert verdict == FAILED and "63.0% [50.0%, 70.0%] vs bag-of-words 55.0%" in evidence and "mean over 10 dialogue splits" in evidence
    assert verdicts.probe_vs_bow(pair_lfp())[1].endswith("(one split)")
    verdict, evidence = verdicts.probe_vs_base_preference(pair_lfp(**splits))
    assert verdict == FAILED and "+0.006 [-0.024, +0.035] (mean over 10 dialogue splits)" in evidence
    partial = {k: v for k, v in splits.items() if not k.startswith("pairwise_accuracy_bow")}
    assert verdicts.probe_vs_bow(pair_lfp(**partial))[1].endswith("(one split)")  # every key over splits, or none
