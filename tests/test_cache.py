"""The metadata cache (gateway/cache.py, gateway/cache_store.py) over the real demo archive
(a DB connector over SQLite) and the real Redis on 127.0.0.1:6379, plus HTTP caching of JSON
answers (ETag, 304, gzip).

The connector under the cache is the real DB connector, wrapped by `Counting`, which only
counts the calls that reach it (and can slow or fail them): how many times the archive is asked
is what a cache changes. Expected answers come from the sample files."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis

from gateway import create_app, jsoncodec
from gateway.cache import CachedConnector
from gateway.cache_store import Flights, MemoryNamespace, RedisNamespace
from gateway.config import ConfigError, load_settings_from_dict
from gateway.connectors.base import Connector, Part10, ResourceRef, SearchResult
from gateway.errors import ConnectorError
from gateway.query import Level, SearchQuery, parse_search
from tests.harness import samples
from tests.harness.ports import free_port
from tests.views.conftest import demo_settings

INDEX = samples.sample_index()
CT, MR, SC = INDEX["CT_small.dcm"], INDEX["MR_small.dcm"], INDEX["SC_rgb_rle.dcm"]
SC_JPEG = INDEX["SC_rgb_jpeg_dcmtk.dcm"]  # same study and series as SC_rgb_rle.dcm
REDIS_URL = "redis://127.0.0.1:6379/0"
BASE = "http://gw/dicomweb"


class Counting:
    """A connector passed through, counting the searches and metadata calls that reach it;
    `delay` slows them, `fail` makes the next ones raise."""

    def __init__(self, inner: Connector, delay: float = 0.0) -> None:
        self.inner, self.id, self.capabilities = inner, inner.id, inner.capabilities
        self.delay, self.fail = delay, 0
        self.searches = self.metadata = self.retrievals = 0
        self._lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)
        time.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise ConnectorError("archive down", self.id)

    def search(self, query: SearchQuery) -> SearchResult:
        self._count("searches")
        return self.inner.search(query)

    def retrieve_metadata(self, ref: ResourceRef, bulk_base: str) -> list[dict[str, Any]]:
        self._count("metadata")
        return self.inner.retrieve_metadata(ref, bulk_base)

    def retrieve_instances(self, ref: ResourceRef, ts: str) -> Generator[Part10, None, None]:
        self._count("retrievals")
        return self.inner.retrieve_instances(ref, ts)

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = demo_settings(tmp_path_factory.mktemp("demo"))
    settings["gateway"]["cache"] = {"ttl": 0}  # the app itself uncached: tests wrap its connector
    app = create_app(load_settings_from_dict(settings))
    yield app.extensions["gateway"].engine.backends["demo"].connector
    app.extensions["gateway"].close()


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"test-cache-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}:*"))
    if keys:
        client.delete(*keys)


def cached(inner: Connector, space: Any = None, ttl: float = 60) -> CachedConnector:
    return CachedConnector(inner, space or MemoryNamespace(ttl, 1 << 24), Flights(), wait=10)


def study_query(uid: str) -> SearchQuery:
    return parse_search(Level.STUDY, [("StudyInstanceUID", uid), ("limit", "10")])


def uids(result: SearchResult, tag: str = "0020000D") -> list[str]:
    return sorted(d[tag]["Value"][0] for d in result.datasets)


# -- hits, expiry, bounds, failures -----------------------------------------------------------


def test_a_repeated_search_is_answered_from_the_cache(demo: Connector) -> None:
    inner = Counting(demo)
    cache = cached(inner)
    first = cache.search(study_query(CT["StudyInstanceUID"]))
    second = cache.search(study_query(CT["StudyInstanceUID"]))
    assert uids(first) == uids(second) == [CT["StudyInstanceUID"]]
    assert second.datasets == first.datasets
    assert inner.searches == 1
    cache.search(study_query(MR["StudyInstanceUID"]))  # another query: another key
    assert inner.searches == 2


def test_what_a_caller_does_to_an_answer_does_not_reach_the_cache(demo: Connector) -> None:
    # A miss hands the caller the connector's own answer (not decoded again from the cache);
    # the engine trims and rewrites answers, and none of that may change what the cache keeps.
    cache = cached(Counting(demo))
    ref = ResourceRef(CT["StudyInstanceUID"], CT["SeriesInstanceUID"])
    for get in (
        lambda: cache.search(study_query(CT["StudyInstanceUID"])).datasets,
        lambda: cache.retrieve_metadata(ref, BASE),
        lambda: cache.retrieve_metadata(ResourceRef(MR["StudyInstanceUID"]), BASE),
    ):
        first = get()
        first[0]["0020000D"] = {"vr": "UI", "Value": ["9.9.9"]}
        first.append({})
        again = get()
        assert len(again) == len(first) - 1
        assert again[0]["0020000D"]["Value"][0] in (CT["StudyInstanceUID"], MR["StudyInstanceUID"])


def test_entries_expire_after_their_ttl(demo: Connector) -> None:
    inner = Counting(demo)
    cache = cached(inner, ttl=0.3)
    cache.search(study_query(CT["StudyInstanceUID"]))
    cache.search(study_query(CT["StudyInstanceUID"]))
    assert inner.searches == 1
    time.sleep(0.4)
    cache.search(study_query(CT["StudyInstanceUID"]))
    assert inner.searches == 2


def test_an_answer_larger_than_the_bound_is_not_kept(demo: Connector) -> None:
    inner = Counting(demo)
    cache = cached(inner, space=MemoryNamespace(60, 100))  # 100 bytes: no answer fits
    for _ in range(3):
        assert uids(cache.search(study_query(CT["StudyInstanceUID"]))) == [CT["StudyInstanceUID"]]
    assert inner.searches == 3


def test_failures_are_not_cached(demo: Connector) -> None:
    inner = Counting(demo)
    inner.fail = 1
    cache = cached(inner)
    with pytest.raises(ConnectorError):
        cache.search(study_query(CT["StudyInstanceUID"]))
    assert uids(cache.search(study_query(CT["StudyInstanceUID"]))) == [CT["StudyInstanceUID"]]
    assert inner.searches == 2


# -- single flight ----------------------------------------------------------------------------


def test_concurrent_misses_fetch_once(demo: Connector) -> None:
    inner = Counting(demo, delay=0.3)
    cache = cached(inner)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: cache.search(study_query(CT["StudyInstanceUID"])), range(20)))
    assert all(uids(r) == [CT["StudyInstanceUID"]] for r in results)
    assert inner.searches == 1


def test_concurrent_misses_in_two_processes_sharing_redis_fetch_once(demo: Connector, prefix: str) -> None:
    """Two CachedConnectors with their own Flights stand for two gunicorn workers: only the
    Redis claim keeps them from both asking the archive."""
    client = redis.Redis.from_url(REDIS_URL)
    inner_a, inner_b = Counting(demo, delay=0.3), Counting(demo, delay=0.3)
    a = CachedConnector(inner_a, RedisNamespace(client, f"{prefix}:demo", 60), Flights(), wait=10)
    b = CachedConnector(inner_b, RedisNamespace(client, f"{prefix}:demo", 60), Flights(), wait=10)
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda i: (a if i % 2 else b).search(study_query(CT["StudyInstanceUID"])), range(10)))
    assert all(uids(r) == [CT["StudyInstanceUID"]] for r in results)
    assert inner_a.searches + inner_b.searches == 1
    assert list(client.scan_iter(match=f"{prefix}:demo:*:fill")) == []


def test_redis_shares_entries_between_processes(demo: Connector, prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    inner_a, inner_b = Counting(demo), Counting(demo)
    a = CachedConnector(inner_a, RedisNamespace(client, f"{prefix}:demo", 60), Flights(), wait=10)
    b = CachedConnector(inner_b, RedisNamespace(client, f"{prefix}:demo", 60), Flights(), wait=10)
    assert uids(a.search(study_query(MR["StudyInstanceUID"]))) == [MR["StudyInstanceUID"]]
    assert uids(b.search(study_query(MR["StudyInstanceUID"]))) == [MR["StudyInstanceUID"]]
    assert (inner_a.searches, inner_b.searches) == (1, 0)
    ttl = client.pttl(next(iter(client.scan_iter(match=f"{prefix}:demo:search:*"))))
    assert 0 < ttl <= 60_000


def test_pixel_data_never_enters_the_cache(demo: Connector, prefix: str) -> None:
    """Retrievals go to the archive every time and leave nothing in Redis; the metadata
    entry of the same series holds the pixel data's BulkDataURI, not its bytes."""
    client = redis.Redis.from_url(REDIS_URL)
    inner = Counting(demo)
    cache = CachedConnector(inner, RedisNamespace(client, f"{prefix}:demo", 60), Flights(), wait=10)
    series = ResourceRef(CT["StudyInstanceUID"], CT["SeriesInstanceUID"])
    pixels = pydicom.dcmread(CT["path"]).PixelData
    for _ in range(2):
        (part,) = list(cache.retrieve_instances(series, "*"))
        assert part.data == CT["path"].read_bytes()
    assert inner.retrievals == 2
    assert list(client.scan_iter(match=f"{prefix}:*")) == []
    (data,) = cache.retrieve_metadata(series, BASE)
    assert "BulkDataURI" in data["7FE00010"]
    stored = [client.get(k) for k in client.scan_iter(match=f"{prefix}:*")]
    assert stored and not any(pixels[:4096] in value for value in stored if value)


def test_a_dead_redis_is_a_miss_not_an_error(demo: Connector, caplog: pytest.LogCaptureFixture) -> None:
    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5,
                                socket_connect_timeout=0.5)
    inner = Counting(demo)
    cache = CachedConnector(inner, RedisNamespace(dead, "x:demo", 60), Flights(), wait=10)
    caplog.set_level(logging.WARNING, "gateway.cache")
    for _ in range(3):
        assert uids(cache.search(study_query(CT["StudyInstanceUID"]))) == [CT["StudyInstanceUID"]]
    assert inner.searches == 3
    assert len([r for r in caplog.records if "redis" in r.getMessage()]) == 1  # once, not per call


# -- metadata ---------------------------------------------------------------------------------


def test_study_metadata_fills_its_series_and_instances(demo: Connector) -> None:
    inner = Counting(demo)
    cache = cached(inner)
    study = SC["StudyInstanceUID"]
    whole = cache.retrieve_metadata(ResourceRef(study), BASE)
    assert sorted(d["00080018"]["Value"][0] for d in whole) == sorted(
        [SC["SOPInstanceUID"], SC_JPEG["SOPInstanceUID"]])
    assert inner.metadata == 1
    series_uid = SC["SeriesInstanceUID"]
    series = cache.retrieve_metadata(ResourceRef(study, series_uid), BASE)
    assert sorted(d["00080018"]["Value"][0] for d in series) == sorted(
        [SC["SOPInstanceUID"], SC_JPEG["SOPInstanceUID"]])
    for info in (SC, SC_JPEG):
        one = cache.retrieve_metadata(ResourceRef(study, series_uid, info["SOPInstanceUID"]), BASE)
        assert [d["00080018"]["Value"][0] for d in one] == [info["SOPInstanceUID"]]
    again = cache.retrieve_metadata(ResourceRef(study), BASE)
    assert {d["00080018"]["Value"][0]: d for d in again} == {
        d["00080018"]["Value"][0]: d for d in whole}
    assert inner.metadata == 1  # everything after the first call came from the cache


def test_metadata_is_keyed_by_its_bulk_data_base(demo: Connector) -> None:
    inner = Counting(demo)
    cache = cached(inner)
    ref = ResourceRef(CT["StudyInstanceUID"], CT["SeriesInstanceUID"])
    a = cache.retrieve_metadata(ref, "http://a/dicomweb")
    b = cache.retrieve_metadata(ref, "http://b/archives/demo/dicomweb")
    assert a[0]["7FE00010"]["BulkDataURI"].startswith("http://a/dicomweb/studies/")
    assert b[0]["7FE00010"]["BulkDataURI"].startswith("http://b/archives/demo/dicomweb/studies/")
    assert inner.metadata == 2


# -- the app: configuration, purge, HTTP caching ----------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    settings = demo_settings(tmp_path / "demo")
    settings["gateway"]["cache"] = {"ttl": 60, "admin-token": "a" * 32}
    app = create_app(load_settings_from_dict(settings))
    yield app
    app.extensions["gateway"].close()


def test_the_app_caches_by_default_and_an_admin_purges(app: Any) -> None:
    client = app.test_client()
    wrapper = app.extensions["gateway"].engine.backends["demo"].connector
    assert isinstance(wrapper, CachedConnector)
    counting = Counting(wrapper.inner)
    wrapper.inner = counting
    path = f"/dicomweb/studies?StudyInstanceUID={CT['StudyInstanceUID']}"
    assert client.get(path).get_json()[0]["0020000D"]["Value"] == [CT["StudyInstanceUID"]]
    client.get(path)
    assert counting.searches == 1
    assert client.post("/admin/cache/purge").status_code == 401
    wrong = client.post("/admin/cache/purge", headers={"Authorization": "Bearer " + "b" * 32})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    bad = client.post("/admin/cache/purge?connector=nope", headers={"Authorization": "Bearer " + "a" * 32})
    assert bad.status_code == 400 and bad.get_json()["parameter"] == "connector"
    done = client.post("/admin/cache/purge?connector=demo", headers={"Authorization": "Bearer " + "a" * 32})
    assert done.status_code == 200 and done.get_json()["purged"]["demo"] >= 1
    client.get(path)
    assert counting.searches == 2  # asked again after the purge


def test_purge_does_not_exist_without_an_admin_token(tmp_path: Path) -> None:
    app = create_app(load_settings_from_dict(demo_settings(tmp_path / "demo")))
    try:
        assert app.test_client().post("/admin/cache/purge").status_code == 404
    finally:
        app.extensions["gateway"].close()


def test_metadata_has_an_etag_and_if_none_match_gives_304(app: Any) -> None:
    client = app.test_client()
    path = f"/dicomweb/studies/{CT['StudyInstanceUID']}/metadata"
    first = client.get(path)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"') and len(etag) == 34
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag
    other = client.get(path, headers={"If-None-Match": '"not-it"'})
    assert other.status_code == 200 and other.data == first.data


def test_series_metadata_goes_out_as_the_cache_holds_it(app: Any) -> None:
    # miss and hit answer the same bytes, which are the metadata's own JSON encoding
    client = app.test_client()
    path = f"/dicomweb/studies/{CT['StudyInstanceUID']}/series/{CT['SeriesInstanceUID']}/metadata"
    miss, hit = client.get(path), client.get(path)
    assert miss.status_code == hit.status_code == 200
    assert miss.data == hit.data == jsoncodec.dumps(json.loads(miss.data))
    (data,) = hit.get_json()
    assert data["00080018"]["Value"] == [CT["SOPInstanceUID"]]
    # the engine hands the view the cache's bytes with the datasets: not encoded a second time
    engine = app.extensions["gateway"].engine
    ref = ResourceRef(CT["StudyInstanceUID"], CT["SeriesInstanceUID"])
    got = engine.retrieve_metadata(ref, ["demo"], "http://localhost/dicomweb")
    assert type(got) is jsoncodec.Encoded and got.encoded == hit.data


def test_json_answers_are_gzipped_when_accepted(app: Any) -> None:
    client = app.test_client()
    path = f"/dicomweb/studies/{CT['StudyInstanceUID']}/metadata"
    plain = client.get(path)
    packed = client.get(path, headers={"Accept-Encoding": "gzip, deflate"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.data) == plain.data
    assert packed.headers["ETag"] != plain.headers["ETag"]  # one tag per content coding
    assert "Accept-Encoding" in packed.headers["Vary"]
    assert "Content-Encoding" not in plain.headers


@pytest.mark.parametrize(
    ("cache", "error"),
    [
        ({"backend": "redis"}, "gateway.cache.redis-url"),
        ({"backend": "memcached"}, "gateway.cache.backend"),
        ({"redis-url": "http://127.0.0.1:6379"}, "gateway.cache.redis-url"),
        ({"ttl": -1}, "gateway.cache.ttl"),
        ({"admin-token": "short"}, "gateway.cache.admin-token"),
    ],
)
def test_cache_configuration_errors_name_the_key(tmp_path: Path, cache: dict[str, Any], error: str) -> None:
    settings = demo_settings(tmp_path)
    settings["gateway"]["cache"] = cache
    with pytest.raises(ConfigError) as raised:
        load_settings_from_dict(settings)
    assert error in str(raised.value)


def test_per_connector_bounds_override_the_default(tmp_path: Path) -> None:
    settings = demo_settings(tmp_path)
    settings["gateway"]["cache"] = {"ttl": 30, "max-bytes": 1000}
    settings["connector"]["config"]["demo"]["cache"] = {"ttl": 0}
    loaded = load_settings_from_dict(settings)
    assert loaded.gateway.cache.bounds.ttl == 30
    bounds = loaded.connector("demo").cache
    assert bounds is not None and (bounds.ttl, bounds.max_bytes) == (0, 1000)
    app = create_app(loaded)
    try:
        connector = app.extensions["gateway"].engine.backends["demo"].connector
        assert not isinstance(connector, CachedConnector)  # ttl 0: not cached
    finally:
        app.extensions["gateway"].close()


def test_the_app_shares_redis_between_two_instances(tmp_path: Path, prefix: str) -> None:
    settings = demo_settings(tmp_path / "demo")
    settings["gateway"]["cache"] = {"backend": "redis", "redis-url": REDIS_URL, "key-prefix": prefix}
    one, two = (create_app(load_settings_from_dict(settings)) for _ in range(2))
    try:
        counters = []
        for app in (one, two):
            wrapper = app.extensions["gateway"].engine.backends["demo"].connector
            counters.append(Counting(wrapper.inner))
            wrapper.inner = counters[-1]
        path = f"/dicomweb/studies/{MR['StudyInstanceUID']}/series/{MR['SeriesInstanceUID']}/metadata"
        a, b = one.test_client().get(path), two.test_client().get(path)
        assert a.status_code == b.status_code == 200 and a.data == b.data
        assert [c.metadata for c in counters] == [1, 0]
    finally:
        one.extensions["gateway"].close()
        two.extensions["gateway"].close()
