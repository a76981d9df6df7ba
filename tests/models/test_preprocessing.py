import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageOps

from models.preprocessing import (
    ImageDecodeError,
    Preprocessing,
    decode_image,
    eval_transform,
    gallery_views,
    load_image,
    preprocess,
    train_transform,
)
from tests.helpers import jpeg_bytes, png_bytes, synthetic_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        lambda: encode(Image.new("RGB", (40, 30), (255, 0, 0)).convert("P"), "PNG"),
        lambda: encode(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"),
        lambda: encode(Image.new("L", (40, 30), 100), "PNG"),
        lambda: encode(Image.new("LA", (40, 30), (100, 255)), "PNG"),
        lambda: encode(Image.fromarray(np.full((30, 40), 40000, np.uint16)), "PNG"),
        lambda: encode(Image.new("1", (40, 30), 1), "BMP"),
        lambda: encode(Image.new("RGB", (40, 30), (0, 0, 255)), "WEBP"),
        lambda: encode(Image.new("RGB", (40, 30), (0, 0, 255)), "GIF"),
        lambda: encode(Image.new("RGB", (40, 30), (0, 0, 255)), "TIFF"),
    ],
    ids=["cmyk", "palette", "rgba", "grey", "grey-alpha", "16bit", "1bit", "webp", "gif", "tiff"],
)
def test_odd_but_valid_images_become_rgb(make):
    data = make()
    image = load_image(data)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert image.format == Image.open(io.BytesIO(data)).format  # kept for the stored file


def test_transparent_pixels_become_white():
    image = load_image(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_range_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (8, 1))
    image = load_image(encode(Image.fromarray(ramp), "PNG"))
    values = np.asarray(image)[0, :, 0]
    assert values[0] == 0 and values[-1] == 255 and 100 < values[32] < 160


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = load_image(jpeg_bytes(wide, exif=exif.tobytes()))
    assert image.size == (20, 60)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, this is not an image at all", "not an image"),
        (jpeg_bytes(synthetic_image((1, 2, 3), 0, 200))[:600], "corrupt or truncated"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image|unsupported"),
    ],
    ids=["empty", "text", "truncated", "eps"],
)
def test_bad_input_gives_a_clear_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        load_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    data = png_bytes(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(data, max_pixels=1_000_000)


def test_draft_mode_decodes_big_jpegs_at_reduced_size():
    data = jpeg_bytes(synthetic_image((200, 100, 50), 1, 1024))
    image = load_image(data, draft_size=256)
    assert image.size == (256, 256)
    assert load_image(data).size == (1024, 1024)


def pillow_pixels(data: bytes, draft_size: int | None = None) -> np.ndarray:
    """What Pillow alone makes of a file: the reference for :func:`decode_image`."""
    image = Image.open(io.BytesIO(data))
    if draft_size:
        image.draft("RGB", (draft_size, draft_size))
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def textured(size: tuple[int, int]) -> Image.Image:
    """A smooth pattern with edges, so that every DCT scale and upsampling shows."""
    x, y = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    pixels = np.stack([x * 255 // size[0], y * 255 // size[1], (x // 7 + y // 5) % 2 * 200], -1)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize("size", [(1024, 768), (511, 256), (512, 256), (2047, 1030), (300, 4000),
                                  (97, 61), (256, 256)])
@pytest.mark.parametrize("options", [{"quality": 90}, {"subsampling": 0},
                                     {"subsampling": 1, "progressive": True}],
                         ids=["420", "444", "422-progressive"])
def test_colour_jpegs_decode_to_pillows_pixels_at_pillows_draft_scale(size, options):
    data = jpeg_bytes(textured(size), **options)
    for draft_size in (None, 256, 100):
        decoded = decode_image(data, draft_size=draft_size)
        reference = pillow_pixels(data, draft_size)
        assert decoded.pixels.dtype == np.uint8 and decoded.pixels.flags.c_contiguous
        np.testing.assert_array_equal(decoded.pixels, reference)
        assert decoded.size == size and decoded.format == "JPEG"  # the file's size, undrafted


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_exif_orientation_turns_the_pixels_as_pillow_does(orientation, fmt):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(textured((60, 24)), fmt, exif=exif.tobytes(),
                  **({"quality": 95} if fmt == "JPEG" else {}))
    decoded = decode_image(data, draft_size=10)
    np.testing.assert_array_equal(decoded.pixels, pillow_pixels(data, 10))
    assert decoded.size == ((24, 60) if orientation >= 5 else (60, 24))  # upright


def test_a_jpeg_libjpeg_warns_about_is_decoded_as_pillow_decodes_it():
    """Corrupt entropy-coded data that libjpeg only warns about: Pillow accepts it, and so
    does the service, with Pillow's pixels."""
    data = bytearray(jpeg_bytes(synthetic_image((200, 90, 30), 5, 64)))
    data[data.index(b"\xff\xda") + 57] ^= 0xFF
    with pytest.raises(ValueError, match="Corrupt JPEG data"):  # the fast path declines it
        simplejpeg.decode_jpeg(bytes(data), strict=True)
    decoded = decode_image(bytes(data))
    np.testing.assert_array_equal(decoded.pixels, pillow_pixels(bytes(data)))


def test_preprocess_takes_pixels_or_an_image_alike():
    pre = Preprocessing()
    for size in [(300, 200), (256, 300), (100, 50)]:
        image = textured(size)
        np.testing.assert_array_equal(preprocess(np.asarray(image), pre), preprocess(image, pre))


def test_eval_and_train_transforms_share_size_and_normalisation():
    pre = Preprocessing(image_size=64)
    image = synthetic_image((128, 128, 128), 2, 100)
    x = eval_transform(pre)(image)
    y = train_transform(pre, strength=0.0)(image)
    assert x.shape == y.shape == (3, 64, 64)
    # A mid-grey image normalises to about (0.5 - mean) / std in every pipeline.
    assert abs(float(x[0].mean()) - (0.5 - 0.485) / 0.229) < 0.1
    assert Preprocessing.from_dict(pre.to_dict()) == pre


@pytest.mark.parametrize("size", [(300, 200), (201, 333), (256, 256), (224, 224), (299, 224),
                                  (257, 1000), (100, 50), (4000, 3000)])
def test_preprocess_equals_torchvision_resize_crop_normalise(size):
    """The numpy/Pillow pipeline the service uses gives torchvision's numbers exactly."""
    from torchvision import transforms

    pre = Preprocessing()
    reference = transforms.Compose([
        transforms.Resize(pre.resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(pre.image_size),
        transforms.ToTensor(),
        transforms.Normalize(pre.mean, pre.std),
    ])
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3))
    image = Image.fromarray(pixels.astype(np.uint8))
    ours = preprocess(image, pre)
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
    np.testing.assert_allclose(ours, reference(image).numpy(), atol=1e-6)
    np.testing.assert_array_equal(eval_transform(pre)(image).numpy(), ours)


def test_gallery_views_are_the_inputs_then_their_mirror_images():
    batch = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3)
    assert (gallery_views(batch, 1) == batch).all()
    views = gallery_views(batch, 2)
    assert views.shape == (4, 3, 2, 3)
    assert (views[:2] == batch).all()
    # Mirrored left to right: each row's columns reversed, rows and channels kept.
    assert views[2, 0, 0].tolist() == [2.0, 1.0, 0.0]
    assert views[3, 2, 1].tolist() == batch[1, 2, 1, ::-1].tolist()


def test_gallery_views_travel_with_the_preprocessing():
    two = Preprocessing(image_size=64, gallery_views=2)
    assert Preprocessing.from_dict(two.to_dict()) == two
    older = {k: v for k, v in two.to_dict().items() if k != "gallery_views"}
    assert Preprocessing.from_dict(older).gallery_views == 1  # files from before read as one
    with pytest.raises(ValueError, match="gallery_views"):
        Preprocessing(gallery_views=3)


def test_gallery_views_of_a_tensor_stay_a_tensor():
    import torch

    batch = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    views = gallery_views(batch, 2)
    assert isinstance(views, torch.Tensor) and views.shape == (2, 1, 3, 4)
    assert views[1, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    np.testing.assert_array_equal(views.numpy(), gallery_views(batch.numpy(), 2))
