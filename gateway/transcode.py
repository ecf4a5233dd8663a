"""Re-encoding retrieved objects into the transfer syntax the client asked for.

This release converts between the uncompressed syntaxes (Implicit VR Little Endian, Explicit VR
Little and Big Endian), which needs no codec; a request that would need decoding or encoding
compressed pixel data is a 406 (PS3.18 8.7.3.5).
"""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import UID

from .connectors.base import Part10
from .errors import GatewayError, NotAcceptable

UNCOMPRESSED = {
    "1.2.840.10008.1.2": (True, True),  # Implicit VR Little Endian: (implicit, little)
    "1.2.840.10008.1.2.1": (False, True),  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2": (False, False),  # Explicit VR Big Endian (retired)
}


class DamagedObject(GatewayError):
    """An object from the archive cannot be what it says it is (502; the engine names the
    connector)."""

    status = 502


def deliver(part: Part10, transfer_syntax: str) -> Part10:
    """`part` as asked: unchanged for `*` or its own syntax, else re-encoded when possible."""
    if transfer_syntax in ("*", part.transfer_syntax):
        return part
    if part.transfer_syntax in UNCOMPRESSED and transfer_syntax in UNCOMPRESSED:
        return _reencode(part, transfer_syntax)
    raise NotAcceptable(
        f"an instance is stored as {UID(part.transfer_syntax).name} and cannot be sent as "
        f"{UID(transfer_syntax).name}; ask for transfer-syntax=* to receive it as stored"
    )


def _reencode(part: Part10, transfer_syntax: str) -> Part10:
    try:
        ds = pydicom.dcmread(io.BytesIO(part.data), force=True)
    except Exception as exc:  # pydicom raises many types on damaged input
        raise DamagedObject("an object the archive sent cannot be read") from exc
    _check_pixel_length(ds)
    implicit, little = UNCOMPRESSED[transfer_syntax]
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    return Part10(out.getvalue(), transfer_syntax, part.sop_instance_uid)


def _check_pixel_length(ds: pydicom.Dataset) -> None:
    """Native Pixel Data holds Rows x Columns x SamplesPerPixel x NumberOfFrames values of
    BitsAllocated bits (PS3.5 8.1.1); a shorter value is a truncated object, which re-encoding
    would turn into a valid-looking one."""
    if "PixelData" not in ds or "Rows" not in ds:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    values = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    expected = (values * bits + 7) // 8
    if len(ds.PixelData) < expected:
        raise DamagedObject("an object the archive sent is truncated (Pixel Data too short)")
