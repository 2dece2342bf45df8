"""The preference measurement on synthetic cases with known answers: a planted direction is found,
the bag-of-words baseline separates a lexically separable set and not a shuffled one, no pair
crosses the split, substitution triples differ only in their marked span, pairs fit the context."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from lfp.tasks.preference_dpo import dpo, measure as pair_measure
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
