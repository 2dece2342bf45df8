"""Kind `lexicon_rl`'s ablation objective (Table 6): the VADER reward of completions sampled from
review prefixes under each condition (no hook, SAE reconstruction, related features zeroed,
frequency-matched random features zeroed). Every condition samples the same prefixes with the
same seed, so only the intervention differs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lfp.core import io
from lfp.core.data import prepared_file
from lfp.core.params import Params
from lfp.models.tokens import leading_special_ids
from lfp.validation import ablation


def imdb_prefixes(texts: Sequence[str], tokenizer: Any, n: int, prefix_tokens: int, rng: np.random.Generator) -> list[list[int]]:
    """`n` prefixes of exactly `prefix_tokens` tokens (texts that are shorter are skipped)."""
    order = rng.permutation(len(texts))
    lead = leading_special_ids(tokenizer)
    out: list[list[int]] = []
    for i in order:
        ids = tokenizer(texts[int(i)], add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= prefix_tokens:
            out.append([*lead, *ids[:prefix_tokens]])
            if len(out) == n:
                break
    return out


@dataclasses.dataclass(frozen=True)
class SampledRewards:
    """VADER rewards of one condition's samples, one entry per prefix.

    `completion`: the sampled tokens only (what the condition changed); `full`: prefix +
    completion, the paper's Table 6 quantity, where the prefix's reward — the same in every
    condition — dilutes the effect."""

    completion: np.ndarray
    full: np.ndarray


def prefix_rewards(tokenizer: Any, prefixes: list[list[int]]) -> np.ndarray:
    """VADER reward of each prefix alone (the part of the paper's reward no ablation can move)."""
    from lfp.tasks.lexicon_rl.reward import vader_reward

    return np.asarray(vader_reward(tokenizer.batch_decode(prefixes, skip_special_tokens=True)))


@torch.no_grad()
def sample_rewards(
    model: Any, tokenizer: Any, prefixes: list[list[int]], *, max_new_tokens: int, batch_size: int, seed: int
) -> SampledRewards:
    """VADER reward of the sampled completion and of prefix + completion (pure sampling: top_k=0,
    top_p=1), seeded so that every condition draws the same random numbers. Prefixes of one
    batch have the same length (imdb_prefixes), so the completion starts at the same column."""
    from lfp.tasks.lexicon_rl.reward import vader_reward

    device = next(model.parameters()).device
    torch.manual_seed(seed)
    full, completion = [], []
    for start in range(0, len(prefixes), batch_size):
        ids = torch.tensor(prefixes[start : start + batch_size], device=device)
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
            temperature=1.0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        )
        full += tokenizer.batch_decode(out, skip_special_tokens=True)
        completion += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    return SampledRewards(completion=np.asarray(vader_reward(completion)), full=np.asarray(vader_reward(full)))


class VaderReward:
    """`ablation_metric: vader_reward`; `t6_*` use the completion's reward only."""

    metric = "vader_reward"

    def beta(self, params: Params, task: str) -> float | None:
        """No DPO beta: logged as None."""
        return None

    def scores(self, params: Params, model: str, task: str, lm: Any, tokenizer: Any, saes: dict, related: dict) -> dict[str, Any]:
        cfg = params.validate
        texts = [row["text"] for row in io.read_jsonl(prepared_file(task, "test"), {"text": str})]
        prefixes = imdb_prefixes(texts, tokenizer, cfg.n_completions, cfg.prefix_tokens, np.random.default_rng(params.seed))
        fixed: list[tuple[str, Any]] = [("no_hook", None), ("reconstruction", {}), ("related", related)]
        samples, full = {}, {}

        def sample(conds: list) -> None:
            for name, zeroed in tqdm(conds, desc="validate: sampled completions per condition", disable=None):
                with ablation.sae_hooks(lm, saes, zeroed):
                    r = sample_rewards(lm, tokenizer, prefixes, max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.batch_size, seed=params.seed)
                samples[name], full[name] = r.completion, r.full

        sample(fixed)
        freqs = ablation.token_frequencies(lm, saes, prefixes, cfg.batch_size, tokenizer.pad_token_id)
        randoms = ablation.random_conditions(related, freqs, cfg.random_controls, params.seed, cfg.random_match_pool)
        sample(randoms)
        _, kls = ablation.condition_scores(lm, saes, fixed + randoms, prefixes, cfg.batch_size, tokenizer.pad_token_id)
        return {"ablation_metric": "vader_reward", "ablation_n": len(prefixes), "kl": kls,
                "scores": {name: float(v.mean()) for name, v in full.items()},  # paper method: prefix + completion
                "full": full, "samples": samples, "prefix": prefix_rewards(tokenizer, prefixes),
                "t6_metric": "vader_reward_of_completion", "frequencies": freqs, "randoms": dict(randoms)}


OBJECTIVE = VaderReward()
