"""The DB connector retrieving through its `wado` section: the select runs on the PostgreSQL index
of a real Orthanc (`orthanc_pg`) WITHOUT a file-path column, so every instance is fetched from
an archive: Orthanc's WADO-URI (PS3.18 9.4) or its WADO-RS (PS3.18 10.4), or the Basic-auth
Orthanc (`orthanc_auth`, alice/secret) that holds the same sample files. Local HTTP servers
(`http_fakes`) inject what a real archive will not do on cue: an instance its index lists but
it does not hold, a stall, an OAuth2-protected endpoint.

Ground truth is the sample files read with pydicom (tests.harness.samples), PS3.18 9.4 for the
request's parameters, and the fake servers' own records.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest

from gateway.connectors.base import ResourceRef
from gateway.connectors.db import DbConnector
from gateway.errors import ConnectorError, ConnectorTimeout, NotAcceptable, NotFound
from gateway.settings import (
    Authentication,
    BasicAuth,
    ConnectorSettings,
    DbQuery,
    OAuth2Auth,
    OidcClient,
    Server,
    Timeouts,
    WadoProtocol,
)
from gateway.settings import DbConnector as DbSettings
from tests.connectors import http_fakes as fakes
from tests.harness.orthanc import Orthanc
from tests.harness.orthanc_sql import ORTHANC_PG_COLUMNS, ORTHANC_PG_SELECT
from tests.harness.samples import SampleInfo, instances_of, sample_index, studies

CONNECTOR_ID = "pacs-index"
BULK_BASE = "https://gw.example.org/dicomweb"
TIMEOUTS = Timeouts(connect=2.0, read=10.0, request=30.0)
SAMPLES = sample_index()
CT, SC = SAMPLES["CT_small.dcm"], SAMPLES["SC_rgb_rle.dcm"]
WRONG_PASSWORD = "not-secret-5150"
#: PS3.5 Table A-1 / A.4: Explicit VR Little Endian and JPEG Baseline (Process 1)
EXPLICIT_LE, JPEG_BASELINE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"

_FILE_PATH = ",\n  substr(f.uuid, 1, 2) || '/' || substr(f.uuid, 3, 2) || '/' || f.uuid AS file_path"
_FILES_JOIN = "LEFT JOIN attachedfiles f ON f.id = i.internalid AND f.filetype = 1\n"
#: The harness's select over Orthanc's index without its file-path column.
SELECT = ORTHANC_PG_SELECT.replace(_FILE_PATH, "").replace(_FILES_JOIN, "")
COLUMNS = {key.replace("-", "_"): column for key, column in ORTHANC_PG_COLUMNS.items()}

Build = Callable[..., DbConnector]


def test_the_select_has_no_file_path_column() -> None:
    assert "file_path" not in SELECT and "attachedfiles" not in SELECT
    assert SELECT.rstrip().endswith("WHERE i.resourcetype = 3")


def none_auth(url: str) -> Authentication:
    return Authentication("NONE", server=Server(url))


def basic_auth(url: str, login: str, password: str) -> Authentication:
    return Authentication("BASIC", basic=BasicAuth(login, password, Server(url)))


@pytest.fixture
def build(orthanc_pg: Orthanc) -> Iterator[Build]:
    """DB connectors whose select runs on orthanc_pg's index; closed at the end."""
    made: list[DbConnector] = []
    assert orthanc_pg.pg_url is not None

    def make(
        wado: Authentication,
        protocol: WadoProtocol = "WADO-URI",
        timeouts: Timeouts = TIMEOUTS,
        oidc: Callable[[str], OidcClient] | None = None,
    ) -> DbConnector:
        query = DbQuery(select=SELECT, **COLUMNS)
        db = DbSettings(uri=str(orthanc_pg.pg_url), query=query, wado=wado, wado_protocol=protocol)
        settings = ConnectorSettings(id=CONNECTOR_ID, type="DB", db=db, timeouts=timeouts)
        made.append(DbConnector(settings, oidc))
        return made[-1]

    yield make
    for connector in made:
        connector.close()


@pytest.fixture(params=["WADO-URI", "WADO-RS"])
def archive(request: pytest.FixtureRequest, orthanc_pg: Orthanc, build: Build) -> DbConnector:
    """A connector retrieving from orthanc_pg itself, through one protocol or the other."""
    url = orthanc_pg.wado_url if request.param == "WADO-URI" else orthanc_pg.dicomweb_url
    return build(none_auth(url), request.param)


def ref(info: SampleInfo) -> ResourceRef:
    return ResourceRef(info["StudyInstanceUID"], info["SeriesInstanceUID"], info["SOPInstanceUID"])


def by_sop() -> dict[str, SampleInfo]:
    return {info["SOPInstanceUID"]: info for info in SAMPLES.values()}


# ---- retrieval -------------------------------------------------------------------------------


def test_series_is_fetched_from_the_archive(archive: DbConnector) -> None:
    series = ResourceRef(SC["StudyInstanceUID"], SC["SeriesInstanceUID"])
    parts = list(archive.retrieve_instances(series, "*"))
    assert sorted(p.sop_instance_uid for p in parts) == instances_of(SC["SeriesInstanceUID"])
    assert len(parts) == 2  # SC_rgb_rle.dcm and SC_rgb_jpeg_dcmtk.dcm
    for part in parts:
        info = by_sop()[part.sop_instance_uid]
        assert part.data == info["path"].read_bytes()
        assert part.transfer_syntax == info["TransferSyntaxUID"]


def test_every_study_is_fetched_whole(archive: DbConnector) -> None:
    fetched: list[str] = []
    for study in studies():
        for part in archive.retrieve_instances(ResourceRef(study), "*"):
            info = by_sop()[part.sop_instance_uid]
            assert info["StudyInstanceUID"] == study
            assert part.data == info["path"].read_bytes()
            fetched.append(part.sop_instance_uid)
    assert sorted(fetched) == sorted(by_sop())


def test_the_stored_syntax_asked_by_name(archive: DbConnector) -> None:
    (part,) = archive.retrieve_instances(ref(CT), CT["TransferSyntaxUID"])
    assert (part.transfer_syntax, part.data) == (EXPLICIT_LE, CT["path"].read_bytes())


def test_wado_uri_sends_the_stored_file_whatever_syntax_is_asked(
    orthanc_pg: Orthanc, build: Build
) -> None:
    """Orthanc's WADO-URI ignores transferSyntax (no transcoding): the answer is not what was
    asked, so it is NotAcceptable, on the first next()."""
    stream = build(none_auth(orthanc_pg.wado_url)).retrieve_instances(ref(CT), JPEG_BASELINE)
    with pytest.raises(NotAcceptable) as error:
        next(stream)
    assert error.value.connector == CONNECTOR_ID


def test_unknown_study_is_not_found_before_any_request(build: Build) -> None:
    with fakes.FakeServer({"/": fakes.status(500)}) as server:
        connector = build(none_auth(server.url + "/wado"))
        with pytest.raises(NotFound):
            connector.retrieve_instances(ResourceRef("1.2.826.0.1.3680043.8.498.1"), "*")
        with pytest.raises(NotFound):
            connector.retrieve_metadata(ResourceRef("1.2.826.0.1.3680043.8.498.1"), BULK_BASE)
        assert server.requests == []


# ---- metadata --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["emri_small.dcm", "liver.dcm", "CT_small.dcm", "rtdose.dcm"])
def test_metadata_from_the_fetched_instance(
    archive: DbConnector, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a value left unread by defer_size was read")

    info = SAMPLES[name]
    monkeypatch.setattr(pydicom.filereader, "read_deferred_data_element", never)
    (meta,) = archive.retrieve_metadata(ref(info), BULK_BASE)
    monkeypatch.undo()
    ds = pydicom.dcmread(info["path"])
    # every attribute but group lengths, SpecificCharacterSet (JSON is UTF-8) and Data Set
    # Trailing Padding (FFFC,FFFC), which CT_small.dcm has
    not_carried = (0x00080005, 0xFFFCFFFC)
    expected_keys = {
        f"{int(e.tag):08X}" for e in ds if e.tag.element != 0 and e.tag not in not_carried
    }
    assert "FFFCFFFC" not in meta
    assert set(meta) == expected_keys
    instance = "studies/{}/series/{}/instances/{}".format(
        info["StudyInstanceUID"], info["SeriesInstanceUID"], info["SOPInstanceUID"]
    )
    assert meta["7FE00010"] == {
        "vr": ds["PixelData"].VR,
        "BulkDataURI": f"{BULK_BASE}/{instance}/bulk/7FE00010",
    }
    assert meta["00080018"]["Value"] == [info["SOPInstanceUID"]]
    assert meta["00280010"]["Value"] == [ds.Rows]
    frames = ds.get("NumberOfFrames")
    assert meta.get("00280008", {}).get("Value") == ([int(frames)] if frames else None)


def test_series_metadata_has_every_instance(archive: DbConnector) -> None:
    series = ResourceRef(SC["StudyInstanceUID"], SC["SeriesInstanceUID"])
    found = archive.retrieve_metadata(series, BULK_BASE)
    assert sorted(m["00080018"]["Value"][0] for m in found) == instances_of(
        SC["SeriesInstanceUID"]
    )


# ---- the archive and its index disagree; failures --------------------------------------------


@pytest.mark.parametrize("protocol", ["WADO-URI", "WADO-RS"])
def test_instance_the_index_lists_but_the_archive_lacks(build: Build, protocol: str) -> None:
    with fakes.FakeServer({"/": fakes.status(404, b'{"Message": "Unknown resource"}')}) as server:
        connector = build(none_auth(server.url + "/archive"), protocol)
        stream = connector.retrieve_instances(ref(CT), "*")
        with pytest.raises(ConnectorError) as error:
            next(stream)
        with pytest.raises(ConnectorError) as meta_error:
            connector.retrieve_metadata(ref(CT), BULK_BASE)
    assert (error.value.connector, error.value.status) == (CONNECTOR_ID, 502)
    assert error.value.message == (
        f"{protocol} retrieve: the archive has no instance that its index lists (HTTP 404)"
    )
    assert meta_error.value.message == error.value.message


def test_wado_uri_request_parameters(build: Build) -> None:
    """PS3.18 9.4.1: requestType, studyUID, seriesUID, objectUID, contentType; transferSyntax
    (9.4.1.2.3) only when a syntax is asked; `/` sent as it is."""
    body = CT["path"].read_bytes()
    answer = fakes.status(200, body, "application/dicom")
    with fakes.FakeServer({"/pacs/wado": answer}) as server:
        connector = build(none_auth(server.url + "/pacs/wado"))
        list(connector.retrieve_instances(ref(CT), "*"))
        list(connector.retrieve_instances(ref(CT), EXPLICIT_LE))
        first, second = server.requests
    expected = {
        "requestType": "WADO",
        "studyUID": CT["StudyInstanceUID"],
        "seriesUID": CT["SeriesInstanceUID"],
        "objectUID": CT["SOPInstanceUID"],
        "contentType": "application/dicom",
    }
    assert (first.path, first.query) == ("/pacs/wado", expected)
    assert "contentType=application/dicom" in first.raw_query
    assert second.query == {**expected, "transferSyntax": EXPLICIT_LE}
    assert first.headers["accept"] == "application/dicom"


def test_wado_rs_request(build: Build) -> None:
    """PS3.18 10.4.1: the instance resource, Accept multipart/related of application/dicom."""
    boundary = "wado-rs-boundary"
    body = fakes.multipart_body([CT["path"].read_bytes()], boundary)
    answer = fakes.status(200, body, fakes.multipart_type(boundary))
    with fakes.FakeServer({"/rs/studies": answer}) as server:
        connector = build(none_auth(server.url + "/rs"), "WADO-RS")
        (part,) = connector.retrieve_instances(ref(CT), "*")
        (request,) = server.requests
    uids = (CT["StudyInstanceUID"], CT["SeriesInstanceUID"], CT["SOPInstanceUID"])
    assert request.path == "/rs/studies/{}/series/{}/instances/{}".format(*uids)
    assert request.headers["accept"] == (
        'multipart/related; type="application/dicom"; transfer-syntax=*'
    )
    assert part.data == CT["path"].read_bytes()


def silent(request: fakes.Request) -> None:
    """Never answers; returns when the server stops."""
    request.server.released.wait(30)


def test_stalled_archive_times_out(build: Build) -> None:
    timeouts = Timeouts(connect=2.0, read=0.5, request=5.0)
    with fakes.FakeServer({"/wado": silent}) as server:
        connector = build(none_auth(server.url + "/wado"), timeouts=timeouts)
        with pytest.raises(ConnectorTimeout) as error:
            next(connector.retrieve_instances(ref(CT), "*"))
        with pytest.raises(ConnectorTimeout):
            connector.retrieve_metadata(ref(CT), BULK_BASE)
    assert (error.value.connector, error.value.status) == (CONNECTOR_ID, 504)


def test_not_dicom_is_an_invalid_answer(build: Build) -> None:
    with fakes.FakeServer({"/wado": fakes.status(200, b"\xff\xd8 a JPEG", "image/jpeg")}) as s:
        connector = build(none_auth(s.url + "/wado"))
        with pytest.raises(ConnectorError) as error:
            next(connector.retrieve_instances(ref(CT), "*"))
    assert error.value.message == "WADO-URI retrieve: upstream sent an invalid answer"


def test_another_instance_than_asked_is_refused(build: Build) -> None:
    other = SAMPLES["MR_small.dcm"]["path"].read_bytes()
    with fakes.FakeServer({"/wado": fakes.status(200, other, "application/dicom")}) as server:
        connector = build(none_auth(server.url + "/wado"))
        with pytest.raises(ConnectorError) as error:
            next(connector.retrieve_instances(ref(CT), "*"))
    assert error.value.message == "WADO-URI retrieve: the archive sent another instance"


# ---- authentication --------------------------------------------------------------------------


def test_basic_credentials_of_the_wado_section(orthanc_auth: Orthanc, build: Build) -> None:
    """The select runs on orthanc_pg's index; the instances come from orthanc_auth."""
    connector = build(basic_auth(orthanc_auth.wado_url, "alice", "secret"))
    (part,) = connector.retrieve_instances(ref(CT), "*")
    assert part.data == CT["path"].read_bytes()
    (meta,) = connector.retrieve_metadata(ref(CT), BULK_BASE)
    assert meta["00100020"]["Value"] == [CT["PatientID"]]


def test_wrong_password_never_shows(
    orthanc_auth: Orthanc, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = build(basic_auth(orthanc_auth.wado_url, "alice", WRONG_PASSWORD))
    with pytest.raises(ConnectorError) as error:
        next(connector.retrieve_instances(ref(CT), "*"))
    with pytest.raises(ConnectorError) as meta_error:
        connector.retrieve_metadata(ref(CT), BULK_BASE)
    assert (error.value.connector, error.value.status) == (CONNECTOR_ID, 502)
    assert error.value.message == "upstream refused the gateway's credentials (HTTP 401)"
    assert meta_error.value.message == error.value.message
    encoded = base64.b64encode(f"alice:{WRONG_PASSWORD}".encode()).decode()
    for text in (json.dumps(error.value.to_json()), str(error.value), caplog.text):
        assert WRONG_PASSWORD not in text and encoded not in text


class BearerFile:
    """A WADO-URI endpoint serving `body` only to a valid bearer token of `tokens`."""

    def __init__(self, tokens: fakes.TokenEndpoint, body: bytes) -> None:
        self.tokens, self.body = tokens, body

    def __call__(self, request: fakes.Request) -> None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.tokens.valid(token):
            request.reply(200, self.body, "application/dicom")
        else:
            request.reply(401)


def test_oauth2_client_credentials(build: Build) -> None:
    tokens = fakes.TokenEndpoint("gateway", "client-secret-77")
    routes: dict[str, fakes.Handler] = {
        "/token": tokens,
        "/wado": BearerFile(tokens, CT["path"].read_bytes()),
    }
    with fakes.FakeServer(routes) as server:
        client = OidcClient("idp", "gateway", "client-secret-77", server.url + "/token")
        auth = Authentication("OAUTH2", oauth2=OAuth2Auth("idp", Server(server.url + "/wado")))
        connector = build(auth, oidc={"idp": client}.__getitem__)
        assert tokens.count == 0  # nothing is sent at construction
        parts = [next(connector.retrieve_instances(ref(CT), "*")) for _ in range(2)]
    assert [p.data for p in parts] == [CT["path"].read_bytes()] * 2
    assert tokens.count == 1


def test_oauth2_without_client_registrations(build: Build) -> None:
    auth = Authentication("OAUTH2", oauth2=OAuth2Auth("idp", Server("http://127.0.0.1:9")))
    connector = build(auth)
    with pytest.raises(ConnectorError) as error:
        next(connector.retrieve_instances(ref(CT), "*"))
    assert error.value.message == (
        "the wado section uses OAUTH2, but no client registrations were given"
    )
