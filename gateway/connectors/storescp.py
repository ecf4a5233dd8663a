"""The embedded storage SCP that C-MOVE retrievals send to (PS3.4 Annex B, Storage Service Class
as SCP), and the routing of each arriving object to the retrieval that asked for it.

Routing. A C-STORE sub-operation of a C-MOVE carries the Move Originator Application Entity
Title and Move Originator Message ID of the C-MOVE request (PS3.7 9.3.1.1, C-STORE-RQ).
1. Before its C-MOVE, a retrieval subscribes (`StorageScp.subscribe`) with the AE titles its
   request may be attributed to and the SOP Instance UIDs its IMAGE-level C-FIND found, and gets
   a Message ID unique among the subscriptions in flight (the counter runs through 1..65535, so
   an ID is not reused soon after its request ended).
2. An arriving object goes to the subscription holding its Move Originator Message ID, if that
   subscription lists its Move Originator AE title.
3. Otherwise (a PACS that leaves those fields out) to the oldest subscription that expects its
   SOP Instance UID and has not received it yet.
4. Otherwise it is refused with 0x0124 "Refused: Not authorized" (PS3.7 Annex C) and logged with
   the calling AE title and the SOP class only. A subscription gets each instance once.
Each subscription has a bounded queue: while it is full the C-STORE response waits, and so
does the PACS. A closed subscription stops receiving; an object it was waiting to take is
answered 0xA700 "Refused: Out of resources".

Several processes (gunicorn workers). Only one process can listen on the port; `start()` in
every worker makes the first that binds it the owner, the others relay clients. The owner also
listens on a local socket, `<relay-dir>/storescp-<port>.sock` (folder mode 0700, peers of
another user id refused). Every subscription is made in the owner's routing table, so Message
IDs are unique across workers: a worker that does not own the port connects to that socket,
sends its subscription (AE titles, expected UIDs) as one JSON line, reads back its Message ID,
and then reads the objects routed to it as frames (lengths, a small JSON header, the Part 10
bytes) from the same connection; closing the connection ends the subscription. Back-pressure
crosses the socket (each side's queue is bounded). When the owner stops or dies, its relayed
retrievals fail (their objects were sent to it); the next retrieval in any worker binds the
port and becomes the owner. `start()` must run in each worker, after the fork (gunicorn
`preload_app` off): a subscription from another process than the one that started the SCP is
refused with an error saying so.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from ..errors import ConnectorError
from ..settings import StorageScpOptions, Timeouts
from . import storescp_relay as relay
from .base import Part10
from .storescp_relay import Lost, Subscription

__all__ = ["Lost", "StorageScp", "Subscription"]

log = logging.getLogger("gateway.storescp")

SUCCESS = 0x0000
REFUSED_NOT_AUTHORIZED = 0x0124  # PS3.7 Annex C, a general status
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3 Refused: Out of resources
MAX_ASSOCIATIONS = 32
RETRY = 0.05  # seconds between attempts to reach or become the owner
#: Verification SOP Class (PS3.4 A.4): a PACS administrator may C-ECHO the SCP
VERIFICATION = UID("1.2.840.10008.1.1")


class Router:
    """The routing table of the process that owns the port (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[int, Subscription] = {}  # insertion order = age
        self._last_id = 0

    def open(self, aets: Iterable[str], expected: Iterable[str]) -> Subscription:
        """A new subscription with a Message ID no subscription in flight holds."""
        with self._lock:
            if len(self._subs) >= 0xFFFF:
                raise RuntimeError("65535 C-MOVE retrievals in flight")
            msg_id = self._last_id
            while True:
                msg_id = msg_id % 0xFFFF + 1
                if msg_id not in self._subs:
                    break
            self._last_id = msg_id
            sub = Subscription(msg_id, aets, expected, on_close=self._remove)
            self._subs[msg_id] = sub
            return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if self._subs.get(sub.message_id) is sub:
                del self._subs[sub.message_id]

    def claim(
        self, aet: str, msg_id: int | None, sop: str, sender: str
    ) -> tuple[Subscription | None, bool]:
        """The subscription an object belongs to, and whether it is new to it. An object is
        only ever taken by a retrieval that expects its SOP Instance UID and whose PACS is
        the sender: a guessed Move Originator Message ID cannot put a stranger's object into
        someone's response."""

        def wants(s: Subscription) -> bool:
            return sop in s.expected and sender in s.aets

        with self._lock:
            sub = self._subs.get(msg_id) if msg_id is not None else None
            if sub is None or aet not in sub.aets or not wants(sub):
                sub = next((s for s in self._subs.values() if wants(s) and sop not in s.seen), None)
            if sub is None:
                return None, False
            fresh = sop not in sub.seen
            sub.seen.add(sop)
            return sub, fresh

    def __len__(self) -> int:
        with self._lock:
            return len(self._subs)

    def close_all(self) -> None:
        with self._lock:
            subs = list(self._subs.values())
        for sub in subs:
            sub.close()


class StorageScp:
    """The storage SCP of `gateway.storage-scp`. Nothing listens before `start()`."""

    def __init__(self, options: StorageScpOptions, timeouts: Timeouts | None = None) -> None:
        self.options = options
        self.timeouts = timeouts or Timeouts()
        self.router = Router()
        self._lock = threading.Lock()
        self._ae: AE | None = None
        self._relay: relay.RelayServer | None = None
        self._pid: int | None = None

    @property
    def aet(self) -> str:
        return self.options.aet

    @property
    def owner(self) -> bool:
        """True while this process listens on the port."""
        with self._lock:
            return self._ae is not None

    @property
    def relay_path(self) -> Path:
        folder = self.options.relay_dir or os.path.join(
            tempfile.gettempdir(), f"dicomweb-gateway-{os.getuid()}"
        )
        return Path(folder) / f"storescp-{self.options.port}.sock"

    def destination(self) -> str:
        """What the PACS must know, for error messages."""
        host = self.options.host
        where = "this gateway's address" if host in ("0.0.0.0", "::", "") else host
        return f"AE title {self.aet} at {where}, port {self.options.port}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the port, or, when another process does, become its relay client.
        Raises OSError when the port cannot be bound for another reason than being in use."""
        with self._lock:
            self._pid = os.getpid()
            if not self._take_over():
                log.info(
                    "storage SCP port %d is held by another process: objects for this "
                    "process come through %s",
                    self.options.port,
                    self.relay_path,
                )

    def stop(self) -> None:
        """Stop listening (port and local socket), end every subscription, abort the
        associations in progress."""
        with self._lock:
            self._pid = None
            ae, self._ae = self._ae, None
            server, self._relay = self._relay, None
        if server is not None:
            server.close()
        self.router.close_all()
        if ae is not None:
            ae.shutdown()
            log.info("storage SCP %s stopped listening on port %d", self.aet, self.options.port)

    def _take_over(self) -> bool:
        """Bind the port (lock held): True when this process owns it now."""
        if self._ae is not None:
            return True
        ae = self._application_entity()
        address = (self.options.host, self.options.port)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_OPEN, _set_nodelay),
        ]
        try:
            ae.start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        self._ae = ae
        self._relay = _start_relay(self.relay_path, self.router)
        log.info("storage SCP %s listening on %s port %d", self.aet, *address)
        return True

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.aet)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        ae.require_called_aet = True
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.acse_timeout = self.timeouts.acse
        ae.dimse_timeout = self.timeouts.dimse
        ae.network_timeout = self.timeouts.network
        return ae

    # -- subscriptions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(
        self, aets: Iterable[str], expected: Iterable[str], connector: str, timeout: float
    ) -> Iterator[Subscription]:
        """A subscription for one C-MOVE, in this process's table or the owner's; closed on
        exit. Raises ConnectorError when no process can own the port within `timeout`."""
        sub = self._open(frozenset(aets), frozenset(expected), connector, timeout)
        try:
            yield sub
        finally:
            sub.close()

    def _open(
        self, aets: frozenset[str], expected: frozenset[str], connector: str, timeout: float
    ) -> Subscription:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._check_process(connector)
                if self._ae is not None:
                    return self.router.open(aets, expected)
            remote = relay.connect(self.relay_path, aets, expected, timeout)
            if remote is not None:
                return remote
            with self._lock:
                self._check_process(connector)
                if self._take_over():
                    continue
            if time.monotonic() >= deadline:
                raise ConnectorError(
                    f"the storage SCP port {self.options.port} is in use, but not by a gateway "
                    f"worker reachable through {self.relay_path}",
                    connector,
                )
            time.sleep(RETRY)

    def _check_process(self, connector: str) -> None:
        if self._pid is None:
            raise ConnectorError("the storage SCP (gateway.storage-scp) is not started", connector)
        if self._pid != os.getpid():
            raise ConnectorError(
                "the storage SCP was started in another process (gunicorn preload_app?): "
                "start it in each worker",
                connector,
            )

    # -- C-STORE --------------------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: route the object (PS3.4 B.2.2; see the module docstring)."""
        req = event.request
        aet = str(getattr(req, "MoveOriginatorApplicationEntityTitle", None) or "").strip()
        msg_id = getattr(req, "MoveOriginatorMessageID", None)
        sop = str(getattr(req, "AffectedSOPInstanceUID", None) or "")
        sender = str(event.assoc.requestor.ae_title).strip()
        sub, fresh = self.router.claim(aet, msg_id, sop, sender)
        if sub is None:
            log.warning(
                "refused a C-STORE no retrieval asked for: from %s, SOP class %s, "
                "move originator %s / %s",
                event.assoc.requestor.ae_title,
                getattr(req, "AffectedSOPClassUID", "?"),
                aet or "-",
                msg_id if msg_id is not None else "-",
            )
            return REFUSED_NOT_AUTHORIZED
        if not fresh:
            return SUCCESS
        part = Part10(
            data=event.encoded_dataset(include_meta=True),
            transfer_syntax=str(event.context.transfer_syntax),
            sop_instance_uid=sop,
        )
        return SUCCESS if sub.put(part) else OUT_OF_RESOURCES


def _set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: TCP_NODELAY on the accepted socket (small DIMSE messages otherwise stall
    on Nagle's algorithm and delayed ACKs)."""
    sock = event.assoc.dul.socket
    raw = sock.socket if sock is not None else None
    if raw is not None:
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _start_relay(path: Path, router: Router) -> relay.RelayServer | None:
    """The owner's local socket; without it only this process's retrievals can use C-MOVE."""
    try:
        _private_folder(path.parent)
        return relay.RelayServer(path, router.open)
    except OSError as exc:
        log.error(
            "storage SCP relay socket %s unavailable (%s): other workers cannot use "
            "C-MOVE while this process owns the port",
            path,
            exc.strerror or exc,
        )
        return None


def _private_folder(folder: Path) -> None:
    """Create `folder` with mode 0700, or check that an existing one is ours and private."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise OSError(errno.EPERM, "not a private folder of this user")
