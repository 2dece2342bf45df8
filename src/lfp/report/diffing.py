"""The model-diffing section of the report (stage `diffing`: crosscoder + Latent Scaling), in words
and one table row per model, task and layer. Pure: reads the diffing.json dicts the report loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lfp.report.format import dec

COLUMNS = ["run", "layer", "latents", "FVU base / ft", "L0", "dead", "ν < cut (fine-tune-specific)", "median ν",
           "ν histogram", "tokens where the specific latents fire most"]


def rows(label: str, d: Mapping[str, Any]) -> list[list[str]]:
    out = []
    for layer in d.get("layers") or []:
        k = f"layer{layer}_"
        hist = d.get(k + "nu_histogram") or {}
        out.append([label, str(layer), str(d.get(k + "n_latents", "—")), f"{dec(d.get(k + 'fvu_base'))} / {dec(d.get(k + 'fvu_finetuned'))}",
                    dec(d.get(k + "l0"), 1), f"{100 * d[k + 'dead_fraction']:.1f} %" if isinstance(d.get(k + "dead_fraction"), float) else "—",
                    str(d.get(k + "n_specific", "—")), dec(d.get(k + "nu_median"), 2),
                    ", ".join(f"{b}: {c}" for b, c in hist.items()), ", ".join(d.get(k + "specific_top_tokens") or []) or "—"])
    return out


def sentence(label: str, d: Mapping[str, Any]) -> str:
    total = d.get("n_specific_total")
    cut = d.get("specific_nu", 0.2)
    return (f"**{label}:** the crosscoder finds {total if total is not None else '—'} latents with Latent Scaling ν < {cut} "
            f"across {len(d.get('layers') or [])} layers, i.e. directions the fine-tuned model uses and the base model lacks. "
            "ν describes what changed, it validates nothing: the crosscoder is held to the planted and shuffled controls as the "
            "readout `crosscoder_probe` (the readouts × controls table of the measured task), where the control fine-tunes' "
            "activations are coded by the same crosscoder.")
