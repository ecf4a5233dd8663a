"""Resident memory of processes, from /proc/<pid>/status (VmRSS, VmHWM), sampled in a thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

SAMPLE_INTERVAL = 0.02  # seconds


def status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (write 5 to /proc/<pid>/clear_refs,
    Linux >= 4.0). False when not permitted: VmHWM then covers the process's whole life."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


@dataclass
class Peaks:
    """Per-PID peak resident memory in MB (the larger of sampled VmRSS and VmHWM), and the
    peak of their sum as sampled."""

    per_pid: dict[int, float] = field(default_factory=dict)
    idle: dict[int, float] = field(default_factory=dict)  # MB when the watch began
    sampled_total: float = 0.0
    reset: bool = True
    failed: int = 0  # requests that failed while watched (set by the caller)

    @property
    def largest(self) -> float:
        return max(self.per_pid.values(), default=0.0)

    @property
    def total(self) -> float:
        return sum(self.per_pid.values())

    @property
    def busiest(self) -> int:
        """The PID whose RSS grew most during the watch."""
        return max(self.per_pid, key=lambda pid: self.per_pid[pid] - self.idle.get(pid, 0.0))


@contextlib.contextmanager
def watch(pids: Callable[[], Sequence[int]]) -> Iterator[Peaks]:
    """Reset the peaks of `pids()`, sample their VmRSS every 20 ms while the block runs, and fill
    the yielded Peaks at its end."""
    peaks = Peaks()
    watched = list(pids())
    peaks.idle = {pid: status_kb(pid, "VmRSS") / 1024 for pid in watched}
    peaks.reset = all(reset_peak(pid) for pid in watched)
    rss = {pid: 0 for pid in watched}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_INTERVAL):
            now = {pid: status_kb(pid, "VmRSS") for pid in watched}
            for pid, kb in now.items():
                rss[pid] = max(rss[pid], kb)
            peaks.sampled_total = max(peaks.sampled_total, sum(now.values()) / 1024)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        stop.set()
        sampler.join(timeout=5)
        for pid in watched:
            hwm = status_kb(pid, "VmHWM") if peaks.reset else 0
            peaks.per_pid[pid] = max(rss[pid], hwm) / 1024


def idle_mb(pids: Sequence[int]) -> float:
    """The current total VmRSS of `pids`, MB."""
    return sum(status_kb(pid, "VmRSS") for pid in pids) / 1024
