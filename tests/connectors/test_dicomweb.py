"""DICOM_WEB connector: against a real Orthanc + DICOMweb plugin (tests.harness) loaded with the
sample files, and against local HTTP servers (http_fakes) that inject faults.

Ground truth comes from the sample files read with pydicom (tests.harness.samples), from the
standard (PS3.18 resource paths and query syntax, RFC 6749 token handling), or from the values a
fake server was told to serve.
"""

from __future__ import annotations

import fnmatch
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest

from gateway import dicomjson
from gateway.connectors.base import ResourceRef
from gateway.connectors.dicomweb import (
    DicomWebConnector,
    encode_query,
    search_pairs,
    search_path,
)
from gateway.connectors.http_upstream import TOKEN_LEEWAY
from gateway.errors import ConnectorError, ConnectorTimeout, NotAcceptable, NotFound
from gateway.query import SERIES_UID, SOP_UID, STUDY_UID, Level, SearchQuery, parse_search
from gateway.settings import (
    Authentication,
    BasicAuth,
    ConnectorSettings,
    OAuth2Auth,
    OidcClient,
    Server,
    Settings,
    Timeouts,
)
from gateway.settings import DicomWebConnector as DicomWebSettings
from tests.connectors import http_fakes as fakes
from tests.harness.ports import free_port
from tests.harness.samples import info_of, instances_of, sample_index, series_of, studies

CONNECTOR_ID = "upstream-pacs"
GATEWAY_BASE = "https://gateway.example.org/dicomweb"
UNKNOWN_UID = "1.2.826.0.1.3680043.8.498.99999999999999999999"
SECRET = "client-secret-4b1d"
TIMEOUTS = Timeouts(connect=2.0, read=10.0, request=20.0)
PATIENT_ID, MODALITY = 0x00100020, 0x00080060
MODALITIES_IN_STUDY, SOP_CLASS = 0x00080061, 0x00080016
STUDY_INSTANCES, SERIES_INSTANCES = 0x00201208, 0x00201209
#: PS3.5 A.1 and A.2: the uncompressed little-endian transfer syntaxes
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
CT_SMALL_STUDY = sample_index()["CT_small.dcm"]["StudyInstanceUID"]

Build = Callable[..., DicomWebConnector]


def none_auth(url: str) -> Authentication:
    return Authentication(type="NONE", server=Server(url=url))


def basic_auth(url: str, login: str, password: str) -> Authentication:
    return Authentication(type="BASIC", basic=BasicAuth(login, password, Server(url=url)))


def oauth_auth(url: str) -> Authentication:
    return Authentication(type="OAUTH2", oauth2=OAuth2Auth("idp", Server(url=url)))


@pytest.fixture
def build() -> Iterator[Build]:
    """Builds connectors (as create_app would, with Settings.oidc_client) and closes them."""
    made: list[DicomWebConnector] = []

    def make(
        qido: Authentication,
        wado: Authentication | None = None,
        page_size: int = 1000,
        timeouts: Timeouts = TIMEOUTS,
        oidc: tuple[OidcClient, ...] = (),
    ) -> DicomWebConnector:
        connector = ConnectorSettings(
            id=CONNECTOR_ID,
            type="DICOM_WEB",
            dicom_web=DicomWebSettings(qido_rs=qido, wado_rs=wado, page_size=page_size),
            timeouts=timeouts,
        )
        settings = Settings(connectors=(connector,), default=(CONNECTOR_ID,), oidc=oidc)
        made.append(DicomWebConnector(connector, settings.oidc_client))
        return made[-1]

    yield make
    for connector in made:
        connector.close()


def query(
    level: Level, pairs: list[tuple[str, str]] | None = None, path: dict[int, str] | None = None
) -> SearchQuery:
    return parse_search(level, pairs or [], path_uids=path)


def uids(datasets: list[dict[str, Any]], tag: int) -> list[str]:
    return [dicomjson.first(d, tag) for d in datasets]


def number(data: dict[str, Any], tag: int) -> int:
    return int(dicomjson.first(data, tag))


def samples_where(key: str, value: str) -> list[dict[str, Any]]:
    """The ground truth of the sample files whose `key` is `value`."""
    infos = [dict(i) for i in sample_index().values()]
    return [i for i in infos if i[key] == value]


def bulk_uris(data: dict[str, Any]) -> Iterator[str]:
    for attr in data.values():
        if "BulkDataURI" in attr:
            yield attr["BulkDataURI"]
        if attr.get("vr") == "SQ":
            for item in attr.get("Value") or ():
                yield from bulk_uris(item)


# -- pure parts: resource paths and query strings (PS3.18 8.3.4, 10.6.1) --------------------

S1, SE1 = "1.2.3", "1.2.3.4"


@pytest.mark.parametrize(
    "level, pairs, path_uids, expected_path, expected_keys",
    [
        (Level.STUDY, [], None, "studies", []),
        (Level.STUDY, [("StudyInstanceUID", S1)], None, "studies", ["StudyInstanceUID"]),
        (Level.SERIES, [], None, "series", []),
        (Level.SERIES, [], {STUDY_UID: S1}, f"studies/{S1}/series", []),
        (Level.SERIES, [("StudyInstanceUID", f"{S1},1.2.5")], None, "series", ["StudyInstanceUID"]),
        (Level.IMAGE, [], None, "instances", []),
        (Level.IMAGE, [], {STUDY_UID: S1}, f"studies/{S1}/instances", []),
        (
            Level.IMAGE,
            [],
            {STUDY_UID: S1, SERIES_UID: SE1},
            f"studies/{S1}/series/{SE1}/instances",
            [],
        ),
        (Level.IMAGE, [("SeriesInstanceUID", SE1)], None, "instances", ["SeriesInstanceUID"]),
    ],
)
def test_search_path(
    level: Level,
    pairs: list[tuple[str, str]],
    path_uids: dict[int, str] | None,
    expected_path: str,
    expected_keys: list[str],
) -> None:
    """PS3.18 10.6.1: /studies, /series, /instances, scoped under a study (and a series)."""
    q = query(level, pairs, path_uids)
    path, in_path = search_path(q)
    assert path == expected_path
    assert [name for name, _ in search_pairs(q, in_path)] == expected_keys


def test_query_string_keeps_wildcards_literal() -> None:
    q = query(
        Level.STUDY,
        [
            ("PatientName", "DOE*"),
            ("PatientID", "A?C"),
            ("StudyDate", "20240101-20241231"),
            ("ModalitiesInStudy", "CT,MR"),
            ("AccessionNumber", ""),
            ("StudyDescription", "A&B=C D"),
            ("includefield", "00081030,StudyID"),
            ("fuzzymatching", "true"),
        ],
    )
    assert encode_query(search_pairs(q, ())) == (
        "StudyDate=20240101-20241231&AccessionNumber=&ModalitiesInStudy=CT,MR"
        "&StudyDescription=A%26B%3DC%20D&PatientName=DOE*&PatientID=A?C"
        "&includefield=00081030,00200010&fuzzymatching=true"
    )


# -- Orthanc: searches equal the sample files --------------------------------------------------


@pytest.fixture
def upstream(orthanc: Any, build: Build) -> DicomWebConnector:
    return build(none_auth(orthanc.dicomweb_url))


def test_capabilities(upstream: DicomWebConnector) -> None:
    assert upstream.capabilities.fuzzy is True
    assert upstream.id == CONNECTOR_ID


def test_search_all_studies(upstream: DicomWebConnector) -> None:
    answers = upstream.search(query(Level.STUDY)).datasets
    assert sorted(uids(answers, STUDY_UID)) == studies()
    for data in answers:
        infos = samples_where("StudyInstanceUID", dicomjson.first(data, STUDY_UID))
        assert (dicomjson.first(data, PATIENT_ID) or "") == infos[0]["PatientID"]
        modalities = data[dicomjson.key(MODALITIES_IN_STUDY)]["Value"]
        assert sorted(modalities) == sorted({i["Modality"] for i in infos})
        assert number(data, STUDY_INSTANCES) == len(infos)
        assert dicomjson.key(0x00081190) not in data  # the engine writes its own RetrieveURL
        assert dicomjson.key(0x00080005) not in data
        assert all(k == k.upper() for k in data)


def test_search_all_series(upstream: DicomWebConnector) -> None:
    answers = upstream.search(query(Level.SERIES)).datasets
    expected = sorted({i["SeriesInstanceUID"] for i in sample_index().values()})
    assert sorted(uids(answers, SERIES_UID)) == expected
    for data in answers:
        infos = samples_where("SeriesInstanceUID", dicomjson.first(data, SERIES_UID))
        assert dicomjson.first(data, STUDY_UID) == infos[0]["StudyInstanceUID"]
        assert dicomjson.first(data, MODALITY) == infos[0]["Modality"]
        assert number(data, SERIES_INSTANCES) == len(infos)


def test_search_all_instances(upstream: DicomWebConnector) -> None:
    answers = upstream.search(query(Level.IMAGE)).datasets
    assert sorted(uids(answers, SOP_UID)) == sorted(
        i["SOPInstanceUID"] for i in sample_index().values()
    )
    for data in answers:
        info = info_of(dicomjson.first(data, SOP_UID))
        assert dicomjson.first(data, SOP_CLASS) == info["SOPClassUID"]
        assert dicomjson.first(data, SERIES_UID) == info["SeriesInstanceUID"]
        assert dicomjson.first(data, STUDY_UID) == info["StudyInstanceUID"]


@pytest.mark.parametrize("study", studies())
def test_scoped_searches(upstream: DicomWebConnector, study: str) -> None:
    series = upstream.search(query(Level.SERIES, path={STUDY_UID: study})).datasets
    assert sorted(uids(series, SERIES_UID)) == series_of(study)
    for se in series_of(study):
        scoped = query(Level.IMAGE, path={STUDY_UID: study, SERIES_UID: se})
        assert sorted(uids(upstream.search(scoped).datasets, SOP_UID)) == instances_of(se)
        relational = query(Level.IMAGE, [("SeriesInstanceUID", se)])
        assert sorted(uids(upstream.search(relational).datasets, SOP_UID)) == instances_of(se)
    in_study = upstream.search(query(Level.IMAGE, path={STUDY_UID: study})).datasets
    expected = sorted(i["SOPInstanceUID"] for i in samples_where("StudyInstanceUID", study))
    assert sorted(uids(in_study, SOP_UID)) == expected


def _studies_where(keep: Callable[[dict[str, Any]], bool]) -> list[str]:
    return sorted({i["StudyInstanceUID"] for i in sample_index().values() if keep(dict(i))})


@pytest.mark.parametrize(
    "pairs, keep",
    [
        (
            [("StudyDate", "20040101-20041231")],
            lambda i: "20040101" <= i["StudyDate"] <= "20041231",
        ),
        ([("StudyDate", "20050101-")], lambda i: i["StudyDate"] >= "20050101"),
        ([("PatientID", "ID1")], lambda i: i["PatientID"] == "ID1"),
        ([("AccessionNumber", "")], lambda i: True),
        (
            [("StudyInstanceUID", ",".join(studies()[:2]))],
            lambda i: i["StudyInstanceUID"] in studies()[:2],
        ),
    ],
    ids=["date range", "date from", "single value", "universal", "UID list"],
)
def test_matching_keys(
    upstream: DicomWebConnector,
    pairs: list[tuple[str, str]],
    keep: Callable[[dict[str, Any]], bool],
) -> None:
    """PS3.4 C.2.2.2: single value, universal, range and UID list matching by the upstream."""
    expected = _studies_where(keep)
    assert expected, "the case should select some sample"
    answers = upstream.search(query(Level.STUDY, pairs)).datasets
    assert sorted(uids(answers, STUDY_UID)) == expected


def test_includefield_is_forwarded(upstream: DicomWebConnector) -> None:
    """Orthanc leaves StudyDescription out unless asked for it (testbed.md §8)."""
    answers = upstream.search(query(Level.STUDY, [("includefield", "StudyDescription")]))
    for data in answers.datasets:
        (info, *_) = samples_where("StudyInstanceUID", dicomjson.first(data, STUDY_UID))
        source = pydicom.dcmread(info["path"], stop_before_pixels=True)
        # a study without the attribute may leave it out; the engine adds it empty
        assert (dicomjson.first(data, 0x00081030) or "") == (source.get("StudyDescription") or "")
    (ct,) = [d for d in answers.datasets if dicomjson.first(d, STUDY_UID) == CT_SMALL_STUDY]
    ct_source = pydicom.dcmread(sample_index()["CT_small.dcm"]["path"], stop_before_pixels=True)
    assert dicomjson.first(ct, 0x00081030) == ct_source.StudyDescription != ""


def test_scoped_search_of_unknown_study_is_empty(upstream: DicomWebConnector) -> None:
    assert upstream.search(query(Level.SERIES, path={STUDY_UID: UNKNOWN_UID})).datasets == []


@pytest.mark.parametrize("pattern", ["Compressed*", "L*", "Lestrade?G", "*Samples?MR?"])
def test_wildcard_patient_name(upstream: DicomWebConnector, pattern: str) -> None:
    """PS3.4 C.2.2.2.4: `*` any sequence, `?` one character (sent literally to Orthanc)."""
    expected = sorted(
        {
            i["StudyInstanceUID"]
            for i in sample_index().values()
            if fnmatch.fnmatchcase(i["PatientName"], pattern)
        }
    )
    assert expected, "the pattern should select some sample"
    answers = upstream.search(query(Level.STUDY, [("PatientName", pattern)])).datasets
    assert sorted(uids(answers, STUDY_UID)) == expected


def test_paging_with_page_size_2(orthanc: Any, build: Build) -> None:
    everything = build(none_auth(orthanc.dicomweb_url)).search(query(Level.STUDY)).datasets
    full = uids(everything, STUDY_UID)
    assert sorted(full) == studies()
    paged = build(none_auth(orthanc.dicomweb_url), page_size=2)
    assert uids(paged.search(query(Level.STUDY)).datasets, STUDY_UID) == full
    for offset, limit in [(0, 9), (0, 3), (1, 3), (2, 2), (4, 5), (7, 10), (8, 1), (9, 2)]:
        pairs = [("limit", str(limit)), ("offset", str(offset))]
        result = paged.search(query(Level.STUDY, pairs))
        assert uids(result.datasets, STUDY_UID) == full[offset : offset + limit], (offset, limit)


def test_basic_auth(orthanc_auth: Any, build: Build) -> None:
    login, password = orthanc_auth.auth
    connector = build(basic_auth(orthanc_auth.dicomweb_url, login, password))
    assert sorted(uids(connector.search(query(Level.STUDY)).datasets, STUDY_UID)) == studies()
    connector.check()


def test_wrong_password_is_a_502_naming_the_connector(orthanc_auth: Any, build: Build) -> None:
    login, _ = orthanc_auth.auth
    wrong = "wrong-password-93c1"
    connector = build(basic_auth(orthanc_auth.dicomweb_url, login, wrong))
    with pytest.raises(ConnectorError) as raised:
        connector.search(query(Level.STUDY))
    error = raised.value
    assert type(error) is ConnectorError
    assert error.status == 502
    assert error.connector == CONNECTOR_ID
    assert error.message == "upstream refused the gateway's credentials (HTTP 401)"
    assert wrong not in json.dumps(error.to_json()) and wrong not in str(error)
    with pytest.raises(ConnectorError):
        connector.check()


# -- Orthanc: retrieval ------------------------------------------------------------------------


def _assert_same_as_files(parts: list[Any]) -> None:
    for part in parts:
        info = info_of(part.sop_instance_uid)
        got = pydicom.dcmread(io.BytesIO(part.data))
        source = pydicom.dcmread(info["path"])
        assert got.SOPInstanceUID == info["SOPInstanceUID"]
        assert part.transfer_syntax == info["TransferSyntaxUID"]
        assert got.file_meta.TransferSyntaxUID == info["TransferSyntaxUID"]
        assert got.PixelData == source.PixelData


def test_series_retrieval_gives_the_source_objects(upstream: DicomWebConnector) -> None:
    rle = sample_index()["SC_rgb_rle.dcm"]  # its series also holds SC_rgb_jpeg_dcmtk.dcm
    ref = ResourceRef(rle["StudyInstanceUID"], rle["SeriesInstanceUID"])
    parts = list(upstream.retrieve_instances(ref, "*"))
    assert sorted(p.sop_instance_uid for p in parts) == instances_of(rle["SeriesInstanceUID"])
    assert len(parts) == 2
    _assert_same_as_files(parts)


@pytest.mark.parametrize("study", studies())
def test_study_retrieval_gives_the_source_objects(upstream: DicomWebConnector, study: str) -> None:
    parts = list(upstream.retrieve_instances(ResourceRef(study), "*"))
    expected = sorted(i["SOPInstanceUID"] for i in samples_where("StudyInstanceUID", study))
    assert sorted(p.sop_instance_uid for p in parts) == expected
    _assert_same_as_files(parts)


def test_instance_retrieval(upstream: DicomWebConnector) -> None:
    info = next(iter(sample_index().values()))
    ref = ResourceRef(info["StudyInstanceUID"], info["SeriesInstanceUID"], info["SOPInstanceUID"])
    (part,) = list(upstream.retrieve_instances(ref, "*"))
    assert part.sop_instance_uid == info["SOPInstanceUID"]
    assert part.data == info["path"].read_bytes()  # Orthanc stores and sends the file as is
    _assert_same_as_files([part])


@pytest.mark.parametrize("study", studies())
def test_metadata_bulk_data_uris_point_at_the_gateway(
    upstream: DicomWebConnector, study: str
) -> None:
    datasets = upstream.retrieve_metadata(ResourceRef(study), GATEWAY_BASE)
    expected = sorted(i["SOPInstanceUID"] for i in samples_where("StudyInstanceUID", study))
    assert sorted(uids(datasets, SOP_UID)) == expected
    for data in datasets:
        sop = dicomjson.first(data, SOP_UID)
        series = info_of(sop)["SeriesInstanceUID"]
        instance_url = f"{GATEWAY_BASE}/studies/{study}/series/{series}/instances/{sop}"
        if info_of(sop)["TransferSyntaxUID"] in NATIVE_SYNTAXES:
            # Orthanc 1.10 leaves encapsulated Pixel Data out of the metadata
            assert data["7FE00010"]["BulkDataURI"] == f"{instance_url}/bulk/7FE00010"
        assert all(uri.startswith(f"{instance_url}/bulk/") for uri in bulk_uris(data))
        assert "00081190" not in data


def test_series_and_instance_metadata(upstream: DicomWebConnector) -> None:
    info = sample_index()["CT_small.dcm"]
    study, series, sop = info["StudyInstanceUID"], info["SeriesInstanceUID"], info["SOPInstanceUID"]
    (data,) = upstream.retrieve_metadata(ResourceRef(study, series, sop), GATEWAY_BASE)
    assert dicomjson.first(data, SOP_UID) == sop
    source = pydicom.dcmread(info["path"], stop_before_pixels=True)
    assert dicomjson.first(data, 0x00280010) == source.Rows
    in_series = upstream.retrieve_metadata(ResourceRef(study, series), GATEWAY_BASE)
    assert sorted(uids(in_series, SOP_UID)) == instances_of(series)


def test_unknown_study_is_not_found(upstream: DicomWebConnector) -> None:
    with pytest.raises(NotFound):
        upstream.retrieve_metadata(ResourceRef(UNKNOWN_UID), GATEWAY_BASE)
    stream = upstream.retrieve_instances(ResourceRef(UNKNOWN_UID), "*")
    with pytest.raises(NotFound):
        next(stream)


def test_check(upstream: DicomWebConnector, build: Build) -> None:
    upstream.check()
    nothing_there = build(none_auth(f"http://127.0.0.1:{free_port()}/dicom-web"))
    with pytest.raises(ConnectorError) as raised:
        nothing_there.check()
    assert raised.value.connector == CONNECTOR_ID


# -- fault injection: local HTTP servers ------------------------------------------------------

CT_SMALL = sample_index()["CT_small.dcm"]
MR_SMALL = sample_index()["MR_small.dcm"]


def study_json(uid: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"0020000D": {"vr": "UI", "Value": [uid]}}
    data.update(extra)
    return data


def studies_json(count: int) -> list[dict[str, Any]]:
    return [study_json(f"1.2.826.0.1.3680043.8.498.{n + 1}") for n in range(count)]


@pytest.mark.parametrize(
    "total, page_size, limit, offset, cap, expected_asks, expected",
    [
        # the last page is short: no further request
        (7, 3, 100, 0, None, [(3, 0), (3, 3), (3, 6)], range(7)),
        # the last page is exactly full: one more request, answered 204 (empty)
        (6, 3, 100, 0, None, [(3, 0), (3, 3), (3, 6)], range(6)),
        # offset + limit reached: the last request asks only for what is missing
        (20, 3, 5, 2, None, [(3, 0), (3, 3), (1, 6)], range(2, 7)),
        # a page shorter than asked, with the upstream's "additional results" warning: go on
        (20, 5, 10, 0, 4, [(5, 0), (5, 4), (2, 8)], range(10)),
        (0, 3, 10, 0, None, [(3, 0)], range(0)),
    ],
)
def test_paging_requests(
    build: Build,
    total: int,
    page_size: int,
    limit: int,
    offset: int,
    cap: int | None,
    expected_asks: list[tuple[int, int]],
    expected: range,
) -> None:
    datasets = studies_json(total)
    paged = fakes.PagedSearch(datasets, cap=cap)
    with fakes.FakeServer({"/dicom-web/studies": paged}) as server:
        connector = build(none_auth(server.url + "/dicom-web"), page_size=page_size)
        pairs = [("limit", str(limit)), ("offset", str(offset))]
        result = connector.search(query(Level.STUDY, pairs))
    assert paged.asked == expected_asks
    assert uids(result.datasets, STUDY_UID) == [
        f"1.2.826.0.1.3680043.8.498.{n + 1}" for n in expected
    ]


def test_one_kept_alive_connection_serves_a_connector_s_requests(build: Build) -> None:
    # the connector's pooled session: five pages and two more searches, one after the other,
    # travel over a single TCP connection (one client port); another connector has its own
    paged = fakes.PagedSearch(studies_json(10))
    with fakes.FakeServer({"/dicom-web/studies": paged}) as server:
        first = build(none_auth(server.url + "/dicom-web"), page_size=2)
        for _ in range(3):
            assert len(first.search(query(Level.STUDY, [])).datasets) == 10
        asked_by_first = len(paged.asked)
        second = build(none_auth(server.url + "/dicom-web"), page_size=10)
        assert len(second.search(query(Level.STUDY, [])).datasets) == 10
        ports = [r.handler.client_address[1] for r in server.requests_to("/dicom-web/studies")]
    assert asked_by_first >= 15  # at least five pages per search
    assert len(set(ports[:asked_by_first])) == 1
    assert set(ports[asked_by_first:]).isdisjoint(ports[:asked_by_first])


def test_a_204_carrying_a_body_anyway_does_not_answer_the_next_request(build: Build) -> None:
    # RFC 9110 15.3.5: a 204 has no content, so the HTTP client reads none even when one is
    # declared; the bytes that follow (here, a whole response) must not be taken for the next
    # request's answer on a kept-alive connection: that connection is dropped
    stray = b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 2\r\n\r\n[]"
    calls: list[int] = []

    def answer(request: fakes.Request) -> None:
        calls.append(1)
        if len(calls) == 1:
            h = request.handler
            h.send_response(204)
            h.send_header("Content-Length", str(len(stray)))
            h.end_headers()
            h.wfile.flush()
            time.sleep(0.05)
            h.wfile.write(stray)
            h.wfile.flush()
        else:
            request.reply_json([{"0020000E": {"vr": "UI", "Value": [f"1.2.3.{len(calls)}"]}}])

    with fakes.FakeServer({"/dicom-web/studies": answer}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        series = [
            uids(connector.search(query(Level.SERIES, [], {STUDY_UID: "1.2.3"})).datasets,
                 SERIES_UID)
            for _ in range(3)
        ]
    assert series == [[], ["1.2.3.2"], ["1.2.3.3"]]


def test_an_unwanted_body_does_not_delay_the_answer(build: Build) -> None:
    # a 404 whose body trickles (or never comes): the not-found answer does not wait for it
    def slow_404(request: fakes.Request) -> None:
        h = request.handler
        h.send_response(404)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.flush()
        time.sleep(3)

    with fakes.FakeServer({"/dicom-web/studies": slow_404}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        started = time.monotonic()
        assert connector.search(query(Level.SERIES, [], {STUDY_UID: "1.2.3"})).datasets == []
        with pytest.raises(NotFound):
            connector.retrieve_metadata(ResourceRef("1.2.3"), "http://gw/dicomweb")
        assert time.monotonic() - started < 1.0


def test_a_short_page_without_the_warning_ends_the_list(build: Build) -> None:
    paged = fakes.PagedSearch(studies_json(20), cap=4, warn=False)
    with fakes.FakeServer({"/dicom-web/studies": paged}) as server:
        connector = build(none_auth(server.url + "/dicom-web"), page_size=5)
        result = connector.search(query(Level.STUDY, [("limit", "10")]))
    assert paged.asked == [(5, 0)]
    assert len(result.datasets) == 4


def test_upstream_that_ignores_offset_does_not_loop(build: Build) -> None:
    same_page = studies_json(2)
    with fakes.FakeServer({"/dicom-web/studies": fakes.json_answer(same_page)}) as server:
        connector = build(none_auth(server.url + "/dicom-web"), page_size=2)
        result = connector.search(query(Level.STUDY, [("limit", "10")]))
        assert len(server.requests) == 2
    assert uids(result.datasets, STUDY_UID) == uids(same_page, STUDY_UID)


def test_query_reaches_the_upstream_with_literal_wildcards(build: Build) -> None:
    with fakes.FakeServer({"/dicom-web/studies": fakes.json_answer([])}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        pairs = [("PatientName", "DOE*"), ("ModalitiesInStudy", "CT,MR"), ("PatientID", "")]
        connector.search(query(Level.STUDY, pairs + [("fuzzymatching", "true")]))
        (request,) = server.requests
    assert request.raw_query == (
        "ModalitiesInStudy=CT,MR&PatientName=DOE*&PatientID=&fuzzymatching=true&limit=1000&offset=0"
    )
    assert request.headers["accept"] == "application/dicom+json"


def test_answers_are_normalised(build: Build) -> None:
    answer = [
        {
            "0020000d": {"vr": "UI", "Value": ["1.2.3.4"]},
            "00081190": {"vr": "UR", "Value": ["http://upstream/studies/1.2.3.4"]},
            "00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
            "00080050": {"vr": "SH", "Value": []},
            "00100000": {"vr": "UL", "Value": [10]},
        }
    ]
    with fakes.FakeServer({"/dicom-web/studies": fakes.json_answer(answer)}) as server:
        result = build(none_auth(server.url + "/dicom-web")).search(query(Level.STUDY))
    assert result.datasets == [
        {"00080050": {"vr": "SH"}, "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]}}
    ]


@pytest.mark.parametrize(
    "handler",
    [fakes.status(204), fakes.json_answer([]), fakes.status(200, b"")],
    ids=["204", "200 []", "200 empty body"],
)
def test_no_answers(build: Build, handler: fakes.Handler) -> None:
    with fakes.FakeServer({"/dicom-web/studies": handler}) as server:
        result = build(none_auth(server.url + "/dicom-web")).search(query(Level.STUDY))
    assert result.datasets == []


@pytest.mark.parametrize(
    "handler, message",
    [
        (
            fakes.status(500, b'{"detail": "PatientName DOE"}'),
            "search failed: upstream answered HTTP 500",
        ),
        (fakes.status(503), "search failed: upstream answered HTTP 503"),
        (fakes.status(400), "search failed: upstream answered HTTP 400"),
        (fakes.status(404), "search failed: upstream answered HTTP 404"),
        (fakes.status(401), "upstream refused the gateway's credentials (HTTP 401)"),
        (fakes.status(403), "upstream refused the gateway's credentials (HTTP 403)"),
        (fakes.status(200, b"[{not json"), "search: upstream sent an invalid answer"),
        (
            fakes.json_answer({"not": "an array"}),
            "search: upstream answer is not a DICOM JSON array",
        ),
    ],
    ids=["500", "503", "400", "404 unscoped", "401", "403", "invalid JSON", "not an array"],
)
def test_upstream_errors(build: Build, handler: fakes.Handler, message: str) -> None:
    with fakes.FakeServer({"/dicom-web/studies": handler}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        with pytest.raises(ConnectorError) as raised:
            connector.search(query(Level.STUDY, [("PatientName", "DOE")]))
    error = raised.value
    assert type(error) is ConnectorError and error.status == 502
    assert (error.message, error.connector) == (message, CONNECTOR_ID)
    assert "DOE" not in error.message


def test_scoped_404_is_empty(build: Build) -> None:
    with fakes.FakeServer({"/dicom-web/studies": fakes.status(404)}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        result = connector.search(query(Level.SERIES, path={STUDY_UID: UNKNOWN_UID}))
        (request,) = server.requests
    assert result.datasets == []
    assert request.path == f"/dicom-web/studies/{UNKNOWN_UID}/series"


def test_connection_refused(build: Build) -> None:
    connector = build(none_auth(f"http://127.0.0.1:{free_port()}/dicom-web"))
    with pytest.raises(ConnectorError) as raised:
        connector.search(query(Level.STUDY))
    assert type(raised.value) is ConnectorError
    assert raised.value.message == "search failed: connection failed or lost"


def test_slow_upstream_times_out(build: Build) -> None:
    """The read time-out (0.5 s) fires long before the upstream answers (30 s)."""
    with fakes.FakeServer({"/dicom-web/studies": fakes.stalled(30)}) as server:
        timeouts = Timeouts(connect=1.0, read=0.5, request=10.0)
        connector = build(none_auth(server.url + "/dicom-web"), timeouts=timeouts)
        started = time.monotonic()
        with pytest.raises(ConnectorTimeout) as raised:
            connector.search(query(Level.STUDY))
        elapsed = time.monotonic() - started
    assert raised.value.status == 504 and raised.value.connector == CONNECTOR_ID
    assert elapsed < 5.0


def test_trickling_upstream_is_bounded_by_the_request_timeout(build: Build) -> None:
    """Every read succeeds within the read time-out; the whole search must still end at
    `timeouts.request`."""
    with fakes.FakeServer({"/dicom-web/studies": fakes.trickle(0.05)}) as server:
        timeouts = Timeouts(connect=1.0, read=2.0, request=1.0)
        connector = build(none_auth(server.url + "/dicom-web"), timeouts=timeouts)
        started = time.monotonic()
        with pytest.raises(ConnectorTimeout) as raised:
            connector.search(query(Level.STUDY))
        elapsed = time.monotonic() - started
    assert raised.value.message == "search took longer than 1 s"
    assert 1.0 <= elapsed < 5.0


# -- fault injection: OAuth2 client credentials (RFC 6749 4.4) --------------------------------


class OAuthSetup:
    def __init__(self, server: fakes.FakeServer, tokens: fakes.TokenEndpoint, studies: Any):
        self.server, self.tokens, self.studies = server, tokens, studies

    def client(self, token_url: str | None = None, secret: str = SECRET) -> OidcClient:
        url = token_url or self.server.url + "/oauth/token"
        return OidcClient("idp", "gateway-client", secret, url, scope="dicomweb.read")


@pytest.fixture
def oauth() -> Iterator[OAuthSetup]:
    tokens = fakes.TokenEndpoint("gateway-client", SECRET)
    studies_ = fakes.BearerStudies(tokens, [study_json(CT_SMALL["StudyInstanceUID"])])
    routes: dict[str, fakes.Handler] = {"/oauth/token": tokens, "/dicom-web/studies": studies_}
    with fakes.FakeServer(routes) as server:
        yield OAuthSetup(server, tokens, studies_)


def test_oauth_token_is_fetched_once_and_reused(oauth: OAuthSetup, build: Build) -> None:
    oauth.tokens.expires_in = 3600
    connector = build(oauth_auth(oauth.server.url + "/dicom-web"), oidc=(oauth.client(),))
    assert oauth.tokens.count == 0  # no network at construction
    for _ in range(3):
        result = connector.search(query(Level.STUDY))
        assert uids(result.datasets, STUDY_UID) == [CT_SMALL["StudyInstanceUID"]]
    assert oauth.tokens.count == 1
    assert oauth.studies.seen == ["token-1"] * 3
    assert oauth.tokens.forms[0] == {"grant_type": "client_credentials", "scope": "dicomweb.read"}


def test_oauth_token_is_renewed_before_it_expires(oauth: OAuthSetup, build: Build) -> None:
    """A token valid for less than TOKEN_LEEWAY seconds is renewed on the next call, while the
    old one is still valid (no request ever goes out with an expired token)."""
    oauth.tokens.expires_in = TOKEN_LEEWAY // 3
    connector = build(oauth_auth(oauth.server.url + "/dicom-web"), oidc=(oauth.client(),))
    connector.search(query(Level.STUDY))
    assert oauth.tokens.count == 1
    connector.search(query(Level.STUDY))
    assert oauth.tokens.count == 2
    assert oauth.studies.seen == ["token-1", "token-2"]
    second_issued = oauth.tokens.issued[1][1]
    assert second_issued < oauth.tokens.expiry["token-1"]


def test_oauth_token_refused_by_the_upstream_is_replaced_once(
    oauth: OAuthSetup, build: Build
) -> None:
    connector = build(oauth_auth(oauth.server.url + "/dicom-web"), oidc=(oauth.client(),))
    connector.search(query(Level.STUDY))
    oauth.studies.revoked.add("token-1")
    result = connector.search(query(Level.STUDY))
    assert uids(result.datasets, STUDY_UID) == [CT_SMALL["StudyInstanceUID"]]
    assert oauth.studies.seen == ["token-1", "token-1", "token-2"]
    oauth.studies.revoked.add("token-2")
    oauth.studies.revoked.add("token-3")
    with pytest.raises(ConnectorError) as raised:
        connector.search(query(Level.STUDY))
    assert raised.value.message == "upstream refused the gateway's credentials (HTTP 401)"


def test_token_endpoint_down(oauth: OAuthSetup, build: Build) -> None:
    down = f"http://127.0.0.1:{free_port()}/oauth/token"
    connector = build(oauth_auth(oauth.server.url + "/dicom-web"), oidc=(oauth.client(down),))
    with pytest.raises(ConnectorError) as raised:
        connector.search(query(Level.STUDY))
    error = raised.value
    assert error.message.startswith("could not obtain an OAuth2 token")
    assert error.status == 502 and error.connector == CONNECTOR_ID
    assert SECRET not in json.dumps(error.to_json())
    assert oauth.studies.seen == []  # the upstream was never asked without a token


def test_token_endpoint_refuses_the_client(oauth: OAuthSetup, build: Build) -> None:
    wrong = "not-the-secret-1e9"
    client = oauth.client(secret=wrong)
    connector = build(oauth_auth(oauth.server.url + "/dicom-web"), oidc=(client,))
    with pytest.raises(ConnectorError) as raised:
        connector.search(query(Level.STUDY))
    assert raised.value.message.startswith("could not obtain an OAuth2 token")
    assert wrong not in json.dumps(raised.value.to_json())
    assert oauth.tokens.count == 0


def test_wado_rs_block_has_its_own_session(build: Build) -> None:
    """wado-rs with other credentials: metadata goes there with them, searches do not."""
    metadata = [study_json("1.2.3", **{"00080018": {"vr": "UI", "Value": ["1.2.3.4.5"]}})]
    with (
        fakes.FakeServer({"/dicom-web/studies": fakes.json_answer([])}) as qido,
        fakes.FakeServer({"/rs/studies": fakes.json_answer(metadata)}) as wado,
    ):
        connector = build(
            none_auth(qido.url + "/dicom-web"),
            wado=basic_auth(wado.url + "/rs", "weasis", "pw"),
        )
        connector.search(query(Level.STUDY))
        connector.retrieve_metadata(ResourceRef("1.2.3"), GATEWAY_BASE)
        (search,) = qido.requests
        (meta,) = wado.requests
    assert "authorization" not in search.headers
    assert meta.path == "/rs/studies/1.2.3/metadata"
    assert meta.headers["authorization"] == "Basic d2Vhc2lzOnB3"  # base64("weasis:pw")


# -- fault injection: metadata and retrieval -----------------------------------------------------


def test_nested_bulk_data_uris_are_rewritten(build: Build) -> None:
    """PS3.18 F.2.6: every BulkDataURI, inside sequence items too, points at the gateway."""
    study, series, sop = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    upstream_uri = "http://upstream:8042/dicom-web/studies/1.2.3/series/1.2.3.4/instances/x"
    metadata = [
        {
            "0020000D": {"vr": "UI", "Value": [study]},
            "0020000E": {"vr": "UI", "Value": [series]},
            "00080018": {"vr": "UI", "Value": [sop]},
            "00081190": {"vr": "UR", "Value": [upstream_uri]},
            "7FE00010": {"vr": "OW", "BulkDataURI": upstream_uri + "/bulk/7fe00010"},
            "00880200": {
                "vr": "SQ",
                "Value": [{
                    "00081190": {"vr": "UR", "Value": [upstream_uri]},
                    "7FE00010": {"vr": "OB", "BulkDataURI": upstream_uri + "/icon"},
                }],
            },
        }
    ]
    route = {f"/dicom-web/studies/{study}": fakes.json_answer(metadata)}
    with fakes.FakeServer(route) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        (data,) = connector.retrieve_metadata(ResourceRef(study), GATEWAY_BASE)
    instance = f"{GATEWAY_BASE}/studies/{study}/series/{series}/instances/{sop}"
    assert data["7FE00010"]["BulkDataURI"] == f"{instance}/bulk/7FE00010"
    icon = data["00880200"]["Value"][0]["7FE00010"]
    assert icon["BulkDataURI"] == f"{instance}/bulk/00880200/0/7FE00010"
    assert "00081190" not in data  # the upstream's address, here and in the item
    assert list(data["00880200"]["Value"][0]) == ["7FE00010"]


def test_bulk_data_uris_take_the_uids_of_lowercase_keys(build: Build) -> None:
    """An upstream writing tags in lower case (PS3.18 F.2 wants upper case): the instance's
    own UIDs still name its bulk data, not the study asked for."""
    study, series, sop = "1.2.3", "1.2.3.4", "1.2.3.4.6"
    metadata = [{
        "0020000d": {"vr": "UI", "Value": [study]},
        "0020000e": {"vr": "UI", "Value": [series]},
        "00080018": {"vr": "UI", "Value": [sop]},
        "7fe00010": {"vr": "OW", "BulkDataURI": "http://upstream/x"},
    }]
    route = {f"/dicom-web/studies/{study}": fakes.json_answer(metadata)}
    with fakes.FakeServer(route) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        (data,) = connector.retrieve_metadata(ResourceRef(study), GATEWAY_BASE)
    assert data["7FE00010"]["BulkDataURI"] == (
        f"{GATEWAY_BASE}/studies/{study}/series/{series}/instances/{sop}/bulk/7FE00010"
    )
    assert data["0020000E"] == {"vr": "UI", "Value": [series]}


def test_an_attribute_given_twice_in_different_case_is_an_invalid_answer(build: Build) -> None:
    """`0020000D` and `0020000d` in one dataset: which one the gateway took would decide the
    UIDs of its BulkDataURIs and the UIDs it checks; neither is taken."""
    study = "1.2.3"
    metadata = [{
        "0020000D": {"vr": "UI", "Value": ["1.2.3/../../archives/other/dicomweb?x=#"]},
        "0020000d": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00080018": {"vr": "UI", "Value": ["1.2.3.4.5"]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://upstream/x"},
    }]
    route = {f"/dicom-web/studies/{study}": fakes.json_answer(metadata)}
    with fakes.FakeServer(route) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        with pytest.raises(ConnectorError) as info:
            connector.retrieve_metadata(ResourceRef(study), GATEWAY_BASE)
    assert info.value.message == "metadata: upstream sent an invalid answer"


@pytest.mark.parametrize("code", [404, 204])
def test_metadata_not_found(build: Build, code: int) -> None:
    with fakes.FakeServer({"/dicom-web/studies": fakes.status(code)}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        with pytest.raises(NotFound):
            connector.retrieve_metadata(ResourceRef(UNKNOWN_UID), GATEWAY_BASE)


def test_retrieval_passes_the_upstream_parts_through(build: Build) -> None:
    files = [CT_SMALL["path"].read_bytes(), MR_SMALL["path"].read_bytes()]
    with fakes.FakeServer({"/dicom-web/studies": fakes.multipart(files)}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        ref = ResourceRef("1.2.3", "1.2.3.4")
        parts = list(connector.retrieve_instances(ref, "1.2.840.10008.1.2.1"))
        (request,) = server.requests
    assert request.path == "/dicom-web/studies/1.2.3/series/1.2.3.4"
    assert request.headers["accept"] == (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    )
    assert [p.data for p in parts] == files
    assert [p.sop_instance_uid for p in parts] == [
        CT_SMALL["SOPInstanceUID"],
        MR_SMALL["SOPInstanceUID"],
    ]
    assert [p.transfer_syntax for p in parts] == [
        CT_SMALL["TransferSyntaxUID"],
        MR_SMALL["TransferSyntaxUID"],
    ]


def test_upstream_hanging_up_mid_multipart(build: Build) -> None:
    first = CT_SMALL["path"].read_bytes()
    with fakes.FakeServer({"/dicom-web/studies": fakes.multipart_hang_up(first)}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        stream = connector.retrieve_instances(ResourceRef("1.2.3"), "*")
        assert next(stream).data == first
        with pytest.raises(ConnectorError) as raised:
            next(stream)
    assert raised.value.connector == CONNECTOR_ID
    assert raised.value.message.startswith("retrieve")


@pytest.mark.parametrize(
    "code, error", [(404, NotFound), (406, NotAcceptable), (500, ConnectorError)]
)
def test_retrieval_errors_come_on_the_first_next(build: Build, code: int, error: type) -> None:
    with fakes.FakeServer({"/dicom-web/studies": fakes.status(code)}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        stream = connector.retrieve_instances(ResourceRef("1.2.3"), "1.2.840.10008.1.2.4.50")
        assert server.requests == []  # nothing is sent before the first next()
        with pytest.raises(error):
            next(stream)


def test_closing_the_stream_closes_the_upstream_response(build: Build) -> None:
    upstream = fakes.MultipartThenWait(CT_SMALL["path"].read_bytes())
    with fakes.FakeServer({"/dicom-web/studies": upstream}) as server:
        connector = build(none_auth(server.url + "/dicom-web"))
        stream = connector.retrieve_instances(ResourceRef("1.2.3"), "*")
        assert next(stream).sop_instance_uid == CT_SMALL["SOPInstanceUID"]
        stream.close()
        assert upstream.client_closed.wait(timeout=10)


def test_not_a_multipart_answer(build: Build) -> None:
    body = CT_SMALL["path"].read_bytes()
    with fakes.FakeServer(
        {"/dicom-web/studies": fakes.status(200, body, "application/dicom")}
    ) as s:
        connector = build(none_auth(s.url + "/dicom-web"))
        with pytest.raises(ConnectorError) as raised:
            next(connector.retrieve_instances(ResourceRef("1.2.3"), "*"))
    assert raised.value.message == "retrieve: upstream sent an invalid answer"
