"""The probe: token spans (lfp.measure.triples), deltas, grouped split, planted-signal probes, controls
(lfp.measure.probes), and an end-to-end `run()` of the stage on tiny fake upstream artifacts (base-control
SAEs are read from models/sae/{m}-{t}/base/, never trained by the probe)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lfp.core import io, paths
from lfp.measure import metrics, probes
from lfp.core.errors import ArtifactError
from lfp.sae import SparseAutoencoder, save_sae
from lfp.stages import probe
from lfp.measure.triples import ROLES, load_triples, token_window

LAYERS = [1, 2, 3, 4, 5]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# pure parts
# --------------------------------------------------------------------------------------------


def test_token_window_maps_span_and_truncates_from_the_left(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "This movie was great and I loved the acting."
    s = text.index("great")
    ids, pos = token_window(tok, text, (s, s + len("great")), max_length=64)
    assert tok.decode([ids[p] for p in pos]).strip() == "great"
    assert pos[-1] == len(ids) - 1  # the text is cut after the word
    short, spos = token_window(tok, text, (s, s + len("great")), max_length=len(pos))
    assert short == [ids[p] for p in pos] and spos == list(range(len(pos)))  # the left context went first
    assert token_window(tok, text, (len(text), len(text)), 64) == ([], [])


def test_probe_rows_signed_deltas():
    codes = {"positive": np.array([[3.0, 4.0], [1.0, 0.0]]), "neutral": np.zeros((2, 2)),
             "negative": np.array([[0.0, 2.0], [0.0, 0.5]])}
    rows = probes.probe_rows(codes, ["t0", "t1"], {"positive": ["good", "nice"], "negative": ["bad", "sad"]},
                            {"positive": [1.9, 1.8], "negative": [-2.5, -2.1]})
    np.testing.assert_allclose(rows.target, [5.0, -2.0, 1.0, -0.5])
    assert list(rows.label) == [1, 0, 1, 0]
    assert list(rows.groups) == ["t0", "t0", "t1", "t1"]
    assert list(rows.words) == ["good", "bad", "nice", "sad"]
    np.testing.assert_allclose(rows.codes[1], [0.0, 2.0])


def test_split_keeps_each_triple_on_one_side():
    groups = np.repeat([f"t{i}" for i in range(50)], 2)
    is_test = probes.split_by_group(groups, 0.2, seed=3)
    for g in np.unique(groups):
        assert len(set(is_test[groups == g])) == 1
    assert len(np.unique(groups[is_test])) == 10
    assert np.array_equal(is_test, probes.split_by_group(groups, 0.2, seed=3))
    assert not np.array_equal(is_test, probes.split_by_group(groups, 0.2, seed=4))


def planted_vader(n_triples: int = 300, n_noise: int = 30, seed: int = 0) -> probes.ProbeRows:
    """Triples whose codes carry the word's valence along one direction per polarity, so the signed
    delta is an exact linear function of the element's codes (plus noise in other dimensions)."""
    rng = np.random.default_rng(seed)
    pos_words = {f"p{i}": v for i, v in enumerate(np.linspace(0.5, 3.5, 30))}
    neg_words = {f"n{i}": v for i, v in enumerate(np.linspace(-3.5, -0.5, 30))}
    pw = rng.choice(list(pos_words), n_triples)
    nw = rng.choice(list(neg_words), n_triples)
    noise = lambda: np.abs(rng.normal(size=(n_triples, n_noise)))  # noqa: E731
    neutral = np.hstack([np.zeros((n_triples, 2)), noise()])
    pos = neutral.copy()
    pos[:, 0] = [pos_words[w] for w in pw]
    neg = neutral.copy()
    neg[:, 1] = [-neg_words[w] for w in nw]
    pos[:, 2:] += 0.01 * noise()
    neg[:, 2:] += 0.01 * noise()
    return probes.probe_rows({"positive": pos, "neutral": neutral, "negative": neg}, [f"t{i}" for i in range(n_triples)],
                            {"positive": list(pw), "negative": list(nw)},
                            {"positive": [pos_words[w] for w in pw], "negative": [neg_words[w] for w in nw]})


def test_planted_signal_gives_high_tau_and_chance_controls(micro_params):
    rows = planted_vader()
    is_test = probes.split_by_group(rows.groups, 0.3, micro_params.seed)
    m, predicted, ev = probes.vader_probe(rows, is_test, micro_params)
    assert m["kendall_tau"] > 0.8 and m["kendall_p"] < 1e-6
    assert m["kendall_tau_negative"] > 0.6
    assert m["sign_acc_positive"] > 0.9 and m["sign_acc_negative"] > 0.9
    assert m["kendall_tau_ci_low"] <= m["kendall_tau"] <= m["kendall_tau_ci_high"]
    assert abs(m["shuffled_kendall_tau"]) < 0.3
    assert m["n_words"] == len(ev.table.words) > 20
    assert predicted.shape == rows.target.shape and predicted.min() >= -4 and predicted.max() <= 4


def test_no_signal_gives_tau_near_zero(micro_params):
    rows = planted_vader()
    rng = np.random.default_rng(5)
    rows = dataclasses.replace(rows, codes=rng.normal(size=rows.codes.shape).astype(np.float32))
    is_test = probes.split_by_group(rows.groups, 0.3, micro_params.seed)
    m, _, _ = probes.vader_probe(rows, is_test, micro_params)
    assert abs(m["kendall_tau"]) < 0.3


def test_pair_probe_accuracy_and_shuffled_control(micro_params):
    rng = np.random.default_rng(0)
    n = 200
    codes = {r: np.abs(rng.normal(size=(n, 20))) for r in ROLES}
    codes["positive"][:, 0] += 3.0  # the preferred reply lights up feature 0
    rows = probes.probe_rows(codes, [f"pair{i}" for i in range(n)])
    is_test = probes.split_by_group(rows.groups, 0.2, micro_params.seed)
    m, decision = probes.pair_probe(rows, is_test, micro_params)
    assert m["probe_accuracy"] > 0.95
    assert m["probe_accuracy_ci_low"] <= m["probe_accuracy"] <= m["probe_accuracy_ci_high"]
    assert 0.25 < m["shuffled_probe_accuracy"] < 0.75
    assert np.mean((decision > 0) == (rows.label == 1)) > 0.95


def test_xavier_baseline_is_seeded():
    x = np.random.default_rng(0).normal(size=(10, 7)).astype(np.float32)
    np.testing.assert_array_equal(probes.xavier_predictions(x, 1), probes.xavier_predictions(x, 1))
    assert not np.allclose(probes.xavier_predictions(x, 1), probes.xavier_predictions(x, 2))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_bad_triples_name_file_line_and_field(in_tmp_project):
    from lfp.core.errors import DataError

    good = vader_triple(0, "great", 3.1, "awful", -3.1)
    bad = json.loads(json.dumps(good))
    bad["negative"]["span"] = [5, 999]
    io.write_jsonl(paths.contrastive_file("vader"), [good, bad])
    with pytest.raises(DataError, match=r"vader.jsonl:2: field 'negative.span'"):
        load_triples("vader", lexicon=True)
    del bad["negative"]["value"]
    io.write_jsonl(paths.contrastive_file("vader"), [good, bad])
    with pytest.raises(DataError, match=r"vader.jsonl:2: missing field 'negative.value'"):
        load_triples("vader", lexicon=True)
    pair = {"id": "x", "pair_id": "p", "prompt": "Q:", "positive": {"text": "Q: yes", "response": " no"},
            "neutral": {"text": "Q: ok", "response": " ok"}, "negative": {"text": "Q: no", "response": " no"}}
    io.write_jsonl(paths.contrastive_file("hh"), [pair])
    with pytest.raises(DataError, match=r"hh.jsonl:1: field 'positive.text' must equal prompt"):
        load_triples("hh", lexicon=False)


# --------------------------------------------------------------------------------------------
# end-to-end run() on fake upstream artifacts
# --------------------------------------------------------------------------------------------

POS = [("great", 3.1), ("good", 1.9), ("wonderful", 2.7), ("love", 3.2), ("happy", 2.7), ("nice", 1.8)]
NEG = [("bad", -2.5), ("awful", -2.0), ("terrible", -2.1), ("hate", -2.7), ("boring", -1.3), ("sad", -2.1)]
TEMPLATE = "The movie was {} and the cast too."


def vader_element(word: str, value: float) -> dict[str, Any]:
    text = TEMPLATE.format(word)
    s = text.index(word)
    return {"text": text, "word": word, "span": [s, s + len(word)], "value": value}


def vader_triple(i: int, pw: str, pv: float, nw: str, nv: float) -> dict[str, Any]:
    return {"id": f"vader-triple-{i}", "word": "fine", "true_value": 0.8, "positive": vader_element(pw, pv),
            "neutral": vader_element("table", 0.0), "negative": vader_element(nw, nv)}


def write_fake_upstream(root: Path, model_dir: Path, task: str) -> None:
    """Prepared data, contrastive triples, fine-tuned/base model copies, divergence.json, SAEs."""
    reviews = ["This movie was great and I loved the acting.", "The film was terrible, boring and far too long.",
               "An okay story with a good cast but a weak ending.", "What a wonderful, beautiful and happy film!"]
    for split in ("train", "test"):
        io.write_jsonl(root / f"data/prepared/vader/{split}.jsonl",
                       [{"id": f"imdb-{split}-{i}", "text": reviews[i % 4], "label": i % 2} for i in range(24)])
    prompt = "\n\nHuman: How do I bake bread?\n\nAssistant:"
    pairs = [{"id": f"{task}-{i}", "prompt": prompt, "chosen": " Mix flour, water and yeast.", "rejected": " I hate bread.",
              "subset": "helpful-base"} for i in range(30)]
    if task == "vader":
        triples = [vader_triple(i, *POS[i % len(POS)], *NEG[(i * 5) % len(NEG)]) for i in range(40)]
    else:
        io.write_jsonl(root / f"data/prepared/{task}/finetune.jsonl", pairs)
        el = lambda r: {"text": prompt + r, "response": r}  # noqa: E731
        triples = [{"id": f"{task}-triple-{i}", "pair_id": f"{task}-{i}", "prompt": prompt, "positive": el(f" Mix flour {i}."),
                    "neutral": el(" I see."), "negative": el(f" I hate bread {i}."), "proxy": True} for i in range(30)]
    io.write_jsonl(root / paths.contrastive_file(task), triples)
    for dest in (root / paths.finetuned_dir("tiny", task), root / paths.base_model_dir("tiny")):
        if not dest.exists():
            shutil.copytree(model_dir, dest)
    d = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    io.write_json(root / paths.report_dir("tiny", task) / "divergence.json",
                  {"block_l2": [0.0] * 6, "mlp_l2": [0.0] * 6, "chosen_layers": LAYERS, "top_k": len(LAYERS)})
    for seed, source in enumerate(("finetuned", "base")):  # `sae --source finetuned|base` outputs
        gen = torch.Generator().manual_seed(seed)
        for layer in LAYERS:
            sae = SparseAutoencoder(d, d, tied=True)
            sae.reset_parameters(gen)
            save_sae(sae, root / paths.sae_path("tiny", task, layer, 1, source), {"l1": 0.001, "layer": layer, "ratio": 1})


def read_words(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_run_vader_end_to_end(in_tmp_project, tiny_model_dir, micro_params):
    import mlflow

    write_fake_upstream(in_tmp_project, tiny_model_dir, "vader")
    probe.run(micro_params, "tiny", "vader")

    m = json.loads((paths.report_dir("tiny", "vader") / "probe.json").read_text())
    for key in ("kendall_tau", "kendall_p", "kendall_tau_ci_low", "kendall_tau_ci_high", "kendall_tau_negative",
                "kendall_p_negative", "sign_acc_positive", "sign_acc_negative", "n_words", "baseline_kendall_tau",
                "shuffled_kendall_tau", "base_control_kendall_tau", "base_control_kendall_p", "n_test"):
        assert key in m, key
    words = read_words(paths.probe_plots_dir("tiny", "vader") / "probe_words.csv")
    assert list(words[0]) == ["word", "predicted", "true_value", "count", "generated_count"]
    assert len(words) == m["n_words"]
    tau, _ = metrics.kendall(np.array([float(w["predicted"]) for w in words]), np.array([float(w["true_value"]) for w in words]))
    assert tau == pytest.approx(m["kendall_tau"], abs=1e-4)  # the table is the data behind tau
    lex = dict(POS + NEG)
    assert all(float(w["true_value"]) == pytest.approx(lex[w["word"]]) for w in words)
    assert sum(int(w["count"]) for w in words) == m["n_test"]
    assert {p.name for p in paths.probe_plots_dir("tiny", "vader").iterdir()} == {"probe_words.csv", "fig4_error_vs_frequency.png", "fig5_pca.png"}

    t = io.load_tensors(paths.probe_data_dir("tiny", "vader") / "inputs.safetensors")
    info = json.loads((paths.probe_data_dir("tiny", "vader") / "inputs.json").read_text())
    assert t["codes"].shape == (80, sum(info["widths"])) and info["layers"] == LAYERS
    assert info["offsets"] == [0, 32, 64, 96, 128]
    assert t["target"][0::2].min() >= 0 and t["target"][1::2].max() <= 0
    assert int(t["is_test"].sum()) == m["n_test"]

    run = mlflow.search_runs(experiment_names=[micro_params.tracking.experiment], output_format="list",
                             filter_string="tags.stage = 'probe'")[0]
    assert run.data.metrics["kendall_tau"] == pytest.approx(m["kendall_tau"])


def test_run_hh_end_to_end(in_tmp_project, tiny_model_dir, micro_params):
    write_fake_upstream(in_tmp_project, tiny_model_dir, "hh")
    probe.run(micro_params, "tiny", "hh")
    metrics_file = paths.report_dir("tiny", "hh") / "probe.json"
    m = json.loads(metrics_file.read_text())
    for key in ("probe_accuracy", "probe_accuracy_ci_low", "probe_accuracy_ci_high", "n_test", "shuffled_probe_accuracy",
                "base_control_probe_accuracy", "pca_explained_variance_pc1"):
        assert key in m, key
    assert m["n_test"] == 12  # 6 of 30 pairs, two elements each
    assert [p.name for p in paths.probe_plots_dir("tiny", "hh").iterdir()] == ["fig5_pca.png"]
    info = json.loads((paths.probe_data_dir("tiny", "hh") / "inputs.json").read_text())
    assert "decision function" in info["predicted"]

    no_control = dataclasses.replace(micro_params, probe=dataclasses.replace(micro_params.probe, base_control=False))
    shutil.rmtree(paths.sae_dir("tiny", "hh", "base"))  # without the base control, base SAEs are not read
    probe.run(no_control, "tiny", "hh")
    first = metrics_file.read_text()
    assert "base_control_probe_accuracy" not in first
    probe.run(no_control, "tiny", "hh")  # same params -> same metrics
    assert metrics_file.read_text() == first


def test_base_control_reads_base_saes_and_trains_none(in_tmp_project, tiny_model_dir, micro_params):
    """The control's SAEs are a DVC output of `sae --source base`; missing, the stage names the folder."""
    write_fake_upstream(in_tmp_project, tiny_model_dir, "hh")
    shutil.rmtree(paths.sae_dir("tiny", "hh", "base"))
    with pytest.raises(ArtifactError, match=r"models/sae/tiny-hh/base/layer1-x1: missing \(run `lfp sae --model tiny --task hh --source base`\)"):
        probe.run(micro_params, "tiny", "hh")
    assert not (paths.report_dir("tiny", "hh") / "probe.json").exists()
    assert not paths.sae_dir("tiny", "hh", "base").exists()  # nothing trained in its place
