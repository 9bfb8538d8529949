"""A real pretrained detector, offline: MTCNN's weights from the facenet-pytorch wheel, its face on
astronaut.png explained by Grad-CAM on ONet's face logit for the box's crop; the map equals
pytorch-grad-cam's on the same crop and the same torch network, and it lies on the face."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from conftest import skimage_photo
from onnxcam.models import mtcnn
from onnxcam.runtime import Explainer
from onnxcam.runtime.detection.boxes import explain_boxes
from onnxcam.runtime.image import load_image
from tolerances import assert_two_tier

FACE = 1


@pytest.fixture(scope="module")
def onet(tmp_path_factory):
    try:
        import facenet_pytorch  # noqa: F401
    except ImportError:
        pytest.fail("facenet-pytorch missing: run `make install` (pip install --no-deps facenet-pytorch requests)",
                    pytrace=False)
    path = tmp_path_factory.mktemp("mtcnn") / "onet.onnx"
    mtcnn.export_onet(path)
    return Explainer(path, providers="cpu"), mtcnn.ONetLogits(mtcnn.detector().onet).eval()


def oracle(model, crops: np.ndarray, method, double: bool = False) -> np.ndarray:
    import copy

    net = copy.deepcopy(model).double() if double else model
    tensor = torch.from_numpy(crops).double() if double else torch.from_numpy(crops)
    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[method]
    with cam_class(net, [net.onet.prelu3]) as cam:
        return cam(tensor, targets=[ClassifierOutputTarget(FACE)] * len(crops))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_astronaut_face_explained_like_pytorch_grad_cam(onet, method):
    explainer, model = onet
    image = load_image(skimage_photo("astronaut.png"))
    boxes, probabilities = mtcnn.detect_faces(image)
    assert len(boxes) == 1 and probabilities[0] > 0.99  # Eileen Collins, around (181, 62)–(268, 172)
    assert np.abs(boxes[0] - [181, 62, 268, 172]).max() < 3
    explained = explain_boxes(explainer, image, boxes, method=method, targets=FACE)
    assert explained.targets.tolist() == [FACE] and explained.maps.shape == (1, 48, 48)
    with torch.no_grad():
        logits = model(torch.from_numpy(explained.crops)).numpy()
    assert logits[0].argmax() == FACE and np.isclose(explained.scores[0], logits[0, FACE], atol=1e-4)
    assert_two_tier(explained.maps, oracle(model, explained.crops, method),
                    lambda: oracle(model, explained.crops, method, double=True), what=f"mtcnn {method}")
    on_image = explained.on_image[0]
    x1, y1, x2, y2 = explained.windows[0]
    outside = on_image.copy()
    outside[y1:y2, x1:x2] = 0
    assert not outside.any() and on_image[y1:y2, x1:x2].max() > 0.9
