"""Fan-out to connectors, merge by UID, partial results, paging.

The engine asks the chosen connectors in parallel, each bounded by its own `request` time-out,
filters in memory what a connector could not match, merges answers by the level's UID (the
first connector in order wins on conflicting attributes), pages the merged list and reports
partial answers as `Warning` texts. For retrieval it finds the connector that holds a resource
and pulls the first object before the response starts.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
from collections.abc import Generator, Iterator, Sequence
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
from .query import MAX_OFFSET, SERIES_UID, SOP_UID, STUDY_UID, Level, Match, SearchQuery, is_uid
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
        if query.offset >= MAX_OFFSET:
            return answer  # no archive has answers that far
        # one connector pages itself; several are asked for everything up to the page's end
        single = len(asked) == 1
        child = (
            query.paged(limit + 1, query.offset)
            if single
            else query.paged(query.offset + limit + 1, 0)
        )
        results, errors = self._fan_out(asked, child)
        if errors and not results:
            raise AllConnectorsFailed(errors)
        answer.warnings.extend(f"connector {e.connector} failed: {e.message}" for e in errors)
        merged = _merge(query, results, answer.warnings)
        paged_by_connector = single and not any(r.unmatched for _, r in results)
        skip = 0 if paged_by_connector else query.offset
        if len(merged) > skip + limit:
            answer.warnings.append("There are additional results that can be requested")
        scoped_study = _scoped(query, STUDY_UID)
        scoped_series = _scoped(query, SERIES_UID)
        tags, optional = dicomjson.return_tags(query, scoped_study, scoped_series)
        for data in merged[skip : skip + limit]:
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
        with _guard(cid):
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
            with _guard(cid):
                first = transcode.deliver(next(stream), transfer_syntax)
        except StopIteration:
            raise NotFound(f"no instances in that {ref.level.lower()}") from None
        except GatewayError:
            stream.close()
            raise
        return _chain(cid, first, stream, transfer_syntax)


@contextlib.contextmanager
def _guard(cid: str) -> Iterator[None]:
    """Whatever a connector's retrieval raises reaches the client as a gateway error naming
    the connector: a damaged object is a 502, a bug an "internal error" 502 (and a log)."""
    try:
        yield
    except transcode.DamagedObject as exc:
        raise ConnectorError(exc.message, cid) from exc
    except GatewayError:
        raise
    except Exception as exc:
        log.exception("connector %s raised during retrieval", cid)
        raise ConnectorError(f"internal error: {type(exc).__name__}", cid) from exc


def _chain(
    cid: str, first: Part10, rest: Generator[Part10, None, None], transfer_syntax: str
) -> Generator[Part10, None, None]:
    try:
        yield first
        while True:
            with _guard(cid):
                part = next(rest, None)
                if part is None:
                    return
                out = transcode.deliver(part, transfer_syntax)
            yield out
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


_PARENTS = {Level.STUDY: (), Level.SERIES: (STUDY_UID,), Level.IMAGE: (STUDY_UID, SERIES_UID)}


def _valid_uids(data: JsonDataset, level: Level) -> bool:
    """The UIDs that go into the answer's RetrieveURL are UIDs (PS3.5 9.1), whatever the
    backend sent: nothing else may reach a URL the gateway emits."""
    tags = (
        *_PARENTS[level],
        {Level.STUDY: STUDY_UID, Level.SERIES: SERIES_UID}.get(level, SOP_UID),
    )
    for tag in tags:
        value = dicomjson.first(data, tag)
        if not isinstance(value, str) or not is_uid(value):
            return False
    return True


def _merge(
    query: SearchQuery, results: list[tuple[str, SearchResult]], warnings: list[str]
) -> list[JsonDataset]:
    """Merge by the level's UID in connector order; the first connector wins per attribute.
    Answers whose UIDs are not valid UIDs are left out, with a warning naming the connector."""
    merged: dict[str, JsonDataset] = {}
    for cid, result in results:
        invalid = 0
        for data in result.datasets:
            if result.unmatched and not matching.matches(query, data, result.unmatched):
                continue
            if not _valid_uids(data, query.level):
                invalid += 1
                continue
            uid = dicomjson.uid_of(data, query.level)
            if uid is None:
                continue
            if uid in merged:
                for k, attr in data.items():
                    merged[uid].setdefault(k, attr)
            else:
                merged[uid] = dict(data)
        if invalid:
            warnings.append(f"connector {cid} sent {invalid} answers without valid UIDs (left out)")
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
