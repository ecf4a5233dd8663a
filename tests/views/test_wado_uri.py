"""WADO-URI (PS3.18 chapter 9) through the Flask app on the embedded demo archive
(config/gateway.yml), checked against the sample files read with pydicom. Rendered images are
compared with a numpy rendering written here (the PS3.3 C.11.2.1.2.1 linear window, or the
frame's range when there is no window): PNG exactly, JPEG at quality 95 within a mean absolute
difference of 2 grey levels."""

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.harness import samples

ROOT = Path(__file__).resolve().parents[2]
INDEX = samples.sample_index()
CT, MR, RTDOSE = INDEX["CT_small.dcm"], INDEX["MR_small.dcm"], INDEX["rtdose.dcm"]
US_JPEG = INDEX["examples_ybr_color.dcm"]  # JPEG baseline, YBR_FULL_422, 30 frames
EVRLE = "1.2.840.10008.1.2.1"




def wado(info, extra="", only_sop=False, root="/wado"):
    """The URL Weasis builds (viewer-hub.md 3.3), plus `extra`."""
    uids = "" if only_sop else (
        f"&studyUID={info['StudyInstanceUID']}&seriesUID={info['SeriesInstanceUID']}")
    return f"{root}?requestType=WADO{uids}&objectUID={info['SOPInstanceUID']}{extra}"


DICOM = "&contentType=application%2Fdicom"


def linear(x, c, w):
    """PS3.3 C.11.2.1.2.1 onto 0..255, piecewise as the standard writes it."""
    x = np.asarray(x, dtype=np.float64)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y[x <= c - 0.5 - (w - 1) / 2] = 0
    y[x > c - 0.5 + (w - 1) / 2] = 255
    return np.rint(y).astype(np.uint8)


def frame_range(x):
    x = np.asarray(x, dtype=np.float64)
    return np.rint((x - x.min()) * 255 / (x.max() - x.min())).astype(np.uint8)


def image_of(response, fmt):
    assert response.status_code == 200, response.get_json()
    assert response.headers["Content-Type"] == f"image/{fmt.lower()}"
    image = Image.open(io.BytesIO(response.data))
    assert image.format == fmt
    return image


# -- application/dicom ---------------------------------------------------------------------


@pytest.mark.parametrize("only_sop", [False, True], ids=["all-uids", "objectUID-only"])
@pytest.mark.parametrize("name", samples.SAMPLE_NAMES)
def test_dicom_is_the_sample_file_byte_for_byte(client, name, only_sop):
    info = INDEX[name]
    r = client.get(wado(info, DICOM, only_sop))
    assert r.status_code == 200, r.get_json()
    assert r.headers["Content-Type"] == "application/dicom"
    assert r.data == Path(info["path"]).read_bytes()
    assert "Warning" not in r.headers


def test_weasis_additional_parameters_are_accepted(client):
    """Series syntax `*`, then the manifest's `&transferSyntax=*` and a parameter of its own."""
    r = client.get(wado(CT, f"{DICOM}&transferSyntax=*&transferSyntax=*&weasisOnly=1", True))
    assert r.status_code == 200 and r.data == Path(CT["path"]).read_bytes()


def test_head_has_the_headers_and_no_body(client):
    r = client.head(wado(CT, DICOM))
    assert r.status_code == 200 and r.data == b""
    assert r.headers["Content-Type"] == "application/dicom"
    assert int(r.headers["Content-Length"]) == Path(CT["path"]).stat().st_size


@pytest.mark.parametrize("only_sop", [False, True])
def test_weasis_retry_in_explicit_little_endian_decodes_to_pydicoms_pixels(client, only_sop):
    assert US_JPEG["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"
    r = client.get(wado(US_JPEG, f"{DICOM}&transferSyntax={EVRLE}", only_sop))
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/dicom"
    got = pydicom.dcmread(io.BytesIO(r.data))
    source = pydicom.dcmread(US_JPEG["path"])
    assert got.file_meta.TransferSyntaxUID == EVRLE
    assert got.SOPInstanceUID == US_JPEG["SOPInstanceUID"]
    assert np.array_equal(got.pixel_array, source.pixel_array)  # both YBR decoded to RGB


def test_a_valid_syntax_that_cannot_be_produced_is_406(client):
    """Uncompressed CT as JPEG baseline would add loss (PS3.18 8.7.3.5)."""
    r = client.get(wado(CT, f"{DICOM}&transferSyntax=1.2.840.10008.1.2.4.50"))
    assert r.status_code == 406 and r.get_json()["status"] == 406
    assert "transferSyntax=* (WADO-URI)" in r.get_json()["error"]  # this protocol's spelling


# -- rendered images -------------------------------------------------------------------------


def test_jpeg_is_the_default_and_fits_rows_and_columns(client):
    assert pydicom.dcmread(CT["path"]).Rows == 128
    image = image_of(client.get(wado(CT, "&rows=64&columns=32")), "JPEG")
    assert image.size == (32, 32)  # 128 x 128 fitted into 32 wide, 64 high


@pytest.mark.parametrize(("extra", "size"), [("&rows=64", (64, 64)), ("&columns=200", (200, 200)),
                                              ("", (128, 128))])
def test_one_side_bounds_that_side(client, extra, size):
    assert image_of(client.get(wado(CT, extra)), "JPEG").size == size


def test_weasis_thumbnail(client):
    url = wado(US_JPEG, "&contentType=image/jpeg&imageQuality=75&rows=60&columns=60", True)
    image = image_of(client.get(url), "JPEG")
    assert image.size == (60, 45)  # 320 x 240 kept at 4:3
    assert image.mode == "RGB"


def test_window_and_quality(client):
    """MR_small at quality 95, window 300/500 (no rescale in MR_small)."""
    r = client.get(wado(MR, "&windowCenter=300&windowWidth=500&imageQuality=95"))
    got = np.asarray(image_of(r, "JPEG"), dtype=np.int16)
    expected = linear(pydicom.dcmread(MR["path"]).pixel_array, 300, 500).astype(np.int16)
    assert np.abs(got - expected).mean() < 2


@pytest.mark.parametrize("frame", [1, 8, 15])
def test_frame_number_renders_that_frame(client, frame):
    frames = pydicom.dcmread(RTDOSE["path"]).pixel_array
    assert frames.shape == (15, 10, 10)
    r = client.get(wado(RTDOSE, f"&contentType=image/png&frameNumber={frame}"))
    assert np.array_equal(np.asarray(image_of(r, "PNG")), frame_range(frames[frame - 1]))
    r = client.get(wado(RTDOSE, f"&contentType=image/png&frameNumber={frame}"
                                "&windowCenter=1000000&windowWidth=300000", True))
    expected = linear(frames[frame - 1], 1000000, 300000)
    assert np.array_equal(np.asarray(image_of(r, "PNG")), expected)


def test_frames_differ_so_the_frame_test_means_something():
    frames = pydicom.dcmread(RTDOSE["path"]).pixel_array
    assert not np.array_equal(frame_range(frames[0]), frame_range(frames[7]))


def test_region_is_cut_before_scaling(client):
    """CT_small has no window: its frame's range after Rescale, then the left half."""
    ds = pydicom.dcmread(CT["path"])
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    r = client.get(wado(CT, "&contentType=image/png&region=0,0,0.5,1"))
    image = image_of(r, "PNG")
    assert image.size == (64, 128)
    assert np.array_equal(np.asarray(image), frame_range(values)[:, :64])


def test_content_type_list_in_preference_order(client):
    image_of(client.get(wado(CT, "&contentType=image/png,application/dicom")), "PNG")
    r = client.get(wado(CT, "&contentType=application/dicom,image/png"))
    assert r.headers["Content-Type"] == "application/dicom"
    image_of(client.get(wado(CT, "&contentType=image/gif")), "GIF")


def test_annotation_is_ignored_with_a_warning(client):
    r = client.get(wado(CT, "&annotation=patient"))
    image_of(r, "JPEG")
    assert r.headers.get_all("Warning") == [
        '299 gateway "parameter annotation is not supported and was ignored"']


def test_head_of_a_rendered_image(client):
    got, head = client.get(wado(CT, "&rows=32")), client.head(wado(CT, "&rows=32"))
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Type"] == "image/jpeg"
    assert head.headers["Content-Length"] == str(len(got.data))


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "parameter"),
    [
        (f"/wado?objectUID={CT['SOPInstanceUID']}", 400, "requestType"),
        ("/wado?requestType=WADO", 400, "objectUID"),
        ("/wado?requestType=WADO&objectUID=1.2.x", 400, "objectUID"),
        ((f"/wado?requestType=WADO&studyUID={CT['StudyInstanceUID']}"
          f"&objectUID={CT['SOPInstanceUID']}"), 400, "seriesUID"),
        (wado(CT, f"{DICOM}&transferSyntax=explicit"), 400, "transferSyntax"),
        (wado(CT, "&transferSyntax=1.2.840.10008.1.2.1"), 400, "transferSyntax"),
        (wado(CT, f"{DICOM}&rows=10"), 400, "rows"),
        (wado(CT, "&anonymize=yes"), 400, "anonymize"),
        (wado(CT, "&frameNumber=0"), 400, "frameNumber"),
        (wado(RTDOSE, "&frameNumber=16"), 400, "frameNumber"),  # 15 frames
        (wado(CT, "&frameNumber=2"), 400, "frameNumber"),  # single frame
        (wado(CT, "&windowCenter=40"), 400, "windowWidth"),
        (wado(CT, "&imageQuality=0"), 400, "imageQuality"),
        (wado(CT, "&region=0,0,2,1"), 400, "region"),
    ],
)
def test_errors_name_their_parameter(client, url, status, parameter):
    r = client.get(url)
    assert r.status_code == status
    body = r.get_json()
    assert body["status"] == status and body["parameter"] == parameter
    assert parameter in body["error"]


def test_an_unknown_content_type_is_406(client):
    r = client.get(wado(CT, "&contentType=text/html"))
    assert r.status_code == 406 and "contentType" in r.get_json()["error"]


@pytest.mark.parametrize("only_sop", [False, True])
def test_unknown_object_is_404(client, only_sop):
    info = {**CT, "SOPInstanceUID": "1.2.3.4.5.6.7.8.9"}
    r = client.get(wado(info, DICOM, only_sop))
    assert r.status_code == 404 and r.get_json()["status"] == 404


def test_an_object_under_another_series_is_404(client):
    info = {**CT, "SeriesInstanceUID": MR["SeriesInstanceUID"]}
    assert client.get(wado(info, DICOM)).status_code == 404


# -- one archive -----------------------------------------------------------------------------


@pytest.mark.parametrize("only_sop", [False, True])
def test_the_one_archive_route(client, only_sop):
    r = client.get(wado(RTDOSE, DICOM, only_sop, root="/archives/demo/wado"))
    assert r.status_code == 200 and r.data == Path(RTDOSE["path"]).read_bytes()


def test_an_unknown_archive_is_404(client):
    r = client.get(wado(RTDOSE, DICOM, root="/archives/nowhere/wado"))
    assert r.status_code == 404 and r.get_json()["error"] == "no such archive"
