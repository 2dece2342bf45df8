"""validate@{m}-{t}: do the features labelled task-related matter? (paper Tables 6 and 7)

- Feature frequency (Table 7): over probe inputs predicted to carry strong implicit reward
  (`predicted > validate.delta_threshold`), how often each related feature is active, against the
  average feature of the same dictionaries. For vader `predicted` is the regression probe's
  rescaled delta; for hh/toxic it is the logistic probe's decision function (log-odds), so the
  threshold means "log-odds > 3" there.
- Zero-ablation (Table 6): the task score of the fine-tuned model with no hook, with each chosen
  layer's MLP output replaced by its SAE reconstruction, with the related features zeroed, and with
  as many random features zeroed (`random_controls` draws; the control the paper lacks). Random
  features are drawn from those active at least once in the probe inputs, so the control is not
  trivially a no-op on dead features. vader: mean VADER reward of sampled completions of IMDB
  prefixes; hh/toxic: the DPO implicit reward margin on held-out pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from lfp import ablation, io, paths
from lfp.config import Params, section_dict
from lfp.errors import ArtifactError
from lfp.data import prepared_file
from lfp.tasks import kind_of

STAGE = "validate"


def related_features(model: str, task: str) -> dict[int, list[int]]:
    """layer -> features labelled related (true) in features.jsonl."""
    path = paths.report_dir(model, task) / "features.jsonl"
    out: dict[int, list[int]] = {}
    for _, row in io.iter_jsonl(path, {"layer": int, "feature": int}, allow_empty=True):
        if row.get("related") is True:
            out.setdefault(row["layer"], []).append(row["feature"])
    return {L: sorted(set(f)) for L, f in out.items()}


def load_probe_inputs(model: str, task: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    folder = paths.probe_data_dir(model, task)
    tensors = {k: v.numpy() for k, v in io.load_tensors(folder / "inputs.safetensors").items()}
    index = io.read_json(folder / "inputs.json")
    for key in ("codes", "predicted"):
        if key not in tensors:
            raise ArtifactError(f"{folder / 'inputs.safetensors'}: missing tensor '{key}'")
    for key in ("layers", "offsets", "widths"):
        if not isinstance(index.get(key), list) or len(index[key]) != len(index["layers"]):
            raise ArtifactError(f"{folder / 'inputs.json'}: '{key}' must be a list as long as 'layers'")
    n, width = tensors["codes"].shape
    if tensors["predicted"].shape != (n,) or sum(index["widths"]) != width:
        raise ArtifactError(f"{folder}: 'codes' {tensors['codes'].shape} does not match 'predicted'/'widths'")
    return tensors, index


def columns(index: dict[str, Any], features: dict[int, list[int]], source: str) -> list[int]:
    """(layer, feature) -> column of `codes`, checked against inputs.json."""
    cols = []
    for layer, feats in sorted(features.items()):
        if layer not in index["layers"]:
            raise ArtifactError(f"{source}: layer {layer} is not among the probe layers {index['layers']}")
        i = index["layers"].index(layer)
        for f in feats:
            if not 0 <= f < index["widths"][i]:
                raise ArtifactError(f"{source}: feature {f} outside layer {layer}'s width {index['widths'][i]}")
            cols.append(index["offsets"][i] + f)
    return cols


def feature_frequency(codes: np.ndarray, predicted: np.ndarray, related_cols: list[int], threshold: float) -> dict[str, Any]:
    """Fraction of high-predicted inputs in which a feature is active (code > 0), averaged over the
    related features and over all features; nulls (with the count 0) when no input passes."""
    high = predicted > threshold
    out: dict[str, Any] = {
        "n_high_delta_inputs": int(high.sum()),
        "n_inputs": int(len(predicted)),
        "freq_related": None,
        "freq_all": None,
        "freq_ratio": None,
    }
    if not high.any():
        return out
    active = (codes[high] > 0).mean(axis=0)
    out["freq_all"] = float(active.mean())
    if related_cols:
        out["freq_related"] = float(active[related_cols].mean())
        if out["freq_all"] > 0:
            out["freq_ratio"] = out["freq_related"] / out["freq_all"]
    return out


def alive_features(codes: np.ndarray, index: dict[str, Any]) -> dict[int, list[int]]:
    """layer -> features active at least once in the probe inputs (the random-control pool)."""
    out = {}
    for layer, off, width in zip(index["layers"], index["offsets"], index["widths"]):
        out[layer] = [int(f) for f in np.flatnonzero((codes[:, off : off + width] > 0).any(axis=0))]
    return out


def ablation_conditions(
    related: dict[int, list[int]], pool: dict[int, list[int]], n_random: int, seed: int
) -> list[tuple[str, dict[int, list[int]] | None]]:
    conds: list[tuple[str, dict[int, list[int]] | None]] = [("no_hook", None), ("reconstruction", {}), ("related", related)]
    for i in range(n_random):
        rng = np.random.default_rng([seed, i])
        conds.append((f"random{i}", ablation.random_features(related, pool, rng)))
    return conds


def score_vader(params: Params, model: str, task: str, lm: Any, tokenizer: Any, saes: dict, conds: list) -> dict[str, Any]:
    cfg = params.validate
    texts = [row["text"] for row in io.read_jsonl(prepared_file(task, "test"), {"text": str})]
    prefixes = ablation.imdb_prefixes(texts, tokenizer, cfg.n_completions, cfg.prefix_tokens, np.random.default_rng(params.seed))
    scores = {}
    for name, zeroed in tqdm(conds, desc="validate: sampled completions per condition", disable=None):
        with ablation.sae_hooks(lm, saes, zeroed):
            rewards = ablation.sample_rewards(lm, tokenizer, prefixes, max_new_tokens=cfg.max_new_tokens,
                                              batch_size=cfg.batch_size, seed=params.seed)
        scores[name] = float(np.mean(rewards))
    _, kls = ablation.condition_scores(lm, saes, conds, prefixes, cfg.batch_size, tokenizer.pad_token_id)
    return {"ablation_metric": "vader_reward", "ablation_n": len(prefixes), "scores": scores, "kl": kls}


def score_dpo(params: Params, model: str, task: str, lm: Any, tokenizer: Any, saes: dict, conds: list) -> dict[str, Any]:
    from lfp.modeling import load_model

    cfg = params.validate
    beta = params.finetune[task].beta
    fields = {"prompt": str, "chosen": str, "rejected": str}
    pairs = io.read_jsonl(prepared_file(task, "heldout"), fields)[: cfg.max_pairs]
    chosen, rejected = ablation.pair_sequences(tokenizer, pairs, cfg.max_length)
    pad = tokenizer.pad_token_id
    base, _ = load_model(paths.base_model_dir(model))
    base.to(next(lm.parameters()).device)
    base_c = ablation.response_logprobs(base, chosen, cfg.batch_size, pad)
    base_r = ablation.response_logprobs(base, rejected, cfg.batch_size, pad)
    del base
    # chosen: log-probs and the KL check in one pass per condition; rejected: log-probs only
    pol_c, kls = ablation.condition_scores(lm, saes, conds, [seq for seq, _ in chosen], cfg.batch_size, pad,
                                           response_starts=[first for _, first in chosen])
    pol_r, _ = ablation.condition_scores(lm, saes, conds, [seq for seq, _ in rejected], cfg.batch_size, pad,
                                         response_starts=[first for _, first in rejected], kl=False)
    scores = {name: float(ablation.dpo_margins(pol_c[name], pol_r[name], base_c, base_r, beta).mean()) for name, _ in conds}
    return {"ablation_metric": "dpo_implicit_reward_margin", "ablation_n": len(pairs), "scores": scores, "kl": kls}


# the task kind's `ablation_metric` -> the scorer that measures it under each condition
SCORERS = {"vader_reward": score_vader, "dpo_implicit_reward_margin": score_dpo}


def ablation_metrics(result: dict[str, Any] | None, n_random: int, reason: str | None) -> dict[str, Any]:
    """Flatten the condition scores into the validate.json schema (`ablation_random` = mean of draws)."""
    scores, kls = (result or {}).get("scores", {}), (result or {}).get("kl", {})
    draws = [scores[f"random{i}"] for i in range(n_random) if f"random{i}" in scores]
    kl_draws = [kls[f"random{i}"] for i in range(n_random) if f"random{i}" in kls]
    return {
        "ablation_metric": (result or {}).get("ablation_metric"),
        "ablation_n": (result or {}).get("ablation_n", 0),
        "ablation_no_hook": scores.get("no_hook"),
        "ablation_reconstruction": scores.get("reconstruction"),
        "ablation_related": scores.get("related"),
        "ablation_random": float(np.mean(draws)) if draws else None,
        "ablation_random_draws": draws,
        # mean KL(no hook || condition) of next-token distributions: did the intervention act?
        "ablation_kl_reconstruction": kls.get("reconstruction"),
        "ablation_kl_related": kls.get("related"),
        "ablation_kl_random": float(np.mean(kl_draws)) if kl_draws else None,
        "ablation_reason": reason,
    }


def run(params: Params, model: str, task: str) -> None:
    """Feature frequency at high predicted delta, and zero-ablation of the related features."""
    from lfp.sae import load_sae
    from lfp.stage_context import open_stage

    cfg = params.validate
    kind = kind_of(params, task)
    lexicon = kind.probe_method == "ridge"
    related = related_features(model, task)
    tensors, index = load_probe_inputs(model, task)
    source = str(paths.report_dir(model, task) / "features.jsonl")
    metrics: dict[str, Any] = {
        "delta_threshold": cfg.delta_threshold,
        "predicted_kind": "rescaled_delta" if lexicon else "logistic_decision_function",
        "n_related_features": sum(len(f) for f in related.values()),
    }
    metrics.update(feature_frequency(tensors["codes"], tensors["predicted"], columns(index, related, source), cfg.delta_threshold))
    log_params = {"validate": section_dict(cfg), "beta": None if lexicon else params.finetune[task].beta}
    with open_stage(STAGE, params, model=model, task=task, log_params=log_params,
                    tags={"ablation_hook": "sae_reconstruction_zeroed"}) as stage:
        run_ = stage.run
        if not related:
            reason = "no feature is labelled related in features.jsonl (e.g. hh with the offline explainer)"
            metrics.update(ablation_metrics(None, cfg.random_controls, reason))
        else:
            lm, tokenizer = stage.load(paths.finetuned_dir(model, task))
            saes = {L: load_sae(paths.sae_path(model, task, L, min(params.sae.ratios))).to(stage.device).eval() for L in index["layers"]}
            conds = ablation_conditions(related, alive_features(tensors["codes"], index), cfg.random_controls, params.seed)
            scorer = SCORERS[kind.ablation_metric]
            metrics.update(ablation_metrics(scorer(params, model, task, lm, tokenizer, saes, conds), cfg.random_controls, None))
        run_.write_metrics(paths.report_dir(model, task) / "validate.json", metrics)
