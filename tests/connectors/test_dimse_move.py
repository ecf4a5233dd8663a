"""C-MOVE retrieval of the DIMSE connector (gateway.connectors.dimse_move) through the embedded
storage SCP (gateway.connectors.storescp), against REAL PACS (Orthanc's DICOM port with the SCP
registered in DicomModalities, dcmtk's dcmqrscp with it in the HostTable) and against an
in-process pynetdicom Move SCP that injects faults (tests/connectors/move_fakes.py).

Expected values come from the sample files read with pydicom (tests/harness/samples.py), from
the fakes' own datasets, or from the standard: C-MOVE statuses (PS3.4 C.4.2.1.5: 0xA801 Move
destination unknown, 0xB000 sub-operations complete with failures, 0xFE00 cancel), C-STORE
statuses (PS3.7 Annex C 0x0124 Refused: Not authorized; PS3.4 B.2.3 0xA700 Out of resources).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from gateway.connectors.base import Part10, ResourceRef
from gateway.connectors.dimse import DimseConnector, RetrieveIncomplete
from gateway.connectors.storescp import StorageScp
from gateway.errors import ConnectorError
from gateway.settings import ConnectorSettings, DicomConnector, Dimse, StorageScpOptions, Timeouts
from tests.connectors.move_fakes import FakeMoveScp
from tests.connectors.test_dimse import one_series, studies_of
from tests.harness import samples as truth
from tests.harness.dcmqrscp import Dcmqrscp, start_dcmqrscp
from tests.harness.orthanc import Orthanc, start_orthanc
from tests.harness.ports import free_port
from tests.harness.procs import HarnessError

DEST = "GWTEST"  # the storage SCP's AE title, registered in the real PACS below
UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR LE
SUCCESS, REFUSED_NOT_AUTHORIZED, OUT_OF_RESOURCES = 0x0000, 0x0124, 0xA700
TIMEOUTS = Timeouts(connect=5, request=60, acse=10, dimse=30, network=60)
SHORT = Timeouts(connect=5, request=60, acse=10, dimse=1.0, network=60)

# --------------------------------------------------------------------------------------------
# helpers


def move_connector(port: int, aet: str, scp: StorageScp | None,
                   timeouts: Timeouts = TIMEOUTS) -> DimseConnector:
    settings = ConnectorSettings(
        id="pacs1", type="DICOM",
        dicom=DicomConnector(Dimse(calling_aet="GATEWAY", aet=aet, host="127.0.0.1", port=port,
                                   retrieve_method="C-MOVE")),
        timeouts=timeouts,
    )
    return DimseConnector(settings, storage_scp=scp)


def ref_of(ds: Dataset) -> ResourceRef:
    return ResourceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))


def sops(parts: list[Part10]) -> list[str]:
    return sorted(p.sop_instance_uid for p in parts)


def uids(datasets: list[Dataset]) -> list[str]:
    return sorted(str(d.SOPInstanceUID) for d in datasets)


def move_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.is_alive() and (
        t.name.startswith("dimse-move-") or t.name.startswith("storescp-relay-")
        and t.name != "storescp-relay-server")]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    return FakeMoveScp(datasets=[]).wait_for(condition, timeout)


def new_scp(tmp: Path, aet: str = DEST, port: int | None = None) -> StorageScp:
    options = StorageScpOptions(aet=aet, port=port or free_port(), relay_dir=str(tmp / "relay"))
    return StorageScp(options, TIMEOUTS)


def store_directly(port: int, ds: Dataset, originator: tuple[str, int] | None) -> int:
    """One C-STORE to the gateway's SCP from a stranger, with or without Move Originator."""
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=DEST)
    assert assoc.is_established
    try:
        aet, msg_id = originator or (None, None)
        status = assoc.send_c_store(ds, originator_aet=aet, originator_id=msg_id)
        return int(status.Status)
    finally:
        assoc.release()


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageScp]:
    server = new_scp(tmp_path)
    server.start()
    yield server
    server.stop()


def fake_for(scp: StorageScp, datasets: list[Dataset], **switches: Any) -> FakeMoveScp:
    return FakeMoveScp(datasets=datasets, destinations={DEST: ("127.0.0.1", scp.options.port)},
                       **switches)


# --------------------------------------------------------------------------------------------
# real PACS: Orthanc (DicomModalities) and dcmqrscp (HostTable) know GWTEST


@pytest.fixture(scope="module")
def real_scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageScp]:
    server = new_scp(tmp_path_factory.mktemp("scp"))
    server.start()
    yield server
    server.stop()


def _loaded(server: Orthanc | Dcmqrscp) -> Orthanc | Dcmqrscp:
    try:
        if isinstance(server, Orthanc):
            server.upload(truth.sample_files())
        else:
            server.load(truth.sample_files())
    except HarnessError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture(scope="module")
def orthanc_mv(tmp_path_factory: pytest.TempPathFactory,
               real_scp: StorageScp) -> Iterator[Orthanc]:
    where = (DEST, "127.0.0.1", real_scp.options.port)
    server = _loaded(start_orthanc(tmp_path_factory.mktemp("orthanc_mv"),
                                   modalities={DEST: where}))
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="module")
def dcmqrscp_mv(tmp_path_factory: pytest.TempPathFactory,
                real_scp: StorageScp) -> Iterator[Dcmqrscp]:
    server = _loaded(start_dcmqrscp(tmp_path_factory.mktemp("dcmqrscp_mv"),
                                    move_destinations={DEST: ("127.0.0.1", real_scp.options.port)}))
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(params=["orthanc", "dcmqrscp"])
def pacs(request: pytest.FixtureRequest, real_scp: StorageScp) -> tuple[str, int, str]:
    """(kind, DICOM port, AE title) of a real PACS loaded with the samples."""
    if request.param == "orthanc":
        orthanc: Orthanc = request.getfixturevalue("orthanc_mv")
        return "orthanc", orthanc.dicom_port, orthanc.aet
    dcmqrscp: Dcmqrscp = request.getfixturevalue("dcmqrscp_mv")
    return "dcmqrscp", dcmqrscp.port, dcmqrscp.aet


def movable(kind: str) -> list[tuple[str, str]]:
    """(study, series) pairs the PACS can send by C-MOVE: all for Orthanc; for dcmqrscp, which
    cannot send compressed objects over C-MOVE (tests/harness/dcmqrscp.py), the series whose
    samples are all uncompressed."""
    infos = truth.sample_index().values()
    out = []
    for study in truth.studies():
        for series in truth.series_of(study):
            syntaxes = {i["TransferSyntaxUID"] for i in infos if i["SeriesInstanceUID"] == series}
            if kind == "orthanc" or syntaxes <= set(UNCOMPRESSED):
                out.append((study, series))
    return out


def test_real_move_of_each_series_returns_the_stored_objects(
        pacs: tuple[str, int, str], real_scp: StorageScp) -> None:
    kind, port, aet = pacs
    conn = move_connector(port, aet, real_scp)
    pairs = movable(kind)
    every = {(i["StudyInstanceUID"], i["SeriesInstanceUID"]) for i in truth.sample_index().values()}
    # Orthanc sends every series; dcmqrscp those whose samples are all uncompressed (5 of them)
    assert len(pairs) == (len(every) if kind == "orthanc" else 5)
    for study, series in pairs:
        parts = list(conn.retrieve_instances(ResourceRef(study, series), "*"))
        assert sops(parts) == truth.instances_of(series)
        for part in parts:
            info = truth.info_of(part.sop_instance_uid)
            received = pydicom.dcmread(BytesIO(part.data))
            source = pydicom.dcmread(info["path"])
            if kind == "orthanc":
                assert part.transfer_syntax == info["TransferSyntaxUID"]
            else:  # dcmqrscp converts between the uncompressed syntaxes as it likes
                assert part.transfer_syntax in UNCOMPRESSED
            assert received.file_meta.TransferSyntaxUID == part.transfer_syntax
            assert received.SOPInstanceUID == info["SOPInstanceUID"]
            assert received.PixelData == source.PixelData
    assert len(real_scp.router) == 0 and not move_threads()


def test_real_three_concurrent_moves_each_get_their_own(
        pacs: tuple[str, int, str], real_scp: StorageScp) -> None:
    kind, port, aet = pacs
    conn = move_connector(port, aet, real_scp)
    index = truth.sample_index()
    chosen = [index[n] for n in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm")]
    together = threading.Barrier(3, timeout=30)

    def one(info: Any) -> list[str]:
        stream = conn.retrieve_instances(
            ResourceRef(info["StudyInstanceUID"], info["SeriesInstanceUID"]), "*")
        got = [next(stream)]
        together.wait()  # all three subscriptions are open now
        got.extend(stream)
        return sops(got)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, chosen))
    assert results == [truth.instances_of(i["SeriesInstanceUID"]) for i in chosen]


def test_real_unknown_destination_names_the_ae_to_register(
        pacs: tuple[str, int, str], tmp_path: Path) -> None:
    kind, port, aet = pacs
    unknown = new_scp(tmp_path, aet="NOBODY")
    unknown.start()
    try:
        info = truth.sample_index()["CT_small.dcm"]
        conn = move_connector(port, aet, unknown)
        with pytest.raises(ConnectorError) as caught:
            list(conn.retrieve_instances(
                ResourceRef(info["StudyInstanceUID"], info["SeriesInstanceUID"]), "*"))
    finally:
        unknown.stop()
    error = caught.value
    assert not isinstance(error, RetrieveIncomplete)
    assert error.connector == "pacs1"
    assert f"AE title NOBODY at 127.0.0.1, port {unknown.options.port}" in error.message
    # Orthanc: Failed: UnableToProcess; dcmqrscp: Refused: Move Destination Unknown
    status = "0xC000 (Unable to process)" if kind == "orthanc" else \
        "0xA801 (Refused: Move destination unknown)"
    assert status in error.message


# --------------------------------------------------------------------------------------------
# fault injection with the Move SCP fake


def test_partial_failure_gives_what_arrived_then_retrieve_incomplete(scp: StorageScp) -> None:
    datasets = one_series(3)
    failing = str(datasets[1].SOPInstanceUID)
    with fake_for(scp, datasets, fail={failing}) as fake:
        received: list[str] = []
        with pytest.raises(RetrieveIncomplete) as caught:
            for part in move_connector(fake.port, "FAKEMOVE", scp).retrieve_instances(
                    ref_of(datasets[0]), "*"):
                received.append(part.sop_instance_uid)
    assert received == [str(datasets[0].SOPInstanceUID), str(datasets[2].SOPInstanceUID)]
    error = caught.value
    assert (error.expected, error.received, error.failed) == (3, 2, 1)
    assert error.dimse_status == 0xB000  # Warning: sub-operations complete, one or more failures
    assert error.connector == "pacs1" and "0xB000" in error.message


@pytest.mark.parametrize("originator", ["caller", "self", "omit"])
def test_routing_with_and_without_move_originator(scp: StorageScp, originator: str) -> None:
    """"caller": keyed by the calling AE and Message ID (PS3.7 9.3.1.1); "self": keyed by the
    PACS's own AE title (pynetdicom's habit); "omit": by the expected SOP Instance UIDs."""
    datasets = one_series(3)
    with fake_for(scp, datasets, originator=originator) as fake:
        parts = list(move_connector(fake.port, "FAKEMOVE", scp).retrieve_instances(
            ref_of(datasets[0]), "*"))
    assert [p.sop_instance_uid for p in parts] == [str(d.SOPInstanceUID) for d in datasets]
    assert pydicom.dcmread(BytesIO(parts[0].data)).PixelData == datasets[0].PixelData
    assert [s for _, s in fake.stores] == [SUCCESS] * 3
    assert fake.move_ids == [1]  # the first Message ID the SCP hands out


@pytest.mark.parametrize("originator", ["caller", "omit"])
def test_concurrent_moves_of_different_series_get_their_own(scp: StorageScp,
                                                            originator: str) -> None:
    series = [one_series(2) for _ in range(3)]
    with fake_for(scp, [d for s in series for d in s], originator=originator) as fake:
        conn = move_connector(fake.port, "FAKEMOVE", scp)
        together = threading.Barrier(3, timeout=20)

        def one(datasets: list[Dataset]) -> list[str]:
            stream = conn.retrieve_instances(ref_of(datasets[0]), "*")
            got = [next(stream)]
            together.wait()
            return sops([*got, *stream])

        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(one, series))
    assert results == [uids(s) for s in series]
    assert sorted(fake.move_ids) == [1, 2, 3]


def test_same_series_twice_without_originator_both_complete(scp: StorageScp) -> None:
    """Routed by UID only, an object goes to the oldest retrieval still missing it; each
    object comes twice (once per C-MOVE), so both retrievals end with the whole series."""
    datasets = one_series(4)
    with fake_for(scp, datasets, originator="omit") as fake:
        conn = move_connector(fake.port, "FAKEMOVE", scp)
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(
                lambda _: sops(list(conn.retrieve_instances(ref_of(datasets[0]), "*"))),
                range(2)))
    assert results == [uids(datasets)] * 2


def test_stream_starts_with_the_first_object(scp: StorageScp) -> None:
    datasets = one_series(3)
    with fake_for(scp, datasets, hold_after=1) as fake:
        stream = move_connector(fake.port, "FAKEMOVE", scp).retrieve_instances(
            ref_of(datasets[0]), "*")
        first = next(stream)
        assert first.sop_instance_uid == str(datasets[0].SOPInstanceUID)
        # the PACS holds the other two back until told
        assert fake.wait_for(lambda: len(fake.stores) == 1) and not fake.go.is_set()
        fake.go.set()
        rest = list(stream)
    assert [p.sop_instance_uid for p in rest] == [str(d.SOPInstanceUID) for d in datasets[1:]]


def test_objects_keep_a_move_without_pending_responses_alive(scp: StorageScp) -> None:
    """Orthanc sends no pending C-MOVE responses: objects arriving count as activity, so a
    C-MOVE longer than the DIMSE time-out (1 s here) completes."""
    datasets = one_series(5)
    with fake_for(scp, datasets, no_pending=True, pace=0.4) as fake:
        conn = move_connector(fake.port, "FAKEMOVE", scp, SHORT)
        started = time.monotonic()
        parts = list(conn.retrieve_instances(ref_of(datasets[0]), "*"))
        assert time.monotonic() - started > 1.6  # four paces of 0.4 s
    assert [p.sop_instance_uid for p in parts] == [str(d.SOPInstanceUID) for d in datasets]
    assert fake.aborted == 0


def test_silent_pacs_is_aborted_after_the_dimse_time_out(scp: StorageScp) -> None:
    datasets = one_series(3)
    with fake_for(scp, datasets, no_pending=True, hold_after=1) as fake:
        conn = move_connector(fake.port, "FAKEMOVE", scp, SHORT)
        received: list[str] = []
        with pytest.raises(RetrieveIncomplete) as caught:
            for part in conn.retrieve_instances(ref_of(datasets[0]), "*"):
                received.append(part.sop_instance_uid)
        fake.go.set()  # the fake's association thread notices the A-ABORT once it runs again
        assert fake.wait_for(lambda: fake.aborted == 1)
    assert received == [str(datasets[0].SOPInstanceUID)]
    assert (caught.value.expected, caught.value.received) == (3, 1)
    assert "no response within the DIMSE time-out" in caught.value.message


@pytest.mark.parametrize("via", ["owner", "relay"])
def test_client_hang_up_cancels_and_stops_routing(tmp_path: Path, via: str) -> None:
    owner = new_scp(tmp_path)
    owner.start()
    worker = StorageScp(owner.options, TIMEOUTS)
    worker.start()
    used = owner if via == "owner" else worker
    datasets = one_series(10)
    try:
        with fake_for(owner, datasets) as fake:
            conn = move_connector(fake.port, "FAKEMOVE", used)
            stream = conn.retrieve_instances(ref_of(datasets[0]), "*")
            first = next(stream)
            stream.close()
            conn.close()  # releases the C-FIND's association, kept for the next search
            assert first.sop_instance_uid == str(datasets[0].SOPInstanceUID)
            assert fake.wait_for(lambda: fake.moves_cancelled == 1)  # C-CANCEL honoured
            assert fake.wait_for(lambda: fake.open_now == 0)  # association closed
            assert (fake.releases, fake.aborted) == (2, 0)  # C-FIND's and C-MOVE's, released
            assert wait_for(lambda: len(owner.router) == 0 and not move_threads())
            statuses = [s for _, s in fake.stores]
            sent = statuses.count(SUCCESS)
            assert 1 <= sent <= 5 < 10  # at most the one read plus a queue of 4
            assert statuses[:sent] == [SUCCESS] * sent
            assert set(statuses[sent:]) <= {OUT_OF_RESOURCES, REFUSED_NOT_AUTHORIZED}
            # a late object of that C-MOVE is no longer routed anywhere
            late = store_directly(owner.options.port, datasets[9], ("GATEWAY", fake.move_ids[0]))
            assert late == REFUSED_NOT_AUTHORIZED
    finally:
        worker.stop()
        owner.stop()


def test_unclaimed_object_is_refused_and_logged_without_patient_data(
        scp: StorageScp, caplog: pytest.LogCaptureFixture) -> None:
    ds = studies_of(1, patient="SECRETPID")[0]
    with caplog.at_level(logging.WARNING, logger="gateway.storescp"):
        assert store_directly(scp.options.port, ds, None) == REFUSED_NOT_AUTHORIZED
        assert store_directly(scp.options.port, ds, ("GATEWAY", 77)) == REFUSED_NOT_AUTHORIZED
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.storescp"]
    assert len(lines) == 2
    assert "STRANGER" in lines[0] and str(ds.SOPClassUID) in lines[0]
    for secret in ("SECRETPID", str(ds.PatientName), str(ds.SOPInstanceUID),
                   str(ds.StudyInstanceUID)):
        assert all(secret not in line for line in lines)


# --------------------------------------------------------------------------------------------
# several workers: one owns the port, the others are relayed


def test_second_worker_is_relayed_and_takes_over_when_the_owner_stops(tmp_path: Path) -> None:
    owner = new_scp(tmp_path)
    owner.start()
    worker = StorageScp(owner.options, TIMEOUTS)
    worker.start()
    datasets = one_series(3)
    try:
        assert owner.owner and not worker.owner
        with (owner.subscribe({"A"}, [], "pacs1", 5) as a,
              worker.subscribe({"A"}, [], "pacs1", 5) as b):
            assert {a.message_id, b.message_id} == {1, 2}  # one table: IDs unique across both
            assert len(owner.router) == 2
        with fake_for(owner, datasets) as fake:
            conn = move_connector(fake.port, "FAKEMOVE", worker)
            parts = list(conn.retrieve_instances(ref_of(datasets[0]), "*"))
            assert [p.sop_instance_uid for p in parts] == [str(d.SOPInstanceUID) for d in datasets]
            assert pydicom.dcmread(BytesIO(parts[2].data)).PixelData == datasets[2].PixelData
            owner.stop()
            again = list(conn.retrieve_instances(ref_of(datasets[0]), "*"))
            assert sops(again) == uids(datasets)
            assert worker.owner
    finally:
        worker.stop()
        owner.stop()


# --------------------------------------------------------------------------------------------
# configuration


def test_c_move_without_a_storage_scp_is_a_clear_error() -> None:
    conn = move_connector(1, "FAKEMOVE", None)  # nothing listens on port 1: no network used
    with pytest.raises(ConnectorError, match="C-MOVE needs gateway.storage-scp, which is not configured"):
        next(conn.retrieve_instances(ResourceRef("1.2.3.4"), "*"))


def test_storage_scp_not_started_is_a_clear_error(tmp_path: Path) -> None:
    datasets = one_series(1)
    idle = new_scp(tmp_path)
    with FakeMoveScp(datasets=datasets) as fake:
        conn = move_connector(fake.port, "FAKEMOVE", idle)
        with pytest.raises(ConnectorError, match="storage SCP .* is not started"):
            next(conn.retrieve_instances(ref_of(datasets[0]), "*"))
