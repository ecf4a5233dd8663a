"""Weasis manifests end to end, over the real archives of tests/test_e2e.py: Orthanc over
DICOMweb with Basic auth, Orthanc and dcmqrscp over DIMSE, Orthanc's PostgreSQL index through
the DB connector. Each manifest is fetched the way Weasis fetches it (from the link a launch
gives), validated against the project's XSD, compared element by element with the sample files
(pydicom's reading, the ground truth), and every instance it lists is downloaded through the
`baseUrl` it gives, the way Weasis builds those URLs (viewer-hub.md 3.3)."""

from __future__ import annotations

import base64
import gzip
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pydicom
import pytest
import requests
import xmlschema

from gateway import create_app
from gateway.config import load_settings_from_dict
from tests.harness import samples
from tests.harness.fixtures import ORTHANC_USERS
from tests.harness.ports import free_port
from tests.test_e2e import ARCHIVES, Served, gateway_config

NS = "{http://www.weasis.org/xsd/2.5}"
XSD = xmlschema.XMLSchema(str(Path(__file__).resolve().parents[1] / "gateway" / "weasis_manifest.xsd"))
INDEX = samples.sample_index()
CT, MR, RTDOSE = INDEX["CT_small.dcm"], INDEX["MR_small.dcm"], INDEX["rtdose.dcm"]
#: dcmqrscp has no codecs: like tests/test_e2e.py, the uncompressed samples are the ones
#: every archive can send
UNCOMPRESSED = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm")
QUERY_MODE = {"web": "DICOM_WEB", "dimse-orthanc": "DICOM", "dimse-dcmqrscp": "DICOM", "db": "DB"}
PATIENT_ATTRS = ("PatientBirthDate", "PatientBirthTime", "PatientSex", "IssuerOfPatientID")
STUDY_ATTRS = ("StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription")
SERIES_ATTRS = ("SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime")
MANIFEST_OPTIONS = {
    "transfer-syntax-uid": "1.2.840.10008.1.2.1",
    "compressionRate": 0,
    "requireOnlySOPInstanceUID": True,
    "additionnalParameters": "&transferSyntax=*",
    "overrideDicomTags": ["PatientID", "0x00100010"],
    "httpTags": {"X-Site": "north"},
}


def weasis_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port, **extra) -> dict[str, Any]:
    config = gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port=port)
    config["connector"]["config"]["db"]["weasis"] = {"manifest": MANIFEST_OPTIONS}
    config["connector"].update(extra)
    return config


@pytest.fixture(scope="module")
def gateway(orthanc_auth, orthanc, dcmqrscp, orthanc_pg) -> Iterator[Served]:
    port = free_port()
    settings = load_settings_from_dict(weasis_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port))
    served = Served(create_app(settings), port)
    yield served
    served.close()


# -- helpers ------------------------------------------------------------------------------


def launch(gateway: Served, query: str) -> str:
    """The manifest URL that /weasis/launch's weasis:// link names."""
    response = requests.get(f"{gateway.url}/weasis/launch?{query}", allow_redirects=False, timeout=30)
    assert response.status_code == 302, response.text
    link = response.headers["Location"]
    assert link.startswith("weasis://?")
    command = unquote(link[len("weasis://?"):])
    assert command.startswith('$dicom:get -w "') and command.count('"') >= 2
    return command.split('"')[1]


def fetch(url: str, **headers: str) -> ET.Element:
    response = requests.get(url, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    XSD.validate(response.content)
    return ET.fromstring(response.content)


def arcs(root: ET.Element) -> dict[str, ET.Element]:
    return {a.get("arcId"): a for a in root.findall(f"{NS}arcQuery")}


def instances(arc: ET.Element) -> list[tuple[ET.Element, ET.Element, ET.Element, ET.Element]]:
    return [
        (p, st, se, i)
        for p in arc.findall(f"{NS}Patient")
        for st in p.findall(f"{NS}Study")
        for se in st.findall(f"{NS}Series")
        for i in se.findall(f"{NS}Instance")
    ]


def download(arc: ET.Element, study: ET.Element, series: ET.Element, inst: ET.Element) -> bytes:
    """One instance, as Weasis asks for it: WADO-URI for DB and DICOM, WADO-RS with
    DirectDownloadFile for DICOM_WEB; the arcQuery's httpTags and webLogin as headers."""
    headers = {t.get("key"): t.get("value") for t in arc.findall(f"{NS}httpTag")}
    if arc.get("webLogin"):
        headers["Authorization"] = f"Basic {arc.get('webLogin')}"
    base = arc.get("baseUrl")
    if arc.get("queryMode") == "DICOM_WEB":
        headers["Accept"] = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        response = requests.get(base + inst.get("DirectDownloadFile"), headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        boundary = response.headers["Content-Type"].split("boundary=")[1].strip('"')
        part = response.content.split(b"--" + boundary.encode())[1]
        return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    url = f"{base}?requestType=WADO"
    if arc.get("requireOnlySOPInstanceUID") != "true":
        url += f"&studyUID={study.get('StudyInstanceUID')}&seriesUID={series.get('SeriesInstanceUID')}"
    # "/" left as is: Orthanc's WADO-URI does not decode %2F in contentType
    url += f"&objectUID={inst.get('SOPInstanceUID')}&contentType=application/dicom"
    if series.get("WadoTransferSyntaxUID"):
        url += f"&transferSyntax={series.get('WadoTransferSyntaxUID')}"
    url += arc.get("additionnalParameters") or ""
    response = requests.get(url, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


# -- a study opens from one launch link, on every connector --------------------------------


@pytest.mark.parametrize("archive", ARCHIVES)
@pytest.mark.parametrize("name", UNCOMPRESSED)
def test_a_study_opens_from_one_launch_link(gateway: Served, archive: str, name: str) -> None:
    info = INDEX[name]
    url = launch(gateway, f"studyUID={info['StudyInstanceUID']}&archive={archive}")
    assert url.startswith(f"{gateway.url}/weasis/manifest/")
    arc = arcs(fetch(url))[archive]
    assert arc.get("queryMode") == QUERY_MODE[archive]
    rows = instances(arc)
    source = pydicom.dcmread(info["path"])
    assert [i.get("SOPInstanceUID") for *_, i in rows] == samples.instances_of(info["SeriesInstanceUID"])
    patient, study, series, inst = rows[0]
    assert patient.get("PatientID") == str(source.PatientID)
    assert patient.get("PatientName") == str(source.PatientName)
    assert study.get("StudyInstanceUID") == source.StudyInstanceUID
    assert study.get("StudyDate") == source.StudyDate
    assert series.get("SeriesInstanceUID") == source.SeriesInstanceUID
    assert series.get("Modality") == source.Modality
    # every other attribute the archive filled holds the file's value
    for element, names in ((patient, PATIENT_ATTRS), (study, STUDY_ATTRS), (series, SERIES_ATTRS)):
        for name in names:
            if element.get(name) is not None:
                assert element.get(name) == str(source.get(name, "")).strip(), (archive, name)
    # dcmqrscp's index does not return SOP Class UID at IMAGE level (a C-FIND asking for it
    # gets SOPInstanceUID and InstanceNumber only): the manifest has what the archive gives
    expected_class = None if archive == "dimse-dcmqrscp" else source.SOPClassUID
    assert inst.get("SOPClassUID") == expected_class
    number = source.get("InstanceNumber")
    assert inst.get("InstanceNumber") == (None if number in (None, "") else str(number))
    for _, st, se, i in rows:
        got = pydicom.dcmread(__import__("io").BytesIO(download(arc, st, se, i)))
        assert got.SOPInstanceUID == i.get("SOPInstanceUID")
        assert got.PixelData == source.PixelData


def test_the_manifest_names_no_archive_credential(gateway: Served) -> None:
    login, password = ORTHANC_USERS
    secret = base64.b64encode(f"{login}:{password}".encode()).decode()
    query = f"studyUID={CT['StudyInstanceUID']}"
    for url in (launch(gateway, query), f"{gateway.url}/weasis/manifest?{query}"):
        for accept in ("application/xml", "application/json"):
            body = requests.get(url, headers={"Accept": accept}, timeout=60).text
            assert CT["StudyInstanceUID"] in body
            assert password not in body and secret not in body
            assert str(orthanc_port(gateway)) not in body


def orthanc_port(gateway: Served) -> int:
    web = gateway.app.extensions["gateway"].settings.connector("web")
    return int(web.dicom_web.qido_rs.base_url.split(":")[2].split("/")[0])


def test_default_connectors_give_one_arc_query_each_that_found_something(gateway: Served) -> None:
    root = fetch(launch(gateway, f"studyUID={CT['StudyInstanceUID']}"))
    assert list(arcs(root)) == list(ARCHIVES)  # every archive holds the samples, in config order
    for cid, arc in arcs(root).items():
        kind = "dicomweb" if cid == "web" else "wado"
        assert arc.get("baseUrl") == f"{gateway.url}/archives/{cid}/{kind}"


def test_manifest_options_of_the_connector(gateway: Served) -> None:
    arc = arcs(fetch(f"{gateway.url}/weasis/manifest?studyUID={MR['StudyInstanceUID']}&archive=db"))["db"]
    assert arc.get("requireOnlySOPInstanceUID") == "true"
    assert arc.get("additionnalParameters") == "&transferSyntax=*"
    assert arc.get("additionalParameters") == "&transferSyntax=*"
    assert arc.get("overrideDicomTagsList") == "0x00100020,0x00100010"
    assert [(t.get("key"), t.get("value")) for t in arc.findall(f"{NS}httpTag")] == [("X-Site", "north")]
    for _, _, series, _ in instances(arc):
        assert series.get("WadoTransferSyntaxUID") == "1.2.840.10008.1.2.1"
        assert series.get("WadoCompressionRate") == "0"
    other = arcs(fetch(f"{gateway.url}/weasis/manifest?studyUID={MR['StudyInstanceUID']}&archive=dimse-orthanc"))
    assert other["dimse-orthanc"].get("additionnalParameters") is None


def test_union_of_criteria_and_patient_with_issuer(gateway: Served) -> None:
    url = (f"{gateway.url}/weasis/manifest?archive=db&studyUID={CT['StudyInstanceUID']}"
           f"&seriesUID={MR['SeriesInstanceUID']}&objectUID={RTDOSE['SOPInstanceUID']}")
    arc = arcs(fetch(url))["db"]
    studies = sorted({st.get("StudyInstanceUID") for _, st, _, _ in instances(arc)})
    assert studies == sorted({CT["StudyInstanceUID"], MR["StudyInstanceUID"], RTDOSE["StudyInstanceUID"]})
    rtdose = [i for _, _, se, i in instances(arc) if se.get("SeriesInstanceUID") == RTDOSE["SeriesInstanceUID"]]
    assert [i.get("SOPInstanceUID") for i in rtdose] == [RTDOSE["SOPInstanceUID"]]  # that one only
    by_patient = arcs(fetch(f"{gateway.url}/weasis/manifest?archive=web&patientID={CT['PatientID']}"))["web"]
    assert [p.get("PatientID") for p in by_patient.findall(f"{NS}Patient")] == [CT["PatientID"]]


@pytest.mark.parametrize(
    ("bounds", "kept"),
    [
        ("lowerDateTime=2004-01-19", True),      # CT_small's StudyDate is 20040119
        ("upperDateTime=2004-01-19", True),      # an inclusive upper bound: the whole day
        ("lowerDateTime=2004-01-20", False),
        ("upperDateTime=2004-01-18T23:59:59", False),
        ("lowerDateTime=2004-01-19T00:00:00&upperDateTime=2004-01-19T23:59:59", True),
    ],
)
def test_date_filters_are_an_inclusive_range(gateway: Served, bounds: str, kept: bool) -> None:
    assert CT["StudyDate"] == "20040119"
    root = fetch(f"{gateway.url}/weasis/manifest?archive=db&studyUID={CT['StudyInstanceUID']}&{bounds}")
    found = [st.get("StudyInstanceUID") for a in arcs(root).values() for _, st, _, _ in instances(a)]
    assert (CT["StudyInstanceUID"] in found) is kept
    if not kept:
        messages = root.findall(f"{NS}arcQuery/{NS}Message")
        assert [m.get("severity") for m in messages] == ["INFO"]


def test_modality_filter(gateway: Served) -> None:
    both = f"studyUID={CT['StudyInstanceUID']},{MR['StudyInstanceUID']}"
    for archive in ARCHIVES:
        arc = arcs(fetch(f"{gateway.url}/weasis/manifest?archive={archive}&{both}&modalitiesInStudy=MR"))[archive]
        assert {st.get("StudyInstanceUID") for _, st, _, _ in instances(arc)} == {MR["StudyInstanceUID"]}


def test_gzip_and_json_forms(gateway: Served) -> None:
    url = f"{gateway.url}/weasis/manifest?archive=db&studyUID={CT['StudyInstanceUID']}"
    raw = requests.get(url, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=30)
    assert raw.headers["Content-Encoding"] == "gzip"
    xml = gzip.decompress(raw.raw.read())
    XSD.validate(xml)
    as_json = requests.get(url, headers={"Accept": "application/json"}, timeout=30)
    assert as_json.headers["Content-Type"].startswith("application/json")
    arc = as_json.json()["manifest"]["arcQuery"][0]
    assert arc["arcId"] == "db"
    study = arc["Patient"][0]["Study"][0]
    assert study["StudyInstanceUID"] == CT["StudyInstanceUID"]
    assert [i["SOPInstanceUID"] for i in study["Series"][0]["Instance"]] == [CT["SOPInstanceUID"]]
    assert arc["requireOnlySOPInstanceUID"] is True
    assert json.dumps(as_json.json())  # well-formed


# -- level limit (DICOM_WEB only) ----------------------------------------------------------


@pytest.fixture(scope="module", params=["STUDY", "SERIE"])
def limited(request, orthanc_auth, orthanc, dcmqrscp, orthanc_pg) -> Iterator[tuple[str, Served]]:
    port = free_port()
    config = weasis_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port,
                           **{"dicom-web-level-limit": request.param})
    served = Served(create_app(load_settings_from_dict(config)), port)
    yield request.param, served
    served.close()


def test_level_limit_truncates_dicom_web_manifests_only(limited: tuple[str, Served]) -> None:
    limit, gateway = limited
    both = f"studyUID={CT['StudyInstanceUID']},{MR['StudyInstanceUID']}"
    root = fetch(f"{gateway.url}/weasis/manifest?archive=web,db&{both}&modalitiesInStudy=MR")
    web, db = arcs(root)["web"], arcs(root)["db"]
    studies = web.findall(f"{NS}Patient/{NS}Study")
    # ModalitiesInStudy keeps the filter working without series (viewer-hub.md 2.5, caveat)
    assert [s.get("StudyInstanceUID") for s in studies] == [MR["StudyInstanceUID"]]
    series = web.findall(f"{NS}Patient/{NS}Study/{NS}Series")
    if limit == "STUDY":
        assert series == []
    else:
        assert [s.get("SeriesInstanceUID") for s in series] == [MR["SeriesInstanceUID"]]
        assert series[0].findall(f"{NS}Instance") == []
    assert web.get("seriesRetrieve") == "true"
    assert [i.get("SOPInstanceUID") for *_, i in instances(db)] == samples.instances_of(MR["SeriesInstanceUID"])


# -- launch, stored manifests, messages, errors -------------------------------------------


def test_launch_passes_weasis_config_and_offers_a_page(gateway: Served) -> None:
    query = f"studyUID={CT['StudyInstanceUID']}&pro=weasis.theme%20dark&arg=dicom%3Aclose&cdb="
    response = requests.get(f"{gateway.url}/weasis/launch?{query}", allow_redirects=False, timeout=30)
    command = unquote(response.headers["Location"][len("weasis://?"):])
    manifest_url = command.split('"')[1]
    assert command == (f'$dicom:get -w "{manifest_url}" $weasis:config cdb="" '
                       'pro="weasis.theme dark" arg="dicom:close"')
    page = requests.get(f"{gateway.url}/weasis/launch?{query}&page=html", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'href="weasis://?' in page.text and "/weasis/manifest/" in page.text
    # a $ would start a Weasis command of its own (Weasis splits the link at every $)
    refused = requests.get(f"{gateway.url}/weasis/launch?studyUID={CT['StudyInstanceUID']}"
                           "&arg=%24dicom%3Aclose", allow_redirects=False, timeout=30)
    assert refused.status_code == 400 and refused.json()["parameter"] == "arg"


def test_stored_manifest_expires(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, tmp_path: Path) -> None:
    port = free_port()
    config = weasis_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port)
    config["gateway"]["weasis"] = {"manifest-lifetime": 1.0, "store-dir": str(tmp_path / "m")}
    gateway = Served(create_app(load_settings_from_dict(config)), port)
    try:
        url = launch(gateway, f"studyUID={CT['StudyInstanceUID']}&archive=db")
        ident = url.rsplit("/", 1)[1]
        assert len(ident) == 32 and int(ident, 16) >= 0  # 128 random bits, in hex
        assert arcs(fetch(url))["db"] is not None
        deadline = time.monotonic() + 10
        while requests.get(url, timeout=10).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        gone = requests.get(url, timeout=10)
        assert gone.status_code == 404 and gone.json()["status"] == 404
        unknown = requests.get(f"{gateway.url}/weasis/manifest/{'0' * 32}", timeout=10)
        assert unknown.status_code == 404
    finally:
        gateway.close()


def test_a_failing_connector_gets_an_error_message(orthanc_auth, orthanc, dcmqrscp, orthanc_pg) -> None:
    port, dead = free_port(), free_port()
    config = gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, dead_port=dead, port=port)
    config["gateway"]["timeouts"] = {"request": 5, "connect": 2}
    gateway = Served(create_app(load_settings_from_dict(config)), port)
    try:
        root = fetch(f"{gateway.url}/weasis/manifest?archive=db,dead&studyUID={CT['StudyInstanceUID']}")
        got = arcs(root)
        assert [i.get("SOPInstanceUID") for *_, i in instances(got["db"])] == [CT["SOPInstanceUID"]]
        message = got["dead"].find(f"{NS}Message")
        assert message is not None and message.get("severity") == "ERROR"
        assert "dead" in message.get("description")
        assert got["dead"].findall(f"{NS}Patient") == []
    finally:
        gateway.close()


def test_nothing_matched_is_an_info_message(gateway: Served) -> None:
    root = fetch(f"{gateway.url}/weasis/manifest?studyUID=1.2.3.4.5.6.7.8.9")
    messages = root.findall(f"{NS}arcQuery/{NS}Message")
    assert [m.get("severity") for m in messages] == ["INFO"]
    assert root.findall(f"{NS}arcQuery/{NS}Patient") == []


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/weasis/manifest?studyUID=1.2.3&archive=nowhere", "archive"),
        ("/weasis/launch?studyUID=1.2.3&archive=nowhere", "archive"),
        ("/weasis/manifest?studyUID=1.2.abc", "studyUID"),
        ("/weasis/manifest?archive=db", "patientID"),
        ("/weasis/launch?studyUID=1.2.3&mostRecentResults=-1", "mostRecentResults"),
        ("/IHEInvokeImageDisplay?requestType=SERIES&studyUID=1.2.3", "requestType"),
        ("/IHEInvokeImageDisplay?requestType=STUDY&studyUID=1.2.3&accessionNumber=A1", "studyUID"),
        ("/IHEInvokeImageDisplay?requestType=PATIENT", "patientID"),
    ],
)
def test_bad_launch_parameters_are_400_naming_them(gateway: Served, path: str, parameter: str) -> None:
    response = requests.get(gateway.url + path, allow_redirects=False, timeout=30)
    assert response.status_code == 400
    assert response.json()["parameter"] == parameter


def test_iid_study_request_launches(gateway: Served) -> None:
    query = f"requestType=STUDY&studyUID={CT['StudyInstanceUID']}&viewerType=IHE_BIR&diagnosticQuality=true"
    response = requests.get(f"{gateway.url}/IHEInvokeImageDisplay?{query}", allow_redirects=False, timeout=30)
    assert response.status_code == 302
    url = unquote(response.headers["Location"][len("weasis://?"):]).split('"')[1]
    assert CT["SOPInstanceUID"] in [i.get("SOPInstanceUID") for a in arcs(fetch(url)).values() for *_, i in instances(a)]


# -- direct mode: Weasis downloads from the archive, with the archive's credentials ---------


def _basic(orthanc_auth, context: str) -> dict[str, Any]:
    login, password = ORTHANC_USERS
    return {"type": "BASIC", "basic": {"login": login, "password": password, "server": {
        "url": "http://127.0.0.1", "port": orthanc_auth.http_port, "context": context}}}


def test_direct_mode_downloads_from_the_archive_with_basic_credentials(
    orthanc_auth, orthanc, dcmqrscp, orthanc_pg
) -> None:
    port = free_port()
    config = gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port=port)
    connectors = config["connector"]["config"]
    connectors["web"]["dicom-web-connector"]["wado-rs"] = {"authentication": _basic(orthanc_auth, "/dicom-web")}
    connectors["web"]["weasis"] = {"direct": True}
    connectors["dimse-orthanc"]["dicom-connector"]["wado"] = {"authentication": _basic(orthanc_auth, "/wado")}
    connectors["dimse-orthanc"]["weasis"] = {"direct": True}
    gateway = Served(create_app(load_settings_from_dict(config)), port)
    login, password = ORTHANC_USERS
    try:
        root = fetch(launch(gateway, f"studyUID={MR['StudyInstanceUID']}&archive=web,dimse-orthanc"))
        for cid, base in (("web", "/dicom-web"), ("dimse-orthanc", "/wado")):
            arc = arcs(root)[cid]
            assert arc.get("baseUrl") == f"http://127.0.0.1:{orthanc_auth.http_port}{base}"
            assert base64.b64decode(arc.get("webLogin")).decode() == f"{login}:{password}"
            rows = instances(arc)
            assert [i.get("SOPInstanceUID") for *_, i in rows] == samples.instances_of(MR["SeriesInstanceUID"])
            for _, st, se, i in rows:  # straight from Orthanc, which refuses a request without them
                got = pydicom.dcmread(__import__("io").BytesIO(download(arc, st, se, i)))
                assert got.SOPInstanceUID == i.get("SOPInstanceUID")
        anonymous = requests.get(f"http://127.0.0.1:{orthanc_auth.http_port}/dicom-web/studies", timeout=10)
        assert anonymous.status_code == 401  # so the credentials above did the work
    finally:
        gateway.close()


def test_direct_mode_with_oauth2_writes_a_bearer_token(orthanc_auth, orthanc, dcmqrscp, orthanc_pg) -> None:
    from tests.connectors import http_fakes as fakes

    tokens = fakes.TokenEndpoint("weasis-client", "s3cret-value")
    with fakes.FakeServer({"/oauth/token": tokens}) as idp:
        port = free_port()
        config = gateway_config(orthanc_auth, orthanc, dcmqrscp, orthanc_pg, port=port)
        config["oidc"] = {"idp": {"client-id": "weasis-client", "client-secret": "s3cret-value",
                                  "token-url": f"{idp.url}/oauth/token"}}
        dimse = config["connector"]["config"]["dimse-orthanc"]
        dimse["dicom-connector"]["wado"] = {"authentication": {"type": "OAUTH2", "oauth2": {
            "oidc-id": "idp", "server": {"url": "http://127.0.0.1", "port": orthanc_auth.http_port,
                                         "context": "/wado"}}}}
        dimse["weasis"] = {"direct": True}
        gateway = Served(create_app(load_settings_from_dict(config)), port)
        try:
            response = requests.get(
                f"{gateway.url}/weasis/manifest?studyUID={CT['StudyInstanceUID']}&archive=dimse-orthanc",
                timeout=30)
            XSD.validate(response.content)
            arc = arcs(ET.fromstring(response.content))["dimse-orthanc"]
            tags = [(t.get("key"), t.get("value")) for t in arc.findall(f"{NS}httpTag")]
            assert tags == [("Authorization", "Bearer token-1")]
            assert arc.get("webLogin") is None
            assert "s3cret-value" not in response.text
            assert tokens.count == 1
        finally:
            gateway.close()
