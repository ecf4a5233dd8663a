"""Helpers for tests/test_robustness_retrieval.py: gateway apps over misbehaving backends, Part 10
objects damaged or crafted on purpose (truncated, lying attributes, a decompression bomb, a
bulk data element inside a sequence item), a stranger's C-STORE to the gateway's storage SCP,
an upstream that trickles after its first part, and a child process that measures the peak
memory of one request.

Everything listens on 127.0.0.1 only; every socket and every child process has a time-out.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from flask import Flask
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid
from pynetdicom import AE

from gateway import create_app
from gateway.config import load_settings_from_dict
from tests.connectors import http_fakes as fakes
from tests.connectors.http_fakes import multipart_body, multipart_type
from tests.robustness_servers import BOUNDARY, Upstream, Wado, complete, uids_json

ROOT = Path(__file__).resolve().parents[1]
#: Short time-outs so that failures come quickly (seconds).
FAST: dict[str, float] = {
    "connect": 1,
    "read": 2,
    "request": 4,
    "acse": 2,
    "dimse": 5,
    "network": 10,
}


# -- gateway apps ---------------------------------------------------------------------------


def gateway_app(connectors: dict[str, Any], lookahead: int | None = None, **gateway: Any) -> Flask:
    """An app over `connectors` (in declaration order, all default); `lookahead=0` makes
    retrievals stream at once."""
    app = create_app(
        load_settings_from_dict({"gateway": gateway, "connector": {"config": connectors}})
    )
    if lookahead is not None:
        app.extensions["gateway"].engine.lookahead = lookahead
    return app


def web_connector(url: str, timeouts: Mapping[str, float] | None = None) -> dict[str, Any]:
    return {
        "type": "DICOM_WEB",
        "dicom-web-connector": {
            "qido-rs": {"authentication": {"type": "NONE", "server": {"url": url}}}
        },
        "timeouts": dict(timeouts or FAST),
    }


def move_connector(port: int, timeouts: Mapping[str, float]) -> dict[str, Any]:
    """A DICOM connector to an in-process Move SCP (AE title FAKEMOVE) retrieving by C-MOVE."""
    dimse = {
        "calling-aet": "GATEWAY",
        "aet": "FAKEMOVE",
        "host": "127.0.0.1",
        "port": port,
        "retrieve-method": "C-MOVE",
    }
    return {"type": "DICOM", "dicom-connector": {"dimse": dimse}, "timeouts": dict(timeouts)}


# -- an upstream DICOMweb archive serving given bytes ---------------------------------------


@contextmanager
def archive_serving(uids: tuple[str, str, str], wado: Wado | bytes) -> Iterator[str]:
    """A DICOMweb upstream whose QIDO-RS finds `uids` (study, series, SOP instance) and whose
    WADO-RS sends `wado` (one Part 10 object as bytes, or a handler). Yields its base URL."""
    handler = complete([wado]) if isinstance(wado, bytes) else wado
    upstream = Upstream([uids_json(*uids)], handler)
    with fakes.FakeServer({"/studies": upstream, "/instances": upstream}) as server:
        yield server.url


def trickle_after_first(first: bytes, rest: bytes, step: int = 20, interval: float = 0.2) -> Wado:
    """The first part at once, then the second `step` bytes every `interval` seconds: every
    socket read succeeds within the read time-out, the second part takes minutes."""

    def handle(request: fakes.Request) -> None:
        request.start_stream(200, multipart_type(BOUNDARY))
        request.write(multipart_body([first], BOUNDARY, closed=False))
        tail = multipart_body([rest], BOUNDARY)
        for start in range(0, len(tail), step):
            if request.server.released.wait(interval):
                return
            try:
                request.write(tail[start : start + step])
            except OSError:
                return

    return handle


# -- Part 10 objects, crafted ----------------------------------------------------------------


def part10(ds: Dataset) -> bytes:
    """`ds` as Explicit VR Little Endian Part 10 bytes unless its meta names another syntax."""
    out = io.BytesIO()
    syntax = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    implicit = syntax == "1.2.840.10008.1.2"
    ds.save_as(out, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def explicit(path: Path, patient: str | None = None) -> Dataset:
    """A sample re-encoded as Explicit VR Little Endian (uncompressed samples only)."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if patient is not None:
        ds.PatientName = patient
    return ds


def with_string_value(data: bytes, tag: int, value: bytes) -> bytes:
    """Explicit VR Little Endian bytes with the value of the short-VR element `tag` replaced by
    `value` (padded to even length), whatever it says: an archive's invalid IS, for example."""
    key = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = data.index(key)
    old = struct.unpack("<H", data[at + 6 : at + 8])[0]
    padded = value + b" " * (len(value) % 2)
    return data[: at + 6] + struct.pack("<H", len(padded)) + padded + data[at + 8 + old :]


def with_icon(path: Path, icon: bytes) -> Dataset:
    """The sample with an Icon Image Sequence (0088,0200) whose one item holds 8-bit Pixel Data
    `icon` (a 2-row image): a bulk data element inside a sequence item (PS3.3 C.7.6.1)."""
    ds = explicit(path)
    item = Dataset()
    item.Rows, item.Columns = 2, len(icon) // 2
    item.SamplesPerPixel, item.PhotometricInterpretation = 1, "MONOCHROME2"
    item.BitsAllocated, item.BitsStored, item.HighBit, item.PixelRepresentation = 8, 8, 7, 0
    item.PixelData = icon
    ds.IconImageSequence = Sequence([item])
    return ds


def jpeg_ls_bomb(path: Path, frames: int, side: int) -> bytes:
    """A JPEG-LS Lossless object of `frames` frames of side x side 8-bit zeros: a few hundred
    bytes per frame, side * side bytes each once decoded (PS3.5 A.4.3)."""
    ds = pydicom.dcmread(path)
    fragment = bytes(np.asarray(_jpeg_ls_encode(np.zeros((side, side), np.uint8))))
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        ds.pop(keyword, None)
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([fragment] * frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return part10(ds)


def _jpeg_ls_encode(array: Any) -> Any:
    import jpeg_ls  # pyjpegls, the gateway's JPEG-LS codec

    return jpeg_ls.encode(array)


def clone(ds: Dataset, **changes: Any) -> Dataset:
    """A copy of `ds` with attributes changed (SOPInstanceUID also set in the meta)."""
    out = copy.deepcopy(ds)
    for keyword, value in changes.items():
        setattr(out, keyword, value)
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


def stranger_copy(ds: Dataset, patient: str, new_uid: bool) -> Dataset:
    """What an attacker pushes: `ds`'s copy with another patient, under a new SOP Instance UID
    or under `ds`'s own (to replace it)."""
    uid = generate_uid() if new_uid else str(ds.SOPInstanceUID)
    return clone(ds, PatientName=patient, SOPInstanceUID=uid)


# -- a stranger at the storage SCP ---------------------------------------------------------

ASSOCIATION_REFUSED = -1  # not a DIMSE status: the A-ASSOCIATE was rejected or aborted


def c_store(
    port: int,
    called: str,
    datasets: list[Dataset],
    originator: tuple[str, int] | None,
    calling: str = "STRANGER",
) -> list[int]:
    """C-STOREs of `datasets` to 127.0.0.1:`port` over one association, as `calling`, with the
    Move Originator AE title and Message ID `originator` (PS3.7 9.3.1.1) or none; the status
    of each (ASSOCIATION_REFUSED for each when the association is not accepted)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:  # refused before any C-STORE: the strictest answer
        return [ASSOCIATION_REFUSED] * len(datasets)
    try:
        aet, msg_id = originator or (None, None)
        return [
            int(assoc.send_c_store(ds, originator_aet=aet, originator_id=msg_id).Status)
            for ds in datasets
        ]
    finally:
        assoc.release()


# -- peak memory of one request, in a child process ------------------------------------------

MEMORY_PROBE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # never the machine's memory
from tests.harness import samples
from tests.robustness_retrieval_servers import archive_serving, gateway_app, jpeg_ls_bomb
from tests.robustness_retrieval_servers import web_connector
frames, side, path, accept = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ct = samples.sample_index()["CT_small.dcm"]
uids = (ct["StudyInstanceUID"], ct["SeriesInstanceUID"], ct["SOPInstanceUID"])
data = jpeg_ls_bomb(ct["path"], frames, side)
timeouts = {"connect": 2, "read": 30, "request": 60}
with archive_serving(uids, data) as url:
    app = gateway_app({"up": web_connector(url, timeouts)})
    client = app.test_client()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = client.get(path.format(*uids), headers={"Accept": accept}, buffered=False)
    size = nonzero = 0
    for chunk in response.response:
        size += len(chunk)
        if response.status_code == 200 and "octet-stream" in response.content_type:
            nonzero += len(chunk) - chunk.count(0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    app.extensions["gateway"].close()
print(json.dumps({"status": response.status_code, "object": len(data), "body": size,
                  "nonzero": nonzero, "growth": (after - before) * 1024}))
"""


def peak_memory(frames: int, side: int, path: str, accept: str) -> dict[str, Any]:
    """Runs MEMORY_PROBE: the gateway, over an upstream serving `jpeg_ls_bomb(frames, side)`
    as CT_small.dcm's UIDs, answers GET `path` (formatted with the study, series and SOP
    instance UIDs); returns the status, the object's and the body's sizes, the body's
    non-zero bytes (for octet-stream answers) and the growth of the peak RSS in bytes."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(frames), str(side), path, accept],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])
    return result
