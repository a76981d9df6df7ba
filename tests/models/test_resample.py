"""The crop-only bicubic resize gives Pillow's pixels exactly, whatever the sizes, and
falls back to Pillow where it cannot."""

import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from models import preprocessing, resample
from models.preprocessing import Preprocessing, load_image, preprocess
from models.resample import (
    PRECISION_BITS,
    axis_weights,
    normalised_planes,
    resize_crop,
)
from tests.helpers import jpeg_bytes, synthetic_image


def pillow_resize_crop(pixels: np.ndarray, size, box) -> np.ndarray:
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC).crop(box)
    return np.asarray(image).reshape(box[3] - box[1], -1)


def pixels_of(width: int, height: int, seed: int, smooth: bool) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if not smooth:
        return noise
    return np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(3)))


# (source width, height) -> (resized width, height): up, down, mixed, one axis unchanged,
# aspect kept (as preprocess resizes) or not, large reductions.
CASES = [((224, 224), (293, 293)), ((640, 480), (390, 293)), ((480, 640), (293, 390)),
         ((295, 796), (293, 790)), ((796, 295), (790, 293)), ((60, 100), (300, 50)),
         ((100, 60), (50, 300)), ((131, 106), (57, 106)), ((31, 294), (17, 196)),
         ((1000, 37), (250, 80)), ((17, 17), (293, 293)), ((2000, 1500), (293, 220))]


@pytest.mark.parametrize(("source", "size"), CASES)
@pytest.mark.parametrize("smooth", [False, True])
def test_resize_crop_gives_pillows_pixels(source, size, smooth):
    pixels = pixels_of(*source, seed=source[0] * 7 + source[1], smooth=smooth)
    crop_w, crop_h = max(1, size[0] * 3 // 4), max(1, size[1] * 2 // 3)
    left, top = (size[0] - crop_w) // 2, (size[1] - crop_h) // 3
    for box in [(0, 0, *size), (left, top, left + crop_w, top + crop_h)]:
        ours = resize_crop(pixels, size, box)
        assert ours is not None and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, pillow_resize_crop(pixels, size, box))


def test_both_pass_orders_occur_and_each_is_the_one_pillow_runs():
    """Pillow runs the vertical pass first for some sizes (here, when a tall image shrinks
    more in height); the two orders round differently, so the order found must be used."""
    orders = {resample._pillow_order(source, size) for source, size in CASES}
    assert orders == {True, False}
    source, size = next((s, z) for s, z in CASES if resample._pillow_order(s, z) is False)
    pixels = pixels_of(*source, seed=1, smooth=False)
    box = (0, 0, *size)
    wrong_order = resample._resize(pixels, size, box, horizontal_first=True)
    assert not np.array_equal(wrong_order, pillow_resize_crop(pixels, size, box))


def test_weights_are_pillows_fixed_point_and_an_unchanged_axis_is_a_copy():
    first, weights = axis_weights(224, 293)
    assert first.shape == (293,) and weights.shape == (293, 5)
    # Each output's weights sum to 1.0 in 22-bit fixed point, up to one unit per tap.
    assert np.abs(weights.sum(axis=1) - (1 << PRECISION_BITS)).max() <= weights.shape[1]
    # Near the edges outputs have fewer inputs: no tap with a weight lies outside.
    reach = first[:, None] + np.arange(weights.shape[1])[None, :]
    assert (first >= 0).all() and (reach[weights != 0] < 224).all()
    assert (weights[:, -1] == 0).all()  # bicubic upscaling reads at most 4 inputs of 5 taps
    first, weights = axis_weights(50, 50)
    np.testing.assert_array_equal(first, np.arange(50))
    assert (weights == 1 << PRECISION_BITS).all() and weights.shape == (50, 1)
    pixels = pixels_of(50, 40, seed=3, smooth=False)
    np.testing.assert_array_equal(resize_crop(pixels, (50, 40), (5, 5, 45, 35)),
                                  pixels[5:35, 5:45].reshape(30, -1))


def test_a_pillow_it_does_not_reproduce_means_pillow_is_used(monkeypatch):
    """Where no pass order gives Pillow's pixels (here a Pillow faked to resize with another
    filter), resize_crop answers None and preprocess resizes with Pillow itself."""
    real_resize = Image.Image.resize

    def other_filter(self, size, resample=None, *args, **kwargs):
        return real_resize(self, size, Image.Resampling.BILINEAR, *args, **kwargs)

    resample._pillow_order.cache_clear()
    monkeypatch.setattr(Image.Image, "resize", other_filter)
    try:
        pixels = pixels_of(120, 90, seed=4, smooth=True)
        assert resize_crop(pixels, (160, 120), (0, 0, 160, 120)) is None
        pre = Preprocessing(image_size=64)
        expected = normalised_planes(np.asarray(
            other_filter(Image.fromarray(pixels), (97, 73)).crop((16, 4, 80, 68))),
            pre.mean, pre.std)
        np.testing.assert_array_equal(preprocess(Image.fromarray(pixels), pre), expected)
    finally:
        resample._pillow_order.cache_clear()


def test_boxes_outside_the_image_and_huge_sources_are_left_to_pillow(monkeypatch):
    pixels = pixels_of(40, 30, seed=6, smooth=False)
    assert resize_crop(pixels, (80, 60), (-4, 0, 76, 60)) is None  # Pillow pads
    assert resize_crop(pixels, (80, 60), (0, 0, 80, 61)) is None
    monkeypatch.setattr(resample, "PROBE_MAX_PIXELS", 40 * 30 - 1)
    assert resize_crop(pixels, (80, 60), (0, 0, 80, 60)) is None
    pre = Preprocessing(image_size=32, crop_fraction=1.2)  # a crop larger than the resize
    image = Image.fromarray(pixels)
    expected = np.asarray(image.resize((36, 27), Image.Resampling.BICUBIC).crop(
        (2, -2, 34, 30)))
    np.testing.assert_array_equal(preprocess(image, pre),
                                  normalised_planes(expected, pre.mean, pre.std))


def test_until_the_compiled_loops_are_loaded_pillow_resizes_and_nobody_waits(monkeypatch):
    """A service loads the loops in the background: a photo preprocessed meanwhile gets
    Pillow's pixels at once (the same numbers), and the loops serve once loaded."""
    loading, release = threading.Event(), threading.Event()
    real_load = resample._load

    def slow_load():
        loading.set()
        release.wait(10)
        real_load()

    monkeypatch.setattr(resample, "_kernels", None)
    monkeypatch.setattr(resample, "_load", slow_load)
    pixels = pixels_of(120, 90, seed=7, smooth=True)
    size, box = (160, 120), (10, 10, 150, 110)
    thread = resample.load_in_background()
    assert thread is not None and loading.wait(10)
    started = time.perf_counter()
    assert resize_crop(pixels, size, box) is None  # Pillow's turn: the loops are loading
    assert time.perf_counter() - started < 1.0
    planes = preprocess(Image.fromarray(pixels), Preprocessing(image_size=64))
    release.set()
    thread.join(10)
    assert resample._kernels is not None and resample.load_in_background() is None
    np.testing.assert_array_equal(resize_crop(pixels, size, box),
                                  pillow_resize_crop(pixels, size, box))
    np.testing.assert_array_equal(preprocess(Image.fromarray(pixels),
                                             Preprocessing(image_size=64)), planes)


def test_loops_that_cannot_load_leave_pillow_resizing(monkeypatch, caplog):
    monkeypatch.setattr(resample, "_kernels", None)
    monkeypatch.setattr(resample, "_failed", False)
    monkeypatch.setitem(sys.modules, "models.resample_kernels", None)  # import fails
    pixels = pixels_of(60, 40, seed=8, smooth=False)
    assert resize_crop(pixels, (90, 60), (0, 0, 90, 60)) is None
    assert resample._failed and "resizing with Pillow" in caplog.text
    pre = Preprocessing(image_size=32)
    # 60 x 40 -> shorter side round(32 / 0.875) = 37: 55 x 37, centre crop 32 from (12, 2).
    expected = np.asarray(Image.fromarray(pixels).resize((55, 37), Image.Resampling.BICUBIC)
                          .crop((12, 2, 44, 34)))
    np.testing.assert_array_equal(preprocess(Image.fromarray(pixels), pre),
                                  normalised_planes(expected, pre.mean, pre.std))


def test_normalised_planes_match_the_formula(monkeypatch):
    pixels = pixels_of(33, 21, seed=5, smooth=False)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    planes = normalised_planes(pixels, mean, std)
    assert planes.shape == (3, 21, 33) and planes.dtype == np.float32
    reference = (pixels.transpose(2, 0, 1) / 255.0 - np.asarray(mean)[:, None, None]) \
        / np.asarray(std)[:, None, None]
    np.testing.assert_allclose(planes, reference, atol=1e-6)
    np.testing.assert_array_equal(normalised_planes(pixels.reshape(21, -1), mean, std), planes)
    # numpy's in-place float32 operations, before the compiled loops are loaded, give the
    # same floats.
    monkeypatch.setattr(resample, "_kernels", None)
    monkeypatch.setattr(resample, "_failed", True)
    np.testing.assert_array_equal(normalised_planes(pixels, mean, std), planes)


@pytest.mark.parametrize("size", [(224, 224), (640, 427), (300, 900), (180, 120)])
def test_preprocess_of_photos_equals_pillows_resize_and_crop(size):
    """Decoded JPEGs through the whole preprocessing: the same floats as Pillow's resize
    and crop followed by the normalisation."""
    pre = Preprocessing(image_size=256)
    image = load_image(jpeg_bytes(synthetic_image((200, 90, 30), 5, 64).resize(size)))
    width, height = image.size
    short = min(width, height)
    resized = (pre.resize_size, int(pre.resize_size * height / short)) if width <= height \
        else (int(pre.resize_size * width / short), pre.resize_size)
    left, top = round((resized[0] - 256) / 2), round((resized[1] - 256) / 2)
    expected = np.asarray(image.resize(resized, Image.Resampling.BICUBIC)
                          .crop((left, top, left + 256, top + 256)))
    np.testing.assert_array_equal(preprocessing.preprocess(image, pre),
                                  normalised_planes(expected, pre.mean, pre.std))
