"""The metadata cache, behind the connector interface: `CachedConnector` answers searches and
WADO-RS metadata from the cache when it can and asks its connector otherwise. Retrieval of
objects (pixel data) always goes to the connector.

Keys: the connector, then the normalised search (a `SearchQuery` is a frozen value: the same
query parsed from two spellings is one key) or the resource and the BulkDataURI base. Study
metadata is kept as the metadata of its series: a study asked for is fetched in one call and
split into its series, so that the series' own requests hit, and a study whose series are all
cached is assembled from them.

An archive change becomes visible when its entries expire (`ttl`), or at once after an admin
purge (`POST /admin/cache/purge`). Failures are not cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from . import jsoncodec
from .cache_store import Flights, Namespace
from .connectors.base import Capabilities, Connector, Part10, ResourceRef, SearchResult
from .dicomjson import JsonDataset
from .metrics import Metrics
from .query import SearchQuery

_SERIES_UID, _SOP_UID = "0020000E", "00080018"
T = TypeVar("T")


class CachedConnector:
    """`connector` with its searches and metadata cached in `space` (its own namespace)."""

    def __init__(
        self,
        connector: Connector,
        space: Namespace,
        flights: Flights,
        wait: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.inner = connector
        self.id: str = connector.id
        self.capabilities: Capabilities = connector.capabilities
        self.space = space
        self._flights = flights
        self._wait = wait
        self._metrics = metrics

    # -- cached ------------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchResult:
        key = "search:" + _digest(repr(query))
        return self._value(key, lambda: self.inner.search(query), _dump_result, _load_result)

    def retrieve_metadata(self, ref: ResourceRef, bulk_base: str) -> list[JsonDataset]:
        base = _digest(bulk_base)
        if ref.level == "SERIES":
            key = f"meta:{base}:{ref.study}/{ref.series}"
            return self._metadata(key, ref, bulk_base)
        if ref.level == "IMAGE":
            whole = self.space.get(f"meta:{base}:{ref.study}/{ref.series}")
            if whole is not None:  # the series is cached: the instance is in it
                found = [d for d in _load(whole) if _value(d, _SOP_UID) == ref.instance]
                if found:
                    self._count("hit")
                    return found
            key = f"meta:{base}:{ref.study}/{ref.series}/{ref.instance}"
            return self._metadata(key, ref, bulk_base)
        return self._study_metadata(ref, bulk_base, base)

    def _study_metadata(self, ref: ResourceRef, bulk_base: str, base: str) -> list[JsonDataset]:
        index_key = f"study:{base}:{ref.study}"
        index = self.space.get(index_key)
        if index is not None:
            found = self._assembled(base, ref.study, index)
            if found is not None:
                self._count("hit")
                return found

        def split(datasets: list[JsonDataset]) -> bytes:
            by_series: dict[str, list[JsonDataset]] = {}
            for data in datasets:
                by_series.setdefault(_value(data, _SERIES_UID), []).append(data)
            for uid, members in by_series.items():
                self.space.set(f"meta:{base}:{ref.study}/{uid}", _dump(members))
            return json.dumps(list(by_series)).encode()

        def assemble(index: bytes) -> list[JsonDataset]:
            found = self._assembled(base, ref.study, index)
            if found is not None:
                return found
            return self.inner.retrieve_metadata(ref, bulk_base)  # entries too big to keep

        return self._value(
            index_key, lambda: self.inner.retrieve_metadata(ref, bulk_base), split, assemble
        )

    def _assembled(self, base: str, study: str, index: bytes) -> list[JsonDataset] | None:
        """A study's metadata from its series' entries, or None when one of them is gone."""
        parts = [self.space.get(f"meta:{base}:{study}/{uid}") for uid in json.loads(index)]
        if any(p is None for p in parts):
            return None
        return [d for p in parts if p is not None for d in _load(p)]

    def _metadata(self, key: str, ref: ResourceRef, bulk_base: str) -> list[JsonDataset]:
        """A series' (or an instance's) metadata, with its encoding (`jsoncodec.Encoded`): the
        cache's bytes are the answer's, so it is not encoded a second time."""
        encoded: list[bytes] = []

        def dump(datasets: list[JsonDataset]) -> bytes:
            encoded.append(_dump(datasets))
            return encoded[0]

        def load(data: bytes) -> list[JsonDataset]:
            encoded.append(data)
            return _load(data)

        datasets = self._value(
            key, lambda: self.inner.retrieve_metadata(ref, bulk_base), dump, load
        )
        return jsoncodec.Encoded(datasets, encoded[0]) if encoded else datasets

    def _value(
        self,
        key: str,
        fetch: Callable[[], T],
        dump: Callable[[T], bytes],
        load: Callable[[bytes], T],
    ) -> T:
        """The value under `key`: on a miss the one this request fetched (already encoded into
        the cache, so the caller may change it), on a hit the cached bytes decoded."""
        fetched: list[T] = []

        def fetch_and_dump() -> bytes:
            value = fetch()
            fetched.append(value)
            return dump(value)

        data = self._cached(key, fetch_and_dump)
        return fetched[0] if fetched else load(data)

    def _cached(self, key: str, fetch: Any) -> bytes:
        value, hit = self._flights.get_or_fetch(self.space, key, fetch, self._wait)
        self._count("hit" if hit else "miss")
        assert value is not None
        return value

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.cache_lookup(self.id, result)

    # -- passed through ----------------------------------------------------------------------

    def retrieve_instances(
        self, ref: ResourceRef, transfer_syntax: str
    ) -> Generator[Part10, None, None]:
        return self.inner.retrieve_instances(ref, transfer_syntax)

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()

    def purge(self) -> int:
        return self.space.purge()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _dump(datasets: list[JsonDataset]) -> bytes:
    return jsoncodec.dumps(datasets)


def _load(data: bytes) -> list[JsonDataset]:
    loaded: list[JsonDataset] = jsoncodec.loads(data)
    return loaded


def _dump_result(result: SearchResult) -> bytes:
    body = {
        "datasets": result.datasets,
        "unmatched": sorted(result.unmatched),
        "complete": result.complete,
        "warnings": list(result.warnings),
    }
    return jsoncodec.dumps(body)


def _load_result(data: bytes) -> SearchResult:
    body = jsoncodec.loads(data)
    return SearchResult(
        datasets=body["datasets"],
        unmatched=frozenset(body["unmatched"]),
        complete=body["complete"],
        warnings=tuple(body["warnings"]),
    )


def _value(data: JsonDataset, tag: str) -> str:
    values = (data.get(tag) or {}).get("Value") or [""]
    return str(values[0])
