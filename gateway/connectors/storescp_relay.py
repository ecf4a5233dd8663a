"""Subscriptions of the storage SCP, and the relay that carries them from the gateway worker that
owns the storage SCP port to the other workers (the scheme is described in `storescp`).

The protocol on the owner's local socket (`<relay-dir>/storescp-<port>.sock`):

    worker -> owner   one line of UTF-8 JSON: {"aets": [...], "expected": [...]}
    owner -> worker   one line: {"message_id": N}
    owner -> worker   frames, until either side closes: a prefix `!IQ` (header length, data
                      length), the header {"ts": transfer syntax UID, "sop": SOP Instance UID}
                      as JSON, then the Part 10 bytes.

The worker writes nothing after its request, so anything readable on the owner's side means the
worker closed the connection: the owner then ends the subscription. Peers running as another
user id are refused (SO_PEERCRED), on top of the socket folder's mode 0700.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .base import Part10

log = logging.getLogger("gateway.storescp")

QUEUE_SIZE = 4  # objects waiting per subscription
POLL = 0.1
REQUEST_LIMIT = 16 * 1024 * 1024  # a subscription line: 65535 UIDs of 64 characters fit
HEADER_LIMIT = 4096
REGISTER_TIMEOUT = 10.0
_PREFIX = struct.Struct("!IQ")
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Lost:
    """Put in a relayed subscription's queue when the owner's connection broke."""

    reason: str


class Subscription:
    """What one C-MOVE retrieval receives: a bounded queue of items (Part10 objects; the
    retrieval may add its own, such as the C-MOVE's final status)."""

    def __init__(
        self,
        message_id: int,
        aets: Iterable[str],
        expected: Iterable[str],
        on_close: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.message_id = message_id
        self.aets = frozenset(aets)
        self.expected = frozenset(expected)
        self.seen: set[str] = set()  # the router's, changed under its lock
        self.closed = threading.Event()
        self._items: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self._on_close = on_close

    def put(self, item: object) -> bool:
        """Waits while the queue is full; False once the subscription is closed."""
        while not self.closed.is_set():
            try:
                self._items.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> object | None:
        """The next item, or None after `timeout` seconds without one."""
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        if self.closed.is_set():
            return
        self.closed.set()
        if self._on_close is not None:
            self._on_close(self)


class RemoteSubscription(Subscription):
    """A subscription held in the owner's table, fed through the relay connection."""

    def __init__(
        self,
        sock: socket.socket,
        reader: BinaryIO,
        message_id: int,
        aets: Iterable[str],
        expected: Iterable[str],
    ) -> None:
        super().__init__(message_id, aets, expected)
        self._sock, self._reader = sock, reader
        self._thread = threading.Thread(
            target=self._read, name=f"storescp-relay-{message_id}", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self.closed.is_set():
                part = _read_frame(self._reader)
                if part is None:
                    break
                if not self.put(part):
                    return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not self.closed.is_set():
            self.put(Lost("the gateway worker that owns the storage SCP port went away"))

    def close(self) -> None:
        if self.closed.is_set():
            return
        super().close()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        with contextlib.suppress(OSError, ValueError):
            self._reader.close()


def connect(
    path: Path, aets: Iterable[str], expected: Iterable[str], timeout: float
) -> RemoteSubscription | None:
    """Subscribe through the owner's socket; None when no owner answers there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(max(0.01, min(timeout, REGISTER_TIMEOUT)))
    reader = sock.makefile("rb")
    try:
        sock.connect(str(path))
        request = {"aets": sorted(aets), "expected": sorted(expected)}
        sock.sendall(json.dumps(request).encode() + b"\n")
        message_id = int(json.loads(reader.readline(HEADER_LIMIT))["message_id"])
    except (OSError, ValueError, KeyError, TypeError):
        reader.close()
        sock.close()
        return None
    sock.settimeout(None)
    return RemoteSubscription(sock, reader, message_id, aets, expected)


class RelayServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The owner's side: one thread per relayed subscription, subscribing with `opener`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, opener: Callable[..., Subscription]) -> None:
        self.path = path
        self.opener = opener
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead owner's: whoever owns the TCP port owns this name
        super().__init__(str(path), _RelayHandler)
        os.chmod(path, 0o600)
        self._inode = path.stat().st_ino
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
            name="storescp-relay-server",
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, close the socket, remove its file (if it is still ours)."""
        self.shutdown()
        self.server_close()
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()


class _RelayHandler(socketserver.BaseRequestHandler):
    server: RelayServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        if not _same_user(conn):
            log.warning("storage SCP relay: refused a peer running as another user")
            return
        conn.settimeout(REGISTER_TIMEOUT)
        with conn.makefile("rb") as reader:
            try:
                request = json.loads(reader.readline(REQUEST_LIMIT))
                aets = [str(a) for a in request["aets"]]
                expected = [str(u) for u in request["expected"]]
            except (OSError, ValueError, KeyError, TypeError):
                return
        sub = self.server.opener(aets, expected)
        try:
            conn.sendall(json.dumps({"message_id": sub.message_id}).encode() + b"\n")
            conn.settimeout(None)
            _forward(conn, sub)
        except OSError:
            pass
        finally:
            sub.close()


def _forward(conn: socket.socket, sub: Subscription) -> None:
    """Owner side: send what the subscription receives, until the worker hangs up."""
    while not sub.closed.is_set():
        item = sub.get(POLL)
        if isinstance(item, Part10):
            header = json.dumps({"ts": item.transfer_syntax, "sop": item.sop_instance_uid})
            encoded = header.encode()
            conn.sendall(_PREFIX.pack(len(encoded), len(item.data)) + encoded)
            conn.sendall(item.data)
        elif item is None and select.select([conn], [], [], 0)[0]:
            return  # the worker closed its end (it never writes after its request)


def _read_frame(reader: BinaryIO) -> Part10 | None:
    """Worker side: the next object, or None at the end of the stream."""
    prefix = reader.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        return None
    header_size, data_size = _PREFIX.unpack(prefix)
    if header_size > HEADER_LIMIT:
        raise ValueError("relay frame header too long")
    header = json.loads(reader.read(header_size))
    data = reader.read(data_size)
    if len(data) < data_size:
        return None
    return Part10(data=data, transfer_syntax=str(header["ts"]), sop_instance_uid=str(header["sop"]))


def _same_user(conn: socket.socket) -> bool:
    """True when the peer runs as this process's user id (Linux SO_PEERCRED)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True  # elsewhere the folder's mode 0700 is the only guard
    _pid, uid, _gid = _CREDENTIALS.unpack(
        conn.getsockopt(socket.SOL_SOCKET, option, _CREDENTIALS.size)
    )
    return bool(uid == os.getuid())
