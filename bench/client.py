"""Timed HTTP requests, as a viewer sends them (requests, keep-alive sessions), each with a
time-out and a check of what came back (a wrong answer counts as an error, not as a time)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

import requests

TIMEOUT = (5.0, 900.0)  # (connect, read) seconds: a 1 GB study streams for minutes
JSON = "application/dicom+json"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME = 'multipart/related; type="application/octet-stream"'
CHUNK = 1 << 20
FRAME_BYTES = 512 * 512 * 2  # one native 512x512 16-bit frame


@dataclass(frozen=True)
class Result:
    seconds: float
    ok: bool
    size: int = 0  # bytes received
    status: int = 0


def session() -> requests.Session:
    """A keep-alive session that ignores proxies from the environment (loopback only)."""
    s = requests.Session()
    s.trust_env = False
    return s


def get_json(s: requests.Session, url: str, expect: int, params: str = "") -> Result:
    """GET a DICOM JSON array; ok when 200 and it holds `expect` items."""
    started = time.perf_counter()
    try:
        r = s.get(url + (f"?{params}" if params else ""), headers={"Accept": JSON}, timeout=TIMEOUT)
        body = r.content
        seconds = time.perf_counter() - started
        ok = r.status_code == 200 and len(r.json()) == expect
        return Result(seconds, ok, len(body), r.status_code)
    except (requests.RequestException, ValueError):
        return Result(time.perf_counter() - started, False)


def get_stream(s: requests.Session, url: str, accept: str, min_bytes: int) -> Result:
    """GET a (multipart) body, read to the end and dropped; ok when 200 and at least
    `min_bytes` arrived (every object of the resource, each in a part of its own)."""
    started = time.perf_counter()
    size = 0
    try:
        with s.get(url, headers={"Accept": accept}, timeout=TIMEOUT, stream=True) as r:
            for chunk in r.iter_content(CHUNK):
                size += len(chunk)
            seconds = time.perf_counter() - started
            return Result(seconds, r.status_code == 200 and size >= min_bytes, size, r.status_code)
    except requests.RequestException:
        return Result(time.perf_counter() - started, False, size)


def get_frame(s: requests.Session, url: str) -> Result:
    """GET frame 1 of an instance as native pixels (a multipart with one part)."""
    return get_stream(s, url, FRAME, FRAME_BYTES)


def median_ms(results: Iterable[Result]) -> float:
    """Median duration of the successful results, in ms (NaN when none succeeded)."""
    times = [r.seconds * 1000 for r in results if r.ok]
    return statistics.median(times) if times else float("nan")


def errors(results: Iterable[Result]) -> int:
    return sum(1 for r in results if not r.ok)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
