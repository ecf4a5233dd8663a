"""`connector.default` decides which connectors `/dicomweb` asks (Viewer-Hub's rule, in
../shared/seed/connectors.md): the listed ones, in that order, when every id exists; all of them,
in declaration order, when it is absent or names an unknown id. `/archives/<id>/dicomweb` asks
that one connector whatever the default.

The demo archive (SQLite) is one connector; a local HTTP server is a DICOM_WEB upstream that
holds the demo's CT study with another description, so that which connector answered, and
which one won the merge, shows in the answer."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from gateway import create_app
from gateway.config import load_settings_from_dict
from tests.connectors import http_fakes as fakes
from tests.harness import samples
from tests.views.conftest import demo_settings

CT = samples.sample_index()["CT_small.dcm"]
CT_DESCRIPTION = str(pydicom.dcmread(CT["path"], stop_before_pixels=True).StudyDescription)
STUDY_UID, DESCRIPTION = "0020000D", "00081030"
UPSTREAM_DESCRIPTION = "Upstream copy"


def _upstream_study() -> dict[str, Any]:
    return {
        STUDY_UID: {"vr": "UI", "Value": [CT["StudyInstanceUID"]]},
        DESCRIPTION: {"vr": "LO", "Value": [UPSTREAM_DESCRIPTION]},
    }


def _web(url: str) -> dict[str, Any]:
    return {
        "type": "DICOM_WEB",
        "timeouts": {"connect": 1, "read": 2, "request": 3},
        "dicom-web-connector": {
            "qido-rs": {"authentication": {"type": "NONE", "server": {"url": url}}}
        },
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def upstream() -> Iterator[fakes.FakeServer]:
    with fakes.FakeServer({"/studies": fakes.json_answer([_upstream_study()])}) as server:
        yield server


def _get(demo_dir: Path, extra: dict[str, Any], default: Any, path: str) -> Any:
    config = demo_settings(demo_dir)
    config["connector"]["config"].update(extra)
    if default is None:
        config["connector"].pop("default", None)
    else:
        config["connector"]["default"] = default
    app = create_app(load_settings_from_dict(config))
    try:
        return app.test_client().get(path, headers={"Accept": "application/dicom+json"})
    finally:
        app.extensions["gateway"].close()


def _description(answer: list[dict[str, Any]]) -> str:
    (study,) = [d for d in answer if d[STUDY_UID]["Value"] == [CT["StudyInstanceUID"]]]
    return str(study[DESCRIPTION]["Value"][0])


def test_the_default_keeps_a_dead_connector_out_of_dicomweb(demo_dir: Path) -> None:
    dead = {"dead": _web(f"http://127.0.0.1:{_free_port()}")}
    response = _get(demo_dir, dead, "demo", "/dicomweb/studies")
    assert response.status_code == 200
    assert "Warning" not in response.headers
    assert sorted(d[STUDY_UID]["Value"][0] for d in response.get_json()) == samples.studies()


@pytest.mark.parametrize("default", [None, "demo, nowhere"], ids=["absent", "unknown-id"])
def test_without_a_valid_default_every_connector_is_asked(demo_dir: Path, default: Any) -> None:
    dead = {"dead": _web(f"http://127.0.0.1:{_free_port()}")}
    response = _get(demo_dir, dead, default, "/dicomweb/studies")
    assert response.status_code == 200
    (warning,) = response.headers.getlist("Warning")
    assert warning.startswith('299 gateway "connector dead failed')
    assert sorted(d[STUDY_UID]["Value"][0] for d in response.get_json()) == samples.studies()


@pytest.mark.parametrize(
    "default, expected",
    [("demo, web", CT_DESCRIPTION), ("web, demo", UPSTREAM_DESCRIPTION)],
)
def test_the_first_default_connector_wins_a_conflict(
    demo_dir: Path, upstream: fakes.FakeServer, default: str, expected: str
) -> None:
    path = "/dicomweb/studies?includefield=StudyDescription"
    response = _get(demo_dir, {"web": _web(upstream.url)}, default, path)
    assert response.status_code == 200 and "Warning" not in response.headers
    assert _description(response.get_json()) == expected
    # the upstream's study is the demo's: merged by UID, not listed twice
    assert len(response.get_json()) == len(samples.studies())


def test_an_archive_route_asks_its_connector_whatever_the_default(
    demo_dir: Path, upstream: fakes.FakeServer
) -> None:
    path = "/archives/web/dicomweb/studies?includefield=StudyDescription"
    response = _get(demo_dir, {"web": _web(upstream.url)}, "demo", path)
    assert response.status_code == 200
    assert [d[STUDY_UID]["Value"][0] for d in response.get_json()] == [CT["StudyInstanceUID"]]
    assert _description(response.get_json()) == UPSTREAM_DESCRIPTION


def test_which_connectors_serve_dicomweb_is_logged(
    demo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = demo_settings(demo_dir)
    config["connector"]["config"]["web"] = _web("http://127.0.0.1:9")
    for default, message in [
        (None, "connector.default is not set: using all connectors: demo, web"),
        ("web", "connector.default: using web"),
    ]:
        if default is None:
            config["connector"].pop("default", None)
        else:
            config["connector"]["default"] = default
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gateway.config"):
            load_settings_from_dict(config)
        assert message in caplog.messages
