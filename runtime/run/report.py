"""A static, offline HTML page over a run folder: ``onnxcam report OUT`` (and ``explain --report``).

The run folder's contract is ``docs/runs.md``: ``run.json`` (the settings), ``results.jsonl`` (one row
per image, method and target) and the overlays it names, relative to ``OUT``. ``write_report`` writes
``OUT/report.html`` beside them, atomically (a hidden temporary in ``OUT``, then renamed), so the folder
can be zipped and moved with the page working: images are referenced by their relative paths, and the
page has no CDN, font or script from elsewhere (its CSS and its small vanilla JavaScript are inline).

The page stays small for large runs: the rows are one JSON blob in ``<script type="application/json"
id="rows">`` (labels stored once per class, images grouped), rendered into the grid by the inline script,
which also drives the class filter, the score sort and the name filter. Overlays load lazily
(``loading="lazy"``); **open the page with ``?eager=1``** (``report.html?eager=1``) to load every image at
once (the script then sets ``loading="eager"``): what a test that checks every ``<img>`` has loaded, or a
print of the whole page, wants. Once the grid is built the script sets ``<body data-state="ready">``
(``data-loading`` says ``lazy`` or ``eager``).

A faithfulness table (the per-method means of ``onnxcam evaluate``) is shown when a file is given, or when
``OUT/faithfulness.json`` or ``OUT/faithfulness.csv`` exists: evaluate's ``--csv`` (header
``method,images,<metric…>``) or its ``--json`` record (``methods[m]["mean"]``).

Pure functions of the files: no torch, no network. Bad input is a ``ReportError`` (a ``ValueError``: the
command line prints it as one ``Error:`` line) raised before anything is written.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from onnxcam.runtime.files import write_atomically
from onnxcam.runtime.contract import first_line, shown
from onnxcam.runtime.metrics import BETTER, format_value

RUN_FORMAT = 1  # the run.json format this page reads (docs/runs.md)
REPORT_NAME = "report.html"
FAITHFULNESS_NAMES = ("faithfulness.json", "faithfulness.csv")  # looked for in OUT, in this order
REQUIRED_COLUMNS = ("image", "name", "method", "rank", "target", "score", "score_kind", "overlay")
EXPLAIN_HINT = "run onnxcam explain MODEL IMAGES… --out OUT first"
EVALUATE_HINT = "give the --csv or --json file that onnxcam evaluate wrote"


class ReportError(ValueError):
    """A folder or file the report cannot be made from (what was wrong; what to do)."""


@dataclass
class Run:
    """The settings of ``run.json`` that the page shows (docs/runs.md, "run.json")."""

    model: str
    methods: list[str]
    target: str | None = None
    top_k: int | None = None
    settings: dict = field(default_factory=dict)  # the whole record, for the settings line


@dataclass
class Row:
    """One row of ``results.jsonl`` (docs/runs.md, "results.jsonl"), the columns the page uses."""

    image: str
    name: str
    method: str
    rank: int
    target: str
    class_: int | None
    label: str | None
    score: float
    score_kind: str
    top: list[dict]
    overlay: str


@dataclass
class Faithfulness:
    """Per-method means of ``onnxcam evaluate``: ``means[method][metric]``, over ``images[method]`` images."""

    source: str
    metrics: list[str]
    means: dict[str, dict[str, float]]
    images: dict[str, int]


# ---------------------------------------------------------------- reading the run folder


def read_run(path: Path) -> Run:
    """``OUT/run.json`` as a ``Run``; a ``ReportError`` if it is missing, not JSON, or not a run record."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{shown(path.parent)}: not a run folder (no run.json); {EXPLAIN_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{shown(path)}: cannot read the run's settings ({first_line(error)}); "
                          "run onnxcam explain … --out OUT --force to write the folder again") from None
    if not isinstance(record, dict) or not isinstance(record.get("methods"), list):
        raise ReportError(f"{shown(path)}: not a run record (no list of methods); "
                          "run onnxcam explain … --out OUT --force to write the folder again")
    version = record.get("format")
    if isinstance(version, int) and version > RUN_FORMAT:
        raise ReportError(f"{shown(path)}: run format {version} is newer than this onnxcam reads ({RUN_FORMAT}); "
                          "upgrade onnxcam")
    top_k = record.get("top_k")
    target = record.get("target")
    return Run(model=str(record.get("model", "")), methods=[str(m) for m in record["methods"]],
               target=None if target is None else str(target), top_k=top_k if isinstance(top_k, int) else None,
               settings=record)


def table_lines(text: str) -> list[tuple[int, str]]:
    """The lines of ``results.jsonl`` as ``(line number, text)``, blank lines left out; a torn last line (no
    newline: a run that died while appending) is dropped, as resume drops it (docs/runs.md)."""
    lines = text.split("\n")
    lines.pop()  # "" after a final newline, else the torn line
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]


def parse_row(record: dict) -> Row:
    """One table row as a ``Row`` (a ``KeyError``/``TypeError``/``ValueError`` if a column is missing or wrong)."""
    missing = [name for name in REQUIRED_COLUMNS if name not in record]
    if missing:
        raise KeyError(f"no {', '.join(missing)} column")
    klass = record.get("class")
    top = record.get("top") or []
    if not isinstance(top, list):
        raise TypeError("top is not a list")
    return Row(image=str(record["image"]), name=str(record["name"]), method=str(record["method"]),
               rank=int(record["rank"]), target=str(record["target"]),
               class_=None if klass is None else int(klass),
               label=None if record.get("label") is None else str(record["label"]), score=float(record["score"]),
               score_kind=str(record["score_kind"]), top=[t for t in top if isinstance(t, dict)],
               overlay=str(record["overlay"]))


def read_rows(path: Path) -> list[Row]:
    """The rows of ``OUT/results.jsonl``; a ``ReportError`` naming the first line that is not a whole row."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{shown(path.parent)}: not a run folder (no results.jsonl); {EXPLAIN_HINT}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"{shown(path)}: cannot read the results table ({first_line(error)}); "
                          "check the file, or run the explain command again to complete it") from None
    rows = []
    for number, line in table_lines(text):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise TypeError("not a JSON object")
            rows.append(parse_row(record))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ReportError(f"{shown(path)}: line {number} is not a results row ({first_line(error)}); "
                              "run onnxcam explain … --out OUT --force to write the folder again") from None
    return rows


# ---------------------------------------------------------------- faithfulness (onnxcam evaluate's files)


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def parse_faithfulness_csv(text: str, source: str) -> Faithfulness:
    """evaluate's ``--csv``: ``method,images,<metric…>`` then one row of means per method."""
    table = [row for row in csv.reader(io.StringIO(text)) if row]
    if not table or table[0][:2] != ["method", "images"] or len(table[0]) < 3:
        raise ValueError("the header is not method,images,<metric…>")
    metrics = table[0][2:]
    means, images = {}, {}
    for row in table[1:]:
        if len(row) != len(table[0]):
            raise ValueError(f"row {row[0]!r} has {len(row)} fields, the header {len(table[0])}")
        images[row[0]] = int(row[1])
        means[row[0]] = {metric: _number(value) for metric, value in zip(metrics, row[2:])}
    if not means:
        raise ValueError("no method rows")
    return Faithfulness(source, metrics, means, images)


def parse_faithfulness_json(text: str, source: str) -> Faithfulness:
    """evaluate's ``--json`` record: ``metrics``, ``images`` and ``methods[m]["mean"]``."""
    record = json.loads(text)
    if not isinstance(record, dict) or not isinstance(record.get("methods"), dict) or not record["methods"]:
        raise ValueError("no methods record")
    methods = record["methods"]
    metrics = [str(m) for m in record.get("metrics") or next(iter(methods.values()))["mean"]]
    count = len(record.get("images") or [])
    means = {str(m): {metric: _number(str(entry["mean"][metric])) for metric in metrics}
             for m, entry in methods.items()}
    return Faithfulness(source, metrics, means, {m: count for m in means})


def read_faithfulness(path: Path) -> Faithfulness:
    """A faithfulness file, CSV or JSON (by its suffix, else by its first character); a ``ReportError`` if it is
    missing, unreadable or not evaluate's format."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else first_line(error)
        raise ReportError(f"{shown(path)}: cannot read the faithfulness file ({reason}); {EVALUATE_HINT}") from None
    is_json = path.suffix.lower() == ".json" or (path.suffix.lower() != ".csv" and text.lstrip().startswith("{"))
    try:
        return (parse_faithfulness_json if is_json else parse_faithfulness_csv)(text, path.name)
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as error:
        raise ReportError(f"{shown(path)}: not a faithfulness table ({first_line(error)}); {EVALUATE_HINT}") from None


def find_faithfulness(folder: Path) -> Path | None:
    """``OUT/faithfulness.json`` or ``OUT/faithfulness.csv``, whichever exists first, or None."""
    return next((folder / name for name in FAITHFULNESS_NAMES if (folder / name).is_file()), None)


# ---------------------------------------------------------------- the page


def page_data(run: Run, rows: list[Row]) -> dict:
    """The JSON the page renders: methods, labels once per class, and images in table order, each with its
    top-k (``[class, probability]``) and cells ``[method index, rank, target, class, label, score, kind,
    overlay]`` in rank order."""
    methods = list(run.methods) + sorted({r.method for r in rows} - set(run.methods))
    index = {m: i for i, m in enumerate(methods)}
    labels: dict[str, str] = {}
    images: dict[str, dict] = {}
    for row in rows:
        entry = images.setdefault(row.name, {"name": row.name, "image": row.image, "top": [], "cells": []})
        if not entry["top"] and row.top:
            for item in row.top:
                if item.get("class") is None:
                    continue
                if item.get("label") is not None:
                    labels.setdefault(str(item["class"]), str(item["label"]))
                entry["top"].append([int(item["class"]), float(item.get("probability", math.nan))])
        if row.class_ is not None and row.label is not None:
            labels.setdefault(str(row.class_), row.label)
        entry["cells"].append([index[row.method], row.rank, row.target, row.class_, row.label, row.score,
                               row.score_kind, row.overlay])
    for entry in images.values():
        entry["cells"].sort(key=lambda cell: (cell[0], cell[1]))
    return {"methods": methods, "top_k": run.top_k, "labels": labels, "images": list(images.values())}


def script_json(data: dict) -> str:
    """``data`` as JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` as ``\\u`` escapes (no ``</script>``)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(data):
    """``data`` with NaN/Inf floats as None (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, list):
        return [_finite(item) for item in data]
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    return data


def header_html(run: Run, rows: list[Row], folder: Path) -> str:
    """The page's header: model, methods, target, image and row counts, the other settings."""
    e = html.escape
    images = len({r.name for r in rows})
    target = run.target if run.target is not None else "each image's top class"
    if run.top_k:
        target = f"the {run.top_k} best classes (--top-k {run.top_k})"
    shown_keys = ("model", "methods", "target", "top_k", "format")
    others = ", ".join(f"{key}={json.dumps(value)}" for key, value in run.settings.items() if key not in shown_keys)
    facts = [("model", run.model), ("methods", ", ".join(run.methods)), ("target", target),
             ("images", str(images)), ("rows", str(len(rows)))]
    items = "".join(f'<div><dt>{e(name)}</dt><dd id="run-{e(name)}">{e(value)}</dd></div>' for name, value in facts)
    return (f"<header><h1>onnxcam run: {e(folder.name or str(folder))}</h1><dl class=facts>{items}</dl>"
            f'<p class=settings>{e(others)}</p></header>')


def faithfulness_html(faithfulness: Faithfulness | None) -> str:
    """The faithfulness table (per-method means; each cell's exact value in ``data-value``), or nothing."""
    if faithfulness is None:
        return ""
    e = html.escape

    def heading(metric: str) -> str:
        arrow = {1: " ↑", -1: " ↓"}.get(BETTER.get(metric, 0), "")
        return f'<th data-metric="{e(metric)}">{e(metric)}{arrow}</th>'

    def cell(metric: str, value: float) -> str:
        return f'<td data-metric="{e(metric)}" data-value="{value!r}" title="{value!r}">{format_value(metric, value)}</td>'

    head = "<tr><th>method</th><th>images</th>" + "".join(heading(m) for m in faithfulness.metrics) + "</tr>"
    body = "".join(f'<tr data-method="{e(method)}"><th>{e(method)}</th><td>{faithfulness.images.get(method, "")}'
                   "</td>" + "".join(cell(m, means[m]) for m in faithfulness.metrics) + "</tr>"
                   for method, means in faithfulness.means.items())
    return (f'<section id=faithfulness><h2>Faithfulness <small>({e(faithfulness.source)}: means over images; '
            f'↑ higher is better, ↓ lower is better)</small></h2><table><thead>{head}</thead>'
            f"<tbody>{body}</tbody></table></section>")


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 16px 32px;color:#222;background:#fafafa}
h1{font-size:20px;margin:16px 0 8px}h2{font-size:16px}small{font-weight:normal;color:#666}
.facts{display:flex;flex-wrap:wrap;gap:4px 24px;margin:0}.facts div{display:flex;gap:6px}
dt{color:#666}dd{margin:0;font-weight:600}.settings{color:#666;font-size:12px;margin:4px 0 12px}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
#faithfulness td{text-align:right;font-variant-numeric:tabular-nums}
.controls{position:sticky;top:0;background:#fafafa;padding:8px 0;display:flex;gap:16px;flex-wrap:wrap;z-index:1}
#grid th{position:sticky;top:44px;background:#eee}.image{max-width:220px;word-break:break-all}
.top{font-size:11px;color:#555;margin:4px 0 0;padding-left:16px}figure{display:inline-block;margin:2px;width:160px}
figure img{width:160px;height:160px;object-fit:contain;background:#eee;display:block}
figcaption{font-size:12px;word-break:break-word}.score{color:#555;font-variant-numeric:tabular-nums}
tr[hidden]{display:none}.path{font-size:11px;color:#777}
"""

SCRIPT = r"""
(function () {
  var data = JSON.parse(document.getElementById('rows').textContent);
  var eager = new URLSearchParams(location.search).get('eager') === '1';
  document.body.dataset.loading = eager ? 'eager' : 'lazy';
  var labels = data.labels, grid = document.getElementById('grid'), body = grid.tBodies[0];
  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }
  function href(path) { return path.split('/').map(encodeURIComponent).join('/'); }
  function scoreText(score, kind) {
    if (score === null) return kind === 'probability' ? 'p=?' : 'score=?';
    return kind === 'probability' ? 'p=' + score.toFixed(3) : 'score=' + Number(score.toPrecision(4));
  }
  var head = grid.tHead.rows[0];
  data.methods.forEach(function (m) { head.appendChild(el('th', m)); });
  var rows = data.images.map(function (image, order) {
    var tr = el('tr'), first = el('td', null, 'image'), classes = {};
    tr.dataset.name = image.name;
    first.appendChild(el('div', image.name, 'name'));
    if (image.image !== image.name) first.appendChild(el('div', image.image, 'path'));
    if (image.top.length) {
      var list = el('ol', null, 'top');
      image.top.forEach(function (t) {
        list.appendChild(el('li', t[0] + ' ' + (labels[t[0]] || '') + ' ' + (t[1] === null ? '' : t[1].toFixed(3))));
      });
      first.appendChild(list);
      classes[image.top[0][0]] = true;
    }
    tr.appendChild(first);
    var cells = data.methods.map(function () { var td = el('td'); tr.appendChild(td); return td; });
    var score = null;
    image.cells.forEach(function (c) {
      var fig = el('figure'), img = el('img');
      img.loading = eager ? 'eager' : 'lazy';
      img.alt = image.name + ' ' + data.methods[c[0]];
      img.src = href(c[7]);
      fig.appendChild(img);
      var cap = el('figcaption');
      cap.title = c[2];
      if (data.top_k) cap.appendChild(el('span', '#' + c[1] + ' ', 'rank'));
      cap.appendChild(el('span', c[4] !== null ? c[4] : c[2], 'label'));
      cap.appendChild(document.createTextNode(' '));
      cap.appendChild(el('span', scoreText(c[5], c[6]), 'score'));
      fig.appendChild(cap);
      fig.dataset.rank = c[1];
      fig.dataset.score = c[5];
      cells[c[0]].appendChild(fig);
      if (c[3] !== null) classes[c[3]] = true;
      if (score === null && c[1] === 1) score = c[5];
    });
    tr.dataset.score = score === null ? '' : score;
    return {tr: tr, order: order, score: score === null ? NaN : score, classes: classes,
            text: (image.name + '\n' + image.image).toLowerCase()};
  });
  var select = document.getElementById('class'), seen = {};
  rows.forEach(function (r) { Object.keys(r.classes).forEach(function (k) { seen[k] = true; }); });
  Object.keys(seen).map(Number).sort(function (a, b) { return a - b; }).forEach(function (k) {
    var option = el('option', k + ' ' + (labels[k] || ''));
    option.value = String(k);
    select.appendChild(option);
  });
  function apply() {
    var wanted = select.value, text = document.getElementById('search').value.toLowerCase(), shown = 0;
    rows.forEach(function (r) {
      var visible = (!wanted || r.classes[wanted]) && (!text || r.text.indexOf(text) >= 0);
      r.tr.hidden = !visible;
      if (visible) shown++;
    });
    document.getElementById('count').textContent = shown + ' of ' + rows.length + ' images';
  }
  function sort() {
    var how = document.getElementById('sort').value;
    var ordered = rows.slice().sort(function (a, b) {
      if (how === 'table') return a.order - b.order;
      var x = isNaN(a.score) ? -Infinity : a.score, y = isNaN(b.score) ? -Infinity : b.score;
      return (how === 'desc' ? y - x : x - y) || a.order - b.order;
    });
    ordered.forEach(function (r) { body.appendChild(r.tr); });
  }
  select.addEventListener('change', apply);
  document.getElementById('search').addEventListener('input', apply);
  document.getElementById('sort').addEventListener('change', sort);
  sort();
  apply();
  document.body.dataset.state = 'ready';
})();
"""


def render(folder: Path, run: Run, rows: list[Row], faithfulness: Faithfulness | None) -> str:
    """The whole page as text."""
    controls = ('<div class=controls><label>class <select id=class><option value="">all</option></select></label>'
                '<label>sort <select id=sort><option value=table>table order</option>'
                '<option value=desc>score, highest first</option><option value=asc>score, lowest first</option>'
                '</select></label><label>name <input id=search type=search placeholder="filter by name">'
                '</label><span id=count></span></div>')
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>onnxcam report: {html.escape(folder.name or str(folder))}</title><style>{STYLE}</style></head>"
            f"<body data-state=loading>{header_html(run, rows, folder)}{faithfulness_html(faithfulness)}"
            f"<h2>Maps</h2>{controls}<noscript>The grid needs JavaScript.</noscript>"
            "<table id=grid><thead><tr><th>image</th></tr></thead><tbody></tbody></table>"
            f'<script type="application/json" id=rows>{script_json(_finite(page_data(run, rows)))}</script>'
            f"<script>{SCRIPT}</script></body></html>\n")


def write_report(folder: Path, faithfulness: Path | None = None) -> Path:
    """Write ``folder/report.html`` over the run folder ``folder`` (docs/runs.md), with the faithfulness table
    of ``faithfulness`` (or of ``folder/faithfulness.json|csv`` where one exists); returns its path. Every
    input is read and checked before the page is written, whole (a hidden temporary, then renamed)."""
    folder = Path(folder)
    if not folder.exists():
        raise ReportError(f"{shown(folder)}: no such folder; {EXPLAIN_HINT}")
    if not folder.is_dir():
        raise ReportError(f"{shown(folder)}: not a folder; give the folder of an explain run ({EXPLAIN_HINT})")
    if not (folder / "run.json").is_file() or not (folder / "results.jsonl").is_file():
        missing = " and ".join(n for n in ("run.json", "results.jsonl") if not (folder / n).is_file())
        raise ReportError(f"{shown(folder)}: not a run folder (no {missing}); {EXPLAIN_HINT}")
    run = read_run(folder / "run.json")
    rows = read_rows(folder / "results.jsonl")
    source = faithfulness if faithfulness is not None else find_faithfulness(folder)
    table = read_faithfulness(Path(source)) if source is not None else None
    page = render(folder.resolve(), run, rows, table)
    path = folder / REPORT_NAME
    write_atomically(path, lambda temporary: temporary.write_text(page, encoding="utf-8"))
    return path


__all__ = ["Faithfulness", "ReportError", "Row", "Run", "read_faithfulness", "read_rows", "read_run",
           "write_report"]
