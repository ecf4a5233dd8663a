"""The DB connector: searches a PACS database through the configured select (Viewer-Hub's model,
reference/viewer-hub.md 2.2; the SQL is built in `db_sql`) and retrieves the files its rows
point at (`query.file-path-column` under `query.file-path-root`).

One SQLAlchemy engine per connector, created without connecting; every value is bound; the
errors of SQLAlchemy and the drivers become the gateway's at `_sql_errors`, naming the
connector and nothing else (no SQL, no values, no credentials).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pydicom
import sqlalchemy as sa
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.errors import InvalidDicomError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from .. import dicomjson
from ..dicomjson import JsonDataset, tag_of
from ..errors import ConnectorError, ConnectorTimeout, NotAcceptable, NotFound
from ..query import SERIES_UID, SOP_UID, STUDY_UID, UID_OF_LEVEL, Level, Match, SearchQuery
from ..settings import ConnectorSettings, Timeouts
from . import db_sql
from .base import Capabilities, Part10, ResourceRef, SearchResult, boundary

#: The DB-API driver of each database when a URL names none.
_DEFAULT_DRIVERS = {
    "postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql", "mssql": "pyodbc",
    "oracle": "oracledb", "sqlite": "pysqlite",
}
#: The JDBC driver classes Viewer-Hub configurations name, and their database.
_JDBC_CLASSES = {
    "org.postgresql.Driver": "postgresql",
    "com.mysql.cj.jdbc.Driver": "mysql",
    "com.mysql.jdbc.Driver": "mysql",
    "org.mariadb.jdbc.Driver": "mariadb",
    "com.microsoft.sqlserver.jdbc.SQLServerDriver": "mssql",
    "oracle.jdbc.OracleDriver": "oracle",
    "oracle.jdbc.driver.OracleDriver": "oracle",
    "org.sqlite.JDBC": "sqlite",
}
_ODBC_DRIVER = "ODBC Driver 18 for SQL Server"
_PG_PARAMS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "options", "target_session_attrs"}


def to_sqlalchemy_url(
    uri: str, driver: str | None = None, user: str | None = None, password: str | None = None
) -> URL:
    """The SQLAlchemy URL of a `db-connector`. `uri` is a SQLAlchemy URL or a JDBC URL;
    `driver` is a SQLAlchemy driver name (it replaces the URL's) or a JDBC class name (it must
    be for the URL's database); `user` and `password` replace the URL's. ValueError otherwise."""
    text = uri.strip()
    url = _from_jdbc(text) if text[:5].lower() == "jdbc:" else _from_sqlalchemy(text)
    url = _with_driver(url, driver)
    if url.get_backend_name() != "sqlite":
        if user:
            url = url.set(username=user)
        if password:
            url = url.set(password=password)
    return url


def _family(backend: str) -> str:
    return "mysql" if backend == "mariadb" else backend


def _from_sqlalchemy(uri: str) -> URL:
    try:
        url = make_url(uri)
    except sa_exc.ArgumentError:
        raise ValueError("database uri is neither a SQLAlchemy URL nor a JDBC URL") from None
    backend = url.get_backend_name()
    if backend not in _DEFAULT_DRIVERS:
        raise ValueError(f"unknown database URL scheme {url.drivername!r}")
    if "+" not in url.drivername:
        url = url.set(drivername=f"{backend}+{_DEFAULT_DRIVERS[backend]}")
    return url


def _from_jdbc(uri: str) -> URL:
    sub, _, body = uri[5:].partition(":")
    sub = sub.lower()
    if sub in ("postgresql", "mysql", "mariadb"):
        return _jdbc_network(sub, body)
    if sub == "sqlserver":
        return _jdbc_sqlserver(body)
    if sub == "oracle":
        return _jdbc_oracle(body)
    if sub == "sqlite":
        return URL.create("sqlite+pysqlite", database=None if body in ("", ":memory:") else body)
    raise ValueError(f"unknown JDBC URL scheme 'jdbc:{sub}'")


def _jdbc_network(sub: str, body: str) -> URL:
    """`jdbc:postgresql://host:port/db?params` (or `jdbc:postgresql:db`), `jdbc:mysql://...`,
    `jdbc:mariadb://...`; user and password may be parameters."""
    if not body.startswith("//"):
        if sub != "postgresql":
            raise ValueError(f"jdbc:{sub} URL must be jdbc:{sub}://host[:port]/database")
        body = "//localhost/" + body.lstrip("/")
    parts = urlsplit(body)
    if "," in parts.netloc:
        raise ValueError("JDBC URLs naming several hosts are not supported")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the JDBC URL has an invalid port") from None
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    user = unquote(parts.username) if parts.username else params.pop("user", None)
    password = unquote(parts.password) if parts.password else params.pop("password", None)
    query = _pg_params(params) if sub == "postgresql" else _mysql_params(params)
    return URL.create(
        f"{sub}+{_DEFAULT_DRIVERS[sub]}", username=user, password=password,
        host=parts.hostname, port=port, database=unquote(parts.path.lstrip("/")) or None,
        query=query,
    )


def _pg_params(params: Mapping[str, str]) -> dict[str, str]:
    """pgJDBC parameters as libpq ones; those without an equivalent are dropped."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = key.lower()
        if name in _PG_PARAMS:
            out[name] = value
        elif name == "applicationname":
            out["application_name"] = value
        elif name == "currentschema":
            out["options"] = f"-csearch_path={value}"
        elif name == "ssl":  # pgJDBC: ssl=true verifies the server certificate and host
            out.setdefault("sslmode", "verify-full" if value.lower() == "true" else "disable")
    return out


def _mysql_params(params: Mapping[str, str]) -> dict[str, str]:
    """Connector/J parameters for PyMySQL: utf8mb4 always; `sslMode=REQUIRED` or `useSSL=true`
    turn TLS on. Verifying modes need a CA file, which a JDBC URL does not carry."""
    out = {"charset": "utf8mb4"}
    for key, value in params.items():
        name, upper = key.lower(), value.upper()
        if name == "sslmode" and upper.startswith("VERIFY"):
            raise ValueError("sslMode=VERIFY_* needs a SQLAlchemy URL with ssl_ca")
        if (name == "sslmode" and upper in ("REQUIRED", "PREFERRED")) or (
            name == "usessl" and upper == "TRUE"
        ):
            out["ssl_check_hostname"] = "false"
    return out


def _jdbc_sqlserver(body: str) -> URL:
    """`jdbc:sqlserver://[host][\\instance][:port][;property=value]...` for pyodbc."""
    if not body.startswith("//"):
        raise ValueError("jdbc:sqlserver URL must be jdbc:sqlserver://host[:port];...")
    head, *props = body[2:].split(";")
    options: dict[str, str] = {}
    for prop in filter(None, (p.strip() for p in props)):
        key, _, value = prop.partition("=")
        options[key.strip().lower()] = value.strip().strip("{}")
    host, port = _host_port(head or options.get("servername", ""))
    port = port or (int(options["portnumber"]) if options.get("portnumber") else None)
    host, _, instance = host.partition("\\")
    instance = instance or options.get("instancename", "")
    server = f"{host}\\{instance}" if instance else host
    query = {"driver": _ODBC_DRIVER}
    if "encrypt" in options:
        query["Encrypt"] = {"true": "yes", "false": "no"}.get(options["encrypt"].lower(), "strict")
    for jdbc_name, odbc_name in (("trustservercertificate", "TrustServerCertificate"),
                                 ("integratedsecurity", "Trusted_Connection")):
        if options.get(jdbc_name, "").lower() == "true":
            query[odbc_name] = "yes"
    return URL.create(
        "mssql+pyodbc", username=options.get("user") or options.get("username"),
        password=options.get("password"), host=server or None,
        port=port, database=options.get("databasename") or options.get("database"), query=query,
    )


def _jdbc_oracle(body: str) -> URL:
    """`jdbc:oracle:thin:@host:port:SID`, `jdbc:oracle:thin:@//host:port/service`, or a TNS
    alias or descriptor after `@`; `user/password@` may come before it."""
    flavour, _, rest = body.partition(":")
    creds, at, target = rest.rpartition("@")
    if flavour.lower() not in ("thin", "oci") or not at or not target:
        raise ValueError("jdbc:oracle URL must be jdbc:oracle:thin:@...")
    user, _, password = creds.partition("/")
    common: dict[str, Any] = {"username": user or None, "password": password or None}
    target = target.split("?", 1)[0]
    if target.startswith("(") or ":" not in target and "/" not in target:
        return URL.create("oracle+oracledb", host=target, **common)  # the DSN as it is
    if target.startswith("//") or "/" in target:
        address, _, service = target.removeprefix("//").partition("/")
        host, port = _host_port(address)
        return URL.create("oracle+oracledb", host=host, port=port,
                          query={"service_name": service}, **common)
    pieces = target.split(":")
    if len(pieces) != 3 or not pieces[1].isdigit():
        raise ValueError("jdbc:oracle URL needs @host:port:SID or @//host:port/service")
    return URL.create("oracle+oracledb", host=pieces[0], port=int(pieces[1]),
                      database=pieces[2], **common)


def _host_port(text: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if not sep or (":" in host and not host.endswith("]")):
        return text.strip("[]"), None
    if not port.isdigit():
        raise ValueError("the JDBC URL has an invalid port")
    return host.strip("[]"), int(port)


def _with_driver(url: URL, driver: str | None) -> URL:
    """A JDBC class name confirms the URL's database; a SQLAlchemy driver name replaces the
    URL's DB-API driver (`psycopg`, `pymysql`, or `postgresql+psycopg`)."""
    name = (driver or "").strip()
    if not name:
        return url
    backend = url.get_backend_name()
    if "." in name:
        expected = _JDBC_CLASSES.get(name)
        if expected is None:
            raise ValueError(f"unknown JDBC driver class {name!r}")
        if _family(expected) != _family(backend):
            raise ValueError(f"driver {name} is for {expected}, but the uri is a {backend} URL")
        return url
    named_backend, plus, dbapi = name.rpartition("+")
    if plus and _family(named_backend) != _family(backend):
        raise ValueError(f"driver {name!r} is for {named_backend}, but the uri is a {backend} URL")
    if not re.fullmatch(r"\w+", dbapi):
        raise ValueError(f"invalid database driver name {name!r}")
    return url.set(drivername=f"{backend}+{dbapi}")


def _connect_args(url: URL, timeouts: Timeouts) -> dict[str, Any]:
    """Connect time-outs (and read time-outs where the driver has them) in each driver's terms."""
    dbapi = url.get_driver_name()
    seconds = max(1, math.ceil(timeouts.connect))
    if dbapi in ("psycopg", "psycopg2"):
        args: dict[str, Any] = {"connect_timeout": max(2, seconds)}
        if "options" not in url.query:  # the server cancels a statement running too long
            args["options"] = f"-c statement_timeout={int(timeouts.read * 1000)}"
        return args
    if dbapi in ("pymysql", "mysqldb"):
        read = max(1, math.ceil(timeouts.read))
        return {"connect_timeout": seconds, "read_timeout": read, "write_timeout": read}
    others: dict[str, dict[str, Any]] = {
        "pysqlite": {"timeout": timeouts.connect},
        "pyodbc": {"timeout": seconds},
        "oracledb": {"tcp_connect_timeout": timeouts.connect},
    }
    return others.get(dbapi, {})


def create_engine(url: URL, timeouts: Timeouts, connector: str) -> Engine:
    """The connector's one engine: pooled, pinged before use, parameters hidden from errors
    and logs. Nothing connects until the first query."""
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "hide_parameters": True,
        "connect_args": _connect_args(url, timeouts),
    }
    if url.get_backend_name() != "sqlite":
        options["pool_timeout"] = timeouts.connect
    try:
        return sa.create_engine(url, **options)
    except (ImportError, sa_exc.NoSuchModuleError) as exc:
        raise ConnectorError(
            f"database driver {url.get_driver_name()!r} is not installed", connector
        ) from exc


@contextlib.contextmanager
def _sql_errors(connector: str, what: str) -> Iterator[None]:
    """SQLAlchemy's and the drivers' errors as the gateway's, by class name only."""
    with boundary(connector, what):
        try:
            yield
        except sa_exc.TimeoutError as exc:  # no pooled connection in time
            raise ConnectorTimeout(f"{what} timed out waiting for a connection", connector) from exc
        except sa_exc.DBAPIError as exc:
            if _is_timeout(exc.orig):
                raise ConnectorTimeout(f"{what} timed out", connector) from exc
            raise ConnectorError(f"{what} failed: {type(exc).__name__}", connector) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise ConnectorError(f"{what} failed: {type(exc).__name__}", connector) from exc


def _is_timeout(error: BaseException | None) -> bool:
    name = type(error).__name__
    return (
        isinstance(error, TimeoutError)
        or "Timeout" in name
        or name == "QueryCanceled"
        or "timed out" in str(error).lower()
    )


# ---- values ---------------------------------------------------------------------------------

_ISO_DATE, _ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}"), re.compile(r"^\d{2}:\d{2}")


def plain_value(value: Any, vr: str) -> Any:
    """A database value as `dicomjson.attribute` takes it (PS3.5 Table 6.2-1): DA, TM and DT
    text from dates, times, timestamps (split for `study_date_time`) and ISO text; numbers as
    numbers; strings trimmed."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
        if vr in ("DA", "TM", "DT"):
            value = _iso(value)
    if isinstance(value, dt.timedelta):  # MySQL TIME
        value = (dt.datetime.min + value).time()
    if vr == "DA" and isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if vr == "TM" and isinstance(value, (dt.datetime, dt.time)):
        return _clock(value)
    if vr == "DT" and isinstance(value, dt.datetime):
        zone = value.strftime("%z") if value.tzinfo else ""
        return value.strftime("%Y%m%d") + _clock(value) + zone
    if vr == "DT" and isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    return value


def _iso(text: str) -> Any:
    try:
        if _ISO_DATE.match(text) and len(text) > 10:
            return dt.datetime.fromisoformat(text)
        if _ISO_DATE.match(text):
            return dt.date.fromisoformat(text)
        if _ISO_TIME.match(text):
            return dt.time.fromisoformat(text)
    except ValueError:
        pass
    return text


def _clock(value: dt.time | dt.datetime) -> str:
    text = value.strftime("%H%M%S")
    return f"{text}.{value.microsecond:06d}" if value.microsecond else text


def _values(row: Mapping[str, Any], columns: db_sql.Columns) -> dict[int, Any]:
    return {
        tag: plain_value(row[src.label], dictionary_VR(tag))
        for tag, src in columns.sources.items()
        if src.label in row
    }


# ---- the connector --------------------------------------------------------------------------

INSTANCE_AVAILABILITY = tag_of("InstanceAvailability")
MODALITY, MODALITIES_IN_STUDY = tag_of("Modality"), tag_of("ModalitiesInStudy")
STUDY_SERIES, STUDY_INSTANCES = tag_of("NumberOfStudyRelatedSeries"), tag_of(
    "NumberOfStudyRelatedInstances"
)
SERIES_INSTANCES = tag_of("NumberOfSeriesRelatedInstances")
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_DEFER_SIZE = 64 * 1024
_CHUNK = 500


@dataclass(frozen=True)
class _Stored:
    """An instance to retrieve: its UIDs and its file."""

    study: str
    series: str
    sop: str
    path: Path


class DbConnector:
    """A `type: DB` connector: QIDO-RS searches over the configured select, WADO-RS retrieval
    and metadata from the files of `query.file-path-column`."""

    def __init__(self, settings: ConnectorSettings) -> None:
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
        self._root = Path(q.file_path_root).resolve() if q.file_path_root else None
        self._has_wado = db.wado is not None
        url = to_sqlalchemy_url(db.uri, db.driver, db.user, db.password)
        self._engine = create_engine(url, settings.timeouts, self.id)
        self._dialect = self._engine.dialect.name
        self._columns: db_sql.Columns | None = None
        self._lock = threading.Lock()

    # -- search (PS3.18 10.6) --

    def search(self, query: SearchQuery) -> SearchResult:
        """Answers at `query.level` ordered by the level's UID; with an unmatched key, every
        candidate (limit and offset are then the engine's)."""
        with _sql_errors(self.id, "database query"):
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
            values = _values(row, columns)
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
                if modality and (value := plain_value(m[modality], "CS")):
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
            return self._columns

    def _label(self, columns: db_sql.Columns, tag: int) -> str:
        label = columns.label(tag)
        if label is None:
            raise ConnectorError(
                f"the configured select has no {keyword_for_tag(tag)} column", self.id
            )
        return label

    # -- retrieval (PS3.18 10.4) --

    def retrieve_instances(self, ref: ResourceRef, transfer_syntax: str) -> Iterator[Part10]:
        """The stored files as they are (`transfer-syntax=*`, PS3.18 8.7); another transfer
        syntax is NotAcceptable (no transcoding yet). Every file is found and checked before
        the stream is returned, so failures come before the first part."""
        stored = self._stored(ref)
        syntaxes = [self._syntax(s) for s in stored]
        if transfer_syntax != "*" and any(ts != transfer_syntax for ts in syntaxes):
            raise NotAcceptable(
                f"transfer syntax {transfer_syntax} is not the stored one", self.id
            )
        return self._stream(stored, syntaxes)

    def _stream(self, stored: list[_Stored], syntaxes: list[str]) -> Iterator[Part10]:
        for item, syntax in zip(stored, syntaxes, strict=True):
            with boundary(self.id, "reading a stored file"):
                data = item.path.read_bytes()
            yield Part10(data, syntax, item.sop)

    def retrieve_metadata(self, ref: ResourceRef, bulk_base: str) -> list[JsonDataset]:
        """Every instance's attributes read from its file, binary values as BulkDataURIs."""
        out = []
        for item in self._stored(ref):
            ds = self._read(item)
            uids = (item.study, item.series, item.sop)
            bulk = functools.partial(dicomjson.bulk_uri, bulk_base, *uids)
            out.append(dicomjson.from_pydicom(ds, bulk=bulk))
        return out

    def _stored(self, ref: ResourceRef) -> list[_Stored]:
        """The instances under `ref` and their files; NotFound when there is none."""
        with _sql_errors(self.id, "database query"):
            columns = self._described()
            if columns.file_path is None:
                reason = "retrieval through the wado endpoint is not implemented yet"
                raise ConnectorError(reason if self._has_wado else "no file-path column", self.id)
            labels = [self._label(columns, tag) for tag in (STUDY_UID, SERIES_UID, SOP_UID)]
            uids = ((STUDY_UID, ref.study), (SERIES_UID, ref.series), (SOP_UID, ref.instance))
            query = SearchQuery(Level.IMAGE, tuple(Match(t, "single", (u,)) for t, u in uids if u))
            filters = db_sql.build_filters(
                query, columns, self._select, self._id_columns, self._dialect
            )
            stmt = db_sql.rows_statement(
                filters.source, [*labels, columns.file_path], filters.where, labels[2]
            )
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
        if not rows:
            raise NotFound(f"no instance of this {ref.level.lower()} in the archive", self.id)
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
            self._exists(item)
            try:
                meta = pydicom.filereader.read_file_meta_info(item.path)
            except InvalidDicomError as exc:
                raise ConnectorError("a stored file is not DICOM Part 10", self.id) from exc
        syntax = meta.get("TransferSyntaxUID")
        if not syntax:
            raise ConnectorError("a stored file has no transfer syntax", self.id)
        return str(syntax)

    def _read(self, item: _Stored) -> pydicom.Dataset:
        with boundary(self.id, "reading a stored file"):
            self._exists(item)
            try:
                ds = pydicom.dcmread(item.path, defer_size=_DEFER_SIZE)
            except InvalidDicomError as exc:
                raise ConnectorError("a stored file is not DICOM", self.id) from exc
        _placeholders_for_bulk(ds)
        return ds

    def _exists(self, item: _Stored) -> None:
        if not item.path.is_file():
            raise ConnectorError("the stored file of an instance is missing", self.id)

    # -- operations --

    def check(self) -> None:
        """Readiness: the database answers `SELECT 1`."""
        with _sql_errors(self.id, "database check"), self._engine.connect() as conn:
            conn.execute(sa.select(sa.literal_column("1")))

    def close(self) -> None:
        self._engine.dispose()


def _uids(row: Sequence[Any]) -> tuple[str, str, str]:
    return str(row[0]).strip(), str(row[1]).strip(), str(row[2]).strip()


def _placeholders_for_bulk(ds: pydicom.Dataset) -> None:
    """Binary values left unread by `defer_size` get a 2-byte placeholder: `from_pydicom` only
    needs to know they are not empty to write their BulkDataURI, so Pixel Data is never read."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.value is not None or not raw.length:
            continue
        vr = raw.VR or dictionary_VR(tag)
        if vr in _BULK_VRS or tag == 0x7FE00010:
            ds[tag] = DataElement(tag, vr if vr in _BULK_VRS else "OW", b"\x00\x00")
