"""Trying to break the Weasis routes (issue 4) and the WADO-RS read-ahead thread, as an attacker,
an unlucky network or a careless integrator would.

The rules checked (README "Weasis" and "Errors", the team rules): a backend failure is a
`Message` in the manifest, never a 500 nor a hang; every manifest is valid against
gateway/weasis_manifest.xsd whatever the archive holds; nothing an archive holds is lost; a launch
link cannot smuggle a Weasis command; stored manifests are private, short-lived and cannot be
guessed; no credential reaches a manifest unless direct mode is on. Backends: the SQLite demo
archive (edited to hold hostile values), in-process QIDO-RS upstreams (`QidoArchive` below,
`tests.connectors.http_fakes.FakeServer`) and TCP black holes (`tests.robustness_servers`).

Known bugs are marked `xfail(strict=True)`: each such test asserts the correct behaviour.
How Weasis reads a `weasis://` link (the Weasis launcher, `ConfigData.extractArgFromUri`): the
whole link is URL-decoded once, then split at every `$`; each piece is one command."""

from __future__ import annotations

import base64
import contextlib
import gc
import io
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import struct
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import requests
import xmlschema
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app, weasis_store
from gateway.config import load_settings_from_dict
from tests.connectors import http_fakes as fakes
from tests.harness import samples
from tests.robustness_servers import (
    BOUNDARY,
    Blackhole,
    Endless,
    ServedApp,
    Upstream,
    clone_series,
    established_to,
    hang_up_after,
    iter_records_text,
    uids_json,
    wait_for,
)
from tests.test_robustness import (
    AS_STORED,
    FAST,
    build,
    demo_config,
    dimse_connector,
    web_connector,
)

ROOT = Path(__file__).resolve().parents[1]
XSD = xmlschema.XMLSchema(str(ROOT / "gateway" / "weasis_manifest.xsd"))
NS = "{http://www.weasis.org/xsd/2.5}"
INDEX = samples.sample_index()
CT = INDEX["CT_small.dcm"]
#: PS3.6: CT Image Storage, the SOP class of CT_small.dcm
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NO_CACHE = {"ttl": 0}  # the archive edits below must show at once


# -- helpers ------------------------------------------------------------------------------


def valid_manifest(response: Any) -> ET.Element:
    """The manifest of a 200 answer, checked against the project's XSD."""
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return valid_xml(response.data)


def valid_xml(data: bytes) -> ET.Element:
    XSD.validate(data)
    return ET.fromstring(data)


def arcs(root: ET.Element) -> dict[str | None, ET.Element]:
    return {a.get("arcId"): a for a in root.findall(f"{NS}arcQuery")}


def messages(arc: ET.Element) -> list[tuple[str | None, str | None]]:
    return [(m.get("severity"), m.get("description")) for m in arc.findall(f"{NS}Message")]


def weasis_commands(link: str) -> list[str]:
    """The commands Weasis runs for a `weasis://?...` link: URL-decoded, split at each `$`."""
    assert link.startswith("weasis://?"), link
    return [c.strip() for c in unquote(link[len("weasis://?") :]).split("$")[1:]]


def read_ahead_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "wado-read-ahead" and t.is_alive()}


def demo_app(directory: Path, **gateway: Any) -> Flask:
    config = demo_config(directory)
    config["gateway"].update({"cache": NO_CACHE, "weasis": {"store-dir": str(directory / "m")}})
    config["gateway"].update(gateway)
    return create_app(load_settings_from_dict(config))


def launch_url(client: FlaskClient, query: str, **environ: str) -> str:
    """The manifest URL that a /weasis/launch link names."""
    response = client.get(f"/weasis/launch?{query}", environ_base=environ)
    assert response.status_code == 302, response.get_data(as_text=True)
    first = weasis_commands(response.headers["Location"])[0]
    return first.split('"')[1]


# -- a QIDO-RS archive over instance rows --------------------------------------------------

_KEYS = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
    "PatientID": "00100020",
    "AccessionNumber": "00080050",
}
_LEVEL_UID = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}
_VR = {
    "00100010": "PN", "00100020": "LO", "00100021": "LO", "0020000D": "UI", "0020000E": "UI",
    "00080018": "UI", "00080016": "UI", "00080060": "CS", "00200011": "IS", "00200013": "IS",
}  # fmt: skip


def instance_row(study: str, series: str, sop: str, **values: Any) -> dict[str, Any]:
    """One instance in DICOM JSON (PS3.18 F.2) with patient P1 and a CT Image."""
    attrs = {
        "0020000D": study, "0020000E": series, "00080018": sop,
        "00080016": CT_IMAGE_STORAGE, "00100020": "P1", "00100010": {"Alphabetic": "DOE^JANE"},
        "00080060": "CT", "00200011": 1, "00200013": 1, **values,
    }  # fmt: skip
    return {tag: {"vr": _VR[tag], "Value": [v]} for tag, v in attrs.items()}


def _first(data: dict[str, Any], tag: str) -> Any:
    return (data.get(tag, {}).get("Value") or [None])[0]


class QidoArchive:
    """A QIDO-RS upstream (PS3.18 10.6) over instance rows: matches the UIDs in the path and the
    UID, PatientID and AccessionNumber keys exactly, ignores every other key (as many archives
    ignore IssuerOfPatientID), pages with limit/offset, answers each level with the rows of its
    first instance. `delay`: seconds before each answer. Counts the requests."""

    def __init__(self, rows: list[dict[str, Any]], delay: float = 0.0) -> None:
        self.rows = rows
        self.delay = delay
        self.count = 0

    def __call__(self, request: fakes.Request) -> None:
        self.count += 1
        if self.delay and request.server.released.wait(self.delay):
            return
        segments = request.path.strip("/").split("/")
        wanted = {_LEVEL_UID[n]: {v} for n, v in zip(segments[:-1:2], segments[1:-1:2])}
        for name, tag in _KEYS.items():
            if request.query.get(name):
                wanted[tag] = set(request.query[name].split(","))
        found: dict[str, dict[str, Any]] = {}
        for data in self.rows:
            if all(_first(data, tag) in values for tag, values in wanted.items()):
                found.setdefault(_first(data, _LEVEL_UID[segments[-1]]), data)
        offset = int(request.query.get("offset", "0"))
        page = list(found.values())[offset : offset + int(request.query.get("limit", "100000"))]
        if page:
            request.reply(200, json.dumps(page).encode(), fakes.DICOM_JSON)
        else:
            request.reply(204)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    app = demo_app(tmp_path_factory.mktemp("demo"))
    yield app.test_client()
    app.extensions["gateway"].close()


@pytest.fixture
def edited(tmp_path: Path) -> Iterator[tuple[FlaskClient, sqlite3.Connection]]:
    """A demo archive of this test's own, and its index to edit."""
    app = demo_app(tmp_path)
    with sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None) as db:
        yield app.test_client(), db
    app.extensions["gateway"].close()


# =========================================================================================
# 1. Launch links: no command can be smuggled into the weasis:// link


@pytest.mark.parametrize("name", ["pro", "cdb"])
def test_a_dollar_in_a_launch_value_cannot_start_a_weasis_command(
    demo: FlaskClient, name: str
) -> None:
    value = "x $dicom:get -w http://evil.example/m.xml $y"
    response = demo.get(f"/weasis/launch?studyUID={CT['StudyInstanceUID']}&{name}={quote(value)}")
    if response.status_code == 302:  # then Weasis must see exactly the two commands written
        commands = weasis_commands(response.headers["Location"])
        assert [c.split(" ")[0] for c in commands] == ["dicom:get", "weasis:config"], commands
    else:
        assert response.status_code == 400 and response.get_json()["parameter"] == name


@pytest.mark.parametrize(
    ("name", "value"),
    [("pro", 'a" $dicom:close'), ("arg", "a\\"), ("cdb", "http://x/\nb"), ("pro", "a\rb"),
     ("arg", "a\x00b"), ("cdb", "a\x85b")],
)  # fmt: skip
def test_quotes_trailing_backslashes_and_control_characters_are_400(
    demo: FlaskClient, name: str, value: str
) -> None:
    response = demo.get(f"/weasis/launch?studyUID={CT['StudyInstanceUID']}&{name}={quote(value)}")
    assert response.status_code == 400 and response.get_json()["parameter"] == name


def test_a_launch_link_names_the_manifest_by_id_only(demo: FlaskClient) -> None:
    """No patient data in the link a browser hands to the operating system, and the pass-through
    values land inside their quotes as given."""
    response = demo.get(f"/weasis/launch?patientID={CT['PatientID']}&pro=a%20b&cdb=")
    commands = weasis_commands(response.headers["Location"])
    assert CT["PatientID"] not in response.headers["Location"]
    assert re.fullmatch(
        r'dicom:get -w "http://localhost/weasis/manifest/[0-9a-f]{32}"', commands[0]
    )
    assert commands[1:] == ['weasis:config cdb="" pro="a b"']


@pytest.mark.parametrize("prefix", ["/a%22b", "/a$dicom:get -w http://evil.example/m.xml $"])
def test_a_hostile_forwarded_prefix_is_refused_not_a_500_nor_a_command(
    tmp_path: Path, prefix: str
) -> None:
    app = demo_app(tmp_path, **{"trust-proxy": True})
    response = app.test_client().get(
        f"/weasis/launch?studyUID={CT['StudyInstanceUID']}", headers={"X-Forwarded-Prefix": prefix}
    )
    app.extensions["gateway"].close()
    if response.status_code == 302:
        assert len(weasis_commands(response.headers["Location"])) == 1
    else:
        assert response.status_code == 400, response.get_data(as_text=True)


# =========================================================================================
# 2. Stored manifests: random, private, short-lived


def test_stored_manifests_expire_and_stay_with_their_launcher(tmp_path: Path) -> None:
    app = demo_app(tmp_path, weasis={"store-dir": str(tmp_path / "m"), "manifest-lifetime": 2})
    client = app.test_client()
    urls = [launch_url(client, f"studyUID={CT['StudyInstanceUID']}", REMOTE_USER="alice")
            for _ in range(20)]  # fmt: skip
    ids = [u.rsplit("/", 1)[1] for u in urls]
    assert len(set(ids)) == 20 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    ident, path = ids[-1], urls[-1][len("http://localhost") :]
    root = valid_manifest(client.get(path, environ_base={"REMOTE_USER": "alice"}))
    assert [s.get("StudyInstanceUID") for s in root.iter(f"{NS}Study")] == [CT["StudyInstanceUID"]]
    for user in ({"REMOTE_USER": "bob"}, {"REMOTE_USER": "alice "}, {}):
        assert client.get(path, environ_base=user).status_code == 404
    alice = {"REMOTE_USER": "alice"}
    for guess in (ident.upper(), ident + "%0A", f"..%2F{ident}", ident + ".json", ident[:31]):
        assert client.get(f"/weasis/manifest/{guess}", environ_base=alice).status_code == 404
    time.sleep(2.2)
    assert client.get(path, environ_base={"REMOTE_USER": "alice"}).status_code == 404
    assert not (tmp_path / "m" / f"{ident}.json").exists()  # removed when seen expired
    app.extensions["gateway"].close()


def test_launches_survive_the_store_directory_being_cleaned_away(tmp_path: Path) -> None:
    app = demo_app(tmp_path)
    client = app.test_client()
    try:
        launch_url(client, f"studyUID={CT['StudyInstanceUID']}")
        shutil.rmtree(tmp_path / "m")
        url = launch_url(client, f"studyUID={CT['StudyInstanceUID']}")
        valid_manifest(client.get(url[len("http://localhost") :]))
    finally:
        app.extensions["gateway"].close()


def test_fifty_concurrent_manifests_each_list_their_own_study(tmp_path: Path) -> None:
    names = sorted(INDEX)
    with ServedApp(demo_app(tmp_path)) as gw:

        def one(i: int) -> tuple[str, list[str | None]]:
            study = INDEX[names[i % len(names)]]["StudyInstanceUID"]
            answer = requests.get(f"{gw.url}/weasis/manifest?studyUID={study}", timeout=30)
            root = valid_xml(answer.content)
            return study, [s.get("StudyInstanceUID") for s in root.iter(f"{NS}Study")]

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one, range(100)))
    assert all(found == [asked] for asked, found in results)


def test_concurrent_launches_never_lose_their_stored_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_utime = os.utime

    def slow_utime(*args: Any, **kwargs: Any) -> None:  # metadata on a network file system
        time.sleep(0.2)
        real_utime(*args, **kwargs)

    monkeypatch.setattr(weasis_store.os, "utime", slow_utime)
    app = demo_app(tmp_path)
    client = app.test_client()

    def one(i: int) -> tuple[int, int]:
        time.sleep(0.05 * i)  # each launch sweeps while the one before sets its expiry
        link = client.get(f"/weasis/launch?studyUID={CT['StudyInstanceUID']}")
        if link.status_code != 302:
            return link.status_code, 0
        url = weasis_commands(link.headers["Location"])[0].split('"')[1]
        return 302, client.get(url[len("http://localhost") :]).status_code

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(8)))
    app.extensions["gateway"].close()
    assert outcomes == [(302, 200)] * 8


# =========================================================================================
# 3. Hostile values in the archive: the manifest stays valid and complete


HOSTILE = [  # (table, column, SQL value, element, attribute, what the manifest must say)
    ("patient", "pat_name", "'A' || char(1) || 'B' || char(27) || char(0) || 'C'", "Patient",
     "PatientName", "ABC"),
    ("patient", "pat_name", "printf('%.300000c', 'N')", "Patient", "PatientName", "N" * 300000),
    ("patient", "pat_sex", "'X'", "Patient", "PatientSex", None),
    ("patient", "pat_sex", "'male'", "Patient", "PatientSex", None),
    ("patient", "pat_id", "NULL", "Patient", "PatientID", ""),
    ("patient", "pat_birthdate", "'1970-13-45'", "Patient", "PatientBirthDate", None),
    ("series", "series_no", "'abc'", "Series", "SeriesNumber", None),
    ("series", "series_no", "99999999999999999999", "Series", "SeriesNumber", None),
    ("series", "modality", "'C' || char(0) || 'T'", "Series", "Modality", "CT"),
    ("instance", "inst_no", "'x'", "Instance", "InstanceNumber", None),
    ("study", "study_date", "'garbage'", "Study", "StudyDate", None),
    ("study", "study_date", "'2004-01-19'", "Study", "StudyDate", "20040119"),
    ("study", "study_time", "'07:27:30'", "Study", "StudyTime", "072730"),
    ("study", "study_desc", "'<&\"' || char(65534) || '>'", "Study", "StudyDescription", '<&">'),
]  # fmt: skip


@pytest.mark.parametrize(("table", "column", "sql", "element", "attribute", "expected"), HOSTILE)
def test_hostile_archive_values_leave_a_valid_complete_manifest(
    edited: tuple[FlaskClient, sqlite3.Connection],
    table: str, column: str, sql: str, element: str, attribute: str, expected: str | None,
) -> None:  # fmt: skip
    client, db = edited
    db.execute(f"UPDATE {table} SET {column} = {sql}")
    for accept in ("application/xml", "application/json"):
        response = client.get(
            f"/weasis/manifest?studyUID={CT['StudyInstanceUID']}", headers={"Accept": accept}
        )
        assert response.status_code == 200
    root = valid_manifest(client.get(f"/weasis/manifest?studyUID={CT['StudyInstanceUID']}"))
    assert [i.get("SOPInstanceUID") for i in root.iter(f"{NS}Instance")] == [CT["SOPInstanceUID"]]
    node = next(root.iter(f"{NS}{element}"))
    assert node.get(attribute) == expected


@pytest.mark.parametrize(
    "sql", ["'not a uid'", f"'{CT_IMAGE_STORAGE}\\1.2.3'", "printf('1.%.70c', '2')"]
)
def test_a_malformed_sop_class_uid_leaves_the_manifest_valid(
    edited: tuple[FlaskClient, sqlite3.Connection], sql: str
) -> None:
    client, db = edited
    db.execute(f"UPDATE instance SET sop_cuid = {sql}")
    root = valid_manifest(client.get(f"/weasis/manifest?studyUID={CT['StudyInstanceUID']}"))
    assert [i.get("SOPInstanceUID") for i in root.iter(f"{NS}Instance")] == [CT["SOPInstanceUID"]]


def _add_instances(db: sqlite3.Connection, count: int) -> list[str]:
    (series,) = db.execute(
        "SELECT pk FROM series WHERE series_iuid = ?", (CT["SeriesInstanceUID"],)
    ).fetchone()
    uids = [f"1.2.826.0.1.3680043.99.{n}" for n in range(count)]
    db.executemany(
        "INSERT INTO instance (series_fk, sop_iuid, sop_cuid, inst_no, file_path) "
        "VALUES (?, ?, ?, ?, 'none')",
        [(series, uid, CT_IMAGE_STORAGE, n + 2) for n, uid in enumerate(uids)],
    )
    return uids


def test_a_study_of_1501_instances_is_listed_whole(
    edited: tuple[FlaskClient, sqlite3.Connection],
) -> None:
    client, db = edited
    added = _add_instances(db, 1500)
    for query in (f"studyUID={CT['StudyInstanceUID']}", f"seriesUID={CT['SeriesInstanceUID']}"):
        root = valid_manifest(client.get(f"/weasis/manifest?{query}"))
        listed = [i.get("SOPInstanceUID") for i in root.iter(f"{NS}Instance")]
        assert listed == [CT["SOPInstanceUID"], *added]  # by InstanceNumber: 1, then 2..1501


def test_one_malformed_uid_does_not_hide_the_rest_of_a_large_study(
    edited: tuple[FlaskClient, sqlite3.Connection],
) -> None:
    client, db = edited
    added = _add_instances(db, 1500)
    db.execute("UPDATE instance SET sop_iuid = sop_iuid || 'x' WHERE sop_iuid = ?", (added[0],))
    root = valid_manifest(client.get(f"/weasis/manifest?studyUID={CT['StudyInstanceUID']}"))
    listed = [i.get("SOPInstanceUID") for i in root.iter(f"{NS}Instance")]
    assert listed == [CT["SOPInstanceUID"], *added[1:]]


@pytest.mark.parametrize("value", ["%25", "_", "1CT_", "1CT%25", "%27%20OR%201=1--"])
@pytest.mark.parametrize("name", ["patientID", "accessionNumber"])
def test_like_and_sql_metacharacters_match_nothing(
    demo: FlaskClient, name: str, value: str
) -> None:
    root = valid_manifest(demo.get(f"/weasis/manifest?{name}={value}"))
    assert list(root.iter(f"{NS}Patient")) == []
    assert [messages(a) for a in root.findall(f"{NS}arcQuery")] == [
        [("INFO", "No study matches the request in the archives asked.")]
    ]


def test_a_patient_id_with_an_issuer_never_lists_another_issuers_patient() -> None:
    rows = [
        instance_row("1.2.1", "1.2.1.1", "1.2.1.1.1", **{"00100021": "HOSP_A"}),
        instance_row("1.2.2", "1.2.2.1", "1.2.2.1.1", **{"00100021": "HOSP_B"}),
    ]
    with fakes.FakeServer({"/": QidoArchive(rows)}) as up:
        app = build({"up": web_connector(up.url, FAST)}, cache=NO_CACHE)
        root = valid_manifest(app.test_client().get("/weasis/manifest?patientID=P1%5E%5E%5EHOSP_A"))
        app.extensions["gateway"].close()
    patients = [(p.get("PatientID"), p.get("IssuerOfPatientID")) for p in root.iter(f"{NS}Patient")]
    assert patients == [("P1", "HOSP_A")]


def test_a_study_in_two_connectors_is_listed_under_each() -> None:
    rows = [instance_row("1.2.1", "1.2.1.1", "1.2.1.1.1")]
    with fakes.FakeServer({"/": QidoArchive(rows)}) as up:
        app = build(
            {"one": web_connector(up.url, FAST), "two": web_connector(up.url, FAST)},
            cache=NO_CACHE,
        )
        root = valid_manifest(app.test_client().get("/weasis/manifest?studyUID=1.2.1"))
        app.extensions["gateway"].close()
    found = {
        cid: [
            (i.get("SOPInstanceUID"), i.get("DirectDownloadFile")) for i in a.iter(f"{NS}Instance")
        ]
        for cid, a in arcs(root).items()
    }
    one = [("1.2.1.1.1", "/studies/1.2.1/series/1.2.1.1/instances/1.2.1.1.1")]
    assert found == {"one": one, "two": one}
    assert [a.get("baseUrl") for a in arcs(root).values()] == [
        "http://localhost/archives/one/dicomweb",
        "http://localhost/archives/two/dicomweb",
    ]


# =========================================================================================
# 4. Archives that fail, hang or crawl: a Message, in time


@pytest.mark.parametrize("kind", ["DICOM_WEB", "DICOM"])
def test_a_hanging_archive_is_an_error_message_within_its_timeout(
    tmp_path: Path, kind: str
) -> None:
    with Blackhole() as hole:
        config = demo_config(tmp_path)
        config["gateway"]["weasis"] = {"store-dir": str(tmp_path / "m")}
        config["connector"]["config"]["dead"] = (
            web_connector(f"http://127.0.0.1:{hole.port}", FAST)
            if kind == "DICOM_WEB"
            else dimse_connector(hole.port, timeouts=FAST)
        )
        app = create_app(load_settings_from_dict(config))
        started = time.monotonic()
        response = app.test_client().get(
            f"/weasis/manifest?studyUID={CT['StudyInstanceUID']}&archive=dead,demo"
        )
        elapsed = time.monotonic() - started
        app.extensions["gateway"].close()
    root = valid_manifest(response)
    assert elapsed < FAST["request"] + 2 and hole.accepted >= 1
    dead, demo_arc = arcs(root)["dead"], arcs(root)["demo"]
    assert [s for s, _ in messages(dead)] == ["ERROR"] and dead.find(f"{NS}Patient") is None
    assert [i.get("SOPInstanceUID") for i in demo_arc.iter(f"{NS}Instance")] == [
        CT["SOPInstanceUID"]
    ]


def test_a_crawling_archive_cannot_hold_the_manifest_past_its_request_timeout() -> None:
    studies = [f"1.2.{n}" for n in range(6)]
    rows = [instance_row(s, s + ".1", s + ".1.1") for s in studies]
    timeouts = FAST | {"request": 1}
    with fakes.FakeServer({"/": QidoArchive(rows, delay=0.3)}) as up:
        app = build({"up": web_connector(up.url, timeouts)}, cache=NO_CACHE)
        started = time.monotonic()
        response = app.test_client().get(f"/weasis/manifest?studyUID={','.join(studies)}")
        elapsed = time.monotonic() - started
        app.extensions["gateway"].close()
    valid_manifest(response)
    assert elapsed < timeouts["request"] + 1.5  # the engine's own slack is 1 s


def test_a_failing_token_endpoint_in_direct_mode_is_an_error_message() -> None:
    rows = [instance_row("1.2.1", "1.2.1.1", "1.2.1.1.1")]
    with (
        fakes.FakeServer({"/": QidoArchive(rows)}) as up,
        fakes.FakeServer({"/token": fakes.status(500)}) as idp,
    ):
        direct = web_connector(up.url, FAST)
        direct["dicom-web-connector"]["wado-rs"] = {"authentication": {
            "type": "OAUTH2", "oauth2": {"oidc-id": "idp", "server": {"url": up.url}}}}  # fmt: skip
        direct["weasis"] = {"direct": True}
        app = create_app(load_settings_from_dict({
            "oidc": {"idp": {"client-id": "gw", "client-secret": "idp-s3cret",
                             "token-url": f"{idp.url}/token"}},
            "gateway": {"cache": NO_CACHE},
            "connector": {"config": {"direct": direct, "plain": web_connector(up.url, FAST)}},
        }))  # fmt: skip
        response = app.test_client().get("/weasis/manifest?studyUID=1.2.1")
        app.extensions["gateway"].close()
    root = valid_manifest(response)
    assert [s for s, _ in messages(arcs(root)["direct"])] == ["ERROR"]
    assert [i.get("SOPInstanceUID") for i in arcs(root)["plain"].iter(f"{NS}Instance")] == [
        "1.2.1.1.1"
    ]


ARCHIVE_LOGIN, ARCHIVE_PASSWORD, PATIENT = "gw-user", "Archive-Pa55-9f3e", "ZEBRA77"


@pytest.mark.parametrize("answer", ["studies", "401", "500"])
def test_without_direct_mode_no_archive_credential_or_address_reaches_weasis(
    answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [instance_row("1.2.1", "1.2.1.1", "1.2.1.1.1", **{"00100020": PATIENT})]
    handlers = {
        "studies": QidoArchive(rows),
        "401": fakes.status(401),
        "500": fakes.status(500, json.dumps({"error": ARCHIVE_PASSWORD}).encode()),
    }
    caplog.set_level(logging.DEBUG)
    with fakes.FakeServer({"/": handlers[answer]}) as up:
        basic = {"type": "BASIC", "basic": {
            "login": ARCHIVE_LOGIN, "password": ARCHIVE_PASSWORD, "server": {"url": up.url}}}  # fmt: skip
        web = web_connector(up.url, FAST, auth=basic)
        web["dicom-web-connector"]["wado-rs"] = {"authentication": basic}
        app = build({"web": web}, cache=NO_CACHE)
        client = app.test_client()
        path = launch_url(client, f"patientID={PATIENT}")[len("http://localhost") :]
        bodies = [client.get(path, headers={"Accept": a}).data
                  for a in ("application/xml", "application/json")]  # fmt: skip
        app.extensions["gateway"].close()
        pair = base64.b64encode(f"{ARCHIVE_LOGIN}:{ARCHIVE_PASSWORD}".encode()).decode()
        secrets = (ARCHIVE_PASSWORD, pair, f":{up.port}")
    arc = arcs(valid_xml(bodies[0]))["web"]
    assert arc.get("baseUrl") == "http://localhost/archives/web/dicomweb"
    assert arc.get("webLogin") is None and arc.findall(f"{NS}httpTag") == []
    assert [s for s, _ in messages(arc)] == ([] if answer == "studies" else ["ERROR"])
    assert len(arc.findall(f"{NS}Patient")) == (1 if answer == "studies" else 0)
    for body in bodies:
        assert not any(s.encode() in body for s in secrets)
    for level, text in iter_records_text(caplog.records):  # the port is no secret there
        assert ARCHIVE_PASSWORD not in text and pair not in text, text[:300]
        assert level < logging.INFO or PATIENT not in text, text[:300]


# =========================================================================================
# 5. The WADO-RS read-ahead thread (gateway/prefetch.py) when clients go away


def _one_mib_object() -> bytes:
    dataset = clone_series(CT["path"], 1, pixel_bytes=1 << 20)[0]
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _pause_then_burst(part: bytes, pause: float, count: int) -> Any:
    """WADO-RS: one part and the delimiter after it at once, then (after `pause` seconds, past
    the 2 s look-ahead) `count` more parts in one go: the response starts before the
    read-ahead queue fills."""
    delimiter = b"--" + BOUNDARY.encode()

    def handle(request: fakes.Request) -> None:
        request.start_stream(200, fakes.multipart_type(BOUNDARY))
        request.write(fakes.multipart_body([part], BOUNDARY, closed=False) + delimiter)
        if not request.server.released.wait(pause):
            rest = fakes.multipart_body([part] * count, BOUNDARY)[len(delimiter) :]
            with contextlib.suppress(OSError):
                request.write(rest)

    return handle


def _reset_before_reading(port: int, path: str) -> None:
    """Sends the request, then (the gateway being inside its look-ahead) closes with an RST
    before a byte of the answer is read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {AS_STORED}\r\n\r\n"
    sock.sendall(head.encode("ascii"))
    time.sleep(0.5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_hanging_up_mid_stream_leave_no_thread_connection_or_memory() -> None:
    endless = Endless(_one_mib_object(), cap=40)  # a study past the 8 MiB look-ahead
    upstream = Upstream(
        [uids_json(CT["StudyInstanceUID"], CT["SeriesInstanceUID"], CT["SOPInstanceUID"])], endless
    )
    path = f"/dicomweb/studies/{CT['StudyInstanceUID']}"
    before = read_ahead_threads()
    with (
        fakes.FakeServer({"/studies": upstream}) as up,
        ServedApp(build({"up": web_connector(up.url, FAST | {"request": 4})})) as gw,
    ):
        hang_up_after(gw.port, path, AS_STORED, 256 * 1024)  # imports, pools: not counted
        assert wait_for(lambda: not (read_ahead_threads() - before), timeout=5)
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            for _ in range(12):  # each reads 8 MiB ahead: 96 MiB if any of it were kept
                hang_up_after(gw.port, path, AS_STORED, 256 * 1024)
            assert wait_for(
                lambda: not (read_ahead_threads() - before) and established_to(up.port) == 0,
                timeout=FAST["read"] + 3,
            )
            gc.collect()
            kept = (tracemalloc.get_traced_memory()[0] - start) / 2**20
        finally:
            tracemalloc.stop()
    assert kept < 8, f"{kept:.1f} MiB kept after 12 aborted retrievals"


def test_a_retrieval_whose_body_is_never_read_releases_its_read_ahead() -> None:
    part = CT["path"].read_bytes()
    upstream = Upstream(
        [uids_json(CT["StudyInstanceUID"], CT["SeriesInstanceUID"], CT["SOPInstanceUID"])],
        _pause_then_burst(part, pause=2.5, count=8),
    )
    path = f"/dicomweb/studies/{CT['StudyInstanceUID']}"
    before = read_ahead_threads()
    with (
        fakes.FakeServer({"/studies": upstream}) as up,
        ServedApp(build({"up": web_connector(up.url, {"read": 5, "request": 10})})) as gw,
    ):
        with ThreadPoolExecutor(2) as pool:
            head = pool.submit(
                requests.head, gw.url + path, headers={"Accept": AS_STORED}, timeout=10
            )
            pool.submit(_reset_before_reading, gw.port, path).result()
            assert head.result().status_code == 200
        time.sleep(0.8)  # the burst has come: each read-ahead queue is full
        left = wait_for(lambda: not (read_ahead_threads() - before), timeout=2)
    assert left, f"{len(read_ahead_threads() - before)} read-ahead threads still running"
