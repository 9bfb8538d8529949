"""Bad input, through the CLI and the Python API: images, model files, metadata, arguments, numbers.

Every case asserts what README's "Errors" paragraph promises: exit code 1, exactly one stderr
line ``Error: <what was wrong>; <what to do>``, no traceback, no file left in the output
folder — and the same input through the Python API raises one ``ValueError``-family error
with the same one-line message. Cases that involve native code (decoders' own messages, a
file name that is not UTF-8, signals, two processes at once) run the real ``onnxcam`` in a
subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import skimage_photo
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.cli import main
from onnxcam.runtime.image import load_image

ONNXCAM = [str(Path(sys.executable).parent / "onnxcam")]  # the installed command, as a user runs it


def run(*args, env: dict | None = None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``, hidden ones and staging folders' contents included."""
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def assert_refused(result, pattern: str, out: Path | None = None) -> str:
    """Exit 1, one stderr line ``Error: what; what to do``, no traceback, nothing in ``out``."""
    stderr = result.stderr
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    assert "; " in lines[0], f"no 'what to do' part: {lines[0]}"
    assert re.search(pattern, lines[0]), lines[0]
    if out is not None:
        assert files_under(out) == [], files_under(out)
    return lines[0]


def assert_api_refuses(call: Callable, pattern: str, kinds=(ValueError, OSError)) -> None:
    with pytest.raises(kinds) as caught:
        call()
    message = str(caught.value)
    assert len(message.strip().splitlines()) == 1, message
    assert "; " in message and re.search(pattern, message), message


# -- fixtures: a real explainer graph, real photos, broken files --------------------------------
@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "tiny.onnx"
    result = run("export", "zoo:tiny", "--layer", "features", "--input-size", "48", "-o", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (folder / name).write_bytes(skimage_photo(name).read_bytes())
    return folder


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def truncated(photo: str = "chelsea.png") -> bytes:
    data = skimage_photo(photo).read_bytes()
    return data[:len(data) // 2]


def edited(graph: Path, folder: Path, change: Callable[[dict], None], name: str = "edited.onnx") -> Path:
    """A copy of ``graph`` with its metadata record changed by ``change``."""
    model = onnx.load(str(graph))
    for prop in model.metadata_props:
        if prop.key == "onnxcam":
            record = json.loads(prop.value)
            change(record)
            prop.value = json.dumps(record)
    path = folder / name
    onnx.save(model, str(path))
    return path


# -- images ------------------------------------------------------------------------------------
IMAGE_CASES = {
    # name: (files to add to the photos folder, pattern, extra environment)
    "truncated image in a later batch": ({"zz-truncated.png": truncated()}, r"zz-truncated\.png: .*truncated or corrupt", {}),
    "decompression bomb header": ({"zz-bomb.png": png_header(100_000, 100_000)},
                                  r"zz-bomb\.png: 100000x100000 .* past the limit of 100,000,000.*ONNXCAM_MAX_PIXELS", {}),
    "text named .jpg": ({"zz-notes.jpg": b"this is not a jpeg"}, r"zz-notes\.jpg: not a readable image", {}),
    "empty file": ({"zz-empty.png": b""}, r"zz-empty\.png: the file is empty", {}),
    "pixel limit from the environment": ({}, r"chelsea\.png: 451x300 is 135,300 pixels, past the limit of 1,000",
                                         {"ONNXCAM_MAX_PIXELS": "1000"}),
    "pixel limit that is not a number": ({}, r"ONNXCAM_MAX_PIXELS='lots' is not a positive", {"ONNXCAM_MAX_PIXELS": "lots"}),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_images_are_refused_before_any_output(graph, photos, tmp_path, monkeypatch, case):
    files, pattern, env = IMAGE_CASES[case]
    for name, data in files.items():
        (photos / name).write_bytes(data)
    out = tmp_path / "out"
    # batch size 1: the bad image comes after two batches that explain fine
    assert_refused(run("explain", graph, photos, "--out", out, "--batch-size", "1", env=env), pattern, out)
    assert not out.exists()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    contract = Explainer(graph, providers="cpu").contract
    bad = [photos / name for name in files] or [photos / "chelsea.png"]
    assert_api_refuses(lambda: load_batch(bad, contract), pattern)


def test_missing_images_and_empty_folders(graph, photos, tmp_path):
    out = tmp_path / "out"
    assert_refused(run("explain", graph, photos / "nope.png", "--out", out), r"nope\.png: no such file or folder; check", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(run("explain", graph, empty, "--out", out), r"no image files found in .*empty; name images", out)
    assert_api_refuses(lambda: load_image(photos / "nope.png"), r"no such file; check the path")
    assert_api_refuses(lambda: load_image(photos), r"it is a folder")


def test_hidden_leftovers_are_not_inputs_and_gif_is_read_in_folders(graph, photos, tmp_path):
    """A hard-killed run's staging folder and partial files are hidden: never read as images."""
    staging = photos / ".onnxcam-dead"
    staging.mkdir()
    (staging / "chelsea.gradcam.png").write_bytes(truncated())
    (photos / ".coffee.gradcam.png.x1.partial.png").write_bytes(truncated())
    gif = load_image(photos / "coffee.png")[::4, ::4]
    from PIL import Image

    Image.fromarray(gif).save(photos / "small.gif")
    out = tmp_path / "out"
    result = run("explain", graph, photos, "--out", out, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in files_under(out)) == ["chelsea.gradcam.png", "coffee.gradcam.png", "results.jsonl",
                                                        "run.json", "small.gradcam.png"]
    with Image.open(photos / "small.gif") as decoded:  # GIF decodes (Pillow, an independent decoder, agrees)
        assert np.array_equal(load_image(photos / "small.gif"), np.asarray(decoded.convert("RGB")))


# -- outputs that would collide -------------------------------------------------------------------
def test_outputs_never_overwrite_each_other(graph, tmp_path):
    """``a/x.png`` and ``b/x.png``; ``x.png``, ``x.jpg`` and ``x_png.png``: one output each, each
    the overlay of its own image."""
    import cv2

    chelsea, coffee = load_image(skimage_photo("chelsea.png")), load_image(skimage_photo("coffee.png"))
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.png"), chelsea[..., ::-1])
    cv2.imwrite(str(tmp_path / "b" / "x.png"), coffee[..., ::-1])
    cv2.imwrite(str(tmp_path / "c" / "x.png"), chelsea[..., ::-1])
    cv2.imwrite(str(tmp_path / "c" / "x.jpg"), coffee[..., ::-1])
    cv2.imwrite(str(tmp_path / "c" / "x_png.png"), np.ascontiguousarray(coffee[::-1, :, ::-1]))
    inputs = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "c"]
    out = tmp_path / "out"
    result = run("explain", graph, *inputs, "--out", out, "--provider", "cpu", "--save-maps")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == 5 and len(list(out.glob("*.npy"))) == 5, written
    assert "c_x.png.gradcam.png" in written
    assert re.fullmatch(rf"explained 5 image\(s\) in .*; results in {re.escape(str(out))}/results.jsonl",
                        result.stderr.strip())
    # each output is its own image's map: the maps of the three distinct pictures differ
    explainer = Explainer(graph, providers="cpu")
    images = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "c" / "x.jpg", tmp_path / "c" / "x_png.png"]
    expected = explainer.explain(load_batch(images, explainer.contract)[0], method="gradcam").maps
    names = ["a_x.png", "b_x.png", "x.jpg", "x_png"]
    for name, map_ in zip(names, expected):
        saved = np.load(out / f"{name}.gradcam.npy")
        assert np.abs(saved - map_).max() < 1e-5, name
    assert not np.allclose(np.load(out / "x_png.gradcam.npy"), np.load(out / "x.jpg.gradcam.npy"), atol=1e-3)


# -- model files and metadata ------------------------------------------------------------------------
def _plain_onnx(graph: Path, folder: Path) -> Path:
    model = onnx.load(str(graph))
    del model.metadata_props[:]
    path = folder / "plain.onnx"
    onnx.save(model, str(path))
    return path


MODEL_CASES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "a folder": (lambda graph, tmp: tmp, r"is a folder; give the explainer \.onnx file"),
    "a missing file": (lambda graph, tmp: tmp / "nope.onnx", r"nope\.onnx: no such file; give the path"),
    "not ONNX": (lambda graph, tmp: _write(tmp / "junk.onnx", os.urandom(300)), r"junk\.onnx: not an ONNX model"),
    "ONNX without a record": (_plain_onnx, r"plain\.onnx: this is not an onnxcam explainer graph \(no 'onnxcam'"),
    "no layers": (lambda g, t: edited(g, t, lambda r: r.__setitem__("layers", [])), r"lists no explained layer"),
    "size [0, 0]": (lambda g, t: edited(g, t, lambda r: r["preprocessing"].__setitem__("size", [0, 0])),
                    r"size is \[0, 0\]; it must be \[height, width\]"),
    "a 2-value layer shape": (lambda g, t: edited(g, t, lambda r: r["layers"][0].__setitem__("shape", [24, 24])),
                              r"shape \[C, h, w\] \[24, 24\] is not 3 whole numbers"),
    "classes that are not the output's": (lambda g, t: edited(g, t, lambda r: r["output"].__setitem__("shape", [10])),
                                          r"metadata says output 'output' is \[10\] per row, the graph says \[5\]"),
    "10^12 classes": (lambda g, t: edited(g, t, lambda r: r["output"].__setitem__("shape", [10 ** 12])),
                      r"is \[1000000000000\] per row, the graph says \[5\]"),
    "a layer shape that is not the graph's": (
        lambda g, t: edited(g, t, lambda r: r["layers"][0].__setitem__("shape", [16, 7, 7])),
        r"activation 'activation_0' is \[16, 7, 7\] per row, the graph says \[16, 24, 24\]"),
    "std 0": (lambda g, t: edited(g, t, lambda r: r["preprocessing"].__setitem__("std", [0, 0, 0])),
              r"std is \[0, 0, 0\]; a std of 0 divides by zero"),
    "scale 0": (lambda g, t: edited(g, t, lambda r: r["preprocessing"].__setitem__("scale", 0)),
                r"scale is 0; pixel values are divided by it"),
    "labels that are not one per class": (lambda g, t: edited(g, t, lambda r: r.__setitem__("labels", ["a", "b"])),
                                          r"has 2 labels for an output of shape \[5\]"),
    "a future format": (lambda g, t: edited(g, t, lambda r: r.__setitem__("format_version", 99)),
                        r"format version 99 is not supported .*; re-export"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_models_and_metadata(graph, photos, tmp_path, case):
    make, pattern = MODEL_CASES[case]
    folder = tmp_path / "models"
    folder.mkdir()
    model = make(graph, folder)
    out = tmp_path / "out"
    assert_refused(run("explain", model, photos, "--out", out), pattern, out)
    assert not out.exists()
    assert_refused(run("info", model), pattern)
    assert_api_refuses(lambda: Explainer(model, providers="cpu"), pattern)


# -- arguments -----------------------------------------------------------------------------------
ARGUMENT_CASES = {
    "unknown method": (["-m", "gradcam-9000"], r"unknown method 'gradcam-9000'; choose one of"),
    "unknown layer": (["--layer", "nosuch"], r"layer 'nosuch' is not explained by this graph; it explains"),
    "huge class id": (["-t", str(10 ** 30)], r"out of range; give a class id"),
    "class past the output": (["-t", "7"], r"7"),
    "segmentation target on class scores": (["-t", "segmentation:1"], r"segmentation"),
    "unknown target kind": (["-t", "nosuchkind:3"], r"nosuchkind"),
}


@pytest.mark.parametrize("case", list(ARGUMENT_CASES))
def test_bad_arguments(graph, photos, tmp_path, case):
    args, pattern = ARGUMENT_CASES[case]
    out = tmp_path / "out"
    assert_refused(run("explain", graph, photos, "--out", out, *args), pattern, out)
    assert not out.exists()


def test_bad_arguments_through_the_api(graph, photos):
    explainer = Explainer(graph, providers="cpu")
    batch, _ = load_batch([photos / "chelsea.png"], explainer.contract)
    assert_api_refuses(lambda: explainer.explain(batch, method="gradcam-9000"), r"unknown method")
    assert_api_refuses(lambda: explainer.explain(batch, layers=["nosuch"]), r"'nosuch' is not explained")
    assert_api_refuses(lambda: explainer.explain(batch, targets=7), r"7")
    assert_api_refuses(lambda: explainer.explain(batch[:, :2]), r"input batch has shape \(1, 2, 48, 48\)")


def test_outputs_that_cannot_be_written_are_refused_before_any_work(graph, photos, tmp_path, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = a_file / "out"
    assert_refused(run("explain", graph, photos, "--out", out), r"a-file is a file, not a folder; choose another")
    result = run("evaluate", graph, photos, "--metric", "avg-drop", "--csv", a_file / "f.csv")
    assert_refused(result, r"a-file is a file, not a folder")
    assert result.stdout == ""  # refused before any evaluation
    assert_refused(run("features", graph, photos / "chelsea.png", "-o", tmp_path / "f.xyz"),
                   r"f\.xyz: cannot write \.xyz images; name a \.png")
    assert not (tmp_path / "f.xyz").exists()
    assert_refused(run("augment", "--recipe", "rapidocr-cls", "-o", a_file / "x.onnx"), r"a-file is a file")
    # a folder the process may not write in (root may write anywhere, so the refusal is simulated)
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "new" / "out"
    assert_refused(run("explain", graph, photos, "--out", out), r"cannot write in this folder \(Permission denied\); choose")
    assert not (tmp_path / "new").exists()  # the folders it made for the run are gone again
    assert_refused(run("evaluate", graph, photos, "--csv", tmp_path / "f.csv"), r"f\.csv: cannot write in .*Permission")
    assert_refused(run("augment", "--recipe", "rapidocr-cls", "-o", tmp_path / "x.onnx"), r"cannot write in")


@pytest.mark.parametrize("option, value, pattern", [
    ("--std", ["0", "0", "0"], r"std is \[0\.0, 0\.0, 0\.0\]; a std of 0 divides by zero"),
    ("--scale", ["0"], r"scale is 0\.0; pixel values are divided by it"),
])
def test_augment_refuses_preprocessing_that_gives_nan(tmp_path, option, value, pattern):
    output = tmp_path / "x.onnx"
    assert_refused(run("augment", "--recipe", "rapidocr-cls", "-o", output, option, *value), pattern)
    assert not output.exists()


# -- numbers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_an_error_not_a_nan_map(graph, photos, bad):
    explainer = Explainer(graph, providers="cpu")
    batch, _ = load_batch([photos / "chelsea.png", photos / "coffee.png"], explainer.contract)
    batch[1, 0, 3, 4] = bad
    for method in ("gradcam", "gradcam++", "scorecam", "eigencam"):
        assert_api_refuses(lambda: explainer.explain(batch, method=method), r"input batch has [01] NaN and [01] infinite value\(s\) out of \d+ in image\(s\) 1; ")


def test_maps_of_extreme_images_are_finite_and_in_range(graph, tmp_path):
    """All-black, all-white and noise images through the CLI: every saved map finite, in [0, 1]."""
    import cv2

    folder = tmp_path / "extreme"
    folder.mkdir()
    cv2.imwrite(str(folder / "black.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(folder / "white.png"), np.full((64, 64, 3), 255, np.uint8))
    cv2.imwrite(str(folder / "noise.png"), np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    out = tmp_path / "out"
    methods = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam", "cam"]
    result = run("explain", graph, folder, "--out", out, "--save-maps", "--provider", "cpu",
                 *[arg for m in methods for arg in ("-m", m)])
    assert result.exit_code == 0, result.output
    maps = sorted(out.glob("*.npy"))
    assert len(maps) == 3 * len(methods)
    for path in maps:
        values = np.load(path)
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1, path.name


# -- native code, signals and processes: the real command in a subprocess ----------------------------------
def _onnxcam(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    return subprocess.run([*ONNXCAM, *map(str, args)], capture_output=True, env=env, timeout=300, **kwargs)


def test_native_decoders_print_nothing_and_non_utf8_names_work(graph, photos, tmp_path):
    """A truncated PNG makes libpng print its own error; a name that is not UTF-8 crashed OpenCV's
    path functions (exit 139). Both: one ``Error:`` line, or a normal run, from the real process."""
    odd = os.fsdecode(b"odd-\xff-name.png")
    (photos / odd).write_bytes(skimage_photo("coffee.png").read_bytes())
    out = tmp_path / "out"
    done = _onnxcam("explain", graph, photos, "--out", out, "--provider", "cpu")
    assert done.returncode == 0, done.stderr
    assert os.fsencode(out / "odd-\udcff-name.gradcam.png") in [os.fsencode(p) for p in out.iterdir()]
    assert b"odd-\\udcff-name.png: top" in done.stdout  # printable, and tells which file
    (photos / os.fsdecode(b"zz-\xfe.png")).write_bytes(truncated())
    out = tmp_path / "out2"
    done = _onnxcam("explain", graph, photos, "--out", out)
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode().splitlines() == [
        "Error: " + str(photos).encode("utf-8", "backslashreplace").decode() +
        "/zz-\\udcfe.png: not a readable image (truncated or corrupt PNG, JPEG, BMP, TIFF, WebP or GIF file); "
        "remove it or name the images one by one"]
    assert not out.exists()


def test_interrupt_exits_130_keeps_what_is_done_and_the_same_command_finishes(graph, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    data = skimage_photo("chelsea.png").read_bytes()
    for index in range(400):
        (folder / f"p{index:03d}.png").write_bytes(data)
    out = tmp_path / "out"
    command = [*ONNXCAM, "explain", str(graph), str(folder), "--out", str(out), "--batch-size", "1", "-m", "scorecam",
               "--provider", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               # as from a terminal: a shell's background job (CI's, say) starts with SIGINT
                               # ignored, and a child that inherits that rightly never sees the signal
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    process.stdout.readline()  # the first image is explained and in place
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.decode().strip().splitlines()[-1] == (f"Error: interrupted; the images finished are kept in {out}/; "
                                                        "run the same command again to finish")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert 1 <= len(rows) < 400
    assert sorted(p.name for p in out.glob("*.png")) == sorted(row["overlay"] for row in rows)
    assert not [p for p in files_under(out) if p.name.startswith(".")]  # no temporary, no lock left
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f"{len(rows)} done by an earlier run" in finished.stderr
    assert len(list(out.glob("*.png"))) == 400 == len((out / "results.jsonl").read_text().splitlines())


def test_concurrent_runs_into_one_folder(graph, photos, tmp_path):
    """Runs started at once into one folder: one holds the folder's lock, the others refuse in one line
    (or, started after it ended, find everything done); every file whole, every row once."""
    out = tmp_path / "out"
    for index in range(6):
        (photos / f"extra{index}.png").write_bytes(skimage_photo("astronaut.png").read_bytes())
    command = [*ONNXCAM, "explain", str(graph), str(photos), "--out", str(out), "--batch-size", "1", "--provider", "cpu"]
    runs = [subprocess.Popen(command + ["-m", "gradcam", "-m", "gradcam++"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [run_.communicate(timeout=300) + (run_.returncode,) for run_ in runs]
    assert any(code == 0 for _, _, code in results)
    for _, stderr, code in results:
        assert code == 0 or re.fullmatch(rf"Error: {re.escape(str(out))}: another onnxcam run \(process \d+\) is writing "
                                         r"into this folder; wait for it to finish, or choose another --out", stderr.strip()), stderr
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == 16 and not [p for p in files_under(out) if p.name.startswith(".")], written
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(row["overlay"] for row in rows) == written
    for path in out.glob("*.png"):
        assert load_image(path).shape == (48, 48, 3)


@pytest.fixture
def disk_full_after(monkeypatch):
    """``disk_full_after(k)``: from the ``k+1``-th file written on (``Path.write_bytes``/``write_text``,
    ``numpy.save``: every way the CLI writes), each write fails as on a full disk: half the bytes land, then
    ``OSError`` ENOSPC. Returns the list of files written to since."""
    import errno

    written, limit = [], [float("inf")]  # no failure until ``after`` is called

    def failing(write, first_half):
        def wrapper(target, data, *args, **kwargs):
            written.append(str(getattr(target, "name", target)))
            if len(written) > limit[0]:
                write(target, first_half(data), *args, **kwargs)
                raise OSError(errno.ENOSPC, "No space left on device", str(getattr(target, "name", target)))
            return write(target, data, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(Path, "write_bytes", failing(Path.write_bytes, lambda data: bytes(data)[:len(data) // 2]))
    monkeypatch.setattr(Path, "write_text", failing(Path.write_text, lambda text: text[:len(text) // 2]))
    monkeypatch.setattr(np, "save", failing(np.save, lambda array: np.asarray(array).ravel()[:1]))

    def after(count: int) -> list:
        limit[0] = count
        written.clear()
        return written

    return after


def assert_write_failed(result, name: str, kept: str = "nothing of this run was kept") -> None:
    """Exit 1, no traceback, and the last stderr line the only ``Error:`` line, naming the file as it was meant
    to be called (progress lines printed before the failure may precede it)."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], result.stderr
    assert re.fullmatch(rf"Error: \S*{re.escape(name)}: writing failed \(No space left on device\); {kept}; check the "
                        r"free disk space and the folder's permissions.*", lines[-1]), lines[-1]


EXPLAIN_KEPT = "the images finished before it are kept"


def test_a_write_that_fails_midway_keeps_whole_files_and_the_run_finishes_later(graph, photos, tmp_path,
                                                                                 disk_full_after):
    """Files are whole or absent: the third of four overlays fails halfway (a full disk). The run keeps the
    image it finished (its files and its rows), not the other's, no partial file; what was in the folder
    before is untouched;
    the same command, once there is space, finishes the run."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"from an earlier run")
    written = disk_full_after(2)
    one_writer = ("--batch-size", "1", "--workers", "1")  # files written in input order
    result = run("explain", graph, photos, "-m", "gradcam", "-m", "gradcam++", "--out", out, *one_writer)
    assert_write_failed(result, "out/coffee.gradcam.png", EXPLAIN_KEPT)  # chelsea's two, then coffee's first
    assert len(written) == 3
    assert sorted(p.name for p in files_under(out)) == ["chelsea.gradcam.png", "chelsea.gradcampp.png", "earlier.png",
                                                        "results.jsonl", "run.json"]
    assert (out / "earlier.png").read_bytes() == b"from an earlier run"
    assert [(row["name"], row["method"]) for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())] \
        == [("chelsea", "gradcam"), ("chelsea", "gradcam++")]
    disk_full_after(float("inf"))
    finished = run("explain", graph, photos, "-m", "gradcam", "-m", "gradcam++", "--out", out, *one_writer)
    assert finished.exit_code == 0 and "1 done by an earlier run" in finished.stderr
    assert len(list(out.glob("*.gradcam*.png"))) == 4
    disk_full_after(0)
    fresh = tmp_path / "fresh"
    assert_write_failed(run("explain", graph, photos, "--out", fresh), "fresh/chelsea.gradcam.png", EXPLAIN_KEPT)
    assert not fresh.exists()  # nothing was finished: the folder this run made is gone again
    assert_write_failed(run("features", graph, photos / "chelsea.png", "-o", tmp_path / "f.png"), "/f.png")
    assert_write_failed(run("evaluate", graph, photos, "--metric", "avg-drop", "--csv", tmp_path / "e.csv"),
                        "/e.csv")
    disk_full_after(1)  # the maps (.npy) too
    result = run("explain", graph, photos / "chelsea.png", "--save-maps", "--out", tmp_path / "maps")
    assert_write_failed(result, "maps/chelsea.gradcam.npy", EXPLAIN_KEPT)
    assert not (tmp_path / "maps").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photos"]
