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
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydicom.datadict import keyword_for_tag

from . import dicomjson, matching, part10, transcode
from .connectors.base import Connector, Part10, ResourceRef, SearchResult
from .dicomjson import JsonDataset
from .errors import (
    AllConnectorsFailed,
    ConnectorError,
    ConnectorTimeout,
    GatewayError,
    NotFound,
)
from .prefetch import Prefetch
from .query import (
    MAX_OFFSET,
    SERIES_UID,
    SOP_CLASS,
    SOP_UID,
    STUDY_UID,
    Level,
    Match,
    SearchQuery,
    is_uid,
)
from .settings import ConnectorSettings

log = logging.getLogger("gateway.engine")
T = TypeVar("T")
B = TypeVar("B")

_INSTANCE_AVAILABILITY = 0x00080056
_RETRIEVE_URL = 0x00081190


@dataclass
class SearchAnswer:
    datasets: list[JsonDataset]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Retrieval:
    """A multi-object retrieval ready to stream: `partial` when the connector reported missing
    objects before the response had to start (PS3.18 8.7: 206 with a Warning)."""

    parts: Iterator[Part10]
    warnings: list[str] = field(default_factory=list)
    reader: Prefetch[Part10] | None = None

    @property
    def partial(self) -> bool:
        return bool(self.warnings)

    def close(self) -> None:
        """Stops reading the archive: for a response whose body is never iterated (HEAD, a
        client gone before the first part), the WSGI server's close() lands here."""
        if self.reader is not None:
            self.reader.close()


#: How much of a multi-object retrieval is read before the response starts, so that a
#: retrieval that fails part-way within it is a 206 with a Warning, not a cut stream.
LOOKAHEAD_BYTES = 8 * 1024 * 1024
LOOKAHEAD_SECONDS = 2.0


@dataclass(frozen=True)
class Backend:
    connector: Connector
    settings: ConnectorSettings


class Engine:
    def __init__(
        self, backends: Sequence[Backend], max_workers: int = 32, lookahead: int = LOOKAHEAD_BYTES
    ) -> None:
        self.backends = {b.settings.id: b for b in backends}
        self.lookahead = lookahead
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fanout")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for backend in self.backends.values():
            backend.connector.close()

    # -- search ---------------------------------------------------------------------------

    def search(
        self,
        query: SearchQuery,
        ids: Sequence[str],
        base_url: str,
        *,
        follow_up: bool = False,
    ) -> SearchAnswer:
        """QIDO-RS over the connectors `ids` (PS3.18 10.6): merged, paged, trimmed. A connector
        whose `search-criteria.deactivated` covers a criterion of `query` is not asked, unless
        the query is a `follow_up` to one it answered (the series of a study it found)."""
        answer = SearchAnswer([])
        if any(m.kind == "list" and not m.values for m in query.matches):
            return answer  # the path and the query name different UIDs: nothing can match
        asked = [
            i
            for i in ids
            if follow_up or not (query.criteria & self.backends[i].settings.deactivated)
        ]
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
        paged_by_connector = single and not any(r.unmatched for _, r in results)
        more = False
        if paged_by_connector and results:
            # the page is the connector's first `limit` answers, whatever is left out of them
            # below (an answer without valid UIDs): "more" is the connector's to say
            cid, result = results[0]
            more = len(result.datasets) > limit or not result.complete
            results = [(cid, replace(result, datasets=result.datasets[:limit]))]
        merged = _merge(query, results, answer.warnings)
        skip = 0 if paged_by_connector else query.offset
        if more or len(merged) > skip + limit:
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
        """Asks every connector at once; each has until its own deadline, counted from now."""
        start = time.monotonic()
        futures = {i: self._pool.submit(self.backends[i].connector.search, query) for i in ids}
        deadlines = {i: start + self.backends[i].settings.timeouts.request + 1.0 for i in ids}
        results: list[tuple[str, SearchResult]] = []
        errors: list[ConnectorError] = []
        for cid, future in futures.items():
            outcome = _outcome(cid, future, deadlines[cid])
            if isinstance(outcome, ConnectorError):
                errors.append(outcome)
            else:
                results.append((cid, outcome))
        return results, errors

    # -- retrieval ------------------------------------------------------------------------

    def _holder(self, ref: ResourceRef, ids: Sequence[str]) -> str:
        """The connector to retrieve `ref` from. When only one connector may hold it (one is
        configured, or asked for by `/archives/<id>`, and its search criteria allow the UIDs),
        that one, without the look-up search: it answers NotFound itself, and the look-up
        would cost a round trip to it before every retrieval. Otherwise `_locate`."""
        asked = self._askable(_locate_query(ref), ids)
        if len(asked) == 1:
            return asked[0]
        return self._locate(ref, ids)[0]

    def _askable(self, query: SearchQuery, ids: Sequence[str]) -> list[str]:
        """The connectors among `ids` that may be asked `query` (search-criteria.deactivated)."""
        return [i for i in ids if not (query.criteria & self.backends[i].settings.deactivated)]

    def _locate(self, ref: ResourceRef, ids: Sequence[str]) -> tuple[str, JsonDataset]:
        """The first connector (in order) that holds `ref`, and the dataset it answered;
        NotFound when none does. All are asked at once, and the answer comes as soon as every
        connector ahead of the first one holding `ref` has answered: a slow archive further
        down the list delays nothing."""
        query = _locate_query(ref)
        asked = self._askable(query, ids)
        start = time.monotonic()
        futures = {i: self._pool.submit(self.backends[i].connector.search, query) for i in asked}
        errors: list[ConnectorError] = []
        for cid in asked:
            deadline = start + self.backends[cid].settings.timeouts.request + 1.0
            outcome = _outcome(cid, futures[cid], deadline)
            if isinstance(outcome, ConnectorError):
                errors.append(outcome)
            elif outcome.datasets:
                for other in futures.values():
                    other.cancel()
                return cid, outcome.datasets[0]
        if errors:
            raise AllConnectorsFailed(errors) if len(errors) > 1 else errors[0]
        raise NotFound(f"no {ref.level.lower()} with that UID")

    def retrieve_metadata(
        self, ref: ResourceRef, ids: Sequence[str], bulk_base: str
    ) -> list[JsonDataset]:
        cid = self._holder(ref, ids)
        with _guard(cid):
            datasets = self.backends[cid].connector.retrieve_metadata(ref, bulk_base)
        valid = [d for d in datasets if _valid_uids(d, Level.IMAGE) and _within(d, ref)]
        if len(valid) == len(datasets):
            return datasets  # itself: it may carry its encoding (jsoncodec.Encoded)
        log.warning(
            "connector %s sent metadata without valid UIDs or from elsewhere (left out)", cid
        )
        if not valid:
            raise NotFound(f"no {ref.level.lower()} with that UID", cid)
        return valid

    def retrieve_instances(
        self, ref: ResourceRef, ids: Sequence[str], transfer_syntax: str | Sequence[str]
    ) -> Generator[Part10, None, None]:
        """A stream of Part 10 objects whose first item has already been pulled, so that a
        missing resource or a dead backend is an error response, not a broken stream. The
        connector sends objects as stored; `transcode.deliver` re-encodes them as asked."""
        return self._open(ref, ids, transfer_syntax)[1]

    def _open(
        self, ref: ResourceRef, ids: Sequence[str], transfer_syntax: str | Sequence[str]
    ) -> tuple[str, Generator[Part10, None, None]]:
        if ref.instance and any(self.backends[i].connector.capabilities.hinted for i in ids):
            # the look-up search (often a cache hit) tells the instance's SOP class
            cid, found = self._locate(ref, ids)
            sop_class = dicomjson.first(found, SOP_CLASS)
            if isinstance(sop_class, str) and is_uid(sop_class):
                ref = replace(ref, sop_class=sop_class)
        else:
            cid = self._holder(ref, ids)
        stream = self.backends[cid].connector.retrieve_instances(ref, "*")
        try:
            with _guard(cid):
                part = next(stream, None)
                if part is None or not _first_within(part, ref):
                    raise NotFound(f"no instances in that {ref.level.lower()}", cid)
                first = transcode.deliver(part, transfer_syntax)
        except GatewayError:
            stream.close()
            raise
        return cid, _chain(cid, first, stream, transfer_syntax)

    def retrieve_with(
        self, ref: ResourceRef, ids: Sequence[str], use: Callable[[Iterator[Part10]], T]
    ) -> T:
        """`use` applied to the stream of objects as stored (frames, rendering, bulk data,
        WADO-URI), inside the connector's guard: an object that turns out to be damaged is
        a 502 naming the connector that sent it. The stream is closed afterwards."""
        cid, stream = self._open(ref, ids, "*")
        with contextlib.closing(stream), _guard(cid):
            result = use(stream)
            _settle(stream, ref)
        return result

    def retrieve_lazily_with(
        self,
        ref: ResourceRef,
        ids: Sequence[str],
        use: Callable[[Iterator[Part10]], tuple[T, Iterator[B]]],
    ) -> tuple[T, Iterator[B]]:
        """`retrieve_with` for a `use` that answers a head and a lazily produced body (the
        frames after the first): damage found while producing the body names the connector
        too. By then the response has started, so it cuts the stream."""
        cid, stream = self._open(ref, ids, "*")
        with contextlib.closing(stream), _guard(cid):
            head, body = use(stream)
            _settle(stream, ref)
        return head, _guarded(cid, body)

    def retrieve_study_series_instance(
        self, ref: ResourceRef, ids: Sequence[str], transfer_syntax: str | Sequence[str]
    ) -> Retrieval:
        """WADO-RS Retrieve Study / Series / Instance: the stream, read ahead up to
        `lookahead` bytes and LOOKAHEAD_SECONDS, whichever comes first (memory and delay stay
        bounded: the stream is read in a thread of its own, so the time bound holds while an
        object is arriving). A failure inside the look-ahead, after the first object, makes a
        partial answer (206 + Warning); one after it cuts the stream without its close
        delimiter, so the client sees it is incomplete."""
        stream = self.retrieve_instances(ref, ids, transfer_syntax)
        first = next(stream)  # pulled already: locating and opening are done
        reader: Prefetch[Part10] = Prefetch(stream, name="wado-read-ahead")
        ahead, size = [first], len(first.data)
        # bounded in time too, while an object arrives: a trickling backend holds nothing back
        until = time.monotonic() + LOOKAHEAD_SECONDS
        try:
            while size <= self.lookahead:
                got = reader.get(timeout=until - time.monotonic())
                if got.kind == "wait":
                    break
                if got.kind == "end":
                    return Retrieval(iter(ahead))
                assert got.item is not None
                ahead.append(got.item)
                size += len(got.item.data)
        except ConnectorError as exc:
            reader.close()
            log.warning("partial retrieval from connector %s", exc.connector)
            return Retrieval(iter(ahead), [f"connector {exc.connector}: {exc.message}"])
        except BaseException:
            reader.close()
            raise
        return Retrieval(_resume(ahead, reader), reader=reader)


def _resume(ahead: list[Part10], rest: Prefetch[Part10]) -> Iterator[Part10]:
    try:
        yield from ahead
        ahead.clear()
        while (got := rest.get()).kind == "item":
            assert got.item is not None
            yield got.item
    finally:
        rest.close()


def _outcome(
    cid: str, future: cf.Future[SearchResult], deadline: float
) -> SearchResult | ConnectorError:
    """A connector's search answer, or the error that names it (a bug included: it must
    not become a traceback)."""
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except cf.TimeoutError:
        future.cancel()
        return ConnectorTimeout("search timed out", cid)
    except ConnectorError as exc:
        return exc
    except GatewayError:
        raise
    except Exception as exc:
        log.exception("connector %s raised", cid)
        return ConnectorError(f"internal error: {type(exc).__name__}", cid)


@contextlib.contextmanager
def _guard(cid: str) -> Iterator[None]:
    """Whatever a connector's retrieval raises reaches the client as a gateway error naming
    the connector: a damaged object is a 502, a bug an "internal error" 502 (and a log)."""
    try:
        yield
    except part10.DamagedObject as exc:
        raise ConnectorError(exc.message, cid) from exc
    except GatewayError:
        raise
    except Exception as exc:
        log.exception("connector %s raised during retrieval", cid)
        raise ConnectorError(f"internal error: {type(exc).__name__}", cid) from exc


def _settle(stream: Generator[Part10, None, None], ref: ResourceRef) -> None:
    """After the one object of an instance, lets the retrieval end as it would have (a C-GET's
    final response, then A-RELEASE) instead of abandoning it (an A-ABORT, which costs the
    PACS and pynetdicom a tenth of a second). Anything that comes then is not the answer's."""
    if ref.level != "IMAGE":
        return
    with contextlib.suppress(Exception):
        next(stream, None)


def _guarded(cid: str, body: Iterator[B]) -> Iterator[B]:
    while True:
        with _guard(cid):
            item = next(body, _END)
        if item is _END:
            return
        yield item  # type: ignore[misc]


_END = object()


def _chain(
    cid: str,
    first: Part10,
    rest: Generator[Part10, None, None],
    transfer_syntax: str | Sequence[str],
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


def _matchable(cid: str, result: SearchResult, warnings: list[str]) -> frozenset[int]:
    """The keys a connector left to the engine that its answers carry: those it does not
    return at all cannot be matched, and are ignored with a warning rather than emptying the
    answer (PS3.18 8.3.4: an origin server may ignore a key it cannot match, and says so)."""
    carried = {t for t in result.unmatched if any(dicomjson.key(t) in d for d in result.datasets)}
    for tag in sorted(result.unmatched - carried):
        if result.datasets:
            warnings.append(
                f"connector {cid} cannot match on {keyword_for_tag(tag) or f'{tag:08X}'}"
            )
    return frozenset(carried)


def _has_value(attr: dict[str, Any] | None) -> bool:
    return attr is not None and any(k in attr for k in ("Value", "BulkDataURI", "InlineBinary"))


def _within(data: JsonDataset, ref: ResourceRef) -> bool:
    """The dataset is of the study (series, instance) asked for. An archive answers by the
    path's UIDs; one that resolves by the last of them alone would answer a series asked
    under another study, which PS3.18's resource hierarchy makes a 404."""
    asked = ((STUDY_UID, ref.study), (SERIES_UID, ref.series), (SOP_UID, ref.instance))
    return all(uid is None or dicomjson.first(data, tag) == uid for tag, uid in asked)


def _first_within(part: Part10, ref: ResourceRef) -> bool:
    """The first object of a retrieval is of the resource asked for (see `_within`): its SOP
    Instance UID (known without parsing) and its Study and Series Instance UIDs, read from
    its header (~0.4 ms for a CT, once per retrieval). An object whose header cannot be read
    is left to the checks that follow."""
    if ref.instance and part.sop_instance_uid and part.sop_instance_uid != ref.instance:
        return False
    try:
        ds = part10.header(part.data, (STUDY_UID, SERIES_UID))
    except Exception:  # noqa: BLE001 - damaged: transcode or the client will tell
        return True
    study, series = ds.get(STUDY_UID), ds.get(SERIES_UID)
    return (study is None or study.value == ref.study) and (
        ref.series is None or series is None or series.value == ref.series
    )


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
        unmatched = _matchable(cid, result, warnings)
        for data in result.datasets:
            if unmatched and not matching.matches(query, data, unmatched):
                continue
            if not _valid_uids(data, query.level):
                invalid += 1
                continue
            uid = dicomjson.uid_of(data, query.level)
            if uid is None:
                continue
            if uid in merged:
                for k, attr in data.items():
                    if not _has_value(merged[uid].get(k)):
                        merged[uid][k] = attr
            else:
                merged[uid] = dict(data)
        if invalid:
            warnings.append(f"connector {cid} sent {invalid} answers without valid UIDs (left out)")
    return list(merged.values())


def _without_bulk(data: JsonDataset) -> JsonDataset:
    """A search answer carries no binary values: an upstream's BulkDataURIs would point past
    the gateway (with includefield=all), and nothing in QIDO needs them."""
    out: JsonDataset = {}
    for k, attr in data.items():
        if "BulkDataURI" in attr or "InlineBinary" in attr:
            continue
        if attr.get("vr") == "SQ" and attr.get("Value"):
            attr = {**attr, "Value": [_without_bulk(item) for item in attr["Value"]]}
        out[k] = attr
    return out


def _finish(out: JsonDataset, level: Level, base_url: str) -> JsonDataset:
    """Sets the gateway's RetrieveURL and a default InstanceAvailability (ONLINE)."""
    out = _without_bulk(out)
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
