"""``onnxcam report OUT``: a static, offline HTML page over a run folder (``runtime/run/report.py``;
the folder's contract is ``docs/runs.md``)."""

from __future__ import annotations

from pathlib import Path

import click

from onnxcam.runtime.contract import shown


@click.command("report")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--faithfulness", "faithfulness", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="onnxcam evaluate's --csv or --json file to show as a table. Default: OUT/faithfulness.json "
                   "or OUT/faithfulness.csv, where one exists.")
def command(out: Path, faithfulness: Path | None) -> None:
    """Write OUT/report.html: a static page over the run folder OUT of `onnxcam explain … --out OUT`.

    One row per image, one column per method (with --top-k, the K overlays with their rank), each
    overlay captioned with what it explains and its score, the image's top classes beside it; a
    filter by class, a sort by score and a filter by name. The page needs no network: copy or zip
    OUT and it still works. Open it with ?eager=1 to load every overlay at once (they load lazily).

    \b
    Examples:
      onnxcam explain effnet.onnx photos/ -m gradcam -m gradcam++ --out maps/
      onnxcam evaluate effnet.onnx photos/ -m gradcam -m gradcam++ --csv maps/faithfulness.csv
      onnxcam report maps/
    """
    from onnxcam.runtime.run.report import write_report

    path = write_report(out, faithfulness)
    click.echo(shown(path))
