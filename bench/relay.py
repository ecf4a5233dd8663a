"""The least a Python HTTP gateway can do, for measurement 3's "no gateway: relay" row: a WSGI
app, served by gunicorn with the gateway's own gunicorn.conf.py, that forwards each GET to
Orthanc's DICOMweb root (`RELAY_UPSTREAM`) and streams the answer back untouched (status,
Content-Type and body bytes; no parsing, no re-framing, no checks). Its throughput is the
ceiling of any gateway written this way on this machine: the same three processes (client,
gunicorn worker, Orthanc) share the same cores.

    RELAY_UPSTREAM=http://127.0.0.1:8042/dicom-web gunicorn -c gunicorn.conf.py bench.relay:app
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import requests

CHUNK = 1 << 20  # what the gateway reads from an upstream at a time (http_upstream.CHUNK_SIZE)
TIMEOUT = (5.0, 300.0)

_session = requests.Session()
_session.trust_env = False


def _body(response: requests.Response) -> Iterator[bytes]:
    try:
        while chunk := response.raw.read1(CHUNK):
            yield chunk
    finally:
        response.close()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/readyz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ready\n"]
    query = environ.get("QUERY_STRING", "")
    url = os.environ["RELAY_UPSTREAM"].rstrip("/") + path + (f"?{query}" if query else "")
    accept = environ.get("HTTP_ACCEPT", "*/*")
    response = _session.get(url, headers={"Accept": accept}, stream=True, timeout=TIMEOUT)
    headers = [("Content-Type", response.headers.get("Content-Type", "application/octet-stream"))]
    start_response(f"{response.status_code} {response.reason}", headers)
    return _body(response)
