"""``onnxcam report OUT`` over a real run folder (docs/runs.md): the pretrained EfficientNet-Lite0 graph, real
photos from scikit-image, ``onnxcam explain … --out OUT`` and ``onnxcam evaluate … --csv OUT/faithfulness.csv``
through the command line; the page read as HTML, then loaded from its ``file://`` URL in headless chromium.

Needs chromium (apt); without it the browser test fails, saying how to install it.
"""

from __future__ import annotations

import csv
import html.parser
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cdp import INSTALL_HINT, Browser, find_chromium
from conftest import skimage_photo
from onnxcam.runtime.cli import main

METHODS = ("gradcam", "gradcam++")
# an image name with quotes, markup, an ampersand, a percent sign and a hash: escaped in the page, encoded in URLs
ODD_NAME = "chelsea's <cat> & 100% #1.png"
ROWS = "#grid tbody tr"


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run folder written by ``onnxcam explain`` (3 photos, 2 methods) with evaluate's faithfulness CSV
    (2 photos, the fast metrics, 8 steps) and the report, all through the command line."""
    root = tmp_path_factory.mktemp("report")
    graph = root / "efficientnet_lite0.onnx"
    result = run("export", "efficientnet_lite0", "-o", graph)
    assert result.exit_code == 0, result.output
    photos = root / "photos"
    photos.mkdir()
    for name, copy in (("coffee.png", "coffee.png"), ("chelsea.png", ODD_NAME), ("astronaut.png", "astronaut.png")):
        shutil.copyfile(skimage_photo(name), photos / copy)
    out = root / "out"
    methods = [arg for m in METHODS for arg in ("-m", m)]
    result = run("explain", graph, *sorted(photos.iterdir()), *methods, "--out", out)
    assert result.exit_code == 0, result.output
    result = run("evaluate", graph, photos / "coffee.png", photos / ODD_NAME, *methods, "--metric", "avg-drop",
                 "--metric", "deletion", "--metric", "insertion", "--steps", "8", "--csv", out / "faithfulness.csv")
    assert result.exit_code == 0, result.output
    result = run("report", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "report.html")
    return out


def table(folder: Path) -> list[dict]:
    """The rows of ``results.jsonl``."""
    return [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def first_scores(rows: list[dict]) -> dict[str, float]:
    """Each image's sort key: its first method's rank-1 score."""
    scores: dict[str, float] = {}
    for row in rows:
        if row["method"] == METHODS[0] and row["rank"] == 1:
            scores[row["name"]] = row["score"]
    return scores


class PageParser(html.parser.HTMLParser):
    """The page's embedded rows (``script#rows``), header facts (``dd#run-*``) and faithfulness cells."""

    def __init__(self):
        super().__init__()
        self.blob, self.facts, self.faithfulness = "", {}, {}
        self._in: str | None = None
        self._method: str | None = None
        self._cell: tuple[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("id") == "rows":
            self._in = "blob"
        elif tag == "dd" and (attrs.get("id") or "").startswith("run-"):
            self._in = attrs["id"][4:]
            self.facts[self._in] = ""
        elif tag == "tr" and "data-method" in attrs:
            self._method = attrs["data-method"]
        elif tag == "td" and self._method and "data-metric" in attrs:
            self._cell = (self._method, attrs["data-metric"])
            self.faithfulness[self._cell] = [float(attrs["data-value"]), ""]

    def handle_endtag(self, tag):
        if tag in ("script", "dd"):
            self._in = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._in == "blob":
            self.blob += data
        elif self._in:
            self.facts[self._in] += data
        if self._cell:
            self.faithfulness[self._cell][1] += data


def test_report_shows_every_row_and_the_faithfulness_table(run_folder):
    rows = table(run_folder)
    settings = json.loads((run_folder / "run.json").read_text(encoding="utf-8"))
    text = (run_folder / "report.html").read_text(encoding="utf-8")
    page = PageParser()
    page.feed(text)
    page.close()
    assert page.facts["model"] == settings["model"] and page.facts["methods"] == ", ".join(METHODS)
    assert page.facts["images"] == "3" and page.facts["rows"] == str(len(rows)) == "6"

    data = json.loads(page.blob)
    assert data["methods"] == list(METHODS)
    assert {image["name"] for image in data["images"]} == {row["name"] for row in rows}
    assert any(image["image"].endswith(ODD_NAME) for image in data["images"])
    cells = {(image["name"], data["methods"][cell[0]], cell[1]): cell for image in data["images"]
             for cell in image["cells"]}
    assert len(cells) == sum(len(image["cells"]) for image in data["images"]) == len(rows)
    for row in rows:
        cell = cells[row["name"], row["method"], row["rank"]]
        assert cell[2:] == [row["target"], row["class"], row["label"], row["score"], row["score_kind"], row["overlay"]]
        assert (run_folder / cell[7]).is_file(), cell[7]
        assert row["label"] and data["labels"][str(row["class"])] == row["label"]  # the graph has labels
    # the odd name is only ever escaped: no raw markup from the data in the page
    assert "<cat>" not in text and "&amp;" not in page.blob and "\\u003ccat\\u003e" in page.blob

    with open(run_folder / "faithfulness.csv", newline="") as handle:
        expected = list(csv.DictReader(handle))
    assert {row["method"] for row in expected} == set(METHODS)
    for row in expected:
        for metric in ("avg-drop", "deletion", "insertion"):
            value, shown = page.faithfulness[row["method"], metric]
            assert value == float(row[metric])
            assert float(shown) == pytest.approx(float(row[metric]), abs=0.006)


@pytest.fixture(scope="module")
def browser():
    """Headless chromium; fails (never skips) when it is not installed, saying how to install it."""
    if find_chromium() is None:
        pytest.fail(f"chromium missing: {INSTALL_HINT}", pytrace=False)
    with Browser(timeout=60) as opened:
        yield opened


def set_control(page, control: str, value: str) -> None:
    """Set a control's value and fire the event the page listens to."""
    event = "input" if control == "search" else "change"
    page.evaluate(f"(() => {{ const c = document.getElementById({json.dumps(control)}); c.value = {json.dumps(value)};"
                  f" c.dispatchEvent(new Event({json.dumps(event)})); }})()")


def visible(page, what: str = "tr.dataset.name"):
    return page.evaluate(f"Array.from(document.querySelectorAll({json.dumps(ROWS + ':not([hidden])')}))"
                         f".map(tr => {what})")


def test_page_in_chromium_loads_every_overlay_filters_and_sorts(run_folder, browser, tmp_path):
    rows = table(run_folder)
    page = browser.open((run_folder / "report.html").as_uri() + "?eager=1")
    page.wait_for("document.body.dataset.state === 'ready'", timeout=30)
    assert page.evaluate("document.body.dataset.loading") == "eager"
    page.wait_for("Array.from(document.images).every(img => img.complete)", timeout=30)
    images = page.evaluate("Array.from(document.images).map(img => [img.loading, img.naturalWidth, "
                           "decodeURIComponent(new URL(img.src).pathname)])")
    assert len(images) == len(rows)
    assert all(loading == "eager" and width > 0 for loading, width, _ in images), images
    assert sorted(path for _, _, path in images) == sorted(str(run_folder / row["overlay"]) for row in rows)
    captions = page.evaluate("Array.from(document.querySelectorAll('figcaption')).map(f => f.textContent)")
    assert sorted(captions) == sorted(f"{row['label']} p={row['score']:.3f}" for row in rows)

    # the class filter: the image rows whose explained or top-1 class is the chosen one
    chelsea = next(row for row in rows if row["image"].endswith(ODD_NAME))
    wanted = chelsea["top"][0]["class"]
    expected = {row["name"] for row in rows if wanted in (row["class"], row["top"][0]["class"])}
    options = page.evaluate("Array.from(document.getElementById('class').options).map(o => o.value)")
    assert str(wanted) in options and len(set(options)) == len(options)
    set_control(page, "class", str(wanted))
    assert set(visible(page)) == expected and chelsea["name"] in expected
    set_control(page, "class", "")
    assert len(visible(page)) == 3

    # the sort: by the first method's rank-1 score, both ways
    scores = first_scores(rows)
    set_control(page, "sort", "desc")
    assert visible(page) == sorted(scores, key=scores.get, reverse=True)
    assert visible(page, "Number(tr.dataset.score)") == sorted(scores.values(), reverse=True)
    set_control(page, "sort", "asc")
    assert visible(page) == sorted(scores, key=scores.get)

    set_control(page, "search", "<CAT>")  # the name filter, case-insensitive
    assert visible(page) == [chelsea["name"]]
    set_control(page, "search", "")
    assert page.console_errors() == []

    shot = page.screenshot(tmp_path / "report.png")
    assert shot.stat().st_size > 0
    pixels = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert pixels is not None and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # overlays and text, not one flat colour


def test_bad_input_is_one_line_and_writes_nothing(run_folder, tmp_path):
    def refused(*args) -> str:
        result = run("report", *args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        return lines[0]

    not_a_run = tmp_path / "photos"
    not_a_run.mkdir()
    shutil.copyfile(skimage_photo("coffee.png"), not_a_run / "coffee.png")
    assert "not a run folder" in refused(not_a_run) and "onnxcam explain" in refused(not_a_run)
    assert not (not_a_run / "report.html").exists()
    assert "no such folder" in refused(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()

    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    (copy / "report.html").unlink()
    garbled = tmp_path / "garbled.csv"
    garbled.write_text("method;images\n\x00gradcam;2\n")
    assert "not a faithfulness table" in refused(copy, "--faithfulness", garbled)
    assert "cannot read the faithfulness file" in refused(copy, "--faithfulness", tmp_path / "absent.json")
    (copy / "faithfulness.csv").write_text("method,images,deletion\ngradcam,2,nan?\n")
    assert "faithfulness.csv" in refused(copy)
    assert not (copy / "report.html").exists()
    assert not [p for p in copy.iterdir() if "report.html" in p.name]  # no temporary left behind

    # a torn last line (a run killed while appending) is left out, as resume leaves it out
    (copy / "faithfulness.csv").unlink()
    with open(copy / "results.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"image": "torn.png", "name": "to')
    result = run("report", copy)
    assert result.exit_code == 0, result.output
    page = PageParser()
    page.feed((copy / "report.html").read_text(encoding="utf-8"))
    assert page.facts["rows"] == str(len(table(run_folder)))
    assert "torn" not in page.blob
