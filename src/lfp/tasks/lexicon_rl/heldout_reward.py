"""Did each fine-tune of the measure stage learn the reward it was given? Behavioural evidence per run.

A control must learn before it can speak (issue #27): a planted or shuffled fine-tune whose
completions do not earn more of *its own* reward on held-out prompts than the base model's proves
nothing by its learned values. Every run is sampled on the finetune stage's held-out prompts with
the same sampling seed as the base model, and scored under its own lexicon (the gain with a paired
bootstrap CI over prompts, `rl.reward_gain`). A shuffled arm is also scored under the real lexicon:
the behavioural twin of the shuffled null (a centred permutation should teach no sentiment).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lfp.core.sections import GrpoFinetune
from lfp.tasks.finetuning import EVAL_BATCH
from lfp.tasks.lexicon_rl import rl


class HeldoutReward:
    """The base model's held-out completions, sampled once; each run is compared with them."""

    def __init__(self, base: Any, tokenizer: Any, test_rows: Sequence[dict[str, Any]], cfg: GrpoFinetune, seed: int, device: Any,
                 n_boot: int) -> None:
        self.tokenizer, self.cfg, self.seed, self.device, self.n_boot = tokenizer, cfg, seed, device, n_boot
        self.prefixes = rl.make_prefixes(test_rows, tokenizer, cfg, cfg.eval_prompts, seed)
        self.base_samples = rl.sample(base, tokenizer, self.prefixes, cfg, seed, device, EVAL_BATCH)

    def gains(self, policy: Any, rewards: Mapping[str, Mapping[str, float] | None]) -> dict[str, dict[str, float]]:
        """The run's held-out reward gain over the base model under each named lexicon (None = VADER)."""
        samples = rl.sample(policy, self.tokenizer, self.prefixes, self.cfg, self.seed, self.device, EVAL_BATCH)
        done = self.cfg.reward_completion_only
        return {name: rl.reward_gain(rl.sample_rewards(self.base_samples, done, lex), rl.sample_rewards(samples, done, lex),
                                     self.n_boot, self.seed)
                for name, lex in rewards.items()}


    def writes(self) -> Counter[str]:
        """How often the base model writes each word (reward tokens) in its held-out completions."""
        from lfp.tasks.lexicon_rl.reward import tokens

        return Counter(t for c in self.base_samples.completions for t in tokens(c))

    def training_scale(self, train_completions: int) -> float:
        """Training completions of a fine-tune per held-out completion: scales `writes` to a fine-tune's samples."""
        return train_completions / max(len(self.prefixes), 1)

    def occurrences(self, words: Iterable[str], train_completions: int) -> dict[str, Any]:
        """How often the base model writes each word in its held-out completions, and what that
        predicts for the `train_completions` a fine-tune samples: a plant the policy never writes
        gets no targeted update (the fixed plant's words met ~3 times each in 16 SmolLM2 steps)."""
        counts, scale = self.writes(), self.training_scale(train_completions)
        per_word = {w: int(counts[w]) for w in sorted(words)}
        return {"planted_occurrences_base_heldout": per_word,
                "planted_occurrences_expected_in_training": {w: round(n * scale, 1) for w, n in per_word.items()}}


def gain_keys(prefix: str, g: Mapping[str, float]) -> dict[str, Any]:
    """`{prefix}_reward_gain` with its CI and the base / fine-tuned means."""
    return {f"{prefix}_{k}": v for k, v in g.items()}


def arms_keys(own: Sequence[Mapping[str, float]], lexicon: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """The shuffled arms' held-out gains, per arm: under their own permuted lexicon (each must be
    above 0 with its CI: the arm learned) and under the real lexicon (the behavioural null)."""
    out: dict[str, Any] = {}
    for name, gains in (("reward", own), ("reward_lexicon", lexicon)):
        out.update({f"shuffled_arms_{name}_gain": [g["reward_gain"] for g in gains],
                    f"shuffled_arms_{name}_gain_ci_low": [g["reward_gain_ci_low"] for g in gains],
                    f"shuffled_arms_{name}_gain_ci_high": [g["reward_gain_ci_high"] for g in gains]})
    lows = np.array(out["shuffled_arms_reward_gain_ci_low"], dtype=float)
    out["shuffled_arms_reward_learned"] = bool(len(lows) > 0 and np.all(np.isfinite(lows)) and np.all(lows > 0))
    return out
