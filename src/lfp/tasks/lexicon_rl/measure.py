"""The lexicon tasks' measurement (`lfp measure`, kind lexicon_rl): an LFP measurement that a lookup table cannot pass.

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
3. A planted positive control: a fine-tune (same GRPO settings and seed) whose reward changes the
   values of the plant's words (lfp.tasks.lexicon_rl.plant: drawn at random among the words the base
   policy writes, from frequency-matched pools, lexicon words sign-flipped and neutral words given a
   negative value, recorded before any fine-tune; the lexicon pool is held out of every probe); paired with the true-reward run, the planted words must fall more than their controls
   (AUC, permutation p), and the plant must be learned first (its own held-out reward rises,
   lfp.tasks.lexicon_rl.heldout_reward); the same test for every readout.
4. A negative control: fine-tunes on shuffled lexicons (centred permutations, several arms; on real
   models within bins of words ranked by how often the base model writes them, `shuffle_bin_words`);
   each must raise its own held-out reward (it learned), and their learned values must not track
   the real lexicon (a null centred on 0, over arms).
5. Seeds: the learned-value τ of `seed` and of every `measure.seeds` fine-tune, mean and 95 % CI.
6. Fig. 4 with a full axis: each held-out word's |probe error| against its learned value.
Outputs: reports/runs/{m}-{t}/lfp.json (DVC metrics + MLflow), lfp_words.csv (per word), and the two
controls as their own tasks (lfp.measure.controls): reports/runs/{m}-{t}-planted/ and -shuffled/.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from lfp.core import io, paths
from lfp.core.params import Params, section_dict
from lfp.core.data import prepared_file
from lfp.core.errors import ConfigError, DataError
from lfp.core.stage_context import StageContext, open_stage
from lfp.measure import metrics
from lfp.measure.controls import (
    control_metrics,
    control_rows,
    planted_paired,
    planted_summary,
    shuffled_null,
    shuffled_verdict,
    within_sign_metrics,
    write_control,
    write_words_csv,
)
from lfp.measure.triples import load_triples
from lfp.readouts import ReadoutClock, readout_controls
from lfp.readouts.diff_lens import LogitDiffLens, lens_windows
from lfp.report.figures import plot_error_vs_learned, plot_learned_values
from lfp.tasks.lexicon_rl import reward, rl
from lfp.tasks.lexicon_rl.heldout_reward import HeldoutReward, arms_keys, gain_keys
from lfp.tasks.lexicon_rl.plant import make_plant
from lfp.tasks.lexicon_rl.context_reads import ContextReader
from lfp.tasks.lexicon_rl.learned import LearnedValues, context_windows, learned_values, natural_contexts
from lfp.tasks.lexicon_rl.measure_dictionaries import Dictionaries, dictionary_probes, split_seed_keys, split_seed_summary
from lfp.tasks.lexicon_rl.measure_probes import (
    control_difference_probe,
    difference_probe_readout,
    finetuned_saes,
    load_probe_inputs,
    probe_divergence,
    word_heldout_probes,
)
from lfp.tasks.lexicon_rl.measure_rows import (
    CSV_FIELDS,
    DIFFERENCE_SUMMARY,
    behaviour_metrics,
    control_summary,
    main_rows,
    readout_runs,
)
from lfp.tasks.lexicon_rl.word_probes import error_vs_learned

log = logging.getLogger(__name__)


def measure(params: Params, model: str, task: str) -> None:
    cfg, ft_cfg = params.measure, params.finetune[task]
    if task not in cfg.tasks:
        raise ConfigError(f"params: 'measure.tasks' does not name '{task}'")
    lexicon = reward.lexicon()
    # permutation seeds of the shuffled arms; every arm trains with `seed` on the same data (arm 0 is the reported control)
    arm_seeds = [params.seed + k for k in range(cfg.shuffled_arms)]
    triples = load_triples(task, lexicon=True)
    probe_words = {w.lower() for w in triples.words["positive"] + triples.words["negative"]}
    test_file, train_file = prepared_file(task, "test"), prepared_file(task, "train")
    texts = [r["text"] for r in io.read_jsonl(test_file, {"text": str})]
    train_rows = rl.long_reviews(io.read_jsonl(train_file, rl.VADER_FIELDS), ft_cfg.min_review_chars, train_file)
    test_rows = rl.long_reviews(io.read_jsonl(test_file, rl.VADER_FIELDS), ft_cfg.min_review_chars, test_file)
    tags = {"ground_truth": "learned_value_logprob_change", "probe_split": "by_word", "paper_method": "probe.json (split by triple)",
            "probe_seed_kind": "word_split",
            "difference_probe": "fine-tuned codes − base codes through the fine-tuned SAEs; target: the fine-tuned rows' signed delta",
            "controls": ",".join(paths.control_task(task, c) for c in paths.CONTROLS), "plant": cfg.plant,
            "shuffle": (f"within bins of {cfg.shuffle_bin_words} words by base writes" if cfg.shuffle_bin_words else "whole lexicon")
                       + (", centred" if cfg.shuffle_centred else "")}
    with open_stage("measure", params, model=model, task=task, tags=tags,
                    log_params={"seed": params.seed, "measure": section_dict(cfg), "finetune": {task: section_dict(ft_cfg)}}) as stage:
        base, tok = stage.load(paths.base_model_dir(model))
        clock = ReadoutClock()
        with clock("heldout_reward"):  # the base model's held-out completions: the plant is drawn among the words it writes
            heldout = HeldoutReward(base, tok, test_rows, ft_cfg, params.seed, stage.device, cfg.bootstrap)
        plant = make_plant(cfg, params.seed, lexicon, probe_words, heldout.writes(), heldout.training_scale(ft_cfg.steps * ft_cfg.batch_size),
                           (r["text"] for r in train_rows))
        stage.run.set_tags({"planted_words": ",".join(sorted(plant.words))})  # recorded before any fine-tune runs
        arm_rewards = [reward.shuffled_lexicon(s, cfg.shuffle_centred, heldout.writes(), cfg.shuffle_bin_words) for s in arm_seeds]
        planted = plant.words
        controls_of_plant = plant.controls if plant.drawn else None  # None: every other positive word (the fixed plant)
        rewards = {"planted": reward.replanted_lexicon(plant.values), "shuffled": arm_rewards[0]}
        words = sorted(probe_words | planted | (controls_of_plant or set()))
        ctx = natural_contexts(texts, words, cfg.contexts_per_word)
        if not ctx.words:
            raise DataError(f"{test_file}: no occurrence of any contrastive or planted word")
        windows = context_windows(tok, ctx, cfg.context_tokens)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        finetuned = stage.load(paths.finetuned_dir(model, task))[0]
        saes = finetuned_saes(stage, params, model, task)
        with clock("dictionaries_setup"):  # random dictionaries fitted, crosscoders loaded
            dictionaries = Dictionaries(params, model, task, saes, stage.device)
        reader = ContextReader(windows, ctx.words, cfg.batch_size, pad)  # one pass a run: log-probs and codes of the contexts
        with clock("context_forward"):
            base_read = reader.read(base, [saes, dictionaries.identity], "base contexts")
        probe_view = probe_divergence(params, model, task, reader.kept_words, base_read.codes[0])
        lens = LogitDiffLens(base, tok, lens_windows(tok, texts, cfg.lens_tokens, cfg.lens_texts), words, cfg.batch_size)
        gains: dict[Any, dict[str, dict[str, float]]] = {}
        base_dir = paths.base_model_dir(model)

        def fine_tune(key: Any, seed: int, lex: dict[str, float] | None, shuffled: bool = False) -> Any:
            """One more GRPO run of the finetune stage's settings, and its held-out gain under its own reward
            (a shuffled arm also under the real lexicon: the behavioural null)."""
            policy = rl.finetune_policy(base_dir, train_rows, ft_cfg, seed, lex)[0].to(stage.device)
            with clock("heldout_reward"):
                gains[key] = heldout.gains(policy, {"own": lex, **({"lexicon": None} if shuffled else {})})
            return policy

        with clock("dictionaries_setup"):  # base and main codes of the probe's rows
            base_codes = dictionaries.codes(base, triples, tok, pad, params, "base")
            main_codes = dictionaries.codes(finetuned, triples, tok, pad, params, "main")
        with clock("dictionary_lenses_setup"):  # the SAE and crosscoder difference lenses: base means and word profiles
            at_prediction = reader.read_at_prediction(base, [saes, dictionaries.identity], "base contexts, predicting positions")
            dict_lenses = dictionaries.lenses(base, lens.windows, {"": (base_read.codes, reader.kept_words),
                                                                  "_at_prediction": at_prediction}, cfg.batch_size)
        base_through_ft = base_codes.finetuned_sae
        inputs = load_probe_inputs(model, task, lexicon, base_through_ft, plant.held_out)
        diff_probe = difference_probe_readout(inputs, base_through_ft, params)
        other = dictionary_probes(dictionaries, base_codes, main_codes, inputs, inputs.widths, params)
        names = ["probe_view", lens.name, *(d.name for d in dict_lenses), diff_probe.name, other.random_probe.name, other.crosscoder_probe.name]
        observed: dict[str, dict[Any, dict[str, float]]] = {name: {} for name in names}
        run_codes: dict[Any, np.ndarray] = {}  # each control run's codes of the probe's rows through the fine-tuned SAEs

        def observe(key: Any, policy: Any) -> LearnedValues:
            """Every readout of one run (the learned values returned whole: rows need their CIs)."""
            policy = policy.to(stage.device)
            with clock("context_forward"):
                run_read = reader.read(policy, [saes], f"{key} contexts")
            with clock("probe_view"):
                observed["probe_view"][key] = probe_view(run_read.codes[0])
            for readout in (lens, *dict_lenses):  # the first dictionary lens pays the policy's lens forward pass
                with clock(readout.name):
                    observed[readout.name][key] = readout.per_word(policy)
            with clock("dictionaries_forward"):  # one forward pass feeds the three dictionary readouts
                codes = main_codes if key == "main" else dictionaries.codes(policy, triples, tok, pad, params, str(key))
            for name, read in other.readers().items():
                with clock(name):
                    observed[name][key] = read(codes)
            with clock(diff_probe.name):
                if key == "main":  # the probe stage's cached codes: the readout reproduces the difference probe exactly
                    observed[diff_probe.name][key] = diff_probe.from_difference(inputs.sources["difference"][0])
                else:
                    observed[diff_probe.name][key] = diff_probe.from_difference(codes.finetuned_sae - base_through_ft)
            if key in paths.CONTROLS:
                run_codes[key] = codes.finetuned_sae
            with clock("learned_value"):
                return learned_values(ctx.words, run_read.logprobs - base_read.logprobs)

        main = observe("main", finetuned)
        by_seed = {params.seed: main}
        for seed in cfg.seeds:
            by_seed[seed] = observe(("seed", seed), fine_tune(("seed", seed), seed, None))
        controls = {c: fine_tune(c, params.seed, rewards[c], c == "shuffled") for c in paths.CONTROLS}
        control_lv = {c: observe(c, policy) for c, policy in controls.items()}
        extra_arms = [observe(("arm", k), fine_tune(("arm", k), params.seed, r, True)) for k, r in enumerate(arm_rewards[1:], start=1)]
        shifts = {"finetuned": observed["probe_view"]["main"], **{c: observed["probe_view"][c] for c in paths.CONTROLS}}
        through_ft = {"base": base_through_ft, **{c: run_codes[c] for c in controls}}
        del controls
        readout_values = {"learned_value": {"main": main.by_word(), **{("seed", s): lv.by_word() for s, lv in by_seed.items() if s != params.seed},
                                            **{c: lv.by_word() for c, lv in control_lv.items()},
                                            **{("arm", k): lv.by_word() for k, lv in enumerate(extra_arms, start=1)}},
                          **observed}

        out = behaviour_metrics(main, by_seed, lexicon, shifts["finetuned"], cfg.bootstrap, params.seed)
        out.update(within_sign_metrics(main.by_word(), {s: lv.by_word() for s, lv in by_seed.items()}, lexicon, cfg.bootstrap, params.seed))
        out.update(planted_paired(control_lv["planted"].by_word(), main.by_word(),
                                  {s: lv.by_word() for s, lv in by_seed.items() if s != params.seed}, planted, lexicon,
                                  cfg.permutations, params.seed, controls=controls_of_plant))
        arms = [(lv.by_word(), r) for lv, r in zip([control_lv["shuffled"], *extra_arms], arm_rewards)]
        out.update(shuffled_null(main.by_word(), arms, lexicon))
        out.update({"shuffled_arm_seeds": arm_seeds, "shuffle_centred": cfg.shuffle_centred, "shuffle_bin_words": cfg.shuffle_bin_words})
        arm_keys = ["shuffled", *[("arm", k) for k in range(1, len(arm_rewards))]]
        out.update(arms_keys([gains[k]["own"] for k in arm_keys], [gains[k]["lexicon"] for k in arm_keys]))
        out.update(gain_keys("planted", gains["planted"]["own"]))
        out.update(heldout.occurrences(planted, ft_cfg.steps * ft_cfg.batch_size))
        out.update({"seeds_reward_gain": [gains[("seed", s)]["own"]["reward_gain"] for s in cfg.seeds],
                    "seeds_reward_gain_ci_low": [gains[("seed", s)]["own"]["reward_gain_ci_low"] for s in cfg.seeds],
                    "heldout_reward_prompts": len(heldout.prefixes)})
        for name, per_run in readout_values.items():
            out.update(readout_controls(name, readout_runs(per_run, arm_rewards, params.seed), lexicon, planted, cfg.bootstrap,
                                        cfg.permutations, params.seed, controls_of_plant))
        out.update(clock.keys())
        out.update({f"{lens.name}_n_texts": len(lens.windows), f"{lens.name}_tokens": cfg.lens_tokens,
                    f"{lens.name}_n_single_token_words": len(lens.word_ids), "readouts": sorted(readout_values)})
        out.update({f"{lens.name}_{k}": v for k, v in lens.top_tokens(finetuned).items()})
        for d in (d for d in dict_lenses if not d.at):  # the shift, and so its top latents, is the same wherever words are profiled
            out.update({f"{d.name}_top_latents_{k}": v for k, v in d.top_latents(finetuned).items()})
        control_m = {c: control_metrics(c, task, lv, lexicon, rewards[c], shifts[c], cfg.bootstrap, params.seed) for c, lv in control_lv.items()}
        control_m["planted"].update(planted_summary(control_lv["planted"].by_word(), main.by_word(), shifts["planted"], shifts["finetuned"],
                                                    planted, lexicon, cfg.permutations, params.seed, controls_of_plant))
        control_m["planted"]["detected"] = control_m["planted"]["planted_detected"]  # unpaired (confounded by frequency); see planted_paired_detected
        control_m["planted"].update(plant.record())
        control_m["shuffled"].update(shuffled_verdict(control_m["shuffled"]))
        control_m["shuffled"]["reward_permutation_seed"] = arm_seeds[0]
        control_m["shuffled"]["reward_centred"] = cfg.shuffle_centred
        control_m["planted"].update({k: v for k, v in out.items() if k.startswith("planted_paired") or k == "planted_learned"})
        control_m["shuffled"].update({k: v for k, v in out.items() if k.startswith("shuffled_arms") or k in ("shuffled_learned", "shuffled_null_centred")})
        out.update(control_summary(task, control_m["planted"], control_m["shuffled"]))

        probe_metrics, probes, is_test = word_heldout_probes(inputs, params)
        out.update(probe_metrics)
        out.update(split_seed_keys(other, inputs, params))  # the dictionary readouts over word splits, as the difference probe
        out.update(split_seed_summary(diff_probe.name, probe_metrics["probe_tau_word_heldout_difference_per_split_seed"]))
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
        rows = [{**r, **{f"readout_{name}": float(per_run["main"].get(r["word"], np.nan)) for name, per_run in observed.items()}}
                for r in rows]
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

