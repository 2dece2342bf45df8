"""`lfp sae --model M --task T --source S`: two sparse autoencoders per chosen layer of one model
(the base model or its fine-tune: the same code, data split and settings for both), their
matching and quality. Outputs: models/sae/{m}-{t}/{source}/, reports/runs/{m}-{t}/sae[-base].json.

Per layer (§3.2): dictionaries of r·d_model features for r in `sae.ratios` (paper: n and 2n), tied
weights unless `sae.tied: false` (Table 11's comparison), l1 from `model_specs.M.sae_l1` or
`sae.l1`, trained on at most `sae.max_train_rows` cached rows. A seeded `sae.heldout_fraction` of
the cached *texts* (not rows: rows of one text are correlated) is held out for evaluation.

Matching (§3.4, Sharkey et al.): cosine similarity between the smallest and largest dictionaries'
decoder directions → per small feature its max cosine, their mean (MMCS), the ranking the
explain stage uses, and a one-to-one Hungarian matching (models/sae/{m}-{t}/matching.json), with
the fraction of Hungarian pairs above cosine 0.7 (`shared_fraction`). The reference those need
(`sae.seed_reference`): the small dictionary trained again with seed + 1 on the same rows, matched
to the first (`mmcs_seed_reference`, `shared_fraction_seed_reference`): Paulo & Belrose 2025 find
only ~30 % of features shared across seeds, so an MMCS is "shared" only as far as it beats this.

Quality (reports/runs/{m}-{t}/sae.json, same numbers in MLflow), on held-out rows / texts:
mse (the paper's "normalized reconstruction loss": mean over elements), fvu, l0, dead_fraction,
and the LM's next-token cross-entropy with the layer's MLP output replaced by the reconstruction
(ce_recon), left alone (ce_clean) or zeroed (ce_zero): ce_recovered = (zero − recon)/(zero − clean).
Table-11-style summaries: table11_x{r}_sparsity = mean L0 / 100 (the paper's "scaled true
sparsity") and table11_x{r}_reconstruction = mean mse, averaged over the chosen layers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch

from lfp.core import io, paths
from lfp.models.activation_cache import heldout_texts, load_layer, read_index, split_rows, subset
from lfp.core.params import Params, section_dict
from lfp.core.errors import ConfigError
from lfp.models.loading import replace_mlp_outputs
from lfp.sae import ARCHITECTURES, SaeTraining, dictionary_matching, reconstruction_metrics, save_sae, train_saes
from lfp.sae.matching import shared_fraction
from lfp.sae.quality import ce_recovered, cross_entropy, reconstruction_hook
from lfp.core.stage_context import open_stage

log = logging.getLogger(__name__)


def run(params: Params, model: str, task: str, source: str = "finetuned") -> None:
    cfg = params.sae_for(model)  # sae with the model's overrides (model_specs.<m>.sae_*)
    if len(set(cfg.ratios)) < 2:
        raise ConfigError("params: 'sae.ratios' needs two different sizes (small and large dictionary) for matching")
    small_r, large_r = min(cfg.ratios), max(cfg.ratios)
    l1 = cfg.l1
    # what the architecture records: topk's k fixes the sparsity (no l1 term), relu_l1's l1 (no k)
    recorded_l1, recorded_k = ARCHITECTURES[cfg.architecture].recorded(l1, cfg.k)
    arch = {"architecture": cfg.architecture, "k": recorded_k}
    act_dir = paths.activations_dir(model, task, source)
    index = read_index(act_dir)
    layers, offsets = [int(x) for x in index["layers"]], np.asarray(index["text_offsets"], dtype=np.int64)
    held = heldout_texts(offsets, cfg.heldout_fraction, params.seed)
    train_rows, held_rows = split_rows(offsets, held)
    train_rows = subset(train_rows, cfg.max_train_rows, params.seed)
    held_rows = subset(held_rows, cfg.max_train_rows, params.seed)
    input_ids = io.load_npy(act_dir / "input_ids.npy")
    ce_texts = [np.array(input_ids[offsets[i] : offsets[i + 1]], dtype=np.int64) for i in held[: cfg.ce_eval_texts]]
    ce_texts = [s for s in ce_texts if len(s) > 1]

    with open_stage("sae", params, model=model, task=task, source=source,
                    log_params={"seed": params.seed, "sae": section_dict(cfg), "l1_effective": l1},
                    tags={"tied": cfg.tied, "architecture": cfg.architecture}) as stage:
        tracking, device = stage.run, stage.device
        lm, tokenizer = stage.load(paths.model_dir(model, task, source))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ce_clean = cross_entropy(lm, ce_texts, pad_id, device)
        metrics: dict[str, Any] = {"train_rows": len(train_rows), "heldout_rows": len(held_rows),
                                   "ce_texts": len(ce_texts), "l1": recorded_l1, "ce_clean": ce_clean, **arch}
        matching: dict[str, Any] = {"small_ratio": small_r, "large_ratio": large_r, "layers": {}}
        start = time.perf_counter()
        keys = [(layer, ratio) for layer in layers for ratio in cfg.ratios]
        jobs = [(lambda L=layer: load_layer(act_dir, L, index)[train_rows], ratio * index["d_model"]) for layer, ratio in keys]
        settings = SaeTraining(l1=l1, lr=cfg.learning_rate, batch_size=cfg.batch_size, epochs=cfg.epochs, seed=params.seed,
                               tied=cfg.tied, architecture=cfg.architecture, k=cfg.k, aux_k=cfg.aux_k, aux_coeff=cfg.aux_coeff)
        trained = dict(zip(keys, train_saes(jobs, settings)))
        if cfg.seed_reference:  # the small dictionary again with the next seed: what "shared features" reach by chance of training
            again = train_saes([(lambda L=layer: load_layer(act_dir, L, index)[train_rows], small_r * index["d_model"]) for layer in layers],
                               dataclasses.replace(settings, seed=params.seed + 1))
            trained.update({(layer, "seed"): t for layer, t in zip(layers, again)})
        metrics["train_seconds"] = time.perf_counter() - start
        with io.atomic_dir(paths.sae_dir(model, task, source)) as out:
            for layer in layers:
                held_x = load_layer(act_dir, layer, index)[held_rows]
                with replace_mlp_outputs(lm, {layer: torch.zeros_like}):
                    ce_zero = cross_entropy(lm, ce_texts, pad_id, device)
                saes = {}
                for ratio in cfg.ratios:
                    sae, info = trained[(layer, ratio)]
                    save_sae(sae, out / paths.sae_path(model, task, layer, ratio, source).name, {
                        "layer": layer, "ratio": ratio, "l1": recorded_l1, **arch, "learning_rate": cfg.learning_rate,
                        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "seed": params.seed,
                        "train_rows": info["rows"], "final_loss": info["final_loss"], "model": model, "task": task,
                        "source": source,
                    })
                    saes[ratio] = sae
                    q = reconstruction_metrics(sae, held_x)
                    with replace_mlp_outputs(lm, {layer: reconstruction_hook(sae.to(device))}):
                        q["ce_recon"] = cross_entropy(lm, ce_texts, pad_id, device)
                    sae.cpu()
                    q.update(ce_clean=ce_clean, ce_zero=ce_zero, ce_recovered=ce_recovered(ce_clean, q["ce_recon"], ce_zero))
                    q["final_train_loss"] = info["final_loss"]
                    metrics.update({f"layer{layer}_x{ratio}_{k}": v for k, v in q.items()})
                    log.info("sae %s-%s layer %d x%d: %s", model, task, layer, ratio, q)
                m = dictionary_matching(saes[small_r].dictionary(), saes[large_r].dictionary())
                matching["layers"][str(layer)] = m
                metrics[f"layer{layer}_mmcs"] = m["mmcs"]
                metrics[f"layer{layer}_hungarian_mean_cos"] = m["hungarian_mean_cos"]
                metrics[f"layer{layer}_shared_fraction"] = shared_fraction(m, saes[small_r].dictionary(), saes[large_r].dictionary())
                if cfg.seed_reference:
                    again = trained[(layer, "seed")][0].dictionary()
                    ref = dictionary_matching(saes[small_r].dictionary(), again)
                    metrics[f"layer{layer}_mmcs_seed_reference"] = ref["mmcs"]
                    metrics[f"layer{layer}_shared_fraction_seed_reference"] = shared_fraction(ref, saes[small_r].dictionary(), again)
            io.write_json(out / "matching.json", matching)
        metrics.update(summaries(metrics, layers, cfg.ratios))
        tracking.write_metrics(paths.sae_metrics_file(model, task, source), metrics)
        tracking.log_artifact(paths.matching_file(model, task, source))


def summaries(metrics: dict[str, Any], layers: list[int], ratios: list[int]) -> dict[str, float]:
    """Means over the chosen layers, per dictionary size, plus Table 11's normalised numbers."""
    def mean(keys: list[str]) -> float:
        values = [metrics[k] for k in keys if metrics.get(k) is not None and np.isfinite(metrics[k])]
        return float(np.mean(values)) if values else float("nan")

    out = {"mean_mmcs": mean([f"layer{L}_mmcs" for L in layers])}
    for key in ("mmcs_seed_reference", "shared_fraction", "shared_fraction_seed_reference"):
        if any(f"layer{L}_{key}" in metrics for L in layers):
            out[f"mean_{key}"] = mean([f"layer{L}_{key}" for L in layers])
    for r in ratios:
        for name in ("mse", "fvu", "l0", "dead_fraction", "ce_recovered"):
            out[f"mean_x{r}_{name}"] = mean([f"layer{L}_x{r}_{name}" for L in layers])
        out[f"table11_x{r}_sparsity"] = out[f"mean_x{r}_l0"] / 100.0
        out[f"table11_x{r}_reconstruction"] = out[f"mean_x{r}_mse"]
    return out
