"""SAE files: one directory per SAE in SAELens's layout, refused on load if anything is off.

Why this format: `cfg.json` + `sae_weights.safetensors` with SAELens's field and tensor names
(W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec) lets `sae_lens.SAE.load_from_disk` and
other SAELens-aware tools open our SAEs; `architecture` is SAELens's name and `lfp_architecture`
ours, both read from the registered `Architecture` (lfp.sae.architectures: "standard" (ReLU) =
"relu_l1", the paper's method; "topk" = "topk" with SAELens's TopKSAEConfig fields `k` and
`rescale_acts_by_decoder_norm` (false: our decoder directions are unit-norm already, so SAELens
must not rescale)). Every architecture here stores the same four tensors. Caller metadata (layer, ratio, l1, seed, model, task...) sits under
`lfp_meta`, away from SAELens's own (`meta`/`metadata`) keys, which it parses strictly.

Why the checks: a bit-rotted weights file of the right size used to run for minutes before a
stage crashed on NaN. `load_sae` refuses, on one line naming the file, a missing or mistyped cfg
field, an unknown architecture, tensors whose names, shapes or dtype disagree with cfg.json,
non-finite values, and weights whose sha256 differs from the one recorded when they were written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lfp.core import io
from lfp.core.errors import ArtifactError
from lfp.sae.architectures import ARCHITECTURES
from lfp.sae.model import SparseAutoencoder

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
FORMAT_VERSION = 1
SAELENS_DEVICE = "cpu"  # cfg.json's `device` (where SAELens puts the weights); load_sae always loads on CPU

Tensors = dict[str, torch.Tensor]


def _shapes(d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    return {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}


def _to_tensors(sae: SparseAutoencoder) -> Tensors:
    """Our encode is ReLU(x W_Eᵀ + b_E) (no b_dec subtracted) = SAELens's ReLU(x W_enc + b_enc)
    with apply_b_dec_to_input false; tied SAEs store the shared matrix as both W_enc and W_dec."""
    w = sae.encoder_weight.detach().cpu()
    decoder = w if sae.decoder_weight is None else sae.decoder_weight.detach().cpu().t()
    return {
        "W_enc": w.t().contiguous(), "W_dec": decoder.contiguous(),
        "b_enc": sae.encoder_bias.detach().cpu().contiguous(), "b_dec": sae.decoder_bias.detach().cpu().contiguous(),
    }


def _from_tensors(cfg: dict[str, Any], t: Tensors, weights: Path) -> SparseAutoencoder:
    """The same tensors for every architecture; the codes' nonlinearity and k taken from cfg.json."""
    sae = SparseAutoencoder(cfg["d_in"], cfg["d_sae"], tied=cfg["tied"], architecture=cfg["lfp_architecture"], k=cfg.get("k"))
    if sae.tied and not torch.equal(t["W_dec"], t["W_enc"].t()):
        raise ArtifactError(f"{weights}: cfg.json says tied but W_dec is not W_encᵀ (corrupted or edited weights)")
    state = {"encoder_weight": t["W_enc"].t().contiguous(), "encoder_bias": t["b_enc"], "decoder_bias": t["b_dec"]}
    if not sae.tied:
        state["decoder_weight"] = t["W_dec"].t().contiguous()
    sae.load_state_dict(state)
    return sae


# cfg fields every SAE's model assumes, whatever its architecture (checked on load)
_FIXED = {"dtype": "float32", "apply_b_dec_to_input": False, "normalize_activations": "none"}


# cfg field -> (accepted type, what it must be); every field load_sae relies on
_REQUIRED: dict[str, tuple[type, str]] = {
    "lfp_format_version": (int, "an integer"), "lfp_architecture": (str, "a string"),
    "architecture": (str, "a string"), "d_in": (int, "a positive integer"), "d_sae": (int, "a positive integer"),
    "tied": (bool, "true or false"), "lfp_weights_sha256": (str, "a hex string"), "lfp_meta": (dict, "an object"),
}


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """'name: n of m values' for the first tensor holding NaN/inf, else None."""
    for name, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            return f"{name}: {bad} of {t.numel()} values"
    return None


def save_sae(sae: SparseAutoencoder, directory: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
    """Write `directory`/{cfg.json, sae_weights.safetensors} atomically (replacing any old one).

    `meta` (JSON-serialisable: layer, ratio, l1, seed, model, task, ...) is stored as cfg.json's
    `lfp_meta`. Non-finite weights (a diverged training) are refused rather than written.
    """
    target = Path(directory)
    arch = ARCHITECTURES.get(getattr(sae, "architecture", None))
    if arch is None:
        raise ValueError(f"save_sae: unknown SAE architecture {getattr(sae, 'architecture', None)!r} (known: {sorted(ARCHITECTURES)})")
    tensors = _to_tensors(sae)
    bad = _non_finite(tensors)
    if bad:
        raise ArtifactError(f"{target}: refusing to save an SAE with non-finite weights ({bad}): did training diverge?")
    cfg: dict[str, Any] = {
        "architecture": arch.saelens_architecture, "d_in": sae.d_in, "d_sae": sae.d_hidden,
        "device": SAELENS_DEVICE, **_FIXED, **arch.saelens_fixed, **arch.cfg_fields(sae),
        "lfp_format_version": FORMAT_VERSION, "lfp_architecture": sae.architecture, "tied": sae.tied,
        "lfp_meta": dict(meta),
    }
    with io.atomic_dir(target) as tmp:
        io.save_tensors(tmp / WEIGHTS_FILENAME, tensors)
        cfg["lfp_weights_sha256"] = _sha256(tmp / WEIGHTS_FILENAME)
        io.write_json(tmp / CFG_FILENAME, cfg)


def read_sae_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """cfg.json of an SAE directory, validated (caller metadata under "lfp_meta"); a missing
    directory or file, a missing or mistyped field, or an unknown architecture raises ArtifactError."""
    d = Path(directory)
    if d.is_file():
        raise ArtifactError(f"{d}: expected an SAE directory holding {CFG_FILENAME} + {WEIGHTS_FILENAME} "
                            "(a single-file SAE from an older lfp? re-run the sae stage)")
    if not d.is_dir():
        raise ArtifactError(f"{d}: SAE directory not found (run the stage that produces it first)")
    path = d / CFG_FILENAME
    cfg = io.read_json(path)
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    for name, (typ, what) in _REQUIRED.items():
        if name not in cfg:
            raise ArtifactError(f"{path}: missing field '{name}'")
        value = cfg[name]
        if not isinstance(value, typ) or (typ is int and (isinstance(value, bool) or (name.startswith("d_") and value <= 0))):
            raise ArtifactError(f"{path}: field '{name}' must be {what}, got {value!r}")
    if cfg["lfp_format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path}: lfp_format_version {cfg['lfp_format_version']} is not {FORMAT_VERSION} (written by another lfp version)")
    arch = ARCHITECTURES.get(cfg["lfp_architecture"])
    if arch is None:
        raise ArtifactError(f"{path}: unknown lfp_architecture {cfg['lfp_architecture']!r} (known: {', '.join(sorted(ARCHITECTURES))})")
    expected = {"architecture": arch.saelens_architecture, **_FIXED, **arch.saelens_fixed}
    for name, want in expected.items():
        if cfg.get(name) != want or type(cfg.get(name)) is not type(want):
            raise ArtifactError(f"{path}: field '{name}' must be {want!r} for lfp_architecture "
                                f"{cfg['lfp_architecture']!r}, got {cfg.get(name, '<missing>')!r}")
    arch.check_cfg(cfg, path)
    return cfg


def load_sae(directory: str | os.PathLike[str]) -> SparseAutoencoder:
    """Load an SAE directory written by `save_sae`: a CPU module in eval mode, weights bit-identical.

    Fails fast (ArtifactError naming the file, one line) on anything `read_sae_config` refuses and
    on a truncated weights file, tensors whose names, shapes or dtype disagree with cfg.json,
    non-finite values, or weights whose sha256 is not the one recorded in cfg.json.
    """
    cfg = read_sae_config(directory)
    weights = Path(directory) / WEIGHTS_FILENAME
    tensors = io.load_tensors(weights)
    shapes = _shapes(cfg["d_in"], cfg["d_sae"])
    if set(tensors) != set(shapes):
        raise ArtifactError(f"{weights}: tensors {sorted(tensors)} are not the expected {sorted(shapes)}")
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype != torch.float32:
            raise ArtifactError(f"{weights}: tensor '{name}' is {list(t.shape)} {t.dtype}, cfg.json says "
                                f"{list(shape)} torch.float32 (d_in={cfg['d_in']}, d_sae={cfg['d_sae']})")
    bad = _non_finite(tensors)
    if bad:
        raise ArtifactError(f"{weights}: non-finite weights ({bad}): corrupted file, re-create it")
    digest = _sha256(weights)
    if digest != cfg["lfp_weights_sha256"]:
        raise ArtifactError(f"{weights}: sha256 {digest[:12]}… differs from {CFG_FILENAME}'s "
                            f"{cfg['lfp_weights_sha256'][:12]}… (file corrupted or changed after writing)")
    return _from_tensors(cfg, tensors, weights).eval()
