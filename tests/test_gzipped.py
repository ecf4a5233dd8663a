"""gateway.gzipped: plain gzip (RFC 1952) that any client decodes, made by ISA-L when
python-isal is installed (a dependency of the project)."""

import gzip
import json
import zlib

from gateway import gzipped


def test_isal_does_the_compressing() -> None:
    assert gzipped._gzip.__name__ == "isal.igzip"


def test_output_is_standard_gzip_of_the_input() -> None:
    data = json.dumps(
        [{"00080018": {"vr": "UI", "Value": [f"1.2.3.{i}"]}, "00100010": {"vr": "PN"}}
         for i in range(20000)]
    ).encode()
    packed = gzipped.compress(data)
    assert packed[:2] == b"\x1f\x8b"  # RFC 1952 magic
    assert gzip.decompress(packed) == data
    assert zlib.decompress(packed, wbits=31) == data
    assert len(packed) < len(data) / 10  # DICOM JSON is repetitive
    assert gzip.decompress(gzipped.compress(b"")) == b""
