"""Faithfulness metrics (runtime/metrics.py) and `onnxcam evaluate`.

Three kinds of oracle: cases small enough to work out by hand (a linear "model" in numpy),
pytorch-grad-cam 1.5.7's metric classes on the same torch model, photos and maps, and a
direct torch transcription of RISE's ``CausalMetric`` loop.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import skimage_photo
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime import metrics as M
from test_cli import assert_one_line_error, run, tiny  # noqa: F401  (tiny: the CLI tests' exported TinyNet)

PHOTOS = ("chelsea.png", "coffee.png")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def linear_two_class(images: np.ndarray) -> np.ndarray:
    """A 2-class "model": logits ``[Σ pixels, 0]``, so P(class 0) = sigmoid(Σ pixels)."""
    total = images.reshape(len(images), -1).sum(axis=1)
    return np.stack([total, np.zeros_like(total)], axis=1)


# --- hand-worked cases --------------------------------------------------------------------------

def test_average_drop_and_increase_by_hand():
    full = np.array([0.8, 0.5, 0.2, 0.4])
    explained = np.array([0.4, 0.6, 0.2, 0.1])
    # drops: (0.8-0.4)/0.8 = 50 %, none, none, (0.4-0.1)/0.4 = 75 %  → mean 31.25 %
    assert M.average_drop(full, explained).mean() == pytest.approx(31.25)
    # only the second image gains confidence (equal is not an increase)
    np.testing.assert_array_equal(M.increase_in_confidence(full, explained), [0, 100, 0, 0])


def test_auc_is_rise_trapezoid():
    assert M.auc(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert M.auc(np.array([1.0, 0.0])) == pytest.approx(0.5)
    np.testing.assert_allclose(M.auc(np.array([[0, 1, 1, 1, 1], [1, 0.5, 0, 0, 0]])), [3.5 / 4, 1 / 4])


def test_causal_steps_follow_rise():
    np.testing.assert_array_equal(M.causal_steps(10, 4), [0, 3, 6, 9, 10])  # step ceil(10/4) = 3
    counts = M.causal_steps(224 * 224, 224)
    assert len(counts) == 225 and counts[1] == 224 and counts[-1] == 224 * 224
    with pytest.raises(ValueError):
        M.causal_steps(10, 0)


def test_deletion_and_average_drop_on_a_linear_model_by_hand():
    image = np.array([[[4.0, 3.0], [2.0, 1.0]]], np.float32)  # [1, 2, 2], Σ = 10
    map_ = np.array([[0.2, 1.0], [0.5, 0.0]], np.float32)     # order: 3, 2, 4, 1
    # deletion, one pixel per step: sums 10, 7, 5, 1, 0
    expected = (sigmoid(10) / 2 + sigmoid(7) + sigmoid(5) + sigmoid(1) + sigmoid(0) / 2) / 4
    results = M.evaluate_maps(linear_two_class, image[None], map_[None], np.array([0]),
                              metrics=["deletion", "avg-drop", "increase"], steps=4)
    assert results["deletion"][0] == pytest.approx(expected)
    # two pixels per step: sums 10, 5, 0
    two = M.evaluate_maps(linear_two_class, image[None], map_[None], np.array([0]), metrics=["deletion"], steps=2)
    assert two["deletion"][0] == pytest.approx((sigmoid(10) / 2 + sigmoid(5) + sigmoid(0) / 2) / 2)
    # map ⊙ image: 0.8 + 3 + 1 + 0 = 4.8
    assert results["avg-drop"][0] == pytest.approx(100 * (sigmoid(10) - sigmoid(4.8)) / sigmoid(10))
    assert results["increase"][0] == 0
    # class 1's probability rises when class 0's falls
    other = M.evaluate_maps(linear_two_class, image[None], map_[None], np.array([1]), metrics=["avg-drop", "increase"])
    assert other["avg-drop"][0] == 0 and other["increase"][0] == 100


def test_insertion_starts_from_the_blurred_image():
    image = np.zeros((1, 3, 3), np.float32)
    image[0, 1, 1] = 9.0
    map_ = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0.5]], np.float32)
    blurred = M.rise_blur(image[None])[0]
    start = float(blurred.sum())
    # step 1 inserts the centre (9 replaces its blurred value), step 2 the corner (0 replaces its blurred value) …
    after_centre = start - blurred[0, 1, 1] + 9
    after_corner = after_centre - blurred[0, 2, 2]
    curve = M.causal_curve(linear_two_class, blurred, image, map_, 0, steps=9)
    np.testing.assert_allclose(curve[:3], [sigmoid(start), sigmoid(after_centre), sigmoid(after_corner)], rtol=1e-6)
    assert curve[-1] == pytest.approx(sigmoid(9.0))
    result = M.evaluate_maps(linear_two_class, image[None], map_[None], np.array([0]), metrics=["insertion"], steps=9)
    assert result["insertion"][0] == pytest.approx(M.auc(curve))


def test_rise_blur_is_an_11x11_gaussian_of_sigma_5_with_zero_padding():
    delta = np.zeros((1, 1, 21, 21), np.float32)
    delta[0, 0, 10, 10] = 1
    offsets = np.arange(-5, 6)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * 25.0))
    kernel /= kernel.sum()
    blurred = M.rise_blur(delta)[0, 0]
    np.testing.assert_allclose(blurred[5:16, 5:16], kernel, atol=1e-7)
    assert blurred[:5].max() == 0 and blurred[:, 16:].max() == 0
    ones = M.rise_blur(np.ones((1, 1, 21, 21), np.float32))[0, 0]
    assert ones[10, 10] == pytest.approx(1.0, abs=1e-6)
    assert ones[0, 0] == pytest.approx(kernel[5:, 5:].sum(), abs=1e-6)  # the rest falls on the zero padding


def test_road_pixels_follow_pytorch_grad_cam_percentiles():
    map_ = (np.arange(10, dtype=np.float32) / 9).reshape(2, 5)
    # MoRF at the 80th percentile removes the top 20 %, LeRF the bottom 20 %
    np.testing.assert_array_equal(M.road_imputed_pixels(map_, 80, True).ravel(), [0] * 8 + [1] * 2)
    np.testing.assert_array_equal(M.road_imputed_pixels(map_, 80, False).ravel(), [1] * 2 + [0] * 8)
    assert M.road_imputed_pixels(map_, 10, True).sum() == 9


def test_linear_imputation_by_hand():
    row = np.array([[[2.0, 0.0, 6.0]]], np.float32)  # one channel, 1 × 3: only left/right neighbours exist
    np.testing.assert_allclose(M.noisy_linear_imputation(row, np.array([[0, 1, 0]], bool), noise=0)[0, 0, 1], 4.0)
    block = np.arange(9, dtype=np.float32).reshape(1, 3, 3) ** 2  # centre: edges weigh 1/6, corners 1/12
    centre = (1 + 9 + 25 + 49) / 6 + (0 + 4 + 36 + 64) / 12
    missing = np.zeros((3, 3), bool)
    missing[1, 1] = True
    np.testing.assert_allclose(M.noisy_linear_imputation(block, missing, noise=0)[0, 1, 1], centre, rtol=1e-6)
    # a plane is reproduced exactly inside the image, on each channel; known pixels are untouched
    y, x = np.mgrid[0:12, 0:12].astype(np.float32)
    planes = np.stack([2 * y - x + 1, 0.5 * x + 3])
    holes = np.zeros((12, 12), bool)
    holes[2:9, 3:10] = True
    holes[5, 1] = True
    filled = M.noisy_linear_imputation(planes, holes, noise=0)
    np.testing.assert_allclose(filled, planes, atol=1e-5)
    # noise: N(0, 0.01²) on the imputed pixels only
    noisy = M.noisy_linear_imputation(planes, holes, noise=0.01, rng=np.random.default_rng(0))
    assert np.array_equal(noisy[:, ~holes], planes[:, ~holes])
    assert np.std(noisy[:, holes] - planes[:, holes]) == pytest.approx(0.01, rel=0.15)


def test_box_mass_shares_by_hand():
    maps = np.zeros((2, 4, 6))
    maps[0] = 1.0  # uniform: shares are areas / 24
    maps[1, 0, 0], maps[1, 3, 5] = 3.0, 1.0
    boxes = [(0, 0, 2, 3), (2, 3, 4, 6)]
    np.testing.assert_allclose(M.box_mass_shares(maps, boxes), [[6 / 24, 6 / 24], [0.75, 0.25]])
    np.testing.assert_array_equal(M.box_mass_shares(np.zeros((1, 4, 6)), boxes), [[0, 0]])


def test_unknown_metric_and_mis_sized_maps():
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        M.check_metrics(["deletion", "auc"])
    assert M.check_metrics(["ROAD", "deletion", "road"]) == ("deletion", "road")
    with pytest.raises(ValueError, match="do not fit"):
        M.evaluate_maps(linear_two_class, np.zeros((2, 1, 3, 3)), np.zeros((2, 4, 4)), np.zeros(2, int))


# --- against pytorch-grad-cam and RISE on the same model, photos and maps --------------------

@pytest.fixture(scope="module")
def setting(zoo):
    """A random-weight ResNet-18 (torch and its explainer graph), two real photos, their Grad-CAM++ maps."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch, _ = load_batch([skimage_photo(name) for name in PHOTOS], explainer.contract)
    result = explainer.explain(batch, method="gradcam++")
    return model, explainer, batch, result.maps, result.targets


def torch_probabilities(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(images))), dim=1).double().numpy()


def softmax_targets(targets):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]


def test_probabilities_agree_within_float32(setting):
    """The tolerance the comparisons below use: onnxruntime vs torch on the same float32 inputs."""
    model, explainer, batch, maps, targets = setting
    ours = M.class_scores(explainer.logits, batch, targets)
    theirs = torch_probabilities(model, batch)[np.arange(len(batch)), targets]
    assert np.abs(ours - theirs).max() <= 1e-5 * theirs.max()


def test_average_drop_and_increase_match_cam_mult_image(setting):
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange

    model, explainer, batch, maps, targets = setting
    ours = M.evaluate_maps(explainer.logits, batch, maps, targets, metrics=["avg-drop", "increase"])
    change = CamMultImageConfidenceChange()(torch.from_numpy(batch), maps, softmax_targets(targets), model)  # O − Y
    full = torch_probabilities(model, batch)[np.arange(len(batch)), targets]
    # probabilities agree to ~1e-5 relative, so the % drop to ~1e-3 points
    np.testing.assert_allclose(ours["avg-drop"], 100 * np.maximum(0, -change) / full, atol=1e-2)
    assert (np.abs(change) > 1e-4 * full).all()  # no image sits on the fence, so the indicator must agree
    np.testing.assert_array_equal(ours["increase"], 100 * (change > 0))


@pytest.fixture
def noiseless_road(monkeypatch):
    """pytorch-grad-cam's ROAD with its imputation noise off (it draws from torch's RNG, which numpy cannot replay)."""
    from pytorch_grad_cam.metrics import road

    class Noiseless(road.NoisyLinearImputer):
        def __init__(self, noise: float = 0.0, weighting=road.neighbors_weights):
            super().__init__(noise=0.0, weighting=weighting)

    monkeypatch.setattr(road, "NoisyLinearImputer", Noiseless)
    return road


def test_road_matches_pytorch_grad_cam(setting, noiseless_road):
    road = noiseless_road
    model, explainer, batch, maps, targets = setting
    tensor, wanted = torch.from_numpy(batch), softmax_targets(targets)
    percentiles = [20, 50, 80]
    ours = [M.road_scores(explainer.logits, batch[i], maps[i], int(targets[i]), percentiles, noise=0.0)
            for i in range(len(batch))]
    combined = road.ROADCombined(percentiles=percentiles)(tensor, maps, wanted, model)
    # differences of probabilities that agree to 1e-5 relative, on identical imputed images (float64 solve)
    tolerance = 1e-5 * torch_probabilities(model, batch).max()
    np.testing.assert_allclose([o["road"] for o in ours], combined, atol=tolerance)
    # each direction on its own, at one percentile
    ours_80 = [M.road_scores(explainer.logits, batch[i], maps[i], int(targets[i]), [80], noise=0.0)
               for i in range(len(batch))]
    morf = road.ROADMostRelevantFirst(percentile=80)(tensor, maps, wanted, model)
    lerf = road.ROADLeastRelevantFirst(percentile=80)(tensor, maps, wanted, model)
    np.testing.assert_allclose([o["road-morf"] for o in ours_80], morf, atol=tolerance)
    np.testing.assert_allclose([o["road-lerf"] for o in ours_80], lerf, atol=tolerance)
    assert np.abs(morf).max() > 100 * tolerance and np.abs(combined).max() > 100 * tolerance  # not zeros


def test_imputed_images_equal_pytorch_grad_cams(setting, noiseless_road):
    road = noiseless_road
    _, _, batch, maps, _ = setting
    for most_relevant, percentile in ((True, 30), (False, 70)):
        missing = M.road_imputed_pixels(maps[0], percentile, most_relevant)
        remover = (road.RemoveMostRelevantFirst if most_relevant else road.RemoveLeastRelevantFirst)(
            percentile, road.NoisyLinearImputer())
        theirs = remover(torch.from_numpy(batch[0]), torch.from_numpy(maps[0])).numpy()
        np.testing.assert_allclose(M.noisy_linear_imputation(batch[0], missing, noise=0), theirs, atol=1e-5)
        assert np.abs(theirs - batch[0]).max() > 0.1


def rise_causal_metric(model, image: torch.Tensor, explanation: np.ndarray, mode: str, step: int) -> np.ndarray:
    """RISE's ``CausalMetric.single_run`` (github.com/eclique/RISE, evaluation.py), transcribed: the softmax
    probability of the top class as pixels are deleted (to 0) or inserted (into the blurred image) in order of
    decreasing saliency. Ties are ordered as ours (stable), RISE's flip of argsort reverses them."""
    _, channels, height, width = image.shape
    pixels = height * width
    n_steps = (pixels + step - 1) // step
    if mode == "del":
        start, finish = image.clone(), torch.zeros_like(image)
    else:
        start, finish = torch.from_numpy(M.rise_blur(image.numpy())), image.clone()
    with torch.no_grad():
        top = int(model(image).argmax())
    order = np.argsort(-explanation.reshape(-1, pixels), axis=1, kind="stable")
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = torch.softmax(model(start), dim=1)[0, top].item()
        if i < n_steps:
            coords = order[:, step * i:step * (i + 1)]
            start.view(1, channels, pixels)[0, :, coords] = finish.view(1, channels, pixels)[0, :, coords]
    return scores


def test_deletion_and_insertion_match_rise(setting):
    model, explainer, batch, maps, targets = setting
    image = batch[:1]
    step = 400  # 64 steps over 160 × 160
    ours = M.evaluate_maps(explainer.logits, image, maps[:1], targets[:1], metrics=["deletion", "insertion"],
                           steps=64)
    for metric, mode in (("deletion", "del"), ("insertion", "ins")):
        curve = rise_causal_metric(model, torch.from_numpy(image.copy()), maps[0], mode, step)
        assert len(curve) == 65
        assert ours[metric][0] == pytest.approx(M.auc(curve), abs=1e-5 * curve.max())
    assert ours["insertion"][0] > ours["deletion"][0]  # even a random net: its top class needs the salient pixels


# --- the CLI ------------------------------------------------------------------------------------

@pytest.fixture
def photo_paths():
    return [skimage_photo(name) for name in PHOTOS]


def test_evaluate_prints_a_table_and_writes_csv_and_json(tiny, photo_paths, tmp_path):  # noqa: F811
    import csv

    table_csv, table_json = tmp_path / "out" / "faith.csv", tmp_path / "faith.json"
    result = run("evaluate", tiny, *photo_paths, "-m", "gradcam", "-m", "GradCAM++", "--steps", "16",
                 "--csv", table_csv, "--json", table_json)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split("|")[1].strip() == "method" and "avg-drop" in lines[0] and "road" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:4]] == ["gradcam", "gradcam++"]
    rows = list(csv.DictReader(table_csv.open()))
    assert [row["method"] for row in rows] == ["gradcam", "gradcam++"]
    assert set(rows[0]) == {"method", "images", *M.METRICS}
    record = json.loads(table_json.read_text())
    assert record["images"] == [str(p) for p in photo_paths] and record["steps"] == 16
    # the figures are the metrics of the maps Explainer makes, image by image
    explainer = Explainer(tiny, providers="cpu")
    batch, _ = load_batch(photo_paths, explainer.contract)
    explanation = explainer.explain(batch, method="gradcam++")
    expected = M.evaluate_maps(explainer.logits, batch, explanation.maps, explanation.targets,
                               metrics=["avg-drop", "deletion", "road"], steps=16, seed=0)
    per_image = record["methods"]["gradcam++"]["per_image"]
    for metric in ("avg-drop", "deletion", "road"):
        np.testing.assert_allclose(per_image[metric], expected[metric], rtol=1e-6, atol=1e-9)
        assert float(rows[1][metric]) == pytest.approx(np.mean(expected[metric]), rel=1e-4, abs=1e-9)
        assert record["methods"]["gradcam++"]["mean"][metric] == pytest.approx(np.mean(expected[metric]))
    assert not list(tmp_path.rglob("*.partial*"))


def test_evaluate_chosen_metrics_only(tiny, photo_paths, tmp_path):  # noqa: F811
    result = run("evaluate", tiny, photo_paths[0], "--metric", "deletion", "--metric", "increase", "--steps", "8",
                 "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    header = [cell.strip() for cell in result.stdout.splitlines()[0].split("|")[1:-1]]
    assert header == ["method", "increase", "deletion"]
    assert set(json.loads((tmp_path / "f.json").read_text())["methods"]["gradcam"]["mean"]) == {"increase", "deletion"}


@pytest.mark.parametrize("arguments, message", [
    (["-m", "nosuchcam"], r"unknown method 'nosuchcam'"),
    (["--metric", "auc"], r"unknown metric 'auc'"),
    (["-m", "gradcam", "-m", "cam", "--layer", "features.0"], r"layer 'features.0' is not explained"),
])
def test_evaluate_bad_input_writes_nothing(tiny, photo_paths, tmp_path, arguments, message):  # noqa: F811
    out = tmp_path / "out"
    result = run("evaluate", tiny, *photo_paths, *arguments, "--csv", out / "f.csv", "--json", out / "f.json")
    assert_one_line_error(result, message)
    assert not out.exists()


def test_evaluate_steps_must_be_positive(tiny, photo_paths, tmp_path):  # noqa: F811
    result = run("evaluate", tiny, *photo_paths, "--steps", "0", "--csv", tmp_path / "f.csv")
    assert result.exit_code == 2 and "--steps" in result.output  # click's usage error
    assert not (tmp_path / "f.csv").exists()


def test_evaluate_not_an_image_writes_nothing(tiny, tmp_path):  # noqa: F811
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    result = run("evaluate", tiny, broken, "--csv", tmp_path / "f.csv")
    assert_one_line_error(result, r"broken\.jpg: not a readable image")
    assert not (tmp_path / "f.csv").exists()


def test_road_without_scipy_is_one_line_and_the_rest_still_runs(tiny, photo_paths, tmp_path, monkeypatch):  # noqa: F811
    for name in ("scipy", "scipy.sparse", "scipy.sparse.linalg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    result = run("evaluate", tiny, photo_paths[0], "--csv", tmp_path / "f.csv")
    assert_one_line_error(result, r"scipy.*pip install scipy")
    assert not (tmp_path / "f.csv").exists()
    result = run("evaluate", tiny, photo_paths[0], "--metric", "avg-drop", "--metric", "insertion", "--steps", "4")
    assert result.exit_code == 0, result.output
