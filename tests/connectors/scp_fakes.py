"""In-process pynetdicom SCPs that misbehave on cue, for the DIMSE connector's fault tests.

`FakeScp` serves C-ECHO, C-FIND (Study Root) and C-GET from a list of datasets on a free
127.0.0.1 port, and records what it saw: answers produced, C-CANCELs, aborts, releases, the
peak number of simultaneous associations, the identifiers received. Stalls wait on
`FakeScp.released` (set at stop), never on a bare sleep, so teardown is never held up.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.pdu import A_RELEASE_RQ
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

FindRule = Callable[[Dataset], int | None]  # identifier -> failure status to answer, or None

LEVEL_UID = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


@dataclass
class FakeScp:
    """Behaviour switches (set before the requests):
    - `datasets`: the instances held (C-FIND answers are built from them per level);
    - `pending_status`: per answer index, the pending status (0xFF00 default, 0xFF01);
    - `fail_with`: a rule giving a failure status for an identifier (None: answer normally);
    - `hold`: seconds to wait (on `released`) before answering a C-FIND at `slow_level`;
    - `cancel_wait`: after each answer at `slow_level`, wait up to this long for a C-CANCEL;
    - `abort_after`: abort the association after this many C-GET sub-operations;
    - `drop_reused`: abort, unanswered, this many requests that come on an association which
      has served one before (a PACS closing an idle association as it is taken for reuse),
      or any requests with `drop_fresh`."""

    datasets: list[Dataset]
    pending_status: dict[int, int] = field(default_factory=dict)
    fail_with: FindRule | None = None
    hold: float = 0.0
    cancel_wait: float = 0.0
    slow_level: str = "STUDY"
    abort_after: int | None = None
    drop_reused: int = 0
    drop_fresh: bool = False
    require_calling_aet: Sequence[str] = ()
    ssl_context: ssl.SSLContext | None = None
    # what happened
    produced: int = 0  # C-FIND answers sent at `slow_level`
    cancelled: int = 0
    aborted: int = 0
    released: threading.Event = field(default_factory=threading.Event)
    releases: int = 0
    identifiers: list[Dataset] = field(default_factory=list)
    peer_certificates: list[dict[str, Any]] = field(default_factory=list)
    proposed: list[set[str]] = field(default_factory=list)  # abstract syntaxes per association
    dropped: int = 0  # requests aborted by `drop_reused`
    open_now: int = 0
    open_peak: int = 0
    _open: set[int] = field(default_factory=set)
    _served: dict[int, int] = field(default_factory=dict)  # requests per association
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadedAssociationServer | None = None
    port: int = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        ae = AE(ae_title="FAKESCP")
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES,
                                     scu_role=True, scp_role=True)
        ae.require_calling_aet = list(self.require_calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        handlers = [
            (evt.EVT_C_FIND, self._on_find), (evt.EVT_C_GET, self._on_get),
            (evt.EVT_REQUESTED, self._on_open), (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_ABORTED, self._on_aborted), (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ESTABLISHED, self._on_established),
        ]
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers,
                                       ssl_context=self.ssl_context)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Polls `condition` until it holds or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.01)
        return condition()

    # -- events -------------------------------------------------------------------------------

    # An association counts as open at this PACS from its A-ASSOCIATE-RQ until the peer asks
    # to release it (the requestor waits for our answer before it may open another), or until
    # it is aborted or its connection closes. Counting TCP connections instead would be racy:
    # the socket closes a moment after the A-RELEASE-RP has been sent.

    def _on_open(self, event: evt.Event) -> None:
        with self._lock:
            self._open.add(id(event.assoc))
            self.open_now = len(self._open)
            self.open_peak = max(self.open_peak, self.open_now)

    def _ended(self, event: evt.Event) -> None:
        with self._lock:
            self._open.discard(id(event.assoc))
            self.open_now = len(self._open)

    def _on_pdu(self, event: evt.Event) -> None:
        if isinstance(event.pdu, A_RELEASE_RQ):
            self._ended(event)

    def _on_close(self, event: evt.Event) -> None:
        self._ended(event)

    def _on_aborted(self, event: evt.Event) -> None:
        with self._lock:
            self.aborted += 1  # counted before the association is seen as ended
        self._ended(event)

    def _on_released(self, event: evt.Event) -> None:
        with self._lock:
            self.releases += 1

    def _on_established(self, event: evt.Event) -> None:
        requested = event.assoc.requestor.requested_contexts
        self.proposed.append({str(cx.abstract_syntax) for cx in requested})
        sock = event.assoc.dul.socket.socket
        if isinstance(sock, ssl.SSLSocket):
            cert = sock.getpeercert()
            if cert:
                self.peer_certificates.append(cert)

    # -- C-FIND -------------------------------------------------------------------------------

    def answers(self, ident: Dataset) -> list[Dataset]:
        """Answers at the identifier's level: one per distinct UID of that level among the
        datasets matching the identifier's non-empty UID keys, holding the requested keys."""
        level = str(ident.QueryRetrieveLevel)
        seen: dict[str, Dataset] = {}
        for ds in self.datasets:
            if not _uids_match(ident, ds):
                continue
            uid = str(ds.get(LEVEL_UID[level], ""))
            if uid and uid not in seen:
                seen[uid] = _answer(ident, ds)
        return list(seen.values())

    def _drops(self, event: evt.Event) -> bool:
        """Counts the request; True when `drop_reused` says to abort it unanswered."""
        with self._lock:
            served = self._served.get(id(event.assoc), 0)
            self._served[id(event.assoc)] = served + 1
            if (served or self.drop_fresh) and self.dropped < self.drop_reused:
                self.dropped += 1
                return True
        return False

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        if self._drops(event):
            event.assoc.abort()
            return
        ident = event.identifier
        self.identifiers.append(ident)
        slow = ident.QueryRetrieveLevel == self.slow_level
        if self.hold and slow:
            self.released.wait(self.hold)
        failure = self.fail_with(ident) if self.fail_with else None
        if failure is not None:
            yield failure, None
            return
        cancelled = False  # event.is_cancelled is True once only: it consumes the C-CANCEL
        for index, answer in enumerate(self.answers(ident)):
            if cancelled or event.is_cancelled:
                self.cancelled += 1
                yield 0xFE00, None
                return
            self.produced += slow
            yield self.pending_status.get(index, 0xFF00), answer
            if self.cancel_wait and slow:
                cancelled = self._wait_cancel(event)
        yield 0x0000, None

    def _wait_cancel(self, event: evt.Event) -> bool:
        deadline = time.monotonic() + self.cancel_wait
        while time.monotonic() < deadline:
            if event.is_cancelled:
                return True
            time.sleep(0.005)
        return False

    # -- C-GET --------------------------------------------------------------------------------

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        if self._drops(event):
            yield 1  # with 0 sub-operations pynetdicom would answer Success at once
            event.assoc.abort()
            return
        ident = event.identifier
        self.identifiers.append(ident)
        chosen = [ds for ds in self.datasets if _uids_match(ident, ds)]
        yield len(chosen)
        for number, ds in enumerate(chosen):
            if self.abort_after is not None and number >= self.abort_after:
                event.assoc.abort()
                return
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds


def _uids_match(ident: Dataset, ds: Dataset) -> bool:
    for keyword in LEVEL_UID.values():
        wanted = ident.get(keyword)
        if wanted in (None, ""):
            continue
        values = [str(v) for v in wanted] if not isinstance(wanted, str) else [wanted]
        if str(ds.get(keyword, "")) not in values:
            return False
    return True


def _answer(ident: Dataset, ds: Dataset) -> Dataset:
    out = Dataset()
    if "SpecificCharacterSet" in ds:
        out.SpecificCharacterSet = ds.SpecificCharacterSet
    out.QueryRetrieveLevel = ident.QueryRetrieveLevel
    for elem in ident:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        if elem.tag in ds:
            out.add(ds[elem.tag])
    return out
