"""Production runs (docs/runs.md): inputs at scale, the results table, resume after SIGKILL, the
lock, --force, progress. The oracle is the Python API on the same images (``Explainer.explain``
on ``load_batch``), and files and rows re-read from disk; the crash is a real ``kill -9`` of a
real run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import skimage_photo
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.cli import main
from onnxcam.runtime.methods import softmax
from onnxcam.runtime.run.folder import open_run

ONNXCAM = [str(Path(sys.executable).parent / "onnxcam")]
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png")
MAP_TOLERANCE = 1e-5  # maps in [0, 1]; the same images in batches of other sizes: float32 summation order


def run(*args, env: dict | None = None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny.onnx"
    result = run("export", "zoo:tiny", "--layer", "features", "--input-size", "48", "-o", path)
    assert result.exit_code == 0, result.output
    return path


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def api_maps(graph: Path, paths: list[Path], method: str, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """The Python API's maps ``[N, H, W]`` and softmax ``[N, classes]`` for image files, one call."""
    explainer = Explainer(graph, providers="cpu")
    batch, _ = load_batch(paths, explainer.contract)
    result = explainer.explain(batch, method=method, targets=classes)
    return result.maps, softmax(result.logits)


def test_folders_globs_lists_and_manifests(graph, tmp_path):
    """Every way of naming images finds the same files; a manifest's per-image targets are explained."""
    tree = tmp_path / "photos"
    (tree / "a").mkdir(parents=True)
    (tree / "b" / "c").mkdir(parents=True)
    (tree / ".hidden").mkdir()
    (tree / "a" / "chelsea.png").write_bytes(skimage_photo("chelsea.png").read_bytes())
    cv2.imwrite(str(tree / "b" / "c" / "coffee.jpg"), cv2.imread(str(skimage_photo("coffee.png"))))
    (tree / ".hidden" / "astronaut.png").write_bytes(skimage_photo("astronaut.png").read_bytes())
    (tree / "b" / "notes.txt").write_text("not an image")
    found = {}
    for label, args in {"folder": [tree], "glob": [str(tree / "**" / "*.*")],
                        "list": ["--files-from", tmp_path / "list.txt"]}.items():
        (tmp_path / "list.txt").write_text("# two photos\nphotos/a/chelsea.png\n\nphotos/b/c/coffee.jpg\n")
        out = tmp_path / label
        result = run("explain", graph, *args, "--out", out, "--save-maps")
        assert result.exit_code == 0, result.output
        found[label] = sorted(Path(row["image"]).name for row in rows_of(out))
    assert found == {key: ["chelsea.png", "coffee.jpg"] for key in found}
    only_png = tmp_path / "png"
    assert run("explain", graph, str(tree / "**" / "*.png"), "--out", only_png).exit_code == 0
    assert [row["name"] for row in rows_of(only_png)] == ["chelsea"]

    # a manifest: class 3 for chelsea, the top class for coffee (empty), class 1 (its label) for astronaut
    for photo in PHOTOS:
        (tmp_path / photo).write_bytes(skimage_photo(photo).read_bytes())
    labels = Explainer(graph, providers="cpu").contract.labels
    second = labels[1] if labels else "1"
    (tmp_path / "m.csv").write_text(f"path,target\nchelsea.png,3\ncoffee.png,\nastronaut.png,{second}\n")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"path": "chelsea.png", "target": 3}, {"path": "coffee.png", "target": None},
        {"path": "astronaut.png", "target": second}]) + "\n")
    paths = [tmp_path / p for p in PHOTOS]
    _, probabilities = api_maps(graph, paths, "gradcam")
    classes = [3, int(probabilities[1].argmax()), 1]
    expected, probabilities = api_maps(graph, paths, "gradcam++", classes)
    for manifest in ("m.csv", "m.jsonl"):
        out = tmp_path / f"out-{manifest}"
        result = run("explain", graph, "--manifest", tmp_path / manifest, "-m", "gradcam++", "--save-maps",
                     "--out", out, "--batch-size", "2")
        assert result.exit_code == 0, result.output
        rows = rows_of(out)
        assert [row["class"] for row in rows] == classes
        for row, image_map, image_probabilities, class_id in zip(rows, expected, probabilities, classes):
            assert np.abs(np.load(out / row["map"]) - image_map).max() <= MAP_TOLERANCE
            assert row["score"] == pytest.approx(float(image_probabilities[class_id]), abs=1e-6)
    (tmp_path / "bad.csv").write_text("path,target\nchelsea.png,no-such-label\n")
    result = run("explain", graph, "--manifest", tmp_path / "bad.csv", "--out", tmp_path / "never")
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "no-such-label" in result.stderr
    assert not (tmp_path / "never").exists()


def test_skip_bad_reports_each_once_and_counts_them(graph, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in PHOTOS[:2]:
        (photos / photo).write_bytes(skimage_photo(photo).read_bytes())
    data = skimage_photo("astronaut.png").read_bytes()
    (photos / "cut.png").write_bytes(data[:len(data) // 2])
    (photos / "text.jpg").write_text("not a jpeg")
    out = tmp_path / "out"
    refused = run("explain", graph, photos, "--out", out)
    assert refused.exit_code == 1 and refused.stderr.count("Error:") == 1 and not out.exists()
    result = run("explain", graph, photos, "--out", out, "--skip-bad")
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2 and any("cut.png" in line for line in skipped) and any("text.jpg" in line for line in skipped)
    assert "2 skipped (unreadable)" in result.stderr.splitlines()[-1]
    assert sorted(row["name"] for row in rows_of(out)) == ["chelsea", "coffee"]


def corrupt_inside(photo: str) -> bytes:
    """A PNG whose header and end are whole but whose image data is not: found only by decoding it."""
    data = bytearray(skimage_photo(photo).read_bytes())
    start = data.index(b"IDAT") + 64
    data[start:start + 256] = bytes(256)
    return bytes(data)


def test_an_image_corrupt_inside_stops_the_run_or_is_skipped(graph, tmp_path):
    photos = many_photos(tmp_path / "photos", 4)
    (photos / "p002-astronaut.png").write_bytes(corrupt_inside("astronaut.png"))
    out = tmp_path / "out"
    stopped = run("explain", graph, photos, "--out", out, "--batch-size", "1", "--workers", "1")
    assert stopped.exit_code == 1
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "p002-astronaut.png: not a readable image" in last
    assert last.endswith(f"(or add --skip-bad); the images finished are kept in {out}/ and the same command "
                         "finishes the run")
    kept = [row["name"] for row in rows_of(out)]
    assert "p002-astronaut" not in kept and sorted(p.stem.split(".")[0] for p in out.glob("*.png")) == sorted(kept)
    skipped = run("explain", graph, photos, "--out", out, "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert [line for line in skipped.stderr.splitlines() if line.startswith("skipped: ")] == [
        line for line in skipped.stderr.splitlines() if "p002-astronaut.png" in line]
    assert "1 skipped (unreadable)" in skipped.stderr.splitlines()[-1]
    assert sorted(row["name"] for row in rows_of(out)) == ["p000-chelsea", "p001-coffee", "p003-chelsea"]


def test_results_table_one_row_per_image_method_and_target(graph, tmp_path):
    """``pandas.read_json(lines=True)`` loads it; each row's score and map statistics are the API's and the
    saved map's."""
    import pandas

    photos = [tmp_path / photo for photo in PHOTOS]
    for path, photo in zip(photos, PHOTOS):
        path.write_bytes(skimage_photo(photo).read_bytes())
    out = tmp_path / "out"
    result = run("explain", graph, *photos, "-m", "gradcam", "-m", "layercam", "--top-k", "2", "--save-maps",
                 "--out", out, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    table = pandas.read_json(out / "results.jsonl", lines=True)
    assert len(table) == 3 * 2 * 2
    assert not table.duplicated(["image", "method", "rank"]).any()
    explainer = Explainer(graph, providers="cpu")
    batch, _ = load_batch(photos, explainer.contract)
    for method in ("gradcam", "layercam"):
        expected = explainer.explain(batch, method=method, top_k=2)
        probabilities = softmax(expected.logits)
        for _, row in table[table.method == method].iterrows():
            i, k = [p.name for p in photos].index(Path(row.image).name), row["rank"] - 1
            assert row["class"] == int(np.argsort(-probabilities[i])[k])
            assert row.score == pytest.approx(float(probabilities[i, row["class"]]), abs=1e-6)
            saved = np.load(out / row["map"])
            assert np.abs(saved - expected.maps[i, k]).max() <= MAP_TOLERANCE
            assert row.map_mean == pytest.approx(float(saved.mean()), abs=1e-6)
            assert row.map_area == pytest.approx(float((saved >= 0.5).mean()), abs=1e-6)
            assert saved[row.peak_y, row.peak_x] == saved.max()
            assert (out / row.overlay).is_file() and row.overlay.endswith(f".top{k + 1}.png")
            assert [entry["class"] for entry in row.top][:2] == list(np.argsort(-probabilities[i])[:2])
            assert (row.width, row.height) == cv2.imread(str(photos[i])).shape[1::-1]


def many_photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        photo = PHOTOS[index % len(PHOTOS)]
        (folder / f"p{index:03d}-{photo}").write_bytes(skimage_photo(photo).read_bytes())
    return folder


def test_resume_after_sigkill(graph, tmp_path):
    """A real run killed with SIGKILL mid-way leaves whole files and whole rows; the same command again
    completes it: every output once, every (image, method) one row, the maps an uninterrupted run's."""
    photos = many_photos(tmp_path / "photos", 150)
    out, clean = tmp_path / "out", tmp_path / "clean"
    command = [*ONNXCAM, "explain", str(graph), str(photos), "-m", "gradcam", "-m", "scorecam", "--save-maps",
               "--batch-size", "2", "--provider", "cpu", "--quiet"]
    process = subprocess.Popen(command + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    table = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if table.exists() and table.read_bytes().count(b"\n") >= 20:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed; the test proves nothing"
    rows_at_kill = table.read_bytes().count(b"\n")
    assert 20 <= rows_at_kill < 300, rows_at_kill
    for path in out.iterdir():  # whatever is in place is whole
        if path.suffix == ".png" and not path.name.startswith("."):
            assert cv2.imread(str(path)) is not None, path
        elif path.suffix == ".npy" and not path.name.startswith("."):
            assert np.load(path).shape == (48, 48)

    resumed = subprocess.run(command[:-1] + ["--out", str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "done by an earlier run" in resumed.stderr.splitlines()[-1]
    rows = rows_of(out)
    assert len(rows) == 300 and len({(row["image"], row["method"]) for row in rows}) == 300
    named = sorted([row["overlay"] for row in rows] + [row["map"] for row in rows])
    on_disk = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".npy"))
    assert on_disk == named and not [p for p in out.iterdir() if p.name.startswith(".")]

    assert subprocess.run(command + ["--out", str(clean)], capture_output=True, timeout=300).returncode == 0
    for row in rows:
        assert np.abs(np.load(out / row["map"]) - np.load(clean / row["map"])).max() <= MAP_TOLERANCE, row["map"]
        assert cv2.imread(str(out / row["overlay"])).shape == (48, 48, 3)


def test_a_second_run_into_a_locked_folder_refuses(graph, tmp_path):
    photos = many_photos(tmp_path / "photos", 2)
    out = tmp_path / "out"
    holder = open_run(out, {"held": True}, 1)
    try:
        result = run("explain", graph, photos, "--out", out)
        assert result.exit_code == 1
        assert result.stderr.strip() == (f"Error: {out}: another onnxcam run (process {os.getpid()}) is writing into "
                                         "this folder; wait for it to finish, or choose another --out")
    finally:
        holder.close(failed=True)
    assert not out.exists()  # the holder wrote nothing: the folder it made is gone
    assert run("explain", graph, photos, "--out", out).exit_code == 0


def test_changed_settings_refuse_and_force_starts_over(graph, tmp_path):
    photos = many_photos(tmp_path / "photos", 2)
    out = tmp_path / "out"
    assert run("explain", graph, photos, "--out", out, "-m", "gradcam").exit_code == 0
    changed = run("explain", graph, photos, "--out", out, "-m", "layercam")
    assert changed.exit_code == 1 and "holds a run with other settings (methods: ['gradcam'] → ['layercam'])" in \
        changed.stderr and "--force" in changed.stderr
    again = run("explain", graph, photos, "--out", out, "-m", "gradcam")
    assert again.exit_code == 0 and "explained 0 image(s)" in again.stderr and "2 done by an earlier run" in again.stderr
    forced = run("explain", graph, photos, "--out", out, "-m", "layercam", "--force")
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.jsonl", "run.json"] + [f"p00{i}-{photo[:-4]}.layercam.png" for i, photo in enumerate(PHOTOS[:2])])
    assert [row["method"] for row in rows_of(out)] == ["layercam", "layercam"]


def test_progress_bar_final_line_and_quiet(graph, tmp_path):
    photos = many_photos(tmp_path / "photos", 5)
    result = run("explain", graph, photos, "--out", tmp_path / "out", "--batch-size", "2", "--report")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("explaining")  # the bar: its label only, off a terminal
    final = result.stderr.strip().splitlines()[-1]
    assert final.startswith("explained 5 image(s) in ") and final.endswith(
        f"results in {tmp_path / 'out'}/results.jsonl, report {tmp_path / 'out' / 'report.html'}")
    assert len(result.stdout.splitlines()) == 5
    quiet = run("explain", graph, photos, "--out", tmp_path / "quiet", "--batch-size", "2", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert len(rows_of(tmp_path / "quiet")) == 5
