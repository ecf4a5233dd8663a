"""Reading the Part 10 objects archives send (PS3.10 7): one reader for every place that parses
them, so that bytes that are not a DICOM instance, or an instance cut short, are a damaged
object (502 naming the connector) everywhere, never an empty data set served as a 200."""

from __future__ import annotations

import io

import pydicom

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
    return ds
