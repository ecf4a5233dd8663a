"""The harness works against the real programs: every expected value is read from the sample
files with pydicom (harness.samples), never from the code under test."""

from __future__ import annotations

import psycopg
import pydicom
import requests
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from tests.harness.dcmqrscp import Dcmqrscp
from tests.harness.orthanc import Orthanc
from tests.harness.orthanc_sql import ORTHANC_PG_ALIASES, ORTHANC_PG_COLUMNS, ORTHANC_PG_SELECT
from tests.harness.samples import SAMPLE_NAMES, patients, sample_index, studies

TIMEOUT = 10.0
DICOM_JSON = {"Accept": "application/dicom+json"}
STUDY_UID_TAG = "0020000D"  # StudyInstanceUID (0020,000D)


def _study_uids(answer: list[dict[str, dict[str, list[str]]]]) -> list[str]:
    return sorted(item[STUDY_UID_TAG]["Value"][0] for item in answer)


def test_samples_are_distinct_instances() -> None:
    sops = [info["SOPInstanceUID"] for info in sample_index().values()]
    assert len(set(sops)) == len(SAMPLE_NAMES) == 11
    assert sample_index()["rtdose.dcm"]["NumberOfFrames"] == 15
    assert sample_index()["693_J2KI.dcm"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.91"


def test_orthanc_qido_lists_exactly_the_sample_studies(orthanc: Orthanc) -> None:
    response = requests.get(orthanc.dicomweb_url + "/studies", headers=DICOM_JSON, timeout=TIMEOUT)
    assert response.status_code == 200
    assert _study_uids(response.json()) == studies()


def test_orthanc_auth_requires_basic_credentials(orthanc_auth: Orthanc) -> None:
    url = orthanc_auth.dicomweb_url + "/studies"
    anonymous = requests.get(url, headers=DICOM_JSON, timeout=TIMEOUT)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = requests.get(url, headers=DICOM_JSON, auth=("alice", "wrong"), timeout=TIMEOUT)
    assert wrong.status_code == 401
    granted = requests.get(url, headers=DICOM_JSON, auth=("alice", "secret"), timeout=TIMEOUT)
    assert granted.status_code == 200
    assert _study_uids(granted.json()) == studies()


def test_dcmqrscp_answers_study_level_find(dcmqrscp: Dcmqrscp) -> None:
    ae = AE(ae_title="HARNESS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = TIMEOUT
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", dcmqrscp.port, ae_title=dcmqrscp.aet)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    found, statuses = [], []
    try:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            statuses.append(status.Status)
            if status.Status in (0xFF00, 0xFF01) and identifier is not None:  # Pending, C.4.1.1.4
                found.append(identifier.StudyInstanceUID)
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert sorted(found) == studies()


def test_dcmqrscp_stores_each_sample_in_its_own_transfer_syntax(dcmqrscp: Dcmqrscp) -> None:
    stored = sorted((dcmqrscp.workdir / "storage" / dcmqrscp.aet).glob("*.dcm"))
    syntaxes = {}
    for path in stored:
        meta = pydicom.filereader.read_file_meta_info(path)
        syntaxes[str(meta.MediaStorageSOPInstanceUID)] = str(meta.TransferSyntaxUID)
    expected = {i["SOPInstanceUID"]: i["TransferSyntaxUID"] for i in sample_index().values()}
    assert syntaxes == expected


def test_orthanc_pg_index_has_one_resource_per_level(orthanc_pg: Orthanc) -> None:
    """resourcetype in Orthanc's PostgreSQL index: 0 patient, 1 study, 2 series, 3 instance.
    Orthanc identifies a patient by PatientID alone (two samples share the empty one)."""
    with psycopg.connect(_libpq_url(orthanc_pg), connect_timeout=int(TIMEOUT)) as conn:
        rows = conn.execute(
            "SELECT resourcetype, count(*) FROM resources GROUP BY resourcetype"
        ).fetchall()
    assert dict(rows) == {
        0: len(patients()),
        1: len(studies()),
        2: len({i["SeriesInstanceUID"] for i in sample_index().values()}),
        3: len(SAMPLE_NAMES),
    }


def test_orthanc_pg_select_returns_one_row_per_instance(orthanc_pg: Orthanc) -> None:
    with psycopg.connect(_libpq_url(orthanc_pg), connect_timeout=int(TIMEOUT)) as conn:
        cursor = conn.execute(ORTHANC_PG_SELECT)
        names = [column.name for column in cursor.description or ()]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    by_sop = {row["sop_instance_uid"]: row for row in rows}
    assert len(rows) == len(by_sop) == len(SAMPLE_NAMES)
    for info in sample_index().values():
        row = by_sop[info["SOPInstanceUID"]]
        assert row["study_instance_uid"] == info["StudyInstanceUID"]
        assert row["series_instance_uid"] == info["SeriesInstanceUID"]
        assert row["sop_class_uid"] == info["SOPClassUID"]
        assert row["patient_id"] == info["PatientID"]
        assert row["patient_name"] == info["PatientName"]
        assert row["modality"] == info["Modality"]
        assert row["study_date"] == info["StudyDate"]
        stored = pydicom.dcmread(orthanc_pg.storage_dir / row["file_path"], stop_before_pixels=True)
        assert stored.SOPInstanceUID == info["SOPInstanceUID"]


def test_orthanc_pg_select_accepts_an_appended_uid_filter(orthanc_pg: Orthanc) -> None:
    series = sample_index()["SC_rgb_rle.dcm"]["SeriesInstanceUID"]
    same_series = sorted(
        i["SOPInstanceUID"] for i in sample_index().values() if i["SeriesInstanceUID"] == series
    )
    appended = ORTHANC_PG_SELECT + f" AND {ORTHANC_PG_COLUMNS['serie-instance-uid-column']} IN (%s)"
    wrapped = (
        f"SELECT * FROM ({ORTHANC_PG_SELECT}) AS instances"
        f" WHERE {ORTHANC_PG_ALIASES['serie-instance-uid-column']} IN (%s)"
    )
    with psycopg.connect(_libpq_url(orthanc_pg), connect_timeout=int(TIMEOUT)) as conn:
        for statement in (appended, wrapped):
            cursor = conn.execute(statement, (series,))
            names = [column.name for column in cursor.description or ()]
            sops = sorted(row[names.index("sop_instance_uid")] for row in cursor.fetchall())
            assert sops == same_series  # SC_rgb_rle.dcm and SC_rgb_jpeg_dcmtk.dcm
    assert len(same_series) == 2


def _libpq_url(server: Orthanc) -> str:
    assert server.pg_url is not None
    return server.pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
