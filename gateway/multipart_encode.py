"""Streaming multipart/related encoder (RFC 2387, PS3.18 8.7.3.5)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator


def new_boundary() -> str:
    """A random boundary: 32 hex characters cannot plausibly occur in a DICOM object."""
    return secrets.token_hex(16)


def encode(parts: Iterable[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """Yields the body part by part: each part is `--boundary`, its Content-Type, a blank line
    and its bytes; the body ends with the closing delimiter `--boundary--`."""
    delimiter = f"--{boundary}".encode("ascii")
    for content_type, body in parts:
        yield b"".join(
            (delimiter, b"\r\nContent-Type: ", content_type.encode("ascii"), b"\r\n\r\n", body, b"\r\n")
        )
    yield delimiter + b"--\r\n"
