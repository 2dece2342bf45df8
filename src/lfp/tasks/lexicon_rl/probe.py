"""The lexicon tasks' probe form: ridge from SAE codes to the signed activation delta, rescaled
to the lexicon's −4..4 scale and scored per substituted word by Kendall τ (lfp.measure.probes),
plus Figure 4's generation counts (how often the fine-tuned model generates each word)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lfp.core.params import Params


@dataclass
class WordFigures:
    """What Figure 4 and probe_words.csv need of the fine-tuned probe."""

    table: Any  # lfp.measure.metrics.WordTable of the held-out words
    generated: np.ndarray  # times the fine-tuned model generated each table word
    err_tau: float


class RidgeForm:
    tags = {"probe": "ridge", "rescale": "percentile"}
    predicted_note = "ridge prediction on the VADER -4..4 scale (10th/90th-percentile rescaling, clamped)"
    predicted_kind = "rescaled_delta"
    words_in_rows = True

    def load_triples(self, task: str) -> Any:
        from lfp.measure.triples import load_triples

        return load_triples(task, lexicon=True)

    def rows(self, codes: dict[str, np.ndarray], triples: Any) -> Any:
        from lfp.measure.probes import probe_rows

        return probe_rows(codes, triples.groups, triples.words, triples.values)

    def fit_main(self, rows: Any, is_test: np.ndarray, params: Params, task: str, triples: Any, lm: Any,
                 tokenizer: Any) -> tuple[dict[str, Any], np.ndarray, WordFigures]:
        from lfp.measure import metrics
        from lfp.measure.probes import vader_probe
        from lfp.tasks.lexicon_rl.generation import generated_word_counts

        m, predicted, ev = vader_probe(rows, is_test, params)
        counts = generated_word_counts(lm, tokenizer, params, task)
        generated = np.array([counts.get(w.lower(), 0) for w in ev.table.words])
        err_tau, err_p = metrics.kendall(generated, np.abs(ev.table.predicted - ev.table.true_value))
        m.update({"error_frequency_kendall_tau": err_tau, "error_frequency_kendall_p": err_p})
        return m, predicted, WordFigures(ev.table, generated, err_tau)

    def fit_control(self, rows: Any, is_test: np.ndarray, params: Params, prefix: str) -> dict[str, Any]:
        from lfp.measure.probes import vader_probe

        return vader_probe(rows, is_test, params, prefix=prefix)[0]

    def write_figures(self, folder: Path, state: WordFigures, run_id: str) -> None:
        from lfp.report.figures import plot_error_vs_frequency, write_word_csv

        write_word_csv(folder / "probe_words.csv", state.table, state.generated)
        plot_error_vs_frequency(folder / "fig4_error_vs_frequency.png", state.table, state.generated,
                                f"{run_id}: τ(times generated, |error|) = "
                                + (f"{state.err_tau:.3f}" if np.isfinite(state.err_tau) else "undefined (constant counts)"))


FORM = RidgeForm()
