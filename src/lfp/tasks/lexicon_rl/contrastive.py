"""lexicon_rl contrastive triples (paper §3.3): from IMDB *test* reviews, at most one sentence per
review (reviews and sentences visited in seeded order). A sentence qualifies when it is at most
`max_sentence_chars` long and contains a VADER-lexicon word (a single alphabetic word, written in
lower case in the text, found with `lfp.tasks.lexicon_rl.reward.tokens`). One such word is picked at random and its
exact character span is replaced three times:
  - positive: a word from the top `positive_quantile` of lexicon valences (and > 0),
  - negative: a word from the bottom `negative_quantile` (and < 0), both restricted to words that
    occur at least `min_word_count` times in the reviews (the model must know the word),
  - neutral:  a word from `neutral_words`. The paper's code never generated this element; here it
    is the same sentence with an everyday noun that is *absent* from the lexicon (valence 0 under
    the reward), so positive - neutral and negative - neutral isolate the sentiment of the swapped
    word in an identical context. The builder refuses neutral words that are in the lexicon.
Each element records its own `word`, `span` ([s, e] with `text[s:e] == word`) and lexicon `value`;
the triple's `word` / `true_value` are the original word and its valence. The probe scores
predictions per substituted word, so the replacement words form small pools (n_triples /
`word_repeats` words per polarity, one drawn at random from each equal-size valence bin so that the
pool spans the whole range) used round-robin: every pool word appears about `word_repeats` times.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from lfp.core.sections import ContrastiveVader
from lfp.core.data import prepared_file
from lfp.core.errors import ConfigError, DataError
from lfp.tasks.lexicon_rl import reward

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LOWER_WORD = re.compile(r"[a-z]+")
MIN_SENTENCE_TOKENS = 4  # a substituted word needs some context before it


def token_spans(text: str) -> list[tuple[str, int, int]] | None:
    """(lowercased token, start, end) for each `lfp.tasks.lexicon_rl.reward.tokens` token; None if they don't align
    with `text` (a character whose lower case has another length)."""
    out, pos = [], 0
    for tok in reward.tokens(text):
        while text[pos : pos + len(tok)].lower() != tok and pos < len(text) and text[pos].isspace():
            pos += 1
        if text[pos : pos + len(tok)].lower() != tok:
            return None
        out.append((tok, pos, pos + len(tok)))
        pos += len(tok)
    return out


def is_plain_word(word: str) -> bool:
    """A lower-case ASCII alphabetic word that the reward tokenizer keeps as one token."""
    return word.isascii() and word.isalpha() and word == word.lower() and reward.tokens(word) == [word]


def corpus_counts(texts: list[str]) -> Counter:
    """How often each lower-case word occurs in the reviews (one regex pass over the joined text)."""
    return Counter(_LOWER_WORD.findall("\n".join(texts)))


def word_pools(cfg: ContrastiveVader, counts: Counter, task: str = "vader") -> tuple[dict[str, float], list[str], list[str], dict[str, float]]:
    """(candidate lexicon, positive words, negative words, thresholds), each list sorted by value.

    Quantiles are taken over the whole single-word lexicon; replacement words must then occur at
    least `min_word_count` times in the reviews, so the model has seen them (the lexicon is full
    of rare slang such as 'sfete' that a small model splits into meaningless pieces).
    """
    lex = {w: v for w, v in reward.lexicon().items() if is_plain_word(w)}
    values = np.array(list(lex.values()))
    hi, lo = float(np.quantile(values, cfg.positive_quantile)), float(np.quantile(values, cfg.negative_quantile))
    common = [w for w in lex if counts[w] >= cfg.min_word_count]
    positive = sorted((w for w in common if lex[w] >= hi and lex[w] > 0), key=lambda w: (lex[w], w))
    negative = sorted((w for w in common if lex[w] <= lo and lex[w] < 0), key=lambda w: (lex[w], w))
    if not positive or not negative:
        raise DataError(
            f"{prepared_file(task, 'test')}: no {'positive' if not positive else 'negative'} lexicon word beyond the "
            f"quantile occurs >= contrastive.{task}.min_word_count ({cfg.min_word_count}) times; lower it"
        )
    return lex, positive, negative, {"positive_threshold": hi, "negative_threshold": lo}


def check_neutral_words(words: list[str], task: str = "vader") -> None:
    """Neutral words must carry no valence under the reward, or the neutral element is not neutral."""
    lex = reward.lexicon()
    for i, word in enumerate(words):
        where = f"params: 'contrastive.{task}.neutral_words[{i}]' ('{word}')"
        if word in lex:
            raise ConfigError(f"{where} is in the VADER lexicon (valence {lex[word]}); pick a word absent from it")
        if not is_plain_word(word):
            raise ConfigError(f"{where} must be one lower-case alphabetic word (one reward token)")


def split_sentences(text: str, max_chars: int) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip() and len(s.strip()) <= max_chars]


def pick_sentence(text: str, cfg: ContrastiveVader, lex: dict[str, float], rng: np.random.Generator) -> tuple[str, str, int, int] | None:
    """(sentence, word, start, end) for a random qualifying sentence of one review, or None."""
    sentences = split_sentences(text, cfg.max_sentence_chars)
    for i in rng.permutation(len(sentences)):
        sentence = sentences[i]
        spans = token_spans(sentence)
        if spans is None or len(spans) < MIN_SENTENCE_TOKENS:
            continue
        hits = [(tok, s, e) for tok, s, e in spans if tok in lex and sentence[s:e] == tok]
        if hits:
            tok, s, e = hits[rng.integers(len(hits))]
            return sentence, tok, s, e
    return None


def stratified_pool(words: list[str], k: int, rng: np.random.Generator) -> list[str]:
    """k words, one drawn from each of k equal bins of the value-sorted list (covers the range)."""
    return [str(b[rng.integers(len(b))]) for b in np.array_split(np.array(words, dtype=object), min(k, len(words)))]


def balanced_assignment(pool: list[str], originals: list[str], rng: np.random.Generator) -> list[str]:
    """One pool word per triple, each pool word used equally often (±1), never the original word."""
    slots = [pool[i % len(pool)] for i in range(len(originals))]
    rng.shuffle(slots)
    n = len(slots)
    for i in range(n):
        if slots[i] != originals[i]:
            continue
        for j in range(1, n):  # swap with a later triple where neither side then clashes
            k = (i + j) % n
            if slots[k] != originals[i] and slots[i] != originals[k]:
                slots[i], slots[k] = slots[k], slots[i]
                break
        else:
            alternatives = [w for w in pool if w != originals[i]]
            if not alternatives:
                raise DataError(f"contrastive: cannot replace '{originals[i]}': it is the only replacement word")
            slots[i] = alternatives[0]
    return slots


def substitute(sentence: str, start: int, end: int, word: str, lex: dict[str, float]) -> dict[str, Any]:
    text = sentence[:start] + word + sentence[end:]
    return {"text": text, "word": word, "span": [start, start + len(word)], "value": lex.get(word, 0.0)}


def iter_candidates(rows: list[dict[str, Any]], cfg: ContrastiveVader, lex: dict[str, float], rng: np.random.Generator) -> Iterator[tuple[str, str, str, int, int]]:
    """(review id, sentence, word, start, end), one per review, reviews in seeded order."""
    for i in rng.permutation(len(rows)):
        found = pick_sentence(rows[i]["text"], cfg, lex, rng)
        if found is not None:
            yield (rows[i]["id"], *found)


def vader_triples(rows: list[dict[str, Any]], cfg: ContrastiveVader, seed: int, task: str = "vader") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Lexicon-substitution triples from IMDB reviews (see the module docstring)."""
    check_neutral_words(cfg.neutral_words, task)
    lex, positive, negative, thresholds = word_pools(cfg, corpus_counts([row["text"] for row in rows]), task)
    rng = np.random.default_rng(seed)
    candidates = []
    for cand in iter_candidates(rows, cfg, lex, rng):
        candidates.append(cand)
        if len(candidates) >= cfg.max_triples:
            break
    if not candidates:
        raise DataError(f"{prepared_file(task, 'test')}: no sentence of <= {cfg.max_sentence_chars} chars contains a VADER word")
    n = len(candidates)
    originals = [c[2] for c in candidates]
    k = max(1, n // cfg.word_repeats)
    pos_words = balanced_assignment(stratified_pool(positive, k, rng), originals, rng)
    neg_words = balanced_assignment(stratified_pool(negative, k, rng), originals, rng)
    neutral_words = balanced_assignment(list(cfg.neutral_words), originals, rng)
    triples = []
    for i, (source_id, sentence, word, s, e) in enumerate(candidates):
        triples.append({
            "id": f"vader-{i:05d}",
            "source_id": source_id,
            "word": word,
            "true_value": lex[word],
            "original": {"text": sentence, "span": [s, e]},
            "positive": substitute(sentence, s, e, pos_words[i], lex),
            "neutral": substitute(sentence, s, e, neutral_words[i], lex),
            "negative": substitute(sentence, s, e, neg_words[i], lex),
        })
    counts = Counter(pos_words) + Counter(neg_words)
    stats = {
        "n_triples": n,
        "n_positive_words": len(set(pos_words)),
        "n_negative_words": len(set(neg_words)),
        "min_word_uses": min(counts.values()),
        "positive_pool_candidates": len(positive),
        "negative_pool_candidates": len(negative),
        **thresholds,
    }
    return triples, stats
