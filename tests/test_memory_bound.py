"""Issue 2, section 5: a study streams "with memory per request bounded whatever the study
size". The gateway runs in a child process (its own peak RSS is measured, nothing of the test's
PACS in it) and retrieves, over C-GET from an in-process pynetdicom SCP, a series of 1 MiB
objects: 40 of them, then 240 (six times the data). The peak grows by far less than one
series' worth, and no more for the long series than for the short one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.connectors.scp_fakes import FakeScp
from tests.harness import samples
from tests.robustness_servers import clone_series

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # never the machine's memory
from gateway import create_app
from gateway.config import load_settings_from_dict
port, study, series, first = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
pacs = {"type": "DICOM", "timeouts": {"request": 60, "dimse": 30},
        "dicom-connector": {"dimse": {"calling-aet": "GATEWAY", "aet": "FAKESCP",
                                      "host": "127.0.0.1", "port": port}}}
app = create_app(load_settings_from_dict({"connector": {"config": {"pacs": pacs}}}))
client = app.test_client()
accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# imports, first association, a first object through every layer
client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{first}",
           headers={"Accept": accept})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
response = client.get(f"/dicomweb/studies/{study}/series/{series}", headers={"Accept": accept},
                      buffered=False)
size = 0
for chunk in response.response:
    size += len(chunk)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
app.extensions["gateway"].close()
print(json.dumps({"status": response.status_code, "body": size, "growth": (after - before) * 1024}))
"""


def _stream_series(count: int) -> dict[str, Any]:
    ct = samples.sample_index()["CT_small.dcm"]
    datasets = clone_series(ct["path"], count, pixel_bytes=MIB)
    with FakeScp(datasets=datasets) as scp:
        study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
        first = str(datasets[0].SOPInstanceUID)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(scp.port), study, series, first],
            cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
        )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])
    assert result["status"] == 200
    assert result["body"] >= count * MIB  # every object came through
    return result


def test_a_series_six_times_longer_streams_in_the_same_memory() -> None:
    short, long = _stream_series(40), _stream_series(240)
    # the look-ahead (8 MiB), a few objects in the C-GET queue and in flight: a few tens of MiB
    assert short["growth"] < 32 * MIB, short
    assert long["growth"] < 32 * MIB, long
    assert long["growth"] - short["growth"] < 12 * MIB, (short, long)
