"""Association reuse by the DIMSE connector's searches and C-GETs (dimse.reuse-seconds), and
C-GETs by a SOP class a search found, against an in-process pynetdicom SCP that counts
associations, and the real Orthanc and dcmqrscp.

PS3.8 7.1: an association carries any number of operations; the limit `max-associations`
counts idle associations too, and a retrieval that needs a slot held by an idle search
association gets it at once (the idle one is released)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from gateway.connectors.base import ResourceRef
from gateway.connectors.dimse import DimseConnector, RetrieveIncomplete
from gateway.errors import ConnectorError, NotFound
from gateway.query import Level
from gateway.settings import Timeouts
from tests.connectors.scp_fakes import FakeScp
from tests.connectors.test_dimse import connector, one_series, search, studies_of, values
from tests.harness import samples


def uids(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(values(rows, "0020000D"))


def real_pacs(
    request: pytest.FixtureRequest, archive: str, reuse_seconds: float
) -> DimseConnector:
    """A connector to the session's Orthanc (its DICOM port) or dcmqrscp."""
    server = request.getfixturevalue(archive)
    port = server.dicom_port if archive == "orthanc" else server.port
    return connector(port, aet=server.aet, reuse_seconds=reuse_seconds,
                     timeouts=Timeouts(connect=5, request=60, acse=10, dimse=30, network=60))


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


def test_one_idle_association_is_kept_per_set_of_contexts() -> None:
    """Three searches at once need three associations; once they are done, one stays idle for
    the next search and the other two are released (each would hold a slot at the PACS)."""
    with FakeScp(datasets=studies_of(3)) as fake:
        fake.hold = 0.3
        conn = connector(fake.port, max_associations=4, reuse_seconds=30)
        with ThreadPoolExecutor(3) as pool:
            assert [len(r) for r in pool.map(lambda _: search(conn, Level.STUDY), range(3))] == [3] * 3
        assert fake.open_peak == 3
        assert fake.wait_for(lambda: fake.open_now == 1 and fake.releases == 2)
        assert len(conn.link._idle) == 1
        conn.close()
        assert fake.wait_for(lambda: fake.open_now == 0 and fake.releases == 3)


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


def test_a_search_the_pacs_drops_on_a_reused_association_is_sent_again() -> None:
    """The PACS aborts the idle association at the moment the second search takes it: that
    search goes out once more on a new association, and the viewer sees no error."""
    with FakeScp(datasets=studies_of(3)) as fake:
        conn = connector(fake.port, reuse_seconds=30)
        expected = sorted(str(d.StudyInstanceUID) for d in fake.datasets)
        assert uids(search(conn, Level.STUDY)) == expected
        fake.drop_reused = 1
        assert uids(search(conn, Level.STUDY)) == expected
        assert fake.dropped == 1 and fake.aborted == 1
        assert fake.proposed == [{FIND_MODEL}, {FIND_MODEL}]
        # the new association is kept in its turn, and serves the next search
        assert uids(search(conn, Level.STUDY)) == expected
        assert len(fake.proposed) == 2
        conn.close()


def test_a_search_dropped_on_a_new_association_is_not_sent_again() -> None:
    """One more try, on a new association, and no more: a PACS that aborts searches on
    associations opened for them is failing, and the search is an error naming the
    connector (a 502 at the HTTP edge), not a loop."""
    with FakeScp(datasets=studies_of(1)) as fake:
        conn = connector(fake.port, reuse_seconds=30)
        search(conn, Level.STUDY)
        fake.drop_reused, fake.drop_fresh = 5, True
        with pytest.raises(ConnectorError) as info:
            search(conn, Level.STUDY)
        assert info.value.connector == "pacs1"
        assert "association aborted" in info.value.message
        assert fake.dropped == 2 and len(fake.proposed) == 2
        conn.close()


@pytest.mark.parametrize("archive", ["orthanc", "dcmqrscp"])
def test_reused_associations_answer_like_fresh_ones_on_real_pacs(
    request: pytest.FixtureRequest, archive: str
) -> None:
    conn = real_pacs(request, archive, reuse_seconds=5)
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


# --------------------------------------------------------------------------------------------
# C-GET associations, and retrievals by a SOP class a search found (ResourceRef.sop_class)

GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Q/R GET (PS3.4 C.6.2.1)
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage (PS3.4 B.5)
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage


def instance_ref(ds: Dataset, sop_class: str | None) -> ResourceRef:
    return ResourceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                       str(ds.SOPInstanceUID), sop_class=sop_class)


def test_consecutive_c_gets_share_one_association_and_skip_the_c_find() -> None:
    with FakeScp(datasets=one_series(5)) as fake:
        conn = connector(fake.port, reuse_seconds=5)
        for ds in fake.datasets:
            parts = list(conn.retrieve_instances(instance_ref(ds, CT_IMAGE), "*"))
            assert [p.sop_instance_uid for p in parts] == [str(ds.SOPInstanceUID)]
            assert pydicom.dcmread(BytesIO(parts[0].data)).PixelData == ds.PixelData
        # one association, proposing the C-GET model and CT Image Storage only: no C-FIND
        assert fake.proposed == [{GET_MODEL, CT_IMAGE}]
        assert [str(i.SOPInstanceUID) for i in fake.identifiers] == [
            str(d.SOPInstanceUID) for d in fake.datasets]
        assert {str(i.QueryRetrieveLevel) for i in fake.identifiers} == {"IMAGE"}
        assert fake.open_now == 1 and fake.releases == 0
        conn.close()
        assert fake.wait_for(lambda: fake.open_now == 0 and fake.releases == 1)


def test_a_c_get_its_consumer_abandoned_is_not_reused() -> None:
    with FakeScp(datasets=one_series(5)) as fake:
        conn = connector(fake.port, reuse_seconds=30)
        first = fake.datasets[0]
        series = ResourceRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
        stream = conn.retrieve_instances(series, "*")
        assert next(stream).sop_instance_uid == str(first.SOPInstanceUID)
        stream.close()
        assert fake.wait_for(lambda: fake.aborted == 1)
        parts = list(conn.retrieve_instances(series, "*"))
        assert [p.sop_instance_uid for p in parts] == [str(d.SOPInstanceUID) for d in fake.datasets]
        # the second C-GET had a new association (the aborted one was not kept)
        assert [p for p in fake.proposed if GET_MODEL in p] == [{GET_MODEL, CT_IMAGE}] * 2
        conn.close()


def test_a_c_get_the_pacs_drops_on_a_reused_association_is_sent_again() -> None:
    with FakeScp(datasets=one_series(3)) as fake:
        conn = connector(fake.port, reuse_seconds=30)
        first, second, _ = fake.datasets
        assert len(list(conn.retrieve_instances(instance_ref(first, CT_IMAGE), "*"))) == 1
        fake.drop_reused = 1
        parts = list(conn.retrieve_instances(instance_ref(second, CT_IMAGE), "*"))
        assert [p.sop_instance_uid for p in parts] == [str(second.SOPInstanceUID)]
        assert pydicom.dcmread(BytesIO(parts[0].data)).PixelData == second.PixelData
        # sent again on a new association; no C-FIND was needed for that
        assert fake.dropped == 1 and fake.proposed == [{GET_MODEL, CT_IMAGE}] * 2
        conn.close()


def test_a_c_get_that_lost_its_reused_association_midway_is_not_sent_again() -> None:
    """Objects already went to the viewer: the retrieval ends as incomplete (PS3.18's 206
    and Warning at the HTTP edge), it is not started over behind the viewer's back."""
    with FakeScp(datasets=one_series(4)) as fake:
        conn = connector(fake.port, reuse_seconds=30)
        first = fake.datasets[0]
        series = ResourceRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
        assert len(list(conn.retrieve_instances(series, "*"))) == 4
        fake.abort_after = 2
        got: list[str] = []
        with pytest.raises(RetrieveIncomplete) as info:
            got.extend(p.sop_instance_uid for p in conn.retrieve_instances(series, "*"))
        assert got == [str(d.SOPInstanceUID) for d in fake.datasets[:2]]
        assert (info.value.expected, info.value.received) == (4, 2)
        # one C-GET association for both retrievals: the second was not sent again
        assert [p for p in fake.proposed if GET_MODEL in p] == [{GET_MODEL, CT_IMAGE}]
        conn.close()


def test_a_search_waiting_for_the_slot_of_an_abandoned_c_get_gets_it_at_once() -> None:
    """max-associations 1: a search waits while a C-GET holds the slot; the viewer abandons
    the C-GET (its association is aborted, not kept), and the search must be woken then,
    even while the idle-association reaper waits on the same condition."""
    with FakeScp(datasets=one_series(3)) as fake:
        conn = connector(fake.port, max_associations=1, reuse_seconds=30,
                         timeouts=Timeouts(connect=2, request=8, acse=5, dimse=10, network=30))
        search(conn, Level.STUDY)  # an idle search association: the reaper is waiting
        stream = conn.retrieve_instances(instance_ref(fake.datasets[0], CT_IMAGE), "*")
        next(stream)  # the C-GET took the idle association's slot
        waited: list[float] = []

        def waiter() -> None:
            started = time.monotonic()
            assert len(search(conn, Level.STUDY)) == 1
            waited.append(time.monotonic() - started)

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)  # the search is waiting for the slot
        stream.close()
        thread.join(15)
        conn.close()
        assert len(waited) == 1 and waited[0] < 2  # not the 8 s request time-out


def test_closing_the_connector_while_a_search_runs_leaves_nothing_open() -> None:
    with FakeScp(datasets=studies_of(2)) as fake:
        fake.hold = 0.5
        conn = connector(fake.port, reuse_seconds=30)
        thread = threading.Thread(target=lambda: search(conn, Level.STUDY))
        thread.start()
        time.sleep(0.2)
        conn.close()  # the gateway shuts down while the search runs
        thread.join(5)
        assert fake.wait_for(lambda: fake.open_now == 0 and fake.releases == 1)
        assert conn.link._idle == []
        assert not [t for t in threading.enumerate() if t.name == "dimse-idle-pacs1"]


def test_a_searched_sop_class_of_a_deleted_instance_ends_as_not_found() -> None:
    with FakeScp(datasets=one_series(2)) as fake:
        conn = connector(fake.port, reuse_seconds=0)
        gone = fake.datasets.pop(0)  # deleted after the search that found its class
        with pytest.raises(NotFound) as info:
            next(conn.retrieve_instances(instance_ref(gone, CT_IMAGE), "*"))
        assert info.value.connector == "pacs1"
        # the C-GET brought nothing, then the C-FIND found nothing: 404, not a failed C-GET
        assert fake.proposed == [{GET_MODEL, CT_IMAGE}, {FIND_MODEL}]


def test_a_wrong_searched_sop_class_falls_back_to_the_c_find() -> None:
    with FakeScp(datasets=one_series(2)) as fake:
        conn = connector(fake.port, reuse_seconds=0)
        ds = fake.datasets[1]
        parts = list(conn.retrieve_instances(instance_ref(ds, MR_IMAGE), "*"))
        assert [p.sop_instance_uid for p in parts] == [str(ds.SOPInstanceUID)]
        assert pydicom.dcmread(BytesIO(parts[0].data)).PixelData == ds.PixelData
        # the CT object could not go over an MR context; the C-FIND gave its class
        assert fake.proposed == [{GET_MODEL, MR_IMAGE}, {FIND_MODEL}, {GET_MODEL, CT_IMAGE}]


@pytest.mark.parametrize("archive", ["orthanc", "dcmqrscp"])
def test_reused_c_get_associations_send_the_stored_objects_on_real_pacs(
    request: pytest.FixtureRequest, archive: str
) -> None:
    """Every sample instance by its searched SOP class, on associations kept for reuse."""
    conn = real_pacs(request, archive, reuse_seconds=30)
    try:
        for _ in range(2):
            for info in samples.sample_index().values():
                rows = search(conn, Level.IMAGE, path={
                    0x0020000D: info["StudyInstanceUID"], 0x0020000E: info["SeriesInstanceUID"],
                    0x00080018: info["SOPInstanceUID"]})
                # dcmqrscp's index does not hold SOPClassUID: the engine would pass no class
                found = [info["SOPClassUID"]] if archive == "orthanc" else [None]
                assert values(rows, "00080016") == found
                ref = ResourceRef(info["StudyInstanceUID"], info["SeriesInstanceUID"],
                                  info["SOPInstanceUID"], sop_class=info["SOPClassUID"])
                parts = list(conn.retrieve_instances(ref, "*"))
                assert [p.sop_instance_uid for p in parts] == [info["SOPInstanceUID"]]
                received = pydicom.dcmread(BytesIO(parts[0].data))
                assert received.PixelData == pydicom.dcmread(info["path"]).PixelData
        classes = {i["SOPClassUID"] for i in samples.sample_index().values()}
        # one idle association per SOP class retrieved, plus the search's (max-associations
        # permitting: the default 4 evicts the oldest)
        assert 1 <= len(conn.link._idle) <= min(len(classes) + 1, conn.link.limit)
    finally:
        conn.close()
    assert conn.link._idle == []
