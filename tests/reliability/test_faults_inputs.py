"""Bad inputs: data that validates line by line but leaves nothing usable, and inconsistent triples.

Each case: one `lfp STAGE: error:` line naming what is wrong, exit 2, and no output file.
(Malformed lines, missing fields, bad UTF-8 and empty files are covered by tests/test_io.py and
tests/test_prepare.py — an empty held-out file is test_io's `empty file` case; bad triple fields
by tests/test_probe.py.)
"""

from __future__ import annotations

import json

import pytest
from rel_helpers import MICRO, assert_user_error, files_under, run_lfp, write_jsonl, write_raw
from rel_helpers import mlflow_uri, project  # noqa: F401 - fixtures

from lfp.core import io, paths
from lfp.core.errors import DataError


def test_prepare_with_zero_usable_hh_pairs_exits_2_and_writes_nothing(project):
    """Every HH pair has different prompts in its two dialogues: all are dropped as mismatched."""
    root, env = project
    write_raw(root, hh_mismatched=True)
    before = files_under(root)
    proc = run_lfp(["prepare", "--task", "hh"], root, env)
    assert_user_error(proc, "prepare", "only 0 valid hh pairs")
    assert files_under(root) == before  # no data/prepared/hh, no reports/runs/prepare/hh.json


def test_contrastive_without_any_lexicon_word_exits_2_and_writes_nothing(project):
    """IMDB test reviews that contain no VADER-lexicon word give no triple to build."""
    root, env = project
    write_jsonl(root / "data/prepared/vader/test.jsonl",
                [{"id": f"imdb-test-{i:06d}", "text": "The table was near the window and the door.", "label": i % 2}
                 for i in range(20)])
    proc = run_lfp(["contrastive", "--task", "vader"], root, env)
    assert_user_error(proc, "contrastive", "data/prepared/vader/test.jsonl", "contrastive.vader.min_word_count")
    assert not (root / paths.contrastive_file("vader")).exists()
    assert not [p for p in (root / "data").rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_contrastive_when_lexicon_words_only_occur_in_overlong_sentences():
    """Lexicon words are frequent, but only in sentences longer than max_sentence_chars."""
    from lfp.core.params_load import load_params
    from lfp.tasks.lexicon_rl.contrastive import vader_triples

    cfg = load_params(MICRO).contrastive.vader
    long = "This great and wonderful but awful and terrible film " + "goes on " * 60 + "forever."
    rows = [{"id": f"imdb-test-{i}", "text": long} for i in range(10)]
    with pytest.raises(DataError, match=r"data/prepared/vader/test\.jsonl: no sentence of <= 300 chars contains a VADER word"):
        vader_triples(rows, cfg, seed=0)


def _vader_element(text: str, word: str, value: float) -> dict:
    s = text.index(word)
    return {"text": text, "word": word, "span": [s, s + len(word)], "value": value}


def test_probe_refuses_a_substituted_word_absent_from_its_text(tmp_path, monkeypatch):
    """A triple whose `positive.word` is not the text at `positive.span` would silently pool the
    activations of another word: the probe must refuse it naming file:line and the field."""
    from lfp.measure.triples import load_triples

    monkeypatch.chdir(tmp_path)
    text = "The movie was great and the cast too."
    good = {"id": "vader-00000", "word": "fine", "true_value": 0.8,
            "positive": _vader_element(text, "great", 3.1),
            "neutral": _vader_element(text.replace("great", "table"), "table", 0.0),
            "negative": _vader_element(text.replace("great", "awful"), "awful", -2.0)}
    bad = json.loads(json.dumps(good))
    bad["positive"]["word"] = "grand"  # same length, same span, but not the word in the text
    io.write_jsonl(paths.contrastive_file("vader"), [good, bad])
    with pytest.raises(DataError, match=r"vader\.jsonl:2: .*positive"):
        load_triples("vader", lexicon=True)
