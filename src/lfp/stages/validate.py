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
  Per sample in table6_samples.csv.
- `mmcs_*`: the MMCS of the small vs large dictionary beside the MMCS random dictionaries of the
  large one's shape reach (isotropic, and matched in second moments): "shared" must beat both.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
from tqdm import tqdm

from lfp.validation import ablation
from lfp.core import io, paths
from lfp.core.config import Params, section_dict
from lfp.core.data import prepared_file
from lfp.core.errors import ArtifactError
from lfp.tasks import kind_of

STAGE = "validate"

PAPER_METHOD = ("freq_related, freq_all, freq_ratio, n_high_delta_inputs: all probe rows, all features; "
                "ablation_*: reward of prefix + completion (vader), DPO margin (hh/toxic)")


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
    if "is_test" not in tensors or tensors["is_test"].shape != (n,):
        raise ArtifactError(f"{folder / 'inputs.safetensors'}: 'is_test' missing or not one flag per row of 'codes'")
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


def explained_features(model: str, task: str) -> list[dict[str, Any]]:
    """The explained features of features.jsonl: layer, feature, related (True / False / None =
    unlabelled), one row per (layer, feature)."""
    path = paths.report_dir(model, task) / "features.jsonl"
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    for _, row in io.iter_jsonl(path, {"layer": int, "feature": int}, allow_empty=True):
        rel = row.get("related")
        seen[(row["layer"], row["feature"])] = {"layer": row["layer"], "feature": row["feature"],
                                                "related": rel if isinstance(rel, bool) else None}
    return [seen[k] for k in sorted(seen)]


def feature_frequency(codes: np.ndarray, predicted: np.ndarray, related_cols: list[int], threshold: float) -> dict[str, Any]:
    """Paper method: fraction of high-predicted inputs (all rows) in which a feature is active
    (code > 0), averaged over the related features and over all features (dead ones included);
    nulls (with the count 0) when no input passes."""
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


# --------------------------------------------------------------------------------------------
# Table 7 that can fail
# --------------------------------------------------------------------------------------------


def label_permutation_p(values: np.ndarray, related: np.ndarray, n_permutations: int, rng: np.random.Generator) -> float:
    """One-sided p that mean(values[related]) − mean(values[~related]) is this large when the
    related labels are shuffled across the features ((1 + #≥) / (1 + n), Monte Carlo)."""
    values, related = np.asarray(values, dtype=float), np.asarray(related, dtype=bool)
    k = int(related.sum())
    if k == 0 or k == len(values):
        return float("nan")
    observed = values[related].mean() - values[~related].mean()
    total = values.sum()
    # each row ranks the features at random: its first k are one relabelling's "related"
    ranks = np.argsort(rng.random((n_permutations, len(values))), axis=1)[:, :k]
    rel_sum = values[ranks].sum(axis=1)
    stats = rel_sum / k - (total - rel_sum) / (len(values) - k)
    return float((1 + np.sum(stats >= observed - 1e-12)) / (1 + n_permutations))


def contrast_split(
    active: np.ndarray, live: np.ndarray, high: np.ndarray, related: np.ndarray, labelled: np.ndarray,
    n_permutations: int, seed: int,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Table 7 for one split of held-out rows into high / low predicted feedback.

    `active` [rows, explained features] (code > 0), `live` [rows, live features], `high` [rows],
    `related`, `labelled` [explained features] (unlabelled features are left out of the comparison).
    Returns the metrics (no prefix), and per explained feature its frequency on high and low rows.
    `p` tests the within-feature contrast (freq high − freq low: a feature that is simply frequent
    everywhere contributes 0); `p_high_only` tests the paper's statistic (freq on high rows only),
    which a base-rate difference alone can make small.
    """
    n_high, n_low = int(high.sum()), int((~high).sum())
    nan = np.full(active.shape[1], np.nan)
    out: dict[str, Any] = {"n_high": n_high, "n_low": n_low}
    keys = ("related_high", "related_low", "unrelated_high", "unrelated_low", "related_contrast", "unrelated_contrast",
            "p", "p_high_only", "live_baseline_high", "live_baseline_low", "reason")
    out.update({k: None for k in keys})
    if n_high == 0 or n_low == 0:
        out["reason"] = f"{n_high} high and {n_low} low held-out rows: no contrast"
        return out, nan, nan
    f_high, f_low = active[high].mean(axis=0), active[~high].mean(axis=0)
    contrast = f_high - f_low
    if live.shape[1]:
        out["live_baseline_high"] = float(live[high].mean())
        out["live_baseline_low"] = float(live[~high].mean())
    related, unrelated = related & labelled, ~related & labelled
    for name, mask in (("related", related), ("unrelated", unrelated)):
        if mask.any():
            out[f"{name}_high"] = float(f_high[mask].mean())
            out[f"{name}_low"] = float(f_low[mask].mean())
            out[f"{name}_contrast"] = float(contrast[mask].mean())
    if related.any() and unrelated.any():
        out["p"] = label_permutation_p(contrast[labelled], related[labelled], n_permutations, np.random.default_rng([seed, 7]))
        out["p_high_only"] = label_permutation_p(f_high[labelled], related[labelled], n_permutations, np.random.default_rng([seed, 7]))
    else:
        out["reason"] = f"{int(related.sum())} related and {int(unrelated.sum())} unrelated labelled features: no comparison"
    return out, f_high, f_low


def table7(
    codes: np.ndarray, predicted: np.ndarray, is_test: np.ndarray, explained: list[dict[str, Any]], cols: list[int],
    threshold: float, quantile: float, n_permutations: int, seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Table 7 on held-out rows at `threshold` (`t7_*`) and at the `quantile` of the held-out
    predictions (`t7_quantile_*`), and its per-feature rows. `cols[i]` is explained[i]'s column."""
    test = np.asarray(is_test).astype(bool)
    labelled = np.asarray([row["related"] is not None for row in explained], dtype=bool)
    related = np.asarray([row["related"] is True for row in explained], dtype=bool)
    codes_t, pred_t = codes[test], np.asarray(predicted)[test]
    active = codes_t[:, np.asarray(cols, dtype=int)] > 0 if len(cols) else np.zeros((len(pred_t), 0), bool)
    any_active = codes_t > 0
    live = any_active[:, any_active.any(axis=0)]  # dead on held-out rows: no evidence either way
    out: dict[str, Any] = {
        "t7_rows": "held-out (is_test)", "t7_n_test": int(test.sum()), "t7_n_live": int(live.shape[1]),
        "t7_n_features": int(codes.shape[1]), "t7_n_related": int(related.sum()), "t7_n_unrelated": int((~related & labelled).sum()),
        "t7_n_unlabelled": int((~labelled).sum()), "t7_threshold": float(threshold), "t7_quantile": float(quantile),
        "t7_quantile_threshold": float(np.quantile(pred_t, quantile)) if len(pred_t) else None,
    }
    splits = {"t7_": pred_t > threshold,
              "t7_quantile_": pred_t >= out["t7_quantile_threshold"] if len(pred_t) else np.zeros(0, bool)}
    per_feature: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # mean code per feature on high / low rows: where a feature is active on every row (frequency
    # 100 % vs 100 %), its size is what can still differ (shown on the dashboards)
    values = codes_t[:, np.asarray(cols, dtype=int)] if len(cols) else np.zeros((len(pred_t), 0))
    per_feature_mean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for prefix, high in splits.items():
        m, f_high, f_low = contrast_split(active, live, high, related, labelled, n_permutations, seed)
        out.update({prefix + k: v for k, v in m.items()})
        per_feature[prefix] = (f_high, f_low)
        nan = np.full(values.shape[1], np.nan)
        per_feature_mean[prefix] = (values[high].mean(axis=0) if high.any() else nan, values[~high].mean(axis=0) if (~high).any() else nan)
    rows = []
    for j, row in enumerate(explained):  # unlabelled features too: their frequencies still mean something
        rec: dict[str, Any] = dict(row)
        for prefix, name in (("t7_", "threshold"), ("t7_quantile_", "quantile")):
            f_high, f_low = per_feature[prefix]
            hi, lo = f_high[j], f_low[j]
            rec.update({f"{name}_freq_high": None if np.isnan(hi) else float(hi), f"{name}_freq_low": None if np.isnan(lo) else float(lo),
                        f"{name}_contrast": None if np.isnan(hi) or np.isnan(lo) else float(hi - lo)})
            m_hi, m_lo = per_feature_mean[prefix][0][j], per_feature_mean[prefix][1][j]
            rec.update({f"{name}_mean_high": None if np.isnan(m_hi) else float(m_hi), f"{name}_mean_low": None if np.isnan(m_lo) else float(m_lo)})
        rows.append(rec)
    return out, rows


# --------------------------------------------------------------------------------------------
# MMCS beside random dictionaries
# --------------------------------------------------------------------------------------------


def mmcs_with_null(
    dictionaries: dict[int, tuple[Any, Any]], explained: dict[int, list[int]], draws: int, seed: int,
) -> dict[str, Any]:
    """Observed MMCS (small vs large dictionary) per layer and over layers, beside the MMCS of
    `draws` random dictionaries of the large one's shape (mean and the 2.5–97.5 % range of the
    draws' layer means; isotropic and second-moment matched), also for the explained features only
    (their mean max cosine vs the mean of as many top max cosines in a random dictionary)."""
    from lfp.sae import max_cosines, random_dictionary_mmcs

    out: dict[str, Any] = {}
    obs, obs_expl = [], []
    null: dict[str, list[np.ndarray]] = {}
    for layer, (small, large) in sorted(dictionaries.items()):
        max_cos = max_cosines(small, large).numpy()
        feats = explained.get(layer, [])
        r = random_dictionary_mmcs(small, large, draws, seed + layer, top_k=len(feats) or None)
        out[f"layer{layer}_mmcs"] = float(max_cos.mean())
        out[f"layer{layer}_mmcs_random_dictionary"] = float(r["isotropic_mmcs"].mean())
        out[f"layer{layer}_mmcs_random_dictionary_cov"] = float(r["covariance_mmcs"].mean())
        obs.append(max_cos.mean())
        for key, v in r.items():
            null.setdefault(key, []).append(v)
        if feats:
            obs_expl.append(max_cos[feats].mean())
    if not obs:
        return out
    out["mmcs_shared"] = float(np.mean(obs))
    for name, suffix in (("isotropic", ""), ("covariance", "_cov")):
        for stat, key in (("mmcs", "mmcs_random_dictionary"), ("top_k_mean", "mmcs_explained_random_dictionary")):
            if f"{name}_{stat}" not in null or (stat == "top_k_mean" and len(null[f"{name}_{stat}"]) != len(obs_expl)):
                continue
            per_draw = np.mean(null[f"{name}_{stat}"], axis=0)  # layer mean, one per draw
            lo, hi = np.quantile(per_draw, [0.025, 0.975])
            out.update({key + suffix: float(per_draw.mean()), f"{key}{suffix}_ci_low": float(lo), f"{key}{suffix}_ci_high": float(hi)})
    if obs_expl:
        out["mmcs_explained"] = float(np.mean(obs_expl))
    return out


# --------------------------------------------------------------------------------------------
# Table 6 that can fail
# --------------------------------------------------------------------------------------------


def random_conditions(
    related: dict[int, list[int]], frequencies: dict[int, np.ndarray], n_random: int, seed: int, pool: int,
) -> list[tuple[str, dict[int, list[int]]]]:
    """`random{i}`: as many unrelated features per layer as are related, matched in frequency."""
    return [(f"random{i}", ablation.frequency_matched_features(related, frequencies, np.random.default_rng([seed, i]), pool))
            for i in range(n_random)]


def mean_frequency(features: dict[int, list[int]], frequencies: dict[int, np.ndarray]) -> float | None:
    values = [float(frequencies[L][f]) for L, feats in features.items() for f in feats]
    return float(np.mean(values)) if values else None


def score_vader(params: Params, model: str, task: str, lm: Any, tokenizer: Any, saes: dict, related: dict) -> dict[str, Any]:
    cfg = params.validate
    texts = [row["text"] for row in io.read_jsonl(prepared_file(task, "test"), {"text": str})]
    prefixes = ablation.imdb_prefixes(texts, tokenizer, cfg.n_completions, cfg.prefix_tokens, np.random.default_rng(params.seed))
    fixed: list[tuple[str, Any]] = [("no_hook", None), ("reconstruction", {}), ("related", related)]
    samples, full = {}, {}

    def sample(conds: list) -> None:
        for name, zeroed in tqdm(conds, desc="validate: sampled completions per condition", disable=None):
            with ablation.sae_hooks(lm, saes, zeroed):
                r = ablation.sample_rewards(lm, tokenizer, prefixes, max_new_tokens=cfg.max_new_tokens,
                                            batch_size=cfg.batch_size, seed=params.seed)
            samples[name], full[name] = r.completion, r.full

    sample(fixed)
    freqs = ablation.token_frequencies(lm, saes, prefixes, cfg.batch_size, tokenizer.pad_token_id)
    randoms = random_conditions(related, freqs, cfg.random_controls, params.seed, cfg.random_match_pool)
    sample(randoms)
    _, kls = ablation.condition_scores(lm, saes, fixed + randoms, prefixes, cfg.batch_size, tokenizer.pad_token_id)
    return {"ablation_metric": "vader_reward", "ablation_n": len(prefixes), "kl": kls,
            "scores": {name: float(v.mean()) for name, v in full.items()},  # paper method: prefix + completion
            "full": full, "samples": samples, "prefix": ablation.prefix_rewards(tokenizer, prefixes),
            "t6_metric": "vader_reward_of_completion", "frequencies": freqs, "randoms": dict(randoms)}


def score_dpo(params: Params, model: str, task: str, lm: Any, tokenizer: Any, saes: dict, related: dict) -> dict[str, Any]:
    from lfp.models.loading import load_model

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
    freqs = ablation.token_frequencies(lm, saes, [seq for seq, _ in chosen + rejected], cfg.batch_size, pad)
    randoms = random_conditions(related, freqs, cfg.random_controls, params.seed, cfg.random_match_pool)
    conds = [("no_hook", None), ("reconstruction", {}), ("related", related), *randoms]
    # chosen: log-probs and the KL check in one pass per condition; rejected: log-probs only
    pol_c, kls = ablation.condition_scores(lm, saes, conds, [seq for seq, _ in chosen], cfg.batch_size, pad,
                                           response_starts=[first for _, first in chosen])
    pol_r, _ = ablation.condition_scores(lm, saes, conds, [seq for seq, _ in rejected], cfg.batch_size, pad,
                                         response_starts=[first for _, first in rejected], kl=False)
    margins = {name: ablation.dpo_margins(pol_c[name], pol_r[name], base_c, base_r, beta) for name, _ in conds}
    return {"ablation_metric": "dpo_implicit_reward_margin", "ablation_n": len(pairs), "kl": kls,
            "scores": {name: float(v.mean()) for name, v in margins.items()}, "samples": margins, "prefix": None,
            "t6_metric": "dpo_implicit_reward_margin", "frequencies": freqs, "randoms": dict(randoms)}


# the task kind's `ablation_metric` -> the scorer that measures it under each condition
SCORERS = {"vader_reward": score_vader, "dpo_implicit_reward_margin": score_dpo}


def ablation_metrics(result: dict[str, Any] | None, n_random: int, reason: str | None) -> dict[str, Any]:
    """Paper method: the condition means in the validate.json schema (`ablation_random` = mean of
    the frequency-matched draws)."""
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
        "ablation_random_control": "frequency_matched",
        # mean KL(no hook || condition) of next-token distributions: did the intervention act?
        "ablation_kl_reconstruction": kls.get("reconstruction"),
        "ablation_kl_related": kls.get("related"),
        "ablation_kl_random": float(np.mean(kl_draws)) if kl_draws else None,
        "ablation_reason": reason,
    }


def table6_metrics(result: dict[str, Any] | None, related: dict[int, list[int]], n_random: int, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Every condition − SAE reconstruction per sample (completion reward / DPO margin), mean and
    paired-bootstrap 95 % CI; the random draws pooled (their CI also resamples the draws);
    related − random too."""
    keys = ["t6_n", "t6_prefix_reward", "t6_no_hook", "t6_reconstruction", "t6_related", "t6_random",
            "t6_related_token_freq", "t6_random_token_freq"]
    for c in ("no_hook", "related", "random", "related_vs_random"):
        keys += [f"t6_{c}_delta", f"t6_{c}_ci_low", f"t6_{c}_ci_high"]
    out: dict[str, Any] = {k: None for k in keys}
    out.update({"t6_metric": (result or {}).get("t6_metric"), "t6_random_draw_deltas": [], "t6_n": 0})
    if not result:
        return out
    s = result["samples"]
    rec = s["reconstruction"]
    draws = [s[f"random{i}"] for i in range(n_random) if f"random{i}" in s]
    prefix = result.get("prefix")
    out.update({"t6_n": len(rec), "t6_prefix_reward": None if prefix is None else float(np.mean(prefix)),
                "t6_no_hook": float(s["no_hook"].mean()), "t6_reconstruction": float(rec.mean()), "t6_related": float(s["related"].mean()),
                "t6_related_token_freq": mean_frequency(related, result["frequencies"])})
    pairs = [("no_hook", s["no_hook"], rec), ("related", s["related"], rec)]
    if draws:
        stacked = np.stack(draws)  # [draws, samples]: the CI resamples draws as well as samples
        out["t6_random"] = float(stacked.mean())
        out["t6_random_draw_deltas"] = [float((d - rec).mean()) for d in draws]
        out["t6_random_token_freq"] = float(np.mean([mean_frequency(z, result["frequencies"]) or 0.0 for z in result["randoms"].values()]))
        pairs += [("random", stacked, rec), ("related_vs_random", s["related"], stacked)]
    for name, a, b in pairs:
        delta, lo, hi = ablation.paired_delta(a, b, n_bootstrap, seed)
        out.update({f"t6_{name}_delta": delta, f"t6_{name}_ci_low": lo, f"t6_{name}_ci_high": hi})
    return out


def write_samples(path: Any, result: dict[str, Any] | None) -> None:
    """table6_samples.csv: one row per prefix / pair, its score under every condition (completion
    reward or DPO margin; `_full` = prefix + completion, the paper's quantity)."""
    cols: dict[str, np.ndarray] = {}
    if result:
        if result.get("prefix") is not None:
            cols["prefix_reward"] = result["prefix"]
        cols.update(result["samples"])
        cols.update({f"{k}_full": v for k, v in result.get("full", {}).items()})
    names = list(cols) or ["reconstruction", "related"]
    n = len(next(iter(cols.values()))) if cols else 0
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sample", *names])
        for i in range(n):
            w.writerow([i, *(f"{float(cols[c][i]):.6g}" for c in names)])


def explainer_provenance(model: str, task: str) -> dict[str, Any]:
    """Who labelled the features this validation rests on, and how well its explanations scored
    (from explain.json): `explainer`, `llm_model`, `explanation_score_<explainer>_mean`."""
    explained = io.read_json(paths.report_dir(model, task) / "explain.json")
    keys = ["explainer", "llm_model"] + sorted(k for k in explained if k.startswith("explanation_score_") and k.endswith("_mean"))
    return {k: explained.get(k) for k in keys}


def run(params: Params, model: str, task: str) -> None:
    """Tables 7 and 6 the paper's way and the ways that can fail, and the MMCS beside its null."""
    from lfp.sae import load_sae
    from lfp.core.stage_context import open_stage

    cfg = params.validate
    kind = kind_of(params, task)
    lexicon = kind.probe_method == "ridge"
    related = related_features(model, task)
    explained = explained_features(model, task)
    tensors, index = load_probe_inputs(model, task)
    source = str(paths.report_dir(model, task) / "features.jsonl")
    metrics: dict[str, Any] = {
        "paper_method": PAPER_METHOD,
        "delta_threshold": cfg.delta_threshold,
        "predicted_kind": "rescaled_delta" if lexicon else "logistic_decision_function",
        "n_related_features": sum(len(f) for f in related.values()),
    }
    metrics.update(feature_frequency(tensors["codes"], tensors["predicted"], columns(index, related, source), cfg.delta_threshold))
    expl_cols = [columns(index, {row["layer"]: [row["feature"]]}, source)[0] for row in explained]
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
    log_params = {"validate": section_dict(cfg), "beta": None if lexicon else params.finetune[task].beta}
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
            result = SCORERS[kind.ablation_metric](params, model, task, lm, tokenizer, saes, related)
        metrics.update(ablation_metrics(result, cfg.random_controls, reason))
        metrics.update(table6_metrics(result, related, cfg.random_controls, cfg.bootstrap, params.seed))
        io.write_jsonl(paths.table7_features_file(model, task), t7_rows)
        write_samples(paths.table6_samples_file(model, task), result)
        metrics.update(explainer_provenance(model, task))
        run_.write_metrics(paths.report_dir(model, task) / "validate.json", metrics)
