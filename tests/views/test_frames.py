"""WADO-RS Retrieve Frames through the Flask app on the embedded demo archive
(config/gateway.yml), checked against pydicom's reading of the same sample files: decoded
frames against pydicom's pixel data of that frame (little-endian bytes; 1-bit frames packed),
stored frames against pydicom.encaps.generate_frames, and PS3.18 10.4.1.1.3 / 8.7.3.3."""

import email.parser
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pack_bits

from tests.harness import samples

ROOT = Path(__file__).resolve().parents[2]
INDEX = samples.sample_index()
OCTET = {"Accept": 'multipart/related; type="application/octet-stream"'}
AS_STORED = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
EVRLE = "1.2.840.10008.1.2.1"




def url(name, frame_list, root="/dicomweb"):
    i = INDEX[name]
    return (f"{root}/studies/{i['StudyInstanceUID']}/series/{i['SeriesInstanceUID']}"
            f"/instances/{i['SOPInstanceUID']}/frames/{frame_list}")


def parts(response):
    """Parses a multipart/related body with the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + response.data)
    assert message.is_multipart()
    return [(p.get_content_type(), p.get_param("transfer-syntax"), p.get_payload(decode=True))
            for p in message.get_payload()]


def decoded(name, number):
    ds = pydicom.dcmread(INDEX[name]["path"])
    array = ds.pixel_array
    if (INDEX[name]["NumberOfFrames"] or 1) > 1:
        array = array[number - 1]
    if ds.BitsAllocated == 1:
        return pack_bits(array)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def stored(name, number):
    ds = pydicom.dcmread(INDEX[name]["path"])
    count = INDEX[name]["NumberOfFrames"] or 1
    return list(generate_frames(ds.PixelData, number_of_frames=count))[number - 1]


@pytest.mark.parametrize(
    ("name", "numbers"),
    [
        ("rtdose.dcm", [15, 1, 7]),
        ("emri_small.dcm", [10, 2, 2]),
        ("liver.dcm", [3, 1, 2]),  # 1-bit segmentation
        ("examples_ybr_color.dcm", [30, 1]),  # JPEG baseline, decoded
        ("693_J2KI.dcm", [1]),  # JPEG 2000, decoded
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", [1]),  # JPEG lossless, decoded
        ("SC_rgb_rle.dcm", [1]),  # RLE, decoded
        ("CT_small.dcm", [1]),
    ],
)
def test_octet_stream_frames_are_the_decoded_pixels_in_request_order(client, name, numbers):
    r = client.get(url(name, ",".join(map(str, numbers))), headers=OCTET)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith(
        'multipart/related; type="application/octet-stream"; boundary=')
    got = parts(r)
    assert [(t, s) for t, s, _ in got] == [("application/octet-stream", EVRLE)] * len(numbers)
    assert [body for _, _, body in got] == [decoded(name, n) for n in numbers]


@pytest.mark.parametrize(
    ("name", "numbers", "media_type"),
    [
        ("examples_ybr_color.dcm", [2, 30, 1], "image/jpeg"),
        ("693_J2KI.dcm", [1], "image/jp2"),
        ("SC_rgb_rle.dcm", [1], "image/dicom-rle"),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", [1], "image/jpeg"),
    ],
)
def test_compressed_frames_are_sent_as_stored_without_decoding(client, name, numbers, media_type):
    frame_list = ",".join(map(str, numbers))
    syntax = INDEX[name]["TransferSyntaxUID"]
    for headers, part_type in [(AS_STORED, "application/octet-stream"),
                               ({"Accept": f'multipart/related; type="{media_type}"'}, media_type)]:
        r = client.get(url(name, frame_list), headers=headers)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith(f'multipart/related; type="{part_type}"')
        got = parts(r)
        assert [(t, s) for t, s, _ in got] == [(part_type, syntax)] * len(numbers)
        assert [body for _, _, body in got] == [stored(name, n) for n in numbers]


def test_old_media_type_name_is_accepted_and_echoed(client):
    r = client.get(url("SC_rgb_rle.dcm", "1"),
                   headers={"Accept": 'multipart/related; type="image/x-dicom-rle"'})
    assert r.status_code == 200
    ((media_type, syntax, body),) = parts(r)
    assert (media_type, syntax) == ("image/x-dicom-rle", "1.2.840.10008.1.2.5")
    assert body == stored("SC_rgb_rle.dcm", 1)


@pytest.mark.parametrize(
    ("name", "number", "accept", "expected"),
    [
        ("examples_ybr_color.dcm", 5, "image/jpeg", stored),
        ("examples_ybr_color.dcm", 5, "application/octet-stream", decoded),
        ("rtdose.dcm", 4, "application/octet-stream", decoded),
    ],
)
def test_one_frame_with_a_single_part_accept_is_a_single_body(client, name, number, accept,
                                                             expected):
    r = client.get(url(name, str(number)), headers={"Accept": accept})
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0] == accept
    assert r.data == expected(name, number)


def test_a_browser_accept_gets_multipart_octet_stream(client):
    r = client.get(url("rtdose.dcm", "2"), headers={"Accept": "text/html,*/*;q=0.8"})
    assert r.status_code == 200
    ((media_type, _, body),) = parts(r)
    assert media_type == "application/octet-stream" and body == decoded("rtdose.dcm", 2)


def test_the_one_archive_route_serves_frames_too(client):
    r = client.get(url("rtdose.dcm", "3", root="/archives/demo/dicomweb"), headers=OCTET)
    assert r.status_code == 200
    ((_, _, body),) = parts(r)
    assert body == decoded("rtdose.dcm", 3)


@pytest.mark.parametrize(
    ("name", "frame_list", "headers", "status", "parameter"),
    [
        ("rtdose.dcm", "0", OCTET, 400, "frames"),
        ("rtdose.dcm", "1,16", OCTET, 400, "frames"),
        ("CT_small.dcm", "2", OCTET, 400, "frames"),
        ("liver.dcm", "x", OCTET, 400, "frames"),
        ("rtdose.dcm", "1", {"Accept": "application/dicom+json"}, 406, None),
        ("rtdose.dcm", "1,2", {"Accept": "application/octet-stream"}, 406, None),
        ("CT_small.dcm", "1", {"Accept": 'multipart/related; type="image/jpeg"'}, 406, None),
        ("examples_ybr_color.dcm", "1", {"Accept": 'multipart/related; type="image/jls"'}, 406,
         None),
    ],
)
def test_errors_are_json_with_status(client, name, frame_list, headers, status, parameter):
    r = client.get(url(name, frame_list), headers=headers)
    assert r.status_code == status
    body = r.get_json()
    assert body["status"] == status and body["error"]
    assert body.get("parameter") == parameter


def test_unknown_instance_is_404_and_bad_uid_is_400(client):
    i = INDEX["rtdose.dcm"]
    base = f"/dicomweb/studies/{i['StudyInstanceUID']}/series/{i['SeriesInstanceUID']}/instances"
    assert client.get(f"{base}/1.2.3.4/frames/1", headers=OCTET).status_code == 404
    r = client.get(f"{base}/1.2.x/frames/1", headers=OCTET)
    assert (r.status_code, r.get_json()["parameter"]) == (400, "SOPInstanceUID")
