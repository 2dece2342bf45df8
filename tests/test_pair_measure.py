"""The preference measurement on synthetic cases with known answers: a planted direction is found,
the bag-of-words baseline separates a lexically separable set and not a shuffled one, no pair
crosses the split, substitution triples differ only in their marked span, pairs fit the context;
over dialogue splits and per subset: opposite subsets transfer below chance and pool to chance,
the mean over splits is stable and its interval holds the truth, a small subset is skipped with
its reason."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from lfp.tasks.preference_dpo import dpo, measure as pair_measure, measure_splits, report as pair_report
from lfp.measure.probes import split_by_group
from lfp.tasks.preference_dpo.substitution import cut_reply, substitution_triple

PARAMS = NS(seed=0, probe=NS(logistic_c=1.0, ridge_alpha=1.0, shuffled_repeats=3))


def planted(n: int = 300, d: int = 20, signal: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reply features [n, 2, d] whose first dimension is higher on the chosen reply, and implicit
    rewards equal to that dimension."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, d))
    x[:, 0, 0] += signal
    return x, x[:, :, 0].copy()


def test_planted_direction_is_found_by_all_three_probe_forms() -> None:
    x, reward = planted()
    train = ~split_by_group(np.arange(len(x)), 0.3, 0)
    r = pair_measure.run_probes(x, reward, train, PARAMS)
    assert r.pairwise.mean() > 0.9 and r.pointwise.mean() > 0.8
    assert r.reward_tau > 0.5 and r.reward_margin_sign.mean() > 0.9
    assert 0.3 < r.shuffled_pairwise < 0.7


def test_no_signal_gives_chance() -> None:
    x, reward = planted(signal=0.0)
    reward = np.random.default_rng(1).normal(size=reward.shape)
    train = ~split_by_group(np.arange(len(x)), 0.3, 0)
    r = pair_measure.run_probes(x, reward, train, PARAMS)
    assert 0.35 < r.pairwise.mean() < 0.65 and abs(r.reward_tau) < 0.15


def _rows(separable: bool, n: int = 200) -> list[dict[str, str]]:
    rng = np.random.default_rng(0)
    filler = ["the", "a", "movie", "thing", "day", "house", "car", "tree"]
    rows = []
    for i in range(n):
        base = " ".join(rng.choice(filler, 6))
        good, bad = f"{base} thanks glad", f"{base} stupid whatever"
        if not separable and rng.random() < 0.5:
            good, bad = bad, good
        rows.append({"id": str(i), "prompt": "Q:", "chosen": good, "rejected": bad})
    return rows


@pytest.mark.parametrize("separable", [True, False])
def test_bag_of_words_baseline(separable: bool) -> None:
    rows = _rows(separable)
    train = ~split_by_group(np.array([r["id"] for r in rows]), 0.3, 0)
    x = pair_measure.bow_features(rows, train)
    r = pair_measure.run_probes(x, np.zeros((len(rows), 2)), train, PARAMS)
    if separable:
        assert r.pairwise.mean() > 0.98
    else:
        assert 0.35 < r.pairwise.mean() < 0.65


def test_no_pair_crosses_the_split() -> None:
    ids = np.array([f"p{i}" for i in range(50)], dtype=object)
    test = split_by_group(ids, 0.3, 0)
    assert not set(ids[test]) & set(ids[~test]) and test.any() and (~test).any()


def test_paired_difference_ci_covers_the_truth() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(400) < 0.7, rng.random(400) < 0.5
    d, lo, hi = pair_measure.paired_diff_ci(a, b, 500, 0)
    assert lo < 0.2 < hi and lo < d < hi


def test_substitution_triples_differ_only_in_the_marked_span() -> None:
    phrases = {"positive": ["Glad to help."], "neutral": ["Okay."], "negative": ["Go away."]}
    row = {"id": "7", "prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " Hello there. How are you today? Fine."}
    t = substitution_triple("hh", row, 0, phrases, 20, rewards_harm=False)
    rests = set()
    for role in ("positive", "neutral", "negative"):
        el = t[role]
        s, e = el["span"]
        assert el["response"][s:e] == phrases[role][0] and el["text"] == row["prompt"] + el["response"]
        rests.add(el["response"][:s] + el["response"][e:])
    assert len(rests) == 1 and "Hello there." in rests.pop()
    swapped = substitution_triple("toxic", row, 0, phrases, 20, rewards_harm=True)
    assert swapped["positive"]["phrase"] == "Go away." and swapped["negative"]["phrase"] == "Glad to help."


def test_cut_reply_keeps_whole_sentences() -> None:
    assert cut_reply(" One. Two three. Four five six.", 12) == "One."  # "Two three." would end past 12
    assert cut_reply("Short.", 100) == "Short."


class _Tok:
    """Whitespace tokenizer with decode, enough for fit_to_context."""

    def __call__(self, text: list[str] | str, verbose: bool = False) -> dict:
        if isinstance(text, str):
            return {"input_ids": text.split()}
        return {"input_ids": [t.split() for t in text]}

    def decode(self, ids: list[str]) -> str:
        return " ".join(ids)


def test_fit_to_context_keeps_the_prompt_end_and_drops_nothing_needlessly() -> None:
    long_prompt = " ".join(f"w{i}" for i in range(100))
    rows = [{"id": "a", "prompt": long_prompt, "chosen": "yes sure", "rejected": "no way"},
            {"id": "b", "prompt": "hi", "chosen": "ok", "rejected": "no"}]
    fitted, n_cut = dpo.fit_to_context(_Tok(), rows, 16)
    assert n_cut == 1 and len(fitted) == 2
    a = fitted[0]
    assert a["prompt"].endswith("w99") and len(a["prompt"].split()) + 2 + 2 <= 16
    assert fitted[1] == rows[1]


# ---------------------------------------------------------------------------- over dialogue splits and subsets


def _opposite_subsets(n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two subsets whose preferred reply lies on opposite sides of the same feature direction."""
    helpful, harmless = planted(n, signal=2.0, seed=1)[0], planted(n, signal=-2.0, seed=2)[0]
    ids = np.array([f"p{i}" for i in range(2 * n)], dtype=object)
    return np.concatenate([helpful, harmless]), ids, np.array(["helpful-base"] * n + ["harmless-base"] * n, dtype=object)


def test_opposite_subsets_transfer_below_chance_and_pool_to_chance() -> None:
    x, ids, subsets = _opposite_subsets()
    m = measure_splits.split_probe_metrics({"finetuned": lambda train: x}, ids, subsets, 0.3, list(range(10)), 1.0, 0)
    assert m["pair_subsets"] == ["harmless_base", "helpful_base"] and m["pair_subsets_skipped"] == {}
    for name in ("helpful_base", "harmless_base"):
        assert m[f"subset_{name}_pairwise_accuracy_finetuned_split_mean"] > 0.8
        assert m[f"subset_{name}_pairwise_accuracy_finetuned_split_ci_low"] > 0.5
    for a, b in (("helpful_base", "harmless_base"), ("harmless_base", "helpful_base")):
        assert m[f"transfer_{a}_to_{b}_pairwise_accuracy_finetuned_split_mean"] < 0.3
        assert m[f"transfer_{a}_to_{b}_pairwise_accuracy_finetuned_split_ci_high"] < 0.5
    assert 0.4 < m["pairwise_accuracy_finetuned_split_mean"] < 0.6
    assert len(m["pairwise_accuracy_finetuned_per_split_seed"]) == 10 and 1 <= m["pairwise_accuracy_finetuned_reported_split_rank"] <= 10
    # the report facet: a row per scope, and the sentence says the subsets point opposite ways
    rows = pair_report.split_table(m)
    assert [r[0] for r in rows] == ["pooled (all subsets)", "within harmless-base", "within helpful-base",
                                    "harmless-base → helpful-base", "helpful-base → harmless-base"]
    assert pair_report.transfer_direction(m) == "opposite" and "point opposite ways" in pair_report.split_sentence(m)


def test_agreeing_subsets_transfer_above_chance() -> None:
    x = np.concatenate([planted(150, signal=2.0, seed=1)[0], planted(150, signal=2.0, seed=2)[0]])
    ids, subsets = np.arange(300).astype(object), np.array(["a"] * 150 + ["b"] * 150, dtype=object)
    m = measure_splits.split_probe_metrics({"finetuned": lambda train: x}, ids, subsets, 0.3, list(range(5)), 1.0, 0)
    assert m["transfer_a_to_b_pairwise_accuracy_finetuned_split_ci_low"] > 0.65
    assert pair_report.transfer_direction(m) == "same" and "point the same way" in pair_report.split_sentence(m)


def test_over_split_seeds_the_mean_is_stable_and_its_interval_holds_the_truth() -> None:
    """A planted margin of 1 on one of 5 dimensions, unit noise per reply: the best pairwise rule is right
    with probability Φ(1/√2) = 0.760. The t-interval over 10 splits holds it and the mean over 60 splits
    (what the interval estimates); another 10 seeds give nearly the same mean."""
    from scipy.stats import norm

    x = planted(400, d=5, signal=1.0, seed=3)[0]
    ids, subsets = np.arange(400).astype(object), np.array(["only"] * 400, dtype=object)
    noise = np.random.default_rng(0).normal(size=x.shape)
    feats = {"finetuned": lambda train: x, "base": lambda train: noise}

    def run(seeds: list[int]) -> dict:
        return measure_splits.split_probe_metrics(feats, ids, subsets, 0.3, seeds, 1.0, 0)

    m, other, long = run(list(range(10))), run(list(range(100, 110))), run(list(range(60)))
    key, truth = "pairwise_accuracy_finetuned", float(norm.cdf(1 / np.sqrt(2)))
    lo, hi = m[f"{key}_split_ci_low"], m[f"{key}_split_ci_high"]
    assert lo < truth < hi and lo < long[f"{key}_split_mean"] < hi
    assert abs(m[f"{key}_split_mean"] - other[f"{key}_split_mean"]) < 0.02 and 0 < m[f"{key}_split_sd"] < 0.06
    assert abs(m["pairwise_accuracy_base_split_mean"] - 0.5) < 0.08  # noise features: chance
    assert m["pairwise_accuracy_diff_split_ci_low"] > 0.1  # fine-tuned − base, paired per split
    # the reported split (the first seed) is the split of run_probes: same probes, same numbers
    train = ~split_by_group(ids, 0.3, 0)
    r = pair_measure.run_probes(x, x[:, :, 0].copy(), train, PARAMS)
    assert m[f"{key}_per_split_seed"][0] == pytest.approx(r.pairwise.mean())
    assert m["probe_accuracy_finetuned_per_split_seed"][0] == pytest.approx(r.pointwise.mean())
    assert m["pair_subsets"] == [] and "the only subset" in m["pair_subsets_skipped"]["only"]


def test_a_subset_with_too_few_pairs_is_skipped_with_its_reason() -> None:
    x, ids, subsets = _opposite_subsets(150)
    x = np.concatenate([x, planted(10, seed=4)[0]])
    ids = np.concatenate([ids, np.array([f"t{i}" for i in range(10)], dtype=object)])
    subsets = np.concatenate([subsets, np.array(["tiny-c"] * 10, dtype=object)])
    m = measure_splits.split_probe_metrics({"finetuned": lambda train: x}, ids, subsets, 0.3, [0, 1, 2], 1.0, 0)
    assert m["pair_subsets"] == ["harmless_base", "helpful_base"]
    assert "below the minimum of 8" in m["pair_subsets_skipped"]["tiny_c"] and m["subset_tiny_c_n_pairs"] == 10
    assert not any(k.startswith("subset_tiny_c_pairwise") or "tiny_c_to" in k or "to_tiny_c" in k for k in m)
    assert np.isfinite(m["pairwise_accuracy_finetuned_split_mean"])


def test_a_split_that_leaves_a_subset_without_pairs_gives_nan_not_a_crash() -> None:
    x = planted(40, seed=5)[0]
    probes = measure_splits.fit_pair_probes(x, np.zeros(40, dtype=bool), measure_splits.orientation(40, 0), 1.0, 0)
    assert probes.pointwise is None and probes.pairwise is None
    scores = measure_splits.score_pair_probes(probes, x, np.ones(40, dtype=bool))
    assert np.isnan(scores["pairwise"]) and np.isnan(scores["pointwise"])
    assert measure_splits.reported_rank([0.4, 0.5, 0.6], 0.4) == 1 and measure_splits.reported_rank([0.5, 0.5], 0.5) == 1.5
    assert measure_splits.subset_key("helpful-base") == "helpful_base"
