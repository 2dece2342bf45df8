"""`lfp finetune --model M --task T`: fine-tune the base model with TRL and prove it worked.

- lexicon_rl tasks (vader): RL on the VADER reward with GRPOTrainer (the named PPO -> GRPO deviation, see lfp.tasks.lexicon_rl.rl);
  evidence = mean VADER reward of base vs fine-tuned completions to held-out IMDB test prefixes
  (same sampling settings and seed) and the mean per-token KL(fine-tuned || base).
- hh / toxic: DPOTrainer on data/prepared/{task}/finetune.jsonl; held-out pairs are never trained
  on; evidence = preference accuracy / margin of base vs fine-tuned on held-out pairs (lfp.tasks.preference_dpo.dpo).

Writes models/finetuned/{m}-{t}/ (safetensors + tokenizer) and finetune.json. Under
`accelerate launch` every rank trains; only the main process evaluates, saves and logs to MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from lfp.tasks.preference_dpo import dpo
from lfp.core import io, paths
from lfp.tasks.lexicon_rl import rl
from lfp.core.config import Params, section_dict
from lfp.core.data import prepared_file
from lfp.core.errors import ArtifactError
from lfp.models.loading import load_model
from lfp.tasks import kind_of
from lfp.core.tracking import StageRun, stage_run

log = logging.getLogger(__name__)
STAGE = "finetune"
EVAL_BATCH = 32


def metrics_file(model: str, task: str) -> Path:
    return paths.report_dir(model, task) / "finetune.json"


def bf16_supported() -> bool:
    """bf16 only where the accelerator does it natively: on CPU it made a DPO step 4.4x slower."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _base_dir(model: str) -> Path:
    path = paths.base_model_dir(model)
    if not (path / "config.json").is_file():
        raise ArtifactError(f"{path}: base model not found (run `lfp base --model {model}` first)")
    return path


@contextlib.contextmanager
def _tracking(params: Params, model: str, task: str, section: Any, extra: dict[str, Any], tags: dict[str, Any]) -> Iterator[StageRun | None]:
    """One MLflow run on the main process; other `accelerate launch` ranks get None."""
    if not PartialState().is_main_process:
        yield None
        return
    logged = {"seed": params.seed, "model_spec": section_dict(params.spec(model)), "finetune": {task: section_dict(section)}, **extra}
    with stage_run(STAGE, experiment=params.tracking.experiment, model=model, task=task, params=logged, tags=tags) as tracker:
        yield tracker


def log_history(tracker: StageRun, history: list[dict[str, Any]]) -> None:
    """The trainer's per-step logs as MLflow curves (`train/<name>` at each step)."""
    for entry in history:
        step = int(entry.get("step", 0))
        tracker.log_metrics({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=step)


def _history_mean(history: list[dict[str, Any]], key: str, first: bool) -> float | None:
    values = [e[key] for e in history if key in e]
    if not values:
        return None
    part = values[: max(1, len(values) // 4)] if first else values[-max(1, len(values) // 4) :]
    return float(sum(part) / len(part))


def save_finetuned(trainer: Any, tokenizer: Any, model: str, task: str) -> None:
    """save_pretrained (safetensors) + tokenizer, swapped in atomically."""
    with io.atomic_dir(paths.finetuned_dir(model, task)) as out:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def base_tags(params: Params, model: str) -> dict[str, Any]:
    source = params.spec(model).source
    return {"model_source": source, "base_is_proxy": source == "tiny", "precision": "bf16" if bf16_supported() else "fp32"}


# --------------------------------------------------------------------------------------------
# lexicon_rl: GRPO on the lexicon (VADER) reward
# --------------------------------------------------------------------------------------------


def run_grpo(params: Params, model: str, task: str) -> None:
    cfg = params.finetune[task]
    base_dir = _base_dir(model)
    train_file, test_file = prepared_file(task, "train"), prepared_file(task, "test")
    train_rows = rl.long_reviews(io.read_jsonl(train_file, rl.VADER_FIELDS), cfg.min_review_chars, train_file)
    test_rows = rl.long_reviews(io.read_jsonl(test_file, rl.VADER_FIELDS), cfg.min_review_chars, test_file)
    policy, tokenizer = load_model(base_dir)
    train_prefixes = rl.make_prefixes(train_rows, tokenizer, cfg, cfg.train_prompts, params.seed)
    eval_prefixes = rl.make_prefixes(test_rows, tokenizer, cfg, cfg.eval_prompts, params.seed)
    tags = {**base_tags(params, model), "rl_algorithm": "grpo", "paper_algorithm": "ppo",
            "reward": "vader_completion_only" if cfg.reward_completion_only else "vader_prefix_plus_completion",
            "min_new_tokens_via": "generation_kwargs"}
    with _tracking(params, model, task, cfg, {}, tags) as tracker:
        with tempfile.TemporaryDirectory(prefix="lfp-grpo-") as tmp:
            args = rl.grpo_config(cfg, tmp, params.seed, PartialState().num_processes, bf16_supported())
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
        base, _ = load_model(base_dir)
        base.to(device)
        metrics = vader_evidence(finetuned, base, tokenizer, eval_prefixes, cfg, params.seed, device)
        metrics.update({
            "train_seconds": train_seconds,
            "train_prompts": len(train_prefixes),
            "optimizer_steps": int(trainer.state.global_step),
            "train_reward_first_quarter": _history_mean(history, "reward", first=True),
            "train_reward_last_quarter": _history_mean(history, "reward", first=False),
        })
        tracker.write_metrics(metrics_file(model, task), metrics)
        _warn_if_not_better(model, task, metrics)


def vader_evidence(finetuned: Any, base: Any, tokenizer: Any, prefixes: list[str], cfg: Any, seed: int, device: Any) -> dict[str, Any]:
    """Mean VADER reward of base vs fine-tuned on the same held-out prefixes and sampling seed,
    and the mean per-token KL(fine-tuned || base) on the fine-tuned completions."""
    s_base = rl.sample(base, tokenizer, prefixes, cfg, seed, device, EVAL_BATCH)
    s_ft = rl.sample(finetuned, tokenizer, prefixes, cfg, seed, device, EVAL_BATCH)
    r_base = rl.mean_reward(s_base, cfg.reward_completion_only)
    r_ft = rl.mean_reward(s_ft, cfg.reward_completion_only)
    return {
        "reward_base": r_base,
        "reward_finetuned": r_ft,
        "reward_gain": r_ft - r_base,
        "kl_to_base": rl.mean_token_kl(finetuned, base, s_ft, device, EVAL_BATCH),
        "beats_base": r_ft > r_base,
        "eval_prompts": len(prefixes),
    }


# --------------------------------------------------------------------------------------------
# preference_dpo: DPO
# --------------------------------------------------------------------------------------------


def run_dpo(params: Params, model: str, task: str) -> None:
    cfg = getattr(params.finetune, task)
    lr = params.spec(model).dpo_learning_rate or cfg.learning_rate
    base_dir = _base_dir(model)
    train_file, heldout_file = prepared_file(task, "finetune"), prepared_file(task, "heldout")
    train_all, heldout_all = dpo.load_pairs(train_file), dpo.load_pairs(heldout_file)
    policy, tokenizer = load_model(base_dir)
    train_rows, n_overlap = dpo.exclude_heldout(train_all, heldout_all)
    ordered = dpo.seeded_order(train_rows, params.seed)[: cfg.max_train_pairs or None]
    train_rows, n_cut = dpo.fit_to_context(tokenizer, ordered, cfg.max_length)
    dpo.require_pairs(train_rows, train_file, f"training pairs within max_length={cfg.max_length}")
    eval_rows, _ = dpo.fit_to_context(tokenizer, dpo.seeded_order(heldout_all, params.seed)[: cfg.eval_pairs], cfg.max_length)
    dpo.require_pairs(eval_rows, heldout_file, f"held-out pairs within max_length={cfg.max_length}")
    tags = {**base_tags(params, model), "rl_algorithm": "dpo", "paper_algorithm": "dpo"}
    tags["data_is_proxy"] = any(bool(r.get("proxy")) for r in train_all)
    with _tracking(params, model, task, cfg, {"learning_rate_effective": lr}, tags) as tracker:
        with tempfile.TemporaryDirectory(prefix="lfp-dpo-") as tmp:
            args = dpo.dpo_config(cfg, lr, tmp, params.seed, PartialState().num_processes, bf16_supported())
            start = time.perf_counter()
            trainer = dpo.train(policy, tokenizer, train_rows, args)
            train_seconds = time.perf_counter() - start
        trainer.accelerator.wait_for_everyone()
        if tracker is None:
            return
        log_history(tracker, trainer.state.log_history)
        save_finetuned(trainer, tokenizer, model, task)
        device = trainer.accelerator.device
        finetuned = trainer.accelerator.unwrap_model(trainer.model)
        base, _ = load_model(base_dir)
        base.to(device)
        metrics = dpo.preference_metrics(
            dpo.pair_log_probs(base, tokenizer, eval_rows, device, EVAL_BATCH),
            dpo.pair_log_probs(finetuned, tokenizer, eval_rows, device, EVAL_BATCH),
            cfg.beta,
        )
        metrics.update({
            "train_seconds": train_seconds,
            "train_pairs": len(train_rows),
            "train_pairs_excluded_heldout": n_overlap,
            "train_pairs_cut_to_context": n_cut,  # prompt cut from the left, replies to max_length // 2
            "train_pairs_identical_after_cut": len(ordered) - len(train_rows),
            "eval_pairs": len(eval_rows),
            "optimizer_steps": int(trainer.state.global_step),
            "learning_rate": lr,
        })
        tracker.write_metrics(metrics_file(model, task), metrics)
        _warn_if_not_better(model, task, metrics)


def _warn_if_not_better(model: str, task: str, metrics: dict[str, Any]) -> None:
    if not metrics["beats_base"]:
        log.warning("finetune@%s: the fine-tuned model does NOT beat its base on held-out data (see finetune.json)",
                    paths.run_id(model, task))


# the task kind's `finetune_method` -> its implementation
METHODS = {"grpo": run_grpo, "dpo": run_dpo}


def run(params: Params, model: str, task: str) -> None:
    METHODS[kind_of(params, task).finetune_method](params, model, task)
