"""Readouts: the ways the measurement reads a feedback pattern from a fine-tuned model, held to one
set of controls by shared code.

Why objects: a readout that gets its own hand-written controls is a readout whose controls differ
from the next one's. Here a readout is anything that maps a policy (a fine-tuned model in memory) to
one number per word (`per_word`); the measure stage calls every readout on every run it has — the
measured fine-tune, the extra fine-tuning seeds, the planted run, the shuffled-reward arms — and
`readout_controls` scores each readout against the same controls:
- τ against the lexicon over all words, and within sign (the between-sign gap apart);
- the paired planted test (planted run − true-reward run, same data and seed) with its seed null;
- the shuffled-reward null over arms (is the measured run outside it? did the arms learn?).
Readouts today: the learned values (behavioural ground truth), `probe_view` (the paper's probe on
each word's codes in context, policy − base), `difference_probe` (the word-held-out probe on (policy −
base) codes through one dictionary, frozen after its fit), `logit_diff_lens`, `sae_diff_lens` and `crosscoder_diff_lens` (the
same mean activation difference through the SAEs' and the crosscoder's latents), the random-dictionary and crosscoder probes. The probes on
fine-tuned or on base codes are not readouts: each reads a model through its own SAEs, which the
control runs do not have; their control is the paired fine-tuned − base difference.
A readout that reads a *difference* from the base model (`differential = True`) is 0 on the base
model by construction; the others name their base-model value separately. A new readout is one
module here with a `per_word` method; nothing else changes.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

PerWord = dict[str, float]


class Readout(Protocol):
    """One way to read what a fine-tune learned, per word."""

    name: str  # lfp.json keys `readout_{name}_*`, lfp_words.csv column `readout_{name}`
    description: str  # one line for the report
    differential: bool  # True: a change relative to the base model (0 on the base by construction)

    def per_word(self, policy: Any) -> PerWord: ...


@dataclass
class ReadoutRuns:
    """A readout's per-word values on every run of the measure stage."""

    main: PerWord
    seeds: dict[int, PerWord] = field(default_factory=dict)  # extra fine-tuning seeds of the true reward
    planted: PerWord | None = None
    arms: list[tuple[PerWord, Mapping[str, float]]] = field(default_factory=list)  # shuffled arms: (values, their reward)


def _renamed(out: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The learned-value key names of lfp.measure.controls, moved under `readout_{name}_`."""
    renamed = {}
    for k, v in out.items():
        k2 = k.removeprefix("learned_value_")
        renamed[f"{prefix}{k2}"] = v
    return renamed


def readout_controls(name: str, runs: ReadoutRuns, lexicon: Mapping[str, float], planted: Collection[str], n_boot: int, n_perm: int,
                     seed: int, plant_controls: Collection[str] | None = None) -> dict[str, Any]:
    """Every control of one readout: the same statistics the learned values get (lfp.measure.controls),
    under `readout_{name}_`."""
    from lfp.measure.controls import planted_paired, shuffled_null, tau_keys, tau_with_ci, within_sign_metrics

    prefix = f"readout_{name}_"
    out: dict[str, Any] = {f"{prefix}n_words": len(runs.main)}
    out.update(_renamed(tau_keys("learned_value_tau", tau_with_ci(runs.main, lexicon, n_boot, seed)), prefix))
    out.update(_renamed(within_sign_metrics(runs.main, {seed: runs.main, **runs.seeds}, lexicon, n_boot, seed), prefix))
    if runs.planted is not None:
        out.update({f"{prefix}{k}": v for k, v in planted_paired(runs.planted, runs.main, runs.seeds, planted, lexicon, n_perm, seed,
                                                                         controls=plant_controls).items()})
    if runs.arms:
        out.update(_renamed(shuffled_null(runs.main, runs.arms, lexicon), prefix))
    return out


class ReadoutClock:
    """Seconds spent per readout in one measure run (lfp.json `readout_{name}_seconds`): what each
    readout adds to the stage, measured where it runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def keys(self) -> dict[str, float]:
        return {f"readout_{name}_seconds": round(v, 3) for name, v in sorted(self.seconds.items())}


def words_column(readouts: Sequence[Readout], values: Mapping[str, PerWord], word: str) -> dict[str, float]:
    """The per-word CSV cells `readout_{name}` of one word (NaN where a readout has no value)."""
    return {f"readout_{r.name}": float(values[r.name].get(word, float("nan"))) for r in readouts}
