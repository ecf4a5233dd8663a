"""The DICOM (DIMSE) connector: QIDO-RS answered with C-FIND, WADO-RS with C-GET (PS3.4 Annex C,
Study Root information model), readiness with C-ECHO (PS3.4 A.4).

No association is opened before a request needs one, each request has its own association
(at most `dimse.max-associations` at once), and each search is bounded by `timeouts.request`.
The modules beside this one hold the parts: `dimse_assoc` (associations, time-outs, TLS,
TCP_NODELAY, status codes), `dimse_tls`, `dimse_find` (identifiers, one C-FIND with C-CANCEL),
`dimse_search` (relational, hierarchical and derived-key plans), `dimse_get` (streaming
C-GET; partial retrievals raise `dimse_get.RetrieveIncomplete`) and `dimse_move` (C-MOVE to the
gateway's embedded storage SCP, `storescp`, when `dimse.retrieve-method` is C-MOVE; the running
SCP is given to the constructor).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Generator
from io import BytesIO
from typing import TypeVar

from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import _config as pynetdicom_config
from pynetdicom import build_context

from .. import dicomjson
from ..dicomjson import JsonDataset
from ..errors import ConnectorError, NotFound
from ..query import SERIES_UID, SOP_CLASS, SOP_UID, STUDY_UID, Level, Match, SearchQuery
from ..settings import ConnectorSettings, Dimse
from .base import Capabilities, Part10, ResourceRef, SearchResult, boundary
from .dimse_assoc import AssociationLost, Link, Session, StatusError, status_text
from .dimse_find import FIND_MODEL, MODALITIES_IN_STUDY
from .dimse_get import RetrieveIncomplete, Target, retrieve
from .dimse_move import retrieve as retrieve_by_move
from .dimse_search import (
    add_derived,
    flat,
    hierarchical,
    is_relational,
    modalities_match,
    request_keys,
)
from .dimse_tls import client_context
from .storescp import StorageScp

__all__ = ["DimseConnector", "RetrieveIncomplete"]

log = logging.getLogger("gateway.dimse")
T = TypeVar("T")

#: Verification SOP Class (PS3.4 A.4)
VERIFICATION = UID("1.2.840.10008.1.1")
#: C-FIND failure statuses that do not mean "no relational queries here" (PS3.4 C.4.1.1.4):
#: Refused: Out of resources
_PASSING_FAILURES = frozenset({0xA700})


class DimseConnector:
    """A DIMSE PACS behind the `Connector` protocol (see `connectors.base`)."""

    capabilities = Capabilities(relational=True, fuzzy=False, uid_lists=True, hinted=True)

    def __init__(
        self, settings: ConnectorSettings, *, storage_scp: StorageScp | None = None
    ) -> None:
        if settings.dicom is None:
            raise ValueError(f"connector {settings.id} has no dicom-connector block")
        self.id = settings.id
        self.settings = settings
        self.dimse: Dimse = settings.dicom.dimse
        self.link = Link(settings.id, self.dimse, settings.timeouts)
        self.storage_scp = storage_scp
        self._lock = threading.Lock()
        self._tls_loaded = False
        self._hierarchical = self.dimse.query_model == "hierarchical"
        # identifiers hold patient data: pynetdicom must not log them at INFO
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
        pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

    # -- plumbing -------------------------------------------------------------------------

    def _ready_link(self) -> Link:
        """The link, its TLS context loaded on first use (thread-safe)."""
        with self._lock:
            if not self._tls_loaded:
                self.link.tls = client_context(self.dimse, self.id)
                self._tls_loaded = True
        return self.link

    def _find(self, work: Callable[[Session], T]) -> T:
        """`work` (C-FINDs) on a search association. When the PACS drops a reused association
        under it (`AssociationLost`), `work` runs once more on a new association: C-FIND
        only reads, and what the first try had gathered is dropped with it."""
        link = self._ready_link()
        deadline = link.deadline()
        for fresh in (False, True):
            with (
                boundary(self.id, "C-FIND"),
                link.session(
                    [build_context(FIND_MODEL)], deadline=deadline, reusable=True, fresh=fresh
                ) as session,
            ):
                try:
                    session.require(FIND_MODEL, "the Study Root C-FIND model")
                    return work(session)
                except AssociationLost:
                    if fresh or not session.reused:
                        raise
                    session.reusable = False
            log.info("connector %s: a reused association was gone, C-FIND on a new one", self.id)
        raise AssertionError("unreachable")

    @property
    def prefers_hierarchical(self) -> bool:
        with self._lock:
            return self._hierarchical

    def _learn_hierarchical(self) -> None:
        with self._lock:
            self._hierarchical = True

    def _run(
        self, session: Session, query: SearchQuery, keys: dict[int, object], want: int | None
    ) -> tuple[list[JsonDataset], bool]:
        """Relational or hierarchical, per `dimse.query-model` ("auto": relational until the
        PACS answers a relational query with a failure status, then hierarchical; "out of
        resources" is a passing state of the PACS, not a refusal of the query model)."""
        if not is_relational(query) or self.dimse.query_model == "relational":
            return flat(session, query, keys, want)
        if self.prefers_hierarchical:
            return hierarchical(session, query, keys, want)
        try:
            return flat(session, query, keys, want)
        except StatusError as exc:
            if exc.dimse_status in _PASSING_FAILURES:
                raise  # says nothing about the query model: the next query tries again
            self._learn_hierarchical()
            return hierarchical(session, query, keys, want)

    # -- the Connector protocol -----------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchResult:
        """C-FIND at the query's level (see the module docstring). PN keys under fuzzy
        matching, and value lists of other VRs than UI (PS3.4 C.2.2.2.2 defines list matching
        for UIDs only), are sent universal and reported unmatched; then, and when
        ModalitiesInStudy has to be matched here, all answers are fetched and paging is done
        here or by the engine."""
        if any(m.kind == "list" and not m.values for m in query.matches):
            return SearchResult(datasets=[])
        unmatched = frozenset(
            m.tag
            for m in query.matches
            if (query.fuzzy and m.vr == "PN" and m.kind != "universal")
            or (m.kind == "list" and m.vr != "UI" and m.tag != MODALITIES_IN_STUDY)
        )
        modalities = query.match(MODALITIES_IN_STUDY) if query.level is Level.STUDY else None
        if modalities is not None and modalities.kind == "universal":
            modalities = None
        paged = not unmatched  # with unmatched keys the engine filters, then pages
        end = None if query.limit is None else query.offset + query.limit
        want = end if paged and modalities is None else None

        def work(session: Session) -> tuple[list[JsonDataset], bool]:
            rows, more = self._run(session, query, request_keys(query, unmatched), want)
            if modalities is not None:
                add_derived(session, query.level, rows)
                rows = [r for r in rows if modalities_match(modalities, r)]
            if paged:
                more = more or (end is not None and len(rows) > end)
                rows = rows[query.offset : end]
            add_derived(session, query.level, rows)
            return rows, more

        rows, more = self._find(work)
        return SearchResult(datasets=rows, unmatched=unmatched, complete=not more)

    def _target(self, ref: ResourceRef) -> Target:
        """The instances under `ref` and their SOP classes, by an IMAGE-level C-FIND."""
        matches = [Match(STUDY_UID, "single", (ref.study,))]
        if ref.series:
            matches.append(Match(SERIES_UID, "single", (ref.series,)))
        if ref.instance:
            matches.append(Match(SOP_UID, "single", (ref.instance,)))
        query = SearchQuery(level=Level.IMAGE, matches=tuple(matches), includefields=(SOP_CLASS,))
        rows, _ = self._find(lambda session: self._run(session, query, request_keys(query), None))
        instances: dict[str, str] = {}
        classes: set[str] = set()
        known = True
        for row in rows:
            sop, series = dicomjson.first(row, SOP_UID), dicomjson.first(row, SERIES_UID)
            if sop:
                instances[sop] = series or ref.series or ""
            sop_class = dicomjson.first(row, SOP_CLASS)
            known = known and bool(sop_class)
            classes.add(sop_class or "")
        if not instances:
            raise NotFound(f"{ref.level.lower()} not found", self.id)
        return Target(
            ref.level,
            ref.study,
            ref.series,
            ref.instance,
            instances,
            tuple(sorted(classes)) if known else None,
        )

    def retrieve_instances(
        self, ref: ResourceRef, transfer_syntax: str
    ) -> Generator[Part10, None, None]:
        """C-GET or C-MOVE (`dimse.retrieve-method`) of the instances under `ref`, streamed
        (see `dimse_get`, `dimse_move`). Raises NotFound before the first object when the
        C-FIND finds nothing.

        With C-GET, an instance whose SOP class a search has just found (`ref.sop_class`,
        from the engine's look-up, often a cache hit) is retrieved without that C-FIND (C-MOVE
        keeps it: some PACS answer a C-MOVE of an unknown instance with the failure status
        they give an unknown destination). When such a C-GET ends with a final status and
        nothing (the instance was deleted or moved since, or its class was not what the
        search said), the C-FIND is made after all and decides: NotFound, or a second
        retrieval with what it found. A C-GET that timed out or lost its association is an
        error at once: a second one would only wait as long again."""
        moving = self.dimse.retrieve_method == "C-MOVE"
        if moving and self.storage_scp is None:
            raise ConnectorError(
                "C-MOVE needs gateway.storage-scp, which is not configured (the PACS "
                "sends the objects of a C-MOVE to the gateway's storage SCP)",
                self.id,
            )
        if ref.instance and ref.series and ref.sop_class and not moving:
            hinted = Target(
                "IMAGE",
                ref.study,
                ref.series,
                ref.instance,
                {ref.instance: ref.series},
                (ref.sop_class,),
            )
            try:
                with boundary(self.id, "C-GET"):
                    yield from retrieve(self._ready_link(), hinted, transfer_syntax, retry=False)
                return
            except RetrieveIncomplete as exc:
                if exc.received:
                    raise
                log.debug("connector %s: a C-GET by the searched SOP class got nothing", self.id)
        yield from self._retrieve(self._target(ref), transfer_syntax, moving)

    def _retrieve(
        self, target: Target, transfer_syntax: str, moving: bool
    ) -> Generator[Part10, None, None]:
        link = self._ready_link()
        if self.storage_scp is not None and moving:
            with boundary(self.id, "C-MOVE"):
                yield from retrieve_by_move(link, target, self.storage_scp, transfer_syntax)
            return
        with boundary(self.id, "C-GET"):
            yield from retrieve(link, target, transfer_syntax)

    def retrieve_metadata(self, ref: ResourceRef, bulk_base: str) -> list[JsonDataset]:
        """Every instance's attributes (from a C-GET), binary values as BulkDataURIs."""
        out: list[JsonDataset] = []
        for part in self.retrieve_instances(ref, "*"):
            ds = dcmread(BytesIO(part.data))
            study, series, sop = (
                str(ds.get(k, ""))
                for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            )
            bulk = functools.partial(dicomjson.bulk_uri, bulk_base, study, series, sop)
            out.append(dicomjson.from_pydicom(ds, bulk))
        return out

    def check(self) -> None:
        """C-ECHO (PS3.7 9.1.5); raises ConnectorError when the PACS does not answer 0x0000."""
        link = self._ready_link()
        with (
            boundary(self.id, "C-ECHO"),
            link.session([build_context(VERIFICATION)], deadline=link.deadline()) as s,
        ):
            status = s.assoc.send_c_echo(msg_id=s.next_msg_id())
            code = status.get("Status") if status is not None else None
            if code is None:
                raise s.lost("C-ECHO", 0.0)
            if code != 0x0000:
                raise ConnectorError(f"C-ECHO failed: {status_text(code)}", self.id)

    def close(self) -> None:
        """Releases the associations kept open for the next search."""
        self.link.close()
