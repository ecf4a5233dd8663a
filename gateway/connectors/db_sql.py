"""SQL for the DB connector: the configured select, its labels as DICOM attributes, its rows'
values as attribute values, and the search statements over it (the conditions of each matching
type are `db_match`'s).

Viewer-Hub's query model (reference/viewer-hub.md 2.2): the configured `select` returns one row
per instance and ends in a WHERE clause; its columns are labelled after the attributes
(`patient_name`, `study_date_time`, ...). An identifier criterion whose `*-column` is configured
is appended to the select as ` AND <column> IN (:p0, ...)` with bound values; every other
matching key is evaluated on the select wrapped as a subquery `q`. Only `describe` runs SQL.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydicom.datadict import dictionary_VR, keyword_dict
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select, Subquery

from ..dicomjson import PATIENT_STUDY_KEYS, SERIES_ATTRIBUTES, STUDY_ATTRIBUTES, tag_of
from ..query import Level, Match, SearchQuery
from .db_match import Kind, Source, condition

MODALITY, MODALITIES_IN_STUDY = tag_of("Modality"), tag_of("ModalitiesInStudy")
_KEYWORD_TAGS = {keyword.lower(): tag for keyword, tag in keyword_dict.items()}
#: Viewer-Hub's timestamp labels, each standing for a date and a time attribute.
_STAMPS = {
    "studydatetime": (tag_of("StudyDate"), tag_of("StudyTime")),
    "seriesdatetime": (tag_of("SeriesDate"), tag_of("SeriesTime")),
}
_NOT_MAPPED_VRS = {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW"}
_STUDY_TAGS = frozenset(
    (*PATIENT_STUDY_KEYS, *STUDY_ATTRIBUTES, tag_of("NameOfPhysiciansReadingStudy"))
)
_SERIES_TAGS = frozenset(
    (
        *SERIES_ATTRIBUTES,
        *(
            tag_of(k)
            for k in (
                "SeriesDate",
                "SeriesTime",
                "BodyPartExamined",
                "Laterality",
                "ProtocolName",
                "StationName",
                "Manufacturer",
                "ManufacturerModelName",
                "InstitutionName",
                "PerformingPhysicianName",
                "OperatorsName",
            )
        ),
    )
)
_LEVEL_RANK = {Level.STUDY: 0, Level.SERIES: 1, Level.IMAGE: 2}

_PG_KINDS: dict[int, Kind] = {
    1082: "date",
    1114: "datetime",
    1184: "datetime",
    1083: "time",
    1266: "time",
    20: "number",
    21: "number",
    23: "number",
    26: "number",
    700: "number",
    701: "number",
    1700: "number",
}
_MYSQL_KINDS: dict[int, Kind] = {
    10: "date",
    14: "date",
    7: "datetime",
    12: "datetime",
    11: "time",
    0: "number",
    1: "number",
    2: "number",
    3: "number",
    4: "number",
    5: "number",
    8: "number",
    9: "number",
    13: "number",
    246: "number",
}
_PY_KINDS: dict[type, Kind] = {
    dt.datetime: "datetime",
    dt.date: "date",
    dt.time: "time",
    int: "number",
    float: "number",
    decimal.Decimal: "number",
    str: "text",
}


def normalise(label: str) -> str:
    """`patient_name`, `patientName`, `PATIENTNAME` -> `patientname` (compared with keywords)."""
    return label.lower().replace("_", "")


def level_of(tag: int) -> Level:
    """The query/retrieve level an attribute belongs to (PS3.4 C.6.2.1): patient and study
    attributes at STUDY, series attributes at SERIES, anything else at IMAGE."""
    if tag in _STUDY_TAGS or tag >> 16 == 0x0010:
        return Level.STUDY
    return Level.SERIES if tag in _SERIES_TAGS else Level.IMAGE


def kind_of(dialect: str, type_code: Any) -> Kind:
    """How a result column is stored, from the DB-API cursor description's type code: a
    PostgreSQL type OID, a MySQL field type, a Python type (pyodbc), an oracledb DbType, or
    None (SQLite, whose values carry no declared type here)."""
    if type_code is None:
        return "unknown"
    if dialect == "postgresql" and isinstance(type_code, int):
        return _PG_KINDS.get(type_code, "text")
    if dialect in ("mysql", "mariadb") and isinstance(type_code, int):
        return _MYSQL_KINDS.get(type_code, "text")
    if isinstance(type_code, type):
        return _PY_KINDS.get(type_code, "unknown")
    name = str(getattr(type_code, "name", ""))
    if "TIMESTAMP" in name or name == "DB_TYPE_DATE":
        return "datetime"
    if "NUMBER" in name or "BINARY_" in name:
        return "number"
    return "text" if "CHAR" in name else "unknown"


@dataclass(frozen=True)
class Columns:
    """What the configured select offers: its labels, the source of each DICOM attribute it
    can answer, and the label of the gateway-only file path."""

    labels: tuple[str, ...]
    sources: Mapping[int, Source]
    file_path: str | None = None

    @property
    def unmapped(self) -> list[str]:
        """Labels that name no DICOM attribute (a join key, or a misspelt keyword)."""
        used = {s.label for s in self.sources.values()} | {self.file_path}
        return [label for label in self.labels if label not in used]

    def label(self, tag: int) -> str | None:
        source = self.sources.get(tag)
        return source.label if source is not None else None

    def labels_at(self, level: Level) -> list[str]:
        """The labels an answer at `level` carries (its level and the levels above)."""
        rank = _LEVEL_RANK[level]
        chosen = (s.label for t, s in self.sources.items() if _LEVEL_RANK[level_of(t)] <= rank)
        return list(dict.fromkeys(chosen))


def map_columns(described: Sequence[tuple[str, Kind]], file_path_label: str | None) -> Columns:
    """Maps labels to attributes by keyword (lowercase, no `_`); `study_date_time` and
    `series_date_time` stand for the date and time attributes an explicit label does not give;
    unknown labels are ignored."""
    sources: dict[int, Source] = {}
    stamps: dict[int, Source] = {}
    file_key = normalise(file_path_label or "file_path")
    file_path: str | None = None
    for label, kind in described:
        name = normalise(label)
        if name == file_key:
            file_path = file_path or label
        elif name in _STAMPS:
            stamp_kind: Kind = "datetime" if kind == "unknown" else kind
            for stamped in _STAMPS[name]:
                stamps.setdefault(stamped, Source(label, stamp_kind, stamp=True))
        elif (tag := _KEYWORD_TAGS.get(name)) and dictionary_VR(tag) not in _NOT_MAPPED_VRS:
            sources.setdefault(tag, Source(label, kind))
    for tag, source in stamps.items():
        sources.setdefault(tag, source)
    labels = tuple(dict.fromkeys(label for label, _ in described))
    return Columns(labels, sources, file_path)


def describe(conn: Connection, select: str, file_path_label: str | None) -> Columns:
    """Learns the select's labels and storage kinds with a query that returns no row:
    `SELECT * FROM (<select>) AS q WHERE 1 = 0` (the select ends in WHERE, so it is wrapped)."""
    probe: Select[Any] = (
        sa.select(sa.literal_column("*"))
        .select_from(sa.text(select).columns().subquery("q"))
        .where(sa.text("1 = 0"))
    )
    result = conn.execute(probe)
    try:
        codes = [d[1] for d in (result.cursor.description or ())]
        keys = list(result.keys())
    finally:
        result.close()
    kinds = [kind_of(conn.dialect.name, code) for code in codes]
    return map_columns(list(zip(keys, kinds, strict=True)), file_path_label)


# ---- row values ----------------------------------------------------------------------------

_ISO_DATE, _ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}"), re.compile(r"^\d{2}:\d{2}")


def plain_value(value: Any, vr: str) -> Any:
    """A database value as `dicomjson.attribute` takes it, which writes dates and times as DA,
    TM and DT text (PS3.5 Table 6.2-1): text trimmed (empty is None), ISO date and time text as
    dates and times, a MySQL TIME (a timedelta) as a time; a date alone has no TM."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
        if vr in ("DA", "TM", "DT"):
            value = _iso(value)
    if isinstance(value, dt.timedelta):
        value = (dt.datetime.min + value).time()
    if vr == "TM" and isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return None
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


def row_values(row: Mapping[str, Any], columns: Columns) -> dict[int, Any]:
    """The attributes a result row gives, as `dicomjson.dataset` takes them."""
    return {
        tag: plain_value(row[src.label], dictionary_VR(tag))
        for tag, src in columns.sources.items()
        if src.label in row
    }


def source(
    select: str, columns: Columns, appends: Sequence[tuple[str, Sequence[str]]], name: str
) -> Subquery:
    """The select with ` AND <column> IN (:name_i_j, ...)` appended per identifier criterion,
    as Viewer-Hub does (the column comes from the configuration, the values are bound), wrapped
    as the subquery `name` whose columns are the select's labels."""
    sql = select
    params: list[sa.BindParameter[Any]] = []
    for i, (column, values) in enumerate(appends):
        names = [f"{name}_{i}_{j}" for j in range(len(values))]
        sql += f" AND {column} IN ({', '.join(':' + n for n in names)})"
        bound = zip(names, values, strict=True)
        params.extend(sa.bindparam(n, v, type_=sa.String()) for n, v in bound)
    textual = sa.text(sql).bindparams(*params).columns(*(sa.column(lb) for lb in columns.labels))
    return textual.subquery(name)


@dataclass(frozen=True)
class Filters:
    """A search's source subquery and conditions; `unmatched` are the keys it cannot evaluate,
    `empty` is True when nothing can match (a list key without values)."""

    source: Subquery
    where: tuple[ColumnElement[bool], ...]
    unmatched: frozenset[int] = frozenset()
    empty: bool = False


def build_filters(
    query: SearchQuery,
    columns: Columns,
    select: str,
    id_columns: Mapping[int, str],
    dialect: str,
) -> Filters:
    """Identifier keys with a configured column become appended IN clauses; every other key
    becomes a condition on the subquery, or is reported unmatched when no label answers it."""
    appends: list[tuple[str, Sequence[str]]] = []
    rest: list[Match] = []
    for m in query.matches:
        if m.kind == "universal":  # PS3.4 C.2.2.2.3: matches everything
            continue
        if m.kind == "list" and not m.values:
            return Filters(source(select, columns, (), "q"), (sa.false(),), empty=True)
        if m.tag in id_columns and m.kind in ("single", "list"):
            appends.append((id_columns[m.tag], m.values))
        else:
            rest.append(m)
    src = source(select, columns, appends, "q")
    where: list[ColumnElement[bool]] = []
    unmatched: set[int] = set()
    for m in rest:
        cond = _key_condition(m, src, columns, select, query.fuzzy, dialect)
        if cond is None:
            unmatched.add(m.tag)
        else:
            where.append(cond)
    return Filters(src, tuple(where), frozenset(unmatched))


def _key_condition(
    m: Match, src: Subquery, columns: Columns, select: str, fuzzy: bool, dialect: str
) -> ColumnElement[bool] | None:
    if m.tag == MODALITIES_IN_STUDY:
        return _modalities_in_study(m, src, columns, select, fuzzy, dialect)
    found = columns.sources.get(m.tag)
    if found is None:
        return None
    return condition(found, src.c[found.label], m, fuzzy, dialect)


def _modalities_in_study(
    m: Match, src: Subquery, columns: Columns, select: str, fuzzy: bool, dialect: str
) -> ColumnElement[bool] | None:
    """ModalitiesInStudy, a study key of PS3.4 C.6.2.1 matched per C.2.2.2 against each
    series: the studies with at least one matching Modality (a subquery over the select)."""
    study, modality = columns.sources.get(tag_of("StudyInstanceUID")), columns.sources.get(MODALITY)
    if study is None or modality is None:
        return None
    inner = source(select, columns, (), "m")
    cond = condition(modality, inner.c[modality.label], m, fuzzy, dialect)
    if cond is None:
        return None
    return src.c[study.label].in_(sa.select(inner.c[study.label]).where(cond))


def rows_statement(
    src: Subquery,
    labels: Sequence[str],
    where: Sequence[ColumnElement[bool]],
    order_label: str,
    limit: int | None = None,
    offset: int = 0,
) -> Select[Any]:
    """IMAGE level: one row per instance, ordered by the level's UID."""
    stmt = sa.select(*(src.c[lb] for lb in labels)).where(*where).order_by(src.c[order_label])
    return _page(stmt, limit, offset)


def grouped_statement(
    src: Subquery,
    key_label: str,
    labels: Sequence[str],
    where: Sequence[ColumnElement[bool]],
    limit: int | None = None,
    offset: int = 0,
) -> Select[Any]:
    """STUDY and SERIES levels: one row per UID; the other attributes of the level and the
    levels above are the same on every row of the group, so MIN() picks them portably."""
    key = src.c[key_label]
    others = [sa.func.min(src.c[lb]).label(lb) for lb in labels if lb != key_label]
    stmt = sa.select(key, *others).where(*where).group_by(key).order_by(key)
    return _page(stmt, limit, offset)


def related_statement(
    src: Subquery, key_label: str, extra_labels: Sequence[str], where: Sequence[ColumnElement[bool]]
) -> Select[Any]:
    """Instance counts per key (and per series / modality) for the related-count attributes."""
    group = [src.c[key_label], *(src.c[lb] for lb in extra_labels)]
    return sa.select(*group, sa.func.count().label("gw_count")).where(*where).group_by(*group)


def _page(stmt: Select[Any], limit: int | None, offset: int) -> Select[Any]:
    if limit is not None:
        stmt = stmt.limit(limit)
    return stmt.offset(offset) if offset else stmt
