"""`lfp activations --model M --task T`: cache the chosen layers' MLP outputs of the fine-tuned model.

Corpus (§3.2): vader — IMDB train reviews; hh/toxic — prompt + chosen and prompt + rejected of the
fine-tuning pairs; `activations.n_texts` texts picked by seeded hash (`prepare.subsample`, salt
"activations"). Each text keeps its last `activations.max_length` tokens (so a dialogue keeps its
final reply).

Output (docs/artifacts.md), rows ordered by (text index, position), padding never stored:
  layer{L}.npy  float32 [n_rows, d_model]   tokens.npy  int64 [n_rows, 2] = (text, position)
  input_ids.npy int64 [n_rows] (the token at each row)   index.json (+ text ids and row offsets)

Memory stays bounded for any corpus: a first pass only tokenizes (to size the files), the second
runs the model over length-sorted batches (little padding) and writes rows to their place in the
.npy files every `chunk_rows` rows with plain file writes, so neither the cache nor the page
mapping grows with the corpus. Only the transformer body runs (no LM head: logits are not needed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lfp import io, paths
from lfp.config import Params, section_dict
from lfp.errors import ArtifactError, DataError
from lfp.modeling import capture_mlp_outputs, d_model, load_model, n_layers
from lfp.stages.prepare import prepared_file, subsample
from lfp.tracking import stage_run

log = logging.getLogger(__name__)

TOKENIZE_BATCH = 512  # texts per tokenizer call in the counting pass


def index_file(model: str, task: str) -> Path:
    return paths.activations_dir(model, task) / "index.json"


def layer_file(directory: Path, layer: int) -> Path:
    return directory / f"layer{layer}.npy"


def activation_corpus(params: Params, task: str) -> tuple[list[str], list[str], Path]:
    """(ids, texts, source file) of the texts whose activations are cached, in corpus order."""
    n = params.activations.n_texts
    if task == "vader":
        source = prepared_file("vader", "train")
        rows = subsample(io.read_jsonl(source, {"id": str, "text": str}), n, params.seed, "activations")
        return [r["id"] for r in rows], [r["text"] for r in rows], source
    source = prepared_file(task, "finetune")
    rows = io.read_jsonl(source, {"id": str, "prompt": str, "chosen": str, "rejected": str})
    pairs = subsample(rows, (n + 1) // 2, params.seed, "activations")
    ids = [f"{r['id']}:{k}" for r in pairs for k in ("chosen", "rejected")][:n]
    texts = [r["prompt"] + r[k] for r in pairs for k in ("chosen", "rejected")][:n]
    return ids, texts, source


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, keeping the last `max_length` tokens."""
    return [ids[-max_length:] for ids in tokenizer(texts)["input_ids"]]


def token_lengths(tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    """Truncated token count per text (the cheap first pass that sizes the output files)."""
    out = np.zeros(len(texts), dtype=np.int64)
    for lo in range(0, len(texts), TOKENIZE_BATCH):
        out[lo : lo + TOKENIZE_BATCH] = [len(ids) for ids in tokenize(tokenizer, texts[lo : lo + TOKENIZE_BATCH], max_length)]
    return out


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Text indices, longest first (stable), in batches; empty texts are skipped."""
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]
    for lo in range(0, len(order), batch_size):
        yield order[lo : lo + batch_size]


class RowFile:
    """A .npy array of known shape, filled by row ranges with ordinary file writes."""

    def __init__(self, path: Path, n_rows: int, width: int | None, dtype: np.dtype) -> None:
        shape = (n_rows,) if width is None else (n_rows, width)
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset = header.offset
        self.row_bytes = int(np.dtype(dtype).itemsize * (width or 1))
        self.dtype = np.dtype(dtype)
        del header
        self.fh = open(path, "r+b")  # noqa: SIM115 - closed in close()

    def write(self, row: int, values: np.ndarray) -> None:
        self.fh.seek(self.offset + row * self.row_bytes)
        self.fh.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())

    def close(self) -> None:
        self.fh.close()


class ChunkedWriter:
    """Buffers (row offset, rows) pieces for several RowFiles; flushes every `chunk_rows` rows."""

    def __init__(self, files: dict[str, RowFile], chunk_rows: int) -> None:
        self.files = files
        self.chunk_rows = chunk_rows
        self.pending: list[tuple[int, dict[str, np.ndarray]]] = []
        self.buffered = 0

    def add(self, row: int, pieces: dict[str, np.ndarray]) -> None:
        self.pending.append((row, pieces))
        self.buffered += len(next(iter(pieces.values())))
        if self.buffered >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        for row, pieces in sorted(self.pending, key=lambda item: item[0]):
            for name, values in pieces.items():
                self.files[name].write(row, values)
        self.pending, self.buffered = [], 0

    def close(self) -> None:
        self.flush()
        for f in self.files.values():
            f.close()


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (right padding: a causal model's real tokens never see it)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.inference_mode()
def cache_activations(
    model: Any, tokenizer: Any, texts: list[str], layers: list[int], out_dir: Path, *,
    max_length: int, batch_size: int, chunk_rows: int, device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Write layer{L}.npy, tokens.npy and input_ids.npy for `texts` into `out_dir`.

    Returns {"n_rows", "d_model", "text_offsets"}: text i owns rows text_offsets[i]:text_offsets[i+1].
    """
    lengths = token_lengths(tokenizer, texts, max_length)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n_rows, width = int(offsets[-1]), d_model(model)
    if n_rows == 0:
        raise DataError("activations: every selected text is empty after tokenization")
    files = {f"layer{L}": RowFile(layer_file(out_dir, L), n_rows, width, np.float32) for L in layers}
    files["tokens"] = RowFile(out_dir / "tokens.npy", n_rows, 2, np.int64)
    files["input_ids"] = RowFile(out_dir / "input_ids.npy", n_rows, None, np.int64)
    writer = ChunkedWriter(files, chunk_rows)
    body = model.base_model  # the transformer without the LM head
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        with capture_mlp_outputs(model, layers) as captured:
            n_batches = -(-int((lengths > 0).sum()) // batch_size)
            for batch in tqdm(length_sorted_batches(lengths, batch_size), total=n_batches, desc="activations", leave=False):
                seqs = tokenize(tokenizer, [texts[i] for i in batch], max_length)
                ids, mask = pad_batch(seqs, pad_id)
                body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                outs = {L: captured[L].float().cpu().numpy() for L in layers}
                for k, i in enumerate(batch):
                    n = len(seqs[k])
                    pieces = {f"layer{L}": outs[L][k, :n] for L in layers}
                    pieces["tokens"] = np.stack([np.full(n, i), np.arange(n)], axis=1)
                    pieces["input_ids"] = np.asarray(seqs[k], dtype=np.int64)
                    writer.add(int(offsets[i]), pieces)
    finally:
        writer.close()
    return {"n_rows": n_rows, "d_model": width, "text_offsets": offsets.tolist()}


def chosen_layers(model: str, task: str) -> list[int]:
    path = paths.report_dir(model, task) / "divergence.json"
    layers = io.read_json(path).get("chosen_layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ArtifactError(f"{path}: field 'chosen_layers' must be a non-empty list of layer indices")
    return layers


def run(params: Params, model: str | None, task: str | None) -> None:
    assert model is not None and task is not None
    from accelerate import Accelerator

    cfg = params.activations
    layers = chosen_layers(model, task)
    with stage_run(
        "activations", experiment=params.tracking.experiment, model=model, task=task,
        params={"seed": params.seed, "activations": section_dict(cfg)},
        tags={"model_source": params.spec(model).source},
    ) as tracking:
        ids, texts, source = activation_corpus(params, task)
        lm, tokenizer = load_model(paths.finetuned_dir(model, task))
        if max(layers) >= n_layers(lm):
            raise ArtifactError(f"divergence.json: layer {max(layers)} is outside the model's {n_layers(lm)} blocks")
        device = Accelerator().device
        lm.to(device)
        out = paths.activations_dir(model, task)
        with io.atomic_dir(out) as tmp:
            info = cache_activations(
                lm, tokenizer, texts, layers, tmp, max_length=cfg.max_length, batch_size=cfg.batch_size,
                chunk_rows=cfg.chunk_rows, device=device,
            )
            io.write_json(tmp / "index.json", {
                "layers": layers, "n_rows": info["n_rows"], "d_model": info["d_model"], "n_texts": len(texts),
                "source": str(source), "max_length": cfg.max_length, "truncation": "left",
                "text_ids": ids, "text_offsets": info["text_offsets"],
            })
        tracking.log_metrics({"n_rows": info["n_rows"], "n_texts": len(texts), "mean_tokens_per_text": info["n_rows"] / len(texts)})
        log.info("activations %s-%s: %d rows from %d texts, layers %s", model, task, info["n_rows"], len(texts), layers)
