"""lexicon_rl fine-tuning: GRPO on the lexicon (VADER) reward (the named PPO -> GRPO deviation, see
lfp.tasks.lexicon_rl.rl). Evidence = mean VADER reward of base vs fine-tuned completions to held-out
IMDB test prefixes (same sampling settings and seed) and the mean per-token KL(fine-tuned || base).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from accelerate import PartialState

from lfp.core import io
from lfp.core.params import Params
from lfp.core.data import prepared_file
from lfp.models.loading import load_model
from lfp.tasks.finetuning import (EVAL_BATCH, base_dir, base_tags, history_mean, log_history, metrics_file, precision_tags,
                                  save_finetuned, tracking, use_bf16, warn_if_not_better)
from lfp.tasks.lexicon_rl import rl

REWARD_BOOTSTRAP = 2000  # resamples of prompts for the held-out reward gain's CI

def finetune(params: Params, model: str, task: str) -> None:
    cfg = params.finetune[task]
    base_path = base_dir(model)
    train_file, test_file = prepared_file(task, "train"), prepared_file(task, "test")
    train_rows = rl.long_reviews(io.read_jsonl(train_file, rl.VADER_FIELDS), cfg.min_review_chars, train_file)
    test_rows = rl.long_reviews(io.read_jsonl(test_file, rl.VADER_FIELDS), cfg.min_review_chars, test_file)
    policy, tokenizer = load_model(base_path)
    train_prefixes = rl.make_prefixes(train_rows, tokenizer, cfg, cfg.train_prompts, params.seed)
    eval_prefixes = rl.make_prefixes(test_rows, tokenizer, cfg, cfg.eval_prompts, params.seed)
    bf16 = use_bf16(cfg.precision, policy)
    tags = {**base_tags(params, model), **precision_tags(bf16, cfg.precision, policy),
            "rl_algorithm": "grpo", "paper_algorithm": "ppo",
            "reward": "vader_completion_only" if cfg.reward_completion_only else "vader_prefix_plus_completion",
            "min_new_tokens_via": "generation_kwargs"}
    with tracking(params, model, task, cfg, {}, tags) as tracker:
        with tempfile.TemporaryDirectory(prefix="lfp-grpo-") as tmp:
            args = rl.grpo_config(cfg, tmp, params.seed, PartialState().num_processes, bf16)
            start = time.perf_counter()
            trainer = rl.train(policy, tokenizer, train_prefixes, cfg, args)
            train_seconds = time.perf_counter() - start
        trainer.accelerator.wait_for_everyone()
        if tracker is None:
            return
        history = trainer.state.log_history
        log_history(tracker, history)
        save_finetuned(trainer, tokenizer, model, task)
        device = trainer.accelerator.device
        finetuned = trainer.accelerator.unwrap_model(trainer.model)
        base, _ = load_model(base_path)
        base.to(device)
        metrics = vader_evidence(finetuned, base, tokenizer, eval_prefixes, cfg, params.seed, device)
        metrics.update({
            "train_seconds": train_seconds,
            "train_prompts": len(train_prefixes),
            "optimizer_steps": int(trainer.state.global_step),
            "train_reward_first_quarter": history_mean(history, "reward", first=True),
            "train_reward_last_quarter": history_mean(history, "reward", first=False),
        })
        tracker.write_metrics(metrics_file(model, task), metrics)
        warn_if_not_better(model, task, metrics)


def vader_evidence(finetuned: Any, base: Any, tokenizer: Any, prefixes: list[str], cfg: Any, seed: int, device: Any) -> dict[str, Any]:
    """Mean VADER reward of base vs fine-tuned on the same held-out prefixes and sampling seed (the
    gain with a paired bootstrap CI over prompts), and the mean per-token KL(fine-tuned || base)
    on the fine-tuned completions."""
    s_base = rl.sample(base, tokenizer, prefixes, cfg, seed, device, EVAL_BATCH)
    s_ft = rl.sample(finetuned, tokenizer, prefixes, cfg, seed, device, EVAL_BATCH)
    gain = rl.reward_gain(rl.sample_rewards(s_base, cfg.reward_completion_only), rl.sample_rewards(s_ft, cfg.reward_completion_only),
                          REWARD_BOOTSTRAP, seed)
    return {
        **gain,
        "kl_to_base": rl.mean_token_kl(finetuned, base, s_ft, device, EVAL_BATCH),
        "beats_base": gain["reward_finetuned"] > gain["reward_base"],
        "eval_prompts": len(prefixes),
    }

