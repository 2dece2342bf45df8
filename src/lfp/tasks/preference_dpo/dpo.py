"""DPO on preference pairs with TRL's DPOTrainer, and held-out evidence that it worked.

Evidence (on `eval_pairs` held-out pairs; log-probabilities are sums over response tokens, the
response tokenized as TRL does: prompt + response + EOS, response = tokens after the common prefix):

- preference margin of a model pi:  m_pi = beta * (log pi(chosen|x) - log pi(rejected|x))
- `reward_accuracy_{base,finetuned}` = fraction of pairs with m_pi > 0; `reward_margin_*` = mean m_pi.
  For the base model this is its own preference (its DPO implicit reward against itself is 0).
- `implicit_reward_accuracy/margin`: DPO's implicit reward with the base as reference,
  r(x, y) = beta * (log pi_ft(y|x) - log pi_base(y|x)); margin = r(chosen) - r(rejected) = m_ft - m_base
  (what TRL logs as rewards/accuracies and rewards/margins during training).
- `dpo_loss_{base,finetuned}`: the held-out DPO loss, mean of -log sigmoid(implicit margin), with
  the base as reference. It is DPO's own objective; the base model scores exactly ln 2 on it.
- `beats_base`: dpo_loss_finetuned < dpo_loss_base (the fine-tuned model is better than its base on
  its own objective, on pairs it never saw). `reward_accuracy_*` is the stricter check that the
  model's absolute preference flipped towards the preferred answer; it is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lfp.core import io
from lfp.measure import metrics
from lfp.core.sections import DpoFinetune
from lfp.core.errors import ConfigError, DataError

PAIR_FIELDS = {"id": str, "prompt": str, "chosen": str, "rejected": str}


def load_pairs(path: Path) -> list[dict[str, Any]]:
    return io.read_jsonl(path, PAIR_FIELDS)


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["prompt"], row["chosen"], row["rejected"]


def exclude_heldout(train: Sequence[dict[str, Any]], heldout: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Training pairs minus any pair whose id or (prompt, chosen, rejected) is in the held-out set."""
    ids = {r["id"] for r in heldout}
    keys = {_key(r) for r in heldout}
    kept = [r for r in train if r["id"] not in ids and _key(r) not in keys]
    return kept, len(train) - len(kept)


def seeded_order(rows: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The rows in a seeded random order (so a prefix of it is a seeded random subset)."""
    return [rows[int(i)] for i in np.random.default_rng(seed).permutation(len(rows))]


def encode(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
    """(ids of prompt + response + EOS, index of the first response token), as DPOTrainer tokenizes."""
    prompt_ids = tokenizer(text=prompt, verbose=False)["input_ids"]
    full = tokenizer(text=prompt + response + tokenizer.eos_token, verbose=False)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return full, start


def fit_to_context(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Every pair cut to fit `max_length` tokens instead of dropped (which kept only ~26 % of HH):
    each response keeps its first max_length // 2 tokens, the prompt its *last* tokens (the turn
    being answered) so that prompt + the longer response + EOS fit. Returns (pairs, how many were
    cut). A cut text is decoded from its token slice, so it re-tokenizes to (about) that slice."""
    half = max_length // 2
    out: list[dict[str, Any]] = []
    n_cut = 0
    for start in range(0, len(rows), 256):
        part = rows[start : start + 256]
        enc = {k: tokenizer(text=[r[k] for r in part], verbose=False)["input_ids"] for k in ("prompt", "chosen", "rejected")}
        for i, row in enumerate(part):
            chosen, rejected, prompt = enc["chosen"][i], enc["rejected"][i], enc["prompt"][i]
            budget = max(0, max_length - min(max(len(chosen), len(rejected)), half) - 2)
            cut = len(chosen) > half or len(rejected) > half or len(prompt) > budget
            if not cut:
                out.append(dict(row))
                continue
            fitted = {**row,
                      "prompt": tokenizer.decode(prompt[len(prompt) - budget :] if budget else []),
                      "chosen": tokenizer.decode(chosen[:half]) if len(chosen) > half else row["chosen"],
                      "rejected": tokenizer.decode(rejected[:half]) if len(rejected) > half else row["rejected"]}
            if fitted["chosen"] != fitted["rejected"]:  # replies that differ only after the cut carry no preference
                n_cut += 1
                out.append(fitted)
    return out, n_cut


def dpo_config(cfg: DpoFinetune, learning_rate: float, output_dir: str, seed: int, num_processes: int, bf16: bool) -> Any:
    """DPOConfig from params.finetune.<task>: AdamW with adam_epsilon, fp32 unless bf16 is supported.
    `batch_size` is the batch of one optimizer step over all processes (x gradient_accumulation_steps)."""
    from trl import DPOConfig

    from lfp.tasks.lexicon_rl.rl import trainer_defaults

    if cfg.batch_size % num_processes:
        raise ConfigError(f"params: 'finetune.<dpo task>.batch_size' ({cfg.batch_size}) must be divisible by the number of processes ({num_processes})")
    return DPOConfig(
        output_dir=output_dir,
        max_steps=cfg.steps,
        learning_rate=learning_rate,
        beta=cfg.beta,
        per_device_train_batch_size=cfg.batch_size // num_processes,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        optim="adamw_torch",
        adam_epsilon=cfg.adam_epsilon,
        gradient_checkpointing=False,  # TRL's default True recomputes every forward: ~25% slower, and memory is no limit here
        **trainer_defaults(seed, bf16),
    )


def train(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], args: Any) -> Any:
    """Run DPOTrainer (reference = a frozen copy of the base, loaded by TRL); returns the trainer."""
    from datasets import Dataset
    from trl import DPOTrainer

    from lfp.tasks.lexicon_rl.rl import quiet

    data = Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    quiet(trainer)
    trainer.train()
    return trainer


@torch.inference_mode()
def response_log_probs(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], device: Any, batch_size: int) -> np.ndarray:
    """Sum of log pi(response token | prefix) over the response tokens (EOS included), per pair."""
    model.eval()
    pad = tokenizer.pad_token_id
    out = []
    for start in range(0, len(prompts), batch_size):
        encoded = [encode(tokenizer, p, r) for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        resp = torch.zeros_like(ids)
        for i, (seq, first) in enumerate(encoded):
            ids[i, : len(seq)] = torch.tensor(seq)
            att[i, : len(seq)] = 1
            resp[i, first : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float().cpu()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out.append((logp * resp[:, 1:]).sum(dim=1))
    return torch.cat(out).double().numpy()


def pair_log_probs(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], device: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    prompts = [r["prompt"] for r in rows]
    chosen = response_log_probs(model, tokenizer, prompts, [r["chosen"] for r in rows], device, batch_size)
    rejected = response_log_probs(model, tokenizer, prompts, [r["rejected"] for r in rows], device, batch_size)
    return chosen, rejected


def preference_metrics(base: tuple[np.ndarray, np.ndarray], finetuned: tuple[np.ndarray, np.ndarray], beta: float) -> dict[str, Any]:
    """Accuracies and margins of base vs fine-tuned (definitions in the module docstring)."""
    m_base = beta * (base[0] - base[1])
    m_ft = beta * (finetuned[0] - finetuned[1])
    implicit = m_ft - m_base
    acc_base, acc_ft = float(np.mean(m_base > 0)), float(np.mean(m_ft > 0))
    dpo_loss = float(np.mean(np.logaddexp(0.0, -implicit)))  # -log sigmoid(x) = log(1 + e^-x)
    correct = (implicit > 0).astype(float)
    lo, hi = metrics.bootstrap_ci(lambda w: float(np.average(correct, weights=w)), np.arange(len(correct)), 1000, 0)
    return {
        "implicit_reward_accuracy_ci_low": lo,
        "implicit_reward_accuracy_ci_high": hi,
        "reward_accuracy_base": acc_base,
        "reward_accuracy_finetuned": acc_ft,
        "reward_margin_base": float(np.mean(m_base)),
        "reward_margin_finetuned": float(np.mean(m_ft)),
        "implicit_reward_accuracy": float(np.mean(implicit > 0)),
        "implicit_reward_margin": float(np.mean(implicit)),
        "dpo_loss_base": float(np.log(2.0)),
        "dpo_loss_finetuned": dpo_loss,
        "beats_base": dpo_loss < float(np.log(2.0)),
    }


def require_pairs(rows: Sequence[dict[str, Any]], source: Path, what: str) -> None:
    if not rows:
        raise DataError(f"{source}: no {what} left (check finetune.<task>.max_length and the prepared data)")
