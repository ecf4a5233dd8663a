"""Writers of the Weasis manifest 2.5 (XML, namespace http://www.weasis.org/xsd/2.5) and of
its JSON form (Weasis 4.7.2+), with the deterministic order both share.

The tree is first turned into neutral nodes (element name, ordered attributes, children);
the XML and JSON writers only serialise nodes, so names and order cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .query import is_uid

if TYPE_CHECKING:
    from .manifest import ArcQuery, Instance, Manifest, Patient, Series, Study

NAMESPACE = "http://www.weasis.org/xsd/2.5"
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

#: XML 1.0 section 2.2 (Char): everything else is removed from values.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: PS3.5 Table 6.2-1: DA YYYYMMDD, TM HH[MM[SS[.F{1,6}]]] (SS up to 60), IS an integer.
_DA = re.compile(r"[0-9]{4}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])")
_TM = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9](([0-5][0-9]|60)(\.[0-9]{1,6})?)?)?")
_IS = re.compile(r"[+-]?[0-9]{1,12}")

Value = str | int | bool

#: Values failing these checks are left out rather than written invalid.
_CHECKS: dict[str, Callable[[str], object]] = {
    "PatientBirthDate": _DA.fullmatch,
    "StudyDate": _DA.fullmatch,
    "SeriesDate": _DA.fullmatch,
    "PatientBirthTime": _TM.fullmatch,
    "StudyTime": _TM.fullmatch,
    "SeriesTime": _TM.fullmatch,
    "SeriesNumber": _IS.fullmatch,
    "InstanceNumber": _IS.fullmatch,
    "PatientSex": lambda v: v in ("M", "F", "O"),
    "SOPClassUID": is_uid,  # the other UIDs are the tree's keys, checked by the engine
}
#: Written even when empty (required by the format).
_REQUIRED = {"PatientID", "PatientName", "arcId", "baseUrl", "key", "value"}


@dataclass
class _Node:
    name: str
    attrs: list[tuple[str, Value]]
    children: list[_Node] = field(default_factory=list)


def clean(text: str) -> str:
    """The text without the characters XML 1.0 does not allow (XML 1.0 section 2.2)."""
    return _NOT_XML_CHAR.sub("", text)


def dicom_datetime(date: str | None, time: str | None) -> dt.datetime | None:
    """DA + TM (PS3.5 Table 6.2-1) as a naive datetime; time absent or invalid: 00:00:00.
    None when the date is absent or invalid."""
    if date is None or not _DA.fullmatch(date):
        return None
    clock = time if time is not None and _TM.fullmatch(time) else ""
    whole, _, fraction = clock.partition(".")
    for text in (date + whole.ljust(6, "0") + fraction.ljust(6, "0"), date + "0" * 12):
        try:
            return dt.datetime.strptime(text, "%Y%m%d%H%M%S%f")
        except ValueError:  # e.g. a leap second or 31 February
            continue
    return None


def study_datetime(study: Study) -> dt.datetime | None:
    return dicom_datetime(study.study_date, study.study_time)


def _number(text: str | None) -> int | None:
    return int(text) if text is not None and _IS.fullmatch(text) else None


def newest_first(studies: Iterable[Study]) -> list[Study]:
    """Studies by StudyDate+StudyTime descending, undated last, then by UID."""

    def order(study: Study) -> tuple[int, int, str]:
        when = study_datetime(study)
        if when is None:
            return (1, 0, study.study_instance_uid)
        micros = (when - dt.datetime.min) // dt.timedelta(microseconds=1)
        return (0, -micros, study.study_instance_uid)

    return sorted(studies, key=order)


def _by_number(number: str | None, uid: str) -> tuple[int, int, str]:
    value = _number(number)
    return (1, 0, uid) if value is None else (0, value, uid)


def _attrs(pairs: Iterable[tuple[str, Value | None]]) -> list[tuple[str, Value]]:
    out: list[tuple[str, Value]] = []
    for name, value in pairs:
        if isinstance(value, str):
            value = clean(value)
            check = _CHECKS.get(name)
            if (not value and name not in _REQUIRED) or (check and not check(value)):
                continue
        if value is not None:
            out.append((name, value))
    return out


def _instance(item: Instance) -> _Node:
    return _Node(
        "Instance",
        _attrs(
            [
                ("SOPInstanceUID", item.sop_instance_uid),
                ("SOPClassUID", item.sop_class_uid),
                ("InstanceNumber", item.instance_number),
                ("DirectDownloadFile", item.direct_download_file),
            ]
        ),
    )


def _series(item: Series) -> _Node:
    instances = sorted(
        item.instances.values(), key=lambda i: _by_number(i.instance_number, i.sop_instance_uid)
    )
    attrs = [
        ("SeriesInstanceUID", item.series_instance_uid),
        ("SeriesDescription", item.series_description),
        ("SeriesNumber", item.series_number),
        ("Modality", item.modality),
        ("SeriesDate", item.series_date),
        ("SeriesTime", item.series_time),
        ("WadoTransferSyntaxUID", item.wado_transfer_syntax_uid),
        ("WadoCompressionRate", item.wado_compression_rate),
        ("DirectDownloadThumbnail", item.direct_download_thumbnail),
    ]
    return _Node("Series", _attrs(attrs), [_instance(i) for i in instances])


def _study(item: Study) -> _Node:
    series = sorted(
        item.series.values(), key=lambda s: _by_number(s.series_number, s.series_instance_uid)
    )
    attrs = [
        ("StudyInstanceUID", item.study_instance_uid),
        ("StudyDescription", item.study_description),
        ("StudyDate", item.study_date),
        ("StudyTime", item.study_time),
        ("AccessionNumber", item.accession_number),
        ("StudyID", item.study_id),
        ("ReferringPhysicianName", item.referring_physician_name),
    ]
    return _Node("Study", _attrs(attrs), [_series(s) for s in series])


def _patient(item: Patient) -> _Node:
    attrs = [
        ("PatientID", item.patient_id),
        ("PatientName", item.patient_name),
        ("IssuerOfPatientID", item.issuer_of_patient_id),
        ("PatientBirthDate", item.patient_birth_date),
        ("PatientBirthTime", item.patient_birth_time),
        ("PatientSex", item.patient_sex),
    ]
    return _Node("Patient", _attrs(attrs), [_study(s) for s in newest_first(item.studies.values())])


def _arc_query(arc: ArcQuery) -> _Node:
    attrs = [
        ("arcId", arc.arc_id),
        ("baseUrl", arc.base_url),
        ("webLogin", arc.web_login),
        ("requireOnlySOPInstanceUID", arc.require_only_sop_instance_uid),
        # viewer-hub.md 3.1: Weasis <= 4.6 reads the first spelling, 4.7+ the second
        ("additionnalParameters", arc.additional_parameters),
        ("additionalParameters", arc.additional_parameters),
        ("overrideDicomTagsList", ",".join(arc.override_dicom_tags)),
        ("queryMode", arc.query_mode),
        ("seriesRetrieve", arc.series_retrieve),
    ]
    children = [_Node("httpTag", _attrs([("key", k), ("value", v)])) for k, v in arc.http_tags]
    if arc.message is not None:
        message = arc.message
        fields = [("title", message.title), ("description", message.description)]
        children.append(_Node("Message", _attrs([*fields, ("severity", message.severity)])))
    patients = sorted(
        arc.patients.values(),
        key=lambda p: (p.patient_name, p.patient_id, p.issuer_of_patient_id or ""),
    )
    return _Node("arcQuery", _attrs(attrs), children + [_patient(p) for p in patients])


def _nodes(manifest: Manifest) -> tuple[list[tuple[str, Value]], list[_Node]]:
    if not manifest.arc_queries:
        raise ValueError("a manifest needs at least one arcQuery")
    return _attrs([("uid", manifest.uid)]), [_arc_query(a) for a in manifest.arc_queries]


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _element(node: _Node) -> ET.Element:
    element = ET.Element(node.name, {name: _text(value) for name, value in node.attrs})
    element.extend(_element(child) for child in node.children)
    return element


def to_xml(manifest: Manifest) -> bytes:
    """The manifest 2.5 document, UTF-8 (viewer-hub.md 3.1): XML declaration, then
    <manifest xmlns="http://www.weasis.org/xsd/2.5">. Raises ValueError without arcQuery."""
    attrs, arcs = _nodes(manifest)
    root = ET.Element("manifest", {"xmlns": NAMESPACE, **{k: _text(v) for k, v in attrs}})
    root.extend(_element(arc) for arc in arcs)
    return _DECLARATION + ET.tostring(root, encoding="unicode").encode("utf-8")


def _json(node: _Node) -> dict[str, Any]:
    out: dict[str, Any] = dict(node.attrs)
    for child in node.children:
        if child.name == "Message":  # at most one: an object, not an array
            out["Message"] = _json(child)
        else:
            out.setdefault(child.name, []).append(_json(child))
    return out


def to_json(manifest: Manifest) -> dict[str, Any]:
    """The JSON form (Weasis 4.7.2+): {"manifest": {"uid", "arcQuery": [...]}}, arrays named
    by element, attributes as keys, booleans and WadoCompressionRate typed."""
    attrs, arcs = _nodes(manifest)
    return {"manifest": {**dict(attrs), "arcQuery": [_json(arc) for arc in arcs]}}
