"""Weasis launch parameters -> `ManifestRequest`, and the `weasis://` launch URL.

Pure: no Flask. The parameters are Viewer-Hub's (reference viewer-hub.md section 4): the five
identifier parameters, each repeatable and comma-separable and combined as a union; `archive`;
the filters `modalitiesInStudy`, `containsInDescription`, `lowerDateTime`, `upperDateTime`,
`mostRecentResults`; the pass-through `pro`, `arg`, `cdb`. `iid=True` applies the IHE Invoke
Image Display rules (transaction RAD-106). Bad input raises `BadRequest` naming the parameter; no
message repeats the value it refuses.

Date bounds are inclusive at the precision given: `upperDateTime=2024-01-02` keeps studies up
to 2024-01-02T23:59:59.999999, `upperDateTime=2024-01-02T10:30` up to 10:30:59.999999.
"""

from __future__ import annotations

import datetime
import html
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .errors import BadRequest
from .manifest import Filters
from .query import MAX_LIST_VALUES, MAX_VALUE_LENGTH, is_uid

IDENTIFIER_PARAMETERS = ("patientID", "studyUID", "accessionNumber", "seriesUID", "objectUID")
FILTER_PARAMETERS = (
    "modalitiesInStudy",
    "containsInDescription",
    "lowerDateTime",
    "upperDateTime",
    "mostRecentResults",
)
LAUNCH_PARAMETERS = ("pro", "arg", "cdb")
#: IHE IID parameters an Image Display may take; accepted and ignored here.
IID_IGNORED_PARAMETERS = (
    "patientName",
    "patientBirthDate",
    "viewerType",
    "diagnosticQuality",
    "keyImagesOnly",
)
_COMMON = ("archive", *FILTER_PARAMETERS, *LAUNCH_PARAMETERS)
_ALLOWED = frozenset((*IDENTIFIER_PARAMETERS, *_COMMON))
_ALLOWED_IID = frozenset(
    ("requestType", "patientID", "studyUID", "accessionNumber", *_COMMON, *IID_IGNORED_PARAMETERS)
)

#: PS3.5 Table 6.2-1 maximum lengths: Patient ID and its issuer are LO, Accession Number is SH.
LO_MAX, SH_MAX = 64, 16
#: PS3.5 Table 6.2-1: CS is upper-case letters, digits, space and underscore, 16 characters.
_CS_RE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_ISO_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?)?$"
)
_DICOM_RE = re.compile(r"^([0-9]{4})([0-9]{2})([0-9]{2})(?:([0-9]{2})([0-9]{2})([0-9]{2}))?$")
_DATE_FORMS = (
    "YYYY-MM-DD, YYYY-MM-DDThh:mm[:ss[.ffffff]], YYYYMMDD or YYYYMMDDhhmmss (no time zone)"
)
MAX_LAUNCH_VALUE = 2048
MAX_LAUNCH_VALUES = 100
_MAX_NAME = 64


@dataclass(frozen=True)
class ManifestRequest:
    """What a manifest is built from: identifiers (a union), archives, filters."""

    patient_ids: tuple[tuple[str, str | None], ...] = ()
    study_uids: tuple[str, ...] = ()
    accession_numbers: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    object_uids: tuple[str, ...] = ()
    archives: tuple[str, ...] = ()
    filters: Filters = field(default_factory=Filters)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (datetimes as ISO 8601 strings), read back by `from_dict`."""
        f = self.filters
        return {
            "patient_ids": [[pid, issuer] for pid, issuer in self.patient_ids],
            "study_uids": list(self.study_uids),
            "accession_numbers": list(self.accession_numbers),
            "series_uids": list(self.series_uids),
            "object_uids": list(self.object_uids),
            "archives": list(self.archives),
            "filters": {
                "modalities": list(f.modalities),
                "descriptions": list(f.descriptions),
                "lower": f.lower.isoformat() if f.lower is not None else None,
                "upper": f.upper.isoformat() if f.upper is not None else None,
                "most_recent": f.most_recent,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRequest:
        f = data.get("filters") or {}
        lower, upper = f.get("lower"), f.get("upper")
        return cls(
            patient_ids=tuple((str(p[0]), p[1]) for p in data.get("patient_ids", ())),
            study_uids=tuple(data.get("study_uids", ())),
            accession_numbers=tuple(data.get("accession_numbers", ())),
            series_uids=tuple(data.get("series_uids", ())),
            object_uids=tuple(data.get("object_uids", ())),
            archives=tuple(data.get("archives", ())),
            filters=Filters(
                modalities=tuple(f.get("modalities", ())),
                descriptions=tuple(f.get("descriptions", ())),
                lower=datetime.datetime.fromisoformat(lower) if lower is not None else None,
                upper=datetime.datetime.fromisoformat(upper) if upper is not None else None,
                most_recent=f.get("most_recent"),
            ),
        )


def _raw(args: Mapping[str, Sequence[str]], name: str) -> list[str]:
    values = args.get(name, ())
    return [values] if isinstance(values, str) else list(values)


def _items(args: Mapping[str, Sequence[str]], name: str, comma: bool = True) -> list[str]:
    """The values of a repeatable parameter, split at commas, stripped, empty ones dropped,
    duplicates removed keeping the first."""
    items: dict[str, None] = {}
    for value in _raw(args, name):
        for item in value.split(",") if comma else (value,):
            if item.strip():
                items.setdefault(item.strip(), None)
    if len(items) > MAX_LIST_VALUES:
        raise BadRequest(f"{name} has more than {MAX_LIST_VALUES} values", parameter=name)
    return list(items)


def _single(args: Mapping[str, Sequence[str]], name: str) -> str | None:
    """A parameter given at most once (empty counts as absent)."""
    values = [v.strip() for v in _raw(args, name) if v.strip()]
    if len(values) > 1:
        raise BadRequest(f"{name} is given more than once", parameter=name)
    return values[0] if values else None


def _has_control(value: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in value)


def _check_text(value: str, name: str, max_length: int, matching: bool = False) -> str:
    """Length and characters of a value. `matching`: a DICOM matching key value, where a
    backslash separates values (PS3.5 6.2) and '*' and '?' are wildcards (PS3.4 C.2.2.2.4)."""
    if len(value) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} characters", parameter=name)
    if _has_control(value) or (matching and any(c in value for c in "\\*?")):
        banned = "'\\', '*', '?' or control characters" if matching else "control characters"
        raise BadRequest(f"{name} must not contain {banned}", parameter=name)
    return value


def _patient_ids(args: Mapping[str, Sequence[str]]) -> tuple[tuple[str, str | None], ...]:
    """patientID values, "id" or "id^^^issuer" (HL7 CX: the assigning authority is the 4th
    component), checked as LO values."""
    found: dict[tuple[str, str | None], None] = {}
    for item in _items(args, "patientID"):
        pid, _, issuer = item.partition("^^^")
        pid, issuer = pid.strip(), issuer.strip()
        if not pid:
            raise BadRequest("patientID has an issuer but no identifier", parameter="patientID")
        _check_text(pid, "patientID", LO_MAX, matching=True)
        _check_text(issuer, "patientID", LO_MAX, matching=True)
        found.setdefault((pid, issuer or None), None)
    return tuple(found)


def _uids(args: Mapping[str, Sequence[str]], name: str) -> tuple[str, ...]:
    items = _items(args, name)
    if not all(is_uid(item) for item in items):
        raise BadRequest(f"{name} is not a valid UID (PS3.5 9.1)", parameter=name)
    return tuple(items)


def _parse_datetime(value: str, name: str, upper: bool) -> datetime.datetime:
    """One bound; `upper` extends it to the end of the last unit given (day, minute, second,
    or the fraction's last digit), so that both bounds are inclusive."""
    match = None if len(value) > 32 else _ISO_RE.fullmatch(value) or _DICOM_RE.fullmatch(value)
    if match is None:
        raise BadRequest(f"{name} must be one of {_DATE_FORMS}", parameter=name)
    groups = match.groups() + (None,) * (7 - len(match.groups()))
    year, month, day, hour, minute, second, fraction = groups
    digits = (fraction or "").ljust(6, "0")
    try:
        start = datetime.datetime(
            int(year or 0),
            int(month or 0),
            int(day or 0),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(digits),
        )
    except ValueError:
        raise BadRequest(f"{name} is not a valid date and time", parameter=name) from None
    if not upper:
        return start
    if fraction is not None:
        unit = datetime.timedelta(microseconds=10 ** (6 - len(fraction)))
    elif second is not None:
        unit = datetime.timedelta(seconds=1)
    elif minute is not None:
        unit = datetime.timedelta(minutes=1)
    else:
        unit = datetime.timedelta(days=1)
    try:
        return start + unit - datetime.timedelta(microseconds=1)
    except OverflowError:  # the last unit of year 9999
        return datetime.datetime.max


def _most_recent(args: Mapping[str, Sequence[str]]) -> int | None:
    value = _single(args, "mostRecentResults")
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,10}", value) or not 0 < int(value) < 2**31:
        raise BadRequest(
            "mostRecentResults must be a positive integer", parameter="mostRecentResults"
        )
    return int(value)


def _filters(args: Mapping[str, Sequence[str]]) -> Filters:
    modalities = tuple(dict.fromkeys(m.upper() for m in _items(args, "modalitiesInStudy")))
    if not all(_CS_RE.fullmatch(m) for m in modalities):
        raise BadRequest(
            "modalitiesInStudy values must be DICOM modality codes (CS, PS3.5 6.2)",
            parameter="modalitiesInStudy",
        )
    descriptions = tuple(
        _check_text(d, "containsInDescription", MAX_VALUE_LENGTH)
        for d in _items(args, "containsInDescription", comma=False)
    )
    bounds: list[datetime.datetime | None] = []
    for name in ("lowerDateTime", "upperDateTime"):
        value = _single(args, name)
        bounds.append(None if value is None else _parse_datetime(value, name, name[0] == "u"))
    lower, upper = bounds
    if lower is not None and upper is not None and lower > upper:
        raise BadRequest("upperDateTime is before lowerDateTime", parameter="upperDateTime")
    return Filters(modalities, descriptions, lower, upper, _most_recent(args))


def _check_names(args: Mapping[str, Sequence[str]], iid: bool) -> None:
    allowed = _ALLOWED_IID if iid else _ALLOWED
    for name in args:
        if name not in allowed:
            accepted = ", ".join(sorted(allowed, key=str.lower))
            raise BadRequest(
                f"unknown parameter (accepted: {accepted})", parameter=name[:_MAX_NAME]
            )


def _request_type(args: Mapping[str, Sequence[str]]) -> str:
    kind = _single(args, "requestType")
    if kind not in ("PATIENT", "STUDY"):
        raise BadRequest("requestType must be PATIENT or STUDY", parameter="requestType")
    return kind


def _check_iid(kind: str, request: ManifestRequest) -> None:
    """IHE IID (RAD-106) request rules: PATIENT takes one patientID; STUDY takes studyUID or
    accessionNumber (one or more values), not both. The other kind is refused."""
    studies = {"studyUID": request.study_uids, "accessionNumber": request.accession_numbers}
    if kind == "PATIENT":
        for name, values in studies.items():
            if values:
                raise BadRequest(f"requestType=PATIENT does not take {name}", parameter=name)
        if len(request.patient_ids) != 1:
            raise BadRequest(
                "requestType=PATIENT needs exactly one patientID", parameter="patientID"
            )
        return
    if request.patient_ids:
        raise BadRequest("requestType=STUDY does not take patientID", parameter="patientID")
    if request.study_uids and request.accession_numbers:
        raise BadRequest(
            "requestType=STUDY takes studyUID or accessionNumber, not both",
            parameter="studyUID",
        )
    if not request.study_uids and not request.accession_numbers:
        raise BadRequest(
            "requestType=STUDY needs studyUID or accessionNumber", parameter="studyUID"
        )


def parse_manifest_request(args: Mapping[str, Sequence[str]], iid: bool = False) -> ManifestRequest:
    """args: parameter name -> its values (werkzeug `MultiDict.to_dict(flat=False)`).
    `iid`: the /IHEInvokeImageDisplay rules (requestType PATIENT or STUDY)."""
    _check_names(args, iid)
    kind = _request_type(args) if iid else None
    request = ManifestRequest(
        patient_ids=_patient_ids(args),
        study_uids=_uids(args, "studyUID"),
        accession_numbers=tuple(
            _check_text(a, "accessionNumber", SH_MAX, matching=True)
            for a in _items(args, "accessionNumber")
        ),
        series_uids=_uids(args, "seriesUID"),
        object_uids=_uids(args, "objectUID"),
        archives=tuple(
            _check_text(a, "archive", MAX_VALUE_LENGTH) for a in _items(args, "archive")
        ),
        filters=_filters(args),
    )
    if kind is not None:
        _check_iid(kind, request)
    elif not (
        request.patient_ids
        or request.study_uids
        or request.accession_numbers
        or request.series_uids
        or request.object_uids
    ):
        raise BadRequest(
            "give at least one of " + ", ".join(IDENTIFIER_PARAMETERS), parameter="patientID"
        )
    return request


def _check_launch(value: str, name: str) -> str:
    """A value written between double quotes in a Weasis command: no double quote, no control
    character, no trailing backslash (it would escape the closing quote), no `$` (Weasis splits
    a weasis:// link into commands at every `$`, quoted or not), bounded length."""
    if len(value) > MAX_LAUNCH_VALUE:
        raise BadRequest(f"{name} is longer than {MAX_LAUNCH_VALUE} characters", parameter=name)
    if '"' in value or "$" in value or _has_control(value) or value.endswith("\\"):
        raise BadRequest(
            f"{name} must not contain a double quote, a $ or control characters, "
            "nor end with a backslash",
            parameter=name,
        )
    return value


def launch_parameters(
    args: Mapping[str, Sequence[str]],
) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(pro values, arg values, cdb) for `weasis_url`. Empty pro/arg values are dropped; an
    empty cdb is kept ("" tells Weasis to use its local installation)."""
    found: dict[str, tuple[str, ...]] = {}
    for name in ("pro", "arg"):
        values = [v for v in _raw(args, name) if v]
        if len(values) > MAX_LAUNCH_VALUES:
            raise BadRequest(f"{name} has more than {MAX_LAUNCH_VALUES} values", parameter=name)
        found[name] = tuple(_check_launch(v, name) for v in values)
    cdbs = _raw(args, "cdb")
    if len(cdbs) > 1:
        raise BadRequest("cdb is given more than once", parameter="cdb")
    cdb = _check_launch(cdbs[0], "cdb") if cdbs else None
    return found["pro"], found["arg"], cdb


def weasis_url(
    manifest_url: str, pro: Sequence[str] = (), arg: Sequence[str] = (), cdb: str | None = None
) -> str:
    """`weasis://?` + the percent-encoded command (viewer-hub.md 3.4): `$dicom:get -w "<url>"`,
    then, when pro, arg or cdb is given, `$weasis:config` with cdb="..", pro=".." and arg="..".
    A double quote in any value is a programming error (`launch_parameters` refuses it)."""
    if any('"' in v for v in (manifest_url, *pro, *arg, cdb or "")):
        raise ValueError("a double quote cannot be written inside a Weasis command value")
    command = f'$dicom:get -w "{manifest_url}"'
    if pro or arg or cdb is not None:
        command += " $weasis:config"
        if cdb is not None:
            command += f' cdb="{cdb}"'
        command += "".join(f' pro="{p}"' for p in pro)
        command += "".join(f' arg="{a}"' for a in arg)
    return "weasis://?" + quote(command, safe="")


def launch_page(weasis_link: str, manifest_url: str) -> str:
    """A standalone HTML5 page with the launch link, for browsers that do not follow the
    redirect to weasis://. No script; every value HTML-escaped."""
    link = html.escape(weasis_link, quote=True)
    manifest = html.escape(manifest_url, quote=True)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>Open in Weasis</title>\n</head>\n<body>\n"
        "<h1>Open in Weasis</h1>\n"
        f'<p><a href="{link}">Open the images in Weasis</a></p>\n'
        "<p>If Weasis did not start, your browser may have blocked the weasis:// link: click "
        "the link above, or copy the link below into the address bar. Weasis must be "
        "installed on this computer.</p>\n"
        f"<p><code>{link}</code></p>\n"
        f"<p>Manifest: <code>{manifest}</code></p>\n"
        "</body>\n</html>\n"
    )
