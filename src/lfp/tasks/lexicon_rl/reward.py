"""The VADER-lexicon reward of the paper (eq. 3): clip(sum of token valences / 5, -10, 10).

Tokens come from spaCy's English tokenizer (`spacy.blank("en")` has the same tokenizer rules as
en_core_web_md, which the paper used) and are lowercased before the lexicon lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from lfp.core.errors import DataError
from lfp.core.vader_lexicon import lexicon, lexicon_path

SCALE = 5.0
CLIP = 10.0


@functools.lru_cache(maxsize=1)
def _tokenizer():
    import spacy

    return spacy.blank("en").tokenizer


def tokens(text: str) -> list[str]:
    """Lowercased spaCy tokens of `text`."""
    return [t.text.lower() for t in _tokenizer()(text)]


def text_valence_sum(text: str, lex: Mapping[str, float] | None = None) -> float:
    lex = lexicon() if lex is None else lex
    return sum(lex.get(tok, 0.0) for tok in tokens(text))


def vader_reward(texts: Iterable[str], lex: Mapping[str, float] | None = None) -> list[float]:
    """Reward(s) = clip(1/5 * sum_{token in s} V(token), -10, +10) for each text. `lex` replaces
    the VADER lexicon (the planted and shuffled controls fine-tune on a changed one)."""
    out = []
    for text in texts:
        value = text_valence_sum(text, lex) / SCALE
        out.append(max(-CLIP, min(CLIP, value)))
    return out


def planted_lexicon(words: Iterable[str]) -> dict[str, float]:
    """The VADER lexicon with the sign of `words` flipped: the fixed plant's reward (the paper's own
    example of a learned mislabel: "precious" labelled positive, learned negative)."""
    lex = lexicon()
    for word in words:
        if word not in lex:
            raise DataError(f"planted word '{word}' is not in the VADER lexicon ({lexicon_path()})")
    return replanted_lexicon({w: -lex[w] for w in words})


def replanted_lexicon(values: Mapping[str, float]) -> dict[str, float]:
    """The VADER lexicon with `values` set (a word outside it is added): the planted control's reward."""
    return {**lexicon(), **{w: float(v) for w, v in values.items()}}


def shuffled_lexicon(seed: int, centred: bool = False, writes: Mapping[str, float] | None = None, bin_words: int = 0) -> dict[str, float]:
    """The VADER lexicon with its values permuted across words (seeded): the negative control's
    reward, which keeps the value distribution but breaks every word's meaning. `centred` subtracts
    the lexicon's mean (-0.18): an uncentred permutation still punishes every lexicon word a little,
    and the count of lexicon words in a completion correlates with the real reward, so its
    advantages keep a direction (-0.045 correlation with the real ones; -0.003 centred).

    `bin_words` > 0 (with `writes`, how often the base model writes each word) permutes within bins
    of that many lexicon words ranked by writes (the words never written are one bin), and `centred`
    then centres each bin: every value lands on a word the policy writes about as often as the word
    that held it, so an arm's reward is as learnable word for word as the real one, and per-bin
    centring removes the real lexicon's own tie between frequency and value (the words a model
    writes most are mostly positive)."""
    import numpy as np

    lex = lexicon()
    rng = np.random.default_rng(seed)
    if bin_words <= 0 or writes is None:
        bins = [sorted(lex)]
    else:
        ranked = sorted(lex, key=lambda w: (-writes.get(w, 0), w))
        written = [w for w in ranked if writes.get(w, 0) > 0]
        bins = [written[i : i + bin_words] for i in range(0, len(written), bin_words)] + [[w for w in ranked if writes.get(w, 0) <= 0]]
    out: dict[str, float] = {}
    for words in bins:
        if not words:
            continue
        values = rng.permutation([lex[w] for w in words])
        if centred:
            values = values - values.mean()
        out.update(zip(words, (float(v) for v in values)))
    return out
