"""Detection scores of explanations (lfp.validation.detection + lfp.validation.records' held-out contexts), with
known answers: an explanation naming exactly the trigger word scores 1, a shuffled one 0.5."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from lfp.validation.corpus import EncodedText
from lfp.validation.detection import (
    HeldOut,
    LlmDetector,
    balanced_accuracy,
    derangement,
    detection_scores,
    detection_summary,
    explanation_words,
    format_contexts,
    lexicon_detect,
    score,
    summarize,
)
from lfp.validation.explainers import UNUSABLE, Context, load_prompt
from lfp.llm.client import InvalidReply
from lfp.validation.records import activation_histogram, feature_record, heldout_contexts

TRIGGERS = ("zebra", "walrus")  # feature 0 fires on the first, feature 1 on the second
FILLER = [f"w{i}" for i in range(60)]


def trigger_corpus(n_texts: int = 80, length: int = 40) -> list[EncodedText]:
    """Filler texts; every third text holds 'zebra', every fifth 'walrus' (activation 1..2, a
    different strength per text so the ranking is strict)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_texts):
        words = [str(w) for w in rng.choice(FILLER, size=length)]
        if i % 3 == 0:
            words[int(rng.integers(length))] = TRIGGERS[0]
        if i % 5 == 0:
            words[int(rng.integers(length))] = TRIGGERS[1]
        codes = np.array([[float(w == t) * (1 + i / n_texts) for t in TRIGGERS] for w in words])
        out.append(EncodedText(tokens=[" " + w for w in words], words=words, codes={0: codes}))
    return out


def held_for(corpus: list[EncodedText], column: int, n: int = 10) -> HeldOut:
    return heldout_contexts(corpus, 0, column, 5, n, 12, np.random.default_rng([0, column]))


def test_balanced_accuracy_known_values():
    assert balanced_accuracy([True, True, False, False], [True, True, False, False]) == 1.0
    assert balanced_accuracy([True, True, True, True], [True, True, False, False]) == 0.5
    assert balanced_accuracy([True, False, False, False], [True, True, False, False]) == 0.75
    assert balanced_accuracy([True, False], [True, True]) is None  # one class only: undefined
    with pytest.raises(ValueError):
        balanced_accuracy([True], [True, False])


def test_heldout_contexts_are_balanced_unseen_and_true():
    corpus = trigger_corpus()
    held = held_for(corpus, 0)
    assert sum(held.active) == 5 and len(held.active) == 10
    shown = feature_record(corpus, 0, 0, 0, 1.0, 5, 12, np.random.default_rng(0)).top
    shown_tokens = {tuple(c.tokens) for c in shown}
    assert not shown_tokens & {tuple(c.tokens) for c in held.contexts}  # none was shown to the explainer
    for ctx, active in zip(held.contexts, held.active):
        assert (TRIGGERS[0] in ctx.words) == active  # active: the window holds the peak; inactive: every token 0
        assert len(ctx.tokens) == 12


def test_heldout_contexts_of_a_dead_feature_are_empty():
    corpus = [EncodedText(tokens=["a"], words=["a"], codes={0: np.zeros((1, 1))})]
    assert heldout_contexts(corpus, 0, 0, 5, 10, 4, np.random.default_rng(0)) == HeldOut([], [])


def test_explanation_naming_the_trigger_scores_one_and_an_unrelated_word_chance():
    corpus = trigger_corpus()
    held = held_for(corpus, 0)
    assert score(lexicon_detect, ["zebra"], held) == 1.0
    assert score(lexicon_detect, ["walrus"], held) == pytest.approx(0.5, abs=0.1)
    assert score(lexicon_detect, [], held) == 0.5  # names nothing: predicts "inactive" everywhere


def rows_and_held(corpus: list[EncodedText]) -> tuple[list[dict[str, Any]], list[HeldOut]]:
    rows = [{"layer": 0, "feature": f, "explanation": f"peaks on '{t}'", "top_tokens": [t]} for f, t in enumerate(TRIGGERS)]
    return rows, [held_for(corpus, 0), held_for(corpus, 1)]


def test_detection_scores_offline_own_vs_shuffled():
    rows, held = rows_and_held(trigger_corpus())
    detection_scores(rows, held, SimpleNamespace(name="offline"), seed=0)
    assert [r["detection_score"] for r in rows] == [1.0, 1.0]
    assert all(r["detection_score_shuffled"] == pytest.approx(0.5, abs=0.1) for r in rows)
    assert all(r["detection_n_active"] == 5 and r["detection_n_inactive"] == 5 for r in rows)
    summary = detection_summary(rows, SimpleNamespace(name="offline"), 200, 0)
    assert summary["explainer"] == "offline" and summary["explanation_score_mean"] == 1.0
    assert summary["explanation_score_offline_mean"] == 1.0
    assert summary["explanation_score_shuffled_mean"] == pytest.approx(0.5, abs=0.1)
    assert summary["explanation_score_ci_low"] == summary["explanation_score_ci_high"] == 1.0


def test_dead_or_unusable_features_are_not_scored_nor_donors():
    rows, held = rows_and_held(trigger_corpus())
    rows.append({"layer": 0, "feature": 2, "explanation": "never activates on the corpus", "top_tokens": []})
    held.append(HeldOut([], []))
    rows[1]["explanation"] = f"{UNUSABLE}: ..."
    detection_scores(rows, held, SimpleNamespace(name="offline"), seed=0)
    assert rows[0]["detection_score"] == 1.0 and rows[1]["detection_score"] is None
    assert rows[2]["detection_score"] is None and rows[0]["detection_score_shuffled"] is None  # no other donor


def test_derangement_has_no_fixed_point():
    for n in range(2, 12):
        d = derangement(n, np.random.default_rng(n))
        assert sorted(d) == list(range(n)) and all(d[i] != i for i in range(n))
    assert derangement(1, np.random.default_rng(0)) == [0]


def test_summarize_bootstrap_ci_brackets_the_mean():
    out = summarize([0.5, 0.6, None, 0.9, 1.0], "s", 500, 0)
    assert out["s_n"] == 4 and out["s_mean"] == pytest.approx(0.75)
    assert out["s_ci_low"] < out["s_mean"] < out["s_ci_high"]
    assert summarize([None], "s", 10, 0) == {"s_mean": None, "s_n": 0, "s_ci_low": None, "s_ci_high": None}


def test_explanation_words_are_the_named_ones():
    assert explanation_words(["a", "b", "", "c", "d", "e", "f"]) == ["a", "b", "c", "d"]


class FakeClient:
    """complete_json returns the planted reply (or raises InvalidReply) and records the request."""

    max_tokens = 64
    base_url = "http://127.0.0.1:1/v1"

    def __init__(self, reply: Any) -> None:
        self.reply, self.requests = reply, []

    def complete_json(self, system: str, user: str, schema: Any = None, *, max_tokens: int | None = None) -> dict[str, Any]:
        self.requests.append({"system": system, "user": user, "schema": schema, "max_tokens": max_tokens})
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply(user) if callable(self.reply) else self.reply


def test_llm_detector_reads_yes_no_per_context_and_rejects_bad_shapes():
    held = held_for(trigger_corpus(), 0)
    truth = ["yes" if a else "no" for a in held.active]
    client = FakeClient({"fires": truth})
    assert score(LlmDetector(client), "the word zebra", held) == 1.0
    request = client.requests[0]
    assert "the word zebra" in request["user"] and format_contexts(held.contexts) in request["user"]
    assert request["schema"]["properties"]["fires"]["minItems"] == 10
    assert score(LlmDetector(FakeClient({"fires": truth[:-1]})), "x", held) is None  # wrong length: unscored
    assert score(LlmDetector(FakeClient({"fires": [True] * 10})), "x", held) is None
    assert score(LlmDetector(FakeClient(InvalidReply("cut off"))), "x", held) is None
    unusable = FakeClient({"fires": truth})
    assert score(LlmDetector(unusable), f"{UNUSABLE}: ...", held) is None and not unusable.requests


def test_detection_scores_openai_also_scores_the_lexicon_words():
    rows, held = rows_and_held(trigger_corpus())

    def oracle(user: str) -> dict[str, Any]:  # says yes where the text holds the explanation's word
        word = "zebra" if "find zebra" in user else "walrus"
        lines = [ln for ln in user.split("\n") if ln[:1].isdigit()]
        return {"fires": ["yes" if word in ln else "no" for ln in lines]}

    rows[0]["explanation"], rows[1]["explanation"] = "zebra", "walrus"
    detection_scores(rows, held, SimpleNamespace(name="openai", client=FakeClient(oracle)), seed=0)
    assert [r["detection_score"] for r in rows] == [1.0, 1.0]
    assert [r["detection_score_offline"] for r in rows] == [1.0, 1.0]
    summary = detection_summary(rows, SimpleNamespace(name="openai"), 100, 0)
    assert summary["explanation_score_openai_mean"] == 1.0 and summary["explanation_score_offline_mean"] == 1.0
    assert summary["detection_detector"] == "llm"


def test_activation_histogram_counts_active_tokens():
    corpus = trigger_corpus()
    hist = activation_histogram(corpus, 0, 0, bins=5)
    n_zebra = sum(w == "zebra" for t in corpus for w in t.words)
    assert hist["n_active"] == n_zebra == sum(hist["counts"]) and hist["n_tokens"] == 80 * 40
    assert len(hist["edges"]) == 6


def test_detect_prompt_formats():
    system, user = load_prompt("detect")
    text = user.format(explanation="e", contexts="1. a", n=1)
    assert '{"fires"' in system and "exactly 1 answers" in text
    assert Context(tokens=["a"], words=["a"], acts=[0], peak=0)
