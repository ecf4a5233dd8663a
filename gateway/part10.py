"""Reading the Part 10 objects archives send (PS3.10 7): one reader for every place that parses
them, so that bytes that are not a DICOM instance, or an instance cut short, are a damaged
object (502 naming the connector) everywhere, never an empty data set served as a 200."""

from __future__ import annotations

import io

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
