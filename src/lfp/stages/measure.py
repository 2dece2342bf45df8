"""`lfp measure --model M --task T` (lexicon tasks): an LFP measurement that a lookup table cannot pass.

1. Behavioural ground truth (lfp.tasks.lexicon_rl.learned): each word's learned value, the fine-tune's change of the
   log-probability of the word after its real review contexts, with a CI; τ against the lexicon.
2. Probes split by word (lfp.tasks.lexicon_rl.word_probes), on the fine-tuned model's codes, the base model's (each
   through its own SAEs) and their τ difference (paired bootstrap), with the identity-only and
   sign-only ceilings on the same split and τ within each sign. The same probe on the *difference*
   of representations of the same tokens through ONE dictionary: fine-tuned codes minus the base
   model's codes through the fine-tuned SAEs (two dictionaries' codes cannot be subtracted). Every
   probe τ also over `seed` + `measure.seeds` word splits ("split seeds": the models are fixed,
   the held-out words change). The paper's split-by-triple numbers stay in probe.json ("paper
   method"); the identity ceiling on that split is reported here beside them.
3. A planted positive control: a fine-tune (same GRPO settings and seed) whose reward flips the sign
   of `measure.planted_words`; the planted words must separate from the other positive words by
   their learned values (AUC, permutation p), and not under the un-planted fine-tune; the same test
   on the probe's view (the paper-method ridge probe applied to each word's SAE codes in its real
   contexts, planted model minus base: `planted_probe_auc`).
4. A negative control: a fine-tune on a shuffled lexicon (values permuted across words); its
   learned values must not track the real lexicon (τ CI covering 0).
5. Seeds: the learned-value τ of `seed` and of every `measure.seeds` fine-tune, mean and 95 % CI.
6. Fig. 4 with a full axis: each held-out word's |probe error| against its learned value.
Outputs: reports/runs/{m}-{t}/lfp.json (DVC metrics + MLflow), lfp_words.csv (per word), and the two
controls as their own tasks (lfp.measure.controls): reports/runs/{m}-{t}-planted/ and -shuffled/.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np

from lfp.core import io, paths
from lfp.measure import metrics
from lfp.tasks.lexicon_rl import reward, rl
from lfp.core.config import Params, section_dict
from lfp.core.data import prepared_file
from lfp.core.errors import ConfigError, DataError
from lfp.report.figures import plot_error_vs_learned, plot_learned_values
from lfp.tasks.lexicon_rl.learned import LearnedValues, context_windows, learned_values, natural_contexts, span_logprobs
from lfp.measure.controls import (
    control_metrics,
    control_rows,
    planted_paired,
    planted_summary,
    shuffled_null,
    shuffled_verdict,
    tau_keys,
    tau_with_ci,
    within_sign_metrics,
    write_control,
    write_words_csv,
)
from lfp.tasks.preference_dpo.measure import run_preference
from lfp.readouts import ReadoutRuns, readout_controls
from lfp.readouts.diff_lens import LogitDiffLens, lens_windows
from lfp.core.stage_context import StageContext, open_stage
from lfp.tasks import kind_of
from lfp.measure.triples import load_triples, windows_for
from lfp.tasks.lexicon_rl.word_probes import (
    HeldoutProbe,
    error_vs_learned,
    heldout_probe,
    identity_predictions,
    layer_scales,
    paired_tau_difference,
    score_words,
    sign_ceiling,
    split_seed_taus,
    tau_ci,
    word_means,
    word_split,
)

log = logging.getLogger(__name__)
CSV_FIELDS = ("word", "lexicon_value", "reward_value", "learned_value", "learned_ci_low", "learned_ci_high",
              "n_contexts", "learned_value_planted_model", "learned_value_shuffled_model", "pred_finetuned",
              "pred_base", "pred_difference", "probe_shift", "split", "planted",
              "readout_logit_diff_lens")
# the controls' difference-probe keys repeated in the measured task's lfp.json (prefixed `planted_` / `shuffled_`)
DIFFERENCE_SUMMARY = ("probe_tau_word_heldout_difference", "probe_tau_word_heldout_difference_p",
                      "probe_tau_word_heldout_difference_ci_low", "probe_tau_word_heldout_difference_ci_high",
                      "probe_tau_word_heldout_difference_seed_mean")


def seed_summary(taus: list[float]) -> dict[str, float]:
    """Mean and 95 % t-interval across seeds (fine-tuning seeds or word-split seeds)."""
    mean, lo, hi = metrics.mean_t_interval(taus)
    return {"mean": mean, "ci_low": lo, "ci_high": hi}


@dataclass
class ProbeInputs:
    """The probe stage's rows (positive then negative element of each triple) as the measure reads
    them: words, lexicon values, layer layout, and per probe source its codes and target."""

    words: np.ndarray
    values: np.ndarray
    offsets: list[int]
    widths: list[int]
    sources: dict[str, tuple[np.ndarray, np.ndarray]]
    paper_test: np.ndarray


def load_probe_inputs(model: str, task: str, lexicon: dict[str, float], base_through_ft: np.ndarray | None) -> ProbeInputs:
    """data/probe/{m}-{t}/inputs.*; with `base_through_ft` (the base model's codes of the same rows
    through the fine-tuned SAEs) the difference source, fine-tuned codes − those, fitted on the
    fine-tuned rows' target (the signal the paper's probe regresses)."""
    directory = paths.probe_data_dir(model, task)
    tensors, index = io.load_tensors(directory / "inputs.safetensors"), io.read_json(directory / "inputs.json")
    if "base_codes" not in tensors or "words" not in index:
        raise DataError(f"{directory}: probe inputs lack base_codes / words (re-run the probe with probe.base_control: true)")
    words = np.asarray(index["words"], dtype=object)
    codes, target = tensors["codes"].numpy().astype(np.float64), tensors["target"].numpy().astype(float)
    sources = {"finetuned": (codes, target), "base": (tensors["base_codes"].numpy().astype(np.float64), tensors["base_target"].numpy().astype(float))}
    if base_through_ft is not None:
        if base_through_ft.shape != codes.shape:
            raise DataError(f"{directory}: base codes through the fine-tuned SAEs have shape {base_through_ft.shape}, "
                            f"the probe's codes {tuple(codes.shape)} (re-run the probe stage)")
        sources["difference"] = (codes - base_through_ft, target)
    return ProbeInputs(words, np.array([lexicon[w] for w in words]), index["offsets"], index["widths"], sources,
                       tensors["is_test"].numpy().astype(bool))


def word_heldout_probes(inputs: ProbeInputs, params: Params) -> tuple[dict[str, Any], dict[str, HeldoutProbe], np.ndarray]:
    """Probe τ on words never seen in training for every source, with CIs, split-seed intervals and
    the ceilings; also the identity ceiling on the paper's split (by triple). Returns metrics, the
    probes on the `seed` split and that split."""
    cfg, alpha, words, values = params.measure, params.probe.ridge_alpha, inputs.words, inputs.values
    is_test = word_split(words, cfg.word_test_fraction, params.seed)
    out: dict[str, Any] = {"n_words_test": int(len(set(words[is_test]))), "n_words_train": int(len(set(words[~is_test])))}
    probes = {name: heldout_probe(c, t, words, values, is_test, inputs.offsets, inputs.widths, alpha) for name, (c, t) in inputs.sources.items()}
    for name, probe in probes.items():
        out.update(probe_keys(name, probe, cfg.bootstrap, params.seed))
    diff, lo, hi = paired_tau_difference(probes["finetuned"].scores, probes["base"].scores, cfg.bootstrap, params.seed)
    out.update({"probe_tau_word_heldout_diff": diff, "probe_tau_word_heldout_diff_ci_low": lo, "probe_tau_word_heldout_diff_ci_high": hi})
    out.update(split_seed_metrics(inputs.sources, inputs, params))
    target = inputs.sources["finetuned"][1]
    ident = score_words(words[is_test], identity_predictions(words, target, is_test, alpha), values[is_test])
    # a constant prediction (no test word was seen in training) ranks nothing: τ counted as 0
    out["identity_ceiling_tau"] = ident.tau if np.isfinite(ident.tau) else 0.0
    out["sign_ceiling_tau"] = sign_ceiling(probes["finetuned"].scores.value, params.seed)
    paper_test = inputs.paper_test
    ident_paper = score_words(words[paper_test], identity_predictions(words, target, paper_test, alpha), values[paper_test])
    out["paper_split_identity_ceiling_tau"] = ident_paper.tau
    out["paper_split_sign_ceiling_tau"] = sign_ceiling(ident_paper.value, params.seed)
    out["paper_split_test_words_seen_in_training"] = float(np.mean([w in set(words[~paper_test]) for w in set(words[paper_test])]))
    return out, probes, is_test


def probe_keys(name: str, probe: HeldoutProbe, n_boot: int, seed: int) -> dict[str, float]:
    """`probe_tau_word_heldout_{name}` with its p, CI (resampling test words) and τ within each sign."""
    s, key = probe.scores, f"probe_tau_word_heldout_{name}"
    lo, hi = tau_ci(s, n_boot, seed)
    return {key: s.tau, f"{key}_p": s.tau_p, f"{key}_ci_low": lo, f"{key}_ci_high": hi,
            f"{key}_positive_words": s.tau_positive, f"{key}_negative_words": s.tau_negative}


def split_seed_metrics(sources: dict[str, tuple[np.ndarray, np.ndarray]], inputs: ProbeInputs, params: Params) -> dict[str, Any]:
    """Every word-held-out τ of `sources` over the word splits of `seed` and `measure.seeds`: mean
    and 95 % t-interval across splits. Named for what varies: the split, not the fine-tune."""
    seeds = sorted({params.seed, *params.measure.seeds})
    taus = split_seed_taus(sources, inputs.words, inputs.values, inputs.offsets, inputs.widths,
                           params.measure.word_test_fraction, seeds, params.probe.ridge_alpha)
    out: dict[str, Any] = {"probe_seed_kind": "word_split", "probe_split_seeds": seeds}
    for name, values in taus.items():
        s, key = seed_summary(values), f"probe_tau_word_heldout_{name}"
        out.update({f"{key}_per_split_seed": values, f"{key}_seed_mean": s["mean"],
                    f"{key}_seed_ci_low": s["ci_low"], f"{key}_seed_ci_high": s["ci_high"]})
    return out


def control_difference_probe(inputs: ProbeInputs, control_through_ft: np.ndarray, base_through_ft: np.ndarray, params: Params) -> dict[str, Any]:
    """The difference probe's null / positive control: (control fine-tune − base) codes through the
    fine-tuned SAEs, same rows, split, target and seeds as the measured fine-tune's. A shuffled
    reward taught no valence, so whatever τ it reaches is what the difference probe reads without
    a learned pattern (e.g. the SAE's nonlinearity on shifted activations)."""
    sources = {"difference": (control_through_ft - base_through_ft, inputs.sources["finetuned"][1])}
    is_test = word_split(inputs.words, params.measure.word_test_fraction, params.seed)
    probe = heldout_probe(*sources["difference"], inputs.words, inputs.values, is_test, inputs.offsets, inputs.widths, params.probe.ridge_alpha)
    out = probe_keys("difference", probe, params.measure.bootstrap, params.seed)
    out.update(split_seed_metrics(sources, inputs, params))
    return out


def finetuned_saes(stage: StageContext, params: Params, model: str, task: str) -> dict[int, Any]:
    """The fine-tuned model's small SAEs of the probe's layers (inputs.json), on the stage's device."""
    from lfp.sae import load_sae

    layers = io.read_json(paths.probe_data_dir(model, task) / "inputs.json")["layers"]
    return {L: load_sae(paths.sae_path(model, task, L, min(params.sae.ratios))).to(stage.device).eval() for L in layers}


def codes_through_saes(lm: Any, saes: dict[int, Any], triples: Any, tok: Any, pad: int, params: Params, desc: str) -> np.ndarray:
    """The probe's rows (positive then negative element of each triple, file order) read by `lm`
    through `saes` (the fine-tuned model's): two models' codes in ONE dictionary can be subtracted,
    so (fine-tuned − base) is what fine-tuning changed on the same tokens."""
    from lfp.measure.probe_codes import element_codes

    codes = [element_codes(lm, saes, windows_for(triples, role, tok, params.probe.max_length), params.probe.batch_size, pad,
                           f"{desc} through fine-tuned SAEs, {role}") for role in ("positive", "negative")]
    return np.stack(codes, axis=1).reshape(-1, codes[0].shape[1]).astype(np.float64)


def probe_divergence(params: Params, model: str, task: str, saes: dict[int, Any], windows: list, ctx_words: list[str],
                     pad: int, base: Any) -> Callable[[Any], dict[str, float]]:
    """The probe's view of what a fine-tune changed, per word: the ridge probe (fitted on all the
    fine-tuned model's contrastive rows, per-layer normalised) applied to the fine-tuned SAEs' codes
    of each word in its real contexts, under `policy` minus under the base model. A plant that
    taught the model to disprefer a word should push its predicted feedback down."""
    from sklearn.linear_model import Ridge

    from lfp.measure.probe_codes import element_codes

    directory = paths.probe_data_dir(model, task)
    tensors, index = io.load_tensors(directory / "inputs.safetensors"), io.read_json(directory / "inputs.json")
    train = tensors["codes"].numpy().astype(float)
    scales = layer_scales(train, index["offsets"], index["widths"])
    probe = Ridge(alpha=params.probe.ridge_alpha).fit(train / scales, tensors["target"].numpy().astype(float))
    keep = [i for i, (_, pos) in enumerate(windows) if pos]
    kept_windows, kept_words = [windows[i] for i in keep], [ctx_words[i] for i in keep]
    bs = params.measure.batch_size

    def predicted(policy: Any) -> np.ndarray:
        return probe.predict(element_codes(policy, saes, kept_windows, bs, pad, "measure codes") / scales)

    base_pred = predicted(base)
    return lambda policy: word_means(kept_words, predicted(policy) - base_pred)


def readout_runs(per_run: dict[Any, dict[str, float]], arm_rewards: list[dict[str, float]], seed: int) -> ReadoutRuns:
    """One readout's values keyed by run ("main", ("seed", s), "planted", "shuffled", ("arm", k)) as
    lfp.readouts.ReadoutRuns: arm 0 is the reported shuffled control."""
    arms = [per_run["shuffled"], *[per_run[("arm", k)] for k in range(1, len(arm_rewards))]]
    return ReadoutRuns(main=per_run["main"], seeds={k[1]: v for k, v in per_run.items() if isinstance(k, tuple) and k[0] == "seed"},
                       planted=per_run.get("planted"), arms=list(zip(arms, arm_rewards)))


def split_of(word: str, test_words: set[str], probe_words: set[str]) -> str:
    return "test" if word in test_words else ("train" if word in probe_words else "not_in_probe")


def main_rows(main: LearnedValues, lexicon: dict[str, float], planted: set[str], others: dict[str, dict[str, float]],
              probes: dict[str, HeldoutProbe], test_words: set[str], probe_words: set[str], shift: dict[str, float]) -> list[dict[str, Any]]:
    """One CSV row per word with a learned value (CSV_FIELDS); probe predictions for test words."""
    preds = {name: dict(zip(p.scores.words, p.scores.predicted.tolist())) for name, p in probes.items()}

    def pred(name: str, w: str) -> Any:
        return float(preds[name][w]) if w in preds.get(name, {}) else ""

    return [{"word": w, "lexicon_value": lexicon[w], "reward_value": lexicon[w], "learned_value": float(v),
             "learned_ci_low": float(lo), "learned_ci_high": float(hi), "n_contexts": int(n),
             "learned_value_planted_model": float(others["planted"].get(w, np.nan)),
             "learned_value_shuffled_model": float(others["shuffled"].get(w, np.nan)),
             "pred_finetuned": pred("finetuned", w), "pred_base": pred("base", w), "pred_difference": pred("difference", w),
             "probe_shift": float(shift.get(w, np.nan)), "split": split_of(w, test_words, probe_words), "planted": w in planted}
            for w, v, lo, hi, n in zip(main.words, main.value, main.ci_low, main.ci_high, main.n_contexts)]


def behaviour_metrics(main: LearnedValues, by_seed: dict[int, LearnedValues], lexicon: dict[str, float], shift: dict[str, float],
                      n_boot: int, seed: int) -> dict[str, Any]:
    """The measured fine-tune's learned-value τ (CI, seeds) and the probe's view of its change."""
    t = tau_with_ci(main.by_word(), lexicon, n_boot, seed)
    out: dict[str, Any] = {"n_words": len(main.words), "n_contexts": int(np.sum(main.n_contexts)), "seeds": sorted(by_seed)}
    out.update(tau_keys("learned_value_tau", t))
    out["learned_value_tau_reward"] = t["tau"]  # the main fine-tune's reward is the lexicon itself
    seed_taus = [metrics.kendall(lv.value, np.array([lexicon[w] for w in lv.words]))[0] for lv in by_seed.values()]
    s = seed_summary(seed_taus)
    out.update({"learned_value_tau_per_seed": seed_taus, "learned_value_tau_seed_mean": s["mean"],
                "learned_value_tau_seed_ci_low": s["ci_low"], "learned_value_tau_seed_ci_high": s["ci_high"]})
    out.update(tau_keys("probe_shift_tau", tau_with_ci(shift, lexicon, n_boot, seed)))
    return out


def control_summary(task: str, planted_m: dict[str, Any], shuffled_m: dict[str, Any]) -> dict[str, Any]:
    """The controls' headline keys in the measured task's lfp.json (the report reads them there)."""
    out: dict[str, Any] = {k: v for k, v in planted_m.items() if k.startswith("planted_")}
    out.update({"planted_control_task": paths.control_task(task, "planted"), "shuffled_control_task": paths.control_task(task, "shuffled"),
                "planted_learned_value_tau_reward": planted_m["learned_value_tau_reward"],
                "shuffled_learned_value_tau": shuffled_m["learned_value_tau"],
                "shuffled_learned_value_tau_ci_low": shuffled_m["learned_value_tau_ci_low"],
                "shuffled_learned_value_tau_ci_high": shuffled_m["learned_value_tau_ci_high"],
                "shuffled_learned_value_tau_reward": shuffled_m["learned_value_tau_reward"],
                "shuffled_detected": shuffled_m["shuffled_detected"]})
    for key in ("probe_shift_tau", "probe_shift_tau_ci_low", "probe_shift_tau_ci_high"):
        if key in shuffled_m:
            out[f"shuffled_{key}"] = shuffled_m[key]
    return out


def run_lexicon(params: Params, model: str, task: str) -> None:
    cfg, ft_cfg = params.measure, params.finetune[task]
    if task not in cfg.tasks:
        raise ConfigError(f"params: 'measure.tasks' does not name '{task}'")
    lexicon = reward.lexicon()
    planted = set(cfg.planted_words)
    # permutation seeds of the shuffled arms; every arm trains with `seed` on the same data (arm 0 is the reported control)
    arm_seeds = [params.seed + k for k in range(cfg.shuffled_arms)]
    arm_rewards = [reward.shuffled_lexicon(s, centred=cfg.shuffle_centred) for s in arm_seeds]
    rewards = {"planted": reward.planted_lexicon(planted), "shuffled": arm_rewards[0]}
    triples = load_triples(task, lexicon=True)
    probe_words = {w.lower() for w in triples.words["positive"] + triples.words["negative"]}
    words = sorted(probe_words | planted)
    test_file, train_file = prepared_file(task, "test"), prepared_file(task, "train")
    texts = [r["text"] for r in io.read_jsonl(test_file, {"text": str})]
    train_rows = rl.long_reviews(io.read_jsonl(train_file, rl.VADER_FIELDS), ft_cfg.min_review_chars, train_file)
    ctx = natural_contexts(texts, words, cfg.contexts_per_word)
    if not ctx.words:
        raise DataError(f"{test_file}: no occurrence of any contrastive or planted word")
    tags = {"ground_truth": "learned_value_logprob_change", "probe_split": "by_word", "paper_method": "probe.json (split by triple)",
            "probe_seed_kind": "word_split",
            "difference_probe": "fine-tuned codes − base codes through the fine-tuned SAEs; target: the fine-tuned rows' signed delta",
            "controls": ",".join(paths.control_task(task, c) for c in paths.CONTROLS)}
    with open_stage("measure", params, model=model, task=task, tags=tags,
                    log_params={"seed": params.seed, "measure": section_dict(cfg), "finetune": {task: section_dict(ft_cfg)}}) as stage:
        base, tok = stage.load(paths.base_model_dir(model))
        windows = context_windows(tok, ctx, cfg.context_tokens)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        lp_base = span_logprobs(base, windows, cfg.batch_size, pad)

        def learned(policy: Any) -> LearnedValues:
            return learned_values(ctx.words, span_logprobs(policy.to(stage.device), windows, cfg.batch_size, pad) - lp_base)

        finetuned = stage.load(paths.finetuned_dir(model, task))[0]
        saes = finetuned_saes(stage, params, model, task)
        probe_view = probe_divergence(params, model, task, saes, windows, ctx.words, pad, base)
        lens = LogitDiffLens(base, tok, lens_windows(tok, texts, cfg.lens_tokens, cfg.lens_texts), words, cfg.batch_size)
        observed: dict[str, dict[Any, dict[str, float]]] = {"probe_view": {}, lens.name: {}}

        def observe(key: Any, policy: Any) -> LearnedValues:
            """Every readout of one run (the learned values returned whole: rows need their CIs)."""
            policy = policy.to(stage.device)
            observed["probe_view"][key], observed[lens.name][key] = probe_view(policy), lens.per_word(policy)
            return learned(policy)

        main = observe("main", finetuned)
        base_dir = paths.base_model_dir(model)
        by_seed = {params.seed: main}
        for seed in cfg.seeds:
            by_seed[seed] = observe(("seed", seed), rl.finetune_policy(base_dir, train_rows, ft_cfg, seed)[0])
        controls = {c: rl.finetune_policy(base_dir, train_rows, ft_cfg, params.seed, rewards[c])[0] for c in paths.CONTROLS}
        control_lv = {c: observe(c, policy) for c, policy in controls.items()}
        extra_arms = [observe(("arm", k), rl.finetune_policy(base_dir, train_rows, ft_cfg, params.seed, r)[0])
                      for k, r in enumerate(arm_rewards[1:], start=1)]
        shifts = {"finetuned": observed["probe_view"]["main"], **{c: observed["probe_view"][c] for c in paths.CONTROLS}}
        through_ft = {name: codes_through_saes(lm, saes, triples, tok, pad, params, name) for name, lm in (("base", base), *controls.items())}
        del controls
        readout_values = {"learned_value": {"main": main.by_word(), **{("seed", s): lv.by_word() for s, lv in by_seed.items() if s != params.seed},
                                            **{c: lv.by_word() for c, lv in control_lv.items()},
                                            **{("arm", k): lv.by_word() for k, lv in enumerate(extra_arms, start=1)}},
                          **observed}

        out = behaviour_metrics(main, by_seed, lexicon, shifts["finetuned"], cfg.bootstrap, params.seed)
        out.update(within_sign_metrics(main.by_word(), {s: lv.by_word() for s, lv in by_seed.items()}, lexicon, cfg.bootstrap, params.seed))
        out.update(planted_paired(control_lv["planted"].by_word(), main.by_word(),
                                  {s: lv.by_word() for s, lv in by_seed.items() if s != params.seed}, planted, lexicon,
                                  cfg.permutations, params.seed))
        arms = [(lv.by_word(), r) for lv, r in zip([control_lv["shuffled"], *extra_arms], arm_rewards)]
        out.update(shuffled_null(main.by_word(), arms, lexicon))
        out.update({"shuffled_arm_seeds": arm_seeds, "shuffle_centred": cfg.shuffle_centred})
        for name, per_run in readout_values.items():
            out.update(readout_controls(name, readout_runs(per_run, arm_rewards, params.seed), lexicon, planted, cfg.bootstrap,
                                        cfg.permutations, params.seed))
        out.update({f"{lens.name}_n_texts": len(lens.windows), f"{lens.name}_tokens": cfg.lens_tokens,
                    f"{lens.name}_n_single_token_words": len(lens.word_ids), "readouts": sorted(readout_values)})
        out.update({f"{lens.name}_{k}": v for k, v in lens.top_tokens(finetuned).items()})
        control_m = {c: control_metrics(c, task, lv, lexicon, rewards[c], shifts[c], cfg.bootstrap, params.seed) for c, lv in control_lv.items()}
        control_m["planted"].update(planted_summary(control_lv["planted"].by_word(), main.by_word(), shifts["planted"], shifts["finetuned"],
                                                    planted, lexicon, cfg.permutations, params.seed))
        control_m["planted"]["detected"] = control_m["planted"]["planted_detected"]  # unpaired (confounded by frequency); see planted_paired_detected
        control_m["planted"]["planted_words"] = sorted(planted)
        control_m["shuffled"].update(shuffled_verdict(control_m["shuffled"]))
        control_m["shuffled"]["reward_permutation_seed"] = arm_seeds[0]
        control_m["shuffled"]["reward_centred"] = cfg.shuffle_centred
        control_m["planted"].update({k: v for k, v in out.items() if k.startswith("planted_paired") or k == "planted_learned"})
        control_m["shuffled"].update({k: v for k, v in out.items() if k.startswith("shuffled_arms") or k in ("shuffled_learned", "shuffled_null_centred")})
        out.update(control_summary(task, control_m["planted"], control_m["shuffled"]))

        inputs = load_probe_inputs(model, task, lexicon, through_ft["base"])
        probe_metrics, probes, is_test = word_heldout_probes(inputs, params)
        out.update(probe_metrics)
        for c in paths.CONTROLS:
            control_m[c].update(control_difference_probe(inputs, through_ft[c], through_ft["base"], params))
            out.update({f"{c}_{k}": control_m[c][k] for k in DIFFERENCE_SUMMARY})
        err_words, abs_err, err_learned = error_vs_learned(probes["finetuned"], inputs.words[is_test], inputs.values[is_test], main.by_word(),
                                                           params.probe.rescale_low_percentile, params.probe.rescale_high_percentile)
        err_tau, err_p = metrics.kendall(abs_err, err_learned)
        out.update({"error_learned_value_tau": err_tau, "error_learned_value_tau_p": err_p, "error_learned_value_n": len(err_words)})

        for c in paths.CONTROLS:
            write_control(stage.run, model, task, c, control_m[c],
                          control_rows(control_lv[c], lexicon, rewards[c], planted, main.by_word(), shifts[c]))
        rows = main_rows(main, lexicon, planted, {c: lv.by_word() for c, lv in control_lv.items()}, probes,
                         set(inputs.words[is_test].tolist()), probe_words, shifts["finetuned"])
        rows = [{**r, "readout_logit_diff_lens": float(observed[lens.name]["main"].get(r["word"], np.nan))} for r in rows]
        write_main_outputs(stage, model, task, out, rows, (abs_err, err_learned))
        log.info("measure %s: learned-value tau %.3f; planted AUC %.2f (p %.3g); shuffled tau %.3f; difference-probe tau %.3f",
                 paths.run_id(model, task), out["learned_value_tau"], out["planted_auc"], out["planted_p"],
                 out["shuffled_learned_value_tau"], out.get("probe_tau_word_heldout_difference", float("nan")))


def write_main_outputs(stage: StageContext, model: str, task: str, out: dict[str, Any], rows: list[dict[str, Any]],
                       error: tuple[np.ndarray, np.ndarray]) -> None:
    """CSV and figures first, the metrics JSON last (a run that fails leaves no file claiming success)."""
    write_words_csv(paths.lfp_words_file(model, task), rows, CSV_FIELDS)
    col = {k: np.array([r[k] for r in rows]) for k in ("lexicon_value", "learned_value", "planted", "learned_value_planted_model")}
    plot_learned_values(paths.lfp_learned_plot(model, task), col["lexicon_value"], col["learned_value"], col["planted"].astype(bool),
                        col["learned_value_planted_model"].astype(float),
                        f"{paths.run_id(model, task)}: learned-value τ {out['learned_value_tau']:.3f}; planted AUC {out['planted_auc']:.2f}")
    abs_err, learned = error
    tau = out["error_learned_value_tau"]
    plot_error_vs_learned(paths.lfp_error_plot(model, task), learned, abs_err,
                          f"{paths.run_id(model, task)}: {len(abs_err)} held-out words; τ(|error|, learned value) = "
                          + (f"{tau:.3f}" if np.isfinite(tau) else "undefined"))
    stage.run.write_metrics(paths.lfp_file(model, task), out)
    for f in (paths.lfp_words_file(model, task), paths.lfp_learned_plot(model, task), paths.lfp_error_plot(model, task)):
        stage.run.log_artifact(f)


# the task kind's `measure_method` -> its implementation
METHODS = {"lexicon": run_lexicon, "preference": run_preference}


def run(params: Params, model: str, task: str) -> None:
    METHODS[kind_of(params, task).measure_method](params, model, task)
