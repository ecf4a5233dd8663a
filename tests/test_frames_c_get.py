"""Frames over C-GET: the instance's SOP class comes from the engine's look-up search (often a
metadata-cache hit) and goes straight into the C-GET, without the connector's own C-FIND.
An instance deleted after the cache listed it must still be a 404 (PS3.18 8.7.3), not a
failed C-GET: the C-GET brings nothing, then the C-FIND decides.

Against an in-process pynetdicom SCP that records each identifier, and a private real
Orthanc (its DIMSE port) whose instance is deleted through its REST API."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.connectors.scp_fakes import FakeScp
from tests.harness.orthanc import start_orthanc
from tests.robustness_servers import clone_series
from tests.test_robustness import CT, build, dimse_connector, error_of

OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
TIMEOUTS = {"connect": 3, "read": 10, "request": 20, "acse": 5, "dimse": 10, "network": 30}


def frame_path(study: str, series: str, sop: str) -> str:
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"


def finds(scp: FakeScp) -> int:
    """C-FIND identifiers the SCP received (a C-GET identifier asks for no SOPClassUID)."""
    return sum("SOPClassUID" in ident for ident in scp.identifiers)


@pytest.fixture
def scp() -> Iterator[FakeScp]:
    fake = FakeScp(datasets=clone_series(CT["path"], 3)).start()
    yield fake
    fake.stop()


def test_a_frame_needs_only_the_look_up_search_then_nothing_but_the_c_get(scp: FakeScp) -> None:
    app = build({"pacs": dimse_connector(scp.port, timeouts=TIMEOUTS)})
    client = app.test_client()
    try:
        for ds in scp.datasets:
            path = frame_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            before = finds(scp)
            response = client.get(path, headers={"Accept": OCTETS})
            assert response.status_code == 200
            assert finds(scp) - before == 1  # the look-up; the C-GET used the class it found
            assert ds.PixelData in response.get_data()  # CT_small: native, one frame
            response = client.get(path, headers={"Accept": OCTETS})
            assert response.status_code == 200
            assert finds(scp) - before == 1  # the look-up was a cache hit: no C-FIND at all
    finally:
        app.extensions["gateway"].close()


def test_an_instance_deleted_after_the_cache_listed_it_is_404(scp: FakeScp) -> None:
    app = build({"pacs": dimse_connector(scp.port, timeouts=TIMEOUTS)})
    client = app.test_client()
    ds = scp.datasets[0]
    path = frame_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    try:
        assert client.get(path, headers={"Accept": OCTETS}).status_code == 200
        scp.datasets.remove(ds)
        body = error_of(client.get(path, headers={"Accept": OCTETS}), 404)
        assert body["connector"] == "pacs"
    finally:
        app.extensions["gateway"].close()


def test_an_instance_deleted_from_orthanc_after_the_cache_listed_it_is_404(
    tmp_path: Path,
) -> None:
    ds = pydicom.dcmread(CT["path"])
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    source = tmp_path / "ct.dcm"
    ds.save_as(source, enforce_file_format=True)
    orthanc = start_orthanc(tmp_path / "orthanc")
    app = None
    try:
        [stored] = orthanc.upload([source])
        app = build({"pacs": dimse_connector(orthanc.dicom_port, aet=orthanc.aet,
                                             timeouts=TIMEOUTS)})
        client = app.test_client()
        path = frame_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        response = client.get(path, headers={"Accept": OCTETS})
        assert response.status_code == 200
        expected = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()
        assert expected in response.get_data()
        assert np.frombuffer(expected, "<i2").size == ds.Rows * ds.Columns
        assert orthanc.rest("DELETE", f"/instances/{stored['ID']}").status_code == 200
        body = error_of(client.get(path, headers={"Accept": OCTETS}), 404)
        assert body["connector"] == "pacs"
    finally:
        if app is not None:
            app.extensions["gateway"].close()
        orthanc.stop()


class StallingGet(FakeScp):
    """Accepts each C-GET, then sends nothing: no C-STORE, no response."""

    gets: int = 0

    def _on_get(self, event: Any) -> Iterator[Any]:
        self.gets += 1
        yield 1
        self.released.wait(30)


def test_a_stalled_c_get_is_a_504_after_one_dimse_time_out() -> None:
    """The C-GET by the searched SOP class times out: that is the answer (504 naming the
    connector), not a reason for the C-FIND and a second C-GET that would wait as long."""
    fake = StallingGet(datasets=clone_series(CT["path"], 1)).start()
    app = build({"pacs": dimse_connector(fake.port, timeouts=TIMEOUTS | {"dimse": 2})})
    ds = fake.datasets[0]
    try:
        started = time.monotonic()
        response = app.test_client().get(
            frame_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
            headers={"Accept": OCTETS},
        )
        elapsed = time.monotonic() - started
        assert error_of(response, 504)["connector"] == "pacs"
        assert fake.gets == 1
        assert elapsed < 2 * 2  # one DIMSE time-out, not two
    finally:
        app.extensions["gateway"].close()
        fake.stop()
