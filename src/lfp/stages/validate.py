"""validate@{m}-{t}: do the features labelled task-related matter? (paper Tables 6 and 7), with
the controls that let the answer be "no".

Paper method (keys kept, computation unchanged, `paper_method` lists them):
- `freq_related` / `freq_all` / `freq_ratio` / `n_high_delta_inputs` (Table 7): over ALL probe
  inputs with `predicted > validate.delta_threshold`, how often the related features are active,
  against the average feature of the dictionaries (dead ones included). For vader `predicted` is
  the regression probe's rescaled delta; for hh/toxic the logistic decision function (log-odds).
- `ablation_*` (Table 6): the task score of the fine-tuned model with no hook, with each chosen
  layer's MLP output replaced by its SAE reconstruction, with the related features zeroed, and with
  as many random features zeroed (`ablation_random`: the frequency-matched control below). vader:
  mean VADER reward of prefix + sampled completion; hh/toxic: the DPO implicit reward margin.

Why more: on the default run the paper's Table 7 gap was a base-rate effect (related features fire
more on every row, 81 % of the high rows were training rows) and zeroing the related features
raised the reward, unnoticed. So:
- `t7_*`: held-out rows only (`is_test`); per explained feature its frequency on high vs low rows
  (at the threshold and at the `validate.quantile` of held-out predictions); the statistic is the
  within-feature contrast (high − low), related vs unrelated explained features, one-sided
  permutation p over the related labels. Baseline: live features only. Per feature in
  table7_features.jsonl.
- `t6_*`: the completion's reward only (`t6_prefix_reward` separately; the prefix is the same in
  every condition), each condition − SAE reconstruction per sample with a paired bootstrap CI, the
  random control matched in token activation frequency to the related features (several draws).
  Per sample in table6_samples.csv. The score is the task kind's (`kind.ablation()`).
- `mmcs_*`: the MMCS of the small vs large dictionary beside the MMCS random dictionaries of the
  large one's shape reach (isotropic, and matched in second moments): "shared" must beat both.
"""

from __future__ import annotations

from typing import Any

from lfp.core import io, paths
from lfp.core.params import Params, section_dict
from lfp.tasks import kind_of
from lfp.validation import artifacts
from lfp.validation.mmcs import mmcs_with_null
from lfp.validation.table6 import ablation_metrics, table6_metrics, write_samples
from lfp.validation.table7 import feature_frequency, table7

STAGE = "validate"

PAPER_METHOD = ("freq_related, freq_all, freq_ratio, n_high_delta_inputs: all probe rows, all features; "
                "ablation_*: reward of prefix + completion (vader), DPO margin (hh/toxic)")


def run(params: Params, model: str, task: str) -> None:
    """Tables 7 and 6 the paper's way and the ways that can fail, and the MMCS beside its null."""
    from lfp.sae import load_sae
    from lfp.core.stage_context import open_stage

    cfg = params.validate
    kind = kind_of(params, task)
    objective = kind.ablation()
    related = artifacts.related_features(model, task)
    explained = artifacts.explained_features(model, task)
    tensors, index = artifacts.load_probe_inputs(model, task)
    source = str(paths.report_dir(model, task) / "features.jsonl")
    metrics: dict[str, Any] = {
        "paper_method": PAPER_METHOD,
        "delta_threshold": cfg.delta_threshold,
        "predicted_kind": kind.probe_form.predicted_kind,
        "n_related_features": sum(len(f) for f in related.values()),
    }
    metrics.update(feature_frequency(tensors["codes"], tensors["predicted"], artifacts.columns(index, related, source), cfg.delta_threshold))
    expl_cols = [artifacts.columns(index, {row["layer"]: [row["feature"]]}, source)[0] for row in explained]
    t7, t7_rows = table7(tensors["codes"], tensors["predicted"], tensors["is_test"], explained, expl_cols,
                         cfg.delta_threshold, cfg.quantile, cfg.permutations, params.seed)
    metrics.update(t7)
    ratios = sorted(params.sae.ratios)
    dictionaries = {L: (load_sae(paths.sae_path(model, task, L, ratios[0])).dictionary(),
                        load_sae(paths.sae_path(model, task, L, ratios[-1])).dictionary()) for L in index["layers"]}
    by_layer: dict[int, list[int]] = {}
    for row in explained:
        by_layer.setdefault(row["layer"], []).append(row["feature"])
    metrics.update(mmcs_with_null(dictionaries, by_layer, cfg.random_dictionaries, params.seed))
    log_params = {"validate": section_dict(cfg), "beta": objective.beta(params, task)}
    with open_stage(STAGE, params, model=model, task=task, log_params=log_params,
                    tags={"ablation_hook": "sae_reconstruction_zeroed", "random_control": "frequency_matched"}) as stage:
        run_ = stage.run
        result = None
        if not related:
            reason = "no feature is labelled related in features.jsonl (e.g. hh with the offline explainer)"
        else:
            reason = None
            lm, tokenizer = stage.load(paths.finetuned_dir(model, task))
            saes = {L: load_sae(paths.sae_path(model, task, L, ratios[0])).to(stage.device).eval() for L in index["layers"]}
            result = objective.scores(params, model, task, lm, tokenizer, saes, related)
        metrics.update(ablation_metrics(result, cfg.random_controls, reason))
        metrics.update(table6_metrics(result, related, cfg.random_controls, cfg.bootstrap, params.seed))
        io.write_jsonl(paths.table7_features_file(model, task), t7_rows)
        write_samples(paths.table6_samples_file(model, task), result)
        metrics.update(artifacts.explainer_provenance(model, task))
        run_.write_metrics(paths.report_dir(model, task) / "validate.json", metrics)
