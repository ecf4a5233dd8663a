"""The streaming multipart/related decoder (RFC 2046 5.1.1, RFC 2387), table-driven.

Expected parts are written out by hand from the RFC's grammar: a body part is everything between
the CRLF that ends its header section and the CRLF that precedes the next delimiter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.multipart import Part, iter_parts, parse_boundary, parse_content_type

CT = 'multipart/related; type="application/dicom"; boundary=XyZ'


def one_byte_chunks(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def decode(content_type: str, body: bytes, chunk: int | None = None) -> list[Part]:
    if chunk is None:
        return list(iter_parts(content_type, [body]))
    return list(iter_parts(content_type, (body[i : i + chunk] for i in range(0, len(body), chunk))))


# (id, content type, body, expected [(headers, body)])
VALID = [
    (
        "two parts",
        CT,
        (
            b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n"
            b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nBB\r\n--XyZ--\r\n"
        ),
        [
            ({"content-type": "application/dicom"}, b"AAA"),
            ({"content-type": "application/dicom"}, b"BB"),
        ],
    ),
    (
        "preamble and epilogue are ignored",
        CT,
        (
            b"This is the preamble.\r\nIt is to be ignored\r\n--XyZ\r\nA: 1\r\n\r\nbody\r\n"
            b"--XyZ--\r\nThis is the epilogue. --XyZ\r\n\r\nnot a part\r\n"
        ),
        [({"a": "1"}, b"body")],
    ),
    (
        "quoted boundary with characters that need quotes",
        'multipart/related; boundary="gc0p4Jq0M:2Yt08j=34"; type="application/dicom"',
        b"--gc0p4Jq0M:2Yt08j=34\r\nContent-Type: application/dicom\r\n\r\nX\r\n--gc0p4Jq0M:2Yt08j=34--",
        [({"content-type": "application/dicom"}, b"X")],
    ),
    (
        "body holding CRLF, dashes and a boundary-like line that is not after CRLF--",
        CT,
        b"--XyZ\r\n\r\n\r\n--\r\n-XyZ\r\n--XY\r\nXyZ--\r\n\r\n--XyZ--",
        [({}, b"\r\n--\r\n-XyZ\r\n--XY\r\nXyZ--\r\n")],
    ),
    (
        "empty part body and no headers",
        CT,
        b"--XyZ\r\n\r\n\r\n--XyZ--",
        [({}, b"")],
    ),
    (
        "transport padding after delimiters",
        CT,
        b"--XyZ \t \r\nX-A: 1\r\n\r\none\r\n--XyZ\t\r\n\r\ntwo\r\n--XyZ--  \r\n",
        [({"x-a": "1"}, b"one"), ({}, b"two")],
    ),
    (
        "header names lowercased, values trimmed, continuation lines joined",
        CT,
        (
            b"--XyZ\r\nContent-Type:  application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
            b"CONTENT-LOCATION: /a\r\n\r\nZ\r\n--XyZ--"
        ),
        [
            (
                {
                    "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
                    "content-location": "/a",
                },
                b"Z",
            )
        ],
    ),
    (
        "no part at all",
        CT,
        b"--XyZ--\r\n",
        [],
    ),
    (
        "Content-Length right",
        CT,
        b"--XyZ\r\nContent-Length: 5\r\n\r\nhello\r\n--XyZ\r\nContent-Length: 0\r\n\r\n\r\n--XyZ--",
        [({"content-length": "5"}, b"hello"), ({"content-length": "0"}, b"")],
    ),
    (
        "Content-Length too small, too large, past the end, not a number: ignored",
        CT,
        (
            b"--XyZ\r\nContent-Length: 3\r\n\r\nhello\r\n--XyZ\r\n"
            b"Content-Length: 9\r\n\r\nworld\r\n--XyZ\r\n"
            b"Content-Length: x1\r\n\r\n!\r\n--XyZ\r\n"
            b"Content-Length: 4000\r\n\r\nend\r\n--XyZ--"
        ),
        [
            ({"content-length": "3"}, b"hello"),
            ({"content-length": "9"}, b"world"),
            ({"content-length": "x1"}, b"!"),
            ({"content-length": "4000"}, b"end"),
        ],
    ),
    (
        "Content-Length spanning the next part: the delimiter ends the part",
        CT,
        b"--XyZ\r\nContent-Length: 40\r\n\r\nFIRST\r\n--XyZ\r\nContent-Type: x/y\r\n\r\nSECOND\r\n--XyZ--",
        [({"content-length": "40"}, b"FIRST"), ({"content-type": "x/y"}, b"SECOND")],
    ),
    (
        "binary body with every byte value",
        CT,
        b"--XyZ\r\n\r\n" + bytes(range(256)) * 3 + b"\r\n--XyZ--",
        [({}, bytes(range(256)) * 3)],
    ),
]


@pytest.mark.parametrize(
    "content_type, body, expected", [v[1:] for v in VALID], ids=[v[0] for v in VALID]
)
@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7, 64])
def test_valid_bodies(
    content_type: str, body: bytes, expected: list[tuple[dict[str, str], bytes]], chunk: int | None
) -> None:
    parts = decode(content_type, body, chunk)
    assert [(p.headers, p.body) for p in parts] == expected


def test_delimiter_split_at_every_offset() -> None:
    """A two-part body cut in two at every byte offset decodes the same."""
    body = b"pre\r\n--XyZ\r\nA: 1\r\n\r\n--x\r\n-\r\n--XyZ\r\nB: 2\r\n\r\n\r\nend\r\n--XyZ--\r\n"
    expected = [({"a": "1"}, b"--x\r\n-"), ({"b": "2"}, b"\r\nend")]
    for cut in range(len(body) + 1):
        parts = list(iter_parts(CT, [body[:cut], body[cut:]]))
        assert [(p.headers, p.body) for p in parts] == expected, cut
    parts = list(iter_parts(CT, one_byte_chunks(body)))
    assert [(p.headers, p.body) for p in parts] == expected


def test_parts_come_out_as_they_complete() -> None:
    """The first part is yielded before the rest of the body has been read (streaming)."""
    pulled: list[int] = []

    def chunks() -> Iterator[bytes]:
        pulled.append(1)
        yield b"--XyZ\r\n\r\nfirst\r\n--XyZ"
        pulled.append(2)
        yield b"\r\n\r\nsecond\r\n--XyZ--"

    parts = iter_parts(CT, chunks())
    assert next(parts).body == b"first"
    assert pulled == [1]
    assert next(parts).body == b"second"
    assert pulled == [1, 2]


MALFORMED = [
    ("no closing delimiter", CT, b"--XyZ\r\n\r\nbody\r\n"),
    ("ends right after a delimiter", CT, b"--XyZ\r\n\r\nbody\r\n--XyZ"),
    ("ends inside a part body", CT, b"--XyZ\r\n\r\nbo"),
    ("ends inside the headers", CT, b"--XyZ\r\nContent-Type: appl"),
    ("no opening delimiter", CT, b"just some bytes\r\n"),
    ("empty body", CT, b""),
    ("junk after the delimiter", CT, b"--XyZjunk\r\n\r\nbody\r\n--XyZ--"),
    ("header line without a colon", CT, b"--XyZ\r\nnot a header\r\n\r\nbody\r\n--XyZ--"),
    ("no boundary parameter", "multipart/related; type=application/dicom", b"--XyZ--"),
    ("boundary longer than 70 characters", f"multipart/related; boundary={'a' * 71}", b""),
    ("not multipart", "application/dicom; boundary=XyZ", b"--XyZ--"),
]


@pytest.mark.parametrize(
    "content_type, body", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_bodies_raise_value_error(content_type: str, body: bytes) -> None:
    with pytest.raises(ValueError):
        list(iter_parts(content_type, one_byte_chunks(body)))


def test_max_part_bounds_a_part() -> None:
    body = b"--XyZ\r\n\r\n" + b"x" * 1000 + b"\r\n--XyZ--"
    assert [p.body for p in iter_parts(CT, [body], max_part=1000)] == [b"x" * 1000]
    with pytest.raises(ValueError):
        list(iter_parts(CT, one_byte_chunks(body), max_part=100))


@pytest.mark.parametrize("declared", [b"1000", b"50"])
def test_max_part_bounds_a_part_whatever_content_length_says(declared: bytes) -> None:
    body = b"--XyZ\r\nContent-Length: " + declared + b"\r\n\r\n" + b"x" * 1000 + b"\r\n--XyZ--"
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        list(iter_parts(CT, one_byte_chunks(body), max_part=100))


@pytest.mark.parametrize(
    "content_type, boundary",
    [
        ("multipart/related; boundary=abc", b"abc"),
        ('Multipart/Related; BOUNDARY="a b:c"; type="application/dicom"', b"a b:c"),
        ("multipart/related;type=application/dicom;boundary=97f99de2-35f2", b"97f99de2-35f2"),
        (f"multipart/related; boundary={'b' * 70}", b"b" * 70),
    ],
)
def test_parse_boundary(content_type: str, boundary: bytes) -> None:
    assert parse_boundary(content_type) == boundary


def test_parse_content_type() -> None:
    media_type, params = parse_content_type(
        'Application/DICOM; Transfer-Syntax=1.2.840.10008.1.2.4.50; type="x/y"'
    )
    assert media_type == "application/dicom"
    assert params == {"transfer-syntax": "1.2.840.10008.1.2.4.50", "type": "x/y"}
    with pytest.raises(ValueError):
        parse_content_type("nonsense")


def test_encoder_output_decodes_part_by_part_and_ends_with_the_close_delimiter():
    from gateway.multipart import encode, iter_parts, new_boundary

    boundary = new_boundary()
    bodies = [b"--" + boundary.encode() + b"x\r\n", b"", b"\r\n\r\nDICM"]
    chunks = list(encode((("application/dicom", b) for b in bodies), boundary))
    # the opening delimiter, one chunk per part ending in the next delimiter, then "--"
    assert len(chunks) == len(bodies) + 2
    assert chunks[0] == f"--{boundary}".encode()
    assert all(c.endswith(f"\r\n--{boundary}".encode()) for c in chunks[1:-1])
    assert b"".join(chunks).endswith(f"\r\n--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    decoded = list(iter_parts(content_type, chunks))
    assert [p.body for p in decoded] == bodies
    assert [p.headers["content-type"] for p in decoded] == ["application/dicom"] * 3
    assert new_boundary() != boundary and len(boundary) == 32


def test_a_large_part_body_is_yielded_as_it_is_between_its_header_and_delimiter():
    from gateway.multipart import SEPARATE_BODY, encode, iter_parts

    large, small = b"\x05" * SEPARATE_BODY, b"\x06" * 10
    chunks = list(encode([("application/dicom", large), ("application/dicom", small)], "B0"))
    head = b"\r\nContent-Type: application/dicom\r\n\r\n"
    assert chunks[:4] == [b"--B0", head, large, b"\r\n--B0"]
    assert chunks[2] is large  # not copied
    assert chunks[4:] == [head + small + b"\r\n--B0", b"--\r\n"]
    decoded = iter_parts('multipart/related; type="application/dicom"; boundary=B0', chunks)
    assert [p.body for p in decoded] == [large, small]
    # a server writes bytes only: another buffer type is converted
    chunks = list(encode([("application/dicom", bytearray(large))], "B0"))
    assert type(chunks[2]) is bytes and chunks[2] == large


@pytest.mark.parametrize("length", [False, True], ids=["searched", "by-content-length"])
def test_a_part_in_tiny_chunks_costs_its_size_not_a_view_per_chunk(length: bool):
    # an upstream (or a proxy) may send HTTP chunks of a few bytes: the decoder's memory must
    # stay about one part, not grow by an object per chunk (hundreds of bytes each)
    import tracemalloc

    size, step = 1 << 20, 8
    head = b"Content-Length: %d" % size if length else b"Content-Type: application/dicom"
    body = b"--XyZ\r\n" + head + b"\r\n\r\n" + b"\x07" * size + b"\r\n--XyZ--\r\n"
    tracemalloc.start()
    try:
        (part,) = iter_parts(CT, (body[i : i + step] for i in range(0, len(body), step)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert part.body == b"\x07" * size
    assert peak < 3 * size, peak




def test_a_content_length_that_lies_changes_nothing_and_costs_nothing():
    # the delimiter ends a part, whatever size a part header claims (RFC 2046): a server that
    # claims a huge size, or one that spans the next part, loses no part and holds no stream
    import tracemalloc

    part = b"\x09" * (1 << 20)
    claims = [b"99999999999999", b"%d" % (len(part) + 40)]
    heads = [b"--XyZ\r\nContent-Length: " + c + b"\r\n\r\n" for c in claims]

    def stream():
        for i in range(40):  # 40 MiB in all
            yield heads[i % 2] + part + b"\r\n"
        yield b"--XyZ--\r\n"

    tracemalloc.start()
    try:
        count = 0
        for p in iter_parts(CT, stream()):
            assert p.body == part
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 40
    assert peak < 8 * len(part), peak
