"""`lfp probe --model M --task T`: activation deltas on contrastive triples, probes and the paper's
LFP-accuracy metrics (§3.3, §4.1: Tables 3, 4, 5, 10; Figures 4, 5), with the controls the paper
lacks.

Inputs of a probe: A(x) = the small SAE's codes of each chosen layer's MLP output, concatenated in
`chosen_layers` order. vader: codes at the substituted word's tokens (mean over its tokens; the
text is cut after the word, which a causal model never sees anyway); hh/toxic: mean over the
response tokens (texts truncated from the left to `probe.max_length` so the response survives).
Padding never enters a mean. Targets: Δ+ = ‖A(x⁺) − A(x⁰)‖₂ for positive elements and
−‖A(x⁻) − A(x⁰)‖₂ for negative ones.

vader: Ridge from A(x) to the signed delta, split by triple; held-out predictions are mapped into
the lexicon's −4..4 scale by sending their 10th/90th percentiles to −4/+4 and clamping (the paper's
code; monotone, so τ changes only through clamp ties); a word's prediction is the mean over its
held-out occurrences; Kendall τ is taken on (predicted, lexicon value) *pairs*. hh/toxic: logistic
regression positive vs negative element, split by source pair; `predicted` in the validate inputs
is the decision function (log-odds), so validate's "> 3" means odds above e³ ≈ 20:1.

Controls: an untrained Xavier-initialised linear probe (the paper's baseline), the same probe refit
on `shuffled_repeats` permutations of the training labels (mean = chance level), and the same
pipeline on the *base* model through SAEs trained the same way on base-model activations (does
fine-tuning create the pattern?). 95 % CIs by bootstrap over held-out triples.

Caveat of the paper's design, kept visible rather than fixed: a target's sign is set by construction
(which element a word was substituted into), and words recur across triples, so a probe that only
recognises word identity already gets signs — and much of τ — right for words seen in training.
The base-model control measures how much of τ that explains; τ on negative words only (Table 10)
is free of the sign effect.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lfp import io, metrics, paths, reward
from lfp.config import Params, section_dict
from lfp.errors import DataError, LfpError, ModelLoadError
from lfp.modeling import capture_mlp_outputs, load_model
from lfp.stages.activations import chosen_layers
from lfp.stages.prepare import prepared_file, subsample
from lfp.tracking import stage_run

log = logging.getLogger(__name__)

VADER_ELEMENT_FIELDS = {"text": str, "word": str, "span": list, "value": (int, float)}
ROLES = ("positive", "neutral", "negative")


# --------------------------------------------------------------------------------------------
# contrastive triples -> token windows
# --------------------------------------------------------------------------------------------


@dataclass
class Triples:
    """Parsed triples: per element role, its text and the char span whose tokens are pooled."""

    path: str
    lines: list[int]
    groups: list[str]  # the split / bootstrap unit (vader: triple id; hh/toxic: source pair id)
    texts: dict[str, list[str]]
    spans: dict[str, list[tuple[int, int]]]
    words: dict[str, list[str]]  # vader only
    values: dict[str, list[float]]  # vader only
    proxy: bool = False


def _element(obj: dict[str, Any], role: str, where: str, fields: dict[str, Any]) -> dict[str, Any]:
    el = obj.get(role)
    if not isinstance(el, dict):
        raise DataError(f"{where}: field '{role}' should be an object")
    for name, typ in fields.items():
        if name not in el:
            raise DataError(f"{where}: missing field '{role}.{name}'")
        if isinstance(el[name], bool) or not isinstance(el[name], typ):
            raise DataError(f"{where}: field '{role}.{name}' has the wrong type")
    return el


def load_triples(task: str) -> Triples:
    """Read `data/contrastive/{task}.jsonl`, checking every field the probe uses."""
    path = paths.contrastive_file(task)
    out = Triples(str(path), [], [], {r: [] for r in ROLES}, {r: [] for r in ROLES}, {r: [] for r in ROLES}, {r: [] for r in ROLES})
    for lineno, obj in io.iter_jsonl(path, {"id": str}):
        where = f"{path}:{lineno}"
        out.lines.append(lineno)
        if task == "vader":
            out.groups.append(obj["id"])
            for role in ROLES:
                el = _element(obj, role, where, VADER_ELEMENT_FIELDS)
                span = el["span"]
                if len(span) != 2 or not all(isinstance(x, int) for x in span) or not 0 <= span[0] < span[1] <= len(el["text"]):
                    raise DataError(f"{where}: field '{role}.span' must be [start, end] inside '{role}.text'")
                if el["text"][span[0] : span[1]] != el["word"]:
                    raise DataError(f"{where}: '{role}.word' {el['word']!r} is not at '{role}.span' {span} of '{role}.text'")
                out.texts[role].append(el["text"])
                out.spans[role].append((span[0], span[1]))
                out.words[role].append(el["word"])
                out.values[role].append(float(el["value"]))
        else:
            prompt = obj.get("prompt")
            if not isinstance(prompt, str):
                raise DataError(f"{where}: field 'prompt' should be str")
            out.groups.append(str(obj.get("pair_id", obj["id"])))
            out.proxy = out.proxy or obj.get("proxy") is True
            for role in ROLES:
                el = _element(obj, role, where, {"text": str, "response": str})
                if el["text"] != prompt + el["response"]:
                    raise DataError(f"{where}: field '{role}.text' must equal prompt + '{role}.response'")
                out.texts[role].append(el["text"])
                out.spans[role].append((len(prompt), len(el["text"])))
    return out


def token_window(tokenizer: Any, text: str, span: tuple[int, int], max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, positions of the tokens overlapping char `span`).

    The text is cut after the span's last token (later tokens cannot influence it in a causal LM)
    and truncated from the left to `max_length`, so the span survives. Empty positions if the span
    maps to no token.
    """
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        raise ModelLoadError(f"{type(tokenizer).__name__}: the probe needs a fast tokenizer (offset mapping)") from None
    start, end = span
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and b > start and a < end]
    if not pos:
        return [], []
    stop = pos[-1] + 1
    first = max(0, stop - max_length)
    return list(enc["input_ids"][first:stop]), [p - first for p in pos if p >= first]


def windows_for(triples: Triples, role: str, tokenizer: Any, max_length: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for text, span, line in zip(triples.texts[role], triples.spans[role], triples.lines):
        ids, pos = token_window(tokenizer, text, span, max_length)
        if not pos:
            raise DataError(f"{triples.path}:{line}: '{role}' span {list(span)} covers no token")
        out.append((ids, pos))
    return out


# --------------------------------------------------------------------------------------------
# activations -> SAE codes
# --------------------------------------------------------------------------------------------


def _pad_batch(windows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and a boolean mask of the positions to pool."""
    width = max(len(ids) for ids, _ in windows)
    ids_t = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(windows), width), dtype=torch.long)
    sel = torch.zeros((len(windows), width), dtype=torch.bool)
    for r, (ids, pos) in enumerate(windows):
        ids_t[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attn[r, : len(ids)] = 1
        sel[r, pos] = True
    return ids_t, attn, sel


@torch.inference_mode()
def element_codes(
    model: Any, saes: dict[int, Any], windows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, desc: str = "codes"
) -> np.ndarray:
    """A(x) for each window: per layer (in `saes` order) the mean SAE code over the selected
    positions, concatenated. Windows are length-sorted into batches to limit padding."""
    device = next(model.parameters()).device
    widths = [int(sae.d_hidden) for sae in saes.values()]
    out = np.zeros((len(windows), sum(widths)), dtype=np.float32)
    order = np.argsort([len(ids) for ids, _ in windows], kind="stable")
    with capture_mlp_outputs(model, list(saes)) as captured:
        for b in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[b : b + batch_size]
            ids, attn, sel = _pad_batch([windows[i] for i in idx], pad_id)
            # the transformer body only: the hooks need no logits (Gemma's LM head is 256k wide)
            model.base_model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
            rows, cols = sel.nonzero(as_tuple=True)
            counts = sel.sum(1, keepdim=True).float().to(device)
            rows, cols = rows.to(device), cols.to(device)
            parts = []
            for layer, sae in saes.items():
                codes = sae.encode(captured[layer][rows, cols].float())
                pooled = torch.zeros((len(idx), codes.shape[1]), device=device).index_add_(0, rows, codes)
                parts.append(pooled / counts)
            out[idx] = torch.cat(parts, dim=1).cpu().numpy()
    return out


def base_control_saes(params: Params, model_name: str, task: str, base: Any, tokenizer: Any, layers: list[int], widths: dict[int, int]) -> dict[int, Any]:
    """Small SAEs trained on the *base* model's MLP outputs exactly as the activations and sae stages
    train the fine-tuned model's: same texts, truncation, held-out texts, row subset and settings."""
    from lfp.sae import train_saes
    from lfp.stages.activations import activation_corpus, cache_activations, layer_file
    from lfp.stages.sae import heldout_texts, split_rows, subset

    act, s = params.activations, params.sae
    l1 = params.spec(model_name).sae_l1 if params.spec(model_name).sae_l1 is not None else s.l1
    device = next(base.parameters()).device
    _, texts, _ = activation_corpus(params, task)
    with tempfile.TemporaryDirectory(prefix="lfp-probe-base-") as tmp:
        info = cache_activations(base, tokenizer, texts, layers, Path(tmp), max_length=act.max_length,
                                 batch_size=act.batch_size, chunk_rows=act.chunk_rows, device=device)
        offsets = np.asarray(info["text_offsets"])
        train_rows, _ = split_rows(offsets, heldout_texts(offsets, s.heldout_fraction, params.seed))
        train_rows = subset(train_rows, s.max_train_rows, params.seed)
        jobs = [(lambda layer=layer: np.asarray(io.load_npy(layer_file(Path(tmp), layer))[train_rows]), widths[layer]) for layer in layers]
        trained = train_saes(jobs, l1=l1, lr=s.learning_rate, batch_size=s.batch_size, epochs=s.epochs, seed=params.seed, tied=s.tied)
    return {layer: sae.to(device).eval() for layer, (sae, _info) in zip(layers, trained)}


# --------------------------------------------------------------------------------------------
# rows, split, probes
# --------------------------------------------------------------------------------------------


@dataclass
class ProbeRows:
    """One row per positive and per negative element (triple order, positive first)."""

    codes: np.ndarray  # [2T, sum_n]
    target: np.ndarray  # signed delta
    label: np.ndarray  # 1 = positive element, 0 = negative
    groups: np.ndarray
    words: np.ndarray  # vader: the substituted word ('' otherwise)
    values: np.ndarray  # vader: its lexicon value (0 otherwise)


def probe_rows(codes: dict[str, np.ndarray], groups: list[str], words: dict[str, list[str]] | None = None, values: dict[str, list[float]] | None = None) -> ProbeRows:
    """Interleave positive/negative elements and attach Δ+ and −Δ− as targets."""
    n = len(groups)
    d_pos = np.linalg.norm(codes["positive"] - codes["neutral"], axis=1)
    d_neg = np.linalg.norm(codes["negative"] - codes["neutral"], axis=1)

    def inter(a: Any, b: Any) -> np.ndarray:
        return np.stack([np.asarray(a), np.asarray(b)], axis=1).reshape(2 * n, *np.shape(a)[1:])

    return ProbeRows(
        codes=inter(codes["positive"], codes["negative"]).astype(np.float32),
        target=inter(d_pos, -d_neg).astype(np.float32),
        label=np.tile([1, 0], n),
        groups=np.repeat(np.asarray(groups, dtype=object), 2),
        words=inter(words["positive"], words["negative"]) if words else np.full(2 * n, "", dtype=object),
        values=inter(values["positive"], values["negative"]).astype(float) if values else np.zeros(2 * n),
    )


def split_by_group(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean is_test mask: a seeded share of the groups (triples / pairs) goes entirely to test."""
    from sklearn.model_selection import GroupShuffleSplit

    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise DataError(f"probe: need at least 2 triples to split into train and test, got {len(uniq)}")
    n_test = min(max(1, int(round(test_fraction * len(uniq)))), len(uniq) - 1)
    splitter = GroupShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
    _, test_idx = next(splitter.split(np.zeros(len(groups)), groups=groups))
    is_test = np.zeros(len(groups), dtype=bool)
    is_test[test_idx] = True
    return is_test


def xavier_predictions(codes: np.ndarray, seed: int) -> np.ndarray:
    """Outputs of the paper's baseline: an untrained linear probe with Xavier-uniform weights."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.nn.init.xavier_uniform_(torch.empty(1, codes.shape[1]), generator=gen)
    return (torch.from_numpy(np.asarray(codes, dtype=np.float32)) @ weight.T).squeeze(1).numpy()


def fit_ridge(codes: np.ndarray, target: np.ndarray, alpha: float) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(codes, target)


def fit_logistic(codes: np.ndarray, label: np.ndarray, c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(codes, label)


def shuffled_labels(values: np.ndarray, seed: int, repeats: int) -> list[np.ndarray]:
    """Seeded permutations of the training labels for the chance-level control. Several, because
    on clustered codes one refit on shuffled labels can land near 0 % or 100 % by luck."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(values) for _ in range(repeats)]


# --------------------------------------------------------------------------------------------
# metrics per task
# --------------------------------------------------------------------------------------------


@dataclass
class VaderEval:
    metrics: dict[str, float]
    table: metrics.WordTable
    scale: Any  # raw prediction -> lexicon scale, fitted on the held-out predictions


def evaluate_vader(raw_test: np.ndarray, rows: ProbeRows, is_test: np.ndarray, params: Params, prefix: str = "", bootstrap: bool = True) -> VaderEval:
    """Per-word τ (all words, negative words), sign accuracy and a bootstrap CI for τ."""
    cfg = params.probe
    scale = metrics.percentile_rescaler(raw_test, cfg.rescale_low_percentile, cfg.rescale_high_percentile)
    pred = scale(raw_test)
    words, values, groups = rows.words[is_test], rows.values[is_test], rows.groups[is_test]
    table = metrics.word_table(list(words), pred, values)
    tau, p = metrics.kendall(table.predicted, table.true_value)
    neg = table.true_value < 0
    tau_neg, p_neg = metrics.kendall(table.predicted[neg], table.true_value[neg])
    acc_pos, acc_neg = metrics.sign_accuracy(table.predicted, table.true_value)
    out = {
        f"{prefix}kendall_tau": tau,
        f"{prefix}kendall_p": p,
        f"{prefix}kendall_tau_negative": tau_neg,
        f"{prefix}kendall_p_negative": p_neg,
        f"{prefix}sign_acc_positive": acc_pos,
        f"{prefix}sign_acc_negative": acc_neg,
    }
    if bootstrap:

        def stat(w: np.ndarray) -> float:
            t = metrics.word_table(list(words), pred, values, w)
            return metrics.kendall(t.predicted, t.true_value)[0]

        lo, hi = metrics.bootstrap_ci(stat, groups, cfg.bootstrap, params.seed)
        out[f"{prefix}kendall_tau_ci_low"], out[f"{prefix}kendall_tau_ci_high"] = lo, hi
    return VaderEval(out, table, scale)


def vader_probe(rows: ProbeRows, is_test: np.ndarray, params: Params, prefix: str = "") -> tuple[dict[str, float], np.ndarray, VaderEval]:
    """Fit the ridge probe; returns metrics, predictions for *all* rows on the lexicon scale, and the
    held-out evaluation. Also the shuffled-label control (only for the main probe, prefix '')."""
    cfg = params.probe
    train = ~is_test
    ridge = fit_ridge(rows.codes[train], rows.target[train], cfg.ridge_alpha)
    raw = ridge.predict(rows.codes)
    ev = evaluate_vader(raw[is_test], rows, is_test, params, prefix)
    out = dict(ev.metrics)
    out[f"{prefix}test_r2"] = float(ridge.score(rows.codes[is_test], rows.target[is_test]))
    if not prefix:
        taus = [
            evaluate_vader(fit_ridge(rows.codes[train], y, cfg.ridge_alpha).predict(rows.codes[is_test]), rows, is_test, params,
                           bootstrap=False).metrics["kendall_tau"]
            for y in shuffled_labels(rows.target[train], params.seed, cfg.shuffled_repeats)
        ]
        base = evaluate_vader(xavier_predictions(rows.codes[is_test], params.seed), rows, is_test, params, bootstrap=False).metrics
        out.update({"shuffled_kendall_tau": float(np.nanmean(taus)) if np.isfinite(taus).any() else float("nan"),
                    "shuffled_kendall_tau_sd": float(np.nanstd(taus)) if np.isfinite(taus).any() else float("nan"),
                    "baseline_kendall_tau": base["kendall_tau"], "baseline_kendall_p": base["kendall_p"],
                    "n_words": len(ev.table.words), "n_words_positive": int(np.sum(ev.table.true_value > 0)),
                    "n_words_negative": int(np.sum(ev.table.true_value < 0))})
    return out, ev.scale(raw), ev


def pair_probe(rows: ProbeRows, is_test: np.ndarray, params: Params, prefix: str = "") -> tuple[dict[str, float], np.ndarray]:
    """Logistic probe positive vs negative element; accuracy on held-out pairs with a bootstrap CI,
    plus the shuffled-label control for the main probe. Returns the decision function of all rows."""
    cfg = params.probe
    train = ~is_test
    clf = fit_logistic(rows.codes[train], rows.label[train], cfg.logistic_c, params.seed)
    correct = clf.predict(rows.codes[is_test]) == rows.label[is_test]
    lo, hi = metrics.bootstrap_ci(lambda w: metrics.weighted_accuracy(correct, w), rows.groups[is_test], cfg.bootstrap, params.seed)
    out = {f"{prefix}probe_accuracy": float(correct.mean()), f"{prefix}probe_accuracy_ci_low": lo, f"{prefix}probe_accuracy_ci_high": hi}
    if not prefix:
        accs = [np.mean(fit_logistic(rows.codes[train], y, cfg.logistic_c, params.seed).predict(rows.codes[is_test]) == rows.label[is_test])
                for y in shuffled_labels(rows.label[train], params.seed, cfg.shuffled_repeats)]
        out["shuffled_probe_accuracy"], out["shuffled_probe_accuracy_sd"] = float(np.mean(accs)), float(np.std(accs))
    return out, clf.decision_function(rows.codes)


# --------------------------------------------------------------------------------------------
# generation frequency (Figure 4) and figures
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def generated_word_counts(model: Any, tokenizer: Any, params: Params) -> Counter:
    """How often the fine-tuned model generates each (lowercased spaCy) token when sampling
    completions of a fixed, seeded set of IMDB test prefixes."""
    cfg = params.probe
    rows = io.read_jsonl(prepared_file("vader", "test"), {"id": str, "text": str})
    prompts = subsample(rows, cfg.generation_prompts, params.seed, "probe-generation")
    prefixes = [tokenizer(r["text"])["input_ids"][: cfg.generation_prefix_tokens] for r in prompts]
    device = next(model.parameters()).device
    torch.manual_seed(params.seed)
    counts: Counter = Counter()
    pad = tokenizer.pad_token_id
    for b in range(0, len(prefixes), cfg.batch_size):
        batch = prefixes[b : b + cfg.batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], dtype=torch.long)  # left padding
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], dtype=torch.long)
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=True, top_k=0, top_p=1.0,
            max_new_tokens=cfg.generation_max_new_tokens, pad_token_id=pad,
        )
        for text in tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True):
            counts.update(reward.tokens(text))
    return counts


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error_vs_frequency(path: Any, table: metrics.WordTable, generated: np.ndarray, title: str) -> None:
    """Figure 4: |predicted − true| per word against how often the fine-tuned model generates it."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(generated, np.abs(table.predicted - table.true_value), s=14, alpha=0.7)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(-0.5, max(2.0, float(np.max(generated, initial=0)) * 1.5))
    ax.set_xlabel("times generated by the fine-tuned model")
    ax.set_ylabel("|predicted − VADER value|")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_pca(path: Any, codes: np.ndarray, label: np.ndarray, title: str) -> tuple[float, float]:
    """Figure 5: the probe's inputs on their first two principal components, coloured by element
    (positive vs negative). Returns the explained-variance ratios of PC1 and PC2."""
    from sklearn.decomposition import PCA

    n_comp = min(2, codes.shape[0], codes.shape[1])
    pca = PCA(n_components=n_comp)
    z = pca.fit_transform(codes)
    if n_comp < 2:
        z = np.hstack([z, np.zeros((len(z), 2 - n_comp))])
    ev = list(pca.explained_variance_ratio_) + [0.0] * (2 - n_comp)
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for value, name, colour in ((1, "positive element", "tab:green"), (0, "negative element", "tab:red")):
        m = label == value
        ax.scatter(z[m, 0], z[m, 1], s=10, alpha=0.6, c=colour, label=name)
    ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% of variance)")
    ax.set_title(f"{title}: PC1 {100 * ev[0]:.1f}%, PC2 {100 * ev[1]:.1f}% explained", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return float(ev[0]), float(ev[1])


def write_word_csv(path: Any, table: metrics.WordTable, generated: np.ndarray) -> None:
    with io.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["word", "predicted", "true_value", "count", "generated_count"])
            for row in zip(table.words, table.predicted, table.true_value, table.count, generated):
                w.writerow([row[0], f"{row[1]:.6g}", f"{row[2]:.6g}", int(row[3]), int(row[4])])


def write_probe_inputs(model: str, task: str, layers: list[int], widths: list[int], rows: ProbeRows, predicted: np.ndarray, is_test: np.ndarray) -> None:
    """The validate stage's inputs (docs/artifacts.md): codes, signed delta, probe output, split."""
    with io.atomic_dir(paths.probe_data_dir(model, task)) as out:
        io.save_tensors(out / "inputs.safetensors", {
            "codes": torch.from_numpy(rows.codes),
            "target": torch.from_numpy(rows.target.astype(np.float32)),
            "predicted": torch.from_numpy(np.asarray(predicted, dtype=np.float32)),
            "is_test": torch.from_numpy(is_test.astype(np.uint8)),
        })
        io.write_json(out / "inputs.json", {
            "layers": layers,
            "offsets": [int(x) for x in np.cumsum([0, *widths[:-1]])],
            "widths": widths,
            "rows": "positive then negative element of each contrastive triple, in file order",
            "predicted": "ridge prediction on the VADER -4..4 scale (10th/90th-percentile rescaling, clamped)"
            if task == "vader" else "logistic-probe decision function (log-odds of the positive element)",
        })


# --------------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------------


def codes_for(model: Any, tokenizer: Any, saes: dict[int, Any], triples: Triples, params: Params, desc: str) -> dict[str, np.ndarray]:
    cfg = params.probe
    return {
        role: element_codes(model, saes, windows_for(triples, role, tokenizer, cfg.max_length), cfg.batch_size,
                            tokenizer.pad_token_id, f"{desc} {role}")
        for role in ROLES
    }


def base_control(params: Params, model: str, task: str, layers: list[int], saes: dict[int, Any], triples: Triples, is_test: np.ndarray, device: Any) -> dict[str, float]:
    """The same deltas and probe on the base model through SAEs trained on its own activations."""
    base, tok = load_model(paths.base_model_dir(model))
    base.to(device)
    base_saes = base_control_saes(params, model, task, base, tok, layers, {L: int(s.d_hidden) for L, s in saes.items()})
    rows = probe_rows(codes_for(base, tok, base_saes, triples, params, "base"), triples.groups,
                      triples.words if task == "vader" else None, triples.values if task == "vader" else None)
    if task == "vader":
        m, _, _ = vader_probe(rows, is_test, params, prefix="base_control_")
    else:
        m, _ = pair_probe(rows, is_test, params, prefix="base_control_")
    return m


def run(params: Params, model: str | None, task: str | None) -> None:
    from accelerate import Accelerator

    from lfp.sae import load_sae, sae_file

    if model is None or task is None:
        raise LfpError("probe needs --model and --task")
    cfg = params.probe
    section = {"seed": params.seed, "probe": section_dict(cfg), "sae": section_dict(params.sae),
               "activations": section_dict(params.activations)}
    triples = load_triples(task)
    tags = {"probe": "ridge" if task == "vader" else "logistic", "rescale": "percentile" if task == "vader" else "none",
            "base_control": cfg.base_control, "contrastive_proxy": triples.proxy, "model_source": params.spec(model).source}
    with stage_run("probe", experiment=params.tracking.experiment, model=model, task=task, params=section, tags=tags) as tracker:
        device = Accelerator().device
        layers = chosen_layers(model, task)
        saes = {L: load_sae(sae_file(model, task, L, min(params.sae.ratios))).to(device).eval() for L in layers}
        widths = [int(saes[L].d_hidden) for L in layers]
        lm, tok = load_model(paths.finetuned_dir(model, task))
        lm.to(device)
        rows = probe_rows(codes_for(lm, tok, saes, triples, params, "fine-tuned"), triples.groups,
                          triples.words if task == "vader" else None, triples.values if task == "vader" else None)
        is_test = split_by_group(rows.groups, cfg.test_fraction, params.seed)
        out: dict[str, Any] = {
            "n_triples": len(triples.groups), "n_train": int((~is_test).sum()), "n_test": int(is_test.sum()),
            "mean_delta_positive": float(rows.target[rows.label == 1].mean()),
            "mean_delta_negative": float(-rows.target[rows.label == 0].mean()),
        }
        if task == "vader":
            m, predicted, ev = vader_probe(rows, is_test, params)
            counts = generated_word_counts(lm, tok, params)
            generated = np.array([counts.get(w.lower(), 0) for w in ev.table.words])
            err_tau, err_p = metrics.kendall(generated, np.abs(ev.table.predicted - ev.table.true_value))
            m.update({"error_frequency_kendall_tau": err_tau, "error_frequency_kendall_p": err_p})
        else:
            m, predicted = pair_probe(rows, is_test, params)
        out.update(m)
        if cfg.base_control:
            out.update(base_control(params, model, task, layers, saes, triples, is_test, device))
        figs = paths.probe_plots_dir(model, task)
        with io.atomic_dir(figs) as tmp:  # a whole folder, so no stale figure of an older run survives
            if task == "vader":
                write_word_csv(tmp / "probe_words.csv", ev.table, generated)
                plot_error_vs_frequency(tmp / "fig4_error_vs_frequency.png", ev.table, generated,
                                        f"{paths.run_id(model, task)}: τ(times generated, |error|) = "
                                        + (f"{err_tau:.3f}" if np.isfinite(err_tau) else "undefined (constant counts)"))
            pc1, pc2 = plot_pca(tmp / "fig5_pca.png", rows.codes, rows.label, paths.run_id(model, task))
        out.update({"pca_explained_variance_pc1": pc1, "pca_explained_variance_pc2": pc2})
        write_probe_inputs(model, task, layers, widths, rows, predicted, is_test)
        tracker.write_metrics(paths.report_dir(model, task) / "probe.json", out)
        for f in sorted(figs.iterdir()):
            tracker.log_artifact(f, artifact_path="probe")


