"""The layers a run studies: the divergence stage's choice, read the same way by every stage."""

from __future__ import annotations

from lfp.core import io, paths
from lfp.core.errors import ArtifactError


def chosen_layers(model: str, task: str) -> list[int]:
    """`chosen_layers` of reports/runs/{model}-{task}/divergence.json (the most-changed blocks)."""
    path = paths.divergence_file(model, task)
    layers = io.read_json(path).get("chosen_layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ArtifactError(f"{path}: field 'chosen_layers' must be a non-empty list of layer indices")
    return layers
