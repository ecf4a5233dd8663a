"""Orthanc (Debian package `orthanc`) with its DICOMweb plugin, as a real upstream server.

The configuration is our own (shared/reference/testbed.md §1), never Debian's sample: its
DicomWeb "Host" key would make Orthanc emit RetrieveURLs without the port. Orthanc 1.10 has no
bind-address option: it listens on 0.0.0.0, with RemoteAccessAllowed false so that HTTP refuses
non-loopback clients. The tests only send traffic to 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .ports import free_port
from .procs import (
    HarnessError,
    log_tail,
    require_executable,
    require_file,
    spawn,
    stop_process,
    wait_until,
)

ORTHANC_BIN = "/usr/sbin/Orthanc"
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"
GDCM_PLUGIN = PLUGIN_DIR / "libOrthancGdcm.so"
POSTGRESQL_INDEX_PLUGIN = PLUGIN_DIR / "libOrthancPostgreSQLIndex.so"

# JPEG 2000 transfer syntaxes (PS3.5 Table A-4): the only ones the GDCM plugin may decode.
# Unrestricted, GDCM 3.0.21 crashes Orthanc when transcoding JPEG baseline (testbed.md §0 #5).
JPEG2000_UIDS: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
)

REQUEST_TIMEOUT = 30.0


@dataclass
class Orthanc:
    """A running Orthanc. `auth` is the Basic-auth (user, password) or None."""

    http_port: int
    dicom_port: int
    aet: str
    auth: tuple[str, str] | None
    workdir: Path
    storage_dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    pg_database: str | None = None
    pg_url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + "/dicom-web"

    @property
    def wado_url(self) -> str:
        return self.url + "/wado"

    @property
    def log_path(self) -> Path:
        return self.workdir / "log" / "Orthanc.log"

    def rest(self, method: str, path: str, **kw: Any) -> requests.Response:
        """A request to Orthanc's REST API (`path` starts with "/"), with auth and a timeout."""
        kw.setdefault("timeout", REQUEST_TIMEOUT)
        if self.auth is not None:
            kw.setdefault("auth", self.auth)
        return requests.request(method, self.url + path, **kw)

    def upload(self, paths: Iterable[Path]) -> list[dict[str, Any]]:
        """POST each file to /instances; returns Orthanc's answers (ID, ParentStudy, ...).
        Raises HarnessError if Orthanc does not answer 200 for one of them."""
        answers = []
        for path in paths:
            response = self.rest("POST", "/instances", data=Path(path).read_bytes())
            if response.status_code != 200:
                raise HarnessError(
                    f"Orthanc refused {Path(path).name}: HTTP {response.status_code}\n"
                    + log_tail(self.log_path)
                )
            answers.append(response.json())
        return answers

    def stop(self) -> int | None:
        """SIGTERM by PID, wait, SIGKILL if needed. Returns the exit code."""
        return stop_process(self.process)


def orthanc_config(
    workdir: Path,
    *,
    http_port: int,
    dicom_port: int,
    aet: str = "ORTHANC",
    auth: tuple[str, str] | None = None,
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    postgres: str | None = None,
    gdcm: bool = True,
    dicom_threads: int = 4,
) -> dict[str, Any]:
    """Orthanc's JSON configuration (testbed.md §1). `modalities` maps a name to
    (AET, host, port): the C-MOVE destinations Orthanc knows. `postgres` is a database name on
    127.0.0.1:5432 to hold the index (files stay in StorageDirectory). `dicom_threads`: the
    DIMSE associations Orthanc serves at once (its default, 4)."""
    storage = str(workdir / "db")
    config: dict[str, Any] = {
        "Name": f"gwtest-{aet}",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "StorageCompression": False,
        "MaximumStorageSize": 0,
        "MaximumPatientCount": 0,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "HttpDescribeErrors": True,
        "HttpCompressionEnabled": False,
        "HttpThreadsCount": 50,
        "KeepAlive": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth is not None,
        "RegisteredUsers": {auth[0]: auth[1]} if auth else {},
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {name: list(m) for name, m in (modalities or {}).items()},
        "DicomModalitiesInDatabase": False,
        "DicomThreadsCount": dicom_threads,
        "DicomScpTimeout": 30,
        "UnknownSopClassAccepted": True,
        "OverwriteInstances": True,
        "ConcurrentJobs": 2,
        "SaveJobs": False,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "StorageAccessOnFind": "Always",
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }
    config["Plugins"] = _plugins(gdcm=gdcm, postgres=postgres is not None)
    if gdcm:
        config["Gdcm"] = {"Enable": True, "RestrictTransferSyntaxes": list(JPEG2000_UIDS)}
    if postgres is not None:
        config["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": "127.0.0.1",
            "Port": 5432,
            "Username": "postgres",
            "Password": "",
            "Database": postgres,
            "Lock": False,
        }
    return config


def _plugins(*, gdcm: bool, postgres: bool) -> list[str]:
    plugins = [require_file(DICOMWEB_PLUGIN, "orthanc-dicomweb")]
    if gdcm:
        plugins.append(require_file(GDCM_PLUGIN, "orthanc-gdcm"))
    if postgres:
        plugins.append(require_file(POSTGRESQL_INDEX_PLUGIN, "orthanc-postgresql"))
    return [str(p) for p in plugins]


def start_orthanc(
    workdir: Path,
    *,
    auth: tuple[str, str] | None = None,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    postgres: str | None = None,
    gdcm: bool = True,
    dicom_threads: int = 4,
    timeout: float = 30.0,
) -> Orthanc:
    """Write the config to `workdir`/orthanc.json, start /usr/sbin/Orthanc on free ports with
    TCP_NODELAY=1 (log in `workdir`/log), and wait until GET /system answers 200 (401 when
    `auth` is set). Raises HarnessError with the log's tail on failure."""
    exe = require_executable(ORTHANC_BIN, "orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = _two_ports()
    config = orthanc_config(
        workdir, http_port=http_port, dicom_port=dicom_port, aet=aet, auth=auth,
        modalities=modalities, postgres=postgres, gdcm=gdcm, dicom_threads=dicom_threads,
    )
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_dir = workdir / "log"
    log_dir.mkdir(exist_ok=True)
    log_file = log_dir / "Orthanc.log"
    argv: list[str | Path] = [exe, "--no-jobs", f"--logfile={log_file}", config_path]
    process = spawn(argv, log_dir / "stdout.log", cwd=workdir)
    server = Orthanc(
        http_port=http_port, dicom_port=dicom_port, aet=aet, auth=auth, workdir=workdir,
        storage_dir=Path(config["StorageDirectory"]), process=process,
    )
    ready = {200, 401} if auth else {200}
    try:
        wait_until(
            lambda: _status(server.url + "/system") in ready, proc=process, timeout=timeout,
            what=f"Orthanc (HTTP {http_port}, DICOM {dicom_port})",
            logs=(log_file, log_dir / "stdout.log"),
        )
    except BaseException:
        server.stop()
        raise
    return server


def _two_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def _status(url: str) -> int | None:
    """HTTP status of an unauthenticated GET, or None while nothing answers."""
    try:
        return requests.get(url, timeout=1.0).status_code
    except requests.RequestException:
        return None
