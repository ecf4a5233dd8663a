"""The real archives of the bench, started with the project's test harness: Orthanc (DICOMweb
and DIMSE in one process) and dcmqrscp, both knowing the gateway's C-MOVE destination."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.harness.dcmqrscp import DCMQRSCP_BIN, Dcmqrscp, start_dcmqrscp
from tests.harness.orthanc import Orthanc, start_orthanc
from tests.harness.procs import HarnessError

LOAD_THREADS = 4
LOAD_TIMEOUT = 60.0  # seconds for one POST /instances
#: DIMSE associations Orthanc serves at once (its default is 4): the gateway's two DIMSE
#: connectors to Orthanc, 2 associations each (`served.ORTHANC_ASSOCIATIONS`), in 2 workers
ORTHANC_DICOM_THREADS = 8


@dataclass
class Backends:
    orthanc: Orthanc
    dcmqrscp: Dcmqrscp
    move_aet: str
    move_port: int


def start(stack: contextlib.ExitStack, workdir: Path, move_aet: str, move_port: int) -> Backends:
    """Start Orthanc and dcmqrscp on free loopback ports; both are stopped (by PID) when `stack`
    closes. Both know `move_aet` at 127.0.0.1:`move_port` as a C-MOVE destination."""
    orthanc = start_orthanc(
        workdir / "orthanc",
        modalities={move_aet: (move_aet, "127.0.0.1", move_port)},
        dicom_threads=ORTHANC_DICOM_THREADS,
    )
    stack.callback(orthanc.stop)
    dcmqrscp = start_dcmqrscp(
        workdir / "dcmqrscp",
        move_destinations={move_aet: ("127.0.0.1", move_port)},
        max_associations=32,
    )
    stack.callback(dcmqrscp.stop)
    return Backends(orthanc, dcmqrscp, move_aet, move_port)


def load_orthanc(orthanc: Orthanc, paths: Sequence[Path], threads: int = LOAD_THREADS) -> float:
    """POST every file to Orthanc's /instances from `threads` threads; seconds it took."""
    started = time.monotonic()

    def post(path: Path) -> None:
        answer = orthanc.rest("POST", "/instances", data=path.read_bytes(), timeout=LOAD_TIMEOUT)
        if answer.status_code != 200:
            raise HarnessError(f"Orthanc refused {path.name}: HTTP {answer.status_code}")

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(post, paths):
            pass
    return time.monotonic() - started


def load_dcmqrscp(dcmqrscp: Dcmqrscp, paths: Sequence[Path]) -> float:
    """C-STORE the files into dcmqrscp with dcmtk's storescu (the harness); seconds it took."""
    started = time.monotonic()
    dcmqrscp.load(paths)
    return time.monotonic() - started


def versions(orthanc: Orthanc) -> dict[str, str]:
    """Orthanc, its DICOMweb plugin and dcmtk versions, as the programs report them."""
    found = {"Orthanc": "?", "Orthanc DICOMweb plugin": "?", "dcmtk": "?"}
    with contextlib.suppress(Exception):
        found["Orthanc"] = str(orthanc.rest("GET", "/system", timeout=10).json()["Version"])
    with contextlib.suppress(Exception):
        plugin = orthanc.rest("GET", "/plugins/dicom-web", timeout=10).json()
        found["Orthanc DICOMweb plugin"] = str(plugin["Version"])
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [DCMQRSCP_BIN, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        found["dcmtk"] = out.split()[2].lstrip("v")
    return found
