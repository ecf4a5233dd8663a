"""The DIMSE connector against real PACS (Orthanc's DICOM port, dcmtk's dcmqrscp) and against
in-process pynetdicom SCPs that inject faults (tests/connectors/scp_fakes.py).

Expected values come from the sample files read with pydicom (tests/harness/samples.py), from
the fakes' own datasets, or from the standard (status codes, PS3.4 C.4.1.1.4)."""

from __future__ import annotations

import copy
import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import build_context
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from gateway.connectors.base import ResourceRef
from gateway.connectors.dimse import DimseConnector, RetrieveIncomplete
from gateway.connectors.dimse_get import contexts
from gateway.errors import ConnectorError, ConnectorTimeout, NotAcceptable, NotFound
from gateway.query import Level, parse_search
from gateway.settings import (
    ConnectorSettings,
    DicomConnector,
    Dimse,
    KeyStore,
    Timeouts,
    Tls,
    TrustStore,
)
from tests.connectors.scp_fakes import FakeScp
from tests.robustness_servers import Blackhole
from tests.harness import samples as truth

# --------------------------------------------------------------------------------------------
# helpers


def connector(port: int, aet: str = "FAKESCP", timeouts: Timeouts | None = None,
              **dimse: Any) -> DimseConnector:
    settings = ConnectorSettings(
        id="pacs1", type="DICOM",
        dicom=DicomConnector(Dimse(calling_aet="GATEWAY", aet=aet, host="127.0.0.1",
                                   port=port, **dimse)),
        timeouts=timeouts or Timeouts(connect=2, request=10, acse=5, dimse=10, network=10),
    )
    return DimseConnector(settings)


def search(conn: DimseConnector, level: Level, *pairs: tuple[str, str],
           path: dict[int, str] | None = None) -> list[dict[str, Any]]:
    return conn.search(parse_search(level, list(pairs), path)).datasets


def values(rows: list[dict[str, Any]], tag: str) -> list[Any]:
    return [row.get(tag, {}).get("Value", [None])[0] for row in rows]


def studies_of(n: int, patient: str = "PAT") -> list[Dataset]:
    """`n` single-instance studies cloned from CT_small.dcm with new UIDs."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = []
    for i in range(n):
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName, ds.AccessionNumber = f"{patient}{i}", f"DOE^{i}", f"A{i}"
        out.append(ds)
    return out


def one_series(n: int) -> list[Dataset]:
    """`n` instances of one series (CT_small.dcm clones)."""
    first = studies_of(1)[0]
    out = []
    for i in range(n):
        ds = copy.deepcopy(first)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        out.append(ds)
    return out


def get_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dimse-get-") and t.is_alive()]


@pytest.fixture
def fake() -> Iterator[FakeScp]:
    scp = FakeScp(datasets=studies_of(5)).start()
    yield scp
    scp.stop()


# --------------------------------------------------------------------------------------------
# fault injection: C-FIND


def test_no_network_at_construction() -> None:
    conn = connector(1)  # nothing listens on port 1: construction must not notice
    assert conn.capabilities.relational and not conn.capabilities.fuzzy


def test_pending_ff01_answers_are_returned(fake: FakeScp) -> None:
    fake.pending_status = {0: 0xFF01, 2: 0xFF01}
    rows = search(connector(fake.port), Level.STUDY)
    assert sorted(values(rows, "0020000D")) == sorted(str(d.StudyInstanceUID) for d in fake.datasets)


def test_failure_status_names_status_and_connector(fake: FakeScp) -> None:
    fake.fail_with = lambda ident: 0xC001
    with pytest.raises(ConnectorError) as info:
        search(connector(fake.port), Level.STUDY)
    assert info.value.connector == "pacs1"
    assert "C-FIND failed: 0xC001 (Unable to process)" in info.value.message
    assert not isinstance(info.value, ConnectorTimeout)


def test_out_of_resources_status(fake: FakeScp) -> None:
    fake.fail_with = lambda ident: 0xA700
    with pytest.raises(ConnectorError, match=r"0xA700 \(Refused: Out of resources\)"):
        search(connector(fake.port), Level.STUDY)


def test_slow_scp_times_out_within_request_bound(fake: FakeScp) -> None:
    fake.hold = 30
    conn = connector(fake.port, timeouts=Timeouts(connect=2, request=1.0, acse=5, dimse=20))
    started = time.monotonic()
    with pytest.raises(ConnectorTimeout):
        search(conn, Level.STUDY)
    assert time.monotonic() - started < 3.0
    assert fake.wait_for(lambda: fake.open_now == 0)  # the association was aborted


def test_silent_pacs_times_out_after_the_acse_time_out() -> None:
    # a port that accepts TCP and never answers the A-ASSOCIATE-RQ: timeouts.acse bounds it,
    # well before the request time-out
    with Blackhole() as hole:
        conn = connector(hole.port, timeouts=Timeouts(connect=2, request=10, acse=1, dimse=10))
        started = time.monotonic()
        with pytest.raises(ConnectorTimeout, match="within the ACSE time-out") as info:
            search(conn, Level.STUDY)
        elapsed = time.monotonic() - started
        assert hole.accepted == 1
    assert 0.9 <= elapsed < 3.0
    assert info.value.connector == "pacs1"


def test_held_c_find_times_out_after_the_dimse_time_out(fake: FakeScp) -> None:
    # the PACS accepts the association, then sends no C-FIND response: timeouts.dimse bounds it
    fake.hold = 30
    conn = connector(fake.port, timeouts=Timeouts(connect=2, request=10, acse=5, dimse=1))
    started = time.monotonic()
    with pytest.raises(ConnectorTimeout, match="C-FIND: no response within the DIMSE time-out"):
        search(conn, Level.STUDY)
    assert 0.9 <= time.monotonic() - started < 3.0
    assert fake.wait_for(lambda: fake.open_now == 0)  # the association was aborted


def test_idle_association_is_dropped_after_the_network_time_out(fake: FakeScp) -> None:
    # kept for reuse for 30 s, but timeouts.network (pynetdicom's idle timer) aborts it after
    # one second without traffic; the next search opens a new association
    conn = connector(fake.port, timeouts=Timeouts(connect=2, request=10, acse=5, dimse=10,
                                                  network=1), reuse_seconds=30)
    assert len(search(conn, Level.STUDY)) == 5
    assert fake.open_now == 1
    started = time.monotonic()
    # the socket's close may be seen before the A-ABORT's event: wait for both
    assert fake.wait_for(lambda: fake.open_now == 0 and fake.aborted == 1, timeout=4.0)
    assert 0.8 <= time.monotonic() - started < 3.0
    assert (fake.aborted, fake.releases) == (1, 0)
    assert len(search(conn, Level.STUDY)) == 5
    assert len(fake.proposed) == 2  # a second association


def test_cancel_after_offset_plus_limit(fake: FakeScp) -> None:
    fake.cancel_wait = 1.0
    # reuse off: the release that shows the cancelled association ended well comes at once
    result = connector(fake.port, reuse_seconds=0).search(
        parse_search(Level.STUDY, [("offset", "1"), ("limit", "2")]))
    expected = [str(d.StudyInstanceUID) for d in fake.datasets][1:3]
    assert values(result.datasets, "0020000D") == expected
    assert fake.produced == 3 and fake.cancelled == 1
    assert result.complete is False
    assert fake.wait_for(lambda: fake.releases == 1) and fake.aborted == 0


def test_no_cancel_when_everything_fits(fake: FakeScp) -> None:
    result = connector(fake.port).search(parse_search(Level.STUDY, [("limit", "10")]))
    assert len(result.datasets) == 5 and fake.cancelled == 0 and result.complete


def test_matching_values_translated(fake: FakeScp) -> None:
    uids = [str(d.StudyInstanceUID) for d in fake.datasets[:2]]
    search(connector(fake.port), Level.STUDY, ("StudyInstanceUID", ",".join(uids)),
           ("StudyDate", "20040101-20041231"), ("PatientName", "DOE*"), ("AccessionNumber", ""))
    ident = fake.identifiers[0]
    assert ident.QueryRetrieveLevel == "STUDY"
    assert list(ident.StudyInstanceUID) == uids  # PS3.4 C.2.2.2.2 list of UIDs
    assert ident.StudyDate == "20040101-20041231"  # C.2.2.2.5 range
    assert ident.PatientName == "DOE*"  # C.2.2.2.4 wildcard
    assert ident.AccessionNumber == ""  # C.2.2.2.3 universal
    assert "SpecificCharacterSet" in ident and "ModalitiesInStudy" in ident
    assert "RetrieveURL" not in ident


def test_empty_uid_list_matches_nothing_without_network() -> None:
    conn = connector(1)
    query = parse_search(Level.STUDY, [("StudyInstanceUID", "1.2.3")], {0x0020000D: "1.2.4"})
    assert conn.search(query).datasets == []


def test_latin1_answer_decoded_and_trimmed() -> None:
    ds = studies_of(1)[0]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "MRI KNEE LEFT "
    with FakeScp(datasets=[ds]) as scp:
        rows = search(connector(scp.port), Level.STUDY, ("includefield", "StudyDescription"))
    assert rows[0]["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]
    assert rows[0]["00081030"]["Value"] == ["MRI KNEE LEFT"]
    assert "00080005" not in rows[0] and "00080052" not in rows[0]


def test_fuzzy_sends_pn_universal_and_reports_unmatched(fake: FakeScp) -> None:
    query = parse_search(Level.STUDY, [("PatientName", "doe*"), ("fuzzymatching", "true"),
                                       ("limit", "2")])
    result = connector(fake.port).search(query)
    assert fake.identifiers[0].PatientName == ""
    assert result.unmatched == frozenset({0x00100010})
    assert len(result.datasets) == 5  # all candidates: the engine pages


def test_derived_study_keys_computed(fake: FakeScp) -> None:
    rows = search(connector(fake.port), Level.STUDY, ("PatientID", "PAT3"))
    assert rows[0]["00080061"]["Value"] == ["CT"]
    assert rows[0]["00201206"]["Value"] == [1]
    assert rows[0]["00201208"]["Value"] == [1]


def test_association_rejected() -> None:
    with (FakeScp(datasets=[], require_calling_aet=["SOMEONE"]) as scp,
          pytest.raises(ConnectorError, match="rejected") as info):
        search(connector(scp.port), Level.STUDY)
    assert not isinstance(info.value, ConnectorTimeout)


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectorError, match="cannot connect"):
        connector(port).check()


def test_check_is_c_echo(fake: FakeScp) -> None:
    connector(fake.port).check()
    assert fake.wait_for(lambda: fake.releases == 1)


def test_tcp_nodelay_is_set(fake: FakeScp) -> None:
    conn = connector(fake.port)
    link = conn._ready_link()
    with link.session([build_context(StudyRootQueryRetrieveInformationModelFind)],
                      deadline=link.deadline()) as session:
        sock = session.assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_max_associations_respected(fake: FakeScp) -> None:
    fake.hold = 0.3
    conn = connector(fake.port, max_associations=2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: search(conn, Level.STUDY), range(4)))
    expected = sorted(str(d.StudyInstanceUID) for d in fake.datasets)
    assert all(sorted(values(rows, "0020000D")) == expected for rows in results)
    assert fake.open_peak == 2


def test_waiting_for_a_free_association_is_bounded(fake: FakeScp) -> None:
    fake.hold = 2.0
    conn = connector(fake.port, max_associations=1,
                     timeouts=Timeouts(connect=2, request=0.5, acse=5, dimse=10))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(search, conn, Level.STUDY) for _ in range(2)]
        errors = [f.exception() for f in futures]
    assert all(isinstance(e, ConnectorTimeout) for e in errors), errors
    assert any("no free association" in str(e) for e in errors), errors


# --------------------------------------------------------------------------------------------
# relational / hierarchical


def hierarchical_only(ident: Dataset) -> int | None:
    """PS3.4 C.4.1.2.2.1: below STUDY, the unique keys above must be single values."""
    level = ident.QueryRetrieveLevel
    if level in ("SERIES", "IMAGE") and ident.get("StudyInstanceUID", "") in ("", None):
        return 0xC000
    if level == "IMAGE" and ident.get("SeriesInstanceUID", "") in ("", None):
        return 0xC000
    return None


def test_auto_falls_back_to_hierarchical_and_remembers(fake: FakeScp) -> None:
    fake.fail_with = hierarchical_only
    conn = connector(fake.port)
    rows = search(conn, Level.SERIES, ("Modality", "CT"))
    assert sorted(values(rows, "0020000E")) == sorted(str(d.SeriesInstanceUID) for d in fake.datasets)
    by_series = {str(d.SeriesInstanceUID): d for d in fake.datasets}
    for row in rows:  # study attributes copied from the study answers
        source = by_series[row["0020000E"]["Value"][0]]
        assert row["0020000D"]["Value"] == [str(source.StudyInstanceUID)]
        assert row["00100020"]["Value"] == [str(source.PatientID)]
        assert row["00201209"]["Value"] == [1]  # NumberOfSeriesRelatedInstances, derived
    assert conn.prefers_hierarchical
    relational_attempts = sum(1 for i in fake.identifiers if hierarchical_only(i))
    search(conn, Level.IMAGE, ("SOPInstanceUID", str(fake.datasets[2].SOPInstanceUID)))
    assert sum(1 for i in fake.identifiers if hierarchical_only(i)) == relational_attempts == 1


def test_auto_keeps_relational_queries_after_out_of_resources(fake: FakeScp) -> None:
    # 0xA700 (Refused: Out of resources) is the PACS's state of the moment: a 502 naming it,
    # and the next query is relational again, not one C-FIND per study from then on
    fake.fail_with = lambda ident: 0xA700
    conn = connector(fake.port)
    with pytest.raises(ConnectorError, match=r"0xA700 \(Refused: Out of resources\)"):
        search(conn, Level.SERIES, ("Modality", "CT"))
    assert not conn.prefers_hierarchical
    fake.fail_with = None
    rows = search(conn, Level.SERIES, ("Modality", "CT"))
    assert sorted(values(rows, "0020000E")) == sorted(str(d.SeriesInstanceUID) for d in fake.datasets)
    # both relational (SERIES without a study UID); hierarchical would have asked STUDY first
    levels = [i.QueryRetrieveLevel for i in fake.identifiers]
    assert "STUDY" not in levels
    assert sum(1 for i in fake.identifiers if hierarchical_only(i) and i.QueryRetrieveLevel == "SERIES") == 2


def test_hierarchical_instances_stop_when_enough(fake: FakeScp) -> None:
    conn = connector(fake.port, query_model="hierarchical")
    result = conn.search(parse_search(Level.IMAGE, [("limit", "2")]))
    assert values(result.datasets, "00080018") == [str(d.SOPInstanceUID) for d in fake.datasets[:2]]
    assert not any(hierarchical_only(i) for i in fake.identifiers)
    image_finds = [i for i in fake.identifiers if i.QueryRetrieveLevel == "IMAGE"]
    assert len(image_finds) == 2 and not result.complete


def test_relational_mode_sends_as_is(fake: FakeScp) -> None:
    fake.fail_with = hierarchical_only
    with pytest.raises(ConnectorError, match="0xC000"):
        search(connector(fake.port, query_model="relational"), Level.SERIES)


# --------------------------------------------------------------------------------------------
# fault injection: C-GET


def test_get_hang_up_mid_retrieval() -> None:
    with FakeScp(datasets=one_series(5), abort_after=2) as scp:
        ds = scp.datasets[0]
        conn = connector(scp.port)
        received: list[str] = []
        with pytest.raises(RetrieveIncomplete) as info:
            for part in conn.retrieve_instances(
                    ResourceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)), "*"):
                received.append(part.sop_instance_uid)
    assert received == [str(d.SOPInstanceUID) for d in scp.datasets[:2]]
    assert (info.value.expected, info.value.received, info.value.failed) == (5, 2, 3)
    assert info.value.connector == "pacs1"


def test_consumer_closing_early_aborts_association() -> None:
    with FakeScp(datasets=one_series(5)) as scp:
        ds = scp.datasets[0]
        conn = connector(scp.port)
        stream = conn.retrieve_instances(
            ResourceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)), "*")
        first = next(stream)
        stream.close()
        assert first.sop_instance_uid == str(ds.SOPInstanceUID)
        assert scp.wait_for(lambda: scp.aborted == 1)
        assert scp.wait_for(lambda: not get_threads())
        # the association slot was given back
        assert values(search(conn, Level.STUDY), "0020000D") == [str(ds.StudyInstanceUID)]


def test_get_returns_part10_in_stored_syntax() -> None:
    with FakeScp(datasets=one_series(3)) as scp:
        ds = scp.datasets[0]
        parts = list(connector(scp.port).retrieve_instances(
            ResourceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)), "*"))
    assert [p.sop_instance_uid for p in parts] == [str(d.SOPInstanceUID) for d in scp.datasets]
    assert {p.transfer_syntax for p in parts} == {"1.2.840.10008.1.2.1"}  # CT_small: explicit LE
    received = pydicom.dcmread(BytesIO(parts[0].data))
    assert received.PixelData == ds.PixelData
    # only the storage class found by the C-FIND, plus the C-GET model, was proposed
    get_model = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Q/R GET (PS3.4 C.6.2.1)
    assert [p for p in scp.proposed if get_model in p] == [{get_model, str(ds.SOPClassUID)}]


# PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255, so at most 128 per association
STORAGE = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70"]


def test_get_contexts_one_per_class_and_syntax_when_they_fit() -> None:
    proposed = contexts(STORAGE[:2], SYNTAXES, "pacs1")
    get_model = "1.2.840.10008.5.1.4.1.2.2.3"
    assert [str(cx.abstract_syntax) for cx in proposed] == [get_model] + [c for c in STORAGE[:2]
                                                                          for _ in SYNTAXES]
    assert [cx.transfer_syntax for cx in proposed[1:]] == [[t] for _ in range(2) for t in SYNTAXES]


def test_get_contexts_fall_back_to_one_per_class_beyond_128() -> None:
    # 50 classes x 3 syntaxes + the C-GET model = 151 contexts: too many, so one per class
    proposed = contexts(STORAGE[:50], SYNTAXES, "pacs1")
    assert len(proposed) == 51
    assert [str(cx.abstract_syntax) for cx in proposed[1:]] == STORAGE[:50]
    assert all(cx.transfer_syntax == SYNTAXES for cx in proposed[1:])


def test_get_contexts_refuse_more_classes_than_an_association_holds() -> None:
    classes = [f"1.2.3.{i}" for i in range(128)]  # + the C-GET model = 129
    with pytest.raises(ConnectorError, match="128 SOP classes do not fit") as info:
        contexts(classes, SYNTAXES, "pacs1")
    assert info.value.connector == "pacs1"
    assert len(contexts(classes[:127], SYNTAXES, "pacs1")) == 128


def test_get_specific_syntax() -> None:
    with FakeScp(datasets=one_series(2)) as scp:
        ds = scp.datasets[0]
        ref = ResourceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        conn = connector(scp.port)
        parts = list(conn.retrieve_instances(ref, "1.2.840.10008.1.2.1"))
        assert [p.transfer_syntax for p in parts] == ["1.2.840.10008.1.2.1"] * 2
        # the fake cannot re-encode explicit VR little endian to JPEG baseline
        with pytest.raises(NotAcceptable):
            list(conn.retrieve_instances(ref, "1.2.840.10008.1.2.4.50"))


def test_get_unknown_reference_is_not_found(fake: FakeScp) -> None:
    with pytest.raises(NotFound):
        next(connector(fake.port).retrieve_instances(ResourceRef("1.2.3.4"), "*"))


def test_c_move_without_a_storage_scp_is_an_error_naming_it(fake: FakeScp) -> None:
    conn = connector(fake.port, retrieve_method="C-MOVE")
    with pytest.raises(ConnectorError, match="C-MOVE needs gateway.storage-scp"):
        next(conn.retrieve_instances(ResourceRef("1.2.3.4"), "*"))


def test_retrieve_metadata_bulk_uris() -> None:
    with FakeScp(datasets=one_series(1)) as scp:
        ds = scp.datasets[0]
        ref = ResourceRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        meta = connector(scp.port).retrieve_metadata(ref, "http://gw/dicomweb")
    assert meta[0]["00080018"]["Value"] == [str(ds.SOPInstanceUID)]
    assert meta[0]["7FE00010"]["BulkDataURI"] == (
        f"http://gw/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulk/7FE00010")


# --------------------------------------------------------------------------------------------
# TLS


def _pki(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate whose key is
    protected by a passphrase, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key: Any, issuer: x509.Name, signer: Any, ca: bool,
             usage: Any = None, ip: bool = False) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if ip:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(signer, hashes.SHA256())

    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("Test CA", ca_key, name("Test CA"), ca_key, True)
    files = {"ca": tmp / "ca.pem", "server": tmp / "server.pem", "client": tmp / "client.pem"}
    files["ca"].write_bytes(ca.public_bytes(pem))
    for role, usage, ip in (("server", ExtendedKeyUsageOID.SERVER_AUTH, True),
                            ("client", ExtendedKeyUsageOID.CLIENT_AUTH, False)):
        key = ec.generate_private_key(ec.SECP256R1())
        crt = cert(f"{role} GATEWAY", key, ca.subject, ca_key, False, usage, ip)
        encryption = (serialization.BestAvailableEncryption(b"changeit") if role == "client"
                      else serialization.NoEncryption())
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, encryption)
        files[role].write_bytes(crt.public_bytes(pem) + key_pem)
    return files


def _server_context(files: dict[str, Path]) -> Any:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["server"])
    context.load_verify_locations(cafile=files["ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_tls_round_trip_with_client_certificate(tmp_path: Path) -> None:
    files = _pki(tmp_path)
    with FakeScp(datasets=studies_of(2), ssl_context=_server_context(files)) as scp:
        conn = connector(
            scp.port, tls=Tls(mode=True, need_client_authentication=True),
            key_store=KeyStore(url=f"file://{files['client']}", key_store_password="changeit"),
            trust_store=TrustStore(url=str(files["ca"])))
        rows = search(conn, Level.STUDY)
        link = conn._ready_link()
        with link.session([build_context(StudyRootQueryRetrieveInformationModelFind)],
                          deadline=link.deadline()) as session:
            sock = session.assoc.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
    assert sorted(values(rows, "0020000D")) == sorted(str(d.StudyInstanceUID) for d in scp.datasets)
    subjects = [dict(x[0] for x in c["subject"])["commonName"] for c in scp.peer_certificates]
    assert subjects and set(subjects) == {"client GATEWAY"}


def test_tls_untrusted_server_fails(tmp_path: Path) -> None:
    files = _pki(tmp_path)
    (tmp_path / "other").mkdir()
    other = _pki(tmp_path / "other")  # a CA that did not sign the server's certificate
    with FakeScp(datasets=[], ssl_context=_server_context(files)) as scp:
        conn = connector(scp.port, tls=Tls(mode=True),
                         key_store=KeyStore(url=str(files["client"]), password="changeit"),
                         trust_store=TrustStore(url=str(other["ca"])))
        with pytest.raises(ConnectorError, match="TLS"):
            conn.check()


def test_client_authentication_needs_a_key_store(fake: FakeScp) -> None:
    conn = connector(fake.port, tls=Tls(mode=True, need_client_authentication=True))
    with pytest.raises(ConnectorError, match="requires a keyStore"):
        conn.check()


# --------------------------------------------------------------------------------------------
# real PACS: Orthanc's DICOM port (relational) and dcmqrscp (strictly hierarchical)


UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


@pytest.fixture(params=["orthanc", "dcmqrscp"])
def pacs(request: pytest.FixtureRequest) -> DimseConnector:
    server = request.getfixturevalue(request.param)
    port = server.dicom_port if request.param == "orthanc" else server.port
    conn = connector(port, aet=server.aet,
                     timeouts=Timeouts(connect=5, request=60, acse=10, dimse=30, network=60))
    conn.pacs_kind = request.param  # type: ignore[attr-defined]
    return conn


def dcmqrscp_port(conn: DimseConnector) -> int | None:
    return conn.dimse.port if getattr(conn, "pacs_kind", "") == "dcmqrscp" else None


def _samples_in(study: str) -> list[dict[str, Any]]:
    return [dict(i) for i in truth.sample_index().values() if i["StudyInstanceUID"] == study]


def test_real_study_search_matches_ground_truth(pacs: DimseConnector) -> None:
    rows = search(pacs, Level.STUDY)
    assert sorted(values(rows, "0020000D")) == truth.studies()
    for row in rows:
        infos = _samples_in(row["0020000D"]["Value"][0])
        assert values([row], "00100020") == [infos[0]["PatientID"] or None]
        assert row["00080061"]["Value"] == sorted({i["Modality"] for i in infos})
        assert row["00201206"]["Value"] == [len({i["SeriesInstanceUID"] for i in infos})]
        assert row["00201208"]["Value"] == [len(infos)]


def test_real_study_search_by_patient_id(pacs: DimseConnector) -> None:
    info = truth.sample_index()["CT_small.dcm"]
    rows = search(pacs, Level.STUDY, ("PatientID", info["PatientID"]))
    assert values(rows, "0020000D") == [info["StudyInstanceUID"]]
    assert rows[0]["00100010"]["Value"] == [{"Alphabetic": info["PatientName"]}]
    assert rows[0]["00080020"]["Value"] == [info["StudyDate"]]


def test_real_series_and_instances_of_a_study(pacs: DimseConnector) -> None:
    for study in truth.studies():
        rows = search(pacs, Level.SERIES, path={0x0020000D: study})
        assert sorted(values(rows, "0020000E")) == truth.series_of(study)
        for row in rows:
            series = row["0020000E"]["Value"][0]
            sops = truth.instances_of(series)
            assert row["00201209"]["Value"] == [len(sops)]
            assert values([row], "00080060") == [truth.info_of(sops[0])["Modality"]]
            instances = search(pacs, Level.IMAGE, path={0x0020000D: study, 0x0020000E: series})
            assert sorted(values(instances, "00080018")) == sops


@pytest.mark.parametrize("model", ["auto", "hierarchical"])
def test_real_series_without_study(pacs: DimseConnector, model: str) -> None:
    pacs = connector(pacs.dimse.port, aet=pacs.dimse.aet, query_model=model)
    rows = search(pacs, Level.SERIES)
    index = truth.sample_index().values()
    expected = sorted({(i["SeriesInstanceUID"], i["StudyInstanceUID"]) for i in index})
    assert sorted(zip(values(rows, "0020000E"), values(rows, "0020000D"))) == expected
    patient_of = {i["SeriesInstanceUID"]: i["PatientID"] or None for i in index}
    assert all(patient_of[s] == p for s, p in zip(values(rows, "0020000E"),
                                                   values(rows, "00100020")))


@pytest.mark.parametrize("model", ["auto", "hierarchical"])
def test_real_instance_without_study(pacs: DimseConnector, model: str) -> None:
    pacs = connector(pacs.dimse.port, aet=pacs.dimse.aet, query_model=model)
    info = truth.sample_index()["MR_small.dcm"]
    rows = search(pacs, Level.IMAGE, ("SOPInstanceUID", info["SOPInstanceUID"]))
    assert values(rows, "00080018") == [info["SOPInstanceUID"]]
    assert values(rows, "0020000D") == [info["StudyInstanceUID"]]
    assert values(rows, "0020000E") == [info["SeriesInstanceUID"]]
    every = search(pacs, Level.IMAGE)
    assert sorted(values(every, "00080018")) == sorted(
        i["SOPInstanceUID"] for i in truth.sample_index().values())


def test_real_paging(pacs: DimseConnector) -> None:
    everything = values(search(pacs, Level.STUDY), "0020000D")
    result = pacs.search(parse_search(Level.STUDY, [("offset", "1"), ("limit", "2")]))
    assert values(result.datasets, "0020000D") == everything[1:3]


def test_real_get_of_each_series_returns_the_stored_objects(pacs: DimseConnector) -> None:
    for study in truth.studies():
        for series in truth.series_of(study):
            parts = list(pacs.retrieve_instances(ResourceRef(study, series), "*"))
            assert sorted(p.sop_instance_uid for p in parts) == truth.instances_of(series)
            for part in parts:
                info = truth.info_of(part.sop_instance_uid)
                received = pydicom.dcmread(BytesIO(part.data))
                source = pydicom.dcmread(info["path"])
                stored = info["TransferSyntaxUID"]
                if pacs.dimse.port == dcmqrscp_port(pacs) and stored in UNCOMPRESSED:
                    # dcmqrscp sends through the first context accepted for the class and
                    # re-encodes implicit <-> explicit VR losslessly; compressed data as stored
                    assert part.transfer_syntax in UNCOMPRESSED
                else:
                    assert part.transfer_syntax == stored
                assert received.file_meta.TransferSyntaxUID == part.transfer_syntax
                assert received.SOPInstanceUID == info["SOPInstanceUID"]
                assert received.PixelData == source.PixelData


def test_real_get_unknown_series_is_not_found(pacs: DimseConnector) -> None:
    with pytest.raises(NotFound):
        next(pacs.retrieve_instances(ResourceRef(truth.studies()[0], "1.2.3.4.5"), "*"))


def test_real_check(pacs: DimseConnector) -> None:
    pacs.check()


def test_real_modalities_in_study_matching(pacs: DimseConnector) -> None:
    # dcmqrscp ignores this key (it does not support it): the connector matches it itself
    index = truth.sample_index().values()
    expected = sorted({i["StudyInstanceUID"] for i in index if i["Modality"] == "MR"})
    rows = search(pacs, Level.STUDY, ("ModalitiesInStudy", "MR"))
    assert sorted(values(rows, "0020000D")) == expected
    assert all("MR" in row["00080061"]["Value"] for row in rows)
