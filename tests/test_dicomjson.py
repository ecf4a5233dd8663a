"""DICOM JSON encoding (PS3.18 Annex F)."""

from io import BytesIO

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from gateway import dicomjson
from gateway.query import Level, parse_search


@pytest.mark.parametrize(
    ("tag", "value", "expected"),
    [
        # F.2.2: PN as component-group objects, split on '='
        (0x00100010, "Yamada^Tarou=山田^太郎=やまだ^たろう",
         {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                                  "Phonetic": "やまだ^たろう"}]}),
        (0x00100010, "DOE^JOHN", {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}),
        (0x00100010, "=山田^太郎", {"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]}),
        # F.2.3.1: IS and DS are JSON numbers
        (0x00200013, " 12 ", {"vr": "IS", "Value": [12]}),
        (0x00280030, "0.5\\0.25", {"vr": "DS", "Value": [0.5, 0.25]}),
        # F.2.5: an empty attribute has no Value
        (0x00080050, "", {"vr": "SH"}),
        (0x00080050, None, {"vr": "SH"}),
        # multi-valued strings split on backslash
        (0x00080008, "ORIGINAL\\PRIMARY", {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}),
        # an empty value among several is null
        (0x00080008, "ORIGINAL\\\\AXIAL", {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}),
        # AT as 8 uppercase hex digits
        (0x00209165, 0x0020000D, {"vr": "AT", "Value": ["0020000D"]}),
        # LO may not hold a backslash (PS3.5 6.2): it separates values
        (0x00081030, "CT\\HEAD", {"vr": "LO", "Value": ["CT", "HEAD"]}),
        # LT, ST and UT are single-valued: a backslash stays
        (0x00324000, "a\\b", {"vr": "LT", "Value": ["a\\b"]}),
        (0x00080020, "20240102", {"vr": "DA", "Value": ["20240102"]}),
    ],
)
def test_attribute(tag, value, expected):
    assert dicomjson.attribute(tag, value) == expected


def test_keys_are_uppercase_hex_and_sorted():
    data = dicomjson.dataset({0x0020000D: "1.2.3", 0x00100010: "A^B", 0x00080020: "20240101"})
    assert list(data) == ["00080020", "00100010", "0020000D"]


def test_text_is_decoded_from_its_specific_character_set():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "Schädel"
    # encode to Latin-1 bytes and read them back, as a C-FIND answer arrives
    buf = BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True)
    assert "Müller".encode("latin-1") in buf.getvalue()
    raw = pydicom.dcmread(BytesIO(buf.getvalue()), force=True)
    out = dicomjson.from_pydicom(raw)
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}
    assert out["00081030"]["Value"] == ["Schädel"]
    assert "00080005" not in out  # the JSON is UTF-8; the source character set no longer applies


def test_from_pydicom_pixel_data_becomes_a_bulk_data_uri():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = dicomjson.from_pydicom(ds, lambda path: "http://gw/bulk/" + "/".join(path))
    assert out["7FE00010"] == {"vr": "OW", "BulkDataURI": "http://gw/bulk/7FE00010"}
    assert out["00280030"] == {"vr": "DS", "Value": [0.661468, 0.661468]}
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert all(k == k.upper() and len(k) == 8 for k in out)


def test_data_set_trailing_padding_is_not_carried():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 16)  # padding some writers leave at the end
    out = dicomjson.from_pydicom(ds, lambda path: "http://gw/bulk/" + "/".join(path))
    assert "FFFCFFFC" not in out
    assert list(out)[-1] == "7FE00010"


def test_series_answer_carries_study_attributes_when_not_scoped():
    query = parse_search(Level.SERIES, [])
    tags, optional = dicomjson.return_tags(query, scoped_study=False, scoped_series=False)
    assert 0x00201209 in tags and 0x0020000D in tags
    assert 0x00100010 in optional and 0x00080061 in optional
    scoped = parse_search(Level.SERIES, [], {0x0020000D: "1.2"})
    tags, optional = dicomjson.return_tags(scoped, scoped_study=True, scoped_series=False)
    assert 0x00100010 not in tags + optional and 0x0020000D in tags


def test_trim_adds_required_attributes_without_value_and_drops_the_rest():
    data = {"0020000D": {"vr": "UI", "Value": ["1.2"]}, "00189999": {"vr": "LO", "Value": ["x"]}}
    out = dicomjson.trim(data, dicomjson.STUDY_ATTRIBUTES, include_all=False)
    assert out["0020000D"] == {"vr": "UI", "Value": ["1.2"]}
    assert out["00080050"] == {"vr": "SH"}
    assert "00189999" not in out
    assert "00080201" not in out  # TimezoneOffsetFromUTC is conditional
    assert dicomjson.trim(data, (), include_all=True)["00189999"] == {"vr": "LO", "Value": ["x"]}
    optional = dicomjson.trim(data, (), False, optional=(0x00189999, 0x00080061))
    assert optional == {"00189999": {"vr": "LO", "Value": ["x"]}}  # absent optional ones left out
