"""The Node.js example (examples/node/explain.js) end to end: a baked EfficientNet-Lite0 file run by
onnxruntime-node on a real photo prints the top class and writes the overlay that Python's onnxruntime
gives for the same file and pixels; a photo of another size is one line, exit 1, no file.

The file is baked for chelsea's own size (300x451), so its in-graph resize and centre crop run in
both. Node's onnxruntime (1.30, pinned in examples/node) and Python's may differ in version, so the
overlay may differ by a grey level where a float lands on a rounding boundary (measured: 0 here).

Needs node and examples/node/node_modules (npm); without them the tests fail, saying how to install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from conftest import skimage_photo
from onnxcam.runtime.cli import main
from onnxcam.runtime.image import load_image

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
INSTALL = "run `make install` (or: apt-get install -y nodejs npm; npm ci --prefix examples/node)"
CATS = range(281, 286)  # ImageNet's domestic cats: tabby … Egyptian cat
SUMMARY = re.compile(r": top (\d+) '([^']*)' p=([0-9.]+) score=(\S+)$")


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def node(*args) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("node"), str(EXAMPLE / "explain.js"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def installed():
    """Fail (never skip) at once without node or examples/node/node_modules, saying how to install them."""
    missing = [what for what, present in (
        ("node", shutil.which("node")),
        ("examples/node/node_modules", all((EXAMPLE / "node_modules" / name).is_dir()
                                           for name in ("onnxruntime-node", "pngjs"))))
               if not present]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: {INSTALL}", pytrace=False)


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    """EfficientNet-Lite0 baked for raw 300x451 RGB images with an overlay, and its record (labels)."""
    folder = tmp_path_factory.mktemp("node")
    explainer = folder / "efficientnet_lite0.onnx"
    result = run("export", "efficientnet_lite0", "-o", explainer)
    assert result.exit_code == 0, result.output
    result = run("bake", explainer, "-m", "gradcam", "--raw-image", "--raw-size", "300x451", "--overlay",
                 "-o", folder / "baked.onnx")
    assert result.exit_code == 0, result.output
    result = run("info", "--json", folder / "baked.onnx")
    assert result.exit_code == 0, result.output
    (folder / "record.json").write_text(result.output)
    return folder


def test_node_explains_like_python(baked, tmp_path):
    photo = skimage_photo("chelsea.png")
    out = tmp_path / "chelsea.overlay.png"
    result = node(baked / "baked.onnx", photo, out, baked / "record.json")
    assert result.returncode == 0, result.stderr
    found = SUMMARY.search(result.stdout.splitlines()[0])
    assert found, result.stdout
    top, label, probability = int(found[1]), found[2], float(found[3])

    image = load_image(photo)  # PNG is lossless: the pixels pngjs gave node
    assert image.shape == (300, 451, 3)
    session = ort.InferenceSession(str(baked / "baked.onnx"), providers=["CPUExecutionProvider"])
    outputs = dict(zip((o.name for o in session.get_outputs()), session.run(None, {"image": image[None]})))
    logits = outputs["logits"][0]
    assert top == int(logits.argmax()) == int(outputs["targets"][0, 0]) and top in CATS, result.stdout
    assert "cat" in label, label  # from record.json's explainer.labels
    expected_probability = np.exp(logits[top] - logits.max()) / np.exp(logits - logits.max()).sum()
    assert abs(probability - expected_probability) <= 1e-3, (probability, expected_probability)
    assert float(found[4]) == pytest.approx(float(outputs["scores"][0, 0]), rel=1e-3)

    written = load_image(out)
    expected = outputs["overlay"][0, 0]
    assert written.shape == expected.shape == (224, 224, 3)
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


def test_wrong_size_is_one_line_and_no_file(baked, tmp_path):
    out = tmp_path / "coffee.overlay.png"
    result = node(baked / "baked.onnx", skimage_photo("coffee.png"), out)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "400x600" in lines[0] and "--raw-size 400x600" in lines[0], lines[0]
    assert result.stdout == "" and not out.exists()
