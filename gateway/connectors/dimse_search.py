"""Search plans of the DIMSE connector, all on one association per request.

- flat: one C-FIND at the query's level, as the query stands. For a query without the unique
  keys of the levels above (`/series`, `/instances` with no study) this is a relational query
  (PS3.4 C.4.1.2.2.2), which only some PACS support.
- hierarchical: the same answers from a strictly hierarchical PACS (PS3.4 C.4.1.2.2.1): a
  C-FIND per level, top down, each below the unique key of one answer above; the higher
  levels' attributes are copied into the answers below.
- derived keys: ModalitiesInStudy, NumberOfStudyRelated* and NumberOfSeriesRelatedInstances
  (PS3.4 C.6.1.1.5) counted with lower-level C-FINDs when the PACS did not return them.
"""

from __future__ import annotations

from typing import Any

from .. import dicomjson, matching
from ..dicomjson import JsonDataset, attribute, first, key
from ..query import SERIES_UID, SOP_UID, STUDY_UID, Level, Match, SearchQuery
from .dimse_assoc import Session
from .dimse_find import (
    DEPTH,
    DERIVED,
    MODALITIES_IN_STUDY,
    MODALITY,
    RETRIEVE_URL,
    SERIES_INSTANCES,
    STUDY_INSTANCES,
    STUDY_SERIES,
    UID_OF,
    c_find,
    identifier,
    level_of,
    match_value,
    to_json,
)

Keys = dict[int, Any]
_LEVELS = (Level.STUDY, Level.SERIES, Level.IMAGE)
_PARENT_UIDS = {Level.STUDY: (), Level.SERIES: (STUDY_UID,), Level.IMAGE: (STUDY_UID, SERIES_UID)}


def request_keys(query: SearchQuery, universal: frozenset[int] = frozenset()) -> Keys:
    """Return keys and matching keys of a query (PS3.18 10.6.3.3 and PS3.4 C.4.1.1.3.1): the
    level's attributes, the unique keys above, the attributes of the levels above that the
    query does not pin down to one UID, the includefields, and the matching keys with their
    values (those in `universal` sent as universal matching)."""
    scoped_study = len(query.uids(STUDY_UID)) == 1
    scoped_series = len(query.uids(SERIES_UID)) == 1
    required, optional = dicomjson.return_tags(query, scoped_study, scoped_series)
    tags = [
        t
        for t in required + optional
        if t != RETRIEVE_URL and not (t in DERIVED and level_of(t, query.level) != query.level)
    ]
    tags.extend(_PARENT_UIDS[query.level])
    keys: Keys = dict.fromkeys(tags)
    for match in query.matches:
        keys[match.tag] = None if match.tag in universal else match_value(match)
    return keys


def is_relational(query: SearchQuery) -> bool:
    """True when a strictly hierarchical PACS cannot answer the query as it stands: a unique
    key above the level is missing or not a single value, or a key of a higher level is
    matched on (PS3.4 C.4.1.2.2.1)."""
    for level in _LEVELS[: DEPTH[query.level]]:
        if len(query.uids(UID_OF[level])) != 1:
            return True
    return any(
        m.kind != "universal"
        and m.tag not in (STUDY_UID, SERIES_UID)
        and level_of(m.tag, query.level) != query.level
        for m in query.matches
    )


def flat(
    session: Session, query: SearchQuery, keys: Keys, want: int | None
) -> tuple[list[JsonDataset], bool]:
    answers, more = c_find(session, identifier(query.level, keys), want)
    return [to_json(a) for a in answers], more


def hierarchical(
    session: Session, query: SearchQuery, keys: Keys, want: int | None
) -> tuple[list[JsonDataset], bool]:
    """The query answered level by level from STUDY down (at most `want` answers)."""
    steps: list[tuple[Level, Keys]] = []
    for level in _LEVELS[: DEPTH[query.level] + 1]:
        step = {t: v for t, v in keys.items() if level_of(t, query.level) == level}
        step.setdefault(UID_OF[level], None)
        steps.append((level, step))
    return _descend(session, steps, {}, want)


def _descend(
    session: Session, steps: list[tuple[Level, Keys]], parent: JsonDataset, want: int | None
) -> tuple[list[JsonDataset], bool]:
    level, keys = steps[0]
    keys = dict(keys)
    for uid_tag in _PARENT_UIDS[level]:
        keys[uid_tag] = first(parent, uid_tag)
    last = len(steps) == 1
    answers, more = c_find(session, identifier(level, keys), want if last else None)
    rows = [_merged(to_json(a), parent) for a in answers]
    if last:
        return rows, more
    out: list[JsonDataset] = []
    for i, row in enumerate(rows):
        if first(row, UID_OF[level]) is None:
            continue
        children, more = _descend(
            session, steps[1:], row, None if want is None else want - len(out)
        )
        out.extend(children)
        if want is not None and len(out) >= want:
            return out, more or i < len(rows) - 1
    return out, False


def _merged(child: JsonDataset, parent: JsonDataset) -> JsonDataset:
    """The child's attributes, completed with its parent's (PS3.18 10.6.3.3 asks for the
    higher levels' attributes in relational answers)."""
    for tag_key, attr in parent.items():
        if "Value" in attr and "Value" not in child.get(tag_key, {}):
            child[tag_key] = attr
    return dict(sorted(child.items()))


def _missing(row: JsonDataset, tag: int) -> bool:
    return "Value" not in row.get(key(tag), {})


def add_derived(session: Session, level: Level, rows: list[JsonDataset]) -> None:
    """Fills in the derived keys of `rows` that the PACS did not return (PS3.4 C.6.1.1.5)."""
    for row in rows:
        if level is Level.STUDY and any(
            _missing(row, t) for t in (MODALITIES_IN_STUDY, STUDY_SERIES, STUDY_INSTANCES)
        ):
            _derive_study(session, row)
        elif level is Level.SERIES and _missing(row, SERIES_INSTANCES):
            count = _count_instances(session, first(row, STUDY_UID), first(row, SERIES_UID))
            row[key(SERIES_INSTANCES)] = attribute(SERIES_INSTANCES, count)


def _derive_study(session: Session, row: JsonDataset) -> None:
    study = first(row, STUDY_UID)
    if study is None:
        return
    keys = {STUDY_UID: study, SERIES_UID: None, MODALITY: None, SERIES_INSTANCES: None}
    series, _ = c_find(session, identifier(Level.SERIES, keys))
    if _missing(row, MODALITIES_IN_STUDY):
        modalities = sorted({str(s.Modality).strip() for s in series if s.get("Modality")})
        row[key(MODALITIES_IN_STUDY)] = attribute(MODALITIES_IN_STUDY, modalities or None)
    if _missing(row, STUDY_SERIES):
        row[key(STUDY_SERIES)] = attribute(STUDY_SERIES, len(series))
    if _missing(row, STUDY_INSTANCES):
        total = 0
        for s in series:
            given = s.get("NumberOfSeriesRelatedInstances")
            total += (
                int(given)
                if given not in (None, "")
                else _count_instances(session, study, str(s.SeriesInstanceUID))
            )
        row[key(STUDY_INSTANCES)] = attribute(STUDY_INSTANCES, total)


def _count_instances(session: Session, study: str | None, series: str | None) -> int:
    if study is None or series is None:
        return 0
    keys = {STUDY_UID: study, SERIES_UID: series, SOP_UID: None}
    answers, _ = c_find(session, identifier(Level.IMAGE, keys))
    return len(answers)


def modalities_match(match: Match, row: JsonDataset) -> bool:
    """ModalitiesInStudy matching done here (PS3.4 C.2.2.2): true when one of the study's
    modalities matches the single value, one of the list or the wildcard pattern."""
    return matching.matches_one(match, row, fuzzy=False)
