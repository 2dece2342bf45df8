"""report: Tables 6 and 7 "that can fail" in words — direction, CI and verdict from validate.json's
t6_* / t7_* keys, beside the paper-method sentence (synthetic metrics, no model)."""

from __future__ import annotations

from lfp.report import sentences
from lfp.report.inputs import paper_results

PAPER = paper_results()


def validate(**over) -> dict:
    v = {"ablation_metric": "vader_reward", "ablation_n": 1000, "ablation_no_hook": 0.304, "ablation_reconstruction": 0.298,
         "ablation_related": 0.317, "ablation_random": 0.297, "ablation_random_draws": [0.298, 0.296, 0.298], "ablation_reason": None,
         "delta_threshold": 3.0, "freq_all": 0.404, "freq_related": 0.684, "n_high_delta_inputs": 697, "n_inputs": 4000,
         "n_related_features": 14, "predicted_kind": "rescaled_delta",
         "t7_n_test": 800, "t7_n_related": 14, "t7_n_unrelated": 36, "t7_n_live": 300, "t7_quantile": 0.75,
         "t7_p": 0.41, "t7_p_high_only": 0.001, "t7_related_contrast": 0.02, "t7_unrelated_contrast": 0.01, "t7_n_high": 136, "t7_n_low": 664,
         "t7_live_baseline_high": 0.40, "t7_live_baseline_low": 0.41,
         "t7_quantile_p": 0.30, "t7_quantile_related_contrast": 0.03, "t7_quantile_unrelated_contrast": 0.0,
         "t7_quantile_n_high": 200, "t7_quantile_n_low": 600,
         "t6_metric": "vader_reward_of_completion", "t6_n": 1000, "t6_prefix_reward": 0.17,
         "t6_related_delta": 0.019, "t6_related_ci_low": 0.003, "t6_related_ci_high": 0.035,
         "t6_random_delta": -0.001, "t6_random_ci_low": -0.01, "t6_random_ci_high": 0.008, "t6_random_draw_deltas": [0.0, -0.001, -0.002],
         "t6_related_vs_random_delta": 0.02, "t6_related_vs_random_ci_low": 0.004, "t6_related_vs_random_ci_high": 0.036,
         "t6_related_token_freq": 0.30, "t6_random_token_freq": 0.29}
    v.update(over)
    return v


def test_table7_verdict_is_the_heldout_contrast_and_names_the_base_rate():
    s = sentences.frequency_sentence(validate(), True, PAPER)
    assert s.startswith("On 800 held-out rows (14 related vs 36 unrelated explained features), related features are not more "
                        "frequent on high-feedback held-out rows than unrelated ones, p = 0.410")
    assert "the paper's comparison) gives p = 0.001: a base-rate difference" in s
    assert "at the top 25.0% of predictions: p = 0.300" in s
    assert "Paper method (all probe rows, all features): the related features were active in 68.4%" in s
    s = sentences.frequency_sentence(validate(t7_p=0.004, t7_related_contrast=0.2), True, PAPER)
    assert "related features are more frequent on high-feedback held-out rows than unrelated ones, p = 0.004" in s
    assert "base-rate" not in s


def test_table7_without_comparison_gives_both_reasons():
    v = validate(t7_p=None, t7_quantile_p=None, t7_reason="0 high and 200 low held-out rows: no contrast",
                 t7_quantile_reason="0 related and 50 unrelated labelled features: no comparison", freq_related=None, freq_all=None)
    s = sentences.frequency_sentence(v, False, PAPER)
    assert s.startswith("not computed:") and "no contrast; 0 related and 50 unrelated" in s


def test_table6_direction_ci_and_paper_in_words():
    s = sentences.ablation_sentence(validate(), True, PAPER)
    assert s.startswith("Zero-ablating the related features raised the completion reward by 0.019 (95% CI [0.003, 0.035]), unlike the paper;")
    assert "(3 draws, active on 29.0% of tokens vs 30.0% for the related ones) changed it by -0.001" in s and "no detectable change" in s
    assert "so zeroing the related features raised it more than zeroing random ones of the same frequency" in s
    assert "the prefix's own reward (0.170, the same in every condition) is left out" in s
    assert "Paper method (reward of prefix + completion): zeroing the 14 related features raised" in s
    s = sentences.ablation_sentence(validate(t6_related_delta=-0.012, t6_related_ci_low=-0.02, t6_related_ci_high=-0.004,
                                          t6_related_vs_random_ci_low=-0.01), True, PAPER)
    assert "lowered the completion reward by 0.012 (95% CI of the change [-0.020, -0.004]), as in the paper" in s
    assert "the related features matter no more than random ones of the same frequency" in s
    s = sentences.ablation_sentence(validate(t6_related_ci_low=-0.001), True, PAPER)
    assert "which includes 0: no detectable change), unlike the paper's drop" in s


def test_table6_dpo_margin_has_no_paper_number():
    s = sentences.ablation_sentence(validate(ablation_metric="dpo_implicit_reward_margin", t6_metric="dpo_implicit_reward_margin",
                                          t6_prefix_reward=None), False, PAPER)
    assert s.startswith("Zero-ablating the related features raised the DPO implicit reward margin by 0.019")
    assert "(no paper number for this task)" in s and "prefix" not in s.split("Paper method")[0]
