"""C-FIND, Study Root information model (PS3.4 C.4.1, C.6.2): identifiers and one operation.

`identifier()` builds a request identifier from `{tag: value}` (None = return key / universal
matching); `match_value()` turns a parsed QIDO matching key into the value C-FIND expects
(PS3.4 C.2.2.2); `c_find()` runs one C-FIND on a session, keeps the first `want` answers and
sends C-CANCEL once it has them (PS3.4 C.4.1.2.3, PS3.7 9.3.2.3).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.status import code_to_category

from .. import dicomjson
from ..dicomjson import JsonDataset, tag_of
from ..errors import ConnectorError
from ..query import SERIES_UID, SOP_UID, STUDY_UID, Level, Match
from .dimse_assoc import AssociationLost, Session, StatusError

#: Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.2.1.1)
FIND_MODEL = UID("1.2.840.10008.5.1.4.1.2.2.1")
CHARSET = 0x00080005
QR_LEVEL = 0x00080052
RETRIEVE_AET = 0x00080054
RETRIEVE_URL = tag_of("RetrieveURL")
INSTANCE_AVAILABILITY = tag_of("InstanceAvailability")
MODALITIES_IN_STUDY = tag_of("ModalitiesInStudy")
STUDY_SERIES = tag_of("NumberOfStudyRelatedSeries")
STUDY_INSTANCES = tag_of("NumberOfStudyRelatedInstances")
SERIES_INSTANCES = tag_of("NumberOfSeriesRelatedInstances")
MODALITY = tag_of("Modality")
#: Keys a PACS may compute, or not (PS3.4 C.6.1.1.5 and Table C.6-5).
DERIVED = frozenset({MODALITIES_IN_STUDY, STUDY_SERIES, STUDY_INSTANCES, SERIES_INSTANCES})
_NOT_KEYS = {RETRIEVE_URL, CHARSET, QR_LEVEL, RETRIEVE_AET}
_PENDING = (0xFF00, 0xFF01)
_BINARY_NUMBERS = {"US", "UL", "SS", "SL", "SV", "UV"}

#: Study Root keys per level (PS3.4 Tables C.6-5 and C.6-6); patient keys (group 0010) belong
#: to the study level of this model.
STUDY_LEVEL = (
    frozenset(dicomjson.PATIENT_STUDY_KEYS)
    | frozenset(dicomjson.STUDY_ATTRIBUTES)
    | frozenset(
        map(
            tag_of,
            (
                "OtherStudyNumbers",
                "NameOfPhysiciansReadingStudy",
                "AdmittingDiagnosesDescription",
                "StudyDescription",
                "ProcedureCodeSequence",
                "PatientAge",
                "PatientSize",
                "PatientWeight",
                "Occupation",
                "AdditionalPatientHistory",
            ),
        )
    )
) - {RETRIEVE_URL, INSTANCE_AVAILABILITY}
SERIES_LEVEL = (
    frozenset(dicomjson.SERIES_ATTRIBUTES)
    | frozenset(
        map(
            tag_of,
            (
                "SeriesDate",
                "SeriesTime",
                "BodyPartExamined",
                "ProtocolName",
                "Laterality",
                "PerformingPhysicianName",
                "OperatorsName",
                "Manufacturer",
                "InstitutionName",
                "StationName",
                "RequestAttributesSequence",
            ),
        )
    )
) - {RETRIEVE_URL}
IMAGE_LEVEL = frozenset(dicomjson.INSTANCE_ATTRIBUTES) - {RETRIEVE_URL, INSTANCE_AVAILABILITY}
UID_OF = {Level.STUDY: STUDY_UID, Level.SERIES: SERIES_UID, Level.IMAGE: SOP_UID}
DEPTH = {Level.STUDY: 0, Level.SERIES: 1, Level.IMAGE: 2}


def level_of(tag: int, target: Level) -> Level:
    """The level of the information model an attribute belongs to, never below `target`
    (an attribute of no known level is taken to be of `target`'s level)."""
    if tag >> 16 == 0x0010 or tag in STUDY_LEVEL:
        level = Level.STUDY
    elif tag in SERIES_LEVEL:
        level = Level.SERIES
    else:
        level = Level.IMAGE if tag in IMAGE_LEVEL else target
    return level if DEPTH[level] <= DEPTH[target] else target


def vr_of(tag: int) -> str:
    vr = dictionary_VR(tag)
    return "US" if vr in ("US or SS", "US or OW", "US or SS or OW") else vr


def match_value(match: Match) -> Any:
    """The identifier value for a matching key (PS3.4 C.2.2.2): single values and wildcards
    as given, a range as `low-high` (C.2.2.2.5), a list as several values (UID list matching,
    C.2.2.2.2), and universal matching as an empty value (C.2.2.2.3)."""
    if match.kind == "universal":
        return None
    if match.kind == "range":
        return f"{match.values[0]}-{match.values[1]}"
    if match.kind == "list":
        return list(match.values)
    value = match.values[0]
    if vr_of(match.tag) in _BINARY_NUMBERS:
        return int(value)
    return value


def _needs_unicode(values: Iterable[Any]) -> bool:
    for value in values:
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.isascii() for v in items):
            return True
    return False


def identifier(level: Level, keys: Mapping[int, Any]) -> Dataset:
    """A C-FIND request identifier at `level` (PS3.4 C.4.1.1.3.1): each key with its
    matching value, or empty as a return key. SpecificCharacterSet is always present, as
    ISO_IR 192 (UTF-8) when a value needs more than the default repertoire (PS3.5 6.1.2.5)."""
    ds = Dataset()
    ds.add_new(CHARSET, "CS", "ISO_IR 192" if _needs_unicode(keys.values()) else None)
    ds.add_new(QR_LEVEL, "CS", level.value)
    for tag in sorted(keys):
        if tag in _NOT_KEYS:
            continue
        vr = vr_of(tag)
        ds.add_new(tag, vr, [] if vr == "SQ" else keys[tag])
    return ds


def to_json(answer: Dataset) -> JsonDataset:
    """An answer as DICOM JSON (text decoded from the answer's SpecificCharacterSet, padding
    trimmed), without the C-FIND bookkeeping attributes QueryRetrieveLevel and
    RetrieveAETitle."""
    out = dicomjson.from_pydicom(answer)
    out.pop(dicomjson.key(QR_LEVEL), None)
    out.pop(dicomjson.key(RETRIEVE_AET), None)
    return out


def c_find(session: Session, ident: Dataset, want: int | None = None) -> tuple[list[Dataset], bool]:
    """Runs one C-FIND. Returns the answers (at most `want`) and whether more matched than
    were kept. Pending answers carry status 0xFF00 or 0xFF01 (PS3.4 C.4.1.1.4); with `want`
    answers in, a C-CANCEL ends the matching and later answers are dropped. A failure status
    raises StatusError; a lost association or a time-out raises via `Session.lost`."""
    msg_id = session.next_msg_id()
    try:
        responses = session.assoc.send_c_find(ident, FIND_MODEL, msg_id=msg_id)
    except RuntimeError as exc:  # pynetdicom: the association is no longer established
        raise AssociationLost(f"C-FIND could not be sent: {exc}", session.connector) from exc
    except ValueError as exc:  # the identifier cannot be encoded, no accepted context
        raise ConnectorError(f"C-FIND could not be sent: {exc}", session.connector) from exc
    answers: list[Dataset] = []
    more = cancelled = False
    since = time.monotonic()
    for status, answer in responses:
        code = status.get("Status")
        if code is None:
            raise session.lost("C-FIND", since)
        since = time.monotonic()
        if code in _PENDING:
            if answer is None:
                continue
            if want is not None and len(answers) >= want:
                more = True
                continue
            answers.append(answer)
            if want is not None and len(answers) >= want and not cancelled:
                cancelled = True
                with contextlib.suppress(Exception):
                    session.assoc.send_c_cancel(msg_id, query_model=FIND_MODEL)
            continue
        if code == 0xFE00 or code_to_category(code) in ("Success", "Warning"):
            return answers, more or code == 0xFE00
        raise StatusError("C-FIND", code, session.connector)
    raise session.lost("C-FIND", since)
