"""Zero-ablation of SAE features inside a running model (Table 6): the hooks, the per-condition
scores and KLs, the frequency-matched random control and the paired bootstrap. Kind-agnostic: what
a condition is judged by (VADER reward, DPO margin) is the task kind's ablation objective
(`tasks/<kind>/ablation.py`, lfp.validation.objective).

Why a module: the paper's ablation loaded the wrong class and ablated nothing. Here the MLP output
of each chosen layer is replaced by the SAE reconstruction with the listed features zeroed, the
hooks are removed on exit (lfp.models.loading.replace_mlp_outputs), and every condition shares the same
prefixes and the same sampling seed so that only the intervention differs: each condition is
judged by per-sample differences to the SAE reconstruction (paired bootstrap CIs), against a
control of random features matched to the related ones in activation frequency.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lfp.models.loading import capture_mlp_outputs, replace_mlp_outputs


def sae_replacement(sae: Any, zeroed: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """out -> decode(encode(out) with the `zeroed` feature codes set to 0)."""
    index = torch.as_tensor(list(zeroed), dtype=torch.long)

    def replace(out: torch.Tensor) -> torch.Tensor:
        codes = sae.encode(out.float())
        if len(index):
            codes = codes.index_fill(-1, index.to(codes.device), 0.0)
        return sae.decode(codes).to(out.dtype)

    return replace


@contextlib.contextmanager
def sae_hooks(model: Any, saes: Mapping[int, Any], zeroed: Mapping[int, Sequence[int]] | None) -> Iterator[None]:
    """Within the block, every layer in `saes` outputs its SAE reconstruction (features in
    `zeroed[layer]` set to 0). `zeroed=None` means no hook at all (the unmodified model)."""
    if zeroed is None:
        yield
        return
    with replace_mlp_outputs(model, {L: sae_replacement(sae, zeroed.get(L, ())) for L, sae in saes.items()}):
        yield


def _padded(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask for token-id lists of varying length."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(batch):
        ids[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


@torch.no_grad()
def condition_scores(
    model: Any, saes: Mapping[int, Any], conditions: Sequence[tuple[str, Mapping[int, Sequence[int]] | None]],
    sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int, *,
    response_starts: Sequence[int] | None = None, kl: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Score `sequences` under every condition (name, zeroed); `zeroed=None` is the unhooked model.

    Returns (log-probs, KLs). log-probs[name][i] = Σ log p(token t | tokens < t) over t from
    `response_starts[i]` to the end of sequence i (only when `response_starts` is given);
    KLs[name] = mean KL(unhooked || condition) of the next-token distributions over all real
    positions, for every hooked condition (when `kl`).

    Why one function: every condition is compared with the same unhooked pass, so each batch runs
    the unhooked model once and then each hooked condition once (the per-condition KL used to
    recompute the unhooked pass, and the log-probs ran the hooked pass a second time). The numbers
    are the same: same batches, same arithmetic, same order of accumulation per condition.
    """
    device = next(model.parameters()).device
    hooked = [(name, zeroed) for name, zeroed in conditions if zeroed is not None]
    logps: dict[str, list[float]] = {name: [] for name, _ in conditions}
    kl_sums = {name: 0.0 for name, _ in hooked}
    count = 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        ids, mask = _padded(batch, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        real = mask.bool()
        for name, zeroed in conditions:
            if zeroed is None:
                logp = ref
            else:
                with sae_hooks(model, saes, zeroed):
                    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
                if kl:
                    kl_sums[name] += float((ref.exp() * (ref - logp)).sum(-1)[real].sum())
            if response_starts is not None:
                taken = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].cpu()
                for i, seq in enumerate(batch):
                    first = response_starts[start + i]
                    logps[name].append(float(taken[i, first - 1 : len(seq) - 1].sum()))
        count += int(mask.sum())
    kls = {name: total / max(count, 1) for name, total in kl_sums.items()} if kl else {}
    return {name: np.asarray(v) for name, v in logps.items()}, kls


def mean_next_token_kl(
    model: Any, saes: Mapping[int, Any], zeroed: Mapping[int, Sequence[int]] | None,
    sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int,
) -> float:
    """Mean KL(unhooked || hooked) of the next-token distribution over all real token positions.

    Why: with a small model, sampled completions can be identical across conditions even though
    the intervention moved the logits; the KL shows whether (and how much) an ablation acted.
    """
    if zeroed is None:
        return 0.0
    return condition_scores(model, saes, [("hooked", zeroed)], sequences, batch_size, pad_id)[1]["hooked"]


def frequency_matched_features(
    related: Mapping[int, Sequence[int]], frequencies: Mapping[int, np.ndarray], rng: np.random.Generator, pool: int = 3,
) -> dict[int, list[int]]:
    """Per layer, one unrelated feature per related feature, of about the same activation frequency.

    Why: a control of uniformly drawn features fires far less often than the related ones (which
    an explainer picks because they fire), so zeroing it is a weaker intervention and any gap to it
    is a frequency effect. Each related feature (in random order) is paired with a feature drawn
    uniformly among the `pool` unrelated, not yet drawn features nearest to it in frequency
    (`frequencies[layer][f]`: fraction of tokens where f is active); `pool=1` is nearest-neighbour.
    """
    out: dict[int, list[int]] = {}
    for layer, feats in related.items():
        freq = np.asarray(frequencies[layer], dtype=float)
        taken = {int(f) for f in feats}
        chosen: list[int] = []
        for f in rng.permutation(np.asarray(sorted(taken), dtype=int)):
            avail = np.asarray([c for c in range(len(freq)) if c not in taken], dtype=int)
            if not len(avail):
                break
            # nearest first; ties in frequency broken at random so that draws differ
            order = np.lexsort((rng.random(len(avail)), np.abs(freq[avail] - freq[int(f)])))
            pick = int(avail[order[int(rng.integers(min(pool, len(avail))))]])
            chosen.append(pick)
            taken.add(pick)
        out[layer] = sorted(chosen)
    return out


def random_conditions(
    related: dict[int, list[int]], frequencies: dict[int, np.ndarray], n_random: int, seed: int, pool: int,
) -> list[tuple[str, dict[int, list[int]]]]:
    """`random{i}`: as many unrelated features per layer as are related, matched in frequency."""
    return [(f"random{i}", frequency_matched_features(related, frequencies, np.random.default_rng([seed, i]), pool))
            for i in range(n_random)]


@torch.no_grad()
def token_frequencies(
    model: Any, saes: Mapping[int, Any], sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int,
) -> dict[int, np.ndarray]:
    """layer -> per feature, the fraction of real tokens of `sequences` where its code is > 0
    (unhooked model): the frequency the random control is matched on, measured on the very
    tokens the ablation acts on."""
    device = next(model.parameters()).device
    layers = sorted(saes)
    counts = {L: torch.zeros(saes[L].d_hidden, dtype=torch.float64, device=device) for L in layers}
    total = 0
    for start in range(0, len(sequences), batch_size):
        ids, mask = _padded(sequences[start : start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        with capture_mlp_outputs(model, layers) as captured:
            model(input_ids=ids, attention_mask=mask)
        real = mask.bool()
        for L in layers:
            counts[L] += (saes[L].encode(captured[L].float())[real] > 0).sum(0).double()
        total += int(real.sum())
    return {L: (c / max(total, 1)).cpu().numpy() for L, c in counts.items()}


def paired_delta(
    condition: np.ndarray, reference: np.ndarray, n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean of condition − reference, percentile-bootstrap CI low, high), resampling samples.

    Why paired: every condition scores the same prefixes (same sampling seed) or the same pairs, so
    the per-sample difference removes the between-sample variance that dominates each mean.
    Either side may be [draws, samples] (e.g. the random-feature draws): its mean over draws is
    compared, and each resample also redraws the draws with replacement, so the CI includes how
    much the answer depends on which random features were drawn, not only on which samples.
    """
    a, b = np.atleast_2d(np.asarray(condition, dtype=float)), np.atleast_2d(np.asarray(reference, dtype=float))
    n = a.shape[1]
    if b.shape[1] != n or not n:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    if len(a) == 1 and len(b) == 1:  # one draw each: resample samples only, vectorised in chunks
        d = a[0] - b[0]
        chunk = max(1, 2_000_000 // n)
        for start in range(0, n_resamples, chunk):
            k = min(chunk, n_resamples - start)
            means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    else:
        for r in range(n_resamples):
            rows = rng.integers(0, n, size=n)
            d = a[rng.integers(0, len(a), size=len(a))].mean(axis=0) - b[rng.integers(0, len(b), size=len(b))].mean(axis=0)
            means[r] = d[rows].mean()
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float((a.mean(axis=0) - b.mean(axis=0)).mean()), float(low), float(high)
