"""Image decoding (modes, EXIF, broken files) and the hub / slim presets, checked against TF."""

import io
import os

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from mobilenet_np import preprocess as pp
from mobilenet_np.errors import ImageError

from conftest import png_claiming as _png_claiming

PHOTOS = ["catsmall.jpg", "coral_bird.bmp", "grace_hopper.jpg", "coral_parrot.jpg"]
TF_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tf():
    tf = pytest.importorskip("tensorflow")
    return tf


def _save(img, path, fmt=None, **kwargs):
    img.save(path, fmt, **kwargs)
    return path


def _asymmetric_rgb(height=32, width=48):
    """Flat 16x16 blocks, all different, so every flip and rotation is distinguishable and
    JPEG keeps each block nearly exact."""
    blocks = np.arange(height // 16 * width // 16).reshape(height // 16, width // 16)
    colours = np.stack([blocks * 40 + 10, 250 - blocks * 30, (blocks * 97) % 256], axis=-1)
    return np.kron(colours, np.ones((16, 16, 1))).astype(np.uint8)


# Stored pixels for each EXIF orientation, from the EXIF definition (not Pillow's table):
# the stored image, shown as the tag says, is the upright one.
STORED_FROM_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, 1),  # shown after turning 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, -1),  # shown after turning 90 degrees anticlockwise
}


def _with_orientation(upright, orientation, fmt):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    stored = Image.fromarray(np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](upright)))
    buf = io.BytesIO()
    stored.save(buf, fmt, exif=exif, **({"quality": 95, "subsampling": "4:4:4"} if fmt == "JPEG" else {}))
    buf.seek(0)
    return buf


# --- uint8 -> float, central crop, legacy resize: against TensorFlow ---------------------------


def test_uint8_to_float_equals_convert_image_dtype(tf):
    codes = np.arange(256, dtype=np.uint8)
    expected = tf.image.convert_image_dtype(codes, tf.float32).numpy()
    np.testing.assert_array_equal(pp.uint8_to_float(codes), expected)
    assert not np.array_equal(pp.uint8_to_float(codes), codes / np.float32(255))  # pitfall 16


def test_uint8_to_float_refuses_other_dtypes():
    with pytest.raises(ValueError, match="uint8"):
        pp.uint8_to_float(np.zeros(3, np.float32))


@pytest.mark.parametrize("height, width", [(1, 1), (7, 9), (8, 8), (100, 33), (149, 224), (600, 517)])
def test_central_crop_equals_tf(tf, rng, height, width):
    image = rng.random((height, width, 3), dtype=np.float32)
    expected = tf.image.central_crop(image, pp.SLIM_CENTRAL_FRACTION).numpy()
    np.testing.assert_array_equal(pp.central_crop(image, pp.SLIM_CENTRAL_FRACTION), expected)


def _tf_legacy_resize(tf, image, size):
    batch = tf.constant(image[None])
    return tf.compat.v1.image.resize_bilinear(batch, size, align_corners=False, half_pixel_centers=False)[0].numpy()


@pytest.mark.parametrize(
    "in_shape, out_size",
    [((7, 11), (96, 96)), ((13, 5), (3, 17)), ((97, 61), (160, 160)), ((300, 201), (96, 128)),
     ((2, 2), (5, 1)), ((160, 160), (160, 160)), ((1, 1), (4, 4))],
)
def test_legacy_resize_equals_tf_on_random_arrays(tf, rng, in_shape, out_size):
    image = rng.random(in_shape + (3,), dtype=np.float32)
    ours = pp.resize_bilinear_legacy(image, out_size)
    assert ours.shape == out_size + (3,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _tf_legacy_resize(tf, image, out_size), rtol=0, atol=TF_TOLERANCE)


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [(96, 96), (160, 160)])
def test_slim_preset_equals_tf_pipeline_on_photos(tf, shared, name, size):
    path = shared("images", name)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    image = tf.image.convert_image_dtype(decoded, tf.float32)
    image = tf.image.central_crop(image, pp.SLIM_CENTRAL_FRACTION).numpy()
    expected = _tf_legacy_resize(tf, image, size)
    np.testing.assert_allclose(pp.preprocess(path, size, "slim"), expected, rtol=0, atol=TF_TOLERANCE)


# --- the hub preset -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS)
def test_hub_preset_is_pillow_bilinear_then_convert(shared, name):
    path = shared("images", name)
    resized = Image.open(path).convert("RGB").resize((80, 96), Image.Resampling.BILINEAR)
    ours = pp.preprocess(path, (96, 80), "hub", draft=False)
    assert ours.shape == (96, 80, 3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, np.asarray(resized).astype(np.float32) * np.float32(1 / 255))


def test_draft_mode_stays_close_and_only_reduces(shared):
    path = shared("images", "grace_hopper.jpg")  # 517x606: decoded at 1/2 scale for 96x96
    drafted, full = (pp.preprocess(path, (96, 96), draft=d) for d in (True, False))
    assert 0 < np.abs(drafted - full).max() <= 12 / 255  # the figure in preprocess's docstring
    small = (pp.preprocess(path, (300, 300), draft=d) for d in (True, False))
    np.testing.assert_array_equal(*small)  # under 2x the target: never drafted


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_box_follows_exif_orientation(orientation):
    # A drafted JPEG's last stored column and row are partly padding; after the EXIF
    # transposition the picture must be where _upright_box says.  Marker: picture 255, padding 0.
    stored = np.zeros((5, 7), np.uint8)
    stored[:4, :5] = 255
    upright = STORED_FROM_UPRIGHT[orientation]  # inverse mapping is applied by load_image
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "PNG", exif=exif)
    shown = pp.load_image(buf)
    assert upright(np.asarray(shown)).shape[:2] == stored.shape
    assert shown.getbbox() == pp._upright_box(orientation, (7, 5), (5, 4))


# --- modes --------------------------------------------------------------------------------------


def _load_png_bytes(img, **kwargs):
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    buf.seek(0)
    return np.asarray(pp.load_image(buf))


def test_rgb_and_gray_and_bilevel():
    gray = np.array([[0, 7, 128, 255]], np.uint8)
    out = _load_png_bytes(Image.fromarray(gray, "L"))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))
    bilevel = Image.fromarray(np.array([[255, 0]], np.uint8)).convert("1", dither=Image.Dither.NONE)
    np.testing.assert_array_equal(_load_png_bytes(bilevel), [[[255] * 3, [0] * 3]])


def _white_composite(rgb, alpha):
    rgb, alpha = np.asarray(rgb, float), np.asarray(alpha, float)[..., None] / 255
    return rgb * alpha + 255 * (1 - alpha)


def test_alpha_modes_are_composited_on_white(rng):
    rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255
    expected = _white_composite(rgba[..., :3], rgba[..., 3])
    out = _load_png_bytes(Image.fromarray(rgba, "RGBA"))
    assert np.abs(out - expected).max() <= 1
    np.testing.assert_array_equal(out[0], 255)  # transparent -> white, not the hidden RGB
    la = np.stack([rgba[..., 0], rgba[..., 3]], axis=-1)
    out = _load_png_bytes(Image.fromarray(la, "LA"))
    assert np.abs(out - _white_composite(np.repeat(la[..., :1], 3, -1), la[..., 1])).max() <= 1


def test_palette_with_transparency_is_composited_on_white():
    palette = [255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6)
    img = Image.fromarray(np.array([[0, 1, 1, 0]], np.uint8), "P")
    img.putpalette(palette)
    red, blue, white = [255, 0, 0], [0, 0, 255], [255, 255, 255]
    np.testing.assert_array_equal(_load_png_bytes(img), [[red, blue, blue, red]])
    np.testing.assert_array_equal(_load_png_bytes(img, transparency=1), [[red, white, white, red]])
    gif = io.BytesIO()
    img.save(gif, "GIF", transparency=1)
    np.testing.assert_array_equal(pp.load_image(gif), [[red, white, white, red]])


def test_palette_image_with_rgba_palette_in_memory():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]], np.uint8)
    quantized = Image.fromarray(rgba, "RGBA").quantize(2)
    assert quantized.palette.mode == "RGBA"
    np.testing.assert_array_equal(pp.load_image(quantized), [[[10, 20, 30], [255] * 3]])


def test_cmyk_uses_pillows_conversion():
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 255, 255, 0]]], np.uint8)
    buf = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buf, "TIFF")
    np.testing.assert_array_equal(pp.load_image(buf), [[[255] * 3, [0, 255, 255], [0] * 3, [255, 0, 0]]])


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_is_scaled_like_tf_not_clipped(tf, fmt):
    values = np.array([[0, 255, 256, 32767, 32768, 65280, 65535]], np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, fmt)
    buf.seek(0)
    assert Image.open(buf).mode.startswith("I")
    expected = tf.image.convert_image_dtype(values, tf.uint8).numpy()
    np.testing.assert_array_equal(pp.load_image(buf), np.repeat(expected[..., None], 3, -1))
    np.testing.assert_array_equal(expected, [[0, 0, 1, 127, 128, 255, 255]])


def test_big_endian_and_int32_modes():
    values = np.array([[0, 256, 65535]], np.uint16)
    big_endian = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(pp.load_image(big_endian))[..., 0], [[0, 1, 255]])
    int32 = Image.fromarray(np.array([[-5, 512, 70000]], np.int32), "I")
    np.testing.assert_array_equal(np.asarray(pp.load_image(int32))[..., 0], [[0, 2, 255]])


def test_float_mode_is_on_the_0_255_scale():
    values = np.array([[-3.0, 0.4, 0.6, 127.5, 254.6, 300.0, np.nan]], np.float32)
    buf = io.BytesIO()
    Image.fromarray(values, "F").save(buf, "TIFF")
    out = np.asarray(pp.load_image(buf))
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 1, 128, 255, 255, 0]])
    assert out.shape == (1, 7, 3)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    np.testing.assert_array_equal(np.asarray(pp.load_image(path))[0, 0], [255, 0, 0])


@pytest.mark.parametrize("fmt", ["BMP", "WEBP", "TIFF", "PPM"])
def test_other_formats_and_sources(tmp_path, rng, fmt):
    pixels = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(pixels).save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    for src in (str(path), path, Image.open(path)):
        np.testing.assert_array_equal(pp.load_image(src), pixels)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(pp.load_image(f), pixels)
        assert not f.closed  # a caller's file is left open


def test_wrong_source_type():
    with pytest.raises(TypeError, match="expected a path"):
        pp.load_image(np.zeros((2, 2, 3), np.uint8))


# --- EXIF orientation ---------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_lossless_png(orientation):
    upright = _asymmetric_rgb()
    np.testing.assert_array_equal(pp.load_image(_with_orientation(upright, orientation, "PNG")), upright)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(orientation):
    upright = _asymmetric_rgb()
    out = np.asarray(pp.load_image(_with_orientation(upright, orientation, "JPEG"))).astype(int)
    assert out.shape == upright.shape
    assert np.abs(out - upright).max() <= 8  # JPEG loss on flat 16x16 blocks


# --- broken files -------------------------------------------------------------------------------


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.fromarray(_asymmetric_rgb(64, 64)).save(buf, "JPEG")
    return buf.getvalue()


BROKEN = {
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated.jpg": (lambda p: p.write_bytes(_jpeg_bytes()[:400]), "truncated"),
    "text.jpg": (lambda p: p.write_text("this is not a JPEG\n"), "not an image"),
    "bomb.png": (lambda p: p.write_bytes(_png_claiming(100_000, 100_000)), "decompression bomb"),
    "folder.jpg": (lambda p: p.mkdir(), "is a directory"),
    "missing.jpg": (lambda p: None, "no such file"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_image_error_naming_the_file(tmp_path, name):
    make, reason = BROKEN[name]
    path = tmp_path / name
    make(path)
    for preset in pp.PRESETS:
        with pytest.raises(ImageError) as info:
            pp.preprocess(path, (96, 96), preset)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and reason in message.lower() and "\n" not in message


def test_truncated_images_stay_refused():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError, match="(?i)truncated"):
        pp.load_image(io.BytesIO(_jpeg_bytes()[:400]))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("side, kind", [(40, "warning"), (60, "error")])
def test_decompression_bomb_above_the_limit(tmp_path, monkeypatch, side, kind):
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; both must be refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = _save(Image.new("RGB", (side, side)), tmp_path / f"{kind}.png")
    with pytest.raises(ImageError, match="decompression bomb"):
        pp.load_image(path)
    pp.load_image(_save(Image.new("RGB", (30, 30)), tmp_path / "fine.png"))


def test_bomb_handling_leaves_warning_filters_alone(tmp_path, monkeypatch):
    import warnings

    before = list(warnings.filters)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError):
        pp.load_image(_save(Image.new("RGB", (40, 40)), tmp_path / "b.png"))
    assert warnings.filters == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read a mode-000 file")
def test_unreadable_file(tmp_path):
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        pp.load_image(path)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="hub, slim"):
        pp.preprocess(Image.new("RGB", (4, 4)), (4, 4), "keras")
