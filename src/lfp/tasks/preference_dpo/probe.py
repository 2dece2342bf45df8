"""The preference tasks' probe form: logistic regression positive vs negative element, split by
source pair (lfp.measure.probes), beside the text-only bag-of-words baseline on the same split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lfp.core.params import Params


class LogisticForm:
    tags = {"probe": "logistic", "rescale": "none"}
    predicted_note = "logistic-probe decision function (log-odds of the positive element)"
    predicted_kind = "logistic_decision_function"
    words_in_rows = False

    def load_triples(self, task: str) -> Any:
        from lfp.measure.triples import load_triples

        return load_triples(task, lexicon=False)

    def rows(self, codes: dict[str, np.ndarray], triples: Any) -> Any:
        from lfp.measure.probes import probe_rows

        return probe_rows(codes, triples.groups, None, None)

    def fit_main(self, rows: Any, is_test: np.ndarray, params: Params, task: str, triples: Any, lm: Any,
                 tokenizer: Any) -> tuple[dict[str, Any], np.ndarray, None]:
        from lfp.measure.probes import bow_probe, pair_probe

        m, predicted = pair_probe(rows, is_test, params)
        pooled = {role: [text[a:b] for text, (a, b) in zip(triples.texts[role], triples.spans[role])] for role in ("positive", "negative")}
        m.update(bow_probe([t for pair in zip(pooled["positive"], pooled["negative"]) for t in pair], rows, is_test, params))
        return m, predicted, None

    def fit_control(self, rows: Any, is_test: np.ndarray, params: Params, prefix: str) -> dict[str, Any]:
        from lfp.measure.probes import pair_probe

        return pair_probe(rows, is_test, params, prefix=prefix)[0]

    def write_figures(self, folder: Path, state: None, run_id: str) -> None:
        """No per-word table or Figure 4 for pairs (Figure 5, the PCA, is every form's)."""


FORM = LogisticForm()
