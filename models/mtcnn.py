"""MTCNN face detection (Zhang et al. 2016, arXiv:1604.02878) with the pretrained weights that ship
inside the ``facenet-pytorch`` wheel (``facenet_pytorch/data/{p,r,o}net.pt``; install it with
``pip install --no-deps facenet-pytorch``: its metadata pins an old torch). Export side.

The cascade's last stage, ONet, scores each candidate box from a 48×48 crop; its face logit is
what keeps a box. ``ONetLogits`` is ONet up to that logit (``[N, 2]``: not face, face, before the
softmax), exported as a classifier explainer graph (``export_onet``), so that each detected face
is explained by Grad-CAM on its own crop (``runtime/detection/boxes.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

LAYER = "prelu3"  # ONet's last 8x8 feature map (48x48 crop), before its last pooling
SIZE = 48
LABELS = ["not face", "face"]
# facenet-pytorch's normalisation, (x - 127.5) / 128, as /255, mean, std
PREPROCESSING = {"size": [SIZE, SIZE], "resize": None, "mean": [0.5, 0.5, 0.5], "std": [128 / 255] * 3,
                 "channel_order": "RGB", "scale": 255.0}


def detector():
    """facenet-pytorch's MTCNN with its shipped weights, on the CPU, every face kept."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as error:
        raise ImportError(f"MTCNN needs facenet-pytorch ({error}); install it with "
                          "`pip install --no-deps facenet-pytorch` (and requests)") from None
    return MTCNN(keep_all=True, device="cpu").eval()


def detect_faces(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN's faces in an RGB ``uint8 [H, W, 3]`` image: boxes ``[F, 4]`` (x1, y1, x2, y2) and probabilities ``[F]``."""
    boxes, probabilities = detector().detect(image)
    if boxes is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return np.asarray(boxes, np.float32), np.asarray(probabilities, np.float32)


class ONetLogits(nn.Module):
    """ONet from a normalised 48×48 crop to its two class logits (facenet-pytorch's ``ONet.forward``
    without the softmax and the box and landmark heads)."""

    def __init__(self, onet: nn.Module):
        super().__init__()
        self.onet = onet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.onet
        x = net.pool1(net.prelu1(net.conv1(x)))
        x = net.pool2(net.prelu2(net.conv2(x)))
        x = net.pool3(net.prelu3(net.conv3(x)))
        x = net.prelu4(net.conv4(x)).permute(0, 3, 2, 1).contiguous()
        return net.dense6_1(net.prelu5(net.dense5(x.view(x.shape[0], -1))))


def export_onet(path: str | Path, layer: str = LAYER) -> dict:
    """Write the explainer graph of ONet's face logit (layers named inside ``ONetLogits``' ONet, e.g.
    ``prelu3``); returns its record."""
    from onnxcam.export import export_explainer

    model = ONetLogits(detector().onet).eval()
    return export_explainer(model, path, [f"onet.{layer}"], (2, 3, SIZE, SIZE), preprocessing=PREPROCESSING,
                            labels=LABELS, architecture="mtcnn_onet")
