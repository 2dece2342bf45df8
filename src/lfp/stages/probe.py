"""`lfp probe --model M --task T`: activation deltas on contrastive triples, probes and the paper's
LFP-accuracy metrics (§3.3, §4.1: Tables 3, 4, 5, 10; Figures 4, 5), with the controls the paper
lacks. The jobs live in the core: triples (lfp.measure.triples), SAE codes (lfp.measure.probe_codes), probes and
scores (lfp.measure.probes), figures (lfp.report.figures); the probe's form (ridge on the signed delta
or logistic positive vs negative, with its own controls and figures) is the task kind's `probe_form`.

Base-model control: the same triples, deltas and probe read through the *base* model and the SAEs
trained on its own activations (models/sae/{m}-{t}/base/, a DVC output of `sae --source base`):
does fine-tuning create the pattern? Nothing is trained here but the probes.

Caveat of the paper's design, kept visible rather than fixed: a target's sign is set by construction
(which element a word was substituted into), and words recur across triples, so a probe that only
recognises word identity already gets signs — and much of τ — right for words seen in training.
The base-model control measures how much of τ that explains; τ on negative words only (Table 10)
is free of the sign effect.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from lfp.core import io, paths
from lfp.core.errors import ArtifactError
from lfp.core.layers import chosen_layers
from lfp.core.params import Params, section_dict
from lfp.core.stage_context import StageContext, open_stage
from lfp.measure.probe_codes import codes_for
from lfp.measure.probes import ProbeRows, split_by_group
from lfp.measure.triples import Triples
from lfp.report.figures import plot_pca
from lfp.sae import load_sae
from lfp.tasks import ProbeForm, kind_of

log = logging.getLogger(__name__)


def source_rows(stage: StageContext, params: Params, model: str, task: str, source: str, layers: list[int],
                triples: Triples, form: ProbeForm) -> tuple[ProbeRows, dict[int, Any], Any, Any]:
    """Probe rows of one source (base or fine-tuned model, each through its own small SAEs)."""
    saes = {L: load_sae(paths.sae_path(model, task, L, min(params.sae.ratios), source)).to(stage.device).eval() for L in layers}
    lm, tok = stage.load(paths.model_dir(model, task, source))
    codes = codes_for(lm, tok, saes, triples, params.probe, "fine-tuned" if source == "finetuned" else source)
    rows = form.rows(codes, triples)
    return rows, saes, lm, tok


def write_probe_inputs(model: str, task: str, form: ProbeForm, layers: list[int], widths: list[int], rows: ProbeRows, predicted: np.ndarray, is_test: np.ndarray, base_rows: ProbeRows | None = None) -> None:
    """The validate stage's inputs (docs/artifacts.md): codes, signed delta, probe output, split."""
    with io.atomic_dir(paths.probe_data_dir(model, task)) as out:
        io.save_tensors(out / "inputs.safetensors", {
            "codes": torch.from_numpy(rows.codes),
            "target": torch.from_numpy(rows.target.astype(np.float32)),
            "predicted": torch.from_numpy(np.asarray(predicted, dtype=np.float32)),
            "is_test": torch.from_numpy(is_test.astype(np.uint8)),
            **({"base_codes": torch.from_numpy(base_rows.codes),
                "base_target": torch.from_numpy(base_rows.target.astype(np.float32))} if base_rows is not None else {}),
        })
        io.write_json(out / "inputs.json", {
            "layers": layers,
            "offsets": [int(x) for x in np.cumsum([0, *widths[:-1]])],
            "widths": widths,
            "rows": "positive then negative element of each contrastive triple, in file order",
            "words": [str(w) for w in rows.words],  # lexicon tasks: the substituted word of each row
            "base": "base_codes / base_target: the same rows through the base model and its own SAEs"
            if base_rows is not None else "no base-model control (probe.base_control: false)",
            "predicted": form.predicted_note,
        })


def run(params: Params, model: str, task: str) -> None:
    cfg = params.probe
    form = kind_of(params, task).probe_form
    triples = form.load_triples(task)
    layers = chosen_layers(model, task)
    for source in ("finetuned", "base") if cfg.base_control else ("finetuned",):  # fail before any forward pass
        for layer in layers:
            if not paths.sae_path(model, task, layer, min(params.sae.ratios), source).is_dir():
                raise ArtifactError(f"{paths.sae_path(model, task, layer, min(params.sae.ratios), source)}: missing "
                                    f"(run `lfp sae --model {model} --task {task} --source {source}`)")
    section = {"seed": params.seed, "probe": section_dict(cfg)}
    tags = {**form.tags, "base_control": cfg.base_control, "contrastive_proxy": triples.proxy}
    with open_stage("probe", params, model=model, task=task, log_params=section, tags=tags) as stage:
        rows, saes, lm, tok = source_rows(stage, params, model, task, "finetuned", layers, triples, form)
        widths = [int(saes[L].d_hidden) for L in layers]
        is_test = split_by_group(rows.groups, cfg.test_fraction, params.seed)
        out: dict[str, Any] = {
            "n_triples": len(triples.groups), "n_train": int((~is_test).sum()), "n_test": int(is_test.sum()),
            "mean_delta_positive": float(rows.target[rows.label == 1].mean()),
            "mean_delta_negative": float(-rows.target[rows.label == 0].mean()),
        }
        m, predicted, figures = form.fit_main(rows, is_test, params, task, triples, lm, tok)
        out.update(m)
        del lm
        base_rows = None
        if cfg.base_control:
            base_rows, _, _, _ = source_rows(stage, params, model, task, "base", layers, triples, form)
            out.update(form.fit_control(base_rows, is_test, params, "base_control_"))
        figs = paths.probe_plots_dir(model, task)
        with io.atomic_dir(figs) as tmp:  # a whole folder, so no stale figure of an older run survives
            form.write_figures(tmp, figures, paths.run_id(model, task))
            pc1, pc2 = plot_pca(tmp / "fig5_pca.png", rows.codes, rows.label, paths.run_id(model, task))
        out.update({"pca_explained_variance_pc1": pc1, "pca_explained_variance_pc2": pc2})
        write_probe_inputs(model, task, form, layers, widths, rows, predicted, is_test, base_rows)
        stage.run.write_metrics(paths.report_dir(model, task) / "probe.json", out)
        for f in sorted(figs.iterdir()):
            stage.run.log_artifact(f)  # at the root: MLflow's compare page only compares root-level files
