"""In-memory matching (PS3.4 C.2.2.2), used for keys a connector cannot match."""

import pytest

from gateway.matching import matches
from gateway.query import Level, parse_search

DATA = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
    "00080020": {"vr": "DA", "Value": ["20240315"]},
    "00080030": {"vr": "TM", "Value": ["101500.25"]},
    "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
    "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    "00081030": {"vr": "LO", "Value": ["50% dose_test"]},
    "0008002A": {"vr": "DT", "Value": ["20240315101500.25"]},
}
ALL = frozenset(
    {0x00100010, 0x00080020, 0x00080030, 0x00080061, 0x0020000D, 0x00081030, 0x0008002A}
)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("PatientName", "Müller*")], True),
        ([("PatientName", "müller*")], False),  # PN is case-sensitive without fuzzy matching
        ([("PatientName", "müller*"), ("fuzzymatching", "true")], True),
        ([("PatientName", "M?ller^J*")], True),
        ([("PatientName", "Muller*")], False),
        ([("StudyDate", "20240301-20240331")], True),
        ([("StudyDate", "20240316-")], False),
        ([("StudyDate", "-20240315")], True),
        ([("StudyTime", "1015-1016")], True),
        ([("StudyTime", "1016-")], False),
        ([("AcquisitionDateTime", "20240315-20240316")], True),  # DT bounds of any precision
        ([("AcquisitionDateTime", "20240314-20240314")], False),
        ([("AcquisitionDateTime", "20240315101600-")], False),
        ([("AcquisitionDateTime", "-20240315101500")], True),
        ([("ModalitiesInStudy", "SR")], True),
        ([("ModalitiesInStudy", "MR,CT")], True),
        ([("ModalitiesInStudy", "MR")], False),
        ([("StudyInstanceUID", "1.2.4,1.2.3")], True),
        ([("StudyInstanceUID", "1.2.4")], False),
        ([("StudyDescription", "50% dose_*")], True),  # % and _ are literal here
        ([("StudyDescription", "50%_dose*")], False),
        ([("AccessionNumber", "A1")], False),  # an absent attribute does not match a value
        ([("AccessionNumber", "")], True),  # universal matching
    ],
)
def test_matches(pairs, expected):
    query = parse_search(Level.STUDY, pairs)
    assert matches(query, DATA, ALL | {0x00080050}) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "", True),
        ("", "", True),
        ("?", "", False),
        ("A*B", "AxxB", True),
        ("A*B", "AxxBx", False),
        ("*B*B", "aBcBdB", True),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("**a**", "bab", True),
        ("[ab]*", "[ab]x", True),  # brackets are literal in DICOM wildcards
        ("*" * 15 + "b", "a" * 21, False),  # would take minutes with a backtracking regex
    ],
)
def test_wildcard_match(pattern, value, expected):
    from gateway.matching import wildcard_match

    assert wildcard_match(pattern, value) is expected
