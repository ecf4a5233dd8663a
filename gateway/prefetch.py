"""Reading a stream ahead in a thread of its own, so that its reader can wait for the next
item with a time limit. A blocking `next()` on a connector's stream cannot be interrupted: an
upstream that trickles one object for minutes would hold the reader for as long, and with it
the start of the response. The queue between the two is short, so memory stays bounded by a
few objects whatever the stream's length."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

_POLL = 0.1  # how often a producer blocked on a full queue looks whether it was stopped


@dataclass(frozen=True)
class Got(Generic[T]):
    """What `Prefetch.get` found: an item, the end of the stream, or nothing yet."""

    kind: Literal["item", "end", "wait"]
    item: T | None = None


class Prefetch(Generic[T]):
    """Runs `source` in a daemon thread, at most `depth` items ahead of the reader. An
    exception the source raises is raised again by `get`, in order, after the items that came
    before it. `close` stops the thread after the item it is waiting for (each of the source's
    waits is bounded by its own time-outs) and closes the source there, in the thread that ran
    it; it never blocks the caller."""

    def __init__(self, source: Generator[T, None, None], depth: int = 2, name: str = "prefetch"):
        self._source = source
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, depth))
        self._stopped = threading.Event()
        context = contextvars.copy_context()  # the request's log context goes along
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name=name, daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._offer("item", item):
                    return
            self._offer("end", None)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, raised again there
            self._offer("error", exc)
        finally:
            self._source.close()

    def _offer(self, kind: str, value: object) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float | None = None) -> Got[T]:
        """The next item; `Got("wait")` when none came within `timeout` seconds (None: wait
        for as long as the source takes)."""
        try:
            kind, value = self._queue.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            return Got("wait")
        if kind == "error":
            assert isinstance(value, Exception)
            raise value
        if kind == "end":
            self._queue.put((kind, value))  # the end stays the end for later calls
            return Got("end")
        return Got("item", value)  # type: ignore[arg-type]

    def close(self) -> None:
        self._stopped.set()
        while True:  # unblock a producer waiting for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    @property
    def running(self) -> bool:
        return self._thread.is_alive()
