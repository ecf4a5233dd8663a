"""QIDO-RS query parameters -> `SearchQuery` (PS3.18 8.3.4 and 10.6.1; matching per PS3.4 C.2.2.2).

Pure: no Flask. `parse_search` takes the level, the UIDs from the path and the query string
pairs, and returns a hashable, frozen `SearchQuery` (it doubles as a cache key) or raises
`BadRequest` naming the parameter.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from .errors import BadRequest

MatchKind = Literal["single", "wildcard", "range", "list", "universal"]

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DA_RE = re.compile(r"^[0-9]{8}$")
_TM_RE = re.compile(r"^[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?$")
_DT_RE = re.compile(
    r"^[0-9]{4}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?)?)?)?([+-][0-9]{4})?$"
)
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_RANGE_VRS = {"DA": _DA_RE, "TM": _TM_RE, "DT": _DT_RE}
_LIST_VRS = {"UI", "CS"}
_NO_WILDCARD_VRS = {
    "DA",
    "TM",
    "DT",
    "UI",
    "SQ",
    "IS",
    "DS",
    "US",
    "UL",
    "SS",
    "SL",
    "FL",
    "FD",
    "SV",
    "UV",
    "AT",
    "OB",
    "OW",
    "OF",
    "OD",
    "OL",
    "OV",
    "UN",
}
#: Bounds that keep a query cheap for every backend (SQL parameter limits, LIKE pattern limits).
MAX_VALUE_LENGTH = 1024  # of one value, and of a list of values other than UIDs
MAX_LIST_VALUES = 1000  # UIDs in a list
MAX_UID_LENGTH = 64  # PS3.5 9.1
MAX_OFFSET = 2**31 - 1


class Level(StrEnum):
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


#: The seed's `search-criteria.deactivated` names for the identifier attributes.
CRITERION_OF_TAG = {
    0x00080018: "SOP_INSTANCE_UID",
    0x0020000E: "SERIE_INSTANCE_UID",
    0x0020000D: "STUDY_INSTANCE_UID",
    0x00080050: "STUDY_ACCESSION_NUMBER",
    0x00100020: "PATIENT_ID",
}

STUDY_UID, SERIES_UID, SOP_UID = 0x0020000D, 0x0020000E, 0x00080018
SOP_CLASS = 0x00080016  # SOPClassUID
UID_OF_LEVEL = {Level.STUDY: STUDY_UID, Level.SERIES: SERIES_UID, Level.IMAGE: SOP_UID}


def is_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, at most 64 characters (leading zeros are tolerated)."""
    return len(value) <= MAX_UID_LENGTH and UID_RE.fullmatch(value) is not None


def check_uid(value: str, name: str) -> str:
    if not is_uid(value):
        raise BadRequest(f"{name} is not a valid UID", parameter=name)
    return value


@dataclass(frozen=True)
class Match:
    """One matching key. `values` by kind: single/wildcard: (value,); range: (low, high) with ""
    for an open end; list: the values; universal: ()."""

    tag: int
    kind: MatchKind
    values: tuple[str, ...] = ()

    @property
    def keyword(self) -> str:
        return keyword_for_tag(self.tag)

    @property
    def vr(self) -> str:
        return dictionary_VR(self.tag)


@dataclass(frozen=True)
class SearchQuery:
    level: Level
    matches: tuple[Match, ...] = ()
    includefields: tuple[int, ...] = ()
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0

    def match(self, tag: int) -> Match | None:
        for m in self.matches:
            if m.tag == tag:
                return m
        return None

    def uids(self, tag: int) -> tuple[str, ...]:
        """The UIDs a UID key is restricted to, or () when it is not."""
        m = self.match(tag)
        return m.values if m is not None and m.kind in ("single", "list") else ()

    @property
    def criteria(self) -> frozenset[str]:
        """The seed's identifier criteria this query matches on (universal keys do not count)."""
        return frozenset(
            CRITERION_OF_TAG[m.tag]
            for m in self.matches
            if m.tag in CRITERION_OF_TAG and m.kind != "universal"
        )

    def paged(self, limit: int | None, offset: int) -> SearchQuery:
        return replace(self, limit=limit, offset=offset)

    def without(self, tag: int) -> SearchQuery:
        return replace(self, matches=tuple(m for m in self.matches if m.tag != tag))


def parse_tag(name: str, parameter: str) -> int:
    """A keyword (`PatientName`) or 8 hex digits (`00100010`) -> tag number (PS3.18 8.3.4.1)."""
    if _TAG_RE.fullmatch(name):
        tag = int(name, 16)
        if keyword_for_tag(tag):
            return tag
        raise BadRequest(f"{parameter}: unknown attribute tag {name}", parameter=parameter)
    if "." in name:
        raise BadRequest(
            f"{parameter}: sequence (dotted) matching keys are not supported", parameter=parameter
        )
    found = tag_for_keyword(name)
    if found is None:
        raise BadRequest(f"unknown query parameter or attribute: {name}", parameter=parameter)
    return found


def parse_match(tag: int, value: str, parameter: str) -> Match:
    """Chooses the matching type of PS3.4 C.2.2.2 from the value and the attribute's VR."""
    vr = dictionary_VR(tag)
    if vr == "SQ":
        raise BadRequest(f"{parameter}: sequence matching is not supported", parameter=parameter)
    if vr == "UI" and value.count(",") + value.count("\\") >= MAX_LIST_VALUES:
        raise BadRequest(f"{parameter}: more than {MAX_LIST_VALUES} values", parameter)
    # a UID list: its UIDs and their separators
    longest = MAX_LIST_VALUES * (MAX_UID_LENGTH + 1) if vr == "UI" else MAX_VALUE_LENGTH
    if len(value) > longest:
        raise BadRequest(f"{parameter}: longer than {longest} characters", parameter)
    if any(unicodedata.category(c) == "Cc" for c in value):
        # PS3.5 6.1: control characters belong to no DICOM string value
        raise BadRequest(f"{parameter}: control characters are not allowed", parameter)
    if value == "":
        return Match(tag, "universal")
    if vr == "UI":
        uids = tuple(v for v in re.split(r"[,\\]", value))  # at most MAX_LIST_VALUES (above)
        for uid in uids:
            check_uid(uid, parameter)
        return Match(tag, "list" if len(uids) > 1 else "single", uids)
    if vr in _RANGE_VRS:
        return _parse_range(tag, vr, value, parameter)
    if vr in _LIST_VRS and ("," in value or "\\" in value):
        items = tuple(v for v in re.split(r"[,\\]", value) if v)
        return Match(tag, "list", items)
    if "*" in value or "?" in value:
        if vr in _NO_WILDCARD_VRS:
            raise BadRequest(f"{parameter}: wildcards are not allowed for VR {vr}", parameter)
        if set(value) == {"*"}:
            return Match(tag, "universal")  # PS3.4 C.2.2.2.4: "*" alone is universal matching
        # "**" matches what "*" matches; collapsing keeps backend LIKE matchers fast
        return Match(tag, "wildcard", (re.sub(r"\*+", "*", value),))
    _check_number(vr, value, parameter)
    return Match(tag, "single", (value,))


def _real_time(vr: str, value: str) -> bool:
    """A DA names a real calendar day, a TM a real time of day (PS3.5 Table 6.2-1)."""
    date, time = (
        (value, "") if vr == "DA" else ("", value) if vr == "TM" else (value[:8], value[8:14])
    )
    if len(date) == 8:
        try:
            datetime.date(int(date[:4]), int(date[4:6]), int(date[6:8]))
        except ValueError:
            return False
    limits = (23, 59, 60)  # 60: a leap second
    fields = [time[i : i + 2] for i in range(0, min(len(time), 6), 2)]
    return all(len(f) == 2 and int(f) <= top for f, top in zip(fields, limits))


_INTEGER = re.compile(r"^[+-]?[0-9]{1,12}$")
_DECIMAL = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def _check_number(vr: str, value: str, parameter: str) -> None:
    """PS3.5 Table 6.2-1: IS and the binary integer VRs hold integers; DS, FL and FD decimal
    numbers (with an optional exponent); binary data cannot be a matching key."""
    if vr in ("IS", "US", "UL", "SS", "SL", "SV", "UV") and not _INTEGER.match(value):
        raise BadRequest(f"{parameter}: {value!r} is not an integer", parameter=parameter)
    if vr in ("DS", "FL", "FD") and not _DECIMAL.match(value):
        raise BadRequest(f"{parameter}: {value!r} is not a decimal number", parameter=parameter)
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        raise BadRequest(f"{parameter}: binary attributes cannot be matched", parameter=parameter)


def _parse_range(tag: int, vr: str, value: str, parameter: str) -> Match:
    """PS3.4 C.2.2.2.5: `A-B`, `A-` and `-B` for DA, TM and DT; a single value otherwise.
    A DT may carry a `-hhmm` offset, so every `-` is tried as the separator."""
    pattern = _RANGE_VRS[vr]

    def valid(end: str) -> bool:
        return end == "" or (pattern.match(end) is not None and _real_time(vr, end))

    if valid(value):
        return Match(tag, "single", (value,))
    for i, char in enumerate(value):
        low, high = value[:i], value[i + 1 :]
        if char == "-" and (low or high) and valid(low) and valid(high):
            if low and high and vr != "DT" and low > high:
                raise BadRequest(f"{parameter}: range start is after its end", parameter)
            return Match(tag, "range", (low, high))
    raise BadRequest(f"{parameter}: {value!r} is not a valid {vr} or {vr} range", parameter)


def parse_unsigned(value: str, parameter: str) -> int:
    """An unsigned integer in ASCII digits (`²` and `１` are digits to str.isdigit), clamped
    to MAX_OFFSET: a limit is capped anyway, and no archive has answers that far."""
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"{parameter} must be an unsigned integer", parameter)
    return MAX_OFFSET if len(value) > 10 else min(int(value), MAX_OFFSET)


def parse_search(
    level: Level,
    pairs: Iterable[tuple[str, str]],
    path_uids: dict[int, str] | None = None,
    max_results: int = 1000,
) -> SearchQuery:
    """Parses a QIDO-RS query string. `path_uids` are the UIDs of the resource path
    (`/studies/{study}/series`), already part of the query as single-value matches."""
    matches: dict[int, Match] = {}
    includefields: list[int] = []
    include_all = False
    fuzzy = False
    limit: int | None = None
    offset = 0
    seen: set[str] = set()
    for name, value in pairs:
        if name != "includefield" and name in seen:
            raise BadRequest(f"{name} is given more than once", parameter=name)
        seen.add(name)
        if name == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item == "all":
                    include_all = True
                else:
                    includefields.append(parse_tag(item, "includefield"))
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise BadRequest("fuzzymatching must be true or false", parameter=name)
            fuzzy = value == "true"
        elif name == "accept":
            pass  # the Accept query parameter (PS3.18 8.3.3.1), read by the view
        elif name == "limit":
            limit = parse_unsigned(value, name)
        elif name == "offset":
            offset = parse_unsigned(value, name)
        else:
            tag = parse_tag(name, name)
            if tag in matches:
                raise BadRequest(f"{name} is given more than once", parameter=name)
            matches[tag] = parse_match(tag, value, name)
    for tag, uid in (path_uids or {}).items():
        check_uid(uid, keyword_for_tag(tag))
        given = matches.get(tag)
        if given is not None and given.kind != "universal" and uid not in given.values:
            # the path and the query disagree: nothing can match
            matches[tag] = Match(tag, "list", ())
        else:
            matches[tag] = Match(tag, "single", (uid,))
    if limit is None or limit > max_results:
        limit = max_results
    return SearchQuery(
        level=level,
        matches=tuple(sorted(matches.values(), key=lambda m: m.tag)),
        includefields=tuple(dict.fromkeys(includefields)),
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
    )
