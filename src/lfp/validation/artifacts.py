"""The upstream artifacts explain and validate read (matching.json, features.jsonl, explain.json,
the probe's inputs), each checked on load so that a stale or foreign file fails with its path."""

from __future__ import annotations

from typing import Any

import numpy as np

from lfp.core import io, paths
from lfp.core.errors import ArtifactError


def selected_features(model: str, task: str, layers: list[int], top_k: int) -> dict[int, list[tuple[int, float]]]:
    """layer -> [(small-dict feature index, max cosine to the large dict)], best first."""
    path = paths.matching_file(model, task)
    data = io.read_json(path).get("layers", {})
    out = {}
    for layer in layers:
        entry = data.get(str(layer))
        if not isinstance(entry, dict) or "ranked_features" not in entry or "max_cos" not in entry:
            raise ArtifactError(f"{path}: layers.{layer} lacks 'ranked_features' / 'max_cos'")
        ranked, max_cos = entry["ranked_features"], entry["max_cos"]
        if any(not isinstance(f, int) or not 0 <= f < len(max_cos) for f in ranked):
            raise ArtifactError(f"{path}: layers.{layer}.ranked_features has an index outside max_cos")
        out[layer] = [(f, float(max_cos[f])) for f in ranked[:top_k]]
    return out


def related_features(model: str, task: str) -> dict[int, list[int]]:
    """layer -> features labelled related (true) in features.jsonl."""
    path = paths.report_dir(model, task) / "features.jsonl"
    out: dict[int, list[int]] = {}
    for _, row in io.iter_jsonl(path, {"layer": int, "feature": int}, allow_empty=True):
        if row.get("related") is True:
            out.setdefault(row["layer"], []).append(row["feature"])
    return {L: sorted(set(f)) for L, f in out.items()}


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


def explainer_provenance(model: str, task: str) -> dict[str, Any]:
    """Who labelled the features this validation rests on, and how well its explanations scored
    (from explain.json): `explainer`, `llm_model`, `explanation_score_<explainer>_mean`."""
    explained = io.read_json(paths.report_dir(model, task) / "explain.json")
    keys = ["explainer", "llm_model"] + sorted(k for k in explained if k.startswith("explanation_score_") and k.endswith("_mean"))
    return {k: explained.get(k) for k in keys}

