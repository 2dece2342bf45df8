"""Kind `preference_dpo`'s ablation objective (Table 6): the DPO implicit reward margin of the
fine-tuned model against the base model on held-out pairs, under each condition (no hook, SAE
reconstruction, related features zeroed, frequency-matched random features zeroed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lfp.core import io, paths
from lfp.core.data import prepared_file
from lfp.core.params import Params
from lfp.models.tokens import keep_last, leading_special_ids, with_lead
from lfp.validation import ablation


def encode_pair_side(tokenizer: Any, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """(prompt + response ids, index of the first response token); the prompt is cut from the left
    (keeping a leading `<bos>`)."""
    lead = leading_special_ids(tokenizer)
    p = with_lead(tokenizer, prompt, lead)
    r = tokenizer(response, add_special_tokens=False, verbose=False)["input_ids"][: max_length - 1 - len(lead)]
    p = keep_last(p, max_length - len(r), lead)
    if not p:  # the first response token needs a context
        p = [tokenizer.eos_token_id]
        r = r[: max_length - 1]
    return p + r, len(p)


def response_logprobs(model: Any, sequences: list[tuple[list[int], int]], batch_size: int, pad_id: int) -> np.ndarray:
    """Sum of log p(response tokens | prompt) per (ids, first response index) (padding masked out)."""
    logps, _ = ablation.condition_scores(model, {}, [("model", None)], [seq for seq, _ in sequences], batch_size, pad_id,
                                         response_starts=[first for _, first in sequences], kl=False)
    return logps["model"]


def pair_sequences(tokenizer: Any, pairs: Sequence[Mapping[str, str]], max_length: int) -> tuple[list, list]:
    chosen = [encode_pair_side(tokenizer, p["prompt"], p["chosen"], max_length) for p in pairs]
    rejected = [encode_pair_side(tokenizer, p["prompt"], p["rejected"], max_length) for p in pairs]
    return chosen, rejected


def dpo_margins(
    policy_chosen: np.ndarray, policy_rejected: np.ndarray, base_chosen: np.ndarray, base_rejected: np.ndarray, beta: float
) -> np.ndarray:
    """beta * [(log pi(c) - log pi_base(c)) - (log pi(r) - log pi_base(r))] per pair."""
    return beta * ((policy_chosen - base_chosen) - (policy_rejected - base_rejected))


class DpoMargin:
    """`ablation_metric: dpo_implicit_reward_margin`, with the task's DPO beta."""

    metric = "dpo_implicit_reward_margin"

    def beta(self, params: Params, task: str) -> float | None:
        """The DPO beta of the margin (logged as `beta`)."""
        return params.finetune[task].beta

    def scores(self, params: Params, model: str, task: str, lm: Any, tokenizer: Any, saes: dict, related: dict) -> dict[str, Any]:
        from lfp.models.loading import load_model

        cfg = params.validate
        beta = params.finetune[task].beta
        fields = {"prompt": str, "chosen": str, "rejected": str}
        pairs = io.read_jsonl(prepared_file(task, "heldout"), fields)[: cfg.max_pairs]
        chosen, rejected = pair_sequences(tokenizer, pairs, cfg.max_length)
        pad = tokenizer.pad_token_id
        base, _ = load_model(paths.base_model_dir(model))
        base.to(next(lm.parameters()).device)
        base_c = response_logprobs(base, chosen, cfg.batch_size, pad)
        base_r = response_logprobs(base, rejected, cfg.batch_size, pad)
        del base
        freqs = ablation.token_frequencies(lm, saes, [seq for seq, _ in chosen + rejected], cfg.batch_size, pad)
        randoms = ablation.random_conditions(related, freqs, cfg.random_controls, params.seed, cfg.random_match_pool)
        conds = [("no_hook", None), ("reconstruction", {}), ("related", related), *randoms]
        # chosen: log-probs and the KL check in one pass per condition; rejected: log-probs only
        pol_c, kls = ablation.condition_scores(lm, saes, conds, [seq for seq, _ in chosen], cfg.batch_size, pad,
                                               response_starts=[first for _, first in chosen])
        pol_r, _ = ablation.condition_scores(lm, saes, conds, [seq for seq, _ in rejected], cfg.batch_size, pad,
                                             response_starts=[first for _, first in rejected], kl=False)
        margins = {name: dpo_margins(pol_c[name], pol_r[name], base_c, base_r, beta) for name, _ in conds}
        return {"ablation_metric": "dpo_implicit_reward_margin", "ablation_n": len(pairs), "kl": kls,
                "scores": {name: float(v.mean()) for name, v in margins.items()}, "samples": margins, "prefix": None,
                "t6_metric": "dpo_implicit_reward_margin", "frequencies": freqs, "randoms": dict(randoms)}


OBJECTIVE = DpoMargin()
