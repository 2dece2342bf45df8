"""RL on the VADER reward with TRL's GRPOTrainer, and the evidence that it worked.

Why GRPO: TRL >= 1.13 has no PPOTrainer. GRPO keeps PPO's clipped surrogate (`epsilon`) and a KL
penalty to the base model (`beta`) but replaces the value head with a group baseline: each prompt
gets `num_generations` completions and their mean reward is the baseline. The paper's PPO knobs map
as follows (see `grpo_config`):

- batch_size (prompt-completions per PPO step)  -> generation_batch_size
- mini_batch_size                               -> per-device train batch (one optimizer step each)
- ppo_epochs                                    -> num_iterations (passes over each batch)
- KL coef 0.5, max grad norm 1, lr, clip 0.2    -> beta, max_grad_norm, learning_rate, epsilon

TRL's GRPOConfig has no minimum completion length; `min_new_tokens` goes to
`generation_kwargs`, which GRPOTrainer merges into its transformers `GenerationConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lfp.tasks.lexicon_rl import reward
from lfp.core.sections import GrpoFinetune
from lfp.core.errors import ConfigError, DataError

VADER_FIELDS = {"id": str, "text": str}


@dataclass(frozen=True)
class Samples:
    """Completions sampled for a list of prefixes (one row per prefix)."""

    prefixes: list[str]
    completions: list[str]
    sequences: torch.Tensor  # [n, prompt_len + new] left-padded prompt + completion ids
    attention_mask: torch.Tensor  # [n, prompt_len + new]
    completion_mask: torch.Tensor  # [n, new]: completion tokens up to and including the first EOS
    prompt_len: int


def long_reviews(rows: Sequence[dict[str, Any]], min_chars: int, source: Path) -> list[dict[str, Any]]:
    """Reviews longer than `min_chars` (the paper's prompt pool); none left is a data error."""
    kept = [r for r in rows if len(r["text"]) > min_chars]
    if not kept:
        raise DataError(f"{source}: no review longer than finetune.vader.min_review_chars={min_chars} characters")
    return kept


def make_prefixes(rows: Sequence[dict[str, Any]], tokenizer: Any, cfg: GrpoFinetune, n: int, seed: int) -> list[str]:
    """Cut `n` seeded-random reviews to their first k tokens, k ~ U[prefix_min, prefix_max] (seeded)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))[: min(n, len(rows))]
    lengths = rng.integers(cfg.prefix_min_tokens, cfg.prefix_max_tokens + 1, size=len(order))
    prefixes = []
    for idx, k in zip(order, lengths):
        ids = tokenizer(rows[int(idx)]["text"], add_special_tokens=False, verbose=False)["input_ids"][: int(k)]
        prefixes.append(tokenizer.decode(ids))
    return prefixes


def reward_texts(prefixes: Sequence[str], completions: Sequence[str], completion_only: bool) -> list[str]:
    """The text the reward scores: prefix + completion (paper eq. 3) or the completion alone."""
    if completion_only:
        return list(completions)
    return [p + c for p, c in zip(prefixes, completions, strict=True)]


def make_reward_fn(completion_only: bool, lex: Mapping[str, float] | None = None) -> Callable[..., list[float]]:
    """The Python reward GRPOTrainer calls: `lfp.tasks.lexicon_rl.reward.vader_reward` on the scored text (with
    `lex` in place of the VADER lexicon for the planted / shuffled controls)."""

    def vader_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return reward.vader_reward(reward_texts(prompts, completions, completion_only), lex)

    return vader_reward


def quiet(trainer: Any) -> None:
    """No per-step log dicts on stdout: with tqdm off, transformers prints every log through its
    PrinterCallback; the same numbers go to MLflow as `train/*` curves (`log_history`)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def trainer_defaults(seed: int, bf16: bool) -> dict[str, Any]:
    """TrainingArguments shared by the GRPO and DPO set-ups: fp32 or bf16 autocast
    (lfp.tasks.finetuning.use_bf16), seeded, no checkpoints, our own MLflow logging only
    (TRL would open a second run), in-process data loading."""
    from lfp.tasks.finetuning import on_cpu

    return {
        "bf16": bf16,
        "use_cpu": bf16 and on_cpu(),  # transformers refuses bf16 on a CPU unless told it is one
        "fp16": False,
        "seed": seed,
        "data_seed": seed,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def grpo_config(cfg: GrpoFinetune, output_dir: str, seed: int, num_processes: int, bf16: bool) -> Any:
    """Map the paper's PPO hyper-parameters onto TRL's GRPOConfig (module docstring)."""
    from trl import GRPOConfig

    if cfg.mini_batch_size % num_processes:
        raise ConfigError(f"params: 'finetune.vader.mini_batch_size' ({cfg.mini_batch_size}) must be divisible by the number of processes ({num_processes})")
    steps_per_generation = cfg.batch_size // cfg.mini_batch_size
    return GRPOConfig(
        output_dir=output_dir,
        max_steps=cfg.steps * steps_per_generation * cfg.ppo_epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",  # TRL's PPOTrainer, which the paper used, had no schedule
        beta=cfg.beta,
        epsilon=cfg.clip_epsilon,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.mini_batch_size // num_processes,
        steps_per_generation=steps_per_generation,
        num_iterations=cfg.ppo_epochs,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        generation_kwargs={"min_new_tokens": cfg.min_new_tokens},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        loss_type="dapo",  # token-level mean over the batch, like PPO's masked mean
        gradient_checkpointing=False,
        **trainer_defaults(seed, bf16),
    )


def train(model: Any, tokenizer: Any, prefixes: list[str], cfg: GrpoFinetune, args: Any,
          lex: Mapping[str, float] | None = None) -> Any:
    """Run GRPO on the prefixes; returns the trainer (its model is the fine-tuned policy)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=make_reward_fn(cfg.reward_completion_only, lex),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prefixes}),
        processing_class=tokenizer,
    )
    quiet(trainer)
    trainer.train()
    return trainer


def finetune_policy(base_dir: Any, train_rows: Sequence[dict[str, Any]], cfg: GrpoFinetune, seed: int,
                    lex: Mapping[str, float] | None = None) -> tuple[Any, Any]:
    """A GRPO fine-tune of the base model with `seed` (and `lex` as the reward's lexicon), as the
    finetune stage trains it (same precision), but kept in memory: the measure stage's seeds and controls."""
    import tempfile

    import transformers
    from accelerate import PartialState

    from lfp.models.loading import load_model
    from lfp.tasks.finetuning import use_bf16

    transformers.set_seed(seed)
    policy, tokenizer = load_model(base_dir)
    prefixes = make_prefixes(train_rows, tokenizer, cfg, cfg.train_prompts, seed)
    bf16 = use_bf16(cfg.precision, policy)
    with tempfile.TemporaryDirectory(prefix="lfp-grpo-control-") as tmp:
        trainer = train(policy, tokenizer, prefixes, cfg, grpo_config(cfg, tmp, seed, PartialState().num_processes, bf16), lex)
    return trainer.accelerator.unwrap_model(trainer.model).eval(), tokenizer


def _completion_mask(new_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 for completion tokens up to and including the first EOS, 0 after it (padding)."""
    is_eos = new_ids == eos_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, as generate() uses them."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


@torch.inference_mode()
def sample(model: Any, tokenizer: Any, prefixes: list[str], cfg: GrpoFinetune, seed: int, device: Any, batch_size: int) -> Samples:
    """Sample one completion per prefix with the training sampling settings (top_k=0, top_p=1, T=1).

    The generator is re-seeded with `seed` first, so two models see the same random stream.
    """
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(prefixes, return_tensors="pt", padding=True)  # as GRPOTrainer tokenizes prompts
    finally:
        tokenizer.padding_side = side
    torch.manual_seed(seed)
    model.eval()
    seqs, masks = [], []
    for start in range(0, len(prefixes), batch_size):
        ids = enc["input_ids"][start : start + batch_size].to(device)
        att = enc["attention_mask"][start : start + batch_size].to(device)
        out = model.generate(
            input_ids=ids, attention_mask=att, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
            min_new_tokens=cfg.min_new_tokens, max_new_tokens=cfg.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        out = torch.nn.functional.pad(out, (0, ids.shape[1] + cfg.max_new_tokens - out.shape[1]), value=tokenizer.pad_token_id)
        seqs.append(out.cpu())
        masks.append(att.cpu())
    sequences = torch.cat(seqs)
    prompt_len = enc["input_ids"].shape[1]
    new_ids = sequences[:, prompt_len:]
    completion_mask = _completion_mask(new_ids, tokenizer.eos_token_id)
    attention_mask = torch.cat([torch.cat(masks), completion_mask], dim=1)
    completions = [tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(new_ids, completion_mask)]
    return Samples(prefixes, completions, sequences, attention_mask, completion_mask, prompt_len)


def mean_reward(samples: Samples, completion_only: bool) -> float:
    return float(np.mean(sample_rewards(samples, completion_only)))


def sample_rewards(samples: Samples, completion_only: bool, lex: Mapping[str, float] | None = None) -> np.ndarray:
    """One reward per sampled completion, under `lex` (the VADER lexicon when None)."""
    return np.asarray(reward.vader_reward(reward_texts(samples.prefixes, samples.completions, completion_only), lex), dtype=float)


def reward_gain(base_rewards: np.ndarray, finetuned_rewards: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """Held-out evidence that a fine-tune learned a reward: mean reward of its completions minus the
    base model's on the same prompts (same sampling seed), with a paired bootstrap CI over prompts.
    A control must show this before its detection means anything."""
    from lfp.measure.metrics import bootstrap_ci

    d = np.asarray(finetuned_rewards, dtype=float) - np.asarray(base_rewards, dtype=float)
    lo, hi = bootstrap_ci(lambda w: float(np.sum(w * d) / np.sum(w)), np.arange(len(d)), n_boot, seed)
    return {"reward_base": float(np.mean(base_rewards)), "reward_finetuned": float(np.mean(finetuned_rewards)),
            "reward_gain": float(d.mean()), "reward_gain_ci_low": lo, "reward_gain_ci_high": hi,
            "reward_learned": bool(np.isfinite(lo) and lo > 0)}


@torch.inference_mode()
def completion_log_probs(model: Any, samples: Samples, device: Any, batch_size: int) -> list[torch.Tensor]:
    """Per-batch log-softmax over the vocabulary at each completion position: [b, new, vocab]."""
    model.eval()
    out = []
    for start in range(0, len(samples.prefixes), batch_size):
        seq = samples.sequences[start : start + batch_size].to(device)
        att = samples.attention_mask[start : start + batch_size].to(device)
        logits = model(input_ids=seq, attention_mask=att, position_ids=_position_ids(att)).logits
        # logits at position t predict token t+1: the completion starts at prompt_len
        out.append(torch.log_softmax(logits[:, samples.prompt_len - 1 : -1].float(), dim=-1).cpu())
    return out


def mean_token_kl(finetuned: Any, base: Any, samples: Samples, device: Any, batch_size: int) -> float:
    """Mean over completion tokens of the exact KL(finetuned || base) of the next-token distributions,
    on completions sampled from the fine-tuned model."""
    total, count = 0.0, 0
    ft_lp = completion_log_probs(finetuned, samples, device, batch_size)
    base_lp = completion_log_probs(base, samples, device, batch_size)
    for i, (lp_ft, lp_base) in enumerate(zip(ft_lp, base_lp)):
        mask = samples.completion_mask[i * batch_size : i * batch_size + lp_ft.shape[0]].float()
        kl = (lp_ft.exp() * (lp_ft - lp_base)).sum(dim=-1)
        total += float((kl * mask).sum())
        count += int(mask.sum())
    return total / max(count, 1)
