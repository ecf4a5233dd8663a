"""The result table (one row per measurement and way), the machine it ran on, and
docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = Path(__file__).with_name("findings.md")
HEADER = (
    "Measurement",
    "Way",
    "Gateway",
    "Direct",
    "Unit",
    "Ratio gw/direct",
    "Errors",
    "Target",
    "Met",
)


@dataclass
class Row:
    """One line of the table. `direct` is the same figure measured against Orthanc directly in
    the same run; `errors` counts failed or wrong answers on both sides."""

    measurement: str
    way: str
    unit: str
    gateway: float
    direct: float
    errors: int = 0
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        if not self.direct or math.isnan(self.direct) or math.isnan(self.gateway):
            return float("nan")
        return self.gateway / self.direct

    def cells(self) -> tuple[str, ...]:
        met = {True: "yes", False: "**no**", None: ""}[self.met]
        way = f"{self.way} ({self.note})" if self.note else self.way
        return (
            self.measurement,
            way,
            number(self.gateway),
            number(self.direct),
            self.unit,
            f"{self.ratio:.2f}",
            str(self.errors),
            self.target,
            met,
        )


def number(value: float) -> str:
    """Three significant figures or so: 1234, 123, 12.3, 1.23, 0.123."""
    if math.isnan(value):
        return "nan"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (what the bench prints and writes)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def _read(path: str, prefix: str) -> str:
    try:
        with open(path) as source:
            for line in source:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(versions: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """What the run depends on: hardware, OS, Python and the programs' versions."""
    import gunicorn

    ram_kb = _read("/proc/meminfo", "MemTotal").split()[0]
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--", "gateway") else ""
    return {
        "Date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": f"{os.cpu_count()} x {_read('/proc/cpuinfo', 'model name')}",
        "RAM": f"{int(ram_kb) / 1024**2:.1f} GiB" if ram_kb.isdigit() else "?",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        **versions,
        "gunicorn": gunicorn.__version__,
        "Gateway commit": f"{commit}{dirty}",
        **extra,
    }


@dataclass
class Outcome:
    """Everything the report is made of; saved as JSON (--json) and rendered again from it
    (--render), e.g. after bench/findings.md changed."""

    rows: list[Row]
    facts: dict[str, str]
    archive: list[str]
    command: str
    runs: int

    def to_json(self) -> str:
        data = asdict(self)
        for row, out in zip(self.rows, data["rows"], strict=True):
            out["ratio"] = row.ratio
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        data = json.loads(text)
        rows = [Row(**{k: v for k, v in r.items() if k != "ratio"}) for r in data.pop("rows")]
        return cls(rows=rows, **data)

    def markdown(self) -> str:
        """docs/benchmarks.md: how it was produced, the machine, the archive, the table, how
        to read it, the targets missed, and the findings kept in bench/findings.md."""
        missed = [r for r in self.rows if r.met is False]
        parts = [
            "# Benchmarks: the gateway against direct access",
            "",
            (
                f"Written by `{self.command}` (see [bench/README.md](../bench/README.md)). Do not "
                "edit: run the bench again. The findings at the end come from `bench/findings.md`."
            ),
            "",
            "## Machine",
            "",
            *[f"- {key}: {value}" for key, value in self.facts.items()],
            "",
            "## Archive",
            "",
            *[f"- {line}" for line in self.archive],
            "",
            "## Results",
            "",
            table(self.rows),
            "",
            "## How to read the table",
            "",
            *reading_notes(self.runs),
            "",
            "## Targets missed",
            "",
            *([f"- {r.measurement}, {r.way}: {r.target}" for r in missed] or ["- none"]),
            "",
        ]
        if FINDINGS.is_file():
            parts += ["## Findings", "", FINDINGS.read_text().strip(), ""]
        return "\n".join(parts)


def reading_notes(runs: int) -> list[str]:
    """The "How to read the table" section."""
    return [
        (
            f"- Times and rates are medians over {runs} runs (the mix: one pass of a fixed number "
            "of requests after two warm-up passes); each row's direct figure comes from the same "
            "run, taken in turn with the gateway's. In measurements 1 and 2 each cold request is "
            "paired with the same request sent directly right before or after it (alternating "
            "between runs), and that way's rows use those direct samples."
        ),
        (
            "- Ratio = gateway / direct. For times (ms) below 1 means the gateway is faster; for "
            "MB/s and req/s above 1 means it is faster; for memory it compares the gateway's "
            "workers with Orthanc serving the same clients directly."
        ),
        (
            "- Direct is always Orthanc's own DICOMweb (QIDO-RS / WADO-RS), the baseline the "
            "issue's targets name, also in the rows where the gateway reads dcmqrscp."
        ),
        (
            "- Cold: the first request for that resource after the gateway restarted (its workers "
            "first served other resources, so imports and connection set-up are not counted). "
            "Warm: the same request again on the same keep-alive connection."
        ),
        (
            "- Errors: the gateway's answers that failed or were wrong (status, result count, "
            "bytes); failed direct answers are named in the row. A failed request is not part of "
            "a median."
        ),
        (
            "- Memory: VmHWM (reset through /proc/<pid>/clear_refs before each case) and VmRSS "
            "sampled every 20 ms, of the gunicorn workers, restarted before each way (no cached "
            "metadata, nothing left from another way's streams)."
        ),
        (
            '- Rows named "no gateway" fetch the same series from an archive over DIMSE without '
            "the gateway (one C-GET, by a bare pynetdicom SCU that keeps nothing, and by dcmtk's "
            "getscu discarding them): the ceiling of any DIMSE path to that archive. The "
            '"byte relay" row fetches it from Orthanc through bench/relay.py, a gunicorn app '
            "(the gateway's gunicorn.conf.py) that forwards the bytes untouched: the ceiling of "
            "any Python gateway in the path on this machine."
        ),
    ]
