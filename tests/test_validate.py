"""validate: feature frequency on a synthetic probe-inputs file, the ablation hook (changes the
output when, and only when, active features are zeroed), DPO margins and the stage end-to-end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lfp import ablation, io, paths
from lfp.errors import ArtifactError
from lfp.stages import validate
from test_explain import LAYERS, build_fake_run, project, shared_mlflow_uri, stage_mlflow_run  # noqa: F401 (fixtures)


def write_probe_inputs(root, task: str, codes: np.ndarray, predicted: np.ndarray, widths: list[int]) -> None:
    folder = root / paths.probe_data_dir("tiny", task)
    n = len(predicted)
    io.save_tensors(folder / "inputs.safetensors", {
        "codes": torch.tensor(codes, dtype=torch.float32), "predicted": torch.tensor(predicted, dtype=torch.float32),
        "target": torch.tensor(predicted, dtype=torch.float32), "is_test": torch.zeros(n, dtype=torch.uint8),
    })
    io.write_json(folder / "inputs.json", {"layers": LAYERS, "offsets": [0, widths[0]], "widths": widths})


def write_features(root, task: str, related: dict[int, list[int]], width: int) -> None:
    rows = [{"layer": L, "feature": f, "similarity": 0.5, "explanation": "x", "related": f in related.get(L, []),
             "backend": "offline", "top_tokens": [], "simulation_score": None} for L in LAYERS for f in range(width)]
    io.write_jsonl(root / paths.report_dir("tiny", task) / "features.jsonl", rows)


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
    tensors, index = validate.load_probe_inputs("tiny", "vader")
    cols = validate.columns(index, validate.related_features("tiny", "vader"), "features.jsonl")
    assert cols == [1, 4]
    out = validate.feature_frequency(tensors["codes"], tensors["predicted"], cols, 3.0)
    assert out["n_high_delta_inputs"] == 4 and out["n_inputs"] == 10
    assert out["freq_related"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["freq_all"] == pytest.approx((4 + 2) / (4 * 8))
    assert out["freq_ratio"] == pytest.approx(0.75 / (6 / 32))


def test_feature_frequency_with_no_high_inputs_reports_null():
    out = validate.feature_frequency(np.ones((5, 3)), np.zeros(5), [0], 3.0)
    assert out["n_high_delta_inputs"] == 0 and out["freq_related"] is None and out["freq_all"] is None


def test_feature_outside_probe_layers_is_an_artifact_error():
    index = {"layers": [0, 2], "offsets": [0, 4], "widths": [4, 4]}
    with pytest.raises(ArtifactError, match="layer 5"):
        validate.columns(index, {5: [0]}, "features.jsonl")
    with pytest.raises(ArtifactError, match="feature 9"):
        validate.columns(index, {2: [9]}, "features.jsonl")


# --------------------------------------------------------------------------------------------
# the ablation hook
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_sae(tiny_model_dir):
    from lfp.modeling import load_model
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

    from lfp.modeling import capture_mlp_outputs

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


def test_random_features_match_counts_and_exclude_related():
    rng = np.random.default_rng(0)
    out = ablation.random_features({0: [1, 2], 2: [5]}, {0: list(range(10)), 2: [5, 6, 7]}, rng)
    assert len(out[0]) == 2 and not set(out[0]) & {1, 2}
    assert len(out[2]) == 1 and out[2][0] in (6, 7)


# --------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------


def test_dpo_margin_formula_and_logprobs(tiny_model_dir):
    from lfp.modeling import load_model

    model, tok = load_model(tiny_model_dir)
    seq, first = ablation.encode_pair_side(tok, "Human: hi\n\nAssistant:", " Hello there friend.", 64)
    assert seq[first:] == tok(" Hello there friend.", add_special_tokens=False)["input_ids"]
    short, first_short = ablation.encode_pair_side(tok, "Human: a long long long prompt here", " Hello", 4)
    assert len(short) == 4 and first_short >= 1
    lp = ablation.response_logprobs(model, [(seq, first), (short, first_short)], 2, tok.pad_token_id)
    alone = ablation.response_logprobs(model, [(seq, first)], 1, tok.pad_token_id)
    assert lp[0] == pytest.approx(alone[0], abs=1e-4) and np.all(lp < 0)  # padding does not leak in
    m = ablation.dpo_margins(np.array([-1.0]), np.array([-3.0]), np.array([-2.0]), np.array([-2.0]), 0.1)
    assert m[0] == pytest.approx(0.2)


def test_sampling_is_seeded_identically(tiny_model_dir):
    from lfp.modeling import load_model

    model, tok = load_model(tiny_model_dir)
    prefixes = ablation.imdb_prefixes(["This movie was wonderful and great fun to watch"] * 4, tok, 3, 4, np.random.default_rng(0))
    assert len(prefixes) == 3 and all(len(p) == 4 for p in prefixes)
    a = ablation.sample_rewards(model, tok, prefixes, max_new_tokens=5, batch_size=2, seed=1)
    b = ablation.sample_rewards(model, tok, prefixes, max_new_tokens=5, batch_size=2, seed=1)
    assert a == b and len(a) == 3


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
    run = stage_mlflow_run(params, "validate")
    assert run.data.metrics["freq_all"] == pytest.approx(out["freq_all"])


def test_validate_stage_without_related_features_reports_not_applicable(project, tiny_model_dir):
    in_tmp_project, micro_params = project
    saes = build_fake_run(in_tmp_project, tiny_model_dir, "hh")
    _fake_probe_for(in_tmp_project, "hh", saes[LAYERS[0]].d_hidden)
    write_features(in_tmp_project, "hh", {}, 4)
    validate.run(micro_params, model="tiny", task="hh")
    out = io.read_json(paths.report_dir("tiny", "hh") / "validate.json")
    assert out["ablation_related"] is None and out["ablation_n"] == 0 and "no feature is labelled related" in out["ablation_reason"]
    assert out["freq_related"] is None and out["freq_all"] is not None
