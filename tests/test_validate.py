"""validate: feature frequency on a synthetic probe-inputs file, the ablation hook (changes the
output when, and only when, active features are zeroed), DPO margins and the stage end-to-end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from lfp.tasks.lexicon_rl import ablation as vader_ablation
from lfp.tasks.preference_dpo import ablation as dpo_ablation
from lfp.validation import ablation, artifacts, mmcs, table7
from lfp.core import io, paths
from lfp.core.errors import ArtifactError
from lfp.stages import validate
from test_explain import LAYERS, build_fake_run, project, stage_mlflow_run  # noqa: F401 (fixtures)


def write_probe_inputs(root, task: str, codes: np.ndarray, predicted: np.ndarray, widths: list[int],
                       is_test: np.ndarray | None = None) -> None:
    """Probe inputs; by default every second row is held out."""
    folder = root / paths.probe_data_dir("tiny", task)
    n = len(predicted)
    is_test = np.arange(n) % 2 == 1 if is_test is None else np.asarray(is_test, dtype=bool)
    io.save_tensors(folder / "inputs.safetensors", {
        "codes": torch.tensor(codes, dtype=torch.float32), "predicted": torch.tensor(predicted, dtype=torch.float32),
        "target": torch.tensor(predicted, dtype=torch.float32), "is_test": torch.tensor(is_test, dtype=torch.uint8),
    })
    io.write_json(folder / "inputs.json", {"layers": LAYERS, "offsets": [0, widths[0]], "widths": widths})


def write_features(root, task: str, related: dict[int, list[int]], width: int) -> None:
    rows = [{"layer": L, "feature": f, "similarity": 0.5, "explanation": "x", "related": f in related.get(L, []),
             "backend": "offline", "top_tokens": [], "simulation_score": None} for L in LAYERS for f in range(width)]
    io.write_jsonl(root / paths.report_dir("tiny", task) / "features.jsonl", rows)
    io.write_json(root / paths.report_dir("tiny", task) / "explain.json",
                  {"explainer": "offline", "llm_model": "none (offline lexicon explainer)", "explanation_score_offline_mean": 0.7})


# --------------------------------------------------------------------------------------------
# feature frequency (Table 7)
# --------------------------------------------------------------------------------------------


def test_feature_frequency_on_synthetic_inputs(in_tmp_project):
    # 10 inputs, 2 layers x 4 features. Inputs 0-3 are high (> 3). Related: layer 0 f1, layer 2 f0.
    codes = np.zeros((10, 8), dtype=np.float32)
    codes[:4, 1] = 1.0  # layer 0 feature 1: active in all 4 high inputs
    codes[:2, 4] = 2.0  # layer 2 feature 0: active in 2 of 4
    codes[4:, :] = 5.0  # low inputs: everything active, must not count
    predicted = np.array([5, 4, 3.5, 10, 3.0, 1, 0, -2, 2, 2.9])
    write_probe_inputs(in_tmp_project, "vader", codes, predicted, [4, 4])
    write_features(in_tmp_project, "vader", {0: [1], 2: [0]}, 4)
    tensors, index = artifacts.load_probe_inputs("tiny", "vader")
    cols = artifacts.columns(index, artifacts.related_features("tiny", "vader"), "features.jsonl")
    assert cols == [1, 4]
    out = table7.feature_frequency(tensors["codes"], tensors["predicted"], cols, 3.0)
    assert out["n_high_delta_inputs"] == 4 and out["n_inputs"] == 10
    assert out["freq_related"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["freq_all"] == pytest.approx((4 + 2) / (4 * 8))
    assert out["freq_ratio"] == pytest.approx(0.75 / (6 / 32))


def test_feature_frequency_with_no_high_inputs_reports_null():
    out = table7.feature_frequency(np.ones((5, 3)), np.zeros(5), [0], 3.0)
    assert out["n_high_delta_inputs"] == 0 and out["freq_related"] is None and out["freq_all"] is None


def synthetic_table7(p_related: tuple[float, float], p_unrelated: tuple[float, float], seed: int = 0, n: int = 2000):
    """Held-out rows with predicted ~ N(0, 2); 10 related and 30 unrelated explained features that
    fire with probability p[0] on high rows (predicted > 1) and p[1] on low rows, 8 dead features.
    The training rows (not held out) carry a perfect association that must be ignored."""
    rng = np.random.default_rng(seed)
    predicted = rng.normal(0, 2, n)
    is_test = rng.random(n) < 0.5
    high = predicted > 1
    k_rel, k_unrel, k_dead = 10, 30, 8
    prob = np.empty((n, k_rel + k_unrel))
    for cols, (ph, pl) in ((slice(0, k_rel), p_related), (slice(k_rel, None), p_unrelated)):
        prob[:, cols] = np.where(high[:, None], ph, pl)
    codes = (rng.random(prob.shape) < prob).astype(np.float32)
    codes[~is_test, :k_rel] = high[~is_test, None]  # training rows: related fire exactly on high rows
    codes = np.concatenate([codes, np.zeros((n, k_dead), np.float32)], axis=1)
    explained = [{"layer": 0, "feature": j, "related": j < k_rel} for j in range(k_rel + k_unrel)]
    return table7.table7(codes, predicted, is_test, explained, list(range(k_rel + k_unrel)), threshold=1.0,
                           quantile=0.75, n_permutations=5000, seed=0)


def test_table7_base_rate_effect_does_not_pass():
    """Related features fire more often everywhere (0.7 vs 0.3), equally on high and low rows: the
    paper's statistic (frequency on high rows) sees a strong effect, the contrast sees none."""
    out, rows = synthetic_table7((0.7, 0.7), (0.3, 0.3))
    assert out["t7_related_high"] == pytest.approx(0.7, abs=0.03) and out["t7_unrelated_high"] == pytest.approx(0.3, abs=0.03)
    assert out["t7_related_low"] == pytest.approx(0.7, abs=0.03)  # training rows (related = high exactly) were ignored
    assert out["t7_p_high_only"] < 0.001  # the base rate alone "passes" the paper's comparison
    assert out["t7_p"] > 0.05 and out["t7_quantile_p"] > 0.05
    assert abs(out["t7_related_contrast"]) < 0.05
    # live baseline: the 8 dead features are excluded (mean over the 40 live ones)
    assert out["t7_n_live"] == 40 and out["t7_live_baseline_high"] == pytest.approx((10 * 0.7 + 30 * 0.3) / 40, abs=0.03)
    assert out["t7_n_test"] == out["t7_n_high"] + out["t7_n_low"] == out["t7_quantile_n_high"] + out["t7_quantile_n_low"]
    assert out["t7_quantile_n_high"] == pytest.approx(out["t7_n_test"] / 4, abs=2)
    assert len(rows) == 40 and rows[0]["related"] is True and set(rows[0]) >= {"threshold_contrast", "quantile_freq_high"}


def test_table7_real_association_passes():
    out, _ = synthetic_table7((0.7, 0.3), (0.5, 0.5))
    assert out["t7_related_contrast"] == pytest.approx(0.4, abs=0.05) and abs(out["t7_unrelated_contrast"]) < 0.05
    assert out["t7_p"] < 0.001 and out["t7_quantile_p"] < 0.001


def test_table7_without_high_rows_or_related_labels_gives_reasons():
    codes = np.ones((10, 4), np.float32)
    explained = [{"layer": 0, "feature": j, "related": False} for j in range(4)]
    out, rows = table7.table7(codes, np.zeros(10), np.ones(10, bool), explained, [0, 1, 2, 3], 3.0, 0.75, 100, 0)
    assert out["t7_n_high"] == 0 and out["t7_p"] is None and "0 high" in out["t7_reason"]
    assert out["t7_quantile_n_low"] == 0 and out["t7_quantile_p"] is None  # all predictions tie
    codes[:4] = 0  # active exactly on the rows with predicted > 3
    out, _ = table7.table7(codes, np.arange(10.0), np.ones(10, bool), explained, [0, 1, 2, 3], 3.0, 0.75, 100, 0)
    assert out["t7_unrelated_high"] == 1.0 and out["t7_unrelated_low"] == 0.0 and out["t7_related_high"] is None and out["t7_p"] is None
    assert "0 related" in out["t7_reason"]
    # unlabelled features (hh with the offline explainer): per-feature rows, but no side in the comparison
    unlabelled = [{**row, "related": None} for row in explained[:2]] + explained[2:]
    out, rows = table7.table7(codes, np.arange(10.0), np.ones(10, bool), unlabelled, [0, 1, 2, 3], 3.0, 0.75, 100, 0)
    assert out["t7_n_unlabelled"] == 2 and out["t7_n_unrelated"] == 2 and len(rows) == 4
    assert rows[0]["related"] is None and rows[0]["threshold_contrast"] == 1.0


def test_label_permutation_p_is_exact_on_a_small_case():
    # 4 features, 1 related: the observed statistic is the largest of 4 equally likely relabellings
    p = table7.label_permutation_p(np.array([1.0, 0.0, 0.0, 0.0]), np.array([True, False, False, False]), 20000,
                                     np.random.default_rng(0))
    assert p == pytest.approx(0.25, abs=0.01)


def test_mmcs_null_separates_shared_from_random_dictionaries():
    rng = torch.Generator().manual_seed(0)
    large = torch.randn(64, 16, generator=rng)
    shared = large[:32] + 0.01 * torch.randn(32, 16, generator=rng)  # the small dictionary is in the large one
    unrelated = torch.randn(32, 16, generator=rng)
    out = mmcs.mmcs_with_null({0: (shared, large), 1: (unrelated, large)}, {0: [0, 1], 1: [0, 1]}, 50, 0)
    assert out["layer0_mmcs"] > 0.99
    for layer in (0, 1):  # the null depends on shapes only, not on what the small dictionary shares
        assert out[f"layer{layer}_mmcs_random_dictionary"] == pytest.approx(out["layer1_mmcs"], abs=0.05)
    assert out["mmcs_random_dictionary_ci_low"] <= out["mmcs_random_dictionary"] <= out["mmcs_random_dictionary_ci_high"]
    assert out["mmcs_shared"] > out["mmcs_random_dictionary_ci_high"]
    assert out["mmcs_explained"] >= out["mmcs_shared"] - 0.2 and "mmcs_explained_random_dictionary_cov" in out


def test_feature_outside_probe_layers_is_an_artifact_error():
    index = {"layers": [0, 2], "offsets": [0, 4], "widths": [4, 4]}
    with pytest.raises(ArtifactError, match="layer 5"):
        artifacts.columns(index, {5: [0]}, "features.jsonl")
    with pytest.raises(ArtifactError, match="feature 9"):
        artifacts.columns(index, {2: [9]}, "features.jsonl")


# --------------------------------------------------------------------------------------------
# the ablation hook
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_sae(tiny_model_dir):
    from lfp.models.loading import load_model
    from lfp.sae import SparseAutoencoder

    model, tok = load_model(tiny_model_dir)
    sae = SparseAutoencoder(model.config.hidden_size, model.config.hidden_size, tied=True).eval()
    sae.reset_parameters(torch.Generator().manual_seed(0))
    ids = tok(["This movie was wonderful and great.", "The film was awful."], return_tensors="pt", padding=True)
    return model, sae, ids


def _logits(model, ids, saes=None, zeroed=None):
    with torch.no_grad(), ablation.sae_hooks(model, saes or {}, zeroed):
        return model(**ids).logits


def test_hook_changes_output_when_and_only_when_features_are_zeroed(model_and_sae):
    import copy

    from lfp.models.loading import capture_mlp_outputs

    model, sae, ids = model_and_sae
    layer = 1
    sae = copy.deepcopy(sae)
    with torch.no_grad(), capture_mlp_outputs(model, [layer]) as cap:
        model(**ids)
    with torch.no_grad():
        peak = sae.encode(cap[layer]).reshape(-1, sae.d_hidden).amax(0)
        active = int(peak.argmax())
        dead = int(peak.argmin()) if peak.min() <= 0 else (active + 1) % sae.d_hidden
        sae.encoder_bias[dead] = -1e4  # this feature can never fire
    assert peak[active] > 0

    clean = _logits(model, ids)
    recon = _logits(model, ids, {layer: sae}, {})
    assert not torch.allclose(recon, clean)  # the reconstruction hook really replaces the MLP output
    assert torch.equal(_logits(model, ids, {layer: sae}, {layer: []}), recon)  # nothing zeroed: same output
    assert not torch.allclose(_logits(model, ids, {layer: sae}, {layer: [active]}), recon)  # active zeroed: changes
    assert torch.equal(_logits(model, ids, {layer: sae}, {layer: [dead]}), recon)  # never-firing zeroed: no change
    assert torch.equal(_logits(model, ids), clean)  # hooks were removed
    assert torch.equal(_logits(model, ids, {layer: sae}, None), clean)  # the no_hook condition
    seqs = [row[m.bool()].tolist() for row, m in zip(ids["input_ids"], ids["attention_mask"])]
    kl = {z: ablation.mean_next_token_kl(model, {layer: sae}, zs, seqs, 2, 0) for z, zs in
          (("none", None), ("recon", {}), ("active", {layer: [active]}), ("dead", {layer: [dead]}))}
    assert kl["none"] == 0.0 and kl["recon"] > 0 and kl["active"] > 0 and kl["dead"] == pytest.approx(kl["recon"])


def test_condition_scores_equal_one_condition_at_a_time(model_and_sae):
    """The shared pass (unhooked logits once per batch, each condition once) gives exactly what
    scoring each condition on its own gives: per-sequence response log-probs and the KL check."""
    model, sae, _ = model_and_sae
    saes = {1: sae, 3: sae}
    conds = [("no_hook", None), ("recon", {}), ("some", {1: [0, 3, 5], 3: [2]}), ("other", {1: [7]})]
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, model.config.vocab_size, size=n).tolist() for n in (9, 4, 12, 7, 5)]
    starts = [3, 1, 6, 2, 4]
    logps, kls = ablation.condition_scores(model, saes, conds, seqs, 2, 0, response_starts=starts)

    def one_condition(zeroed):  # the plain definition, one sequence at a time
        lp, kl_sum, n = [], 0.0, 0
        for seq, first in zip(seqs, starts):
            ids = torch.tensor([seq])
            with torch.no_grad():
                ref = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
                with ablation.sae_hooks(model, saes, zeroed):
                    cur = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
            lp.append(float(cur[torch.arange(first - 1, len(seq) - 1), ids[0, first:]].sum()))
            kl_sum += float((ref.exp() * (ref - cur)).sum())
            n += len(seq)
        return np.asarray(lp), kl_sum / n

    assert set(logps) == {name for name, _ in conds} and set(kls) == {"recon", "some", "other"}
    for name, zeroed in conds:
        lp, kl = one_condition(zeroed)
        np.testing.assert_allclose(logps[name], lp, rtol=1e-4, atol=1e-4)
        if zeroed is not None:
            assert kls[name] == pytest.approx(kl, rel=1e-3, abs=1e-6) and kls[name] > 0
    assert not np.allclose(logps["some"], logps["no_hook"])  # the hooks acted
    no_kl, none = ablation.condition_scores(model, saes, conds, seqs, 2, 0, kl=False)
    assert none == {} and all(len(v) == 0 for v in no_kl.values())


def test_sae_replacement_zeroes_only_the_listed_codes(model_and_sae):
    _, sae, _ = model_and_sae
    x = torch.randn(3, 5, sae.d_in)
    seen = {}
    original = sae.decode

    def spy(codes):
        seen["codes"] = codes
        return original(codes)

    sae.decode = spy
    try:
        ablation.sae_replacement(sae, [0, 3])(x)
    finally:
        del sae.decode
    full = sae.encode(x)
    assert torch.all(seen["codes"][..., [0, 3]] == 0)
    keep = [i for i in range(full.shape[-1]) if i not in (0, 3)]
    assert torch.equal(seen["codes"][..., keep], full[..., keep])


def test_frequency_matched_draws_match_frequencies():
    rng = np.random.default_rng(0)
    freqs = {0: rng.uniform(0, 1, 64), 2: rng.uniform(0, 0.2, 64)}
    freqs[0][[3, 9]] = [0.9, 0.05]
    related = {0: [3, 9], 2: [1, 2, 40]}
    draws = [ablation.frequency_matched_features(related, freqs, np.random.default_rng([0, i]), pool=3) for i in range(5)]
    for d in draws:
        for L, feats in related.items():
            assert len(d[L]) == len(feats) and len(set(d[L])) == len(feats) and not set(d[L]) & set(feats)
            # each matched feature is among the 3 unrelated ones nearest to some related feature
            others = np.asarray([c for c in range(64) if c not in feats])
            nearest = {int(c) for f in feats for c in others[np.argsort(np.abs(freqs[L][others] - freqs[L][f]))[: 3 + len(feats)]]}
            assert set(d[L]) <= nearest
        matched = np.mean([freqs[L][f] for L in d for f in d[L]])
        wanted = np.mean([freqs[L][f] for L in related for f in related[L]])
        assert matched == pytest.approx(wanted, abs=0.03)
    assert len({tuple(d[0] + d[2]) for d in draws}) > 1  # draws differ
    # pool=1: the nearest feature exactly
    exact = ablation.frequency_matched_features({0: [0]}, {0: np.array([0.5, 0.1, 0.48, 0.9])}, np.random.default_rng(0), pool=1)
    assert exact == {0: [2]}


def test_paired_delta_ci_covers_the_true_delta():
    """Synthetic rewards: condition = reference + 0.3 + noise, paired per sample; the reference's
    own spread (sd 2) is far larger than the effect, which pairing removes."""
    covered, excludes_zero = 0, 0
    for rep in range(100):
        rng = np.random.default_rng(rep)
        ref = rng.normal(0, 2, 200)
        cond = ref + 0.3 + rng.normal(0, 0.5, 200)
        delta, lo, hi = ablation.paired_delta(cond, ref, 500, seed=rep)
        assert lo <= delta <= hi
        covered += lo <= 0.3 <= hi
        excludes_zero += lo > 0
    assert 88 <= covered <= 100 and excludes_zero == 100
    delta, lo, hi = ablation.paired_delta(np.ones(5), np.ones(5), 100, seed=0)
    assert delta == lo == hi == 0.0


# --------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------


def test_dpo_margin_formula_and_logprobs(tiny_model_dir):
    from lfp.models.loading import load_model

    model, tok = load_model(tiny_model_dir)
    seq, first = dpo_ablation.encode_pair_side(tok, "Human: hi\n\nAssistant:", " Hello there friend.", 64)
    assert seq[first:] == tok(" Hello there friend.", add_special_tokens=False)["input_ids"]
    short, first_short = dpo_ablation.encode_pair_side(tok, "Human: a long long long prompt here", " Hello", 4)
    assert len(short) == 4 and first_short >= 1
    lp = dpo_ablation.response_logprobs(model, [(seq, first), (short, first_short)], 2, tok.pad_token_id)
    alone = dpo_ablation.response_logprobs(model, [(seq, first)], 1, tok.pad_token_id)
    assert lp[0] == pytest.approx(alone[0], abs=1e-4) and np.all(lp < 0)  # padding does not leak in
    m = dpo_ablation.dpo_margins(np.array([-1.0]), np.array([-3.0]), np.array([-2.0]), np.array([-2.0]), 0.1)
    assert m[0] == pytest.approx(0.2)


def test_sampling_is_seeded_identically(tiny_model_dir):
    from lfp.models.loading import load_model

    model, tok = load_model(tiny_model_dir)
    prefixes = vader_ablation.imdb_prefixes(["This movie was wonderful and great fun to watch"] * 4, tok, 3, 4, np.random.default_rng(0))
    assert len(prefixes) == 3 and all(len(p) == 4 for p in prefixes)
    a = vader_ablation.sample_rewards(model, tok, prefixes, max_new_tokens=5, batch_size=2, seed=1)
    b = vader_ablation.sample_rewards(model, tok, prefixes, max_new_tokens=5, batch_size=2, seed=1)
    assert np.array_equal(a.completion, b.completion) and np.array_equal(a.full, b.full) and len(a.full) == 3
    prefix = vader_ablation.prefix_rewards(tok, prefixes)
    from lfp.tasks.lexicon_rl.reward import vader_reward

    assert prefix.tolist() == vader_reward(tok.batch_decode(prefixes, skip_special_tokens=True))


# --------------------------------------------------------------------------------------------
# stage end-to-end
# --------------------------------------------------------------------------------------------


def _fake_probe_for(root, task: str, width: int, n: int = 30) -> None:
    rng = np.random.default_rng(0)
    codes = np.maximum(rng.normal(size=(n, 2 * width)), 0).astype(np.float32)
    write_probe_inputs(root, task, codes, rng.normal(3.0, 2.0, size=n), [width, width])


@pytest.mark.parametrize("task", ["vader", "toxic"])
def test_validate_stage(task, project, tiny_model_dir):
    in_tmp_project, micro_params = project
    saes = build_fake_run(in_tmp_project, tiny_model_dir, task)
    width = saes[LAYERS[0]].d_hidden
    _fake_probe_for(in_tmp_project, task, width)
    write_features(in_tmp_project, task, {0: [0, 1], 2: [3]}, 4)
    params = dataclasses.replace(micro_params, validate=dataclasses.replace(micro_params.validate, n_completions=4, max_pairs=4))
    validate.run(params, model="tiny", task=task)
    out = io.read_json(paths.report_dir("tiny", task) / "validate.json")
    assert out["n_related_features"] == 3 and out["n_high_delta_inputs"] > 0
    assert out["explainer"] == "offline" and out["llm_model"].startswith("none") and out["explanation_score_offline_mean"] == 0.7
    assert 0 <= out["freq_related"] <= 1 and 0 <= out["freq_all"] <= 1
    assert out["ablation_metric"] == ("vader_reward" if task == "vader" else "dpo_implicit_reward_margin")
    assert out["ablation_n"] == 4 and out["ablation_reason"] is None
    for key in ("ablation_no_hook", "ablation_reconstruction", "ablation_related", "ablation_random"):
        assert isinstance(out[key], float)
    assert len(out["ablation_random_draws"]) == params.validate.random_controls
    assert out["ablation_kl_reconstruction"] > 0 and out["ablation_kl_related"] > 0 and out["ablation_kl_random"] > 0
    if task == "toxic":  # the fine-tuned model is a copy of the base: the unhooked margin is exactly 0
        assert out["ablation_no_hook"] == pytest.approx(0.0, abs=1e-5)
        assert out["ablation_related"] != pytest.approx(out["ablation_reconstruction"])
    # Table 6 that can fail: paired deltas with CIs, frequency-matched draws, per-sample file
    assert out["ablation_random_control"] == "frequency_matched" and out["t6_n"] == 4
    for c in ("no_hook", "related", "random", "related_vs_random"):
        assert out[f"t6_{c}_ci_low"] <= out[f"t6_{c}_delta"] <= out[f"t6_{c}_ci_high"]
    assert out["t6_related_delta"] == pytest.approx(out["t6_related"] - out["t6_reconstruction"])
    assert len(out["t6_random_draw_deltas"]) == params.validate.random_controls
    assert 0 <= out["t6_related_token_freq"] <= 1 and 0 <= out["t6_random_token_freq"] <= 1
    samples = pd.read_csv(paths.table6_samples_file("tiny", task))
    assert len(samples) == 4 and samples["related"].mean() == pytest.approx(out["t6_related"], abs=1e-4)
    if task == "vader":
        assert out["t6_metric"] == "vader_reward_of_completion" and out["t6_prefix_reward"] is not None
        assert samples["related_full"].mean() == pytest.approx(out["ablation_related"], abs=1e-4)  # paper method: prefix + completion
    else:
        assert out["t6_prefix_reward"] is None and out["t6_metric"] == "dpo_implicit_reward_margin"
    # Table 7 on held-out rows (every second row of _fake_probe_for), and the MMCS null
    assert out["t7_n_test"] == 15 and out["t7_n_related"] == 3 and out["t7_n_unrelated"] == 2 * 4 - 3
    assert out["t7_quantile_n_high"] + out["t7_quantile_n_low"] == 15 and out["t7_quantile_p"] is not None
    assert len(io.read_jsonl(paths.table7_features_file("tiny", task))) == 8
    assert 0 < out["mmcs_random_dictionary"] < 1 and out["mmcs_shared"] is not None
    run = stage_mlflow_run(params, "validate")
    assert run.data.metrics["freq_all"] == pytest.approx(out["freq_all"])
    assert run.data.metrics["t6_related_delta"] == pytest.approx(out["t6_related_delta"])


def test_validate_stage_without_related_features_reports_not_applicable(project, tiny_model_dir):
    in_tmp_project, micro_params = project
    saes = build_fake_run(in_tmp_project, tiny_model_dir, "hh")
    _fake_probe_for(in_tmp_project, "hh", saes[LAYERS[0]].d_hidden)
    write_features(in_tmp_project, "hh", {}, 4)
    validate.run(micro_params, model="tiny", task="hh")
    out = io.read_json(paths.report_dir("tiny", "hh") / "validate.json")
    assert out["ablation_related"] is None and out["ablation_n"] == 0 and "no feature is labelled related" in out["ablation_reason"]
    assert out["freq_related"] is None and out["freq_all"] is not None
    assert out["t6_related_delta"] is None and out["t7_p"] is None and out["t7_n_unrelated"] == 8
    assert list(pd.read_csv(paths.table6_samples_file("tiny", "hh")).columns) == ["sample", "reconstruction", "related"]


def test_paired_delta_over_draws_includes_the_spread_between_draws():
    """Three random draws, one of which has a large effect: the CI over samples *and* draws must be
    wider than the one that treats the draws' per-sample mean as fixed."""
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 500)
    draws = np.stack([ref + 0.0, ref - 0.01, ref - 0.3]) + rng.normal(0, 0.1, (3, 500))
    d2, lo2, hi2 = ablation.paired_delta(draws, ref, 1000, seed=0)
    d1, lo1, hi1 = ablation.paired_delta(draws.mean(axis=0), ref, 1000, seed=0)
    assert d2 == pytest.approx(d1) == pytest.approx(-0.103, abs=0.02)
    assert hi2 - lo2 > 5 * (hi1 - lo1) and lo2 <= -0.29 and hi2 >= -0.01
    d, lo, hi = ablation.paired_delta(ref + 0.5, draws, 1000, seed=0)  # related − random: draws on the other side
    assert d == pytest.approx(0.5 + 0.103, abs=0.02) and lo < d < hi
