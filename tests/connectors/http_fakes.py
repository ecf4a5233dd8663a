"""Local HTTP servers for fault injection: an upstream DICOMweb server that misbehaves on cue and
an OAuth2 token endpoint issuing short-lived tokens.

Each `FakeServer` is a stdlib `ThreadingHTTPServer` on 127.0.0.1:0 serving in a daemon thread.
Handlers are plain functions `(Request) -> None`, routed by path. Handlers that stall wait on
`FakeServer.released` (set when the server stops), never on a bare sleep, so a test's teardown
is never held up.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

Handler = Callable[["Request"], None]
DICOM_JSON = "application/dicom+json"


@dataclass
class Request:
    """One received request, with helpers to answer it."""

    method: str
    path: str
    raw_query: str
    headers: dict[str, str]  # lowercase names
    body: bytes
    server: FakeServer
    handler: BaseHTTPRequestHandler = field(repr=False)

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.raw_query, keep_blank_values=True))

    def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def reply_json(self, data: Any, status: int = 200, content_type: str = DICOM_JSON) -> None:
        self.reply(status, json.dumps(data).encode(), content_type)

    def start_stream(self, status: int, content_type: str, length: int | None = None) -> None:
        """Headers only; the body follows with `write`, and the connection closes after it."""
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        if length is not None:
            h.send_header("Content-Length", str(length))
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        h.wfile.flush()

    def write(self, data: bytes) -> None:
        self.handler.wfile.write(data)
        self.handler.wfile.flush()

    def hang_up(self) -> None:
        """Closes the connection at once (no closing delimiter, no more bytes)."""
        self.handler.close_connection = True
        self.handler.connection.shutdown(socket.SHUT_RDWR)

    def wait_for_client_close(self, timeout: float) -> bool:
        """True when the client closed its end within `timeout` seconds."""
        conn = self.handler.connection
        conn.settimeout(timeout)
        try:
            return bool(conn.recv(1) == b"")
        except OSError:
            return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=parts.path,
            raw_query=parts.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
            server=self.server.fake,
            handler=self,
        )
        self.server.fake.record(request)
        route = self.server.fake.route(request.path)
        if route is None:
            request.reply(404, b"[]")
        else:
            route(request)

    do_GET = _dispatch
    do_POST = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer


class FakeServer:
    """An HTTP server on 127.0.0.1 with an ephemeral port; `routes` maps a path prefix to a
    handler (longest prefix wins). Use as a context manager."""

    def __init__(self, routes: dict[str, Handler] | None = None) -> None:
        self.routes: dict[str, Handler] = dict(routes or {})
        self.requests: list[Request] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, path: str) -> Handler | None:
        matches = [p for p in self.routes if path == p or path.startswith(p.rstrip("/") + "/")]
        return self.routes[max(matches, key=len)] if matches else None

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# -- an OAuth2 token endpoint (RFC 6749 4.4, client credentials) ---------------------------


class TokenEndpoint:
    """Issues `token-1`, `token-2`, ... valid `expires_in` seconds, to one client that
    authenticates with HTTP Basic (RFC 6749 2.3.1). Remembers when each token expires."""

    def __init__(self, client_id: str, client_secret: str, expires_in: int = 3600) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.expiry: dict[str, float] = {}  # token -> time.time() when it expires
        self.issued: list[tuple[str, float]] = []  # (token, time.time() when issued)
        self.forms: list[dict[str, str]] = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.issued)

    def valid(self, token: str) -> bool:
        with self._lock:
            return token in self.expiry and time.time() < self.expiry[token]

    def __call__(self, request: Request) -> None:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        form = dict(parse_qsl(request.body.decode()))
        if request.headers.get("authorization") != f"Basic {expected}":
            request.reply_json({"error": "invalid_client"}, 401, "application/json")
            return
        if form.get("grant_type") != "client_credentials":
            request.reply_json({"error": "unsupported_grant_type"}, 400, "application/json")
            return
        with self._lock:
            token = f"token-{len(self.issued) + 1}"
            now = time.time()
            self.issued.append((token, now))
            self.expiry[token] = now + self.expires_in
            self.forms.append(form)
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        request.reply_json(body, 200, "application/json")


class BearerStudies:
    """A QIDO-RS /studies resource that answers `datasets` only to a currently valid bearer
    token of `tokens`, else 401 (RFC 6750 3.1). Records the tokens it was shown."""

    def __init__(self, tokens: TokenEndpoint, datasets: list[dict[str, Any]]) -> None:
        self.tokens = tokens
        self.datasets = datasets
        self.seen: list[str] = []
        self.revoked: set[str] = set()

    def __call__(self, request: Request) -> None:
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ")
        self.seen.append(token)
        ok = authorization.startswith("Bearer ") and token not in self.revoked
        if ok and self.tokens.valid(token):
            request.reply_json(self.datasets)
        else:
            request.reply(401, b"", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


# -- upstream behaviours ---------------------------------------------------------------------


class PagedSearch:
    """A QIDO-RS resource over `datasets` honouring limit/offset (PS3.18 8.3.4.4); `cap` is the
    server's own largest page, and a capped page that leaves results behind carries the 299
    "additional results" Warning when `warn` (as dcm4chee does; Orthanc does not). Records each
    (limit, offset) asked."""

    def __init__(
        self, datasets: Sequence[dict[str, Any]], cap: int | None = None, warn: bool = True
    ) -> None:
        self.datasets = list(datasets)
        self.cap = cap
        self.warn = warn
        self.asked: list[tuple[int | None, int]] = []

    def __call__(self, request: Request) -> None:
        query = request.query
        limit = int(query["limit"]) if "limit" in query else None
        offset = int(query.get("offset", "0"))
        self.asked.append((limit, offset))
        size = min(x for x in (limit, self.cap, len(self.datasets)) if x is not None)
        page = self.datasets[offset : offset + size]
        left = len(self.datasets) - offset - len(page)
        headers = {}
        if self.warn and left > 0:
            headers["Warning"] = f'299 fake "There are {left} additional results that can be requested"'
        if page:
            request.reply(200, json.dumps(page).encode(), DICOM_JSON, headers)
        else:
            request.reply(204)


def status(code: int, body: bytes = b"", content_type: str = "application/json") -> Handler:
    def handle(request: Request) -> None:
        request.reply(code, body, content_type)

    return handle


def json_answer(data: Any) -> Handler:
    def handle(request: Request) -> None:
        request.reply_json(data)

    return handle


def stalled(seconds: float) -> Handler:
    """Answers nothing for `seconds` (or until the server stops), then an empty array."""

    def handle(request: Request) -> None:
        request.server.released.wait(seconds)
        request.reply_json([])

    return handle


def trickle(interval: float, total: int = 10_000) -> Handler:
    """Sends the headers at once, then one byte of a JSON array every `interval` seconds: every
    read succeeds in time, the whole answer never does."""

    def handle(request: Request) -> None:
        body = b"[" + b" " * (total - 2) + b"]"
        request.start_stream(200, DICOM_JSON, len(body))
        for i in range(total):
            if request.server.released.wait(interval):
                return
            try:
                request.write(body[i : i + 1])
            except OSError:
                return

    return handle


def multipart_body(parts: Sequence[bytes], boundary: str, closed: bool = True) -> bytes:
    """A multipart/related body of application/dicom parts (RFC 2046 5.1.1)."""
    out = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), p)
        for p in parts
    )
    return out + (b"--%s--\r\n" % boundary.encode() if closed else b"")


def multipart_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def multipart(parts: Sequence[bytes], boundary: str = "fake-boundary-42") -> Handler:
    """A complete WADO-RS multipart answer."""

    def handle(request: Request) -> None:
        request.reply(200, multipart_body(parts, boundary), multipart_type(boundary))

    return handle


def multipart_hang_up(first: bytes, boundary: str = "fake-boundary-42") -> Handler:
    """Sends one complete part and the next delimiter line, then closes the connection."""

    def handle(request: Request) -> None:
        request.start_stream(200, multipart_type(boundary))
        request.write(multipart_body([first], boundary, closed=False))
        request.write(b"--%s\r\nContent-Type: application/dicom\r\n\r\nDICM" % boundary.encode())
        request.hang_up()

    return handle


class MultipartThenWait:
    """Sends one part and the delimiter after it, then waits for the client to close the connection; `client_closed` is
    set when it does (the gateway closed the upstream response)."""

    def __init__(self, first: bytes, boundary: str = "fake-boundary-42") -> None:
        self.first = first
        self.boundary = boundary
        self.client_closed = threading.Event()

    def __call__(self, request: Request) -> None:
        request.start_stream(200, multipart_type(self.boundary))
        request.write(multipart_body([self.first], self.boundary, closed=False))
        request.write(b"--%s" % self.boundary.encode())  # the first part is complete
        if request.wait_for_client_close(timeout=10):
            self.client_closed.set()
