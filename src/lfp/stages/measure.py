"""`lfp measure --model M --task T` (lexicon tasks): an LFP measurement that a lookup table cannot pass.

1. Behavioural ground truth (lfp.learned): each word's learned value, the fine-tune's change of the
   log-probability of the word after its real review contexts, with a CI; τ against the lexicon.
2. Probes split by word (lfp.word_probes), on the fine-tuned model's codes, the base model's and
   their τ difference (paired bootstrap), with the identity-only and sign-only ceilings on the same
   split and τ within each sign. The paper's split-by-triple numbers stay in probe.json ("paper
   method"); the identity ceiling on that split is reported here beside them.
3. A planted positive control: a fine-tune (same GRPO settings and seed) whose reward flips the sign
   of `measure.planted_words`; the planted words must separate from the other positive words by
   their learned values (AUC, permutation p), and not under the un-planted fine-tune; the same test
   on the probe's view (the paper-method ridge probe applied to each word's SAE codes in its real
   contexts, planted model minus base: `planted_probe_auc`).
4. A negative control: a fine-tune on a shuffled lexicon (values permuted across words); its
   learned values must not track the real lexicon (τ CI covering 0).
5. Seeds: the learned-value τ of `seed` and of every `measure.seeds` fine-tune, mean and 95 % CI.
Outputs: reports/runs/{m}-{t}/lfp.json (DVC metrics + MLflow) and lfp_words.csv (per word).
"""

from __future__ import annotations

import csv
import logging
from typing import Any

import numpy as np

from lfp import io, metrics, paths, reward, rl
from lfp.config import Params, section_dict
from lfp.data import prepared_file
from lfp.errors import ConfigError, DataError
from lfp.figures import plot_learned_values
from lfp.learned import LearnedValues, context_windows, learned_values, natural_contexts, span_logprobs
from lfp.stage_context import open_stage
from lfp.triples import load_triples
from lfp.word_probes import (
    auc,
    identity_predictions,
    layer_normalise,
    layer_scales,
    paired_tau_difference,
    permutation_p,
    ridge_predictions,
    score_words,
    sign_ceiling,
    word_means,
    word_split,
)

log = logging.getLogger(__name__)
CSV_FIELDS = ("word", "lexicon_value", "reward_value", "learned_value", "learned_ci_low", "learned_ci_high",
              "n_contexts", "learned_value_planted_model", "learned_value_shuffled_model", "pred_finetuned",
              "pred_base", "split", "planted")


def tau_with_ci(lv: LearnedValues, target: dict[str, float], n_boot: int, seed: int) -> dict[str, float]:
    """τ(learned value, target value) over words, p, and a percentile CI resampling words."""
    x = lv.value
    y = np.array([target[w] for w in lv.words])
    tau, p = metrics.kendall(x, y)
    rng = np.random.default_rng(seed)
    boots = [metrics.kendall(x[i], y[i])[0] for i in (rng.integers(0, len(x), len(x)) for _ in range(n_boot))]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5]) if np.isfinite(boots).any() else (np.nan, np.nan)
    return {"tau": tau, "p": p, "ci_low": float(lo), "ci_high": float(hi)}


def seed_summary(taus: list[float]) -> dict[str, float]:
    """Mean and 95 % t-interval across fine-tuning seeds."""
    from scipy import stats

    x = np.asarray(taus, dtype=float)
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci_low": float(x.mean() - half), "ci_high": float(x.mean() + half)}


def planted_detection(per_word: dict[str, float], planted: set[str], lexicon: dict[str, float], n_perm: int, seed: int) -> dict[str, float]:
    """Planted words vs the other positive words: AUC of −(per-word change) (the plant taught the
    model to avoid them) and its permutation p."""
    words = [w for w in sorted(per_word) if lexicon[w] > 0]
    values = np.array([per_word[w] for w in words])
    labels = np.array([w in planted for w in words])
    return {"auc": auc(-values, labels), "p": permutation_p(-values, labels, n_perm, seed),
            "n_planted": int(labels.sum()), "n_other": int((~labels).sum()),
            "mean_planted": float(values[labels].mean()) if labels.any() else float("nan"),
            "mean_other": float(values[~labels].mean()) if (~labels).any() else float("nan")}


def word_heldout_probes(model: str, task: str, params: Params, lexicon: dict[str, float]) -> tuple[dict[str, Any], dict[str, tuple[float, float]], set[str]]:
    """Probe τ on words never seen in training, fine-tuned vs base, with the ceilings; also the
    identity ceiling on the paper's split (by triple). Returns metrics, per-word predictions and
    the test words."""
    directory = paths.probe_data_dir(model, task)
    tensors, index = io.load_tensors(directory / "inputs.safetensors"), io.read_json(directory / "inputs.json")
    if "base_codes" not in tensors or "words" not in index:
        raise DataError(f"{directory}: probe inputs lack base_codes / words (re-run the probe with probe.base_control: true)")
    words = np.asarray(index["words"], dtype=object)
    values = np.array([lexicon[w] for w in words])
    cfg = params.measure
    is_test = word_split(words, cfg.word_test_fraction, params.seed)
    out: dict[str, Any] = {"n_words_test": int(len(set(words[is_test]))), "n_words_train": int(len(set(words[~is_test])))}
    scores = {}
    for source, codes_key, target_key in (("finetuned", "codes", "target"), ("base", "base_codes", "base_target")):
        x = layer_normalise(tensors[codes_key].numpy(), index["offsets"], index["widths"], ~is_test)
        pred = ridge_predictions(x, tensors[target_key].numpy().astype(float), is_test, params.probe.ridge_alpha)
        scores[source] = s = score_words(words[is_test], pred, values[is_test])
        out.update({f"probe_tau_word_heldout_{source}": s.tau, f"probe_tau_word_heldout_{source}_p": s.tau_p,
                    f"probe_tau_word_heldout_{source}_positive_words": s.tau_positive,
                    f"probe_tau_word_heldout_{source}_negative_words": s.tau_negative})
    diff, lo, hi = paired_tau_difference(scores["finetuned"], scores["base"], cfg.bootstrap, params.seed)
    out.update({"probe_tau_word_heldout_diff": diff, "probe_tau_word_heldout_diff_ci_low": lo, "probe_tau_word_heldout_diff_ci_high": hi})
    target = tensors["target"].numpy().astype(float)
    ident = score_words(words[is_test], identity_predictions(words, target, is_test, params.probe.ridge_alpha), values[is_test])
    # a constant prediction (no test word was seen in training) ranks nothing: τ counted as 0
    out["identity_ceiling_tau"] = ident.tau if np.isfinite(ident.tau) else 0.0
    out["sign_ceiling_tau"] = sign_ceiling(scores["finetuned"].value, params.seed)
    paper_test = tensors["is_test"].numpy().astype(bool)
    ident_paper = score_words(words[paper_test], identity_predictions(words, target, paper_test, params.probe.ridge_alpha), values[paper_test])
    out["paper_split_identity_ceiling_tau"] = ident_paper.tau
    out["paper_split_sign_ceiling_tau"] = sign_ceiling(ident_paper.value, params.seed)
    out["paper_split_test_words_seen_in_training"] = float(np.mean([w in set(words[~paper_test]) for w in set(words[paper_test])]))
    preds = {w: (pf, pb) for w, pf, pb in zip(scores["finetuned"].words, scores["finetuned"].predicted, scores["base"].predicted)}
    return out, preds, set(words[is_test].tolist())


def probe_divergence(stage: Any, params: Params, model: str, task: str, windows: list, ctx_words: list[str],
                     pad: int, base: Any, policies: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The probe's view of what a fine-tune changed, per word: the ridge probe (fitted on all the
    fine-tuned model's contrastive rows, per-layer normalised) applied to the fine-tuned SAEs' codes
    of each word in its real contexts, under `policy` minus under the base model. A plant that
    taught the model to disprefer a word should push its predicted feedback down."""
    from lfp.probe_codes import element_codes
    from lfp.sae import load_sae

    directory = paths.probe_data_dir(model, task)
    tensors, index = io.load_tensors(directory / "inputs.safetensors"), io.read_json(directory / "inputs.json")
    layers, offsets, widths = index["layers"], index["offsets"], index["widths"]
    train = tensors["codes"].numpy().astype(float)
    scales = layer_scales(train, offsets, widths)
    from sklearn.linear_model import Ridge

    probe = Ridge(alpha=params.probe.ridge_alpha).fit(train / scales, tensors["target"].numpy().astype(float))
    saes = {L: load_sae(paths.sae_path(model, task, L, min(params.sae.ratios))).to(stage.device).eval() for L in layers}
    keep = [i for i, (_, pos) in enumerate(windows) if pos]
    kept_windows, kept_words = [windows[i] for i in keep], [ctx_words[i] for i in keep]
    bs = params.measure.batch_size

    def predicted(policy: Any) -> np.ndarray:
        return probe.predict(element_codes(policy, saes, kept_windows, bs, pad, "measure codes") / scales)

    base_pred = predicted(base)
    return {name: word_means(kept_words, predicted(policy) - base_pred) for name, policy in policies.items()}


def write_words_csv(path: Any, rows: list[dict[str, Any]]) -> None:
    with io.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def run(params: Params, model: str, task: str) -> None:
    cfg, ft_cfg = params.measure, params.finetune[task]
    if task not in cfg.tasks:
        raise ConfigError(f"params: 'measure.tasks' does not name '{task}'")
    lexicon = reward.lexicon()
    planted = set(cfg.planted_words)
    planted_lex, shuffled_lex = reward.planted_lexicon(planted), reward.shuffled_lexicon(params.seed)
    triples = load_triples(task, lexicon=True)
    words = sorted({w.lower() for role in ("positive", "negative") for w in triples.words[role]} | planted)
    test_file, train_file = prepared_file(task, "test"), prepared_file(task, "train")
    texts = [r["text"] for r in io.read_jsonl(test_file, {"text": str})]
    train_rows = rl.long_reviews(io.read_jsonl(train_file, rl.VADER_FIELDS), ft_cfg.min_review_chars, train_file)
    ctx = natural_contexts(texts, words, cfg.contexts_per_word)
    if not ctx.words:
        raise DataError(f"{test_file}: no occurrence of any contrastive or planted word")
    tags = {"ground_truth": "learned_value_logprob_change", "probe_split": "by_word", "paper_method": "probe.json (split by triple)"}
    with open_stage("measure", params, model=model, task=task, tags=tags,
                    log_params={"seed": params.seed, "measure": section_dict(cfg), "finetune": {task: section_dict(ft_cfg)}}) as stage:
        base, tok = stage.load(paths.base_model_dir(model))
        windows = context_windows(tok, ctx, cfg.context_tokens)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        lp_base = span_logprobs(base, windows, cfg.batch_size, pad)

        def learned(policy: Any) -> LearnedValues:
            return learned_values(ctx.words, span_logprobs(policy.to(stage.device), windows, cfg.batch_size, pad) - lp_base)

        finetuned = stage.load(paths.finetuned_dir(model, task))[0]
        main = learned(finetuned)
        base_dir = paths.base_model_dir(model)
        by_seed = {params.seed: main}
        for seed in cfg.seeds:
            by_seed[seed] = learned(rl.finetune_policy(base_dir, train_rows, ft_cfg, seed)[0])
        planted_model = rl.finetune_policy(base_dir, train_rows, ft_cfg, params.seed, planted_lex)[0]
        planted_lv = learned(planted_model)
        shuffled_lv = learned(rl.finetune_policy(base_dir, train_rows, ft_cfg, params.seed, shuffled_lex)[0])

        out: dict[str, Any] = {"n_words": len(main.words), "n_contexts": len(ctx.words), "seeds": sorted(by_seed)}
        t = tau_with_ci(main, lexicon, cfg.bootstrap, params.seed)
        out.update({"learned_value_tau": t["tau"], "learned_value_tau_p": t["p"],
                    "learned_value_tau_ci_low": t["ci_low"], "learned_value_tau_ci_high": t["ci_high"],
                    # the main fine-tune's reward is the lexicon itself
                    "learned_value_tau_reward": t["tau"]})
        seed_taus = [metrics.kendall(lv.value, np.array([lexicon[w] for w in lv.words]))[0] for lv in by_seed.values()]
        s = seed_summary(seed_taus)
        out.update({"learned_value_tau_per_seed": seed_taus, "learned_value_tau_seed_mean": s["mean"],
                    "learned_value_tau_seed_ci_low": s["ci_low"], "learned_value_tau_seed_ci_high": s["ci_high"]})
        d = planted_detection(dict(zip(planted_lv.words, planted_lv.value)), planted, lexicon, cfg.permutations, params.seed)
        d_base = planted_detection(dict(zip(main.words, main.value)), planted, lexicon, cfg.permutations, params.seed)
        out.update({"planted_auc": d["auc"], "planted_p": d["p"], "planted_n": d["n_planted"], "planted_n_other": d["n_other"],
                    "planted_mean_learned": d["mean_planted"], "planted_mean_learned_other": d["mean_other"],
                    # the same score where nothing was planted (the normal fine-tune)
                    "planted_auc_base": d_base["auc"], "planted_p_base": d_base["p"],
                    "planted_learned_value_tau_reward": tau_with_ci(planted_lv, planted_lex, cfg.bootstrap, params.seed)["tau"],
                    "planted_detected": bool(np.isfinite(d["auc"]) and d["p"] < 0.05 and d["auc"] > 0.5)})
        shifts = probe_divergence(stage, params, model, task, windows, ctx.words, pad, base,
                                  {"planted": planted_model, "finetuned": finetuned})
        for name, key in (("planted", "planted_probe_auc"), ("finetuned", "planted_probe_auc_base")):
            pd_ = planted_detection(shifts[name], planted, lexicon, cfg.permutations, params.seed)
            out.update({key: pd_["auc"], key.replace("_auc", "_p"): pd_["p"]})
        sh = tau_with_ci(shuffled_lv, lexicon, cfg.bootstrap, params.seed)
        out.update({"shuffled_learned_value_tau": sh["tau"], "shuffled_learned_value_tau_ci_low": sh["ci_low"],
                    "shuffled_learned_value_tau_ci_high": sh["ci_high"],
                    "shuffled_learned_value_tau_reward": tau_with_ci(shuffled_lv, shuffled_lex, cfg.bootstrap, params.seed)["tau"],
                    # "detected" = its learned values track the real lexicon: a CI clear of 0
                    "shuffled_detected": bool(np.isfinite([sh["ci_low"], sh["ci_high"]]).all() and not (sh["ci_low"] <= 0.0 <= sh["ci_high"]))})
        probe_metrics, preds, test_words = word_heldout_probes(model, task, params, lexicon)
        out.update(probe_metrics)

        planted_by_word = dict(zip(planted_lv.words, planted_lv.value))
        shuffled_by_word = dict(zip(shuffled_lv.words, shuffled_lv.value))
        rows = [{"word": w, "lexicon_value": lexicon[w], "reward_value": lexicon[w], "learned_value": float(v),
                 "learned_ci_low": float(lo), "learned_ci_high": float(hi), "n_contexts": int(n),
                 "learned_value_planted_model": float(planted_by_word.get(w, np.nan)),
                 "learned_value_shuffled_model": float(shuffled_by_word.get(w, np.nan)),
                 "pred_finetuned": float(preds[w][0]) if w in preds else "", "pred_base": float(preds[w][1]) if w in preds else "",
                 "split": "test" if w in test_words else ("train" if w in set(triples.words["positive"] + triples.words["negative"]) else "not_in_probe"),
                 "planted": w in planted}
                for w, v, lo, hi, n in zip(main.words, main.value, main.ci_low, main.ci_high, main.n_contexts)]
        write_words_csv(paths.report_dir(model, task) / "lfp_words.csv", rows)
        plot_learned_values(paths.report_dir(model, task) / "lfp_learned_values.png",
                            np.array([r["lexicon_value"] for r in rows]), np.array([r["learned_value"] for r in rows]),
                            np.array([r["planted"] for r in rows]), np.array([r["learned_value_planted_model"] for r in rows]),
                            f"{paths.run_id(model, task)}: learned-value τ {out['learned_value_tau']:.3f}; planted AUC {out['planted_auc']:.2f}")
        stage.run.write_metrics(paths.report_dir(model, task) / "lfp.json", out)
        stage.run.log_artifact(paths.report_dir(model, task) / "lfp_words.csv")
        stage.run.log_artifact(paths.report_dir(model, task) / "lfp_learned_values.png")
        log.info("measure %s: learned-value tau %.3f; planted AUC %.2f (p %.3g); shuffled tau %.3f",
                 paths.run_id(model, task), out["learned_value_tau"], out["planted_auc"], out["planted_p"], out["shuffled_learned_value_tau"])
