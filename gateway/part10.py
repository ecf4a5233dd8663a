"""Reading the Part 10 objects archives send (PS3.10 7): one reader for every place that parses
them, so that bytes that are not a DICOM instance, or an instance cut short, are a damaged
object (502 naming the connector) everywhere, never an empty data set served as a 200."""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .errors import GatewayError


class DamagedObject(GatewayError):
    """An object from the archive cannot be what it says it is (502; the engine names the
    connector)."""

    status = 502


def read(data: bytes, defer_size: int | None = None) -> pydicom.Dataset:
    """The data set of a Part 10 object. pydicom keeps nothing of a data set whose bytes end
    early (it reads it as empty, with a warning), so an instance without its SOP Class UID
    (PS3.3 C.12.1, Type 1) is taken for a damaged one."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=defer_size)
    except Exception as exc:  # pydicom raises many types on damaged input
        raise DamagedObject("an object the archive sent cannot be read") from exc
    if "SOPClassUID" not in ds:
        raise DamagedObject("an object the archive sent is not a whole DICOM instance")
    if _cut_short(ds):
        raise DamagedObject("an object the archive sent is truncated (a value is cut short)")
    return ds


def header(data: bytes, tags: tuple[int, ...]) -> Dataset:
    """Only `tags` of a Part 10 object's data set (pydicom stops reading at Pixel Data): for a
    check of a few attributes, not for serving. Raises what pydicom raises on damaged input."""
    return pydicom.dcmread(
        io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(tags)
    )


_UNDEFINED = 0xFFFFFFFF


def _cut_short(ds: Dataset) -> bool:
    """Whether an element holds fewer bytes than its header declares. pydicom keeps what it
    could read of the last element of a stream that ends early (PS3.5 7.1: a defined length
    is the value's exact length), so a truncated object would otherwise serve a short value.
    Only the last element in stream order can be short; this looks at that one, descending
    into the last item of a sequence."""
    while len(ds):
        elem = ds._dict[max(ds._dict)]  # elements are stored in ascending tag order
        if isinstance(elem, RawDataElement):
            value, length = elem.value, elem.length
            return value is not None and length != _UNDEFINED and len(value) < length
        if isinstance(elem.value, Sequence) and len(elem.value):
            ds = elem.value[-1]
            continue
        return False
    return False


#: PS3.5 7.1.2: VRs whose explicit-VR element header has 2 reserved bytes and a 4-byte length
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_META_LIMIT = 64 * 1024  # a File Meta Information group is a few hundred bytes


def file_meta(data: bytes) -> dict[int, str] | None:
    """The text values of a Part 10 object's File Meta Information (PS3.10 7.1: the 128-byte
    preamble, "DICM", then group 0002 in Explicit VR Little Endian), read without parsing the
    data set: {0x00020010: transfer syntax, 0x00020003: SOP instance UID, ...}. None when
    `data` does not start that way."""
    found = _meta(data)
    return None if found is None else found[0]


_EXPLICIT_LE, _IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
_SOP_INSTANCE_UID = 0x00080018


def identify(data: bytes) -> tuple[str, str] | None:
    """(transfer syntax, the data set's SOP Instance UID) read from the bytes: the meta, then
    the data set's first elements up to (0008,0018), which PS3.5 7.1 puts near its start. None
    when that cannot be read that quickly (another encoding, a sequence of undefined length
    on the way): then parse the object."""
    found = _meta(data)
    if found is None:
        return None
    meta, at = found
    syntax = meta.get(0x00020010, "")
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE) and not syntax.startswith("1.2.840.10008.1.2.4"):
        return None  # big endian, deflated, unknown: pydicom knows
    explicit = syntax != _IMPLICIT_LE
    end = min(len(data), at + _META_LIMIT)
    while at + 8 <= end:
        group, element = struct.unpack_from("<HH", data, at)
        tag = (group << 16) | element
        if tag > _SOP_INSTANCE_UID:
            return None  # the data set has no SOP Instance UID where it belongs
        vr = data[at + 4 : at + 6] if explicit else b""
        if explicit and vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, at + 8)
            at += 12
        elif explicit:
            (length,) = struct.unpack_from("<H", data, at + 6)
            at += 8
        else:
            (length,) = struct.unpack_from("<I", data, at + 4)
            at += 8
        if length == 0xFFFFFFFF or at + length > end:
            return None
        if tag == _SOP_INSTANCE_UID:
            uid = data[at : at + length].rstrip(b"\x00 ").decode("ascii", "replace")
            return syntax, uid
        at += length
    return None


def _meta(data: bytes) -> tuple[dict[int, str], int] | None:
    """The meta's text values and the offset where the data set starts."""
    if data[128:132] != b"DICM":
        return None
    out: dict[int, str] = {}
    at, end = 132, min(len(data), _META_LIMIT)
    while at + 8 <= end:
        group, element = struct.unpack_from("<HH", data, at)
        if group != 0x0002:
            return out, at
        vr = data[at + 4 : at + 6]
        if vr in _LONG_VRS:
            if at + 12 > end:
                return None
            (length,) = struct.unpack_from("<I", data, at + 8)
            at += 12
        else:
            (length,) = struct.unpack_from("<H", data, at + 6)
            at += 8
        if at + length > end:
            return None
        if vr == b"UI":
            out[(group << 16) | element] = (
                data[at : at + length].rstrip(b"\x00 ").decode("ascii", "replace")
            )
        at += length
    return None  # the bytes end inside group 0002
