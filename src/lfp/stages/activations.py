"""`lfp activations --model M --task T --source S`: cache the chosen layers' MLP outputs of one model.

`--source finetuned` reads models/finetuned/M-T, `--source base` the base model M; both cache the
same texts at the same layers (the fine-tune's most-changed ones), so base and fine-tuned
activations, SAEs and probes are comparable row for row. Corpus: the task kind's
(`TaskKind.activation_corpus`: lexicon tasks — train reviews; preference tasks — prompt + chosen
and prompt + rejected of the fine-tuning pairs), `activations.n_texts` texts picked by seeded hash.
Each text keeps its last `activations.max_length` tokens. File format: lfp/activation_cache.py.
"""

from __future__ import annotations

import logging

from lfp.core import io, paths
from lfp.models.activation_cache import cache_activations
from lfp.core.params import Params, section_dict
from lfp.core.errors import ArtifactError
from lfp.core.layers import chosen_layers
from lfp.models.loading import n_layers
from lfp.core.stage_context import open_stage
from lfp.tasks import kind_of

log = logging.getLogger(__name__)


def run(params: Params, model: str, task: str, source: str = "finetuned") -> None:
    cfg = params.activations
    layers = chosen_layers(model, task)
    ids, texts, corpus = kind_of(params, task).activation_corpus(params, task)
    with open_stage("activations", params, model=model, task=task, source=source,
                    log_params={"seed": params.seed, "activations": section_dict(cfg)}) as stage:
        lm, tokenizer = stage.load(paths.model_dir(model, task, source))
        if max(layers) >= n_layers(lm):
            raise ArtifactError(f"{paths.divergence_file(model, task)}: layer {max(layers)} is outside the model's {n_layers(lm)} blocks")
        with io.atomic_dir(paths.activations_dir(model, task, source)) as tmp:
            info = cache_activations(
                lm, tokenizer, texts, layers, tmp, max_length=cfg.max_length, batch_size=cfg.batch_size,
                chunk_rows=cfg.chunk_rows, device=stage.device,
            )
            io.write_json(tmp / "index.json", {
                "layers": layers, "n_rows": info["n_rows"], "d_model": info["d_model"], "n_texts": len(texts),
                "source": str(corpus), "model": source, "max_length": cfg.max_length, "truncation": "left",
                "text_ids": ids, "text_offsets": info["text_offsets"],
            })
        stage.run.log_metrics({"n_rows": info["n_rows"], "n_texts": len(texts), "mean_tokens_per_text": info["n_rows"] / len(texts)})
        log.info("activations %s-%s (%s): %d rows from %d texts, layers %s", model, task, source, info["n_rows"], len(texts), layers)
