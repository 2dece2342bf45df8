"""The activation cache: the file format `activations` writes and `sae` / `probe` read.

Per source folder (data/activations/{model}-{task}/{source}/), rows ordered by (text, position),
padding never stored:
  layer{L}.npy  float32 [n_rows, d_model]   tokens.npy  int64 [n_rows, 2] = (text, position)
  input_ids.npy int64 [n_rows] (the token at each row)   index.json (+ text ids and row offsets)

Memory stays bounded for any corpus: a first pass only tokenizes (to size the files), the second
runs the model over length-sorted batches (little padding) and writes rows to their place in the
.npy files every `chunk_rows` rows with plain file writes, so neither the cache nor the page
mapping grows with the corpus. Only the transformer body runs (no LM head: logits are not needed).

The held-out split of cached *texts* (rows of one text are correlated) lives here too, so the SAE
of the base model and of the fine-tuned model hold out the same texts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lfp.core import io
from lfp.core.errors import ArtifactError, DataError
from lfp.models.loading import capture_mlp_outputs, d_model
from lfp.models.tokens import keep_last, leading_special_ids

TOKENIZE_BATCH = 512  # texts per tokenizer call in the counting pass
INDEX_FIELDS = ("layers", "n_rows", "d_model", "n_texts", "text_offsets")


def layer_file(directory: Path, layer: int) -> Path:
    return directory / f"layer{layer}.npy"


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, keeping the last `max_length` tokens (and a leading `<bos>`)."""
    lead = leading_special_ids(tokenizer)
    return [keep_last(ids, max_length, lead) for ids in tokenizer(texts, verbose=False)["input_ids"]]


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


def read_index(directory: Path) -> dict[str, Any]:
    path = directory / "index.json"
    index = io.read_json(path)
    for key in INDEX_FIELDS:
        if key not in index:
            raise ArtifactError(f"{path}: missing field '{key}'")
    if len(index["text_offsets"]) != index["n_texts"] + 1 or index["text_offsets"][-1] != index["n_rows"]:
        raise ArtifactError(f"{path}: 'text_offsets' does not match 'n_texts' / 'n_rows'")
    return index


def load_layer(directory: Path, layer: int, index: dict[str, Any]) -> np.ndarray:
    path = layer_file(directory, layer)
    acts = io.load_npy(path)
    if acts.shape != (index["n_rows"], index["d_model"]) or acts.dtype != np.float32:
        raise ArtifactError(f"{path}: expected float32 {(index['n_rows'], index['d_model'])}, got {acts.dtype} {acts.shape}")
    return acts


def heldout_texts(offsets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded held-out indices among the texts that have rows (≥ 1, leaving ≥ 1 for training),
    in seeded order."""
    candidates = np.flatnonzero(np.diff(offsets) > 0)
    if len(candidates) < 2:
        raise ArtifactError(f"activations: {len(candidates)} cached non-empty text(s); need at least 2 to hold some out")
    n_held = min(max(round(fraction * len(candidates)), 1), len(candidates) - 1)
    return np.random.default_rng(seed).permutation(candidates)[:n_held]


def split_rows(offsets: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train row indices, held-out row indices), each ascending."""
    is_held = np.zeros(int(offsets[-1]), dtype=bool)
    for i in held:
        is_held[offsets[i] : offsets[i + 1]] = True
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def subset(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """A seeded subset of at most `limit` rows, ascending (the SAE's training budget)."""
    from lfp.sae import select_rows

    return rows[select_rows(len(rows), limit, seed)]
