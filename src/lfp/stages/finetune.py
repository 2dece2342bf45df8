"""`lfp finetune --model M --task T`: fine-tune the base model with TRL and prove it worked.

The task's kind trains (`TaskKind.finetune`): lexicon_rl — GRPO on the lexicon reward
(lfp.tasks.lexicon_rl.finetune); preference_dpo — DPO on the fine-tuning pairs
(lfp.tasks.preference_dpo.finetune). Shared pieces (tracking, saving, tags): lfp.tasks.finetuning.

Writes models/finetuned/{m}-{t}/ (safetensors + tokenizer) and finetune.json. Under
`accelerate launch` every rank trains; only the main process evaluates, saves and logs to MLflow.
"""

from __future__ import annotations

from lfp.core.params import Params
from lfp.tasks import kind_of


def run(params: Params, model: str, task: str) -> None:
    kind_of(params, task).finetune(params, model, task)
