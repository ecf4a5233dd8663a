"""Accept header negotiation for QIDO-RS and WADO-RS (PS3.18 8.7).

Pure. Tolerates what real clients send: quoted and unquoted `type`, parameters in any order,
several media ranges with q-values, `*/*`, and `transfer-syntax=*`.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.http import parse_list_header

from .errors import NotAcceptable
from .query import is_uid

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
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


def negotiate_instances(header: str | None) -> str:
    """WADO-RS study/series/instance retrieval (PS3.18 8.7.3.5): returns the transfer syntax to
    send, `*` for "as stored". Without one, Explicit VR Little Endian (PS3.18 Table 8.7.3-2)."""
    if not (header or "").strip():
        return EXPLICIT_VR_LITTLE_ENDIAN
    ranges = parse_accept(header)
    for r in ranges:
        if r.mimetype in ("*/*", "multipart/*"):
            return EXPLICIT_VR_LITTLE_ENDIAN
        if r.mimetype != "multipart/related":
            continue
        part_type = (r.param("type") or "application/dicom").lower()
        if part_type not in ("application/dicom", "*/*", "application/*"):
            continue
        syntax = r.param("transfer-syntax")
        if syntax is None:
            return EXPLICIT_VR_LITTLE_ENDIAN
        if syntax == "*" or is_uid(syntax):
            return syntax
    raise NotAcceptable('instances are served as multipart/related; type="application/dicom"')


def negotiate_bulk(header: str | None) -> bool:
    """Bulk data (PS3.18 8.7.3.4): True for `multipart/related; type="application/octet-stream"`,
    False for a single `application/octet-stream` body, which is also what a browser's
    `*/*` gets; anything else is a 406."""
    if not (header or "").strip():
        return False
    for r in parse_accept(header):
        if r.mimetype == "multipart/related" and (
            r.param("type") or "application/octet-stream"
        ) in (
            "application/octet-stream",
            "*/*",
        ):
            return True
        if r.mimetype in ("application/octet-stream", "*/*", "application/*"):
            return False
    raise NotAcceptable("bulk data is served as application/octet-stream")
