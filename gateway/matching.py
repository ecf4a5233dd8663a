"""Attribute matching in memory (PS3.4 C.2.2.2), for keys a connector could not match itself.

Pure functions over DICOM JSON attributes: the engine uses them to filter a connector's answers
when the connector reports a key in `SearchResult.unmatched` (for example person-name matching
with `fuzzymatching=true` against a case-sensitive PACS).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .dicomjson import key
from .query import Match, SearchQuery


def _texts(attr: Mapping[str, Any] | None) -> list[str]:
    """The values of an attribute as strings; PN values as their component groups joined by '='."""
    if not attr:
        return []
    out: list[str] = []
    for value in attr.get("Value") or []:
        if value is None:
            continue
        if isinstance(value, dict):
            groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            out.append("=".join(groups).rstrip("="))
        else:
            out.append(str(value))
    return out


def wildcard_match(pattern: str, value: str, fold: bool = False) -> bool:
    """PS3.4 C.2.2.2.4: `*` matches any sequence of characters, `?` any single character.
    Greedy with one backtrack point (the last `*`): O(len(pattern) * len(value)) at worst,
    so no pattern can make it slow (a regular expression with many `.*` can)."""
    if fold:
        pattern, value = pattern.casefold(), value.casefold()
    p = v = 0
    star, mark = -1, 0
    while v < len(value):
        if p < len(pattern) and pattern[p] in ("?", value[v]) and pattern[p] != "*":
            p, v = p + 1, v + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, v, p + 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            v = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _single(expected: str, values: list[str], fold: bool) -> bool:
    """PS3.4 C.2.2.2.1: single value matching (case-insensitive for PN when fuzzy)."""
    if fold:
        return any(v.casefold() == expected.casefold() for v in values)
    return expected in values


def _in_range(low: str, high: str, values: list[str]) -> bool:
    """PS3.4 C.2.2.2.5: inclusive range on DA/TM/DT strings, compared on a common length."""
    for v in values:
        lo = v[: len(low)] if low else v
        hi = v[: len(high)] if high else v
        if (not low or lo >= low) and (not high or hi <= high):
            return True
    return False


def matches_one(match: Match, data: Mapping[str, Any], fuzzy: bool) -> bool:
    values = _texts(data.get(key(match.tag)))
    fold = fuzzy and match.vr == "PN"
    if match.kind == "universal":
        return True
    if not values:
        return False
    if match.kind == "single":
        if match.vr == "PN":
            return any(wildcard_match(match.values[0], v, fold) for v in values)
        return _single(match.values[0], values, fold)
    if match.kind == "wildcard":
        return any(wildcard_match(match.values[0], v, fold) for v in values)
    if match.kind == "range":
        return _in_range(match.values[0], match.values[1], values)
    return any(v in match.values for v in values)  # list (PS3.4 C.2.2.2.2)


def matches(query: SearchQuery, data: Mapping[str, Any], tags: frozenset[int]) -> bool:
    """True when `data` satisfies every matching key of `query` whose tag is in `tags`."""
    return all(matches_one(m, data, query.fuzzy) for m in query.matches if m.tag in tags)
