"""A bare ONNX file with a map output: PP-OCR's DBNet text detector inside ``rapidocr-onnxruntime``.

``onnxcam augment`` explains its probability map ``[N, 1, H, W]`` (after the Sigmoid), here the
"text here" score of a region (``output`` target: the sum of the map over the region) on a
rendered text image. Checked against central finite differences of the untouched file's tail
(so the new ConvTranspose and nearest-Resize rules on the path are checked on a real model),
and LayerCAM, which keeps the gradient's locality, lights the chosen word, not the other one.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from onnxcam.export.augment import augment
from onnxcam.runtime import Explainer, OutputTarget, load_batch
from onnxcam.runtime.cli import main
from test_augment import json_record, tail_session

SIZE = (96, 320)  # DBNet takes multiples of 32
WORDS = {"onnxcam": ((10, 40), (10, 50, 5, 150)), "explains": ((170, 80), (50, 90, 160, 310))}  # origin, box


def region(box) -> str:
    top, bottom, left, right = box
    return f"0,{top}:{bottom},{left}:{right}"


@pytest.fixture(scope="module")
def detector():
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    return Path(rapidocr.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"


@pytest.fixture(scope="module")
def text_image(tmp_path_factory):
    image = np.full((*SIZE, 3), 255, np.uint8)
    for word, (origin, _) in WORDS.items():
        cv2.putText(image, word, origin, cv2.FONT_HERSHEY_SIMPLEX, 1.1, (0, 0, 0), 2, cv2.LINE_AA)
    path = tmp_path_factory.mktemp("dbnet") / "words.png"
    cv2.imwrite(str(path), image)
    return path


@pytest.mark.parametrize("layer", ["p2o.Add.259", None])  # before the neck's nearest Resize; the default
def test_region_gradients_match_finite_differences(detector, text_image, tmp_path, layer):
    result = augment(detector, tmp_path / "dbnet.onnx", layer=layer, size=SIZE)
    assert result.record["output"]["shape"] == [1, *SIZE] and "sigmoid" in result.score
    explainer = Explainer(tmp_path / "dbnet.onnx", providers="cpu")
    batch, _ = load_batch([text_image], explainer.contract)
    probabilities = explainer.forward(batch)[0, 0]
    for _, (top, bottom, left, right) in WORDS.values():
        assert probabilities[top:bottom, left:right].max() > 0.9  # the detector sees both words
    target = OutputTarget(region(WORDS["explains"][1]))
    names = ["activation_0", "gradient_0", "target_score"]
    out = explainer.run(batch, target, names)
    activation, gradient = out["activation_0"], out["gradient_0"]
    info = json_record(explainer)["augment"]
    tail = tail_session(detector, info["layer_tensor"], info["logits_tensor"])
    feeds = {i.name: batch for i in tail.get_inputs() if i.name == info["source_input"]}
    top, bottom, left, right = WORDS["explains"][1]

    def score(layer_value: np.ndarray) -> float:
        probability = tail.run(None, {**feeds, info["layer_tensor"]: layer_value.astype(np.float32)})[0]
        return float(probability[0, 0, top:bottom, left:right].astype(np.float64).sum())

    np.testing.assert_allclose(score(activation), out["target_score"][0], rtol=1e-5)
    assert np.abs(gradient).max() > 0
    rng = np.random.default_rng(0)
    directions = [gradient / np.abs(gradient).max()] + [rng.standard_normal(activation.shape) for _ in range(3)]
    for direction in directions:  # directional derivatives: the gradient's own direction, three random ones
        exact = float((gradient.astype(np.float64) * direction).sum())
        errors = []
        # two steps: the larger can cross a ReLU kink, the smaller suffers from float32 rounding (measured:
        # ≤ 0.8% at the better of the two); a wrong gradient (layout, rule, routing) fails at both
        for relative_step in (1e-3, 1e-4):
            step = relative_step * np.abs(activation).max()
            finite = (score(activation + step * direction) - score(activation - step * direction)) / (2 * step)
            errors.append(abs(finite - exact) / abs(exact))
        assert min(errors) <= 3e-2, (exact, errors)


def test_layercam_lights_the_chosen_word(detector, text_image, tmp_path):
    augment(detector, tmp_path / "dbnet.onnx", layer="p2o.Concat.1", size=SIZE)
    explainer = Explainer(tmp_path / "dbnet.onnx", providers="cpu")
    batch, _ = load_batch([text_image], explainer.contract)
    for word, (_, box) in WORDS.items():
        other = next(b for w, (_, b) in WORDS.items() if w != word)
        maps = explainer.explain(batch, method="layercam", targets=OutputTarget(region(box))).maps[0]
        inside, outside = (maps[b[0]:b[1], b[2]:b[3]].mean() for b in (box, other))
        assert inside > 0.02 and outside < 0.1 * inside, (word, inside, outside)


def test_cli_explains_a_region(detector, text_image, tmp_path):
    augmented = tmp_path / "dbnet.onnx"
    runner = CliRunner()
    made = runner.invoke(main, ["augment", str(detector), "-o", str(augmented), "--size", *map(str, SIZE),
                                "--layer", "p2o.Concat.1"], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    assert "output [1, 96, 320]: sigmoid output" in made.output
    out = tmp_path / "maps"
    result = runner.invoke(main, ["explain", str(augmented), str(text_image), "-m", "layercam", "-t",
                                  f"output:{region(WORDS['onnxcam'][1])}", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "words.png: explained 'output[0,10:50,5:150]' score=" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["words.layercam.png"]
    refused = runner.invoke(main, ["explain", str(augmented), str(text_image), "-t", "class:3", "--out",
                                   str(tmp_path / "no")], catch_exceptions=False)
    assert refused.exit_code == 1 and "'class' needs a [N, classes] output" in refused.stderr
    assert not (tmp_path / "no").exists()
