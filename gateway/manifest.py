"""The Weasis manifest 2.5 tree (viewer-hub.md 3.1): built from QIDO answers in DICOM JSON,
filtered as the launch parameters ask, and written by `manifest_write` (XML or JSON).

Pure: no Flask, no I/O.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .dicomjson import JsonDataset, key, tag_of
from .manifest_write import NAMESPACE, clean, newest_first, study_datetime, to_json, to_xml

__all__ = [
    "NAMESPACE",
    "ArcQuery",
    "Filters",
    "Instance",
    "Manifest",
    "Message",
    "Patient",
    "Series",
    "Study",
    "apply_filters",
    "clean",
    "merge_rows",
    "newest_first",
    "study_datetime",
    "to_json",
    "to_xml",
]


@dataclass
class Instance:
    sop_instance_uid: str
    sop_class_uid: str | None = None
    instance_number: str | None = None
    direct_download_file: str | None = None


@dataclass
class Series:
    series_instance_uid: str
    series_description: str | None = None
    series_number: str | None = None
    modality: str | None = None
    series_date: str | None = None
    series_time: str | None = None
    wado_transfer_syntax_uid: str | None = None
    wado_compression_rate: int | None = None
    direct_download_thumbnail: str | None = None
    instances: dict[str, Instance] = field(default_factory=dict)


@dataclass
class Study:
    study_instance_uid: str
    study_description: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    referring_physician_name: str | None = None
    modalities_in_study: tuple[str, ...] = ()  # not written; used by the modality filter
    series: dict[str, Series] = field(default_factory=dict)


@dataclass
class Patient:
    patient_id: str
    patient_name: str  # "" when unknown
    issuer_of_patient_id: str | None = None
    patient_birth_date: str | None = None
    patient_birth_time: str | None = None
    patient_sex: str | None = None  # only M, F or O are written
    studies: dict[str, Study] = field(default_factory=dict)


@dataclass
class Message:
    severity: Literal["INFO", "WARN", "ERROR"]
    title: str
    description: str


@dataclass
class ArcQuery:
    arc_id: str
    base_url: str
    query_mode: Literal["DB", "DICOM", "DICOM_WEB"]
    web_login: str | None = None
    require_only_sop_instance_uid: bool = False
    additional_parameters: str | None = None  # written under both spellings
    override_dicom_tags: tuple[str, ...] = ()  # "0xGGGGEEEE" items
    http_tags: tuple[tuple[str, str], ...] = ()
    series_retrieve: bool | None = None
    message: Message | None = None
    patients: dict[tuple[str, str | None], Patient] = field(default_factory=dict)


@dataclass
class Manifest:
    arc_queries: list[ArcQuery]
    uid: str | None = None


# attribute of the dataclass, DICOM keyword
_PATIENT_FIELDS = (
    ("issuer_of_patient_id", "IssuerOfPatientID"),
    ("patient_birth_date", "PatientBirthDate"),
    ("patient_birth_time", "PatientBirthTime"),
    ("patient_sex", "PatientSex"),
)
_STUDY_FIELDS = (
    ("study_description", "StudyDescription"),
    ("study_date", "StudyDate"),
    ("study_time", "StudyTime"),
    ("accession_number", "AccessionNumber"),
    ("study_id", "StudyID"),
    ("referring_physician_name", "ReferringPhysicianName"),
)
_SERIES_FIELDS = (
    ("series_description", "SeriesDescription"),
    ("series_number", "SeriesNumber"),
    ("modality", "Modality"),
    ("series_date", "SeriesDate"),
    ("series_time", "SeriesTime"),
)
_INSTANCE_FIELDS = (
    ("sop_class_uid", "SOPClassUID"),
    ("instance_number", "InstanceNumber"),
)
_DATES = {"PatientBirthDate", "StudyDate", "SeriesDate"}
_TIMES = {"PatientBirthTime", "StudyTime", "SeriesTime"}

Rows = Sequence[JsonDataset | None]


def _scalar(vr: str | None, value: Any) -> str | None:
    if vr == "PN":  # PS3.18 F.2.2: the Alphabetic component group
        value = value.get("Alphabetic") if isinstance(value, dict) else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value).strip() or None


def _values(data: JsonDataset | None, keyword: str) -> list[str]:
    element = (data or {}).get(key(tag_of(keyword)))
    if not element or element.get("vr") == "SQ":
        return []
    texts = (_scalar(element.get("vr"), v) for v in element.get("Value") or [])
    return [t for t in texts if t is not None]


def _text(rows: Rows, keyword: str) -> str | None:
    """The first row's value (several values joined by a backslash, as DICOM writes them);
    old ACR-NEMA separators are removed from dates (YYYY.MM.DD) and times (HH:MM:SS)."""
    for data in rows:
        values = _values(data, keyword)
        if values:
            text = "\\".join(values)
            if keyword in _DATES and len(text) == 10:
                text = text.replace("-", "").replace(".", "")
            elif keyword in _TIMES:
                text = text.replace(":", "")
            return text
    return None


def _fill(target: object, rows: Rows, fields: tuple[tuple[str, str], ...]) -> None:
    for attr, keyword in fields:
        if getattr(target, attr) is None:
            setattr(target, attr, _text(rows, keyword))


def _patient(arc: ArcQuery, rows: Rows, study_uid: str) -> Patient:
    """The patient of `rows`, keyed by (PatientID, IssuerOfPatientID). Studies without a
    PatientID are never merged into one patient: each is a patient of its own."""
    pid, issuer = _text(rows, "PatientID") or "", _text(rows, "IssuerOfPatientID")
    key = (pid, issuer) if pid else ("", f"\x00{study_uid}")
    patient = arc.patients.setdefault(key, Patient(pid, "", issuer))
    if not patient.patient_name:
        patient.patient_name = _text(rows, "PatientName") or ""
    _fill(patient, rows, _PATIENT_FIELDS)
    return patient


def merge_rows(
    arc: ArcQuery,
    study: JsonDataset,
    series: JsonDataset | None = None,
    instance: JsonDataset | None = None,
) -> None:
    """Adds one QIDO answer (DICOM JSON, PS3.18 Annex F) to the tree: patient keyed by
    (PatientID, IssuerOfPatientID), then study, series, instance, each created on first sight;
    attributes still empty are filled. PN: the Alphabetic group. Sequences are ignored.
    Raises ValueError when a level that is given has no UID in the rows."""
    rows = (study, series, instance)
    study_uid = _text(rows, "StudyInstanceUID")
    if study_uid is None:
        raise ValueError("a study row without StudyInstanceUID")
    patient = _patient(arc, rows, study_uid)
    node = patient.studies.setdefault(study_uid, Study(study_uid))
    _fill(node, rows, _STUDY_FIELDS)
    found = _values(study, "ModalitiesInStudy")
    node.modalities_in_study += tuple(m for m in found if m not in node.modalities_in_study)
    if series is None and instance is None:
        return
    series_uid = _text((series, instance), "SeriesInstanceUID")
    if series_uid is None:
        raise ValueError("a series row without SeriesInstanceUID")
    leaf = node.series.setdefault(series_uid, Series(series_uid))
    _fill(leaf, (series, instance), _SERIES_FIELDS)
    if instance is None:
        return
    sop_uid = _text((instance,), "SOPInstanceUID")
    if sop_uid is None:
        raise ValueError("an instance row without SOPInstanceUID")
    _fill(leaf.instances.setdefault(sop_uid, Instance(sop_uid)), (instance,), _INSTANCE_FIELDS)


@dataclass(frozen=True)
class Filters:
    """The launch filters (IHE IID parameters, also accepted by /weasis/manifest)."""

    modalities: tuple[str, ...] = ()  # modalitiesInStudy
    descriptions: tuple[str, ...] = ()  # containsInDescription
    lower: dt.datetime | None = None  # lowerDateTime, inclusive
    upper: dt.datetime | None = None  # upperDateTime, inclusive
    most_recent: int | None = None  # mostRecentResults


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks removed, casefold."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _naive(bound: dt.datetime | None) -> dt.datetime | None:
    """Study dates are local and zoneless: an offset on a bound is ignored."""
    return None if bound is None else bound.replace(tzinfo=None)


def _keeps(study: Study, filters: Filters) -> bool:
    if filters.modalities:
        wanted = {m.upper() for m in filters.modalities}
        have = {m.upper() for m in study.modalities_in_study}
        have |= {s.modality.upper() for s in study.series.values() if s.modality}
        if not wanted & have:
            return False
    if filters.descriptions:
        text = fold(study.study_description or "")
        if not study.study_description or not any(fold(d) in text for d in filters.descriptions):
            return False
    lower, upper = _naive(filters.lower), _naive(filters.upper)
    if lower is not None or upper is not None:
        when = study_datetime(study)
        if when is None or (lower is not None and when < lower):
            return False
        if upper is not None and when > upper:
            return False
    return True


def apply_filters(arc: ArcQuery, filters: Filters) -> None:
    """In place. Modalities (ModalitiesInStudy or any series' Modality), description
    (contains any value, folded), inclusive date range on StudyDate+StudyTime (undated studies
    dropped), then mostRecentResults N per patient (the N newest dated studies when there are
    more than N). With any filter given, patients left without studies are removed."""
    if filters == Filters():
        return
    for ident, patient in list(arc.patients.items()):
        kept = [s for s in patient.studies.values() if _keeps(s, filters)]
        limit = filters.most_recent
        if limit is not None and len(kept) > limit:
            dated = [s for s in kept if study_datetime(s) is not None]
            newest = {s.study_instance_uid for s in newest_first(dated)[: max(limit, 0)]}
            kept = [s for s in kept if s.study_instance_uid in newest]
        patient.studies = {s.study_instance_uid: s for s in kept}
        if not patient.studies:
            del arc.patients[ident]
