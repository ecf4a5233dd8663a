"""`python -m bench`: generate the archive, start Orthanc, dcmqrscp and the gateway (gunicorn)
on 127.0.0.1, measure the gateway against direct access, print the table and write
docs/benchmarks.md. Every server is stopped by its PID at the end, on errors and on Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from tests.harness.ports import free_port

from . import archive, backends, measure, mix, report, served, streaming
from .context import Bench
from .scale import Scale, full, smoke

MOVE_AET = "BENCHMOVE"
DOCS = report.ROOT / "docs" / "benchmarks.md"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny archive, every measurement once; docs/ is not written",
    )
    p.add_argument("--runs", type=int, default=5, help="N of the medians (default 5)")
    p.add_argument(
        "--out",
        type=Path,
        help="where to write the Markdown report (default docs/benchmarks.md; "
        "with --smoke nothing unless given)",
    )
    p.add_argument("--json", type=Path, help="also save the results as JSON here")
    p.add_argument(
        "--render", type=Path, help="measure nothing: print and write the report of a --json file"
    )
    p.add_argument(
        "--tmp",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the work directory (default the temp directory)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--config-extra",
        type=Path,
        help="YAML merged into the gateway's configuration (e.g. a gateway.cache block)",
    )
    p.add_argument(
        "--only",
        choices=tuple(MEASUREMENTS),
        action="append",
        help="take only this measurement (repeatable); docs/ is not written unless --out is given",
    )
    p.add_argument("--workers", type=int, help="gunicorn workers (default: gunicorn.conf.py's)")
    p.add_argument("--threads", type=int, help="threads per worker (default: gunicorn.conf.py's)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


#: the measurements, in the table's order, by the name --only takes
MEASUREMENTS: dict[str, Callable[[Bench], list[report.Row]]] = {
    "search-metadata": measure.cached_rounds,
    "retrieval": measure.retrieval,
    "frames": measure.frames,
    "memory": streaming.memory,
    "mix": mix.mix,
}


def _measure_all(b: Bench, only: list[str] | None) -> list[report.Row]:
    rows: list[report.Row] = []
    for name, take in MEASUREMENTS.items():
        if not only or name in only:
            rows += take(b)
    return rows


def _archive_lines(info: archive.ArchiveInfo, scale: Scale, loads: dict[str, float]) -> list[str]:
    big = info.big
    return [
        (
            f"Source: `{info.source}` (512x512, 16 bit, Explicit VR Little Endian), cloned with new "
            "UIDs and instance numbers"
        ),
        (
            f"{len(info.search)} small studies of {scale.search_instances} instances "
            f"({sum(s.bytes for s in info.search) / 1e6:.0f} MB); each search returns "
            f"{scale.search_hits} of them"
        ),
        (
            f"One study of {scale.big_study_instances} instances in 2 series "
            f"({info.big_study_bytes / 1e9:.2f} GB); its first series has {len(big.instances)} "
            f"instances ({big.bytes / 1e6:.0f} MB)"
        ),
        (
            f"Orthanc holds everything (loaded in {loads['orthanc']:.0f} s over REST, "
            f"{backends.LOAD_THREADS} threads)"
        ),
        (
            f"dcmqrscp holds a subset: the small studies and the {len(big.instances)}-instance "
            f"series, not the rest of the big study (its flat index and its quotas, about 2000 "
            f"instances and 500 studies per storage area; loaded in {loads['dcmqrscp']:.0f} s "
            "with storescu)"
        ),
    ]


def _gateway_config(b: backends.Backends, extra: Path | None) -> tuple[dict[str, Any], str]:
    config = served.gateway_config(b, free_port())
    if extra is not None:
        config = served.merge(config, yaml.safe_load(extra.read_text()) or {})
    return served.validated(config)


def run(args: argparse.Namespace, scale: Scale, workdir: Path) -> report.Outcome:
    """Everything between the work directory and the table."""
    started = time.monotonic()
    archive.check_disk(workdir, scale)
    with contextlib.ExitStack() as stack:
        print(f"[bench] work directory {workdir}; generating the archive", file=sys.stderr)
        info = archive.generate(workdir / "archive", scale)
        servers = backends.start(stack, workdir, MOVE_AET, free_port())
        loads = {
            "orthanc": backends.load_orthanc(servers.orthanc, info.all_paths()),
            "dcmqrscp": backends.load_dcmqrscp(servers.dcmqrscp, info.dcmqrscp_paths()),
        }
        config, cache_note = _gateway_config(servers, args.config_extra)
        gateway = served.start_gateway(workdir, config, args.workers, args.threads)
        stack.callback(gateway.stop)
        relay = served.start_relay(
            workdir, servers.orthanc.dicomweb_url, free_port(), args.workers, args.threads
        )
        stack.callback(relay.stop)
        bench = Bench(scale, info, servers, gateway, started, relay)
        bench.say(f"loaded: Orthanc {loads['orthanc']:.0f} s, dcmqrscp {loads['dcmqrscp']:.0f} s")
        rows = _measure_all(bench, args.only)
        workers = len(gateway.workers())
        facts = report.machine(
            backends.versions(servers.orthanc),
            {
                "Gateway": f"gunicorn, {workers} workers x {gateway.env.get('GATEWAY_THREADS', '16')}"
                f" threads (gunicorn.conf.py); {cache_note}",
                "Scale": f"{scale.name}, N = {scale.runs}",
            },
        )
    command = "python -m bench" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    return report.Outcome(rows, facts, _archive_lines(info, scale, loads), command, scale.runs)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render is not None:
        outcome = report.Outcome.from_json(args.render.read_text())
    else:
        outcome = _run_in_workdir(args)
    print(report.table(outcome.rows))
    out = args.out or (None if args.smoke or args.only else DOCS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(outcome.markdown())
        print(f"[bench] report written to {out}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(outcome.to_json())
    return 0


def _run_in_workdir(args: argparse.Namespace) -> report.Outcome:
    scale = smoke() if args.smoke else full(args.runs)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="dicomweb-bench-", dir=args.tmp))
    try:
        return run(args, scale, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
