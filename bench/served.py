"""The gateway as it is deployed: `gunicorn wsgi:app` with the project's gunicorn.conf.py
(threaded workers), configured with one connector per way the bench measures."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.harness.procs import HarnessError, stop_process, wait_until

from .backends import Backends

ROOT = Path(__file__).resolve().parents[1]

#: connector id -> what it is, as the table names it
WAYS: dict[str, str] = {
    "web": "gateway DICOM_WEB -> Orthanc",
    "orthanc-cget": "gateway DICOM C-GET -> Orthanc",
    "orthanc-cmove": "gateway DICOM C-MOVE -> Orthanc",
    "dcmqrscp-cget": "gateway DICOM C-GET -> dcmqrscp",
    "dcmqrscp-cmove": "gateway DICOM C-MOVE -> dcmqrscp",
}
#: Metadata cache settings used when the gateway's config has a `gateway.cache` block: a TTL
#: longer than the run, so "warm" never expires in the middle of a measurement.
CACHE_BLOCK = {"ttl": 3600, "max-bytes": 512 * 1024 * 1024}
#: 2 per connector and gunicorn worker; Orthanc serves `backends.ORTHANC_DICOM_THREADS` DIMSE
#: associations at a time, room for both DIMSE connectors to Orthanc with 2 workers (the README's
#: budget: idle associations kept for reuse hold Orthanc's slots too)
ORTHANC_ASSOCIATIONS = 2


def _dimse(calling: str, aet: str, port: int, method: str, associations: int) -> dict[str, Any]:
    return {
        "type": "DICOM",
        "dicom-connector": {
            "dimse": {
                "calling-aet": calling,
                "aet": aet,
                "host": "127.0.0.1",
                "port": port,
                "retrieve-method": method,
                "max-associations": associations,
            }
        },
    }


def gateway_config(backends: Backends, port: int) -> dict[str, Any]:
    """The gateway's configuration: the five connectors of WAYS, generous time-outs (a 1 GB
    study streams for minutes), the storage SCP that C-MOVE needs, and a long-lived cache."""
    o, q, move = backends.orthanc, backends.dcmqrscp, backends.move_aet
    web = {
        "type": "NONE",
        "server": {"url": "http://127.0.0.1", "port": o.http_port, "context": "/dicom-web"},
    }
    connectors = {
        "web": {"type": "DICOM_WEB", "dicom-web-connector": {"qido-rs": {"authentication": web}}},
        "orthanc-cget": _dimse("BENCHGW", o.aet, o.dicom_port, "C-GET", ORTHANC_ASSOCIATIONS),
        "orthanc-cmove": _dimse(move, o.aet, o.dicom_port, "C-MOVE", ORTHANC_ASSOCIATIONS),
        "dcmqrscp-cget": _dimse("BENCHGW", q.aet, q.port, "C-GET", 8),
        "dcmqrscp-cmove": _dimse(move, q.aet, q.port, "C-MOVE", 8),
    }
    return {
        "gateway": {
            "public-url": f"http://127.0.0.1:{port}",
            "max-results": 1000,
            "timeouts": {
                "connect": 5,
                "read": 300,
                "request": 900,
                "acse": 30,
                "dimse": 120,
                "network": 300,
            },
            "storage-scp": {"aet": move, "port": backends.move_port, "host": "127.0.0.1"},
            "cache": dict(CACHE_BLOCK),
        },
        "connector": {"default": "web", "config": connectors},
    }


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, mappings key by key (the --config-extra file)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validated(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The config as this checkout of the gateway accepts it, and a note. A gateway without the
    metadata cache refuses `gateway.cache`: the block is dropped and the note says so."""
    from gateway.config import ConfigError, load_settings_from_dict

    try:
        load_settings_from_dict(config)
        return config, "metadata cache: gateway.cache " + yaml.safe_dump(
            config["gateway"].get("cache", {}), default_flow_style=True
        ).strip()
    except ConfigError as exc:
        if "cache" not in str(exc):
            raise
    trimmed = copy.deepcopy(config)
    trimmed["gateway"].pop("cache", None)
    load_settings_from_dict(trimmed)
    return trimmed, "metadata cache: absent in this checkout (warm = second and later runs)"


@dataclass
class Gunicorn:
    """A running `gunicorn wsgi:app` (the master's PID is `process.pid`)."""

    config_path: Path
    port: int
    log: Path
    env: dict[str, str]
    app: str = "wsgi:app"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        """Start the master (own session, so it is stopped by its process group), then wait
        until /readyz answers 200 (every connector reachable) and every worker is up."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", self.app],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wanted = int(self.env.get("GATEWAY_WORKERS", "2"))
        wait_until(
            lambda: self._ready() and len(self.workers()) >= wanted,
            proc=self.process,
            timeout=timeout,
            what=f"gunicorn (port {self.port})",
            logs=(self.log,),
            interval=0.1,
        )

    def _ready(self) -> bool:
        try:
            return requests.get(self.url + "/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def workers(self) -> list[int]:
        """PIDs of the master's children (the workers), read from /proc."""
        if self.process is None:
            return []
        return children(self.process.pid)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=30.0)
            self.process = None

    def restart(self) -> None:
        """Stop and start again: every worker's in-process cache and pools are empty after."""
        self.stop()
        self.start()


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def prepare(
    workdir: Path, config: dict[str, Any], port: int, workers: int | None, threads: int | None
) -> Gunicorn:
    """Write the config and build (not start) the gunicorn runner on `port`."""
    path = workdir / "gateway.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "GATEWAY_CONFIG": str(path), "GATEWAY_BIND": f"127.0.0.1:{port}"}
    if workers:
        env["GATEWAY_WORKERS"] = str(workers)
    if threads:
        env["GATEWAY_THREADS"] = str(threads)
    return Gunicorn(path, port, workdir / "gunicorn.log", env)


def start_gateway(
    workdir: Path, config: dict[str, Any], workers: int | None, threads: int | None
) -> Gunicorn:
    port = int(config["gateway"]["public-url"].rsplit(":", 1)[1])
    runner = prepare(workdir, config, port, workers, threads)
    try:
        runner.start()
    except HarnessError:
        runner.stop()
        raise
    return runner


def start_relay(
    workdir: Path, upstream: str, port: int, workers: int | None, threads: int | None
) -> Gunicorn:
    """`bench.relay` (bytes forwarded untouched to and from `upstream`) under the gateway's
    gunicorn.conf.py, with the gateway's worker and thread counts."""
    env = {**os.environ, "RELAY_UPSTREAM": upstream, "GATEWAY_BIND": f"127.0.0.1:{port}"}
    if workers:
        env["GATEWAY_WORKERS"] = str(workers)
    if threads:
        env["GATEWAY_THREADS"] = str(threads)
    runner = Gunicorn(
        workdir / "relay-unused.yml", port, workdir / "relay.log", env, "bench.relay:app"
    )
    try:
        runner.start()
    except HarnessError:
        runner.stop()
        raise
    return runner
