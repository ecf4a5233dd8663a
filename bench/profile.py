"""`python -m bench.profile`: where the gateway's time goes, with py-spy.

Starts the same servers as the bench on a smaller archive (one 1,000-instance series, a few
small studies), then records the gunicorn workers with `py-spy record --subprocesses` while one
scenario runs, and prints the functions that hold most samples (inclusive, in gateway/ and in
the libraries). Scenarios with "cold" in their name run with the metadata cache off
(`gateway.cache.ttl: 0`), the others with it on. Needs `pip install py-spy`; run as root (or with
ptrace permission). Raw stacks are kept in the output directory (`--out`) for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.harness.ports import free_port

from . import archive, backends, served
from .client import AS_STORED, get_frame, get_json, get_stream, session
from .context import Bench
from .scale import Scale

SCALE = Scale(
    name="profile",
    search_studies=200,
    search_instances=1,
    search_hits=100,
    big_series=1000,
    big_rest=1,
    runs=1,
    warm=1,
    frames=1,
    stream_clients=1,
    mix_clients=1,
    mix_requests=1,
)
Scenario = Callable[[Bench], None]


def _repeat(times: int, way: str, what: str) -> Scenario:
    def scenario(b: Bench) -> None:
        big = b.archive.big
        for _ in range(times):
            with session() as s:
                base = b.base(way)
                if what == "retrieve":
                    get_stream(s, base + b.series_path(big), AS_STORED, 0)
                elif what == "metadata":
                    get_json(s, base + b.series_path(big) + "/metadata", len(big.instances))
                elif what == "search":
                    get_json(s, base + "/studies", SCALE.search_hits, b.search_params(0))
                else:
                    for i in range(0, len(big.instances), 10):
                        get_frame(s, base + b.frame_path(big, i))

    return scenario


SCENARIOS: dict[str, Scenario] = {
    "retrieve-web-cold": _repeat(4, "web", "retrieve"),
    "retrieve-cget-cold": _repeat(2, "orthanc-cget", "retrieve"),
    "metadata-web-cold": _repeat(5, "web", "metadata"),
    "metadata-web-warm": _repeat(20, "web", "metadata"),
    "search-web-cold": _repeat(50, "web", "search"),
    "search-web-warm": _repeat(200, "web", "search"),
    "frames-web-cold": _repeat(2, "web", "frames"),
    "frames-cget-cold": _repeat(1, "orthanc-cget", "frames"),
}


def summarize(raw: Path, wall: bool = False, top: int = 15) -> str:
    """From py-spy's raw (collapsed) output: the functions that ran most themselves (self),
    and the gateway's functions that most samples passed through (inclusive)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = stack.split(";")
        for frame in {f for f in frames if "(gateway/" in f}:
            inclusive[frame] += int(count)
        own[frames[-1]] += int(count)
    if not total:
        return "no samples"
    what = "of all threads (waiting included)" if wall else "holding the GIL"
    out = [f"{total} samples {what}. Self:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("Inclusive, gateway/ only:")
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


def record(b: Bench, name: str, scenario: Scenario, out: Path, wall: bool) -> str:
    """Run `scenario` under `py-spy record` of the gunicorn master and its workers: samples
    holding the GIL (CPU), or with `wall` every sample of every thread, waiting included."""
    assert b.gateway.process is not None
    raw = out / f"{name}{'-wall' if wall else ''}.txt"
    mode = ["--idle"] if wall else ["--gil"]
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--subprocesses",
            "--pid",
            str(b.gateway.process.pid),
            "--rate",
            "250",
            *mode,
            "--function",
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        scenario(b)
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    return summarize(raw, wall) if raw.is_file() else "py-spy wrote nothing"


def _configs(b: backends.Backends) -> tuple[dict[str, object], dict[str, object]]:
    warm, _ = served.validated(served.gateway_config(b, free_port()))
    cold = copy.deepcopy(warm)
    if "cache" in cold["gateway"]:
        cold["gateway"]["cache"]["ttl"] = 0
    return cold, warm


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("scenarios", nargs="*", default=list(SCENARIOS), choices=[[], *SCENARIOS])
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-profile")
    p.add_argument(
        "--wall",
        action="store_true",
        help="sample every thread, waiting included (default: only the GIL holder)",
    )
    args = p.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dicomweb-profile-"))
    try:
        with contextlib.ExitStack() as stack:
            info = archive.generate(workdir / "archive", SCALE)
            servers = backends.start(stack, workdir, "BENCHMOVE", free_port())
            backends.load_orthanc(servers.orthanc, info.all_paths())
            backends.load_dcmqrscp(servers.dcmqrscp, info.dcmqrscp_paths())
            for cache, config in zip(("cold", "warm"), _configs(servers), strict=True):
                wanted = [n for n in args.scenarios if n.endswith(cache)]
                if not wanted:
                    continue
                gateway = served.start_gateway(workdir, config, None, None)
                stack.callback(gateway.stop)
                bench = Bench(SCALE, info, servers, gateway)
                for name in wanted:
                    if cache == "warm":  # fill the cache first
                        SCENARIOS[name](bench)
                    print(
                        f"== {name}\n{record(bench, name, SCENARIOS[name], args.out, args.wall)}\n",
                        flush=True,
                    )
                gateway.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
