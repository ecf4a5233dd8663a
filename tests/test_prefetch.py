"""gateway.prefetch: a stream read ahead in its own thread, waited for with a time limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator

import pytest

from gateway.prefetch import Prefetch


def _wait_for(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_items_then_the_end_in_order() -> None:
    reader = Prefetch(iter_range(5))
    got = [reader.get(timeout=5) for _ in range(6)]
    assert [(g.kind, g.item) for g in got] == [("item", i) for i in range(5)] + [("end", None)]
    assert reader.get(timeout=0).kind == "end"  # and stays the end


def iter_range(n: int) -> Generator[int, None, None]:
    yield from range(n)


def test_an_error_comes_after_the_items_before_it() -> None:
    def source() -> Generator[int, None, None]:
        yield 1
        raise KeyError("upstream broke")

    reader = Prefetch(source())
    assert reader.get(timeout=5).item == 1
    with pytest.raises(KeyError, match="upstream broke"):
        reader.get(timeout=5)


def test_waiting_is_bounded_while_the_source_is_slow() -> None:
    go = threading.Event()

    def source() -> Generator[int, None, None]:
        yield 1
        go.wait(10)
        yield 2

    reader = Prefetch(source())
    assert reader.get(timeout=5).item == 1
    started = time.monotonic()
    assert reader.get(timeout=0.3).kind == "wait"
    assert 0.25 <= time.monotonic() - started < 2
    go.set()
    assert reader.get(timeout=5).item == 2


def test_it_reads_at_most_depth_items_ahead() -> None:
    produced: list[int] = []

    def source() -> Generator[int, None, None]:
        for i in range(100):
            produced.append(i)
            yield i

    reader = Prefetch(source(), depth=2)
    time.sleep(0.3)
    # two in the queue and one in the producer's hand, waiting for room
    assert len(produced) == 3
    reader.close()


def test_close_stops_and_closes_the_source_in_its_own_thread() -> None:
    closed_in: list[str] = []

    def source() -> Generator[int, None, None]:
        try:
            yield from range(1000)
        finally:
            closed_in.append(threading.current_thread().name)

    reader = Prefetch(source(), depth=1, name="test-read-ahead")
    assert reader.get(timeout=5).item == 0
    started = time.monotonic()
    reader.close()
    assert time.monotonic() - started < 0.1  # never blocks the caller
    assert _wait_for(lambda: not reader.running)
    assert closed_in == ["test-read-ahead"]
