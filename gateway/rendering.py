"""Rendered and thumbnail representations of DICOM images (PS3.18 8.3.5, and the rendered and
thumbnail resources of the Retrieve transaction, PS3.18 10.4).

Pure: Part 10 bytes and typed parameters in, JPEG / PNG / GIF bytes out. The pipeline follows
PS3.4 N.2 for the parts a rendered image needs: pixel decoding (pydicom), the Modality LUT
(Rescale Slope / Intercept or the Modality LUT Sequence), the VOI LUT as a window (PS3.3
C.11.2.1.2 and C.11.2.1.3), MONOCHROME1 inversion, the Palette Color LUT, then the source image
region and the viewport (PS3.18 8.3.5: region after presentation, viewport after region).

Choices the standard leaves to the origin server:
- Which window when the request gives none: the object's own (per-frame Frame VOI LUT first,
  then Window Center / Width, first value, with its VOI LUT Function); without one, the
  frame's minimum and maximum after the Modality LUT map linearly onto 0..255. A VOI LUT
  Sequence (table) is not applied. Output values are rounded to the nearest integer.
- Colour objects are shown in their photometric interpretation (YBR decoded to RGB, palette
  colour through its LUT); `window` does not apply to them and is ignored.
- Study and series level render the first image instance the archive sends (the stream is
  not read further); an instance without a frame number renders its first frame (no
  multi-frame GIF or video).
- `viewport=vw,vh` is the largest size: the image (or the source region) is scaled to fit it
  with its aspect ratio kept, up or down. A negative `sw` / `sh` flips the region (which
  still starts at `sx`, `sy`). A source region outside the image is a 400.
- `thumbnail` is the same pipeline with a default viewport of 128 x 128.
- `annotation` and `iccprofile` are not supported: they are ignored and reported (the view
  turns them into a `Warning`).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, convert_color_space
from pydicom.uid import UID, ExplicitVRLittleEndian

from . import part10
from .errors import BadRequest, NotAcceptable
from .negotiation import parse_accept
from .part10 import DamagedObject

JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
RENDERED_TYPES = (JPEG, PNG, GIF)
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 4096  # pixels per side: a larger viewport would let one request allocate GBs
FUNCTIONS = ("linear", "linear-exact", "sigmoid")
IGNORED = ("annotation", "iccprofile")
_FORMATS = {JPEG: "JPEG", PNG: "PNG", GIF: "GIF"}
_VOI_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
_INT = re.compile(r"^-?[0-9]{1,9}$")
_DECIMAL = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and VOI LUT function."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """`viewport=vw,vh[,sx,sy,sw,sh]` (PS3.18 8.3.5.1.3); None in the region means default."""

    width: int
    height: int
    sx: int | None = None
    sy: int | None = None
    sw: int | None = None
    sh: int | None = None


@dataclass(frozen=True)
class RenderParams:
    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    viewport: Viewport | None = None
    window: Window | None = None
    ignored: tuple[str, ...] = ()


# -- request parsing ---------------------------------------------------------------------------


def negotiate(text: str | None) -> str:
    """The rendered media type (PS3.18 8.7.4): JPEG by default and for `*/*` or `image/*`,
    PNG or GIF on request (`text`: the Accept header, or the `accept` query parameter that
    replaces it, see `web.accept`). Anything else is a 406."""
    if not (text or "").strip():
        return JPEG
    for r in parse_accept(text):
        if r.mimetype in RENDERED_TYPES:
            return r.mimetype
        if r.mimetype in ("*/*", "image/*"):
            return JPEG
    raise NotAcceptable("rendered images are served as image/jpeg, image/png or image/gif")


def parse_params(args: Mapping[str, str], media_type: str, thumbnail: bool = False) -> RenderParams:
    """`quality`, `viewport` and `window` (PS3.18 8.3.5.1); a bad value is a 400 naming the
    parameter. A thumbnail without a viewport fits 128 x 128."""
    viewport = _viewport(args["viewport"]) if "viewport" in args else None
    if viewport is None and thumbnail:
        viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    return RenderParams(
        media_type=media_type,
        quality=_quality(args["quality"]) if "quality" in args else DEFAULT_QUALITY,
        viewport=viewport,
        window=_window(args["window"]) if "window" in args else None,
        ignored=tuple(name for name in IGNORED if name in args),
    )


def _quality(text: str) -> int:
    """PS3.18 8.3.5.1.2: an integer from 1 to 100 (used by JPEG only)."""
    value = int(text) if _INT.match(text.strip()) else 0
    if not 1 <= value <= 100:
        raise BadRequest("quality is an integer from 1 to 100", parameter="quality")
    return value


def _viewport(text: str) -> Viewport:
    """PS3.18 8.3.5.1.3: vw,vh positive; sx,sy not negative; sw,sh not zero (negative flips);
    the four region values may be empty (defaults)."""
    items = [s.strip() for s in text.split(",")]
    if len(items) not in (2, 6) or not all(_INT.match(s) for s in items[:2]):
        raise BadRequest("viewport is vw,vh or vw,vh,sx,sy,sw,sh", parameter="viewport")
    if any(s and not _INT.match(s) for s in items[2:]):
        raise BadRequest("viewport values are integers", parameter="viewport")
    vw, vh = int(items[0]), int(items[1])
    if not (0 < vw <= MAX_VIEWPORT and 0 < vh <= MAX_VIEWPORT):
        raise BadRequest(f"vw and vh are from 1 to {MAX_VIEWPORT}", parameter="viewport")
    sx, sy, sw, sh = (int(s) if s else None for s in (items[2:] or ["", "", "", ""]))
    if (sx is not None and sx < 0) or (sy is not None and sy < 0):
        raise BadRequest("sx and sy are not negative", parameter="viewport")
    if sw == 0 or sh == 0:
        raise BadRequest("sw and sh are not zero", parameter="viewport")
    return Viewport(vw, vh, sx, sy, sw, sh)


def _window(text: str) -> Window:
    """PS3.18 8.3.5.1.4: center,width,function with function linear | linear-exact | sigmoid
    (PS3.3 C.11.2.1.2); linear needs width >= 1, the others width > 0."""
    items = [s.strip() for s in text.split(",")]
    if len(items) not in (2, 3) or not all(_DECIMAL.match(s) for s in items[:2]):
        raise BadRequest("window is center,width,function", parameter="window")
    center, width = float(items[0]), float(items[1])
    function = items[2].lower() if len(items) == 3 else "linear"
    if function not in FUNCTIONS:
        raise BadRequest(f"window function is one of {', '.join(FUNCTIONS)}", parameter="window")
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise BadRequest("window width is a number above 0", parameter="window")
    if function == "linear" and width < 1:
        raise BadRequest("a linear window's width is at least 1", parameter="window")
    return Window(center, width, function)


def parse_frame(text: str | None) -> int:
    """One 1-based frame number from the path (`frames/{n}/rendered`); a list is a 400."""
    if text is None:
        return 1
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise BadRequest("a rendered frame is one frame number from 1", parameter="frames")
    return int(text)


# -- rendering ---------------------------------------------------------------------------------


def render_first(objects: Iterable[bytes], frame: int, params: RenderParams) -> bytes:
    """Renders the first object of `objects` that is an image (study / series level); an
    instance that is not an image is a 400."""
    for data in objects:
        ds = _read(data)
        if any(tag in ds for tag in _PIXEL_TAGS):
            return render_dataset(ds, frame, params)
    raise BadRequest("the resource holds no image to render")


def render(data: bytes, frame: int, params: RenderParams) -> bytes:
    """One frame (1-based) of one Part 10 object, rendered as `params` ask."""
    return render_first([data], frame, params)


def render_dataset(ds: Dataset, frame: int, params: RenderParams) -> bytes:
    frames = _number_of_frames(ds)
    if not 1 <= frame <= frames:
        raise BadRequest(f"frame {frame} is not in 1..{frames}", parameter="frames")
    pixels, photometric = _decode(ds, frame - 1)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        out = _grey(ds, pixels, frame - 1, params.window)
        if photometric == "MONOCHROME1":
            out = 255 - out  # PS3.3 C.7.6.3.1.2: the minimum value is shown white
    else:
        out = _colour(ds, pixels, photometric)
    image = _region(out, params.viewport)
    return _encode(image, params)


def _read(data: bytes) -> Dataset:
    return part10.read(data)


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _decode(ds: Dataset, index: int) -> tuple[Array, str]:
    """The frame's pixels and their photometric interpretation after decoding (YBR colour
    becomes RGB)."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise NotAcceptable(f"no decoder here for {UID(syntax).name}: cannot render")
    try:
        pixels, meta = decoder.as_array(ds, index=index)
    except Exception as exc:  # decoders raise many types on damaged or unusual data
        raise DamagedObject("the image's pixel data cannot be decoded") from exc
    return pixels, str(meta.get("photometric_interpretation", ""))


def _grey(ds: Dataset, pixels: Array, index: int, window: Window | None) -> Array:
    values = _modality(ds, pixels, index)
    chosen = window or _own_window(ds, index)
    if chosen is not None:
        return apply_window(values, chosen)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _to_uint8((values - low) * 255.0 / (high - low))


def _frame_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The frame's item of a functional group macro: per-frame first, then shared (PS3.3
    C.7.6.16)."""
    for group, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        sequence = ds.get(group)
        if sequence is not None and len(sequence) > position:
            inner = sequence[position].get(keyword)
            if inner is not None and len(inner) > 0:
                item: Dataset = inner[0]
                return item
    return None


def _modality(ds: Dataset, pixels: Array, index: int) -> Array:
    """The Modality LUT (PS3.3 C.11.1): the frame's Pixel Value Transformation when it has
    one, else the object's Rescale Slope / Intercept or Modality LUT Sequence."""
    item = _frame_item(ds, index, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item:
        slope, intercept = float(item.RescaleSlope), float(item.get("RescaleIntercept", 0))
        return pixels.astype(np.float64) * slope + intercept
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)


def _first_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _own_window(ds: Dataset, index: int) -> Window | None:
    """The object's window: the frame's Frame VOI LUT, else Window Center / Width (first
    value), with the VOI LUT Function (PS3.3 C.11.2.1.3; default LINEAR)."""
    item = _frame_item(ds, index, "FrameVOILUTSequence")
    source = item if item is not None and "WindowCenter" in item else ds
    center = _first_number(source.get("WindowCenter"))
    width = _first_number(source.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = _VOI_FUNCTIONS.get(str(source.get("VOILUTFunction") or "LINEAR").upper(), "linear")
    if width <= 0 or (function == "linear" and width < 1):
        return None  # not a valid window: fall back to the frame's range
    return Window(center, width, function)


def apply_window(values: Array, window: Window) -> Array:
    """PS3.3 C.11.2.1.2.1 (linear), C.11.2.1.3.2 (linear exact) and C.11.2.1.3.1 (sigmoid)
    onto the output range 0..255. The piecewise bounds of the linear functions are where
    their middle formula reaches 0 and 255, so clipping the formula is the same function."""
    c, w = window.center, window.width
    with np.errstate(over="ignore"):
        if window.function == "sigmoid":
            y = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
        elif window.function == "linear-exact":
            y = ((values - c) / w + 0.5) * 255.0
        elif w == 1:
            y = np.where(values <= c - 0.5, 0.0, 255.0)
        else:
            y = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return _to_uint8(y)


def _to_uint8(values: Array) -> Array:
    out: Array = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    return out


def _colour(ds: Dataset, pixels: Array, photometric: str) -> Array:
    """Colour in its photometric interpretation (PS3.3 C.7.6.3.1.2): palette colour through
    its LUT (C.7.6.3.1.5), YBR converted to RGB; more than 8 bits scaled to 8."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        bits = 16 if rgb.dtype.itemsize > 1 else 8
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        rgb = pixels if photometric == "RGB" else convert_color_space(pixels, photometric, "RGB")
        bits = int(ds.get("BitsStored") or 8)
    else:
        raise NotAcceptable(f"photometric interpretation {photometric!r} cannot be rendered")
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DamagedObject("the image's colour pixel data has an unexpected shape")
    if bits <= 8:
        return rgb.astype(np.uint8)
    scaled: Array = rgb.astype(np.float64) * 255.0 / float(2**bits - 1)
    return _to_uint8(scaled)


def _region(pixels: Array, viewport: Viewport | None) -> Image.Image:
    """The source image region, then the viewport (PS3.18 8.3.5.1.3): scaled to fit vw x vh,
    aspect ratio kept."""
    if viewport is None:
        return Image.fromarray(pixels)
    rows, cols = pixels.shape[:2]
    sx, sy = viewport.sx or 0, viewport.sy or 0
    sw = viewport.sw if viewport.sw is not None else cols - sx
    sh = viewport.sh if viewport.sh is not None else rows - sy
    if sw == 0 or sh == 0 or sx + abs(sw) > cols or sy + abs(sh) > rows:
        message = f"the source region is not inside the {cols}x{rows} image"
        raise BadRequest(message, parameter="viewport")
    part = pixels[sy : sy + abs(sh), sx : sx + abs(sw)]
    part = part[:, ::-1] if sw < 0 else part
    part = part[::-1] if sh < 0 else part
    image = Image.fromarray(np.ascontiguousarray(part))
    size = fit(abs(sw), abs(sh), viewport.width, viewport.height)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def fit(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The largest size within max_width x max_height with the aspect ratio of width x height."""
    scale = min(max_width / width, max_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _encode(image: Image.Image, params: RenderParams) -> bytes:
    out = io.BytesIO()
    if params.media_type == JPEG:
        image.save(out, format="JPEG", quality=params.quality)
    else:
        image.save(out, format=_FORMATS[params.media_type])
    return out.getvalue()
