"""preference_dpo fine-tuning: DPOTrainer on data/prepared/{task}/finetune.jsonl; held-out pairs are
never trained on; evidence = preference accuracy / margin of base vs fine-tuned on held-out pairs
(lfp.tasks.preference_dpo.dpo).
"""

from __future__ import annotations

import tempfile
import time

from accelerate import PartialState

from lfp.core.params import Params
from lfp.core.data import prepared_file
from lfp.models.loading import load_model
from lfp.tasks.finetuning import (EVAL_BATCH, base_dir, base_tags, log_history, metrics_file, precision_tags, save_finetuned,
                                  tracking, use_bf16, warn_if_not_better)
from lfp.tasks.preference_dpo import dpo


def finetune(params: Params, model: str, task: str) -> None:
    cfg = getattr(params.finetune, task)
    lr = params.spec(model).dpo_learning_rate or cfg.learning_rate
    base_path = base_dir(model)
    train_file, heldout_file = prepared_file(task, "finetune"), prepared_file(task, "heldout")
    train_all, heldout_all = dpo.load_pairs(train_file), dpo.load_pairs(heldout_file)
    policy, tokenizer = load_model(base_path)
    train_rows, n_overlap = dpo.exclude_heldout(train_all, heldout_all)
    ordered = dpo.seeded_order(train_rows, params.seed)[: cfg.max_train_pairs or None]
    train_rows, n_cut = dpo.fit_to_context(tokenizer, ordered, cfg.max_length)
    dpo.require_pairs(train_rows, train_file, f"training pairs within max_length={cfg.max_length}")
    eval_rows, _ = dpo.fit_to_context(tokenizer, dpo.seeded_order(heldout_all, params.seed)[: cfg.eval_pairs], cfg.max_length)
    dpo.require_pairs(eval_rows, heldout_file, f"held-out pairs within max_length={cfg.max_length}")
    bf16 = use_bf16(cfg.precision, policy)
    tags = {**base_tags(params, model), **precision_tags(bf16, cfg.precision, policy),
            "rl_algorithm": "dpo", "paper_algorithm": "dpo"}
    tags["data_is_proxy"] = any(bool(r.get("proxy")) for r in train_all)
    with tracking(params, model, task, cfg, {"learning_rate_effective": lr}, tags) as tracker:
        with tempfile.TemporaryDirectory(prefix="lfp-dpo-") as tmp:
            args = dpo.dpo_config(cfg, lr, tmp, params.seed, PartialState().num_processes, bf16)
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
        base, _ = load_model(base_path)
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
        warn_if_not_better(model, task, metrics)
