"""The DB connector: searches a PACS database through the configured select (Viewer-Hub's model,
reference/viewer-hub.md 2.2; the SQL is built in `db_sql`, the conditions in `db_match`) and
retrieves instances either from the files its rows point at (`query.file-path-column` under
`query.file-path-root`) or, without a file-path column, from the archive's own WADO endpoint
(`wado.authentication`, asked through WADO-URI or WADO-RS as `wado.protocol` says).

One SQLAlchemy engine per connector (`db_url`), created without connecting; every value is
bound; the errors of SQLAlchemy and the drivers become the gateway's at `sql_errors`, naming
the connector and nothing else (no SQL, no values, no credentials).
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import sqlalchemy as sa
from pydicom.datadict import keyword_for_tag
from pydicom.errors import InvalidDicomError
from sqlalchemy.engine import Connection

from .. import dicomjson
from ..dicomjson import JsonDataset, tag_of
from ..errors import ConnectorError, NotAcceptable, NotFound
from ..query import SERIES_UID, SOP_UID, STUDY_UID, UID_OF_LEVEL, Level, Match, SearchQuery
from ..settings import ConnectorSettings, OidcClient
from ..settings import DbConnector as DbSettings
from . import db_sql
from .base import Capabilities, Part10, ResourceRef, SearchResult, boundary
from .db_url import create_engine, sql_errors, to_sqlalchemy_url
from .http_upstream import Upstream, retrieve_instance

log = logging.getLogger("gateway.db")

INSTANCE_AVAILABILITY = tag_of("InstanceAvailability")
MODALITY, MODALITIES_IN_STUDY = tag_of("Modality"), tag_of("ModalitiesInStudy")
STUDY_SERIES, STUDY_INSTANCES = (
    tag_of("NumberOfStudyRelatedSeries"),
    tag_of("NumberOfStudyRelatedInstances"),
)
SERIES_INSTANCES = tag_of("NumberOfSeriesRelatedInstances")
_DEFER_SIZE = 64 * 1024
_CHUNK = 500


def _no_oidc(oidc_id: str) -> OidcClient:
    raise KeyError(oidc_id)


@dataclass(frozen=True)
class _Stored:
    """An instance to retrieve: its UIDs and its file (None: fetched from the wado endpoint)."""

    study: str
    series: str
    sop: str
    path: Path | None = None

    @property
    def uids(self) -> tuple[str, str, str]:
        return self.study, self.series, self.sop


class DbConnector:
    """A `type: DB` connector: QIDO-RS searches over the configured select, WADO-RS retrieval
    and metadata from the files of `query.file-path-column` or from the `wado` endpoint."""

    def __init__(
        self, settings: ConnectorSettings, oidc: Callable[[str], OidcClient] | None = None
    ) -> None:
        if settings.db is None:
            raise ValueError(f"connector {settings.id} has no db-connector block")
        db, q = settings.db, settings.db.query
        self.id = settings.id
        self.capabilities = Capabilities(relational=True, fuzzy=True, uid_lists=True)
        self._select = q.select.strip().rstrip(";").rstrip()
        configured = {
            tag_of("PatientID"): q.patient_id_column,
            tag_of("AccessionNumber"): q.accession_number_column,
            STUDY_UID: q.study_instance_uid_column,
            SERIES_UID: q.serie_instance_uid_column,
            SOP_UID: q.sop_instance_uid_column,
        }
        self._id_columns = {tag: c.strip() for tag, c in configured.items() if c and c.strip()}
        self._file_label = q.file_path_column
        # a configured file-path column wins; the default `file_path` label only without wado
        self._use_files = q.file_path_column is not None or db.wado is None
        self._root = Path(q.file_path_root).resolve() if q.file_path_root else None
        self._timeouts = settings.timeouts
        self._protocol = db.wado_protocol
        self._wado, self._no_wado = self._upstream(db, oidc)
        url = to_sqlalchemy_url(db.uri, db.driver, db.user, db.password)
        self._engine = create_engine(url, settings.timeouts, self.id)
        self._dialect = self._engine.dialect.name
        self._columns: db_sql.Columns | None = None
        self._lock = threading.Lock()

    def _upstream(
        self, db: DbSettings, oidc: Callable[[str], OidcClient] | None
    ) -> tuple[Upstream | None, str]:
        """The `wado` endpoint's session (no network I/O), or None and the reason why not."""
        if db.wado is None:
            return None, "no file-path column and no wado section"
        if db.wado.type == "OAUTH2" and oidc is None:
            return None, "the wado section uses OAUTH2, but no client registrations were given"
        return Upstream(db.wado, oidc or _no_oidc, self.id, self._timeouts), ""

    # -- search (PS3.18 10.6) --

    def search(self, query: SearchQuery) -> SearchResult:
        """Answers at `query.level` ordered by the level's UID; with an unmatched key, every
        candidate (limit and offset are then the engine's)."""
        with sql_errors(self.id, "database query"):
            columns = self._described()
            key = self._label(columns, UID_OF_LEVEL[query.level])
            filters = db_sql.build_filters(
                query, columns, self._select, self._id_columns, self._dialect
            )
            if filters.empty:
                return SearchResult([])
            paged = not filters.unmatched
            fetch = query.limit + 1 if paged and query.limit is not None else None
            offset = query.offset if paged else 0
            with self._engine.connect() as conn:
                rows = self._rows(conn, query.level, columns, filters, key, fetch, offset)
                complete = fetch is None or len(rows) < fetch
                rows = rows if complete else rows[: len(rows) - 1]
                datasets = self._answers(conn, query.level, columns, rows, key)
        return SearchResult(datasets, filters.unmatched, complete)

    def _rows(
        self,
        conn: Connection,
        level: Level,
        columns: db_sql.Columns,
        filters: db_sql.Filters,
        key: str,
        limit: int | None,
        offset: int,
    ) -> list[Mapping[str, Any]]:
        labels = columns.labels_at(level)
        where = (*filters.where, filters.source.c[key].is_not(None))
        if level is Level.IMAGE:
            stmt = db_sql.rows_statement(filters.source, labels, where, key, limit, offset)
        else:
            stmt = db_sql.grouped_statement(filters.source, key, labels, where, limit, offset)
        return [dict(row._mapping) for row in conn.execute(stmt)]

    def _answers(
        self,
        conn: Connection,
        level: Level,
        columns: db_sql.Columns,
        rows: Sequence[Mapping[str, Any]],
        key: str,
    ) -> list[JsonDataset]:
        uids = [str(row[key]).strip() for row in rows]
        related = self._related(conn, level, columns, uids) if level is not Level.IMAGE else {}
        answers = []
        for uid, row in zip(uids, rows, strict=True):
            values = db_sql.row_values(row, columns)
            values[INSTANCE_AVAILABILITY] = "ONLINE"
            values.update(related.get(uid, {}))
            answers.append(dicomjson.dataset(values))
        return answers

    def _related(
        self, conn: Connection, level: Level, columns: db_sql.Columns, uids: Sequence[str]
    ) -> dict[str, dict[int, Any]]:
        """The related counts (PS3.18 Tables 10.6.3-3 and -4) and ModalitiesInStudy, over every
        instance of the studies or series answered: a second query, for their UIDs only."""
        tag = UID_OF_LEVEL[level]
        key = self._label(columns, tag)
        series = columns.label(SERIES_UID) if level is Level.STUDY else None
        modality = columns.label(MODALITY) if level is Level.STUDY else None
        extras = [label for label in (series, modality) if label]
        counts: Counter[str] = Counter()
        seen: dict[str, set[Any]] = defaultdict(set)
        modalities: dict[str, set[str]] = defaultdict(set)
        for start in range(0, len(uids), _CHUNK):
            stmt = self._related_statement(columns, tag, key, extras, uids[start : start + _CHUNK])
            for row in conn.execute(stmt):
                m = row._mapping
                uid = str(m[key]).strip()
                counts[uid] += int(m["gw_count"])
                if series and m[series] is not None:
                    seen[uid].add(m[series])
                if modality and (value := db_sql.plain_value(m[modality], "CS")):
                    modalities[uid].add(value)
        if level is Level.SERIES:
            return {uid: {SERIES_INSTANCES: n} for uid, n in counts.items()}
        out: dict[str, dict[int, Any]] = {}
        for uid, n in counts.items():
            out[uid] = {STUDY_INSTANCES: n}
            if series:
                out[uid][STUDY_SERIES] = len(seen[uid])
            if modality:
                out[uid][MODALITIES_IN_STUDY] = sorted(modalities[uid])
        return out

    def _related_statement(
        self,
        columns: db_sql.Columns,
        tag: int,
        key: str,
        extras: Sequence[str],
        uids: Sequence[str],
    ) -> sa.Select[Any]:
        column = self._id_columns.get(tag)
        appends: list[tuple[str, Sequence[str]]] = [(column, uids)] if column else []
        src = db_sql.source(self._select, columns, appends, "q")
        where = [] if column else [src.c[key].in_(uids)]
        return db_sql.related_statement(src, key, extras, where)

    def _described(self) -> db_sql.Columns:
        """The select's labels, learnt once, at first use (thread-safe)."""
        with self._lock:
            if self._columns is None:
                with self._engine.connect() as conn:
                    self._columns = db_sql.describe(conn, self._select, self._file_label)
                if self._columns.unmapped:
                    log.warning(
                        "connector %s: select columns naming no DICOM attribute (ignored): %s",
                        self.id,
                        ", ".join(self._columns.unmapped),
                    )
            return self._columns

    def _label(self, columns: db_sql.Columns, tag: int) -> str:
        label = columns.label(tag)
        if label is None:
            raise ConnectorError(
                f"the configured select has no {keyword_for_tag(tag)} column", self.id
            )
        return label

    # -- retrieval (PS3.18 10.4) --

    def retrieve_instances(
        self, ref: ResourceRef, transfer_syntax: str
    ) -> Generator[Part10, None, None]:
        """The instances as stored (`transfer-syntax=*`, PS3.18 8.7). The database is asked
        first, so NotFound comes before the stream. Stored files are all checked before it is
        returned, and another transfer syntax is NotAcceptable (no transcoding yet). Through
        the wado endpoint, instances are fetched one at a time as the stream is read, the
        syntax asked passed on; an answer in another syntax is NotAcceptable."""
        stored = self._stored(ref)
        if stored[0].path is None:
            return self._fetched(stored, transfer_syntax)
        syntaxes = [self._syntax(s) for s in stored]
        if transfer_syntax != "*" and any(ts != transfer_syntax for ts in syntaxes):
            raise NotAcceptable(f"transfer syntax {transfer_syntax} is not the stored one", self.id)
        return self._stream(stored, syntaxes)

    def _stream(self, stored: list[_Stored], syntaxes: list[str]) -> Generator[Part10, None, None]:
        for item, syntax in zip(stored, syntaxes, strict=True):
            with boundary(self.id, "reading a stored file"):
                data = self._file(item).read_bytes()
            yield Part10(data, syntax, item.sop)

    def _fetched(
        self, stored: list[_Stored], transfer_syntax: str
    ) -> Generator[Part10, None, None]:
        for item in stored:
            yield self._fetch(item, transfer_syntax, None)

    def _fetch(self, item: _Stored, transfer_syntax: str, deadline: float | None) -> Part10:
        if self._wado is None:
            raise ConnectorError(self._no_wado, self.id)
        return retrieve_instance(self._wado, self._protocol, item.uids, transfer_syntax, deadline)

    def retrieve_metadata(self, ref: ResourceRef, bulk_base: str) -> list[JsonDataset]:
        """Every instance's attributes read from its file or from the instance fetched through
        the wado endpoint (one at a time, dropped once read; the whole request within
        `timeouts.request`), binary values as BulkDataURIs; Pixel Data is never read."""
        stored = self._stored(ref)
        deadline = time.monotonic() + self._timeouts.request
        out = []
        for item in stored:
            bulk = functools.partial(dicomjson.bulk_uri, bulk_base, *item.uids)
            out.append(dicomjson.from_pydicom(self._dataset(item, deadline), bulk=bulk))
        return out

    def _dataset(self, item: _Stored, deadline: float) -> pydicom.Dataset:
        """The instance read with its large values left unread (`defer_size`)."""
        source: Path | io.BytesIO
        if item.path is None:
            source = io.BytesIO(self._fetch(item, "*", deadline).data)
            what = "an instance from the wado endpoint"
        else:
            source, what = self._file(item), "a stored file"
        with boundary(self.id, f"reading {what}"):
            try:
                return pydicom.dcmread(source, defer_size=_DEFER_SIZE)
            except InvalidDicomError as exc:
                raise ConnectorError(f"{what} is not DICOM", self.id) from exc

    def _stored(self, ref: ResourceRef) -> list[_Stored]:
        """The instances under `ref` and their files; NotFound when there is none."""
        with sql_errors(self.id, "database query"):
            columns = self._described()
            file_label = columns.file_path if self._use_files else None
            if file_label is None and self._wado is None:
                raise ConnectorError(self._no_wado, self.id)
            labels = [self._label(columns, tag) for tag in (STUDY_UID, SERIES_UID, SOP_UID)]
            uids = ((STUDY_UID, ref.study), (SERIES_UID, ref.series), (SOP_UID, ref.instance))
            query = SearchQuery(Level.IMAGE, tuple(Match(t, "single", (u,)) for t, u in uids if u))
            filters = db_sql.build_filters(
                query, columns, self._select, self._id_columns, self._dialect
            )
            wanted = [*labels, file_label] if file_label else labels
            stmt = db_sql.rows_statement(filters.source, wanted, filters.where, labels[2])
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
        if not rows:
            raise NotFound(f"no instance of this {ref.level.lower()} in the archive", self.id)
        if file_label is None:
            return [_Stored(*_uids(row)) for row in rows]
        return [_Stored(*_uids(row), path=self._path(row[3])) for row in rows]

    def _path(self, value: Any) -> Path:
        """A row's file, under file-path-root when one is set; a path that resolves outside
        it (`..`, an absolute path, a symbolic link) is refused."""
        text = "" if value is None else str(value).strip()
        if not text:
            raise ConnectorError("an instance has no stored file path", self.id)
        if self._root is None:
            return Path(text)
        path = (self._root / text).resolve()
        if not path.is_relative_to(self._root):
            raise ConnectorError("a stored file path is outside file-path-root", self.id)
        return path

    def _syntax(self, item: _Stored) -> str:
        with boundary(self.id, "reading a stored file"):
            path = self._file(item)
            try:
                meta = pydicom.filereader.read_file_meta_info(path)
            except InvalidDicomError as exc:
                raise ConnectorError("a stored file is not DICOM Part 10", self.id) from exc
        syntax = meta.get("TransferSyntaxUID")
        if not syntax:
            raise ConnectorError("a stored file has no transfer syntax", self.id)
        return str(syntax)

    def _file(self, item: _Stored) -> Path:
        if item.path is None or not item.path.is_file():
            raise ConnectorError("the stored file of an instance is missing", self.id)
        return item.path

    # -- operations --

    def check(self) -> None:
        """Readiness: the database answers `SELECT 1`."""
        with sql_errors(self.id, "database check"), self._engine.connect() as conn:
            conn.execute(sa.select(sa.literal_column("1")))

    def close(self) -> None:
        self._engine.dispose()
        if self._wado is not None:
            self._wado.close()


def _uids(row: Sequence[Any]) -> tuple[str, str, str]:
    return str(row[0]).strip(), str(row[1]).strip(), str(row[2]).strip()
