"""SQL for the DB connector: the configured select, its labels as DICOM attributes, and one
condition per matching type of PS3.4 C.2.2.2.

Viewer-Hub's query model (reference/viewer-hub.md 2.2): the configured `select` returns one row
per instance and ends in a WHERE clause; its columns are labelled after the attributes
(`patient_name`, `study_date_time`, ...). An identifier criterion whose `*-column` is configured
is appended to the select as ` AND <column> IN (:p0, ...)` with bound values; every other
matching key is evaluated on the select wrapped as a subquery `q`. Only `describe` runs SQL.
"""

from __future__ import annotations

import calendar
import datetime as dt
import decimal
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from pydicom.datadict import dictionary_VR, keyword_dict
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select, Subquery

from ..dicomjson import PATIENT_STUDY_KEYS, SERIES_ATTRIBUTES, STUDY_ATTRIBUTES, tag_of
from ..errors import BadRequest
from ..query import Level, Match, SearchQuery

Kind = Literal["date", "datetime", "time", "number", "text", "unknown"]

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
    (*SERIES_ATTRIBUTES, *(tag_of(k) for k in (
        "SeriesDate", "SeriesTime", "BodyPartExamined", "Laterality", "ProtocolName",
        "StationName", "Manufacturer", "ManufacturerModelName", "InstitutionName",
        "PerformingPhysicianName", "OperatorsName",
    )))
)
_LEVEL_RANK = {Level.STUDY: 0, Level.SERIES: 1, Level.IMAGE: 2}

_PG_KINDS: dict[int, Kind] = {
    1082: "date", 1114: "datetime", 1184: "datetime", 1083: "time", 1266: "time",
    20: "number", 21: "number", 23: "number", 26: "number", 700: "number", 701: "number",
    1700: "number",
}
_MYSQL_KINDS: dict[int, Kind] = {
    10: "date", 14: "date", 7: "datetime", 12: "datetime", 11: "time",
    0: "number", 1: "number", 2: "number", 3: "number", 4: "number", 5: "number", 8: "number",
    9: "number", 13: "number", 246: "number",
}
_PY_KINDS: dict[type, Kind] = {
    dt.datetime: "datetime", dt.date: "date", dt.time: "time", int: "number", float: "number",
    decimal.Decimal: "number", str: "text",
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
class Source:
    """Where an attribute's value is: a label of the select, how it is stored, and whether it
    is a timestamp standing for a DA or TM attribute (`study_date_time`)."""

    label: str
    kind: Kind
    stamp: bool = False


# ---- matching: one function per matching type of PS3.4 C.2.2.2 -----------------------------

ESCAPE = "\\"
NUMBER_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
_CASE_FREE_VRS = frozenset({"UI", "DA", "TM", "DT", *NUMBER_VRS})
_DT_LOW, _DT_HIGH = "00000101000000.000000", "99991231235959.999999"
_TM_LOW, _TM_HIGH = "000000.000000", "235959.999999"
Bounds = tuple[ColumnElement[Any], Any, Any, "sa.types.TypeEngine[Any] | None"]


def condition(
    src: Source, expr: ColumnElement[Any], m: Match, fuzzy: bool, dialect: str
) -> ColumnElement[bool] | None:
    """The condition for one matching key on `expr`, or None when it cannot be evaluated on
    this column (the connector then reports the key as unmatched)."""
    vr = m.vr
    if vr in ("DA", "TM", "DT") and m.kind in ("single", "range"):
        low, high = m.values if m.kind == "range" else (m.values[0], m.values[0])
        try:
            return range_match(src, expr, vr, low, high)
        except ValueError:
            raise BadRequest(f"{m.keyword}: not a valid {vr}", parameter=m.keyword) from None
    if src.stamp:
        return None
    fold = fuzzy and vr == "PN"
    exact = vr not in _CASE_FREE_VRS
    if m.kind == "wildcard":
        if src.kind == "number":
            return None  # LIKE does not apply to numbers
        return wildcard_match(expr, m.values[0], fold, dialect)
    values = [_bind_value(src.kind, vr, v) for v in m.values]
    if m.kind == "single":
        return single_value_match(expr, values[0], fold, exact, dialect)
    if m.kind == "list":
        return list_match(expr, values, fold, exact, dialect)
    return None


def single_value_match(
    expr: ColumnElement[Any], value: Any, fold: bool, exact: bool, dialect: str
) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.1: single value matching, case-sensitive except that PN may ignore case
    (fuzzymatching=true compares lower() of both sides)."""
    if value is None:  # not a number, against a number column
        return sa.false()
    if fold:
        return sa.func.lower(expr) == sa.func.lower(sa.literal(value))
    if not exact:
        return expr == sa.literal(value)
    return _case_sensitive(expr, dialect, lambda e: e == sa.literal(value))


def list_match(
    expr: ColumnElement[Any], values: Sequence[Any], fold: bool, exact: bool, dialect: str
) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.2 (List of UID matching), and lists of single values for other VRs
    (C.2.2.2.1): any of the values matches."""
    kept = [v for v in values if v is not None]
    if not kept:
        return sa.false()
    if fold:
        return sa.func.lower(expr).in_([sa.func.lower(sa.literal(v)) for v in kept])
    if not exact:
        return expr.in_(kept)
    return _case_sensitive(expr, dialect, lambda e: e.in_(kept))


def wildcard_match(
    expr: ColumnElement[Any], value: str, fold: bool, dialect: str
) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.4: `*` matches any sequence of characters, `?` any single one; a value of
    only `*` is universal matching. LIKE with `%`, `_` and the escape character of the value
    escaped; SQLite's LIKE ignores case, so a case-sensitive match there uses GLOB."""
    if set(value) == {"*"}:
        return sa.true()
    pattern = like_pattern(value)
    if fold:
        return sa.func.lower(expr).like(sa.func.lower(sa.literal(pattern)), escape=ESCAPE)
    if dialect == "sqlite":
        return expr.op("GLOB")(glob_pattern(value))
    return _case_sensitive(expr, dialect, lambda e: e.like(pattern, escape=ESCAPE))


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern (with ESCAPE), its own `%` `_` `\\` escaped."""
    special = {"*": "%", "?": "_", "%": ESCAPE + "%", "_": ESCAPE + "_", ESCAPE: ESCAPE * 2}
    return "".join(special.get(char, char) for char in value)


def glob_pattern(value: str) -> str:
    """A DICOM wildcard value as an SQLite GLOB pattern: `*` and `?` are the same, `[` is
    escaped as `[[]` (a value cannot hold a literal `*` or `?`: they are wildcards)."""
    return value.replace("[", "[[]")


def _case_sensitive(
    expr: ColumnElement[Any],
    dialect: str,
    compare: Callable[[ColumnElement[Any]], ColumnElement[bool]],
) -> ColumnElement[bool]:
    """MySQL/MariaDB and SQL Server compare text with case-insensitive collations by default:
    the comparison is repeated on a case-sensitive collation (the plain one can use an index)."""
    if dialect in ("mysql", "mariadb"):
        exact = sa.collate(sa.cast(expr, mysql.CHAR(charset="utf8mb4")), "utf8mb4_bin")
    elif dialect == "mssql":
        exact = sa.collate(expr, "Latin1_General_CS_AS")
    else:
        return compare(expr)
    return sa.and_(compare(expr), compare(exact))


def range_match(
    src: Source, expr: ColumnElement[Any], vr: str, low: str, high: str
) -> ColumnElement[bool] | None:
    """PS3.4 C.2.2.2.5: range matching on DA, TM and DT, both ends included, an empty end
    open. A single value is the range from itself to itself, so a partial time ("1030") or
    date-time covers its whole span, and a date matches a whole day of a timestamp."""
    choose = {"DA": _date_bounds, "TM": _time_bounds, "DT": _datetime_bounds}[vr]
    bounds = choose(src, expr, low or None, high or None)
    if bounds is None:
        return None
    target, lo, hi, type_ = bounds
    conds = []
    if isinstance(type_, sa.String):
        # an empty value is not in any range (PS3.18 8.3.4.x: only emptyvaluematching=true
        # would add it), and '' sorts before every date
        conds.append(target != sa.literal("", type_))
    if lo is not None:
        conds.append(target >= sa.literal(lo, type_))
    if hi is not None:
        conds.append(target <= sa.literal(hi, type_))
    return sa.and_(*conds)


def _date_bounds(
    src: Source, expr: ColumnElement[Any], lo: str | None, hi: str | None
) -> Bounds | None:
    """DA ends as dates, whole days of a timestamp, YYYYMMDD integers, or YYYYMMDD text (ISO
    text, as SQLite stores dates and timestamps, is compared without its dashes)."""
    if src.kind == "date":
        return expr, _maybe(_date, lo), _maybe(_date, hi), sa.Date()
    if src.kind == "datetime":
        start = _maybe(lambda d: dt.datetime.combine(_date(d), dt.time.min), lo)
        end = _maybe(lambda d: dt.datetime.combine(_date(d), dt.time.max), hi)
        return expr, start, end, sa.DateTime()
    if src.kind == "number":
        return expr, _maybe(int, lo), _maybe(int, hi), sa.Integer()
    if src.kind == "text" and not src.stamp:
        return expr, lo, hi, sa.String()
    if src.kind in ("text", "unknown"):
        return sa.func.substr(_without(expr, "-"), 1, 8), lo, hi, sa.String()
    return None


def _time_bounds(
    src: Source, expr: ColumnElement[Any], lo: str | None, hi: str | None
) -> Bounds | None:
    """TM ends as times, or as HHMMSS text (`:` removed where the storage is not known)."""
    if src.stamp or src.kind not in ("time", "text", "unknown"):
        return None  # a time of day cannot be matched on a timestamp alone
    if src.kind == "time":
        low, high = _maybe(_time, lo, _TM_LOW), _maybe(_time, hi, _TM_HIGH)
        return expr, low, high, sa.Time()
    target = expr if src.kind == "text" else _without(expr, ":")
    return target, lo, _maybe(_padded, hi, _TM_HIGH), sa.String()


def _datetime_bounds(
    src: Source, expr: ColumnElement[Any], lo: str | None, hi: str | None
) -> Bounds | None:
    """DT ends (their UTC offset dropped) as timestamps or as YYYYMMDDHHMMSS text (ISO text
    where the storage is not known, as SQLite stores timestamps)."""
    lo, hi = _maybe(_no_offset, lo), _maybe(_no_offset, hi)
    if src.stamp:
        return None
    if src.kind == "datetime":
        low, high = _maybe(_datetime, lo, _DT_LOW), _maybe(_datetime, hi, _DT_HIGH)
        return expr, low, high, sa.DateTime()
    if src.kind in ("text", "unknown"):
        target = expr if src.kind == "text" else _without(expr, "-", " ", "T", ":")
        return target, lo, _maybe(_padded, hi, _DT_HIGH), sa.String()
    return None


def _without(expr: ColumnElement[Any], *chars: str) -> ColumnElement[Any]:
    """`expr` with `chars` removed: ISO text ("2004-01-19 07:27:30") as DICOM text."""
    for char in chars:
        expr = sa.func.replace(expr, char, "")
    return expr


def _maybe(convert: Callable[..., Any], value: str | None, *args: Any) -> Any:
    return None if value is None else convert(value, *args)


def _padded(text: str, template: str) -> str:
    """A partial TM or DT completed from `template` (the latest instant it stands for)."""
    return text + template[len(text):]


def _date(text: str) -> dt.date:
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def _time(text: str, template: str) -> dt.time:
    full = _padded(text, template)
    return dt.time(int(full[:2]), int(full[2:4]), int(full[4:6]), int(full[7:13]))


def _datetime(text: str, template: str) -> dt.datetime:
    full = _padded(text, template)
    year, month = int(full[:4]), int(full[4:6])
    day = min(int(full[6:8]), calendar.monthrange(year, month)[1])
    clock = _time(full[8:], _TM_LOW)
    return dt.datetime.combine(dt.date(year, month, day), clock)


def _no_offset(text: str) -> str:
    """A DT without its `&ZZXX` UTC offset (PS3.5 Table 6.2-1)."""
    return re.sub(r"[+-]\d{4}$", "", text) if len(text) > 4 else text


def _bind_value(kind: Kind, vr: str, text: str) -> Any:
    """The value bound for a key: a number for a number column (None if the key is not one),
    or for a numeric VR where the storage is not known (SQLite converts by affinity)."""
    if kind == "number" or (kind == "unknown" and vr in NUMBER_VRS):
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                continue
        return None
    return text


@dataclass(frozen=True)
class Columns:
    """What the configured select offers: its labels, the source of each DICOM attribute it
    can answer, and the label of the gateway-only file path."""

    labels: tuple[str, ...]
    sources: Mapping[int, Source]
    file_path: str | None = None

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

