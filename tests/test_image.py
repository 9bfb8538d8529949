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


# -- bounded reading: reduced decoding, long strips, the pixel limit ------------------------------------
def test_sampling_only_the_crop_matches_resize_then_crop():
    """``crop_resized`` (used for long strips) samples cv2.resize's bilinear mapping directly: within
    one grey level of resizing the whole photo and cropping (fixed-point rounding differs)."""
    from onnxcam.runtime.image import crop_resized

    for name in ("chelsea.png", "astronaut.png", "coffee.png"):
        image = load_image(skimage_photo(name))
        h, w = image.shape[:2]
        for shorter, size in ((256, 224), (100, 64)):
            scale = shorter / min(h, w)
            new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
            top, left = (new_h - size) // 2, (new_w - size) // 2
            expected = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)[top:top + size, left:left + size]
            got = crop_resized(image, (new_h, new_w), (top, left), (size, size))
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, (name, shorter)


def test_a_long_strip_is_cropped_before_it_is_resized(tmp_path):
    """A 1 × 20000 strip with resize 256: the old path made a 256 × 5,120,000 image (4 GB). The view
    now equals a numpy transcription of the bilinear resize on the kept window, and the process
    stays small."""
    import subprocess
    import sys

    strip = np.random.default_rng(0).integers(0, 256, (1, 20000, 3), dtype=np.uint8)
    path = tmp_path / "strip.png"
    cv2.imwrite(str(path), strip[..., ::-1])
    preprocessing = {**default_preprocessing((224, 224)), "resize": 256}
    view = fit_to_input(load_image(path), preprocessing)
    new_w = round(20000 * 256)  # the shorter side (1) goes to 256
    left = (new_w - 224) // 2
    x = (np.arange(224) + left + 0.5) * 20000 / new_w - 0.5
    expected = np.stack([np.interp(x, np.arange(20000), strip[0, :, c].astype(np.float64)) for c in range(3)], -1)
    assert view.shape == (224, 224, 3)
    assert np.abs(view.astype(float) - expected[None]).max() <= 1.0
    probe = ("import re, sys; from onnxcam.runtime.image import load_image, fit_to_input; "
             "from onnxcam.runtime.contract import default_preprocessing as d; "
             "fit_to_input(load_image(sys.argv[1]), {**d((224, 224)), 'resize': 256}); "
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])")  # this process's peak
    peak_kb = int(subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True,
                                 check=True).stdout)
    assert peak_kb < 600_000, f"peak {peak_kb / 1e6:.2f} GB"  # the old path peaked at 4.25 GB


def test_images_far_larger_than_the_input_are_decoded_smaller(tmp_path):
    """A 4000 × 3000 JPEG for a 224 model (resize 256: 341 × 256 needed) decodes at 1/8 (500 × 375, still
    more than needed per side), and the model's view is closer to torchvision's resize (Pillow's
    antialiased bilinear of the full image) than full decoding then ``cv2.resize`` is: JPEG's scaled
    decoding averages where a bilinear downscale by 12 skips pixels."""
    from PIL import Image

    photo = cv2.resize(load_image(skimage_photo("astronaut.png")), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    preprocessing = {**default_preprocessing((224, 224)), "resize": 256}
    reduced = load_image(path, preprocessing)
    full = load_image(path)
    assert full.shape == (3000, 4000, 3) and reduced.shape == (375, 500, 3)
    resized = np.asarray(Image.fromarray(full).resize((341, 256), Image.BILINEAR))
    torchvision_view = resized[16:240, 58:282].astype(float)  # the centre 224 x 224, as fit_to_input cuts it
    errors = {name: np.abs(fit_to_input(image, preprocessing) - torchvision_view).mean()
              for name, image in (("reduced", reduced), ("full", full))}
    assert errors["reduced"] < errors["full"] and errors["reduced"] < 3.0, errors
