"""Frames of an instance, from its Part 10 bytes (PS3.18 10.4.1.1.3 Retrieve Frames). Pure.

- Frame numbers are 1-based, in request order, repeats allowed (PS3.18 10.4.1.1.3: a comma
  list). Frame 0, a number past NumberOfFrames, or frames of an object that has no pixel data
  (no Pixel Data, Float Pixel Data or Double Float Pixel Data) are a **400** naming the
  `frames` parameter. PS3.18 allows 400 or 404; the instance exists and the request asks for a
  part it cannot have, which is a malformed request rather than a missing resource, and a 404
  would read as "no such instance".
- Native pixel data is split per frame as PS3.5 8.1.1 lays it out: Rows x Columns x
  SamplesPerPixel values of BitsAllocated bits (two values per pixel for YBR_FULL_422), frames
  one after the other; big-endian data is byte-swapped, so frames are always little endian.
  1-bit data (segmentations) is packed across frame boundaries: each frame is re-packed from
  its first bit, its last byte padded with zero bits, as a native frame with BitsAllocated 1.
- Encapsulated pixel data is split per frame with pydicom.encaps (Basic or Extended Offset
  Table, or one fragment per frame, PS3.5 A.4) and sent as stored, or decoded to native
  little-endian values (YCbCr JPEG data as RGB, as in the Explicit VR Little Endian object
  that `transcode.deliver` produces, and 1-bit data packed).
- Video syntaxes (MPEG-2, MPEG-4, HEVC) hold one stream for all frames: their frames are not
  served one by one (400).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pack_bits

from . import part10, transcode
from .errors import BadRequest
from .part10 import DamagedObject
from .transcode import BIG_ENDIAN

#: Longest frame list accepted in one request (each frame is a part).
MAX_FRAMES = 10_000
_PIXEL_ELEMENTS = ((0x7FE00010, 0), (0x7FE00008, 32), (0x7FE00009, 64))  # tag, fixed bits
_VIDEO_PREFIX = "1.2.840.10008.1.2.4.10"  # 4.100 to 4.108 (PS3.5 8.2.5 to 8.2.7)


@dataclass(frozen=True)
class Image:
    """A parsed instance with pixel data: the dataset, the tag of its pixel data element, its
    transfer syntax, bits per value, and frame count."""

    ds: pydicom.Dataset
    tag: int
    transfer_syntax: str
    bits: int
    count: int

    @property
    def compressed(self) -> bool:
        return self.tag == 0x7FE00010 and transcode.is_compressed(self.transfer_syntax)

    @property
    def can_decode(self) -> bool:
        """Native frames need no decoder; compressed ones need an installed one."""
        bits_stored = int(self.ds.get("BitsStored", self.bits) or self.bits)
        return not self.compressed or transcode.can_decode(self.transfer_syntax, bits_stored)


def parse_frame_list(text: str) -> tuple[int, ...]:
    """`1,3,2` -> (1, 3, 2) (PS3.18 10.4.1.1.3); anything but positive integers is a 400."""
    items = text.split(",")
    if len(items) > MAX_FRAMES:
        raise BadRequest(f"at most {MAX_FRAMES} frames in one request", parameter="frames")
    numbers: list[int] = []
    for item in items:
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or len(item) > 9 or int(item) < 1:
            raise BadRequest(
                "frames is a comma-separated list of frame numbers from 1", parameter="frames"
            )
        numbers.append(int(item))
    return tuple(numbers)


def open_image(data: bytes) -> Image:
    """Parses a Part 10 object. 400 when it has no pixel data, 502 when it cannot be read."""
    ds = part10.read(data)
    try:
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or _syntax_of(ds))
    except Exception as exc:  # pydicom raises many types on damaged input
        raise DamagedObject("an object the archive sent cannot be read") from exc
    for tag, fixed in _PIXEL_ELEMENTS:
        if tag in ds and "Rows" in ds and "Columns" in ds:
            bits = fixed or int(ds.get("BitsAllocated", 0) or 0)
            count = _frame_count(ds)
            if syntax.startswith(_VIDEO_PREFIX):
                raise BadRequest("frames of a video are not served one by one", parameter="frames")
            return Image(ds, tag, syntax, bits, count)
    raise BadRequest("the instance has no pixel data, hence no frames", parameter="frames")


def _frame_count(ds: pydicom.Dataset) -> int:
    """NumberOfFrames (IS, 1 when absent); a value that is no positive integer is damage in
    the object, not a fault of the request."""
    try:
        count = int(str(ds.get("NumberOfFrames", 1) or 1).strip())
    except ValueError as exc:
        raise DamagedObject("the object's NumberOfFrames is not a number") from exc
    if count < 1:
        raise DamagedObject("the object's NumberOfFrames is not a positive number")
    return count


def _syntax_of(ds: pydicom.Dataset) -> str:
    """The encoding pydicom found, for an object without File Meta Information."""
    implicit, little = ds.original_encoding
    if not little:
        return BIG_ENDIAN
    return "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"


def check_numbers(image: Image, numbers: Sequence[int]) -> None:
    """Every number is a frame of the image (1..NumberOfFrames), else 400."""
    for number in numbers:
        if not 1 <= number <= image.count:
            raise BadRequest(
                f"frame {number} is not in 1..{image.count} (NumberOfFrames)", parameter="frames"
            )


def frame(image: Image, number: int, decode: bool) -> bytes:
    """Frame `number` (1-based): native frames little endian; encapsulated frames as stored,
    or decoded to native little-endian values when `decode`."""
    if not image.compressed:
        return _native(image, number)
    if decode:
        return _decoded(image, number)
    return _encapsulated(image, number)


def frames(image: Image, numbers: Sequence[int], decode: bool) -> Iterator[bytes]:
    """The frames in request order. Numbers are checked and the first frame is extracted
    before this returns, so that errors come before a response starts."""
    check_numbers(image, numbers)
    first = frame(image, numbers[0], decode)

    def rest() -> Iterator[bytes]:
        yield first
        for number in numbers[1:]:
            yield frame(image, number, decode)

    return rest()


def _native(image: Image, number: int) -> bytes:
    """PS3.5 8.1.1: frames follow one another; a frame holds `native_values` values."""
    data = image.ds[image.tag].value
    if not isinstance(data, bytes) or image.bits not in (1, 8, 16, 32, 64):
        raise DamagedObject("an object the archive sent has unusable native pixel data")
    bits_per_frame = transcode.native_values(image.ds) * image.bits
    start = (number - 1) * bits_per_frame
    if len(data) * 8 < start + bits_per_frame:
        raise DamagedObject("an object the archive sent is truncated (Pixel Data too short)")
    if image.bits == 1:
        return _bit_slice(data, start, bits_per_frame)
    first, last = start // 8, (start + bits_per_frame) // 8
    word = transcode.pixel_word_size(str(image.ds[image.tag].VR), image.bits)
    if image.transfer_syntax != BIG_ENDIAN or word == 1:
        return data[first:last]
    low, high = first - first % word, last + (-last) % word  # whole words around the frame
    return transcode.swap(data[low:high], word)[first - low : last - low]


def _bit_slice(data: bytes, start: int, length: int) -> bytes:
    """Bits start..start+length of 1-bit data (first pixel in the least significant bit,
    PS3.5 8.1.1), re-packed from bit 0 of the first byte."""
    first, last = start // 8, (start + length + 7) // 8
    bits = np.unpackbits(np.frombuffer(data[first:last], dtype=np.uint8), bitorder="little")
    offset = start - first * 8
    return np.packbits(bits[offset : offset + length], bitorder="little").tobytes()


def _encapsulated(image: Image, number: int) -> bytes:
    """One frame of encapsulated pixel data, its fragments joined (PS3.5 A.4)."""
    extended = None
    if 0x7FE00001 in image.ds and 0x7FE00002 in image.ds:
        extended = (image.ds[0x7FE00001].value, image.ds[0x7FE00002].value)
    try:
        return get_frame(
            image.ds.PixelData, number - 1, number_of_frames=image.count, extended_offsets=extended
        )
    except Exception as exc:  # pydicom raises ValueError and others on broken fragments
        raise DamagedObject("a frame of an object the archive sent cannot be found") from exc


def _decoded(image: Image, number: int) -> bytes:
    array = transcode.decode_frame(image.ds, image.transfer_syntax, number - 1)
    if image.bits == 1:
        return pack_bits(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
