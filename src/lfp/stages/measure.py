"""`lfp measure --model M --task T`: the validated LFP measurement, one per task kind
(`TaskKind.measure`): lexicon_rl — learned values per word with planted / shuffled / seed controls
and word-held-out probes (lfp.tasks.lexicon_rl.measure); preference_dpo — DPO's implicit reward
per held-out pair and the probes that read it (lfp.tasks.preference_dpo.measure).
"""

from __future__ import annotations

from lfp.core.params import Params
from lfp.tasks import kind_of


def run(params: Params, model: str, task: str) -> None:
    kind_of(params, task).measure(params, model, task)
