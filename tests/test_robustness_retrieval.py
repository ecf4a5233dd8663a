"""Trying to break the retrieval features of issue 3 (frames, rendered, bulk data, transcoding,
WADO-URI, C-MOVE), as an attacker or an unlucky network would.

The rules checked (DESIGN.md, README "Errors"): bad input is a clear 4xx naming the parameter;
a backend failure, including an object the archive sent damaged, is a 502 (504 when it timed
out) naming the connector; a partial answer says so in a Warning; never a traceback, a hang or
a 500; memory per request bounded; no patient data in logs above DEBUG.

Backends: the SQLite demo archive (the sample files), local DICOMweb upstreams that serve
damaged or crafted Part 10 objects (tests/robustness_retrieval_servers.py), and an in-process
pynetdicom Move SCP (tests/connectors/move_fakes.py) in front of the gateway's real storage SCP.
Expected values come from pydicom's reading of the sample files, from the standard, or from
the crafted objects themselves.

A test that exposes a bug asserts the correct behaviour and is marked xfail(strict=True), its
reason naming the bug; see the report of this file's author for causes and fixes.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
import yaml
from flask.testing import FlaskClient
from PIL import Image
from pydicom.dataset import Dataset

from gateway import create_app
from gateway.config import load_settings_from_dict
from gateway.errors import ConnectorError
from tests.connectors.move_fakes import FakeMoveScp
from tests.harness import samples
from tests.harness.ports import free_port
from tests.robustness_retrieval_servers import (
    ASSOCIATION_REFUSED,
    FAST,
    archive_serving,
    c_store,
    explicit,
    gateway_app,
    move_connector,
    part10,
    peak_memory,
    stranger_copy,
    trickle_after_first,
    web_connector,
    with_icon,
    with_string_value,
)
from tests.robustness_servers import (
    Blackhole,
    ServedApp,
    boundary_of,
    clone_series,
    hang_up_after,
    iter_records_text,
    split_multipart,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
INDEX = samples.sample_index()
CT, RTDOSE, US = (INDEX[n] for n in ("CT_small.dcm", "rtdose.dcm", "examples_ybr_color.dcm"))
DICOM = 'multipart/related; type="application/dicom"'
AS_STORED = f"{DICOM}; transfer-syntax=*"
SUCCESS, REFUSED_NOT_AUTHORIZED = 0x0000, 0x0124  # PS3.7 Annex C
#: A stranger's object is refused: 0x0124 "Refused: Not authorized", or no association at all
REFUSED = {REFUSED_NOT_AUTHORIZED, ASSOCIATION_REFUSED}
EVRLE, IVRLE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def uids_of(info: Any) -> tuple[str, str, str]:
    return info["StudyInstanceUID"], info["SeriesInstanceUID"], info["SOPInstanceUID"]


def instance_path(uids: tuple[str, str, str], root: str = "/dicomweb") -> str:
    return "{}/studies/{}/series/{}/instances/{}".format(root, *uids)


def wado_uri(uids: tuple[str, str, str], extra: str = "") -> str:
    return "/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}".format(*uids) + extra


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The JSON error body of a Flask test response, checked: `status`, no traceback."""
    text = response.get_data().decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text
    assert (response.status_code, response.mimetype) == (status, "application/json"), text[:300]
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status and body["error"]
    return body


def parts_of(response: Any) -> list[bytes]:
    """The parts of a complete multipart/related answer (Flask or requests response)."""
    body = response.get_data() if hasattr(response, "get_data") else response.content
    parts, closed = split_multipart(body, boundary_of(response.headers["Content-Type"]))
    assert closed
    return parts


def native_frame(info: Any, number: int) -> bytes:
    """Frame `number` as pydicom decodes it, little-endian bytes."""
    array = pydicom.dcmread(info["path"]).pixel_array
    frame = array[number - 1] if (info["NumberOfFrames"] or 1) > 1 else array
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()


def image_of(response: Any) -> Image.Image:
    return Image.open(io.BytesIO(response.get_data()))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    directory = tmp_path_factory.mktemp("demo")
    text = (ROOT / "config" / "gateway.yml").read_text().replace("var/demo", str(directory))
    app = create_app(load_settings_from_dict(yaml.safe_load(text)))
    yield app.test_client()
    app.extensions["gateway"].close()


# =========================================================================================
# 1. Bad and odd input (the demo archive)


@pytest.mark.parametrize(
    "frames",
    [
        "1-5",
        "1,,2",
        str(2**63),
        str(2**64 + 1),
        "0",
        "-1",
        "1.0",
        "+1",
        "\u0661",
        "1,",
        ",1",
        "1;2",
        "16",  # rtdose.dcm has 15 frames
        ",".join(["1"] * 10_001),
        ",".join(["1"] * 100_000),
    ],
    ids=lambda s: s if len(s) < 20 else f"{s.count(',') + 1}-frames",
)
def test_a_frame_list_that_is_not_frames_of_the_instance_is_400(
    demo: FlaskClient, frames: str
) -> None:
    response = demo.get(instance_path(uids_of(RTDOSE)) + "/frames/" + frames)
    assert error_of(response, 400).get("parameter") == "frames"


@pytest.mark.parametrize(
    ("frames", "numbers"), [(" 1", [1]), ("01", [1]), ("15,01,15", [15, 1, 15]), ("1%2C2", [1, 2])]
)
def test_frame_list_spellings_that_name_frames_are_served(
    demo: FlaskClient, frames: str, numbers: list[int]
) -> None:
    response = demo.get(instance_path(uids_of(RTDOSE)) + "/frames/" + frames)
    assert response.status_code == 200
    assert parts_of(response) == [native_frame(RTDOSE, n) for n in numbers]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("viewport=100000,100000", "viewport"),
        ("viewport=0,10", "viewport"),
        ("viewport=-1,10", "viewport"),
        ("viewport=nan,nan", "viewport"),
        ("viewport=10,10,1,1", "viewport"),
        ("viewport=10,10,999999999999,0,1,1", "viewport"),
        ("viewport=10,10,200,0,1,1", "viewport"),  # the region starts outside 128 x 128
        ("viewport=10,10,0,0,0,5", "viewport"),
        ("window=nan,nan", "window"),
        ("window=inf,1", "window"),
        ("window=1e999,1", "window"),
        ("window=40,0", "window"),
        ("window=40,-1", "window"),
        ("window=40,0.5", "window"),  # linear needs a width of at least 1 (PS3.3 C.11.2.1.2.1)
        ("window=40,400,gamma", "window"),
        ("window=40", "window"),
        ("window=40,400,linear,extra", "window"),
        ("quality=0", "quality"),
        ("quality=101", "quality"),
        ("quality=abc", "quality"),
        ("quality=50.5", "quality"),
        ("quality=99999999999999999999", "quality"),
    ],
)
def test_rendering_parameters_out_of_range_are_400_naming_them(
    demo: FlaskClient, query: str, parameter: str
) -> None:
    response = demo.get(instance_path(uids_of(CT)) + "/rendered?" + query)
    assert error_of(response, 400).get("parameter") == parameter


def _ct_values() -> Any:
    """CT_small.dcm after its Modality LUT (Rescale Slope / Intercept, PS3.3 C.11.1)."""
    ds = pydicom.dcmread(CT["path"])
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_extreme_but_valid_windows_render_as_the_standard_says(demo: FlaskClient) -> None:
    path = instance_path(uids_of(CT)) + "/rendered"
    png = {"Accept": "image/png"}
    # linear, center and width 1e308: every value is below c - 0.5 - (w - 1) / 2: black
    far = demo.get(path + "?window=1e308,1e308", headers=png)
    assert far.status_code == 200
    assert not np.asarray(image_of(far)).any()
    # sigmoid of a width near 0 (PS3.3 C.11.2.1.3.1): a step at the center, 127.5 on it
    step = demo.get(path + "?window=1,1e-300,sigmoid", headers=png)
    values = _ct_values()
    expected = np.where(values > 1, 255, np.where(values < 1, 0, 128)).astype(np.uint8)
    assert np.array_equal(np.asarray(image_of(step)), expected)
    # the largest viewport: 128 x 128 scaled up to 4096 x 4096 (aspect ratio 1)
    large = demo.get(path + "?viewport=4096,4096", headers=png)
    assert large.status_code == 200 and image_of(large).size == (4096, 4096)


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("image/webp", None),
        ("text/html", None),
        ("image/*;q=0", None),
        ("image/png;q=0, image/jpeg", "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/gif, image/png", "image/gif"),
    ],
)
def test_rendered_accept_headers(demo: FlaskClient, accept: str, media_type: str | None) -> None:
    response = demo.get(instance_path(uids_of(CT)) + "/rendered", headers={"Accept": accept})
    if media_type is None:
        error_of(response, 406)
        return
    assert response.mimetype == media_type and image_of(response).size == (128, 128)


@pytest.mark.parametrize(
    "accept",
    [
        f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50, {DICOM}; transfer-syntax=*;q=0.5",
        f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.2, {DICOM};q=0.9",
        f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50, */*;q=0.1",
    ],
    ids=["jpeg-then-as-stored", "big-endian-then-default", "jpeg-then-anything"],
)
def test_an_accept_that_also_allows_an_available_syntax_is_served(
    demo: FlaskClient, accept: str
) -> None:
    response = demo.get(instance_path(uids_of(CT)), headers={"Accept": accept})
    assert response.status_code == 200, response.get_data()[:300]
    assert parts_of(response) == [CT["path"].read_bytes()]  # stored as Explicit VR LE


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("", f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50"),
        ("", f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.2"),
        ("", 'multipart/related; type="application/dicom+xml"'),
        ("/frames/1,2", "image/jpeg"),  # a single-part type for two frames
        ("/frames/1", 'multipart/related; type="text/html"'),
        ("/frames/1", 'multipart/related; type="image/jpeg"'),  # native pixels: no encoder
    ],
)
def test_accept_headers_that_select_nothing_are_406(
    demo: FlaskClient, path: str, accept: str
) -> None:
    error_of(demo.get(instance_path(uids_of(CT)) + path, headers={"Accept": accept}), 406)


@pytest.mark.parametrize(
    ("extra", "status", "parameter"),
    [
        ("&requestType=wado", 400, "requestType"),
        ("&objectUID=1.2.3", 400, "objectUID"),
        ("&studyUID=1.2.3", 400, "studyUID"),
        ("&contentType=application/dicom&contentType=image/png", 400, "contentType"),
        ("&rows=0", 400, "rows"),
        ("&rows=-1", 400, "rows"),
        ("&rows=4097", 400, "rows"),
        ("&columns=5.0", 400, "columns"),
        ("&rows=" + "9" * 30, 400, "rows"),
        ("&frameNumber=2", 400, "frameNumber"),  # a single-frame object
        ("&frameNumber=0", 400, "frameNumber"),
        ("&contentType=application/dicom&frameNumber=1", 400, "frameNumber"),
        ("&transferSyntax=garbage", 400, "transferSyntax"),
        ("&contentType=application/dicom&transferSyntax=garbage", 400, "transferSyntax"),
        ("&contentType=application/dicom&transferSyntax=1.2..3", 400, "transferSyntax"),
        (
            (
                "&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2"
                "&transferSyntax=1.2.840.10008.1.2.1"
            ),
            400,
            "transferSyntax",
        ),
        ("&windowCenter=40", 400, "windowWidth"),
        ("&windowCenter=40&windowWidth=0", 400, "windowWidth"),
        ("&windowCenter=nan&windowWidth=400", 400, "windowCenter"),
        ("&windowCenter=1e999&windowWidth=400", 400, "windowCenter"),
        ("&region=0.5,0.5,0.5,0.6", 400, "region"),
        ("&region=0,0,2,1", 400, "region"),
        ("&region=nan,0,1,1", 400, "region"),
        ("&imageQuality=0", 400, "imageQuality"),
        ("&anonymize=yes", 400, "anonymize"),
        ("&charset=%22bad%22", 400, "charset"),
        ("&contentType=text/html", 406, None),
        ("&contentType=image/png;q=0", 406, None),
        ("&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2.4.50", 406, None),
        ("&contentType=application/dicom&transferSyntax=1.2.3.4", 406, None),
    ],
)
def test_wado_uri_parameter_abuse_is_a_4xx_naming_the_parameter(
    demo: FlaskClient, extra: str, status: int, parameter: str | None
) -> None:
    body = error_of(demo.get(wado_uri(uids_of(CT), extra)), status)
    assert body.get("parameter") == parameter


def test_wado_uri_odd_but_valid_requests(demo: FlaskClient) -> None:
    ct = uids_of(CT)
    listed = demo.get(wado_uri(ct, "&contentType=application/dicom,image/jpeg"))
    assert listed.mimetype == "application/dicom"
    assert listed.get_data() == CT["path"].read_bytes()
    tiny = demo.get(wado_uri(ct, "&rows=1&columns=1"))
    assert tiny.mimetype == "image/jpeg" and image_of(tiny).size == (1, 1)
    speck = demo.get(wado_uri(ct, "&region=0,0,1e-9,1e-9&contentType=image/png"))
    assert image_of(speck).size == (1, 1)  # the one pixel the region touches (9.5.1.2.5)
    # Weasis appends transferSyntax=*: the UID given beside it wins
    implicit = demo.get(
        wado_uri(ct, "&contentType=application/dicom&transferSyntax=*&transferSyntax=" + IVRLE)
    )
    got = pydicom.dcmread(io.BytesIO(implicit.get_data()))
    assert got.file_meta.TransferSyntaxUID == IVRLE
    assert got.PixelData == pydicom.dcmread(CT["path"]).PixelData
    last = demo.get(wado_uri(uids_of(RTDOSE), "&frameNumber=15&contentType=image/png"))
    assert last.status_code == 200 and image_of(last).size == (
        int(pydicom.dcmread(RTDOSE["path"]).Columns),
        int(pydicom.dcmread(RTDOSE["path"]).Rows),
    )
    past = demo.get(wado_uri(uids_of(RTDOSE), "&frameNumber=16"))
    assert error_of(past, 400).get("parameter") == "frameNumber"


@contextmanager
def _demo_with(tmp_path: Path, extra: dict[str, Any], order: str) -> Iterator[FlaskClient]:
    text = (ROOT / "config" / "gateway.yml").read_text().replace("var/demo", str(tmp_path))
    config = yaml.safe_load(text)
    config["connector"]["config"].update(extra)
    config["connector"]["default"] = order
    app = create_app(load_settings_from_dict(config))
    try:
        yield app.test_client()
    finally:
        app.extensions["gateway"].close()


@pytest.mark.parametrize("order", ["dead, demo", "demo, dead"])
def test_object_uid_lookup_with_a_dead_connector(tmp_path: Path, order: str) -> None:
    """Weasis' requireOnlySOPInstanceUID: an unknown UID while one archive is down cannot be
    a 404 (the dead one may hold it); a known UID is served from the live one."""
    dead = web_connector(f"http://127.0.0.1:{free_port()}", FAST)
    with _demo_with(tmp_path, {"dead": dead}, order) as client:
        unknown = client.get("/wado?requestType=WADO&objectUID=1.2.3.4.5.6")
        known = client.get(
            f"/wado?requestType=WADO&objectUID={CT['SOPInstanceUID']}&contentType=application/dicom"
        )
    assert error_of(unknown, 502)["connector"] == "dead"
    assert known.status_code == 200 and known.get_data() == CT["path"].read_bytes()


def test_object_uid_lookup_with_a_hanging_connector_is_504(tmp_path: Path) -> None:
    with Blackhole() as hole:
        hang = web_connector(f"http://127.0.0.1:{hole.port}", FAST | {"request": 2})
        with _demo_with(tmp_path, {"hang": hang}, "hang, demo") as client:
            started = time.monotonic()
            unknown = client.get("/wado?requestType=WADO&objectUID=1.2.3.4.5.6")
            elapsed = time.monotonic() - started
    assert error_of(unknown, 504)["connector"] == "hang" and elapsed < 8


ICON = bytes(range(16))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("00880200/0/7FE00010", ICON),
        ("00880200/000000/7FE00010", ICON),  # item 0, spelled with six digits
        ("00880200/0/7fe00010", ICON),
        ("7fe00010", None),  # filled in below: the image's own Pixel Data
        ("00880200/1/7FE00010", 404),
        ("00880200/999999/7FE00010", 404),
        ("00880200/0/7FE00010/0/7FE00010", 404),  # Pixel Data is not a sequence
        ("00880200/0/00280010", 404),  # Rows: not a binary value
        ("00081115/0/" * 1000 + "7FE00010", 404),
        ("00880200/0000000/7FE00010", 400),  # 7 digits
        ("00880200/0x0/7FE00010", 400),
        ("00880200/0/7FE0001G", 400),
        ("00880200//7FE00010", 400),
    ],
    ids=lambda p: p if isinstance(p, str) and len(p) < 40 else None,
)
def test_bulk_data_paths_into_sequence_items(path: str, expected: bytes | int | None) -> None:
    crafted = with_icon(CT["path"], ICON)
    with archive_serving(uids_of(CT), part10(crafted)) as url:
        app = gateway_app({"up": web_connector(url)})
        response = app.test_client().get(instance_path(uids_of(CT)) + "/bulk/" + path)
        app.extensions["gateway"].close()
    if isinstance(expected, int):
        body = error_of(response, expected)
        assert body.get("parameter") == ("bulk" if expected == 400 else None)
        return
    assert response.status_code == 200
    assert response.get_data() == (expected or crafted.PixelData)


def test_an_object_without_pixel_data() -> None:
    """README: frames of an object without pixel data are a 400 naming `frames`; WADO-URI
    sends it as application/dicom unless only rendered types are accepted (then 406)."""
    ds = explicit(CT["path"])
    del ds.PixelData
    data = part10(ds)
    uids = uids_of(CT)
    with archive_serving(uids, data) as url:
        app = gateway_app({"up": web_connector(url)})
        client = app.test_client()
        frames = client.get(instance_path(uids) + "/frames/1")
        rendered = client.get(instance_path(uids) + "/rendered")
        bulk = client.get(instance_path(uids) + "/bulk/7FE00010")
        default = client.get(wado_uri(uids))
        jpeg_only = client.get(wado_uri(uids, "&contentType=image/jpeg"))
        app.extensions["gateway"].close()
    assert error_of(frames, 400).get("parameter") == "frames"
    error_of(rendered, 400)
    error_of(bulk, 404)
    assert (default.mimetype, default.get_data()) == ("application/dicom", data)
    error_of(jpeg_only, 406)


# =========================================================================================
# 2. Damaged objects from an archive: 502 naming the connector, never 200 / 400 / 404 / 500


Made = tuple[tuple[str, str, str], bytes]  # the UIDs the upstream finds, the bytes it sends


def _truncated_native() -> Made:
    return uids_of(CT), CT["path"].read_bytes()[:-500]  # 500 bytes short of its Pixel Data


def _truncated_jpeg() -> Made:
    data = US["path"].read_bytes()  # 30 JPEG frames; cut inside the encapsulated Pixel Data
    return uids_of(US), data[: len(data) // 2]


def _frames_text(text: bytes) -> Callable[[], Made]:
    """RT dose (15 frames) with Number of Frames (0028,0008, IS) holding `text`."""

    def make() -> Made:
        data = part10(explicit(RTDOSE["path"]))
        return uids_of(RTDOSE), with_string_value(data, 0x00280008, text)

    return make


def _palette_without_lut() -> Made:
    ds = explicit(CT["path"])
    ds.PhotometricInterpretation = "PALETTE COLOR"  # PS3.3 C.7.6.3.1.5 needs the LUT module
    return uids_of(CT), part10(ds)


def _not_dicom() -> Made:
    return uids_of(CT), b"\x00" * 128 + b"DICM" + b"not a data set" * 40


DAMAGED: dict[str, Callable[[], Made]] = {
    "truncated-native": _truncated_native,
    "truncated-jpeg": _truncated_jpeg,
    "frames-abc": _frames_text(b"abc"),
    "frames-negative": _frames_text(b"-5"),
    "palette-without-lut": _palette_without_lut,
    "not-dicom": _not_dicom,
}
RESOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "frames": ("/frames/1", {}),
    "rendered": ("/rendered", {}),
    "bulk": ("/bulk/7FE00010", {}),
    "retrieve-default": ("", {}),  # Explicit VR Little Endian: decoded if compressed
    "retrieve-implicit": ("", {"Accept": f"{DICOM}; transfer-syntax={IVRLE}"}),
    "wado-default": ("?", {}),  # WADO-URI, image/jpeg for an image
    "wado-explicit": (f"?&contentType=application/dicom&transferSyntax={EVRLE}", {}),
}
DAMAGED_CASES = [
    pytest.param("truncated-native", "frames"),
    pytest.param("truncated-native", "rendered"),
    pytest.param("truncated-native", "wado-default"),
    pytest.param("truncated-native", "bulk"),
    pytest.param("truncated-native", "retrieve-implicit"),
    pytest.param("truncated-jpeg", "frames"),
    pytest.param("truncated-jpeg", "retrieve-default"),
    pytest.param("truncated-jpeg", "wado-explicit"),
    pytest.param("truncated-jpeg", "wado-default"),
    pytest.param("truncated-jpeg", "rendered"),
    pytest.param("truncated-jpeg", "bulk"),
    pytest.param("frames-abc", "frames"),
    pytest.param("frames-abc", "rendered"),
    pytest.param("frames-abc", "retrieve-implicit"),
    pytest.param("frames-negative", "frames"),
    pytest.param("palette-without-lut", "rendered"),
    *(pytest.param("not-dicom", resource) for resource in RESOURCES),
]


def _get_damaged(kind: str, resource: str) -> Any:
    uids, data = DAMAGED[kind]()
    suffix, headers = RESOURCES[resource]
    path = wado_uri(uids, suffix[1:]) if suffix.startswith("?") else instance_path(uids) + suffix
    with archive_serving(uids, data) as url:
        app = gateway_app({"up": web_connector(url)})
        try:
            return app.test_client().get(path, headers=headers)
        finally:
            app.extensions["gateway"].close()


@pytest.mark.parametrize(("kind", "resource"), DAMAGED_CASES)
def test_a_damaged_object_is_a_502_naming_the_connector(kind: str, resource: str) -> None:
    assert error_of(_get_damaged(kind, resource), 502).get("connector") == "up"


def test_a_frame_found_damaged_after_the_first_cuts_the_stream_naming_the_connector() -> None:
    """RT dose with 15 frames whose NumberOfFrames says 16: frame 1 is whole, frame 16 is not
    in the Pixel Data. The response has started when that is found, so the stream ends
    without its close delimiter, and the error names the connector (not an anonymous 500)."""
    source = pydicom.dcmread(RTDOSE["path"])
    frame_bytes = source.Rows * source.Columns * source.BitsAllocated // 8
    data = with_string_value(part10(explicit(RTDOSE["path"])), 0x00280008, b"16")
    uids = uids_of(RTDOSE)
    with archive_serving(uids, data) as url:
        app = gateway_app({"up": web_connector(url)})
        try:
            response = app.test_client().get(
                instance_path(uids) + "/frames/1,16",
                headers={"Accept": 'multipart/related; type="application/octet-stream"'},
                buffered=False,
            )
            assert response.status_code == 200
            chunks = response.iter_encoded()
            received = next(chunks) + next(chunks)  # the opening delimiter, then frame 1
            with pytest.raises(ConnectorError) as raised:
                next(chunks)
            response.close()
        finally:
            app.extensions["gateway"].close()
    assert raised.value.connector == "up"
    assert source.PixelData[:frame_bytes] in received
    assert not received.endswith(b"--\r\n")


def test_damaged_objects_leave_no_patient_data_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for kind in ("truncated-native", "truncated-jpeg", "frames-abc", "palette-without-lut"):
        for resource in ("frames", "rendered", "retrieve-default", "wado-default"):
            _get_damaged(kind, resource)  # the answers are checked above; here, the logs
    private = [
        str(pydicom.dcmread(info["path"], stop_before_pixels=True).PatientName)
        for info in (CT, US, RTDOSE)
    ]
    private += [uid for info in (CT, US, RTDOSE) for uid in uids_of(info)]
    leaks = [
        text[:200]
        for level, text in iter_records_text(caplog.records)
        if level >= logging.INFO and any(p in text for p in private)
    ]
    assert leaks == []


# =========================================================================================
# 3. A decompression bomb: a few kilobytes that decode to hundreds of megabytes

BOMB_FRAMES, BOMB_SIDE = 24, 4096  # 24 frames of 16 MiB once decoded: 384 MiB
MEMORY_BUDGET = 256 * 1024 * 1024  # far above one frame, far below the decoded object


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        pytest.param("/dicomweb/studies/{}/series/{}/instances/{}", ""),
        pytest.param(
            "/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}"
            f"&contentType=application/dicom&transferSyntax={EVRLE}",
            "",
        ),
    ],
    ids=["wado-rs-default-accept", "wado-uri-explicit"],
)
def test_a_decompression_bomb_is_refused_or_streamed_in_bounded_memory(
    path: str, accept: str
) -> None:
    got = peak_memory(BOMB_FRAMES, BOMB_SIDE, path, accept)
    assert got["object"] < 64 * 1024  # the archive sent a few kilobytes
    assert got["status"] in (200, 406), got
    if got["status"] == 200:  # then the whole object, without holding it
        assert got["body"] >= BOMB_FRAMES * BOMB_SIDE * BOMB_SIDE
    assert got["growth"] < MEMORY_BUDGET, got


def test_one_frame_of_a_decompression_bomb_costs_one_frame() -> None:
    path = "/dicomweb/studies/{}/series/{}/instances/{}/frames/3"
    got = peak_memory(BOMB_FRAMES, BOMB_SIDE, path, "application/octet-stream")
    assert (got["status"], got["body"], got["nonzero"]) == (200, BOMB_SIDE * BOMB_SIDE, 0)
    assert got["growth"] < MEMORY_BUDGET, got


# =========================================================================================
# 4. Slow networks: the look-ahead and the search for the archive holding a resource


def test_a_trickling_upstream_does_not_hold_the_response_start() -> None:
    part = CT["path"].read_bytes()
    timeouts = FAST | {"read": 2, "request": 2}
    with (
        archive_serving(uids_of(CT), trickle_after_first(part, part)) as url,
        ServedApp(gateway_app({"up": web_connector(url, timeouts)})) as gw,
    ):
        started = time.monotonic()
        try:
            response = requests.get(
                f"{gw.url}/dicomweb/studies/{CT['StudyInstanceUID']}",
                headers={"Accept": AS_STORED},
                stream=True,
                timeout=(3, 6),
            )
        except requests.exceptions.ReadTimeout:
            pytest.fail(f"no response headers after {time.monotonic() - started:.1f} s")
        with response:
            body = b""
            for chunk in response.iter_content(4096):  # each read bounded by the time-out
                body += chunk
                if part in body:  # the first object, sent before the second has come
                    break
    assert response.status_code == 200
    assert part in body  # the first object, whole, before the second has come


def test_a_hanging_secondary_archive_does_not_slow_retrieval_from_the_first(
    tmp_path: Path,
) -> None:
    with Blackhole() as hole:
        hang = web_connector(f"http://127.0.0.1:{hole.port}", FAST | {"read": 6, "request": 6})
        with _demo_with(tmp_path, {"hang": hang}, "demo, hang") as client:
            started = time.monotonic()
            response = client.get(instance_path(uids_of(CT)) + "/frames/1")
            elapsed = time.monotonic() - started
    assert response.status_code == 200 and parts_of(response) == [native_frame(CT, 1)]
    assert elapsed < 3, f"{elapsed:.1f} s: the demo archive answers in milliseconds"


# =========================================================================================
# 5. C-MOVE: strangers at the storage SCP, a PACS that stalls, many moves, a client leaving

SCP_AET = "GWROBUST"
MOVE_TIMEOUTS = FAST | {"request": 30}


@contextmanager
def moving(
    datasets: list[Dataset],
    lookahead: int | None = None,
    timeouts: dict[str, float] | None = None,
    **switches: Any,
) -> Iterator[tuple[FakeMoveScp, ServedApp, int]]:
    """A Move SCP holding `datasets`, and the gateway served over HTTP with its storage SCP
    (AE title SCP_AET, registered in the fake as a move destination); yields the fake, the
    gateway and the storage SCP's port."""
    port = free_port()
    relay = tempfile.mkdtemp(prefix="rr-")  # short: a local socket path holds 107 bytes
    fake = FakeMoveScp(
        datasets=datasets, destinations={SCP_AET: ("127.0.0.1", port)}, **switches
    ).start()
    try:
        app = gateway_app(
            {"pacs": move_connector(fake.port, timeouts or MOVE_TIMEOUTS)},
            lookahead,
            **{"storage-scp": {"aet": SCP_AET, "port": port, "relay-dir": relay}},
        )
        with ServedApp(app) as served:
            yield fake, served, port
    finally:
        fake.stop()
        shutil.rmtree(relay, ignore_errors=True)


def series_url(base: str, ds: Dataset) -> str:
    return f"{base}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


def _in_background(url: str) -> tuple[threading.Thread, dict[str, requests.Response]]:
    got: dict[str, requests.Response] = {}

    def run() -> None:
        got["response"] = requests.get(url, headers={"Accept": AS_STORED}, timeout=(3, 30))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def _received(response: requests.Response) -> list[tuple[str, str]]:
    """(SOP Instance UID, PatientName) of each object of a complete answer, sorted."""
    out = []
    for data in parts_of(response):
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        out.append((str(ds.SOPInstanceUID), str(ds.PatientName)))
    return sorted(out)


def _as_sent(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return sorted((str(ds.SOPInstanceUID), str(ds.PatientName)) for ds in datasets)


def test_a_forged_move_originator_cannot_add_an_object_to_another_retrieval() -> None:
    datasets = clone_series(CT["path"], 3)
    with moving(datasets, hold_after=1) as (fake, gw, port):
        thread, got = _in_background(series_url(gw.url, datasets[0]))
        assert fake.wait_for(lambda: len(fake.stores) == 1, 10)
        assert fake.move_ids == [1]  # Message IDs count from 1: nothing to guess
        rogue = stranger_copy(datasets[0], "ROGUE^INJECTED", new_uid=True)
        statuses = c_store(port, SCP_AET, [rogue], ("GATEWAY", 1))
        fake.go.set()
        thread.join(30)
    assert len(statuses) == 1 and set(statuses) <= REFUSED
    assert got["response"].status_code == 200
    assert _received(got["response"]) == _as_sent(datasets)


@pytest.mark.parametrize("originator", [("GATEWAY", 1), None], ids=["forged-id", "no-originator"])
def test_a_stranger_cannot_replace_an_instance_a_retrieval_waits_for(
    originator: tuple[str, int] | None,
) -> None:
    datasets = clone_series(CT["path"], 3)
    with moving(datasets, hold_after=1) as (fake, gw, port):
        thread, got = _in_background(series_url(gw.url, datasets[0]))
        assert fake.wait_for(lambda: len(fake.stores) == 1, 10)
        forged = stranger_copy(datasets[1], "FORGED^CONTENT", new_uid=False)
        statuses = c_store(port, SCP_AET, [forged], originator)
        fake.go.set()
        thread.join(30)
    assert len(statuses) == 1 and set(statuses) <= REFUSED
    assert _received(got["response"]) == _as_sent(datasets)


def test_unsolicited_objects_are_refused_and_retrieval_still_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    datasets = clone_series(CT["path"], 3)
    strangers = [stranger_copy(datasets[0], "ZEBRA^UNSOLICITED", new_uid=True) for _ in range(30)]
    caplog.set_level(logging.INFO)
    with moving(datasets) as (_fake, gw, port):
        flood = c_store(port, SCP_AET, strangers, None)
        nobody = c_store(port, SCP_AET, strangers[:1], ("GATEWAY", 4321))
        response = requests.get(
            series_url(gw.url, datasets[0]), headers={"Accept": AS_STORED}, timeout=(3, 30)
        )
        router = gw.app.extensions["gateway"].storage_scp.router
        assert wait_for(lambda: len(router) == 0, 5)
    assert len(flood) == 30 and set(flood) <= REFUSED
    assert len(nobody) == 1 and set(nobody) <= REFUSED
    assert response.status_code == 200 and _received(response) == _as_sent(datasets)
    private = ["ZEBRA", *(str(ds.SOPInstanceUID) for ds in strangers)]
    leaks = [t for _, t in iter_records_text(caplog.records) if any(p in t for p in private)]
    assert leaks == []


def test_a_pacs_that_never_finishes_the_move_is_a_206_with_a_warning() -> None:
    datasets = clone_series(CT["path"], 3)
    timeouts = MOVE_TIMEOUTS | {"dimse": 1}
    with moving(datasets, timeouts=timeouts, hold_after=1) as (_fake, gw, _port):
        started = time.monotonic()
        response = requests.get(
            series_url(gw.url, datasets[0]), headers={"Accept": AS_STORED}, timeout=(3, 20)
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 206 and elapsed < 10  # PS3.18 8.7: partial content
    assert _received(response) == _as_sent(datasets[:1])
    assert response.headers["Warning"].startswith('299 gateway "connector pacs:')
    assert "1 of 3" in response.headers["Warning"]


def test_twenty_concurrent_moves_each_get_their_own() -> None:
    series = [clone_series(CT["path"], 2) for _ in range(20)]
    # generous time-outs: 20 retrievals share 4 associations on a loaded 2-core machine
    patient = MOVE_TIMEOUTS | {"connect": 5, "acse": 10, "dimse": 20, "request": 90}
    with moving([ds for s in series for ds in s], timeouts=patient) as (fake, gw, _port):

        def one(datasets: list[Dataset]) -> tuple[int, list[tuple[str, str]]]:
            response = requests.get(
                series_url(gw.url, datasets[0]), headers={"Accept": AS_STORED}, timeout=(10, 120)
            )
            return response.status_code, _received(response)

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(one, series))
        router = gw.app.extensions["gateway"].storage_scp.router
        assert wait_for(lambda: len(router) == 0, 5)
    assert results == [(200, _as_sent(s)) for s in series]
    assert 1 <= fake.open_peak <= 4  # dimse.max-associations (default 4), never exceeded
    assert sorted(fake.move_ids) == list(range(1, 21))


def test_a_client_hanging_up_mid_move_cancels_it() -> None:
    datasets = clone_series(CT["path"], 6, pixel_bytes=512 * 1024)
    with moving(datasets, lookahead=0, hold_after=3) as (fake, gw, _port):
        path = series_url("", datasets[0])
        head = hang_up_after(gw.port, path, AS_STORED, 4096)
        assert head.startswith(b"HTTP/1.1 200")
        fake.go.set()  # the next object's write finds the client gone
        assert fake.wait_for(lambda: fake.moves_cancelled == 1, 10), "no C-CANCEL"
        assert fake.wait_for(lambda: fake.open_now == 0, 10), "association left open"
        router = gw.app.extensions["gateway"].storage_scp.router
        assert wait_for(lambda: len(router) == 0, 5)
    statuses = [status for _, status in fake.stores]
    assert statuses[0] == SUCCESS and len(statuses) < len(datasets)
