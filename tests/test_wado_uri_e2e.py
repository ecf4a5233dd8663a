"""End to end: WADO-URI (PS3.18 chapter 9) through one gateway served over HTTP, configured as
tests/test_e2e.py configures it against the real archives (Orthanc over DICOMweb with Basic
auth, Orthanc and dcmqrscp over DIMSE, Orthanc's PostgreSQL index through the DB connector),
driven with `requests` as Weasis would. Every object is compared with the sample file read
with pydicom."""

import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from gateway import create_app
from gateway.config import load_settings_from_dict
from gateway.views import wado_uri
from tests.harness import samples
from tests.harness.ports import free_port
from tests.test_e2e import ARCHIVES, UNCOMPRESSED, Served, gateway_config

TIMEOUT = 60  # seconds per request: a cold DIMSE association included


def with_wado_uri(app):
    if "wado_uri" not in app.blueprints:  # until create_app registers it
        app.register_blueprint(wado_uri.bp, url_prefix="/wado")
        app.register_blueprint(wado_uri.bp, url_prefix="/archives/<connector_id>/wado",
                               name="wado_uri_archive")
    return app


@pytest.fixture(scope="module")
def gateway(orthanc_auth, orthanc, dcmqrscp, orthanc_pg) -> Iterator[Served]:
    port = free_port()
    settings = load_settings_from_dict(
        gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port=port))
    served = Served(with_wado_uri(create_app(settings)), port)
    yield served
    served.close()


def params(info, only_sop, **extra):
    """The parameters Weasis sends (viewer-hub.md 3.3), in its order."""
    out = {"requestType": "WADO"}
    if not only_sop:
        out |= {"studyUID": info["StudyInstanceUID"], "seriesUID": info["SeriesInstanceUID"]}
    return out | {"objectUID": info["SOPInstanceUID"], **extra}


@pytest.mark.parametrize("only_sop", [False, True], ids=["all-uids", "objectUID-only"])
@pytest.mark.parametrize("name", UNCOMPRESSED)
@pytest.mark.parametrize("archive", ARCHIVES)
def test_each_archive_sends_the_sample_object(gateway, archive, name, only_sop):
    info = samples.sample_index()[name]
    r = requests.get(f"{gateway.url}/archives/{archive}/wado", timeout=TIMEOUT,
                     params=params(info, only_sop, contentType="application/dicom",
                                   transferSyntax="*"))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/dicom"
    got, source = pydicom.dcmread(io.BytesIO(r.content)), pydicom.dcmread(info["path"])
    assert got.SOPInstanceUID == info["SOPInstanceUID"]
    assert got.StudyInstanceUID == info["StudyInstanceUID"]
    assert got.PixelData == source.PixelData
    assert got.SeriesInstanceUID == info["SeriesInstanceUID"]
    if archive in ("web", "db"):  # Orthanc's copy of the file, as uploaded (C-GET re-encodes)
        assert r.content == info["path"].read_bytes()


@pytest.mark.parametrize("archive", ARCHIVES)
def test_each_archive_in_explicit_little_endian(gateway, archive):
    """Weasis' retry after a decoding failure: transferSyntax=1.2.840.10008.1.2.1. rtdose is
    stored Implicit VR Little Endian; the pixel values are the file's."""
    info = samples.sample_index()["rtdose.dcm"]
    r = requests.get(f"{gateway.url}/archives/{archive}/wado", timeout=TIMEOUT,
                     params=params(info, False, contentType="application/dicom",
                                   transferSyntax="1.2.840.10008.1.2.1"))
    assert r.status_code == 200, r.text
    got = pydicom.dcmread(io.BytesIO(r.content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(got.pixel_array, pydicom.dcmread(info["path"]).pixel_array)


@pytest.mark.parametrize("archive", ARCHIVES)
def test_each_archive_renders_a_frame(gateway, archive):
    """rtdose frame 8 as PNG: no window in the object, so the frame's range maps to 0..255."""
    info = samples.sample_index()["rtdose.dcm"]
    r = requests.get(f"{gateway.url}/archives/{archive}/wado", timeout=TIMEOUT,
                     params=params(info, True, contentType="image/png", frameNumber="8"))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    frame = pydicom.dcmread(info["path"]).pixel_array[7].astype(np.float64)
    expected = np.rint((frame - frame.min()) * 255 / (frame.max() - frame.min())).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected)


def test_the_merged_route_finds_an_instance_by_its_uid_alone(gateway):
    info = samples.sample_index()["MR_small.dcm"]
    r = requests.get(f"{gateway.url}/wado", timeout=TIMEOUT,
                     params=params(info, True, contentType="application/dicom"))
    assert r.status_code == 200
    got = pydicom.dcmread(io.BytesIO(r.content))
    assert got.PixelData == pydicom.dcmread(info["path"]).PixelData


def test_a_dead_connector_is_a_502_not_a_404(orthanc_auth, orthanc, dcmqrscp, orthanc_pg):
    """objectUID alone: the instance is found before the dead connector is asked; an unknown
    one cannot be said missing while an archive did not answer."""
    config = gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, dead_port=free_port())
    app = with_wado_uri(create_app(load_settings_from_dict(config)))
    try:
        info = samples.sample_index()["CT_small.dcm"]
        query = params(info, True, contentType="application/dicom")
        r = app.test_client().get("/wado", query_string=query)
        assert r.status_code == 200 and r.data == info["path"].read_bytes()
        r = app.test_client().get("/wado", query_string=params(
            {**info, "SOPInstanceUID": "1.2.3.4.5.6.7.8.9"}, True))
        assert r.status_code == 502 and r.get_json()["connector"] == "dead"
    finally:
        app.extensions["gateway"].close()
