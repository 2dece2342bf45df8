"""One forward pass per run over the words' real contexts.

Why: the measure reads each run (main, seeds, planted, shuffled arms) in the same windows twice —
the learned values need the log-prob of each word in context, the probe view needs the SAE codes at
the same positions. On SmolLM2 each read cost ~270 s of a 28-min measure stage; one pass feeds
both (the LM head runs only at the scored positions, on the final states of the codes' pass). The
base model's pass also yields the raw MLP outputs the dictionary lenses need for their word profiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lfp.measure.probe_codes import element_codes_sets
from lfp.tasks.lexicon_rl.learned import scored_spans


@dataclass
class ContextReads:
    """One run's read of the context windows."""

    logprobs: np.ndarray  # per window (all of them; NaN where a window selects no token)
    codes: list[np.ndarray]  # per dictionary set, one row per window that selects a token (`ContextReader.kept`)


class ContextReader:
    """The context windows of the measure, read through any dictionary sets with their log-probs."""

    def __init__(self, windows: list[tuple[list[int], list[int]]], words: list[str], batch_size: int, pad: int) -> None:
        self.windows, self.batch_size, self.pad = windows, batch_size, pad
        self.kept = [i for i, (_, pos) in enumerate(windows) if pos]
        self.kept_windows = [windows[i] for i in self.kept]
        self.kept_words = [words[i] for i in self.kept]

    @torch.inference_mode()
    def read(self, model: Any, sae_sets: list[dict[int, Any]], desc: str) -> ContextReads:
        kept_lp = np.full(len(self.kept), np.nan)

        def score(idx: np.ndarray, hidden: torch.Tensor) -> None:
            kept_lp[idx] = scored_spans(model, hidden, [self.kept_windows[i] for i in idx])

        codes = element_codes_sets(model, sae_sets, self.kept_windows, self.batch_size, self.pad, desc, on_hidden=score)
        logprobs = np.full(len(self.windows), np.nan)
        logprobs[self.kept] = kept_lp
        return ContextReads(logprobs, codes)

    def prediction_windows(self) -> tuple[list[tuple[list[int], list[int]]], list[str]]:
        """The kept windows with each word token's position moved to the one that predicts it (p − 1:
        where the learned value's log-probs are read), the start token left out (its state carries no
        context); with the word of each window that keeps a position."""
        moved = [(ids, [p - 1 for p in pos if p > 1]) for ids, pos in self.kept_windows]
        keep = [i for i, (_, pos) in enumerate(moved) if pos]
        return [moved[i] for i in keep], [self.kept_words[i] for i in keep]

    def read_at_prediction(self, model: Any, sae_sets: list[dict[int, Any]], desc: str) -> tuple[list[np.ndarray], list[str]]:
        """Codes at the predicting positions (one row per window `prediction_windows` keeps), and those windows' words."""
        windows, words = self.prediction_windows()
        return element_codes_sets(model, sae_sets, windows, self.batch_size, self.pad, desc), words
