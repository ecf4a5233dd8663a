"""`python -m bench --smoke`: the benchmark of issue 5 on a tiny archive, every measurement once,
so that the bench cannot rot. It runs the real backends (Orthanc, dcmqrscp) and the gateway
under gunicorn, exactly as the full bench does, and must leave docs/benchmarks.md alone."""

import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SMOKE_BUDGET = 90  # seconds

WEB, CGET, CMOVE = (
    "gateway DICOM_WEB -> Orthanc",
    "gateway DICOM C-GET -> Orthanc",
    "gateway DICOM C-MOVE -> Orthanc",
)
QCGET, QCMOVE = "gateway DICOM C-GET -> dcmqrscp", "gateway DICOM C-MOVE -> dcmqrscp"
#: The archives' own C-GET speed, no gateway in the path (the ceiling of any DIMSE client).
NO_GATEWAY = [
    f"no gateway: C-GET -> {archive}, {client}"
    for archive in ("Orthanc", "dcmqrscp")
    for client in ("bare pynetdicom SCU", "dcmtk getscu")
]
#: Orthanc's WADO-RS through a gunicorn that only forwards bytes (the ceiling of a Python relay).
RELAY = "no gateway: Orthanc through a gunicorn byte relay (bench/relay.py)"
CACHED = [f"{way}, {phase}" for way in (WEB, CGET, QCGET) for phase in ("cold", "warm")]
#: The six measurements of issue 5 and the ways each one is taken, as the table names them.
EXPECTED = {
    "1. QIDO study search": CACHED,
    "2. Series metadata": CACHED,
    "3. Series retrieval": [WEB, CGET, CMOVE, QCGET, QCMOVE, RELAY, *NO_GATEWAY],
    "4. Single-frame latency": [WEB, CGET, QCGET],
    "5. Peak RSS streaming": [
        f"{way}, {n}" for way in (WEB, CGET) for n in ("1 client", "8 clients")
    ],
    "6. 16-client viewer mix": [
        f"{way}, warm: {figure}" for way in (WEB, CGET) for figure in ("requests/s", "p50", "p99")
    ],
}
UNITS = {"1": "ms", "2": "ms", "3": "MB/s", "4": "ms", "5": "MB", "6": None}


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert lines and lines[0].startswith("| Measurement | Way | Gateway | Direct | Unit | Ratio")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_smoke_bench_measures_every_row_of_the_issue(tmp_path):
    before = DOCS.stat().st_mtime_ns if DOCS.exists() else None
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--tmp", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_BUDGET,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert time.monotonic() - started < SMOKE_BUDGET

    rows = table_rows(done.stdout)
    found = {(m, w) for m, w, *_ in rows}
    for measurement, ways in EXPECTED.items():
        for way in ways:
            assert any(m.startswith(measurement) and w.startswith(way) for m, w in found), (
                measurement,
                way,
            )
    assert len(rows) == sum(len(ways) for ways in EXPECTED.values())
    for measurement, way, gateway, direct, unit, ratio, errors, *_ in rows:
        values = (float(gateway), float(direct), float(ratio))
        assert all(math.isfinite(v) and v > 0 for v in values), (measurement, way, values)
        assert math.isclose(values[2], values[0] / values[1], rel_tol=0.05, abs_tol=0.01)
        assert errors == "0", (measurement, way, errors)
        expected_unit = UNITS[measurement[0]]
        assert unit == (expected_unit or ("req/s" if "requests/s" in way else "ms"))
    # the smoke run writes nothing to docs/, and leaves no work directory behind
    assert (DOCS.stat().st_mtime_ns if DOCS.exists() else None) == before
    assert list(tmp_path.iterdir()) == []
