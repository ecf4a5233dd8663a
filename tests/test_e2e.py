"""End to end: one gateway, configured with a connector of each type against real archives
(Orthanc over DICOMweb with Basic auth, Orthanc and dcmqrscp over DIMSE, Orthanc's PostgreSQL
index through the DB connector), served over HTTP and driven by dicomweb-client. Every answer is
compared with Orthanc's own direct answer and with the sample files."""

import threading
from collections.abc import Iterator

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from werkzeug.serving import make_server

from gateway import create_app
from gateway.config import load_settings_from_dict
from tests.harness import samples
from tests.harness.fixtures import ORTHANC_USERS
from tests.harness.orthanc_sql import ORTHANC_PG_COLUMNS, ORTHANC_PG_SELECT
from tests.harness.ports import free_port

ARCHIVES = ("web", "dimse-orthanc", "dimse-dcmqrscp", "db")
AS_STORED = (("application/dicom", "*"),)
#: Uncompressed samples: dcmqrscp has no codecs and serves only what it can send as stored.
UNCOMPRESSED = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm")


def gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, dead_port=None, port=None):
    login, password = ORTHANC_USERS
    config = {
        "web": {
            "type": "DICOM_WEB",
            "dicom-web-connector": {"qido-rs": {"authentication": {
                "type": "BASIC",
                "basic": {"login": login, "password": password,
                          "server": {"url": "http://127.0.0.1", "port": orthanc_auth.http_port,
                                     "context": "/dicom-web"}}}}},
        },
        "dimse-orthanc": {"type": "DICOM", "dicom-connector": {"dimse": {
            "calling-aet": "GATEWAY", "aet": orthanc.aet, "host": "127.0.0.1",
            "port": orthanc.dicom_port}}},
        "dimse-dcmqrscp": {"type": "DICOM", "dicom-connector": {"dimse": {
            "calling-aet": "GATEWAY", "aet": dcmqrscp.aet, "host": "127.0.0.1",
            "port": dcmqrscp.port}}},
        "db": {"type": "DB", "db-connector": {
            "uri": orthanc_pg.pg_url,
            "query": {"select": ORTHANC_PG_SELECT, **ORTHANC_PG_COLUMNS,
                      "file-path-column": "file_path",
                      "file-path-root": str(orthanc_pg.storage_dir)}}},
    }
    if dead_port is not None:
        config["dead"] = {"type": "DICOM", "dicom-connector": {"dimse": {
            "calling-aet": "GATEWAY", "aet": "NOBODY", "host": "127.0.0.1", "port": dead_port}}}
    # dicomweb-client sends `Host: 127.0.0.1` without the port, so the URLs the gateway emits
    # come from its configured public URL here
    public = {"public-url": f"http://127.0.0.1:{port}"} if port else {}
    return {"gateway": {"timeouts": {"request": 20, "connect": 3}, **public},
            "connector": {"config": config}}


class Served:
    def __init__(self, app, port):
        self.app = app
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.app.extensions["gateway"].close()


@pytest.fixture(scope="module")
def gateway(orthanc_auth, orthanc, dcmqrscp, orthanc_pg) -> Iterator[Served]:
    port = free_port()
    settings = load_settings_from_dict(
        gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port=port))
    served = Served(create_app(settings), port)
    yield served
    served.close()


@pytest.fixture(scope="module")
def direct(orthanc_auth):
    return DICOMwebClient(orthanc_auth.dicomweb_url,
                          session=create_session_from_user_pass(*ORTHANC_USERS))


def client(gateway, archive=None):
    root = f"/archives/{archive}/dicomweb" if archive else "/dicomweb"
    return DICOMwebClient(gateway.url + root)


def uids(answer, tag):
    return sorted(d[tag]["Value"][0] for d in answer)


@pytest.mark.parametrize("archive", ARCHIVES)
def test_search_every_resource_matches_orthanc(gateway, direct, archive):
    gw = client(gateway, archive)
    assert uids(gw.search_for_studies(), "0020000D") == uids(direct.search_for_studies(), "0020000D")
    assert uids(gw.search_for_studies(), "0020000D") == samples.studies()
    assert uids(gw.search_for_series(), "0020000E") == uids(direct.search_for_series(), "0020000E")
    assert uids(gw.search_for_instances(), "00080018") == uids(direct.search_for_instances(), "00080018")
    sc = samples.sample_index()["SC_rgb_rle.dcm"]
    study, series = sc["StudyInstanceUID"], sc["SeriesInstanceUID"]
    assert uids(gw.search_for_series(study), "0020000E") == [series]
    assert uids(gw.search_for_instances(study), "00080018") == samples.instances_of(series)
    assert uids(gw.search_for_instances(study, series), "00080018") == samples.instances_of(series)
    for data in gw.search_for_instances(study, series):
        sop = data["00080018"]["Value"][0]
        assert data["00081190"]["Value"] == [
            f"{gateway.url}/archives/{archive}/dicomweb/studies/{study}/series/{series}/instances/{sop}"]


@pytest.mark.parametrize("archive", ARCHIVES)
def test_filters_match_orthanc(gateway, direct, archive):
    gw = client(gateway, archive)
    for filters in ({"PatientID": "1CT1"}, {"StudyDate": "20040101-20041231"},
                    {"ModalitiesInStudy": "MR"}):
        assert uids(gw.search_for_studies(search_filters=filters), "0020000D") == uids(
            direct.search_for_studies(search_filters=filters), "0020000D"), filters
    assert uids(gw.search_for_series(search_filters={"Modality": "RTDOSE"}), "0020000E") == [
        samples.sample_index()["rtdose.dcm"]["SeriesInstanceUID"]]
    ct_or_mr = sorted({i["SeriesInstanceUID"] for i in samples.sample_index().values()
                       if i["Modality"] in ("CT", "MR")})
    assert uids(gw.search_for_series(search_filters={"Modality": "CT,MR"}), "0020000E") == ct_or_mr


@pytest.mark.parametrize("archive", ARCHIVES)
@pytest.mark.parametrize("name", UNCOMPRESSED)
def test_retrieve_series_same_instances_and_pixels_as_the_files(gateway, archive, name):
    info = samples.sample_index()[name]
    got = client(gateway, archive).retrieve_series(
        info["StudyInstanceUID"], info["SeriesInstanceUID"], media_types=AS_STORED)
    assert [ds.SOPInstanceUID for ds in got] == samples.instances_of(info["SeriesInstanceUID"])
    source = pydicom.dcmread(info["path"])
    assert got[0].PixelData == source.PixelData


@pytest.mark.parametrize("archive", ARCHIVES)
def test_retrieve_study_instance_and_metadata(gateway, archive):
    info = samples.sample_index()["CT_small.dcm"]
    gw = client(gateway, archive)
    study, series, sop = info["StudyInstanceUID"], info["SeriesInstanceUID"], info["SOPInstanceUID"]
    (ds,) = gw.retrieve_study(study, media_types=AS_STORED)
    assert ds.SOPInstanceUID == sop
    instance = gw.retrieve_instance(study, series, sop, media_types=AS_STORED)
    assert instance.PixelData == pydicom.dcmread(info["path"]).PixelData
    for metadata in (gw.retrieve_study_metadata(study), gw.retrieve_series_metadata(study, series),
                     gw.retrieve_instance_metadata(study, series, sop)):
        items = metadata if isinstance(metadata, list) else [metadata]
        assert [m["00080018"]["Value"][0] for m in items] == [sop]
        assert items[0]["00280010"]["Value"] == [pydicom.dcmread(info["path"]).Rows]
        assert items[0]["7FE00010"]["BulkDataURI"].startswith(
            f"{gateway.url}/archives/{archive}/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulk/")


@pytest.mark.parametrize("archive", ARCHIVES)
def test_bulk_data_uris_resolve_through_the_gateway(gateway, archive):
    info = samples.sample_index()["MR_small.dcm"]
    gw = client(gateway, archive)
    (metadata,) = gw.retrieve_series_metadata(info["StudyInstanceUID"], info["SeriesInstanceUID"])
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(gateway.url)
    assert gw.retrieve_bulkdata(uri) == [pydicom.dcmread(info["path"]).PixelData]


def test_merged_root_lists_each_study_once(gateway, direct):
    merged = client(gateway).search_for_studies()
    assert uids(merged, "0020000D") == samples.studies()


def test_a_dead_connector_among_healthy_ones_is_a_warning(orthanc_auth, orthanc, dcmqrscp, orthanc_pg):
    config = gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, dead_port=free_port())
    app = create_app(load_settings_from_dict(config))
    try:
        r = app.test_client().get("/dicomweb/studies")
        assert r.status_code == 200
        assert sorted(d["0020000D"]["Value"][0] for d in r.get_json()) == samples.studies()
        (warning,) = r.headers.getlist("Warning")
        assert warning.startswith('299 gateway "connector dead failed')
        assert "127.0.0.1" not in warning  # the PACS's address stays in the server's log
        r = app.test_client().get("/archives/dead/dicomweb/studies")
        assert r.status_code == 502 and r.get_json()["connector"] == "dead"
    finally:
        app.extensions["gateway"].close()
