"""The crosscoder on a synthetic pair of 'models' whose activations differ by a planted direction."""

from __future__ import annotations

import numpy as np

from lfp.readouts.crosscoder import CrosscoderSettings, latent_scaling, nu_histogram, quality, relative_decoder_norm, train_crosscoder


def _pair(n: int = 6000, d: int = 16, n_shared: int = 12, seed: int = 0):
    """Both models: sparse sums of the same shared unit directions; the fine-tune adds a planted
    direction on 20 % of the tokens."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n_shared, d))
    shared /= np.linalg.norm(shared, axis=1, keepdims=True)
    planted = rng.standard_normal(d)
    planted /= np.linalg.norm(planted)
    on = rng.random((n, n_shared)) < 0.15
    coeff = on * rng.uniform(0.5, 1.5, (n, n_shared))
    base = coeff @ shared
    marked = rng.random(n) < 0.2
    ft = base + np.outer(marked * rng.uniform(1.0, 2.0, n), planted)
    return base.astype(np.float32), ft.astype(np.float32), planted, shared


def test_latent_scaling_separates_the_planted_latent_from_shared_ones() -> None:
    base, ft, planted, shared = _pair(n=4000)
    cc, scales = train_crosscoder(base, ft, CrosscoderSettings(n_latents=24, k=4, steps=800, batch_size=256, learning_rate=5e-3, seed=0))
    q = quality(cc, base, ft, scales)
    assert q["fvu_base"] < 0.3 and q["fvu_finetuned"] < 0.3 and q["l0"] <= 4
    dec_ft = cc.decoder.detach().numpy()[1]
    unit = dec_ft / np.maximum(np.linalg.norm(dec_ft, axis=1, keepdims=True), 1e-12)
    ls = latent_scaling(cc, base, ft, scales)
    j = int(np.argmax(unit @ planted))
    assert unit[j] @ planted > 0.9
    assert abs(ls["nu"][j]) < 0.2  # the base model lacks it
    rel = relative_decoder_norm(cc)
    assert rel[j] > 0.8
    shared_latents = [int(np.argmax(np.abs(unit @ s))) for s in shared]
    shared_nu = ls["nu"][[i for i in shared_latents if i != j and np.isfinite(ls["nu"][i])]]
    assert np.median(shared_nu) > 0.7
    hist = nu_histogram(ls["nu"])
    assert sum(hist.values()) == int(np.isfinite(ls["nu"]).sum()) and hist["-inf..0.2"] >= 1


def test_same_activations_give_no_finetune_only_latent() -> None:
    base, _, _, _ = _pair(n=2000)
    cc, scales = train_crosscoder(base, base.copy(), CrosscoderSettings(n_latents=16, k=4, steps=300, learning_rate=5e-3, seed=1))
    nu = latent_scaling(cc, base, base.copy(), scales)["nu"]
    assert np.nanmin(nu) > 0.8
