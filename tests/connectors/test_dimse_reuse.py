"""Association reuse by the DIMSE connector's searches (dimse.reuse-seconds), against an
in-process pynetdicom SCP that counts associations, and the real Orthanc and dcmqrscp.

PS3.8 7.1: an association carries any number of operations; the limit `max-associations`
counts idle associations too, and a retrieval that needs a slot held by an idle search
association gets it at once (the idle one is released)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gateway.connectors.base import ResourceRef
from gateway.query import Level
from gateway.settings import Timeouts
from tests.connectors.scp_fakes import FakeScp
from tests.connectors.test_dimse import connector, search, studies_of, values
from tests.harness import samples


def uids(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(values(rows, "0020000D"))


def test_consecutive_searches_share_one_association() -> None:
    with FakeScp(datasets=studies_of(5)) as fake:
        conn = connector(fake.port, reuse_seconds=5)
        expected = sorted(str(d.StudyInstanceUID) for d in fake.datasets)
        for _ in range(10):
            assert uids(search(conn, Level.STUDY)) == expected
        assert len(fake.proposed) == 1  # one association established for ten C-FINDs
        assert fake.open_now == 1 and fake.releases == 0
        conn.close()
        assert fake.wait_for(lambda: fake.open_now == 0 and fake.releases == 1)


def test_an_idle_association_is_released_after_reuse_seconds() -> None:
    with FakeScp(datasets=studies_of(2)) as fake:
        conn = connector(fake.port, reuse_seconds=0.3)
        search(conn, Level.STUDY)
        assert fake.open_now == 1
        assert fake.wait_for(lambda: fake.releases == 1 and fake.open_now == 0, 5)
        search(conn, Level.STUDY)  # a new association after that
        assert len(fake.proposed) == 2
        conn.close()


def test_reuse_seconds_zero_opens_one_association_per_search() -> None:
    with FakeScp(datasets=studies_of(2)) as fake:
        conn = connector(fake.port, reuse_seconds=0)
        for _ in range(3):
            search(conn, Level.STUDY)
        assert len(fake.proposed) == 3
        assert fake.wait_for(lambda: fake.releases == 3 and fake.open_now == 0)


def test_concurrent_searches_never_exceed_max_associations() -> None:
    with FakeScp(datasets=studies_of(5)) as fake:
        fake.hold = 0.1
        conn = connector(fake.port, max_associations=2, reuse_seconds=5)
        expected = sorted(str(d.StudyInstanceUID) for d in fake.datasets)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: uids(search(conn, Level.STUDY)), range(24)))
        assert results == [expected] * 24
        assert fake.open_peak == 2 and len(fake.proposed) <= 4
        conn.close()


def test_a_retrieval_takes_the_slot_of_an_idle_search_association() -> None:
    """max-associations 1: the C-FIND's association stays idle holding the one slot; the C-GET
    that follows (another association, with the storage role) must not wait for it."""
    with FakeScp(datasets=studies_of(1)) as fake:
        conn = connector(fake.port, max_associations=1, reuse_seconds=30,
                         timeouts=Timeouts(connect=2, request=10, acse=5, dimse=10, network=10))
        ds = fake.datasets[0]
        assert uids(search(conn, Level.STUDY)) == [str(ds.StudyInstanceUID)]
        started = time.monotonic()
        parts = list(conn.retrieve_instances(
            ResourceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)), "*"))
        assert time.monotonic() - started < 5
        assert [p.sop_instance_uid for p in parts] == [str(ds.SOPInstanceUID)]
        assert fake.open_peak == 1  # the idle one was released before the C-GET's opened
        conn.close()


def test_a_peer_that_released_an_idle_association_is_not_a_failure() -> None:
    with FakeScp(datasets=studies_of(2)) as fake:
        conn = connector(fake.port, reuse_seconds=30)
        search(conn, Level.STUDY)
        idle = conn.link._idle[0].assoc
        idle.abort()  # as if the PACS had dropped it while idle
        assert fake.wait_for(lambda: fake.open_now == 0)
        assert len(search(conn, Level.STUDY)) == 2  # a fresh association, no error
        assert len(fake.proposed) == 2
        conn.close()


@pytest.mark.parametrize("archive", ["orthanc", "dcmqrscp"])
def test_reused_associations_answer_like_fresh_ones_on_real_pacs(
    request: pytest.FixtureRequest, archive: str
) -> None:
    server = request.getfixturevalue(archive)
    port = server.dicom_port if archive == "orthanc" else server.port
    conn = connector(port, aet=server.aet, reuse_seconds=5,
                     timeouts=Timeouts(connect=5, request=60, acse=10, dimse=30, network=60))
    try:
        for _ in range(5):
            assert uids(search(conn, Level.STUDY)) == samples.studies()
            ct = samples.sample_index()["CT_small.dcm"]
            rows = search(conn, Level.SERIES, path={0x0020000D: ct["StudyInstanceUID"]})
            assert values(rows, "0020000E") == [ct["SeriesInstanceUID"]]
        assert len(conn.link._idle) == 1
    finally:
        conn.close()
    assert conn.link._idle == []
    _ = threading.active_count()
