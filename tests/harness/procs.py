"""Start, poll and stop the backend programs that the tests run.

Rules (see shared/reference/testbed.md):
- every DCMTK-based program (Orthanc, dcmqrscp, the dcmtk tools) gets ``TCP_NODELAY=1`` in its
  environment, otherwise each C-GET/C-MOVE sub-operation stalls on Nagle / delayed ACK;
- readiness is polled with a deadline, never waited for with a fixed sleep;
- a process is stopped by its PID (SIGTERM, wait with a deadline, then SIGKILL), never by name.
  Each program runs in its own session, so the signals go to the process group whose id is the
  program's PID: forked children (dcmqrscp's per-association workers) stop with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

NODELAY_ENV = {"TCP_NODELAY": "1"}


class HarnessError(RuntimeError):
    """A backend could not be found, started, loaded or stopped."""


def require_executable(path: str | Path, package: str) -> Path:
    """`path` if it is an executable file, else a HarnessError naming the Debian package."""
    exe = Path(path)
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise HarnessError(
            f"{exe} is missing: install the Debian package {package!r} "
            f"(apt-get install -y --no-install-recommends {package})"
        )
    return exe


def require_file(path: str | Path, package: str) -> Path:
    """`path` if it exists (plugins, data), else a HarnessError naming the Debian package."""
    found = Path(path)
    if not found.exists():
        raise HarnessError(f"{found} is missing: install the Debian package {package!r}")
    return found


def program_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus TCP_NODELAY=1 and `extra`."""
    env = dict(os.environ)
    env.update(NODELAY_ENV)
    env.update(extra or {})
    return env


def spawn(argv: Sequence[str | Path], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session with TCP_NODELAY=1; stdout and stderr go to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env=program_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_tool(argv: Sequence[str | Path], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a short-lived tool (storescu, echoscu) with TCP_NODELAY=1 and a timeout."""
    return subprocess.run(
        [str(a) for a in argv],
        env=program_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def log_tail(*paths: Path, lines: int = 40) -> str:
    """The last `lines` lines of each existing file in `paths`, for error messages."""
    chunks = []
    for path in paths:
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text))
    return "\n".join(chunks) if chunks else "(no log written)"


def wait_until(
    probe: Callable[[], bool],
    *,
    proc: subprocess.Popen[bytes],
    timeout: float,
    what: str,
    logs: Sequence[Path] = (),
    interval: float = 0.05,
) -> None:
    """Call `probe` until it returns True; raise HarnessError (with the logs' tails) when the
    deadline passes or when `proc` exits first. Between probes it waits on the process itself,
    so an early exit is noticed at once."""
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return
        if proc.poll() is not None:
            raise HarnessError(
                f"{what} exited with code {proc.returncode} before it was ready\n"
                + log_tail(*logs)
            )
        if time.monotonic() >= deadline:
            raise HarnessError(f"{what} not ready after {timeout:.0f} s\n" + log_tail(*logs))
        try:
            proc.wait(timeout=interval)
        except subprocess.TimeoutExpired:
            pass


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """Stop `proc` by PID: SIGTERM to its process group (the program and its forked workers;
    the group id is the program's PID, see `spawn`), wait up to `timeout` s, then SIGKILL.
    Signals are sent only while the program is not yet reaped, so its PID cannot have been
    reused. Returns the exit code."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
