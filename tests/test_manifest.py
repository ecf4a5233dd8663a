"""gateway.manifest: the Weasis manifest 2.5 tree, its filters and its writers, table-driven.

Expected names, order and namespace come from the format description (viewer-hub.md 3.1),
filter semantics from the Weasis design note (inclusive bounds, accent-insensitive
description), value formats from DICOM PS3.5 Table 6.2-1 and characters from XML 1.0 2.2.
Every XML document produced here goes through `render`, which validates it against the
project's XSD; `test_xsd_rejects` shows that this validation can fail.
"""

import datetime as dt
import io
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from gateway import manifest
from gateway.manifest import (
    ArcQuery,
    Filters,
    Instance,
    Manifest,
    Message,
    Patient,
    Series,
    Study,
    apply_filters,
    merge_rows,
)

XSD = Path(__file__).resolve().parents[1] / "gateway" / "weasis_manifest.xsd"
SCHEMA = xmlschema.XMLSchema(str(XSD))
NS = "{http://www.weasis.org/xsd/2.5}"
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


def render(doc: Manifest) -> bytes:
    """to_xml, validated against the XSD (every XML of this file passes here)."""
    data = manifest.to_xml(doc)
    SCHEMA.validate(io.BytesIO(data))
    return data


def parse(doc: Manifest) -> ET.Element:
    return ET.fromstring(render(doc))


def arc(**kwargs) -> ArcQuery:
    base = {"arc_id": "pacs-a", "base_url": "https://gw.example.org/wado", "query_mode": "DICOM"}
    return ArcQuery(**{**base, **kwargs})


def one(arc_query: ArcQuery) -> Manifest:
    return Manifest([arc_query], uid="6f1c2a40-0000-4000-8000-000000000001")


def full_arc() -> ArcQuery:
    """Every field of every level filled."""
    inst = Instance("1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.2", "1", "/studies/1.2.3/x")
    series = Series(
        "1.2.3.4", "AXIAL", "2", "CT", "20240102", "101600", "1.2.840.10008.1.2.4.90", 80,
        "/thumb", {inst.sop_instance_uid: inst},
    )
    study = Study(
        "1.2.3", "CT THORAX", "20240102", "101500", "A42", "S1", "WHO^DR", ("CT",),
        {series.series_instance_uid: series},
    )
    patient = Patient("123", "DOE^JANE", "HOSP", "19700101", "0830", "F", {"1.2.3": study})
    return arc(
        web_login="dXNlcjpwdw==", require_only_sop_instance_uid=True,
        additional_parameters="&transferSyntax=*", override_dicom_tags=("0x00100020",),
        http_tags=(("Authorization", "Bearer T"),), series_retrieve=True,
        message=Message("INFO", "t", "d"), patients={("123", "HOSP"): patient},
    )


# -- names, order, namespace ----------------------------------------------------------------


def test_declaration_root_and_namespace():
    data = render(one(arc()))
    assert data.startswith(DECLARATION)
    root = ET.fromstring(data)
    assert root.tag == NS + "manifest"
    assert root.attrib == {"uid": "6f1c2a40-0000-4000-8000-000000000001"}
    assert [child.tag for child in root] == [NS + "arcQuery"]
    assert b'<manifest xmlns="http://www.weasis.org/xsd/2.5" uid=' in data


def test_manifest_without_uid_has_no_uid_attribute():
    assert parse(Manifest([arc()])).attrib == {}


ARC_ATTRS = ["arcId", "baseUrl", "webLogin", "requireOnlySOPInstanceUID", "additionnalParameters",
             "additionalParameters", "overrideDicomTagsList", "queryMode", "seriesRetrieve"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("arcQuery", dict(zip(ARC_ATTRS, ["pacs-a", "https://gw.example.org/wado", "dXNlcjpwdw==",
                                          "true", "&transferSyntax=*", "&transferSyntax=*",
                                          "0x00100020", "DICOM", "true"], strict=True))),
        ("arcQuery/httpTag", {"key": "Authorization", "value": "Bearer T"}),
        ("arcQuery/Message", {"title": "t", "description": "d", "severity": "INFO"}),
        ("arcQuery/Patient", {"PatientID": "123", "PatientName": "DOE^JANE",
                              "IssuerOfPatientID": "HOSP", "PatientBirthDate": "19700101",
                              "PatientBirthTime": "0830", "PatientSex": "F"}),
        ("arcQuery/Patient/Study", {"StudyInstanceUID": "1.2.3", "StudyDescription": "CT THORAX",
                                    "StudyDate": "20240102", "StudyTime": "101500",
                                    "AccessionNumber": "A42", "StudyID": "S1",
                                    "ReferringPhysicianName": "WHO^DR"}),
        ("arcQuery/Patient/Study/Series", {
            "SeriesInstanceUID": "1.2.3.4", "SeriesDescription": "AXIAL", "SeriesNumber": "2",
            "Modality": "CT", "SeriesDate": "20240102", "SeriesTime": "101600",
            "WadoTransferSyntaxUID": "1.2.840.10008.1.2.4.90", "WadoCompressionRate": "80",
            "DirectDownloadThumbnail": "/thumb"}),
        ("arcQuery/Patient/Study/Series/Instance", {
            "SOPInstanceUID": "1.2.3.4.1", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
            "InstanceNumber": "1", "DirectDownloadFile": "/studies/1.2.3/x"}),
    ],
)
def test_attribute_names_values_and_order(path, expected):
    element = parse(one(full_arc())).find("/".join(NS + p for p in path.split("/")))
    assert element is not None
    assert list(element.attrib.items()) == list(expected.items())  # order included


def test_optional_attributes_left_out_when_absent():
    root = parse(one(arc(patients={("P", None): Patient("P", "", studies={
        "1.2": Study("1.2", series={"1.2.3": Series("1.2.3", instances={
            "1.2.3.4": Instance("1.2.3.4")})})})})))
    query = root.find(NS + "arcQuery")
    # requireOnlySOPInstanceUID is a plain bool (default false) and always written
    assert query.attrib == {"arcId": "pacs-a", "baseUrl": "https://gw.example.org/wado",
                            "requireOnlySOPInstanceUID": "false", "queryMode": "DICOM"}
    patient = query.find(NS + "Patient")
    assert patient.attrib == {"PatientID": "P", "PatientName": ""}  # both required
    assert patient.find(f"{NS}Study").attrib == {"StudyInstanceUID": "1.2"}
    assert patient.find(f"{NS}Study/{NS}Series").attrib == {"SeriesInstanceUID": "1.2.3"}
    assert patient.find(f"{NS}Study/{NS}Series/{NS}Instance").attrib == {
        "SOPInstanceUID": "1.2.3.4"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("&transferSyntax=*", "&transferSyntax=*"),
        ("&a=1&b=2", "&a=1&b=2"),
        (None, None),
        ("", None),
    ],
)
def test_additional_parameters_under_both_spellings(value, expected):
    data = render(one(arc(additional_parameters=value)))
    query = ET.fromstring(data).find(NS + "arcQuery")
    assert query.get("additionnalParameters") == expected
    assert query.get("additionalParameters") == expected
    if value == "&transferSyntax=*":
        assert b'additionnalParameters="&amp;transferSyntax=*" ' in data
        assert b'additionalParameters="&amp;transferSyntax=*" ' in data


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (("0x00100020",), "0x00100020"),
        (("0x00100020", "0x00100010", "0x00100021"), "0x00100020,0x00100010,0x00100021"),
        ((), None),
    ],
)
def test_override_dicom_tags_list(tags, expected):
    query = parse(one(arc(override_dicom_tags=tags))).find(NS + "arcQuery")
    assert query.get("overrideDicomTagsList") == expected


@pytest.mark.parametrize(("value", "expected"), [(True, "true"), (False, "false"), (None, None)])
def test_series_retrieve(value, expected):
    query = parse(one(arc(series_retrieve=value, query_mode="DICOM_WEB"))).find(NS + "arcQuery")
    assert query.get("seriesRetrieve") == expected
    assert query.get("queryMode") == "DICOM_WEB"


def test_http_tags_in_order():
    tags = (("Authorization", "Bearer abc"), ("X-Site", "north"), ("X-Empty", ""))
    query = parse(one(arc(http_tags=tags))).find(NS + "arcQuery")
    assert [(e.tag, e.attrib) for e in query] == [
        (NS + "httpTag", {"key": "Authorization", "value": "Bearer abc"}),
        (NS + "httpTag", {"key": "X-Site", "value": "north"}),
        (NS + "httpTag", {"key": "X-Empty", "value": ""}),
    ]


def test_children_order_httptag_message_patient():
    query = parse(one(full_arc())).find(NS + "arcQuery")
    assert [e.tag for e in query] == [NS + "httpTag", NS + "Message", NS + "Patient"]


@pytest.mark.parametrize("severity", ["INFO", "WARN", "ERROR"])
def test_message_only_manifest(severity):
    msg = Message(severity, "Empty Patient List", "No study matched")
    query = parse(one(arc(message=msg))).find(NS + "arcQuery")
    assert [(e.tag, e.attrib) for e in query] == [
        (NS + "Message",
         {"title": "Empty Patient List", "description": "No study matched", "severity": severity})
    ]


def test_several_arc_queries_in_given_order():
    root = parse(Manifest([arc(arc_id="b"), arc(arc_id="a", query_mode="DB")]))
    assert [(q.get("arcId"), q.get("queryMode")) for q in root] == [("b", "DICOM"), ("a", "DB")]


def test_no_arc_query_is_refused():
    with pytest.raises(ValueError):
        manifest.to_xml(Manifest([]))


# -- values: escaping, invalid characters, formats ------------------------------------------


def patient_arc(**fields) -> ArcQuery:
    base = {"patient_id": "P1", "patient_name": "DOE^JANE"}
    return arc(patients={("P1", None): Patient(**{**base, **fields})})


def test_escaping_of_markup_characters():
    data = render(one(patient_arc(patient_name='DOE<&">JANE')))
    assert b'PatientName="DOE&lt;&amp;&quot;&gt;JANE"' in data
    assert ET.fromstring(data).find(f"{NS}arcQuery/{NS}Patient").get("PatientName") == (
        'DOE<&">JANE')


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("DOE\x01JANE", "DOEJANE"),  # C0 control: not an XML 1.0 Char
        ("A\x00B\x08C\x0bD\x0cE\x1fF", "ABCDEF"),
        ("A\ud800B", "AB"),  # lone surrogate
        ("A\ufffeB\uffffC", "ABC"),  # non-characters excluded by XML 1.0 2.2
        ("A\tB\nC", "A\tB\nC"),  # allowed, and kept through attribute normalisation
        ("Müller^Zoë 山田", "Müller^Zoë 山田"),
        ("\U0001f600", "\U0001f600"),  # beyond the BMP: allowed
    ],
)
def test_invalid_xml_characters_removed(value, expected):
    root = parse(one(patient_arc(patient_name=value)))
    assert root.find(f"{NS}arcQuery/{NS}Patient").get("PatientName") == expected


def test_invalid_characters_removed_from_every_level():
    bad = "\x01"
    inst = Instance("1.2.3.4.1", direct_download_file=f"/x{bad}")
    series = Series("1.2.3.4", series_description=f"AX{bad}", instances={"1.2.3.4.1": inst})
    study = Study("1.2.3", study_description=f"CT{bad}", series={"1.2.3.4": series})
    doc = Manifest([arc(
        arc_id=f"a{bad}", base_url=f"https://h/{bad}", web_login=f"w{bad}",
        additional_parameters=f"&x{bad}", http_tags=((f"K{bad}", f"V{bad}"),),
        message=Message("WARN", f"T{bad}", f"D{bad}"),
        patients={("P", None): Patient(f"P{bad}", f"N{bad}", f"I{bad}", studies={"1.2.3": study})},
    )], uid=f"u{bad}")
    data = render(doc)
    assert b"\x01" not in data and b"&#1;" not in data
    assert b'arcId="a"' in data and b'key="K"' in data and b'title="T"' in data
    assert b'PatientID="P"' in data and b'StudyDescription="CT"' in data
    assert b'DirectDownloadFile="/x"' in data and b'uid="u"' in data


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # PatientSex: M, F, O only; anything else left out instead of failing
        ({"patient_sex": "M"}, {"PatientSex": "M"}),
        ({"patient_sex": "O"}, {"PatientSex": "O"}),
        ({"patient_sex": "X"}, {}),
        ({"patient_sex": "female"}, {}),
        # DA YYYYMMDD, TM HH[MM[SS[.F{1,6}]]]
        ({"patient_birth_date": "19700101"}, {"PatientBirthDate": "19700101"}),
        ({"patient_birth_date": "1970-01-01"}, {}),
        ({"patient_birth_date": "19701301"}, {}),
        ({"patient_birth_time": "08"}, {"PatientBirthTime": "08"}),
        ({"patient_birth_time": "083000.123456"}, {"PatientBirthTime": "083000.123456"}),
        ({"patient_birth_time": "08:30"}, {}),
        ({"patient_birth_time": "250000"}, {}),
    ],
)
def test_patient_value_formats(fields, expected):
    patient = parse(one(patient_arc(**fields))).find(f"{NS}arcQuery/{NS}Patient")
    assert patient.attrib == {"PatientID": "P1", "PatientName": "DOE^JANE", **expected}


@pytest.mark.parametrize(
    ("number", "expected"),
    [("3", "3"), ("-1", "-1"), ("+7", "+7"), ("three", None), ("", None), (None, None)],
)
def test_number_formats(number, expected):
    inst = Instance("1.2.3.4.1", instance_number=number)
    series = Series("1.2.3.4", series_number=number, instances={"1.2.3.4.1": inst})
    root = parse(one(patient_arc(studies={"1.2.3": Study("1.2.3", series={"1.2.3.4": series})})))
    found = root.find(f"{NS}arcQuery/{NS}Patient/{NS}Study/{NS}Series")
    assert found.get("SeriesNumber") == expected
    assert found.find(NS + "Instance").get("InstanceNumber") == expected


# -- deterministic order --------------------------------------------------------------------


def ordering_arc(reverse: bool) -> ArcQuery:
    def keyed(items, attr):
        items = list(reversed(items)) if reverse else items
        return {getattr(i, attr): i for i in items}

    instances = [Instance("9.1", instance_number=None), Instance("9.2", instance_number="10"),
                 Instance("9.3", instance_number="2"), Instance("9.0", instance_number=None),
                 Instance("9.4", instance_number="2")]
    series = [Series("8.1", series_number="10"), Series("8.2", series_number="9"),
              Series("8.3"), Series("8.0", series_number="9",
                                    instances=keyed(instances, "sop_instance_uid"))]
    studies = [Study("7.1", study_date="20230101"),
               Study("7.2", study_date="20240101", study_time="080000"),
               Study("7.3"),
               Study("7.4", study_date="20240101", study_time="080000.5"),
               Study("7.0"),
               Study("7.5", study_date="20240101", study_time="08", series=keyed(
                   series, "series_instance_uid")),
               Study("7.6", study_date="20240102")]
    patients = [Patient("B", "ZED^A"), Patient("A", "ZED^A", "ISS2"), Patient("A", "ZED^A"),
                Patient("C", "ALPHA", studies=keyed(studies, "study_instance_uid"))]
    patients = list(reversed(patients)) if reverse else patients
    return arc(patients={(p.patient_id, p.issuer_of_patient_id): p for p in patients})


def test_deterministic_order():
    root = parse(one(ordering_arc(reverse=False)))
    patients = root.findall(f"{NS}arcQuery/{NS}Patient")
    # by PatientName, then PatientID, then issuer (absent first)
    assert [(p.get("PatientName"), p.get("PatientID"), p.get("IssuerOfPatientID"))
            for p in patients] == [("ALPHA", "C", None), ("ZED^A", "A", None),
                                   ("ZED^A", "A", "ISS2"), ("ZED^A", "B", None)]
    # newest first (TM "08" is 08:00:00, a tie with "080000" broken by UID), undated last
    assert [s.get("StudyInstanceUID") for s in patients[0]] == [
        "7.6", "7.4", "7.2", "7.5", "7.1", "7.0", "7.3"]
    study = patients[0].find(f"{NS}Study[@StudyInstanceUID='7.5']")
    # numerically (9 before 10), absent last, ties by UID
    assert [s.get("SeriesInstanceUID") for s in study] == ["8.0", "8.2", "8.1", "8.3"]
    assert [i.get("SOPInstanceUID") for i in study.find(NS + "Series")] == [
        "9.3", "9.4", "9.2", "9.0", "9.1"]


def test_same_bytes_whatever_the_insertion_order():
    forward = render(one(ordering_arc(reverse=False)))
    assert forward == render(one(ordering_arc(reverse=True)))
    assert forward == render(one(ordering_arc(reverse=False)))


# -- merge_rows: DICOM JSON answers into the tree -------------------------------------------


def el(vr: str, *values) -> dict:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def study_row(uid="1.2.3", pid="123", issuer=None, **extra) -> dict:
    row = {"0020000D": el("UI", uid), "00100020": el("LO", pid),
           "00100010": el("PN", {"Alphabetic": "DOE^JANE", "Ideographic": "ドウ^ジェーン"}),
           "00100030": el("DA", "19700101"), "00100040": el("CS", "F"),
           "00080020": el("DA", "20240102"), "00080030": el("TM", "101500"),
           "00080050": el("SH", "A42"), "00081030": el("LO", "CT THORAX"),
           "00200010": el("SH", "S1"), "00080090": el("PN", {"Alphabetic": "WHO^DR"}),
           "00080061": el("CS", "CT", "SR")}
    if issuer is not None:
        row["00100021"] = el("LO", issuer)
    return {**row, **extra}


SERIES_ROW = {"0020000D": el("UI", "1.2.3"), "0020000E": el("UI", "1.2.3.4"),
              "00080060": el("CS", "CT"), "0008103E": el("LO", "AXIAL"),
              "00200011": el("IS", 2), "00080021": el("DA", "20240102"),
              "00080031": el("TM", "101600")}
INSTANCE_ROW = {"0020000D": el("UI", "1.2.3"), "0020000E": el("UI", "1.2.3.4"),
                "00080018": el("UI", "1.2.3.4.1"),
                "00080016": el("UI", "1.2.840.10008.5.1.4.1.1.2"),
                "00200013": el("IS", 3)}


def test_merge_rows_builds_every_level():
    query = arc()
    merge_rows(query, study_row())
    merge_rows(query, study_row(), SERIES_ROW)
    merge_rows(query, study_row(), SERIES_ROW, INSTANCE_ROW)
    assert list(query.patients) == [("123", None)]
    patient = query.patients[("123", None)]
    assert (patient.patient_name, patient.patient_birth_date, patient.patient_sex) == (
        "DOE^JANE", "19700101", "F")  # PN: the Alphabetic group
    study = patient.studies["1.2.3"]
    assert (study.study_date, study.study_time, study.accession_number, study.study_description,
            study.study_id, study.referring_physician_name, study.modalities_in_study) == (
        "20240102", "101500", "A42", "CT THORAX", "S1", "WHO^DR", ("CT", "SR"))
    series = study.series["1.2.3.4"]
    assert (series.modality, series.series_description, series.series_number,
            series.series_date, series.series_time) == ("CT", "AXIAL", "2", "20240102", "101600")
    assert study.series["1.2.3.4"].instances == {
        "1.2.3.4.1": Instance("1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.2", "3")}


def test_merge_rows_round_trip_through_xml():
    query = arc()
    merge_rows(query, study_row(), SERIES_ROW, INSTANCE_ROW)
    root = parse(one(query))
    patient = root.find(f"{NS}arcQuery/{NS}Patient")
    assert patient.attrib == {"PatientID": "123", "PatientName": "DOE^JANE",
                              "PatientBirthDate": "19700101", "PatientSex": "F"}
    inst = patient.find(f"{NS}Study/{NS}Series/{NS}Instance")
    assert inst.attrib == {"SOPInstanceUID": "1.2.3.4.1",
                           "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "InstanceNumber": "3"}


def test_merge_rows_keys_patients_by_id_and_issuer():
    query = arc()
    merge_rows(query, study_row("1.1", "123", "HOSP-A"))
    merge_rows(query, study_row("1.2", "123", "HOSP-B"))
    merge_rows(query, study_row("1.3", "123"))
    merge_rows(query, study_row("1.4", "123", "HOSP-A"))
    assert {k: list(p.studies) for k, p in query.patients.items()} == {
        ("123", "HOSP-A"): ["1.1", "1.4"], ("123", "HOSP-B"): ["1.2"], ("123", None): ["1.3"]}
    assert query.patients[("123", "HOSP-A")].issuer_of_patient_id == "HOSP-A"


def test_merge_rows_fills_only_empty_attributes():
    query = arc()
    merge_rows(query, {"0020000D": el("UI", "1.2.3"), "00100020": el("LO", "123"),
                       "00081030": el("LO", "FIRST")})
    merge_rows(query, study_row(**{"00081030": el("LO", "SECOND")}))
    patient = query.patients[("123", None)]
    assert patient.patient_name == "DOE^JANE"  # was "", filled by the second row
    assert patient.studies["1.2.3"].study_description == "FIRST"  # kept
    assert patient.studies["1.2.3"].study_date == "20240102"  # filled


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        (el("PN"), ""),  # empty attribute (PS3.18 F.2.5): unknown
        (el("PN", {"Ideographic": "山田^太郎"}), ""),  # no Alphabetic group
        (el("PN", {"Alphabetic": " DOE^JOHN "}), "DOE^JOHN"),
        (el("PN", None), ""),
    ],
)
def test_merge_rows_patient_name(attribute, expected):
    query = arc()
    merge_rows(query, study_row(**{"00100010": attribute}))
    assert query.patients[("123", None)].patient_name == expected


@pytest.mark.parametrize(
    ("tag", "attribute", "field", "expected"),
    [
        # PS3.5 Table 6.2-1: DA/TM in the older YYYY.MM.DD / HH:MM:SS forms
        ("00080020", el("DA", "2024.01.02"), "study_date", "20240102"),
        ("00080030", el("TM", "10:15:00"), "study_time", "101500"),
        # a multi-valued answer (LO split on backslash) is joined back
        ("00081030", el("LO", "CT", "HEAD"), "study_description", "CT\\HEAD"),
        # a sequence never becomes an attribute value
        ("00081030", {"vr": "SQ", "Value": [{"00081030": el("LO", "x")}]}, "study_description",
         None),
    ],
)
def test_merge_rows_values(tag, attribute, field, expected):
    query = arc()
    merge_rows(query, study_row(**{tag: attribute}))
    assert getattr(query.patients[("123", None)].studies["1.2.3"], field) == expected


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (({"00100020": el("LO", "1")},), "StudyInstanceUID"),
        ((study_row(), {"00080060": el("CS", "CT")}), "SeriesInstanceUID"),
        ((study_row(), SERIES_ROW, {"00200013": el("IS", 1)}), "SOPInstanceUID"),
    ],
)
def test_merge_rows_without_uid(rows, message):
    with pytest.raises(ValueError, match=message):
        merge_rows(arc(), *rows)


# -- filters --------------------------------------------------------------------------------


def filter_arc() -> ArcQuery:
    """S1 2024-01-02 10:15 CT "Thorax ÉPAULE"; S2 2024-01-03 (no time), MR only on a series;
    S3 undated CR "Épaule droite"; S4 2023-12-31 23:59:59 MR, no description.
    Patient Q has only the undated S5."""
    studies = [
        Study("1.1", "Thorax ÉPAULE", "20240102", "101500", modalities_in_study=("CT",)),
        Study("1.2", "CT HEAD", "20240103", series={"1.2.1": Series("1.2.1", modality="MR")}),
        Study("1.3", "Épaule droite", modalities_in_study=("CR",)),
        Study("1.4", None, "20231231", "235959", modalities_in_study=("MR",)),
    ]
    return arc(patients={
        ("P", None): Patient("P", "DOE", studies={s.study_instance_uid: s for s in studies}),
        ("Q", None): Patient("Q", "ROE", studies={"1.5": Study("1.5", "CT", modalities_in_study=(
            "CT",))}),
    })


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), {"P": ["1.1", "1.2", "1.3", "1.4"], "Q": ["1.5"]}),
        # modalitiesInStudy: ModalitiesInStudy or a series' Modality
        (Filters(modalities=("CT",)), {"P": ["1.1"], "Q": ["1.5"]}),
        (Filters(modalities=("MR",)), {"P": ["1.2", "1.4"]}),
        (Filters(modalities=("ct",)), {"P": ["1.1"], "Q": ["1.5"]}),
        (Filters(modalities=("CR", "MR")), {"P": ["1.2", "1.3", "1.4"]}),
        (Filters(modalities=("US",)), {}),
        # containsInDescription: case- and accent-insensitive, any value; no description: out
        (Filters(descriptions=("epaule",)), {"P": ["1.1", "1.3"]}),
        (Filters(descriptions=("ÉPAULE",)), {"P": ["1.1", "1.3"]}),
        (Filters(descriptions=("thorax épaule",)), {"P": ["1.1"]}),
        (Filters(descriptions=("head", "DROITE")), {"P": ["1.2", "1.3"]}),
        (Filters(descriptions=("knee",)), {}),
        # lowerDateTime / upperDateTime: inclusive at the edge; a study without time is 00:00:00
        (Filters(lower=at(2024, 1, 2, 10, 15)), {"P": ["1.1", "1.2"]}),
        (Filters(lower=at(2024, 1, 2, 10, 15, 0, 1)), {"P": ["1.2"]}),
        (Filters(upper=at(2024, 1, 2, 10, 15)), {"P": ["1.1", "1.4"]}),
        (Filters(upper=at(2024, 1, 2, 10, 14, 59, 999999)), {"P": ["1.4"]}),
        (Filters(upper=at(2024, 1, 3)), {"P": ["1.1", "1.2", "1.4"]}),
        (Filters(lower=at(2024, 1, 2), upper=at(2024, 1, 2, 23, 59, 59, 999999)), {"P": ["1.1"]}),
        (Filters(lower=at(2023, 12, 31, 23, 59, 59), upper=at(2023, 12, 31, 23, 59, 59)),
         {"P": ["1.4"]}),
        # mostRecentResults: the N newest when more than N; undated then dropped
        (Filters(most_recent=1), {"P": ["1.2"], "Q": ["1.5"]}),
        (Filters(most_recent=2), {"P": ["1.1", "1.2"], "Q": ["1.5"]}),
        (Filters(most_recent=3), {"P": ["1.1", "1.2", "1.4"], "Q": ["1.5"]}),
        (Filters(most_recent=4), {"P": ["1.1", "1.2", "1.3", "1.4"], "Q": ["1.5"]}),
        # combined: the N most recent among the matching ones
        (Filters(modalities=("MR",), most_recent=1), {"P": ["1.2"]}),
        (Filters(descriptions=("epaule",), most_recent=1), {"P": ["1.1"]}),
    ],
)
def test_filters(filters, expected):
    query = filter_arc()
    apply_filters(query, filters)
    assert {k[0]: list(p.studies) for k, p in query.patients.items()} == expected
    parse(one(query))  # still a valid manifest


@pytest.mark.parametrize(
    ("limit", "expected"), [(1, ["2.2"]), (2, ["2.2"]), (3, ["2.1", "2.2", "2.3"])]
)
def test_most_recent_counts_dated_studies_only(limit, expected):
    # more than N studies: only dated ones compete, so fewer than N may remain
    studies = [Study("2.1"), Study("2.2", study_date="20200101"), Study("2.3")]
    query = arc(patients={("P", None): Patient("P", "DOE", studies={
        s.study_instance_uid: s for s in studies})})
    apply_filters(query, Filters(most_recent=limit))
    assert list(query.patients[("P", None)].studies) == expected


def test_filters_keep_a_study_at_both_edges_in_the_xml():
    query = filter_arc()
    apply_filters(query, Filters(lower=at(2024, 1, 2, 10, 15), upper=at(2024, 1, 3)))
    root = parse(one(query))
    assert [s.get("StudyInstanceUID") for s in root.iter(NS + "Study")] == ["1.2", "1.1"]


def test_no_filter_keeps_patient_without_study():
    query = arc(patients={("P", None): Patient("P", "DOE")})
    apply_filters(query, Filters())
    assert list(query.patients) == [("P", None)]
    apply_filters(query, Filters(modalities=("CT",)))
    assert query.patients == {}


# -- JSON form ------------------------------------------------------------------------------


def test_json_form():
    assert manifest.to_json(one(full_arc())) == {"manifest": {
        "uid": "6f1c2a40-0000-4000-8000-000000000001",
        "arcQuery": [{
            "arcId": "pacs-a", "baseUrl": "https://gw.example.org/wado",
            "webLogin": "dXNlcjpwdw==", "requireOnlySOPInstanceUID": True,
            "additionnalParameters": "&transferSyntax=*",
            "additionalParameters": "&transferSyntax=*",
            "overrideDicomTagsList": "0x00100020", "queryMode": "DICOM", "seriesRetrieve": True,
            "httpTag": [{"key": "Authorization", "value": "Bearer T"}],
            "Message": {"title": "t", "description": "d", "severity": "INFO"},
            "Patient": [{
                "PatientID": "123", "PatientName": "DOE^JANE", "IssuerOfPatientID": "HOSP",
                "PatientBirthDate": "19700101", "PatientBirthTime": "0830", "PatientSex": "F",
                "Study": [{
                    "StudyInstanceUID": "1.2.3", "StudyDescription": "CT THORAX",
                    "StudyDate": "20240102", "StudyTime": "101500", "AccessionNumber": "A42",
                    "StudyID": "S1", "ReferringPhysicianName": "WHO^DR",
                    "Series": [{
                        "SeriesInstanceUID": "1.2.3.4", "SeriesDescription": "AXIAL",
                        "SeriesNumber": "2", "Modality": "CT", "SeriesDate": "20240102",
                        "SeriesTime": "101600", "WadoTransferSyntaxUID": "1.2.840.10008.1.2.4.90",
                        "WadoCompressionRate": 80, "DirectDownloadThumbnail": "/thumb",
                        "Instance": [{
                            "SOPInstanceUID": "1.2.3.4.1",
                            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                            "InstanceNumber": "1", "DirectDownloadFile": "/studies/1.2.3/x",
                        }],
                    }],
                }],
            }],
        }],
    }}


def test_json_same_names_and_order_as_xml():
    doc = one(ordering_arc(reverse=True))
    root = parse(doc)
    data = manifest.to_json(doc)["manifest"]

    def walk(element, obj):
        attrs = [k for k, v in obj.items() if not isinstance(v, list | dict)]
        assert attrs == list(element.attrib)
        groups = [(k, v) for k, v in obj.items() if isinstance(v, list)]
        children = [(c.tag[len(NS):], c) for c in element]
        assert [name for name, _ in children] == [k for k, v in groups for _ in v]
        for (_, child), item in zip(children, [i for _, v in groups for i in v], strict=True):
            walk(child, item)

    walk(root, data)


def test_json_message_and_typed_values():
    data = manifest.to_json(Manifest([arc(message=Message("ERROR", "x", "y"))]))
    assert data == {"manifest": {"arcQuery": [{
        "arcId": "pacs-a", "baseUrl": "https://gw.example.org/wado",
        "requireOnlySOPInstanceUID": False, "queryMode": "DICOM",
        "Message": {"title": "x", "description": "y", "severity": "ERROR"}}]}}


# -- the XSD is not vacuous -----------------------------------------------------------------


def test_xsd_accepts_the_format_example():
    # the illustrative skeleton of the format description, written out here
    example = b"""<?xml version="1.0" encoding="UTF-8"?>
<manifest xmlns="http://www.weasis.org/xsd/2.5" uid="6f1c">
  <arcQuery arcId="pacs-a" baseUrl="https://gw.example.org/wado/pacs-a"
            requireOnlySOPInstanceUID="false"
            additionnalParameters="&amp;transferSyntax=*"
            additionalParameters="&amp;transferSyntax=*"
            overrideDicomTagsList="0x00100020,0x00100010" queryMode="DICOM">
    <httpTag key="Authorization" value="Bearer SHORT-LIVED-GATEWAY-TOKEN"/>
    <Patient PatientID="123" IssuerOfPatientID="HOSP" PatientName="DOE^JANE"
             PatientBirthDate="19700101" PatientSex="F">
      <Study StudyInstanceUID="1.2.3" StudyDate="20240102" StudyTime="101500"
             AccessionNumber="A42" StudyDescription="CT THORAX">
        <Series SeriesInstanceUID="1.2.3.4" SeriesNumber="2" Modality="CT"
                WadoTransferSyntaxUID="1.2.840.10008.1.2.4.90" WadoCompressionRate="0">
          <Instance SOPInstanceUID="1.2.3.4.1" SOPClassUID="1.2.840.10008.5.1.4.1.1.2"
                    InstanceNumber="1"/>
        </Series>
      </Study>
    </Patient>
  </arcQuery>
</manifest>"""
    SCHEMA.validate(io.BytesIO(example))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'PatientSex="F"', b'PatientSex="X"'),
        (b'arcId="pacs-a" ', b""),
        (b'baseUrl="https://gw.example.org/wado" ', b""),
        (b'PatientID="123" ', b""),
        (b'StudyInstanceUID="1.2.3" ', b""),
        (b'StudyInstanceUID="1.2.3"', b'StudyInstanceUID="1.2.x"'),
        (b'queryMode="DICOM"', b'queryMode="WADO"'),
        (b'severity="INFO"', b'severity="DEBUG"'),
        (b'overrideDicomTagsList="0x00100020"', b'overrideDicomTagsList="0x0010abcd"'),
        (b'overrideDicomTagsList="0x00100020"', b'overrideDicomTagsList="(0010,0020)"'),
        (b'StudyDate="20240102"', b'StudyDate="2024-01-02"'),
        (b'StudyTime="101500"', b'StudyTime="10:15:00"'),
        (b'SeriesNumber="2"', b'SeriesNumber="two"'),
        (b'seriesRetrieve="true"', b'seriesRetrieve="yes"'),
        (b'WadoCompressionRate="80"', b'WadoCompressionRate="101"'),
        (b'xmlns="http://www.weasis.org/xsd/2.5"', b'xmlns="http://www.weasis.org/xsd/2.4"'),
        (b"<Patient ", b'<Patient xmlns="urn:other" '),
        (b'PatientSex="F"', b'PatientSex="F" Unknown="1"'),
    ],
)
def test_xsd_rejects(old, new):
    good = render(one(full_arc()))
    assert good.count(old) == 1
    assert not SCHEMA.is_valid(io.BytesIO(good.replace(old, new)))


def test_xsd_rejects_message_after_patient():
    good = render(one(full_arc()))
    root = ET.fromstring(good)
    query = root.find(NS + "arcQuery")
    message = query.find(NS + "Message")
    query.remove(message)
    query.append(message)
    assert not SCHEMA.is_valid(root)
    query.remove(message)
    query.insert(1, message)
    assert SCHEMA.is_valid(root)  # restored: the move was the only fault
