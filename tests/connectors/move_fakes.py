"""An in-process pynetdicom Move SCP that misbehaves on cue, for the C-MOVE tests.

`FakeMoveScp` is `FakeScp` (C-ECHO, C-FIND from its datasets) plus C-MOVE: the C-STORE
sub-operations go to the destinations it knows (`destinations`: AE title -> (host, port));
an unknown destination is answered 0xA801 (PS3.4 C.4.2.1.5). Switches:
- `originator`: what the C-STORE sub-operations carry as Move Originator AE title / Message ID
  (PS3.7 9.3.1.1): "caller" (the C-MOVE requestor's AE title and request's Message ID, as the
  standard says), "self" (its own AE title, as pynetdicom's Move SCP does), "omit" (neither);
- `fail`: SOP Instance UIDs whose sub-operation fails (not sent; counted as failed, so the
  final status is 0xB000 Warning, or 0xA702 when every sub-operation failed);
- `hold_after`: after that many sub-operations, wait for `go` (set by the test, or at stop);
- `pace`: seconds between sub-operations (a wait on `go`);
- `no_pending`: send no pending C-MOVE responses, only the final one (as Orthanc does).
It records the Message IDs of the C-MOVE requests, the C-CANCELs honoured, and the status of
every C-STORE sub-operation (SOP Instance UID, status).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.connectors.scp_fakes import FakeScp, _uids_match

FAILED = 0xC000  # a sub-operation the fake reports failed (PS3.4 B.2.3 "Cannot understand")


class _MoveAE(AE):
    """pynetdicom's Move SCP opens the sub-association with `self.ae.associate()`: this AE sets
    the Move Originator fields of its C-STOREs as the fake says, and records the statuses."""

    fake: FakeMoveScp

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        assoc = super().associate(*args, **kwargs)
        send = assoc.send_c_store

        def send_c_store(dataset: Dataset, msg_id: int = 1, priority: int = 2,
                         originator_aet: str | None = None,
                         originator_id: int | None = None) -> Dataset:
            sop = str(dataset.SOPInstanceUID)
            if sop in self.fake.fail:
                status = Dataset()
                status.Status = FAILED
            else:
                mode = self.fake.originator
                if mode == "omit":
                    originator_aet = originator_id = None
                elif mode == "caller":
                    originator_aet = self.fake.caller.aet
                status = send(dataset, msg_id, priority, originator_aet, originator_id)
            self.fake.record_store(sop, int(status.get("Status", -1)))
            return status

        assoc.send_c_store = send_c_store  # type: ignore[method-assign]
        return assoc


@dataclass
class FakeMoveScp(FakeScp):
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    originator: str = "caller"
    fail: set[str] = field(default_factory=set)
    hold_after: int | None = None
    go: threading.Event = field(default_factory=threading.Event)
    pace: float = 0.0
    no_pending: bool = False
    # what happened
    move_ids: list[int] = field(default_factory=list)
    stores: list[tuple[str, int]] = field(default_factory=list)
    moves_cancelled: int = 0
    caller: threading.local = field(default_factory=threading.local)

    def start(self) -> Self:
        ae = _MoveAE(ae_title="FAKEMOVE")
        ae.fake = self
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        for cx in StoragePresentationContexts:  # proposed in the sub-associations
            ae.add_requested_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES[:2])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        handlers = [
            (evt.EVT_C_FIND, self._on_find), (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_REQUESTED, self._on_open), (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_ABORTED, self._on_aborted), (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ESTABLISHED, self._on_established),
        ]
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        self.go.set()
        super().stop()

    def _on_established(self, event: evt.Event) -> None:
        super()._on_established(event)
        if self.no_pending:
            dimse = event.assoc.dimse
            send = dimse.send_msg

            def send_msg(primitive: Any, context_id: int) -> None:
                if isinstance(primitive, C_MOVE) and primitive.Status == 0xFF00:
                    return
                send(primitive, context_id)

            dimse.send_msg = send_msg

    def record_store(self, sop: str, status: int) -> None:
        with self._lock:
            self.stores.append((sop, status))

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        ident = event.identifier
        self.identifiers.append(ident)
        self.move_ids.append(int(event.request.MessageID))
        self.caller.aet = event.assoc.requestor.ae_title
        destination = self.destinations.get(str(event.move_destination).strip())
        if destination is None:
            yield None, None  # PS3.4 C.4.2.1.5: 0xA801 Refused: Move Destination unknown
            return
        yield destination
        chosen = [ds for ds in self.datasets if _uids_match(ident, ds)]
        yield len(chosen)
        for number, ds in enumerate(chosen):
            if number == self.hold_after:
                self.go.wait(10)
            if self.pace and number:
                self.go.wait(self.pace)
            if event.is_cancelled:
                with self._lock:
                    self.moves_cancelled += 1
                yield 0xFE00, None
                return
            yield 0xFF00, ds
