"""The archives' own DIMSE speed, without the gateway: the big series fetched with one C-GET by
a bare pynetdicom SCU that keeps nothing (the same DIMSE stack the gateway uses, with no
Part 10 re-framing, HTTP or multipart), and by dcmtk's `getscu` (C++) discarding what it
receives (--ignore). These rows bound what any gateway speaking DIMSE to that archive can reach."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt

from .archive import SeriesInfo

CTImageStorage = "1.2.840.10008.5.1.4.1.1.2"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"
CALLING_AET = "BENCHGW"  # an AE title both archives accept (the gateway's C-GET connectors')
TIMEOUT = 300.0


def pynetdicom_cget(host: str, port: int, aet: str, series: SeriesInfo) -> tuple[int, float]:
    """(bytes received, seconds) for one C-GET of `series` at SERIES level."""
    received = [0]

    def on_store(event: Any) -> int:
        received[0] += len(event.request.DataSet.getvalue())
        return 0x0000

    def on_open(event: Any) -> None:  # as the gateway does: small DIMSE messages never wait
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title=CALLING_AET)
    ae.maximum_pdu_size = 0
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = series.study
    identifier.SeriesInstanceUID = series.series
    started = time.monotonic()
    assoc = ae.associate(
        host,
        port,
        ae_title=aet,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)],
    )
    if not assoc.is_established:
        raise RuntimeError(f"{aet} refused the association")
    try:
        for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
            if status is None or status.Status not in (0x0000, 0xFF00, 0xFF01):
                code = None if status is None else f"0x{status.Status:04X}"
                raise RuntimeError(f"C-GET from {aet} ended with status {code}")
    finally:
        assoc.release()
    return received[0], time.monotonic() - started


def getscu(host: str, port: int, aet: str, series: SeriesInfo) -> tuple[int, float]:
    """(bytes, seconds) for dcmtk's getscu receiving `series` and discarding it (--ignore); the
    bytes are the series' when getscu logged one store request per instance, else 0."""
    binary = shutil.which("getscu")
    if binary is None:
        raise RuntimeError("getscu (dcmtk) is not installed")
    command = [
        binary, "-v", "-aet", CALLING_AET, "-aec", aet, "-S", "--ignore",
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={series.study}",
        "-k", f"SeriesInstanceUID={series.series}", "-td", str(int(TIMEOUT)), "-pdu", "131072",
        host, str(port),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.monotonic() - started
    stored = (done.stdout + done.stderr).count("Received Store Request")
    return (series.bytes if stored == len(series.instances) else 0), seconds
