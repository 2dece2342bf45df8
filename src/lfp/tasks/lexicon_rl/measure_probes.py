"""The lexicon measurement's probes split by word (lfp.tasks.lexicon_rl.word_probes) on the probe
stage's rows: fine-tuned codes, base codes and their difference through ONE dictionary, with CIs,
split-seed intervals and the identity / sign ceilings; and the probe's view of what a fine-tune
changed per word (`probe_divergence`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lfp.core import io, paths
from lfp.core.params import Params
from lfp.core.errors import DataError
from lfp.core.stage_context import StageContext
from lfp.measure import metrics
from lfp.tasks.lexicon_rl.word_probes import (
    HeldoutProbe,
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
    always_test: frozenset[str] = frozenset()  # held out on every word split (the drawn plant's lexicon pool)

    def is_test(self, params: Params, seed: int | None = None) -> np.ndarray:
        """The word split of `seed` (default `params.seed`) that every word-held-out probe of the measure uses."""
        return word_split(self.words, params.measure.word_test_fraction, params.seed if seed is None else seed, self.always_test)


def load_probe_inputs(model: str, task: str, lexicon: dict[str, float], base_through_ft: np.ndarray | None,
                      always_test: frozenset[str] = frozenset()) -> ProbeInputs:
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
                       tensors["is_test"].numpy().astype(bool), always_test)


def word_heldout_probes(inputs: ProbeInputs, params: Params) -> tuple[dict[str, Any], dict[str, HeldoutProbe], np.ndarray]:
    """Probe τ on words never seen in training for every source, with CIs, split-seed intervals and
    the ceilings; also the identity ceiling on the paper's split (by triple). Returns metrics, the
    probes on the `seed` split and that split."""
    cfg, alpha, words, values = params.measure, params.probe.ridge_alpha, inputs.words, inputs.values
    is_test = inputs.is_test(params)
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
                           params.measure.word_test_fraction, seeds, params.probe.ridge_alpha, inputs.always_test)
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
    is_test = inputs.is_test(params)
    probe = heldout_probe(*sources["difference"], inputs.words, inputs.values, is_test, inputs.offsets, inputs.widths, params.probe.ridge_alpha)
    out = probe_keys("difference", probe, params.measure.bootstrap, params.seed)
    out.update(split_seed_metrics(sources, inputs, params))
    return out


def difference_probe_readout(inputs: ProbeInputs, base_through_ft: np.ndarray, params: Params) -> Any:
    """The difference probe (this run's word split, ridge, per-layer scales) frozen as a readout of
    any run's (run − base) codes of the same rows (lfp.readouts.difference_probe)."""
    from lfp.readouts.difference_probe import DifferenceProbe

    diff, target = inputs.sources["difference"]
    is_test = inputs.is_test(params)
    return DifferenceProbe(diff, target, inputs.words, is_test, inputs.offsets, inputs.widths, params.probe.ridge_alpha, base_through_ft)


def finetuned_saes(stage: StageContext, params: Params, model: str, task: str) -> dict[int, Any]:
    """The fine-tuned model's small SAEs of the probe's layers (inputs.json), on the stage's device."""
    from lfp.sae import load_sae

    layers = io.read_json(paths.probe_data_dir(model, task) / "inputs.json")["layers"]
    return {L: load_sae(paths.sae_path(model, task, L, min(params.sae.ratios))).to(stage.device).eval() for L in layers}


def probe_divergence(params: Params, model: str, task: str, kept_words: list[str],
                     base_codes: np.ndarray) -> Callable[[np.ndarray], dict[str, float]]:
    """The probe's view of what a fine-tune changed, per word: the ridge probe (fitted on all the
    fine-tuned model's contrastive rows, per-layer normalised) applied to the fine-tuned SAEs' codes
    of each word in its real contexts, under `policy` minus under the base model. A plant that
    taught the model to disprefer a word should push its predicted feedback down. The returned
    function takes a run's codes of the same contexts (lfp.tasks.lexicon_rl.context_reads)."""
    from sklearn.linear_model import Ridge

    directory = paths.probe_data_dir(model, task)
    tensors, index = io.load_tensors(directory / "inputs.safetensors"), io.read_json(directory / "inputs.json")
    train = tensors["codes"].numpy().astype(float)
    scales = layer_scales(train, index["offsets"], index["widths"])
    probe = Ridge(alpha=params.probe.ridge_alpha).fit(train / scales, tensors["target"].numpy().astype(float))
    base_pred = probe.predict(base_codes / scales)
    return lambda codes: word_means(kept_words, probe.predict(codes / scales) - base_pred)
