"""C-MOVE retrieval for the DIMSE connector (PS3.4 C.4.2; PS3.7 9.1.4 C-MOVE, 9.3.4 C-CANCEL).

The PACS sends the objects to the gateway's embedded storage SCP (`storescp.StorageScp`), which
routes each to the subscription this module opens before its C-MOVE request (see `storescp`):
1. subscribe with the connector's calling AE title and the PACS's AE title (pynetdicom-based
   PACS put their own there) and the SOP Instance UIDs the IMAGE-level C-FIND found; the
   subscription's Message ID is the C-MOVE request's;
2. one association, one C-MOVE (Study Root, the SCP's AE title as Move Destination), run by a
   worker thread that adds the final response to the subscription's queue;
3. the objects are yielded as they arrive, the first before the last has come.

Final statuses (PS3.4 C.4.2.1.5):
- Success, every expected instance received: done.
- Warning 0xB000, failed sub-operations, Cancel 0xFE00, a lost association, or instances missing:
  the objects that arrived, then `dimse_get.RetrieveIncomplete` (as with C-GET).
- 0xA801 "Refused: Move destination unknown" (dcmqrscp), or another failure before any
  sub-operation (Orthanc answers an unknown destination with 0xC000 "Unable to process"): a
  ConnectorError naming the AE title, host and port the PACS must know.
After the final response, objects the PACS counts as sent (completed + warning sub-operations)
that have not come through yet (a relay between workers adds latency) are awaited while they
keep coming, up to DRAIN_IDLE seconds of silence. A PACS that omits the counts from a Success
is waited for until every expected instance is in.

Time-out: PACS need not send pending responses (Orthanc sends none), so pynetdicom's DIMSE
time-out, which only sees the C-MOVE association, is off there; instead the operation is aborted
when neither a response nor an object came for `timeouts.dimse` seconds.

A consumer that stops early (the generator is closed): C-CANCEL, the subscription closes at once
(later objects are refused), the final response is awaited for CANCEL_GRACE seconds, then the
association is released, or aborted if the operation did not end.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import build_context
from pynetdicom.status import code_to_category

from ..errors import ConnectorError, NotAcceptable
from .base import Part10
from .dimse_assoc import Link, Session, status_text
from .dimse_get import RetrieveIncomplete, Target, identifier
from .storescp import Lost, StorageScp, Subscription

#: Study Root Query/Retrieve Information Model - MOVE (PS3.4 C.6.2.1)
MOVE_MODEL = UID("1.2.840.10008.5.1.4.1.2.2.2")
MOVE_DESTINATION_UNKNOWN = 0xA801
CANCEL_GRACE = 2.0
DRAIN_IDLE = 5.0
POLL = 0.2


@dataclass
class MoveOutcome:
    """The final C-MOVE response, as far as it came (PS3.7 9.1.4.1, 9.3.4.2)."""

    code: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    counted: bool = False  # the response carried the sub-operation counts
    error: ConnectorError | None = None

    def sent(self, expected: int) -> int:
        """How many objects the PACS reports it delivered."""
        if self.counted:
            return self.completed + self.warning
        return expected if self.code == 0x0000 else 0


def retrieve(link: Link, target: Target, scp: StorageScp, transfer_syntax: str) -> Iterator[Part10]:
    """Streams the instances of `target` through a C-MOVE (see the module docstring)."""
    received: set[str] = set()
    aets = {link.dimse.calling_aet, link.dimse.aet}
    with scp.subscribe(aets, target.instances, link.connector, link.timeouts.connect) as sub:
        outcome = yield from _move(link, target, scp, sub, received, transfer_syntax)
    if outcome is not None:
        _finish(link.connector, target, scp, outcome, received)


def _move(
    link: Link,
    target: Target,
    scp: StorageScp,
    sub: Subscription,
    received: set[str],
    transfer_syntax: str,
) -> Generator[Part10, None, MoveOutcome | None]:
    """One association, one C-MOVE; None when the consumer hung up."""
    outcome: MoveOutcome | None = None
    session_of = link.session([build_context(MOVE_MODEL)], deadline=link.deadline(), bounded=False)
    with session_of as session:
        session.require(MOVE_MODEL, "the Study Root C-MOVE model")
        session.assoc.dimse_timeout = None  # see the module docstring: _receive watches
        mover = _Mover(session, identifier(target), scp.aet, sub)
        mover.start()
        try:
            outcome = yield from _receive(sub, mover, received, transfer_syntax, target)
        except GeneratorExit:
            outcome = None
        finally:
            mover.stop(link.timeouts.dimse)
    return outcome


def _receive(
    sub: Subscription,
    mover: _Mover,
    received: set[str],
    transfer_syntax: str,
    target: Target,
) -> Generator[Part10, None, MoveOutcome]:
    outcome: MoveOutcome | None = None
    last = time.monotonic()
    expected = len(target.instances)
    silent = mover.session.dimse_timeout
    connector = mover.session.connector
    while True:
        item = sub.get(POLL)
        now = time.monotonic()
        if isinstance(item, Part10):
            last = now
            if transfer_syntax not in ("*", item.transfer_syntax):
                raise NotAcceptable(
                    f"the PACS sent an instance in {item.transfer_syntax}, not {transfer_syntax}",
                    connector,
                )
            received.add(item.sop_instance_uid)
            yield item
        elif isinstance(item, MoveOutcome):
            outcome, last = item, now
        elif isinstance(item, Lost):
            lost = outcome or mover.outcome or MoveOutcome()
            lost.error = ConnectorError(f"C-MOVE: {item.reason}", connector)
            return lost
        elif outcome is None and mover.done.is_set() and not mover.is_alive():
            outcome = mover.outcome or MoveOutcome(error=ConnectorError("C-MOVE ended", connector))
        elif outcome is None and now - max(last, mover.activity) > silent:
            silent = float("inf")
            mover.session.abort()  # a silent PACS: the worker ends with ConnectorTimeout
        if outcome is not None and (
            outcome.error is not None
            or len(received) >= outcome.sent(expected)
            or now - last > DRAIN_IDLE
        ):
            return outcome


class _Mover(threading.Thread):
    """Sends the C-MOVE and collects its responses; the final one goes to the subscription."""

    def __init__(self, session: Session, query: Dataset, destination: str, sub: Subscription):
        super().__init__(name=f"dimse-move-{session.connector}", daemon=True)
        self.session, self.query, self.destination, self.sub = session, query, destination, sub
        self.outcome: MoveOutcome | None = None
        self.done = threading.Event()
        self.activity = time.monotonic()  # when the last response came

    def run(self) -> None:
        outcome = MoveOutcome()
        since = time.monotonic()
        try:
            responses = self.session.assoc.send_c_move(
                self.query, self.destination, MOVE_MODEL, msg_id=self.sub.message_id
            )
            for status, _identifier in responses:
                code = status.get("Status")
                if code is None:
                    outcome.error = self.session.lost("C-MOVE", since)
                    break
                since = self.activity = time.monotonic()
                _count(outcome, status)
                if code_to_category(code) != "Pending":
                    outcome.code = code
                    break
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, never lost here
            name = type(exc).__name__
            outcome.error = ConnectorError(f"C-MOVE failed: {name}", self.session.connector)
        self.outcome = outcome
        self.done.set()
        self.sub.put(outcome)

    def stop(self, dimse_timeout: float) -> None:
        """Ends the operation if it still runs: C-CANCEL (PS3.7 9.3.4.3), stop routing to the
        subscription, wait for the final response a little, else abort."""
        if not self.done.is_set():
            with contextlib.suppress(Exception):
                self.session.assoc.send_c_cancel(self.sub.message_id, query_model=MOVE_MODEL)
            self.sub.close()
            if not self.done.wait(CANCEL_GRACE):
                self.session.abort()
        self.sub.close()
        self.join(timeout=dimse_timeout + 5)


def _count(outcome: MoveOutcome, status: Dataset) -> None:
    """The sub-operation counts of a response (PS3.7 9.3.4.2, C-MOVE-RSP), when present."""
    if "NumberOfCompletedSuboperations" in status:
        outcome.counted = True
    outcome.completed = int(status.get("NumberOfCompletedSuboperations") or 0)
    outcome.failed = int(status.get("NumberOfFailedSuboperations") or 0)
    outcome.warning = int(status.get("NumberOfWarningSuboperations") or 0)


def _finish(
    connector: str, target: Target, scp: StorageScp, outcome: MoveOutcome, received: set[str]
) -> None:
    """Maps the final response to success or an error (see the module docstring)."""
    code = outcome.code
    if code == MOVE_DESTINATION_UNKNOWN:
        raise ConnectorError(
            f"C-MOVE refused: {status_text(code)}; the PACS must know {scp.destination()}",
            connector,
        )
    missing = set(target.instances) - received
    if not missing and outcome.failed == 0:
        return
    nothing_done = not received and not (outcome.completed or outcome.failed or outcome.warning)
    if code is not None and code_to_category(code) == "Failure" and nothing_done:
        raise ConnectorError(
            f"C-MOVE failed: {status_text(code)}, nothing was sent; if the PACS does not know "
            f"the move destination, it must know {scp.destination()}",
            connector,
        )
    if outcome.error is not None and not received:
        raise outcome.error
    expected = len(target.instances)
    why = f"last status {status_text(code)}" if code is not None else "no final status"
    if outcome.error is not None:
        why = outcome.error.message
    raise RetrieveIncomplete(
        f"C-MOVE incomplete, {why}: {len(received)} of {expected} instances received",
        connector,
        expected=expected,
        received=len(received),
        failed=max(len(missing), outcome.failed),
        dimse_status=code,
    )
