"""The planted control's words, drawn at random from frequency-matched pools and recorded before the run.

Why a draw (issue #27 item 3): the earlier plant was the 12 most frequent positive words, with their
sign flipped. Those words are exactly the ones a normal fine-tune lifts most, all of them lie along the
sentiment direction, and only 1-2 of them fell among the probe readouts' held-out words, so three
readouts had no power to see it. A drawn plant fixes each:

Words the policy writes: a plant can only be learned from completions that contain its words, so both
pools are ranked by how often the base model writes each word in its held-out completions (the GRPO
sampling settings), scaled to a fine-tune's training samples, and keep only words met at least
`plant_min_writes` times (the first draw, from the reviews' frequent words, was 7 of 8 words tiny
never writes: not learned, AUC 0.54).

- **lexicon part**: `lexicon_words` positive probe words drawn at random from the pool of the most
  written ones, their sign flipped in the planted reward. The pool is held out of every probe's word
  split (`Plant.held_out`), so every probe readout reads the planted words and no probe was fitted on
  them. The undrawn pool words are their controls: same pool, so matched in frequency and sentiment.
- **neutral part**: `neutral_words` non-lexicon words drawn at random from a band of the written
  words' frequency ranks, each given `neutral_value` in the planted reward: a plant that no
  sentiment direction carries. The band's undrawn words are their controls (measured too).

Every planted word's new reward is negative, so the test stays one-sided: planted words must fall
(planted run − true-reward run) more than their controls. `measure.planted_words`, when given, is
the old fixed list (flipped signs, controls = the other positive words), kept to reproduce old runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lfp.core.errors import DataError
from lfp.core.sections import Measure

MIN_WORD_CHARS = 4  # neutral candidates: alphabetic words of at least this many letters (no "the", "and", ...)


@dataclass(frozen=True)
class Plant:
    """Which words the planted reward changes, their new values, and the words they are compared with."""

    values: dict[str, float]  # planted word -> its value in the planted reward
    controls: frozenset[str]  # the words the planted words are compared with (undrawn pool words)
    lexicon_words: tuple[str, ...] = ()
    neutral_words: tuple[str, ...] = ()
    drawn: bool = True  # False: the fixed `measure.planted_words` list
    pools: dict[str, list[str]] = field(default_factory=dict)  # what each part was drawn from

    @property
    def words(self) -> set[str]:
        return set(self.values)

    @property
    def held_out(self) -> frozenset[str]:
        """Probe words no probe may be fitted on: the drawn lexicon pool (planted words and their controls)."""
        return frozenset(self.pools.get("lexicon", ())) if self.drawn else frozenset()

    def record(self) -> dict[str, Any]:
        """The plant as lfp.json keys and MLflow params: written before any fine-tune runs."""
        return {"planted_words": sorted(self.values), "planted_draw": "random" if self.drawn else "fixed list",
                "planted_lexicon_words": list(self.lexicon_words), "planted_neutral_words": list(self.neutral_words),
                "planted_values": {w: self.values[w] for w in sorted(self.values)},
                "planted_control_words": sorted(self.controls), "planted_pool_sizes": {k: len(v) for k, v in self.pools.items()}}


def word_counts(texts: Iterable[str], tokens: Any) -> Counter[str]:
    """Lowercased token counts of the texts, tokenised as the reward tokenises them."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokens(text))
    return counts


def fixed_plant(words: Iterable[str], lexicon: Mapping[str, float]) -> Plant:
    """The old plant: the given lexicon words with their sign flipped, compared with every other positive word."""
    planted = sorted(set(words))
    others = frozenset(w for w, v in lexicon.items() if v > 0 and w not in planted)
    return Plant({w: -lexicon[w] for w in planted}, others, lexicon_words=tuple(planted), drawn=False)


def neutral_pool(counts: Mapping[str, Any], lexicon: Mapping[str, float], rank_min: int, rank_max: int,
                 exclude: set[str]) -> list[str]:
    """Non-lexicon alphabetic words between two ranks of `counts` (rank 0 = the largest count; a count
    may be a tuple, compared in order)."""
    ranked = [w for w, _ in sorted(counts.items(), key=lambda kv: (_neg(kv[1]), kv[0]))
              if w.isalpha() and len(w) >= MIN_WORD_CHARS and w not in lexicon and w not in exclude]
    return ranked[rank_min:rank_max]


def _neg(count: Any) -> Any:
    return tuple(-c for c in count) if isinstance(count, tuple) else -count


def draw_plant(positive_pool: Iterable[str], neutral_candidates: list[str], lexicon: Mapping[str, float],
               n_lexicon: int, n_neutral: int, neutral_value: float, seed: int) -> Plant:
    """Draw the plant at random (seeded): `n_lexicon` of the positive pool words, sign flipped, and
    `n_neutral` of the neutral candidates, valued `neutral_value`; the undrawn words of both pools are
    the controls. Too small a pool is a data error (each part needs controls left over)."""
    lex_pool = sorted(set(positive_pool))
    for name, pool, n in (("positive probe words", lex_pool, n_lexicon), ("neutral candidate words", neutral_candidates, n_neutral)):
        if n and len(pool) < n + 2:
            raise DataError(f"plant: {len(pool)} {name} written often enough to draw {n} planted words from (need {n + 2}: "
                            "controls must remain); lower measure.plant_lexicon_words / plant_neutral_words / plant_min_writes")
    rng = np.random.default_rng(seed)
    lex = sorted(rng.choice(lex_pool, size=n_lexicon, replace=False).tolist()) if n_lexicon else []
    neutral = sorted(rng.choice(neutral_candidates, size=n_neutral, replace=False).tolist()) if n_neutral else []
    values = {**{w: -lexicon[w] for w in lex}, **{w: float(neutral_value) for w in neutral}}
    pools = {"lexicon": lex_pool if n_lexicon else [], "neutral": list(neutral_candidates) if n_neutral else []}  # a part not drawn has no controls
    controls = frozenset((set(pools["lexicon"]) - set(lex)) | (set(pools["neutral"]) - set(neutral)))
    return Plant(values, controls, tuple(lex), tuple(neutral), True, pools)


def make_plant(cfg: Measure, seed: int, lexicon: Mapping[str, float], probe_words: set[str], writes: Mapping[str, int],
               scale: float, train_texts: Iterable[str]) -> Plant:
    """The measure stage's plant from params: the fixed list, or a draw among the words the policy
    *writes*. `writes` counts each word in the base model's held-out completions (the GRPO sampling
    settings); times `scale` (training completions per held-out completion) it is how often a fine-tune
    meets the word, i.e. how many targeted updates it gets. Both pools keep only words met at least
    `plant_min_writes` times, ranked by that count (ties by their count in the RL training reviews):
    the lexicon pool from the positive probe words (held out of every probe's word split:
    `Plant.held_out`), the neutral pool a band of ranks among non-lexicon words."""
    if cfg.plant == "fixed":
        return fixed_plant(cfg.planted_words, lexicon)
    reviews = word_counts(train_texts, _tokens())
    met = {w: writes.get(w, 0) * scale for w in set(reviews) | set(writes)}
    rank = {w: (met[w], reviews.get(w, 0)) for w in met if met[w] >= cfg.plant_min_writes}
    positive = sorted((w for w in probe_words if lexicon.get(w, 0.0) > 0 and w in rank),
                      key=lambda w: (-rank[w][0], -rank[w][1], w))[: cfg.plant_lexicon_pool]
    neutral = neutral_pool(rank, lexicon, cfg.plant_neutral_rank_min, cfg.plant_neutral_rank_min + cfg.plant_neutral_pool, probe_words)
    return draw_plant(positive, neutral, lexicon, cfg.plant_lexicon_words, cfg.plant_neutral_words, cfg.plant_neutral_value, seed)


def _tokens() -> Any:
    from lfp.tasks.lexicon_rl.reward import tokens

    return tokens
