"""QIDO-RS and WADO-RS through the Flask app on the embedded demo archive (config/gateway.yml),
checked against the sample files read with pydicom and against PS3.18."""

import email.parser
import io
import re
from pathlib import Path

import pydicom
import pytest
import yaml

from gateway import create_app
from gateway.config import load_settings_from_dict
from tests.harness import samples

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://localhost/dicomweb"
CT = samples.sample_index()["CT_small.dcm"]
RTDOSE = samples.sample_index()["rtdose.dcm"]
US = samples.sample_index()["examples_ybr_color.dcm"]
ANY = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}




def values(answer, key):
    return [d[key]["Value"][0] for d in answer if "Value" in d.get(key, {})]


def test_studies_lists_the_sample_studies_as_ps318_json(client):
    r = client.get("/dicomweb/studies")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/dicom+json"
    answer = r.get_json()
    assert sorted(values(answer, "0020000D")) == samples.studies()
    required = {"00080020", "00080030", "00080050", "00080056", "00080061", "00080090",
                "00081190", "00100010", "00100020", "00100030", "00100040", "0020000D",
                "00200010", "00201206", "00201208"}  # PS3.18 Table 10.6.3-3
    for data in answer:
        assert required <= set(data)
        assert list(data) == sorted(data)
        assert all(re.fullmatch(r"[0-9A-F]{8}", k) for k in data)
        assert all("Value" not in a or a["Value"] not in ([], [""]) for a in data.values())
    ct = next(d for d in answer if d["0020000D"]["Value"] == [CT["StudyInstanceUID"]])
    assert ct["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": CT["PatientName"]}]}
    assert ct["00201208"] == {"vr": "IS", "Value": [1]}
    assert ct["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert ct["00080020"] == {"vr": "DA", "Value": [CT["StudyDate"]]}
    assert ct["00081190"] == {"vr": "UR", "Value": [f"{BASE}/studies/{CT['StudyInstanceUID']}"]}


def test_series_and_instances_carry_the_ps318_attributes(client):
    study, series = CT["StudyInstanceUID"], CT["SeriesInstanceUID"]
    (row,) = client.get(f"/dicomweb/studies/{study}/series").get_json()
    # PS3.18 Table 10.6.3-4, plus the study's UID
    assert {"00080060", "0008103E", "0020000E", "00200011", "00201209", "00400244",
            "00400245", "00081190", "0020000D"} <= set(row)
    assert row["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert row["00201209"] == {"vr": "IS", "Value": [1]}
    assert row["00081190"]["Value"] == [f"{BASE}/studies/{study}/series/{series}"]
    (item,) = client.get(f"/dicomweb/studies/{study}/series/{series}/instances").get_json()
    # PS3.18 Table 10.6.3-5, plus the study's and the series' UIDs
    assert {"00080016", "00080018", "00080056", "00200013", "00280010", "00280011",
            "00280100", "00280008", "00081190", "0020000D", "0020000E"} <= set(item)
    ds = pydicom.dcmread(CT["path"], stop_before_pixels=True)
    assert item["00280010"] == {"vr": "US", "Value": [ds.Rows]}
    assert item["00280011"] == {"vr": "US", "Value": [ds.Columns]}
    assert item["00280100"] == {"vr": "US", "Value": [ds.BitsAllocated]}
    assert item["00080016"] == {"vr": "UI", "Value": [CT["SOPClassUID"]]}
    assert item["00280008"] == {"vr": "IS"}  # single-frame: required, unknown, so no Value
    assert item["00081190"]["Value"] == [
        f"{BASE}/studies/{study}/series/{series}/instances/{CT['SOPInstanceUID']}"]


def test_the_configured_maximum_caps_every_answer(tmp_path):
    data = yaml.safe_load((ROOT / "config" / "gateway.yml").read_text().replace("var/demo", str(tmp_path)))
    data.setdefault("gateway", {})["max-results"] = 3
    app = create_app(load_settings_from_dict(data))
    try:
        web = app.test_client()
        for query in ("", "?limit=50"):
            r = web.get(f"/dicomweb/studies{query}")
            assert r.status_code == 200 and len(r.get_json()) == 3
            assert r.headers["Warning"] == ('299 gateway "There are additional results that can '
                                            'be requested"')
        page = web.get("/dicomweb/studies?limit=3&offset=3").get_json()
        assert len(page) == 3
        assert not set(values(page, "0020000D")) & set(
            values(web.get("/dicomweb/studies").get_json(), "0020000D"))
    finally:
        app.extensions["gateway"].close()


def test_the_sc_study_counts_two_instances_in_one_series(client):
    sc = samples.sample_index()["SC_rgb_rle.dcm"]
    (data,) = client.get(f"/dicomweb/studies?StudyInstanceUID={sc['StudyInstanceUID']}").get_json()
    assert data["00201206"]["Value"] == [1] and data["00201208"]["Value"] == [2]


@pytest.mark.parametrize(
    ("path", "key", "expected"),
    [
        (f"/dicomweb/studies/{CT['StudyInstanceUID']}/series", "0020000E", [CT["SeriesInstanceUID"]]),
        ("/dicomweb/series?Modality=RTDOSE", "0020000E", [RTDOSE["SeriesInstanceUID"]]),
        (f"/dicomweb/studies/{US['StudyInstanceUID']}/series/{US['SeriesInstanceUID']}/instances",
         "00080018", [US["SOPInstanceUID"]]),
        (f"/dicomweb/studies/{CT['StudyInstanceUID']}/instances", "00080018", [CT["SOPInstanceUID"]]),
        (f"/dicomweb/instances?SOPInstanceUID={RTDOSE['SOPInstanceUID']}", "00280008", [15]),
        ("/dicomweb/instances/", "00080018",
         sorted(i["SOPInstanceUID"] for i in samples.sample_index().values())),
    ],
)
def test_every_search_resource(client, path, key, expected):
    r = client.get(path)
    assert r.status_code == 200
    assert sorted(values(r.get_json(), key)) == sorted(expected)


def test_unscoped_series_search_carries_study_attributes(client):
    (data,) = client.get("/dicomweb/series?Modality=RTDOSE").get_json()
    assert data["00100020"] == {"vr": "LO", "Value": [RTDOSE["PatientID"]]}
    assert data["0020000D"]["Value"] == [RTDOSE["StudyInstanceUID"]]
    assert data["00201209"] == {"vr": "IS", "Value": [1]}


def test_keyword_and_tag_give_the_same_answer(client):
    by_keyword = client.get("/dicomweb/studies?PatientID=1CT1").get_json()
    by_tag = client.get("/dicomweb/studies?00100020=1CT1").get_json()
    assert by_keyword == by_tag and values(by_keyword, "0020000D") == [CT["StudyInstanceUID"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PatientName=CompressedSamples*", ["1CT1", "4MR1"]),
        ("PatientName=compressedsamples*", []),
        ("PatientName=compressedsamples*&fuzzymatching=true", ["1CT1", "4MR1"]),
        ("PatientName=CompressedSamples^?T1", ["1CT1"]),
        ("StudyDate=20040101-20041231", ["1CT1", "4MR1"]),
        ("StudyDate=20160101-", ["", "ID1", "204", "204"]),  # 30- and 120-frame US studies
        ("StudyDate=-20030805", ["", "99000", "id11111"]),  # not 693_J2KI: no StudyDate
        ("StudyDate=20030805", ["id11111"]),
        (f"StudyInstanceUID={CT['StudyInstanceUID']},{RTDOSE['StudyInstanceUID']}", ["1CT1", "id11111"]),
        ("ModalitiesInStudy=MR", ["", "4MR1"]),
        ("PatientID=nobody", []),
    ],
)
def test_matching(client, query, expected):
    r = client.get(f"/dicomweb/studies?{query}")
    assert r.status_code == 200
    ids = [d["00100020"].get("Value", [""])[0] for d in r.get_json()]
    assert sorted(ids) == sorted(expected)


def test_includefield_adds_the_attribute(client):
    (data,) = client.get("/dicomweb/studies?PatientID=1CT1&includefield=StudyDescription").get_json()
    assert "00081030" in data
    (data,) = client.get("/dicomweb/studies?PatientID=1CT1").get_json()
    assert "00081030" not in data


@pytest.mark.parametrize(
    "query",
    ["includefield=StudyDescription,00321032", "includefield=StudyDescription&includefield=00321032",
     "includefield=all"],
    ids=["comma-separated", "repeated", "all"],
)
def test_includefield_forms(client, query):
    (data,) = client.get(f"/dicomweb/studies?PatientID=1CT1&{query}").get_json()
    description = pydicom.dcmread(CT["path"], stop_before_pixels=True).StudyDescription
    assert data["00081030"] == {"vr": "LO", "Value": [description]}
    if query != "includefield=all":
        assert data["00321032"] == {"vr": "PN"}  # RequestingPhysician: asked for, unknown here


def test_limit_offset_and_warning(client):
    r = client.get("/dicomweb/studies?limit=4&offset=0")
    first = values(r.get_json(), "0020000D")
    assert len(first) == 4
    assert r.headers.getlist("Warning") == ['299 gateway "There are additional results that can be requested"']
    rest = values(client.get("/dicomweb/studies?limit=10&offset=4").get_json(), "0020000D")
    assert sorted(first + rest) == samples.studies()
    assert client.get("/dicomweb/studies?limit=10&offset=4").headers.get("Warning") is None


@pytest.mark.parametrize(
    ("path", "headers", "status", "parameter"),
    [
        ("/dicomweb/studies?Nonsense=1", {}, 400, "Nonsense"),
        ("/dicomweb/studies?limit=x", {}, 400, "limit"),
        ("/dicomweb/studies?StudyDate=yesterday", {}, 400, "StudyDate"),
        ("/dicomweb/studies/1.2.x/series", {}, 400, "StudyInstanceUID"),
        ("/dicomweb/studies", {"Accept": "application/dicom+xml"}, 406, None),
        ("/archives/nope/dicomweb/studies", {}, 404, None),
        ("/dicomweb/studies/1.2.3", ANY, 404, None),
        ("/dicomweb/studies/1.2.3/metadata", {}, 404, None),
    ],
)
def test_errors_are_json_with_status(client, path, headers, status, parameter):
    r = client.get(path, headers=headers)
    assert r.status_code == status
    body = r.get_json()
    assert body["status"] == status and body["error"]
    assert body.get("parameter") == parameter


def test_nothing_matches_is_200_with_an_empty_array(client):
    r = client.get("/dicomweb/studies?PatientID=nobody")
    assert (r.status_code, r.get_json()) == (200, [])


def test_one_archive_route_points_its_urls_at_itself(client):
    (data,) = client.get("/archives/demo/dicomweb/studies?PatientID=1CT1").get_json()
    assert data["00081190"]["Value"] == [f"http://localhost/archives/demo/dicomweb/studies/{CT['StudyInstanceUID']}"]


def parts(response):
    """Parses a multipart/related body with the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + response.data)
    assert message.is_multipart()
    return [(p.get_content_type(), p.get_param("transfer-syntax"), p.get_payload(decode=True))
            for p in message.get_payload()]


def test_retrieve_study_as_stored_returns_the_file_bytes(client):
    r = client.get(f"/dicomweb/studies/{US['StudyInstanceUID']}", headers=ANY)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
    ((mimetype, syntax, body),) = parts(r)
    assert (mimetype, syntax) == ("application/dicom", US["TransferSyntaxUID"])
    assert body == US["path"].read_bytes()


def test_each_retrieval_gets_a_boundary_of_its_own(client):
    # a boundary that never repeats cannot be guessed and planted in a stored object's bytes
    url = f"/dicomweb/studies/{US['StudyInstanceUID']}"
    boundaries = []
    for _ in range(3):
        r = client.get(url, headers=ANY)
        boundary = re.fullmatch(r'multipart/related; type="application/dicom"; boundary=(\S+)',
                                r.headers["Content-Type"]).group(1)
        assert r.data.startswith(b"--" + boundary.encode() + b"\r\n")
        assert r.data.endswith(b"\r\n--" + boundary.encode() + b"--\r\n")
        boundaries.append(boundary)
    assert len(set(boundaries)) == 3
    assert all(len(b) >= 16 and len(b) <= 70 for b in boundaries)  # RFC 2046: 1 to 70 chars


def test_default_transfer_syntax_is_explicit_vr_little_endian(client):
    r = client.get(f"/dicomweb/studies/{RTDOSE['StudyInstanceUID']}/series/{RTDOSE['SeriesInstanceUID']}")
    ((_, syntax, body),) = parts(r)
    assert syntax == "1.2.840.10008.1.2.1"
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (got.pixel_array == pydicom.dcmread(RTDOSE["path"]).pixel_array).all()


def test_compressed_object_is_decoded_to_explicit_vr_little_endian_by_default(client):
    r = client.get(f"/dicomweb/studies/{US['StudyInstanceUID']}")
    ((_, syntax, body),) = parts(r)
    assert syntax == "1.2.840.10008.1.2.1"
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.SOPInstanceUID == US["SOPInstanceUID"]
    assert (got.pixel_array == pydicom.dcmread(US["path"]).pixel_array).all()


def test_a_lossy_target_syntax_is_406(client):
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    r = client.get(f"/dicomweb/studies/{CT['StudyInstanceUID']}", headers={"Accept": accept})
    assert r.status_code == 406
    assert "transfer-syntax=* (WADO-RS)" in r.get_json()["error"]


def test_series_metadata_has_the_instance_attributes_and_bulk_uri(client):
    url = f"/dicomweb/studies/{CT['StudyInstanceUID']}/series/{CT['SeriesInstanceUID']}/metadata"
    r = client.get(url)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/dicom+json"
    (data,) = r.get_json()
    source = pydicom.dcmread(CT["path"])
    assert data["00280010"] == {"vr": "US", "Value": [source.Rows]}
    assert data["00280030"]["Value"] == [float(v) for v in source.PixelSpacing]
    assert data["00180050"]["Value"] == [float(source.SliceThickness)]
    assert data["7FE00010"] == {
        "vr": "OW",
        "BulkDataURI": f"{BASE}/studies/{CT['StudyInstanceUID']}/series/{CT['SeriesInstanceUID']}"
        f"/instances/{CT['SOPInstanceUID']}/bulk/7FE00010",
    }


@pytest.mark.parametrize(
    ("criterion", "path", "other"),
    [
        ("STUDY_INSTANCE_UID", f"/dicomweb/studies?StudyInstanceUID={CT['StudyInstanceUID']}",
         "/dicomweb/studies?PatientID=1CT1"),
        ("STUDY_ACCESSION_NUMBER", "/dicomweb/studies?AccessionNumber=03086212",
         "/dicomweb/studies?PatientID=1CT1"),
        ("SERIE_INSTANCE_UID", f"/dicomweb/series?SeriesInstanceUID={CT['SeriesInstanceUID']}",
         "/dicomweb/series?PatientID=1CT1"),
        ("SOP_INSTANCE_UID", f"/dicomweb/instances?SOPInstanceUID={CT['SOPInstanceUID']}",
         "/dicomweb/instances?PatientID=1CT1"),
    ],
)
def test_each_deactivated_criterion_keeps_its_queries_from_the_connector(tmp_path, criterion,
                                                                         path, other):
    text = (ROOT / "config" / "gateway.yml").read_text().replace("var/demo", str(tmp_path))
    data = yaml.safe_load(text)
    data["connector"]["config"]["demo"]["search-criteria"] = {"deactivated": [criterion]}
    app = create_app(load_settings_from_dict(data))
    try:
        web = app.test_client()
        r = web.get(path)
        assert (r.status_code, r.get_json()) == (200, [])
        assert web.get(other).get_json() != []  # the connector still answers other queries
    finally:
        app.extensions["gateway"].close()


def test_deactivated_criterion_is_not_sent_to_the_connector(tmp_path):
    text = (ROOT / "config" / "gateway.yml").read_text().replace("var/demo", str(tmp_path))
    data = yaml.safe_load(text)
    data["connector"]["config"]["demo"]["search-criteria"] = {"deactivated": ["PATIENT_ID"]}
    app = create_app(load_settings_from_dict(data))
    try:
        web = app.test_client()
        assert web.get("/dicomweb/studies?PatientID=1CT1").get_json() == []
        (found,) = web.get("/dicomweb/studies?PatientName=CompressedSamples^CT1").get_json()
        assert found["00100020"]["Value"] == ["1CT1"]  # other criteria still reach it
    finally:
        app.extensions["gateway"].close()


@pytest.mark.parametrize(
    ("accept", "multipart"),
    [(None, False), ("text/html,application/xhtml+xml,*/*;q=0.8", False),
     ("application/octet-stream", False),
     ('multipart/related; type="application/octet-stream"', True)],
)
def test_bulk_data_uri_from_metadata_resolves_to_the_pixel_data(client, accept, multipart):
    url = f"/dicomweb/studies/{CT['StudyInstanceUID']}/series/{CT['SeriesInstanceUID']}/metadata"
    uri = client.get(url).get_json()[0]["7FE00010"]["BulkDataURI"]
    r = client.get(uri.removeprefix("http://localhost"), headers={"Accept": accept} if accept else {})
    assert r.status_code == 200
    pixels = pydicom.dcmread(CT["path"]).PixelData
    if multipart:
        ((mimetype, _, body),) = parts(r)
        assert mimetype == "application/octet-stream" and body == pixels
    else:
        assert r.headers["Content-Type"] == "application/octet-stream" and r.data == pixels


RLE = samples.sample_index()["SC_rgb_rle.dcm"]


def rle_bulk(client, accept):
    return client.get(RLE_BULK, headers={"Accept": accept} if accept else {})


def rle_bulk_url_get(client, query):
    return client.get(RLE_BULK + query)


RLE_BULK = (f"/dicomweb/studies/{RLE['StudyInstanceUID']}/series/{RLE['SeriesInstanceUID']}"
            f"/instances/{RLE['SOPInstanceUID']}/bulk/7FE00010")


@pytest.mark.parametrize("accept", [
    None, "application/octet-stream",
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
])
def test_bulk_pixel_data_of_a_compressed_object_is_native_by_default(client, accept):
    """PS3.18 Table 8.7.3-5: application/octet-stream bulk data is Explicit VR Little Endian
    unless asked otherwise: RLE pixel data comes decoded, as pydicom's uncompressed twin of
    the same image (SC_rgb.dcm) holds it."""
    from pydicom.data import get_testdata_file

    native = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).PixelData
    r = rle_bulk(client, accept)
    assert r.status_code == 200
    if accept and accept.startswith("multipart"):
        assert parts(r) == [("application/octet-stream", "1.2.840.10008.1.2.1", native)]
    else:
        assert r.data == native


def test_bulk_pixel_data_as_stored_and_refused_syntaxes(client):
    r = rle_bulk(client, 'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    stored = pydicom.dcmread(RLE["path"]).PixelData  # the encapsulated RLE fragments
    assert parts(r) == [("application/octet-stream", "1.2.840.10008.1.2.5", stored)]
    lossy = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert rle_bulk(client, lossy).status_code == 406


def test_bulk_data_errors(client):
    base = f"/dicomweb/studies/{CT['StudyInstanceUID']}/series/{CT['SeriesInstanceUID']}/instances/{CT['SOPInstanceUID']}/bulk"
    assert client.get(f"{base}/00091001").status_code == 404
    assert client.get(f"{base}/zz").get_json()["parameter"] == "bulk"
    assert client.get(f"{base}/7FE00010", headers={"Accept": "image/png"}).status_code == 406


def test_metrics_count_requests_by_route_and_connector_failures(tmp_path):
    from tests.harness.ports import free_port

    text = (ROOT / "config" / "gateway.yml").read_text().replace("var/demo", str(tmp_path))
    data = yaml.safe_load(text)
    data["connector"]["config"]["dead"] = {"type": "DICOM", "dicom-connector": {"dimse": {
        "calling-aet": "GW", "aet": "NOBODY", "host": "127.0.0.1", "port": free_port()}}}
    app = create_app(load_settings_from_dict(data))
    try:
        web = app.test_client()
        assert web.get("/archives/demo/dicomweb/studies").status_code == 200
        assert web.get("/archives/demo/dicomweb/studies?limit=x").status_code == 400
        assert web.get("/archives/dead/dicomweb/studies").status_code == 502
        r = web.get("/metrics")
        assert r.status_code == 200 and r.mimetype == "text/plain"
        lines = set(r.get_data(as_text=True).splitlines())
        route = "/archives/<connector_id>/dicomweb/studies"
        assert f'gateway_requests_total{{method="GET",route="{route}",status="200"}} 1.0' in lines
        assert f'gateway_requests_total{{method="GET",route="{route}",status="400"}} 1.0' in lines
        assert 'gateway_connector_errors_total{connector="dead",status="502"} 1.0' in lines
    finally:
        app.extensions["gateway"].close()


def test_the_accept_query_parameter_replaces_the_header(client):
    """PS3.18 8.3.3.1: a link that cannot set a header says what it accepts in `accept`."""
    from urllib.parse import quote

    r = client.get("/dicomweb/studies?accept=application/json", headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert sorted(d["0020000D"]["Value"][0] for d in r.get_json()) == samples.studies()
    assert client.get("/dicomweb/studies?accept=text/html").status_code == 406
    series = f"/dicomweb/studies/{CT['StudyInstanceUID']}/series/{CT['SeriesInstanceUID']}"
    r = client.get(f"{series}/metadata?accept=application/dicom%2Bjson",
                   headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/dicom+json"
    stored = quote('multipart/related; type="application/dicom"; transfer-syntax=*')
    r = client.get(f"{series}/instances/{CT['SOPInstanceUID']}?accept={stored}")
    assert r.status_code == 200
    assert parts(r) == [("application/dicom", "1.2.840.10008.1.2.1", CT["path"].read_bytes())]
    as_stored = quote('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    r = rle_bulk_url_get(client, f"?accept={as_stored}")
    assert parts(r)[0][1] == "1.2.840.10008.1.2.5"  # as stored, not the default decoding


def test_native_bulk_pixel_data_is_not_re_encoded(client, monkeypatch):
    """rtdose.dcm is Implicit VR Little Endian: its Pixel Data is the same bytes in Explicit
    VR Little Endian, so the default answer is the stored value, with no re-encoding (and no
    re-encoding budget: the budget lowered below its size changes nothing)."""
    from gateway import transcode

    monkeypatch.setattr(transcode, "MAX_DECODED_BYTES", 1024)
    rtdose = samples.sample_index()["rtdose.dcm"]
    url = (f"/dicomweb/studies/{rtdose['StudyInstanceUID']}/series/"
           f"{rtdose['SeriesInstanceUID']}/instances/{rtdose['SOPInstanceUID']}/bulk/7FE00010")
    r = client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 200
    stored = pydicom.dcmread(rtdose["path"]).PixelData
    assert parts(r) == [("application/octet-stream", "1.2.840.10008.1.2.1", stored)]
