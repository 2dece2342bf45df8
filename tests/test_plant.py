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
    with pytest.raises(DataError, match="3 positive probe words written often enough to draw 2"):
        plant_mod.draw_plant(["pos1", "pos2", "pos3"], [], LEX, 2, 0, -2.0, 0)


def test_a_part_not_drawn_has_no_controls_and_holds_nothing_out():
    p = plant_mod.draw_plant([f"pos{i}" for i in range(6)], [f"noun{i}" for i in range(8)], LEX, 0, 3, -2.0, 0)
    assert not p.lexicon_words and p.controls <= {f"noun{i}" for i in range(8)} and len(p.controls) == 5 and p.held_out == frozenset()


def test_fixed_plant_flips_signs_and_compares_with_every_other_positive_word():
    p = plant_mod.fixed_plant(["pos1", "pos2"], LEX)
    assert p.values == {"pos1": -1.1, "pos2": -1.2} and not p.drawn and p.controls == {f"pos{i}" for i in range(20)} - {"pos1", "pos2"}


def test_neutral_pool_is_a_band_of_frequent_non_lexicon_words():
    counts = Counter({"the": 100, "movie": 90, "pos1": 80, "film": 70, "story": 60, "it's": 55, "acting": 50, "plot": 40, "scene": 30})
    assert plant_mod.neutral_pool(counts, LEX, 1, 4, exclude={"story"}) == ["film", "acting", "plot"]


def test_make_plant_draws_among_the_words_the_policy_writes():
    """Pools are ranked by the base policy's writes scaled to training; a word met fewer than
    plant_min_writes times is not a candidate, however frequent in the reviews; the lexicon pool is
    what every probe split holds out."""
    probe_words = set(LEX)
    writes = Counter({"pos1": 9, "pos2": 8, "pos3": 7, "pos4": 6, "pos5": 1, "alpha": 9, "beta": 8, "gamma": 7, "delta": 6, "eps": 1})
    reviews = [" ".join(["pos9"] * 50 + ["zeta"] * 50), "pos1 pos2 alpha"]
    cfg = Measure(plant_lexicon_words=2, plant_lexicon_pool=4, plant_neutral_words=1, plant_neutral_pool=4, plant_neutral_rank_min=0,
                  plant_min_writes=10.0)
    p = plant_mod.make_plant(cfg, 0, LEX, probe_words, writes, 2.0, reviews)  # pos5 / eps: met 2 times; pos9 / zeta: never written
    assert p.pools == {"lexicon": ["pos1", "pos2", "pos3", "pos4"], "neutral": ["alpha", "beta", "gamma", "delta"]}
    assert set(p.lexicon_words) <= set(p.pools["lexicon"]) and len(p.neutral_words) == 1
    assert p.held_out == frozenset(p.pools["lexicon"])
    with pytest.raises(DataError, match="plant_min_writes"):
        plant_mod.make_plant(cfg, 0, LEX, probe_words, writes, 1.0, reviews)  # every word met < 10 times
    loose = plant_mod.make_plant(Measure(plant_lexicon_words=1, plant_lexicon_pool=3, plant_neutral_words=0, plant_min_writes=0.0),
                                 0, LEX, probe_words, Counter(), 1.0, [*reviews, "pos3"])
    assert loose.pools["lexicon"] == ["pos1", "pos2", "pos9"]  # nothing written: ranked by the reviews' counts (pos3 ties, last by name)
    fixed = plant_mod.make_plant(Measure(plant="fixed", planted_words=["pos1"]), 0, LEX, probe_words, writes, 2.0, reviews)
    assert fixed.values == {"pos1": -1.1} and fixed.held_out == frozenset()


def test_word_split_holds_the_plant_pool_out_on_every_seed_and_keeps_its_share():
    from lfp.tasks.lexicon_rl.word_probes import word_split

    words = np.array(sorted(LEX) * 2, dtype=object)
    plain = word_split(words, 0.3, 0)
    assert (word_split(words, 0.3, 0, ()) == plain).all()  # no pool: the old split, bit for bit
    for seed in range(5):
        held = word_split(words, 0.3, seed, {"pos1", "neg7"})
        assert set(words[held]) >= {"pos1", "neg7"} and held.sum() == plain.sum()


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
