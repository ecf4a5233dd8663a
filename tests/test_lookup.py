"""The look-up search before a retrieval (which connector holds the resource): made when
several connectors may hold it (the merged `/dicomweb` over several archives, a DIMSE
instance retrieval that uses the SOP class it returns), skipped when only one connector may:
that connector answers "not found" itself, and the look-up would cost one more round trip to
it before every metadata, instance or frame request. Upstreams are local HTTP servers that
record every request they get."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest

from tests.connectors import http_fakes as fakes
from tests.robustness_servers import Upstream, complete, is_qido, uids_json
from tests.test_robustness import AS_STORED, FAST, RTDOSE, build, error_of, web_connector

STUDY, SERIES, SOP = (RTDOSE[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
SERIES_PATH = f"/studies/{STUDY}/series/{SERIES}"
TIMEOUTS = FAST | {"read": 5, "request": 10}


def rtdose_upstream() -> Upstream:
    """Holds rtdose.dcm: QIDO finds it, WADO-RS sends its metadata or the object."""
    stored = RTDOSE["path"].read_bytes()
    metadata = [uids_json(STUDY, SERIES, SOP)]
    objects = complete([stored])

    def wado(request: fakes.Request) -> None:
        if request.path.endswith("/metadata"):
            request.reply(200, json.dumps(metadata).encode(), fakes.DICOM_JSON)
        else:
            objects(request)

    return Upstream([uids_json(STUDY, SERIES, SOP)], wado)


def nothing_upstream() -> Upstream:
    def wado(request: fakes.Request) -> None:
        request.reply(404, b"{}")

    return Upstream([], wado)


def paths(server: fakes.FakeServer) -> list[str]:
    return [r.path for r in server.requests]


@pytest.fixture
def holder() -> Iterator[fakes.FakeServer]:
    with fakes.FakeServer({"/studies": rtdose_upstream()}) as server:
        yield server


@pytest.mark.parametrize("base", ["/dicomweb", "/archives/up/dicomweb"])
def test_one_connector_is_asked_for_metadata_without_a_look_up(
    holder: fakes.FakeServer, base: str
) -> None:
    app = build({"up": web_connector(holder.url, TIMEOUTS)})
    response = app.test_client().get(f"{base}{SERIES_PATH}/metadata")
    app.extensions["gateway"].close()
    assert response.status_code == 200
    assert [d["00080018"]["Value"] for d in response.get_json()] == [[SOP]]
    assert paths(holder) == [f"{SERIES_PATH}/metadata"]  # no QIDO-RS request before it


@pytest.mark.parametrize(
    "path", [SERIES_PATH, f"{SERIES_PATH}/instances/{SOP}", f"{SERIES_PATH}/instances/{SOP}/frames/1"]
)
def test_one_connector_is_asked_for_objects_without_a_look_up(
    holder: fakes.FakeServer, path: str
) -> None:
    app = build({"up": web_connector(holder.url, TIMEOUTS)})
    accept = AS_STORED if "frames" not in path else "multipart/related; type=application/octet-stream"
    response = app.test_client().get(f"/dicomweb{path}", headers={"Accept": accept})
    body = response.get_data()
    app.extensions["gateway"].close()
    assert response.status_code == 200
    if "frames" not in path:
        assert RTDOSE["path"].read_bytes() in body
    else:  # frame 1 of rtdose.dcm, native: its first Rows x Columns x 4 bytes (32-bit dose)
        ds = pydicom.dcmread(RTDOSE["path"])
        assert ds.PixelData[: ds.Rows * ds.Columns * 4] in body
    assert [p for p in paths(holder) if is_qido(p)] == []
    assert len(holder.requests) == 1


def test_a_resource_one_connector_does_not_hold_is_404_from_its_own_answer() -> None:
    with fakes.FakeServer({"/studies": nothing_upstream()}) as empty:
        app = build({"up": web_connector(empty.url, TIMEOUTS)})
        client = app.test_client()
        metadata = client.get(f"/dicomweb{SERIES_PATH}/metadata")
        objects = client.get(f"/dicomweb{SERIES_PATH}", headers={"Accept": AS_STORED})
        app.extensions["gateway"].close()
    assert error_of(metadata, 404)["connector"] == "up"
    assert error_of(objects, 404)["connector"] == "up"
    assert paths(empty) == [f"{SERIES_PATH}/metadata", SERIES_PATH]


def test_several_connectors_are_asked_by_a_look_up_first(holder: fakes.FakeServer) -> None:
    """Merged over two archives, the first that holds the series answers; the other is
    only searched, never asked for metadata it does not have."""
    with fakes.FakeServer({"/studies": nothing_upstream()}) as empty:
        app = build({
            "empty": web_connector(empty.url, TIMEOUTS),
            "up": web_connector(holder.url, TIMEOUTS),
        })
        response = app.test_client().get(f"/dicomweb{SERIES_PATH}/metadata")
        app.extensions["gateway"].close()
        assert response.status_code == 200
        assert [is_qido(p) for p in paths(empty)] == [True]
    assert [is_qido(p) for p in paths(holder)] == [True, False]
    assert paths(holder)[1] == f"{SERIES_PATH}/metadata"


def test_a_connector_with_the_criterion_deactivated_is_not_asked(
    holder: fakes.FakeServer,
) -> None:
    """search-criteria.deactivated: SERIE_INSTANCE_UID: a series is never looked for there."""
    block: dict[str, Any] = web_connector(holder.url, TIMEOUTS)
    block["search-criteria"] = {"deactivated": ["SERIE_INSTANCE_UID"]}
    app = build({"up": block})
    response = app.test_client().get(f"/dicomweb{SERIES_PATH}/metadata")
    app.extensions["gateway"].close()
    assert response.status_code == 404
    assert holder.requests == []


def test_an_upstream_answering_204_for_a_missing_resource_is_a_404_everywhere() -> None:
    """204 No Content from WADO-RS means nothing there, for objects as for metadata."""

    def wado(request: fakes.Request) -> None:
        request.reply(204)

    with fakes.FakeServer({"/studies": Upstream([], wado)}) as empty:
        app = build({"up": web_connector(empty.url, TIMEOUTS)})
        client = app.test_client()
        answers = [
            client.get(f"/dicomweb{SERIES_PATH}/metadata"),
            client.get(f"/dicomweb{SERIES_PATH}", headers={"Accept": AS_STORED}),
            client.get(f"/dicomweb{SERIES_PATH}/instances/{SOP}/frames/1"),
        ]
        app.extensions["gateway"].close()
    assert [error_of(a, 404)["connector"] for a in answers] == ["up"] * 3


WRONG_STUDY = "1.2.3.4.5"


def lenient_upstream() -> Upstream:
    """Its QIDO-RS matches by every UID, its WADO-RS by the last UID of the path alone: it
    would send rtdose.dcm's series and metadata under any study."""
    holder = rtdose_upstream()
    return Upstream([], holder.wado)


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        (f"/studies/{WRONG_STUDY}/series/{SERIES}/metadata", None),
        (f"/studies/{WRONG_STUDY}/series/{SERIES}", AS_STORED),
        (f"/studies/{WRONG_STUDY}/series/{SERIES}/instances/{SOP}", AS_STORED),
        (f"/studies/{WRONG_STUDY}/series/{SERIES}/instances/{SOP}/frames/1", None),
        (f"/studies/{STUDY}/series/{WRONG_STUDY}/instances/{SOP}/frames/1", None),
    ],
)
def test_a_resource_under_the_wrong_parent_is_404_even_from_a_lenient_upstream(
    path: str, accept: str | None
) -> None:
    """PS3.18's resources are hierarchical: a series asked under a study it is not in does
    not exist, whatever an upstream that ignores the study in the path sends."""
    with fakes.FakeServer({"/studies": lenient_upstream()}) as lenient:
        app = build({"up": web_connector(lenient.url, TIMEOUTS)})
        response = app.test_client().get(
            f"/dicomweb{path}", headers={"Accept": accept} if accept else {}
        )
        app.extensions["gateway"].close()
    assert error_of(response, 404)["connector"] == "up"
