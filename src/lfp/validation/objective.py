"""What a task kind supplies to validate's Table 6: its ablation objective.

Why an object: the task score that zero-ablation is judged by (VADER reward of sampled
completions, DPO implicit reward margin on held-out pairs, …) is the kind's, so validate asks
`kind.ablation()` for it instead of looking a scorer up by name. A new kind adds one module
`tasks/<kind>/ablation.py` with an object of this shape.
"""

from __future__ import annotations

from typing import Any, Protocol

from lfp.core.params import Params


class AblationObjective(Protocol):
    metric: str  # the `ablation_metric` value written to validate.json

    def beta(self, params: Params, task: str) -> float | None:
        """The DPO beta the score depends on (validate logs it as `beta`), None if none."""

    def scores(self, params: Params, model: str, task: str, lm: Any, tokenizer: Any, saes: dict, related: dict) -> dict[str, Any]:
        """Score the fine-tuned `lm` under every condition (no_hook, reconstruction, related, random{i}).

        Returns `ablation_metric`, `ablation_n`, `kl` (condition -> mean KL), `scores` (condition ->
        the paper's mean), `samples` (condition -> per-sample score for `t6_*`), `full` (optional),
        `prefix` (per-sample score no ablation can move, or None), `t6_metric`, `frequencies`
        (layer -> token frequency per feature) and `randoms` (random{i} -> zeroed features)."""
