"""Re-encoding retrieved objects into the transfer syntax the client asked for (PS3.18 8.7.3.5:
an explicit `transfer-syntax` the origin server cannot produce is a 406).

What can be produced, from what:

- between the uncompressed syntaxes (Implicit VR Little Endian, Explicit VR Little Endian) and
  from Explicit VR Big Endian (retired; native pixel data and other word values byte-swapped,
  PS3.5 7.3, A.3); Big Endian itself is never produced;
- from any compressed syntax pydicom has an installed decoder for (JPEG baseline, extended
  8-bit and lossless; JPEG-LS; JPEG 2000 and HTJ2K; RLE) to the uncompressed syntaxes, by
  decoding; pixels keep their values and the SOP Instance UID is kept (decoding adds no loss);
  YCbCr JPEG data is decoded to RGB, PhotometricInterpretation updated to match;
- to the lossless compressed syntaxes that pydicom has an installed encoder for (RLE Lossless,
  JPEG-LS Lossless, JPEG 2000 Lossless), from any of the above. Lossy targets are refused: the
  gateway never adds loss that the archive did not.

Codecs are pydicom 3 plugins; when several are installed, the one in `DECODERS` / `ENCODERS`
is tried first (speed), then any other. All are permissively licensed: Pillow (libjpeg-turbo,
OpenJPEG), pylibjpeg with pylibjpeg-openjpeg and pylibjpeg-rle (MIT), pyjpegls (MIT, CharLS),
python-gdcm (GDCM, BSD) for JPEG lossless, which nothing else decodes without GPL code.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import uid
from pydicom.dataelem import DataElement
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.pixels.encoders.base import Encoder, get_encoder
from pydicom.uid import UID

from . import part10
from .connectors.base import Part10
from .errors import NotAcceptable
from .part10 import DamagedObject

log = logging.getLogger("gateway.transcode")
T = TypeVar("T")


def _drop_plugin_tracebacks(record: logging.LogRecord) -> bool:
    """pydicom logs every failing codec plugin with `LOGGER.exception` (an ERROR and a traceback
    for pixel data a plugin does not take, such as 32-bit values for JPEG 2000). The gateway
    tries the plugins itself and logs each failure at DEBUG (`_first_plugin`); the request's
    answer (406, 502) says what happened, so those records are dropped."""
    return record.levelno < logging.ERROR


for _name in ("pydicom.pixels.encoders.base", "pydicom.pixels.decoders.base"):
    logging.getLogger(_name).addFilter(_drop_plugin_tracebacks)

UNCOMPRESSED = {
    "1.2.840.10008.1.2": (True, True),  # Implicit VR Little Endian: (implicit, little)
    "1.2.840.10008.1.2.1": (False, True),  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2": (False, False),  # Explicit VR Big Endian (retired)
}
BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: How a client asks for objects as stored, in a 406's message (WADO-RS and WADO-URI spell it
#: differently).
AS_STORED = "ask for it as stored: transfer-syntax=* (WADO-RS) or transferSyntax=* (WADO-URI)"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: The decoding plugin tried first for each syntax (the fastest of those measured here).
DECODERS: dict[str, str] = {
    uid.JPEGBaseline8Bit: "pillow",
    uid.JPEGExtended12Bit: "pillow",
    uid.JPEGLossless: "gdcm",
    uid.JPEGLosslessSV1: "gdcm",
    uid.JPEGLSLossless: "pyjpegls",
    uid.JPEGLSNearLossless: "pyjpegls",
    uid.JPEG2000Lossless: "pylibjpeg",
    uid.JPEG2000: "pylibjpeg",
    uid.HTJ2KLossless: "pylibjpeg",
    uid.HTJ2KLosslessRPCL: "pylibjpeg",
    uid.HTJ2K: "pylibjpeg",
    uid.RLELossless: "pylibjpeg",
}
#: The lossless syntaxes the gateway encodes into, with the plugin tried first.
ENCODERS: dict[str, str] = {
    uid.RLELossless: "pylibjpeg",
    uid.JPEGLSLossless: "pyjpegls",
    uid.JPEG2000Lossless: "pylibjpeg",
}
#: Value representations whose values are words in the dataset's byte order (PS3.5 7.3).
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)


def is_compressed(transfer_syntax: str) -> bool:
    """True for syntaxes whose Pixel Data is encapsulated (PS3.5 A.4)."""
    return transfer_syntax not in UNCOMPRESSED and transfer_syntax != DEFLATED


def can_decode(transfer_syntax: str, bits_stored: int = 8) -> bool:
    """True when an installed pydicom decoder handles `transfer_syntax` at that precision
    (12-bit JPEG Extended needs libjpeg, whose Python binding is GPL: not installed)."""
    if transfer_syntax == uid.JPEGExtended12Bit and bits_stored > 8:
        return False
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_encode(transfer_syntax: str) -> bool:
    """True for the lossless syntaxes of `ENCODERS` whose encoder is installed."""
    if transfer_syntax not in ENCODERS:
        return False
    try:
        return bool(get_encoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def deliver(part: Part10, transfer_syntax: str | Sequence[str]) -> Part10:
    """`part` in the first of the acceptable syntaxes (most preferred first) that it is in or
    can be re-encoded to; NotAcceptable when none can be produced."""
    choices = (transfer_syntax,) if isinstance(transfer_syntax, str) else tuple(transfer_syntax)
    refusal: NotAcceptable | None = None
    for choice in choices:
        try:
            return _deliver_one(part, choice)
        except NotAcceptable as exc:
            refusal = refusal or exc
    raise refusal or NotAcceptable("no acceptable transfer syntax")


def _deliver_one(part: Part10, transfer_syntax: str) -> Part10:
    """`part` as asked: unchanged for `*` or its own syntax, else re-encoded when possible."""
    if transfer_syntax in ("*", part.transfer_syntax):
        return part
    ds = _read(part)
    _check_possible(part.transfer_syntax, transfer_syntax, int(ds.get("BitsStored", 8) or 8))
    _check_budget(ds)
    if "PixelData" in ds:
        _to_native_little_endian(ds, part.transfer_syntax)
        if can_encode(transfer_syntax):
            _compress(ds, transfer_syntax)
    return Part10(_write(ds, transfer_syntax), transfer_syntax, part.sop_instance_uid)


#: The largest decoded Pixel Data re-encoded in memory; a larger object (or a decompression
#: bomb: a small compressed object that claims gigabytes) is sent only as stored.
MAX_DECODED_BYTES = 128 * 1024 * 1024


def _check_budget(ds: pydicom.Dataset) -> None:
    """Refuses (406) to re-encode an object whose decoded pixels exceed MAX_DECODED_BYTES,
    from what its attributes declare, before anything is decoded."""
    if "PixelData" not in ds:
        return
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        values = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
        size = values * frames * ((int(ds.get("BitsAllocated", 8) or 8) + 7) // 8)
    except (TypeError, ValueError, AttributeError) as exc:
        raise DamagedObject("an object the archive sent has invalid image attributes") from exc
    if size > MAX_DECODED_BYTES or frames < 1:
        raise NotAcceptable(
            f"an instance would decode to {size // 2**20} MiB, more than the gateway re-encodes "
            f"({MAX_DECODED_BYTES // 2**20} MiB); {AS_STORED}"
        )


def _check_possible(source: str, target: str, bits_stored: int) -> None:
    produce = target in UNCOMPRESSED and target != BIG_ENDIAN or can_encode(target)
    read = not is_compressed(source) or can_decode(source, bits_stored)
    if not (produce and read):
        raise NotAcceptable(
            f"an instance is stored as {UID(source).name} and cannot be sent as "
            f"{UID(target).name}; {AS_STORED}"
        )


def _read(part: Part10) -> pydicom.Dataset:
    return part10.read(part.data)


def _to_native_little_endian(ds: pydicom.Dataset, source: str) -> None:
    """Native little-endian Pixel Data, by decoding (PS3.5 8.2) or byte swapping (A.3)."""
    if is_compressed(source):
        _decompress(ds, source)
        return
    _check_pixel_length(ds)
    if source == BIG_ENDIAN:
        _swap_words(ds, int(ds.get("BitsAllocated", 16) or 16))
        ds.set_original_encoding(False, True, ds.original_character_set)


def _decompress(ds: pydicom.Dataset, source: str) -> None:
    def run(plugin: str) -> bool:
        ds.decompress(generate_instance_uid=False, decoding_plugin=plugin)
        return True

    if _first_plugin(DECODERS.get(source, ""), get_decoder(UID(source)), run) is None:
        raise DamagedObject("an object the archive sent cannot be decoded")
    for tag in _EXTENDED_OFFSETS:  # they describe encapsulated data only (PS3.3 C.7.6.3)
        ds.pop(tag, None)


def _compress(ds: pydicom.Dataset, target: str) -> None:
    def run(plugin: str) -> bool:
        ds.compress(target, encoding_plugin=plugin, generate_instance_uid=False)
        return True

    if _first_plugin(ENCODERS[target], get_encoder(UID(target)), run) is None:
        # pixel data that no encoder takes (bit depth, colour model)
        raise NotAcceptable(f"this instance's pixel data cannot be encoded as {UID(target).name}")


def _first_plugin(preferred: str, codec: Decoder | Encoder, run: Callable[[str], T]) -> T | None:
    """`run(plugin)` with the preferred plugin first, then the others pydicom has installed;
    the first result, or None when every plugin refused or failed (logged at DEBUG)."""
    for plugin in sorted(codec.available_plugins, key=lambda name: name != preferred):
        try:
            return run(plugin)
        except Exception as exc:  # plugins raise many types; the next one may succeed
            log.debug("pixel data plugin %s failed: %s", plugin, type(exc).__name__, exc_info=exc)
    return None


def _write(ds: pydicom.Dataset, transfer_syntax: str) -> bytes:
    implicit, little = UNCOMPRESSED.get(transfer_syntax, (False, True))
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    return out.getvalue()


def _swap_words(ds: pydicom.Dataset, bits_allocated: int) -> None:
    """Big to little endian for values that pydicom keeps as raw bytes: native Pixel Data by
    BitsAllocated, OW/OF/OL/OD/OV values by their word size (PS3.5 7.3), in sequences too."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_words(item, bits_allocated)
            continue
        size = _WORD_SIZES.get(str(elem.VR), 1)
        if elem.tag == 0x7FE00010:
            size = pixel_word_size(str(elem.VR), bits_allocated)
        if size > 1 and isinstance(elem.value, bytes):
            ds[elem.tag] = DataElement(elem.tag, elem.VR, swap(elem.value, size))


def pixel_word_size(vr: str, bits_allocated: int) -> int:
    """The unit that big-endian native Pixel Data swaps by: the value size, and 16-bit words for
    8-bit values encoded as OW (PS3.5 A.3; as pydicom reads them). 1-bit data is not swapped."""
    if bits_allocated == 8 and vr == "OW":
        return 2
    return max(bits_allocated // 8, 1)


def swap(value: bytes, size: int) -> bytes:
    """Reverses the bytes of each `size`-byte word (a trailing partial word is kept)."""
    whole = len(value) - len(value) % size
    words = np.frombuffer(value[:whole], dtype=f">u{size}")
    return words.astype(f"<u{size}").tobytes() + value[whole:]


def decode_frame(ds: pydicom.Dataset, transfer_syntax: str, index: int) -> npt.NDArray[Any]:
    """Frame `index` (0-based) of compressed Pixel Data, decoded (YCbCr as RGB, as pydicom
    does by default). NotAcceptable without a decoder; DamagedObject when the data fails."""
    if not can_decode(transfer_syntax, int(ds.get("BitsStored", 8) or 8)):
        raise NotAcceptable(f"no decoder is installed for {UID(transfer_syntax).name}")
    decoder = get_decoder(UID(transfer_syntax))

    def run(plugin: str) -> npt.NDArray[Any]:
        return decoder.as_array(ds, index=index, decoding_plugin=plugin)[0]

    array = _first_plugin(DECODERS.get(transfer_syntax, ""), decoder, run)
    if array is None:
        raise DamagedObject("a frame of an object the archive sent cannot be decoded")
    return array


def _check_pixel_length(ds: pydicom.Dataset) -> None:
    """Native Pixel Data holds Rows x Columns x SamplesPerPixel x NumberOfFrames values of
    BitsAllocated bits (PS3.5 8.1.1); a shorter value is a truncated object, which re-encoding
    would turn into a valid-looking one."""
    if "PixelData" not in ds or "Rows" not in ds:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    expected = (native_values(ds) * frames * bits + 7) // 8
    if len(ds.PixelData) < expected:
        raise DamagedObject("an object the archive sent is truncated (Pixel Data too short)")


def native_values(ds: pydicom.Dataset) -> int:
    """Pixel values in one native frame: Rows x Columns x SamplesPerPixel, but two values per
    pixel for YBR_FULL_422, whose chrominance is horizontally subsampled (PS3.3 C.7.6.3.1.2)."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 and ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2
    return int(ds.Rows) * int(ds.Columns) * samples
