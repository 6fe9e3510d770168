"""Image decoding and the two input pipelines the MobileNet models are used with.

``load_image`` turns any file Pillow reads (or an open binary file, or a PIL image) into an
upright 8-bit RGB image, and turns every way a file can fail to decode into one ``ImageError``
that names the file.  ``preprocess`` then makes the float32 [H, W, 3] array in [0, 1] that a
model takes, with one of two presets:

* ``"hub"`` -- what a TF-Hub user typically feeds: the whole image resized (no crop) with
  Pillow's bilinear filter, then ``tf.image.convert_image_dtype`` (SPEC.md 5.1).
* ``"slim"`` -- TF-Slim's eval preprocessing behind the published accuracies: central crop
  0.875, then TF1's legacy bilinear resize (SPEC.md 5.2, pitfall 17), bit-compatible with TF.

Deliberately not here: batching, the ``x*2 - 1`` step (the model does it, pitfall 15), mean/std
normalisation, colour management (ICC profiles are ignored, as TF's decoders ignore them), and
any lasting change to Pillow's global settings.
"""

import contextlib
import io
import os
import stat
import threading
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .data_config import PRESETS, SLIM_CENTRAL_FRACTION, uint8_to_float
from .errors import ImageError

#: JPEG draft decoding keeps at least this many source pixels per output pixel, so the DCT
#: scaling (1/2, 1/4, 1/8) never replaces the final bilinear reduction.
DRAFT_OVERSAMPLE = 2

#: Transparent regions are composited onto this colour rather than left as whatever RGB the
#: encoder stored under alpha 0.
BACKGROUND = (255, 255, 255)

#: EXIF orientations 5-8 swap width and height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})

#: Pillow modes holding integers wider than 8 bits; "I" (int32) is treated as 16-bit data too,
#: which is what Pillow uses it for when reading 16-bit sources.
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_UINT16_MAX = 65535
_UINT16_TO_UINT8_SHIFT = 8  # v >> 8, as tf.image.convert_image_dtype(uint16 -> uint8)
_UINT8_MAX = 255

# Image.open reports a mild decompression bomb with a *warning*; we make it an error.  The
# warnings filter is process-global, so threads decoding in parallel take turns changing it
# (opening only parses the header; the decoding itself runs outside the lock).
_OPEN_LOCK = threading.Lock()


def load_image(src) -> Image.Image:
    """Decode ``src`` into an upright RGB image.

    ``src`` is a path (str or os.PathLike), a binary file object, or a PIL image.  Animated
    files give their first frame; the EXIF orientation is applied.  Modes become RGB like so:

    * L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's conversion (no colour management).
    * anything with alpha (LA, PA, RGBA, RGBa, P or L/RGB with a transparency key):
      alpha-composited onto white, so transparent regions do not take arbitrary colours.
    * I;16 (any byte order) and I: treated as 16-bit, scaled ``v >> 8`` (TF's uint16 -> uint8
      rule) after clipping to [0, 65535]; Pillow's own conversion would clip at 255.
    * F: Pillow's convention, values on the 0-255 scale, rounded and clipped; NaN becomes 0.

    Raises ``ImageError`` (message: the file, then why, on one line) for missing, empty,
    truncated, unreadable or unidentifiable files, directories and decompression bombs
    (above ``PIL.Image.MAX_IMAGE_PIXELS``).  Truncated files are only caught while Pillow's
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False, its default, which this module never changes.
    """
    return _load(src, draft_size=None)[0]


def preprocess(src, size, preset="hub", draft=True) -> np.ndarray:
    """Load ``src`` and make the float32 [height, width, 3] array in [0, 1] a model takes.

    ``src`` is anything ``load_image`` takes, encoded bytes, or an [H, W, 3] (or [H, W]) array:
    uint8 arrays take the path of a decoded file; float arrays (values in [0, 1]) are resized
    per channel in float32 (Pillow's bilinear filter for "hub"; "slim" as below, bit for bit).
    ``size`` is (height, width).  ``preset``:

    * ``"hub"``: resize the whole decoded uint8 image to ``size`` with Pillow BILINEAR (no
      crop), then ``uint8_to_float``.  With ``draft=True`` a JPEG at least 4x larger than
      ``size`` in both dimensions is decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling;
      the decode stays >= 2x ``size`` so the bilinear step still reduces).  A 12-megapixel
      JPEG then preprocesses about 8x faster (16 ms instead of 132 ms to 96x96), but the
      pixels are not bit-identical: for the JPEGs in shared/images at 96x96 (decoded at 1/2
      scale) they move by at most 11/255 = 0.043 (mean 0.0016), at 64x64 (1/4 scale) by at
      most 15/255; those ~512-pixel photos are not drafted at all for 160x160.  Through the
      real V2 0.5/96 hub weights that moves features (range 0-6) by up to 0.39, cosine
      similarity >= 0.998 to the undrafted ones.  Use ``draft=False`` when comparing
      features with another implementation.
    * ``"slim"``: ``uint8_to_float``, ``central_crop`` 0.875, then ``resize_bilinear_legacy``
      -- TF-Slim's ``preprocess_for_eval`` without its final ``x*2 - 1``.  Never drafted.
    """
    height, width = _check_size(size)
    if preset not in PRESETS:
        raise ValueError(f"unknown preprocessing preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    src = _as_source(src)
    if isinstance(src, np.ndarray):
        return _float_array(src, (height, width), preset)
    if preset == "hub":
        img, box = _load(src, draft_size=(height, width) if draft else None)
        resized = img.resize((width, height), Image.Resampling.BILINEAR, box=box)
        return uint8_to_float(np.asarray(resized))
    return _slim(uint8_to_float(np.asarray(load_image(src))), (height, width))


def _slim(image: np.ndarray, size) -> np.ndarray:
    return resize_bilinear_legacy(central_crop(image, SLIM_CENTRAL_FRACTION), size)


def _as_source(src):
    """Bytes as a file object; a uint8 array as a PIL image; a float array as float32 RGB."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(src)
    if not isinstance(src, np.ndarray):
        return src
    if src.ndim == 2:
        src = np.repeat(src[:, :, None], 3, axis=2)
    if src.ndim != 3 or src.shape[2] != 3:
        raise ValueError(f"an image array must be [H, W, 3] or [H, W], got shape {src.shape}")
    if src.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(src), mode="RGB")
    if src.dtype.kind != "f":
        raise ValueError(f"an image array must be uint8 or float in [0, 1], got dtype {src.dtype}")
    return src.astype(np.float32, copy=False)


def _float_array(image: np.ndarray, size, preset: str) -> np.ndarray:
    if preset == "slim":
        return _slim(image, size)
    if image.shape[:2] == tuple(size):
        return np.array(image, np.float32)
    channels = [Image.fromarray(np.ascontiguousarray(image[:, :, c]), mode="F")
                .resize((size[1], size[0]), Image.Resampling.BILINEAR) for c in range(3)]
    return np.stack([np.asarray(c) for c in channels], axis=2)


def central_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The central ``fraction`` of an [H, W, ...] array, cut like ``tf.image.central_crop``:
    start = int((H - H * fraction) / 2) in double precision (truncated), size = H - 2 * start."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"central_crop fraction must be in (0, 1], got {fraction}")
    height, width = image.shape[:2]
    top = int((height - height * fraction) / 2)
    left = int((width - width * fraction) / 2)
    return image[top : height - top, left : width - left]


def resize_bilinear_legacy(image: np.ndarray, size) -> np.ndarray:
    """TF1's ``resize_bilinear`` (align_corners=False, half_pixel_centers=False) of a float32
    [H, W, C] array to ``size`` = (height, width), with TF's float32 arithmetic.

    Output pixel ``i`` samples the source at ``i * (in / out)`` (LegacyScaler: no half-pixel
    offset), interpolating first along x on the two source rows, then along y.
    """
    out_height, out_width = _check_size(size)
    image = np.asarray(image, dtype=np.float32)
    rows0, rows1, y_frac = _legacy_taps(image.shape[0], out_height)
    cols0, cols1, x_frac = _legacy_taps(image.shape[1], out_width)
    x_frac = x_frac[None, :, None]

    def along_x(rows):
        left, right = rows[:, cols0], rows[:, cols1]
        return left + (right - left) * x_frac

    top, bottom = along_x(image[rows0]), along_x(image[rows1])
    return top + (bottom - top) * y_frac[:, None, None]


def source_name(src) -> str:
    """How error messages name ``src``: the path, a file object's name, or a placeholder."""
    if isinstance(src, (str, os.PathLike)):
        return os.fsdecode(src)
    name = getattr(src, "filename", None) or getattr(src, "name", None)
    if isinstance(name, (str, os.PathLike)) and os.fsdecode(name):
        return os.fsdecode(name)
    return f"<{type(src).__name__}>"


def _legacy_taps(in_size: int, out_size: int):
    """Per output index: lower and upper source index and the float32 fraction between them
    (TF's compute_interpolation_weights with the LegacyScaler)."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(position)
    upper = np.minimum(np.ceil(position).astype(np.intp), in_size - 1)
    return lower.astype(np.intp), upper, position - lower


def _check_size(size):
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be (height, width) with both >= 1, got {tuple(size)}")
    return height, width


def _load(src, draft_size):
    """``load_image``, optionally letting a large JPEG decode at reduced scale.

    With ``draft_size`` = (height, width), returns the image and the box (in its upright
    coordinates) that holds the picture: libjpeg's scaled output rounds the size up, so the
    last row and column are partly padding.  The box is None when nothing was drafted.
    """
    if not isinstance(src, (str, os.PathLike, Image.Image)) and not hasattr(src, "read"):
        raise TypeError(f"expected a path, a binary file object or a PIL image, got {type(src).__name__}")
    try:
        with _opened(src) as img:
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            drafted = draft_size is not None and _request_draft(img, draft_size, orientation)
            img.load()
            upright = _to_rgb(ImageOps.exif_transpose(img))
            box = _upright_box(orientation, img.size, drafted[1][2:]) if drafted else None
            return upright, box
    # Pillow's plugins report malformed data with many types (OSError, SyntaxError,
    # struct.error, IndexError, ...): any of them means "this file cannot be used".
    except Exception as exc:
        raise ImageError(source_name(src), _reason(exc, src)) from exc


def _opened(src):
    """A context manager giving ``src`` as a lazily opened PIL image; a caller's image or file
    object is left open afterwards."""
    if isinstance(src, Image.Image):
        return contextlib.nullcontext(src)
    if isinstance(src, (str, os.PathLike)):
        _require_regular_file(src)
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(src)


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def _require_regular_file(path) -> None:
    """Open only regular files (or links to one): reading a FIFO or a device named ``*.jpg``
    would block forever, and no signal would interrupt it."""
    mode = os.stat(path).st_mode          # FileNotFoundError / PermissionError: reported as such
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise _NotRegularFile(f"is {kind}, not an image file")


class _NotRegularFile(OSError):
    """A path that names something other than a regular file; its message is the reason."""


def _request_draft(img: Image.Image, size, orientation: int):
    """Ask a JPEG decoder for the smallest DCT scale that stays >= DRAFT_OVERSAMPLE x size;
    returns Pillow's (mode, box) answer, or None for formats without drafts.  ``size`` is in
    upright orientation, so EXIF rotations that swap the axes swap it back."""
    height, width = size
    if orientation in _TRANSPOSING_ORIENTATIONS:
        height, width = width, height
    return img.draft("RGB", (DRAFT_OVERSAMPLE * width, DRAFT_OVERSAMPLE * height))


def _upright_box(orientation: int, stored_size, content_size):
    """Where the picture of a drafted image lies after the EXIF transposition.  Drafting pads
    the right and bottom edges of the stored image; each orientation moves that padding."""
    (width, height), (content_w, content_h) = stored_size, content_size
    pad_x, pad_y = width - content_w, height - content_h
    boxes = {
        1: (0, 0, content_w, content_h),
        2: (pad_x, 0, width, content_h),  # mirrored: the right edge becomes the left
        3: (pad_x, pad_y, width, height),
        4: (0, pad_y, content_w, height),
        5: (0, 0, content_h, content_w),  # transposed: right becomes bottom
        6: (pad_y, 0, height, content_w),  # turned clockwise: bottom becomes left
        7: (pad_y, pad_x, height, width),
        8: (0, pad_x, content_h, width),  # turned anticlockwise: right becomes top
    }
    return boxes.get(orientation, boxes[1])


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _WIDE_INTEGER_MODES:
        return _from_gray_array(_wide_to_uint8(np.asarray(img)))
    if img.mode == "F":
        return _from_gray_array(_float_to_uint8(np.asarray(img)))
    if img.has_transparency_data:
        return _composite_on_background(img.convert("RGBA"))
    return img if img.mode == "RGB" else img.convert("RGB")


def _wide_to_uint8(values: np.ndarray) -> np.ndarray:
    clipped = np.clip(values, 0, _UINT16_MAX).astype(np.uint16)
    return (clipped >> _UINT16_TO_UINT8_SHIFT).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    finite = np.nan_to_num(values, nan=0.0, posinf=_UINT8_MAX, neginf=0.0)
    return np.rint(np.clip(finite, 0, _UINT8_MAX)).astype(np.uint8)


def _from_gray_array(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray), mode="L").convert("RGB")


def _composite_on_background(rgba: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", rgba.size, BACKGROUND)
    canvas.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return canvas


def _reason(exc: Exception, src) -> str:
    """One line saying why ``src`` could not be decoded."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, _NotRegularFile):
        return str(exc)
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"refused as a possible decompression bomb: {_one_line(exc)}"
    if isinstance(exc, UnidentifiedImageError):
        return "empty file (0 bytes)" if _is_empty_file(src) else "not an image format Pillow can read"
    return f"cannot decode ({type(exc).__name__}: {_one_line(exc)})"


def _is_empty_file(src) -> bool:
    return isinstance(src, (str, os.PathLike)) and os.path.isfile(src) and os.path.getsize(src) == 0


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
