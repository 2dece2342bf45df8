"""Behavioural ground truth of what fine-tuning taught: each word's *learned value*.

learned(w) = mean over natural contexts c of [log π_ft(w | c) − log π_base(w | c)], where log π(w | c)
sums the log-probabilities of all of w's tokens after the text that precedes it in a real review
(its last `context_tokens` tokens). This is the paper's definition of an LFP made measurable
(footnote 1: the differences caused by training that make outputs score better under the
fine-tuning loss), for every word of the contrastive set, generated or not. A t-interval over the
word's contexts gives its CI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lfp.models.tokens import leading_special_ids
from lfp.measure.triples import token_window


@dataclass
class Contexts:
    """Natural occurrences: per item the text up to and including the word, and the word's span."""

    words: list[str]  # one entry per occurrence
    texts: list[str]
    spans: list[tuple[int, int]]


def natural_contexts(texts: Sequence[str], words: Iterable[str], per_word: int) -> Contexts:
    """Up to `per_word` occurrences of each word (whole word, case-insensitive) in `texts`, taken in
    text order: at most one per text and word, so contexts of a word come from different reviews."""
    wanted = sorted({w.lower() for w in words})
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(wanted, key=len, reverse=True)) + r")\b", re.IGNORECASE)
    counts = dict.fromkeys(wanted, 0)
    out = Contexts([], [], [])
    for text in texts:
        seen: set[str] = set()
        for m in pattern.finditer(text):
            w = m.group(1).lower()
            if w in seen or counts[w] >= per_word:
                continue
            seen.add(w)
            counts[w] += 1
            out.words.append(w)
            out.texts.append(text[: m.end()])
            out.spans.append((m.start(), m.end()))
        if all(c >= per_word for c in counts.values()):
            break
    return out


def context_windows(tokenizer: Any, ctx: Contexts, context_tokens: int) -> list[tuple[list[int], list[int]]]:
    """Token ids (a start token — the model's `<bos>`, or EOS for a tokenizer without one — then the
    last `context_tokens` before the word and the word's tokens) and the positions of the word's
    tokens; contexts whose word maps to no token are left empty."""
    lead = leading_special_ids(tokenizer)
    begin = lead or [tokenizer.eos_token_id]
    out = []
    for text, span in zip(ctx.texts, ctx.spans):
        ids, pos = token_window(tokenizer, text, span, len(text) + len(lead) + 1)  # no cut yet: every token
        if pos:
            start = max(len(lead), pos[0] - context_tokens)
            ids, pos = [*begin, *ids[start:]], [p - start + len(begin) for p in pos]
        out.append((ids, pos))
    return out


@torch.inference_mode()
def span_logprobs(model: Any, windows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> np.ndarray:
    """Sum of log p(token | preceding tokens) over each window's selected positions (NaN if none)."""
    device = next(model.parameters()).device
    out = np.full(len(windows), np.nan)
    order = np.argsort([len(ids) for ids, _ in windows], kind="stable")
    for b in range(0, len(order), batch_size):
        idx = [i for i in order[b : b + batch_size] if windows[i][1]]
        if not idx:
            continue
        width = max(len(windows[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            seq = windows[i][0]
            ids[r, : len(seq)] = torch.tensor(seq)
            attn[r, : len(seq)] = 1
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).last_hidden_state
        out[idx] = scored_spans(model, hidden, [windows[i] for i in idx])
    return out


@torch.inference_mode()
def scored_spans(model: Any, hidden: torch.Tensor, windows: list[tuple[list[int], list[int]]]) -> np.ndarray:
    """Per window (row r of `hidden` is `windows[r]`), the summed log-prob of its selected tokens."""
    device = hidden.device
    # the LM head only where a token is scored (a real vocabulary is 49k-262k wide: full logits
    # at every position cost more than the rest of a small model's forward)
    rows = torch.tensor([r for r, (_, pos) in enumerate(windows) for _ in pos], dtype=torch.long)
    cols = torch.tensor([p - 1 for _, pos in windows for p in pos], dtype=torch.long)
    targets = torch.tensor([ids[p] for ids, pos in windows for p in pos], dtype=torch.long)
    logits = model.get_output_embeddings()(hidden[rows.to(device), cols.to(device)]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2 caps its logits; applied as the model does
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logp = torch.log_softmax(logits, dim=-1).cpu()
    scored = logp[torch.arange(len(targets)), targets].double().numpy()
    ends = np.cumsum([len(pos) for _, pos in windows])
    return np.array([float(sum(chunk.tolist())) for chunk in np.split(scored, ends[:-1])])


@dataclass
class LearnedValues:
    words: list[str]
    value: np.ndarray  # mean over contexts of the log-prob change
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_contexts: np.ndarray

    def by_word(self) -> dict[str, float]:
        return dict(zip(self.words, self.value.tolist()))


def learned_values(words: Sequence[str], change: np.ndarray) -> LearnedValues:
    """Per word: mean of the per-context change with a 95 % t-interval (NaN CI for one context)."""
    from scipy import stats

    change = np.asarray(change, dtype=float)
    words_arr = np.asarray(words, dtype=object)
    uniq = sorted({w for w, c in zip(words, change) if np.isfinite(c)})
    mean, lo, hi, n = [], [], [], []
    for w in uniq:
        x = change[(words_arr == w) & np.isfinite(change)]
        m = float(x.mean())
        if len(x) > 1:
            half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
        else:
            half = float("nan")
        mean.append(m), lo.append(m - half), hi.append(m + half), n.append(len(x))
    return LearnedValues(uniq, np.array(mean), np.array(lo), np.array(hi), np.array(n))
