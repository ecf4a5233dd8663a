"""Bulk data: the value of one binary element of an instance, found by the tag path that the
gateway's BulkDataURIs carry (`7FE00010`, or `00880200/0/7FE00010` inside a sequence item)."""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

from . import part10
from .errors import BadRequest, NotFound

_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


def parse_path(path: str) -> tuple[int | str, ...]:
    """`00880200/0/7FE00010` -> (0x00880200, "0", 0x7FE00010); odd positions are item numbers."""
    parts = path.strip("/").split("/")
    if len(parts) % 2 == 0:
        raise BadRequest("a bulk data path ends in a tag", parameter="bulk")
    out: list[int | str] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if not _TAG.match(part):
                raise BadRequest(f"{part!r} is not a tag", parameter="bulk")
            out.append(int(part, 16))
        else:
            if not (part.isascii() and part.isdigit()) or len(part) > 6:
                raise BadRequest(f"{part!r} is not an item number", parameter="bulk")
            out.append(part)
    return tuple(out)


def extract(data: bytes, path: tuple[int | str, ...]) -> tuple[bytes, str]:
    """The raw value at `path` and the instance's transfer syntax. Native pixel data of a
    big-endian object is returned as stored; callers name the transfer syntax."""
    ds = part10.read(data)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    node: Dataset = ds
    for i in range(0, len(path) - 1, 2):
        seq = node.get(path[i])
        index = int(path[i + 1])
        if seq is None or seq.VR != "SQ" or index >= len(seq.value):
            raise NotFound("no such bulk data element")
        node = seq.value[index]
    elem = node.get(path[-1])
    if elem is None or elem.value is None or not isinstance(elem.value, bytes):
        raise NotFound("no such bulk data element")
    return elem.value, syntax
