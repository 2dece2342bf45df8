"""The difference probe through other dictionaries than the fine-tuned SAEs, each a readout held to
the same controls (lfp.readouts):

- `random_dictionary_probe`: random, frozen directions of the fine-tuned SAEs' width and L0
  (lfp.readouts.random_dictionary): the control for what *training* a dictionary adds;
- `crosscoder_probe`: the diffing stage's crosscoder (one dictionary over base and fine-tuned
  activations of the same token, lfp.readouts.crosscoder): a run's feature is its crosscoder code of
  (base, run) activations minus the code of (base, base), so 0 on the base model by construction.

Every dictionary reads the SAME forward pass as the fine-tuned SAEs (one `element_codes_sets` call
per run, the raw activations riding along as an identity dictionary), and each probe is the
difference probe's recipe: this run's word split, ridge, per-layer scales, fitted on the measured
fine-tune and frozen. The crosscoder encodes each element's activations pooled over its tokens (the
SAEs pool codes instead): most elements are one word of one or two tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lfp.core import paths
from lfp.core.errors import ArtifactError
from lfp.core.params import Params
from lfp.measure.triples import windows_for
from lfp.models.activation_cache import load_layer, read_index
from lfp.readouts.crosscoder import Crosscoder, crosscoder_path, layered_codes, load_crosscoder
from lfp.readouts.difference_probe import DifferenceProbe
from lfp.readouts.random_dictionary import Identity, random_like
from lfp.readouts.sae_lens import DictionaryDiffLens, LensMeans, crosscoder_diff_lens, sae_diff_lens

SAMPLE_ROWS = 20000  # activation-cache rows that fit the random dictionaries' centre and L0


@dataclass
class RunCodes:
    """One run's rows (the probe's contrastive elements) through every dictionary of one forward pass."""

    finetuned_sae: np.ndarray
    random: np.ndarray
    raw: np.ndarray


class Dictionaries:
    """The fine-tuned SAEs, their random-direction twins and the crosscoders of the same layers."""

    def __init__(self, params: Params, model: str, task: str, saes: dict[int, Any], device: Any) -> None:
        act_dir = paths.activations_dir(model, task, "finetuned")
        index = read_index(act_dir)
        rows = np.sort(np.random.default_rng(params.seed).permutation(index["n_rows"])[:SAMPLE_ROWS])
        self.layers = list(saes)
        self.saes = saes
        self.random = {L: random_like(sae.cpu(), load_layer(act_dir, L, index)[rows], params.seed + L).to(device)
                       for L, sae in saes.items()}
        for sae in saes.values():
            sae.to(device)
        self.identity = {L: Identity(index["d_model"]) for L in saes}
        self.crosscoders: dict[int, tuple[Crosscoder, np.ndarray]] = {}
        self.nu: dict[int, np.ndarray] = {}  # Latent Scaling ν per crosscoder latent (the diffing stage's)
        for L in saes:
            cc, scales, self.nu[L] = load_crosscoder(crosscoder_path(model, task, L))
            if cc.decoder.shape[2] != index["d_model"]:
                raise ArtifactError(f"{crosscoder_path(model, task, L)}: d_model {cc.decoder.shape[2]}, activations {index['d_model']} "
                                    "(re-run the diffing stage)")
            self.crosscoders[L] = (cc, scales)

    def codes(self, lm: Any, triples: Any, tok: Any, pad: int, params: Params, desc: str) -> RunCodes:
        """The probe's rows (positive then negative element of each triple) through every dictionary."""
        from lfp.measure.probe_codes import element_codes_sets

        per_role = [element_codes_sets(lm, [self.saes, self.random, self.identity],
                                       windows_for(triples, role, tok, params.probe.max_length), params.probe.batch_size, pad,
                                       f"{desc} through every dictionary, {role}") for role in ("positive", "negative")]
        stacked = [np.stack([per_role[0][i], per_role[1][i]], axis=1).reshape(-1, per_role[0][i].shape[1]).astype(np.float64)
                   for i in range(3)]
        return RunCodes(*stacked)

    def crosscoder_features(self, base_raw: np.ndarray, run_raw: np.ndarray) -> np.ndarray:
        return crosscoder_difference([self.crosscoders[L] for L in self.layers], base_raw, run_raw)

    def crosscoder_widths(self) -> list[int]:
        return [int(self.crosscoders[L][0].decoder.shape[1]) for L in self.layers]

    def lenses(self, base: Any, lens_windows: list[list[int]], word_reads: dict[str, tuple[list[np.ndarray], list[str]]],
               batch_size: int) -> list[DictionaryDiffLens]:
        """The difference lens through the fine-tuned SAEs and through the crosscoders
        (lfp.readouts.sae_lens), once per place the words are profiled: `word_reads` maps a
        PROFILED_AT suffix to the base model's read there ([its SAE codes, its raw MLP outputs], words:
        lfp.tasks.lexicon_rl.context_reads). One LensMeans: the policy's lens pass is paid once."""
        means = LensMeans(base, self.layers, lens_windows, batch_size)
        crosscoders = [(*self.crosscoders[L], self.nu[L]) for L in self.layers]
        return [lens for at, ((sae_codes, raw), words) in word_reads.items()
                for lens in (sae_diff_lens(means, self.saes, sae_codes, words, at), crosscoder_diff_lens(means, crosscoders, raw, words, at))]


def crosscoder_difference(crosscoders: list[tuple[Crosscoder, np.ndarray]], base_raw: np.ndarray, run_raw: np.ndarray) -> np.ndarray:
    """Per layer, the crosscoder code of (base, run) minus the code of (base, base), concatenated:
    0 where the run's activations equal the base model's."""
    return (layered_codes(crosscoders, base_raw, run_raw) - layered_codes(crosscoders, base_raw, base_raw)).astype(np.float64)


def _layout(widths: list[int]) -> list[int]:
    return [int(o) for o in np.concatenate([[0], np.cumsum(widths)[:-1]])]


@dataclass
class DictionaryProbes:
    """The frozen probes through the other dictionaries, with the base model's codes they subtract."""

    dictionaries: Dictionaries
    base: RunCodes
    random_probe: DifferenceProbe
    crosscoder_probe: DifferenceProbe
    fitted: dict[str, tuple[np.ndarray, list[int]]]  # readout -> the measured run's features and layer widths

    def readers(self) -> dict[str, Callable[[RunCodes], dict[str, float]]]:
        """Readout name -> how it reads one run's codes (per-word values)."""
        return {self.random_probe.name: lambda run: self.random_probe.from_difference(run.random - self.base.random),
                self.crosscoder_probe.name: lambda run: self.crosscoder_probe.from_difference(
                    self.dictionaries.crosscoder_features(self.base.raw, run.raw))}


def dictionary_probes(dictionaries: Dictionaries, base: RunCodes, main: RunCodes, inputs: Any, sae_widths: list[int],
                      params: Params) -> DictionaryProbes:
    """Both probes fitted on the measured fine-tune's differences (target, split and ridge of the
    difference probe), then frozen."""
    _, target = inputs.sources["difference"]
    is_test = inputs.is_test(params)
    alpha = params.probe.ridge_alpha
    cc_widths = dictionaries.crosscoder_widths()
    random_probe = DifferenceProbe(main.random - base.random, target, inputs.words, is_test, _layout(sae_widths), sae_widths, alpha,
                                   base.random, name="random_dictionary_probe",
                                   description="the difference probe through random frozen directions of the fine-tuned SAEs' width and L0")
    cc_features = dictionaries.crosscoder_features(base.raw, main.raw)
    cc_probe = DifferenceProbe(cc_features, target, inputs.words, is_test, _layout(cc_widths),
                               cc_widths, alpha, base.raw, name="crosscoder_probe",
                               description="the difference probe on crosscoder codes of (base, run) − (base, base) activations")
    fitted = {random_probe.name: (main.random - base.random, sae_widths), cc_probe.name: (cc_features, cc_widths)}
    return DictionaryProbes(dictionaries, base, random_probe, cc_probe, fitted)


def split_seed_keys(probes: DictionaryProbes, inputs: Any, params: Params) -> dict[str, Any]:
    """`readout_{name}_tau_split_seed_*`: each dictionary probe refitted on the measured run over the
    word splits of `seed` and `measure.seeds` (how much its τ depends on which words were held out)."""
    from lfp.tasks.lexicon_rl.word_probes import split_seed_taus

    seeds = sorted({params.seed, *params.measure.seeds})
    target = inputs.sources["difference"][1]
    out: dict[str, Any] = {}
    for name, (features, widths) in probes.fitted.items():
        taus = split_seed_taus({name: (features, target)}, inputs.words, inputs.values, _layout(widths), widths,
                               params.measure.word_test_fraction, seeds, params.probe.ridge_alpha, inputs.always_test)[name]
        out.update(split_seed_summary(name, taus))
    return out


def split_seed_summary(name: str, taus: list[float]) -> dict[str, Any]:
    from lfp.tasks.lexicon_rl.measure_probes import seed_summary

    s, key = seed_summary(taus), f"readout_{name}_tau_split_seed"
    return {f"{key}s": taus, f"{key}_mean": s["mean"], f"{key}_ci_low": s["ci_low"], f"{key}_ci_high": s["ci_high"]}
