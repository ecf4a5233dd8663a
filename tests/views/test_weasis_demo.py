"""Weasis routes over the embedded demo archive (a DB connector over SQLite), whose index this
module edits to put filters at their edges: the CT study gets an accented description, and one
of patient 204's two studies (both 2016-05-03 12:08:50 in the files) moves to 2017-01-01.
Expected values come from the sample files (tests/harness/samples.py) and those edits."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
import xmlschema
from flask.testing import FlaskClient

from gateway import create_app
from gateway.config import load_settings_from_dict
from tests.harness import samples
from tests.views.conftest import ROOT, demo_settings

NS = "{http://www.weasis.org/xsd/2.5}"
XSD = xmlschema.XMLSchema(str(ROOT / "gateway" / "weasis_manifest.xsd"))
INDEX = samples.sample_index()
CT = INDEX["CT_small.dcm"]
YBR, COLOR3D = INDEX["examples_ybr_color.dcm"], INDEX["color3d_jpeg_baseline.dcm"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    directory = tmp_path_factory.mktemp("demo")
    settings = demo_settings(directory)
    settings["gateway"]["weasis"] = {"store-dir": str(directory / "manifests")}
    app = create_app(load_settings_from_dict(settings))
    with sqlite3.connect(directory / "index.sqlite") as db:
        db.execute("UPDATE study SET study_desc = ? WHERE study_iuid = ?",
                   ("Thorax ÉPAULE droite", CT["StudyInstanceUID"]))
        db.execute("UPDATE study SET study_date = '20170101' WHERE study_iuid = ?",
                   (COLOR3D["StudyInstanceUID"],))
    yield app.test_client()
    app.extensions["gateway"].close()


def manifest(client: FlaskClient, query: str, **environ: str) -> ET.Element:
    response = client.get(f"/weasis/manifest?{query}", environ_base=environ)
    assert response.status_code == 200, response.get_data(as_text=True)
    XSD.validate(response.data)
    return ET.fromstring(response.data)


def studies(root: ET.Element) -> list[str]:
    return [s.get("StudyInstanceUID") for s in root.iter(f"{NS}Study")]


def severities(root: ET.Element) -> list[str | None]:
    return [m.get("severity") for m in root.iter(f"{NS}Message")]


@pytest.mark.parametrize("words", ["epaule", "ÉPAULE", "thorax%20%C3%A9paule", "DROITE"])
def test_description_filter_ignores_case_and_accents(client: FlaskClient, words: str) -> None:
    root = manifest(client, f"patientID={CT['PatientID']}&containsInDescription={words}")
    assert studies(root) == [CT["StudyInstanceUID"]]
    assert [s.get("StudyDescription") for s in root.iter(f"{NS}Study")] == ["Thorax ÉPAULE droite"]


def test_description_filter_that_matches_nothing_gives_an_info_message(client: FlaskClient) -> None:
    root = manifest(client, f"patientID={CT['PatientID']}&containsInDescription=hanche")
    assert studies(root) == [] and severities(root) == ["INFO"]


@pytest.mark.parametrize(("count", "expected"), [(1, [COLOR3D]), (2, [COLOR3D, YBR]), (5, [COLOR3D, YBR])])
def test_most_recent_results(client: FlaskClient, count: int, expected: list) -> None:
    root = manifest(client, f"patientID=204&mostRecentResults={count}")
    assert studies(root) == [e["StudyInstanceUID"] for e in expected]  # newest first


def test_every_attribute_the_demo_index_holds(client: FlaskClient) -> None:
    root = manifest(client, f"objectUID={CT['SOPInstanceUID']}")
    patient = root.find(f"{NS}arcQuery/{NS}Patient")
    assert patient is not None
    assert dict(patient.attrib) == {"PatientID": "1CT1", "PatientName": "CompressedSamples^CT1",
                                    "PatientSex": "O"}
    study = patient.find(f"{NS}Study")
    assert study is not None
    # CT_small's AccessionNumber and ReferringPhysicianName are empty: left out, not written ""
    assert dict(study.attrib) == {
        "StudyInstanceUID": CT["StudyInstanceUID"], "StudyDescription": "Thorax ÉPAULE droite",
        "StudyDate": "20040119", "StudyTime": "072730", "StudyID": "1CT1"}
    series = study.find(f"{NS}Series")
    assert series is not None
    assert dict(series.attrib) == {  # the demo index holds no series date, time or description
        "SeriesInstanceUID": CT["SeriesInstanceUID"], "SeriesNumber": "1", "Modality": "CT"}
    instance = series.find(f"{NS}Instance")
    assert instance is not None and dict(instance.attrib) == {
        "SOPInstanceUID": CT["SOPInstanceUID"], "SOPClassUID": CT["SOPClassUID"], "InstanceNumber": "1"}


def test_a_stored_manifest_is_served_to_its_launcher_only(client: FlaskClient) -> None:
    launched = client.get(f"/weasis/launch?studyUID={CT['StudyInstanceUID']}",
                          environ_base={"REMOTE_USER": "alice"})
    assert launched.status_code == 302
    url = unquote(launched.headers["Location"][len("weasis://?"):]).split('"')[1]
    path = url[url.index("/weasis/manifest/"):]
    assert client.get(path, environ_base={"REMOTE_USER": "alice"}).status_code == 200
    assert client.get(path, environ_base={"REMOTE_USER": "bob"}).status_code == 404
    assert client.get(path).status_code == 404


def test_a_manifest_is_xml_or_json_and_nothing_else(client: FlaskClient) -> None:
    query = f"/weasis/manifest?studyUID={CT['StudyInstanceUID']}"
    assert client.get(query).mimetype == "application/xml"  # no Accept: XML, as Weasis reads
    assert client.get(query, headers={"Accept": "text/xml"}).mimetype == "text/xml"
    refused = client.get(query, headers={"Accept": "image/png"})
    assert refused.status_code == 406 and refused.get_json()["status"] == 406


def test_launch_answers_head_as_iid_clients_probe(client: FlaskClient) -> None:
    response = client.head(f"/weasis/launch?studyUID={CT['StudyInstanceUID']}")
    assert response.status_code == 302 and response.headers["Location"].startswith("weasis://?")


def test_malformed_and_unknown_manifest_ids_are_404(client: FlaskClient) -> None:
    for ident in ("../../etc/passwd", "ABCDEF" * 6, "0" * 31, "g" * 32):
        assert client.get(f"/weasis/manifest/{ident}").status_code == 404


def test_identifiers_are_a_union_whole_studies_included(client: FlaskClient) -> None:
    """studyUID brings the whole study even when an objectUID inside it is asked too (the
    objectUID alone brings that instance only)."""
    sc, sc_jpeg = INDEX["SC_rgb_rle.dcm"], INDEX["SC_rgb_jpeg_dcmtk.dcm"]  # one study, one series
    both = sorted([sc["SOPInstanceUID"], sc_jpeg["SOPInstanceUID"]])
    alone = manifest(client, f"objectUID={sc['SOPInstanceUID']}")
    assert [i.get("SOPInstanceUID") for i in alone.iter(f"{NS}Instance")] == [sc["SOPInstanceUID"]]
    for query in (f"studyUID={sc['StudyInstanceUID']}&objectUID={sc['SOPInstanceUID']}",
                  f"patientID={sc['PatientID']}&objectUID={sc['SOPInstanceUID']}",
                  f"objectUID={sc['SOPInstanceUID']}&seriesUID={sc['SeriesInstanceUID']}"):
        root = manifest(client, query)
        assert sorted(i.get("SOPInstanceUID") for i in root.iter(f"{NS}Instance")) == both, query


def test_an_issuer_the_archive_cannot_match_is_a_warning(client: FlaskClient) -> None:
    """The demo index has no IssuerOfPatientID column: the connector cannot match the issuer,
    so the studies of patient 204 come back whatever their issuer, and the manifest says so."""
    root = manifest(client, "patientID=204^^^HOSP-A")
    assert sorted(studies(root)) == sorted([YBR["StudyInstanceUID"], COLOR3D["StudyInstanceUID"]])
    assert severities(root) == ["WARN"]
    message = next(root.iter(f"{NS}Message"))
    assert "IssuerOfPatientID" in message.get("description", "")


def test_studies_without_a_patient_id_are_not_merged(client: FlaskClient) -> None:
    first, second = INDEX["emri_small.dcm"], INDEX["JPGLosslessP14SV1_1s_1f_8b.dcm"]
    assert first["PatientID"] == second["PatientID"] == ""  # as the sample files are
    root = manifest(client, f"studyUID={first['StudyInstanceUID']},{second['StudyInstanceUID']}")
    patients = root.findall(f"{NS}arcQuery/{NS}Patient")
    assert len(patients) == 2
    assert sorted(s.get("StudyInstanceUID") for p in patients for s in p) == sorted(
        [first["StudyInstanceUID"], second["StudyInstanceUID"]])


def test_the_html_launch_page_is_not_cached(client: FlaskClient) -> None:
    page = client.get(f"/weasis/launch?studyUID={CT['StudyInstanceUID']}&page=html")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
