"""Fan-out to connectors, merge by UID, partial results, paging.

The engine asks the chosen connectors in parallel, each bounded by its own `request` time-out,
filters in memory what a connector could not match, merges answers by the level's UID (the
first connector in order wins on conflicting attributes), pages the merged list and reports
partial answers as `Warning` texts. For retrieval it finds the connector that holds a resource
and pulls the first object before the response starts.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from . import dicomjson, matching, transcode
from .connectors.base import Connector, Part10, ResourceRef, SearchResult
from .dicomjson import JsonDataset
from .errors import (
    AllConnectorsFailed,
    ConnectorError,
    ConnectorTimeout,
    GatewayError,
    NotFound,
)
from .query import SERIES_UID, SOP_UID, STUDY_UID, Level, Match, SearchQuery
from .settings import ConnectorSettings

log = logging.getLogger("gateway.engine")

_INSTANCE_AVAILABILITY = 0x00080056
_RETRIEVE_URL = 0x00081190


@dataclass
class SearchAnswer:
    datasets: list[JsonDataset]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Backend:
    connector: Connector
    settings: ConnectorSettings


class Engine:
    def __init__(self, backends: Sequence[Backend], max_workers: int = 32) -> None:
        self.backends = {b.settings.id: b for b in backends}
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fanout")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for backend in self.backends.values():
            backend.connector.close()

    # -- search ---------------------------------------------------------------------------

    def search(self, query: SearchQuery, ids: Sequence[str], base_url: str) -> SearchAnswer:
        """QIDO-RS over the connectors `ids` (PS3.18 10.6): merged, paged, trimmed."""
        answer = SearchAnswer([])
        if any(m.kind == "list" and not m.values for m in query.matches):
            return answer  # the path and the query name different UIDs: nothing can match
        asked = [i for i in ids if not (query.criteria & self.backends[i].settings.deactivated)]
        limit = query.limit if query.limit is not None else 0
        wanted = query.offset + limit
        results, errors = self._fan_out(asked, query.paged(wanted + 1, 0))
        if errors and not results:
            raise AllConnectorsFailed(errors)
        answer.warnings.extend(f"connector {e.connector} failed: {e.message}" for e in errors)
        merged = _merge(query, results)
        if len(merged) > wanted:
            answer.warnings.append("There are additional results that can be requested")
        scoped_study = _scoped(query, STUDY_UID)
        scoped_series = _scoped(query, SERIES_UID)
        tags, optional = dicomjson.return_tags(query, scoped_study, scoped_series)
        for data in merged[query.offset : wanted]:
            out = dicomjson.trim(data, tags, query.include_all, optional)
            answer.datasets.append(_finish(out, query.level, base_url))
        for _, result in results:
            answer.warnings.extend(result.warnings)
        return answer

    def _fan_out(
        self, ids: Sequence[str], query: SearchQuery
    ) -> tuple[list[tuple[str, SearchResult]], list[ConnectorError]]:
        futures = {i: self._pool.submit(self.backends[i].connector.search, query) for i in ids}
        results: list[tuple[str, SearchResult]] = []
        errors: list[ConnectorError] = []
        for cid, future in futures.items():
            deadline = self.backends[cid].settings.timeouts.request + 1.0
            try:
                results.append((cid, future.result(timeout=deadline)))
            except cf.TimeoutError:
                future.cancel()
                errors.append(ConnectorTimeout("search timed out", cid))
            except ConnectorError as exc:
                errors.append(exc)
            except GatewayError:
                raise
            except Exception as exc:
                log.exception("connector %s raised", cid)
                errors.append(ConnectorError(f"internal error: {type(exc).__name__}", cid))
        return results, errors

    # -- retrieval ------------------------------------------------------------------------

    def locate(self, ref: ResourceRef, ids: Sequence[str]) -> str:
        """The first connector (in order) that holds `ref`; NotFound when none does."""
        query = _locate_query(ref)
        results, errors = self._fan_out(
            [i for i in ids if not (query.criteria & self.backends[i].settings.deactivated)], query
        )
        found = {cid for cid, result in results if result.datasets}
        for cid in ids:
            if cid in found:
                return cid
        if errors:
            raise AllConnectorsFailed(errors) if len(errors) > 1 else errors[0]
        raise NotFound(f"no {ref.level.lower()} with that UID")

    def retrieve_metadata(
        self, ref: ResourceRef, ids: Sequence[str], bulk_base: str
    ) -> list[JsonDataset]:
        cid = self.locate(ref, ids)
        return self.backends[cid].connector.retrieve_metadata(ref, bulk_base)

    def retrieve_instances(
        self, ref: ResourceRef, ids: Sequence[str], transfer_syntax: str
    ) -> Generator[Part10, None, None]:
        """A stream of Part 10 objects whose first item has already been pulled, so that a
        missing resource or a dead backend is an error response, not a broken stream. The
        connector sends objects as stored; `transcode.deliver` re-encodes them as asked."""
        cid = self.locate(ref, ids)
        stream = self.backends[cid].connector.retrieve_instances(ref, "*")
        try:
            first = transcode.deliver(next(stream), transfer_syntax)
        except StopIteration:
            raise NotFound(f"no instances in that {ref.level.lower()}") from None
        except GatewayError:
            stream.close()
            raise
        return _chain(first, stream, transfer_syntax)


def _chain(
    first: Part10, rest: Generator[Part10, None, None], transfer_syntax: str
) -> Generator[Part10, None, None]:
    try:
        yield first
        for part in rest:
            yield transcode.deliver(part, transfer_syntax)
    finally:
        rest.close()


def _scoped(query: SearchQuery, tag: int) -> bool:
    m = query.match(tag)
    return m is not None and m.kind == "single"


def _locate_query(ref: ResourceRef) -> SearchQuery:
    matches = [Match(STUDY_UID, "single", (ref.study,))]
    level = Level.STUDY
    if ref.series:
        matches.append(Match(SERIES_UID, "single", (ref.series,)))
        level = Level.SERIES
    if ref.instance:
        matches.append(Match(SOP_UID, "single", (ref.instance,)))
        level = Level.IMAGE
    return SearchQuery(level=level, matches=tuple(sorted(matches, key=lambda m: m.tag)), limit=1)


def _merge(query: SearchQuery, results: list[tuple[str, SearchResult]]) -> list[JsonDataset]:
    """Merge by the level's UID in connector order; the first connector wins per attribute."""
    merged: dict[str, JsonDataset] = {}
    for _, result in results:
        for data in result.datasets:
            if result.unmatched and not matching.matches(query, data, result.unmatched):
                continue
            uid = dicomjson.uid_of(data, query.level)
            if uid is None:
                continue
            if uid in merged:
                for k, attr in data.items():
                    merged[uid].setdefault(k, attr)
            else:
                merged[uid] = dict(data)
    return list(merged.values())


def _finish(out: JsonDataset, level: Level, base_url: str) -> JsonDataset:
    """Sets the gateway's RetrieveURL and a default InstanceAvailability (ONLINE)."""
    out[dicomjson.key(_RETRIEVE_URL)] = {
        "vr": "UR",
        "Value": [dicomjson.retrieve_url(base_url, out, level)],
    }
    availability = dicomjson.key(_INSTANCE_AVAILABILITY)
    if _INSTANCE_AVAILABILITY in dicomjson.LEVEL_ATTRIBUTES[level] and "Value" not in out.get(
        availability, {}
    ):
        out[availability] = {"vr": "CS", "Value": ["ONLINE"]}
    return {k: out[k] for k in sorted(out)}
