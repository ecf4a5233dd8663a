"""Measurement 5: peak resident memory of the gateway's gunicorn workers while they stream the
big study (>= 1 GB) to one client and to several at once, against Orthanc's own peak while it
streams the same study to the same clients directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .client import AS_STORED, Result, get_stream, session
from .context import DIRECT, Bench
from .memory import Peaks, idle_mb, watch
from .report import Row
from .served import WAYS

MEMORY_WAYS = ("web", "orthanc-cget")
ONE_CLIENT_LIMIT = 150.0  # MB, issue 5
PER_CLIENT_LIMIT = 20.0  # MB more per extra concurrent client, issue 5


def _stream_all(url: str, clients: int, minimum: int) -> list[Result]:
    def one(_: int) -> Result:
        with session() as s:
            return get_stream(s, url, AS_STORED, minimum)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def _measure(b: Bench, way: str, clients: int, pids: Callable[[], Sequence[int]]) -> Peaks:
    url = b.base(way) + f"/studies/{b.archive.big.study}"
    minimum = int(b.archive.big_study_bytes * 0.98)
    time.sleep(1.0)  # let the previous streams' buffers go
    started = time.monotonic()
    with watch(pids) as peaks:
        results = _stream_all(url, clients, minimum)
    failed = sum(1 for r in results if not r.ok)
    total = sum(r.size for r in results)
    seconds = time.monotonic() - started
    b.say(
        f"  {way}, {clients} client(s): {total / 1e9:.2f} GB in {seconds:.0f} s, "
        f"peak {peaks.per_pid[peaks.busiest]:.0f} MB (idle {peaks.idle[peaks.busiest]:.0f}, "
        f"all {peaks.total:.0f} MB), {failed} failed"
    )
    peaks.failed = failed
    return peaks


def memory(b: Bench) -> list[Row]:
    """Four rows per way: 1 client and `stream_clients` clients."""
    many = b.scale.stream_clients
    orthanc = b.backends.orthanc.pid
    b.say(
        f"memory while streaming the big study ({b.archive.big_study_bytes / 1e9:.2f} GB): "
        "the gateway restarted before each way, so that neither cached metadata nor what an "
        "earlier way's streams left in the heap counts"
    )
    direct = {n: _measure(b, DIRECT, n, lambda: [orthanc]) for n in (1, many)}
    rows = []
    title = f"5. Peak RSS streaming the {b.archive.big_study_bytes / 1e9:.2f} GB study"
    for way in MEMORY_WAYS:
        b.gateway.restart()
        b.say(f"  gateway workers idle at {idle_mb(b.gateway.workers()):.0f} MB in total")
        one, several = (_measure(b, way, n, b.gateway.workers) for n in (1, many))
        busy = one.per_pid[one.busiest]
        first = Row(
            title,
            f"{WAYS[way]}, 1 client",
            "MB",
            busy,
            direct[1].largest,
            one.failed,
            target=f"< {ONE_CLIENT_LIMIT:.0f} MB",
            met=busy < ONE_CLIENT_LIMIT,
            note=f"the streaming worker, {one.idle[one.busiest]:.0f} MB before; "
            f"all workers {one.total:.0f} MB",
        )
        growth = (several.total - one.total) / (many - 1)
        second = Row(
            title,
            f"{WAYS[way]}, {many} clients",
            "MB",
            several.total,
            direct[many].largest,
            several.failed,
            target=f"< {PER_CLIENT_LIMIT:.0f} MB per extra client",
            met=growth < PER_CLIENT_LIMIT,
            note=f"all workers; {growth:.1f} MB per extra client",
        )
        rows += [first, second]
    return rows
