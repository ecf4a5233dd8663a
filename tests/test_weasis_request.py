"""Weasis launch parameters (Viewer-Hub's set, reference viewer-hub.md section 4), the IHE IID
rules (RAD-106), the weasis:// URL (viewer-hub.md 3.4) and the launch page."""

import datetime
import json
import re
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest

from gateway.errors import BadRequest
from gateway.manifest import Filters
from gateway.weasis_request import (
    LAUNCH_PARAMETERS,
    ManifestRequest,
    launch_page,
    launch_parameters,
    parse_manifest_request,
    weasis_url,
)

DT = datetime.datetime
FIVE = ("patientID", "studyUID", "accessionNumber", "seriesUID", "objectUID")


def refused(args, iid=False):
    with pytest.raises(BadRequest) as caught:
        parse_manifest_request(args, iid=iid)
    assert caught.value.status == 400
    return caught.value


# --- identifiers: repeat + comma, union, de-duplication ------------------------------------


@pytest.mark.parametrize(
    ("args", "field", "expected"),
    [
        (
            {"studyUID": ["1.2.3,1.2.4", "1.2.4", "1.2.5"]},
            "study_uids",
            ("1.2.3", "1.2.4", "1.2.5"),
        ),
        ({"studyUID": [" 1.2.3 , ,1.2.3", ""]}, "study_uids", ("1.2.3",)),
        ({"seriesUID": ["1.2.3.1", "1.2.3.2,1.2.3.1"]}, "series_uids", ("1.2.3.1", "1.2.3.2")),
        ({"objectUID": ["1.2.3.4.5,1.2.3.4.6"]}, "object_uids", ("1.2.3.4.5", "1.2.3.4.6")),
        ({"accessionNumber": ["A1,A2", "A1", "A3"]}, "accession_numbers", ("A1", "A2", "A3")),
        (
            {"patientID": ["P1^^^HOSP,P2", "P1^^^HOSP", "P1"]},
            "patient_ids",
            (("P1", "HOSP"), ("P2", None), ("P1", None)),
        ),
        (
            {"studyUID": ["1.2"], "archive": ["pacs-a,pacs-b", "pacs-a"]},
            "archives",
            ("pacs-a", "pacs-b"),
        ),
    ],
)
def test_identifiers_repeat_and_comma(args, field, expected):
    assert getattr(parse_manifest_request(args), field) == expected


def test_all_five_kinds_together_are_a_union():
    args = {
        "patientID": ["P1"],
        "studyUID": ["1.2.1"],
        "accessionNumber": ["ACC1"],
        "seriesUID": ["1.2.1.1"],
        "objectUID": ["1.2.1.1.1"],
    }
    assert parse_manifest_request(args) == ManifestRequest(
        patient_ids=(("P1", None),),
        study_uids=("1.2.1",),
        accession_numbers=("ACC1",),
        series_uids=("1.2.1.1",),
        object_uids=("1.2.1.1.1",),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("123^^^HOSP", ("123", "HOSP")),
        ("123^^^", ("123", None)),
        ("123", ("123", None)),
        ("123^^^&1.2.3.4&ISO", ("123", "&1.2.3.4&ISO")),  # HL7 CX assigning authority as sent
        ("DOE^JANE", ("DOE^JANE", None)),  # a single caret is part of the ID
        ("P" * 64 + "^^^" + "H" * 64, ("P" * 64, "H" * 64)),  # LO maximum, PS3.5 Table 6.2-1
    ],
)
def test_patient_id_with_issuer(value, expected):
    assert parse_manifest_request({"patientID": [value]}).patient_ids == (expected,)


# --- bad values: 400 naming the parameter, value not echoed ------------------------------

BAD = [
    ({"studyUID": ["1.2.abc"]}, "studyUID"),
    ({"studyUID": ["1.2.3,1.2.*"]}, "studyUID"),
    ({"seriesUID": ["1." + "2" * 70]}, "seriesUID"),  # longer than 64 (PS3.5 9.1)
    ({"objectUID": ["1..2"]}, "objectUID"),
    ({"studyUID": [",".join(f"1.2.{i}" for i in range(1001))]}, "studyUID"),
    ({"patientID": ["^^^HOSP"]}, "patientID"),
    ({"patientID": ["PAT*"]}, "patientID"),  # C-FIND wildcard, PS3.4 C.2.2.2.4
    ({"patientID": ["PAT?"]}, "patientID"),
    ({"patientID": ["PAT\\OTHER"]}, "patientID"),  # value delimiter, PS3.5 6.2
    ({"patientID": ["PAT\x00X"]}, "patientID"),
    ({"patientID": ["P" * 65]}, "patientID"),  # LO is 64 characters
    ({"patientID": ["PAT^^^" + "H" * 65]}, "patientID"),
    ({"patientID": ["PAT^^^HO*"]}, "patientID"),
    ({"accessionNumber": ["A" * 17]}, "accessionNumber"),  # SH is 16 characters
    ({"accessionNumber": ["ACC*"]}, "accessionNumber"),
    ({"studyUID": ["1.2"], "archive": ["pacs\x07"]}, "archive"),
    ({"studyUID": ["1.2"], "modalitiesInStudy": ["C-T"]}, "modalitiesInStudy"),
    ({"studyUID": ["1.2"], "modalitiesInStudy": ["X" * 17]}, "modalitiesInStudy"),
    ({"studyUID": ["1.2"], "containsInDescription": ["THORAX\nX"]}, "containsInDescription"),
    ({"studyUID": ["1.2"], "lowerDateTime": ["2024-13-01"]}, "lowerDateTime"),
    ({"studyUID": ["1.2"], "lowerDateTime": ["2023-02-29"]}, "lowerDateTime"),
    ({"studyUID": ["1.2"], "lowerDateTime": ["yesterday"]}, "lowerDateTime"),
    ({"studyUID": ["1.2"], "lowerDateTime": ["2024-1-2"]}, "lowerDateTime"),
    ({"studyUID": ["1.2"], "lowerDateTime": ["2024-01-02 10:00"]}, "lowerDateTime"),
    ({"studyUID": ["1.2"], "lowerDateTime": ["2024-01-02T24:00"]}, "lowerDateTime"),
    ({"studyUID": ["1.2"], "lowerDateTime": ["2024-01-02T10:00:00Z"]}, "lowerDateTime"),
    ({"studyUID": ["1.2"], "upperDateTime": ["2024-01-02T10:00:00+01:00"]}, "upperDateTime"),
    ({"studyUID": ["1.2"], "upperDateTime": ["202401021030"]}, "upperDateTime"),
    ({"studyUID": ["1.2"], "upperDateTime": ["0000-01-01"]}, "upperDateTime"),
    ({"studyUID": ["1.2"], "upperDateTime": ["2024-01-01", "2024-02-01"]}, "upperDateTime"),
    (
        {"studyUID": ["1.2"], "lowerDateTime": ["2024-01-03"], "upperDateTime": ["2024-01-02"]},
        "upperDateTime",
    ),
    (
        {
            "studyUID": ["1.2"],
            "lowerDateTime": ["2024-01-02T10:01"],
            "upperDateTime": ["2024-01-02T10:00:59.999999"],
        },
        "upperDateTime",
    ),
    ({"studyUID": ["1.2"], "mostRecentResults": ["0"]}, "mostRecentResults"),
    ({"studyUID": ["1.2"], "mostRecentResults": ["-1"]}, "mostRecentResults"),
    ({"studyUID": ["1.2"], "mostRecentResults": ["+3"]}, "mostRecentResults"),
    ({"studyUID": ["1.2"], "mostRecentResults": ["1.5"]}, "mostRecentResults"),
    ({"studyUID": ["1.2"], "mostRecentResults": ["ten"]}, "mostRecentResults"),
    ({"studyUID": ["1.2"], "mostRecentResults": ["2147483648"]}, "mostRecentResults"),
    ({"studyUID": ["1.2"], "mostRecentResults": ["3", "4"]}, "mostRecentResults"),
]


@pytest.mark.parametrize(("args", "parameter"), BAD)
def test_bad_value_is_400_naming_the_parameter(args, parameter):
    error = refused(args)
    assert error.parameter == parameter
    assert error.to_json()["parameter"] == parameter
    assert parameter in error.message
    for values in args.values():
        for value in values:
            if len(value) > 4:  # the refused value is not repeated back
                assert value not in error.message


def test_bad_request_body():
    error = refused({"patientID": ["SECRET-ID-4711*"]})
    assert error.to_json() == {
        "status": 400,
        "error": "patientID must not contain '\\', '*', '?' or control characters",
        "parameter": "patientID",
    }


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"patientID": ["", ","], "studyUID": [" "]},
        {"archive": ["pacs-a"], "modalitiesInStudy": ["CT"], "mostRecentResults": ["2"]},
    ],
)
def test_no_identifier(args):
    error = refused(args)
    assert error.parameter == "patientID"
    assert all(name in error.message for name in FIVE)


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        ({"studyUID": ["1.2"], "foo": ["x"]}, "foo"),
        ({"studyUID": ["1.2"], "StudyInstanceUID": ["1.2"]}, "StudyInstanceUID"),
        ({"studyUID": ["1.2"], "patientid": ["P1"]}, "patientid"),  # names are case-sensitive
        ({"studyUID": ["1.2"], "requestType": ["STUDY"]}, "requestType"),  # IID route only
        ({"studyUID": ["1.2"], "patientName": ["DOE^JANE"]}, "patientName"),
        ({"studyUID": ["1.2"], "x" * 300: ["1"]}, "x" * 64),  # the name is cut to 64
    ],
)
def test_unknown_parameter_refused(args, parameter):
    assert refused(args).parameter == parameter


def test_launch_parameters_pass_through_the_manifest_parser():
    args = {"studyUID": ["1.2"], "pro": ["a b"], "arg": ["$dicom:close --all"], "cdb": [""]}
    assert parse_manifest_request(args) == ManifestRequest(study_uids=("1.2",))
    assert LAUNCH_PARAMETERS == ("pro", "arg", "cdb")


# --- filters --------------------------------------------------------------------------------


def test_filters_parsed():
    args = {
        "patientID": ["P1"],
        "modalitiesInStudy": ["ct,MR", "CT", " sr "],
        "containsInDescription": ["Thorax, abdomen", "thorax, abdomen", ""],
        "lowerDateTime": ["2024-01-02"],
        "upperDateTime": ["2024-03-04T10:30"],
        "mostRecentResults": ["3"],
    }
    assert parse_manifest_request(args).filters == Filters(
        modalities=("CT", "MR", "SR"),
        descriptions=("Thorax, abdomen", "thorax, abdomen"),  # not split at commas
        lower=DT(2024, 1, 2, 0, 0, 0),
        upper=DT(2024, 3, 4, 10, 30, 59, 999999),
        most_recent=3,
    )


def test_empty_filters_are_absent():
    args = {"patientID": ["P1"], "lowerDateTime": [""], "mostRecentResults": [""]}
    assert parse_manifest_request(args).filters == Filters()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("lowerDateTime", "2024-01-02", DT(2024, 1, 2)),
        ("upperDateTime", "2024-01-02", DT(2024, 1, 2, 23, 59, 59, 999999)),
        ("lowerDateTime", "20240102", DT(2024, 1, 2)),
        ("upperDateTime", "20240102", DT(2024, 1, 2, 23, 59, 59, 999999)),
        ("lowerDateTime", "20240102103000", DT(2024, 1, 2, 10, 30, 0)),
        ("upperDateTime", "20240102103000", DT(2024, 1, 2, 10, 30, 0, 999999)),
        ("lowerDateTime", "2024-01-02T10:30", DT(2024, 1, 2, 10, 30)),
        ("upperDateTime", "2024-01-02T10:30", DT(2024, 1, 2, 10, 30, 59, 999999)),
        ("upperDateTime", "2024-01-02T10:30:15", DT(2024, 1, 2, 10, 30, 15, 999999)),
        ("lowerDateTime", "2024-01-02T10:30:15.5", DT(2024, 1, 2, 10, 30, 15, 500000)),
        ("upperDateTime", "2024-01-02T10:30:15.5", DT(2024, 1, 2, 10, 30, 15, 599999)),
        ("upperDateTime", "2024-01-02T10:30:15.123456", DT(2024, 1, 2, 10, 30, 15, 123456)),
        ("upperDateTime", "2024-12-31", DT(2024, 12, 31, 23, 59, 59, 999999)),
        ("upperDateTime", "2024-02-29", DT(2024, 2, 29, 23, 59, 59, 999999)),  # leap year
        ("upperDateTime", "9999-12-31", DT(9999, 12, 31, 23, 59, 59, 999999)),
    ],
)
def test_date_forms_and_inclusive_bounds(name, value, expected):
    filters = parse_manifest_request({"studyUID": ["1.2"], name: [value]}).filters
    assert (filters.lower if name == "lowerDateTime" else filters.upper) == expected


def test_one_day_range_is_allowed():
    args = {"studyUID": ["1.2"], "lowerDateTime": ["2024-01-02"], "upperDateTime": ["2024-01-02"]}
    filters = parse_manifest_request(args).filters
    assert (filters.lower, filters.upper) == (DT(2024, 1, 2), DT(2024, 1, 2, 23, 59, 59, 999999))


def test_bounds_compared_after_widening_the_upper_one():
    args = {
        "studyUID": ["1.2"],
        "lowerDateTime": ["2024-01-02T10:00:01"],
        "upperDateTime": ["2024-01-02T10:00"],  # up to 10:00:59.999999, after the lower bound
    }
    filters = parse_manifest_request(args).filters
    assert (filters.lower, filters.upper) == (
        DT(2024, 1, 2, 10, 0, 1),
        DT(2024, 1, 2, 10, 0, 59, 999999),
    )


def test_most_recent_results_bounds():
    args = {"studyUID": ["1.2"], "mostRecentResults": ["2147483647"]}
    assert parse_manifest_request(args).filters.most_recent == 2**31 - 1


# --- IHE IID --------------------------------------------------------------------------------

IGNORED = {
    "patientName": ["DOE^JANE"],
    "patientBirthDate": ["19700101"],
    "viewerType": ["IHE_BIR"],
    "diagnosticQuality": ["true"],
    "keyImagesOnly": ["false"],
}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            {"requestType": ["PATIENT"], "patientID": ["P1^^^HOSP"]},
            ManifestRequest(patient_ids=(("P1", "HOSP"),)),
        ),
        (
            {"requestType": ["PATIENT"], "patientID": ["P1", "P1"]},  # the same one twice
            ManifestRequest(patient_ids=(("P1", None),)),
        ),
        (
            {"requestType": ["STUDY"], "studyUID": ["1.2.3,1.2.4"]},
            ManifestRequest(study_uids=("1.2.3", "1.2.4")),
        ),
        (
            {"requestType": ["STUDY"], "accessionNumber": ["A1", "A2"]},
            ManifestRequest(accession_numbers=("A1", "A2")),
        ),
        (
            {
                "requestType": ["PATIENT"],
                "patientID": ["P1"],
                "archive": ["pacs-a"],
                "modalitiesInStudy": ["CT"],
                "mostRecentResults": ["2"],
                "pro": ["a b"],
                **IGNORED,
            },
            ManifestRequest(
                patient_ids=(("P1", None),),
                archives=("pacs-a",),
                filters=Filters(modalities=("CT",), most_recent=2),
            ),
        ),
        (
            {"requestType": ["STUDY"], "studyUID": ["1.2"], **IGNORED},
            ManifestRequest(study_uids=("1.2",)),
        ),
    ],
)
def test_iid_accepted(args, expected):
    assert parse_manifest_request(args, iid=True) == expected


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        ({"patientID": ["P1"]}, "requestType"),
        ({"requestType": [""], "patientID": ["P1"]}, "requestType"),
        ({"requestType": ["SERIES"], "patientID": ["P1"]}, "requestType"),
        ({"requestType": ["patient"], "patientID": ["P1"]}, "requestType"),
        ({"requestType": ["PATIENT", "STUDY"], "patientID": ["P1"]}, "requestType"),
        ({"requestType": ["PATIENT"]}, "patientID"),
        ({"requestType": ["PATIENT"], "patientID": ["P1,P2"]}, "patientID"),
        ({"requestType": ["PATIENT"], "patientID": ["P1", "P2"]}, "patientID"),
        ({"requestType": ["PATIENT"], "patientID": ["P1", "P1^^^HOSP"]}, "patientID"),
        ({"requestType": ["PATIENT"], "patientID": ["P1"], "studyUID": ["1.2"]}, "studyUID"),
        (
            {"requestType": ["PATIENT"], "patientID": ["P1"], "accessionNumber": ["A1"]},
            "accessionNumber",
        ),
        ({"requestType": ["STUDY"]}, "studyUID"),
        (
            {"requestType": ["STUDY"], "studyUID": ["1.2"], "accessionNumber": ["A1"]},
            "studyUID",
        ),
        ({"requestType": ["STUDY"], "studyUID": ["1.2"], "patientID": ["P1"]}, "patientID"),
        ({"requestType": ["STUDY"], "studyUID": ["1.2"], "seriesUID": ["1.2.3"]}, "seriesUID"),
        ({"requestType": ["STUDY"], "studyUID": ["1.2"], "objectUID": ["1.2.3"]}, "objectUID"),
        ({"requestType": ["STUDY"], "studyUID": ["1.2"], "foo": ["1"]}, "foo"),
        ({"requestType": ["STUDY"], "studyUID": ["1.x"]}, "studyUID"),
    ],
)
def test_iid_refused(args, parameter):
    assert refused(args, iid=True).parameter == parameter


# --- stored form ----------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip():
    request = ManifestRequest(
        patient_ids=(("P1", "HOSP"), ("P2", None)),
        study_uids=("1.2.3",),
        accession_numbers=("A1",),
        series_uids=("1.2.3.4",),
        object_uids=("1.2.3.4.5",),
        archives=("pacs-a",),
        filters=Filters(
            modalities=("CT",),
            descriptions=("Thorax",),
            lower=DT(2024, 1, 2),
            upper=DT(2024, 1, 2, 23, 59, 59, 999999),
            most_recent=2,
        ),
    )
    data = json.loads(json.dumps(request.to_dict()))
    assert data["patient_ids"] == [["P1", "HOSP"], ["P2", None]]
    assert data["filters"]["upper"] == "2024-01-02T23:59:59.999999"
    assert ManifestRequest.from_dict(data) == request
    assert ManifestRequest.from_dict(ManifestRequest().to_dict()) == ManifestRequest()


# --- launch parameters and the weasis:// URL ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, ((), (), None)),
        ({"studyUID": ["1.2"]}, ((), (), None)),
        (
            {"pro": ["weasis.level.dir /tmp", "a b"], "arg": ["dicom:close --all"], "cdb": [""]},
            (("weasis.level.dir /tmp", "a b"), ("dicom:close --all",), ""),
        ),
        (
            {"pro": [""], "cdb": ["https://example.org/weasis"]},
            ((), (), "https://example.org/weasis"),
        ),
        ({"pro": ["p" * 2048]}, (("p" * 2048,), (), None)),
        ({"pro": ["key C:\\Weasis\\dir"]}, (("key C:\\Weasis\\dir",), (), None)),
    ],
)
def test_launch_parameters(args, expected):
    assert launch_parameters(args) == expected


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        ({"pro": ['a" $dicom:get -w "http://evil']}, "pro"),
        ({"arg": ["$cmd\nother"]}, "arg"),
        # Weasis splits a weasis:// link into commands at every $, quoted or not
        ({"arg": ["$dicom:close"]}, "arg"),
        ({"cdb": ["http://x/$weasis:config"]}, "cdb"),
        ({"arg": ["$cmd\\"]}, "arg"),  # would escape the closing quote
        ({"cdb": ["a", "b"]}, "cdb"),
        ({"cdb": ['x"']}, "cdb"),
        ({"pro": ["p" * 2049]}, "pro"),
        ({"pro": [f"p{i}" for i in range(101)]}, "pro"),
    ],
)
def test_launch_parameters_refused(args, parameter):
    with pytest.raises(BadRequest) as caught:
        launch_parameters(args)
    assert caught.value.parameter == parameter


MANIFEST = "https://gw.example.org/weasis/manifest/00112233445566778899aabbccddeeff"


@pytest.mark.parametrize(
    ("kwargs", "command"),
    [
        ({}, f'$dicom:get -w "{MANIFEST}"'),
        ({"cdb": ""}, f'$dicom:get -w "{MANIFEST}" $weasis:config cdb=""'),
        (
            {"pro": ("weasis.level.dir /tmp", "a b"), "arg": ("$dicom:close --all",)},
            (
                f'$dicom:get -w "{MANIFEST}" $weasis:config pro="weasis.level.dir /tmp" '
                'pro="a b" arg="$dicom:close --all"'
            ),
        ),
        (
            {"pro": ("k v",), "arg": ("$x",), "cdb": "https://example.org/w"},
            (
                f'$dicom:get -w "{MANIFEST}" $weasis:config cdb="https://example.org/w" '
                'pro="k v" arg="$x"'
            ),
        ),
    ],
)
def test_weasis_url(kwargs, command):
    url = weasis_url(MANIFEST, **kwargs)
    assert url.startswith("weasis://?%24dicom%3Aget%20-w%20%22https%3A%2F%2F")
    assert re.fullmatch(r"weasis://\?[A-Za-z0-9%._~-]*", url)  # every other byte encoded
    assert unquote(url) == "weasis://?" + command


def test_weasis_url_encodes_the_manifest_query():
    url = weasis_url("https://gw/m?id=1&x=a b")
    assert "%3Fid%3D1%26x%3Da%20b%22" in url
    assert unquote(url) == 'weasis://?$dicom:get -w "https://gw/m?id=1&x=a b"'


@pytest.mark.parametrize(
    "kwargs",
    [{"manifest_url": 'https://gw/m"x'}, {"manifest_url": MANIFEST, "pro": ('a"',)}],
)
def test_weasis_url_refuses_a_double_quote(kwargs):
    with pytest.raises(ValueError):
        weasis_url(**kwargs)


# --- launch page ----------------------------------------------------------------------------


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.texts, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.hrefs += [value for name, value in attrs if name == "href"]

    def handle_data(self, data):
        self.texts.append(data)


def test_launch_page_escapes_html():
    manifest = "https://gw.example.org/weasis/manifest/ab?x=1&y=<script>alert(1)</script>"
    link = 'weasis://?a&b="c"<i>'  # not what weasis_url makes, but escaped all the same
    page = launch_page(link, manifest)
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    assert "<script" not in page and "<i>" not in page
    assert "x=1&amp;y=&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="weasis://?a&amp;b=&quot;c&quot;&lt;i&gt;"' in page
    parsed = Collect()
    parsed.feed(page)
    assert parsed.hrefs == [link]  # one link, to the launch URL, as given
    assert link in parsed.texts and manifest in parsed.texts  # shown as text
    assert "script" not in parsed.tags


def test_launch_page_with_a_real_link():
    link = weasis_url(MANIFEST)
    parsed = Collect()
    parsed.feed(launch_page(link, MANIFEST))
    assert parsed.hrefs == [link]
    assert MANIFEST in parsed.texts
