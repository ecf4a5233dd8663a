"""multipart/related bodies (RFC 2387 over RFC 2046 5.1; PS3.18 8.7.3.5): a streaming encoder
and a streaming decoder.

`encode(parts, boundary)` yields a body part by part, with a random boundary from
`new_boundary()`, so a response never holds more than one part.

`iter_parts(content_type, chunks)` turns a body that arrives in chunks of any size into its body
parts, one at a time, as soon as each part is complete. It keeps at most one part plus one chunk
in memory, so memory is bounded by the largest part, never by the whole body. Malformed input
(no boundary parameter, no opening or closing delimiter, junk after a delimiter, a header line
without a colon, a part above `max_part`) raises ValueError. A part's Content-Length header,
which some servers add, is not used: the delimiter alone ends a part (RFC 2046), and finding it
costs the same pass over the body that checking a declared size against it would.

Pure: no Flask, no requests.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message

CRLF = b"\r\n"
_LWSP = b" \t"
#: Longest header section of one part, and longest transport padding after a delimiter.
MAX_HEADER_BYTES = 64 * 1024
MAX_PADDING_BYTES = 1024


@dataclass(frozen=True)
class Part:
    """One body part: its header fields (names in lowercase) and its content."""

    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type value -> (lowercase media type, parameters with lowercase names and
    unquoted values) (RFC 2045 5.1). Raises ValueError when there is no type/subtype."""
    message = Message()
    message["content-type"] = value
    media_type = value.split(";", 1)[0].strip().lower()
    if media_type.count("/") != 1 or not all(media_type.split("/")):
        raise ValueError("Content-Type has no type/subtype")
    params: dict[str, str] = {}
    for name, param in message.get_params(failobj=[])[1:]:
        params[name.lower()] = str(param)
    return media_type, params


def parse_boundary(content_type: str) -> bytes:
    """The boundary of a multipart Content-Type (RFC 2046 5.1.1: 1 to 70 characters, quotes
    removed). Raises ValueError when the type is not multipart or the boundary is invalid."""
    media_type, params = parse_content_type(content_type)
    if not media_type.startswith("multipart/"):
        raise ValueError(f"not a multipart media type: {media_type}")
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 70 or boundary.endswith(" "):
        raise ValueError("multipart Content-Type has no valid boundary parameter")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("multipart boundary is not ASCII") from None


class _Buffer:
    """The not yet decoded bytes of the body: the current chunk (`data`, from `pos` on), the
    next ones pulled from the chunk iterator on demand. A part's bytes are copied once, when it
    is complete (joined from the chunks it spans), not gathered into a growing buffer first."""

    def __init__(self, chunks: Iterable[bytes], initial: bytes) -> None:
        self._chunks = iter(chunks)
        self.data = bytes(initial)
        self.pos = 0

    def _next(self) -> bytes | None:
        """The next non-empty chunk; None at the end of the body."""
        for chunk in self._chunks:
            if chunk:
                return bytes(chunk)
        return None

    def need(self, size: int) -> bool:
        """True once at least `size` bytes are buffered; False if the body ends first."""
        while len(self.data) - self.pos < size:
            chunk = self._next()
            if chunk is None:
                return False
            self.data, self.pos = self.data[self.pos :] + chunk, 0
        return True

    def peek(self, start: int, end: int) -> bytes:
        """Buffered bytes `start` to `end` (relative to the unconsumed start; see `need`)."""
        return self.data[self.pos + start : self.pos + end]

    def skip(self, size: int) -> None:
        self.pos += size

    def take_until(self, marker: bytes, limit: int | None, what: str) -> bytes:
        """Removes and returns the bytes before `marker`, and the marker itself from the buffer.
        Each chunk is searched once; a marker split between two chunks is found in the few
        bytes around their junction."""
        pieces: list[memoryview | bytearray] = []
        held = 0
        data, pos = self.data, self.pos
        while True:
            index = data.find(marker, pos)
            if index >= 0:
                self.data, self.pos = data, index + len(marker)
                if not pieces:
                    return data[pos:index]
                _hold(pieces, memoryview(data)[pos:index])
                return b"".join(pieces)
            held += len(data) - pos
            if limit is not None and held > limit + len(marker):
                raise ValueError(f"multipart {what} is larger than {limit} bytes")
            chunk = self._next()
            if chunk is None:
                raise ValueError(f"multipart body ended inside the {what}")
            keep = min(len(marker) - 1, len(data) - pos)  # a marker may start in these
            if len(chunk) < len(marker) - 1:  # a marker may span more chunks: merge the tail
                _hold(pieces, memoryview(data)[pos : len(data) - keep])
                held -= keep
                data, pos = data[len(data) - keep :] + chunk, 0
                continue
            junction = data[len(data) - keep :] + chunk[: len(marker) - 1]
            split = junction.find(marker)
            if split >= 0:
                _hold(pieces, memoryview(data)[pos : len(data) - keep + split])
                self.data, self.pos = chunk, split + len(marker) - keep
                return b"".join(pieces)
            _hold(pieces, memoryview(data)[pos:])
            data, pos = chunk, 0


#: Pieces of a part shorter than this are copied together instead of kept as views of their
#: chunks: an upstream that sends tiny chunks must not cost a view (and its chunk) per chunk.
SMALL_PIECE = 64 * 1024


def _hold(pieces: list[memoryview | bytearray], piece: memoryview) -> None:
    """Adds `piece` to the pieces of a part: a large one as a view of its chunk, a small one
    copied onto the small pieces just before it."""
    if len(piece) >= SMALL_PIECE:
        pieces.append(piece)
    elif pieces and isinstance(pieces[-1], bytearray):
        pieces[-1] += piece
    else:
        pieces.append(bytearray(piece))


def iter_parts(
    content_type: str, chunks: Iterable[bytes], max_part: int | None = None
) -> Iterator[Part]:
    """Decodes a multipart body as it arrives (RFC 2046 5.1.1): the preamble before the first
    delimiter and the epilogue after the close delimiter are ignored; the delimiter may be
    followed by transport padding (spaces, tabs) before its CRLF."""
    boundary = parse_boundary(content_type)
    delimiter = CRLF + b"--" + boundary
    # The first delimiter may open the body without a CRLF before it: supply one.
    buffer = _Buffer(chunks, initial=CRLF)
    buffer.take_until(delimiter, None, "preamble (no opening delimiter)")
    while not _after_delimiter(buffer):
        header_block = buffer.take_until(CRLF + CRLF, MAX_HEADER_BYTES, "part headers")
        headers = _parse_headers(header_block)
        body = buffer.take_until(delimiter, max_part, "part body (no closing delimiter)")
        yield Part(headers, body)


def _after_delimiter(buffer: _Buffer) -> bool:
    """Consumes what follows a delimiter: `--` (the close delimiter: True) or transport padding
    up to, not including, the CRLF that ends the delimiter line (False)."""
    if not buffer.need(2):
        raise ValueError("multipart body ended after a delimiter (no close delimiter)")
    if buffer.peek(0, 2) == b"--":
        return True
    padding = 0
    while True:
        if not buffer.need(padding + 2):
            raise ValueError("multipart body ended after a delimiter (no close delimiter)")
        if buffer.peek(padding, padding + 2) == CRLF:
            break
        if buffer.peek(padding, padding + 1)[0] not in _LWSP or padding >= MAX_PADDING_BYTES:
            raise ValueError("multipart delimiter line has unexpected characters")
        padding += 1
    buffer.skip(padding)
    return False


def _parse_headers(block: bytes) -> dict[str, str]:
    """The header section of a part (RFC 2045/822 style: `Name: value` lines, continuation lines
    starting with white space). `block` starts with the CRLF that ends the delimiter line."""
    headers: dict[str, str] = {}
    name: str | None = None
    for raw in block.split(CRLF)[1:]:
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and name is not None:
            headers[name] += " " + line.strip()
            continue
        field_name, colon, value = line.partition(":")
        if not colon or not field_name.strip():
            raise ValueError("multipart part header line has no field name")
        name = field_name.strip().lower()
        headers[name] = value.strip()
    return headers


def new_boundary() -> str:
    """A random boundary: 32 hex characters cannot plausibly occur in a DICOM object."""
    return secrets.token_hex(16)


#: A part body this large is yielded as it is, between its header and its delimiter, instead of
#: being copied into one chunk with them (the server copies it once more to frame it).
SEPARATE_BODY = 64 * 1024


def encode(parts: Iterable[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """Yields the body one part at a time (RFC 2046 5.1.1). The delimiter that follows a part
    is yielded before the next part is asked for, so a client whose stream breaks knows that
    every part it saw complete was sent whole; the last chunk is the `--` that makes it the
    close delimiter. A small part comes in one chunk with its header and delimiter, a large
    one (`SEPARATE_BODY`) in three, its body not copied."""
    delimiter = f"--{boundary}".encode("ascii")
    yield delimiter
    for content_type, body in parts:
        head = CRLF + b"Content-Type: " + content_type.encode("ascii") + CRLF + CRLF
        if len(body) < SEPARATE_BODY:
            yield b"".join((head, body, CRLF, delimiter))
        else:  # not copied into one chunk; the delimiter still follows before the next part
            yield head
            yield body if isinstance(body, bytes) else bytes(body)  # servers want bytes
            yield CRLF + delimiter
    yield b"--" + CRLF
