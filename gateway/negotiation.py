"""Accept header negotiation for QIDO-RS and WADO-RS (PS3.18 8.7).

Pure. Tolerates what real clients send: quoted and unquoted `type`, parameters in any order,
several media ranges with q-values, `*/*`, and `transfer-syntax=*`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID
from werkzeug.http import parse_list_header

from .errors import NotAcceptable
from .query import is_uid

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class MediaRange:
    mimetype: str
    params: tuple[tuple[str, str], ...]
    q: float

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None


def _split_params(item: str) -> list[str]:
    """Splits `a; b="x;y"; c` on semicolons outside quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in item:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_media_type(item: str) -> tuple[str, dict[str, str]]:
    """`multipart/related; type=application/dicom` -> ("multipart/related", {"type": ...}).
    Unquoted parameter values may hold '/', as OHIF sends them (RFC 7231 would quote them)."""
    mimetype, *raw = _split_params(item)
    params: dict[str, str] = {}
    for p in raw:
        name, sep, value = p.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"')
    return mimetype.strip().lower(), params


#: The 406 for an Accept whose only ranges name a transfer-syntax that cannot be one.
NOT_A_SYNTAX = 'the Accept header\'s transfer-syntax is neither a UID nor "*"'


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges by decreasing q (ties keep their order); q=0 ranges are dropped."""
    ranges: list[MediaRange] = []
    for item in parse_list_header(header or ""):
        mimetype, params = parse_media_type(item)
        if not mimetype:
            continue
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if not 0.0 <= q <= 1.0:  # NaN too: a qvalue is 0 to 1 (RFC 9110 12.4.2)
            q = 1.0
        if q <= 0:
            continue
        ranges.append(MediaRange(mimetype, tuple(params.items()), q))
    return sorted(ranges, key=lambda r: -r.q)


def negotiate_json(header: str | None) -> str:
    """QIDO-RS and metadata (PS3.18 8.7.3.3): DICOM JSON, also when `application/json` or a
    wildcard is acceptable; anything else is a 406."""
    if not (header or "").strip():
        return DICOM_JSON
    ranges = parse_accept(header)
    for r in ranges:
        if r.mimetype in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return DICOM_JSON if r.mimetype != "application/json" else "application/json"
    raise NotAcceptable("acceptable media types are application/dicom+json and application/json")


def negotiate_instances(header: str | None) -> tuple[str, ...]:
    """WADO-RS study/series/instance retrieval (PS3.18 8.7.3.5): the transfer syntaxes the
    client accepts, most preferred first (`*` for "as stored"); each object is sent in the
    first one the gateway can produce for it. A range without one means Explicit VR Little
    Endian (PS3.18 Table 8.7.3-2)."""
    if not (header or "").strip():
        return (EXPLICIT_VR_LITTLE_ENDIAN,)
    syntaxes: list[str] = []
    invalid = False
    for r in parse_accept(header):
        if r.mimetype in ("*/*", "multipart/*"):
            syntaxes.append(EXPLICIT_VR_LITTLE_ENDIAN)
            continue
        if r.mimetype != "multipart/related":
            continue
        part_type = (r.param("type") or "application/dicom").lower()
        if part_type not in ("application/dicom", "*/*", "application/*"):
            continue
        syntax = r.param("transfer-syntax")
        if syntax is None:
            syntaxes.append(EXPLICIT_VR_LITTLE_ENDIAN)
        elif syntax == "*" or is_uid(syntax):
            syntaxes.append(syntax)
        else:
            invalid = True
    if not syntaxes and invalid:
        raise NotAcceptable(NOT_A_SYNTAX)
    if not syntaxes:
        raise NotAcceptable('instances are served as multipart/related; type="application/dicom"')
    return tuple(dict.fromkeys(syntaxes))


#: Transfer syntaxes of `application/octet-stream` bulk data (PS3.18 Table 8.7.3-5: Explicit
#: VR Little Endian is the default), and `*`: as stored.
BULK_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, "*")


@dataclass(frozen=True)
class BulkAsk:
    multipart: bool  # `multipart/related; type="application/octet-stream"` (else one body)
    transfer_syntax: str  # one of BULK_SYNTAXES


def negotiate_bulk(header: str | None) -> BulkAsk:
    """Bulk data (PS3.18 8.7.3.4): multipart for `multipart/related;
    type="application/octet-stream"`, a single `application/octet-stream` body otherwise
    (also what a browser's `*/*` gets), in the range's `transfer-syntax` (default Explicit VR
    Little Endian, `*` for as stored); anything else is a 406."""
    if not (header or "").strip():
        return BulkAsk(False, EXPLICIT_VR_LITTLE_ENDIAN)
    for r in parse_accept(header):
        part_type = (r.param("type") or "application/octet-stream").lower()
        multipart = r.mimetype in ("multipart/related", "multipart/*") and part_type in (
            "application/octet-stream",
            "application/*",
            "*/*",
        )
        if not multipart and r.mimetype not in ("application/octet-stream", "*/*", "application/*"):
            continue
        syntax = r.param("transfer-syntax") or EXPLICIT_VR_LITTLE_ENDIAN
        if syntax in BULK_SYNTAXES:
            return BulkAsk(multipart, syntax)
    raise NotAcceptable(
        "bulk data is served as application/octet-stream, transfer-syntax "
        + ", ".join(BULK_SYNTAXES)
    )


# -- frames (PS3.18 8.7.3.3, 10.4.1.1.3) -------------------------------------------------------

OCTET_STREAM = "application/octet-stream"
#: Compressed Bulkdata media types and their transfer syntaxes (PS3.18 Table 8.7.3-5; the
#: first one is the table's default).
FRAME_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
    ),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
}
#: Names used before PS3.18 2019 (still sent by older viewers).
OLD_MEDIA_TYPES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
#: Pixel data in these syntaxes is native little endian, frame by frame the same bytes.
NATIVE_LITTLE_ENDIAN = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.1.99"}
)
_WILDCARDS = frozenset({"*/*", "multipart/*"})


def frame_media_type(transfer_syntax: str) -> str | None:
    """The media type of a compressed frame in `transfer_syntax` (PS3.18 Table 8.7.3-5), None
    for native pixel data and for syntaxes that have no per-frame media type (video)."""
    for media_type, syntaxes in FRAME_MEDIA_TYPES.items():
        if transfer_syntax in syntaxes:
            return media_type
    return None


@dataclass(frozen=True)
class FrameRange:
    """One acceptable representation of frames: `media_type` as the client named it (may be
    `*/*` or `image/*`), `transfer_syntax` None when not given, `multipart` or a single body."""

    media_type: str
    transfer_syntax: str | None
    multipart: bool


@dataclass(frozen=True)
class FrameChoice:
    """What to send: parts of `media_type` holding frames in `transfer_syntax`; `decode` True
    means decoded to native little-endian pixel data, False the stored frame bytes."""

    media_type: str
    transfer_syntax: str
    decode: bool
    multipart: bool


def frame_ranges(header: str | None, count: int) -> list[FrameRange]:
    """The Accept header of a Retrieve Frames request (PS3.18 10.4.1.1.3, 8.7.3.3), in order of
    preference. A single-part media type only fits a request for one frame (PS3.18 8.6.1).
    No header, `*/*` or `multipart/*`: multipart, decoded to application/octet-stream when a
    decoder is installed, else the stored media type. Raises 406 when no
    range can describe frames at all (checked before the instance is fetched)."""
    if not (header or "").strip():
        return [FrameRange("*/*", None, True)]
    ranges: list[FrameRange] = []
    invalid = False
    for r in parse_accept(header):
        syntax = r.param("transfer-syntax")
        if syntax is not None and syntax != "*" and not is_uid(syntax):
            invalid = True
            continue
        if r.mimetype in _WILDCARDS:
            ranges.append(FrameRange("*/*", syntax, True))
        elif r.mimetype == "multipart/related":
            part = (r.param("type") or OCTET_STREAM).lower()
            if _describes_frames(part):
                ranges.append(FrameRange(part, syntax, True))
        elif count == 1 and _describes_frames(r.mimetype):
            ranges.append(FrameRange(r.mimetype, syntax, False))
    if not ranges and invalid:
        raise NotAcceptable(NOT_A_SYNTAX)
    if not ranges:
        raise NotAcceptable(
            'frames are served as multipart/related; type="application/octet-stream" or as '
            "their stored image media type (single part only for one frame)"
        )
    return ranges


def _describes_frames(media_type: str) -> bool:
    return (
        media_type in (OCTET_STREAM, "*/*", "application/*", "image/*")
        or media_type in FRAME_MEDIA_TYPES
        or media_type in OLD_MEDIA_TYPES
    )


def choose_frames(ranges: list[FrameRange], stored_syntax: str, can_decode: bool) -> FrameChoice:
    """The first range that frames stored in `stored_syntax` can be sent as, without encoding.
    Native frames go as application/octet-stream (little endian). Compressed frames go as
    stored when the range names their media type (old or new name, any of its syntaxes unless
    one is given) or `transfer-syntax=*`; decoded to native when the range asks for
    application/octet-stream and a decoder is installed. Raises 406 otherwise."""
    for r in ranges:
        choice = _native(r, stored_syntax, can_decode) or _stored(r, stored_syntax)
        if choice is not None:
            return choice
    stored = frame_media_type(stored_syntax)
    hint = f' or type="{stored}"' if stored else ""
    raise NotAcceptable(
        f"the frames are stored as {UID(stored_syntax).name}; acceptable: "
        f'multipart/related; type="application/octet-stream"{hint}'
    )


def _native(r: FrameRange, stored: str, can_decode: bool) -> FrameChoice | None:
    """Octet-stream frames: native little endian, decoded from a compressed syntax if need be
    (PS3.18 8.7.3.3.1: uncompressed Bulkdata is Explicit VR Little Endian)."""
    if r.media_type not in (OCTET_STREAM, "*/*", "application/*"):
        return None
    native = stored in NATIVE_LITTLE_ENDIAN or stored == "1.2.840.10008.1.2.2"
    if r.transfer_syntax == "*" and not native:
        return None  # `*`: the stored bytes, see _stored
    if r.transfer_syntax not in (None, "*", *NATIVE_LITTLE_ENDIAN):
        return None
    if not (native or can_decode):
        return None
    return FrameChoice(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, not native, r.multipart)


def _stored(r: FrameRange, stored: str) -> FrameChoice | None:
    """Compressed frames as stored, with no decoding (PS3.18 8.7.3.3.2)."""
    media_type = frame_media_type(stored)
    if media_type is None:
        return None
    wanted = OLD_MEDIA_TYPES.get(r.media_type, r.media_type)
    if r.transfer_syntax not in (None, "*", stored):
        return None
    if wanted == media_type:
        return FrameChoice(r.media_type, stored, False, r.multipart)
    if wanted in ("image/*", "*/*") or (wanted == OCTET_STREAM and r.transfer_syntax is not None):
        label = media_type if wanted != OCTET_STREAM else OCTET_STREAM
        return FrameChoice(label, stored, False, r.multipart)
    return None
