"""The validated LFP measurement of preference (DPO) tasks, the analogue of the lexicon tasks'
learned values: what did DPO teach the model, and do the activations encode it?

Ground truth per held-out pair (never trained on): DPO's implicit reward of each reply,
r(x, y) = β (log π_ft(y|x) − log π_base(y|x)), and its margin r(chosen) − r(rejected). Its
accuracy against the human label says whether DPO learned a preference that generalises.

Features per reply A(x, y): the mean over the reply's tokens of each chosen layer's code,
per-layer normalised, from three sources on the same tokens:
- finetuned: the fine-tuned model through its own SAEs;
- base: the base model through its own SAEs (the control: was the pattern there before?);
- difference: fine-tuned minus base activations, both through the fine-tuned SAEs (one dictionary,
  so a feature index means the same thing on both sides).

Probes, all split by dialogue (a pair is wholly train or wholly test):
- pointwise: logistic, chosen vs rejected reply, one reply at a time (the paper's probe form);
- pairwise: logistic on A(chosen) − A(rejected) with a seeded random orientation per pair;
- implicit reward: ridge from A(x, y) to r(x, y), scored by Kendall τ on test replies and by how
  often the predicted margin has the sign of the true margin.
Beside them, on the same split: the text-only bag-of-words baseline (same three probe forms on
binary word counts of the reply), refits on shuffled labels, bootstrap CIs over test pairs, and the
fine-tuned − base difference with a paired bootstrap CI. Over `measure.pair_split_seeds` dialogue
splits, within each subset and across subsets: lfp.tasks.preference_dpo.measure_splits.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from lfp.tasks.preference_dpo import dpo
from lfp.core import io, paths
from lfp.measure import metrics
from lfp.core.params import Params, section_dict
from lfp.core.data import prepared_file
from lfp.core.errors import DataError
from lfp.core.layers import chosen_layers
from lfp.measure.probes import fit_logistic, fit_ridge, shuffled_labels, split_by_group
from lfp.core.stage_context import open_stage
from lfp.tasks.preference_dpo.measure_splits import fit_pairwise, orientation, split_probe_metrics
from lfp.tasks.lexicon_rl.word_probes import layer_scales

log = logging.getLogger(__name__)
SOURCES = ("finetuned", "base", "difference")
PAIR_CSV_FIELDS = ("id", "split", "implicit_reward_chosen", "implicit_reward_rejected", "implicit_margin",
                   "pairwise_finetuned", "pairwise_base", "pairwise_bow", "reward_probe_margin_finetuned")


@dataclass
class PairFeatures:
    """Per source: reply features [n_pairs, 2, d] (chosen = 0, rejected = 1) and layer widths."""

    x: dict[str, np.ndarray]
    widths: list[int]


def reply_windows(tokenizer: Any, rows: list[dict[str, Any]], side: str) -> list[tuple[list[int], list[int]]]:
    """(ids of prompt + reply + EOS, positions of the reply's tokens), tokenized as DPO does."""
    out = []
    for row in rows:
        ids, first = dpo.encode(tokenizer, row["prompt"], row[side])
        out.append((ids, list(range(min(first, len(ids) - 1), len(ids)))))
    return out


class _Identity:
    """An 'SAE' whose codes are the activations themselves (for raw-activation features)."""

    def __init__(self, width: int) -> None:
        self.d_hidden = width

    def encode(self, x: Any) -> Any:
        return x


def reply_features(stage: Any, params: Params, model: str, task: str, rows: list[dict[str, Any]], base: Any,
                   finetuned: Any, tokenizer: Any) -> PairFeatures:
    from lfp.measure.probe_codes import element_codes_sets
    from lfp.sae import load_sae

    layers = chosen_layers(model, task)
    ratio, bs = min(params.sae.ratios), params.measure.batch_size
    saes = {src: {L: load_sae(paths.sae_path(model, task, L, ratio, src)).to(stage.device).eval() for L in layers}
            for src in ("finetuned", "base")}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    windows = {side: reply_windows(tokenizer, rows, side) for side in ("chosen", "rejected")}

    def codes(lm: Any, sets: list[dict[int, Any]], what: str) -> list[np.ndarray]:
        per_side = [element_codes_sets(lm, sets, windows[side], bs, pad, f"{what} {side}") for side in ("chosen", "rejected")]
        return [np.stack([side[i] for side in per_side], axis=1) for i in range(len(sets))]

    (ft,) = codes(finetuned, [saes["finetuned"]], "fine-tuned")
    base_own, base_via_ft = codes(base, [saes["base"], saes["finetuned"]], "base")  # one base forward pass, two dictionaries
    x = {"finetuned": ft, "base": base_own, "difference": ft - base_via_ft}
    return PairFeatures(x, [int(saes["finetuned"][L].d_hidden) for L in layers])


def normalised(x: np.ndarray, widths: list[int], train: np.ndarray) -> np.ndarray:
    """Per-layer normalisation fitted on the training pairs' replies (both sides)."""
    offsets = [int(o) for o in np.cumsum([0, *widths[:-1]])]
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    scales = layer_scales(x[train].reshape(-1, x.shape[-1]).astype(np.float64), offsets, widths)
    return (flat / scales).reshape(x.shape)


def bow_features(rows: list[dict[str, Any]], train: np.ndarray) -> np.ndarray:
    """Binary bag of words of each reply [n_pairs, 2, vocab], the vocabulary fitted on training replies."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(binary=True, lowercase=True, min_df=2)
    vec.fit([r[side] for r, t in zip(rows, train) if t for side in ("chosen", "rejected")])
    mats = [vec.transform([r[side] for r in rows]).toarray().astype(np.float64) for side in ("chosen", "rejected")]
    return np.stack(mats, axis=1)


@dataclass
class ProbeResult:
    """Per test pair: whether each probe form got it right, and the predicted margins."""

    pointwise: np.ndarray  # fraction of the pair's two replies classified right (0, 0.5, 1)
    pairwise: np.ndarray  # bool
    pairwise_score: np.ndarray  # decision value for (chosen − rejected)
    reward_tau: float  # τ(predicted, true implicit reward) over test replies
    reward_margin_sign: np.ndarray  # bool: sign(predicted margin) == sign(true margin)
    reward_margin: np.ndarray
    shuffled_pairwise: float


def run_probes(x: np.ndarray, reward: np.ndarray, train: np.ndarray, params: Params) -> ProbeResult:
    """The three probe forms on reply features `x` [n, 2, d] and implicit rewards `reward` [n, 2]."""
    cfg, seed = params.probe, params.seed
    test = ~train
    n_tr = int(train.sum())
    point = fit_logistic(x[train].reshape(2 * n_tr, -1), np.tile([1, 0], n_tr), cfg.logistic_c, seed)
    point_pred = point.predict(x[test].reshape(-1, x.shape[-1])).reshape(-1, 2)
    pointwise = ((point_pred[:, 0] == 1).astype(float) + (point_pred[:, 1] == 0).astype(float)) / 2

    sign = orientation(len(x), seed)
    delta = (x[:, 0] - x[:, 1]) * sign[:, None]
    label = (sign > 0).astype(int)
    pair = fit_pairwise(delta[train], label[train], cfg.logistic_c, seed)
    score = pair.decision_function(x[test][:, 0] - x[test][:, 1])
    shuffled = [float(np.mean((fit_pairwise(delta[train], y, cfg.logistic_c, seed).decision_function(delta[test]) > 0) == label[test]))
                for y in shuffled_labels(label[train], seed, cfg.shuffled_repeats)]

    ridge = fit_ridge(x[train].reshape(2 * n_tr, -1), reward[train].reshape(-1), cfg.ridge_alpha)
    pred = ridge.predict(x[test].reshape(-1, x.shape[-1])).reshape(-1, 2)
    tau, _ = metrics.kendall(pred.reshape(-1), reward[test].reshape(-1))
    margin = pred[:, 0] - pred[:, 1]
    true_margin = reward[test][:, 0] - reward[test][:, 1]
    return ProbeResult(pointwise, score > 0, score, tau, np.sign(margin) == np.sign(true_margin), margin, float(np.mean(shuffled)))


def mean_ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean over test pairs with a percentile bootstrap CI (pairs resampled)."""
    v = np.asarray(values, dtype=float)
    lo, hi = metrics.bootstrap_ci(lambda w: float(np.average(v, weights=w)), np.arange(len(v)), n_boot, seed)
    return float(v.mean()), lo, hi


def paired_diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """mean(a) − mean(b) over the same test pairs, with a paired bootstrap CI."""
    return mean_ci(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), n_boot, seed)


def implicit_rewards(base: Any, finetuned: Any, tokenizer: Any, rows: list[dict[str, Any]], beta: float, device: Any, bs: int) -> np.ndarray:
    """r(x, y) = β (log π_ft(y|x) − log π_base(y|x)) for [chosen, rejected] of every pair."""
    lb = dpo.pair_log_probs(base, tokenizer, rows, device, bs)
    lf = dpo.pair_log_probs(finetuned, tokenizer, rows, device, bs)
    return beta * np.stack([lf[0] - lb[0], lf[1] - lb[1]], axis=1)


def summarise(results: dict[str, ProbeResult], n_boot: int, seed: int) -> dict[str, Any]:
    """The lfp.json keys of the probes (issue #16 names) with CIs and the ft − base differences."""
    out: dict[str, Any] = {}
    names = {"pointwise": "probe_accuracy", "pairwise": "pairwise_accuracy", "reward_margin_sign": "reward_probe_margin_accuracy"}
    for source, r in results.items():
        for attr, key in names.items():
            mean, lo, hi = mean_ci(getattr(r, attr), n_boot, seed)
            name = key.replace("probe_accuracy", "bow_baseline_accuracy") if source == "bow" and key == "probe_accuracy" else f"{key}_{source}"
            out.update({name: mean, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
        out[f"reward_probe_tau_{source}"] = r.reward_tau
        out[f"pairwise_shuffled_accuracy_{source}"] = r.shuffled_pairwise
    for attr, key in names.items():
        d, lo, hi = paired_diff_ci(getattr(results["finetuned"], attr), getattr(results["base"], attr), n_boot, seed)
        out.update({f"{key}_diff": d, f"{key}_diff_ci_low": lo, f"{key}_diff_ci_high": hi})
    return out


def write_pairs_csv(path: Any, rows: list[dict[str, Any]]) -> None:
    with io.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=PAIR_CSV_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def run_preference(params: Params, model: str, task: str) -> None:
    cfg, ft_cfg = params.measure, params.finetune[task]
    heldout_file = prepared_file(task, "heldout")
    heldout = dpo.load_pairs(heldout_file)
    if len(heldout) < 4:
        raise DataError(f"{heldout_file}: {len(heldout)} held-out pairs; the measurement needs at least 4")
    for src in ("finetuned", "base"):
        for layer in chosen_layers(model, task):
            path = paths.sae_path(model, task, layer, min(params.sae.ratios), src)
            if not path.is_dir():
                raise DataError(f"{path}: missing (run `lfp sae --model {model} --task {task} --source {src}`)")
    tags = {"ground_truth": "dpo_implicit_reward", "probe_split": "by_dialogue", "paper_method": "probe.json (triples)"}
    log_params = {"seed": params.seed, "measure": section_dict(cfg), "finetune": {task: section_dict(ft_cfg)}}
    with open_stage("measure", params, model=model, task=task, tags=tags, log_params=log_params,
                    dvc_stage="measure_pairs") as stage:
        base, tok = stage.load(paths.base_model_dir(model))
        finetuned = stage.load(paths.finetuned_dir(model, task))[0]
        rows, n_cut = dpo.fit_to_context(tok, dpo.seeded_order(heldout, params.seed)[: cfg.pairs or None], ft_cfg.max_length)
        reward = implicit_rewards(base, finetuned, tok, rows, ft_cfg.beta, stage.device, cfg.batch_size)
        margin = reward[:, 0] - reward[:, 1]
        test = split_by_group(np.array([r["id"] for r in rows], dtype=object), cfg.pair_test_fraction, params.seed)
        train = ~test
        feats = reply_features(stage, params, model, task, rows, base, finetuned, tok)
        results = {src: run_probes(normalised(feats.x[src], feats.widths, train), reward, train, params) for src in SOURCES}
        results["bow"] = run_probes(bow_features(rows, train), reward, train, params)

        acc, lo, hi = mean_ci(margin > 0, cfg.bootstrap, params.seed)
        out: dict[str, Any] = {
            "implicit_reward_acc": acc, "implicit_reward_acc_ci_low": lo, "implicit_reward_acc_ci_high": hi,
            "implicit_reward_margin_mean": float(margin.mean()), "n_pairs": len(rows), "n_pairs_cut_to_context": n_cut,
            "n_test": int(test.sum()), "n_train": int(train.sum()), "context_tokens": ft_cfg.max_length,
            "triples_backend": params.contrastive[task].backend,
        }
        out.update(summarise(results, cfg.bootstrap, params.seed))
        features = {src: (lambda tr, s=src: normalised(feats.x[s], feats.widths, tr)) for src in SOURCES}
        features["bow"] = lambda tr: bow_features(rows, tr)
        out.update(split_probe_metrics(features, np.array([r["id"] for r in rows], dtype=object),
                                       np.array([r.get("subset", task) for r in rows], dtype=object), cfg.pair_test_fraction,
                                       [params.seed + k for k in range(cfg.pair_split_seeds)], params.probe.logistic_c, params.seed))
        report = paths.report_dir(model, task)
        ids = [r["id"] for r in rows]
        test_idx = {i: k for k, i in enumerate(np.flatnonzero(test))}
        csv_rows = []
        for i, pid in enumerate(ids):
            k = test_idx.get(i)
            csv_rows.append({"id": pid, "split": "test" if k is not None else "train",
                             "implicit_reward_chosen": float(reward[i, 0]), "implicit_reward_rejected": float(reward[i, 1]),
                             "implicit_margin": float(margin[i]),
                             **({f"pairwise_{s}": float(results[s].pairwise_score[k]) for s in ("finetuned", "base", "bow")} if k is not None
                                else {f"pairwise_{s}": "" for s in ("finetuned", "base", "bow")}),
                             "reward_probe_margin_finetuned": float(results["finetuned"].reward_margin[k]) if k is not None else ""})
        write_pairs_csv(report / "lfp_pairs.csv", csv_rows)
        stage.run.write_metrics(report / "lfp.json", out)
        stage.run.log_artifact(report / "lfp_pairs.csv")
        log.info("measure %s: implicit-reward acc %.3f [%.3f, %.3f]; pairwise ft %.3f base %.3f bow %.3f",
                 paths.run_id(model, task), acc, lo, hi, out["pairwise_accuracy_finetuned"], out["pairwise_accuracy_base"],
                 out["pairwise_accuracy_bow"])
        log.info("measure %s: pairwise ft over %d dialogue splits %.3f [%.3f, %.3f] (reported split rank %.1f); subsets %s",
                 paths.run_id(model, task), cfg.pair_split_seeds, out["pairwise_accuracy_finetuned_split_mean"],
                 out["pairwise_accuracy_finetuned_split_ci_low"], out["pairwise_accuracy_finetuned_split_ci_high"],
                 out["pairwise_accuracy_finetuned_reported_split_rank"], out["pair_subsets"] or "none measured apart")
