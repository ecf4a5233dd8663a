"""Helpers for tests/test_robustness.py: the gateway served over real HTTP, TCP peers that
misbehave (a black hole that accepts and never answers), upstream DICOMweb behaviours for
`tests.connectors.http_fakes.FakeServer` (dying, trickling or endless multipart answers), a
meter of the TCP connections open to a port, a raw HTTP client that hangs up, and a multipart
splitter that is independent of the gateway's own decoder.

Everything listens on 127.0.0.1 only; every socket has a timeout; handlers that wait do so on
`FakeServer.released`, never on a bare sleep.
"""

from __future__ import annotations

import copy
import json
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pydicom
from flask import Flask
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from werkzeug.serving import make_server

from tests.connectors.http_fakes import DICOM_JSON, Request, multipart_body, multipart_type

BOUNDARY = "fake-upstream-boundary-7"


# -- the gateway over HTTP ----------------------------------------------------------------


class ServedApp:
    """A Flask app served by werkzeug's threaded server on 127.0.0.1 (an ephemeral port)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = int(self.server.server_port)
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.extensions["gateway"].close()


# -- misbehaving TCP peers ----------------------------------------------------------------


class Blackhole:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (an upstream, a database or
    a PACS that hangs). Connections are held until the context exits."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if ready:
                conn, _ = self._listener.accept()
                self._held.append(conn)
                self.accepted += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._listener.close()


def established_to(port: int) -> int:
    """ESTABLISHED TCP connections whose remote port is `port` (the client ends of the
    connections to a local server), read from /proc/net/tcp and /proc/net/tcp6."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01":
                count += 1
    return count


class PeakMeter:
    """Polls `established_to(port)` in a thread and keeps the largest count seen."""

    def __init__(self, port: int, interval: float = 0.002) -> None:
        self.port = port
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, established_to(self.port))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Polls `condition` until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- a client that hangs up ----------------------------------------------------------------


def hang_up_after(port: int, path: str, accept: str, nbytes: int, timeout: float = 10) -> bytes:
    """GETs `path` from 127.0.0.1:`port` with a small receive buffer, reads at least `nbytes`,
    then closes with SO_LINGER 0 (an RST: the server's next write fails at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n\r\n"
        sock.sendall(head.encode("ascii"))
        received = b""
        while len(received) < nbytes:
            chunk = sock.recv(1024)
            if not chunk:
                break
            received += chunk
        return received
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def raw_request(port: int, head: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Sends a hand-written request head (with `Connection: close`) and returns the status,
    the headers (lowercase names) and the body (for a Content-Length answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    header_block, _, body = data.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# -- multipart, read independently of gateway.multipart ------------------------------------


def boundary_of(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"')
    raise ValueError(f"no boundary in {content_type!r}")


def split_multipart(body: bytes, boundary: str) -> tuple[list[bytes], bool]:
    """The complete parts' bodies of a (possibly truncated) multipart/related body (RFC 2046
    5.1.1) and whether the close delimiter `--boundary--` was reached."""
    delimiter = b"\r\n--" + boundary.encode()
    text = b"\r\n" + body
    pieces = text.split(delimiter)
    closed = len(pieces) > 1 and pieces[-1].startswith(b"--")
    # the last piece is the close delimiter's "--" or an incomplete part: neither is a part
    parts = [piece.partition(b"\r\n\r\n")[2] for piece in pieces[1:-1]]
    return parts, closed


# -- upstream DICOMweb behaviours (handlers for FakeServer) --------------------------------

Wado = Callable[[Request], None]


def is_qido(path: str) -> bool:
    """QIDO-RS resources end in studies, series or instances (PS3.18 10.6); the rest of this
    fake's paths are WADO-RS resources."""
    return path.rstrip("/").rsplit("/", 1)[-1] in ("studies", "series", "instances")


class Upstream:
    """A DICOMweb upstream: QIDO-RS answers `datasets` (so that the gateway finds the
    resource), WADO-RS behaves as `wado` says (it can be swapped between requests)."""

    def __init__(self, datasets: list[dict[str, Any]], wado: Wado) -> None:
        self.datasets = datasets
        self.wado = wado

    def __call__(self, request: Request) -> None:
        if is_qido(request.path):
            request.reply(200, json.dumps(self.datasets).encode(), DICOM_JSON)
        else:
            self.wado(request)


def uids_json(study: str, series: str, sop: str) -> dict[str, Any]:
    return {
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
        "00080018": {"vr": "UI", "Value": [sop]},
    }


def complete(parts: list[bytes]) -> Wado:
    def handle(request: Request) -> None:
        request.reply(200, multipart_body(parts, BOUNDARY), multipart_type(BOUNDARY))

    return handle


def dies_after(parts: list[bytes], count: int) -> Wado:
    """Sends `count` complete parts, half of the next one, then closes the connection."""

    def handle(request: Request) -> None:
        request.start_stream(200, multipart_type(BOUNDARY))
        request.write(multipart_body(parts[:count], BOUNDARY, closed=False))
        half = parts[count][: len(parts[count]) // 2]
        request.write(
            b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s" % (BOUNDARY.encode(), half)
        )
        request.hang_up()

    return handle


def trickle(part: bytes, step: int = 10, interval: float = 0.2) -> Wado:
    """Headers at once, then `step` bytes of a one-part body every `interval` seconds: every
    socket read succeeds in time, the first part takes minutes."""

    def handle(request: Request) -> None:
        body = multipart_body([part], BOUNDARY)
        request.start_stream(200, multipart_type(BOUNDARY))
        for start in range(0, len(body), step):
            if request.server.released.wait(interval):
                return
            try:
                request.write(body[start : start + step])
            except OSError:
                return

    return handle


class Endless:
    """Sends copies of `part` one after the other, up to `cap`; `gone` is set when a write
    fails (the gateway closed the upstream connection), `sent` counts the parts written."""

    def __init__(self, part: bytes, cap: int) -> None:
        self.part = part
        self.cap = cap
        self.sent = 0
        self.gone = threading.Event()

    def __call__(self, request: Request) -> None:
        request.handler.connection.settimeout(20)
        request.start_stream(200, multipart_type(BOUNDARY))
        one = multipart_body([self.part], BOUNDARY, closed=False)
        try:
            for _ in range(self.cap):
                request.write(one)
                self.sent += 1
            request.write(b"--%s--\r\n" % BOUNDARY.encode())
        except OSError:
            self.gone.set()


# -- datasets for in-process SCPs ---------------------------------------------------------


def clone_series(
    source: Path, count: int, pixel_bytes: int | None = None, patient: str = "ROBUST^SERIES"
) -> list[Dataset]:
    """`count` instances of one new study and series, cloned from `source`; with
    `pixel_bytes`, each carries that many bytes of pixel data (a 16-bit square image)."""
    base = pydicom.dcmread(source)
    base.StudyInstanceUID, base.SeriesInstanceUID = generate_uid(), generate_uid()
    base.PatientName = patient
    if pixel_bytes is not None:
        side = int((pixel_bytes // 2) ** 0.5)
        base.Rows = base.Columns = side
        base.BitsAllocated, base.BitsStored, base.HighBit = 16, 16, 15
        base.SamplesPerPixel, base.PixelRepresentation = 1, 0
        size = side * side * 2
        base.PixelData = (bytes(range(256)) * (size // 256 + 1))[:size]
    out: list[Dataset] = []
    for number in range(count):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number + 1
        out.append(ds)
    return out


def iter_records_text(records: list[Any]) -> Iterator[tuple[int, str]]:
    """(level, text) of captured log records, tracebacks included."""
    formatter = logging.Formatter()
    for record in records:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + formatter.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        yield record.levelno, text
