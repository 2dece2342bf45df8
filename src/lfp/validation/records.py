"""Per-feature activation records from the encoded corpus: the contexts shown to the explainer
(top activations + random ones), the held-out contexts its explanation is scored on, and the
activation histogram the dashboards draw."""

from __future__ import annotations

from typing import Any

import numpy as np

from lfp.validation.corpus import EncodedText
from lfp.validation.detection import HeldOut
from lfp.validation.explainers import MAX_ACT, Context, FeatureRecord, scale_activations

HIST_BINS = 20  # activation histogram of each feature over the corpus (for the dashboards)


def _window(n_tokens: int, peak: int, size: int) -> tuple[int, int]:
    """A `size`-token window with the peak 3/4 of the way in: a causal model's context is before it."""
    start = max(0, peak - (size * 3) // 4)
    end = min(n_tokens, start + size)
    return max(0, end - size), end


def _context(text: EncodedText, values: np.ndarray, peak: int, size: int, max_act: float) -> Context:
    lo, hi = _window(len(text.tokens), peak, size)
    return Context(
        tokens=text.tokens[lo:hi], words=text.words[lo:hi],
        acts=scale_activations(values[lo:hi], max_act), peak=peak - lo,
    )


def feature_record(
    corpus: list[EncodedText], layer: int, column: int, feature: int, similarity: float,
    n_contexts: int, size: int, rng: np.random.Generator,
) -> FeatureRecord:
    """Top-n contexts (one per text, by the text's max activation) + n random held-out contexts."""
    per_text = [t.codes[layer][:, column] for t in corpus]
    maxima = np.array([v.max() if len(v) else 0.0 for v in per_text])
    max_act = float(maxima.max()) if len(maxima) else 0.0
    order = [int(i) for i in np.argsort(-maxima, kind="stable") if maxima[i] > 0][:n_contexts]
    if not order:  # a dead feature: nothing to explain or to score
        return FeatureRecord(layer, feature, similarity, max_act, [], [])
    top = [_context(corpus[i], per_text[i], int(per_text[i].argmax()), size, max_act) for i in order]
    taken = set(order)
    rest = [i for i in range(len(corpus)) if i not in taken and len(per_text[i])]
    random = []
    for i in rng.choice(rest, size=min(n_contexts, len(rest)), replace=False) if rest else []:
        pos = int(rng.integers(len(per_text[i])))
        random.append(_context(corpus[int(i)], per_text[int(i)], pos, size, max_act))
    return FeatureRecord(layer, feature, similarity, max_act, top, random)


def _levels(values: np.ndarray, max_act: float) -> np.ndarray:
    """Activations on Bills et al.'s 0..10 scale (as the explainer sees them)."""
    return np.rint(np.clip(values, 0.0, None) / max_act * MAX_ACT)


def _inactive_start(levels: np.ndarray, size: int, rng: np.random.Generator) -> int | None:
    """A random start of a window whose every token is 0 on the 0..10 scale; None if there is none."""
    width = min(size, len(levels))
    if width == 0:
        return None
    starts = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(levels, width).max(axis=1) == 0)
    return int(rng.choice(starts)) if len(starts) else None


def heldout_contexts(
    corpus: list[EncodedText], layer: int, column: int, n_shown: int, n: int, size: int, rng: np.random.Generator,
) -> HeldOut:
    """Contexts never shown to the explainer, for the detection score: n//2 active ones (windows at
    the peak of the texts ranked just after the `n_shown` shown ones, peak >= 1 on the 0..10 scale)
    and n - n//2 inactive ones (random windows of other texts where every token is 0), shuffled."""
    per_text = [t.codes[layer][:, column] for t in corpus]
    maxima = np.array([v.max() if len(v) else 0.0 for v in per_text])
    max_act = float(maxima.max()) if len(maxima) else 0.0
    if max_act <= 0 or n < 2:
        return HeldOut([], [])
    ranked = [int(i) for i in np.argsort(-maxima, kind="stable") if maxima[i] > 0]
    positives = [i for i in ranked[n_shown:] if _levels(maxima[i : i + 1], max_act)[0] >= 1][: n // 2]
    contexts = [_context(corpus[i], per_text[i], int(per_text[i].argmax()), size, max_act) for i in positives]
    active = [True] * len(contexts)
    used = set(ranked[:n_shown]) | set(positives)
    for i in rng.permutation(len(corpus)):
        if len(active) - sum(active) == n - n // 2:
            break
        if int(i) in used:
            continue
        start = _inactive_start(_levels(per_text[i], max_act), size, rng)
        if start is not None:
            text, end = corpus[int(i)], min(len(per_text[i]), start + size)
            contexts.append(Context(tokens=text.tokens[start:end], words=text.words[start:end],
                                    acts=[0] * (end - start), peak=0))
            active.append(False)
    order = rng.permutation(len(contexts))
    return HeldOut([contexts[k] for k in order], [active[k] for k in order])


def activation_histogram(corpus: list[EncodedText], layer: int, column: int, bins: int = HIST_BINS) -> dict[str, Any]:
    """Histogram of the feature's positive activations over every corpus token, plus how many
    tokens there are and how many are active (> 0): the dashboards draw it."""
    values = np.concatenate([t.codes[layer][:, column] for t in corpus]) if corpus else np.zeros(0)
    active = values[values > 0]
    top = float(active.max()) if len(active) else 1.0
    counts, edges = np.histogram(active, bins=bins, range=(0.0, top))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
            "n_tokens": len(values), "n_active": len(active)}


def context_rows(contexts: list[Context]) -> list[dict[str, Any]]:
    """The contexts shown to the explainer, as features.jsonl stores them (tokens, 0..10 acts, peak)."""
    return [{"tokens": c.tokens, "acts": c.acts, "peak": c.peak} for c in contexts]

