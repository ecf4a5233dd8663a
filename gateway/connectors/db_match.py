"""Matching for the DB connector: one SQL condition per matching type of PS3.4 C.2.2.2 (single
value, list of UIDs, wildcard, range), on a column of the configured select whose storage kind
(`Kind`) is known from the cursor description. Values are always bound, never concatenated;
case-sensitive comparisons survive MySQL's and SQL Server's case-insensitive collations, and
SQLite's case-insensitive LIKE (GLOB is used there).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.sql.elements import ColumnElement

from ..errors import BadRequest
from ..query import Match

Kind = Literal["date", "datetime", "time", "number", "text", "unknown"]


@dataclass(frozen=True)
class Source:
    """Where an attribute's value is: a label of the select, how it is stored, and whether it
    is a timestamp standing for a DA or TM attribute (`study_date_time`)."""

    label: str
    kind: Kind
    stamp: bool = False


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
    return text + template[len(text) :]


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
