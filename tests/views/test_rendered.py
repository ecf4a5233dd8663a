"""WADO-RS Retrieve Rendered and Thumbnail through the Flask app on the embedded demo archive,
checked against the sample files read with pydicom: the expected images are computed here with
the PS3.3 C.11.2.1.2 linear window (see tests/test_rendering.py for the functions). PNG must
match exactly; JPEG at quality 95 within a mean absolute difference of 2 and a maximum of 40."""

import email.parser
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.harness import samples
from tests.test_rendering import full_range, linear, modality

ROOT = Path(__file__).resolve().parents[2]
INDEX = samples.sample_index()
CT, MR, RTDOSE = INDEX["CT_small.dcm"], INDEX["MR_small.dcm"], INDEX["rtdose.dcm"]
US, SC_RLE = INDEX["examples_ybr_color.dcm"], INDEX["SC_rgb_rle.dcm"]
PNG = {"Accept": "image/png"}




def url(info, level="instance", root="/dicomweb"):
    path = f"{root}/studies/{info['StudyInstanceUID']}"
    if level in ("series", "instance"):
        path += f"/series/{info['SeriesInstanceUID']}"
    if level == "instance":
        path += f"/instances/{info['SOPInstanceUID']}"
    return path


def image_of(response, fmt):
    assert response.status_code == 200, response.get_json()
    image = Image.open(io.BytesIO(response.data))
    assert image.format == fmt
    return image


def ct_expected():
    ds = pydicom.dcmread(CT["path"])
    assert "WindowCenter" not in ds  # so the frame's range after Rescale is the window
    return full_range(modality(ds, ds.pixel_array))


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_png_at_every_level_is_the_ground_truth(client, level):
    r = client.get(f"{url(CT, level)}/rendered", headers=PNG)
    assert r.headers["Content-Type"] == "image/png"
    assert np.array_equal(np.asarray(image_of(r, "PNG")), ct_expected())


@pytest.mark.parametrize("accept", [None, "*/*", "image/jpeg", "text/html,image/*;q=0.8"])
def test_jpeg_is_the_default_and_within_tolerance(client, accept):
    r = client.get(f"{url(MR)}/rendered?quality=95", headers={"Accept": accept} if accept else {})
    assert r.headers["Content-Type"] == "image/jpeg"
    ds = pydicom.dcmread(MR["path"])
    expected = linear(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    got = np.asarray(image_of(r, "JPEG"), dtype=np.int16)
    diff = np.abs(got - expected.astype(np.int16))
    assert diff.mean() < 2 and diff.max() < 40


def test_accept_query_parameter(client):
    r = client.get(f"{url(CT)}/rendered?accept=image/png", headers={"Accept": "image/jpeg"})
    assert r.headers["Content-Type"] == "image/png"


def test_window_parameter(client):
    r = client.get(f"{url(MR)}/rendered?window=300,500,linear", headers=PNG)
    expected = linear(pydicom.dcmread(MR["path"]).pixel_array, 300, 500)
    assert np.array_equal(np.asarray(image_of(r, "PNG")), expected)


def test_frame_level_renders_that_frame(client):
    r = client.get(f"{url(RTDOSE)}/frames/3/rendered", headers=PNG)
    expected = full_range(pydicom.dcmread(RTDOSE["path"]).pixel_array[2])
    assert np.array_equal(np.asarray(image_of(r, "PNG")), expected)


def test_colour_object_keeps_its_colours(client):
    r = client.get(f"{url(SC_RLE)}/rendered", headers=PNG)
    arr = pydicom.dcmread(SC_RLE["path"]).pixel_array
    got = np.asarray(image_of(r, "PNG"))
    assert np.array_equal(got, arr)
    assert tuple(got[0, 0]) == (255, 0, 0) and tuple(got[25, 0]) == (0, 255, 0)


def first_part_of_study(client, info):
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    r = client.get(url(info, "study"), headers=accept)
    head = f"Content-Type: {r.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + r.data)
    return pydicom.dcmread(io.BytesIO(message.get_payload()[0].get_payload(decode=True)))


def test_study_of_two_instances_renders_the_first_the_archive_sends(client):
    first = first_part_of_study(client, SC_RLE)  # SC_rgb_rle and SC_rgb_jpeg_dcmtk share it
    r = client.get(f"{url(SC_RLE, 'study')}/rendered", headers=PNG)
    assert np.array_equal(np.asarray(image_of(r, "PNG")), first.pixel_array)


@pytest.mark.parametrize(
    ("path", "query", "size"),
    [
        ("thumbnail", "", (128, 96)),  # 320 x 240 into the default 128 x 128
        ("thumbnail", "?viewport=64,64", (64, 48)),
        ("rendered", "?viewport=100,100", (100, 75)),
        ("rendered", "", (320, 240)),
        ("frames/2/thumbnail", "", (128, 96)),
        ("rendered", "?viewport=50,50,10,20,40,20", (50, 25)),
    ],
)
def test_viewport_and_thumbnail_sizes(client, path, query, size):
    r = client.get(f"{url(US)}/{path}{query}")
    assert image_of(r, "JPEG").size == size


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_thumbnail_at_every_level(client, level):
    r = client.get(f"{url(CT, level)}/thumbnail", headers=PNG)
    assert image_of(r, "PNG").size == (128, 128)


def test_one_archive_route(client):
    r = client.get(f"{url(CT, 'instance', '/archives/demo/dicomweb')}/rendered", headers=PNG)
    assert np.array_equal(np.asarray(image_of(r, "PNG")), ct_expected())
    assert client.get(f"{url(CT, 'instance', '/archives/nope/dicomweb')}/rendered").status_code == 404


def test_unsupported_annotation_is_ignored_with_a_warning(client):
    r = client.get(f"{url(CT)}/rendered?annotation=patient")
    image_of(r, "JPEG")
    assert r.headers.getlist("Warning") == [
        '299 gateway "parameter annotation is not supported and was ignored"'
    ]


@pytest.mark.parametrize(
    ("suffix", "headers", "status", "parameter"),
    [
        ("rendered?quality=0", {}, 400, "quality"),
        ("rendered?quality=101", {}, 400, "quality"),
        ("rendered?viewport=0,10", {}, 400, "viewport"),
        ("thumbnail?viewport=-64,64", {}, 400, "viewport"),
        ("rendered?viewport=10,10,120,0,20,20", {}, 400, "viewport"),  # past CT's 128 columns
        ("rendered?window=40,0,linear", {}, 400, "window"),
        ("rendered?window=40,400,cubic", {}, 400, "window"),
        ("frames/0/rendered", {}, 400, "frames"),
        ("frames/2/rendered", {}, 400, "frames"),  # CT_small has one frame
        ("frames/1,2/rendered", {}, 400, "frames"),
        ("rendered", {"Accept": "application/dicom"}, 406, None),
        ("thumbnail", {"Accept": "image/webp"}, 406, None),
    ],
)
def test_errors_name_the_parameter(client, suffix, headers, status, parameter):
    r = client.get(f"{url(CT)}/{suffix}", headers=headers)
    assert r.status_code == status
    body = r.get_json()
    assert body["status"] == status and body.get("parameter") == parameter


def test_unknown_resources(client):
    assert client.get("/dicomweb/studies/1.2.3/rendered").status_code == 404
    r = client.get("/dicomweb/studies/1.2.x/thumbnail")
    assert (r.status_code, r.get_json()["parameter"]) == (400, "StudyInstanceUID")
