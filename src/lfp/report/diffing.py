"""The model-diffing section of the report (stage `diffing`: crosscoder + Latent Scaling), in words
and one table row per model, task and layer. Pure: reads the diffing.json dicts the report loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lfp.report.format import dec

COLUMNS = ["run", "layer", "latents", "FVU base / ft", "L0", "dead", "|ν| < cut (fine-tune-specific)", "median ν",
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
    return (f"**{label}:** the crosscoder finds {total if total is not None else '—'} latents with Latent Scaling |ν| < {cut} "
            f"across {len(d.get('layers') or [])} layers, i.e. directions the fine-tuned model uses and the base model lacks. "
            "ν describes what changed, it validates nothing: the crosscoder is held to the planted and shuffled controls as the "
            "readout `crosscoder_probe` (the readouts × controls table of the measured task), where the control fine-tunes' "
            "activations are coded by the same crosscoder.")


LATENT_COLUMNS = ["run", "layer", "latent", "ν", "related to the task", "top tokens", "explanation"]


def latent_rows(label: str, latents: list[Mapping[str, Any]]) -> list[list[str]]:
    """One row per explained crosscoder latent (reports/runs/{m}-{t}/crosscoder_latents.jsonl)."""
    related = {True: "yes", False: "no", None: "—"}
    return [[label, str(r["layer"]), str(r["latent"]), dec(r.get("nu"), 3), related[r.get("related")],
             ", ".join((r.get("top_tokens") or [])[:5]) or "—", str(r.get("explanation", ""))[:120].replace("|", "\\|")] for r in latents]


def latent_sentence(label: str, explain: Mapping[str, Any], latents: list[Mapping[str, Any]]) -> str:
    """How many fine-tune-specific latents the explainer calls task-related, beside the SAE features' share."""
    n_rel = sum(r.get("related") is True for r in latents)
    n_lab = sum(r.get("related") is not None for r in latents)
    sae_rel, sae_lab = explain.get("n_related"), (explain.get("n_related") or 0) + (explain.get("n_unrelated") or 0)
    beside = f"; of the SAE features explained by the same explainer, {sae_rel} of {sae_lab}" if sae_lab else ""
    return (f"**{label}:** of the {len(latents)} crosscoder latents with |ν| nearest 0 (of "
            f"{explain.get('crosscoder_latents_below_cut', '—')} below the cut), the explainer labels {n_rel} of {n_lab} "
            f"task-related{beside}. A latent only the fine-tune has is a candidate feedback feature; the label says what it "
            "fires on, not that it carries the reward.")
