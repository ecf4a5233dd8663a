"""DICOM JSON (PS3.18 Annex F): the language between connectors and views.

A dataset is a `dict[str, dict]` keyed by the uppercase 8-hex tag. This module builds such
attributes from plain values (DB rows, C-FIND answers) and from pydicom datasets, trims search
answers to the attributes of their level (PS3.18 10.6.3.3), and sets the gateway's URLs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import VR

from .query import SERIES_UID, SOP_UID, STUDY_UID, Level, SearchQuery

JsonDataset = dict[str, dict[str, Any]]

_NUMBER_STRING_VRS = {"IS", "DS"}
_BINARY_NUMBER_VRS = {"US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"}
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_SINGLE_VALUED_TEXT_VRS = {"LT", "ST", "UT", "UR"}  # never split on backslash (PS3.5 6.2)
#: Every VR of PS3.5 Table 6.2-1 (pydicom's, without its "US or SS" kind for ambiguous tags).
_VRS = frozenset(str(vr) for vr in VR if len(vr) == 2)
#: A data set's keys, joined: 8 upper-case hex digits each (PS3.18 F.2.1.1.2).
_TAG_KEYS = re.compile(r"(?:[0-9A-F]{8})*")
_PIXEL_DATA = 0x7FE00010


def key(tag: int) -> str:
    """PS3.18 F.2.1.1: the attribute's key is its tag as 8 uppercase hex digits."""
    return f"{tag:08X}"


def tag_of(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _t(*keywords: str) -> tuple[int, ...]:
    return tuple(tag_of(k) for k in keywords)


#: PS3.18 Table 10.6.3-3 (study), 10.6.3-4 (series), 10.6.3-5 (instance) return attributes.
STUDY_ATTRIBUTES = _t(
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_ATTRIBUTES = _t(
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RetrieveURL",
)
INSTANCE_ATTRIBUTES = _t(
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "RetrieveURL",
)
#: Conditional attributes of those tables ("if known"): kept when the backend has them.
CONDITIONAL_ATTRIBUTES = _t("TimezoneOffsetFromUTC", "RequestAttributesSequence")
#: Study-level keys a search at SERIES or IMAGE level can still match on and return.
PATIENT_STUDY_KEYS = _t(
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
)

LEVEL_ATTRIBUTES = {
    Level.STUDY: STUDY_ATTRIBUTES,
    Level.SERIES: SERIES_ATTRIBUTES,
    Level.IMAGE: INSTANCE_ATTRIBUTES,
}


def return_tags(
    query: SearchQuery, scoped_study: bool, scoped_series: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tags an answer to `query` carries (PS3.18 10.6.3.3), as (required, optional):
    required are the level's attributes, the UIDs of the parents, the matching keys and the
    includefields; optional are the attributes of the higher levels that the path does not fix
    (kept when the backend gives them: a study's counts are not part of a series answer), and
    the tables' conditional attributes ("if known": CONDITIONAL_ATTRIBUTES)."""
    required: list[int] = list(LEVEL_ATTRIBUTES[query.level])
    optional: list[int] = []
    if query.level is not Level.STUDY:
        required.append(STUDY_UID)
        if not scoped_study:
            optional.extend(STUDY_ATTRIBUTES)
    if query.level is Level.IMAGE:
        required.append(SERIES_UID)
        if not scoped_series:
            optional.extend(SERIES_ATTRIBUTES)
    required.extend(m.tag for m in query.matches)
    required.extend(query.includefields)
    optional.extend(CONDITIONAL_ATTRIBUTES)
    keep = tuple(dict.fromkeys(required))
    return keep, tuple(t for t in dict.fromkeys(optional) if t not in keep and t != 0x00081190)


def _json_number(vr: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    text = str(value).strip()
    if text == "":
        return None
    try:
        number = float(text) if vr in ("DS", "FL", "FD") else int(text)
    except ValueError:
        return text  # PS3.18 F.2.3.1 allows a string where the number cannot be represented
    return number


def _clock(value: dt.time | dt.datetime) -> str:
    """HHMMSS, and .FFFFFF when there is a fraction of a second (PS3.5 Table 6.2-1, TM)."""
    text = value.strftime("%H%M%S")
    return f"{text}.{value.microsecond:06d}" if value.microsecond else text


def _json_string(vr: str, value: Any) -> Any:
    """Text of a string VR; dates and times as DA, TM or DT (PS3.5 Table 6.2-1), a DT with
    its UTC offset when the value has one."""
    if isinstance(value, dt.datetime):
        if vr == "DA":
            return value.strftime("%Y%m%d")
        if vr == "TM":
            return _clock(value)
        return value.strftime("%Y%m%d") + _clock(value) + value.strftime("%z")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, dt.time):
        return _clock(value)
    text = str(value)
    text = text.rstrip(" \x00") if vr != "UI" else text.rstrip("\x00 ")
    if vr not in _SINGLE_VALUED_TEXT_VRS:
        text = text.strip(" ")
    return text if text != "" else None


def _person_name(value: str) -> dict[str, str] | None:
    """PS3.18 F.2.2: a PN value is an object with Alphabetic / Ideographic / Phonetic groups."""
    groups = str(value).rstrip(" ").split("=")
    named = {
        name: group
        for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups)
        if group != ""
    }
    return named or None


def _split(vr: str, value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and vr not in _SINGLE_VALUED_TEXT_VRS and "\\" in value:
        return value.split("\\")
    return [value]


def attribute(tag: int, value: Any, vr: str | None = None) -> dict[str, Any]:
    """One JSON attribute from a plain value: a string (backslash-separated for several
    values), a number, a date, a list, or None for an empty attribute (no `Value`)."""
    vr = vr or dictionary_VR(tag)
    if vr == "US or SS":
        vr = "US"
    out: dict[str, Any] = {"vr": vr}
    if value is None or value == "" or value == []:
        return out
    items: list[Any] = []
    for item in _split(vr, value):
        if vr == "PN":
            items.append(_person_name(item) if item is not None else None)
        elif vr in _NUMBER_STRING_VRS or vr in _BINARY_NUMBER_VRS:
            items.append(_json_number(vr, item) if item is not None else None)
        elif vr == "AT":
            items.append(f"{int(item):08X}" if isinstance(item, int) else str(item).upper())
        else:
            items.append(_json_string(vr, item) if item is not None else None)
    if all(v is None for v in items):
        return out
    out["Value"] = items
    return out


def dataset(values: Mapping[int, Any]) -> JsonDataset:
    """A JSON dataset from `{tag: plain value}`, keys sorted (PS3.18 F.2.1.1)."""
    return {key(tag): attribute(tag, values[tag]) for tag in sorted(values)}


#: Builds a BulkDataURI from the element's tag path, e.g. ("7FE00010",) or
#: ("00880200", "0", "7FE00010") for the Pixel Data of the first icon image item.
BulkHandler = Callable[[tuple[str, ...]], str]


def bulk_uri(base: str, study: str, series: str, instance: str, path: tuple[str, ...]) -> str:
    """The gateway's BulkDataURI for an element of an instance (the WADO-RS bulk resource)."""
    return f"{base}/studies/{study}/series/{series}/instances/{instance}/bulk/{'/'.join(path)}"


#: SpecificCharacterSet (JSON is UTF-8) and Data Set Trailing Padding (PS3.10: padding that
#: carries no information).
_NOT_CARRIED = ("00080005", "FFFCFFFC")


def from_pydicom(ds: Dataset, bulk: BulkHandler | None = None) -> JsonDataset:
    """A pydicom dataset as DICOM JSON. Binary values (OB, OW, ..., UN) become BulkDataURIs made
    by `bulk` from their tag path or, without it, are left out. Text is already decoded by
    pydicom from its SpecificCharacterSet, so SpecificCharacterSet is dropped (JSON is UTF-8).
    A binary value that `dcmread(defer_size=...)` left unread is never read: its BulkDataURI is
    written from the element's header alone."""
    return _from_pydicom(ds, (), bulk)


def _from_pydicom(ds: Dataset, path: tuple[str, ...], bulk: BulkHandler | None) -> JsonDataset:
    out: JsonDataset = {}
    for tag in list(ds.keys()):  # not `in ds`: a Dataset's iterator reads deferred values
        tag_key = key(int(tag))
        if tag.element == 0 or tag_key in _NOT_CARRIED:
            continue
        deferred = _deferred_bulk_vr(ds.get_item(tag, keep_deferred=True))
        if deferred is not None:
            if bulk is not None:
                out[tag_key] = {"vr": deferred, "BulkDataURI": bulk((*path, tag_key))}
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            items = [
                _from_pydicom(item, (*path, tag_key, str(i)), bulk)
                for i, item in enumerate(elem.value)
            ]
            out[tag_key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif elem.VR in _BULK_VRS or elem.tag == _PIXEL_DATA:
            if bulk is None:
                continue
            vr = elem.VR if elem.VR in _BULK_VRS else "OW"
            out[tag_key] = {"vr": vr}
            if elem.value is not None and len(elem.value) > 0:
                out[tag_key]["BulkDataURI"] = bulk((*path, tag_key))
        else:
            out[tag_key] = _plain_element(elem)
    return {k: out[k] for k in sorted(out)}


def _deferred_bulk_vr(raw: DataElement | RawDataElement) -> str | None:
    """The VR of a binary element whose value pydicom left unread (`dcmread(defer_size=...)`),
    taken from its header so the value is never read; None for any other element. Pixel Data
    and the OB-or-OW elements without an explicit VR are OW (PS3.5 A.1, implicit VR)."""
    if not isinstance(raw, RawDataElement) or raw.value is not None or not raw.length:
        return None
    tag = int(raw.tag)
    vr = raw.VR or (dictionary_VR(tag) if dictionary_has_tag(tag) else "UN")
    if vr in _BULK_VRS:
        return vr
    return "OW" if tag == _PIXEL_DATA or vr in ("OB or OW", "US or OW") else None


def _plain_element(elem: DataElement) -> dict[str, Any]:
    vr = elem.VR
    if vr in ("US or SS", "US or OW", "OB or OW"):
        vr = "US"
    value = elem.value
    if value is None or value == "":
        return {"vr": vr}
    values = list(value) if elem.VM > 1 or isinstance(value, (list, tuple)) else [value]
    if vr == "PN":
        return _with_values(vr, [_person_name(str(v)) if v is not None else None for v in values])
    if vr == "AT":
        return _with_values(vr, [f"{int(v):08X}" for v in values])
    if vr in _NUMBER_STRING_VRS or vr in _BINARY_NUMBER_VRS:
        return _with_values(vr, [_json_number(vr, v) for v in values])
    return _with_values(vr, [_json_string(vr, v) if v is not None else None for v in values])


def _with_values(vr: str, values: list[Any]) -> dict[str, Any]:
    if all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def normalise(
    data: Mapping[str, Any],
    drop_binary: bool = False,
    bulk: Callable[[tuple[str, ...]], str] | None = None,
    path: tuple[str, ...] = (),
) -> JsonDataset:
    """Fixes what other producers get wrong: lowercase keys, group lengths, a
    SpecificCharacterSet that no longer applies, `Value: []` and `Value: [""]`. The result
    shares the attributes it does not change with `data`. With `bulk`, every BulkDataURI, in
    sequences too, becomes `bulk(tag path)` (`path` is that of `data`), and RetrieveURLs (the
    producer's addresses) are left out, in the same pass: for a large answer, a second walk
    over every attribute costs as much as this one."""
    out: JsonDataset = {}
    keys = list(data)
    if any(not k.isupper() for k in keys) or keys != sorted(keys):
        keys.sort(key=str.upper)  # most producers send them sorted, in upper case
        if len({k.upper() for k in keys}) != len(keys):
            raise ValueError("an attribute is given twice (keys differing in case only)")
    if not _TAG_KEYS.fullmatch("".join(keys).upper()):
        raise ValueError("a key is not a tag (8 hexadecimal digits)")
    for raw_key in keys:
        tag_key = raw_key.upper()
        if tag_key[4:] == "0000" or tag_key == "00080005":
            continue
        attr = data[raw_key]  # shared, not copied: callers give a freshly decoded answer
        vr = attr.get("vr", "UN")
        if vr not in _VRS:
            raise ValueError("an attribute has no valid VR")
        if bulk is not None and tag_key == "00081190":
            continue  # after `attr.get`: a malformed attribute is an error, even this one
        if drop_binary and (("Value" not in attr and vr in _BULK_VRS) or "InlineBinary" in attr):
            continue
        value = attr.get("Value")
        if value is not None:
            if type(value) is not list:
                raise ValueError("an attribute's Value is not an array")
            if vr == "SQ":
                items = [
                    normalise(item, drop_binary, bulk, (*path, tag_key, str(i)))
                    for i, item in enumerate(value)
                ]
                attr = {**attr, "Value": items}
            elif not value or (value[0] in (None, "") and all(v in (None, "") for v in value)):
                attr = {k: v for k, v in attr.items() if k != "Value"}
        if bulk is not None and "BulkDataURI" in attr:
            attr = {**attr, "BulkDataURI": bulk((*path, tag_key))}
        out[tag_key] = attr
    return out


def first(data: Mapping[str, Any], tag: int) -> Any:
    """The first value of an attribute, or None."""
    value = data.get(key(tag), {}).get("Value")
    return value[0] if value else None


def uid_of(data: Mapping[str, Any], level: Level) -> str | None:
    value = first(
        data, {Level.STUDY: STUDY_UID, Level.SERIES: SERIES_UID, Level.IMAGE: SOP_UID}[level]
    )
    return str(value) if value is not None else None


def retrieve_url(base: str, data: Mapping[str, Any], level: Level) -> str:
    """The gateway URL of the resource an answer describes (RetrieveURL, PS3.18 10.6.3.3)."""
    url = f"{base}/studies/{first(data, STUDY_UID)}"
    if level in (Level.SERIES, Level.IMAGE):
        url += f"/series/{first(data, SERIES_UID)}"
    if level is Level.IMAGE:
        url += f"/instances/{first(data, SOP_UID)}"
    return url


def trim(
    data: Mapping[str, Any], tags: Iterable[int], include_all: bool, optional: Iterable[int] = ()
) -> JsonDataset:
    """An answer limited to `tags` and, where the backend has them, `optional` (all of it with
    includefield=all); a required attribute the backend did not give is present without a
    value (PS3.18 10.6.3.3)."""
    conditional = {key(t) for t in CONDITIONAL_ATTRIBUTES}
    out: JsonDataset = {}
    for tag in tags:
        k = key(tag)
        if k in data:
            out[k] = dict(data[k])
        elif k not in conditional:
            out[k] = attribute(tag, None)
    for tag in optional:
        k = key(tag)
        if "Value" in data.get(k, {}):
            out[k] = dict(data[k])
    if include_all:
        for k, attr in data.items():
            out.setdefault(k, dict(attr))
    return {k: out[k] for k in sorted(out)}
