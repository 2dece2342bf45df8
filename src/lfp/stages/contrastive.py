"""`lfp contrastive --task T`: (positive, neutral, negative) triples for the probe (paper §3.3).

The task's kind builds them (`TaskKind.contrastive_triples`): lexicon_rl — lexicon-word
substitutions in IMDB test sentences (lfp.tasks.lexicon_rl.contrastive); preference_dpo — held-out
pairs through the configured backend (lfp.tasks.preference_dpo.contrastive). The stage logs the
backend, warns when it is a proxy for the paper's LLM rewrites, and writes the file.
"""

from __future__ import annotations

import logging
from typing import Any

from lfp.core import io, paths
from lfp.core.params import Params, section_dict
from lfp.core.errors import ConfigError
from lfp.core.tracking import stage_run
from lfp.tasks import kind_of

log = logging.getLogger(__name__)


def run(params: Params, model: str | None = None, task: str | None = None) -> None:
    """Write `data/contrastive/{task}.jsonl`; counts go to MLflow (no DVC metrics file)."""
    if task is None:
        raise ConfigError("contrastive: --task is required")
    kind = kind_of(params, task)
    backend = kind.contrastive_backend(params, task)
    proxy = bool(backend.proxy_note)
    logged: dict[str, Any] = {"seed": params.seed, "contrastive": {task: section_dict(getattr(params.contrastive, task))}}
    if backend.uses_llm:
        logged["llm"] = section_dict(params.llm)
    if proxy:
        log.warning("contrastive %s: %s backend = %s, a proxy for the paper's LLM rewrites", task, backend.name, backend.proxy_note)
    with stage_run("contrastive", experiment=params.tracking.experiment, task=task, params=logged,
                   tags={"contrastive_backend": backend.name, "proxy": proxy}) as tracker:
        triples, stats = kind.contrastive_triples(params, task)
        io.write_jsonl(paths.contrastive_file(task), triples)
        tracker.log_metrics(stats)
