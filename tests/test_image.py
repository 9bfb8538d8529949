"""Image loading, preprocessing and overlays, on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pytorch_grad_cam.utils.image import show_cam_on_image

from conftest import skimage_photo
from onnxcam.runtime.contract import default_preprocessing
from onnxcam.runtime.image import ImageError, fit_to_input, load_image, overlay, to_tensor


def test_load_image_is_rgb():
    image = load_image(skimage_photo("coffee.png"))
    assert image.dtype == np.uint8 and image.shape == (400, 600, 3)
    bgr = cv2.imread(str(skimage_photo("coffee.png")))
    np.testing.assert_array_equal(image, bgr[..., ::-1])


def test_grey_photo_becomes_three_channels():
    image = load_image(skimage_photo("coins.png"))
    assert image.shape[2] == 3 and (image[..., 0] == image[..., 1]).all()


def test_not_an_image(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("hello")
    with pytest.raises(ImageError, match="notes.png: not a readable image"):
        load_image(fake)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")


def test_resize_and_centre_crop_then_normalise():
    image = load_image(skimage_photo("chelsea.png"))  # 300 x 451
    preprocessing = dict(default_preprocessing((224, 224)), resize=256)
    view = fit_to_input(image, preprocessing)
    assert view.shape == (224, 224, 3)
    resized = cv2.resize(image, (385, 256), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(view, resized[16:240, 80:304])
    tensor = to_tensor(view, preprocessing)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    expected_red = (view[..., 0] / 255.0 - 0.485) / 0.229
    np.testing.assert_allclose(tensor[0], expected_red, rtol=1e-5, atol=1e-5)


def test_overlay_matches_show_cam_on_image():
    image = fit_to_input(load_image(skimage_photo("astronaut.png")), default_preprocessing((128, 128)))
    image[0, 0] = 255  # a white pixel under a saturated heatmap channel: show_cam_on_image's max is then 1
    yy, xx = np.mgrid[0:128, 0:128]
    heat = np.exp(-((yy - 40) ** 2 + (xx - 90) ** 2) / 800.0).astype(np.float32)
    heat[0, 0] = 0.4
    ours = overlay(image, heat, alpha=0.5)
    theirs = show_cam_on_image(image.astype(np.float32) / 255, heat, use_rgb=True, image_weight=0.5)
    assert ours.dtype == np.uint8 and ours.shape == image.shape
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_overlay_resizes_the_map_and_accepts_float_images():
    image = np.full((64, 96, 3), 0.5, np.float32)
    blended = overlay(image, np.zeros((8, 12), np.float32), colormap="jet", alpha=1.0)
    assert blended.shape == (64, 96, 3)
    np.testing.assert_array_equal(blended[0, 0], [0, 0, 128])  # jet at 0 is dark blue (RGB)
    with pytest.raises(ValueError, match="float image"):
        overlay(np.full((4, 4, 3), 2.0), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.zeros((8, 12)), alpha=1.5)
