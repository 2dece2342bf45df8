"""lfp.tasks.lexicon_rl.plant: the drawn plant (random, frequency-matched, with neutral words) and the
paired planted test on synthetic runs where the answer is known — no model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lfp.core.errors import DataError
from lfp.core.sections import Measure
from lfp.measure.controls import planted_paired
from lfp.tasks.lexicon_rl import plant as plant_mod
from lfp.tasks.lexicon_rl.reward import replanted_lexicon

LEX = {**{f"pos{i}": 1.0 + i / 10 for i in range(20)}, **{f"neg{i}": -1.0 - i / 10 for i in range(20)}}


def test_draw_is_seeded_disjoint_and_keeps_controls():
    neutral = [f"noun{i}" for i in range(10)]
    a = plant_mod.draw_plant([f"pos{i}" for i in range(12)], neutral, LEX, 4, 3, -2.0, seed=0)
    b = plant_mod.draw_plant([f"pos{i}" for i in range(12)], neutral, LEX, 4, 3, -2.0, seed=0)
    c = plant_mod.draw_plant([f"pos{i}" for i in range(12)], neutral, LEX, 4, 3, -2.0, seed=1)
    assert a == b and a.values != c.values
    assert len(a.lexicon_words) == 4 and len(a.neutral_words) == 3 and not (a.words & a.controls)
    assert len(a.controls) == (12 - 4) + (10 - 3)
    assert all(a.values[w] == -LEX[w] for w in a.lexicon_words) and all(a.values[w] == -2.0 for w in a.neutral_words)
    rec = a.record()
    assert rec["planted_draw"] == "random" and rec["planted_words"] == sorted(a.words) and rec["planted_pool_sizes"] == {"lexicon": 12, "neutral": 10}


def test_a_pool_too_small_to_leave_controls_is_a_data_error():
    with pytest.raises(DataError, match="3 held-out positive words to draw 2"):
        plant_mod.draw_plant(["pos1", "pos2", "pos3"], [], LEX, 2, 0, -2.0, 0)


def test_fixed_plant_flips_signs_and_compares_with_every_other_positive_word():
    p = plant_mod.fixed_plant(["pos1", "pos2"], LEX)
    assert p.values == {"pos1": -1.1, "pos2": -1.2} and not p.drawn and p.controls == {f"pos{i}" for i in range(20)} - {"pos1", "pos2"}


def test_neutral_pool_is_a_band_of_frequent_non_lexicon_words():
    counts = Counter({"the": 100, "movie": 90, "pos1": 80, "film": 70, "story": 60, "it's": 55, "acting": 50, "plot": 40, "scene": 30})
    assert plant_mod.neutral_pool(counts, LEX, 1, 4, exclude={"story"}) == ["film", "acting", "plot"]


def test_make_plant_draws_lexicon_words_from_the_probes_heldout_split_by_frequency():
    from lfp.tasks.lexicon_rl.word_probes import word_split

    probe_words = set(LEX)
    texts = [" ".join([w] * (i + 1)) for i, w in enumerate(sorted(LEX))] + ["alpha beta gamma delta " * 5, "epsilon zeta " * 3]
    cfg = Measure(plant_lexicon_words=2, plant_lexicon_pool=4, plant_neutral_words=1, plant_neutral_pool=4, plant_neutral_rank_min=0)
    p = plant_mod.make_plant(cfg, 0, LEX, probe_words, texts)
    words = np.array(sorted(probe_words), dtype=object)
    heldout = set(words[word_split(words, cfg.word_test_fraction, 0)].tolist())
    assert set(p.lexicon_words) <= heldout and len(p.pools["lexicon"]) == 4 and set(p.pools["lexicon"]) <= heldout
    assert set(p.pools["neutral"]) == {"alpha", "beta", "gamma", "delta"} and len(p.neutral_words) == 1
    assert plant_mod.make_plant(Measure(plant="fixed", planted_words=["pos1"]), 0, LEX, probe_words, texts).values == {"pos1": -1.1}


def test_replanted_lexicon_sets_and_adds_values():
    lex = replanted_lexicon({"good": -1.9, "window": -2.0})
    assert lex["good"] == -1.9 and lex["window"] == -2.0 and lex["bad"] < 0


def test_paired_test_with_drawn_controls_finds_a_plant_that_frequency_cannot_explain():
    """Planted words fall 1.0 more in the planted run than in the true-reward run; every word of the
    pool also moves by its frequency, which both runs share. Detected against the pool's controls; a
    second true-reward seed (nothing planted) is not."""
    rng = np.random.default_rng(0)
    pool = [f"w{i}" for i in range(24)]
    planted = set(pool[:8])
    freq = {w: rng.normal() for w in pool}
    main = {w: freq[w] + rng.normal(0, 0.1) for w in pool}
    seed1 = {w: freq[w] + rng.normal(0, 0.1) for w in pool}
    planted_run = {w: freq[w] + rng.normal(0, 0.1) - (1.0 if w in planted else 0.0) for w in pool}
    out = planted_paired(planted_run, main, {1: seed1}, planted, {}, n_perm=500, seed=0, controls=set(pool) - planted)
    assert out["planted_paired_auc"] > 0.95 and out["planted_paired_p"] < 0.01 and out["planted_paired_detected"]
    assert out["planted_paired_n"] == 8 and out["planted_paired_n_other"] == 16
    assert 0.2 < out["planted_paired_auc_seed_null"][0] < 0.8


def test_params_refuse_a_plant_without_controls(tmp_path):
    import yaml

    from lfp.core.errors import ConfigError
    from lfp.core.params_load import load_params

    d = yaml.safe_load(open("params.yaml", encoding="utf-8"))
    d["measure"]["plant_lexicon_pool"] = d["measure"]["plant_lexicon_words"] + 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(d), encoding="utf-8")
    with pytest.raises(ConfigError, match="'measure.plant_lexicon_pool' .* must exceed"):
        load_params(path)
