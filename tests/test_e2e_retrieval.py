"""Issue 3 end to end: every WADO-RS retrieval resource through the gateway with dicomweb-client,
over every connector type, with C-GET and with C-MOVE (the gateway's own storage SCP, started by
create_app from `gateway.storage-scp`, registered as a move destination in Orthanc and dcmqrscp).
Ground truth: the sample files, decoded by pydicom."""

import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pydicom.encaps
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from gateway import create_app
from gateway.config import load_settings_from_dict
from tests.harness import samples
from tests.harness.dcmqrscp import start_dcmqrscp
from tests.harness.orthanc import start_orthanc
from tests.harness.ports import free_port
from tests.test_e2e import Served, gateway_config

MOVE_AET = "GWE2EMOVE"
ARCHIVES = ("web", "dimse-orthanc", "dimse-dcmqrscp", "db", "move-orthanc", "move-dcmqrscp")
RTDOSE = samples.sample_index()["rtdose.dcm"]  # 15 frames, uncompressed: every PACS can send it
CT = samples.sample_index()["CT_small.dcm"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, orthanc_auth, orthanc, dcmqrscp, orthanc_pg) -> Iterator[Served]:
    scp_port, port = free_port(), free_port()
    files = samples.sample_files()
    moving_orthanc = start_orthanc(tmp_path_factory.mktemp("o_move"),
                                   modalities={MOVE_AET: (MOVE_AET, "127.0.0.1", scp_port)})
    moving_dcmqrscp = start_dcmqrscp(tmp_path_factory.mktemp("q_move"),
                                     move_destinations={MOVE_AET: ("127.0.0.1", scp_port)})
    try:
        moving_orthanc.upload(files)
        moving_dcmqrscp.load(files)
        config = gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port=port)
        config["gateway"]["storage-scp"] = {"aet": MOVE_AET, "port": scp_port}
        for cid, pacs_port, aet in (("move-orthanc", moving_orthanc.dicom_port, moving_orthanc.aet),
                                    ("move-dcmqrscp", moving_dcmqrscp.port, moving_dcmqrscp.aet)):
            config["connector"]["config"][cid] = {"type": "DICOM", "dicom-connector": {"dimse": {
                "calling-aet": MOVE_AET, "aet": aet, "host": "127.0.0.1", "port": pacs_port,
                "retrieve-method": "C-MOVE"}}}
        served = Served(create_app(load_settings_from_dict(config)), port)
        yield served
        served.close()
    finally:
        moving_orthanc.stop()
        moving_dcmqrscp.stop()


def client(gateway, archive):
    return DICOMwebClient(f"{gateway.url}/archives/{archive}/dicomweb")


def pixels(info):
    return pydicom.dcmread(info["path"]).pixel_array


@pytest.mark.parametrize("archive", ARCHIVES)
def test_retrieve_series_with_c_get_and_c_move(gateway, archive):
    got = client(gateway, archive).retrieve_series(
        RTDOSE["StudyInstanceUID"], RTDOSE["SeriesInstanceUID"], media_types=(("application/dicom", "*"),))
    assert [ds.SOPInstanceUID for ds in got] == [RTDOSE["SOPInstanceUID"]]
    assert np.array_equal(got[0].pixel_array, pixels(RTDOSE))


@pytest.mark.parametrize("archive", ARCHIVES)
def test_retrieve_instance_frames(gateway, archive):
    frames = client(gateway, archive).retrieve_instance_frames(
        RTDOSE["StudyInstanceUID"], RTDOSE["SeriesInstanceUID"], RTDOSE["SOPInstanceUID"],
        frame_numbers=[1, 8, 15], media_types=("application/octet-stream",))
    source = pixels(RTDOSE)
    dtype = source.dtype.newbyteorder("<")
    for frame, number in zip(frames, (1, 8, 15), strict=True):
        assert frame == source[number - 1].astype(dtype).tobytes()


EMRI = samples.sample_index()["emri_small.dcm"]  # enhanced MR, 10 frames
US = samples.sample_index()["examples_ybr_color.dcm"]  # ultrasound, 30 frames, JPEG baseline


@pytest.mark.parametrize("archive", ARCHIVES)
def test_enhanced_mr_frames(gateway, archive):
    frames = client(gateway, archive).retrieve_instance_frames(
        EMRI["StudyInstanceUID"], EMRI["SeriesInstanceUID"], EMRI["SOPInstanceUID"],
        frame_numbers=[10, 1], media_types=("application/octet-stream",))
    source = pixels(EMRI)
    dtype = source.dtype.newbyteorder("<")
    assert frames == [source[9].astype(dtype).tobytes(), source[0].astype(dtype).tobytes()]


# dcmqrscp cannot send a compressed object over C-MOVE (tests/harness/dcmqrscp.py)
@pytest.mark.parametrize("archive", [a for a in ARCHIVES if a != "move-dcmqrscp"])
def test_ultrasound_jpeg_frames_as_stored_and_decoded(gateway, archive):
    web = client(gateway, archive)
    uids = (US["StudyInstanceUID"], US["SeriesInstanceUID"], US["SOPInstanceUID"])
    stored = web.retrieve_instance_frames(*uids, frame_numbers=[30], media_types=("image/jpeg",))
    fragments = list(pydicom.encaps.generate_frames(pydicom.dcmread(US["path"]).PixelData,
                                                    number_of_frames=30))
    assert stored[0].rstrip(b"\x00") == fragments[29].rstrip(b"\x00")
    decoded = web.retrieve_instance_frames(*uids, frame_numbers=[30],
                                           media_types=("application/octet-stream",))
    assert decoded[0] == pixels(US)[29].astype(np.uint8).tobytes()


US120 = samples.sample_index()["color3d_jpeg_baseline.dcm"]  # ultrasound, 120 frames, JPEG


@pytest.mark.parametrize("archive", [a for a in ARCHIVES if a != "move-dcmqrscp"])
def test_a_120_frame_ultrasound(gateway, archive):
    web = client(gateway, archive)
    uids = (US120["StudyInstanceUID"], US120["SeriesInstanceUID"], US120["SOPInstanceUID"])
    fragments = list(pydicom.encaps.generate_frames(pydicom.dcmread(US120["path"]).PixelData,
                                                    number_of_frames=120))
    got = web.retrieve_instance_frames(*uids, frame_numbers=[1, 60, 120], media_types=("image/jpeg",))
    assert [f.rstrip(b"\x00") for f in got] == [fragments[i].rstrip(b"\x00") for i in (0, 59, 119)]


@pytest.mark.parametrize("archive", ARCHIVES)
def test_retrieve_bulkdata_from_metadata(gateway, archive):
    web = client(gateway, archive)
    (metadata,) = web.retrieve_series_metadata(CT["StudyInstanceUID"], CT["SeriesInstanceUID"])
    assert web.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"]) == [
        pydicom.dcmread(CT["path"]).PixelData]


def window(frame, center, width):
    """PS3.3 C.11.2.1.2.1 linear VOI function to 8 bits, independent of the gateway's code."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out = ((frame - (center - 0.5)) / (width - 1) + 0.5) * 255
    out = np.where(frame <= low, 0, np.where(frame > high, 255, out))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("archive", ARCHIVES)
def test_retrieve_instance_and_series_rendered(gateway, archive):
    web = client(gateway, archive)
    source = pydicom.dcmread(CT["path"])
    stored = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    expected = window(stored, 40.0, 400.0)
    png = web.retrieve_instance_rendered(
        CT["StudyInstanceUID"], CT["SeriesInstanceUID"], CT["SOPInstanceUID"],
        media_types=("image/png",), params={"window": "40,400,linear"})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    jpeg = web.retrieve_series_rendered(CT["StudyInstanceUID"], CT["SeriesInstanceUID"],
                                        media_types=("image/jpeg",), params={"window": "40,400"})
    got = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 2  # JPEG is lossy; the default quality keeps it close
