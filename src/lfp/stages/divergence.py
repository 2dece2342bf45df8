"""`lfp divergence --model M --task T`: which blocks did fine-tuning move most? (§3.2, App. C, Fig. 7)

For every transformer block, the ℓ2 (Frobenius) norm of (fine-tuned − base) over all the block's
parameters, and over its MLP alone; both are reported and plotted. The `divergence.top_k` blocks
with the largest whole-block norm are the layers whose MLP outputs the later stages study
(`chosen_layers`, ascending). Ties are broken towards the lower layer so the choice is stable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lfp.core import io, paths
from lfp.core.params import Params, section_dict
from lfp.core.errors import ArtifactError, ConfigError
from lfp.models.loading import block_prefix, load_model, n_layers
from lfp.core.tracking import stage_run

log = logging.getLogger(__name__)


def divergence_file(model: str, task: str) -> Path:
    return paths.report_dir(model, task) / "divergence.json"


def plot_file(model: str, task: str) -> Path:
    return paths.report_dir(model, task) / "divergence.png"


@torch.no_grad()
def block_divergences(base: Any, tuned: Any, *, where: str = "fine-tuned model") -> tuple[list[float], list[float]]:
    """(block_l2, mlp_l2) per layer: sqrt(Σ‖Δp‖²) over the block's / its MLP's parameters."""
    if n_layers(base) != n_layers(tuned):
        raise ArtifactError(f"{where}: {n_layers(tuned)} blocks, the base model has {n_layers(base)}")
    base_params = dict(base.named_parameters())
    tuned_params = dict(tuned.named_parameters())
    block_l2, mlp_l2 = [], []
    for layer in range(n_layers(base)):
        prefix = block_prefix(base, layer)
        block_sq = mlp_sq = 0.0
        names = [name for name in base_params if name.startswith(prefix)]
        if not names:
            raise ArtifactError(f"base model: block {layer} ('{prefix}') has no parameters")
        for name in names:
            other = tuned_params.get(name)
            if other is None or other.shape != base_params[name].shape:
                raise ArtifactError(f"{where}: parameter '{name}' is missing or has another shape than in the base model")
            sq = float((other.detach().double() - base_params[name].detach().double()).pow(2).sum())
            block_sq += sq
            if name.startswith(prefix + "mlp."):
                mlp_sq += sq
        block_l2.append(block_sq**0.5)
        mlp_l2.append(mlp_sq**0.5)
    return block_l2, mlp_l2


def top_layers(block_l2: list[float], k: int) -> list[int]:
    """Indices of the k largest values (ties -> lower layer), returned ascending."""
    if k > len(block_l2):
        raise ConfigError(f"params: 'divergence.top_k' ({k}) exceeds the model's {len(block_l2)} blocks")
    order = np.lexsort((np.arange(len(block_l2)), -np.asarray(block_l2, dtype=np.float64)))
    return sorted(int(i) for i in order[:k])


def plot_divergence(path: Path, block_l2: list[float], mlp_l2: list[float], chosen: list[int], title: str) -> None:
    """Paper Fig. 7: one bar per layer (whole block, MLP only); chosen layers highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.arange(len(block_l2))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(layers) + 2.0), 3.5))
    colors = ["tab:red" if i in chosen else "tab:blue" for i in layers]
    ax.bar(layers - 0.2, block_l2, width=0.4, color=colors, label="whole block (red: chosen)")
    ax.bar(layers + 0.2, mlp_l2, width=0.4, color="tab:gray", label="MLP only")
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("ℓ2 norm of parameter change")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run(params: Params, model: str | None, task: str | None) -> None:
    assert model is not None and task is not None
    k = params.divergence.top_k
    base_dir, tuned_dir = paths.base_model_dir(model), paths.finetuned_dir(model, task)
    with stage_run(
        "divergence", experiment=params.tracking.experiment, model=model, task=task,
        params={"divergence": section_dict(params.divergence)},
        tags={"model_source": params.spec(model).source},
    ) as tracking:
        base, _ = load_model(base_dir)
        tuned, _ = load_model(tuned_dir)
        block_l2, mlp_l2 = block_divergences(base, tuned, where=str(tuned_dir))
        chosen = top_layers(block_l2, k)
        log.info("divergence %s-%s: chosen layers %s", model, task, chosen)
        plot_divergence(plot_file(model, task), block_l2, mlp_l2, chosen, f"{paths.run_id(model, task)}: per-layer divergence")
        for layer, (b, m) in enumerate(zip(block_l2, mlp_l2)):
            tracking.log_metrics({"block_l2": b, "mlp_l2": m}, step=layer)
        tracking.write_metrics(
            divergence_file(model, task),
            {"block_l2": block_l2, "mlp_l2": mlp_l2, "chosen_layers": chosen, "top_k": k,
             "total_l2": float(np.sqrt(np.sum(np.square(block_l2))))},
        )
        tracking.log_artifact(plot_file(model, task))
