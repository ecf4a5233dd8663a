"""Measurement 6: concurrent clients that behave like viewers (a study list, the series
metadata of a study picked from it, then a frame of each of its instances), a fixed number of
requests, sent to Orthanc directly and through the gateway after a warm-up pass."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from .client import Result, get_frame, get_json, percentile, session
from .context import DIRECT, Bench
from .report import Row
from .served import WAYS

MIX_WAYS = ("web", "orthanc-cget")
WARMUP_PASSES = 2  # untimed passes first: with several workers each keeps its own cache
WINDOWS = 5  # distinct study lists the clients ask for
SEED = 7


@dataclass(frozen=True)
class Step:
    kind: str  # search, metadata or frame
    path: str  # below the DICOMweb root, with the query string
    expect: int  # JSON items (search, metadata); 0 for a frame


def plan(b: Bench) -> list[list[Step]]:
    """Each client's requests: viewer sessions (1 search, 1 metadata, 1 frame per instance)
    until its share of `mix_requests` is reached. Seeded: every way gets the same plan."""
    rng = random.Random(SEED)
    spread = b.scale.search_studies - b.scale.search_hits
    windows = sorted({round(i * spread / (WINDOWS - 1)) for i in range(WINDOWS)})
    share = b.scale.mix_requests // b.scale.mix_clients
    plans = []
    for _ in range(b.scale.mix_clients):
        steps: list[Step] = []
        while len(steps) < share:
            first = rng.choice(windows)
            steps.append(Step("search", "/studies?" + b.search_params(first), b.scale.search_hits))
            series = b.archive.search[first + rng.randrange(b.scale.search_hits)]
            steps.append(
                Step("metadata", b.series_path(series) + "/metadata", len(series.instances))
            )
            steps += [
                Step("frame", b.frame_path(series, i), 0) for i in range(len(series.instances))
            ]
        plans.append(steps[:share])
    return plans


def _client(base: str, steps: list[Step], out: list[tuple[str, Result]]) -> None:
    with session() as s:
        for step in steps:
            url = base + step.path
            got = get_frame(s, url) if step.kind == "frame" else get_json(s, url, step.expect)
            out.append((step.kind, got))


def run(base: str, plans: list[list[Step]]) -> tuple[float, list[tuple[str, Result]]]:
    """Every client in a thread of its own; the wall time and every (kind, result)."""
    outs: list[list[tuple[str, Result]]] = [[] for _ in plans]
    threads = [
        threading.Thread(target=_client, args=(base, steps, out), daemon=True)
        for steps, out in zip(plans, outs, strict=True)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, [item for out in outs for item in out]


@dataclass(frozen=True)
class Figures:
    rate: float  # requests per second
    p50: float  # ms
    p99: float  # ms
    errors: int


def measure(b: Bench, way: str, plans: list[list[Step]]) -> Figures:
    """Warm-up passes, then the measured one."""
    for _ in range(WARMUP_PASSES):
        run(b.base(way), plans)
    seconds, results = run(b.base(way), plans)
    times = [r.seconds * 1000 for _, r in results]
    failed = sum(1 for _, r in results if not r.ok)
    figures = Figures(len(results) / seconds, percentile(times, 50), percentile(times, 99), failed)
    b.say(
        f"  {way}: {figures.rate:.1f} req/s, p50 {figures.p50:.0f} ms, "
        f"p99 {figures.p99:.0f} ms, {failed} errors"
    )
    return figures


def mix(b: Bench) -> list[Row]:
    """Three rows per way (req/s, p50, p99), each against the direct mix."""
    plans = plan(b)
    total = sum(len(p) for p in plans)
    b.say(f"{b.scale.mix_clients}-client viewer mix, {total} requests per pass")
    direct = measure(b, DIRECT, plans)
    title = f"6. {b.scale.mix_clients}-client viewer mix ({total} requests)"
    rows = []
    for way in MIX_WAYS:
        got = measure(b, way, plans)
        rate = Row(
            title,
            f"{WAYS[way]}, warm: requests/s",
            "req/s",
            got.rate,
            direct.rate,
            got.errors,
            target="> 1, no errors",
            note=f"direct errors: {direct.errors}" if direct.errors else "",
        )
        rate.met = rate.ratio > 1 and got.errors == 0
        rows += [
            rate,
            Row(title, f"{WAYS[way]}, warm: p50", "ms", got.p50, direct.p50, got.errors),
            Row(title, f"{WAYS[way]}, warm: p99", "ms", got.p99, direct.p99, got.errors),
        ]
    return rows
