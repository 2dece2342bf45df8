"""Feature dashboards (lfp.report.dashboards): built from small synthetic run files, checked through the DOM
(html.parser): one section per feature, the highlighted peak token, the histogram, no network
resource, and escaping of a context that holds `<script>`."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from lfp.report import dashboards
from lfp.core import io, paths
from lfp.core.errors import ArtifactError

SCRIPT = "<script>alert(1)</script>"


class Dom(HTMLParser):
    """Records the element tree's facts the tests need: per section its text, marks, svgs, tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.sections: list[dict[str, Any]] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.marks: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self.urls += [v for v in a.values() if "http://" in v or "https://" in v or v.startswith("//")]
        if tag == "section" and "feature" in a.get("class", "").split():
            self.sections.append({"attrs": a, "text": [], "svgs": 0, "marks": []})
        if tag == "svg" and "histogram" in a.get("class", "").split() and self.sections:
            self.sections[-1]["svgs"] += 1
        if tag != "meta":  # the page's only void element
            self.stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        if any(t == tag for t, _ in self.stack):  # close up to the matching start tag
            while self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        in_mark = any(t == "mark" and "peak" in a.get("class", "") for t, a in self.stack)
        if in_mark:
            self.marks.append(data)
        if self.sections and any(t == "section" for t, _ in self.stack):
            self.sections[-1]["text"].append(data)
            if in_mark:
                self.sections[-1]["marks"].append(data)


def parse(page: str) -> Dom:
    dom = Dom()
    dom.feed(page)
    dom.close()
    return dom


def feature(layer: int, feat: int, related: Any, tokens: list[str], peak: int, explanation: str) -> dict[str, Any]:
    return {
        "layer": layer, "feature": feat, "similarity": 0.8, "explanation": explanation, "related": related,
        "backend": "offline", "top_tokens": [tokens[peak].strip()], "simulation_score": 0.4, "max_activation": 2.5,
        "contexts": [{"tokens": tokens, "acts": [10 if i == peak else 1 for i in range(len(tokens))], "peak": peak}],
        "activation_histogram": {"edges": [0.0, 0.5, 1.0, 1.5], "counts": [7, 0, 2], "n_tokens": 100, "n_active": 9},
        "detection_score": 0.9, "detection_score_shuffled": 0.5, "detection_n_active": 5, "detection_n_inactive": 5,
    }


@pytest.fixture
def run_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    run_dir = paths.report_dir("tiny", "vader")
    rows = [
        feature(0, 1, True, ["The", " film", " was", " great", " fun"], 3, "peaks on 'great'"),
        feature(0, 7, False, ["x", " ", SCRIPT, " y"], 2, "a <b>bold</b> & odd explanation"),
        {"layer": 2, "feature": 3, "similarity": 0.5, "explanation": "never activates on the corpus", "related": None,
         "backend": "offline", "top_tokens": [], "simulation_score": None, "contexts": []},
    ]
    io.write_jsonl(run_dir / "features.jsonl", rows)
    io.write_jsonl(paths.table7_features_file("tiny", "vader"), [
        {"layer": 0, "feature": 1, "related": True, "threshold_freq_high": 0.794, "threshold_freq_low": 0.968,
         "threshold_contrast": -0.174, "quantile_freq_high": 0.815, "quantile_freq_low": 0.98, "quantile_contrast": -0.165},
    ])
    io.write_json(run_dir / "validate.json", {
        "t6_metric": "vader_reward_of_completion", "n_related_features": 1, "t6_related_delta": 0.0176,
        "t6_related_ci_low": 0.0007, "t6_related_ci_high": 0.0347, "t6_random_delta": -0.0217,
        "t6_random_ci_low": -0.034, "t6_random_ci_high": -0.0086, "t7_threshold": 3.0, "t7_quantile": 0.75,
    })
    io.write_json(run_dir / "explain.json", {"explainer": "offline", "explanation_score_mean": 0.9,
                                             "explanation_score_ci_low": 0.8, "explanation_score_ci_high": 0.95,
                                             "explanation_score_n": 2, "explanation_score_shuffled_mean": 0.5})
    return tmp_path


def test_dashboard_dom_one_section_per_feature_with_peak_and_histogram(run_files: Path):
    (written,) = dashboards.write_dashboards([("tiny", "vader")])
    assert written == Path("reports/features/tiny-vader.html") and written.is_file()
    page = written.read_text(encoding="utf-8")
    dom = parse(page)
    assert [(s["attrs"]["data-layer"], s["attrs"]["data-feature"]) for s in dom.sections] == [("0", "1"), ("0", "7"), ("2", "3")]
    first, second, dead = dom.sections
    assert first["marks"] == [" great"] and second["marks"] == [SCRIPT]  # the peak token, highlighted
    assert first["svgs"] == second["svgs"] == 1 and dead["svgs"] == 0
    text1 = "".join(first["text"])
    assert "79.4%" in text1 and "96.8%" in text1  # its Table 7 frequencies
    assert "0.018 [0.001, 0.035]" in text1 and "condition-level" in text1  # Table 6, the related condition
    assert "0.900" in text1 and "shuffled explanation 0.500" in text1
    assert "not ablated" in "".join(second["text"]) and "not in table7_features.jsonl" in "".join(second["text"])
    assert "mean detection score 0.900 [0.800, 0.950]" in "".join(dom.text).lower()


def test_dashboard_is_self_contained_and_escaped(run_files: Path):
    (written,) = dashboards.write_dashboards([("tiny", "vader")])
    page = written.read_text(encoding="utf-8")
    dom = parse(page)
    assert not dom.urls and "http://" not in page and "https://" not in page  # no CDN, no remote resource
    assert "script" not in dom.tags and "link" not in dom.tags and "img" not in dom.tags and "b" not in dom.tags
    assert SCRIPT not in page and "&lt;script&gt;" in page  # the token is text, not markup
    assert "a <b>bold</b> & odd explanation" in "".join(dom.text)


def test_dashboards_folder_is_swapped_whole(run_files: Path):
    stale = paths.FEATURE_DASHBOARDS / "gone-task.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    dashboards.write_dashboards([("tiny", "vader")])
    assert not stale.exists() and paths.feature_dashboard_file("tiny", "vader").exists()


def test_malformed_contexts_name_file_feature_and_field(run_files: Path):
    path = paths.report_dir("tiny", "vader") / "features.jsonl"
    rows = io.read_jsonl(path)
    rows[1]["contexts"][0]["peak"] = 99
    io.write_jsonl(path, rows)
    with pytest.raises(ArtifactError, match=r"features\.jsonl: layer 0 feature 7: field 'contexts\[0\]'"):
        dashboards.write_dashboards([("tiny", "vader")])


def test_missing_optional_inputs_are_shown_as_missing(run_files: Path):
    paths.table7_features_file("tiny", "vader").unlink()
    (paths.report_dir("tiny", "vader") / "validate.json").unlink()
    dom = parse(dashboards.build_html(dashboards.load_run("tiny", "vader")))
    assert len(dom.sections) == 3 and "t6_related_delta missing" in "".join(dom.sections[0]["text"])


def test_links_from_the_report():
    pages = [paths.feature_dashboard_file("tiny", "vader"), paths.feature_dashboard_file("tiny", "hh")]
    md = dashboards.links_markdown(pages)
    assert "- [tiny-vader](features/tiny-vader.html)" in md and "## Feature dashboards" in md
    page = dashboards.links_html("<html><body><p>x</p></body></html>", pages)
    assert page.index("href='features/tiny-hh.html'") < page.index("</body>")
    assert dashboards.links_html("<body></body>", []) == "<body></body>" and dashboards.links_markdown([]) == ""


def test_tokens_inside_a_character_are_shown_with_it():
    """decode_tokens stores "" for a token inside a multi-byte character: the dashboard shows the
    character once, at the larger activation, highlighted if either piece is the peak."""
    ctx = {"tokens": ["And", " that", "", "’", "s"], "acts": [0, 2, 9, 1, 0], "peak": 2}
    assert dashboards.display_units(ctx) == [("And", 0, False), (" that", 2, False), ("’", 9, True), ("s", 0, False)]
    dom = parse("<ol>" + dashboards.context_html(ctx) + "</ol>")
    assert dom.marks == ["’"] and "\ufffd" not in "".join(dom.text)


def test_saturated_table7_frequency_shows_the_mean_code():
    """In hh/toxic 41 of 50 features read 'active on 100.0 % ... vs 100.0 %': the text says so and
    shows the mean code on high vs low rows instead."""
    t7 = {"threshold_freq_high": 1.0, "threshold_freq_low": 1.0, "threshold_contrast": 0.0, "threshold_mean_high": 0.30,
          "threshold_mean_low": 0.20, "quantile_freq_high": 0.6, "quantile_freq_low": 0.4, "quantile_contrast": 0.2,
          "quantile_mean_high": 0.1, "quantile_mean_low": 0.05}
    text = dashboards.table7_text(t7, {"t7_threshold": 3.0, "t7_quantile": 0.75})
    first, second = text.split("; top ")
    assert "active on every row of both groups" in first and "mean code 0.300 vs 0.200, ratio 1.50" in first
    assert "active on 60.0% of them vs 40.0% of the rest (contrast 0.200); mean code 0.100 vs 0.050" in second
    old = {k: v for k, v in t7.items() if "_mean_" not in k}  # a file written before the mean was stored
    assert "mean code not stored" in dashboards.table7_text(old, {})
    assert "not computed (no held-out rows on one side" in dashboards.table7_text({"threshold_freq_high": None}, {})


def test_index_page_and_feature_jump_list(run_files: Path):
    (written,) = dashboards.write_dashboards([("tiny", "vader")])
    index = paths.FEATURE_DASHBOARDS / dashboards.INDEX
    dom = parse(index.read_text(encoding="utf-8"))
    assert "tiny-vader" in "".join(dom.text) and "0.900 [0.800, 0.950]" in "".join(dom.text)
    page = written.read_text(encoding="utf-8")
    assert "href='index.html'" in page and "href='../report.html'" in page
    for layer, feat in ((0, 1), (0, 7), (2, 3)):  # every jump link has its section
        assert f"href='#L{layer}-F{feat}'" in page and f"id='L{layer}-F{feat}'" in page
    md = dashboards.links_markdown([written])
    assert "[All dashboards](features/index.html)" in md
