"""WADO-URI, the URI Service of PS3.18 chapter 9: query parameters -> a frozen `WadoRequest`,
and one retrieved Part 10 object -> the representation the request asks for.

Pure: no Flask. `parse` raises `BadRequest` naming the parameter, or `NotAcceptable`.

Parameters and the choices made here:

- `requestType` (9.1.2.1.1): required, and "WADO".
- `studyUID`, `seriesUID`, `objectUID` (9.1.2.1.2 to 9.1.2.1.4): UIDs (PS3.5 9.1). `objectUID`
  is required. The standard requires the other two as well; the gateway also takes `objectUID`
  alone (Weasis' `requireOnlySOPInstanceUID`) and finds the instance by its SOP Instance UID.
  `studyUID` and `seriesUID` come together or not at all.
- `contentType` (9.1.2.2.1): media types, comma-separated, in preference order (q-values are
  honoured): `application/dicom` (9.4), `image/jpeg`, `image/png`, `image/gif` (9.5); `*/*` and
  `image/*` mean image/jpeg, `application/*` application/dicom. None of these: 406. Absent:
  image/jpeg, and an object without pixel data is sent as application/dicom (the gateway
  renders no HTML or text). A listed rendered type is skipped for an object without pixel data.
- `transferSyntax` (9.4.1.2): a UID, or `*` (as stored, a dcm4chee extension Weasis sends);
  only with application/dicom. Without it the object is sent as stored. A syntax the gateway
  cannot produce is a 406 (see `gateway.transcode`).
- `anonymize` (9.4.1.2): not supported, 400.
- `charset` (9.1.2.2.2): checked (tokens) and ignored: no representation here carries text.
- Rendering (9.5.1.2), only with a rendered type: `frameNumber` (1-based, default 1; past the
  object's Number of Frames: 400), `rows` and `columns` (the image is scaled, aspect ratio kept,
  to fit them; either alone bounds one side; 1 to `rendering.MAX_VIEWPORT`), `region` (four
  decimals x1,y1,x2,y2 from 0 to 1, the source region before scaling), `windowCenter` and
  `windowWidth` (both or neither; a linear VOI window, PS3.3 C.11.2.1.2), `imageQuality` (1 to
  100, JPEG only; with application/dicom it is ignored with a Warning: the gateway never adds
  loss). The rest of the pipeline is `gateway.rendering`'s.
- `annotation` (also `imageAnnotation`), `presentationUID`, `presentationSeriesUID`: not
  supported, ignored with a Warning.
- Unknown parameters are ignored (PS3.18 8.3: an origin server ignores parameters it does not
  support): Weasis appends its own (`additionnalParameters`).
- A parameter given twice with one value counts once; with different values it is a 400,
  except `transferSyntax` `*` beside a UID, where the UID wins (Weasis appends the manifest's
  additional parameters, often `&transferSyntax=*`, after the series' own syntax).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from . import part10, rendering, transcode
from .connectors.base import Part10
from .errors import BadRequest, NotAcceptable
from .negotiation import parse_accept
from .query import check_uid, is_uid
from .rendering import GIF, JPEG, PNG, RenderParams, Viewport, Window

DICOM = "application/dicom"
CONTENT_TYPES = (DICOM, JPEG, PNG, GIF)
_WILDCARDS = {"*/*": JPEG, "image/*": JPEG, "application/*": DICOM}
RENDERING_PARAMETERS = ("frameNumber", "rows", "columns", "region", "windowCenter", "windowWidth")
UNSUPPORTED = ("annotation", "imageAnnotation", "presentationUID", "presentationSeriesUID")
_INT = re.compile(r"^\+?[0-9]{1,9}$")
_DECIMAL = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # RFC 9110 5.6.2
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFER = 4096  # bytes: larger values are not read when an object is inspected


@dataclass(frozen=True)
class Region:
    """`region` (PS3.18 9.5.1.2.5): the source region, normalised to 0..1 of the image."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class WadoRequest:
    object_uid: str
    study_uid: str | None = None
    series_uid: str | None = None
    content_types: tuple[str, ...] = ()  # () when absent: the default (see `choose`)
    transfer_syntax: str = "*"
    frame: int | None = None
    rows: int | None = None
    columns: int | None = None
    region: Region | None = None
    window: Window | None = None
    quality: int | None = None
    charset: str | None = None
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageInfo:
    rows: int
    columns: int
    frames: int


@dataclass(frozen=True)
class Representation:
    media_type: str
    body: bytes
    warnings: tuple[str, ...] = ()


# -- parsing -----------------------------------------------------------------------------------


def parse(pairs: Iterable[tuple[str, str]]) -> WadoRequest:
    """The query string of a WADO-URI request (PS3.18 9.1.2, 9.4.1.2, 9.5.1.2)."""
    args = _single_values(pairs)
    if "requestType" not in args:
        raise BadRequest("requestType is required (requestType=WADO)", parameter="requestType")
    if args["requestType"] != "WADO":
        raise BadRequest("requestType must be WADO", parameter="requestType")
    if "anonymize" in args:
        raise BadRequest("anonymize is not supported", parameter="anonymize")
    study, series, instance = _uids(args)
    types = _content_types(args["contentType"]) if "contentType" in args else ()
    _check_combinations(args, types)
    return WadoRequest(
        object_uid=instance,
        study_uid=study,
        series_uid=series,
        content_types=types,
        transfer_syntax=_transfer_syntax(args.get("transferSyntax", "*")),
        frame=_positive(args, "frameNumber", 10**9),
        rows=_positive(args, "rows", rendering.MAX_VIEWPORT),
        columns=_positive(args, "columns", rendering.MAX_VIEWPORT),
        region=_region(args["region"]) if "region" in args else None,
        window=_window(args),
        quality=_positive(args, "imageQuality", 100),
        charset=_charset(args["charset"]) if "charset" in args else None,
        ignored=tuple(name for name in UNSUPPORTED if name in args),
    )


def _single_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One value per name; a repeated name must repeat its value (but see transferSyntax)."""
    args: dict[str, str] = {}
    for name, value in pairs:
        known = args.get(name)
        if known is None or known == value:
            args[name] = value
        elif name == "transferSyntax" and "*" in (known, value):
            args[name] = value if known == "*" else known
        else:
            raise BadRequest(f"{name} is given twice with different values", parameter=name)
    return args


def _uids(args: dict[str, str]) -> tuple[str | None, str | None, str]:
    """PS3.18 9.1.2.1.2 to 9.1.2.1.4 (objectUID alone is accepted: see the module)."""
    if "objectUID" not in args:
        raise BadRequest("objectUID is required", parameter="objectUID")
    instance = check_uid(args["objectUID"], "objectUID")
    study, series = args.get("studyUID"), args.get("seriesUID")
    if (study is None) != (series is None):
        missing = "seriesUID" if series is None else "studyUID"
        raise BadRequest(f"{missing} is required with the other parent UID", parameter=missing)
    if study is not None and series is not None:
        return check_uid(study, "studyUID"), check_uid(series, "seriesUID"), instance
    return None, None, instance


def _content_types(text: str) -> tuple[str, ...]:
    """PS3.18 9.1.2.2.1: the acceptable types in preference order; none we make is a 406."""
    found: list[str] = []
    for media in parse_accept(text):
        name = _WILDCARDS.get(media.mimetype, media.mimetype)
        if name in CONTENT_TYPES and name not in found:
            found.append(name)
    if not found:
        raise NotAcceptable(
            "contentType: WADO-URI serves application/dicom, image/jpeg, image/png or image/gif"
        )
    return tuple(found)


def _check_combinations(args: dict[str, str], types: tuple[str, ...]) -> None:
    """transferSyntax only with application/dicom (PS3.18 9.4.1.2); rendering parameters only
    with a rendered type (9.5.1.2: they are included only for a rendered representation)."""
    if "transferSyntax" in args and DICOM not in types:
        message = "transferSyntax goes with contentType=application/dicom"
        raise BadRequest(message, parameter="transferSyntax")
    if types and all(t == DICOM for t in types):
        for name in RENDERING_PARAMETERS:
            if name in args:
                message = f"{name} applies to rendered images, not to application/dicom"
                raise BadRequest(message, parameter=name)
    if ("windowCenter" in args) != ("windowWidth" in args):
        missing = "windowWidth" if "windowCenter" in args else "windowCenter"
        raise BadRequest("windowCenter and windowWidth go together", parameter=missing)


def _transfer_syntax(text: str) -> str:
    if text != "*" and not is_uid(text):
        raise BadRequest("transferSyntax is not a valid UID", parameter="transferSyntax")
    return text


def _positive(args: dict[str, str], name: str, highest: int) -> int | None:
    """An integer from 1 to `highest` (IS, PS3.5 Table 6.2-1), or None when absent."""
    if name not in args:
        return None
    text = args[name].strip()
    value = int(text) if _INT.match(text) else 0
    if not 1 <= value <= highest:
        raise BadRequest(f"{name} is an integer from 1 to {highest}", parameter=name)
    return value


def _decimal(args: dict[str, str], name: str) -> float:
    text = args[name].strip()
    value = float(text) if _DECIMAL.match(text) else math.nan
    if not math.isfinite(value):
        raise BadRequest(f"{name} is a decimal number", parameter=name)
    return value


def _window(args: dict[str, str]) -> Window | None:
    """PS3.18 9.5.1.2.6: a linear window (PS3.3 C.11.2.1.2.1 needs a width of at least 1)."""
    if "windowCenter" not in args:
        return None
    center, width = _decimal(args, "windowCenter"), _decimal(args, "windowWidth")
    if width < 1:
        raise BadRequest("windowWidth is at least 1", parameter="windowWidth")
    return Window(center, width, "linear")


def _region(text: str) -> Region:
    """PS3.18 9.5.1.2.5: x1,y1,x2,y2 in 0..1, top left then bottom right (x2 > x1, y2 > y1)."""
    items = [s.strip() for s in text.split(",")]
    if len(items) != 4 or not all(_DECIMAL.match(s) for s in items):
        raise BadRequest("region is four decimals x1,y1,x2,y2", parameter="region")
    x1, y1, x2, y2 = (float(s) for s in items)
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise BadRequest("region needs 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1", "region")
    return Region(x1, y1, x2, y2)


def _charset(text: str) -> str:
    """PS3.18 9.1.2.2.2: charset names (tokens), with optional q-values."""
    for item in text.split(","):
        name = item.split(";")[0].strip()
        if not _TOKEN.match(name):
            raise BadRequest("charset is a list of character set names", parameter="charset")
    return text


# -- representation ----------------------------------------------------------------------------


def represent(part: Part10, request: WadoRequest) -> Representation:
    """The object as the request asks: the Part 10 object itself (re-encoded when
    `transferSyntax` asks, PS3.18 9.4) or one frame rendered (9.5)."""
    info = inspect(part.data) if _may_render(request) else None
    media_type = choose(request, info)
    if media_type == DICOM:
        body = transcode.deliver(part, request.transfer_syntax).data
        ignored = ("imageQuality",) if request.quality is not None else ()
        return Representation(DICOM, body, _warnings(request.ignored + ignored))
    assert info is not None  # choose() picks a rendered type only for an image
    image = rendering.render(
        part.data, request.frame or 1, render_params(request, media_type, info)
    )
    return Representation(media_type, image, _warnings(request.ignored))


def _may_render(request: WadoRequest) -> bool:
    return not request.content_types or request.content_types[0] != DICOM


def choose(request: WadoRequest, info: ImageInfo | None) -> str:
    """The first acceptable type this object has: rendered types need pixel data; the default
    is image/jpeg for an image and application/dicom for anything else."""
    for media_type in request.content_types or (JPEG, DICOM):
        if media_type == DICOM or info is not None:
            return media_type
    raise NotAcceptable("contentType: the object has no pixel data to render; ask for " + DICOM)


def inspect(data: bytes) -> ImageInfo | None:
    """Rows, Columns and Number of Frames of an object with pixel data; None without. Large
    values (the pixel data itself) are not read."""
    ds = part10.read(data, defer_size=_DEFER)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        return None
    return ImageInfo(
        _count(ds.get("Rows")), _count(ds.get("Columns")), _count(ds.get("NumberOfFrames"))
    )


def _count(value: object) -> int:
    try:
        return max(1, int(str(value or 1)))
    except ValueError:
        return 1


def render_params(request: WadoRequest, media_type: str, info: ImageInfo) -> RenderParams:
    """`gateway.rendering`'s parameters; a frame past the object's frames is a 400 naming
    frameNumber (PS3.18 9.5.1.2.1)."""
    if request.frame is not None and request.frame > info.frames:
        message = f"frameNumber {request.frame} is not in 1..{info.frames}"
        raise BadRequest(message, parameter="frameNumber")
    return RenderParams(
        media_type=media_type,
        quality=request.quality or rendering.DEFAULT_QUALITY,
        viewport=viewport(request, info),
        window=request.window,
    )


def viewport(request: WadoRequest, info: ImageInfo) -> Viewport | None:
    """`region` in pixels (PS3.18 9.5.1.2.5: the pixels it touches), then `rows` / `columns`
    as the largest size (9.5.1.2.4; one alone bounds its side only). Neither: as is."""
    if request.region is None and request.rows is None and request.columns is None:
        return None
    sx = sy = sw = sh = None
    width, height = info.columns, info.rows
    if request.region is not None:
        r = request.region
        sx, sy = math.floor(r.x1 * info.columns), math.floor(r.y1 * info.rows)
        sw = max(1, min(info.columns, math.ceil(r.x2 * info.columns)) - sx)
        sh = max(1, min(info.rows, math.ceil(r.y2 * info.rows)) - sy)
        width, height = sw, sh
    if request.rows is not None or request.columns is not None:
        width = request.columns or rendering.MAX_VIEWPORT
        height = request.rows or rendering.MAX_VIEWPORT
    return Viewport(width, height, sx, sy, sw, sh)


def _warnings(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"parameter {name} is not supported and was ignored" for name in names)
