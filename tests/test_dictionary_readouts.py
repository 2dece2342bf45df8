"""The dictionaries behind the readouts, on synthetic activations where the answer is known: the
crosscoder probe reads a planted direction and nothing from a copy of the base, the random-direction
dictionary keeps a trained SAE's width and sparsity and scores at its expected level, the seed
reference of the SAE matching, and the crosscoder's file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lfp.readouts.crosscoder import CrosscoderSettings, crosscoder_codes, load_crosscoder, save_crosscoder, train_crosscoder
from lfp.readouts.difference_probe import DifferenceProbe
from lfp.readouts.random_dictionary import Identity, random_like
from lfp.tasks.lexicon_rl.measure_dictionaries import crosscoder_difference
from lfp.tasks.lexicon_rl.word_probes import heldout_probe, word_split
from test_crosscoder import _pair


def _words(n_words: int = 60, repeats: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(n_words)], dtype=object)
    value = {w: float(v) for w, v in zip(vocab, rng.uniform(-3, 3, n_words))}
    words = np.repeat(vocab, repeats)
    return words, value, np.array([value[w] for w in words])


def _acts(n: int, d: int, seed: int) -> np.ndarray:
    """Sparse sums of 3d fixed unit directions (the 'model's' features), plus a little noise."""
    rng = np.random.default_rng(seed)
    dirs = np.random.default_rng(99).standard_normal((3 * d, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    coeff = (rng.random((n, 3 * d)) < 0.1) * rng.uniform(0.5, 1.5, (n, 3 * d))
    return (coeff @ dirs + 0.05 * rng.standard_normal((n, d))).astype(np.float32)


def test_crosscoder_file_round_trip(tmp_path) -> None:
    base, ft, _, _ = _pair(n=1500)
    cc, scales = train_crosscoder(base, ft, CrosscoderSettings(n_latents=24, k=4, steps=100, learning_rate=5e-3, seed=0))
    nu = np.linspace(-0.5, 1.5, 24)
    path = tmp_path / "crosscoder-layer3.safetensors"
    save_crosscoder(path, cc, scales, nu, layer=3)
    again, scales2, nu2 = load_crosscoder(path)
    assert again.k == cc.k and np.array_equal(scales2, scales) and np.array_equal(nu2, nu)
    assert np.array_equal(crosscoder_codes(again, base, ft, scales2), crosscoder_codes(cc, base, ft, scales))
    from lfp.core import io
    from lfp.core.errors import ArtifactError

    io.save_tensors(tmp_path / "other.safetensors", {"decoder": torch.zeros(2, 3, 4)})
    with pytest.raises(ArtifactError, match="not an lfp crosscoder"):
        load_crosscoder(tmp_path / "other.safetensors")


def test_crosscoder_probe_reads_a_planted_direction_and_nothing_from_the_base() -> None:
    """Fine-tuned rows = base rows + value(word) · a planted direction: the crosscoder (trained on the
    two models' rows) codes the difference, the word-held-out probe on it ranks held-out words by
    value; a copy of the base model gives features exactly 0, and a run whose shift follows permuted
    values reads ~nothing against the true values."""
    words, value, values = _words()
    d = 16
    base = _acts(len(words), d, seed=1)
    planted = np.random.default_rng(5).standard_normal(d)
    planted /= np.linalg.norm(planted)
    ft = base + np.outer(values / 3.0, planted).astype(np.float32)
    cc, scales = train_crosscoder(np.concatenate([base, _acts(4000, d, 2)]), np.concatenate([ft, _acts(4000, d, 2)]),
                                  CrosscoderSettings(n_latents=4 * d, k=8, steps=1500, learning_rate=5e-3, seed=0))
    feats = crosscoder_difference([(cc, scales)], base, ft)
    assert np.all(crosscoder_difference([(cc, scales)], base, base.copy()) == 0)
    is_test = word_split(words, 0.3, 0)
    probe = DifferenceProbe(feats, values, words, is_test, [0], [4 * d], 1.0, base, name="crosscoder_probe")
    assert probe.name == "crosscoder_probe"
    read = probe.from_difference(feats)
    test_words = sorted(read)
    from scipy.stats import kendalltau

    assert kendalltau([read[w] for w in test_words], [value[w] for w in test_words]).statistic > 0.6
    perm = dict(zip(value, np.random.default_rng(3).permutation(list(value.values()))))
    shuffled = base + np.outer([perm[w] / 3.0 for w in words], planted).astype(np.float32)
    read_null = probe.from_difference(crosscoder_difference([(cc, scales)], base, shuffled))
    assert abs(kendalltau([read_null[w] for w in test_words], [value[w] for w in test_words]).statistic) < 0.35


def test_random_dictionary_keeps_width_and_sparsity_and_scores_at_its_expected_level() -> None:
    """Random frozen directions with a trained SAE's width and L0: a linear feedback direction in the
    activations stays readable through them (a ridge probe on many random ReLU features recovers a
    linear signal), below what the raw activations give; activations without the signal give ~0."""
    from lfp.sae.model import SparseAutoencoder

    d = 16
    sae = SparseAutoencoder(d, 4 * d, architecture="topk", k=6)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sample = _acts(3000, d, seed=4)
    rand = random_like(sae, sample, seed=0)
    assert rand.d_hidden == sae.d_hidden
    trained_l0 = float((sae.encode(torch.from_numpy(sample)) > 0).sum(dim=1).float().mean())
    assert rand.k == int(np.clip(round(trained_l0), 1, sae.d_hidden))
    codes = rand.encode(torch.from_numpy(sample))
    assert float((codes > 0).sum(dim=1).float().mean()) <= rand.k
    assert torch.equal(rand.encode(torch.from_numpy(sample)), codes)  # frozen: the same codes every call
    assert torch.equal(Identity(d).encode(torch.from_numpy(sample)), torch.from_numpy(sample))

    words, value, values = _words(n_words=300, repeats=4, seed=2)  # 90 held-out words: τ of noise has sd ~0.07
    direction = np.random.default_rng(6).standard_normal(d)
    direction /= np.linalg.norm(direction)
    noise = _acts(len(words), d, seed=7)
    is_test = word_split(words, 0.3, 0)

    def tau(acts: np.ndarray, dictionary) -> float:
        x = dictionary.encode(torch.from_numpy(acts.astype(np.float32))).double().numpy()
        return heldout_probe(x, values, words, values, is_test, [0], [x.shape[1]], 1.0).scores.tau

    with_signal = noise + np.outer(values / 3.0, direction).astype(np.float32)
    wide_sae = SparseAutoencoder(d, 16 * d, architecture="topk", k=6)
    wide_sae.reset_parameters(torch.Generator().manual_seed(1))
    wide = random_like(wide_sae, sample, seed=1)
    t_random, t_raw = tau(with_signal, wide), tau(with_signal, Identity(d))
    assert 0.3 < t_random <= t_raw + 0.05
    assert abs(tau(noise, wide)) < 0.25


def test_shared_fraction_of_the_sae_matching() -> None:
    from lfp.sae import dictionary_matching
    from lfp.sae.matching import shared_fraction

    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 64, generator=g)
    assert shared_fraction(dictionary_matching(a, a.clone()), a, a.clone()) == 1.0
    b = torch.randn(64, 64, generator=g)
    assert shared_fraction(dictionary_matching(a, b), a, b) < 0.05


def test_specific_latents_are_those_with_nu_near_zero_nearest_first(tmp_path, monkeypatch) -> None:
    from lfp.readouts import crosscoder as cc_mod
    from lfp.readouts.crosscoder import specific
    from lfp.validation import crosscoder_latents

    nu = np.array([np.nan, -14.0, 0.15, -0.05, 0.5, 1.0, 0.01, -0.3])
    assert specific(nu, 0.2).tolist() == [False, False, True, True, False, False, True, False]
    monkeypatch.setattr(cc_mod, "CROSSCODER_DIR", tmp_path)
    base, ft, _, _ = _pair(n=500)
    cc, scales = train_crosscoder(base, ft, CrosscoderSettings(n_latents=8, k=2, steps=5, seed=0))
    for layer, values in ((1, nu), (2, np.array([0.12, 0.9, -0.08, 2.0, np.nan, 0.3, 0.7, 0.19]))):
        path = crosscoder_latents.crosscoder_path("m", "t", layer)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_crosscoder(path, cc, scales, values, layer)
    chosen, crosscoders, n_below = crosscoder_latents.specific_latents("m", "t", [1, 2], cut=0.2, limit=4)
    assert n_below == 6 and set(crosscoders) == {1, 2}
    picked = sorted((abs(v), layer, j) for layer, rows in chosen.items() for j, v in rows)
    assert [(layer, j) for _, layer, j in picked] == [(1, 6), (1, 3), (2, 2), (2, 0)]  # |ν| 0.01, 0.05, 0.08, 0.12


def test_crosscoder_latents_are_coded_from_both_models_activations_of_each_token(tiny_model_dir) -> None:
    """The corpus encoding runs base and fine-tuned model on the same batch and codes each token's
    pair: equal to the crosscoder's codes of the two models' captured MLP outputs."""
    import copy

    from conftest import SAMPLE_TEXTS
    from lfp.models.loading import capture_mlp_outputs, load_model
    from lfp.validation import crosscoder_latents

    base, tok = load_model(tiny_model_dir)
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    d = base.config.hidden_size
    rng = np.random.default_rng(0)
    cc, scales = train_crosscoder(rng.standard_normal((300, d)).astype(np.float32), rng.standard_normal((300, d)).astype(np.float32),
                                  CrosscoderSettings(n_latents=2 * d, k=4, steps=5, seed=0))
    chosen = {1: [(3, 0.0), (7, 0.1)], 2: []}
    texts = SAMPLE_TEXTS[:3]
    encoded = crosscoder_latents.encode(base, ft, tok, {1: (cc, scales)}, chosen, texts, 32, 2, torch.device("cpu"))
    assert len(encoded) == 3 and set(encoded[0].codes) == {1}
    enc = tok(texts[0], return_tensors="pt", truncation=True, max_length=32)
    acts = []
    for model in (base, ft):
        with torch.no_grad(), capture_mlp_outputs(model, [1]) as captured:
            model(**enc)
        acts.append(captured[1][0].float().numpy())
    expected = crosscoder_codes(cc, acts[0], acts[1], scales)[:, [3, 7]]
    np.testing.assert_allclose(encoded[0].codes[1], expected, rtol=1e-5, atol=1e-6)


def test_dictionary_readouts_report_tau_over_word_splits(micro_params) -> None:
    """Each dictionary probe is refitted over the measure's word splits: one τ per split seed, their
    mean and t-interval, under the readout's name (the report's 'τ over word splits' column)."""
    from types import SimpleNamespace

    from lfp.tasks.lexicon_rl.measure_dictionaries import split_seed_keys

    words, value, values = _words()
    rng = np.random.default_rng(0)
    signal = np.outer(values, rng.standard_normal(8)) + 0.3 * rng.standard_normal((len(words), 8))
    noise = rng.standard_normal((len(words), 8))
    probes = SimpleNamespace(fitted={"good_probe": (signal, [4, 4]), "blind_probe": (noise, [8])})
    inputs = SimpleNamespace(words=words, values=values, sources={"difference": (signal, values)}, always_test=frozenset())
    out = split_seed_keys(probes, inputs, micro_params)
    n_splits = len({micro_params.seed, *micro_params.measure.seeds})
    assert len(out["readout_good_probe_tau_split_seeds"]) == n_splits >= 2
    assert out["readout_good_probe_tau_split_seed_mean"] > 0.6 > abs(out["readout_blind_probe_tau_split_seed_mean"])
    assert out["readout_good_probe_tau_split_seed_ci_low"] <= out["readout_good_probe_tau_split_seed_mean"]
