"""QIDO-RS parameter parsing (PS3.18 8.3.4, matching types of PS3.4 C.2.2.2)."""

import pytest

from gateway.errors import BadRequest
from gateway.query import Level, Match, parse_search

PN, DA, TM, DT, UI, CS = 0x00100010, 0x00080020, 0x00080030, 0x0008002A, 0x0020000D, 0x00080060


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("PatientName", "DOE^J*")], Match(PN, "wildcard", ("DOE^J*",))),
        ([("00100010", "DOE?")], Match(PN, "wildcard", ("DOE?",))),
        ([("PatientName", "DOE")], Match(PN, "single", ("DOE",))),
        ([("PatientName", "")], Match(PN, "universal")),
        ([("StudyDate", "20240101-20241231")], Match(DA, "range", ("20240101", "20241231"))),
        ([("StudyDate", "20240101-")], Match(DA, "range", ("20240101", ""))),
        ([("StudyDate", "-20240101")], Match(DA, "range", ("", "20240101"))),
        ([("StudyDate", "20240101")], Match(DA, "single", ("20240101",))),
        ([("StudyTime", "0800-1230")], Match(TM, "range", ("0800", "1230"))),
        ([("StudyTime", "101500.123")], Match(TM, "single", ("101500.123",))),
        ([("AcquisitionDateTime", "20240101-20240102120000-0500")],
         Match(DT, "range", ("20240101", "20240102120000-0500"))),
        ([("AcquisitionDateTime", "20240101120000-0500")],
         Match(DT, "single", ("20240101120000-0500",))),
        ([("StudyInstanceUID", "1.2.3,1.2.4")], Match(UI, "list", ("1.2.3", "1.2.4"))),
        ([("StudyInstanceUID", "1.2.3\\1.2.4")], Match(UI, "list", ("1.2.3", "1.2.4"))),
        ([("0020000D", "1.2.3")], Match(UI, "single", ("1.2.3",))),
        ([("Modality", "CT,MR")], Match(CS, "list", ("CT", "MR"))),
    ],
)
def test_matching_type_from_value(pairs, expected):
    query = parse_search(Level.STUDY, pairs)
    assert query.matches == (expected,)


@pytest.mark.parametrize(
    ("pairs", "parameter"),
    [
        ([("NoSuchKeyword", "x")], "NoSuchKeyword"),
        ([("00990010", "x")], "00990010"),  # a private tag the dictionary does not know
        ([("StudyDate", "2024-01-01")], "StudyDate"),
        ([("StudyDate", "20241301x")], "StudyDate"),
        ([("StudyDate", "20241231-20240101")], "StudyDate"),
        ([("StudyInstanceUID", "1.2.abc")], "StudyInstanceUID"),
        ([("StudyInstanceUID", "1.2.*")], "StudyInstanceUID"),
        ([("StudyInstanceUID", "1." + "2" * 70)], "StudyInstanceUID"),
        ([("limit", "-1")], "limit"),
        ([("limit", "ten")], "limit"),
        ([("offset", "1.5")], "offset"),
        ([("fuzzymatching", "yes")], "fuzzymatching"),
        ([("includefield", "NotAnAttribute")], "includefield"),
        ([("ReferencedSeriesSequence.SeriesInstanceUID", "1.2")],
         "ReferencedSeriesSequence.SeriesInstanceUID"),
        ([("PatientID", "a"), ("PatientID", "b")], "PatientID"),
        ([("StudyDate", "20240101*")], "StudyDate"),
        ([("NumberOfStudyRelatedInstances", "many")], "NumberOfStudyRelatedInstances"),
    ],
)
def test_bad_parameters_are_400_naming_them(pairs, parameter):
    with pytest.raises(BadRequest) as err:
        parse_search(Level.STUDY, pairs)
    assert err.value.status == 400
    assert err.value.parameter == parameter


def _uids(count: int) -> list[str]:
    """`count` distinct UIDs of the maximal 64 characters (PS3.5 9.1)."""
    return [f"1.2.826.0.1.3680043.10.{n:05d}." + "9" * 35 for n in range(count)]


def test_a_list_of_1000_uids_of_64_characters_is_one_list_match():
    uids = _uids(1000)
    assert {len(u) for u in uids} == {64}
    query = parse_search(Level.STUDY, [("StudyInstanceUID", ",".join(uids))])
    assert query.matches == (Match(UI, "list", tuple(uids)),)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("StudyInstanceUID", ",".join(_uids(1001)))], "StudyInstanceUID: more than 1000 values"),
        ([("PatientName", "A" * 1025)], "PatientName: longer than 1024 characters"),
        ([("Modality", ",".join(["CT"] * 342))], "Modality: longer than 1024 characters"),
        ([("StudyInstanceUID", "1," * 400000)], "StudyInstanceUID: more than 1000 values"),
        ([("StudyInstanceUID", "1" * 70000)], "StudyInstanceUID: longer than 65000 characters"),
    ],
)
def test_values_beyond_the_bounds_are_400_saying_which(pairs, message):
    with pytest.raises(BadRequest) as err:
        parse_search(Level.STUDY, pairs)
    assert err.value.status == 400 and err.value.message == message


def test_includefield_repeated_comma_separated_and_all():
    query = parse_search(
        Level.STUDY,
        [("includefield", "00081030,StudyTime"), ("includefield", "PatientAge"),
         ("includefield", "all")],
    )
    assert query.includefields == (0x00081030, 0x00080030, 0x00101010)
    assert query.include_all is True


def test_limit_is_capped_by_the_server_maximum_and_offset_kept():
    assert parse_search(Level.STUDY, [("limit", "5000"), ("offset", "7")], max_results=100).limit == 100
    query = parse_search(Level.STUDY, [("limit", "5"), ("offset", "7")], max_results=100)
    assert (query.limit, query.offset) == (5, 7)
    assert parse_search(Level.STUDY, [], max_results=100).limit == 100


def test_path_uids_become_single_value_matches_and_criteria():
    query = parse_search(Level.IMAGE, [("PatientID", "P1")], {0x0020000D: "1.2.3", 0x0020000E: "1.2.3.4"})
    assert query.uids(0x0020000D) == ("1.2.3",)
    assert query.uids(0x0020000E) == ("1.2.3.4",)
    assert query.criteria == {"STUDY_INSTANCE_UID", "SERIE_INSTANCE_UID", "PATIENT_ID"}


def test_path_and_query_naming_different_uids_match_nothing():
    query = parse_search(Level.SERIES, [("StudyInstanceUID", "1.2.9")], {0x0020000D: "1.2.3"})
    assert query.match(0x0020000D) == Match(0x0020000D, "list", ())


def test_a_bad_uid_in_the_path_is_400():
    with pytest.raises(BadRequest) as err:
        parse_search(Level.SERIES, [], {0x0020000D: "../../etc"})
    assert err.value.parameter == "StudyInstanceUID"


def test_queries_are_hashable_cache_keys():
    a = parse_search(Level.STUDY, [("PatientName", "DOE*"), ("limit", "5")])
    b = parse_search(Level.STUDY, [("limit", "5"), ("PatientName", "DOE*")])
    assert a == b and hash(a) == hash(b)
