"""The word-held-out difference probe as a readout: what the measurement's best probe reads from any run.

The probe is the measure's `probe_tau_word_heldout_difference`: ridge, fitted on the training words'
rows of (fine-tuned − base) SAE codes of the contrastive rows through ONE dictionary (the fine-tuned
model's), per-layer normalised with the training rows' scales. As a readout it is frozen after that
fit and applied to every run the measure trains: (run − base) codes of the same rows through the same
dictionary, predictions averaged per held-out word. Why it is the probe that can be a readout: the
probes on fine-tuned or base codes read each model through its own SAEs, and the control runs have
none; one dictionary applied to every run needs no new SAE. On the measured run it reproduces the
difference probe's held-out predictions exactly (same rows, scales and fit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lfp.readouts import PerWord


class DifferenceProbe:
    name = "difference_probe"
    description = "word-held-out ridge probe on (policy − base) SAE codes of the contrastive rows, one dictionary"
    differential = True

    def __init__(self, diff_codes: np.ndarray, target: np.ndarray, words: np.ndarray, is_test: np.ndarray,
                 offsets: list[int], widths: list[int], alpha: float, base_codes: np.ndarray,
                 codes_of: Callable[[Any], np.ndarray] | None = None, name: str | None = None, description: str | None = None):
        from sklearn.linear_model import Ridge

        from lfp.tasks.lexicon_rl.word_probes import layer_scales

        self.name, self.description = name or self.name, description or self.description  # the recipe through another dictionary
        self.is_test, self.test_words = is_test, [str(w) for w in words[is_test]]
        self.base_codes, self.codes_of = base_codes, codes_of
        train = ~is_test
        self.scales = layer_scales(np.asarray(diff_codes, dtype=np.float64)[train], offsets, widths)
        self.ridge = Ridge(alpha=alpha).fit((diff_codes / self.scales)[train], np.asarray(target, dtype=float)[train])

    def from_difference(self, diff_codes: np.ndarray) -> PerWord:
        """Mean prediction per held-out word from one run's (run − base) codes of the probe's rows."""
        from lfp.tasks.lexicon_rl.word_probes import word_means

        return word_means(self.test_words, self.ridge.predict((np.asarray(diff_codes, dtype=np.float64) / self.scales)[self.is_test]))

    def per_word(self, policy: Any) -> PerWord:
        """`codes_of(policy)`: its codes of the probe's rows through the dictionary (the measure, which
        keeps the control runs' codes for their own probes, calls `from_difference` itself)."""
        if self.codes_of is None:
            raise ValueError("DifferenceProbe.per_word needs `codes_of`; call from_difference with a run's codes")
        return self.from_difference(self.codes_of(policy) - self.base_codes)
