"""Measurements 1 to 4 of issue 5: study search and series metadata (cold and warm), series
retrieval throughput, single-frame latency; each with its direct counterpart in the same run."""

from __future__ import annotations

import statistics
import subprocess
from collections import defaultdict
from collections.abc import Callable

import requests

from . import dimse_direct
from .archive import SeriesInfo
from .client import (
    AS_STORED,
    Result,
    errors,
    get_frame,
    get_json,
    get_stream,
    median_ms,
    session,
)
from .context import DIRECT, RELAY, Bench
from .report import Row
from .served import WAYS

CACHED_WAYS = ("web", "orthanc-cget", "dcmqrscp-cget")  # DICOM_WEB, Orthanc DIMSE, dcmqrscp
RETRIEVE_WAYS = ("web", "orthanc-cget", "orthanc-cmove", "dcmqrscp-cget", "dcmqrscp-cmove")
FRAME_WAYS = ("web", "orthanc-cget", "dcmqrscp-cget")
PRIME_CONNECTIONS = 4  # fresh connections per way before cold runs: every worker gets some
WARM_TARGET = 1 / 3  # warm search / metadata: at least 3 times faster than direct
COLD_WEB_TARGET = 1.15  # cold pass-through: at most 15 % slower than direct
Samples = dict[tuple[str, str, str], list[Result]]  # (kind, way, phase) -> results
Request = Callable[[Bench, requests.Session, str], Result]


def cached_rounds(b: Bench) -> list[Row]:
    """Measurements 1 and 2, `runs` rounds: restart the gateway (empty caches), warm its code
    paths on other resources, then per way one cold request, the same request direct, and
    `warm` warm ones."""
    samples: Samples = defaultdict(list)
    for run in range(b.scale.runs):
        b.say(f"search and metadata, round {run + 1}/{b.scale.runs}: restarting the gateway")
        b.gateway.restart()
        _prime(b)
        for way in CACHED_WAYS:
            _way_round(b, way, samples, direct_first=run % 2 == 0)
    return _search_rows(b, samples) + _metadata_rows(b, samples)


def _prime(b: Bench) -> None:
    """Requests on resources the measurements do not use, from fresh connections."""
    small = b.archive.search[-1]
    for _ in range(PRIME_CONNECTIONS):
        for way in CACHED_WAYS:
            with session() as s:
                base = b.base(way)
                get_json(s, base + "/studies", b.scale.search_hits, b.search_params(b.other_window))
                get_json(s, base + b.series_path(small) + "/metadata", len(small.instances))
                get_frame(s, base + b.frame_path(small, 0))


def _search(b: Bench, s: requests.Session, way: str) -> Result:
    params = b.search_params(b.fresh_window)
    return get_json(s, b.base(way) + "/studies", b.scale.search_hits, params)


def _metadata(b: Bench, s: requests.Session, way: str) -> Result:
    url = b.base(way) + b.series_path(b.archive.big) + "/metadata"
    return get_json(s, url, len(b.archive.big.instances))


def _way_round(b: Bench, way: str, samples: Samples, *, direct_first: bool) -> None:
    """Per kind: the gateway's cold request and, next to it, the same request sent directly,
    each from a fresh connection (which of the two goes first alternates between rounds), so
    that both meet the archive in the same state: Orthanc answers a search ~25 % slower right
    after serving a 1,000-instance metadata request, and a direct figure taken elsewhere in the
    round carried that difference into the ratio. Then the gateway's warm requests."""
    for kind, request in (("search", _search), ("metadata", _metadata)):
        with session() as s:
            if direct_first:
                _direct(b, kind, way, request, samples)
            samples[kind, way, "cold"].append(request(b, s, way))
            if not direct_first:
                _direct(b, kind, way, request, samples)
            for _ in range(b.scale.warm):  # on the same, kept-alive connection
                samples[kind, way, "warm"].append(request(b, s, way))


def _direct(b: Bench, kind: str, way: str, request: Request, samples: Samples) -> None:
    with session() as s:
        samples[kind, DIRECT, way].append(request(b, s, DIRECT))


def _cached_rows(b: Bench, samples: Samples, kind: str, title: str) -> list[Row]:
    rows = []
    for way in CACHED_WAYS:
        direct = samples[kind, DIRECT, way]
        for phase in ("cold", "warm"):
            got = samples[kind, way, phase]
            row = Row(
                title,
                f"{WAYS[way]}, {phase}",
                "ms",
                median_ms(got),
                median_ms(direct),
                errors(got),
                note=_direct_errors(direct),
            )
            if phase == "warm":
                row.target, row.met = "<= 0.33 (3x faster)", row.ratio <= WARM_TARGET
            elif way == "web":
                row.target, row.met = "<= 1.15", row.ratio <= COLD_WEB_TARGET
            rows.append(row)
    return rows


def _direct_errors(direct: list[Result]) -> str:
    failed = errors(direct)
    return f"direct errors: {failed}" if failed else ""


def _search_rows(b: Bench, samples: Samples) -> list[Row]:
    title = f"1. QIDO study search ({b.scale.search_hits} studies)"
    return _cached_rows(b, samples, "search", title)


def _metadata_rows(b: Bench, samples: Samples) -> list[Row]:
    title = f"2. Series metadata ({b.scale.big_series} instances)"
    return _cached_rows(b, samples, "metadata", title)


def retrieval(b: Bench) -> list[Row]:
    """Measurement 3: the big series as stored (WADO-RS), MB/s, `runs` times each way."""
    series = b.archive.big
    minimum = int(series.bytes * 0.98)  # every object (the gateway may re-encode the meta)
    rates: dict[str, list[float]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    for run in range(b.scale.runs):
        b.say(f"series retrieval, round {run + 1}/{b.scale.runs}")
        for way in (DIRECT, *RETRIEVE_WAYS, *([RELAY] if b.relay else [])):
            with session() as s:
                got = get_stream(s, b.base(way) + b.series_path(series), AS_STORED, minimum)
            if got.ok:
                rates[way].append(got.size / 1e6 / got.seconds)
            else:
                failed[way] += 1
                b.say(f"  {way}: failed (HTTP {got.status}, {got.size} bytes)")
        _dimse_round(b, series, rates, failed)
    direct = _median(rates[DIRECT])
    title = f"3. Series retrieval ({series.bytes / 1e6:.0f} MB, as stored)"
    rows = []
    for way in RETRIEVE_WAYS:
        row = Row(title, WAYS[way], "MB/s", _median(rates[way]), direct, failed[way])
        if way == "web":
            row.target, row.met = ">= 0.85", row.ratio >= 0.85
        elif way == "orthanc-cget":
            row.target, row.met = ">= 0.70", row.ratio >= 0.70
        rows.append(row)
    if b.relay:
        rows.append(Row(title, RELAY_NAME, "MB/s", _median(rates[RELAY]), direct, failed[RELAY]))
    for way, name in DIMSE_DIRECT.items():
        rows.append(Row(title, name, "MB/s", _median(rates[way]), direct, failed[way]))
    return rows


RELAY_NAME = "no gateway: Orthanc through a gunicorn byte relay (bench/relay.py)"


#: the archives' own DIMSE speed, no gateway: (archive, client) -> its name in the table
DIMSE_DIRECT = {
    "orthanc-pynetdicom": "no gateway: C-GET -> Orthanc, bare pynetdicom SCU",
    "orthanc-getscu": "no gateway: C-GET -> Orthanc, dcmtk getscu",
    "dcmqrscp-pynetdicom": "no gateway: C-GET -> dcmqrscp, bare pynetdicom SCU",
    "dcmqrscp-getscu": "no gateway: C-GET -> dcmqrscp, dcmtk getscu",
}


def _dimse_round(
    b: Bench, series: SeriesInfo, rates: dict[str, list[float]], failed: dict[str, int]
) -> None:
    """One C-GET of the series from each archive by each client of `dimse_direct`."""
    o, q = b.backends.orthanc, b.backends.dcmqrscp
    archives = {"orthanc": (o.dicom_port, o.aet), "dcmqrscp": (q.port, q.aet)}
    for way in DIMSE_DIRECT:
        archive, client = way.split("-")
        port, aet = archives[archive]
        try:
            if client == "pynetdicom":
                size, seconds = dimse_direct.pynetdicom_cget("127.0.0.1", port, aet, series)
            else:
                size, seconds = dimse_direct.getscu("127.0.0.1", port, aet, series)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            failed[way] += 1
            b.say(f"  {way}: failed ({exc})")
            continue
        if size < series.bytes * 0.98:
            failed[way] += 1
            b.say(f"  {way}: {size} of {series.bytes} bytes")
            continue
        rates[way].append(size / 1e6 / seconds)


def frames(b: Bench) -> list[Row]:
    """Measurement 4: frame 1 of distinct instances as native pixels, one session per way."""
    series = b.archive.big
    count = b.scale.runs * b.scale.frames
    picks = [round(i * (len(series.instances) - 1) / max(1, count - 1)) for i in range(count)]
    b.say(f"single-frame latency, {count} instances")
    results: dict[str, list[Result]] = defaultdict(list)
    sessions = {way: session() for way in (DIRECT, *FRAME_WAYS)}
    try:
        for index in picks:
            for way, s in sessions.items():
                results[way].append(get_frame(s, b.base(way) + b.frame_path(series, index)))
    finally:
        for s in sessions.values():
            s.close()
    direct = median_ms(results[DIRECT])
    title = "4. Single-frame latency (512x512x16 bit)"
    return [
        Row(
            title,
            WAYS[way],
            "ms",
            median_ms(results[way]),
            direct,
            errors(results[way]),
            note=_direct_errors(results[DIRECT]),
        )
        for way in FRAME_WAYS
    ]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
