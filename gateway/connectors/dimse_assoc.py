"""Associations of the DIMSE connector (PS3.8 7.1 A-ASSOCIATE, 7.3 A-ABORT; PS3.7 Annex C
status codes).

`Link` knows how to reach one PACS: AE titles, address, time-outs, TLS, and the connector's
limit on concurrent associations. `Link.session()` opens one association for one gateway
request and closes it again (release, or abort when the request was abandoned); a `Session`
carries the request's deadline: past it the association is aborted and the operation fails
with `ConnectorTimeout`. Every socket gets TCP_NODELAY (pynetdicom does not set it, and
small DIMSE messages otherwise stall on Nagle's algorithm and delayed ACKs).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import GENERAL_STATUS, QR_FIND_SERVICE_CLASS_STATUS

from ..errors import ConnectorError, ConnectorTimeout
from ..settings import Dimse, Timeouts

log = logging.getLogger("gateway.dimse")


#: PS3.4 C.4.1.1.4 (C-FIND) and C.4.3.1.4 (C-GET) status meanings, in the standard's words.
_MEANINGS = {
    0x0000: "Success",
    0x0122: "Refused: SOP Class not supported",
    0x0124: "Refused: Not authorized",
    0xA700: "Refused: Out of resources",
    0xA701: "Refused: Out of resources - Unable to calculate number of matches",
    0xA702: "Refused: Out of resources - Unable to perform sub-operations",
    0xA801: "Refused: Move destination unknown",
    0xA900: "Error: Identifier does not match SOP Class",
    0xAA00: "Error: None of the frames requested were found in the SOP Instance",
    0xB000: "Warning: Sub-operations complete - One or more failures or warnings",
    0xFE00: "Cancel: Terminated due to Cancel request",
    0xFF00: "Pending",
    0xFF01: "Pending: one or more Optional Keys were not supported",
}


def status_meaning(code: int) -> str:
    """The meaning of a DIMSE status code (PS3.4 C.4.1.1.4, C.4.3.1.4; PS3.7 C)."""
    if code in _MEANINGS:
        return _MEANINGS[code]
    if 0xC000 <= code <= 0xCFFF:
        return "Unable to process"
    known = QR_FIND_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code)
    return known[1] or known[0] if known else "unknown status"


def status_text(code: int) -> str:
    """`0xC001 (Unable to process)`."""
    return f"0x{code:04X} ({status_meaning(code)})"


class StatusError(ConnectorError):
    """A DIMSE operation ended with a failure status; `dimse_status` is the code."""

    def __init__(self, operation: str, code: int, connector: str) -> None:
        super().__init__(f"{operation} failed: {status_text(code)}", connector)
        self.dimse_status = code


def _set_nodelay(event: evt.Event, opened: list[bool]) -> None:
    """EVT_CONN_OPEN: the socket is connected; set TCP_NODELAY before the A-ASSOCIATE-RQ."""
    opened.append(True)
    sock = event.assoc.dul.socket
    raw = sock.socket if sock is not None else None
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class Session:
    """One established association serving one gateway request."""

    assoc: Association
    connector: str
    dimse_timeout: float
    deadline: float | None
    expired: threading.Event = field(default_factory=threading.Event)
    #: False once the operation ended in a state the next one must not inherit
    reusable: bool = True
    #: the association served an earlier operation (it was idle): the PACS may have closed
    #: it at the moment it was taken, see `AssociationLost`
    reused: bool = False
    _msg_id: int = 0

    def next_msg_id(self) -> int:
        """The Message ID of the next request (PS3.7 9.3.1.1), after `quiesce()`."""
        if self._msg_id:
            self.quiesce()
        self._msg_id = self._msg_id % 0xFFFF + 1
        return self._msg_id

    def quiesce(self, settle: float = 0.05) -> None:
        """Works around a race in pynetdicom 3.0 (its issue #875): when an operation ends,
        the association's reactor thread resumes; a request sent before it is paused again
        may have a response taken by the reactor and dropped ("Received unexpected C-FIND
        service message"). Pause it and wait until it is really back at its checkpoint."""
        assoc = self.assoc
        checkpoint = getattr(assoc, "_reactor_checkpoint", None)
        if checkpoint is None or not assoc.is_established:
            return
        checkpoint.clear()
        seen_running = not getattr(assoc, "_is_paused", True)
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            if not getattr(assoc, "_is_paused", True):
                seen_running = True
            elif seen_running:
                return
            time.sleep(0.0002)

    def abort(self) -> None:
        """A-ABORT, and wake whoever waits for a DIMSE message on this association."""
        with contextlib.suppress(Exception):
            if not (self.assoc.is_aborted or self.assoc.is_released):
                self.assoc.abort()
        self.assoc.dimse.msg_queue.put((None, None))

    def _expire(self) -> None:
        self.expired.set()
        self.abort()

    def lost(self, operation: str, since: float) -> ConnectorError:
        """The error for an operation whose responses stopped (the generator yielded no
        status): our deadline, pynetdicom's DIMSE time-out, or the peer's abort."""
        if self.expired.is_set():
            return ConnectorTimeout(f"{operation} exceeded the request time-out", self.connector)
        if time.monotonic() - since >= self.dimse_timeout * 0.95:
            return ConnectorTimeout(
                f"{operation}: no response within the DIMSE time-out", self.connector
            )
        return AssociationLost(
            f"{operation}: association aborted or connection lost", self.connector
        )

    def require(self, abstract_syntax: str, what: str) -> None:
        if not any(cx.abstract_syntax == abstract_syntax for cx in self.assoc.accepted_contexts):
            raise ConnectorError(f"the PACS did not accept {what}", self.connector)


class AssociationLost(ConnectorError):
    """The PACS aborted the association or its connection closed during an operation. On a
    reused association before any answer, the usual cause is a PACS that closed it as idle
    just as it was taken: the operation is worth one more try on a new association (as HTTP
    clients retry an idempotent request on a fresh connection, RFC 9110 9.2.2)."""


@dataclass
class _Idle:
    """An association kept open after a search, for the next one."""

    assoc: Association
    key: tuple[str, ...]
    msg_id: int
    since: float


@dataclass
class Link:
    """How to reach one PACS. Nothing here opens a socket until `session()` is entered.

    Searches and C-GET retrievals reuse associations: one that served an operation stays
    open `dimse.reuse-seconds` for the next one proposing the same contexts and roles (PS3.8
    7.1: an association carries any number of operations), one per set of contexts. Idle
    associations count against `max-associations`; a request that finds every slot taken,
    some by idle associations, closes one and takes its slot."""

    connector: str
    dimse: Dimse
    timeouts: Timeouts
    tls: ssl.SSLContext | None = None
    _busy: int = field(init=False, default=0)  # associations open: in use and idle
    _idle: list[_Idle] = field(init=False, default_factory=list)
    _surplus: list[_Idle] = field(init=False, default_factory=list)  # for the reaper to release
    _closed: bool = field(init=False, default=False)  # close() was called: keep nothing idle
    _cond: threading.Condition = field(init=False, default_factory=threading.Condition)
    _reaper: threading.Thread | None = field(init=False, default=None)

    def deadline(self) -> float:
        return time.monotonic() + self.timeouts.request

    @property
    def limit(self) -> int:
        return max(1, self.dimse.max_associations)

    @contextlib.contextmanager
    def session(
        self,
        contexts: Sequence[PresentationContext],
        *,
        deadline: float,
        roles: Sequence[Any] = (),
        bounded: bool = True,
        reusable: bool = False,
        fresh: bool = False,
    ) -> Iterator[Session]:
        """An association proposing `contexts` (and SCP/SCU `roles`), held within the
        connector's limit of concurrent associations. Waiting for a free slot and setting up
        the association are bounded by `deadline`; so is the whole session when `bounded`.
        A `reusable` session (a search, a C-GET) may get an idle association and leave its own
        idle; a `fresh` one opens a new association even so."""
        key = _key(contexts, roles)
        reuse = reusable and self.dimse.reuse_seconds > 0
        idle = self._acquire(key if reuse and not fresh else None, deadline)
        kept = False
        try:
            if idle is None and time.monotonic() >= deadline:
                # the slot came free as the request ran out of time: no association to open
                raise ConnectorTimeout(
                    f"no free association (max-associations {self.dimse.max_associations})"
                    " within the request time-out",
                    self.connector,
                )
            assoc = idle.assoc if idle else self._associate(contexts, roles, deadline)
            session = Session(
                assoc, self.connector, self.timeouts.dimse, deadline if bounded else None
            )
            session._msg_id = idle.msg_id if idle else 0
            session.reused = idle is not None
            timer = self._watchdog(session)
            graceful = False
            try:
                yield session
                graceful = True
            except StatusError:
                graceful = True  # the operation ended normally, with a failure status
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if (
                    reuse
                    and graceful
                    and session.reusable
                    and assoc.is_established
                    and not session.expired.is_set()
                ):
                    kept = self._keep(_Idle(assoc, key, session._msg_id, time.monotonic()))
                if not kept:
                    _close(session, graceful)
        finally:
            if not kept:
                self._free()

    def _acquire(self, key: tuple[str, ...] | None, deadline: float) -> _Idle | None:
        """A slot: with an idle association for `key` when there is a live one (returned),
        else free for a new association (None). Waits, up to `deadline`, only while every
        slot is in use by a request."""
        with self._cond:
            while True:
                if key is not None:
                    found = self._pop_idle(key)
                    if found is not None:
                        return found
                if self._busy < self.limit:
                    self._busy += 1
                    return None
                if self._idle:  # take the slot of the oldest idle association
                    victim = self._idle.pop(0)
                    break
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise ConnectorTimeout(
                        f"no free association (max-associations {self.dimse.max_associations})"
                        " within the request time-out",
                        self.connector,
                    )
        _release(victim.assoc)  # closed before ours opens: the limit holds at the PACS too
        return None

    def _pop_idle(self, key: tuple[str, ...]) -> _Idle | None:
        """(Lock held.) The youngest idle association for `key` that is still usable. One the
        peer closed frees its slot here; one past `reuse-seconds` is left to the reaper."""
        now = time.monotonic()
        for idle in reversed(list(self._idle)):
            if idle.key != key or now - idle.since >= self.dimse.reuse_seconds:
                continue
            self._idle.remove(idle)
            if idle.assoc.is_established:
                return idle
            self._busy -= 1  # released or aborted by the PACS: nothing open there
        return None

    def _keep(self, idle: _Idle) -> bool:
        """Keeps `idle` for the next session with its key; an older idle association with the
        same key is handed to the reaper to be released (one per key: each holds one of the
        PACS's association slots, which other users of the PACS may need). False, keeping
        nothing, once the link is closed."""
        with self._cond:
            if self._closed:
                return False
            for older in [i for i in self._idle if i.key == idle.key]:
                self._idle.remove(older)
                self._surplus.append(older)
            self._idle.append(idle)
            self._cond.notify_all()
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name=f"dimse-idle-{self.connector}", daemon=True
                )
                self._reaper.start()
            return True

    def _free(self) -> None:
        with self._cond:
            self._busy -= 1
            # every waiter: the reaper waits on this condition too, and a wake-up it took
            # would leave a request waiting for a free slot until its time-out
            self._cond.notify_all()

    def _reap(self) -> None:
        """Releases surplus idle associations at once and the others once they are
        `reuse-seconds` old (out of the requests' way); ends when none is left."""
        while True:
            with self._cond:
                now = time.monotonic()
                ending = [i for i in self._idle if now - i.since >= self.dimse.reuse_seconds]
                for idle in ending:
                    self._idle.remove(idle)
                ending += self._surplus
                self._surplus.clear()
                if not self._idle and not ending:
                    self._reaper = None
                    return
                if not ending:
                    oldest = min(i.since for i in self._idle)
                    wait = oldest + self.dimse.reuse_seconds - now
                    self._cond.wait(timeout=min(1.0, max(0.02, wait)))
                    continue
            for idle in ending:
                _release(idle.assoc)
                self._free()

    def close(self) -> None:
        """Releases every idle association (the connector is closing); sessions still running
        release theirs when they end."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle + self._surplus, []
            self._surplus.clear()
        for item in idle:
            _release(item.assoc)
            self._free()

    def _watchdog(self, session: Session) -> threading.Timer | None:
        if session.deadline is None:
            return None
        timer = threading.Timer(max(0.0, session.deadline - time.monotonic()), session._expire)
        timer.daemon = True
        timer.name = f"dimse-deadline-{self.connector}"
        timer.start()
        return timer

    def _application_entity(self, deadline: float) -> AE:
        ae = AE(ae_title=self.dimse.calling_aet)
        remaining = max(0.01, deadline - time.monotonic())
        ae.connection_timeout = min(self.timeouts.connect, remaining)
        ae.acse_timeout = min(self.timeouts.acse, remaining)
        ae.dimse_timeout = self.timeouts.dimse
        ae.network_timeout = self.timeouts.network
        return ae

    def _associate(
        self,
        contexts: Sequence[PresentationContext],
        roles: Sequence[Any],
        deadline: float,
    ) -> Association:
        ae = self._application_entity(deadline)
        opened: list[bool] = []
        started = time.monotonic()
        try:
            assoc = ae.associate(
                self.dimse.host,
                self.dimse.port,
                contexts=list(contexts),
                ae_title=self.dimse.aet,
                max_pdu=self.dimse.max_pdu,
                ext_neg=list(roles),
                evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay, [opened])],
                tls_args=(self.tls, self.dimse.host) if self.tls is not None else None,
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            log.warning("connector %s: association request failed: %s", self.connector, exc)
            raise ConnectorError(
                f"cannot request an association: {type(exc).__name__}", self.connector
            ) from exc
        if assoc.is_established:
            return assoc
        timed_out = time.monotonic() >= deadline  # the ACSE time-out was the deadline's rest
        raise self._not_established(assoc, bool(opened), time.monotonic() - started, ae, timed_out)

    def _not_established(
        self, assoc: Association, opened: bool, elapsed: float, ae: AE, timed_out: bool = False
    ) -> ConnectorError:
        # the client hears about "the PACS" of the named connector; its address goes to the log
        where = "the PACS"
        log.warning(
            "connector %s: no association with %s@%s:%s",
            self.connector,
            self.dimse.aet,
            self.dimse.host,
            self.dimse.port,
        )
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            detail = f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}" if rsp else ""
            return ConnectorError(f"association rejected by {where} ({detail})", self.connector)
        if not opened:
            if elapsed >= (ae.connection_timeout or 0) * 0.95:
                return ConnectorTimeout(f"connection to {where} timed out", self.connector)
            tls = " (or TLS handshake failed)" if self.tls is not None else ""
            return ConnectorError(f"cannot connect to {where}{tls}", self.connector)
        if assoc.is_aborted and not timed_out and elapsed < (ae.acse_timeout or 0) * 0.95:
            return ConnectorError(f"association aborted by {where}", self.connector)
        return ConnectorTimeout(
            f"no association response from {where} within the ACSE time-out", self.connector
        )


def _key(contexts: Sequence[PresentationContext], roles: Sequence[Any]) -> tuple[str, ...]:
    """What an idle association must have been proposed with to serve a session: the same
    presentation contexts (abstract and transfer syntaxes) and SCP/SCU roles."""
    proposed = (f"{cx.abstract_syntax}:{'/'.join(map(str, cx.transfer_syntax))}" for cx in contexts)
    asked = (f"role:{r.sop_class_uid}:{r.scu_role}:{r.scp_role}" for r in roles)
    return (*proposed, *asked)


def _release(assoc: Association) -> None:
    """A-RELEASE an association no request uses; A-ABORT it if that fails."""
    with contextlib.suppress(Exception):
        if assoc.is_established:
            assoc.release()
    with contextlib.suppress(Exception):
        if assoc.is_established:
            assoc.abort()


def _close(session: Session, graceful: bool) -> None:
    """Release a healthy association; abort one that an expired, failed or abandoned request
    left (its operation may still be running)."""
    assoc = session.assoc
    if graceful and assoc.is_established and not session.expired.is_set():
        with contextlib.suppress(Exception):
            assoc.release()
    if assoc.is_established:
        session.abort()
