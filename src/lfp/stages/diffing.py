"""`lfp diffing --model M --task T`: a crosscoder per chosen layer over the base and fine-tuned
activations of the same tokens (lfp.readouts.crosscoder).

Reads the two activation caches the pipeline already has (data/activations/{m}-{t}/{base,finetuned}:
same texts, same layers, rows aligned token for token), trains one TopK crosscoder per layer and
reports, per layer: FVU of each model, L0, dead latents, the relative decoder norm and Latent
Scaling's ν per latent (histogram, and how many latents the base model lacks: |ν| < diffing.specific_nu),
and the tokens on which the fine-tune-specific latents fire most (what they are about, for a reader).
Outputs: reports/runs/{m}-{t}/diffing.json (DVC metrics + MLflow), diffing_nu.png, and each layer's
crosscoder in data/diffing/{m}-{t}/ (the measure reads it back: readout `crosscoder_probe`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from lfp.core import io, paths
from lfp.models.activation_cache import load_layer, read_index
from lfp.core.params import Params, section_dict
from lfp.core.errors import ArtifactError
from lfp.core.layers import chosen_layers
from lfp.readouts.crosscoder import (
    CROSSCODER_DIR,
    CrosscoderSettings,
    crosscoder_path,
    crosscoder_codes,
    latent_scaling,
    nu_histogram,
    quality,
    relative_decoder_norm,
    save_crosscoder,
    specific as specific_latents,
    train_crosscoder,
)
from lfp.core.stage_context import open_stage

log = logging.getLogger(__name__)


def paired_rows(model: str, task: str, layer: int, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, fine-tuned, token ids) of a seeded subset of rows; the caches must hold the same tokens."""
    dirs = [paths.activations_dir(model, task, s) for s in ("base", "finetuned")]
    index = [read_index(d) for d in dirs]
    ids = [np.load(d / "input_ids.npy") for d in dirs]
    if index[0]["n_rows"] != index[1]["n_rows"] or not np.array_equal(ids[0], ids[1]):
        raise ArtifactError(f"{dirs[0]} and {dirs[1]}: the caches do not hold the same tokens (re-run both activations stages)")
    rows = np.sort(np.random.default_rng(seed).permutation(index[0]["n_rows"])[:max_rows])
    return load_layer(dirs[0], layer, index[0])[rows], load_layer(dirs[1], layer, index[1])[rows], ids[0][rows]


def top_tokens(codes: np.ndarray, token_ids: np.ndarray, latents: np.ndarray, tokenizer: Any, k: int = 8) -> list[str]:
    """The tokens on which the given latents' summed code is largest on average (≥ 5 occurrences)."""
    if not len(latents):
        return []
    score = codes[:, latents].sum(axis=1)
    uniq, inverse, counts = np.unique(token_ids, return_inverse=True, return_counts=True)
    mean = np.bincount(inverse, weights=score) / counts
    mean[counts < 5] = -np.inf
    out = []
    for i in np.argsort(mean)[::-1]:
        if not np.isfinite(mean[i]) or len(out) >= k:
            break
        text = tokenizer.decode([int(uniq[i])]).strip()
        if text and "\ufffd" not in text:  # a byte-level piece of a character says nothing on its own
            out.append(text)
    return out


def run(params: Params, model: str, task: str) -> None:
    cfg = params.diffing
    layers = chosen_layers(model, task)
    with open_stage("diffing", params, model=model, task=task, log_params={"seed": params.seed, "diffing": section_dict(cfg)},
                    tags={"readout": "crosscoder_topk_latent_scaling"}) as stage:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(paths.base_model_dir(model), trust_remote_code=False)
        out: dict[str, Any] = {"layers": layers, "specific_nu": cfg.specific_nu}
        nus = {}
        with io.atomic_dir(CROSSCODER_DIR / paths.run_id(model, task)) as out_dir:
            for layer in layers:
                base, ft, ids = paired_rows(model, task, layer, cfg.max_rows, params.seed)
                settings = CrosscoderSettings(n_latents=cfg.latent_ratio * base.shape[1], k=cfg.k, steps=cfg.steps,
                                              batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, seed=params.seed)
                cc, scales = train_crosscoder(base, ft, settings)
                q = quality(cc, base, ft, scales)
                ls = latent_scaling(cc, base, ft, scales)
                rel = relative_decoder_norm(cc)
                nu = ls["nu"]
                specific = np.flatnonzero(specific_latents(nu, cfg.specific_nu))
                codes = crosscoder_codes(cc, base, ft, scales)
                key = f"layer{layer}_"
                out.update({key + k: v for k, v in q.items()})
                out.update({key + "n_latents": settings.n_latents, key + "n_rows": len(base),
                            key + "n_specific": int(len(specific)), key + "nu_median": float(np.nanmedian(nu)),
                            key + "relative_norm_median": float(np.median(rel)),
                            key + "nu_histogram": nu_histogram(nu),
                            key + "specific_top_tokens": top_tokens(codes, ids, specific, tokenizer)})
                nus[layer] = nu
                save_crosscoder(out_dir / crosscoder_path(model, task, layer).name, cc, scales, nu, layer)
                log.info("diffing %s layer %d: FVU %.3f/%.3f, L0 %.1f, %d of %d latents with |nu| < %.2f", paths.run_id(model, task), layer,
                         q["fvu_base"], q["fvu_finetuned"], q["l0"], len(specific), settings.n_latents, cfg.specific_nu)
        out["n_specific_total"] = int(sum(out[f"layer{L}_n_specific"] for L in layers))
        plot = paths.report_dir(model, task) / "diffing_nu.png"
        from lfp.report.figures import plot_nu

        plot_nu(plot, nus, f"{paths.run_id(model, task)}: Latent Scaling ν per crosscoder latent")
        stage.run.write_metrics(paths.report_dir(model, task) / "diffing.json", out)
        stage.run.log_artifact(plot)

