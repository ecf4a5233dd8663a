"""C-GET retrieval for the DIMSE connector (PS3.4 C.4.3; SCP/SCU role selection PS3.7 D.3.3.4).

One C-GET at a time per association; one that ended with a final status stays open
`dimse.reuse-seconds` for the next C-GET proposing the same contexts (`Link`). We propose only
the storage SOP classes the C-FIND found under the reference (or that a search found for one
instance, or pynetdicom's storage classes when the PACS does not tell them), each with the SCP
role, plus the C-GET model, staying within 128 presentation contexts (PS3.8 9.3.2.2). For "*"
every usual transfer syntax is proposed, one presentation context per (SOP class, syntax)
where that fits, so that the PACS can send each object as stored. Some PACS (dcmtk's dcmqrscp)
use the first accepted context of the class whatever the object's syntax and fail the
sub-operation when they cannot convert: the instances that failed are asked again, one
compressed syntax per round.

Each received object goes from the EVT_C_STORE handler (in the thread that runs the C-GET)
through a bounded queue to the consumer, so at most `QUEUE_SIZE` objects wait in memory and a
slow consumer slows the PACS down. A consumer that stops early (the generator is closed)
aborts the association and the worker thread ends.

Partial results: when instances are still missing after the rounds (failed sub-operations, or
the association was lost), `RetrieveIncomplete` is raised after the objects received. It is a
ConnectorError carrying `expected`, `received`, `failed` and the last `dimse_status`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field

from pydicom import uid as uids
from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role, evt
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts
from pynetdicom.status import code_to_category

from ..errors import ConnectorError, NotAcceptable, PartialRetrieval
from .base import Part10
from .dimse_assoc import AssociationLost, Link, Session, status_text

log = logging.getLogger("gateway.dimse")

#: Study Root Query/Retrieve Information Model - GET (PS3.4 C.6.2.1.3)
GET_MODEL = uids.UID("1.2.840.10008.5.1.4.1.2.2.3")
QUEUE_SIZE = 4
MAX_CONTEXTS = 128
UNCOMPRESSED = (uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian)
TRANSFER_SYNTAXES: tuple[str, ...] = (
    *UNCOMPRESSED,
    uids.DeflatedExplicitVRLittleEndian,
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEGLSNearLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000,
    uids.RLELossless,
)
ALL_STORAGE_CLASSES = tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)


class RetrieveIncomplete(PartialRetrieval):
    """Raised after the objects received when some instances under the reference were not."""

    def __init__(
        self,
        message: str,
        connector: str,
        *,
        expected: int,
        received: int,
        failed: int,
        dimse_status: int | None,
    ) -> None:
        super().__init__(message, connector)
        self.expected = expected
        self.received = received
        self.failed = failed
        self.dimse_status = dimse_status


@dataclass(frozen=True)
class Target:
    """What a retrieval asks for, as the C-FIND found it."""

    level: str
    study: str
    series: str | None
    instance: str | None
    instances: dict[str, str]  # SOPInstanceUID -> SeriesInstanceUID
    sop_classes: tuple[str, ...] | None  # None: the PACS did not return SOPClassUID


@dataclass
class _Outcome:
    code: int | None = None
    failed: int = 0
    error: ConnectorError | None = None
    reused: bool = False  # the C-GET ran on an association an earlier one had used


@dataclass
class _Progress:
    received: set[str] = field(default_factory=set)
    last_code: int | None = None


def rounds(transfer_syntax: str) -> list[tuple[str, ...]]:
    """The transfer syntaxes of each C-GET round: all of them first, then each compressed
    one alone; a requested syntax alone."""
    if transfer_syntax != "*":
        return [(transfer_syntax,)]
    return [TRANSFER_SYNTAXES, *[(t,) for t in TRANSFER_SYNTAXES if t not in UNCOMPRESSED]]


def contexts(
    classes: Sequence[str], syntaxes: Sequence[str], connector: str
) -> list[PresentationContext]:
    """The C-GET model plus the storage classes: one context per (class, syntax) when that
    fits in 128, else one per class offering every syntax."""
    proposed = [build_context(GET_MODEL)]
    if 1 + len(classes) * len(syntaxes) <= MAX_CONTEXTS:
        proposed += [build_context(c, [t]) for c in classes for t in syntaxes]
    else:
        proposed += [build_context(c, list(syntaxes)) for c in classes]
    if len(proposed) > MAX_CONTEXTS:
        raise ConnectorError(f"{len(classes)} SOP classes do not fit in one association", connector)
    return proposed


def identifier(target: Target) -> Dataset:
    """The C-GET / C-MOVE identifier: the level and the unique keys down to it
    (PS3.4 C.4.2.1.4.1, C.4.3.1.3.1)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = target.level
    ds.StudyInstanceUID = target.study
    if target.series:
        ds.SeriesInstanceUID = target.series
    if target.instance:
        ds.SOPInstanceUID = target.instance
    return ds


def _identifiers(target: Target, pending: set[str], first: bool) -> list[Dataset]:
    """The whole reference in the first round; later, the pending instances per series."""
    if first:
        return [identifier(target)]
    by_series: dict[str, list[str]] = {}
    for sop in sorted(pending):
        by_series.setdefault(target.instances[sop], []).append(sop)
    out = []
    for series, sops in by_series.items():
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = target.study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
        out.append(ds)
    return out


def retrieve(
    link: Link, target: Target, transfer_syntax: str, *, retry: bool = True
) -> Iterator[Part10]:
    """Streams the instances of `target` (see the module docstring); without `retry`, one
    round only (a caller that has a better plan for failed sub-operations)."""
    progress = _Progress()
    classes = target.sop_classes or ALL_STORAGE_CLASSES
    expected = set(target.instances)
    plan = rounds(transfer_syntax)
    for number, syntaxes in enumerate(plan if retry else plan[:1]):
        pending = expected - progress.received
        retry_failures = False
        for ident in _identifiers(target, pending, number == 0):
            outcome = yield from _one_get(
                link, classes, syntaxes, ident, progress, transfer_syntax != "*" and number == 0
            )
            if outcome.error is not None:
                if not progress.received:  # a time-out stays one (504), as with C-MOVE
                    raise outcome.error
                raise _incomplete(link.connector, target, progress, outcome.error.message)
            progress.last_code = outcome.code
            if (
                outcome.code is not None
                and code_to_category(outcome.code) == "Failure"
                and outcome.failed == 0
            ):
                break  # the operation failed as a whole: no round will do better
            retry_failures = retry_failures or outcome.failed > 0
        if not expected - progress.received or not retry_failures:
            break
    _finish(link.connector, target, progress, transfer_syntax)


def _finish(connector: str, target: Target, progress: _Progress, transfer_syntax: str) -> None:
    missing = set(target.instances) - progress.received
    if not missing:
        return
    if transfer_syntax != "*" and not progress.received:
        raise NotAcceptable(f"the PACS did not send the instances in {transfer_syntax}", connector)
    code = progress.last_code
    status = f", last status {status_text(code)}" if code is not None else ""
    raise _incomplete(connector, target, progress, f"C-GET incomplete{status}")


def _incomplete(
    connector: str, target: Target, progress: _Progress, why: str
) -> RetrieveIncomplete:
    expected, received = len(target.instances), len(progress.received)
    return RetrieveIncomplete(
        f"{why}: {received} of {expected} instances received",
        connector,
        expected=expected,
        received=received,
        failed=expected - received,
        dimse_status=progress.last_code,
    )


def _one_get(
    link: Link,
    classes: Sequence[str],
    syntaxes: Sequence[str],
    ident: Dataset,
    progress: _Progress,
    strict: bool,
) -> Generator[Part10, None, _Outcome]:
    """One C-GET; yields what arrives. When the PACS drops a reused association before
    sending anything (`AssociationLost`), the C-GET is sent once more on a new one."""
    before = len(progress.received)
    outcome = yield from _get_on(link, classes, syntaxes, ident, progress, strict, False)
    if (
        isinstance(outcome.error, AssociationLost)
        and outcome.reused
        and len(progress.received) == before
    ):
        log.info("connector %s: a reused association was gone, C-GET on a new one", link.connector)
        outcome = yield from _get_on(link, classes, syntaxes, ident, progress, strict, True)
    return outcome


def _get_on(
    link: Link,
    classes: Sequence[str],
    syntaxes: Sequence[str],
    ident: Dataset,
    progress: _Progress,
    strict: bool,
    fresh: bool,
) -> Generator[Part10, None, _Outcome]:
    """One association (an idle one unless `fresh`), one C-GET, run by a worker thread;
    yields what arrives."""
    items: queue.Queue[Part10 | _Outcome] = queue.Queue(maxsize=QUEUE_SIZE)
    stop = threading.Event()
    activity = [time.monotonic()]
    roles = [build_role(c, scp_role=True) for c in classes]
    with link.session(
        contexts(classes, syntaxes, link.connector),
        deadline=link.deadline(),
        roles=roles,
        bounded=False,
        reusable=True,
        fresh=fresh,
    ) as session:
        session.require(GET_MODEL, "the Study Root C-GET model")
        if strict and len(session.assoc.accepted_contexts) < 2:
            raise NotAcceptable(
                f"the PACS does not accept {syntaxes[0]} for these instances", link.connector
            )
        # bound for this C-GET only: the association may serve the next one (`Link`)
        session.assoc.bind(evt.EVT_C_STORE, _on_store, [items, stop, activity])
        worker = threading.Thread(
            target=_run_get,
            args=(session, ident, items, stop, activity),
            name=f"dimse-get-{link.connector}",
            daemon=True,
        )
        worker.start()
        done = False
        try:
            while True:
                item = _next(items, worker, link.connector)
                if isinstance(item, _Outcome):
                    done = True
                    session.reusable = item.error is None and item.code is not None
                    item.reused = session.reused
                    return item
                progress.received.add(item.sop_instance_uid)
                yield item
        finally:
            if not done:
                stop.set()
                session.abort()
            worker.join(timeout=link.timeouts.dimse + 5)
            session.assoc.unbind(evt.EVT_C_STORE, _on_store)


def _next(
    items: queue.Queue[Part10 | _Outcome], worker: threading.Thread, connector: str
) -> Part10 | _Outcome:
    while True:
        try:
            return items.get(timeout=0.5)
        except queue.Empty:
            if not worker.is_alive() and items.empty():
                return _Outcome(error=ConnectorError("C-GET ended without a result", connector))


def _on_store(
    event: evt.Event,
    items: queue.Queue[Part10 | _Outcome],
    stop: threading.Event,
    activity: list[float],
) -> int:
    """EVT_C_STORE during the C-GET: hand the Part 10 bytes to the consumer (PS3.4 B.2.3)."""
    activity[0] = time.monotonic()
    if stop.is_set():
        return 0xA700  # Refused: Out of resources
    item = Part10(
        data=event.encoded_dataset(include_meta=True),
        transfer_syntax=str(event.context.transfer_syntax),
        sop_instance_uid=str(getattr(event.request, "AffectedSOPInstanceUID", "") or ""),
    )
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            activity[0] = time.monotonic()
            return 0x0000
        except queue.Full:
            continue
    return 0xA700


def _run_get(
    session: Session,
    ident: Dataset,
    items: queue.Queue[Part10 | _Outcome],
    stop: threading.Event,
    activity: list[float],
) -> None:
    outcome = _Outcome()
    try:
        for status, _answer in session.assoc.send_c_get(
            ident, GET_MODEL, msg_id=session.next_msg_id()
        ):
            code = status.get("Status")
            if code is None:
                outcome.error = session.lost("C-GET", activity[0])
                break
            activity[0] = time.monotonic()
            outcome.failed = int(status.get("NumberOfFailedSuboperations") or 0)
            if code_to_category(code) != "Pending":
                outcome.code = code
                break
    except RuntimeError as exc:  # pynetdicom: the association is no longer established
        outcome.error = AssociationLost(f"C-GET could not be sent: {exc}", session.connector)
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, never lost here
        outcome.error = ConnectorError(f"C-GET failed: {type(exc).__name__}", session.connector)
    while not stop.is_set():
        try:
            items.put(outcome, timeout=0.1)
            return
        except queue.Full:
            continue
