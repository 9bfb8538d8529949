"""``onnxcam explain --engine ray`` and ``ray_engine.explain_dataset`` (docs/runs.md) against the local engine:
the pretrained EfficientNet-Lite0 graph, four real photos from scikit-image, one local Ray cluster of 2 CPUs
started here for the whole module (the CLI runs in this process through ``CliRunner``, so it joins that
cluster instead of starting its own).

Needs ``ray[data]`` (``pip install 'onnxcam[ray]'``); without it every test fails saying so.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import skimage_photo
from onnxcam.runtime.cli import main
from onnxcam.runtime.image import ImageError
from onnxcam.runtime.run.ray_engine import INSTALL_HINT

PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "motorcycle_left.png")
# the same graph, the same preprocessing and onnxruntime on the same CPU: the maps of both engines are the same
# arithmetic, batches of 2 in both (measured max difference 0.0); the bound leaves room for float32 noise only
MAP_TOLERANCE = 1e-5
BATCH = ("--batch-size", "2")
# per image: its manifest / dataset target (a class id, a label, or none: its top class)
TARGETS = {"coffee.png": "967", "chelsea.png": "tabby", "astronaut.png": None, "motorcycle_left.png": "670"}


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (2 CPUs, no dashboard, quiet) for the module, shut down after it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        pytest.fail(INSTALL_HINT)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> tuple[Path, list[Path]]:
    """The pretrained EfficientNet-Lite0 explainer graph (``onnxcam export``) and the photos, copied."""
    root = tmp_path_factory.mktemp("ray")
    graph = root / "efficientnet_lite0.onnx"
    result = run("export", "efficientnet_lite0", "-o", graph)
    assert result.exit_code == 0, result.output
    (root / "photos").mkdir()
    photos = [root / "photos" / name for name in PHOTOS]
    for photo in photos:
        shutil.copyfile(skimage_photo(photo.name), photo)
    return graph, photos


def table(folder: Path) -> list[dict]:
    """The rows of ``results.jsonl``, without the timing column."""
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def assert_same_run(ours: Path, local: Path) -> None:
    """Same files, same run.json, same rows in the same order (but for ``seconds``), maps within MAP_TOLERANCE."""
    assert sorted(os.listdir(ours)) == sorted(os.listdir(local))
    assert json.loads((ours / "run.json").read_text()) == json.loads((local / "run.json").read_text())
    assert table(ours) == table(local)
    maps = sorted(local.glob("*.npy"))
    assert len(maps) == len(PHOTOS)
    for path in maps:
        np.testing.assert_allclose(np.load(ours / path.name), np.load(path), rtol=0, atol=MAP_TOLERANCE,
                                   err_msg=path.name)


def test_cli_ray_engine_equals_local_and_resumes(cluster, lite0, tmp_path):
    """(a) the same command on both engines writes the same run folder; (c) run again, the Ray engine finds
    every image done and writes nothing."""
    graph, photos = lite0
    common = (graph, *photos, "-m", "gradcam", "--save-maps", *BATCH)
    local = run("explain", *common, "--engine", "local", "--out", tmp_path / "local")
    assert local.exit_code == 0, local.output
    ours = run("explain", *common, "--engine", "ray", "--out", tmp_path / "ray")
    assert ours.exit_code == 0, ours.output
    assert ours.stdout == local.stdout  # the per-image lines, in input order
    assert "explained 4 image(s)" in ours.stderr and "Traceback" not in ours.stderr
    assert_same_run(tmp_path / "ray", tmp_path / "local")

    before = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "ray").iterdir()}
    again = run("explain", *common, "--engine", "ray", "--out", tmp_path / "ray")
    assert again.exit_code == 0, again.output
    assert "explained 0 image(s)" in again.stderr and "4 done by an earlier run" in again.stderr
    assert {path.name: path.stat().st_mtime_ns for path in (tmp_path / "ray").iterdir()} == before
    assert len(table(tmp_path / "ray")) == len(PHOTOS)


def test_explain_dataset_with_targets_equals_local_manifest(cluster, lite0, tmp_path):
    """(b) a ``ray.data`` dataset with a per-image ``target`` column gives the run the local engine gives
    with the same targets in a ``--manifest``; an image no actor can decode is one ``ImageError`` line, or
    skipped and counted with ``skip_bad``."""
    from onnxcam.runtime.run.ray_engine import explain_dataset

    graph, photos = lite0
    manifest = tmp_path / "images.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "target"])
        writer.writerows([str(photo), TARGETS[photo.name] or ""] for photo in photos)
    local = run("explain", graph, "--manifest", manifest, "-m", "gradcam", "--save-maps", *BATCH, "-q",
                "--out", tmp_path / "local")
    assert local.exit_code == 0, local.output

    dataset = cluster.data.from_items([{"path": str(photo), "target": TARGETS[photo.name]} for photo in photos])
    outcome = explain_dataset(dataset, graph, tmp_path / "ray", methods=["gradcam"], save_maps=True, batch_size=2)
    assert (outcome.explained, outcome.skipped, outcome.done_before) == (len(PHOTOS), 0, 0)
    assert_same_run(tmp_path / "ray", tmp_path / "local")
    assert [row["class"] for row in table(tmp_path / "ray")][:2] == [967, 281]  # the manifest's, not the top class

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with_broken = cluster.data.from_items([{"path": str(photos[0])}, {"path": str(broken)}])
    with pytest.raises(ImageError, match="broken.png") as raised:
        explain_dataset(with_broken, graph, tmp_path / "broken", batch_size=2)
    assert "\n" not in str(raised.value)
    outcome = explain_dataset(with_broken, graph, tmp_path / "broken", batch_size=2, skip_bad=True)
    assert (outcome.explained, outcome.skipped, outcome.done_before) == (0, 1, 1)
    assert [row["name"] for row in table(tmp_path / "broken")] == ["coffee"]
