"""A Weasis manifest from the connectors: each selected connector is asked, in parallel, for
the criteria of a launch (in Viewer-Hub's order: objectUID, seriesUID, accessionNumber,
studyUID, patientID), then for the series and instances of what it found; its answers make
one `arcQuery`, whose `baseUrl` points at the gateway (or, in a connector's direct mode, at
the archive, with the archive's credentials).

A connector skips a criterion its `search-criteria.deactivated` names, but not the follow-up
queries of what it found. `connector.dicom-web-level-limit` stops DICOM_WEB connectors at the
study or series level (Weasis completes such manifests itself, with one WADO-RS request per
series). A connector that fails gives its arcQuery an ERROR or WARN `Message`; nothing found
anywhere gives an INFO one.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from .connectors.http_upstream import Upstream
from .dicomjson import JsonDataset
from .engine import Engine
from .errors import AllConnectorsFailed, ConnectorError
from .manifest import ArcQuery, Manifest, Message, apply_filters, merge_rows
from .query import SERIES_UID, SOP_UID, STUDY_UID, Level, Match, SearchQuery
from .settings import Authentication, ConnectorSettings, Settings
from .weasis_request import ManifestRequest

log = logging.getLogger("gateway.weasis")

PATIENT_ID, ISSUER, ACCESSION = 0x00100020, 0x00100021, 0x00080050
STUDY_FIELDS = (
    0x00100010, 0x00100020, 0x00100021, 0x00100030, 0x00100032, 0x00100040,
    0x0020000D, 0x00081030, 0x00080020, 0x00080030, 0x00080050, 0x00200010,
    0x00080090, 0x00080061,
)  # fmt: skip
SERIES_FIELDS = (0x0020000D, 0x0020000E, 0x0008103E, 0x00200011, 0x00080060, 0x00080021, 0x00080031)
INSTANCE_FIELDS = (0x0020000D, 0x0020000E, 0x00080018, 0x00080016, 0x00200013)
#: studies of one connector expanded at once (each: a series query and an instance query)
EXPAND_WORKERS = 4
#: the most answers one follow-up query may bring (a series of 50,000 instances is rare)
MAX_ANSWERS = 50_000


@dataclass
class _Found:
    """One connector's answers, by UID: studies, series, and instances (with their series)."""

    studies: dict[str, JsonDataset] = field(default_factory=dict)
    series: dict[str, JsonDataset] = field(default_factory=dict)
    instances: dict[str, JsonDataset] = field(default_factory=dict)
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)


class ManifestBuilder:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._tokens: dict[str, Upstream] = {}
        self._lock = threading.Lock()

    def build(self, request: ManifestRequest, ids: list[str], root: str) -> Manifest:
        """The manifest for `request` over the connectors `ids`, with gateway URLs under
        `root`."""
        workers = max(1, min(8, len(ids)))
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="weasis") as pool:
            arcs = list(pool.map(lambda cid: self._arc_query(request, cid, root), ids))
        kept = [a for a in arcs if a.patients or a.message is not None]
        if not kept and arcs:
            first = arcs[0]
            first.message = Message(
                "INFO", "No images", "No study matches the request in the archives asked."
            )
            kept = [first]
        return Manifest(kept, uid=str(uuid.uuid4()))

    # -- one connector ----------------------------------------------------------------------

    def _arc_query(self, request: ManifestRequest, cid: str, root: str) -> ArcQuery:
        settings = self.settings.connector(cid)
        arc = self._arc(settings, root)
        try:
            self._authorize(arc, settings)
            found = self._find(request, settings, root)
        except ConnectorError as exc:
            log.warning("weasis manifest: connector %s failed: %s", cid, exc.message)
            arc.message = Message(
                "ERROR", "Archive unavailable", f"Archive {cid} did not answer: {exc.message}"
            )
            return arc
        except AllConnectorsFailed as exc:
            reason = "; ".join(e.message for e in exc.errors)
            log.warning("weasis manifest: connector %s failed: %s", cid, reason)
            arc.message = Message(
                "ERROR", "Archive unavailable", f"Archive {cid} did not answer: {reason}"
            )
            return arc
        for study, series, instance in _rows(found):
            try:
                merge_rows(arc, study, series, instance)
            except ValueError:  # an answer without its UID: left out, said below
                found.warnings.append("an answer without its UID was left out")
        _stamp(arc, settings)
        apply_filters(arc, request.filters)
        if found.warnings:  # e.g. a criterion the connector could not match on
            arc.message = Message(
                "WARN", "Partial matching", f"Archive {cid}: " + "; ".join(found.warnings)
            )
        if found.truncated:
            arc.message = Message(
                "WARN",
                "Incomplete",
                f"Archive {cid} holds more than {MAX_ANSWERS} answers "
                "for one query; the manifest lists the first ones.",
            )
        return arc

    def _find(self, request: ManifestRequest, settings: ConnectorSettings, root: str) -> _Found:
        """What the connector holds for `request`, within one `timeouts.request` for all its
        queries: past it, what was found by then, with a warning."""
        ask = _Asker(self.engine, settings.id, root, time.monotonic() + settings.timeouts.request)
        found = _Found()
        try:
            self._search(request, settings, ask, found)
        except _OutOfTime:
            ask.warnings.append(
                f"the archive's answers took longer than {settings.timeouts.request:g} s "
                "(timeouts.request); the manifest lists what had come by then"
            )
        found.truncated = ask.truncated
        found.warnings = ask.warnings
        return found

    def _search(
        self, request: ManifestRequest, settings: ConnectorSettings, ask: _Asker, found: _Found
    ) -> None:
        depth = self._depth(settings)
        deactivated = settings.deactivated
        if request.object_uids and "SOP_INSTANCE_UID" not in deactivated:
            for inst in ask(Level.IMAGE, [_list(SOP_UID, request.object_uids)], INSTANCE_FIELDS):
                found.instances[_uid(inst, SOP_UID)] = inst
                self._complete(ask, found, inst)
        if request.series_uids and "SERIE_INSTANCE_UID" not in deactivated:
            for series in ask(
                Level.SERIES, [_list(SERIES_UID, request.series_uids)], SERIES_FIELDS
            ):
                found.series[_uid(series, SERIES_UID)] = series
                self._complete(ask, found, series)
                if depth == "IMAGE":
                    self._instances(ask, found, series)
        studies: list[JsonDataset] = []
        if "STUDY_ACCESSION_NUMBER" not in deactivated:
            for number in request.accession_numbers:
                studies += ask(Level.STUDY, [Match(ACCESSION, "single", (number,))], STUDY_FIELDS)
        if request.study_uids and "STUDY_INSTANCE_UID" not in deactivated:
            studies += ask(Level.STUDY, [_list(STUDY_UID, request.study_uids)], STUDY_FIELDS)
        if "PATIENT_ID" not in deactivated:
            for pid, issuer in request.patient_ids:
                matches = [Match(PATIENT_ID, "single", (pid,))]
                if issuer:
                    matches.append(Match(ISSUER, "single", (issuer,)))
                # an archive that ignores the issuer key may answer another issuer's patient
                studies += [s for s in ask(Level.STUDY, matches, STUDY_FIELDS)
                            if not issuer or _text(s, ISSUER) in ("", issuer)]  # fmt: skip
        whole: list[str] = []
        for study in studies:  # whole studies, even one an objectUID or seriesUID brought in
            uid = _uid(study, STUDY_UID)
            found.studies.setdefault(uid, study)
            if uid not in whole:
                whole.append(uid)
        if depth in ("SERIES", "IMAGE") and whole:
            with cf.ThreadPoolExecutor(min(EXPAND_WORKERS, len(whole))) as pool:
                done = [pool.submit(self._expand, ask, found, uid, depth) for uid in whole]
            for future in done:
                future.result()  # _OutOfTime or a connector's failure, raised here

    def _depth(self, settings: ConnectorSettings) -> str:
        limit = self.settings.dicom_web_level_limit
        if settings.type != "DICOM_WEB" or limit is None:
            return "IMAGE"
        return "STUDY" if limit == "STUDY" else "SERIES"

    def _complete(self, ask: _Asker, found: _Found, row: JsonDataset) -> None:
        """The study (and series) that an instance or series found by its UID belongs to."""
        study_uid = _uid(row, STUDY_UID)
        if study_uid and study_uid not in found.studies:
            for study in ask(Level.STUDY, [_list(STUDY_UID, (study_uid,))], STUDY_FIELDS):
                found.studies[study_uid] = study
        series_uid = _uid(row, SERIES_UID)
        if series_uid and series_uid not in found.series:
            matches = [_list(STUDY_UID, (study_uid,)), _list(SERIES_UID, (series_uid,))]
            for series in ask(Level.SERIES, matches, SERIES_FIELDS):
                found.series[series_uid] = series

    def _expand(self, ask: _Asker, found: _Found, study_uid: str, depth: str) -> None:
        for series in ask(Level.SERIES, [_list(STUDY_UID, (study_uid,))], SERIES_FIELDS):
            found.series.setdefault(_uid(series, SERIES_UID), series)
        if depth == "IMAGE":
            for inst in ask(Level.IMAGE, [_list(STUDY_UID, (study_uid,))], INSTANCE_FIELDS):
                found.instances.setdefault(_uid(inst, SOP_UID), inst)

    def _instances(self, ask: _Asker, found: _Found, series: JsonDataset) -> None:
        matches = [
            _list(STUDY_UID, (_uid(series, STUDY_UID),)),
            _list(SERIES_UID, (_uid(series, SERIES_UID),)),
        ]
        for inst in ask(Level.IMAGE, matches, INSTANCE_FIELDS):
            found.instances.setdefault(_uid(inst, SOP_UID), inst)

    # -- where Weasis downloads from --------------------------------------------------------

    def _arc(self, settings: ConnectorSettings, root: str) -> ArcQuery:
        options = settings.weasis
        arc = ArcQuery(
            arc_id=settings.id,
            base_url="",
            query_mode=settings.type,
            require_only_sop_instance_uid=options.require_only_sop_instance_uid,
            additional_parameters=options.additionnal_parameters,
            override_dicom_tags=options.override_dicom_tags,
            http_tags=options.http_tags,
        )
        if self._depth(settings) != "IMAGE":
            arc.series_retrieve = True  # Weasis 4.7.2+: one WADO-RS request per series
        if not options.direct:
            kind = "dicomweb" if settings.type == "DICOM_WEB" else "wado"
            arc.base_url = f"{root}/archives/{settings.id}/{kind}"
            return arc
        auth = _wado_block(settings)
        arc.base_url = auth.base_url.rstrip("/")
        if auth.type == "BASIC" and auth.basic is not None:
            pair = f"{auth.basic.login}:{auth.basic.password}".encode()
            arc.web_login = base64.b64encode(pair).decode("ascii")
        return arc

    def _authorize(self, arc: ArcQuery, settings: ConnectorSettings) -> None:
        """Direct mode with OAUTH2: a client-credentials token for Weasis, as an httpTag."""
        if not settings.weasis.direct or _wado_block(settings).type != "OAUTH2":
            return
        token = self._token_source(settings).bearer_token(
            time.monotonic() + settings.timeouts.request
        )
        arc.http_tags = (*arc.http_tags, ("Authorization", f"Bearer {token}"))

    def _token_source(self, settings: ConnectorSettings) -> Upstream:
        with self._lock:
            if settings.id not in self._tokens:
                self._tokens[settings.id] = Upstream(
                    _wado_block(settings), self.settings.oidc_client, settings.id, settings.timeouts
                )
            return self._tokens[settings.id]


class _OutOfTime(Exception):
    """The connector's time for this manifest is over."""


class _Asker:
    """One connector's searches, paged to the end (at most MAX_ANSWERS answers each)."""

    def __init__(self, engine: Engine, cid: str, root: str, deadline: float) -> None:
        self.engine, self.cid, self.root, self.deadline = engine, cid, root, deadline
        self.page = 1000
        self.truncated = False
        self.warnings: list[str] = []

    def __call__(
        self, level: Level, matches: list[Match], fields: tuple[int, ...]
    ) -> list[JsonDataset]:
        out: list[JsonDataset] = []
        offset = 0
        while True:
            if time.monotonic() >= self.deadline:
                raise _OutOfTime
            query = SearchQuery(level, tuple(matches), fields, limit=self.page, offset=offset)
            # the criteria were checked against `deactivated` before asking
            answer = self.engine.search(query, [self.cid], self.root + "/dicomweb", follow_up=True)
            out += answer.datasets
            more = False
            for warning in answer.warnings:
                if warning.startswith("There are additional results"):
                    more = True
                elif warning not in self.warnings:
                    self.warnings.append(warning)
            if not more or not answer.datasets:
                return out
            offset += len(answer.datasets)
            if offset >= MAX_ANSWERS:
                self.truncated = True
                return out


def _rows(
    found: _Found,
) -> Iterator[tuple[JsonDataset, JsonDataset | None, JsonDataset | None]]:
    """(study, series, instance) rows for the tree: every study, every series found under a
    known study, every instance under a known series."""
    for study in found.studies.values():
        yield study, None, None
    for series in found.series.values():
        parent = found.studies.get(_uid(series, STUDY_UID))
        if parent is not None:
            yield parent, series, None
    for inst in found.instances.values():
        holder = found.series.get(_uid(inst, SERIES_UID))
        parent = found.studies.get(_uid(inst, STUDY_UID))
        if holder is not None and parent is not None:
            yield parent, holder, inst


def _stamp(arc: ArcQuery, settings: ConnectorSettings) -> None:
    """The connector's manifest options on every Series; DirectDownloadFile for DICOM_WEB."""
    options = settings.weasis
    for patient in arc.patients.values():
        for study in patient.studies.values():
            for series in study.series.values():
                series.wado_transfer_syntax_uid = options.transfer_syntax_uid
                series.wado_compression_rate = options.compression_rate
                if settings.type != "DICOM_WEB":
                    continue
                for inst in series.instances.values():
                    inst.direct_download_file = (
                        f"/studies/{study.study_instance_uid}/series/"
                        f"{series.series_instance_uid}/instances/{inst.sop_instance_uid}"
                    )


def _wado_block(settings: ConnectorSettings) -> Authentication:
    if settings.dicom_web is not None and settings.dicom_web.wado_rs is not None:
        return settings.dicom_web.wado_rs
    if settings.dicom is not None and settings.dicom.wado is not None:
        return settings.dicom.wado
    if settings.db is not None and settings.db.wado is not None:
        return settings.db.wado
    raise ConnectorError("no wado endpoint for a direct-mode manifest", settings.id)


def _list(tag: int, values: tuple[str, ...]) -> Match:
    return Match(tag, "list" if len(values) > 1 else "single", tuple(values))


def _text(data: JsonDataset, tag: int) -> str:
    element = data.get(f"{tag:08X}") or {}
    values = element.get("Value") or [""]
    return str(values[0]).strip()


def _uid(data: JsonDataset, tag: int) -> str:
    element = data.get(f"{tag:08X}") or {}
    values = element.get("Value") or [""]
    return str(values[0])
