"""Detection scores of feature explanations (delphi's detection scorer; Bills et al.'s simulation
scorer is `lfp.validation.explainers`' `simulate`).

Why a decision rather than taste: an explanation is good if, given only the explanation, a reader
can tell on contexts it never saw whether the feature fires. For each explained feature the stage
draws held-out contexts (half where the feature is active, taken from the texts ranked just after
the ones shown to the explainer; half random windows where it is inactive), a detector reads the
explanation and predicts fires / does not fire per context, and the score is the balanced accuracy
against the truth (0.5 = chance, 1 = perfect). Every explainer has its own detector:
- lexicon (offline): a context is predicted active if it contains one of the words the explanation
  names;
- LLM (openai backend): the LLM answers yes/no per context under a JSON schema.
The shuffled baseline scores each feature with another feature's explanation (a seeded
derangement): what an explanation buys over one that is merely of the same form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lfp.validation.explainers import N_NAMED_WORDS, UNUSABLE, Context, _show, load_prompt
from lfp.llm.client import InvalidReply, LlmClient, object_schema
from lfp.measure.metrics import bootstrap_ci

ANSWER_TOKENS = 3  # `"yes", ` is about 3 tokens: the reply's budget follows the number of contexts
Detector = Callable[[Any, list[Context]], "list[bool] | None"]  # (explanation, contexts) -> fires per context


@dataclass(frozen=True)
class HeldOut:
    """The contexts a feature is scored on, none shown to the explainer, with the truth per context."""

    contexts: list[Context]
    active: list[bool]


def balanced_accuracy(predicted: Sequence[bool], truth: Sequence[bool]) -> float | None:
    """Mean of the true-positive and true-negative rates; None without both classes (undefined)."""
    p, t = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if len(p) != len(t):
        raise ValueError(f"balanced_accuracy: {len(p)} predictions for {len(t)} contexts")
    if t.all() or not t.any():
        return None
    return float((p[t].mean() + (~p[~t]).mean()) / 2)


def explanation_words(top_tokens: Sequence[str]) -> list[str]:
    """The words the offline explanation names (its text shows the first N_NAMED_WORDS peak words)."""
    return [w for w in top_tokens[:N_NAMED_WORDS] if w]


def lexicon_detect(words: Sequence[str], contexts: list[Context]) -> list[bool]:
    """The lexicon explainer's detector: active iff the context contains one of the named words."""
    named = set(words)
    return [any(w in named for w in ctx.words if w) for ctx in contexts]


def score(detector: Detector, explanation: Any, held: HeldOut) -> float | None:
    """Balanced accuracy of one detector on one feature's held-out contexts; None if unscorable."""
    if not held.contexts:
        return None
    predicted = detector(explanation, held.contexts)
    return None if predicted is None else balanced_accuracy(predicted, held.active)


def derangement(n: int, rng: np.random.Generator) -> list[int]:
    """A seeded permutation with no fixed point (i -> another index); [] or [0] when n < 2."""
    if n < 2:
        return list(range(n))
    order = rng.permutation(n)
    out = [0] * n
    for k in range(n):  # each element takes the explanation of the next one in a random cycle
        out[int(order[k])] = int(order[(k + 1) % n])
    return out


def summarize(scores: Sequence[float | None], prefix: str, n_resamples: int, seed: int) -> dict[str, Any]:
    """`{prefix}_mean`, `_ci_low`, `_ci_high` (percentile bootstrap over features), `_n` scored."""
    x = np.array([s for s in scores if s is not None], dtype=float)
    out: dict[str, Any] = {f"{prefix}_mean": float(x.mean()) if len(x) else None, f"{prefix}_n": len(x)}
    lo, hi = (bootstrap_ci(lambda w: float(np.sum(w * x) / np.sum(w)), np.arange(len(x)), n_resamples, seed)
              if len(x) >= 2 else (None, None))
    out[f"{prefix}_ci_low"], out[f"{prefix}_ci_high"] = lo, hi
    return out


# --------------------------------------------------------------------------------------------
# LLM detector
# --------------------------------------------------------------------------------------------


def detect_schema(n: int) -> dict[str, Any]:
    """Exactly one "yes"/"no" per context (llama.cpp and vLLM enforce minItems/maxItems)."""
    return object_schema({"fires": {"type": "array", "minItems": n, "maxItems": n,
                                    "items": {"type": "string", "enum": ["yes", "no"]}}})


def format_contexts(contexts: list[Context]) -> str:
    """One numbered line per context, its tokens joined as text."""
    return "\n".join(f"{i}. {_show(''.join(ctx.tokens)).strip()}" for i, ctx in enumerate(contexts, start=1))


class LlmDetector:
    """Asks the LLM, given the explanation, whether the feature fires in each context (one request
    per feature and explanation). A reply of the wrong shape is unscored (None), counted, not faked."""

    def __init__(self, client: LlmClient) -> None:
        self.client = client

    def __call__(self, explanation: str, contexts: list[Context]) -> list[bool] | None:
        if not explanation or explanation.startswith(UNUSABLE):
            return None
        system, user = load_prompt("detect")
        n = len(contexts)
        try:
            answer = self.client.complete_json(
                system, user.format(explanation=explanation, contexts=format_contexts(contexts), n=n),
                schema=detect_schema(n), max_tokens=max(ANSWER_TOKENS * n + 16, self.client.max_tokens))
        except InvalidReply:
            return None
        fires = answer.get("fires")
        if not isinstance(fires, list) or len(fires) != n or not all(a in ("yes", "no") for a in fires):
            return None
        return [a == "yes" for a in fires]


# --------------------------------------------------------------------------------------------
# a run's features: per-feature scores and their summary (explain.json)
# --------------------------------------------------------------------------------------------


def _usable(row: dict[str, Any]) -> bool:
    """A feature whose explanation can be scored: it activates, and the LLM's reply was usable."""
    return bool(row["top_tokens"]) and not str(row["explanation"]).startswith(UNUSABLE)


def detection_scores(rows: list[dict[str, Any]], held: list[HeldOut], explainer: Any, seed: int) -> None:
    """Add `detection_score` (this explainer), `detection_score_shuffled` (another feature's
    explanation, a seeded derangement) and, for the LLM, `detection_score_offline` (the lexicon
    explainer's words on the same contexts) to every row."""
    if explainer.name == "openai":
        detector, text = LlmDetector(explainer.client), (lambda r: r["explanation"])
    else:
        detector, text = lexicon_detect, (lambda r: explanation_words(r["top_tokens"]))
    live = [i for i, r in enumerate(rows) if _usable(r) and held[i].contexts]
    donor = derangement(len(live), np.random.default_rng([seed, 17]))
    shuffled = {live[k]: live[donor[k]] for k in range(len(live))} if len(live) >= 2 else {}
    for i, (row, h) in enumerate(zip(rows, held)):
        row["detection_n_active"], row["detection_n_inactive"] = sum(h.active), len(h.active) - sum(h.active)
        row["detection_score"] = score(detector, text(row), h) if i in live else None
        row["detection_score_shuffled"] = score(detector, text(rows[shuffled[i]]), h) if i in shuffled else None
        if explainer.name == "openai":
            row["detection_score_offline"] = score(lexicon_detect, explanation_words(row["top_tokens"]), h) if h.contexts else None


def detection_summary(rows: list[dict[str, Any]], explainer: Any, n_resamples: int, seed: int) -> dict[str, Any]:
    """explain.json: mean detection score with a bootstrap CI over features, for this explainer
    (`explanation_score_*` and `explanation_score_{name}_*`), the shuffled baseline and, for the
    LLM, the lexicon explainer on the same contexts."""
    def col(key: str) -> list[float | None]:
        return [r.get(key) for r in rows]

    out = {"explainer": explainer.name, "detection_detector": "llm" if explainer.name == "openai" else "lexicon"}
    out |= summarize(col("detection_score"), "explanation_score", n_resamples, seed)
    out |= summarize(col("detection_score"), f"explanation_score_{explainer.name}", n_resamples, seed)
    out |= summarize(col("detection_score_shuffled"), "explanation_score_shuffled", n_resamples, seed)
    if explainer.name == "openai":
        out |= summarize(col("detection_score_offline"), "explanation_score_offline", n_resamples, seed)
    return out

